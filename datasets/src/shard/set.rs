//! [`ShardSet`]: a directory of shards being written, journaled so a killed
//! writer loses nothing it acknowledged and a resumed one writes no duplicate.

use super::{JOURNAL_COMMIT, JOURNAL_FILE};
use super::{file::*, manifest::*, row::*};
use crate::error::{DataError, Result};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A directory of rationale shards being written, resumable after a crash.
pub struct ShardSet {
    dir: PathBuf,
    manifest: Manifest,
    keys: HashSet<(String, u32)>,
    pending: Vec<RationaleRow>,
    journal: File,
    rows_per_shard: usize,
    next_index: u32,
}

/// What reopening a shard directory found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovery {
    /// Rows in sealed shards.
    pub sealed_rows: usize,
    /// Journaled rows replayed into the pending shard.
    pub replayed_rows: usize,
    /// Journaled rows already in a shard (crash between seal and journal truncation).
    pub duplicates_skipped: usize,
    /// An append cut short by a kill (no commit line): never acknowledged, dropped whole.
    pub torn_tail: bool,
    /// Complete shards found on disk but missing from the manifest (crash before the manifest update).
    pub adopted_shards: usize,
    /// Temporary files of unfinished shards, removed.
    pub removed_temporaries: usize,
}

impl ShardSet {
    /// Opens (or creates) `dir`, recovering from any crash. Fails when the
    /// directory's shards were produced by a different configuration.
    pub fn open(dir: &Path, config_hash: &str, rows_per_shard: usize) -> Result<(ShardSet, Recovery)> {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let mut rec = Recovery::default();
        let mut manifest = Manifest::load(dir)?.unwrap_or_else(|| Manifest::new(config_hash));
        if manifest.config_hash != config_hash && !manifest.shards.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: these shards were produced by config {} but this run's config is {}; use another directory or remove it",
                dir.display(),
                manifest.config_hash,
                config_hash
            )));
        }
        manifest.config_hash = config_hash.to_string();
        let mut keys = HashSet::new();
        let sealed_keys = |path: &Path, keys: &mut HashSet<(String, u32)>| -> Result<usize> {
            let ks = read_shard_keys(path)?;
            let n = ks.len();
            keys.extend(ks);
            Ok(n)
        };
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            if !path.exists() {
                return Err(DataError::format(&path, "listed in _manifest.json but missing"));
            }
            let n = sealed_keys(&path, &mut keys)?;
            if n as u64 != s.rows {
                return Err(DataError::format(
                    &path,
                    format!("holds {n} rows but _manifest.json says {}", s.rows),
                ));
            }
            rec.sealed_rows += n;
        }
        let listed: HashSet<String> = manifest.shards.iter().map(|s| s.file.clone()).collect();
        let mut next_index = 0;
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            let path = dir.join(name);
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
                rec.removed_temporaries += 1;
            } else if let Some(i) = part_index(name) {
                next_index = next_index.max(i + 1);
                if !listed.contains(name) {
                    // Renamed into place but the manifest update did not happen: complete, so adopt it.
                    let n = sealed_keys(&path, &mut keys)?;
                    manifest.shards.push(shard_info(&path, n)?);
                    rec.sealed_rows += n;
                    rec.adopted_shards += 1;
                }
            }
        }
        manifest.total_rows = manifest.shards.iter().map(|s| s.rows).sum();
        if rec.adopted_shards > 0 {
            manifest.store(dir)?;
        }
        let journal_path = dir.join(JOURNAL_FILE);
        let mut pending = Vec::new();
        if journal_path.exists() {
            let raw = fs::read(&journal_path).map_err(|e| DataError::io(&journal_path, e))?;
            let text = String::from_utf8_lossy(&raw);
            let mut lines: Vec<&str> = text.split('\n').collect();
            // What follows the last newline is a line cut short by a kill mid-append.
            let mut torn = !lines.pop().unwrap_or("").is_empty();
            let mut group: Vec<RationaleRow> = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                if *line == JOURNAL_COMMIT {
                    for row in group.drain(..) {
                        if keys.insert(row.key()) {
                            pending.push(row);
                            rec.replayed_rows += 1;
                        } else {
                            rec.duplicates_skipped += 1;
                        }
                    }
                    continue;
                }
                let row: RationaleRow = serde_json::from_str(line)
                    .map_err(|e| DataError::record(&journal_path, i + 1, format!("corrupt journal line: {e}")))?;
                group.push(row);
            }
            // Complete rows of an append whose commit line never made it.
            torn |= !group.is_empty();
            rec.torn_tail = torn;
        }
        // Rewrite the journal with exactly the pending rows, atomically.
        let body = if pending.is_empty() {
            Vec::new()
        } else {
            journal_group(&pending)?
        };
        crate::atomic::write_bytes(&journal_path, &body)?;
        let journal = OpenOptions::new()
            .append(true)
            .open(&journal_path)
            .map_err(|e| DataError::io(&journal_path, e))?;
        if manifest.shards.is_empty() {
            manifest.store(dir)?;
        }
        let set = ShardSet {
            dir: dir.to_path_buf(),
            manifest,
            keys,
            pending,
            journal,
            rows_per_shard: rows_per_shard.max(1),
            next_index,
        };
        Ok((set, rec))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when this sample of this example is already written (sealed or journaled).
    pub fn contains(&self, example_id: &str, sample_index: u32) -> bool {
        self.keys.contains(&(example_id.to_string(), sample_index))
    }

    /// Ids of every example with at least one row written.
    pub fn example_ids(&self) -> HashSet<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn rows_written(&self) -> usize {
        self.keys.len()
    }

    /// Journals `rows` durably (one fsync for the call), skipping any key
    /// already written, and seals a shard when enough rows are pending.
    /// Returns the number of rows accepted.
    pub fn append(&mut self, rows: Vec<RationaleRow>) -> Result<usize> {
        let fresh: Vec<RationaleRow> = rows.into_iter().filter(|r| self.keys.insert(r.key())).collect();
        let n = fresh.len();
        if n == 0 {
            return Ok(0);
        }
        let buf = journal_group(&fresh)?;
        let jp = self.dir.join(JOURNAL_FILE);
        self.journal
            .write_all(&buf)
            .and_then(|_| self.journal.sync_data())
            .map_err(|e| DataError::io(&jp, e))?;
        self.pending.extend(fresh);
        if self.pending.len() >= self.rows_per_shard {
            self.seal()?;
        }
        Ok(n)
    }

    /// Writes the pending rows as a new shard, records it in the manifest and clears the journal.
    pub fn seal(&mut self) -> Result<Option<ShardInfo>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let name = format!("part-{:05}.parquet", self.next_index);
        let info = write_shard(&self.dir.join(&name), &self.pending)?;
        self.next_index += 1;
        self.manifest.shards.push(info.clone());
        self.manifest.total_rows += info.rows;
        self.manifest.store(&self.dir)?;
        let jp = self.dir.join(JOURNAL_FILE);
        self.journal
            .set_len(0)
            .and_then(|_| self.journal.sync_all())
            .map_err(|e| DataError::io(&jp, e))?;
        self.pending.clear();
        tracing::debug!(shard = %name, rows = info.rows, "sealed shard");
        Ok(Some(info))
    }

    /// Seals what is pending and returns the final manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        self.seal()?;
        Ok(self.manifest.clone())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// Rows as journal lines, closed by [`JOURNAL_COMMIT`].
pub(crate) fn journal_group(rows: &[RationaleRow]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r).map_err(|e| DataError::Invalid(e.to_string()))?;
        buf.push(b'\n');
    }
    buf.extend_from_slice(JOURNAL_COMMIT.as_bytes());
    buf.push(b'\n');
    Ok(buf)
}
