//! A writer killed between any two steps of an atomic write leaves the
//! previous complete version readable (the test re-runs its own binary as
//! the writer, aborting it at each named step).

use std::fs;
use std::path::Path;
use std::process::Command;
use stepwise_datasets::DataError;
use stepwise_datasets::atomic::{CRASH_AT_ENV, recover_dir, replace_dir, write_bytes};

const CHILD_ENV: &str = "ATOMIC_KILL_CHILD_DIR";

fn write_version(root: &Path, v: &str) {
    write_bytes(&root.join("predictions.parquet"), v.repeat(1000).as_bytes()).unwrap();
    replace_dir::<DataError>(&root.join("final"), |tmp| {
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            fs::write(tmp.join(f), v.repeat(1000)).map_err(|e| DataError::io(tmp, e))?;
        }
        Ok(())
    })
    .unwrap();
}

/// The writer the parent kills: does nothing unless the parent started it.
#[test]
fn child_writer() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        write_version(Path::new(&dir), "2");
    }
}

#[test]
fn a_kill_between_any_two_steps_leaves_a_complete_version() {
    let points = [
        "file:synced",
        "file:renamed",
        "dir:filled",
        "dir:exchanged",
        "dir:aside",
    ];
    let mut swapped_by = Vec::new();
    for point in points {
        let t = tempfile::tempdir().unwrap();
        write_version(t.path(), "1");
        let st = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--test-threads", "1"])
            .env(CHILD_ENV, t.path())
            .env(CRASH_AT_ENV, point)
            .output()
            .unwrap();
        let reached = !st.status.success();
        if reached && (point == "dir:exchanged" || point == "dir:aside") {
            swapped_by.push(point);
        }
        recover_dir(&t.path().join("final")).unwrap();
        let file = fs::read_to_string(t.path().join("predictions.parquet")).unwrap();
        assert!(
            file == "1".repeat(1000) || file == "2".repeat(1000),
            "{point}: torn file"
        );
        let versions: Vec<String> = ["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .map(|f| fs::read_to_string(t.path().join("final").join(f)).unwrap())
            .collect();
        assert!(
            versions.iter().all(|v| v == &versions[0])
                && (versions[0] == "1".repeat(1000) || versions[0] == "2".repeat(1000)),
            "{point}: final/ mixes versions or is torn"
        );
        if point.starts_with("file") {
            assert!(reached, "{point}: the writer was not stopped there");
        }
        if point == "file:synced" {
            assert_eq!(file, "1".repeat(1000), "killed before the rename: the old file");
        }
        if point == "dir:filled" {
            assert_eq!(
                versions[0],
                "1".repeat(1000),
                "killed before the swap: the old directory"
            );
        }
        if point == "dir:exchanged" && reached {
            assert_eq!(
                versions[0],
                "2".repeat(1000),
                "killed after the swap: the new directory"
            );
        }
    }
    // One of the two ways to swap a directory in ran (the atomic exchange
    // where the filesystem has it).
    assert_eq!(swapped_by.len(), 1, "{swapped_by:?}");
    if cfg!(target_os = "linux") {
        eprintln!("directory swap on this filesystem: {}", swapped_by[0]);
    }
}
