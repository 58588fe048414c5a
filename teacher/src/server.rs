//! A local OpenAI-compatible teacher (`stepwise teacher serve`): the embedded
//! default and the test bed of the client.
//!
//! Backends: `solver` reads a built-in arithmetic problem from the prompt and
//! answers it exactly, step by step; `mimic` answers in the same format and
//! tone with wrong numbers (the style-only teacher the checks must catch).
//! A [`ChatModel`] (the `gguf` backend: a real LLM) answers instead when set;
//! requests waiting at the same time reach it as one batch.
//! Added latency and injected faults (429 with `Retry-After`, 500, stalls,
//! garbage and truncated bodies) exercise clients over real HTTP.

use crate::error::TeacherError;
use crate::protocol::{ChatRequest, ChatResponse, Choice, Message, Usage, approx_tokens};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stepwise_datasets::arith::{Op, parse_problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Solver,
    Mimic,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "solver" => Ok(Backend::Solver),
            "mimic" => Ok(Backend::Mimic),
            other => Err(format!("unknown backend {other:?} (expected solver or mimic)")),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 429 with `Retry-After`.
    RateLimited,
    /// 500.
    ServerError,
    /// Holds the request for `stall` before answering (past a client's timeout).
    Stall,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with the JSON cut in half.
    Truncated,
    /// 401, as for a wrong API key: not worth retrying.
    Unauthorized,
}

/// Which faults to inject: first `script` in order (one per request), then at random.
#[derive(Debug, Clone)]
pub struct Faults {
    pub script: Vec<Fault>,
    pub p_rate_limited: f64,
    pub p_server_error: f64,
    pub p_stall: f64,
    pub p_garbage: f64,
    pub p_truncated: f64,
    pub retry_after_s: u64,
    pub stall: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            script: vec![],
            p_rate_limited: 0.0,
            p_server_error: 0.0,
            p_stall: 0.0,
            p_garbage: 0.0,
            p_truncated: 0.0,
            retry_after_s: 1,
            stall: Duration::from_secs(30),
        }
    }
}

/// One completion a [`ChatModel`] is asked for.
#[derive(Debug, Clone)]
pub struct ModelJob {
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u64,
    /// The completion ends before the first of these.
    pub stop: Vec<String>,
}

/// What a [`ChatModel`] answers, with exact token counts.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// A language model behind the server. It is handed every job waiting at
/// once, so it can decode them as one batch; it runs on its own thread.
pub trait ChatModel: Send + Sync + 'static {
    /// The name `/v1/models` lists.
    fn name(&self) -> String;
    /// One result per job, in order.
    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>>;
}

#[derive(Clone)]
pub struct ServerConfig {
    /// Answers when no `model` is set.
    pub backend: Backend,
    /// A real model (the `gguf` backend); answers instead of `backend`.
    pub model: Option<Arc<dyn ChatModel>>,
    /// Most jobs handed to `model` at once.
    pub max_batch: usize,
    /// Added to every answer.
    pub latency: Duration,
    pub faults: Faults,
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            backend: Backend::Solver,
            model: None,
            max_batch: 16,
            latency: Duration::ZERO,
            faults: Faults::default(),
            seed: 0,
        }
    }
}

/// Counters a test can read at `GET /stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub completions: AtomicU64,
}

type Reply = tokio::sync::oneshot::Sender<Result<ModelOutput, String>>;

struct AppState {
    cfg: ServerConfig,
    /// Jobs for the model's worker thread.
    jobs: Option<std::sync::mpsc::Sender<(ModelJob, Reply)>>,
    rng: Mutex<ChaCha8Rng>,
    stats: Arc<Stats>,
}

/// A running server; dropping it does not stop it (call [`LocalServer::shutdown`]).
pub struct LocalServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalServer {
    /// `http://ADDR/v1`, what a client's `base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Starts the server on `addr` (port 0 picks a free port) in the current tokio runtime.
pub async fn start(addr: &str, cfg: ServerConfig) -> Result<LocalServer, TeacherError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| TeacherError::Server(format!("bind {addr}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| TeacherError::Server(e.to_string()))?;
    let stats = Arc::new(Stats::default());
    let jobs = cfg.model.clone().map(|m| spawn_model_worker(m, cfg.max_batch.max(1)));
    let state = Arc::new(AppState {
        jobs,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed)),
        cfg,
        stats: stats.clone(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/stats", get(stats_handler))
        .with_state(state);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(LocalServer {
        addr,
        stats,
        stop: Some(tx),
        task,
    })
}

/// The model's thread: waits for a job, takes every other job already queued
/// (up to `max_batch`), completes them together, answers each.
fn spawn_model_worker(model: Arc<dyn ChatModel>, max_batch: usize) -> std::sync::mpsc::Sender<(ModelJob, Reply)> {
    let (tx, rx) = std::sync::mpsc::channel::<(ModelJob, Reply)>();
    std::thread::Builder::new()
        .name("teacher-model".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let (jobs, replies): (Vec<ModelJob>, Vec<Reply>) = batch.into_iter().unzip();
                let t = std::time::Instant::now();
                let outs = model.complete(&jobs);
                tracing::debug!(batch = jobs.len(), secs = t.elapsed().as_secs_f64(), "model batch");
                for (reply, out) in replies.into_iter().zip(outs) {
                    let _ = reply.send(out);
                }
            }
        })
        .expect("spawn the model thread");
    tx
}

/// The served model's real name (for a GGUF model, its file name): what
/// `/v1/models` lists and every response (and so every shard row) carries.
fn served_name(s: &AppState) -> String {
    match (&s.cfg.model, s.cfg.backend) {
        (Some(m), _) => m.name(),
        (None, Backend::Solver) => "solver".into(),
        (None, Backend::Mimic) => "mimic".into(),
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let name = served_name(&s);
    Json(serde_json::json!({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "stepwise"}]}))
}

async fn stats_handler(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": s.stats.requests.load(Ordering::SeqCst),
        "completions": s.stats.completions.load(Ordering::SeqCst),
    }))
}

fn pick_fault(s: &AppState, n: u64) -> Fault {
    let f = &s.cfg.faults;
    if let Some(x) = f.script.get(n as usize) {
        return *x;
    }
    let r: f64 = s.rng.lock().expect("rng lock").random_range(0.0..1.0);
    let mut acc = 0.0;
    for (p, fault) in [
        (f.p_rate_limited, Fault::RateLimited),
        (f.p_server_error, Fault::ServerError),
        (f.p_stall, Fault::Stall),
        (f.p_garbage, Fault::Garbage),
        (f.p_truncated, Fault::Truncated),
    ] {
        acc += p;
        if r < acc {
            return fault;
        }
    }
    Fault::None
}

async fn chat(State(s): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let n = s.stats.requests.fetch_add(1, Ordering::SeqCst);
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = serde_json::json!({"error": {"message": format!("invalid request: {e}"), "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, Json(msg)).into_response();
        }
    };
    let fault = pick_fault(&s, n);
    if !s.cfg.latency.is_zero() {
        tokio::time::sleep(s.cfg.latency).await;
    }
    match fault {
        Fault::RateLimited => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(serde_json::json!({"error": {"message": "rate limited"}})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.cfg.faults.retry_after_s));
            return r;
        }
        Fault::ServerError => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": {"message": "injected"}})),
            )
                .into_response();
        }
        Fault::Unauthorized => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": {"message": "invalid API key"}})),
            )
                .into_response();
        }
        Fault::Stall => tokio::time::sleep(s.cfg.faults.stall).await,
        Fault::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>502 Bad Gateway</html>",
            )
                .into_response();
        }
        _ => {}
    }
    if let Some(jobs) = &s.jobs {
        return model_chat(&s, jobs, &req, n, fault).await;
    }
    let question = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let prompt_tokens = req.approx_prompt_tokens();
    let mut choices = Vec::with_capacity(req.n as usize);
    let mut completion_tokens = 0;
    for i in 0..req.n.max(1) {
        let text = answer(s.cfg.backend, question, req.seed.unwrap_or(0) as u64 ^ (i as u64 + 1));
        let (text, finish) = truncate_to_tokens(text, req.max_tokens);
        completion_tokens += approx_tokens(&text);
        choices.push(Choice {
            index: i,
            message: Message::new("assistant", text),
            finish_reason: Some(finish.into()),
        });
    }
    s.stats.completions.fetch_add(1, Ordering::SeqCst);
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    respond(n, served_name(&s), choices, usage, fault)
}

/// `req` answered by the model: one job per sample, queued for its thread.
async fn model_chat(
    s: &AppState,
    jobs: &std::sync::mpsc::Sender<(ModelJob, Reply)>,
    req: &ChatRequest,
    n: u64,
    fault: Fault,
) -> Response {
    let mut waiting = Vec::new();
    for i in 0..req.n.max(1) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = ModelJob {
            messages: req.messages.clone(),
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            seed: (req.seed.unwrap_or(0) as u64)
                .wrapping_mul(1_000_003)
                .wrapping_add(i as u64),
            stop: req.stop.clone(),
        };
        if jobs.send((job, tx)).is_err() {
            return server_error("the model thread has stopped");
        }
        waiting.push(rx);
    }
    let mut choices = Vec::new();
    let mut usage = Usage::default();
    for (i, rx) in waiting.into_iter().enumerate() {
        let out = match rx.await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return server_error(&e),
            Err(_) => return server_error("the model thread dropped the request"),
        };
        usage.prompt_tokens = out.prompt_tokens;
        usage.completion_tokens += out.completion_tokens;
        choices.push(Choice {
            index: i as u32,
            message: Message::new("assistant", out.text),
            finish_reason: Some(out.finish_reason.into()),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    s.stats.completions.fetch_add(1, Ordering::SeqCst);
    respond(n, served_name(s), choices, usage, fault)
}

fn server_error(msg: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({"error": {"message": msg, "type": "server_error"}})),
    )
        .into_response()
}

/// The completion's body (cut in half when that fault was drawn).
fn respond(n: u64, model: String, choices: Vec<Choice>, usage: Usage, fault: Fault) -> Response {
    let resp = ChatResponse {
        id: format!("chatcmpl-{n}"),
        object: "chat.completion".into(),
        created: chrono::Utc::now().timestamp(),
        model,
        choices,
        usage: Some(usage),
    };
    if fault == Fault::Truncated {
        let body = serde_json::to_string(&resp).expect("response serialises");
        let half = body[..body.len() / 2].to_string();
        return ([(header::CONTENT_TYPE, "application/json")], half).into_response();
    }
    Json(resp).into_response()
}

fn truncate_to_tokens(text: String, max_tokens: u32) -> (String, &'static str) {
    let max_chars = max_tokens as usize * 4;
    if text.len() <= max_chars {
        return (text, "stop");
    }
    let mut cut = max_chars;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_string(), "length")
}

/// The backend's completion for a prompt.
pub fn answer(backend: Backend, question: &str, seed: u64) -> String {
    let Some(p) = parse_problem(question) else {
        return "I can only solve the built-in arithmetic problems, and I cannot read one here. So the answer is unknown."
            .into();
    };
    match backend {
        Backend::Solver => p
            .rationale(&p.steps)
            .unwrap_or_else(|| "The problem has no exact answer. So the answer is unknown.".into()),
        Backend::Mimic => {
            // Same format and tone, wrong numbers: shift the operands of + and - (or a
            // multiplier) so the chain stays exact and self-consistent but ends wrong.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ p.start as u64);
            let truth = p.answer();
            for _ in 0..32 {
                let k = rng.random_range(1..=9);
                let steps: Vec<(Op, i64)> = p
                    .steps
                    .iter()
                    .map(|&(op, b)| match op {
                        Op::Add | Op::Sub => (op, b + k),
                        Op::Mul => (op, b + 1),
                        Op::Div => (op, b),
                    })
                    .collect();
                let wrong = chain_text(&p, &steps);
                if let Some(text) = wrong.filter(|(a, _)| Some(*a) != truth && *a > 0).map(|(_, t)| t) {
                    return text;
                }
            }
            // Divisions got in the way: get a single step wrong, latest first, keeping the chain exact.
            for i in (0..p.steps.len()).rev() {
                let Some(cur) = p.steps[..i].iter().try_fold(p.start, |acc, (op, b)| op.apply(acc, *b)) else {
                    continue;
                };
                let (op, b) = p.steps[i];
                for k in 1..=9i64 {
                    let wrong = match op {
                        Op::Add | Op::Sub => (op, b + k),
                        Op::Mul => (op, b + k),
                        Op::Div => match (2..=9).filter(|d| *d != b && cur % d == 0).nth(k as usize - 1) {
                            Some(d) => (op, d),
                            None => break,
                        },
                    };
                    let mut steps = p.steps.clone();
                    steps[i] = wrong;
                    if let Some((_, text)) = chain_text(&p, &steps).filter(|(a, _)| Some(*a) != truth) {
                        return text;
                    }
                }
            }
            // Still nothing exact: state a wrong total in the same tone.
            let ans = truth.unwrap_or(0) + rng.random_range(1..=9);
            format!(
                "There are {} {} at the start. Counting every change gives {ans}. So the answer is {ans}.",
                p.start, p.object
            )
        }
    }
}

/// The answer and rationale of `p` told with `steps`, if every value stays a positive integer.
fn chain_text(p: &stepwise_datasets::arith::ParsedProblem, steps: &[(Op, i64)]) -> Option<(i64, String)> {
    let ans = steps
        .iter()
        .try_fold(p.start, |acc, (op, b)| op.apply(acc, *b).filter(|v| *v > 0))?;
    Some((ans, p.rationale(steps)?))
}
