//! The commands that work on a run directory: each resolves the same
//! [`Plan`], runs the [`preflight`] checks that apply, then its stages.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;
use stepwise_student::Student;
use stepwise_student::data::{Variant, prompt};
use stepwise_student::device::{compute_dtype, pick_device};
use tracing_subscriber::EnvFilter;

use crate::cli::{ExportArgs, ExportFormat, GenerateArgs, TeachArgs};
use crate::config::{EXAMPLE, RunConfig};
use crate::plan::Plan;
use crate::preflight::{self, TeacherCheck};
use crate::run_dir::RunDir;
use crate::stages;

/// Text or JSON-lines logs on stderr, filtered by `STEPWISE_LOG` (default info).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("STEPWISE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// The plan of a config file (or the embedded default) for `dir` (or
/// `runs/<run.name>`).
pub fn plan_for(config: Option<&Path>, dir: Option<&Path>) -> Result<Plan> {
    let cfg = match config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::default(),
    };
    let dir = RunDir::new(cfg.run_dir(dir));
    Plan::resolve(cfg, dir)
}

/// The plan of an existing run directory, from its `stepwise.toml`.
pub fn plan_of_run(dir: &Path) -> Result<Plan> {
    let p = RunDir::new(dir).config();
    if !p.exists() {
        bail!(
            "{}: not found; run `stepwise run` first, or give the run directory it made",
            p.display()
        );
    }
    Plan::resolve(RunConfig::load(&p)?, RunDir::new(dir))
}

/// Records the resolved config in the run directory (no secrets: the key's
/// variable name only).
fn write_config(plan: &Plan) -> Result<()> {
    let root = plan.dir.root();
    std::fs::create_dir_all(root).with_context(|| root.display().to_string())?;
    stepwise_datasets::atomic::write_bytes(&plan.dir.config(), plan.config.to_toml().as_bytes())?;
    Ok(())
}

pub fn run(config: Option<&Path>, dir: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let plan = plan_for(config, dir)?;
    let mut digests = plan.digests();
    let checked = preflight::check(&plan, &mut digests, TeacherCheck::IfTeachHasWork)?;
    write_config(&plan)?;
    digests.save()?;
    tracing::info!(dir = %plan.dir.root().display(), "run: data");
    stages::data::run(&plan, &checked.data_identity)?;
    tracing::info!("run: teach");
    stages::teach::run(&plan, checked.teach)?;
    tracing::info!("run: train");
    stages::train::run(&plan, None, &mut digests)?;
    digests.save()?;
    tracing::info!("run: eval");
    stages::eval::run(&plan)?;
    let m = stages::report::run(&plan)?;
    println!(
        "verdict: {} ({} on {}: gain over {} {})",
        m.verdict.kind.as_str(),
        m.verdict.student,
        m.verdict.split,
        m.verdict.floor,
        m.verdict.gain_over_floor
    );
    if let Some(o) = &m.verdict_ood {
        println!(
            "out of distribution: {} (gain over {} {})",
            o.kind.as_str(),
            o.floor,
            o.gain_over_floor
        );
    }
    println!(
        "report: {} ({:.0} s)",
        plan.dir.report_html().display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The data and teach stages of a run.
pub fn teach(a: &TeachArgs) -> Result<()> {
    let plan = match &a.run {
        Some(d) => plan_of_run(d)?,
        None => plan_for(a.config.as_deref(), a.dir.as_deref())?,
    };
    if a.cancel {
        return stages::teach::cancel(&plan);
    }
    let mut digests = plan.digests();
    let check = if a.dry_run {
        TeacherCheck::IfTeachHasWork
    } else {
        TeacherCheck::Always
    };
    let checked = preflight::check(&plan, &mut digests, check)?;
    write_config(&plan)?;
    digests.save()?;
    stages::data::run(&plan, &checked.data_identity)?;
    if a.dry_run {
        let (e, time) = stages::teach::dry_run(&plan, &checked.teach)?;
        let (cost, how) = match &plan.teacher.batch {
            Some(b) => (e.max_cost_usd * (1.0 - b.discount), " at the batch price"),
            None => (e.max_cost_usd, ""),
        };
        println!(
            "would send {} requests: ~{} prompt tokens, at most {} completion tokens, at most ${cost:.4}{how}",
            e.requests, e.prompt_tokens, e.max_completion_tokens
        );
        if let Some(t) = time {
            println!("time: {t}");
        }
        return Ok(());
    }
    stages::teach::run(&plan, checked.teach)
}

pub fn init(path: Option<PathBuf>) -> Result<()> {
    let p = path.unwrap_or_else(|| PathBuf::from("stepwise.toml"));
    if p.exists() {
        bail!("{}: already exists; not overwritten", p.display());
    }
    std::fs::write(&p, EXAMPLE)?;
    println!("wrote {} (the embedded default, every key commented)", p.display());
    Ok(())
}

pub fn train(dir: &Path, only: Option<Variant>) -> Result<()> {
    let plan = plan_of_run(dir)?;
    preflight::check_student(&plan)?;
    let mut digests = plan.digests();
    stages::train::run(&plan, only, &mut digests)?;
    digests.save()?;
    Ok(())
}

pub fn eval(dir: &Path) -> Result<()> {
    stages::eval::run(&plan_of_run(dir)?)
}

pub fn report(dir: &Path) -> Result<()> {
    let plan = plan_of_run(dir)?;
    let m = stages::report::run(&plan)?;
    println!(
        "verdict: {}; report: {}",
        m.verdict.kind.as_str(),
        plan.dir.report_html().display()
    );
    Ok(())
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let device = pick_device(&a.device)?;
    let s = Student::load(&a.model, &device).with_context(|| a.model.display().to_string())?;
    if a.input.is_empty() {
        bail!("give at least one --input");
    }
    let prompts: Vec<String> = a.input.iter().map(|i| prompt(a.task.task(), i)).collect();
    let outs = stepwise_student::generate::generate(
        &s.model,
        &s.tokenizer,
        &prompts,
        a.max_tokens,
        16,
        compute_dtype(&device),
    )?;
    for (i, o) in a.input.iter().zip(outs) {
        println!("> {i}\n{}\n", o.trim());
    }
    Ok(())
}

/// `stepwise export`: loads the student (adapters on their base when it has
/// them), merges adapters for the formats that hold whole weights, writes.
pub fn export(a: &ExportArgs) -> Result<()> {
    let s = Student::load(&a.model, &candle_core::Device::Cpu).with_context(|| a.model.display().to_string())?;
    match a.format {
        ExportFormat::Peft => {
            if s.adapters.is_none() {
                bail!(
                    "{}: has no adapters to export as PEFT (train with [student.lora], or export --format hf)",
                    a.model.display()
                );
            }
            s.save_dir(&a.out)?;
        }
        ExportFormat::Hf => s.merged()?.save_dir(&a.out)?,
        ExportFormat::Gguf => {
            let summary = stepwise_student::gguf_export::export_gguf(&s.merged()?, &a.out, a.gguf_type)?;
            tracing::info!(?summary, "export: gguf written");
        }
    }
    println!("{}: {:?} export written", a.out.display(), a.format);
    Ok(())
}
