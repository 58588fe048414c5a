//! Inputs that are files are identified by their content, not their path: a
//! file replaced at the same path is a different input. Hashing a 1 GB
//! model on every run would cost seconds, so [`FileDigests`] remembers each
//! file's sha256 with the size and modification time it had, and re-reads a
//! file only when either changed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{DataError, Result};

/// The sha256 of a file's content, as hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_and_len(path)?.0)
}

/// The sha256 of a file's content, as hex, and the bytes it read.
pub fn sha256_and_len(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(h.finalize()), len))
}

/// A short hex hash of any serialisable value: the identities of stages.
pub fn identity_of<T: Serialize + ?Sized>(v: &T) -> String {
    hex::encode(&Sha256::digest(serde_json::to_vec(v).expect("identity serialises"))[..8])
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// File digests remembered by size and mtime, stored as JSON at `path`.
#[derive(Debug)]
pub struct FileDigests {
    path: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    changed: bool,
    /// Files actually read (not answered from the store): for tests and logs.
    pub files_read: usize,
}

impl FileDigests {
    /// Digests kept only in memory.
    pub fn in_memory() -> Self {
        FileDigests {
            path: None,
            entries: BTreeMap::new(),
            changed: false,
            files_read: 0,
        }
    }

    /// The store at `path` (missing or unreadable: starts empty; it is a cache).
    pub fn open(path: &Path) -> Self {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileDigests {
            path: Some(path.to_path_buf()),
            entries,
            changed: false,
            files_read: 0,
        }
    }

    /// The sha256 of `file`; an error names the file when it cannot be read.
    pub fn sha256(&mut self, file: &Path) -> Result<String> {
        let meta = std::fs::metadata(file).map_err(|e| DataError::io(file, e))?;
        if !meta.is_file() {
            return Err(DataError::format(file, "not a regular file"));
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        if let Some(e) = self.entries.get(&key)
            && e.size == meta.len()
            && e.mtime_ns == mtime_ns
        {
            return Ok(e.sha256.clone());
        }
        let sha256 = sha256_file(file)?;
        self.files_read += 1;
        self.entries.insert(
            key,
            Entry {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    /// Writes the store back if anything was added.
    pub fn save(&mut self) -> Result<()> {
        if let (Some(p), true) = (&self.path, self.changed) {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
            }
            let body = serde_json::to_vec_pretty(&self.entries).expect("digests serialise");
            crate::atomic::write_bytes(p, &body)?;
            self.changed = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_gets_a_new_digest_and_an_unchanged_one_is_not_reread() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("data.jsonl");
        std::fs::write(&f, "a").unwrap();
        let store = t.path().join("digests.json");
        let mut d = FileDigests::open(&store);
        let first = d.sha256(&f).unwrap();
        d.save().unwrap();
        let mut d = FileDigests::open(&store);
        assert_eq!(d.sha256(&f).unwrap(), first);
        assert_eq!(d.files_read, 0, "answered from the store");
        std::fs::write(&f, "bb").unwrap();
        assert_ne!(d.sha256(&f).unwrap(), first);
        assert_eq!(d.files_read, 1);
    }

    #[test]
    fn a_missing_file_is_named() {
        let mut d = FileDigests::in_memory();
        let e = d.sha256(Path::new("/nonexistent/x.jsonl")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.jsonl"), "{e}");
    }
}
