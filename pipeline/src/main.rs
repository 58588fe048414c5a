//! The `stepwise` command line.

mod checks;
mod config;
mod data_cmd;
mod gguf_teacher;
mod report;
mod run_cmd;
mod shards_cmd;
mod stages;
mod teach_cmd;

use clap::{Parser, Subcommand};

// See `stepwise_student::alloc`: page faults otherwise cost more than the arithmetic.
#[global_allocator]
static GLOBAL: stepwise_student::alloc::MiMalloc = stepwise_student::alloc::MiMalloc;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "stepwise",
    version,
    about = "Distil a large teacher's answers and rationales into a small student, then check what it learned."
)]
struct Cli {
    /// Log as JSON lines (structured logs for batch jobs) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every stage (data, teach, train, eval, report) into one run directory.
    Run(run_cmd::RunArgs),
    /// Write a commented example stepwise.toml.
    Init {
        /// Where to write it (default: ./stepwise.toml).
        path: Option<std::path::PathBuf>,
    },
    /// Generate, import, split and inspect examples.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Inspect, validate, export and merge rationale shards.
    #[command(subcommand)]
    Shards(shards_cmd::ShardsCommand),
    /// Ask the teacher for answers and rationales into the run directory's shards.
    Teach(teach_cmd::TeachArgs),
    /// Run or probe a teacher.
    #[command(subcommand)]
    Teacher(teach_cmd::TeacherCommand),
    /// Train the run's students (all variants, or one).
    Train(run_cmd::TrainArgs),
    /// Evaluate every student, the untrained one and the teacher on the test splits.
    Eval(run_cmd::StageArgs),
    /// Compute the checks and write report.md, report.html and metrics.json.
    Report(run_cmd::StageArgs),
    /// Generate with a trained student.
    Generate(run_cmd::GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    stepwise_student::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("STEPWISE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    match cli.command {
        Command::Run(a) => run_cmd::run(a),
        Command::Init { path } => run_cmd::init(path),
        Command::Train(a) => run_cmd::train(a),
        Command::Eval(a) => run_cmd::eval(a),
        Command::Report(a) => run_cmd::report(a),
        Command::Generate(a) => run_cmd::generate(a),
        Command::Data(c) => data_cmd::run(c),
        Command::Shards(c) => shards_cmd::run(c),
        Command::Teach(a) => teach_cmd::run_teach(a),
        Command::Teacher(c) => teach_cmd::run_teacher(c),
    }
}
