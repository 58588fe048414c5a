//! Parquet rationale shards: one row per teacher sample, plain Parquet that
//! pyarrow, pandas, DuckDB, Polars and HF `datasets` read with no help.
//!
//! A [`ShardSet`] is a directory of `part-NNNNN.parquet` files, a
//! `_manifest.json` listing each with rows, bytes and sha256, and a
//! `_pending.jsonl` journal. Rows are journaled (and fsynced) when appended,
//! then sealed into a shard written to a temporary name, fsynced and renamed:
//! a reader never sees half a shard, and a killed writer loses nothing it
//! acknowledged. On reopening, the journal is replayed and every row whose
//! `(example_id, sample_index)` is already in a shard is dropped, so a resumed
//! run never writes a duplicate.

use crate::error::{DataError, Result};
use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float32Array, Int64Array, ListArray, ListBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Bumped when a column is added, removed or changes meaning.
pub const SCHEMA_VERSION: u32 = 1;
/// Footer key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "stepwise.schema_version";
/// Footer key marking the file as a rationale shard.
pub use crate::table::KIND_KEY;
pub const KIND: &str = "rationale_shard";
pub const MANIFEST_FILE: &str = "_manifest.json";
pub const JOURNAL_FILE: &str = "_pending.jsonl";
/// The journal line that closes one [`ShardSet::append`]: rows before it are
/// replayed only when it is there, so an append is all or nothing (all the
/// samples of an example, or none).
pub const JOURNAL_COMMIT: &str = "#commit";

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

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("schema checked before conversion")
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
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

/// Writer settings for any stepwise Parquet file: zstd, dictionary encoding.
pub fn writer_properties_plain() -> WriterProperties {
    base_properties().build()
}

use crate::table::base_properties;

/// Shard writer settings: as [`writer_properties_plain`], plus the schema version in the footer.
pub fn writer_properties() -> WriterProperties {
    base_properties()
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
            KeyValue::new(KIND_KEY.to_string(), KIND.to_string()),
        ]))
        .build()
}

/// Rows per record batch handed to the Parquet writer (bounds memory for big shards).
const BATCH_ROWS: usize = 65_536;

/// Writes `rows` as one shard at `path`, atomically: a temporary file in the
/// same directory, flushed and fsynced, then renamed over `path`.
pub fn write_shard(path: &Path, rows: &[RationaleRow]) -> Result<ShardInfo> {
    crate::atomic::write_file_with(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema(), Some(writer_properties())).map_err(std::io::Error::other)?;
        for chunk in rows.chunks(BATCH_ROWS) {
            w.write(&rows_to_batch(chunk)).map_err(std::io::Error::other)?;
        }
        w.into_inner().map_err(std::io::Error::other)
    })?;
    shard_info(path, rows.len())
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::atomic::sync_dir(dir)
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn shard_info(path: &Path, rows: usize) -> Result<ShardInfo> {
    let (sha256, bytes) = sha256_file(path)?;
    Ok(ShardInfo {
        file: path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        rows: rows as u64,
        bytes,
        sha256,
    })
}

/// Opens a shard and checks it is one: complete Parquet, our footer, our schema.
fn open_checked(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        DataError::format(
            path,
            format!("not a complete Parquet file (truncated or corrupt?): {e}"),
        )
    })?;
    let kv: BTreeMap<&str, &str> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|k| Some((k.key.as_str(), k.value.as_deref()?)))
                .collect()
        })
        .unwrap_or_default();
    match kv.get(SCHEMA_VERSION_KEY) {
        None => {
            return Err(DataError::format(
                path,
                format!("not a stepwise rationale shard: no {SCHEMA_VERSION_KEY} in the footer"),
            ));
        }
        Some(v) if *v != SCHEMA_VERSION.to_string() => {
            return Err(DataError::format(
                path,
                format!("shard schema version {v}, this build reads version {SCHEMA_VERSION}"),
            ));
        }
        _ => {}
    }
    let want = schema();
    let have = builder.schema();
    for f in want.fields() {
        match have.field_with_name(f.name()) {
            Err(_) => return Err(DataError::format(path, format!("column {:?} is missing", f.name()))),
            Ok(h) if !types_compatible(h.data_type(), f.data_type()) => {
                return Err(DataError::format(
                    path,
                    format!(
                        "column {:?} has type {}, expected {}",
                        f.name(),
                        h.data_type(),
                        f.data_type()
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(builder)
}

fn types_compatible(have: &DataType, want: &DataType) -> bool {
    match (have, want) {
        (DataType::List(a), DataType::List(b)) => a.data_type() == b.data_type(),
        (DataType::Timestamp(u1, _), DataType::Timestamp(u2, _)) => u1 == u2,
        _ => have == want,
    }
}

/// Reads and checks every row of one shard.
pub fn read_shard(path: &Path) -> Result<Vec<RationaleRow>> {
    let reader = open_checked(path)?.build().map_err(|e| DataError::parquet(path, e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch =
            batch.map_err(|e| DataError::format(path, format!("unreadable data (truncated or corrupt?): {e}")))?;
        for name in [
            "example_id",
            "task",
            "input",
            "rationale",
            "sample_index",
            "teacher_model",
            "created_at",
        ] {
            if batch.column_by_name(name).is_some_and(|c| c.null_count() > 0) {
                return Err(DataError::format(path, format!("column {name:?} has nulls")));
            }
        }
        rows.extend(batch_to_rows(&batch));
    }
    Ok(rows)
}

/// Only the `(example_id, sample_index)` keys of a shard: cheap resume.
pub fn read_shard_keys(path: &Path) -> Result<Vec<(String, u32)>> {
    let builder = open_checked(path)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["example_id", "sample_index"]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| DataError::parquet(path, e))?;
    let mut keys = Vec::new();
    for batch in reader {
        let batch =
            batch.map_err(|e| DataError::format(path, format!("unreadable data (truncated or corrupt?): {e}")))?;
        let ids = col::<StringArray>(&batch, "example_id");
        let idx = col::<UInt32Array>(&batch, "sample_index");
        keys.extend((0..batch.num_rows()).map(|i| (ids.value(i).to_string(), idx.value(i))));
    }
    Ok(keys)
}

/// One shard's entry in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// `_manifest.json`: what a shard directory holds and what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    /// Hash of the configuration that produced the rows.
    pub config_hash: String,
    pub shards: Vec<ShardInfo>,
    pub total_rows: u64,
}

impl Manifest {
    fn new(config_hash: &str) -> Self {
        Manifest {
            schema_version: SCHEMA_VERSION,
            config_hash: config_hash.to_string(),
            shards: vec![],
            total_rows: 0,
        }
    }

    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| DataError::format(&path, format!("invalid manifest: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DataError::io(&path, e)),
        }
    }

    /// Writes the manifest atomically (temporary file, fsync, rename).
    pub fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::atomic::write_bytes(&path, text.as_bytes())
    }
}

fn part_index(name: &str) -> Option<u32> {
    name.strip_prefix("part-")?.strip_suffix(".parquet")?.parse().ok()
}

/// A directory of rationale shards being written, resumable after a crash.
pub struct ShardSet {
    dir: PathBuf,
    manifest: Manifest,
    keys: HashSet<(String, u32)>,
    pending: Vec<RationaleRow>,
    journal: File,
    rows_per_shard: usize,
    next_index: u32,
}

/// What reopening a shard directory found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Rows in sealed shards.
    pub sealed_rows: usize,
    /// Journaled rows replayed into the pending shard.
    pub replayed_rows: usize,
    /// Journaled rows already in a shard (crash between seal and journal truncation).
    pub duplicates_skipped: usize,
    /// An append cut short by a kill (no commit line): never acknowledged, dropped whole.
    pub torn_tail: bool,
    /// Complete shards found on disk but missing from the manifest (crash before the manifest update).
    pub adopted_shards: usize,
    /// Temporary files of unfinished shards, removed.
    pub removed_temporaries: usize,
}

impl ShardSet {
    /// Opens (or creates) `dir`, recovering from any crash. Fails when the
    /// directory's shards were produced by a different configuration.
    pub fn open(dir: &Path, config_hash: &str, rows_per_shard: usize) -> Result<(ShardSet, Recovery)> {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let mut rec = Recovery::default();
        let mut manifest = Manifest::load(dir)?.unwrap_or_else(|| Manifest::new(config_hash));
        if manifest.config_hash != config_hash && !manifest.shards.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: these shards were produced by config {} but this run's config is {}; use another directory or remove it",
                dir.display(),
                manifest.config_hash,
                config_hash
            )));
        }
        manifest.config_hash = config_hash.to_string();
        let mut keys = HashSet::new();
        let sealed_keys = |path: &Path, keys: &mut HashSet<(String, u32)>| -> Result<usize> {
            let ks = read_shard_keys(path)?;
            let n = ks.len();
            keys.extend(ks);
            Ok(n)
        };
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            if !path.exists() {
                return Err(DataError::format(&path, "listed in _manifest.json but missing"));
            }
            let n = sealed_keys(&path, &mut keys)?;
            if n as u64 != s.rows {
                return Err(DataError::format(
                    &path,
                    format!("holds {n} rows but _manifest.json says {}", s.rows),
                ));
            }
            rec.sealed_rows += n;
        }
        let listed: HashSet<String> = manifest.shards.iter().map(|s| s.file.clone()).collect();
        let mut next_index = 0;
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            let path = dir.join(name);
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
                rec.removed_temporaries += 1;
            } else if let Some(i) = part_index(name) {
                next_index = next_index.max(i + 1);
                if !listed.contains(name) {
                    // Renamed into place but the manifest update did not happen: complete, so adopt it.
                    let n = sealed_keys(&path, &mut keys)?;
                    manifest.shards.push(shard_info(&path, n)?);
                    rec.sealed_rows += n;
                    rec.adopted_shards += 1;
                }
            }
        }
        manifest.total_rows = manifest.shards.iter().map(|s| s.rows).sum();
        if rec.adopted_shards > 0 {
            manifest.store(dir)?;
        }
        let journal_path = dir.join(JOURNAL_FILE);
        let mut pending = Vec::new();
        if journal_path.exists() {
            let raw = fs::read(&journal_path).map_err(|e| DataError::io(&journal_path, e))?;
            let text = String::from_utf8_lossy(&raw);
            let mut lines: Vec<&str> = text.split('\n').collect();
            // What follows the last newline is a line cut short by a kill mid-append.
            let mut torn = !lines.pop().unwrap_or("").is_empty();
            let mut group: Vec<RationaleRow> = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                if *line == JOURNAL_COMMIT {
                    for row in group.drain(..) {
                        if keys.insert(row.key()) {
                            pending.push(row);
                            rec.replayed_rows += 1;
                        } else {
                            rec.duplicates_skipped += 1;
                        }
                    }
                    continue;
                }
                let row: RationaleRow = serde_json::from_str(line)
                    .map_err(|e| DataError::record(&journal_path, i + 1, format!("corrupt journal line: {e}")))?;
                group.push(row);
            }
            // Complete rows of an append whose commit line never made it.
            torn |= !group.is_empty();
            rec.torn_tail = torn;
        }
        // Rewrite the journal with exactly the pending rows, atomically.
        let tmp = dir.join(format!(".{JOURNAL_FILE}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
            if !pending.is_empty() {
                f.write_all(&journal_group(&pending)?)
                    .map_err(|e| DataError::io(&tmp, e))?;
            }
            f.sync_all().map_err(|e| DataError::io(&tmp, e))?;
        }
        fs::rename(&tmp, &journal_path).map_err(|e| DataError::io(&journal_path, e))?;
        sync_dir(dir)?;
        let journal = OpenOptions::new()
            .append(true)
            .open(&journal_path)
            .map_err(|e| DataError::io(&journal_path, e))?;
        if manifest.shards.is_empty() {
            manifest.store(dir)?;
        }
        let set = ShardSet {
            dir: dir.to_path_buf(),
            manifest,
            keys,
            pending,
            journal,
            rows_per_shard: rows_per_shard.max(1),
            next_index,
        };
        Ok((set, rec))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when this sample of this example is already written (sealed or journaled).
    pub fn contains(&self, example_id: &str, sample_index: u32) -> bool {
        self.keys.contains(&(example_id.to_string(), sample_index))
    }

    /// Ids of every example with at least one row written.
    pub fn example_ids(&self) -> HashSet<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn rows_written(&self) -> usize {
        self.keys.len()
    }

    /// Journals `rows` durably (one fsync for the call), skipping any key
    /// already written, and seals a shard when enough rows are pending.
    /// Returns the number of rows accepted.
    pub fn append(&mut self, rows: Vec<RationaleRow>) -> Result<usize> {
        let fresh: Vec<RationaleRow> = rows.into_iter().filter(|r| self.keys.insert(r.key())).collect();
        let n = fresh.len();
        if n == 0 {
            return Ok(0);
        }
        let buf = journal_group(&fresh)?;
        let jp = self.dir.join(JOURNAL_FILE);
        self.journal
            .write_all(&buf)
            .and_then(|_| self.journal.sync_data())
            .map_err(|e| DataError::io(&jp, e))?;
        self.pending.extend(fresh);
        if self.pending.len() >= self.rows_per_shard {
            self.seal()?;
        }
        Ok(n)
    }

    /// Writes the pending rows as a new shard, records it in the manifest and clears the journal.
    pub fn seal(&mut self) -> Result<Option<ShardInfo>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let name = format!("part-{:05}.parquet", self.next_index);
        let info = write_shard(&self.dir.join(&name), &self.pending)?;
        self.next_index += 1;
        self.manifest.shards.push(info.clone());
        self.manifest.total_rows += info.rows;
        self.manifest.store(&self.dir)?;
        let jp = self.dir.join(JOURNAL_FILE);
        self.journal
            .set_len(0)
            .and_then(|_| self.journal.sync_all())
            .map_err(|e| DataError::io(&jp, e))?;
        self.pending.clear();
        tracing::debug!(shard = %name, rows = info.rows, "sealed shard");
        Ok(Some(info))
    }

    /// Seals what is pending and returns the final manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        self.seal()?;
        Ok(self.manifest.clone())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// Rows as journal lines, closed by [`JOURNAL_COMMIT`].
fn journal_group(rows: &[RationaleRow]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r).map_err(|e| DataError::Invalid(e.to_string()))?;
        buf.push(b'\n');
    }
    buf.extend_from_slice(JOURNAL_COMMIT.as_bytes());
    buf.push(b'\n');
    Ok(buf)
}

/// Every row of every shard listed in `dir`'s manifest, in shard order.
pub fn read_dir_rows(dir: &Path) -> Result<Vec<RationaleRow>> {
    let m = Manifest::load(dir)?
        .ok_or_else(|| DataError::format(dir.join(MANIFEST_FILE), "missing: not a shard directory"))?;
    let mut rows = Vec::with_capacity(m.total_rows as usize);
    for s in &m.shards {
        rows.extend(read_shard(&dir.join(&s.file))?);
    }
    Ok(rows)
}

/// One problem `validate` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem(pub String);

/// Checks a shard directory: every listed shard present with the listed
/// bytes, sha256 and rows, readable in the shard schema, no key twice, no
/// unlisted part file. Returns the problems found (empty when valid).
pub fn validate_dir(dir: &Path) -> Result<Vec<Problem>> {
    let m = Manifest::load(dir)?
        .ok_or_else(|| DataError::format(dir.join(MANIFEST_FILE), "missing: not a shard directory"))?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut total = 0;
    for s in &m.shards {
        let path = dir.join(&s.file);
        match sha256_file(&path) {
            Err(e) => {
                problems.push(Problem(e.to_string()));
                continue;
            }
            Ok((sha, bytes)) => {
                if bytes != s.bytes {
                    problems.push(Problem(format!(
                        "{}: {} bytes, manifest says {}",
                        path.display(),
                        bytes,
                        s.bytes
                    )));
                }
                if sha != s.sha256 {
                    problems.push(Problem(format!(
                        "{}: sha256 {} differs from the manifest's {}",
                        path.display(),
                        sha,
                        s.sha256
                    )));
                }
            }
        }
        match read_shard(&path) {
            Err(e) => problems.push(Problem(e.to_string())),
            Ok(rows) => {
                if rows.len() as u64 != s.rows {
                    problems.push(Problem(format!(
                        "{}: {} rows, manifest says {}",
                        path.display(),
                        rows.len(),
                        s.rows
                    )));
                }
                total += rows.len() as u64;
                for r in rows {
                    if !seen.insert(r.key()) {
                        problems.push(Problem(format!(
                            "{}: duplicate row for example {} sample {}",
                            path.display(),
                            r.example_id,
                            r.sample_index
                        )));
                    }
                }
            }
        }
    }
    if total != m.total_rows {
        problems.push(Problem(format!(
            "manifest total_rows {} but the shards hold {}",
            m.total_rows, total
        )));
    }
    let listed: HashSet<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
    for e in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let name = e
            .map_err(|e| DataError::io(dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if part_index(&name).is_some() && !listed.contains(name.as_str()) {
            problems.push(Problem(format!(
                "{}: not listed in _manifest.json",
                dir.join(&name).display()
            )));
        }
    }
    Ok(problems)
}
