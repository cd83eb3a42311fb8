//! Atomic file writes: a temporary name in the same directory, then a rename.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Every temporary file pixforge writes contains this marker in its name, so a rerun can remove
/// what a killed run left behind.
pub const TEMP_MARKER: &str = ".pixforge-tmp";

/// A fresh temporary path for writing `path`: `{name}{TEMP_MARKER}-{pid}-{n}`, named for the
/// process (so a clean-up can tell a gone writer's file from a running one's) and unique within it.
pub fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}{TEMP_MARKER}-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: the file either holds all of `bytes` or does not exist.
/// Errors name the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(named)
}

/// Whether a process with id `pid` is running (Linux: `/proc/{pid}`; elsewhere every process is
/// taken to be gone, as before this check existed).
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the temporary file `name` was left by a process that is gone (or by this one): its name
/// carries the writer's process id ([`temp_path`]). A live process's file is being written.
fn left_behind(name: &str) -> bool {
    let Some((_, tail)) = name.rsplit_once(TEMP_MARKER) else { return false };
    match tail.strip_prefix('-').and_then(|t| t.split('-').next()).and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid == std::process::id() || !process_alive(pid),
        None => true,
    }
}

/// Removes temporary files left in `dir` by a killed run (not those a running process is writing);
/// returns how many were removed.
pub fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if left_behind(&entry.file_name().to_string_lossy()) {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the temporary files in `dir` that a gone process left for `worker`'s shards (named
/// `{shard}…`; files named otherwise belong to worker 0), so workers sharing a directory never
/// remove each other's, nor one a running process is writing (the manifest, which every worker
/// writes).
pub fn remove_owned_temp_files(dir: &Path, worker: super::Worker) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(TEMP_MARKER) || !left_behind(&name) {
            continue;
        }
        let digits: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
        let owned = match digits.parse::<usize>() {
            Ok(shard) => worker.owns(shard),
            Err(_) => worker.index == 0,
        };
        if owned {
            match fs::remove_file(entry.path()) {
                // Another worker's clean-up of the same file (worker 0's share of unnumbered files).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.path().display())))?,
            }
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
        // A file a running process (pid 1) is writing stays; one of a gone process goes.
        fs::write(dir.path().join(format!("c.tar{TEMP_MARKER}-1")), b"live").unwrap();
        fs::write(dir.path().join(format!("d.tar{TEMP_MARKER}-{}", u32::MAX - 1)), b"dead").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 2);
        assert!(p.exists() && dir.path().join(format!("c.tar{TEMP_MARKER}-1")).exists());
    }
}
