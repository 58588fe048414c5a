//! `stepwise teacher serve|probe`: run the local OpenAI-compatible teacher,
//! or ask any teacher one question.

use anyhow::Result;
use clap::{Args, Subcommand};
use std::time::Duration;
use stepwise_datasets::{Example, LabelKind};
use stepwise_teacher::prompt::PromptStyle;
use stepwise_teacher::protocol::{ChatRequest, Message};
use stepwise_teacher::server::{self, Faults, ServerConfig};
use stepwise_teacher::{ClientConfig, TeacherClient};

use crate::config::LocalBackend;

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// OpenAI-compatible base URL, ending in /v1.
    #[arg(long, default_value = "http://127.0.0.1:8089/v1")]
    pub base_url: String,
    #[arg(long, default_value = "solver")]
    pub model: String,
    /// Name of the environment variable that holds the API key (the key itself is never logged or stored).
    #[arg(long)]
    pub api_key_env: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Seconds the server may send nothing (between streamed chunks) before an attempt times out.
    #[arg(long, alias = "timeout-s", default_value_t = 120.0)]
    pub idle_timeout_s: f64,
    /// A cap on each attempt's whole time, in seconds (none by default).
    #[arg(long)]
    pub total_timeout_s: Option<f64>,
    /// Ask for the answer as one JSON body instead of a stream.
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
}

impl ClientArgs {
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key_env: self.api_key_env.clone(),
            concurrency: self.concurrency,
            requests_per_minute: self.rpm,
            tokens_per_minute: self.tpm,
            idle_timeout: Duration::from_secs_f64(self.idle_timeout_s),
            total_timeout: self.total_timeout_s.map(Duration::from_secs_f64),
            stream: !self.no_stream,
            max_retries: self.retries,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
pub enum TeacherCommand {
    /// Serve the local OpenAI-compatible teacher until Ctrl-C.
    Serve(ServeArgs),
    /// Send one question and print the parsed answer and rationale.
    Probe {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        question: String,
        /// Asks with the few-shot template of this answer kind (number, choice,
        /// class, text), as the teach stage would; `raw` sends the question alone.
        #[arg(long, value_enum, default_value = "number")]
        kind: ProbeKind,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        /// chat: the template's examples as chat turns; plain: its text as one message.
        #[arg(long, value_enum, default_value = "chat")]
        prompt_style: PromptStyleArg,
    },
}

/// How `teacher probe` sends a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptStyleArg {
    Chat,
    Plain,
}

impl From<PromptStyleArg> for PromptStyle {
    fn from(a: PromptStyleArg) -> PromptStyle {
        match a {
            PromptStyleArg::Chat => PromptStyle::Chat,
            PromptStyleArg::Plain => PromptStyle::Plain,
        }
    }
}

/// Which prompt `teacher probe` asks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeKind {
    Number,
    Choice,
    Class,
    Text,
    /// The question alone, with the system prompt.
    Raw,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub addr: String,
    /// solver (exact answers), mimic (same style, wrong numbers), or gguf
    /// (a real instruct model: give --gguf).
    #[arg(long, value_enum, default_value = "solver")]
    pub backend: LocalBackend,
    /// The GGUF file the gguf backend serves.
    #[arg(long)]
    pub gguf: Option<std::path::PathBuf>,
    /// A name requests may give as `model` (repeat for several; the first
    /// is the one responses carry). Default: the backend's name, or the
    /// GGUF file's name without `.gguf`.
    #[arg(long = "served-model-name")]
    pub served_model_names: Vec<String>,
    /// Name of an environment variable holding an API key that requests
    /// must send as `Authorization: Bearer KEY` (the key itself is never
    /// taken on the command line, logged or stored).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Most requests the gguf backend decodes as one batch (default: from the machine and the model).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// cpu, cuda, cuda:N or auto (the gguf backend).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability of a 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub p429: f64,
    #[arg(long, default_value_t = 0.0)]
    pub p500: f64,
    /// Probability of stalling past a client's timeout.
    #[arg(long, default_value_t = 0.0)]
    pub pstall: f64,
    #[arg(long, default_value_t = 0.0)]
    pub pgarbage: f64,
    #[arg(long, default_value_t = 0.0)]
    pub ptruncated: f64,
    #[arg(long, default_value_t = 1)]
    pub retry_after_s: u64,
    #[arg(long, default_value_t = 30_000)]
    pub stall_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Answer as a reasoning model does: the thought in
    /// `reasoning_content`, in `reasoning`, inline in `<think>` tags
    /// (`think`), or inline with no opening tag (`think-open`).
    #[arg(long)]
    pub reasoning: Option<stepwise_teacher::server::ReasoningForm>,
    /// Batches wait this long `in_progress` before their first answer.
    #[arg(long, default_value_t = 0)]
    pub batch_delay_ms: u64,
    /// The share of a batch's requests that fail (in its error file).
    #[arg(long, default_value_t = 0.0)]
    pub batch_fail_fraction: f64,
    /// A batch expires after answering this many requests.
    #[arg(long)]
    pub batch_expire_after: Option<u64>,
    /// Enforce a rate budget of this many requests a minute, sending
    /// OpenAI's `x-ratelimit-*` headers (with --rate-tpm).
    #[arg(long, requires = "rate_tpm")]
    pub rate_rpm: Option<u32>,
    /// ... and this many tokens a minute (prompt + max_tokens reserved, settled to the usage).
    #[arg(long, requires = "rate_rpm")]
    pub rate_tpm: Option<u32>,
    /// How many seconds of the budget may go at once.
    #[arg(long, default_value_t = 60.0)]
    pub rate_burst_s: f64,
}

impl ServeArgs {
    pub fn config(&self) -> Result<ServerConfig> {
        let model =
            crate::gguf_teacher::local_backend(self.backend, self.gguf.as_deref(), &self.device, "--gguf FILE", None)?;
        let api_key = match &self.api_key_env {
            None => None,
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--api-key-env {var}: the variable is not set"))?,
            ),
        };
        Ok(ServerConfig {
            served_names: self.served_model_names.clone(),
            api_key,
            max_batch: self
                .max_batch
                .or_else(|| model.suggested_batch())
                .unwrap_or(ServerConfig::default().max_batch),
            latency: Duration::from_millis(self.latency_ms),
            faults: Faults {
                script: vec![],
                p_rate_limited: self.p429,
                p_server_error: self.p500,
                p_stall: self.pstall,
                p_garbage: self.pgarbage,
                p_truncated: self.ptruncated,
                retry_after_s: self.retry_after_s,
                stall: Duration::from_millis(self.stall_ms),
            },
            seed: self.seed,
            reasoning: self.reasoning,
            rate: match (self.rate_rpm, self.rate_tpm) {
                (Some(r), Some(t)) => Some(stepwise_teacher::server::RateBudget {
                    requests_per_minute: r,
                    tokens_per_minute: t,
                    burst: Duration::from_secs_f64(self.rate_burst_s.max(0.001)),
                }),
                _ => None,
            },
            batch: stepwise_teacher::server::BatchFaults {
                delay: Duration::from_millis(self.batch_delay_ms),
                fail_fraction: self.batch_fail_fraction,
                expire_after: self.batch_expire_after,
                ..Default::default()
            },
            model,
            ..Default::default()
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub fn run_teacher(cmd: TeacherCommand) -> Result<()> {
    match cmd {
        TeacherCommand::Serve(a) => runtime()?.block_on(async {
            let srv = server::start(&a.addr, a.config()?).await?;
            println!(
                "serving the {:?} teacher at {} (Ctrl-C stops)",
                a.backend.as_str(),
                srv.base_url()
            );
            tokio::signal::ctrl_c().await?;
            srv.shutdown().await;
            Ok(())
        }),
        TeacherCommand::Probe {
            client,
            question,
            kind,
            max_tokens,
            prompt_style,
        } => runtime()?.block_on(async {
            let c = TeacherClient::new(client.config())?;
            let label_kind = match kind {
                ProbeKind::Raw => None,
                ProbeKind::Number => Some(LabelKind::Number),
                ProbeKind::Choice => Some(LabelKind::Choice),
                ProbeKind::Class => Some(LabelKind::Class),
                ProbeKind::Text => Some(LabelKind::Text),
            };
            let messages = match label_kind {
                None => vec![
                    Message::new("system", stepwise_teacher::prompt::SYSTEM),
                    Message::new("user", question),
                ],
                Some(lk) => {
                    let ex = Example::new("probe", "probe", question, None, String::new(), lk);
                    stepwise_teacher::prompt::Prompts::load(None, prompt_style.into())?
                        .render(&ex, None)
                        .1
                }
            };
            let req = ChatRequest {
                model: client.model.clone(),
                messages,
                temperature: 0.0,
                max_tokens,
                n: 1,
                seed: None,
                stop: vec![stepwise_teacher::protocol::FEW_SHOT_STOP.into()],
                reasoning_effort: None,
                top_logprobs: None,
            };
            let got = c.complete(&req, max_tokens).await?;
            let text = &got.response.choices[0].message.content;
            println!(
                "answer:    {}",
                stepwise_datasets::answer::extract_answer(text).unwrap_or_else(|| "(none stated)".into())
            );
            println!("rationale: {}", text.trim());
            println!("latency:   {} ms, {} attempt(s)", got.latency_ms, got.attempts);
            Ok(())
        }),
    }
}
