//! The shard schema: one [`RationaleRow`] per teacher sample, to and from Arrow.

use super::{KIND, KIND_KEY, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::table::opt_str;
use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float32Array, Int64Array, ListArray, ListBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// One teacher sample for one example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RationaleRow {
    pub example_id: String,
    pub task: String,
    /// The example's split (`train`, `val`, `test`, `test_ood`), if known.
    pub split: Option<String>,
    pub input: String,
    pub choices: Option<Vec<String>>,
    pub gold_label: Option<String>,
    /// The answer extracted from the completion; `None` when it stated none.
    pub teacher_label: Option<String>,
    pub rationale: String,
    /// Which of the `n` samples for this example (0-based).
    pub sample_index: u32,
    /// Share of this example's samples whose answer equals this one's.
    pub vote_share: f32,
    /// `None` when there is no gold label.
    pub agrees_with_gold: Option<bool>,
    /// True when produced by rationalisation (the gold answer was given as a hint).
    pub rationalized: bool,
    pub teacher_model: String,
    pub prompt_template: String,
    pub prompt_hash: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub seed: Option<i64>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u32,
    pub finish_reason: String,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at: i64,
    pub raw_completion: Option<String>,
    /// The provider's `top_logprobs`, as JSON text.
    pub top_logprobs: Option<String>,
}

impl RationaleRow {
    pub fn key(&self) -> (String, u32) {
        (self.example_id.clone(), self.sample_index)
    }
}

/// The Arrow schema of a shard (and the file's footer metadata).
pub fn schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let utf8 = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
        let u32f = |n: &str| Field::new(n, DataType::UInt32, false);
        let fields = vec![
            utf8("example_id", false),
            utf8("task", false),
            utf8("split", true),
            utf8("input", false),
            Field::new(
                "choices",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            utf8("gold_label", true),
            utf8("teacher_label", true),
            utf8("rationale", false),
            u32f("sample_index"),
            Field::new("vote_share", DataType::Float32, false),
            Field::new("agrees_with_gold", DataType::Boolean, true),
            Field::new("rationalized", DataType::Boolean, false),
            utf8("teacher_model", false),
            utf8("prompt_template", false),
            utf8("prompt_hash", false),
            Field::new("temperature", DataType::Float32, false),
            u32f("max_tokens"),
            Field::new("seed", DataType::Int64, true),
            u32f("prompt_tokens"),
            u32f("completion_tokens"),
            u32f("latency_ms"),
            utf8("finish_reason", false),
            Field::new(
                "created_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            utf8("raw_completion", true),
            utf8("top_logprobs", true),
        ];
        let meta = [
            (SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
            (KIND_KEY.to_string(), KIND.to_string()),
        ];
        Arc::new(Schema::new(fields).with_metadata(meta.into_iter().collect::<std::collections::HashMap<_, _>>()))
    })
    .clone()
}

fn strings<'a>(rows: &'a [RationaleRow], f: impl Fn(&'a RationaleRow) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn opt_strings<'a>(rows: &'a [RationaleRow], f: impl Fn(&'a RationaleRow) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn u32s(rows: &[RationaleRow], f: impl Fn(&RationaleRow) -> u32) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
}

/// Rows to one Arrow record batch in the shard schema.
pub fn rows_to_batch(rows: &[RationaleRow]) -> RecordBatch {
    let mut choices = ListBuilder::new(StringBuilder::new());
    for r in rows {
        match &r.choices {
            Some(cs) => {
                for c in cs {
                    choices.values().append_value(c);
                }
                choices.append(true);
            }
            None => choices.append(false),
        }
    }
    let mut agrees = BooleanBuilder::with_capacity(rows.len());
    rows.iter().for_each(|r| agrees.append_option(r.agrees_with_gold));
    let columns: Vec<ArrayRef> = vec![
        strings(rows, |r| &r.example_id),
        strings(rows, |r| &r.task),
        opt_strings(rows, |r| r.split.as_deref()),
        strings(rows, |r| &r.input),
        Arc::new(choices.finish()),
        opt_strings(rows, |r| r.gold_label.as_deref()),
        opt_strings(rows, |r| r.teacher_label.as_deref()),
        strings(rows, |r| &r.rationale),
        u32s(rows, |r| r.sample_index),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.vote_share))),
        Arc::new(agrees.finish()),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.rationalized)))),
        strings(rows, |r| &r.teacher_model),
        strings(rows, |r| &r.prompt_template),
        strings(rows, |r| &r.prompt_hash),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.temperature))),
        u32s(rows, |r| r.max_tokens),
        Arc::new(rows.iter().map(|r| r.seed).collect::<Int64Array>()),
        u32s(rows, |r| r.prompt_tokens),
        u32s(rows, |r| r.completion_tokens),
        u32s(rows, |r| r.latency_ms),
        strings(rows, |r| &r.finish_reason),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.created_at)).with_timezone("UTC")),
        opt_strings(rows, |r| r.raw_completion.as_deref()),
        opt_strings(rows, |r| r.top_logprobs.as_deref()),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns follow the shard schema")
}

pub(crate) fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("schema checked before conversion")
}

/// A record batch in the shard schema back to rows.
pub fn batch_to_rows(b: &RecordBatch) -> Vec<RationaleRow> {
    let s = |n| col::<StringArray>(b, n);
    let u = |n| col::<UInt32Array>(b, n);
    let f = |n| col::<Float32Array>(b, n);
    let (ids, task, split, input, gold, tl, rat) = (
        s("example_id"),
        s("task"),
        s("split"),
        s("input"),
        s("gold_label"),
        s("teacher_label"),
        s("rationale"),
    );
    let choices = col::<ListArray>(b, "choices");
    let agrees = col::<BooleanArray>(b, "agrees_with_gold");
    let ratz = col::<BooleanArray>(b, "rationalized");
    let (model, tmpl, phash, fin, raw, lp) = (
        s("teacher_model"),
        s("prompt_template"),
        s("prompt_hash"),
        s("finish_reason"),
        s("raw_completion"),
        s("top_logprobs"),
    );
    let seed = col::<Int64Array>(b, "seed");
    let created = col::<TimestampMillisecondArray>(b, "created_at");
    (0..b.num_rows())
        .map(|i| RationaleRow {
            example_id: ids.value(i).to_string(),
            task: task.value(i).to_string(),
            split: opt_str(split, i),
            input: input.value(i).to_string(),
            choices: choices.is_valid(i).then(|| {
                let v = choices.value(i);
                let v = v.as_any().downcast_ref::<StringArray>().expect("list of utf8");
                (0..v.len()).map(|j| v.value(j).to_string()).collect()
            }),
            gold_label: opt_str(gold, i),
            teacher_label: opt_str(tl, i),
            rationale: rat.value(i).to_string(),
            sample_index: u("sample_index").value(i),
            vote_share: f("vote_share").value(i),
            agrees_with_gold: agrees.is_valid(i).then(|| agrees.value(i)),
            rationalized: ratz.value(i),
            teacher_model: model.value(i).to_string(),
            prompt_template: tmpl.value(i).to_string(),
            prompt_hash: phash.value(i).to_string(),
            temperature: f("temperature").value(i),
            max_tokens: u("max_tokens").value(i),
            seed: seed.is_valid(i).then(|| seed.value(i)),
            prompt_tokens: u("prompt_tokens").value(i),
            completion_tokens: u("completion_tokens").value(i),
            latency_ms: u("latency_ms").value(i),
            finish_reason: fin.value(i).to_string(),
            created_at: created.value(i),
            raw_completion: opt_str(raw, i),
            top_logprobs: opt_str(lp, i),
        })
        .collect()
}
