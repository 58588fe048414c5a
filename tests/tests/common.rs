//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// True under CI, where every optional input must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A prerequisite that `scripts/setup-data.sh` provides. Outside CI a missing
/// one skips the test with a note; under CI it fails it.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let msg = format!("{what} is missing: run scripts/setup-data.sh --full");
    assert!(!in_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// [`require`] for data from a registry package that the setup script found
/// no longer served (it writes `data/unavailable/<package>` saying so): then
/// the test skips, naming why, under CI too; any other absence is [`require`]'s.
pub fn require_from(package: &str, what: &str, present: bool) -> bool {
    if !present {
        let note = data_dir().join("unavailable").join(package);
        if let Ok(why) = std::fs::read_to_string(&note) {
            eprintln!("SKIPPED: {what} is missing: {} ({})", why.trim(), note.display());
            return false;
        }
    }
    require(what, present)
}

/// The Python of the project's virtual environment (pyarrow, duckdb, pandas).
pub fn python() -> PathBuf {
    std::env::var_os("STEPWISE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// The converted registry data (see scripts/setup-data.sh).
pub fn data_dir() -> PathBuf {
    std::env::var_os("STEPWISE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("data"))
}
