//! The teach stage: every example asked of the teacher, rows into
//! `shards/`. The teacher crate owns what the work is
//! ([`TeachConfig::stage_identity`]); a local teacher is a real HTTP server
//! on loopback, queried like any other.
//!
//! A local model that takes real time (the `gguf` backend) is sized and
//! timed before any work: its batch size comes from the machine and the
//! model unless the config sets one, the client sends as many requests as
//! it decodes at once, and a short probe of its prefill and decode speed
//! gives the stage's expected wall time ([`TimeEstimate`]), printed before
//! the wait and by `--dry-run`.

use anyhow::{Result, bail};
use std::sync::Arc;
use std::time::Instant;
use stepwise_datasets::Example;
use stepwise_datasets::examples_file::read_all_splits;
use stepwise_datasets::shard::{RationaleRow, read_dir_rows};
use stepwise_teacher::protocol::{Message, approx_tokens};
use stepwise_teacher::server::{self, ChatModel, ModelJob, ServerConfig};
use stepwise_teacher::stage::{Estimate, TeachConfig, estimate, teach};

use super::{Stage, is_done, mark_done};
use crate::plan::{Endpoint, Plan};
use crate::run_dir::RunDir;

/// The examples the teacher is asked about: every split (the test splits
/// give the teacher's own accuracy).
pub fn examples(plan: &Plan) -> Result<Vec<Example>> {
    Ok(read_all_splits(&plan.dir.examples())?)
}

/// The examples not yet in a shard set of this identity.
fn pending(plan: &Plan, tc: &TeachConfig, examples: &[Example]) -> Result<Vec<Example>> {
    let shards = plan.dir.shards();
    let done: std::collections::HashSet<String> = match stepwise_datasets::Manifest::load(&shards)? {
        Some(m) if m.config_hash == tc.identity() => {
            read_dir_rows(&shards)?.into_iter().map(|r| r.example_id).collect()
        }
        _ => Default::default(),
    };
    Ok(examples.iter().filter(|e| !done.contains(&e.id)).cloned().collect())
}

/// What the stage would send and cost at most, and for a local model how
/// long it would take, sending nothing.
pub fn dry_run(plan: &Plan, tc: &TeachConfig) -> Result<(Estimate, Option<TimeEstimate>)> {
    let examples = examples(plan)?;
    let todo = pending(plan, tc, &examples)?;
    let cost = estimate(&todo, &|_| false, tc)?;
    let time = match local_model(plan, &examples)? {
        Some(local) if local.timed && !todo.is_empty() => {
            Some(time_estimate(local.model.as_ref(), local.max_batch, tc, &todo)?)
        }
        _ => None,
    };
    Ok((cost, time))
}

/// The local teacher's model and how it is driven.
struct LocalModel {
    model: Arc<dyn ChatModel>,
    max_batch: usize,
    /// Whether it takes real time (a probe and an estimate are worth it).
    timed: bool,
}

/// `examples`: what the `gold` backend knows.
fn local_model(plan: &Plan, examples: &[Example]) -> Result<Option<LocalModel>> {
    let Endpoint::Local {
        backend,
        gguf,
        max_batch,
        device,
    } = &plan.teacher.endpoint
    else {
        return Ok(None);
    };
    let model = crate::gguf_teacher::local_backend(*backend, gguf.as_deref(), device, "teacher.gguf", Some(examples))?;
    let max_batch = max_batch
        .or_else(|| model.suggested_batch())
        .unwrap_or(ServerConfig::default().max_batch)
        .max(1);
    Ok(Some(LocalModel {
        timed: model.batched(),
        model,
        max_batch,
    }))
}

/// How fast a local model is, from a short probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Prompt tokens a second, one prompt alone.
    pub prefill_tokens_per_s: f64,
    /// Seconds a decoding step takes with `batch` rows.
    pub step_s: f64,
    pub batch: usize,
    /// The probed prompt's length in the model's own tokens.
    pub prompt_tokens: u32,
}

/// The probe: one real prompt with a single new token (prefill), then a
/// full batch of a short prompt decoding a few tokens (the step time at
/// that batch size). A few seconds for a 0.5B model on 2 cores.
pub fn probe(model: &dyn ChatModel, messages: &[Message], batch: usize) -> Result<Speed> {
    const STEPS: u32 = 8;
    let job = |messages: Vec<Message>, max_tokens: u32, sample: u32| ModelJob {
        messages,
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        top_p: 1.0,
        request_seed: None,
        sample,
        stop: vec![],
        top_logprobs: None,
    };
    let short = vec![Message::new(
        "user",
        "Write the numbers from 1 to 100, separated by spaces.",
    )];
    // The first pass pages the weights in from the file: timed, it would
    // make prefill look several times slower than it is.
    if let Some(Err(e)) = model.complete(&[job(short.clone(), 1, 0)]).first() {
        bail!("teacher probe: {e}");
    }
    let t = Instant::now();
    let one = model.complete(&[job(messages.to_vec(), 1, 0)]);
    let prefill_s = t.elapsed().as_secs_f64().max(1e-6);
    let prompt_tokens = match one.first() {
        Some(Ok(o)) => o.prompt_tokens,
        Some(Err(e)) => bail!("teacher probe: {e}"),
        None => bail!("teacher probe: the model gave no answer"),
    };
    let prefill_rate = prompt_tokens.max(1) as f64 / prefill_s;
    let jobs: Vec<ModelJob> = (0..batch as u32).map(|i| job(short.clone(), STEPS, i)).collect();
    let t = Instant::now();
    let outs = model.complete(&jobs);
    let total = t.elapsed().as_secs_f64();
    let (mut short_prompt, mut steps) = (0u32, 1u32);
    for o in outs {
        let o = o.map_err(|e| anyhow::anyhow!("teacher probe: {e}"))?;
        short_prompt = short_prompt.max(o.prompt_tokens);
        steps = steps.max(o.completion_tokens);
    }
    let short_prefill = batch as f64 * short_prompt as f64 / prefill_rate;
    Ok(Speed {
        prefill_tokens_per_s: prefill_rate,
        step_s: ((total - short_prefill) / steps as f64).max(total / steps as f64 / 4.0),
        batch,
        prompt_tokens,
    })
}

/// The expected wall time of a teach stage on a local model.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeEstimate {
    pub speed: Speed,
    pub jobs: usize,
    pub batches: usize,
    pub prompt_tokens_per_job: f64,
    /// What an answer is expected to take: the worked examples' length, with
    /// a margin, within `max_tokens`.
    pub answer_tokens: f64,
    pub expected_s: f64,
    /// If every answer ran to `max_tokens`.
    pub at_most_s: f64,
}

impl std::fmt::Display for TimeEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} for {} completions in {} batches of up to {} (probe: prefill {:.0} tokens/s, decode {:.1} tokens/s at batch {}; prompts of ~{:.0} tokens, answers of ~{:.0}); at most {} if every answer runs to max_tokens",
            minutes(self.expected_s),
            self.jobs,
            self.batches,
            self.speed.batch,
            self.speed.prefill_tokens_per_s,
            self.speed.batch as f64 / self.speed.step_s,
            self.speed.batch,
            self.prompt_tokens_per_job,
            self.answer_tokens,
            minutes(self.at_most_s)
        )
    }
}

fn minutes(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// Probes `model` and estimates the stage over `todo`.
fn time_estimate(model: &dyn ChatModel, batch: usize, tc: &TeachConfig, todo: &[Example]) -> Result<TimeEstimate> {
    let (_, first) = tc.prompts.render(&todo[0], None);
    let t = Instant::now();
    let speed = probe(model, &first, batch)?;
    tracing::info!(secs = t.elapsed().as_secs_f64(), ?speed, "teacher probe");
    // The probed prompt gives the model's tokens per approximate token.
    let approx_first: u32 = first.iter().map(|m| approx_tokens(&m.content)).sum();
    let jobs = todo.len() * tc.n.max(1) as usize;
    let (mut approx_total, mut approx_own) = (0u64, 0u64);
    for e in todo {
        let (_, m) = tc.prompts.render(e, None);
        approx_total += m.iter().map(|m| approx_tokens(&m.content) as u64).sum::<u64>();
        approx_own +=
            approx_tokens(&e.input) as u64 + e.choices.iter().flatten().map(|c| approx_tokens(c) as u64).sum::<u64>();
    }
    let scale = speed.prompt_tokens.max(1) as f64 / approx_first.max(1) as f64;
    let prompt_tokens_per_job = approx_total as f64 / todo.len() as f64 * scale;
    // The instructions and worked examples are the same in every prompt of a
    // batch and prefilled once; only each question is prefilled per row.
    let own_tokens_per_job = (approx_own as f64 / todo.len() as f64 * scale).min(prompt_tokens_per_job);
    let shared_tokens = prompt_tokens_per_job - own_tokens_per_job;
    let answer_chars = tc
        .prompts
        .example_answer_chars(&todo[0])
        .unwrap_or(4 * tc.max_tokens as usize);
    let answer_tokens = (answer_chars as f64 / 4.0 * scale * 1.5).min(tc.max_tokens as f64);
    let batches = jobs.div_ceil(batch);
    let per_batch = |answer: f64| {
        (shared_tokens + batch as f64 * own_tokens_per_job) / speed.prefill_tokens_per_s + answer * speed.step_s
    };
    Ok(TimeEstimate {
        speed,
        jobs,
        batches,
        prompt_tokens_per_job,
        answer_tokens,
        expected_s: batches as f64 * per_batch(answer_tokens),
        at_most_s: batches as f64 * per_batch(tc.max_tokens as f64),
    })
}

pub fn run(plan: &Plan, tc: TeachConfig) -> Result<()> {
    run_on(plan, tc, examples(plan)?)
}

/// The stage on `examples` only (an array task's slice: [`crate::tasks`]).
pub fn run_on(plan: &Plan, tc: TeachConfig, examples: Vec<Example>) -> Result<()> {
    let identity = tc.stage_identity(&examples);
    if is_done(&plan.dir, Stage::Teach, &identity) {
        tracing::info!("teach: up to date, skipped");
        return Ok(());
    }
    let paths = plan.dir.teach();
    let mut tc = tc;
    let local = local_model(plan, &examples)?;
    if let Some(l) = &local
        && l.timed
    {
        // As many requests in flight as the model decodes at once: more
        // would only wait in the server's queue.
        if plan.config.teacher.concurrency.is_none() {
            tc.client.concurrency = (l.max_batch / tc.n.max(1) as usize).max(1);
        }
        let todo = pending(plan, &tc, &examples)?;
        if !todo.is_empty() {
            let est = time_estimate(l.model.as_ref(), l.max_batch, &tc, &todo)?;
            println!("teach: {est}");
            tracing::info!(
                expected_s = est.expected_s,
                at_most_s = est.at_most_s,
                "teach: time estimate"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let local = match local {
            Some(l) => {
                let sc = ServerConfig {
                    model: l.model,
                    seed: plan.seed,
                    max_batch: l.max_batch,
                    ..Default::default()
                };
                Some(server::start("127.0.0.1:0", sc).await?)
            }
            None => None,
        };
        if let Some(s) = &local {
            tc.client.base_url = s.base_url();
        }
        let started = Instant::now();
        let summary = match &plan.teacher.batch {
            None => teach(&examples, tc, &paths).await,
            Some(b) => stepwise_teacher::stage::teach_batch(&examples, tc, b, &paths).await,
        };
        let wall = started.elapsed();
        if let Some(s) = local {
            s.shutdown().await;
        }
        let summary = summary?;
        tracing::info!(?summary, wall_s = wall.as_secs_f64(), "teach: done");
        if let Some(b) = &summary.batch {
            println!(
                "teach (batch): {} rows in {}; {} batch(es) created, {} resumed; {} requests submitted, {} answered, {} failed or expired lines, {} given up; ${:.4} at the batch price",
                summary.rows_written,
                minutes(wall.as_secs_f64()),
                b.created,
                b.resumed,
                b.submitted,
                b.succeeded,
                b.failed_lines,
                b.gave_up,
                b.cost_usd
            );
        } else if summary.requests_sent > 0 {
            println!(
                "teach: {} rows in {} ({} requests sent, {} from the cache, {} failed; {:.1} completion tokens/s)",
                summary.rows_written,
                minutes(wall.as_secs_f64()),
                summary.requests_sent,
                summary.cache_hits,
                summary.failed,
                summary.completion_tokens as f64 / wall.as_secs_f64().max(1e-3)
            );
        }
        for e in &summary.endpoints {
            println!(
                "teach:   {}: {} answered, {} failed attempts, mean {:.0} ms, drained {} time(s)",
                e.base_url, e.ok, e.failed, e.mean_latency_ms, e.drained
            );
        }
        if summary.failed > 0 || summary.not_attempted > 0 {
            bail!(
                "teach: {} request(s) failed and {} were not attempted (see {}); run again to retry them",
                summary.failed,
                summary.not_attempted,
                paths.failures.display()
            );
        }
        anyhow::Ok(())
    })?;
    mark_done(&plan.dir, Stage::Teach, &identity)
}

/// `stepwise teach --cancel`: cancels the run's batches that may still run.
pub fn cancel(plan: &Plan) -> Result<()> {
    let Some(batch) = &plan.teacher.batch else {
        bail!("teach --cancel: teacher.mode is not \"batch\"; live requests stop when the run stops");
    };
    if matches!(plan.teacher.endpoint, Endpoint::Local { .. }) {
        bail!("teach --cancel: the local teacher's batches end with the run that served them; nothing to cancel");
    }
    let paths = plan.dir.teach();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let chunks = rt.block_on(stepwise_teacher::batch::cancel(
        &plan.teacher.teach.client,
        batch,
        &paths,
    ))?;
    if chunks.is_empty() {
        println!("teach --cancel: no batch of this run is running");
    }
    for c in chunks {
        println!(
            "teach --cancel: {} ({} requests): {}",
            c.batch_id.as_deref().unwrap_or("never submitted"),
            c.requests,
            c.status.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// All teacher rows, every split.
pub fn teacher_rows(dir: &RunDir) -> Result<Vec<RationaleRow>> {
    Ok(read_dir_rows(&dir.shards())?)
}

/// The teacher rows of the training examples `train` (before curation).
pub fn train_split_rows(dir: &RunDir, train: &[Example]) -> Result<Vec<RationaleRow>> {
    let ids: std::collections::HashSet<&str> = train.iter().map(|e| e.id.as_str()).collect();
    Ok(teacher_rows(dir)?
        .into_iter()
        .filter(|r| ids.contains(r.example_id.as_str()))
        .collect())
}
