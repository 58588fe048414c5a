//! `stepwise shards ...`: what dataset builders do with rationale shards.

use anyhow::{Result, bail};
use clap::Subcommand;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use stepwise_datasets::shard::{Manifest, ShardSet, read_dir_rows, validate_dir};

#[derive(Subcommand)]
pub enum ShardsCommand {
    /// Rows, examples, agreement with gold, tokens, per teacher model.
    Stats { dir: PathBuf },
    /// Print the first rows.
    Head {
        dir: PathBuf,
        #[arg(short, default_value_t = 3)]
        n: usize,
    },
    /// Check checksums, row counts, schema and duplicates; exits non-zero on any problem.
    Validate { dir: PathBuf },
    /// Write every row as JSON lines.
    Export {
        dir: PathBuf,
        /// Output file ("-" for standard output).
        #[arg(long)]
        jsonl: PathBuf,
    },
    /// Merge shard directories into a new one, keeping one row per (example_id, sample_index).
    Merge {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        rows_per_shard: usize,
    },
    /// Copy a finalized teach root's shards (a path, file://, s3://, gs://,
    /// az://) into a local shard directory, checking every sha256.
    Pull {
        store: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove the attempt folders of committed array tasks that their commit
    /// does not name (left by duplicate or retried workers).
    Gc {
        store: String,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(cmd: ShardsCommand) -> Result<()> {
    match cmd {
        ShardsCommand::Stats { dir } => {
            let m = Manifest::load(&dir)?.ok_or_else(|| anyhow::anyhow!("{}: no _manifest.json", dir.display()))?;
            let rows = read_dir_rows(&dir)?;
            let examples: HashSet<&str> = rows.iter().map(|r| r.example_id.as_str()).collect();
            let judged: Vec<bool> = rows.iter().filter_map(|r| r.agrees_with_gold).collect();
            let agree = judged.iter().filter(|a| **a).count();
            let no_answer = rows.iter().filter(|r| r.teacher_label.is_none()).count();
            let (pt, ct): (u64, u64) = rows.iter().fold((0, 0), |(p, c), r| {
                (p + r.prompt_tokens as u64, c + r.completion_tokens as u64)
            });
            let mut models: BTreeMap<&str, usize> = BTreeMap::new();
            rows.iter()
                .for_each(|r| *models.entry(r.teacher_model.as_str()).or_default() += 1);
            println!("shards            {}", m.shards.len());
            println!("rows              {}", rows.len());
            println!("examples          {}", examples.len());
            if !judged.is_empty() {
                println!(
                    "agree with gold   {agree}/{} ({:.1}%)",
                    judged.len(),
                    100.0 * agree as f64 / judged.len() as f64
                );
            }
            println!("no answer stated  {no_answer}");
            println!("rationalized      {}", rows.iter().filter(|r| r.rationalized).count());
            println!("prompt tokens     {pt}");
            println!("completion tokens {ct}");
            for (model, n) in models {
                println!("model             {model}: {n} rows");
            }
            println!("config hash       {}", m.config_hash);
            Ok(())
        }
        ShardsCommand::Head { dir, n } => {
            for r in read_dir_rows(&dir)?.into_iter().take(n) {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            Ok(())
        }
        ShardsCommand::Validate { dir } => {
            let problems = validate_dir(&dir)?;
            if problems.is_empty() {
                let m = Manifest::load(&dir)?.unwrap_or_else(|| unreachable!("validate_dir checked the manifest"));
                println!("ok: {} shards, {} rows", m.shards.len(), m.total_rows);
                return Ok(());
            }
            for p in &problems {
                eprintln!("problem: {}", p.0);
            }
            bail!("{}: {} problem(s)", dir.display(), problems.len())
        }
        ShardsCommand::Export { dir, jsonl } => {
            let rows = read_dir_rows(&dir)?;
            let mut out: Box<dyn Write> = if jsonl.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::io::BufWriter::new(std::fs::File::create(&jsonl)?))
            };
            for r in &rows {
                serde_json::to_writer(&mut out, r)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            tracing::info!(rows = rows.len(), "exported");
            Ok(())
        }
        ShardsCommand::Pull { store, out } => {
            let store = stepwise_store::Store::open(&store)?;
            let m = crate::tasks::pull(&store, &out)?;
            println!(
                "pulled {} rows in {} shard(s) from {store} into {}",
                m.total_rows,
                m.shards.len(),
                out.display()
            );
            Ok(())
        }
        ShardsCommand::Gc { store, dry_run } => {
            let store = stepwise_store::Store::open(&store)?;
            let g = crate::tasks::gc(&store, dry_run)?;
            for a in &g.removed_attempts {
                println!("{} {a}", if dry_run { "would remove" } else { "removed" });
            }
            println!(
                "shards gc: {} unreferenced attempt(s) ({} object(s)) {}; {} kept",
                g.removed_attempts.len(),
                g.removed_objects,
                if dry_run { "found" } else { "removed" },
                g.kept_attempts
            );
            Ok(())
        }
        ShardsCommand::Merge {
            out,
            dirs,
            rows_per_shard,
        } => {
            let mut hashes = Vec::new();
            for d in &dirs {
                let m = Manifest::load(d)?.ok_or_else(|| anyhow::anyhow!("{}: no _manifest.json", d.display()))?;
                hashes.push(m.config_hash);
            }
            hashes.sort();
            hashes.dedup();
            let merged_hash = format!("merge:{}", hashes.join("+"));
            let (mut set, _) = ShardSet::open(&out, &merged_hash, rows_per_shard)?;
            let mut offered = 0;
            let mut taken = 0;
            for d in &dirs {
                let rows = read_dir_rows(d)?;
                offered += rows.len();
                taken += set.append(rows)?;
            }
            let m = set.finish()?;
            println!(
                "merged {offered} rows from {} directories into {} ({} kept, {} duplicates dropped, {} shards)",
                dirs.len(),
                out.display(),
                taken,
                offered - taken,
                m.shards.len()
            );
            Ok(())
        }
    }
}
