//! Checks that take seconds, run before any stage: what would otherwise
//! fail only after minutes (or hours) of work. Each failure names the key,
//! the file or the URL.
//!
//! - every data and probe file is readable (and its digest is taken: the
//!   data stage's identity);
//! - `student.init` is a model stepwise can load (its config and tokenizer
//!   are read, not its weights), and `student.device` exists;
//! - a local gguf teacher's file is a chat model stepwise can serve;
//! - an http teacher answers at all, and its key variable is set — only
//!   when the teach stage has work to do.

use anyhow::{Context, Result};
use std::time::Duration;
use stepwise_datasets::digest::FileDigests;
use stepwise_datasets::source::Source;
use stepwise_student::Student;
use stepwise_teacher::TeacherClient;
use stepwise_teacher::stage::TeachConfig;

use crate::config::LocalBackend;
use crate::plan::{Endpoint, Plan, Start};
use crate::stages::{self, Stage};

/// How long the reachability check of an http teacher waits.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the checks established, for the stages to use.
pub struct Checked {
    /// The data stage's identity (the input files' digests).
    pub data_identity: String,
    /// The teach config with its model file's digest.
    pub teach: TeachConfig,
}

/// The data files and the student; the teacher with `teacher_needed`.
pub fn check(plan: &Plan, digests: &mut FileDigests, teacher: TeacherCheck) -> Result<Checked> {
    let d = &plan.config.data;
    if let Source::Files { files, .. } = &plan.data.source {
        for f in files {
            digests.sha256(f).context("data.files")?;
        }
    }
    for f in &d.probe_files {
        digests.sha256(f).context("data.probe_files")?;
    }
    let data_identity = plan.data.identity(digests)?;

    check_student(plan)?;

    let teach = plan.teach_config(digests)?;
    let needed = match teacher {
        TeacherCheck::Always => true,
        TeacherCheck::IfTeachHasWork => teach_has_work(plan, &data_identity, &teach),
        TeacherCheck::Never => false,
    };
    check_teacher(plan, &teach, needed)?;
    Ok(Checked { data_identity, teach })
}

/// A local gguf teacher's file is a chat model on a device that exists;
/// with `reach`, an http teacher answers and its key variable is set.
pub fn check_teacher(plan: &Plan, teach: &TeachConfig, reach: bool) -> Result<()> {
    if let Endpoint::Local {
        backend: LocalBackend::Gguf,
        gguf: Some(p),
        device,
        ..
    } = &plan.teacher.endpoint
    {
        let tok = Student::load_tokenizer(p).with_context(|| format!("teacher.gguf = {}", p.display()))?;
        anyhow::ensure!(
            tok.chat_template.is_some(),
            "teacher.gguf = {}: no tokenizer.chat_template in the GGUF; the gguf backend serves chat models",
            p.display()
        );
        stepwise_student::device::pick_device(device).context("teacher.device")?;
    }
    if reach && let Endpoint::Http { .. } = &plan.teacher.endpoint {
        let client = TeacherClient::new(teach.client.clone()).context("teacher.api_key_env")?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(client.preflight(REACH_TIMEOUT))?;
    }
    Ok(())
}

/// `student.init` is a model stepwise can load (its config and tokenizer,
/// not its weights), and `student.device` exists.
pub fn check_student(plan: &Plan) -> Result<()> {
    if let Start::Pretrained(p) = &plan.students.start {
        let config = Student::inspect(p).with_context(|| format!("student.init = {}", p.display()))?;
        if let Some(lora) = &plan.students.lora {
            lora.modules(&config)
                .with_context(|| format!("student.lora on student.init = {}", p.display()))?;
        }
    }
    stepwise_student::device::pick_device(&plan.students.device).context("student.device")?;
    Ok(())
}

/// When the teacher must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeacherCheck {
    Always,
    /// Not asked at all (`teach plan`: the planning machine need not reach it).
    Never,
    /// Only when the teach stage is not already done with this identity.
    IfTeachHasWork,
}

/// False when the data and teach stages both finished with the identities
/// they would have now.
fn teach_has_work(plan: &Plan, data_identity: &str, tc: &TeachConfig) -> bool {
    if !stages::is_done(&plan.dir, Stage::Data, data_identity) {
        return true;
    }
    match stages::teach::examples(plan) {
        Ok(ex) => !stages::is_done(&plan.dir, Stage::Teach, &tc.stage_identity(&ex)),
        Err(_) => true,
    }
}
