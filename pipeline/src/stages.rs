//! The stages of a run, each reading the previous stage's files in the run
//! directory. A stage records the fingerprint of its inputs in
//! `stages/<name>.json` when it finishes, and is skipped when that matches.
//! Within a stage, the teacher resumes through its shards and the trainer
//! through its checkpoints, so an interrupted run picks up where it stopped.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use stepwise_datasets::adapters::{ColumnMapping, Format, ImportOptions, import};
use stepwise_datasets::answer::labels_match;
use stepwise_datasets::arith::{ArithSpec, generate};
use stepwise_datasets::examples_file::{read_all_splits, read_split, write_splits};
use stepwise_datasets::shard::{RationaleRow, read_dir_rows};
use stepwise_datasets::split::{SplitSpec, assign_splits};
use stepwise_datasets::{Example, Split};
use stepwise_student::data::{Task, Variant, input_text, prompt, study_examples};
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::generate::generate as generate_text;
use stepwise_student::train::{LogLine, ValExample, train};
use stepwise_student::{Config, ModelConfig, Student, StudentTokenizer, T5Config};
use stepwise_teacher::ClientConfig;
use stepwise_teacher::server::{self, ServerConfig};
use stepwise_teacher::stage::{Price, TeachConfig, curate, paths_in, teach};

use crate::config::{RunConfig, fingerprint};

/// What a finished stage leaves behind.
#[derive(Debug, Serialize, Deserialize)]
struct StageRecord {
    hash: String,
    finished_at: String,
}

fn record_path(dir: &Path, stage: &str) -> PathBuf {
    dir.join("stages").join(format!("{stage}.json"))
}

/// True when `stage` already finished with these inputs.
pub fn is_done(dir: &Path, stage: &str, hash: &str) -> bool {
    std::fs::read_to_string(record_path(dir, stage))
        .ok()
        .and_then(|t| serde_json::from_str::<StageRecord>(&t).ok())
        .is_some_and(|r| r.hash == hash)
}

fn mark_done(dir: &Path, stage: &str, hash: &str) -> Result<()> {
    let p = record_path(dir, stage);
    std::fs::create_dir_all(p.parent().expect("has parent"))?;
    let rec = StageRecord {
        hash: hash.into(),
        finished_at: unix_seconds(),
    };
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&rec)?)?;
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

fn unix_seconds() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}

/// Fingerprints of each stage's inputs, chained so a change upstream reruns
/// everything after it.
pub struct Hashes {
    pub data: String,
    pub teach: String,
    pub train: String,
    pub eval: String,
}

impl Hashes {
    pub fn of(cfg: &RunConfig) -> Hashes {
        let data = fingerprint(&(&cfg.data, cfg.run.seed));
        let mut t = cfg.teacher.clone();
        t.api_key_env = None; // which variable holds the key changes nothing asked
        let teach = fingerprint(&(&data, &t));
        let train = fingerprint(&(&teach, &cfg.student, &cfg.students, &cfg.train, cfg.run.seed));
        let eval = fingerprint(&(&train, &cfg.eval));
        Hashes {
            data,
            teach,
            train,
            eval,
        }
    }
}

pub fn examples_dir(dir: &Path) -> PathBuf {
    dir.join("examples")
}

// ---------------------------------------------------------------- data

pub fn stage_data(cfg: &RunConfig, dir: &Path, h: &Hashes) -> Result<()> {
    if is_done(dir, "data", &h.data) {
        tracing::info!("data: up to date, skipped");
        return Ok(());
    }
    let d = &cfg.data;
    let split = SplitSpec {
        seed: cfg.run.seed,
        val_fraction: d.val_fraction,
        test_fraction: d.test_fraction,
    };
    let mut examples = if d.source == "arith" {
        generate(&ArithSpec {
            seed: cfg.run.seed,
            in_distribution: d.examples,
            out_of_distribution: d.ood_examples,
            min_steps: d.min_steps,
            max_steps: d.max_steps,
            max_number: d.max_number,
        })
    } else {
        let format = match (&d.format, &d.map) {
            (Some(f), None) => f.parse::<Format>().map_err(anyhow::Error::msg).context("data.format")?,
            (None, Some(m)) => Format::Mapped(
                m.parse::<ColumnMapping>()
                    .map_err(anyhow::Error::msg)
                    .context("data.map")?,
            ),
            _ => bail!("data: give either format or map for data.files"),
        };
        let mut all = Vec::new();
        for f in &d.files {
            let got = import(
                f,
                &format,
                &ImportOptions {
                    source: None,
                    skip_invalid: false,
                },
            )?;
            all.extend(got.examples);
        }
        if d.limit > 0 {
            all.truncate(d.limit);
        }
        all
    };
    if !d.probe_files.is_empty() {
        let format = d
            .probe_format
            .as_deref()
            .context("data.probe_format: required with data.probe_files")?
            .parse::<Format>()
            .map_err(anyhow::Error::msg)?;
        for f in &d.probe_files {
            let mut got = import(
                f,
                &format,
                &ImportOptions {
                    source: None,
                    skip_invalid: true,
                },
            )?
            .examples;
            if d.limit > 0 {
                got.truncate(d.limit);
            }
            examples.extend(got.into_iter().map(|e| e.with_split(Split::TestOod)));
        }
    }
    assign_splits(&mut examples, &split).map_err(anyhow::Error::msg)?;
    let counts = write_splits(&examples_dir(dir), &examples)?;
    tracing::info!(?counts, "data: examples written");
    mark_done(dir, "data", &h.data)
}

// ---------------------------------------------------------------- teach

pub fn stage_teach(cfg: &RunConfig, dir: &Path, h: &Hashes) -> Result<()> {
    if is_done(dir, "teach", &h.teach) {
        tracing::info!("teach: up to date, skipped");
        return Ok(());
    }
    let examples = read_all_splits(&examples_dir(dir))?;
    let t = &cfg.teacher;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // The embedded teacher is a real HTTP server on loopback, queried like any other.
        let local = if t.kind == "local" {
            let (backend, model) =
                crate::gguf_teacher::local_backend(&t.backend, t.gguf.as_deref(), &t.device, "teacher.gguf")?;
            let sc = ServerConfig {
                backend,
                model,
                seed: cfg.run.seed,
                max_batch: t.max_batch,
                ..Default::default()
            };
            Some(server::start("127.0.0.1:0", sc).await?)
        } else {
            None
        };
        let (base_url, model) = match &local {
            Some(s) => (s.base_url(), t.backend.clone()),
            None => (t.base_url.clone(), t.model.clone()),
        };
        let tc = TeachConfig {
            client: ClientConfig {
                base_url,
                model,
                api_key_env: t.api_key_env.clone(),
                concurrency: t.concurrency,
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
                timeout: Duration::from_secs_f64(t.timeout_s),
                ..Default::default()
            },
            temperature: t.temperature,
            max_tokens: t.max_tokens,
            n: t.n,
            seed: t.seed,
            prompt_dir: t.prompt_dir.clone(),
            rows_per_shard: 5000,
            price: Price {
                prompt_per_mtok: t.price_prompt,
                completion_per_mtok: t.price_completion,
            },
            budget_usd: t.budget_usd,
            rationalize: t.rationalize,
            keep_raw: false,
            config_hash: h.teach.clone(),
        };
        let summary = teach(&examples, tc, &paths_in(dir)).await?;
        tracing::info!(?summary, "teach: done");
        if let Some(s) = local {
            s.shutdown().await;
        }
        if summary.failed > 0 || summary.not_attempted > 0 {
            bail!(
                "teach: {} request(s) failed and {} were not attempted (see {}); run again to retry them",
                summary.failed,
                summary.not_attempted,
                paths_in(dir).failures.display()
            );
        }
        anyhow::Ok(())
    })?;
    mark_done(dir, "teach", &h.teach)
}

/// All teacher rows, every split.
pub fn teacher_rows(dir: &Path) -> Result<Vec<RationaleRow>> {
    Ok(read_dir_rows(&paths_in(dir).shards)?)
}

/// The teacher rows of the training examples `train` (before curation).
pub fn train_split_rows(dir: &Path, train: &[Example]) -> Result<Vec<RationaleRow>> {
    let ids: std::collections::HashSet<&str> = train.iter().map(|e| e.id.as_str()).collect();
    Ok(teacher_rows(dir)?
        .into_iter()
        .filter(|r| ids.contains(r.example_id.as_str()))
        .collect())
}

// ---------------------------------------------------------------- train

/// Name of a trained student's directory under `student/`.
pub fn student_name(v: Variant, fraction: f64) -> String {
    if fraction >= 1.0 {
        v.as_str().to_string()
    } else {
        format!("{}-f{:03}", v.as_str(), (fraction * 1000.0).round() as u32)
    }
}

/// The training subset at `fraction`: a prefix of a fixed seeded order of
/// example ids, so smaller fractions are subsets of larger ones.
fn subset_ids(ids: &[String], fraction: f64, seed: u64) -> std::collections::HashSet<String> {
    let mut keyed: Vec<(String, &String)> = ids.iter().map(|id| (fingerprint(&(seed, id)), id)).collect();
    keyed.sort();
    let n = ((ids.len() as f64) * fraction).round().max(1.0) as usize;
    keyed.into_iter().take(n).map(|(_, id)| id.clone()).collect()
}

pub fn stage_train(cfg: &RunConfig, dir: &Path, h: &Hashes, only: Option<Variant>) -> Result<()> {
    if only.is_none() && is_done(dir, "train", &h.train) {
        tracing::info!("train: up to date, skipped");
        return Ok(());
    }
    let device = pick_device(&cfg.student.device)?;
    let dtype = compute_dtype(&device);
    let gold_train = read_split(&examples_dir(dir), Split::Train)?;
    let val = read_split(&examples_dir(dir), Split::Val)?;
    let train_rows = train_split_rows(dir, &gold_train)?;
    let mut curated = curate(&train_rows, cfg.teacher.require_gold, cfg.teacher.min_vote_share);
    // Shard order follows request completion; everything downstream must not.
    curated.sort_by(|a, b| (&a.example_id, a.sample_index).cmp(&(&b.example_id, b.sample_index)));
    tracing::info!(
        teacher_rows = train_rows.len(),
        kept = curated.len(),
        "train: curated teacher rows of the train split"
    );

    let sdir = dir.join("student");
    std::fs::create_dir_all(&sdir)?;
    let tokenizer = tokenizer_for(cfg, &sdir, &gold_train, &curated)?;
    let base_dir = sdir.join("base");
    let base = base_student(cfg, &tokenizer, &device)?;
    if !base_dir.join("model.safetensors").exists() {
        base.save_dir(&base_dir)?;
    }
    let val_set: Vec<ValExample> = val
        .iter()
        .map(|e| ValExample {
            input: input_text(&e.input, e.choices.as_deref()),
            label: e.label.clone(),
            kind: e.label_kind,
            choices: e.choices.clone(),
        })
        .collect();
    let all_ids: Vec<String> = gold_train.iter().map(|e| e.id.clone()).collect();
    for &v in &cfg.students.variants {
        if only.is_some_and(|o| o != v) {
            continue;
        }
        for &f in &cfg.students.fractions {
            let name = student_name(v, f);
            let out = sdir.join(&name);
            let keep = subset_ids(&all_ids, f, cfg.run.seed);
            let gold: Vec<Example> = gold_train.iter().filter(|e| keep.contains(&e.id)).cloned().collect();
            let rows: Vec<RationaleRow> = curated
                .iter()
                .filter(|r| keep.contains(&r.example_id))
                .cloned()
                .collect();
            let data = study_examples(v, &rows, &gold);
            if data.is_empty() {
                bail!("train {name}: no training examples (did the teacher agree with gold on any?)");
            }
            let mut student = base_student(cfg, &tokenizer, &device)?;
            let bar = ProgressBar::new(cfg.train.steps);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.clone());
            let summary = train(&out, &mut student, &cfg.train, &data, &val_set, dtype, |l: &LogLine| {
                if l.kind == "train" {
                    bar.set_position(l.step);
                    bar.set_message(format!("loss {:.3}", l.loss));
                } else {
                    bar.println(format!(
                        "{name} step {}: val loss {:.3}, accuracy {:.3}",
                        l.step,
                        l.loss,
                        l.accuracy.unwrap_or(0.0)
                    ));
                }
            })?;
            bar.finish_and_clear();
            tracing::info!(student = %name, examples = data.len(), ?summary, "train: student trained");
            std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        }
    }
    if only.is_none() {
        mark_done(dir, "train", &h.train)?;
    }
    Ok(())
}

/// The tokenizer all students share: trained once on the training split's
/// text (inputs, labels, the teacher's rationales), or the init model's.
fn tokenizer_for(cfg: &RunConfig, sdir: &Path, gold: &[Example], rows: &[RationaleRow]) -> Result<StudentTokenizer> {
    if cfg.student.init != "scratch" {
        return Ok(Student::load_tokenizer(Path::new(&cfg.student.init))?);
    }
    let path = sdir.join("tokenizer.json");
    if path.exists() {
        return Ok(StudentTokenizer::load(&path)?);
    }
    let mut texts: Vec<String> = Vec::new();
    for e in gold {
        texts.push(prompt(Task::Label, &input_text(&e.input, e.choices.as_deref())));
        texts.push(prompt(Task::Rationale, &input_text(&e.input, e.choices.as_deref())));
        texts.push(format!(" {}", e.label));
    }
    texts.extend(rows.iter().map(|r| format!(" {}", r.rationale)));
    texts.sort();
    let tok = StudentTokenizer::train_bpe(texts.iter(), cfg.student.vocab_size)?;
    tok.save(&path)?;
    Ok(tok)
}

/// The untrained student: same seed, same shape as every variant's start.
fn base_student(cfg: &RunConfig, tok: &StudentTokenizer, device: &candle_core::Device) -> Result<Student> {
    if cfg.student.init != "scratch" {
        return Ok(Student::load(Path::new(&cfg.student.init), device)?);
    }
    let s = &cfg.student;
    let config: ModelConfig = if s.arch == "t5" {
        let mut c = T5Config::small(0);
        c.d_model = s.hidden_size;
        c.num_heads = s.heads;
        c.d_kv = s.hidden_size / s.heads.max(1);
        c.d_ff = 4 * s.hidden_size;
        c.num_layers = s.layers;
        c.dropout_rate = cfg.train.dropout as f64;
        c.into()
    } else {
        let mut c = Config::tiny(0, s.hidden_size, s.layers, s.heads, s.kv_heads);
        c.max_position_embeddings = cfg.train.max_len.max(cfg.eval.rationale_tokens + 256);
        c.into()
    };
    Ok(Student::from_scratch(config, tok.clone(), cfg.run.seed, device)?)
}

// ---------------------------------------------------------------- eval

/// One model's answer to one test example.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub model: String,
    pub split: String,
    pub example_id: String,
    pub input: String,
    pub gold: String,
    pub prediction: String,
    pub correct: bool,
    /// The model's rationale (students asked with the `[rationale]` prompt; the teacher's own).
    pub rationale: Option<String>,
}

/// The models evaluated: the untrained student, every trained one, the teacher.
pub fn model_names(cfg: &RunConfig) -> Vec<String> {
    let mut v = vec!["base".to_string()];
    for &var in &cfg.students.variants {
        for &f in &cfg.students.fractions {
            v.push(student_name(var, f));
        }
    }
    v
}

pub fn stage_eval(cfg: &RunConfig, dir: &Path, h: &Hashes) -> Result<()> {
    if is_done(dir, "eval", &h.eval) {
        tracing::info!("eval: up to date, skipped");
        return Ok(());
    }
    let device = pick_device(&cfg.student.device)?;
    let dtype = compute_dtype(&device);
    let mut tests: Vec<Example> = Vec::new();
    for s in [Split::Test, Split::TestOod] {
        let mut ex = read_split(&examples_dir(dir), s)?;
        if cfg.eval.max_examples > 0 {
            ex.truncate(cfg.eval.max_examples);
        }
        tests.extend(ex);
    }
    if tests.is_empty() {
        bail!("eval: no test examples in {}", examples_dir(dir).display());
    }
    let mut preds: Vec<Prediction> = Vec::new();
    // The teacher, from its shards on the same inputs (sample 0).
    let rows = teacher_rows(dir)?;
    let by_id: HashMap<&str, &RationaleRow> = rows
        .iter()
        .filter(|r| r.sample_index == 0 && !r.rationalized)
        .map(|r| (r.example_id.as_str(), r))
        .collect();
    for e in &tests {
        let r = by_id.get(e.id.as_str());
        let pred = r.and_then(|r| r.teacher_label.clone()).unwrap_or_default();
        preds.push(Prediction {
            model: "teacher".into(),
            split: split_name(e),
            example_id: e.id.clone(),
            input: e.input.clone(),
            correct: labels_match(e.label_kind, &pred, &e.label, e.choices.as_deref()),
            gold: e.label.clone(),
            prediction: pred,
            rationale: r.map(|r| r.rationale.clone()),
        });
    }
    let inputs: Vec<String> = tests
        .iter()
        .map(|e| input_text(&e.input, e.choices.as_deref()))
        .collect();
    let label_prompts: Vec<String> = inputs.iter().map(|i| prompt(Task::Label, i)).collect();
    let rationale_prompts: Vec<String> = inputs.iter().map(|i| prompt(Task::Rationale, i)).collect();
    let names = model_names(cfg);
    let bar = ProgressBar::new(names.len() as u64);
    bar.set_style(ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} models {msg}").expect("valid template"));
    for name in &names {
        bar.set_message(name.clone());
        let mdir = if name == "base" {
            dir.join("student/base")
        } else {
            dir.join("student").join(name).join("final")
        };
        let s = Student::load_dir(&mdir, &device).with_context(|| format!("eval: loading {}", mdir.display()))?;
        let answers = generate_text(
            &s.model,
            &s.tokenizer,
            &label_prompts,
            cfg.eval.answer_tokens,
            cfg.eval.batch_size,
            dtype,
        )?;
        // Rationales from every student that was taught them, and from the
        // base for comparison; label-only students were never asked for one.
        let wants_rationale = name == "base" || name.starts_with("distill");
        let rationales = if wants_rationale {
            Some(generate_text(
                &s.model,
                &s.tokenizer,
                &rationale_prompts,
                cfg.eval.rationale_tokens,
                cfg.eval.batch_size,
                dtype,
            )?)
        } else {
            None
        };
        for (i, e) in tests.iter().enumerate() {
            let pred = answers[i].trim().to_string();
            preds.push(Prediction {
                model: name.clone(),
                split: split_name(e),
                example_id: e.id.clone(),
                input: e.input.clone(),
                gold: e.label.clone(),
                correct: labels_match(e.label_kind, &pred, &e.label, e.choices.as_deref()),
                prediction: pred,
                rationale: rationales.as_ref().map(|r| r[i].trim().to_string()),
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(dir.join("eval"))?;
    write_predictions(&dir.join("eval/predictions.parquet"), &preds)?;
    mark_done(dir, "eval", &h.eval)
}

pub fn split_name(e: &Example) -> String {
    e.split.map(|s| s.as_str().to_string()).unwrap_or_else(|| "test".into())
}

pub fn write_predictions(path: &Path, preds: &[Prediction]) -> Result<()> {
    let s = |f: &dyn Fn(&Prediction) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(preds.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("example_id", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, false),
        Field::new("gold", DataType::Utf8, false),
        Field::new("prediction", DataType::Utf8, false),
        Field::new("correct", DataType::Boolean, false),
        Field::new("rationale", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            s(&|p| &p.model),
            s(&|p| &p.split),
            s(&|p| &p.example_id),
            s(&|p| &p.input),
            s(&|p| &p.gold),
            s(&|p| &p.prediction),
            Arc::new(BooleanArray::from(preds.iter().map(|p| p.correct).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                preds.iter().map(|p| p.rationale.as_deref()).collect::<Vec<_>>(),
            )),
        ],
    )?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, schema, Some(stepwise_datasets::shard::writer_properties()))?;
    w.write(&batch)?;
    w.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch?;
        let col = |name: &str| -> Result<&StringArray> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .with_context(|| format!("{}: column {name} missing or not text", path.display()))
        };
        let correct = b
            .column_by_name("correct")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .with_context(|| format!("{}: column correct missing", path.display()))?;
        let (m, s, id, inp, g, p, r) = (
            col("model")?,
            col("split")?,
            col("example_id")?,
            col("input")?,
            col("gold")?,
            col("prediction")?,
            col("rationale")?,
        );
        for i in 0..b.num_rows() {
            out.push(Prediction {
                model: m.value(i).into(),
                split: s.value(i).into(),
                example_id: id.value(i).into(),
                input: inp.value(i).into(),
                gold: g.value(i).into(),
                prediction: p.value(i).into(),
                correct: correct.value(i),
                rationale: (!r.is_null(i)).then(|| r.value(i).to_string()),
            });
        }
    }
    Ok(out)
}

/// Training logs of every trained student, by name.
pub fn training_logs(cfg: &RunConfig, dir: &Path) -> Result<BTreeMap<String, Vec<LogLine>>> {
    let mut out = BTreeMap::new();
    for name in model_names(cfg).into_iter().filter(|n| n != "base") {
        let p = dir.join("student").join(&name).join("metrics.jsonl");
        if p.exists() {
            out.insert(name, stepwise_student::train::read_log(&p)?);
        }
    }
    Ok(out)
}
