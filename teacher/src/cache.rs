//! Responses stored by the hash of the canonical request: a re-run never pays twice.

use crate::error::TeacherError;
use crate::protocol::ChatResponse;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedResponse {
    pub response: ChatResponse,
    pub latency_ms: u32,
}

/// A directory of `<aa>/<hash>.json` files, each written atomically (a
/// temporary file renamed into place). Entries are not fsynced: the shards'
/// journal is the durable record, and an entry torn by a power cut reads as a
/// miss (the request is sent again).
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

impl ResponseCache {
    pub fn open(dir: &Path) -> Result<Self, TeacherError> {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::Io(dir.to_path_buf(), e))?;
        Ok(ResponseCache { dir: dir.to_path_buf() })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(format!("{hash}.json"))
    }

    /// The cached response for the request with this [`crate::protocol::ChatRequest::hash`], if any. An unreadable entry (a torn write from
    /// before atomic renames, or disk trouble) counts as a miss and is logged.
    pub fn get(&self, hash: &str) -> Option<CachedResponse> {
        let p = self.path(hash);
        let text = std::fs::read(&p).ok()?;
        match serde_json::from_slice(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "ignoring unreadable cache entry");
                None
            }
        }
    }

    pub fn put(&self, hash: &str, value: &CachedResponse) -> Result<(), TeacherError> {
        let p = self.path(hash);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec(value).expect("response serialises");
        // The subdirectory is made on first use only (a mkdir per entry
        // costs as much as the write).
        let mut f = match std::fs::File::create(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = p.parent().expect("cache entries live in a subdirectory");
                std::fs::create_dir_all(dir).map_err(|e| TeacherError::Io(dir.to_path_buf(), e))?;
                std::fs::File::create(&tmp)
            }
            r => r,
        }
        .map_err(|e| TeacherError::Io(tmp.clone(), e))?;
        f.write_all(&body).map_err(|e| TeacherError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| TeacherError::Io(p.clone(), e))
    }
}
