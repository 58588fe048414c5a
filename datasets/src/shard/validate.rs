//! Reading a whole shard directory, and checking it.

use super::MANIFEST_FILE;
use super::{file::*, manifest::*, row::*};
use crate::error::{DataError, Result};
use std::collections::HashSet;
use std::fs;
use std::path::Path;

/// Every row of every shard listed in `dir`'s manifest, in shard order.
pub fn read_dir_rows(dir: &Path) -> Result<Vec<RationaleRow>> {
    let m = Manifest::load(dir)?
        .ok_or_else(|| DataError::format(dir.join(MANIFEST_FILE), "missing: not a shard directory"))?;
    let mut rows = Vec::with_capacity(m.total_rows as usize);
    for s in &m.shards {
        rows.extend(read_shard(&dir.join(&s.file))?);
    }
    Ok(rows)
}

/// One problem `validate` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem(pub String);

/// Checks a shard directory: every listed shard present with the listed
/// bytes, sha256 and rows, readable in the shard schema, no key twice, no
/// unlisted part file. Returns the problems found (empty when valid).
pub fn validate_dir(dir: &Path) -> Result<Vec<Problem>> {
    let m = Manifest::load(dir)?
        .ok_or_else(|| DataError::format(dir.join(MANIFEST_FILE), "missing: not a shard directory"))?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut total = 0;
    for s in &m.shards {
        let path = dir.join(&s.file);
        match crate::digest::sha256_and_len(&path) {
            Err(e) => {
                problems.push(Problem(e.to_string()));
                continue;
            }
            Ok((sha, bytes)) => {
                if bytes != s.bytes {
                    problems.push(Problem(format!(
                        "{}: {} bytes, manifest says {}",
                        path.display(),
                        bytes,
                        s.bytes
                    )));
                }
                if sha != s.sha256 {
                    problems.push(Problem(format!(
                        "{}: sha256 {} differs from the manifest's {}",
                        path.display(),
                        sha,
                        s.sha256
                    )));
                }
            }
        }
        match read_shard(&path) {
            Err(e) => problems.push(Problem(e.to_string())),
            Ok(rows) => {
                if rows.len() as u64 != s.rows {
                    problems.push(Problem(format!(
                        "{}: {} rows, manifest says {}",
                        path.display(),
                        rows.len(),
                        s.rows
                    )));
                }
                total += rows.len() as u64;
                for r in rows {
                    if !seen.insert(r.key()) {
                        problems.push(Problem(format!(
                            "{}: duplicate row for example {} sample {}",
                            path.display(),
                            r.example_id,
                            r.sample_index
                        )));
                    }
                }
            }
        }
    }
    if total != m.total_rows {
        problems.push(Problem(format!(
            "manifest total_rows {} but the shards hold {}",
            m.total_rows, total
        )));
    }
    let listed: HashSet<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
    for e in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let name = e
            .map_err(|e| DataError::io(dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if part_index(&name).is_some() && !listed.contains(name.as_str()) {
            problems.push(Problem(format!(
                "{}: not listed in _manifest.json",
                dir.join(&name).display()
            )));
        }
    }
    Ok(problems)
}
