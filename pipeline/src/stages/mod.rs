//! The stages of a run, each reading the previous stage's files in the run
//! directory: [`data`] → [`teach`] → [`train`] → [`eval`] → [`report`].
//!
//! A stage records the identity of its work in `stages/<name>.json` when it
//! finishes and is skipped when that matches. Identities are defined by the
//! crate that does the work (`DataSpec::identity`, `TeachConfig::identity`,
//! `TrainConfig::run_identity`); the stages only chain them, so a change
//! upstream redoes what depends on it, and only that. Within a stage the
//! teacher resumes through its shards and cache and the trainer through its
//! checkpoints, so an interrupted run picks up where it stopped.

pub mod data;
pub mod eval;
pub mod report;
pub mod teach;
pub mod train;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::run_dir::RunDir;

/// The names of the stages that leave a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Data,
    Teach,
    Train,
    Eval,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Teach => "teach",
            Stage::Train => "train",
            Stage::Eval => "eval",
        }
    }
}

/// What a finished stage leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub identity: String,
    pub finished_at: String,
}

/// The record of `stage`'s last finished run, if any.
pub fn record(dir: &RunDir, stage: Stage) -> Option<StageRecord> {
    std::fs::read(dir.stage_record(stage.as_str()))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
}

/// The identity `stage` last finished with; an error says to run it first.
pub fn recorded_identity(dir: &RunDir, stage: Stage) -> Result<String> {
    record(dir, stage).map(|r| r.identity).with_context(|| {
        format!(
            "{}: the {} stage has not finished in this run directory; run it (or `stepwise run`) first",
            dir.root().display(),
            stage.as_str()
        )
    })
}

/// True when `stage` already finished with this identity.
pub fn is_done(dir: &RunDir, stage: Stage, identity: &str) -> bool {
    record(dir, stage).is_some_and(|r| r.identity == identity)
}

pub fn mark_done(dir: &RunDir, stage: Stage, identity: &str) -> Result<()> {
    let p = dir.stage_record(stage.as_str());
    std::fs::create_dir_all(p.parent().expect("has parent"))?;
    let rec = StageRecord {
        identity: identity.into(),
        finished_at: unix_seconds(),
    };
    stepwise_datasets::atomic::write_bytes(&p, &serde_json::to_vec_pretty(&rec)?)?;
    Ok(())
}

fn unix_seconds() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}

/// A progress bar in the style every stage uses.
pub fn bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}
