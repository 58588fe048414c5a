//! The Distilling Step-by-Step trainer.
//!
//! loss = α·L_label + (1-α)·L_rationale over target tokens only; AdamW with
//! warm-up + cosine, global-norm clipping and gradient accumulation; the data
//! order is a function of (seed, step), and a checkpoint holds weights,
//! optimizer moments and trainer state, so resuming continues exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stepwise_datasets::LabelKind;
use stepwise_datasets::answer::labels_match;

use crate::data::{DataOrder, Sequence, StudyExample, Task, prompt, tokenize};
use crate::dist::Collective;
use crate::error::{Result, StudentError, io};
use crate::generate::generate;
use crate::optim::{AdamW, AdamWConfig, Grads, accumulate, clip_global_norm, lr_at};
use crate::params::Dropout;
use crate::student::{Model, Student, write_dir_atomically};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer updates.
    pub steps: u64,
    /// Examples per micro-batch (each gives one sequence per task).
    pub batch_size: usize,
    /// Micro-batches summed per update.
    pub grad_accum: usize,
    pub optimizer: AdamWConfig,
    pub warmup_steps: u64,
    /// The cosine ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Global gradient norm cap; 0 turns clipping off.
    pub clip_norm: f64,
    /// Weight of the label loss; the rationale loss gets 1 - alpha.
    pub alpha: f64,
    pub seed: u64,
    /// Tokens per sequence; prompts are cut from the left to fit.
    pub max_len: usize,
    /// Validate every this many steps (and at the last step).
    pub eval_every: u64,
    /// After the log-spaced checkpoints 1, 2, 4, ..., 512: every this many steps.
    pub checkpoint_every: u64,
    /// Warn once training has seen each unique example more than this many times.
    pub max_repeats: f64,
    /// Keep only the newest this many checkpoints (0: keep all, as Pythia
    /// does). A 135M-parameter checkpoint with its optimizer state is 1.6 GB.
    /// Not part of the config hash: it changes no result.
    pub keep_checkpoints: usize,
    pub dropout: f32,
    /// Dropout is off before this step.
    pub dropout_from_step: u64,
    /// Tokens generated for a validation answer.
    pub answer_tokens: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1400,
            batch_size: 8,
            grad_accum: 2,
            optimizer: AdamWConfig {
                lr: 3e-3,
                ..AdamWConfig::default()
            },
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
            alpha: 0.5,
            seed: 0,
            max_len: 256,
            eval_every: 100,
            checkpoint_every: 1000,
            max_repeats: 16.0,
            keep_checkpoints: 0,
            dropout: 0.0,
            dropout_from_step: 0,
            answer_tokens: 8,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StudentError::Config(m.to_string()));
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad("alpha must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&(self.dropout as f64)) {
            return bad("dropout must be in [0, 1)");
        }
        if self.max_len < 16 {
            return bad("max_len must be at least 16");
        }
        Ok(())
    }

    /// Identifies the run a checkpoint belongs to; a resume with another
    /// config is refused rather than silently mixed.
    pub fn hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Some(m) = v.as_object_mut() {
            m.remove("keep_checkpoints");
        }
        hex::encode(&Sha256::digest(v.to_string().as_bytes())[..8])
    }

    /// The identity of a training run: the starting model (`start`: its
    /// config and tokenizer, or its file's digest), the curation of the
    /// teacher's rows when the variant uses them, the adapters' config for a
    /// LoRA run, the exact examples chosen, and this config ([`Self::hash`]).
    /// A student directory records it; a different identity means the
    /// student is trained again.
    pub fn run_identity(
        &self,
        start: &str,
        lora: Option<&crate::lora::LoraConfig>,
        curation: Option<&crate::data::Curation>,
        data: &[StudyExample],
    ) -> String {
        let mut h = Sha256::new();
        for ex in data {
            h.update(serde_json::to_vec(ex).expect("example serialises"));
            h.update([0]);
        }
        let data_hash = hex::encode(h.finalize());
        match lora {
            // Full training keeps the identity it had before adapters existed.
            None => stepwise_datasets::digest::identity_of(&(start, curation, data_hash, self.hash())),
            Some(l) => stepwise_datasets::digest::identity_of(&(start, l, curation, data_hash, self.hash())),
        }
    }

    /// True when a checkpoint is written after `step`.
    pub fn is_checkpoint_step(&self, step: u64) -> bool {
        step == self.steps
            || (step <= 512 && step.is_power_of_two())
            || (step > 512 && step % self.checkpoint_every.max(1) == 0)
    }
}

/// A validation example: the gold (or reference) label and how to match it.
#[derive(Debug, Clone)]
pub struct ValExample {
    pub input: String,
    pub label: String,
    pub kind: LabelKind,
    pub choices: Option<Vec<String>>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub step: u64,
    pub kind: String,
    pub lr: Option<f64>,
    pub loss: f64,
    pub label_loss: Option<f64>,
    pub rationale_loss: Option<f64>,
    pub grad_norm: Option<f64>,
    pub accuracy: Option<f64>,
    pub tokens: Option<u64>,
    pub epochs: Option<f64>,
}

/// State a checkpoint carries besides weights and moments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: u64,
    pub config_hash: String,
    pub best_step: Option<u64>,
    pub best_accuracy: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub warned_repeats: bool,
    pub tokens_seen: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub best_step: Option<u64>,
    pub best_accuracy: Option<f64>,
    pub final_train_loss: f64,
    pub epochs: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub parameters: usize,
    /// Those the optimizer updated (the adapters' alone for a LoRA student).
    #[serde(default)]
    pub trainable_parameters: usize,
}

/// Checkpoint directory for `step`.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

/// The latest complete checkpoint's step, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<u64>> {
    Ok(checkpoint_steps(out)?.last().copied())
}

/// Steps of the complete checkpoints (those with their trainer state), in order.
fn checkpoint_steps(out: &Path) -> Result<Vec<u64>> {
    let dir = out.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
            && e.path().join("trainer_state.json").exists()
        {
            steps.push(n);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Trains `student` in `out` (resuming from its latest checkpoint, if any)
/// and writes the best-on-validation model to `out/final`.
pub fn train(
    out: &Path,
    student: &mut Student,
    cfg: &TrainConfig,
    train_set: &[StudyExample],
    val_set: &[ValExample],
    dtype: DType,
    on_step: impl FnMut(&LogLine),
) -> Result<TrainSummary> {
    crate::dist::with_world(|w| train_with(w, out, student, cfg, train_set, val_set, dtype, on_step))
}

/// [`train`] as one rank of `world` ([`crate::dist`]): this rank's share of
/// each step's micro-batches, the sums all-reduced before clipping; rank 0
/// alone writes the log, checkpoints, `best/` and `final/`, and validates.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    world: &dyn Collective,
    out: &Path,
    student: &mut Student,
    cfg: &TrainConfig,
    train_set: &[StudyExample],
    val_set: &[ValExample],
    dtype: DType,
    mut on_step: impl FnMut(&LogLine),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let (rank, size) = (world.rank(), world.size());
    let writer = rank == 0;
    // Every rank sees the checkpoints rank 0 finished writing.
    world.barrier();
    if train_set.is_empty() {
        return Err(StudentError::Config("the training set is empty".into()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let seqs = tokenize(train_set, &student.tokenizer, cfg.max_len)?;
    let val_seqs = tokenize(
        &val_set
            .iter()
            .map(|v| StudyExample {
                id: String::new(),
                input: v.input.clone(),
                label: v.label.clone(),
                rationale: None,
            })
            .collect::<Vec<_>>(),
        &student.tokenizer,
        cfg.max_len,
    )?;
    // With adapters the base is frozen: no gradient, no optimizer state.
    let mut opt = AdamW::new(cfg.optimizer.clone(), student.trainable());
    let mut state = TrainerState {
        step: 0,
        config_hash: cfg.hash(),
        best_step: None,
        best_accuracy: None,
        best_val_loss: None,
        warned_repeats: false,
        tokens_seen: 0,
    };
    let resumed_from = latest_checkpoint(out)?;
    if let Some(step) = resumed_from {
        let dir = checkpoint_dir(out, step);
        let sp = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
        let saved: TrainerState = serde_json::from_str(&text).map_err(|e| StudentError::Format {
            path: sp.clone(),
            msg: e.to_string(),
        })?;
        if saved.config_hash != state.config_hash {
            return Err(StudentError::Config(format!(
                "{} was written by a different training config (hash {} against {}); use a new output directory",
                dir.display(),
                saved.config_hash,
                state.config_hash
            )));
        }
        student.set_trainable_from(&dir)?;
        opt = AdamW::load(
            cfg.optimizer.clone(),
            &dir.join("optimizer.safetensors"),
            student.trainable(),
        )?;
        state = saved;
        tracing::info!(step, dir = %dir.display(), "resuming from checkpoint");
    }
    let log_path = out.join("metrics.jsonl");
    // A run resumed at its last step trains no more: its last loss is the log's.
    let mut last_loss = if log_path.exists() {
        read_log(&log_path)?
            .iter()
            .rev()
            .find(|l| l.kind == "train" && l.step <= state.step)
            .map_or(f64::NAN, |l| l.loss)
    } else {
        f64::NAN
    };
    world.barrier();
    let mut log = if writer {
        truncate_log(&log_path, state.step)?;
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io(&log_path))?,
        )
    } else {
        None
    };
    let mut write_log = |line: &LogLine| -> Result<()> {
        match log.as_mut() {
            Some(log) => {
                writeln!(log, "{}", serde_json::to_string(line).expect("log line serialises")).map_err(io(&log_path))
            }
            None => Ok(()),
        }
    };

    let mut order = DataOrder::new(seqs.len(), cfg.seed);
    let parallel_micro_batches = crate::device::parallel_micro_batches(
        student.params.device(),
        crate::dist::my_micro_batches(cfg.grad_accum, rank, size).count(),
    );
    let started = Instant::now();
    let tokens_at_start = state.tokens_seen;
    for step in state.step + 1..=cfg.steps {
        let lr = lr_at(step, cfg.optimizer.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio);
        let micros: Vec<usize> = crate::dist::my_micro_batches(cfg.grad_accum, rank, size).collect();
        let batches: Vec<Vec<&Sequence>> = micros
            .iter()
            .map(|&m| micro_batch(&seqs, &mut order, cfg, step, m))
            .collect();
        let one = |(micro, batch): (usize, &Vec<&Sequence>)| micro_grads(student, batch, cfg, step, micro, dtype);
        // A step's micro-batches are independent until their gradients are
        // summed: on CPU they run side by side (a small model's matmuls keep
        // two cores barely half busy when split finely). The sums are taken in
        // micro-batch order, so the result does not depend on the threads.
        let done: Vec<Result<MicroGrads>> = if parallel_micro_batches {
            use rayon::prelude::*;
            micros.par_iter().copied().zip(batches.par_iter()).map(one).collect()
        } else {
            micros.iter().copied().zip(batches.iter()).map(one).collect()
        };
        let mut grads: Grads = Grads::new();
        let (mut loss_sum, mut label_sum, mut rat_sum, mut rat_n, mut tokens) = (0.0, 0.0, 0.0, 0, 0u64);
        for m in done {
            let m = m?;
            add_grads(&mut grads, m.grads);
            tokens += m.tokens;
            loss_sum += m.loss;
            label_sum += m.label;
            if let Some(r) = m.rationale {
                rat_sum += r;
                rat_n += 1;
            }
        }
        if size > 1 {
            all_reduce_grads(world, &mut grads, student.trainable());
            let mut counters = [loss_sum, label_sum, rat_sum, rat_n as f64, tokens as f64];
            world.sum_f64(&mut counters);
            [loss_sum, label_sum, rat_sum] = [counters[0], counters[1], counters[2]];
            (rat_n, tokens) = (counters[3].round() as usize, counters[4].round() as u64);
        }
        state.tokens_seen += tokens;
        let grad_norm = clip_global_norm(&mut grads, cfg.clip_norm);
        opt.step(student.trainable(), &grads, lr)?;
        let k = cfg.grad_accum as f64;
        last_loss = loss_sum / k;
        let epochs = (step * (cfg.grad_accum * cfg.batch_size) as u64) as f64 / seqs.len() as f64;
        if epochs > cfg.max_repeats && !state.warned_repeats {
            state.warned_repeats = true;
            tracing::warn!(
                epochs,
                unique = seqs.len(),
                "each training example has now been seen more than {} times; repeated data degrades (Xue et al. 2023)",
                cfg.max_repeats
            );
        }
        let line = LogLine {
            step,
            kind: "train".into(),
            lr: Some(lr),
            loss: last_loss,
            label_loss: Some(label_sum / k),
            rationale_loss: (rat_n > 0).then(|| rat_sum / rat_n as f64),
            grad_norm: Some(grad_norm),
            accuracy: None,
            tokens: Some(state.tokens_seen),
            epochs: Some(epochs),
        };
        write_log(&line)?;
        if writer {
            on_step(&line);
        }
        state.step = step;

        if writer && !val_set.is_empty() && (step % cfg.eval_every.max(1) == 0 || step == cfg.steps) {
            let (val_loss, acc) = validate(student, cfg, &val_seqs, val_set, dtype)?;
            let line = LogLine {
                step,
                kind: "val".into(),
                lr: None,
                loss: val_loss,
                label_loss: Some(val_loss),
                rationale_loss: None,
                grad_norm: None,
                accuracy: Some(acc),
                tokens: None,
                epochs: None,
            };
            write_log(&line)?;
            on_step(&line);
            let better = match (state.best_accuracy, state.best_val_loss) {
                (Some(a), Some(l)) => acc > a || (acc == a && val_loss < l),
                _ => true,
            };
            if better {
                state.best_step = Some(step);
                state.best_accuracy = Some(acc);
                state.best_val_loss = Some(val_loss);
                student.save_dir(&out.join("best"))?;
            }
        }
        if writer && cfg.is_checkpoint_step(step) {
            save_checkpoint(out, student, &opt, &state)?;
            if cfg.keep_checkpoints > 0 {
                prune_checkpoints(out, cfg.keep_checkpoints)?;
            }
        }
    }
    let final_dir = out.join("final");
    if writer {
        if out.join("best").exists() {
            copy_dir(&out.join("best"), &final_dir)?;
        } else {
            student.save_dir(&final_dir)?;
        }
    }
    // No rank goes on before `final/` is there.
    world.barrier();
    let seconds = started.elapsed().as_secs_f64();
    let tokens = state.tokens_seen - tokens_at_start;
    let summary = TrainSummary {
        steps: cfg.steps,
        resumed_from,
        best_step: state.best_step,
        best_accuracy: state.best_accuracy,
        final_train_loss: last_loss,
        epochs: (cfg.steps * (cfg.grad_accum * cfg.batch_size) as u64) as f64 / seqs.len() as f64,
        tokens: state.tokens_seen,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        parameters: student.params.num_parameters()
            + student.adapters.as_ref().map_or(0, |a| a.params.num_parameters()),
        trainable_parameters: student.trainable().num_parameters(),
    };
    Ok(summary)
}

/// One micro-batch's gradients (already divided by `grad_accum`) and losses.
struct MicroGrads {
    grads: Grads,
    loss: f64,
    label: f64,
    rationale: Option<f64>,
    tokens: u64,
}

/// Forward and backward of micro-batch `micro` of `step`.
fn micro_grads(
    student: &Student,
    batch: &[&Sequence],
    cfg: &TrainConfig,
    step: u64,
    micro: usize,
    dtype: DType,
) -> Result<MicroGrads> {
    let residual = if step >= cfg.dropout_from_step {
        cfg.dropout
    } else {
        0.0
    };
    let lora = student.adapters.as_ref().map_or(0.0, |a| a.config.dropout);
    let mut dropout =
        (residual > 0.0 || lora > 0.0).then(|| Dropout::new(residual, cfg.seed ^ (step << 8) ^ micro as u64 ^ 0xD0));
    let losses = batch_loss(student, batch, cfg.alpha, dropout.as_mut(), dtype)?;
    let scaled = (&losses.total / cfg.grad_accum as f64)?;
    let mut grads = Grads::new();
    accumulate(&mut grads, student.trainable(), &scaled.backward()?)?;
    Ok(MicroGrads {
        grads,
        loss: losses.total.to_scalar::<f32>()? as f64,
        label: losses.label,
        rationale: losses.rationale,
        tokens: batch.iter().map(|s| s.ids.len() as u64).sum(),
    })
}

/// `acc += g`, parameter by parameter (the first micro-batch's is taken as is).
fn add_grads(acc: &mut Grads, g: Grads) {
    for (name, v) in g {
        match acc.get_mut(&name) {
            Some(a) => a.iter_mut().zip(v).for_each(|(a, b)| *a += b),
            None => {
                acc.insert(name, v);
            }
        }
    }
}

/// Sums every rank's gradient sums, in place: one flat buffer in the
/// trainable parameters' order, zeros where a rank computed no micro-batch.
fn all_reduce_grads(world: &dyn Collective, grads: &mut Grads, params: &crate::params::ParamStore) {
    let shapes: Vec<(String, usize)> = params
        .vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().elem_count()))
        .collect();
    let mut flat = Vec::with_capacity(shapes.iter().map(|s| s.1).sum());
    for (name, n) in &shapes {
        match grads.get(name) {
            Some(g) => flat.extend_from_slice(g),
            None => flat.extend(std::iter::repeat_n(0.0, *n)),
        }
    }
    world.sum_f32(&mut flat);
    let mut at = 0;
    for (name, n) in shapes {
        grads.insert(name, flat[at..at + n].to_vec());
        at += n;
    }
}

/// The sequences of micro-batch `micro` of optimisation step `step`
/// (1-based): both tasks of `batch_size` examples, taken from the seeded
/// order, so a resumed run sees exactly the batches it would have.
pub fn micro_batch<'a>(
    seqs: &'a [Vec<Sequence>],
    order: &mut DataOrder,
    cfg: &TrainConfig,
    step: u64,
    micro: usize,
) -> Vec<&'a Sequence> {
    let base = ((step - 1) * cfg.grad_accum as u64 + micro as u64) * cfg.batch_size as u64;
    (0..cfg.batch_size as u64)
        .flat_map(|k| seqs[order.at(base + k)].iter())
        .collect()
}

/// Losses of one micro-batch.
pub struct BatchLoss {
    /// α·label + (1-α)·rationale, differentiable.
    pub total: Tensor,
    pub label: f64,
    pub rationale: Option<f64>,
}

/// Teacher-forced loss of `batch`, target tokens only, averaged per task.
/// Each task runs as its own padded sub-batch: label sequences are much
/// shorter than rationale ones, and padding them to the same length would
/// cost more than the second forward pass.
pub fn batch_loss(
    student: &Student,
    batch: &[&Sequence],
    alpha: f64,
    mut dropout: Option<&mut Dropout>,
    dtype: DType,
) -> Result<BatchLoss> {
    let labels: Vec<&Sequence> = batch.iter().copied().filter(|s| s.task == Task::Label).collect();
    let rats: Vec<&Sequence> = batch.iter().copied().filter(|s| s.task == Task::Rationale).collect();
    let label = task_loss(student, &labels, dropout.as_deref_mut(), dtype)?;
    let rat = task_loss(student, &rats, dropout, dtype)?;
    let total = match (&label, &rat) {
        (Some(l), Some(r)) => ((l * alpha)? + (r * (1.0 - alpha))?)?,
        (Some(l), None) => l.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => return Err(StudentError::Config("a batch with no target tokens".into())),
    };
    let scalar = |x: &Option<Tensor>| -> Result<Option<f64>> {
        Ok(match x {
            Some(t) => Some(t.to_scalar::<f32>()? as f64),
            None => None,
        })
    };
    Ok(BatchLoss {
        label: scalar(&label)?.unwrap_or(0.0),
        rationale: scalar(&rat)?,
        total,
    })
}

/// Mean negative log-likelihood of the target tokens of `seqs` (right-padded
/// to the longest), or `None` when there are none.
fn task_loss(
    student: &Student,
    seqs: &[&Sequence],
    dropout: Option<&mut Dropout>,
    dtype: DType,
) -> Result<Option<Tensor>> {
    if seqs.is_empty() {
        return Ok(None);
    }
    let dev = student.params.device().clone();
    let pad = student.tokenizer.pad_id;
    let n = seqs.len();
    // Logits at the target positions only `(k, vocab)` and the token each
    // should predict.
    let (logits, targets) = match &student.model {
        Model::Llama(m) => {
            let t = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(1).max(1);
            let mut ids = vec![pad; n * t];
            let mut at = Vec::new();
            let mut targets = Vec::new();
            let mut lengths = Vec::with_capacity(n);
            for (r, s) in seqs.iter().enumerate() {
                let len = s.ids.len() - 1;
                lengths.push(len);
                ids[r * t..r * t + len].copy_from_slice(&s.ids[..len]);
                // Position j predicts token j+1: a target token when j+1 >= target_start.
                for j in s.target_start.saturating_sub(1)..len {
                    at.push((r * t + j) as u32);
                    targets.push(s.ids[j + 1]);
                }
            }
            if at.is_empty() {
                return Ok(None);
            }
            let ids = Tensor::from_vec(ids, (n, t), &dev)?;
            let at = Tensor::new(at.as_slice(), &dev)?;
            (m.forward_train_at(&ids, &lengths, &at, dropout, dtype)?, targets)
        }
        Model::T5(m) => {
            // The prompt is the encoder's input; the target, shifted right
            // behind the start token, the decoder's.
            let te = seqs.iter().map(|s| s.target_start).max().unwrap_or(1).max(1);
            let t = seqs
                .iter()
                .map(|s| s.ids.len() - s.target_start)
                .max()
                .unwrap_or(1)
                .max(1);
            let mut enc = vec![pad; n * te];
            let mut dec = vec![pad; n * t];
            let mut at = Vec::new();
            let mut targets = Vec::new();
            let mut enc_lengths = Vec::with_capacity(n);
            for (r, s) in seqs.iter().enumerate() {
                let (p, tgt) = s.ids.split_at(s.target_start);
                enc_lengths.push(p.len().max(1));
                enc[r * te..r * te + p.len()].copy_from_slice(p);
                dec[r * t] = m.config.decoder_start_token_id;
                dec[r * t + 1..r * t + tgt.len()].copy_from_slice(&tgt[..tgt.len() - 1]);
                at.extend((0..tgt.len()).map(|j| (r * t + j) as u32));
                targets.extend_from_slice(tgt);
            }
            if at.is_empty() {
                return Ok(None);
            }
            let enc = Tensor::from_vec(enc, (n, te), &dev)?;
            let dec = Tensor::from_vec(dec, (n, t), &dev)?;
            let logits = m.forward_train(&enc, &enc_lengths, &dec, dropout, dtype)?;
            let vocab = logits.dim(D::Minus1)?;
            let at = Tensor::new(at.as_slice(), &dev)?;
            (logits.reshape((n * t, vocab))?.index_select(&at, 0)?, targets)
        }
    };
    let k = targets.len();
    let targets = Tensor::from_vec(targets, k, &dev)?;
    let nll = crate::ops::nll_rows(&logits, &targets)?;
    Ok(Some((nll.sum_all()? / k as f64)?))
}

/// Label-task loss and answer accuracy on the validation set.
fn validate(
    student: &Student,
    cfg: &TrainConfig,
    val_seqs: &[Vec<Sequence>],
    val_set: &[ValExample],
    dtype: DType,
) -> Result<(f64, f64)> {
    let mut loss = 0.0;
    let mut batches = 0;
    let flat: Vec<&Sequence> = val_seqs.iter().map(|s| &s[0]).collect();
    for chunk in flat.chunks(cfg.batch_size * 2) {
        loss += batch_loss(student, chunk, 1.0, None, dtype)?.total.to_scalar::<f32>()? as f64;
        batches += 1;
    }
    let prompts: Vec<String> = val_set.iter().map(|v| prompt(Task::Label, &v.input)).collect();
    let outs = generate(
        &student.model,
        &student.tokenizer,
        &prompts,
        cfg.answer_tokens,
        cfg.batch_size * 4,
        dtype,
    )?;
    let correct = val_set
        .iter()
        .zip(&outs)
        .filter(|(v, o)| labels_match(v.kind, o.trim(), &v.label, v.choices.as_deref()))
        .count();
    Ok((
        loss / batches.max(1) as f64,
        correct as f64 / val_set.len().max(1) as f64,
    ))
}

fn save_checkpoint(out: &Path, student: &Student, opt: &AdamW, state: &TrainerState) -> Result<()> {
    write_dir_atomically(&checkpoint_dir(out, state.step), |tmp| {
        student.write_files(tmp)?;
        opt.save(&tmp.join("optimizer.safetensors"), student.trainable())?;
        let sp = tmp.join("trainer_state.json");
        std::fs::write(&sp, serde_json::to_string_pretty(state).expect("state serialises")).map_err(io(&sp))
    })
}

/// Removes all but the newest `keep` checkpoints (after a newer one is
/// complete, so a resume always has one).
fn prune_checkpoints(out: &Path, keep: usize) -> Result<()> {
    for &old in checkpoint_steps(out)?.iter().rev().skip(keep) {
        let d = checkpoint_dir(out, old);
        std::fs::remove_dir_all(&d).map_err(io(&d))?;
    }
    Ok(())
}

/// Keeps log lines up to `step`, dropping those a killed run wrote after its
/// last checkpoint (they will be written again, identically).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<LogLine>(l)
                .map(|x| x.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(stepwise_datasets::atomic::write_bytes(path, kept.as_bytes())?)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    write_dir_atomically(to, |tmp| {
        for e in std::fs::read_dir(from).map_err(io(from))? {
            let e = e.map_err(io(from))?;
            std::fs::copy(e.path(), tmp.join(e.file_name())).map_err(io(&e.path()))?;
        }
        Ok(())
    })
}

/// Reads `metrics.jsonl`.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| StudentError::Format {
                path: path.to_path_buf(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}
