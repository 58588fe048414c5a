//! The local server's Files and Batch APIs, as OpenAI documents them
//! (`/v1/files`, `/v1/batches`; vLLM's `run-batch` reads the same JSONL):
//! a new user and the tests run a whole batch job offline. A batch's
//! requests are answered by the server's own model, after a configured
//! delay, with injectable faults ([`BatchFaults`]): a fraction of requests
//! failing, the batch expiring after some requests, and cancellation.
//!
//! Everything lives in memory: a restarted server has no files or batches,
//! as a provider that lost them would not either.

use super::api::{ApiError, ChatCall};
use super::{AppState, answer};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the local server's batches behave.
#[derive(Debug, Clone)]
pub struct BatchFaults {
    /// How long a batch waits `in_progress` before its first request is answered.
    pub delay: Duration,
    /// The share of requests that fail with a 500 in the error file, drawn
    /// per request and batch (a resubmitted request draws again).
    pub fail_fraction: f64,
    /// After this many requests are answered, the batch expires: the rest
    /// go to the error file as `batch_expired`.
    pub expire_after: Option<u64>,
    /// Requests of one batch answered at once.
    pub concurrency: usize,
}

impl Default for BatchFaults {
    fn default() -> Self {
        BatchFaults {
            delay: Duration::ZERO,
            fail_fraction: 0.0,
            expire_after: None,
            concurrency: 16,
        }
    }
}

/// A stored file's description (the API's `file` object).
#[derive(Debug, Clone, Serialize)]
struct FileObject {
    id: String,
    object: &'static str,
    bytes: u64,
    created_at: i64,
    filename: String,
    purpose: String,
    status: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
struct RequestCounts {
    total: u64,
    completed: u64,
    failed: u64,
}

/// The API's `batch` object.
#[derive(Debug, Clone, Serialize)]
struct BatchObject {
    id: String,
    object: &'static str,
    endpoint: String,
    errors: Option<serde_json::Value>,
    input_file_id: String,
    completion_window: String,
    status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    created_at: i64,
    in_progress_at: Option<i64>,
    expires_at: i64,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: RequestCounts,
    metadata: Option<BTreeMap<String, String>>,
}

/// The files and batches of one server.
#[derive(Default)]
pub(crate) struct Store {
    files: Mutex<BTreeMap<String, (FileObject, Bytes)>>,
    batches: Mutex<BTreeMap<String, (BatchObject, Arc<AtomicBool>)>>,
    next_id: AtomicU64,
    pub faults: BatchFaults,
    seed: u64,
}

impl Store {
    pub fn new(faults: BatchFaults, seed: u64) -> Store {
        Store {
            faults,
            seed,
            ..Default::default()
        }
    }

    /// Ids sort in creation order.
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{:010}", self.next_id.fetch_add(1, Ordering::SeqCst))
    }

    fn put_file(&self, filename: String, purpose: &str, bytes: Bytes) -> FileObject {
        let f = FileObject {
            id: self.id("file"),
            object: "file",
            bytes: bytes.len() as u64,
            created_at: now(),
            filename,
            purpose: purpose.into(),
            status: "processed",
        };
        self.files.lock().unwrap().insert(f.id.clone(), (f.clone(), bytes));
        f
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut BatchObject)) {
        if let Some((b, _)) = self.batches.lock().unwrap().get_mut(id) {
            f(b);
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `POST /v1/files` (multipart: `file`, `purpose`).
pub(crate) async fn upload(State(s): State<Arc<AppState>>, mut form: Multipart) -> Response {
    let (mut file, mut purpose) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let filename = field.file_name().map(str::to_string);
                let data = match field.bytes().await {
                    Ok(d) => d,
                    Err(e) => return ApiError::bad_request(format!("{name}: {e}"), Some(&name)).into_response(),
                };
                match name.as_str() {
                    "file" => file = Some((filename.unwrap_or_else(|| "upload.jsonl".into()), data)),
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return ApiError::bad_request(format!("the multipart body: {e}"), None).into_response(),
        }
    }
    let Some((filename, data)) = file else {
        return ApiError::bad_request("file: a file part is required", Some("file")).into_response();
    };
    let Some(purpose) = purpose else {
        return ApiError::bad_request("purpose: required", Some("purpose")).into_response();
    };
    if !matches!(
        purpose.as_str(),
        "batch" | "fine-tune" | "assistants" | "user_data" | "evals"
    ) {
        return ApiError::bad_request(format!("purpose: {purpose:?} is not supported"), Some("purpose"))
            .into_response();
    }
    Json(s.batches.put_file(filename, &purpose, data)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    purpose: Option<String>,
}

/// `GET /v1/files`: newest first.
pub(crate) async fn list_files(State(s): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Json<serde_json::Value> {
    let files = s.batches.files.lock().unwrap();
    let data: Vec<&FileObject> = files
        .values()
        .rev()
        .map(|(f, _)| f)
        .filter(|f| q.purpose.as_ref().is_none_or(|p| &f.purpose == p))
        .collect();
    Json(serde_json::json!({"object": "list", "data": data, "has_more": false}))
}

pub(crate) async fn get_file(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().unwrap().get(&id) {
        Some((f, _)) => Json(f.clone()).into_response(),
        None => ApiError::not_found(format!("No such File object: {id}")).into_response(),
    }
}

pub(crate) async fn file_content(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().unwrap().get(&id) {
        Some((_, b)) => {
            let mut r = b.clone().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => ApiError::not_found(format!("No such File object: {id}")).into_response(),
    }
}

pub(crate) async fn delete_file(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.batches.files.lock().unwrap().remove(&id) {
        Some(_) => Json(serde_json::json!({"id": id, "object": "file", "deleted": true})).into_response(),
        None => ApiError::not_found(format!("No such File object: {id}")).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// `POST /v1/batches`.
pub(crate) async fn create(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("the body: {e}"), None).into_response(),
    };
    if req.endpoint != "/v1/chat/completions" {
        return ApiError::bad_request(
            format!(
                "endpoint: {:?} is not served here (only /v1/chat/completions)",
                req.endpoint
            ),
            Some("endpoint"),
        )
        .into_response();
    }
    if req.completion_window != "24h" {
        return ApiError::bad_request(
            format!("completion_window: {:?} (only \"24h\")", req.completion_window),
            Some("completion_window"),
        )
        .into_response();
    }
    let input = match s.batches.files.lock().unwrap().get(&req.input_file_id) {
        Some((f, _)) if f.purpose != "batch" => {
            return ApiError::bad_request(
                format!("input_file_id: {} has purpose {:?}, not \"batch\"", f.id, f.purpose),
                Some("input_file_id"),
            )
            .into_response();
        }
        Some((_, b)) => b.clone(),
        None => {
            return ApiError::not_found(format!("No such File object: {}", req.input_file_id)).into_response();
        }
    };
    let store = &s.batches;
    let created = now();
    let b = BatchObject {
        id: store.id("batch"),
        object: "batch",
        endpoint: req.endpoint,
        errors: None,
        input_file_id: req.input_file_id,
        completion_window: req.completion_window,
        status: "validating",
        output_file_id: None,
        error_file_id: None,
        created_at: created,
        in_progress_at: None,
        expires_at: created + 24 * 3600,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: RequestCounts::default(),
        metadata: req.metadata,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    store
        .batches
        .lock()
        .unwrap()
        .insert(b.id.clone(), (b.clone(), cancel.clone()));
    s.stats.batches_created.fetch_add(1, Ordering::SeqCst);
    s.stats.batches_running.fetch_add(1, Ordering::SeqCst);
    tracing::info!(batch = %b.id, "batch created");
    tokio::spawn(run(s.clone(), b.id.clone(), input, cancel));
    Json(b).into_response()
}

pub(crate) async fn get_batch(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match s.batches.batches.lock().unwrap().get(&id) {
        Some((b, _)) => Json(b.clone()).into_response(),
        None => ApiError::not_found(format!("No such Batch object: {id}")).into_response(),
    }
}

/// `GET /v1/batches`: newest first, `limit` (default 20) at a time after the id `after`.
pub(crate) async fn list_batches(
    State(s): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Json<serde_json::Value> {
    let all = s.batches.batches.lock().unwrap();
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let older = all
        .values()
        .rev()
        .map(|(b, _)| b)
        .filter(|b| q.after.as_ref().is_none_or(|a| b.id < *a));
    let page: Vec<&BatchObject> = older.clone().take(limit).collect();
    let has_more = older.count() > page.len();
    Json(serde_json::json!({
        "object": "list",
        "data": page,
        "first_id": page.first().map(|b| &b.id),
        "last_id": page.last().map(|b| &b.id),
        "has_more": has_more,
    }))
}

/// `POST /v1/batches/{id}/cancel`: `cancelling`, then `cancelled` once the
/// requests being answered are done (their answers are kept).
pub(crate) async fn cancel(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let mut all = s.batches.batches.lock().unwrap();
    let Some((b, flag)) = all.get_mut(&id) else {
        return ApiError::not_found(format!("No such Batch object: {id}")).into_response();
    };
    if matches!(b.status, "validating" | "in_progress" | "finalizing") {
        flag.store(true, Ordering::SeqCst);
        b.status = "cancelling";
        b.cancelling_at = Some(now());
    } else if b.status != "cancelling" {
        return ApiError::bad_request(format!("Cannot cancel a batch with status {:?}.", b.status), None)
            .into_response();
    }
    Json(b.clone()).into_response()
}

/// One line of a batch input file.
#[derive(Deserialize)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: serde_json::Value,
}

/// Why a batch's input is refused, as the API reports it in `errors`.
fn refuse(line: usize, message: String, param: Option<&str>) -> serde_json::Value {
    serde_json::json!({"object": "list", "data": [{"code": "invalid_request", "message": message, "param": param, "line": line}]})
}

fn parse_input(input: &[u8]) -> Result<Vec<(String, ChatCall)>, serde_json::Value> {
    let text = std::str::from_utf8(input).map_err(|e| refuse(1, format!("the file is not UTF-8: {e}"), None))?;
    let mut seen = HashSet::new();
    let mut calls = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let l: InputLine = serde_json::from_str(line).map_err(|e| refuse(n, format!("line {n}: {e}"), None))?;
        if l.method != "POST" || l.url != "/v1/chat/completions" {
            return Err(refuse(
                n,
                format!("line {n}: {} {} (expected POST /v1/chat/completions)", l.method, l.url),
                Some("url"),
            ));
        }
        if !seen.insert(l.custom_id.clone()) {
            return Err(refuse(
                n,
                format!("line {n}: custom_id {:?} is not unique in the file", l.custom_id),
                Some("custom_id"),
            ));
        }
        let mut call = ChatCall::parse(&serde_json::to_vec(&l.body).expect("a JSON value serialises"))
            .map_err(|e| refuse(n, format!("line {n}: body.{}", e.message), e.param.as_deref()))?;
        call.stream = None;
        calls.push((l.custom_id, call));
    }
    if calls.is_empty() {
        return Err(refuse(1, "the input file has no requests".into(), None));
    }
    Ok(calls)
}

/// Whether the fault draw fails this request of this batch.
fn fails(seed: u64, batch: &str, custom_id: &str, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{seed}:{batch}:{custom_id}"));
    let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    x < fraction
}

/// What became of one request of a batch.
enum Line {
    Ok(serde_json::Value),
    Err(serde_json::Value),
}

/// How far a batch has got: requests started, and whether it expired.
#[derive(Default)]
struct Progress {
    started: AtomicU64,
    expired: AtomicBool,
}

/// One request of a batch: its output or error line.
async fn one(
    s: Arc<AppState>,
    id: String,
    k: usize,
    custom_id: String,
    call: ChatCall,
    cancelled: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Line {
    let req_id = format!("batch_req_{id}_{k}");
    let error = |code: &str, message: &str| {
        Line::Err(
            serde_json::json!({"id": req_id, "custom_id": custom_id, "response": null,
            "error": {"code": code, "message": message}}),
        )
    };
    if cancelled.load(Ordering::SeqCst) {
        return error(
            "batch_cancelled",
            "The batch was cancelled before this request was executed.",
        );
    }
    let faults = &s.batches.faults;
    if faults
        .expire_after
        .is_some_and(|n| progress.started.fetch_add(1, Ordering::SeqCst) >= n)
    {
        progress.expired.store(true, Ordering::SeqCst);
        return error(
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        );
    }
    let result = if fails(s.batches.seed, &id, &custom_id, faults.fail_fraction) {
        Err(ApiError::server("injected failure"))
    } else {
        answer(&s, &call, format!("chatcmpl-{id}-{k}")).await
    };
    let (status, body, ok) = match result {
        Ok(r) => (200, serde_json::to_value(r).expect("a response serialises"), true),
        Err(e) => (e.status.as_u16(), e.body(), false),
    };
    let line = serde_json::json!({"id": req_id, "custom_id": custom_id,
        "response": {"status_code": status, "request_id": req_id, "body": body}, "error": null});
    s.batches.update(&id, |b| {
        if ok {
            b.request_counts.completed += 1
        } else {
            b.request_counts.failed += 1
        }
    });
    if ok { Line::Ok(line) } else { Line::Err(line) }
}

/// Answers a batch: validates its file, waits the configured delay, answers
/// each request with the model (stopping at cancellation or expiry), then
/// writes the output and error files.
async fn run(s: Arc<AppState>, id: String, input: Bytes, cancelled: Arc<AtomicBool>) {
    let store = &s.batches;
    let calls = match parse_input(&input) {
        Ok(c) => c,
        Err(errors) => {
            store.update(&id, |b| {
                b.status = "failed";
                b.errors = Some(errors);
                b.failed_at = Some(now());
            });
            s.stats.batches_running.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    };
    let total = calls.len() as u64;
    store.update(&id, |b| {
        if b.status == "validating" {
            b.status = "in_progress";
        }
        b.in_progress_at = Some(now());
        b.request_counts.total = total;
    });
    let faults = store.faults.clone();
    let until = tokio::time::Instant::now() + faults.delay;
    while tokio::time::Instant::now() < until && !cancelled.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10).min(faults.delay)).await;
    }
    let progress = Arc::new(Progress::default());
    let lines: Vec<Line> = futures::stream::iter(calls.into_iter().enumerate())
        .map(|(k, (custom_id, call))| {
            one(
                s.clone(),
                id.clone(),
                k,
                custom_id,
                call,
                cancelled.clone(),
                progress.clone(),
            )
        })
        .buffered(faults.concurrency.max(1))
        .collect()
        .await;
    let expired = progress.expired.load(Ordering::SeqCst);
    store.update(&id, |b| {
        if b.status == "in_progress" {
            b.status = "finalizing";
        }
        b.finalizing_at = Some(now());
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for l in &lines {
        let (buf, v) = match l {
            Line::Ok(v) => (&mut out, v),
            Line::Err(v) => (&mut err, v),
        };
        buf.extend_from_slice(v.to_string().as_bytes());
        buf.push(b'\n');
    }
    let output = (!out.is_empty()).then(|| {
        store
            .put_file(format!("{id}_output.jsonl"), "batch_output", out.into())
            .id
    });
    let errors = (!err.is_empty()).then(|| {
        store
            .put_file(format!("{id}_error.jsonl"), "batch_output", err.into())
            .id
    });
    let failed = lines.iter().filter(|l| matches!(l, Line::Err(_))).count() as u64;
    store.update(&id, |b| {
        b.output_file_id = output;
        b.error_file_id = errors;
        b.request_counts.failed = failed;
        b.request_counts.completed = total - failed;
        let t = Some(now());
        if cancelled.load(Ordering::SeqCst) {
            b.status = "cancelled";
            b.cancelled_at = t;
        } else if expired {
            b.status = "expired";
            b.expired_at = t;
        } else {
            b.status = "completed";
            b.completed_at = t;
        }
    });
    s.stats.batches_running.fetch_sub(1, Ordering::SeqCst);
    tracing::info!(batch = %id, total, failed, "batch finished");
}
