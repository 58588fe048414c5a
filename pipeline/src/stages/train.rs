//! The train stage: the shared tokenizer, the untrained base, then every
//! student of the plan. Each student directory records its training run's
//! identity (the student crate's [`TrainConfig::run_identity`]: the starting
//! model, the curation, the exact rows, the trainer config); a student whose
//! identity is unchanged and finished is kept, one whose identity changed is
//! trained again from scratch, one interrupted resumes from its checkpoint.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use stepwise_datasets::digest::{FileDigests, identity_of};
use stepwise_datasets::examples_file::read_split;
use stepwise_datasets::shard::RationaleRow;
use stepwise_datasets::{Example, Split};
use stepwise_student::data::{Task, Variant, input_text, prompt, study_examples};
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::dist::{barrier, is_writer};
use stepwise_student::train::{LogLine, TrainSummary, ValExample, train};
use stepwise_student::{Config, ModelConfig, Student, StudentTokenizer, T5Config};

use super::{Stage, bar, mark_done};
use crate::config::Arch;
use crate::model_id::StudentId;
use crate::plan::{Plan, Start};
use crate::run_dir::{IDENTITY_FILE, RunDir};

/// What a student directory records about the run that fills it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentRecord {
    pub identity: String,
    pub examples: usize,
}

/// The prepared inputs of the stage: what every student's identity is
/// computed from.
pub struct Prepared {
    pub tokenizer: StudentTokenizer,
    /// The untrained student's identity (its config, tokenizer and seed, or
    /// its files' digests).
    pub base_identity: String,
    gold_train: Vec<Example>,
    curated: Vec<RationaleRow>,
    val: Vec<ValExample>,
}

/// The training subset at `fraction`: a prefix of a fixed seeded order of
/// example ids, so smaller fractions are subsets of larger ones.
fn subset_ids(ids: &[String], fraction: f64, seed: u64) -> HashSet<String> {
    let mut keyed: Vec<(String, &String)> = ids.iter().map(|id| (identity_of(&(seed, id)), id)).collect();
    keyed.sort();
    let n = ((ids.len() as f64) * fraction).round().max(1.0) as usize;
    keyed.into_iter().take(n).map(|(_, id)| id.clone()).collect()
}

/// Reads the examples and teacher rows, curates, and trains (or reuses) the tokenizer.
pub fn prepare(plan: &Plan, digests: &mut FileDigests) -> Result<Prepared> {
    let dir = &plan.dir;
    let gold_train = read_split(&dir.examples(), Split::Train)?;
    let val = read_split(&dir.examples(), Split::Val)?;
    let train_rows = super::teach::train_split_rows(dir, &gold_train)?;
    let curated = plan.students.curation.select(&train_rows);
    tracing::info!(
        teacher_rows = train_rows.len(),
        kept = curated.len(),
        "train: curated teacher rows of the train split"
    );
    std::fs::create_dir_all(dir.students())?;
    let (tokenizer, base_identity) = match &plan.students.start {
        Start::Pretrained(p) => {
            let tok = Student::load_tokenizer(p).with_context(|| format!("student.init = {}", p.display()))?;
            (tok, pretrained_identity(p, digests)?)
        }
        Start::Scratch(shape) => {
            let (tok, tok_id) = scratch_tokenizer(dir, shape.vocab_size, &gold_train, &curated)?;
            let config = scratch_config(plan, &tok);
            (tok, identity_of(&(config.to_json(), tok_id, plan.seed)))
        }
    };
    let val = val
        .iter()
        .map(|e| ValExample {
            input: input_text(&e.input, e.choices.as_deref()),
            label: e.label.clone(),
            kind: e.label_kind,
            choices: e.choices.clone(),
        })
        .collect();
    Ok(Prepared {
        tokenizer,
        base_identity,
        gold_train,
        curated,
        val,
    })
}

/// A pretrained start is identified by its files' contents.
fn pretrained_identity(path: &Path, digests: &mut FileDigests) -> Result<String> {
    let mut parts = Vec::new();
    if path.is_dir() {
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            parts.push(digests.sha256(&path.join(f))?);
        }
    } else {
        parts.push(digests.sha256(path)?);
    }
    Ok(identity_of(&parts))
}

/// The tokenizer all from-scratch students share: trained once on the
/// training split's text (inputs, labels, the curated rationales), and
/// trained again only when that text or the vocabulary size changes.
fn scratch_tokenizer(
    dir: &RunDir,
    vocab_size: usize,
    gold: &[Example],
    rows: &[RationaleRow],
) -> Result<(StudentTokenizer, String)> {
    let mut texts: Vec<String> = Vec::new();
    for e in gold {
        texts.push(prompt(Task::Label, &input_text(&e.input, e.choices.as_deref())));
        texts.push(prompt(Task::Rationale, &input_text(&e.input, e.choices.as_deref())));
        texts.push(format!(" {}", e.label));
    }
    texts.extend(rows.iter().map(|r| format!(" {}", r.rationale)));
    texts.sort();
    let identity = identity_of(&(&texts, vocab_size));
    let (path, id_path) = (dir.tokenizer(), dir.tokenizer_identity());
    if path.exists() && std::fs::read_to_string(&id_path).is_ok_and(|s| s.trim() == identity) {
        return Ok((StudentTokenizer::load(&path)?, identity));
    }
    let tok = StudentTokenizer::train_bpe(texts.iter(), vocab_size)?;
    // Under MPI every rank trains the same tokenizer (it is deterministic); rank 0 writes it.
    if is_writer() {
        tok.save(&path)?;
        stepwise_datasets::atomic::write_bytes(&id_path, identity.as_bytes())?;
    }
    Ok((tok, identity))
}

fn scratch_config(plan: &Plan, tok: &StudentTokenizer) -> ModelConfig {
    let Start::Scratch(s) = &plan.students.start else {
        unreachable!("a scratch config of a pretrained start")
    };
    let mut config: ModelConfig = match s.arch {
        Arch::T5 => {
            let mut c = T5Config::small(0);
            c.d_model = s.hidden_size;
            c.num_heads = s.heads;
            c.d_kv = s.hidden_size / s.heads.max(1);
            c.d_ff = 4 * s.hidden_size;
            c.num_layers = s.layers;
            c.dropout_rate = plan.students.train.dropout as f64;
            c.into()
        }
        Arch::Llama => {
            let mut c = Config::tiny(0, s.hidden_size, s.layers, s.heads, s.kv_heads);
            c.max_position_embeddings = plan.students.train.max_len.max(plan.eval.rationale_tokens + 256);
            c.into()
        }
    };
    config.adopt(tok);
    config
}

/// The untrained student: same seed, same shape as every variant's start.
pub fn base_student(plan: &Plan, tok: &StudentTokenizer, device: &candle_core::Device) -> Result<Student> {
    match &plan.students.start {
        Start::Pretrained(p) => Ok(Student::load(p, device)?),
        Start::Scratch(_) => Ok(Student::from_scratch(
            scratch_config(plan, tok),
            tok.clone(),
            plan.seed,
            device,
        )?),
    }
}

/// Each planned student's training run identity and examples.
pub fn student_runs(plan: &Plan, prep: &Prepared) -> Vec<(StudentId, String, Vec<stepwise_student::StudyExample>)> {
    let all_ids: Vec<String> = prep.gold_train.iter().map(|e| e.id.clone()).collect();
    plan.students
        .runs
        .iter()
        .map(|&s| {
            let keep = subset_ids(&all_ids, s.fraction(), plan.seed);
            let gold: Vec<Example> = prep
                .gold_train
                .iter()
                .filter(|e| keep.contains(&e.id))
                .cloned()
                .collect();
            let rows: Vec<RationaleRow> = prep
                .curated
                .iter()
                .filter(|r| keep.contains(&r.example_id))
                .cloned()
                .collect();
            let data = study_examples(s.variant, &rows, &gold);
            let curation = s.variant.uses_teacher().then_some(&plan.students.curation);
            let lora = plan.students.lora.as_ref();
            let id = plan
                .students
                .train
                .run_identity(&prep.base_identity, lora, curation, &data);
            (s, id, data)
        })
        .collect()
}

/// Removes what belongs to the earlier training run, except `final/`: it
/// stays readable until the new run swaps its own in. (Evaluation does not
/// read it meanwhile: the student has no `summary.json` until it finishes.)
fn clear_for_retraining(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out).with_context(|| out.display().to_string())? {
        let p = e?.path();
        if p.file_name().is_some_and(|n| n == "final") {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .with_context(|| p.display().to_string())?;
    }
    Ok(())
}

fn read_record(p: &Path) -> Option<StudentRecord> {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Trains every student of the plan (or only those of `only`), keeping the
/// ones whose identity is unchanged and finished. Launched by `mpirun -np R` or `srun -n R` (built with
/// `--features mpi`), every process runs it and trains each student
/// data-parallel ([`stepwise_student::dist`]); rank 0 alone writes, and the
/// others wait for its writes before reading a decision from disk.
pub fn run(plan: &Plan, only: Option<Variant>, digests: &mut FileDigests) -> Result<()> {
    let dir = &plan.dir;
    let writer = is_writer();
    barrier();
    let prep = prepare(plan, digests)?;
    let device = pick_device(&plan.students.device)?;
    let dtype = compute_dtype(&device);
    let base_dir = dir.base();
    let base_record = StudentRecord {
        identity: prep.base_identity.clone(),
        examples: 0,
    };
    if writer && read_record(&dir.base_identity()).as_ref() != Some(&base_record) {
        let base = base_student(plan, &prep.tokenizer, &device)?;
        stepwise_datasets::atomic::replace_dir(&base_dir, |tmp| {
            base.write_files(tmp)?;
            std::fs::write(tmp.join(IDENTITY_FILE), serde_json::to_vec_pretty(&base_record)?)?;
            anyhow::Ok(())
        })?;
    }
    let runs = student_runs(plan, &prep);
    for (s, identity, data) in &runs {
        if only.is_some_and(|o| o != s.variant) {
            continue;
        }
        let name = s.to_string();
        if data.is_empty() {
            bail!("train {name}: no training examples (did the teacher agree with gold on any?)");
        }
        let out = dir.student(*s);
        let record = StudentRecord {
            identity: identity.clone(),
            examples: data.len(),
        };
        // Every rank reads what rank 0 finished writing, and decides before it writes again.
        barrier();
        let recorded = read_record(&dir.student_identity(*s));
        let up_to_date = dir.student_summary(*s).exists() && dir.student_final(*s).exists();
        barrier();
        match recorded {
            Some(r) if r == record && up_to_date => {
                tracing::info!(student = %name, "train: up to date, skipped");
                continue;
            }
            Some(r) if r != record && writer => {
                tracing::info!(student = %name, from = %r.identity, to = %record.identity,
                    "train: the training run changed; training this student again");
                clear_for_retraining(&out)?;
            }
            _ => {}
        }
        if writer {
            std::fs::create_dir_all(&out)?;
            stepwise_datasets::atomic::write_bytes(&dir.student_identity(*s), &serde_json::to_vec_pretty(&record)?)?;
        }
        let mut student = base_student(plan, &prep.tokenizer, &device)?;
        if let (Some(lora), Start::Pretrained(init)) = (&plan.students.lora, &plan.students.start) {
            // The adapter directory names its base by absolute path, so it
            // loads from anywhere (PEFT's `base_model_name_or_path`).
            let init = std::path::absolute(init).with_context(|| init.display().to_string())?;
            student = student.with_lora(lora, &init, plan.seed)?;
        }
        let cfg = &plan.students.train;
        let pb = if writer {
            bar(
                cfg.steps,
                "{prefix:>14} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})",
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        pb.set_prefix(name.clone());
        let summary = train(&out, &mut student, cfg, data, &prep.val, dtype, |l: &LogLine| {
            if l.kind == "train" {
                pb.set_position(l.step);
                pb.set_message(format!("loss {:.3}", l.loss));
            } else {
                pb.println(format!(
                    "{name} step {}: val loss {:.3}, accuracy {:.3}",
                    l.step,
                    l.loss,
                    l.accuracy.unwrap_or(0.0)
                ));
            }
        })?;
        pb.finish_and_clear();
        tracing::info!(student = %name, examples = data.len(), ?summary, "train: student trained");
        if writer {
            stepwise_datasets::atomic::write_bytes(&dir.student_summary(*s), &serde_json::to_vec_pretty(&summary)?)?;
        }
    }
    barrier();
    if writer && only.is_none() {
        mark_done(dir, Stage::Train, &identity(&prep, &runs))?;
    }
    Ok(())
}

/// The train stage's identity: the base and every student's run.
fn identity(prep: &Prepared, runs: &[(StudentId, String, Vec<stepwise_student::StudyExample>)]) -> String {
    let ids: Vec<(String, &str)> = runs.iter().map(|(s, id, _)| (s.to_string(), id.as_str())).collect();
    identity_of(&(&prep.base_identity, ids))
}

/// The identities of the base and of every student as trained (from their
/// directories): what the evaluation depends on.
pub fn trained_identities(plan: &Plan) -> Result<Vec<(String, String)>> {
    let dir = &plan.dir;
    let mut out = Vec::new();
    let base = read_record(&dir.base_identity()).with_context(|| {
        format!(
            "{}: no untrained student; run the train stage first",
            dir.base().display()
        )
    })?;
    out.push(("base".to_string(), base.identity));
    for &s in &plan.students.runs {
        let r = read_record(&dir.student_identity(s))
            .filter(|_| dir.student_summary(s).exists())
            .with_context(|| format!("{}: not trained; run the train stage first", dir.student(s).display()))?;
        out.push((s.to_string(), r.identity));
    }
    Ok(out)
}

/// A trained student's summary, when it finished.
pub fn summary(dir: &RunDir, s: StudentId) -> Result<Option<TrainSummary>> {
    let p = dir.student_summary(s);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| p.display().to_string())?,
        )),
        Err(_) => Ok(None),
    }
}
