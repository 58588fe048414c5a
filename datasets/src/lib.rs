//! # stepwise-datasets
//!
//! The data layer of stepwise: the normalised [`Example`], adapters from the
//! public task formats (GSM8K, SVAMP, CommonsenseQA, ANLI, e-SNLI, BIG-bench,
//! MMLU, or any JSONL/CSV/Parquet file through a column mapping),
//! deterministic splits, the built-in arithmetic task, and the Parquet
//! rationale shards other dataset builders can read with any Parquet tool.
//!
//! Everything here is synchronous and does no network I/O.

pub mod adapters;
pub mod answer;
pub mod arith;
pub mod atomic;
pub mod digest;
pub mod error;
pub mod example;
pub mod examples_file;
pub mod shard;
pub mod source;
pub mod split;
pub mod table;

pub use error::{DataError, Result};
pub use example::{Example, LabelKind, Split};
pub use shard::{Manifest, RationaleRow, ShardSet};
