//! The teach stage: examples in, rationale shards out. Concurrent, rate
//! limited, cached, resumable, accounted; failures recorded, never dropped.

use crate::cache::{CachedResponse, ResponseCache};
use crate::client::{ClientConfig, TeacherClient};
use crate::error::TeacherError;
use crate::prompt::{Prompts, prompt_hash};
use crate::protocol::ChatRequest;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use stepwise_datasets::Example;
use stepwise_datasets::answer::{extract_answer, labels_match};
use stepwise_datasets::shard::{RationaleRow, ShardSet};

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.prompt_per_mtok + completion as f64 * self.completion_per_mtok) / 1e6
    }
}

/// Everything the teach stage needs. What is *asked* (the model, the
/// prompts, sampling, n, seed, rationalisation) makes up
/// [`TeachConfig::identity`]; the rest is operational (where the server is,
/// how hard to push it, prices, budget, shard size) and can change between
/// runs without invalidating a single row.
#[derive(Debug, Clone)]
pub struct TeachConfig {
    /// Where the teacher is and how hard to push it (operational).
    pub client: ClientConfig,
    /// The sha256 of the file a local teacher serves (a GGUF model): the
    /// same name with other weights is another teacher.
    pub model_digest: Option<String>,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Samples per example (self-consistency).
    pub n: u32,
    pub seed: Option<i64>,
    /// The templates, loaded: their contents are part of the identity.
    pub prompts: Prompts,
    pub rows_per_shard: usize,
    pub price: Price,
    /// Stop sending new requests once the spent cost reaches this.
    pub budget_usd: Option<f64>,
    /// Re-ask with the gold answer as a hint when no sample agrees with gold (STaR).
    pub rationalize: bool,
    /// Keep the untouched completion in `raw_completion`.
    pub keep_raw: bool,
    /// A reasoning model's `reasoning_effort`, passed through.
    pub reasoning_effort: Option<String>,
    /// Ask for logprobs with this many alternatives a token.
    pub top_logprobs: Option<u32>,
}

impl TeachConfig {
    /// What makes two teach runs ask the same thing: the rows of a shard set
    /// are tied to it. Never the URL, the key, concurrency, rate limits,
    /// timeouts, retries, prices or the budget.
    pub fn identity(&self) -> String {
        #[derive(Serialize)]
        struct Id<'a> {
            model: &'a str,
            model_digest: Option<&'a str>,
            system: &'a str,
            templates: &'a [(String, String)],
            /// Absent for plain prompts: their identity is what it was before chat turns existed.
            #[serde(skip_serializing_if = "Option::is_none")]
            style: Option<&'a str>,
            stop: &'a str,
            temperature: f32,
            max_tokens: u32,
            n: u32,
            seed: Option<i64>,
            rationalize: bool,
            /// Absent unless set: identities from before they existed stay.
            #[serde(skip_serializing_if = "Option::is_none")]
            reasoning_effort: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            top_logprobs: Option<u32>,
        }
        stepwise_datasets::digest::identity_of(&Id {
            model: &self.client.model,
            model_digest: self.model_digest.as_deref(),
            system: crate::prompt::SYSTEM,
            templates: self.prompts.templates(),
            style: match self.prompts.style() {
                crate::prompt::PromptStyle::Plain => None,
                other => Some(other.as_str()),
            },
            stop: crate::protocol::FEW_SHOT_STOP,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            n: self.n,
            seed: self.seed,
            rationalize: self.rationalize,
            reasoning_effort: self.reasoning_effort.as_deref(),
            top_logprobs: self.top_logprobs,
        })
    }

    /// The identity of a teach stage over `examples`: [`Self::identity`]
    /// and the example set (ids are content hashes).
    pub fn stage_identity(&self, examples: &[Example]) -> String {
        let mut ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        stepwise_datasets::digest::identity_of(&(self.identity(), ids))
    }

    /// The response cache's key for `req`: the request itself, and the
    /// model file's digest when a local file answers it.
    pub fn cache_key(&self, req: &ChatRequest) -> String {
        self.cache_key_of(&req.hash())
    }

    /// [`Self::cache_key`] of the request with this [`ChatRequest::hash`]
    /// (a batch result's `custom_id`).
    pub fn cache_key_of(&self, request_hash: &str) -> String {
        match &self.model_digest {
            None => request_hash.to_string(),
            Some(d) => {
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(format!("{request_hash}:{d}")))
            }
        }
    }
}

/// Where the stage reads and writes.
#[derive(Debug, Clone)]
pub struct TeachPaths {
    pub shards: PathBuf,
    pub cache: PathBuf,
    /// One JSON line per request that failed after its retries.
    pub failures: PathBuf,
    /// Where a shard set of an earlier identity is moved (`shards-<identity>`).
    pub retired: PathBuf,
    /// Batch mode's state: each chunk's input, state and results ([`crate::batch`]).
    pub batches: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TeachSummary {
    pub examples: usize,
    pub already_done: usize,
    pub requests_sent: u64,
    pub cache_hits: u64,
    pub failed: u64,
    pub rows_written: u64,
    pub agree_with_gold: u64,
    pub rationalized_rows: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub stopped_by_budget: bool,
    pub not_attempted: usize,
    /// What each server did, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<crate::client::EndpointFigures>,
    /// What the batches did, in batch mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::batch::BatchSummary>,
}

/// What sending everything would cost at most, without sending anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub requests: usize,
    pub prompt_tokens: u64,
    pub max_completion_tokens: u64,
    pub max_cost_usd: f64,
}

pub(crate) fn request(cfg: &TeachConfig, prompts: &Prompts, ex: &Example, hint: Option<&str>) -> (String, ChatRequest) {
    let (template, messages) = prompts.render(ex, hint);
    let req = ChatRequest {
        model: cfg.client.model.clone(),
        messages,
        temperature: cfg.temperature,
        max_tokens: cfg.max_tokens,
        n: cfg.n,
        seed: cfg.seed,
        stop: vec![crate::protocol::FEW_SHOT_STOP.into()],
        reasoning_effort: cfg.reasoning_effort.clone(),
        top_logprobs: cfg.top_logprobs,
    };
    (template, req)
}

pub fn estimate(
    examples: &[Example],
    done: &dyn Fn(&str) -> bool,
    cfg: &TeachConfig,
) -> Result<Estimate, TeacherError> {
    let prompts = &cfg.prompts;
    let todo: Vec<&Example> = examples.iter().filter(|e| !done(&e.id)).collect();
    let prompt_tokens: u64 = todo
        .iter()
        .map(|e| request(cfg, prompts, e, None).1.approx_prompt_tokens() as u64)
        .sum();
    let max_completion_tokens = todo.len() as u64 * cfg.max_tokens as u64 * cfg.n as u64;
    Ok(Estimate {
        requests: todo.len(),
        prompt_tokens,
        max_completion_tokens,
        max_cost_usd: cfg.price.cost(prompt_tokens, max_completion_tokens),
    })
}

/// The rows of one response: one per sample, with vote shares and agreement.
fn rows_for(
    ex: &Example,
    cfg: &TeachConfig,
    template: &str,
    req: &ChatRequest,
    got: &CachedResponse,
    first_index: u32,
    rationalized: bool,
) -> Vec<RationaleRow> {
    // The answer is read from the visible text, never from a chain of thought.
    let splits: Vec<crate::reasoning::Split> = got
        .response
        .choices
        .iter()
        .map(|c| crate::reasoning::split(&c.message))
        .collect();
    let answers: Vec<Option<String>> = splits.iter().map(|s| extract_answer(s.visible)).collect();
    let n = answers.len().max(1) as f32;
    let usage = got.response.usage.unwrap_or_default();
    // Usage is per request; split it over the samples, the remainder on sample 0, so rows sum to the total.
    let k = answers.len().max(1) as u32;
    let per = |x: u32, i: usize| x / k + if i == 0 { x % k } else { 0 };
    let phash = prompt_hash(&req.messages);
    let now = chrono::Utc::now().timestamp_millis();
    got.response
        .choices
        .iter()
        .zip(&answers)
        .zip(&splits)
        .enumerate()
        .map(|(i, ((c, a), sp))| {
            let same = a.as_ref().map_or(0, |a| {
                answers
                    .iter()
                    .flatten()
                    .filter(|b| labels_match(ex.label_kind, b, a, ex.choices.as_deref()))
                    .count()
            });
            let text = sp.visible;
            RationaleRow {
                example_id: ex.id.clone(),
                task: ex.task.clone(),
                split: ex.split.map(|s| s.to_string()),
                input: ex.input.clone(),
                choices: ex.choices.clone(),
                gold_label: Some(ex.label.clone()),
                teacher_label: a.clone(),
                rationale: text.to_string(),
                sample_index: first_index + i as u32,
                vote_share: same as f32 / n,
                agrees_with_gold: Some(
                    a.as_ref()
                        .is_some_and(|a| labels_match(ex.label_kind, a, &ex.label, ex.choices.as_deref())),
                ),
                rationalized,
                teacher_model: got.response.model.clone(),
                prompt_template: template.to_string(),
                prompt_hash: phash.clone(),
                temperature: cfg.temperature,
                max_tokens: cfg.max_tokens,
                seed: cfg.seed,
                prompt_tokens: per(usage.prompt_tokens, i),
                completion_tokens: per(usage.completion_tokens, i),
                latency_ms: got.latency_ms,
                finish_reason: c.finish_reason.clone().unwrap_or_else(|| "unknown".into()),
                created_at: now,
                raw_completion: cfg.keep_raw.then(|| c.message.content.clone()),
                top_logprobs: c.logprobs.as_ref().and_then(|l| l.content.clone()),
                reasoning: sp.reasoning.clone(),
                reasoning_tokens: usage.reasoning_tokens().map(|x| per(x, i)),
            }
        })
        .collect()
}

/// The outcome of one example's requests.
enum Outcome {
    Rows {
        rows: Vec<RationaleRow>,
        sent: u64,
        hits: u64,
        prompt: u64,
        completion: u64,
    },
    Failed {
        example_id: String,
        reason: String,
        attempts: u32,
        sent: u64,
    },
    OverBudget,
    /// Not asked: the teacher had stopped answering at all.
    Stopped,
}

struct Shared {
    client: TeacherClient,
    cache: ResponseCache,
    cfg: TeachConfig,
    spent_micro_usd: AtomicU64,
    over_budget: AtomicBool,
    /// Batch mode: nothing is sent; a request missing from the cache
    /// failed in its batches, for the reason given by its hash here.
    offline: Option<std::collections::HashMap<String, String>>,
}

impl Shared {
    fn charge(&self, prompt: u64, completion: u64) {
        let micro = (self.cfg.price.cost(prompt, completion) * 1e6).round() as u64;
        let total = self.spent_micro_usd.fetch_add(micro, Ordering::SeqCst) + micro;
        if self.cfg.budget_usd.is_some_and(|b| total as f64 / 1e6 >= b) {
            self.over_budget.store(true, Ordering::SeqCst);
        }
    }

    /// Cached or fetched response for `req`; `Ok((response, sent))`.
    async fn fetch(&self, req: &ChatRequest) -> Result<(CachedResponse, bool), TeacherError> {
        let hash = self.cfg.cache_key(req);
        // The cache's file operations take microseconds and run inline:
        // handing each to the blocking pool cost more in thread wake-ups.
        if let Some(c) = self.cache.get(&hash) {
            return Ok((c, false));
        }
        if let Some(reasons) = &self.offline {
            return Err(TeacherError::Request {
                attempts: 0,
                reason: reasons
                    .get(&req.hash())
                    .cloned()
                    .unwrap_or_else(|| "not answered by any batch".into()),
            });
        }
        let est = req.approx_prompt_tokens() as u64 + req.max_tokens as u64 * req.n as u64;
        let done = self.client.complete(req, est.min(u32::MAX as u64) as u32).await?;
        let c = CachedResponse {
            response: done.response,
            latency_ms: done.latency_ms,
        };
        self.cache.put(&hash, &c)?;
        Ok((c, true))
    }

    async fn teach_one(&self, ex: Example) -> Outcome {
        if self.over_budget.load(Ordering::SeqCst) {
            return Outcome::OverBudget;
        }
        if self.client.tripped().is_some() {
            return Outcome::Stopped;
        }
        let (template, req) = request(&self.cfg, &self.cfg.prompts, &ex, None);
        let (mut sent, mut hits, mut prompt, mut completion) = (0, 0, 0, 0);
        let mut note = |c: &CachedResponse, was_sent: bool| {
            let u = c.response.usage.unwrap_or_default();
            if was_sent {
                sent += 1;
                self.charge(u.prompt_tokens as u64, u.completion_tokens as u64);
            } else {
                hits += 1;
            }
            prompt += u.prompt_tokens as u64;
            completion += u.completion_tokens as u64;
        };
        let got = match self.fetch(&req).await {
            Ok((c, was_sent)) => {
                note(&c, was_sent);
                c
            }
            Err(TeacherError::Unreachable(_)) => return Outcome::Stopped,
            Err(e) => {
                let attempts = match &e {
                    TeacherError::Request { attempts, .. } => *attempts,
                    _ => 0,
                };
                return Outcome::Failed {
                    example_id: ex.id.clone(),
                    reason: e.to_string(),
                    attempts,
                    sent: 1,
                };
            }
        };
        let mut rows = rows_for(&ex, &self.cfg, &template, &req, &got, 0, false);
        if self.cfg.rationalize && !rows.iter().any(|r| r.agrees_with_gold == Some(true)) {
            let (template, hinted) = request(&self.cfg, &self.cfg.prompts, &ex, Some(&ex.label));
            match self.fetch(&hinted).await {
                Ok((c, was_sent)) => {
                    note(&c, was_sent);
                    rows.extend(rows_for(&ex, &self.cfg, &template, &hinted, &c, self.cfg.n, true));
                }
                Err(e) => {
                    tracing::warn!(example = %ex.id, error = %e, "rationalisation request failed; keeping the first answers")
                }
            }
        }
        Outcome::Rows {
            rows,
            sent,
            hits,
            prompt,
            completion,
        }
    }
}

#[derive(Serialize)]
struct FailureRecord<'a> {
    example_id: &'a str,
    reason: &'a str,
    attempts: u32,
    at: String,
}

/// The least time between two syncs of the shards' journal.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs the stage. Examples already in the shard set are skipped; a killed
/// run loses at most the requests in flight, and their responses are usually
/// in the cache already.
pub async fn teach(examples: &[Example], cfg: TeachConfig, paths: &TeachPaths) -> Result<TeachSummary, TeacherError> {
    run(examples, cfg, paths, None).await
}

/// [`teach`] through the provider's Batch API ([`crate::batch`]): the
/// requests go in batches at the batch price, their answers into the
/// cache, and the rows from there, each exactly once.
pub async fn teach_batch(
    examples: &[Example],
    cfg: TeachConfig,
    batch: &crate::batch::BatchConfig,
    paths: &TeachPaths,
) -> Result<TeachSummary, TeacherError> {
    let identity = cfg.identity();
    retire_other_identity(paths, &identity)?;
    let done = {
        let (shards, _) = ShardSet::open(&paths.shards, &identity, cfg.rows_per_shard)?;
        shards.example_ids()
    };
    let todo: Vec<Example> = examples.iter().filter(|e| !done.contains(&e.id)).cloned().collect();
    let (bs, reasons) = crate::batch::fill(&todo, &cfg, batch, paths).await?;
    let mut summary = run(examples, cfg, paths, Some(reasons)).await?;
    summary.requests_sent = bs.submitted;
    summary.cost_usd = bs.cost_usd;
    summary.stopped_by_budget = bs.stopped_by_budget;
    summary.batch = Some(bs);
    Ok(summary)
}

async fn run(
    examples: &[Example],
    cfg: TeachConfig,
    paths: &TeachPaths,
    offline: Option<std::collections::HashMap<String, String>>,
) -> Result<TeachSummary, TeacherError> {
    let identity = cfg.identity();
    retire_other_identity(paths, &identity)?;
    let (mut shards, rec) = ShardSet::open(&paths.shards, &identity, cfg.rows_per_shard)?;
    if rec.replayed_rows + rec.adopted_shards + rec.duplicates_skipped > 0 || rec.torn_tail {
        tracing::info!(?rec, "recovered shards from an interrupted run");
    }
    let done = shards.example_ids();
    let todo: Vec<Example> = examples.iter().filter(|e| !done.contains(&e.id)).cloned().collect();
    let mut summary = TeachSummary {
        examples: examples.len(),
        already_done: examples.len() - todo.len(),
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        client: TeacherClient::new(cfg.client.clone())?,
        cache: ResponseCache::open(&paths.cache)?,
        spent_micro_usd: AtomicU64::new(0),
        over_budget: AtomicBool::new(false),
        offline,
        cfg,
    });
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} teach [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut failures: Option<std::fs::File> = None;
    let concurrency = shared.cfg.client.concurrency.max(1);
    // Requests are driven by their own task (each request its own task, so
    // they progress on every worker thread) and reach this loop through a
    // channel: writing and syncing rows never holds back new requests.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut stream = futures::stream::iter(todo.into_iter().map(|ex| {
                let s = shared.clone();
                async move {
                    tokio::spawn(async move { s.teach_one(ex).await })
                        .await
                        .expect("a teach task panicked")
                }
            }))
            .buffer_unordered(concurrency);
            while let Some(outcome) = stream.next().await {
                if tx.send(outcome).is_err() {
                    break; // the writer stopped on an error
                }
            }
        })
    };
    let mut batch = Vec::new();
    let mut last_sync = tokio::time::Instant::now();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        // Group commit: what arrives within one interval shares one fsync.
        // Responses are in the cache before they reach this loop, so rows
        // waiting here are never paid for twice.
        tokio::time::sleep_until(last_sync + SYNC_INTERVAL).await;
        while let Ok(o) = rx.try_recv() {
            batch.push(o);
        }
        let mut rows = Vec::new();
        for outcome in batch.drain(..) {
            match outcome {
                Outcome::Rows {
                    rows: r,
                    sent,
                    hits,
                    prompt,
                    completion,
                } => {
                    summary.requests_sent += sent;
                    summary.cache_hits += hits;
                    summary.prompt_tokens += prompt;
                    summary.completion_tokens += completion;
                    rows.extend(r);
                }
                Outcome::Failed {
                    example_id,
                    reason,
                    attempts,
                    sent,
                } => {
                    summary.requests_sent += sent;
                    summary.failed += 1;
                    tracing::warn!(example = %example_id, %reason, attempts, "request failed; recorded");
                    let f = match &mut failures {
                        Some(f) => f,
                        None => failures.insert(
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&paths.failures)
                                .map_err(|e| TeacherError::Io(paths.failures.clone(), e))?,
                        ),
                    };
                    let rec = FailureRecord {
                        example_id: &example_id,
                        reason: &reason,
                        attempts,
                        at: chrono::Utc::now().to_rfc3339(),
                    };
                    let mut line = serde_json::to_vec(&rec).expect("failure serialises");
                    line.push(b'\n');
                    f.write_all(&line)
                        .map_err(|e| TeacherError::Io(paths.failures.clone(), e))?;
                }
                Outcome::OverBudget | Outcome::Stopped => summary.not_attempted += 1,
            }
            bar.inc(1);
        }
        summary.agree_with_gold += rows.iter().filter(|r| r.agrees_with_gold == Some(true)).count() as u64;
        summary.rationalized_rows += rows.iter().filter(|r| r.rationalized).count() as u64;
        // The journal's fsync runs off the runtime's threads.
        let (back, written) = tokio::task::spawn_blocking(move || {
            let n = shards.append(rows);
            (shards, n)
        })
        .await
        .map_err(|e| TeacherError::Server(format!("shard writer: {e}")))?;
        shards = back;
        last_sync = tokio::time::Instant::now();
        summary.rows_written += written? as u64;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{:.0} tok/s, {} errors, ${:.4}",
            (summary.prompt_tokens + summary.completion_tokens) as f64 / secs,
            summary.failed,
            shared.spent_micro_usd.load(Ordering::SeqCst) as f64 / 1e6
        ));
    }
    driver
        .await
        .map_err(|e| TeacherError::Server(format!("request driver: {e}")))?;
    bar.finish_and_clear();
    shards.finish()?;
    if let Some(why) = shared.client.tripped() {
        // What was answered is kept; the rest waits for a teacher that answers.
        tracing::error!(
            rows = summary.rows_written,
            not_attempted = summary.not_attempted,
            "teach stopped"
        );
        return Err(TeacherError::Unreachable(format!(
            "{} at {}; {} rows written and kept, {} examples not asked; run again when it answers",
            why, shared.cfg.client.base_url, summary.rows_written, summary.not_attempted
        )));
    }
    summary.cost_usd = shared.spent_micro_usd.load(Ordering::SeqCst) as f64 / 1e6;
    if !shared.cfg.client.more_urls.is_empty() {
        summary.endpoints = shared.client.endpoint_figures();
    }
    summary.stopped_by_budget = shared.over_budget.load(Ordering::SeqCst);
    tracing::info!(?summary, "teach stage done");
    Ok(summary)
}

/// Moves a shard set asked with another identity (an edited prompt, another
/// model) out of the way, to `retired/shards-<identity>`: its rows are not
/// what this configuration asks, and its responses stay in the cache, so
/// requests that did not change are answered from there for free.
pub fn retire_other_identity(paths: &TeachPaths, identity: &str) -> Result<(), TeacherError> {
    let Some(m) = stepwise_datasets::Manifest::load(&paths.shards)? else {
        return Ok(());
    };
    let journal = paths.shards.join(stepwise_datasets::shard::JOURNAL_FILE);
    let has_rows = !m.shards.is_empty() || journal.metadata().is_ok_and(|j| j.len() > 0);
    if m.config_hash == identity || !has_rows {
        return Ok(());
    }
    std::fs::create_dir_all(&paths.retired).map_err(|e| TeacherError::Io(paths.retired.clone(), e))?;
    let mut to = paths.retired.join(format!("shards-{}", m.config_hash));
    let mut k = 1;
    while to.exists() {
        k += 1;
        to = paths.retired.join(format!("shards-{}-{k}", m.config_hash));
    }
    std::fs::rename(&paths.shards, &to).map_err(|e| TeacherError::Io(to.clone(), e))?;
    stepwise_datasets::atomic::sync_dir(&paths.retired)?;
    tracing::info!(from = %m.config_hash, to = %identity, retired = %to.display(),
        "teach: the teacher is asked differently now; earlier shards retired, unchanged requests come from the cache");
    Ok(())
}

/// Paths under a run directory.
pub fn paths_in(run_dir: &Path) -> TeachPaths {
    TeachPaths {
        shards: run_dir.join("shards"),
        cache: run_dir.join("cache"),
        failures: run_dir.join("failures.jsonl"),
        retired: run_dir.join("retired"),
        batches: run_dir.join("batches"),
    }
}
