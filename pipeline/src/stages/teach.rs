//! The teach stage: every example asked of the teacher, rows into
//! `shards/`. The teacher crate owns what the work is
//! ([`TeachConfig::stage_identity`]); a local teacher is a real HTTP server
//! on loopback, queried like any other.

use anyhow::{Result, bail};
use stepwise_datasets::Example;
use stepwise_datasets::examples_file::read_all_splits;
use stepwise_datasets::shard::{RationaleRow, read_dir_rows};
use stepwise_teacher::server::{self, ServerConfig};
use stepwise_teacher::stage::{Estimate, TeachConfig, estimate, teach};

use super::{Stage, is_done, mark_done};
use crate::plan::{Endpoint, Plan};
use crate::run_dir::RunDir;

/// The examples the teacher is asked about: every split (the test splits
/// give the teacher's own accuracy).
pub fn examples(plan: &Plan) -> Result<Vec<Example>> {
    Ok(read_all_splits(&plan.dir.examples())?)
}

/// What the stage would send and cost at most, sending nothing.
pub fn dry_run(plan: &Plan, tc: &TeachConfig) -> Result<Estimate> {
    let examples = examples(plan)?;
    let shards = plan.dir.shards();
    let done: std::collections::HashSet<String> = match stepwise_datasets::Manifest::load(&shards)? {
        Some(m) if m.config_hash == tc.identity() => {
            read_dir_rows(&shards)?.into_iter().map(|r| r.example_id).collect()
        }
        _ => Default::default(),
    };
    Ok(estimate(&examples, &|id| done.contains(id), tc)?)
}

pub fn run(plan: &Plan, tc: TeachConfig) -> Result<()> {
    let examples = examples(plan)?;
    let identity = tc.stage_identity(&examples);
    if is_done(&plan.dir, Stage::Teach, &identity) {
        tracing::info!("teach: up to date, skipped");
        return Ok(());
    }
    let paths = plan.dir.teach();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let local = match &plan.teacher.endpoint {
            Endpoint::Local {
                backend,
                gguf,
                max_batch,
                device,
            } => {
                let model = crate::gguf_teacher::local_backend(*backend, gguf.as_deref(), device, "teacher.gguf")?;
                let sc = ServerConfig {
                    model,
                    seed: plan.seed,
                    max_batch: *max_batch,
                    ..Default::default()
                };
                Some(server::start("127.0.0.1:0", sc).await?)
            }
            Endpoint::Http { .. } => None,
        };
        let mut tc = tc;
        if let Some(s) = &local {
            tc.client.base_url = s.base_url();
        }
        let summary = teach(&examples, tc, &paths).await;
        if let Some(s) = local {
            s.shutdown().await;
        }
        let summary = summary?;
        tracing::info!(?summary, "teach: done");
        if summary.failed > 0 || summary.not_attempted > 0 {
            bail!(
                "teach: {} request(s) failed and {} were not attempted (see {}); run again to retry them",
                summary.failed,
                summary.not_attempted,
                paths.failures.display()
            );
        }
        anyhow::Ok(())
    })?;
    mark_done(&plan.dir, Stage::Teach, &identity)
}

/// All teacher rows, every split.
pub fn teacher_rows(dir: &RunDir) -> Result<Vec<RationaleRow>> {
    Ok(read_dir_rows(&dir.shards())?)
}

/// The teacher rows of the training examples `train` (before curation).
pub fn train_split_rows(dir: &RunDir, train: &[Example]) -> Result<Vec<RationaleRow>> {
    let ids: std::collections::HashSet<&str> = train.iter().map(|e| e.id.as_str()).collect();
    Ok(teacher_rows(dir)?
        .into_iter()
        .filter(|r| ids.contains(r.example_id.as_str()))
        .collect())
}
