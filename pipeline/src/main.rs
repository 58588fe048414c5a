//! The `stepwise` command line.

mod data_cmd;
mod shards_cmd;
mod teach_cmd;

use clap::{Parser, Subcommand};
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
}

fn main() -> anyhow::Result<()> {
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
        Command::Data(c) => data_cmd::run(c),
        Command::Shards(c) => shards_cmd::run(c),
        Command::Teach(a) => teach_cmd::run_teach(a),
        Command::Teacher(c) => teach_cmd::run_teacher(c),
    }
}
