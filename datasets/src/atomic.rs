//! The one way stepwise writes a file or a directory that someone may read
//! after a crash: never in place.
//!
//! - [`write_file`]: a temporary file in the same directory, flushed and
//!   fsynced, renamed over the target, then the directory fsynced (so the
//!   rename itself survives a power cut). A reader sees the old file or the
//!   new one, never half of one.
//! - [`replace_dir`]: a directory (a checkpoint, a model's `final/`) filled
//!   under a temporary name, every file fsynced, then swapped in. On Linux
//!   the swap is one `renameat2(RENAME_EXCHANGE)`, so a kill at any moment
//!   leaves either the previous complete version or the new one at the path.
//!   Elsewhere (or on a filesystem without it) the old directory is renamed
//!   aside first; [`recover_dir`] puts it back if a kill came in between.
//!
//! [`crash_point`] lets tests kill a writer between any two of these steps.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The environment variable naming a [`crash_point`] to abort at (tests only).
pub const CRASH_AT_ENV: &str = "STEPWISE_CRASH_AT";

/// Aborts the process (no destructor, no flush: as a SIGKILL would) when
/// `STEPWISE_CRASH_AT` names this step (`dir:filled`) or this step of this
/// file or directory (`dir:filled@final`). Lets tests stop a writer between
/// two steps of an atomic write.
pub fn crash_point(step: &str, path: &Path) {
    let Some(v) = std::env::var_os(CRASH_AT_ENV) else {
        return;
    };
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    if v == step || v.to_string_lossy() == format!("{step}@{name}") {
        std::process::abort();
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn name_of(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DataError::Invalid(format!("{}: not a file path", path.display())))
}

/// Fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataError::io(dir, e))?;
    Ok(())
}

/// Writes `path` atomically with `fill`, which gets a buffered writer.
pub fn write_file(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    write_file_with(path, |file| {
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically with a writer that hands the file back when done
/// (a Parquet writer's `into_inner`).
pub fn write_file_with(path: &Path, fill: impl FnOnce(File) -> std::io::Result<File>) -> Result<()> {
    let dir = parent_of(path);
    let tmp = dir.join(format!(".{}.tmp", name_of(path)?));
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let file = fill(file).map_err(|e| DataError::io(&tmp, e))?;
        file.sync_all().map_err(|e| DataError::io(&tmp, e))?;
        drop(file);
        crash_point("file:synced", path);
        fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
        crash_point("file:renamed", path);
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn aside_of(dir: &Path) -> Result<PathBuf> {
    Ok(parent_of(dir).join(format!(".{}.old", name_of(dir)?)))
}

fn tmp_of(dir: &Path) -> Result<PathBuf> {
    Ok(parent_of(dir).join(format!(".{}.tmp", name_of(dir)?)))
}

/// Puts back a directory that a killed [`replace_dir`] (the rename-aside
/// fallback) had moved aside, and removes a half-filled temporary one.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let aside = aside_of(dir)?;
    if aside.exists() {
        if dir.exists() {
            fs::remove_dir_all(&aside).map_err(|e| DataError::io(&aside, e))?;
        } else {
            fs::rename(&aside, dir).map_err(|e| DataError::io(dir, e))?;
        }
    }
    let tmp = tmp_of(dir)?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| DataError::io(&p, e))?;
        }
    }
    sync_dir(dir)
}

/// Swaps two paths atomically; `Ok(false)` when the platform or filesystem
/// cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: two valid NUL-terminated paths; renameat2 reads them only.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Replaces the directory `dir` with one that `fill` writes into a fresh
/// temporary directory. The previous version stays readable at `dir` until
/// the new one is complete and durable.
pub fn replace_dir<E: From<DataError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    recover_dir(dir)?;
    let parent = parent_of(dir).to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let tmp = tmp_of(dir)?;
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    fill(&tmp)?;
    sync_tree(&tmp)?;
    crash_point("dir:filled", dir);
    if !dir.exists() {
        fs::rename(&tmp, dir).map_err(|e| DataError::io(dir, e))?;
        crash_point("dir:renamed", dir);
        return Ok(sync_dir(&parent)?);
    }
    if exchange(&tmp, dir).map_err(|e| DataError::io(dir, e))? {
        crash_point("dir:exchanged", dir);
        sync_dir(&parent)?;
        // `tmp` now holds the previous version.
        fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        return Ok(());
    }
    let aside = aside_of(dir)?;
    fs::rename(dir, &aside).map_err(|e| DataError::io(&aside, e))?;
    crash_point("dir:aside", dir);
    fs::rename(&tmp, dir).map_err(|e| DataError::io(dir, e))?;
    sync_dir(&parent)?;
    fs::remove_dir_all(&aside).map_err(|e| DataError::io(&aside, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_directory_swaps_contents_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("final");
        replace_dir::<DataError>(&d, |tmp| {
            fs::write(tmp.join("a"), "1").map_err(|e| DataError::io(tmp, e))
        })
        .unwrap();
        replace_dir::<DataError>(&d, |tmp| {
            fs::write(tmp.join("b"), "2").map_err(|e| DataError::io(tmp, e))
        })
        .unwrap();
        assert!(!d.join("a").exists(), "the old version's files are gone");
        assert_eq!(fs::read_to_string(d.join("b")).unwrap(), "2");
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("final")]);
    }

    #[test]
    fn a_failed_fill_keeps_the_previous_directory() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("final");
        replace_dir::<DataError>(&d, |tmp| {
            fs::write(tmp.join("a"), "1").map_err(|e| DataError::io(tmp, e))
        })
        .unwrap();
        let r = replace_dir::<DataError>(&d, |_| Err(DataError::Invalid("disk full".into())));
        assert!(r.is_err());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
    }

    #[test]
    fn recovery_puts_back_a_directory_moved_aside() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("final");
        let aside = aside_of(&d).unwrap();
        fs::create_dir_all(&aside).unwrap();
        fs::write(aside.join("a"), "1").unwrap();
        recover_dir(&d).unwrap();
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
        assert!(!aside.exists());
    }

    #[test]
    fn a_written_file_replaces_the_old_one_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.json");
        write_bytes(&p, b"old").unwrap();
        write_bytes(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
