//! A local OpenAI-compatible teacher (`stepwise teacher serve`): the embedded
//! default teacher and the test bed of the client, over real HTTP.
//!
//! Any [`ChatModel`] answers behind it: the built-in arithmetic teachers
//! ([`ArithTeacher`], called inline), the teacher of a set of examples'
//! gold answers ([`GoldTeacher`]) or a real LLM (the pipeline's `gguf`
//! backend), which gets the requests waiting at the same time as one batch
//! on a thread of its own. Added latency and injected faults ([`faults`])
//! exercise clients as a slow, flaky provider would.

pub mod api;
pub mod arith;
pub mod batch;
pub mod faults;
pub mod gold;
mod inflight;
pub mod rate;

pub use api::{ApiError, ChatCall, Streaming};
pub use arith::ArithTeacher;
pub use batch::BatchFaults;
pub use faults::{Fault, Faults};
pub use gold::GoldTeacher;
pub use rate::RateBudget;

use crate::error::TeacherError;
use crate::protocol::{ChatResponse, Choice, Message, Usage};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use inflight::{Event, Fanout, InFlight, call_key};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// One completion a [`ChatModel`] is asked for: one sample of a request.
#[derive(Debug, Clone)]
pub struct ModelJob {
    pub messages: Vec<Message>,
    /// `None`: until the model stops, within its own limit (its context).
    pub max_tokens: Option<u32>,
    pub temperature: f32,
    /// Nucleus sampling (1 keeps every token).
    pub top_p: f32,
    /// The request's `seed`, as sent.
    pub request_seed: Option<i64>,
    /// Which of the request's `n` samples this is, from 0.
    pub sample: u32,
    /// The completion ends before the first of these.
    pub stop: Vec<String>,
    /// Return the chosen tokens' log-probabilities and this many alternatives.
    pub top_logprobs: Option<u32>,
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
    /// The chosen tokens' log-probabilities, when the job asked and the model can.
    pub logprobs: Option<Vec<crate::protocol::TokenLogprob>>,
}

/// A language model behind the server.
pub trait ChatModel: Send + Sync + 'static {
    /// The served model's name: what `/v1/models` lists and every response
    /// (and so every shard row) carries.
    fn name(&self) -> String;
    /// One result per job, in order.
    fn complete(&self, jobs: &[ModelJob]) -> Vec<Result<ModelOutput, String>>;
    /// [`ChatModel::complete`], telling `on_text(job, delta)` the text as it
    /// is decoded: the deltas of a job, joined, are its final text. Its
    /// answer false means nobody waits for that job any more, and a model
    /// that can stop early should. The default reports each text at the
    /// end, in words (a fast model has nothing to gain from more).
    fn complete_streaming(
        &self,
        jobs: &[ModelJob],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Vec<Result<ModelOutput, String>> {
        let outs = self.complete(jobs);
        for (i, out) in outs.iter().enumerate() {
            if let Ok(out) = out {
                for word in out.text.split_inclusive(' ') {
                    if !on_text(i, word) {
                        break;
                    }
                }
            }
        }
        outs
    }
    /// A job the model cannot run (a prompt longer than its context),
    /// found before any work: the client gets a 400 naming it.
    fn check(&self, _job: &ModelJob) -> Result<(), ApiError> {
        Ok(())
    }
    /// Whether jobs queue for a thread of the model's own, which hands it
    /// every job waiting at once (up to `max_batch`): a slow model must not
    /// hold up the server's runtime, and decodes faster in batches. A fast
    /// model says no and is called inline with one request's samples,
    /// without the hop to another thread.
    fn batched(&self) -> bool {
        true
    }
    /// The batch size this model decodes best at on this machine, when it
    /// knows (a server's `max_batch` and a client's concurrency follow it).
    fn suggested_batch(&self) -> Option<usize> {
        None
    }
    /// Whether the model returns log-probabilities (a real model's logits
    /// give them; the built-in teachers have none).
    fn logprobs(&self) -> bool {
        false
    }
}

#[derive(Clone)]
pub struct ServerConfig {
    /// What answers.
    pub model: Arc<dyn ChatModel>,
    /// The names requests may give in `model` (vLLM's
    /// `--served-model-name`); the first is the one responses carry. Empty:
    /// the model's own [`ChatModel::name`].
    pub served_names: Vec<String>,
    /// When set, every `/v1` request must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Most jobs handed at once to a model that is [`ChatModel::batched`].
    pub max_batch: usize,
    /// How long the model's thread waits, after a first job, for more to
    /// join its batch (requests sent together arrive microseconds apart).
    pub batch_window: Duration,
    /// A streamed answer waiting for a busy model (queued behind a batch,
    /// or in its prefill) gets an SSE comment this often, so a client's
    /// idle time-out measures whether the server lives, not how long the
    /// queue is.
    pub keepalive: Duration,
    /// ... but only while the model's thread has shown progress (started a
    /// batch, decoded a token) within this long: a hung model is not kept
    /// alive by its heartbeats.
    pub stall_after: Duration,
    /// Added to every answer.
    pub latency: Duration,
    pub faults: Faults,
    /// Seeds the fault draws.
    pub seed: u64,
    /// Answer as a reasoning model of this kind would (a test bed for
    /// clients of reasoning models); `None`: plain answers.
    pub reasoning: Option<ReasoningForm>,
    /// How `/v1/batches` behave.
    pub batch: BatchFaults,
    /// Enforce a provider's rate limits and send its `x-ratelimit-*` headers.
    pub rate: Option<RateBudget>,
}

/// How a reasoning model's chain of thought comes back. The server makes
/// one of the model's text: everything before its last "So the answer is"
/// is the thought, the rest the visible answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningForm {
    /// `message.reasoning_content` (DeepSeek, older vLLM).
    ReasoningContent,
    /// `message.reasoning` (current vLLM, OpenRouter).
    Reasoning,
    /// Inline: `<think>thought</think>answer` in `content`.
    Think,
    /// Inline with the opening tag in the chat template, not the
    /// completion: `thought</think>answer`.
    ThinkOpen,
}

impl std::str::FromStr for ReasoningForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reasoning_content" => Ok(ReasoningForm::ReasoningContent),
            "reasoning" => Ok(ReasoningForm::Reasoning),
            "think" => Ok(ReasoningForm::Think),
            "think-open" => Ok(ReasoningForm::ThinkOpen),
            other => Err(format!(
                "unknown reasoning form {other:?} (expected reasoning_content, reasoning, think or think-open)"
            )),
        }
    }
}

/// A completion as a reasoning model returns it.
struct Shaped {
    content: String,
    /// The field the thought goes in (`reasoning_content` or `reasoning`), and the thought.
    field: Option<(&'static str, String)>,
    reasoning_tokens: u32,
}

impl ReasoningForm {
    fn shape(self, text: &str) -> Shaped {
        let at = text.rfind("So the answer is").unwrap_or(0);
        let (thought, answer) = (text[..at].trim(), text[at..].trim());
        let reasoning_tokens = crate::protocol::approx_tokens(thought);
        let (content, field) = match self {
            ReasoningForm::ReasoningContent => (answer.to_string(), Some(("reasoning_content", thought.to_string()))),
            ReasoningForm::Reasoning => (answer.to_string(), Some(("reasoning", thought.to_string()))),
            ReasoningForm::Think => (format!("<think>\n{thought}\n</think>\n\n{answer}"), None),
            ReasoningForm::ThinkOpen => (format!("{thought}\n</think>\n\n{answer}"), None),
        };
        Shaped {
            content,
            field,
            reasoning_tokens,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: Arc::new(ArithTeacher::Solver),
            served_names: Vec::new(),
            api_key: None,
            max_batch: 16,
            batch_window: Duration::from_millis(20),
            keepalive: Duration::from_secs(5),
            stall_after: Duration::from_secs(600),
            latency: Duration::ZERO,
            faults: Faults::default(),
            seed: 0,
            reasoning: None,
            batch: BatchFaults::default(),
            rate: None,
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
    /// Requests answered by an identical one already in flight (decoded once).
    pub joined: AtomicU64,
    /// Decoding steps the model reported, over all jobs (one per token for
    /// the gguf backend): what the server spent.
    pub decode_steps: AtomicU64,
    /// Jobs stopped or never started because nobody waited for them.
    pub dropped: AtomicU64,
    /// Batches created through `/v1/batches`.
    pub batches_created: AtomicU64,
    /// Batches created and not yet ended (completed, failed, expired or cancelled).
    pub batches_running: AtomicU64,
    /// Requests refused with a 429 for being over the rate budget.
    pub rate_limited: AtomicU64,
}

/// When the model's thread last showed progress, in ms since the server started.
struct Liveness {
    start: Instant,
    last_ms: AtomicU64,
}

impl Liveness {
    fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn within(&self, d: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_ms.load(Ordering::Relaxed)) <= d.as_millis() as u64
    }
}

/// A job on its way to the model's thread, with where its events go.
struct Queued {
    job: ModelJob,
    choice: u32,
    fanout: Arc<Fanout>,
}

pub(crate) struct AppState {
    model: Arc<dyn ChatModel>,
    /// What requests may ask for; the first is what responses carry.
    names: Vec<String>,
    api_key: Option<String>,
    /// Jobs for the model's worker thread, when it is batched.
    jobs: Option<std::sync::mpsc::Sender<Queued>>,
    inflight: Arc<InFlight>,
    alive: Arc<Liveness>,
    keepalive: Duration,
    stall_after: Duration,
    stats: Arc<Stats>,
    /// When the server started: `created` of the model objects.
    started: i64,
    reasoning: Option<ReasoningForm>,
    batches: batch::Store,
    rate: Option<rate::Limiter>,
}

impl AppState {
    fn name(&self) -> &str {
        &self.names[0]
    }

    fn model_object(&self, id: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "object": "model", "created": self.started, "owned_by": "stepwise"})
    }
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
    let inflight = Arc::new(InFlight::default());
    let alive = Arc::new(Liveness {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let jobs = cfg.model.batched().then(|| {
        spawn_model_worker(Worker {
            model: cfg.model.clone(),
            max_batch: cfg.max_batch.max(1),
            window: cfg.batch_window,
            inflight: inflight.clone(),
            stats: stats.clone(),
            alive: alive.clone(),
        })
    });
    let names = if cfg.served_names.is_empty() {
        vec![cfg.model.name()]
    } else {
        cfg.served_names
    };
    let state = Arc::new(AppState {
        names,
        model: cfg.model,
        api_key: cfg.api_key,
        jobs,
        inflight,
        alive,
        keepalive: cfg.keepalive,
        stall_after: cfg.stall_after,
        stats: stats.clone(),
        started: chrono::Utc::now().timestamp(),
        reasoning: cfg.reasoning,
        batches: batch::Store::new(cfg.batch, cfg.seed),
        rate: cfg.rate.map(rate::Limiter::new),
    });
    let injector = Arc::new(faults::Injector::new(cfg.faults, cfg.latency, cfg.seed));
    // Layers run last-added first: admit, then faults, then the handler.
    let chat_route = post(chat)
        .layer(from_fn_with_state(injector, faults::inject))
        .layer(from_fn_with_state(state.clone(), admit));
    let v1 = Router::new()
        .route("/v1/chat/completions", chat_route)
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route(
            "/v1/files",
            post(batch::upload)
                .get(batch::list_files)
                .layer(axum::extract::DefaultBodyLimit::max(512 << 20)),
        )
        .route("/v1/files/{id}", get(batch::get_file).delete(batch::delete_file))
        .route("/v1/files/{id}/content", get(batch::file_content))
        .route("/v1/batches", post(batch::create).get(batch::list_batches))
        .route("/v1/batches/{id}", get(batch::get_batch))
        .route("/v1/batches/{id}/cancel", post(batch::cancel))
        .layer(from_fn_with_state(state.clone(), authorize));
    let app = v1
        .route("/stats", get(stats_handler))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
        })
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

/// What the model's thread works with.
struct Worker {
    model: Arc<dyn ChatModel>,
    max_batch: usize,
    window: Duration,
    inflight: Arc<InFlight>,
    stats: Arc<Stats>,
    alive: Arc<Liveness>,
}

/// The model's thread: waits for a job, takes every other job that arrives
/// within the batch window (up to `max_batch`), completes them together,
/// reports each. A job nobody waits for any more is not started, and a
/// model that streams is told to drop it at its next step.
fn spawn_model_worker(w: Worker) -> std::sync::mpsc::Sender<Queued> {
    let (tx, rx) = std::sync::mpsc::channel::<Queued>();
    std::thread::Builder::new()
        .name("teacher-model".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                let until = Instant::now() + w.window;
                while batch.len() < w.max_batch {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                batch.retain(|q| {
                    let wanted = q.fanout.wanted();
                    if !wanted {
                        w.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        w.inflight.finish(&q.fanout);
                    }
                    wanted
                });
                if batch.is_empty() {
                    continue;
                }
                w.alive.beat();
                let jobs: Vec<ModelJob> = batch.iter().map(|q| q.job.clone()).collect();
                let t = Instant::now();
                let mut gone = vec![false; batch.len()];
                let outs = w.model.complete_streaming(&jobs, &mut |i, delta| {
                    w.alive.beat();
                    w.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
                    let q = &batch[i];
                    if !delta.is_empty() {
                        q.fanout.send(Event::Text(q.choice, delta.to_string()));
                    }
                    let wanted = q.fanout.wanted();
                    if !wanted && !gone[i] {
                        gone[i] = true;
                        w.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        w.inflight.finish(&q.fanout);
                    }
                    wanted
                });
                tracing::debug!(batch = jobs.len(), secs = t.elapsed().as_secs_f64(), "model batch");
                for (q, out) in batch.iter().zip(outs) {
                    if q.fanout.send(Event::Done(q.choice, out)) {
                        w.inflight.finish(&q.fanout);
                    }
                }
            }
        })
        .expect("spawn the model thread");
    tx
}

/// With an API key set, a `/v1` request without `Authorization: Bearer KEY`
/// gets the API's 401 (the key is compared, never logged or echoed).
async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<_> = s.names.iter().map(|n| s.model_object(n)).collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

async fn model(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if s.names.contains(&id) {
        Json(s.model_object(&id)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

async fn stats_handler(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": s.stats.requests.load(Ordering::SeqCst),
        "completions": s.stats.completions.load(Ordering::SeqCst),
        "joined": s.stats.joined.load(Ordering::SeqCst),
        "decode_steps": s.stats.decode_steps.load(Ordering::SeqCst),
        "dropped": s.stats.dropped.load(Ordering::SeqCst),
        "batches_created": s.stats.batches_created.load(Ordering::SeqCst),
        "batches_running": s.stats.batches_running.load(Ordering::SeqCst),
        "rate_limited": s.stats.rate_limited.load(Ordering::SeqCst),
    }))
}

/// A chat request's number in arrival order, from 0 (counting invalid ones):
/// the fault script's index and the completion's id.
#[derive(Debug, Clone, Copy)]
struct RequestNo(u64);

/// A chat request that parsed, which [`admit`] leaves in the request's
/// extensions for the handler to take (read and parsed once).
#[derive(Clone)]
struct Admitted(ChatCall);

impl<S: Send + Sync> FromRequestParts<S> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .remove::<Admitted>()
            .ok_or_else(|| ApiError::server("the chat request was not admitted").into_response())
    }
}

/// The chat route's outer middleware: reads the body (within axum's default
/// limit), counts and numbers the request, and answers the API's 400 to one
/// that does not parse and 404 to an unknown model, with no latency and no
/// fault draw.
async fn admit(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await {
        Ok(b) => b,
        Err(rejection) => return ApiError::bad_request(rejection.body_text(), None).into_response(),
    };
    let n = s.stats.requests.fetch_add(1, Ordering::SeqCst);
    let call = match ChatCall::parse(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if !s.names.contains(&call.model) {
        return ApiError::model_not_found(&call.model).into_response();
    }
    let mut limits = axum::http::HeaderMap::new();
    let reservation = match &s.rate {
        None => None,
        Some(l) => {
            let prompt: u32 = call
                .messages
                .iter()
                .map(|m| crate::protocol::approx_tokens(&m.content))
                .sum();
            let most = prompt.saturating_add(call.max_tokens.unwrap_or(1024).saturating_mul(call.n.max(1)));
            match l.admit(most, &mut limits) {
                Ok(r) => Some(Arc::new(r)),
                Err(wait) => {
                    s.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
                    let mut resp = ApiError::rate_limited().into_response();
                    let h = resp.headers_mut();
                    h.extend(limits);
                    h.insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
                    );
                    h.insert("retry-after-ms", HeaderValue::from(wait.as_millis().max(1) as u64));
                    return resp;
                }
            }
        }
    };
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(RequestNo(n));
    req.extensions_mut().insert(Admitted(call));
    if let Some(r) = reservation {
        req.extensions_mut().insert(r);
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().extend(limits);
    resp
}

async fn chat(
    State(s): State<Arc<AppState>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    reservation: Option<Extension<Arc<rate::Reservation>>>,
    Admitted(call): Admitted,
) -> Response {
    // The tokens an answer did not use go back to the rate budget.
    let settle: Settle = reservation.map(|Extension(r)| {
        let s = s.clone();
        Box::new(move |used: u32| {
            if let Some(l) = &s.rate {
                l.settle(&r, used)
            }
        }) as Box<dyn FnOnce(u32) + Send>
    });
    let rx = match submit(&s, &call) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    s.stats.completions.fetch_add(1, Ordering::SeqCst);
    let head = Head {
        id: format!("chatcmpl-{n}"),
        created: chrono::Utc::now().timestamp(),
        model: s.name().to_string(),
        n: call.n,
    };
    match call.stream {
        Some(opts) => {
            let beat = s.jobs.is_some().then(|| Heartbeat {
                every: s.keepalive,
                alive: s.alive.clone(),
                stall_after: s.stall_after,
            });
            stream(head, opts, rx, beat, s.reasoning, settle)
        }
        None => {
            let r = whole(head, rx, s.reasoning).await;
            if let Some(f) = settle {
                f(r.as_ref().ok().and_then(|r| r.usage).map_or(0, |u| u.total_tokens));
            }
            match r {
                Ok(r) => Json(r).into_response(),
                Err(e) => e.into_response(),
            }
        }
    }
}

/// Hands the rate budget what an answer used, once it is complete.
type Settle = Option<Box<dyn FnOnce(u32) + Send>>;

/// Hands `call`'s jobs to the model (or joins an identical call in
/// flight); the events of its answer come on the receiver.
fn submit(s: &AppState, call: &ChatCall) -> Result<UnboundedReceiver<Event>, ApiError> {
    if call.top_logprobs.is_some() && !s.model.logprobs() {
        return Err(ApiError::bad_request(
            format!("logprobs: the {} backend does not return log probabilities", s.name()),
            Some("logprobs"),
        ));
    }
    let jobs = jobs_for(call);
    s.model.check(&jobs[0])?;
    let (fanout, rx, new) = s.inflight.join(call_key(call), call.n.max(1));
    if !new {
        s.stats.joined.fetch_add(1, Ordering::SeqCst);
    } else {
        match &s.jobs {
            Some(queue) => {
                for (choice, job) in jobs.into_iter().enumerate() {
                    let q = Queued {
                        job,
                        choice: choice as u32,
                        fanout: fanout.clone(),
                    };
                    if queue.send(q).is_err() {
                        s.inflight.finish(&fanout);
                        return Err(ApiError::server("the model thread has stopped"));
                    }
                }
            }
            None => {
                inline(s.model.as_ref(), &jobs, &fanout, call.stream.is_some());
                s.inflight.finish(&fanout);
            }
        }
    }
    Ok(rx)
}

/// A whole (not streamed) answer.
async fn whole(
    head: Head,
    rx: UnboundedReceiver<Event>,
    form: Option<ReasoningForm>,
) -> Result<ChatResponse, ApiError> {
    let (choices, usage) = collect(head.n, rx, form).await?;
    Ok(ChatResponse {
        id: head.id,
        object: "chat.completion".into(),
        created: head.created,
        model: head.model,
        choices,
        usage: Some(usage),
    })
}

/// What the batch worker asks of the model: one call's whole answer.
pub(crate) async fn answer(s: &AppState, call: &ChatCall, id: String) -> Result<ChatResponse, ApiError> {
    if !s.names.contains(&call.model) {
        return Err(ApiError::model_not_found(&call.model));
    }
    let rx = submit(s, call)?;
    s.stats.completions.fetch_add(1, Ordering::SeqCst);
    let head = Head {
        id,
        created: chrono::Utc::now().timestamp(),
        model: s.name().to_string(),
        n: call.n,
    };
    whole(head, rx, s.reasoning).await
}

/// One job per sample.
fn jobs_for(call: &ChatCall) -> Vec<ModelJob> {
    (0..call.n.max(1))
        .map(|sample| ModelJob {
            messages: call.messages.clone(),
            max_tokens: call.max_tokens,
            temperature: call.temperature,
            top_p: call.top_p,
            request_seed: call.seed,
            sample,
            stop: call.stop.clone(),
            top_logprobs: call.top_logprobs,
        })
        .collect()
}

/// A fast model's answers, on the calling thread, reported as the model
/// thread reports them.
fn inline(model: &dyn ChatModel, jobs: &[ModelJob], fanout: &Fanout, stream: bool) {
    let mut outs = if stream {
        model.complete_streaming(jobs, &mut |i, delta| {
            if !delta.is_empty() {
                fanout.send(Event::Text(i as u32, delta.to_string()));
            }
            true
        })
    } else {
        // The whole text goes with each choice's end.
        model.complete(jobs)
    };
    outs.resize_with(jobs.len(), || Err("the model gave no answer".into()));
    for (i, out) in outs.into_iter().enumerate().take(jobs.len()) {
        fanout.send(Event::Done(i as u32, out));
    }
}

/// SSE comments for a streamed answer while it waits for a busy model.
struct Heartbeat {
    every: Duration,
    alive: Arc<Liveness>,
    stall_after: Duration,
}

/// What every chunk of one response repeats.
struct Head {
    id: String,
    created: i64,
    model: String,
    n: u32,
}

impl Head {
    fn chunk(&self, choices: serde_json::Value, usage: Option<serde_json::Value>) -> Bytes {
        let mut c = serde_json::json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null, "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        sse(&c)
    }
}

fn sse(data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The `n` choices of a non-streamed answer and their usage; the first
/// failed job fails the request.
async fn collect(
    n: u32,
    mut rx: UnboundedReceiver<Event>,
    form: Option<ReasoningForm>,
) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut outs: Vec<Option<ModelOutput>> = vec![None; n as usize];
    let mut left = n;
    while left > 0 {
        match rx.recv().await {
            Some(Event::Done(i, Ok(out))) => {
                outs[i as usize] = Some(out);
                left -= 1;
            }
            Some(Event::Done(_, Err(e))) => return Err(ApiError::server(e)),
            Some(Event::Text(..)) => {}
            None => return Err(ApiError::server("the model thread dropped the request")),
        }
    }
    let mut usage = Usage::default();
    let choices = outs
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, out)| {
            usage.prompt_tokens = out.prompt_tokens;
            usage.completion_tokens += out.completion_tokens;
            let mut message = Message::new("assistant", out.text);
            if let Some(sh) = form.map(|f| f.shape(&message.content)) {
                message.content = sh.content;
                match sh.field {
                    Some(("reasoning", t)) => message.reasoning = Some(t),
                    Some((_, t)) => message.reasoning_content = Some(t),
                    None => {}
                }
                add_reasoning_tokens(&mut usage, sh.reasoning_tokens);
            }
            Choice {
                index: i as u32,
                message,
                finish_reason: Some(out.finish_reason.into()),
                logprobs: out.logprobs.map(|c| crate::protocol::Logprobs { content: Some(c) }),
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok((choices, usage))
}

fn add_reasoning_tokens(u: &mut Usage, n: u32) {
    let d = u.completion_tokens_details.get_or_insert_default();
    *d.reasoning_tokens.get_or_insert(0) += n;
}

/// A streamed answer: server-sent `chat.completion.chunk` events (the
/// role, the text as the model reports it, the finish reason, per choice;
/// the usage last when asked for), then `data: [DONE]`. A job that fails
/// midway sends the API's error object and ends the stream. When the
/// client goes, the body is dropped, and with it the events' receiver:
/// the model thread sees that and stops decoding for it.
fn stream(
    head: Head,
    opts: Streaming,
    mut rx: UnboundedReceiver<Event>,
    beat: Option<Heartbeat>,
    form: Option<ReasoningForm>,
    settle: Settle,
) -> Response {
    let (out, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let usage_null = opts.include_usage.then_some(serde_json::Value::Null);
        let choice = |i: u32, delta: serde_json::Value, finish: Option<&str>| serde_json::json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        for i in 0..head.n {
            let first = head.chunk(
                choice(i, serde_json::json!({"role": "assistant", "content": ""}), None),
                usage_null.clone(),
            );
            if out.send(Ok(first)).await.is_err() {
                return;
            }
        }
        let mut usage = Usage::default();
        let mut left = head.n;
        // Text bytes sent per choice: a choice whose text was not streamed
        // (a fast model answers at once) gets it whole before its end.
        let mut sent = vec![0usize; head.n as usize];
        let every = beat.as_ref().map_or(Duration::from_secs(86_400), |b| b.every);
        while left > 0 {
            let next = tokio::select! {
                _ = out.closed() => return,
                ev = rx.recv() => ev,
                _ = tokio::time::sleep(every) => {
                    // No news for a while: say the server lives, if its model does.
                    if beat.as_ref().is_some_and(|b| b.alive.within(b.stall_after))
                        && out.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let frame = match next {
                // A reasoning form is made of the whole text, at its end.
                Some(Event::Text(..)) if form.is_some() => continue,
                Some(Event::Text(i, text)) => {
                    sent[i as usize] += text.len();
                    head.chunk(
                        choice(i, serde_json::json!({"content": text}), None),
                        usage_null.clone(),
                    )
                }
                Some(Event::Done(i, Ok(o))) => {
                    left -= 1;
                    usage.prompt_tokens = o.prompt_tokens;
                    usage.completion_tokens += o.completion_tokens;
                    let shaped = form.map(|f| f.shape(&o.text));
                    if let Some(sh) = &shaped {
                        add_reasoning_tokens(&mut usage, sh.reasoning_tokens);
                        if let Some((field, thought)) = &sh.field {
                            let c = head.chunk(
                                choice(
                                    i,
                                    serde_json::Value::Object(
                                        [(field.to_string(), thought.clone().into())].into_iter().collect(),
                                    ),
                                    None,
                                ),
                                usage_null.clone(),
                            );
                            if out.send(Ok(c)).await.is_err() {
                                return;
                            }
                        }
                    }
                    let text = shaped.map_or(o.text, |sh| sh.content);
                    if let Some(rest) = text.get(sent[i as usize]..).filter(|r| !r.is_empty()) {
                        let c = head.chunk(
                            choice(i, serde_json::json!({"content": rest}), None),
                            usage_null.clone(),
                        );
                        if out.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    if let Some(lp) = &o.logprobs {
                        let c = head.chunk(
                            serde_json::json!([{"index": i, "delta": {}, "finish_reason": null,
                                "logprobs": {"content": lp}}]),
                            usage_null.clone(),
                        );
                        if out.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    head.chunk(
                        choice(i, serde_json::json!({}), Some(o.finish_reason)),
                        usage_null.clone(),
                    )
                }
                Some(Event::Done(_, Err(e))) => {
                    let _ = out.send(Ok(sse(&ApiError::server(e).body()))).await;
                    return;
                }
                None => {
                    let e = ApiError::server("the model thread dropped the request");
                    let _ = out.send(Ok(sse(&e.body()))).await;
                    return;
                }
            };
            if out.send(Ok(frame)).await.is_err() {
                return;
            }
        }
        if let Some(f) = settle {
            f(usage.prompt_tokens + usage.completion_tokens);
        }
        if opts.include_usage {
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            let u = serde_json::to_value(usage).expect("usage serialises");
            if out.send(Ok(head.chunk(serde_json::json!([]), Some(u)))).await.is_err() {
                return;
            }
        }
        let _ = out.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = futures::stream::unfold(body_rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
