//! The data stage: the plan's [`DataSpec`](stepwise_datasets::source::DataSpec)
//! built and written as `examples/{train,val,test,test_ood}.parquet`.

use anyhow::Result;
use stepwise_datasets::digest::FileDigests;
use stepwise_datasets::examples_file::write_splits;

use super::{Stage, is_done, mark_done};
use crate::plan::Plan;

/// The data stage's identity: the datasets crate's, over the input files' contents.
pub fn identity(plan: &Plan, digests: &mut FileDigests) -> Result<String> {
    Ok(plan.data.identity(digests)?)
}

pub fn run(plan: &Plan, identity: &str) -> Result<()> {
    if is_done(&plan.dir, Stage::Data, identity) {
        tracing::info!("data: up to date, skipped");
        return Ok(());
    }
    let examples = plan.data.build()?;
    let counts = write_splits(&plan.dir.examples(), &examples)?;
    tracing::info!(?counts, "data: examples written");
    mark_done(&plan.dir, Stage::Data, identity)
}
