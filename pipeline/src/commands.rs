//! The commands that work on a run directory: each resolves the same
//! [`Plan`], runs the [`preflight`] checks that apply, then its stages.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;
use stepwise_student::Student;
use stepwise_student::data::{Variant, prompt};
use stepwise_student::device::{compute_dtype, pick_device};
use tracing_subscriber::EnvFilter;

use crate::cli::{ExportArgs, ExportFormat, GenerateArgs, TeachArgs, TeachCommand};
use crate::config::{EXAMPLE, RunConfig};
use crate::plan::Plan;
use crate::preflight::{self, TeacherCheck};
use crate::run_dir::RunDir;
use crate::stages;
use crate::tasks::{self, ConfigError, TaskPlan};
use stepwise_store::Store;

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
    let cfg = load_config(config)?;
    let dir = RunDir::new(cfg.run_dir(dir));
    Plan::resolve(cfg, dir)
}

fn load_config(config: Option<&Path>) -> Result<RunConfig> {
    Ok(match config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::default(),
    })
}

/// `--base-url`: another server of the same model (an operational knob).
fn override_base_url(cfg: &mut RunConfig, url: Option<&str>) -> Result<()> {
    let Some(url) = url else { return Ok(()) };
    if cfg.teacher.kind != crate::config::TeacherKind::Http {
        bail!("--base-url {url}: teacher.kind is not \"http\"; a local teacher runs in the process");
    }
    cfg.teacher.base_url = url.to_string();
    cfg.teacher.base_urls.clear();
    Ok(())
}

/// A failure of what the user gave, which a retry cannot fix.
fn config_error(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(ConfigError(format!("{e:#}")))
}

fn open_store(url: &str) -> Result<Store> {
    Store::open(url).map_err(|e| anyhow::Error::new(ConfigError(e.to_string())))
}

/// `stepwise teach plan`: the data stage here, the examples uploaded, the
/// plan written create-only.
fn teach_plan(config: Option<&Path>, dir: Option<&Path>, url: &str, n: u32, base_url: Option<&str>) -> Result<()> {
    if n == 0 {
        return Err(ConfigError("--tasks 0: at least one task".into()).into());
    }
    let started = Instant::now();
    let store = open_store(url)?;
    let mut cfg = load_config(config).map_err(config_error)?;
    override_base_url(&mut cfg, base_url).map_err(config_error)?;
    let dir = RunDir::new(cfg.run_dir(dir));
    let plan = Plan::resolve(cfg, dir).map_err(config_error)?;
    if plan.teacher.batch.is_some() {
        return Err(ConfigError(
            "teacher.mode = \"batch\": array tasks send live requests; one batch job needs no array".into(),
        )
        .into());
    }
    let mut digests = plan.digests();
    let checked = preflight::check(&plan, &mut digests, TeacherCheck::Never).map_err(config_error)?;
    write_config(&plan)?;
    digests.save()?;
    stages::data::run(&plan, &checked.data_identity)?;
    let examples = stages::teach::examples(&plan)?;
    let ids = examples.iter().map(|e| e.id.clone()).collect();
    let identity = checked.teach.identity();
    let local = tasks::local_examples(&plan.dir.examples())?;
    let tp = TaskPlan::new(&identity, ids, n as usize, local);
    let created = match TaskPlan::load(&store)? {
        Some(_) => tp.write(&store)?,
        None => {
            tasks::upload_examples(&store, &tp, &plan.dir.examples())?;
            tp.write(&store)?
        }
    };
    let sizes: Vec<usize> = tp.tasks.iter().map(|t| t.example_ids.len()).collect();
    println!(
        "teach plan: {} examples in {n} task(s) of {} to {} ({}) at {}; identity {}; {:.3} s",
        examples.len(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        match created {
            stepwise_store::Created::Created => "written",
            stepwise_store::Created::Exists => "already there, unchanged",
        },
        store.url_of(tasks::PLAN),
        identity,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The task index: `--task`, else the scheduler's variable.
fn task_index(flag: Option<u32>) -> Result<u32> {
    if let Some(i) = flag {
        return Ok(i);
    }
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("{var}={v:?}: not a task index")).into());
        }
    }
    Err(ConfigError("no task index: give --task I, or run under a Slurm array (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)".into()).into())
}

/// Where tasks keep their local stage.
fn default_scratch() -> PathBuf {
    std::env::var_os("STEPWISE_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Holds an exclusive lock on `dir` while alive: a second worker of the
/// same task on this machine waits instead of writing the same shards.
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let path = dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!("teach task: another worker holds {}; waiting for it", path.display());
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("{}: lock: {}", path.display(), std::io::Error::last_os_error());
            }
        }
        Ok(DirLock { _file: f })
    }
}

/// `stepwise teach --store URL [--task I]`: one array task.
fn teach_task(a: &TeachArgs, url: &str) -> Result<()> {
    let index = task_index(a.task)?;
    let store = open_store(url)?;
    let tp = TaskPlan::require(&store)?;
    let slice = tp.task(index)?.clone();
    let mut cfg = load_config(a.config.as_deref()).map_err(config_error)?;
    override_base_url(&mut cfg, a.base_url.as_deref()).map_err(config_error)?;
    let scratch = a
        .scratch
        .clone()
        .unwrap_or_else(default_scratch)
        .join(format!("stepwise-teach-{}", &tp.identity[..tp.identity.len().min(16)]))
        .join(format!("task-{index}-{}", &slice.ids_sha256[..12]));
    let plan = Plan::resolve(cfg, RunDir::new(&scratch)).map_err(config_error)?;
    let mut digests = plan.digests();
    let tc = plan.teach_config(&mut digests).map_err(config_error)?;
    tp.check_identity(&store, &tc.identity())?;
    let teach_root = store.child(tasks::TEACH);
    let already = |c: tasks::TaskCommit| {
        println!(
            "teach task {index}: already committed by attempt {} ({} rows); nothing to do",
            c.attempt, c.rows
        );
    };
    if let Some(c) = tasks::load_commit(&teach_root, index)? {
        already(c);
        return Ok(());
    }
    let _lock = DirLock::acquire(&scratch)?;
    if let Some(c) = tasks::load_commit(&teach_root, index)? {
        already(c);
        return Ok(());
    }
    preflight::check_teacher(&plan, &tc, true)?;
    write_config(&plan)?;
    let t = Instant::now();
    tasks::download_examples(&store, &tp, &plan.dir.examples())?;
    let ids: std::collections::HashSet<&str> = slice.example_ids.iter().map(String::as_str).collect();
    let examples: Vec<_> = stages::teach::examples(&plan)?
        .into_iter()
        .filter(|e| ids.contains(e.id.as_str()))
        .collect();
    if examples.len() != ids.len() {
        bail!(
            "task {index}: {} of the slice's {} examples are in {}",
            examples.len(),
            ids.len(),
            store.url_of(tasks::EXAMPLES)
        );
    }
    let fetch_s = t.elapsed().as_secs_f64();
    tracing::info!(task = index, examples = examples.len(), scratch = %scratch.display(), "teach task");
    let t = Instant::now();
    stages::teach::run_on(&plan, tc, examples)?;
    let teach_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let outcome = tasks::commit(&store, &tp, index, &plan.dir.shards())?;
    let commit_s = t.elapsed().as_secs_f64();
    match outcome {
        tasks::CommitOutcome::Committed(c) => println!(
            "teach task {index}: committed attempt {} ({} rows in {} file(s)) at {}; examples fetched in {:.3} s, taught in {:.3} s, uploaded and committed in {:.3} s",
            c.attempt,
            c.rows,
            c.files.len(),
            teach_root.url_of(&format!("_commits/{index}.json")),
            fetch_s,
            teach_s,
            commit_s
        ),
        tasks::CommitOutcome::Lost { winner, attempt } => println!(
            "teach task {index}: attempt {} committed first; this attempt's files (tasks/{index}/attempts/{attempt}) are unreferenced (`stepwise shards gc {url}` removes them)",
            winner.attempt
        ),
    }
    Ok(())
}

/// `stepwise teach finalize`.
fn teach_finalize(url: &str) -> Result<()> {
    let t = Instant::now();
    let store = open_store(url)?;
    let f = tasks::finalize(&store)?;
    println!(
        "teach finalize: {} rows of {} examples in {} file(s){} at {} in {:.3} s",
        f.manifest.total_rows,
        f.examples,
        f.manifest.shards.len(),
        if f.already { ", already finalized" } else { "" },
        store
            .child(tasks::TEACH)
            .url_of(stepwise_datasets::shard::MANIFEST_FILE),
        t.elapsed().as_secs_f64()
    );
    Ok(())
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
    if !plan.runs_quantized_teacher() {
        stepwise_student::device::serial_elementwise();
    }
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

/// The data and teach stages of a run; `plan`, `finalize` and array tasks.
pub fn teach(a: &TeachArgs) -> Result<()> {
    match &a.command {
        Some(TeachCommand::Plan {
            config,
            dir,
            store,
            tasks,
        }) => return teach_plan(config.as_deref(), dir.as_deref(), store, *tasks, a.base_url.as_deref()),
        Some(TeachCommand::Finalize { store }) => return teach_finalize(store),
        None => {}
    }
    if let Some(store) = &a.store {
        return teach_task(a, store);
    }
    let plan = match &a.run {
        Some(d) => plan_of_run(d)?,
        None => {
            let mut cfg = load_config(a.config.as_deref())?;
            override_base_url(&mut cfg, a.base_url.as_deref())?;
            let dir = RunDir::new(cfg.run_dir(a.dir.as_deref()));
            Plan::resolve(cfg, dir)?
        }
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
    // Under MPI, rank 0 alone writes.
    if stepwise_student::dist::is_writer() {
        digests.save()?;
    }
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
    // To a URL: written here first, then uploaded.
    let staging = stepwise_store::is_url(&a.out)
        .then(|| std::env::temp_dir().join(format!(".stepwise-export-{}", tasks::attempt_id())));
    let out = match &staging {
        Some(dir) => dir.join(a.out.trim_end_matches('/').rsplit('/').next().unwrap_or("model")),
        None => PathBuf::from(&a.out),
    };
    let result = export_to(a, &s, &out).and_then(|()| match &staging {
        Some(_) => upload_export(&out, &a.out),
        None => Ok(()),
    });
    if let Some(dir) = &staging {
        let _ = std::fs::remove_dir_all(dir);
    }
    result?;
    println!("{}: {:?} export written", a.out, a.format);
    Ok(())
}

/// Uploads an export written at `local` (a file or a directory of files) to `url`.
fn upload_export(local: &Path, url: &str) -> Result<()> {
    let url = url.trim_end_matches('/');
    if local.is_dir() {
        let store = Store::open(url)?;
        let mut names: Vec<_> = std::fs::read_dir(local)?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let name = n.to_string_lossy();
            store.put_file(&name, &local.join(&*name), false)?;
        }
    } else {
        let (parent, name) = url.rsplit_once('/').context("an export URL names a file")?;
        Store::open(parent)?.put_file(name, local, false)?;
    }
    Ok(())
}

fn export_to(a: &ExportArgs, s: &Student, out: &Path) -> Result<()> {
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).with_context(|| p.display().to_string())?;
    }
    match a.format {
        ExportFormat::Peft => {
            if s.adapters.is_none() {
                bail!(
                    "{}: has no adapters to export as PEFT (train with [student.lora], or export --format hf)",
                    a.model.display()
                );
            }
            s.save_dir(out)?;
        }
        ExportFormat::Hf => s.merged()?.save_dir(out)?,
        ExportFormat::Gguf => {
            let summary = stepwise_student::gguf_export::export_gguf(&s.merged()?, out, a.gguf_type)?;
            tracing::info!(?summary, "export: gguf written");
        }
    }
    Ok(())
}
