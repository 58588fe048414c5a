//! [`RunDir`]: every path of a run directory, in one place.
//!
//! ```text
//! runs/<name>/
//!   stepwise.toml             the resolved config (no secrets)
//!   examples/{train,val,test,test_ood}.parquet
//!   shards/                   teacher rows, _manifest.json, _pending.jsonl
//!   cache/ failures.jsonl     teacher responses by request; failed requests
//!   retired/shards-<id>/      shards of an earlier teach identity
//!   student/tokenizer.json    BPE trained on the run's text (from scratch)
//!   student/base/             the untrained student
//!   student/<name>/           identity.json, checkpoints/, best/, final/, metrics.jsonl, summary.json
//!   eval/predictions.parquet  every model's answers on the test splits
//!   report.md report.html plots/ metrics.json
//!   stages/<stage>.json       the identity each finished stage ran with
//! ```

use std::path::{Path, PathBuf};
use stepwise_teacher::stage::TeachPaths;

use crate::model_id::StudentId;

/// Where a model directory records the identity of the run that made it.
pub const IDENTITY_FILE: &str = "identity.json";

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The resolved config the run was last started with.
    pub fn config(&self) -> PathBuf {
        self.root.join("stepwise.toml")
    }

    pub fn examples(&self) -> PathBuf {
        self.root.join("examples")
    }

    /// The teach stage's shards, cache, failures and retired shard sets.
    pub fn teach(&self) -> TeachPaths {
        stepwise_teacher::stage::paths_in(&self.root)
    }

    pub fn shards(&self) -> PathBuf {
        self.teach().shards
    }

    pub fn students(&self) -> PathBuf {
        self.root.join("student")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.students().join("tokenizer.json")
    }

    /// What the tokenizer was trained on (its identity).
    pub fn tokenizer_identity(&self) -> PathBuf {
        self.students().join("tokenizer.identity")
    }

    pub fn base(&self) -> PathBuf {
        self.students().join("base")
    }

    /// The untrained student's identity, kept inside its directory.
    pub fn base_identity(&self) -> PathBuf {
        self.base().join(IDENTITY_FILE)
    }

    /// A trained student's directory.
    pub fn student(&self, s: StudentId) -> PathBuf {
        self.students().join(s.to_string())
    }

    /// The model a trained student's evaluation loads.
    pub fn student_final(&self, s: StudentId) -> PathBuf {
        self.student(s).join("final")
    }

    pub fn student_identity(&self, s: StudentId) -> PathBuf {
        self.student(s).join(IDENTITY_FILE)
    }

    pub fn student_summary(&self, s: StudentId) -> PathBuf {
        self.student(s).join("summary.json")
    }

    pub fn student_log(&self, s: StudentId) -> PathBuf {
        self.student(s).join("metrics.jsonl")
    }

    pub fn predictions(&self) -> PathBuf {
        self.root.join("eval").join("predictions.parquet")
    }

    pub fn report_html(&self) -> PathBuf {
        self.root.join("report.html")
    }

    pub fn stage_record(&self, stage: &str) -> PathBuf {
        self.root.join("stages").join(format!("{stage}.json"))
    }

    /// Input files' digests, remembered by size and mtime.
    pub fn file_digests(&self) -> PathBuf {
        self.root.join("stages").join("file-digests.json")
    }
}
