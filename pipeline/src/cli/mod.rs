//! The `stepwise` command line: argument parsing only. Commands that work on
//! a run directory resolve a [`Plan`](crate::plan::Plan) and hand it to
//! [`crate::commands`]; `data`, `shards` and `teacher` are thin tools over
//! the libraries.

pub mod data;
pub mod shards;
pub mod teacher;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use stepwise_student::data::{Task, Variant};

#[derive(Parser)]
#[command(
    name = "stepwise",
    version,
    about = "Distil a large teacher's answers and rationales into a small student, then check what it learned."
)]
pub struct Cli {
    /// Log as JSON lines (structured logs for batch jobs) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run every stage (data, teach, train, eval, report) into one run directory.
    Run(RunArgs),
    /// Write a commented example stepwise.toml.
    Init {
        /// Where to write it (default: ./stepwise.toml).
        path: Option<PathBuf>,
    },
    /// Generate, import, split and inspect examples.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Inspect, validate, export and merge rationale shards.
    #[command(subcommand)]
    Shards(shards::ShardsCommand),
    /// Run the data and teach stages of a run: the same plan as `run`, so
    /// the two share shards.
    Teach(TeachArgs),
    /// Run or probe a teacher.
    #[command(subcommand)]
    Teacher(teacher::TeacherCommand),
    /// Train the run's students (all variants, or one).
    Train(TrainArgs),
    /// Evaluate every student, the untrained one and the teacher on the test splits.
    Eval(StageArgs),
    /// Compute the checks and write report.md, report.html and metrics.json.
    Report(StageArgs),
    /// Generate with a trained student.
    Generate(GenerateArgs),
    /// Export a trained student where people deploy it: an HF directory
    /// (transformers), a GGUF file (llama.cpp, Ollama, LM Studio) or a PEFT
    /// adapter directory.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// A stepwise.toml; without one, the embedded default (built-in task, local solver teacher).
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<run.name>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TeachArgs {
    #[command(subcommand)]
    pub command: Option<TeachCommand>,
    /// A stepwise.toml (as for `run`).
    #[arg(conflicts_with = "run")]
    pub config: Option<PathBuf>,
    /// Run directory (default: runs/<run.name>).
    #[arg(long, conflicts_with = "run")]
    pub dir: Option<PathBuf>,
    /// An existing run directory: its stepwise.toml is the config.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Print what would be sent and its cost at most, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Batch mode: cancel the run's batches that may still run (keeping
    /// what they answered) and wait until each has stopped.
    #[arg(long, conflicts_with = "dry_run")]
    pub cancel: bool,
    /// Run as one array task of the plan at this root (a path, file://,
    /// s3://, gs:// or az://; written by `stepwise teach plan`): the task's
    /// slice in local scratch, then its shards uploaded and committed.
    #[arg(long, conflicts_with_all = ["run", "dir", "dry_run", "cancel"])]
    pub store: Option<String>,
    /// The task index (default: SLURM_ARRAY_TASK_ID, then JOB_COMPLETION_INDEX).
    #[arg(long, requires = "store")]
    pub task: Option<u32>,
    /// Local scratch for the task's crash-safe stage (default: STEPWISE_SCRATCH,
    /// then the temporary directory). A task resubmitted on the same machine
    /// resumes from it without asking again.
    #[arg(long, requires = "store")]
    pub scratch: Option<PathBuf>,
    /// Ask this OpenAI-compatible server instead of the config's
    /// `teacher.base_url` (a task's own local server); not part of any identity.
    #[arg(long)]
    pub base_url: Option<String>,
}

/// `stepwise teach plan|finalize`: the two steps around the array tasks.
#[derive(Subcommand)]
pub enum TeachCommand {
    /// Split the teach stage into N array tasks: run the data stage, upload
    /// the examples and write plan/teach.json create-only under the root.
    Plan {
        /// A stepwise.toml (as for `run`); the workers must get the same one.
        config: Option<PathBuf>,
        /// Local run directory for the data stage (default: runs/<run.name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The shared root: a path, file://, s3://, gs:// or az://.
        #[arg(long)]
        store: String,
        /// How many array tasks.
        #[arg(long)]
        tasks: u32,
    },
    /// Check every task's commit and write teach/_manifest.json create-only;
    /// missing tasks are named and the exit status is 3.
    Finalize {
        #[arg(long)]
        store: String,
    },
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
    /// Train only this variant (default: every variant in the config).
    #[arg(long, value_parser = parse_variant)]
    pub variant: Option<Variant>,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    Variant::parse(s).ok_or_else(|| format!("{s:?}: expected distill, label-gold or label-teacher"))
}

/// Which prompt `generate` asks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerateTask {
    Label,
    Rationale,
}

impl GenerateTask {
    pub fn task(self) -> Task {
        match self {
            GenerateTask::Label => Task::Label,
            GenerateTask::Rationale => Task::Rationale,
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A student: an HF-style directory, a PEFT adapter directory (over the
    /// base it names) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// The question; asked with the student's label or rationale prompt.
    #[arg(long)]
    pub input: Vec<String>,
    #[arg(long, value_enum, default_value = "rationale")]
    pub task: GenerateTask,
    #[arg(long, default_value_t = 160)]
    pub max_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// What `stepwise export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// An HF directory (config.json, model.safetensors, tokenizer.json);
    /// adapters are merged into the weights.
    Hf,
    /// One GGUF file with the tokenizer and chat template in its metadata
    /// (decoders only); adapters are merged.
    Gguf,
    /// A PEFT adapter directory (adapter students only).
    Peft,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A student: a run's `students/<name>/final`, any HF-style directory,
    /// a PEFT adapter directory or a .gguf file.
    pub model: PathBuf,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The directory (hf, peft) or file (gguf) to write; replaced
    /// atomically. A URL (file://, s3://, gs://, az://) uploads it there:
    /// each file written whole, the directory's files one by one.
    #[arg(long)]
    pub out: String,
    /// GGUF tensor type: f16, q8_0 or q4_k_m.
    #[arg(long = "type", default_value = "f16")]
    pub gguf_type: stepwise_student::gguf_export::GgufType,
}

/// Parses the command line and runs the command; a failure's exit status is
/// [`crate::tasks::exit_code`]'s.
pub fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(crate::tasks::exit_code(&e))
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // First, while this is the only thread. Only `run`, `teach` and `teacher`
    // may run a quantized GGUF teacher in this process; `run` decides once
    // its plan is known.
    if !matches!(cli.command, Command::Run(_) | Command::Teach(_) | Command::Teacher(_)) {
        stepwise_student::device::serial_elementwise();
    }
    crate::commands::init_logging(cli.log_json);
    // Under mpirun/srun: the world the trainer reduces over (held to the end).
    let _world = stepwise_student::dist::init()?;
    let (_, size) = stepwise_student::dist::rank_and_size();
    if size > 1 && !matches!(cli.command, Command::Train(_)) {
        anyhow::bail!(
            "launched as {size} MPI processes: only `stepwise train --run DIR` trains data-parallel; run the other stages once"
        );
    }
    match cli.command {
        Command::Run(a) => crate::commands::run(a.config.as_deref(), a.dir.as_deref()),
        Command::Init { path } => crate::commands::init(path),
        Command::Teach(a) => crate::commands::teach(&a),
        Command::Train(a) => crate::commands::train(&a.run, a.variant),
        Command::Eval(a) => crate::commands::eval(&a.run),
        Command::Report(a) => crate::commands::report(&a.run),
        Command::Generate(a) => crate::commands::generate(&a),
        Command::Export(a) => crate::commands::export(&a),
        Command::Data(c) => data::run(c),
        Command::Shards(c) => shards::run(c),
        Command::Teacher(c) => teacher::run_teacher(c),
    }
}
