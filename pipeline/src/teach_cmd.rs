//! `stepwise teach` and `stepwise teacher serve|probe`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;
use stepwise_datasets::examples_file::read_split;
use stepwise_datasets::{Example, LabelKind, Split};
use stepwise_teacher::protocol::{ChatRequest, Message};
use stepwise_teacher::server::{self, Faults, ServerConfig};
use stepwise_teacher::stage::{Price, TeachConfig, estimate, paths_in, teach};
use stepwise_teacher::{ClientConfig, TeacherClient};

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
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout_s: f64,
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
            timeout: Duration::from_secs_f64(self.timeout_s),
            max_retries: self.retries,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct TeachArgs {
    /// Examples directory ({train,val,test,test_ood}.parquet).
    #[arg(long)]
    pub examples: PathBuf,
    /// Run directory: shards/, cache/ and failures.jsonl go here.
    #[arg(long)]
    pub run: PathBuf,
    /// Splits to ask the teacher about (the test splits give the teacher's own accuracy).
    #[arg(long, value_delimiter = ',', default_value = "train,val,test,test_ood")]
    pub splits: Vec<Split>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Samples per example (self-consistency vote).
    #[arg(long, default_value_t = 1)]
    pub n: u32,
    #[arg(long)]
    pub seed: Option<i64>,
    /// Directory with edited prompt templates (<name>.txt overrides the built-in one).
    #[arg(long)]
    pub prompt_dir: Option<PathBuf>,
    /// Dollars per million prompt tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_prompt: f64,
    /// Dollars per million completion tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_completion: f64,
    /// Stop sending once this many dollars are spent.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Re-ask with the gold answer as a hint where no sample agrees with gold (STaR).
    #[arg(long)]
    pub rationalize: bool,
    /// Keep each raw completion in the shards.
    #[arg(long)]
    pub keep_raw: bool,
    #[arg(long, default_value_t = 5000)]
    pub rows_per_shard: usize,
    /// Print the cost estimate and send nothing.
    #[arg(long)]
    pub dry_run: bool,
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
        #[arg(long, default_value = "number")]
        kind: String,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub addr: String,
    /// solver (exact answers), mimic (same style, wrong numbers), or gguf
    /// (a real instruct model: give --gguf).
    #[arg(long, default_value = "solver")]
    pub backend: String,
    /// The GGUF file the gguf backend serves.
    #[arg(long)]
    pub gguf: Option<std::path::PathBuf>,
    /// Most requests the gguf backend decodes as one batch.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
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
}

impl ServeArgs {
    pub fn config(&self) -> Result<ServerConfig> {
        let (backend, model) =
            crate::gguf_teacher::local_backend(&self.backend, self.gguf.as_deref(), &self.device, "--gguf FILE")?;
        Ok(ServerConfig {
            backend,
            model,
            max_batch: self.max_batch,
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
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Hash of everything that changes what the teacher is asked (never the key).
fn config_hash(a: &TeachArgs) -> Result<String> {
    let mut prompts = String::new();
    if let Some(d) = &a.prompt_dir {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .with_context(|| d.display().to_string())?
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names {
            prompts.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    let key = serde_json::json!({
        "model": a.client.model, "temperature": a.temperature, "max_tokens": a.max_tokens, "n": a.n,
        "seed": a.seed, "rationalize": a.rationalize, "prompts": prompts,
    });
    Ok(hex::encode(&Sha256::digest(key.to_string().as_bytes())[..8]))
}

pub fn run_teach(a: TeachArgs) -> Result<()> {
    let mut examples: Vec<Example> = Vec::new();
    for s in &a.splits {
        examples.extend(read_split(&a.examples, *s)?);
    }
    anyhow::ensure!(
        !examples.is_empty(),
        "{}: no examples in splits {:?}",
        a.examples.display(),
        a.splits
    );
    let cfg = TeachConfig {
        client: a.client.config(),
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        n: a.n,
        seed: a.seed,
        prompt_dir: a.prompt_dir.clone(),
        rows_per_shard: a.rows_per_shard,
        price: Price {
            prompt_per_mtok: a.price_prompt,
            completion_per_mtok: a.price_completion,
        },
        budget_usd: a.budget,
        rationalize: a.rationalize,
        keep_raw: a.keep_raw,
        config_hash: config_hash(&a)?,
    };
    let paths = paths_in(&a.run);
    if a.dry_run {
        let done = match stepwise_datasets::shard::Manifest::load(&paths.shards)? {
            Some(_) => stepwise_datasets::shard::read_dir_rows(&paths.shards)?
                .into_iter()
                .map(|r| r.example_id)
                .collect(),
            None => std::collections::HashSet::new(),
        };
        let e = estimate(&examples, &|id| done.contains(id), &cfg)?;
        println!(
            "would send {} requests: ~{} prompt tokens, at most {} completion tokens, at most ${:.4}",
            e.requests, e.prompt_tokens, e.max_completion_tokens, e.max_cost_usd
        );
        return Ok(());
    }
    let s = runtime()?.block_on(teach(&examples, cfg, &paths))?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    if s.failed > 0 {
        eprintln!(
            "{} request(s) failed after retries: see {} (a re-run retries them)",
            s.failed,
            paths.failures.display()
        );
    }
    Ok(())
}

pub fn run_teacher(cmd: TeacherCommand) -> Result<()> {
    match cmd {
        TeacherCommand::Serve(a) => runtime()?.block_on(async {
            let srv = server::start(&a.addr, a.config()?).await?;
            println!(
                "serving the {:?} teacher at {} (Ctrl-C stops)",
                a.backend,
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
        } => runtime()?.block_on(async {
            let c = TeacherClient::new(client.config())?;
            let label_kind = match kind.as_str() {
                "raw" => None,
                "number" => Some(LabelKind::Number),
                "choice" => Some(LabelKind::Choice),
                "class" => Some(LabelKind::Class),
                "text" => Some(LabelKind::Text),
                k => anyhow::bail!("--kind {k:?}: expected number, choice, class, text or raw"),
            };
            let messages = match label_kind {
                None => vec![
                    Message::new("system", stepwise_teacher::prompt::SYSTEM),
                    Message::new("user", question),
                ],
                Some(lk) => {
                    let ex = Example::new("probe", "probe", question, None, String::new(), lk);
                    stepwise_teacher::prompt::Prompts::load(None)?.render(&ex, None).1
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
