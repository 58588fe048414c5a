//! [`TeacherClient`]: an OpenAI-compatible chat client with bounded
//! concurrency, request and token rate limits, timeouts, and retries with
//! exponential backoff, full jitter and `Retry-After`.
//!
//! Answers are streamed by default (`stream: true`, server-sent chunks
//! assembled into one [`ChatResponse`]), so the time-out measures liveness:
//! a request fails when the server has sent nothing for `idle_timeout`,
//! however long a live answer takes; `total_timeout` caps the whole answer
//! when a user wants that too.

use crate::error::TeacherError;
use crate::protocol::{ChatRequest, ChatResponse, Choice, Logprobs, Message, TokenLogprob, Usage};
use governor::{DefaultDirectRateLimiter, Quota};
use rand::RngExt;
use serde::Deserialize;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Where the teacher is and how hard to push it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://127.0.0.1:8089/v1` or a provider's `/v1` URL.
    pub base_url: String,
    /// More servers of the same model (`teacher.base_urls`): requests go to
    /// the one with the fewest outstanding; one that keeps failing is
    /// drained for a while. Empty: `base_url` alone.
    pub more_urls: Vec<String>,
    pub model: String,
    /// The *name* of the environment variable holding the API key; the key
    /// itself is read at start-up and never logged or written.
    pub api_key_env: Option<String>,
    pub concurrency: usize,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// The longest the server may send nothing (connecting, before the
    /// first byte, between chunks) before the attempt counts as timed out.
    /// Without streaming, a whole answer must come within it.
    pub idle_timeout: Duration,
    /// A cap on each attempt's whole duration; `None`: only `idle_timeout`.
    pub total_timeout: Option<Duration>,
    /// Ask for the answer as server-sent chunks (every OpenAI-compatible
    /// server streams); off, the answer comes as one JSON body.
    pub stream: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: "http://127.0.0.1:8089/v1".into(),
            more_urls: Vec::new(),
            model: "solver".into(),
            api_key_env: None,
            concurrency: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            idle_timeout: Duration::from_secs(120),
            total_timeout: None,
            stream: true,
            max_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A successful completion and what it cost to get.
#[derive(Debug, Clone)]
pub struct Completion {
    pub response: ChatResponse,
    pub latency_ms: u32,
    pub attempts: u32,
}

impl ClientConfig {
    /// The API key, read from the variable `api_key_env` names.
    pub fn api_key(&self) -> Result<Option<String>, TeacherError> {
        match &self.api_key_env {
            None => Ok(None),
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                TeacherError::Config(format!(
                    "the API key variable {var} is not set (api_key_env names the variable, not the key)"
                ))
            }),
        }
    }

    /// How long to wait before retry `attempt` (from 0): exponential from
    /// `backoff_base` up to `backoff_max`, with full jitter so a burst of
    /// 429s does not come back in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        cap.mul_f64(rand::rng().random_range(0.0..1.0))
    }

    /// Every server to send to, without trailing slashes.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(&self.base_url)
            .chain(&self.more_urls)
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    }
}

/// One server of several, and what it did.
struct Endpoint {
    base: String,
    url: String,
    pacer: crate::ratelimit::Pacer,
    outstanding: std::sync::atomic::AtomicUsize,
    health: std::sync::Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures_in_row: u32,
    drains: u32,
    drained_until: Option<Instant>,
    ok: u64,
    failed: u64,
    latency_ms_total: u64,
}

/// Attempts in a row that fail before an endpoint is drained.
const DRAIN_AFTER: u32 = 5;

/// Per-endpoint figures for the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EndpointFigures {
    pub base_url: String,
    pub ok: u64,
    pub failed: u64,
    pub mean_latency_ms: f64,
    /// Times it was drained for failing.
    pub drained: u32,
}

impl Endpoint {
    fn new(base: String) -> Endpoint {
        Endpoint {
            url: format!("{base}/chat/completions"),
            base,
            pacer: crate::ratelimit::Pacer::default(),
            outstanding: Default::default(),
            health: Default::default(),
        }
    }

    fn drained_until(&self) -> Option<Instant> {
        self.health.lock().unwrap().drained_until
    }

    /// A failure that says the server, not the request, is in trouble
    /// counts toward draining it: out for 2 s, doubling each time, at most
    /// a minute; then it is tried again.
    fn record(&self, outcome: &Result<ChatResponse, Attempt>, took: Duration) {
        let mut h = self.health.lock().unwrap();
        match outcome {
            Ok(_) => {
                h.ok += 1;
                h.latency_ms_total += took.as_millis() as u64;
                h.failures_in_row = 0;
                h.drained_until = None;
            }
            Err(a) => {
                h.failed += 1;
                if a.retry && !a.throttled {
                    h.failures_in_row += 1;
                    if h.failures_in_row >= DRAIN_AFTER {
                        let secs = (2u64 << h.drains.min(5)).min(60);
                        h.drains += 1;
                        h.failures_in_row = 0;
                        h.drained_until = Some(Instant::now() + Duration::from_secs(secs));
                        tracing::warn!(endpoint = %self.base, secs, reason = %a.reason, "endpoint drained after failing in a row");
                    }
                }
            }
        }
    }

    fn figures(&self) -> EndpointFigures {
        let h = self.health.lock().unwrap();
        EndpointFigures {
            base_url: self.base.clone(),
            ok: h.ok,
            failed: h.failed,
            mean_latency_ms: if h.ok == 0 {
                0.0
            } else {
                h.latency_ms_total as f64 / h.ok as f64
            },
            drained: h.drains,
        }
    }
}

/// One failed attempt: whether to try again, and after how long at least.
struct Attempt {
    reason: String,
    retry: bool,
    retry_after: Option<Duration>,
    /// The server could not be reached at all (refused, reset, unknown host).
    connect: bool,
    /// A 429 or 503: the server asks for less.
    throttled: bool,
}

impl Attempt {
    /// A failure worth another attempt, with nothing more known about it.
    fn retryable(reason: String) -> Attempt {
        Attempt {
            reason,
            retry: true,
            retry_after: None,
            connect: false,
            throttled: false,
        }
    }
}

/// Stops a run from storming a server that is gone: once the last
/// `threshold` attempts in a row all failed to connect, over at least
/// `min_span`, every request fails at once with the last reason, instead
/// of each of thousands retrying on its own.
struct Breaker {
    state: std::sync::Mutex<BreakerState>,
    /// Wakes the requests waiting out a backoff when it trips.
    wake: tokio::sync::Notify,
    threshold: u32,
    min_span: Duration,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    since: Option<Instant>,
    last: String,
    tripped: bool,
}

impl Breaker {
    fn record(&self, connect_failure: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        match connect_failure {
            None => {
                if !s.tripped {
                    *s = BreakerState::default();
                }
            }
            Some(why) => {
                s.failures += 1;
                let since = *s.since.get_or_insert_with(Instant::now);
                s.last = why.to_string();
                if s.failures >= self.threshold && since.elapsed() >= self.min_span && !s.tripped {
                    s.tripped = true;
                    self.wake.notify_waiters();
                    tracing::error!(failures = s.failures, reason = %s.last, "every recent request failed to connect; stopping");
                }
            }
        }
    }

    fn tripped(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.tripped
            .then(|| format!("the last {} attempts all failed to connect ({})", s.failures, s.last))
    }
}

pub struct TeacherClient {
    http: reqwest::Client,
    cfg: ClientConfig,
    endpoints: Vec<Endpoint>,
    key: Option<String>,
    slots: Semaphore,
    rpm: Option<DefaultDirectRateLimiter>,
    tpm: Option<(DefaultDirectRateLimiter, u32)>,
    breaker: Breaker,
    aimd: crate::ratelimit::Aimd,
}

impl std::fmt::Debug for TeacherClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TeacherClient")
            .field("urls", &self.endpoints.iter().map(|e| &e.base).collect::<Vec<_>>())
            .field("model", &self.cfg.model)
            .finish()
    }
}

fn per_minute(n: u32, burst: u32) -> Result<DefaultDirectRateLimiter, TeacherError> {
    let n = NonZeroU32::new(n).ok_or_else(|| TeacherError::Config("a per-minute limit must be above 0".into()))?;
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
    Ok(DefaultDirectRateLimiter::direct(
        Quota::per_minute(n).allow_burst(burst),
    ))
}

impl TeacherClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, TeacherError> {
        let key = cfg.api_key()?;
        let mut http = reqwest::Client::builder()
            .read_timeout(cfg.idle_timeout)
            .connect_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.concurrency.max(1));
        if let Some(t) = cfg.total_timeout {
            http = http.timeout(t);
        }
        let http = http
            .build()
            .map_err(|e| TeacherError::Config(format!("HTTP client: {e}")))?;
        // Requests are spaced evenly (burst 1) so the measured rate stays at the limit.
        let rpm = cfg.requests_per_minute.map(|n| per_minute(n, 1)).transpose()?;
        let tpm = match cfg.tokens_per_minute {
            Some(n) => {
                let burst = (n / 60).max(1);
                Some((per_minute(n, burst)?, burst))
            }
            None => None,
        };
        let endpoints = cfg.urls().into_iter().map(Endpoint::new).collect();
        Ok(TeacherClient {
            http,
            slots: Semaphore::new(cfg.concurrency.max(1)),
            endpoints,
            key,
            rpm,
            tpm,
            aimd: crate::ratelimit::Aimd::new(cfg.concurrency.max(1)),
            breaker: Breaker {
                state: Default::default(),
                wake: tokio::sync::Notify::new(),
                // Every slot failing a few times over: not one unlucky request.
                threshold: (cfg.concurrency as u32).saturating_mul(3).clamp(8, 256),
                min_span: Duration::from_secs(3),
            },
            cfg,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// A check that takes seconds, before any work: the server answers
    /// `GET {base_url}/models` (any status but 401/403 counts: some servers
    /// have no such route), and when it lists its models, the configured
    /// one is among them. A refused connection, an unknown host, a time-out
    /// or an unknown model is reported with the URL, instead of a minute of
    /// retries per request.
    pub async fn preflight(&self, timeout: Duration) -> Result<(), TeacherError> {
        for e in &self.endpoints {
            self.preflight_one(&e.base, timeout).await?;
        }
        Ok(())
    }

    async fn preflight_one(&self, base: &str, timeout: Duration) -> Result<(), TeacherError> {
        let url = format!("{base}/models");
        let mut rb = self.http.get(&url).timeout(timeout);
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        match rb.send().await {
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Err(TeacherError::Config(format!(
                "{url}: the server refused the API key ({}){}",
                r.status(),
                self.cfg
                    .api_key_env
                    .as_deref()
                    .map(|v| format!(" read from {v}"))
                    .unwrap_or_else(|| "; no api_key_env is set".into())
            ))),
            Ok(r) if r.status().is_success() => {
                #[derive(Deserialize)]
                struct Listed {
                    id: String,
                }
                #[derive(Deserialize)]
                struct Models {
                    data: Vec<Listed>,
                }
                // A list that does not parse, or an empty one, says nothing about the model.
                let Ok(m) = r.json::<Models>().await else { return Ok(()) };
                if m.data.is_empty() || m.data.iter().any(|x| x.id == self.cfg.model) {
                    return Ok(());
                }
                let names: Vec<&str> = m.data.iter().take(10).map(|x| x.id.as_str()).collect();
                Err(TeacherError::Config(format!(
                    "teacher.model = {:?}: {url} does not list it (it lists {}{})",
                    self.cfg.model,
                    names.join(", "),
                    if m.data.len() > 10 { ", ..." } else { "" }
                )))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("no answer within {:.0} s", timeout.as_secs_f64())
                } else if e.is_connect() {
                    format!(
                        "cannot connect: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| without_url(&e))
                    )
                } else {
                    without_url(&e)
                };
                Err(TeacherError::Config(format!(
                    "teacher.base_url = {base}: not reachable ({what})"
                )))
            }
        }
    }

    /// Why the client stopped sending, once every recent attempt failed
    /// to connect ([`Breaker`]).
    pub fn tripped(&self) -> Option<String> {
        self.breaker.tripped()
    }

    /// Sends `req`, retrying what can be retried. `est_tokens` is charged
    /// against the tokens-per-minute limit before sending.
    pub async fn complete(&self, req: &ChatRequest, est_tokens: u32) -> Result<Completion, TeacherError> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let mut attempt = 0;
        loop {
            if let Some(why) = self.breaker.tripped() {
                return Err(TeacherError::Unreachable(why));
            }
            if let Some(l) = &self.rpm {
                l.until_ready().await;
            }
            if let Some((l, burst)) = &self.tpm {
                let n = NonZeroU32::new(est_tokens.clamp(1, *burst)).expect("clamped to >= 1");
                let _ = l.until_n_ready(n).await;
            }
            // The server's own headers, then how many it takes at once.
            let ep = self.pick();
            let ticket = ep.pacer.admit(est_tokens).await;
            let slot = self.aimd.slot().await;
            let start = Instant::now();
            ep.outstanding.fetch_add(1, Ordering::SeqCst);
            let outcome = self.send_once(ep, req, ticket).await;
            ep.outstanding.fetch_sub(1, Ordering::SeqCst);
            ep.record(&outcome, start.elapsed());
            drop(slot);
            match &outcome {
                Ok(_) => self.aimd.grow(),
                Err(a) if a.throttled => self.aimd.shrink(),
                Err(_) => {}
            }
            self.breaker.record(
                outcome
                    .as_ref()
                    .err()
                    .and_then(|a| a.connect.then_some(a.reason.as_str())),
            );
            attempt += 1;
            match outcome {
                Ok(response) => {
                    let latency_ms = start.elapsed().as_millis().min(u32::MAX as u128) as u32;
                    return Ok(Completion {
                        response,
                        latency_ms,
                        attempts: attempt,
                    });
                }
                Err(a) if !a.retry || attempt > self.cfg.max_retries => {
                    return Err(TeacherError::Request {
                        attempts: attempt,
                        reason: a.reason,
                    });
                }
                Err(a) => {
                    let wait = self.cfg.backoff(attempt - 1).max(a.retry_after.unwrap_or_default());
                    tracing::debug!(attempt, reason = %a.reason, wait_ms = wait.as_millis() as u64, "retrying");
                    let woken = self.breaker.wake.notified();
                    if self.breaker.tripped().is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = woken => {}
                        }
                    }
                }
            }
        }
    }

    /// The endpoint for the next attempt: the fewest outstanding among
    /// those not drained; when every one is drained, the one back soonest.
    fn pick(&self) -> &Endpoint {
        if self.endpoints.len() == 1 {
            return &self.endpoints[0];
        }
        let now = Instant::now();
        self.endpoints
            .iter()
            .filter(|e| e.drained_until().is_none_or(|t| t <= now))
            .min_by_key(|e| e.outstanding.load(Ordering::SeqCst))
            .unwrap_or_else(|| {
                self.endpoints
                    .iter()
                    .min_by_key(|e| e.drained_until())
                    .expect("at least one endpoint")
            })
    }

    /// What each endpoint did (several endpoints only).
    pub fn endpoint_figures(&self) -> Vec<EndpointFigures> {
        self.endpoints.iter().map(|e| e.figures()).collect()
    }

    async fn send_once(
        &self,
        ep: &Endpoint,
        req: &ChatRequest,
        ticket: crate::ratelimit::Ticket,
    ) -> Result<ChatResponse, Attempt> {
        let r = self.send_unpaced(ep, req, ticket).await;
        if let Ok(resp) = &r {
            let used = resp.usage.map(|u| u.prompt_tokens + u.completion_tokens);
            ep.pacer.observe(ticket, &reqwest::header::HeaderMap::new(), used);
        }
        r
    }

    async fn send_unpaced(
        &self,
        ep: &Endpoint,
        req: &ChatRequest,
        ticket: crate::ratelimit::Ticket,
    ) -> Result<ChatResponse, Attempt> {
        let retryable = Attempt::retryable;
        let wire = wire(req, self.cfg.stream);
        let mut rb = self.http.post(&ep.url).json(&wire);
        if let Some(k) = &self.key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection error"
            } else {
                "request error"
            };
            Attempt {
                connect: e.is_connect(),
                ..retryable(format!("{kind}: {}", without_url(&e)))
            }
        })?;
        let status = resp.status();
        ep.pacer.observe(ticket, resp.headers(), None);
        let header_f64 = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
        };
        // OpenAI's `retry-after-ms` is finer than `Retry-After`'s seconds.
        let retry_after = header_f64("retry-after-ms")
            .map(|ms| ms / 1000.0)
            .or_else(|| header_f64("retry-after"))
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_sse {
            return read_stream(resp).await;
        }
        let body = resp.bytes().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timeout reading body"
            } else {
                "broken body"
            };
            retryable(format!("{kind}: {}", without_url(&e)))
        })?;
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            let retry = status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408;
            return Err(Attempt {
                reason: format!("HTTP {status}: {snippet}"),
                retry,
                retry_after,
                connect: false,
                throttled: matches!(status.as_u16(), 429 | 503),
            });
        }
        let parsed: ChatResponse = serde_json::from_slice(&body)
            .map_err(|e| retryable(format!("unparsable body ({} bytes): {e}", body.len())))?;
        if parsed.choices.is_empty() {
            return Err(retryable("response has no choices".into()));
        }
        Ok(parsed)
    }
}

/// The request as sent: the canonical [`ChatRequest`] (what the cache
/// hashes) and how to deliver the answer, which is not part of it. With a
/// `reasoning_effort` the limit goes as `max_completion_tokens`, which
/// counts the reasoning tokens too and is the only limit OpenAI's
/// reasoning models accept; logprobs are asked for with `logprobs: true`.
pub(crate) fn wire(req: &ChatRequest, stream: bool) -> serde_json::Value {
    let mut w = serde_json::to_value(req).expect("a chat request serialises");
    let m = w.as_object_mut().expect("a chat request is an object");
    if req.reasoning_effort.is_some()
        && let Some(limit) = m.remove("max_tokens")
    {
        m.insert("max_completion_tokens".into(), limit);
    }
    if req.wants_logprobs() {
        m.insert("logprobs".into(), true.into());
    }
    if stream {
        m.insert("stream".into(), true.into());
        m.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
    }
    w
}

/// One `chat.completion.chunk`, read as tolerantly as a full response.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

/// One choice of a streamed answer so far.
#[derive(Default)]
struct Part {
    text: String,
    refusal: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    logprobs: Option<Vec<TokenLogprob>>,
    finish_reason: Option<String>,
}

/// A streamed answer being put together, choice by choice.
#[derive(Default)]
struct Assembly {
    id: String,
    created: i64,
    model: String,
    choices: std::collections::BTreeMap<u32, Part>,
    usage: Option<Usage>,
    done: bool,
}

impl Assembly {
    /// Takes one event's `data:` payload.
    fn take(&mut self, data: &str) -> Result<(), Attempt> {
        let retryable = Attempt::retryable;
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let c: Chunk = serde_json::from_str(data)
            .map_err(|e| retryable(format!("unparsable stream chunk ({} bytes): {e}", data.len())))?;
        if let Some(err) = c.error {
            let snippet: String = err.to_string().chars().take(200).collect();
            return Err(retryable(format!("error in the stream: {snippet}")));
        }
        if self.id.is_empty() {
            self.id = c.id;
            self.created = c.created;
        }
        if self.model.is_empty() {
            self.model = c.model;
        }
        for ch in c.choices {
            let e = self.choices.entry(ch.index).or_default();
            let d = ch.delta;
            if let Some(t) = d.content {
                e.text.push_str(&t);
            }
            for (got, into) in [
                (d.refusal, &mut e.refusal),
                (d.reasoning_content, &mut e.reasoning_content),
                (d.reasoning, &mut e.reasoning),
            ] {
                if let Some(t) = got {
                    into.get_or_insert_with(String::new).push_str(&t);
                }
            }
            if let Some(lp) = ch.logprobs.and_then(|l| l.content) {
                e.logprobs.get_or_insert_with(Vec::new).extend(lp);
            }
            if ch.finish_reason.is_some() {
                e.finish_reason = ch.finish_reason;
            }
        }
        if c.usage.is_some() {
            self.usage = c.usage;
        }
        Ok(())
    }

    /// The whole response, once the stream said it is complete (`[DONE]`,
    /// or every choice finished).
    fn finish(self) -> Result<ChatResponse, Attempt> {
        let complete =
            !self.choices.is_empty() && (self.done || self.choices.values().all(|c| c.finish_reason.is_some()));
        if !complete {
            return Err(Attempt::retryable(
                "the stream ended before the answer was complete".into(),
            ));
        }
        let choices = self
            .choices
            .into_iter()
            .map(|(index, p)| Choice {
                index,
                message: Message {
                    role: "assistant".into(),
                    content: p.text,
                    refusal: p.refusal,
                    reasoning_content: p.reasoning_content,
                    reasoning: p.reasoning,
                },
                finish_reason: p.finish_reason,
                logprobs: p.logprobs.map(|c| Logprobs { content: Some(c) }),
            })
            .collect();
        Ok(ChatResponse {
            id: self.id,
            object: "chat.completion".into(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
        })
    }
}

/// Reads server-sent events until `[DONE]` or the end of the body. Each
/// read waits at most the idle time-out (the client's `read_timeout`);
/// SSE comments (`: keep-alive`) count as life and carry nothing.
async fn read_stream(mut resp: reqwest::Response) -> Result<ChatResponse, Attempt> {
    let mut buf: Vec<u8> = Vec::new();
    let mut asm = Assembly::default();
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            Attempt::retryable(format!(
                "{}: {}",
                if e.is_timeout() {
                    "timeout: the stream went idle"
                } else {
                    "broken stream"
                },
                without_url(&e)
            ))
        })?;
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        // Events end with a blank line; a partial one waits for more bytes.
        while let Some(end) = event_end(&buf) {
            let event: Vec<u8> = buf.drain(..end.1).take(end.0).collect();
            let text = String::from_utf8_lossy(&event);
            let mut data = String::new();
            for line in text.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                asm.take(&data)?;
            }
            if asm.done {
                return asm.finish();
            }
        }
    }
    asm.finish()
}

/// Where the first event in `buf` ends: (its length, with the blank line).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// reqwest errors print the URL; keep messages short and free of query strings.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<url>");
    }
    s
}
