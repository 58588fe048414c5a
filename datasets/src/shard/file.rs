//! One shard file: written atomically, read back with its footer and schema checked.

use super::row::*;
use super::{KIND, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::error::{DataError, Result};
use arrow::array::{Array, StringArray, UInt32Array};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// Shard writer settings: zstd, the kind and the schema version in the footer.
pub fn writer_properties() -> WriterProperties {
    crate::table::properties_of_kind(KIND, &[(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string())])
}

/// Rows per record batch handed to the Parquet writer (bounds memory for big shards).
const BATCH_ROWS: usize = 65_536;

/// Writes `rows` as one shard at `path`, atomically: a temporary file in the
/// same directory, flushed and fsynced, then renamed over `path`.
pub fn write_shard(path: &Path, rows: &[RationaleRow]) -> Result<ShardInfo> {
    let batches = rows.chunks(BATCH_ROWS).map(rows_to_batch);
    crate::table::write_parquet(path, schema(), batches, writer_properties())?;
    shard_info(path, rows.len())
}

pub(crate) fn shard_info(path: &Path, rows: usize) -> Result<ShardInfo> {
    let (sha256, bytes) = crate::digest::sha256_and_len(path)?;
    Ok(ShardInfo {
        file: path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        rows: rows as u64,
        bytes,
        sha256,
    })
}

/// Opens a shard and checks it is one: complete Parquet, our footer, our schema.
pub(crate) fn open_checked(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
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
        Some(v) if !["1".to_string(), SCHEMA_VERSION.to_string()].contains(&v.to_string()) => {
            return Err(DataError::format(
                path,
                format!("shard schema version {v}, this build reads versions 1 to {SCHEMA_VERSION}"),
            ));
        }
        _ => {}
    }
    let v1 = kv.get(SCHEMA_VERSION_KEY) == Some(&"1");
    let want = schema();
    let have = builder.schema();
    let v1_logprobs = arrow::datatypes::Field::new("top_logprobs", DataType::Utf8, true);
    for f in want.fields() {
        if v1 && ADDED_IN_V2.contains(&f.name().as_str()) {
            continue;
        }
        let f: &arrow::datatypes::Field = if v1 && f.name() == "top_logprobs" {
            &v1_logprobs
        } else {
            f.as_ref()
        };
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

pub(crate) fn types_compatible(have: &DataType, want: &DataType) -> bool {
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

pub(crate) fn part_index(name: &str) -> Option<u32> {
    name.strip_prefix("part-")?.strip_suffix(".parquet")?.parse().ok()
}
