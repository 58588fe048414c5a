//! The eval stage: the teacher (from its shards), the untrained student and
//! every trained one answer the test splits; `eval/predictions.parquet`
//! holds every answer and rationale, so the checks can be re-run without
//! the models.

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use stepwise_datasets::answer::labels_match;
use stepwise_datasets::examples_file::read_split;
use stepwise_datasets::shard::RationaleRow;
use stepwise_datasets::table::{bool_col, opt_str, properties_of_kind, read_parquet, str_col, write_parquet};
use stepwise_datasets::{Example, Split};
use stepwise_student::Student;
use stepwise_student::data::{Task, input_text, prompt};
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::generate::generate as generate_text;

use super::{Stage, bar, is_done, mark_done, recorded_identity};
use crate::model_id::ModelId;
use crate::plan::Plan;

/// What `eval/predictions.parquet` says it is in its footer.
pub const PREDICTIONS_KIND: &str = "predictions";

/// One model's answer to one test example.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub model: ModelId,
    pub split: String,
    pub example_id: String,
    pub input: String,
    pub gold: String,
    pub prediction: String,
    pub correct: bool,
    /// The model's rationale (students asked with the `[rationale]` prompt; the teacher's own).
    pub rationale: Option<String>,
}

pub fn split_name(e: &Example) -> String {
    e.split.map(|s| s.as_str().to_string()).unwrap_or_else(|| "test".into())
}

/// The test examples evaluated: both test splits, each cut to `eval.max_examples`.
pub fn test_examples(plan: &Plan) -> Result<Vec<Example>> {
    let mut tests: Vec<Example> = Vec::new();
    for s in [Split::Test, Split::TestOod] {
        let mut ex = read_split(&plan.dir.examples(), s)?;
        if plan.eval.max_examples > 0 {
            ex.truncate(plan.eval.max_examples);
        }
        tests.extend(ex);
    }
    Ok(tests)
}

/// The eval stage's identity: what was taught and trained, and how answers
/// are decoded (lengths; never the decoding batch size).
pub fn identity(plan: &Plan) -> Result<String> {
    let e = &plan.eval;
    Ok(stepwise_datasets::digest::identity_of(&(
        recorded_identity(&plan.dir, Stage::Data)?,
        recorded_identity(&plan.dir, Stage::Teach)?,
        super::train::trained_identities(plan)?,
        (e.max_examples, e.answer_tokens, e.rationale_tokens),
    )))
}

pub fn run(plan: &Plan) -> Result<()> {
    let identity = identity(plan)?;
    if is_done(&plan.dir, Stage::Eval, &identity) {
        tracing::info!("eval: up to date, skipped");
        return Ok(());
    }
    let dir = &plan.dir;
    let device = pick_device(&plan.students.device)?;
    let dtype = compute_dtype(&device);
    let tests = test_examples(plan)?;
    if tests.is_empty() {
        bail!("eval: no test examples in {}", dir.examples().display());
    }
    let mut preds: Vec<Prediction> = Vec::new();
    // The teacher, from its shards on the same inputs (sample 0).
    let rows = super::teach::teacher_rows(dir)?;
    let by_id: HashMap<&str, &RationaleRow> = rows
        .iter()
        .filter(|r| r.sample_index == 0 && !r.rationalized)
        .map(|r| (r.example_id.as_str(), r))
        .collect();
    for e in &tests {
        let r = by_id.get(e.id.as_str());
        let pred = r.and_then(|r| r.teacher_label.clone()).unwrap_or_default();
        preds.push(Prediction {
            model: ModelId::Teacher,
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
    let models = plan.students.models();
    let pb = bar(models.len() as u64, "eval [{bar:30}] {pos}/{len} models {msg}");
    for &model in &models {
        pb.set_message(model.to_string());
        let mdir = match model {
            ModelId::Student(s) => dir.student_final(s),
            _ => dir.base(),
        };
        let s = Student::load_dir(&mdir, &device).with_context(|| format!("eval: loading {}", mdir.display()))?;
        let (batch, e) = (plan.eval.batch_size, &plan.eval);
        let answers = generate_text(&s.model, &s.tokenizer, &label_prompts, e.answer_tokens, batch, dtype)?;
        // Rationales from every student that was taught them, and from the
        // base for comparison; label-only students were never asked for one.
        let rationales = if model == ModelId::Base || model.is_distilled() {
            Some(generate_text(
                &s.model,
                &s.tokenizer,
                &rationale_prompts,
                e.rationale_tokens,
                batch,
                dtype,
            )?)
        } else {
            None
        };
        for (i, e) in tests.iter().enumerate() {
            let pred = answers[i].trim().to_string();
            preds.push(Prediction {
                model,
                split: split_name(e),
                example_id: e.id.clone(),
                input: e.input.clone(),
                gold: e.label.clone(),
                correct: labels_match(e.label_kind, &pred, &e.label, e.choices.as_deref()),
                prediction: pred,
                rationale: rationales.as_ref().map(|r| r[i].trim().to_string()),
            });
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    write_predictions(&dir.predictions(), &preds)?;
    mark_done(dir, Stage::Eval, &identity)
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("example_id", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, false),
        Field::new("gold", DataType::Utf8, false),
        Field::new("prediction", DataType::Utf8, false),
        Field::new("correct", DataType::Boolean, false),
        Field::new("rationale", DataType::Utf8, true),
    ]))
}

/// Writes the predictions atomically (a kill leaves the previous file).
pub fn write_predictions(path: &Path, preds: &[Prediction]) -> Result<()> {
    let s = |f: &dyn Fn(&Prediction) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(preds.iter().map(f).collect::<Vec<_>>()))
    };
    let models: Vec<String> = preds.iter().map(|p| p.model.to_string()).collect();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(models)),
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
    write_parquet(path, schema(), [batch], properties_of_kind(PREDICTIONS_KIND, &[]))?;
    Ok(())
}

pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let mut out = Vec::new();
    for b in read_parquet(path)? {
        let correct = bool_col(&b, "correct", path)?;
        let (m, s, id, inp, g, p, r) = (
            str_col(&b, "model", path)?,
            str_col(&b, "split", path)?,
            str_col(&b, "example_id", path)?,
            str_col(&b, "input", path)?,
            str_col(&b, "gold", path)?,
            str_col(&b, "prediction", path)?,
            str_col(&b, "rationale", path)?,
        );
        for i in 0..b.num_rows() {
            out.push(Prediction {
                model: m
                    .value(i)
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{}, row {}: model: {e}", path.display(), i + 1))?,
                split: s.value(i).into(),
                example_id: id.value(i).into(),
                input: inp.value(i).into(),
                gold: g.value(i).into(),
                prediction: p.value(i).into(),
                correct: correct.value(i),
                rationale: opt_str(r, i),
            });
        }
    }
    Ok(out)
}
