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

mod file;
mod manifest;
mod row;
mod set;
mod validate;

pub use file::*;
pub use manifest::*;
pub use row::*;
pub use set::*;
pub use validate::*;

/// Bumped when a column is added, removed or changes meaning. Version 1
/// files still read (see `row.rs`).
pub const SCHEMA_VERSION: u32 = 2;
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
