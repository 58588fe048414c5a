//! Batch mode: the teach stage's requests through a provider's Files and
//! Batch APIs (OpenAI's `/v1/files` + `/v1/batches`; vLLM's `run-batch`
//! reads the same JSONL), at the batch price.
//!
//! The durability contract: a paid batch is never created twice. Each
//! chunk of requests has a state file in the run's `batches/` folder,
//! rewritten atomically *before* each step that could be lost:
//!
//! ```text
//! planned → uploading → uploaded → creating → created → done
//! ```
//!
//! A run killed while `uploading` looks for its file by name before
//! uploading again; one killed while `creating` looks for its batch by the
//! chunk id in the batch's `metadata` before creating one; `created`
//! polls the batch it recorded. Downloaded output and error files are kept
//! beside the state (fsynced) and replayed into the response cache, from
//! which [`crate::stage`] writes each row exactly once. Requests that
//! failed or expired are planned again into new chunks, up to
//! `max_attempts` submissions each; what still fails is recorded as failed.

use crate::cache::{CachedResponse, ResponseCache};
use crate::error::TeacherError;
use crate::protocol::{ChatRequest, ChatResponse};
use crate::stage::{Price, TeachConfig, TeachPaths};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use stepwise_datasets::Example;
use stepwise_datasets::answer::{extract_answer, labels_match};
use stepwise_datasets::atomic;

/// How batches are made and waited for (operational: never part of an identity).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most requests in one batch (OpenAI: 50,000).
    pub max_requests: usize,
    /// Most bytes in one input file (OpenAI: 200 MB).
    pub max_bytes: u64,
    /// The first wait between two looks at a batch; it grows by half each
    /// look up to `poll_max`.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// The share of the live price a batch saves (OpenAI, Anthropic: 0.5).
    pub discount: f64,
    /// Submissions of one request before it is recorded as failed.
    pub max_attempts: u32,
    pub completion_window: String,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_requests: 50_000,
            max_bytes: 200_000_000,
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(300),
            discount: 0.5,
            max_attempts: 3,
            completion_window: "24h".into(),
        }
    }
}

impl BatchConfig {
    pub fn price(&self, live: Price) -> Price {
        let f = 1.0 - self.discount;
        Price {
            prompt_per_mtok: live.prompt_per_mtok * f,
            completion_per_mtok: live.completion_per_mtok * f,
        }
    }
}

/// Where a chunk is in its life. Each is recorded before the step it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Planned,
    Uploading,
    Uploaded,
    Creating,
    Created,
    Done,
}

/// One chunk's state file (`batches/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub id: String,
    /// Planning order.
    pub seq: u32,
    pub requests: usize,
    pub bytes: u64,
    pub phase: Phase,
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
    /// The batch's last status seen (`completed`, `expired`, `failed`, `cancelled`, ...).
    pub status: Option<String>,
    /// Set when the chunk was cancelled before it was ever submitted.
    #[serde(default)]
    pub never_submitted: bool,
}

/// What the batches did, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// Batches this run created.
    pub created: u64,
    /// Batches created by earlier runs that this one picked up.
    pub resumed: u64,
    /// Requests submitted by this run.
    pub submitted: u64,
    pub succeeded: u64,
    /// Requests that came back failed or expired (some resubmitted).
    pub failed_lines: u64,
    /// Requests given up after `max_attempts` submissions.
    pub gave_up: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// At the batch price.
    pub cost_usd: f64,
    pub stopped_by_budget: bool,
}

/// The Files and Batch APIs of one provider.
pub struct BatchApi {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    /// Retries and backoff, as for live requests.
    client: crate::ClientConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub errors: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct FileObject {
    id: String,
    #[serde(default)]
    filename: String,
    #[serde(default)]
    bytes: u64,
}

#[derive(Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

fn terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "expired" | "cancelled")
}

impl BatchApi {
    pub fn new(cfg: &crate::ClientConfig) -> Result<BatchApi, TeacherError> {
        let key = cfg.api_key()?;
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.idle_timeout)
            .read_timeout(cfg.idle_timeout.max(Duration::from_secs(60)))
            .build()
            .map_err(|e| TeacherError::Config(format!("HTTP client: {e}")))?;
        Ok(BatchApi {
            http,
            base: cfg.base_url.trim_end_matches('/').to_string(),
            key,
            client: cfg.clone(),
        })
    }

    /// Sends what `build` makes, retrying connection errors, 408, 429 and
    /// 5xx with backoff; any other status is an error naming the URL.
    async fn send(
        &self,
        what: &str,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<axum::body::Bytes, TeacherError> {
        self.send_status(what, url, build).await.map_err(|(_, e)| e)
    }

    /// [`Self::send`], with the HTTP status of a final failure.
    async fn send_status(
        &self,
        what: &str,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<axum::body::Bytes, (Option<u16>, TeacherError)> {
        let mut attempt = 0u32;
        loop {
            let mut rb = build(&self.http);
            if let Some(k) = &self.key {
                rb = rb.bearer_auth(k);
            }
            let (retry, reason, code) = match rb.send().await {
                Ok(r) => {
                    let status = r.status();
                    match r.bytes().await {
                        Ok(b) if status.is_success() => return Ok(b),
                        Ok(b) => {
                            let snippet: String = String::from_utf8_lossy(&b).chars().take(300).collect();
                            let retry = status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error();
                            (retry, format!("HTTP {status}: {snippet}"), Some(status.as_u16()))
                        }
                        Err(e) => (true, format!("broken body: {e}"), None),
                    }
                }
                Err(e) => (true, format!("{}", e.without_url()), None),
            };
            attempt += 1;
            if !retry || attempt > self.client.max_retries {
                return Err((code, TeacherError::Server(format!("{what} ({url}): {reason}"))));
            }
            let wait = self.client.backoff(attempt - 1);
            tracing::debug!(what, %reason, wait_ms = wait.as_millis() as u64, "batch API call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, TeacherError> {
        let body = self.send(what, url, build).await?;
        serde_json::from_slice(&body)
            .map_err(|e| TeacherError::Server(format!("{what} ({url}): unreadable answer: {e}")))
    }

    async fn upload(&self, filename: &str, bytes: Vec<u8>) -> Result<FileObject, TeacherError> {
        let url = format!("{}/files", self.base);
        self.json("upload the batch input", &url, |c| {
            let part = reqwest::multipart::Part::bytes(bytes.clone())
                .file_name(filename.to_string())
                .mime_str("application/jsonl")
                .expect("a valid mime type");
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part("file", part);
            c.post(&url).multipart(form)
        })
        .await
    }

    /// A batch input file uploaded earlier under this name and size.
    async fn find_file(&self, filename: &str, bytes: u64) -> Result<Option<String>, TeacherError> {
        let url = format!("{}/files?purpose=batch", self.base);
        let list: List<FileObject> = self.json("list files", &url, |c| c.get(&url)).await?;
        Ok(list
            .data
            .into_iter()
            .find(|f| f.filename == filename && f.bytes == bytes)
            .map(|f| f.id))
    }

    async fn create(&self, file_id: &str, chunk: &str, window: &str) -> Result<BatchObject, TeacherError> {
        let url = format!("{}/batches", self.base);
        let body = serde_json::json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": window,
            "metadata": {"stepwise_chunk": chunk},
        });
        self.json("create the batch", &url, |c| c.post(&url).json(&body)).await
    }

    /// The batch whose metadata names this chunk, if one was created.
    async fn find_batch(&self, chunk: &str) -> Result<Option<BatchObject>, TeacherError> {
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                None => format!("{}/batches?limit=100", self.base),
                Some(a) => format!("{}/batches?limit=100&after={a}", self.base),
            };
            let page: List<BatchObject> = self.json("list batches", &url, |c| c.get(&url)).await?;
            let last = page.last_id.clone().or_else(|| page.data.last().map(|b| b.id.clone()));
            if let Some(b) = page.data.into_iter().find(|b| {
                b.metadata
                    .as_ref()
                    .and_then(|m| m.get("stepwise_chunk"))
                    .is_some_and(|c| c == chunk)
            }) {
                return Ok(Some(b));
            }
            if !page.has_more || last.is_none() {
                return Ok(None);
            }
            after = last;
        }
    }

    pub async fn get(&self, id: &str) -> Result<BatchObject, TeacherError> {
        self.get_if_known(id).await?.ok_or_else(|| {
            TeacherError::Server(format!(
                "{}/batches/{id}: the provider does not know this batch",
                self.base
            ))
        })
    }

    /// The batch, or `None` when the provider answers 404 (it lost it, or
    /// a restarted local server never had it).
    pub async fn get_if_known(&self, id: &str) -> Result<Option<BatchObject>, TeacherError> {
        let url = format!("{}/batches/{id}", self.base);
        match self.send_status("look at the batch", &url, |c| c.get(&url)).await {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| TeacherError::Server(format!("look at the batch ({url}): unreadable answer: {e}"))),
            Err((Some(404), _)) => Ok(None),
            Err((_, e)) => Err(e),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<BatchObject, TeacherError> {
        let url = format!("{}/batches/{id}/cancel", self.base);
        self.json("cancel the batch", &url, |c| c.post(&url)).await
    }

    async fn content(&self, file_id: &str) -> Result<axum::body::Bytes, TeacherError> {
        let url = format!("{}/files/{file_id}/content", self.base);
        self.send("download the batch results", &url, |c| c.get(&url)).await
    }
}

/// The run's `batches/` folder.
struct Journal {
    dir: PathBuf,
}

impl Journal {
    fn open(dir: &Path) -> Result<Journal, TeacherError> {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::Io(dir.to_path_buf(), e))?;
        Ok(Journal { dir: dir.to_path_buf() })
    }

    fn state(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
    fn input(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.input.jsonl"))
    }
    fn output(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.output.jsonl"))
    }
    fn errors(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.errors.jsonl"))
    }

    fn save(&self, c: &Chunk) -> Result<(), TeacherError> {
        let body = serde_json::to_vec_pretty(c).expect("a chunk serialises");
        Ok(atomic::write_bytes(&self.state(&c.id), &body)?)
    }

    fn chunks(&self) -> Result<Vec<Chunk>, TeacherError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| TeacherError::Io(self.dir.clone(), e))?;
        for e in rd {
            let p = e.map_err(|e| TeacherError::Io(self.dir.clone(), e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".json") {
                let text = std::fs::read(&p).map_err(|e| TeacherError::Io(p.clone(), e))?;
                let c: Chunk = serde_json::from_slice(&text)
                    .map_err(|e| TeacherError::Config(format!("{}: not a batch state file: {e}", p.display())))?;
                out.push(c);
            }
        }
        out.sort_by_key(|c| c.seq);
        Ok(out)
    }

    /// The custom ids of a chunk's requests.
    fn ids(&self, id: &str) -> Result<Vec<String>, TeacherError> {
        #[derive(Deserialize)]
        struct Line {
            custom_id: String,
        }
        let p = self.input(id);
        let text = std::fs::read_to_string(&p).map_err(|e| TeacherError::Io(p.clone(), e))?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_str::<Line>(l)
                    .map(|l| l.custom_id)
                    .map_err(|e| TeacherError::Config(format!("{}: {e}", p.display())))
            })
            .collect()
    }
}

/// One line of an output or error file.
#[derive(Deserialize)]
struct ResultLine {
    custom_id: String,
    #[serde(default)]
    response: Option<ResultResponse>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ResultResponse {
    status_code: u16,
    #[serde(default)]
    body: serde_json::Value,
}

/// What the downloaded results say, over every finished chunk.
#[derive(Default)]
struct Results {
    /// Why each request still missing failed, the last time.
    reasons: HashMap<String, String>,
    /// How many submitted batches each request was in.
    attempts: HashMap<String, u32>,
    /// Tokens of each chunk's successful results.
    usage: HashMap<String, (u64, u64)>,
    succeeded: u64,
    failed_lines: u64,
}

/// Puts every successful result of the finished chunks in the cache.
/// Attempts count the batches that finished during this run (`earlier`
/// are those finished before it): running the stage again retries what
/// an earlier run gave up.
fn ingest(
    j: &Journal,
    chunks: &[Chunk],
    cache: &ResponseCache,
    cfg: &TeachConfig,
    earlier: &HashSet<String>,
) -> Result<Results, TeacherError> {
    let mut r = Results::default();
    for c in chunks.iter().filter(|c| c.phase == Phase::Done && !c.never_submitted) {
        if !earlier.contains(&c.id) {
            for id in j.ids(&c.id)? {
                *r.attempts.entry(id).or_default() += 1;
            }
        }
        for p in [j.output(&c.id), j.errors(&c.id)] {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let l: ResultLine = serde_json::from_str(line)
                    .map_err(|e| TeacherError::Server(format!("{} line {}: {e}", p.display(), n + 1)))?;
                let ok = l.response.as_ref().filter(|x| x.status_code == 200).and_then(|x| {
                    serde_json::from_value::<ChatResponse>(x.body.clone())
                        .ok()
                        .filter(|b| !b.choices.is_empty())
                });
                match ok {
                    Some(resp) => {
                        r.succeeded += 1;
                        let u = resp.usage.unwrap_or_default();
                        let t = r.usage.entry(c.id.clone()).or_default();
                        t.0 += u.prompt_tokens as u64;
                        t.1 += u.completion_tokens as u64;
                        r.reasons.remove(&l.custom_id);
                        let key = cfg.cache_key_of(&l.custom_id);
                        if cache.get(&key).is_none() {
                            cache.put(
                                &key,
                                &CachedResponse {
                                    response: resp,
                                    latency_ms: 0,
                                },
                            )?;
                        }
                    }
                    None => {
                        r.failed_lines += 1;
                        let why = match (&l.error, &l.response) {
                            (Some(e), _) if !e.is_null() => e.to_string(),
                            (_, Some(x)) => format!("HTTP {}: {}", x.status_code, x.body),
                            _ => "no response".into(),
                        };
                        let why: String = why.chars().take(300).collect();
                        r.reasons.insert(
                            l.custom_id,
                            format!("batch {}: {why}", c.batch_id.as_deref().unwrap_or("?")),
                        );
                    }
                }
            }
        }
        if c.status.as_deref() == Some("failed") {
            // A batch refused as a whole has no result lines: say why for each.
            for id in j.ids(&c.id)? {
                r.reasons
                    .entry(id)
                    .or_insert_with(|| format!("batch {} failed validation", c.batch_id.as_deref().unwrap_or("?")));
            }
        }
    }
    Ok(r)
}

/// The requests the stage needs now, by custom id (the request hash):
/// every example's first request and, with rationalisation, the hinted
/// one of examples whose cached answers all miss gold.
fn needed(examples: &[Example], cfg: &TeachConfig, cache: &ResponseCache) -> Vec<(String, ChatRequest)> {
    let mut out = Vec::new();
    for ex in examples {
        let (_, req) = crate::stage::request(cfg, &cfg.prompts, ex, None);
        let got = cache.get(&cfg.cache_key(&req));
        out.push((req.hash(), req));
        if cfg.rationalize
            && let Some(got) = got
        {
            let agrees = got.response.choices.iter().any(|c| {
                extract_answer(crate::reasoning::split(&c.message).visible)
                    .is_some_and(|a| labels_match(ex.label_kind, &a, &ex.label, ex.choices.as_deref()))
            });
            if !agrees {
                let (_, hinted) = crate::stage::request(cfg, &cfg.prompts, ex, Some(&ex.label));
                out.push((hinted.hash(), hinted));
            }
        }
    }
    out
}

/// One input line, as the Batch API reads it.
fn line(custom_id: &str, req: &ChatRequest) -> Vec<u8> {
    let mut l = serde_json::to_vec(&serde_json::json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": crate::client::wire(req, false),
    }))
    .expect("a batch line serialises");
    l.push(b'\n');
    l
}

/// Splits `todo` into chunks within the limits and records each as planned
/// (its input file, then its state).
fn plan(
    j: &Journal,
    todo: &[(String, ChatRequest)],
    cfg: &BatchConfig,
    first_seq: u32,
) -> Result<Vec<Chunk>, TeacherError> {
    let mut chunks = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut n = 0usize;
    let mut flush = |buf: &mut Vec<u8>, n: &mut usize| -> Result<(), TeacherError> {
        if *n == 0 {
            return Ok(());
        }
        use sha2::{Digest, Sha256};
        let seq = first_seq + chunks.len() as u32;
        let mut h = Sha256::new();
        h.update(seq.to_le_bytes());
        h.update(&*buf);
        let id = format!("{seq:05}-{}", &hex::encode(h.finalize())[..16]);
        atomic::write_bytes(&j.input(&id), buf)?;
        atomic::crash_point("batch:planned-input", &j.input(&id));
        let c = Chunk {
            id,
            seq,
            requests: *n,
            bytes: buf.len() as u64,
            phase: Phase::Planned,
            file_id: None,
            batch_id: None,
            status: None,
            never_submitted: false,
        };
        j.save(&c)?;
        chunks.push(c);
        buf.clear();
        *n = 0;
        Ok(())
    };
    for (id, req) in todo {
        let l = line(id, req);
        if l.len() as u64 > cfg.max_bytes {
            return Err(TeacherError::Config(format!(
                "request {id} is {} bytes, over teacher.batch.max_bytes = {}",
                l.len(),
                cfg.max_bytes
            )));
        }
        if n >= cfg.max_requests.max(1) || (buf.len() + l.len()) as u64 > cfg.max_bytes {
            flush(&mut buf, &mut n)?;
        }
        buf.extend_from_slice(&l);
        n += 1;
    }
    flush(&mut buf, &mut n)?;
    Ok(chunks)
}

/// Takes one chunk from wherever it stands to `done`.
async fn drive(
    j: &Journal,
    api: &BatchApi,
    cfg: &BatchConfig,
    mut c: Chunk,
    progress: &indicatif::ProgressBar,
    summary: &std::sync::Mutex<BatchSummary>,
) -> Result<Chunk, TeacherError> {
    let filename = format!("stepwise-{}.jsonl", c.id);
    let mut counted = false;
    loop {
        match c.phase {
            Phase::Planned => {
                c.phase = Phase::Uploading;
                j.save(&c)?;
            }
            Phase::Uploading => {
                let id = match api.find_file(&filename, c.bytes).await? {
                    Some(id) => id,
                    None => {
                        let p = j.input(&c.id);
                        let bytes = std::fs::read(&p).map_err(|e| TeacherError::Io(p.clone(), e))?;
                        api.upload(&filename, bytes).await?.id
                    }
                };
                atomic::crash_point("batch:uploaded", &j.state(&c.id));
                c.file_id = Some(id);
                c.phase = Phase::Uploaded;
                j.save(&c)?;
            }
            Phase::Uploaded => {
                c.phase = Phase::Creating;
                j.save(&c)?;
            }
            Phase::Creating => {
                let b = match api.find_batch(&c.id).await? {
                    Some(b) => {
                        summary.lock().unwrap().resumed += 1;
                        counted = true;
                        b
                    }
                    None => {
                        let file = c.file_id.as_deref().expect("uploaded before creating");
                        let b = api.create(file, &c.id, &cfg.completion_window).await?;
                        let mut s = summary.lock().unwrap();
                        s.created += 1;
                        s.submitted += c.requests as u64;
                        counted = true;
                        b
                    }
                };
                atomic::crash_point("batch:created", &j.state(&c.id));
                tracing::info!(chunk = %c.id, batch = %b.id, requests = c.requests, "batch submitted");
                c.batch_id = Some(b.id);
                c.status = Some(b.status);
                c.phase = Phase::Created;
                j.save(&c)?;
            }
            Phase::Created => {
                if !counted {
                    summary.lock().unwrap().resumed += 1;
                    counted = true;
                }
                let id = c.batch_id.clone().expect("created has a batch id");
                let mut wait = cfg.poll_min;
                let mut shown = 0u64;
                let b = loop {
                    let Some(b) = api.get_if_known(&id).await? else {
                        // Its requests are asked again, in a new batch.
                        tracing::warn!(batch = %id, "the provider does not know this batch any more; its requests are planned again");
                        c.status = Some("lost".into());
                        c.phase = Phase::Done;
                        j.save(&c)?;
                        return Ok(c);
                    };
                    if let Some(rc) = b.request_counts {
                        let done = rc.completed + rc.failed;
                        progress.inc(done.saturating_sub(shown));
                        shown = shown.max(done);
                    }
                    if terminal(&b.status) {
                        break b;
                    }
                    if c.status.as_deref() != Some(b.status.as_str()) {
                        tracing::info!(batch = %id, status = %b.status, "batch status");
                        c.status = Some(b.status.clone());
                    }
                    tokio::time::sleep(wait).await;
                    wait = wait.mul_f64(1.5).min(cfg.poll_max);
                };
                progress.inc((c.requests as u64).saturating_sub(shown));
                for (file, to) in [
                    (&b.output_file_id, j.output(&c.id)),
                    (&b.error_file_id, j.errors(&c.id)),
                ] {
                    if let Some(f) = file {
                        let body = api.content(f).await?;
                        atomic::write_bytes(&to, &body)?;
                    }
                }
                atomic::crash_point("batch:downloaded", &j.state(&c.id));
                if b.status == "failed" {
                    tracing::warn!(batch = %id, errors = ?b.errors, "the provider refused the batch");
                }
                tracing::info!(batch = %id, status = %b.status, "batch finished");
                c.status = Some(b.status);
                c.phase = Phase::Done;
                j.save(&c)?;
            }
            Phase::Done => return Ok(c),
        }
    }
}

/// Fills the response cache through the Batch API with every request the
/// stage needs, resuming whatever an earlier run left in `paths.batches`.
/// Returns what happened and, for each request that could not be had, why.
pub async fn fill(
    examples: &[Example],
    cfg: &TeachConfig,
    batch: &BatchConfig,
    paths: &TeachPaths,
) -> Result<(BatchSummary, HashMap<String, String>), TeacherError> {
    let j = Journal::open(&paths.batches)?;
    let cache = ResponseCache::open(&paths.cache)?;
    let api = BatchApi::new(&cfg.client)?;
    let price = batch.price(cfg.price);
    let summary = std::sync::Mutex::new(BatchSummary::default());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} teach (batch) [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    // What earlier runs paid for is not this run's cost.
    let paid_before: HashSet<String> = j
        .chunks()?
        .into_iter()
        .filter(|c| c.phase == Phase::Done)
        .map(|c| c.id)
        .collect();
    loop {
        let chunks = j.chunks()?;
        let open: Vec<Chunk> = chunks.iter().filter(|c| c.phase != Phase::Done).cloned().collect();
        if !open.is_empty() {
            bar.inc_length(open.iter().map(|c| c.requests as u64).sum());
            let done =
                futures::future::join_all(open.into_iter().map(|c| drive(&j, &api, batch, c, &bar, &summary))).await;
            for d in done {
                d?;
            }
            continue;
        }
        let res = ingest(&j, &chunks, &cache, cfg, &paid_before)?;
        {
            let mut s = summary.lock().unwrap();
            s.succeeded = res.succeeded;
            s.failed_lines = res.failed_lines;
            let (p, c) = res
                .usage
                .iter()
                .filter(|(id, _)| !paid_before.contains(*id))
                .fold((0, 0), |a, (_, t)| (a.0 + t.0, a.1 + t.1));
            s.prompt_tokens = p;
            s.completion_tokens = c;
            s.cost_usd = price.cost(s.prompt_tokens, s.completion_tokens);
        }
        // After the ingest: the new answers may call for hinted requests.
        let need = needed(examples, cfg, &cache);
        let mut seen = HashSet::new();
        let missing: Vec<(String, ChatRequest)> = need
            .into_iter()
            .filter(|(h, r)| seen.insert(h.clone()) && cache.get(&cfg.cache_key(r)).is_none())
            .collect();
        let (todo, gave_up): (Vec<_>, Vec<_>) = missing
            .into_iter()
            .partition(|(h, _)| res.attempts.get(h).copied().unwrap_or(0) < batch.max_attempts);
        let mut reasons = HashMap::new();
        for (h, _) in &gave_up {
            reasons.insert(
                h.clone(),
                res.reasons
                    .get(h)
                    .cloned()
                    .unwrap_or_else(|| "no answer in any batch".into()),
            );
        }
        summary.lock().unwrap().gave_up = gave_up.len() as u64;
        let mut todo = todo;
        if let Some(budget) = cfg.budget_usd {
            let spent = summary.lock().unwrap().cost_usd;
            let mut left = budget - spent;
            let before = todo.len();
            todo.retain(|(_, r)| {
                let most = price.cost(r.approx_prompt_tokens() as u64, r.max_tokens as u64 * r.n as u64);
                left -= most;
                left >= 0.0
            });
            if todo.len() < before {
                summary.lock().unwrap().stopped_by_budget = true;
                tracing::warn!(
                    kept = todo.len(),
                    of = before,
                    budget,
                    "teach (batch): the budget covers only part of what is left"
                );
            }
        }
        if todo.is_empty() {
            bar.finish_and_clear();
            let s = summary.into_inner().unwrap();
            tracing::info!(?s, "teach (batch): every needed request is answered or given up");
            return Ok((s, reasons));
        }
        let next_seq = chunks.last().map_or(0, |c| c.seq + 1);
        let planned = plan(&j, &todo, batch, next_seq)?;
        tracing::info!(requests = todo.len(), batches = planned.len(), "teach (batch): planned");
    }
}

/// Cancels every batch of the run that may still run (`stepwise teach
/// --cancel`), waits until each has stopped, and keeps what they had
/// answered. Chunks never submitted are closed without a call.
pub async fn cancel(
    client: &crate::ClientConfig,
    batch: &BatchConfig,
    paths: &TeachPaths,
) -> Result<Vec<Chunk>, TeacherError> {
    let j = Journal::open(&paths.batches)?;
    let api = BatchApi::new(client)?;
    let mut out = Vec::new();
    for mut c in j.chunks()?.into_iter().filter(|c| c.phase != Phase::Done) {
        if c.phase == Phase::Creating
            && c.batch_id.is_none()
            && let Some(b) = api.find_batch(&c.id).await?
        {
            c.batch_id = Some(b.id);
        }
        match c.batch_id.clone() {
            None => {
                c.never_submitted = true;
                c.status = Some("cancelled".into());
                c.phase = Phase::Done;
                j.save(&c)?;
            }
            Some(id) => {
                c.phase = Phase::Created;
                j.save(&c)?;
                let b = api.get(&id).await?;
                if !terminal(&b.status) {
                    api.cancel(&id).await?;
                }
                tracing::info!(batch = %id, "cancelling");
                let bar = indicatif::ProgressBar::hidden();
                let s = std::sync::Mutex::new(BatchSummary::default());
                let fast = BatchConfig {
                    poll_min: batch.poll_min.min(Duration::from_secs(2)),
                    ..batch.clone()
                };
                c = drive(&j, &api, &fast, c, &bar, &s).await?;
            }
        }
        out.push(c);
    }
    Ok(out)
}
