//! `stepwise run`, `init`, `train`, `eval`, `report` and `generate`.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use stepwise_datasets::Split;
use stepwise_datasets::examples_file::read_split;
use stepwise_student::Student;
use stepwise_student::data::{Task, Variant, prompt};
use stepwise_student::device::{compute_dtype, pick_device};
use stepwise_student::train::TrainSummary;

use crate::checks::{self, Metrics};
use crate::config::{EXAMPLE, RunConfig};
use crate::report::{self, ReportInput};
use crate::stages::{self, Hashes, examples_dir, model_names, student_name};

#[derive(Args)]
pub struct RunArgs {
    /// A stepwise.toml; without one, the embedded default (built-in task, local solver teacher).
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<run.name>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct StageArgs {
    /// Run directory holding stepwise.toml (written by `stepwise run`).
    #[arg(long)]
    pub run: PathBuf,
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    pub run: PathBuf,
    /// distill, label-gold or label-teacher (default: every variant in the config).
    #[arg(long)]
    pub variant: Option<String>,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A student directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The question; asked with the student's label or rationale prompt.
    #[arg(long)]
    pub input: Vec<String>,
    /// label or rationale.
    #[arg(long, default_value = "rationale")]
    pub task: String,
    #[arg(long, default_value_t = 160)]
    pub max_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn load_run_config(dir: &Path) -> Result<RunConfig> {
    let p = dir.join("stepwise.toml");
    if !p.exists() {
        bail!(
            "{}: not found; run `stepwise run` first, or give the run directory it made",
            p.display()
        );
    }
    RunConfig::load(&p)
}

pub fn run(a: RunArgs) -> Result<()> {
    let started = Instant::now();
    let cfg = match &a.config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::default(),
    };
    let dir = cfg.run_dir(a.dir.as_deref());
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    std::fs::write(dir.join("stepwise.toml"), cfg.to_toml())?;
    let h = Hashes::of(&cfg);
    tracing::info!(dir = %dir.display(), "run: data");
    stages::stage_data(&cfg, &dir, &h)?;
    tracing::info!("run: teach");
    stages::stage_teach(&cfg, &dir, &h)?;
    tracing::info!("run: train");
    stages::stage_train(&cfg, &dir, &h, None)?;
    tracing::info!("run: eval");
    stages::stage_eval(&cfg, &dir, &h)?;
    let m = report_stage(&cfg, &dir)?;
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
        dir.join("report.html").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
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

pub fn train(a: TrainArgs) -> Result<()> {
    let cfg = load_run_config(&a.run)?;
    let only = match &a.variant {
        Some(v) => Some(
            Variant::parse(v)
                .with_context(|| format!("--variant {v}: expected distill, label-gold or label-teacher"))?,
        ),
        None => None,
    };
    stages::stage_train(&cfg, &a.run, &Hashes::of(&cfg), only)
}

pub fn eval(a: StageArgs) -> Result<()> {
    let cfg = load_run_config(&a.run)?;
    stages::stage_eval(&cfg, &a.run, &Hashes::of(&cfg))
}

pub fn report(a: StageArgs) -> Result<()> {
    let cfg = load_run_config(&a.run)?;
    let m = report_stage(&cfg, &a.run)?;
    println!(
        "verdict: {}; report: {}",
        m.verdict.kind.as_str(),
        a.run.join("report.html").display()
    );
    Ok(())
}

/// Checks and report from the stored predictions.
pub fn report_stage(cfg: &RunConfig, dir: &Path) -> Result<Metrics> {
    let preds = stages::read_predictions(&dir.join("eval/predictions.parquet"))?;
    let train = read_split(&examples_dir(dir), Split::Train)?;
    let mut tests = read_split(&examples_dir(dir), Split::Test)?;
    tests.extend(read_split(&examples_dir(dir), Split::TestOod)?);
    let ids: std::collections::HashSet<&str> = preds.iter().map(|p| p.example_id.as_str()).collect();
    tests.retain(|e| ids.contains(e.id.as_str()));
    let rows = stages::train_split_rows(dir, &train)?;
    let students: Vec<String> = model_names(cfg).into_iter().filter(|n| n != "base").collect();
    let judged = if cfg.students.variants.contains(&Variant::Distill) {
        student_name(Variant::Distill, 1.0)
    } else {
        student_name(cfg.students.variants[0], 1.0)
    };
    let judged = if students.contains(&judged) {
        judged
    } else {
        students[0].clone()
    };
    let metrics = checks::compute(
        &preds,
        &train,
        &rows,
        &tests,
        &students,
        &judged,
        cfg.eval.bootstrap,
        cfg.run.seed,
    );
    let logs = stages::training_logs(cfg, dir)?;
    let mut summaries: BTreeMap<String, TrainSummary> = BTreeMap::new();
    for n in &students {
        let p = dir.join("student").join(n).join("summary.json");
        if let Ok(t) = std::fs::read_to_string(&p) {
            summaries.insert(
                n.clone(),
                serde_json::from_str(&t).with_context(|| p.display().to_string())?,
            );
        }
    }
    let mut sweep = Vec::new();
    if cfg.students.fractions.len() > 1 {
        for &v in &cfg.students.variants {
            for &f in &cfg.students.fractions {
                let name = student_name(v, f);
                for s in metrics.scores.iter().filter(|s| s.model == name) {
                    sweep.push((v.as_str().to_string(), f, s.split.clone(), s.accuracy));
                }
            }
        }
    }
    let mut notes = vec![format!("resolved config: `{}`", dir.join("stepwise.toml").display())];
    if cfg.teacher.kind == "local" {
        notes.push(format!(
            "teacher: the built-in `{}` server, queried over HTTP on loopback",
            cfg.teacher.backend
        ));
    }
    report::write(
        dir,
        &ReportInput {
            title: format!("stepwise report: {}", cfg.run.name),
            metrics: &metrics,
            logs: &logs,
            summaries: &summaries,
            sweep,
            notes,
        },
    )?;
    Ok(metrics)
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let device = pick_device(&a.device)?;
    let s = Student::load_dir(&a.model, &device)?;
    let task = match a.task.as_str() {
        "label" => Task::Label,
        "rationale" => Task::Rationale,
        t => bail!("--task {t}: expected label or rationale"),
    };
    if a.input.is_empty() {
        bail!("give at least one --input");
    }
    let prompts: Vec<String> = a.input.iter().map(|i| prompt(task, i)).collect();
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
