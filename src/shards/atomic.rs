//! Atomic file writes: a temporary name in the same directory, then a rename.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Every temporary file pixforge writes contains this marker in its name, so a rerun can remove
/// what a killed run left behind.
pub const TEMP_MARKER: &str = ".pixforge-tmp";

/// The temporary path used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}{TEMP_MARKER}-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: the file either holds all of `bytes` or does not exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Removes temporary files left in `dir` by a killed run; returns how many were removed.
pub fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().contains(TEMP_MARKER) {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the temporary files in `dir` that belong to `worker`'s shards (named `{shard}…`; files
/// named otherwise belong to worker 0), so workers sharing a directory never remove each other's.
pub fn remove_owned_temp_files(dir: &Path, worker: super::Worker) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(TEMP_MARKER) {
            continue;
        }
        let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
        let owned = match digits.parse::<usize>() {
            Ok(shard) => worker.owns(shard),
            Err(_) => worker.index == 0,
        };
        if owned {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        fs::write(temp_path(&dir.path().join("b.tar")), b"half").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert!(p.exists());
    }
}
