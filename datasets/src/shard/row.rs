//! The shard schema: one [`RationaleRow`] per teacher sample, to and from Arrow.
//!
//! Version 2 added `reasoning` and `reasoning_tokens` (a reasoning model's
//! chain of thought, apart from its visible answer) and made `top_logprobs`
//! typed (a list of [`TokenLogprob`] structs, not JSON text). Version-1
//! files still read: their rows have no reasoning, and their `top_logprobs`
//! text is parsed where it holds OpenAI's shape.

use super::{KIND, KIND_KEY, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::table::opt_str;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float32Array, Int64Array, ListArray, ListBuilder,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Float32Type, Schema, SchemaRef, TimeUnit};
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
    /// The completion tokens' log-probabilities with their most likely
    /// alternatives, when they were asked for (what logit distillation
    /// trains on).
    #[serde(default)]
    pub top_logprobs: Option<Vec<TokenLogprob>>,
    /// A reasoning model's chain of thought (`reasoning_content`,
    /// `reasoning`, or an inline `<think>` block), apart from the visible
    /// answer in `rationale`.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// The provider's count of reasoning tokens
    /// (`usage.completion_tokens_details.reasoning_tokens`), within
    /// `completion_tokens`.
    #[serde(default)]
    pub reasoning_tokens: Option<u32>,
}

/// One completion token: its log-probability and the most likely tokens at
/// its position (OpenAI's `logprobs.content[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative token at one position and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
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
            Field::new("top_logprobs", logprobs_type(), true),
            utf8("reasoning", true),
            Field::new("reasoning_tokens", DataType::UInt32, true),
        ];
        let meta = [
            (SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
            (KIND_KEY.to_string(), KIND.to_string()),
        ];
        Arc::new(Schema::new(fields).with_metadata(meta.into_iter().collect::<std::collections::HashMap<_, _>>()))
    })
    .clone()
}

/// The columns version 2 added; a version-1 file has none of them (and its
/// `top_logprobs` is text).
pub const ADDED_IN_V2: [&str; 2] = ["reasoning", "reasoning_tokens"];

fn alternative_fields() -> Fields {
    Fields::from(vec![
        Field::new("token", DataType::Utf8, false),
        Field::new("logprob", DataType::Float32, false),
    ])
}

fn token_fields() -> Fields {
    Fields::from(vec![
        Field::new("token", DataType::Utf8, false),
        Field::new("logprob", DataType::Float32, false),
        Field::new(
            "top_logprobs",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(alternative_fields()),
                false,
            ))),
            false,
        ),
    ])
}

/// `top_logprobs`: a list of `{token, logprob, top_logprobs: [{token, logprob}]}`,
/// OpenAI's `logprobs.content` as a typed column.
pub fn logprobs_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(token_fields()), false)))
}

fn logprobs_array(rows: &[RationaleRow]) -> ArrayRef {
    let (mut tokens, mut lps, mut tok_offsets, mut valid) = (StringBuilder::new(), Vec::new(), vec![0i32], Vec::new());
    let (mut alt_tokens, mut alt_lps, mut alt_offsets) = (StringBuilder::new(), Vec::new(), vec![0i32]);
    for r in rows {
        for t in r.top_logprobs.iter().flatten() {
            tokens.append_value(&t.token);
            lps.push(t.logprob);
            for a in &t.top_logprobs {
                alt_tokens.append_value(&a.token);
                alt_lps.push(a.logprob);
            }
            alt_offsets.push(alt_lps.len() as i32);
        }
        tok_offsets.push(lps.len() as i32);
        valid.push(r.top_logprobs.is_some());
    }
    let alts = StructArray::new(
        alternative_fields(),
        vec![Arc::new(alt_tokens.finish()), Arc::new(Float32Array::from(alt_lps))],
        None,
    );
    let alts = ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(alternative_fields()), false)),
        OffsetBuffer::new(alt_offsets.into()),
        Arc::new(alts),
        None,
    );
    let toks = StructArray::new(
        token_fields(),
        vec![
            Arc::new(tokens.finish()),
            Arc::new(Float32Array::from(lps)),
            Arc::new(alts),
        ],
        None,
    );
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(token_fields()), false)),
        OffsetBuffer::new(tok_offsets.into()),
        Arc::new(toks),
        Some(NullBuffer::from(valid)),
    ))
}

/// Row `i`'s logprobs: typed (version 2) or OpenAI-shaped JSON text (version 1).
fn logprobs_at(col: &dyn Array, i: usize) -> Option<Vec<TokenLogprob>> {
    if !col.is_valid(i) {
        return None;
    }
    if let Some(text) = col.as_any().downcast_ref::<StringArray>() {
        return serde_json::from_str(text.value(i)).ok();
    }
    let list = col.as_list::<i32>().value(i);
    let s = list.as_struct();
    let (tok, lp, top) = (
        s.column(0).as_string::<i32>(),
        s.column(1).as_primitive::<Float32Type>(),
        s.column(2).as_list::<i32>(),
    );
    Some(
        (0..s.len())
            .map(|j| {
                let alts = top.value(j);
                let a = alts.as_struct();
                let (at, al) = (
                    a.column(0).as_string::<i32>(),
                    a.column(1).as_primitive::<Float32Type>(),
                );
                TokenLogprob {
                    token: tok.value(j).to_string(),
                    logprob: lp.value(j),
                    top_logprobs: (0..a.len())
                        .map(|k| TopLogprob {
                            token: at.value(k).to_string(),
                            logprob: al.value(k),
                        })
                        .collect(),
                }
            })
            .collect(),
    )
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
        logprobs_array(rows),
        opt_strings(rows, |r| r.reasoning.as_deref()),
        Arc::new(rows.iter().map(|r| r.reasoning_tokens).collect::<UInt32Array>()),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns follow the shard schema")
}

pub(crate) fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("schema checked before conversion")
}

/// A record batch in the shard schema (version 2, or version 1 without the
/// columns it lacks) back to rows.
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
    let (model, tmpl, phash, fin, raw) = (
        s("teacher_model"),
        s("prompt_template"),
        s("prompt_hash"),
        s("finish_reason"),
        s("raw_completion"),
    );
    let lp = b
        .column_by_name("top_logprobs")
        .expect("schema checked before conversion");
    let reasoning = b
        .column_by_name("reasoning")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let reasoning_tokens = b
        .column_by_name("reasoning_tokens")
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
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
            top_logprobs: logprobs_at(lp.as_ref(), i),
            reasoning: reasoning.and_then(|c| opt_str(c, i)),
            reasoning_tokens: reasoning_tokens.and_then(|c| c.is_valid(i).then(|| c.value(i))),
        })
        .collect()
}
