//! `_manifest.json`: what a shard directory holds, and the identity of what produced it.

use super::file::*;
use super::{MANIFEST_FILE, SCHEMA_VERSION};
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

/// `_manifest.json`: what a shard directory holds and what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    /// Hash of the configuration that produced the rows.
    pub config_hash: String,
    pub shards: Vec<ShardInfo>,
    pub total_rows: u64,
}

impl Manifest {
    pub(crate) fn new(config_hash: &str) -> Self {
        Manifest {
            schema_version: SCHEMA_VERSION,
            config_hash: config_hash.to_string(),
            shards: vec![],
            total_rows: 0,
        }
    }

    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| DataError::format(&path, format!("invalid manifest: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DataError::io(&path, e)),
        }
    }

    /// Writes the manifest atomically (temporary file, fsync, rename).
    pub fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::atomic::write_bytes(&path, text.as_bytes())
    }
}
