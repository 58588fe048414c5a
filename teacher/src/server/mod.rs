//! A local OpenAI-compatible teacher (`stepwise teacher serve`): the embedded
//! default teacher and the test bed of the client, over real HTTP.
//!
//! Any [`ChatModel`] answers behind it: the built-in arithmetic teachers
//! ([`ArithTeacher`], called inline) or a real LLM (the pipeline's `gguf`
//! backend), which gets the requests waiting at the same time as one batch
//! on a thread of its own. Added latency and injected faults ([`faults`])
//! exercise clients as a slow, flaky provider would.

pub mod arith;
pub mod faults;

pub use arith::ArithTeacher;
pub use faults::{Fault, Faults};

use crate::error::TeacherError;
use crate::protocol::{ChatRequest, ChatResponse, Choice, Message, Usage};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One completion a [`ChatModel`] is asked for: one sample of a request.
#[derive(Debug, Clone)]
pub struct ModelJob {
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: f32,
    /// The request's `seed`, as sent.
    pub request_seed: Option<i64>,
    /// Which of the request's `n` samples this is, from 0.
    pub sample: u32,
    /// The completion ends before the first of these.
    pub stop: Vec<String>,
}

impl ModelJob {
    /// A seed of this sample's own, for a model that samples: the samples
    /// of one request differ, and a repeated request repeats.
    pub fn seed(&self) -> u64 {
        (self.request_seed.unwrap_or(0) as u64)
            .wrapping_mul(1_000_003)
            .wrapping_add(self.sample as u64)
    }
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

/// A language model behind the server.
pub trait ChatModel: Send + Sync + 'static {
    /// The served model's name: what `/v1/models` lists and every response
    /// (and so every shard row) carries.
    fn name(&self) -> String;
    /// One result per job, in order.
    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>>;
    /// Whether jobs queue for a thread of the model's own, which hands it
    /// every job waiting at once (up to `max_batch`): a slow model must not
    /// hold up the server's runtime, and decodes faster in batches. A fast
    /// model says no and is called inline with one request's samples,
    /// without the hop to another thread.
    fn batched(&self) -> bool {
        true
    }
}

#[derive(Clone)]
pub struct ServerConfig {
    /// What answers.
    pub model: Arc<dyn ChatModel>,
    /// Most jobs handed at once to a model that is [`ChatModel::batched`].
    pub max_batch: usize,
    /// Added to every answer.
    pub latency: Duration,
    pub faults: Faults,
    /// Seeds the fault draws.
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: Arc::new(ArithTeacher::Solver),
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
    /// Chat requests whose body was read, valid or not.
    pub requests: AtomicU64,
    /// Completions built (a truncated or stalled one included).
    pub completions: AtomicU64,
}

type Reply = tokio::sync::oneshot::Sender<Result<ModelOutput, String>>;

struct AppState {
    model: Arc<dyn ChatModel>,
    /// Asked once: the name every response carries.
    name: String,
    /// Jobs for the model's worker thread, when it is batched.
    jobs: Option<std::sync::mpsc::Sender<(ModelJob, Reply)>>,
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
    let jobs = cfg
        .model
        .batched()
        .then(|| spawn_model_worker(cfg.model.clone(), cfg.max_batch.max(1)));
    let state = Arc::new(AppState {
        name: cfg.model.name(),
        model: cfg.model,
        jobs,
        stats: stats.clone(),
    });
    let injector = Arc::new(faults::Injector::new(cfg.faults, cfg.latency, cfg.seed));
    // Layers run last-added first: admit, then faults, then the handler.
    let chat_route = post(chat)
        .layer(from_fn_with_state(injector, faults::inject))
        .layer(from_fn_with_state(state.clone(), admit));
    let app = Router::new()
        .route("/v1/chat/completions", chat_route)
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

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": "stepwise"}]}))
}

async fn stats_handler(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": s.stats.requests.load(Ordering::SeqCst),
        "completions": s.stats.completions.load(Ordering::SeqCst),
    }))
}

/// A chat request's number in arrival order, from 0 (counting invalid ones):
/// the fault script's index and the completion's id.
#[derive(Debug, Clone, Copy)]
struct RequestNo(u64);

/// A chat request that parsed, which [`admit`] leaves in the request's
/// extensions for the handler to take (read and parsed once).
#[derive(Clone)]
struct Admitted(ChatRequest);

impl<S: Send + Sync> FromRequestParts<S> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .remove::<Admitted>()
            .ok_or_else(|| server_error("the chat request was not admitted"))
    }
}

/// The chat route's outer middleware: reads the body (within axum's default
/// limit), counts and numbers the request, and answers 400 to one that does
/// not parse, with no latency and no fault draw.
async fn admit(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await {
        Ok(b) => b,
        Err(rejection) => return rejection.into_response(),
    };
    let n = s.stats.requests.fetch_add(1, Ordering::SeqCst);
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = serde_json::json!({"error": {"message": format!("invalid request: {e}"), "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, Json(msg)).into_response();
        }
    };
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(RequestNo(n));
    req.extensions_mut().insert(Admitted(chat));
    next.run(req).await
}

async fn chat(
    State(s): State<Arc<AppState>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    Admitted(req): Admitted,
) -> Response {
    let jobs = jobs_for(req);
    let outs = match &s.jobs {
        Some(queue) => queued(queue, jobs).await,
        None => inline(s.model.as_ref(), &jobs),
    };
    let outs = match outs {
        Ok(outs) => outs,
        Err(e) => return server_error(&e),
    };
    let mut choices = Vec::with_capacity(outs.len());
    let mut usage = Usage::default();
    for (i, out) in outs.into_iter().enumerate() {
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
    let resp = ChatResponse {
        id: format!("chatcmpl-{n}"),
        object: "chat.completion".into(),
        created: chrono::Utc::now().timestamp(),
        model: s.name.clone(),
        choices,
        usage: Some(usage),
    };
    Json(resp).into_response()
}

/// One job per sample (at least one); the last takes the request's
/// messages rather than a copy.
fn jobs_for(req: ChatRequest) -> Vec<ModelJob> {
    let n = req.n.max(1);
    let mut jobs: Vec<ModelJob> = (0..n - 1)
        .map(|sample| ModelJob {
            messages: req.messages.clone(),
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            request_seed: req.seed,
            sample,
            stop: req.stop.clone(),
        })
        .collect();
    jobs.push(ModelJob {
        messages: req.messages,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        request_seed: req.seed,
        sample: n - 1,
        stop: req.stop,
    });
    jobs
}

/// A fast model's answers, on the calling thread; the first error fails the request.
fn inline(model: &dyn ChatModel, jobs: &[ModelJob]) -> Result<Vec<ModelOutput>, String> {
    let outs = model.complete(jobs);
    if outs.len() != jobs.len() {
        return Err(format!("the model answered {} of {} jobs", outs.len(), jobs.len()));
    }
    outs.into_iter().collect()
}

/// A batched model's answers: each job queued for its thread, where it may
/// join other requests' jobs; the first error fails the request.
async fn queued(
    queue: &std::sync::mpsc::Sender<(ModelJob, Reply)>,
    jobs: Vec<ModelJob>,
) -> Result<Vec<ModelOutput>, String> {
    let mut waiting = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if queue.send((job, tx)).is_err() {
            return Err("the model thread has stopped".into());
        }
        waiting.push(rx);
    }
    let mut outs = Vec::with_capacity(waiting.len());
    for rx in waiting {
        match rx.await {
            Ok(out) => outs.push(out?),
            Err(_) => return Err("the model thread dropped the request".into()),
        }
    }
    Ok(outs)
}

fn server_error(msg: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({"error": {"message": msg, "type": "server_error"}})),
    )
        .into_response()
}
