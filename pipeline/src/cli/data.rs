//! `stepwise data ...`: examples in and out.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use stepwise_datasets::adapters::{ColumnMapping, Format, ImportOptions, import};
use stepwise_datasets::arith::{ArithSpec, generate};
use stepwise_datasets::examples_file::{read_all_splits, read_examples, write_splits};
use stepwise_datasets::split::{SplitSpec, assign_splits};
use stepwise_datasets::{Example, Split};

#[derive(Args, Clone)]
pub struct SplitArgs {
    /// Seed of the train/val/test assignment.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Fraction of examples for validation (model selection).
    #[arg(long, default_value_t = 0.1)]
    pub val: f64,
    /// Fraction of examples for the held-out test split.
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
}

impl SplitArgs {
    fn spec(&self) -> SplitSpec {
        SplitSpec {
            seed: self.split_seed,
            val_fraction: self.val,
            test_fraction: self.test,
        }
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Generate the built-in arithmetic word problems and split them.
    Generate {
        /// Output directory for {train,val,test,test_ood}.parquet.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Problems from the in-distribution template families.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Problems from the held-out family (out-of-distribution test only).
        #[arg(long, default_value_t = 200)]
        ood: usize,
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Import files in a public format, or any file through a column mapping, and split them.
    Import {
        /// Input files (.jsonl, .json, .csv, .tsv, .parquet).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// gsm8k, svamp, cqa, anli, esnli, strategyqa, bigbench, mmlu.
        #[arg(long, conflicts_with = "map")]
        format: Option<String>,
        /// Column mapping, e.g. "input=question,label=answer,kind=number[,choices=opts,rationale=why,split=part,task=name]".
        #[arg(long)]
        map: Option<String>,
        /// Data set name used in example ids (defaults to the task name).
        #[arg(long)]
        source: Option<String>,
        /// Skip records that cannot be converted (each is logged) instead of stopping at the first.
        #[arg(long)]
        skip_invalid: bool,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Re-split an examples directory (train/val/test; test_ood stays as it is).
    Split {
        dir: PathBuf,
        #[command(flatten)]
        split: SplitArgs,
    },
    /// Counts per split, task, source and label kind.
    Stats {
        /// An examples directory or one examples .parquet file.
        path: PathBuf,
    },
}

fn load_dir(dir: &std::path::Path) -> Result<Vec<Example>> {
    let all = read_all_splits(dir)?;
    if all.is_empty() {
        bail!(
            "{}: no examples (expected train.parquet, val.parquet, test.parquet or test_ood.parquet)",
            dir.display()
        );
    }
    Ok(all)
}

fn save(out: &std::path::Path, examples: &[Example]) -> Result<()> {
    let counts = write_splits(out, examples)?;
    for (s, n) in counts {
        println!("{:>9} {n}", s.as_str());
    }
    println!("wrote {}", out.display());
    Ok(())
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Generate {
            out,
            seed,
            count,
            ood,
            split,
        } => {
            let t = std::time::Instant::now();
            let mut ex = generate(&ArithSpec {
                seed,
                in_distribution: count,
                out_of_distribution: ood,
                ..Default::default()
            });
            assign_splits(&mut ex, &split.spec()).map_err(anyhow::Error::msg)?;
            tracing::info!(
                examples = ex.len(),
                elapsed_ms = t.elapsed().as_millis() as u64,
                "generated arithmetic problems"
            );
            save(&out, &ex)
        }
        DataCommand::Import {
            files,
            format,
            map,
            source,
            skip_invalid,
            out,
            split,
        } => {
            let format = match (format, map) {
                (Some(f), None) => f.parse::<Format>().map_err(anyhow::Error::msg)?,
                (None, Some(m)) => Format::Mapped(
                    m.parse::<ColumnMapping>()
                        .map_err(anyhow::Error::msg)
                        .context("--map")?,
                ),
                _ => bail!("give either --format NAME or --map MAPPING"),
            };
            let mut all: Vec<Example> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut dups = 0;
            for f in &files {
                let got = import(
                    f,
                    &format,
                    &ImportOptions {
                        source: source.as_deref(),
                        skip_invalid,
                    },
                )?;
                for e in &got.skipped {
                    tracing::warn!(error = %e, "skipped record");
                }
                tracing::info!(file = %f.display(), examples = got.examples.len(), duplicates = got.duplicates_dropped, "imported");
                dups += got.duplicates_dropped;
                for e in got.examples {
                    if seen.insert(e.id.clone()) {
                        all.push(e);
                    } else {
                        dups += 1;
                    }
                }
            }
            if dups > 0 {
                tracing::warn!(
                    duplicates = dups,
                    "dropped duplicate examples (same source and content)"
                );
            }
            assign_splits(&mut all, &split.spec()).map_err(anyhow::Error::msg)?;
            save(&out, &all)
        }
        DataCommand::Split { dir, split } => {
            let mut all = load_dir(&dir)?;
            for e in &mut all {
                if e.split != Some(Split::TestOod) {
                    e.split = None;
                }
            }
            assign_splits(&mut all, &split.spec()).map_err(anyhow::Error::msg)?;
            save(&dir, &all)
        }
        DataCommand::Stats { path } => {
            let ex = if path.is_dir() {
                load_dir(&path)?
            } else {
                read_examples(&path)?
            };
            let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
            for e in &ex {
                *by.entry(("split".into(), e.split.map_or("-".into(), |s| s.to_string())))
                    .or_default() += 1;
                *by.entry(("task".into(), e.task.clone())).or_default() += 1;
                *by.entry(("source".into(), e.source.clone())).or_default() += 1;
                *by.entry(("label_kind".into(), e.label_kind.as_str().into()))
                    .or_default() += 1;
                *by.entry((
                    "with_reference_rationale".into(),
                    e.reference_rationale.is_some().to_string(),
                ))
                .or_default() += 1;
            }
            println!("{} examples in {}", ex.len(), path.display());
            for ((k, v), n) in by {
                println!("{k:>24}  {v:<28} {n}");
            }
            Ok(())
        }
    }
}
