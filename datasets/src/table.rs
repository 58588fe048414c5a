//! Arrow/Parquet helpers shared by every table stepwise writes (examples,
//! shards, predictions): one set of writer settings, one atomic writer,
//! typed column look-ups whose errors name the file and the column.

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use std::path::Path;

use crate::error::{DataError, Result};

/// The footer key naming what a stepwise Parquet file holds.
pub const KIND_KEY: &str = "stepwise.kind";

/// zstd, and stepwise as the writer.
pub fn base_properties() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("stepwise {}", env!("CARGO_PKG_VERSION")))
}

/// Writer settings for any stepwise Parquet file with nothing in its footer.
pub fn writer_properties_plain() -> WriterProperties {
    base_properties().build()
}

/// [`base_properties`] with `stepwise.kind = kind` and `extra` in the footer.
pub fn properties_of_kind(kind: &str, extra: &[(&str, String)]) -> WriterProperties {
    let mut kv = vec![KeyValue::new(KIND_KEY.to_string(), kind.to_string())];
    kv.extend(extra.iter().map(|(k, v)| KeyValue::new(k.to_string(), v.clone())));
    base_properties().set_key_value_metadata(Some(kv)).build()
}

/// Writes `batches` as one Parquet file, atomically (see [`crate::atomic`]).
/// Batches are made as they are written, so a caller that converts rows in
/// chunks holds one chunk's batch at a time.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = RecordBatch>,
    props: WriterProperties,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    crate::atomic::write_file_with(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(std::io::Error::other)?;
        for b in batches {
            w.write(&b).map_err(std::io::Error::other)?;
        }
        w.into_inner().map_err(std::io::Error::other)
    })
}

/// Every record batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DataError::parquet(path, e))?
        .build()
        .map_err(|e| DataError::parquet(path, e))?;
    reader.map(|b| b.map_err(|e| DataError::arrow(path, e))).collect()
}

/// A text column; the error names the file and the column.
pub fn str_col<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| DataError::format(path, format!("column {name} missing or not text")))
}

/// A boolean column; the error names the file and the column.
pub fn bool_col<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a BooleanArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| DataError::format(path, format!("column {name} missing or not boolean")))
}

/// The value at `i` of a nullable text column.
pub fn opt_str(c: &StringArray, i: usize) -> Option<String> {
    (!c.is_null(i)).then(|| c.value(i).to_string())
}
