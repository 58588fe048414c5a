//! Examples on disk: `examples/{train,val,test,test_ood}.parquet` in a run directory.

use crate::error::{DataError, Result};
use crate::example::{Example, LabelKind, Split};
use arrow::array::{Array, ArrayRef, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    Arc::new(Schema::new(vec![
        s("id", false),
        s("task", false),
        s("input", false),
        Field::new(
            "choices",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        s("label", false),
        s("label_kind", false),
        s("split", true),
        s("source", false),
        s("reference_rationale", true),
    ]))
}

/// The file a split is stored in under `dir`.
pub fn split_path(dir: &Path, split: Split) -> PathBuf {
    dir.join(format!("{}.parquet", split.as_str()))
}

/// Writes examples to one Parquet file, atomically (temporary name, fsync, rename).
pub fn write_examples(path: &Path, examples: &[Example]) -> Result<()> {
    let mut choices = ListBuilder::new(StringBuilder::new());
    for e in examples {
        match &e.choices {
            Some(cs) => {
                cs.iter().for_each(|c| choices.values().append_value(c));
                choices.append(true)
            }
            None => choices.append(false),
        }
    }
    let col = |f: &dyn Fn(&Example) -> Option<&str>| -> ArrayRef {
        Arc::new(examples.iter().map(f).collect::<StringArray>())
    };
    let columns = vec![
        col(&|e| Some(&e.id)),
        col(&|e| Some(&e.task)),
        col(&|e| Some(&e.input)),
        Arc::new(choices.finish()) as ArrayRef,
        col(&|e| Some(&e.label)),
        col(&|e| Some(e.label_kind.as_str())),
        col(&|e| e.split.map(|s| s.as_str())),
        col(&|e| Some(&e.source)),
        col(&|e| e.reference_rationale.as_deref()),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| DataError::arrow(path, e))?;
    crate::table::write_parquet(path, schema(), [batch], crate::table::writer_properties_plain())
}

/// Reads examples written by [`write_examples`].
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DataError::format(path, format!("not a complete Parquet file: {e}")))?
        .build()
        .map_err(|e| DataError::parquet(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| DataError::arrow(path, e))?;
        let s = |n: &str| -> Result<&StringArray> {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    DataError::format(path, format!("column {n:?} missing or not text: not an examples file"))
                })
        };
        let (id, task, input, label, kind, split, source, rat) = (
            s("id")?,
            s("task")?,
            s("input")?,
            s("label")?,
            s("label_kind")?,
            s("split")?,
            s("source")?,
            s("reference_rationale")?,
        );
        let choices = b
            .column_by_name("choices")
            .and_then(|c| c.as_any().downcast_ref::<ListArray>())
            .ok_or_else(|| DataError::format(path, "column \"choices\" missing: not an examples file"))?;
        for i in 0..b.num_rows() {
            let row = out.len() + 1;
            out.push(Example {
                id: id.value(i).to_string(),
                task: task.value(i).to_string(),
                input: input.value(i).to_string(),
                choices: choices.is_valid(i).then(|| {
                    let v = choices.value(i);
                    let v = v.as_any().downcast_ref::<StringArray>().expect("list of utf8");
                    (0..v.len()).map(|j| v.value(j).to_string()).collect()
                }),
                label: label.value(i).to_string(),
                label_kind: kind
                    .value(i)
                    .parse::<LabelKind>()
                    .map_err(|e| DataError::record(path, row, e))?,
                split: if split.is_valid(i) {
                    Some(
                        split
                            .value(i)
                            .parse::<Split>()
                            .map_err(|e| DataError::record(path, row, e))?,
                    )
                } else {
                    None
                },
                source: source.value(i).to_string(),
                reference_rationale: rat.is_valid(i).then(|| rat.value(i).to_string()),
            });
        }
    }
    Ok(out)
}

/// Writes one file per split under `dir` (splits with no examples get none; stale ones are removed).
pub fn write_splits(dir: &Path, examples: &[Example]) -> Result<Vec<(Split, usize)>> {
    let mut counts = Vec::new();
    for split in Split::ALL {
        let part: Vec<Example> = examples.iter().filter(|e| e.split == Some(split)).cloned().collect();
        let path = split_path(dir, split);
        if part.is_empty() {
            if path.exists() {
                fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
            }
            continue;
        }
        write_examples(&path, &part)?;
        counts.push((split, part.len()));
    }
    Ok(counts)
}

/// Reads every split from `dir`, in [`Split::ALL`] order.
pub fn read_all_splits(dir: &Path) -> Result<Vec<Example>> {
    let mut all = Vec::new();
    for s in Split::ALL {
        all.extend(read_split(dir, s)?);
    }
    Ok(all)
}

/// Reads one split from `dir`; a split with no file is empty.
pub fn read_split(dir: &Path, split: Split) -> Result<Vec<Example>> {
    let path = split_path(dir, split);
    if path.exists() {
        read_examples(&path)
    } else {
        Ok(vec![])
    }
}
