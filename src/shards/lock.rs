//! One process per worker share of an output folder: a lock file naming the process, taken before a
//! stage writes anything, so that a share started twice (a requeued SLURM task while the first still
//! runs, a Job retried early) is refused with the other process named instead of doing the work twice.

use super::Worker;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The held lock of one worker share of a folder; released (its file removed) when dropped.
#[derive(Debug)]
pub struct ShareLock {
    path: PathBuf,
}

/// The lock file of `worker`'s share of `dir`.
pub fn lock_path(dir: &Path, worker: Worker) -> PathBuf {
    dir.join(format!(".pixforge-lock-{}-of-{}", worker.index, worker.count))
}

impl ShareLock {
    /// Takes the lock of `worker`'s share of `dir`, refused while another running process holds it;
    /// a lock left by a process that is gone is taken over.
    pub fn acquire(dir: &Path, worker: Worker) -> anyhow::Result<Self> {
        let path = lock_path(dir, worker);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .map_err(|e| anyhow::anyhow!("{}: cannot write the lock: {e}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if pid != std::process::id() && super::atomic::process_alive(pid) => anyhow::bail!(
                            "{}: worker share {}/{} is already being run by process {pid} (lock file {}); a share \
                             started twice would do its work twice: wait for that process, or stop it",
                            dir.display(),
                            worker.index,
                            worker.count,
                            path.display()
                        ),
                        // A lock being written this instant reads empty: the other process wins.
                        Err(_) if text.is_empty() && lock_is_fresh(&path) => anyhow::bail!(
                            "{}: worker share {}/{} is being started by another process (lock file {})",
                            dir.display(),
                            worker.index,
                            worker.count,
                            path.display()
                        ),
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => anyhow::bail!("{}: cannot create the lock file: {e}", path.display()),
            }
        }
        anyhow::bail!(
            "{}: another process took the lock of worker share {}/{}",
            path.display(),
            worker.index,
            worker.count
        )
    }
}

fn lock_is_fresh(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < std::time::Duration::from_secs(5)))
}

impl Drop for ShareLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_held_once_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let w = Worker { index: 1, count: 2 };
        // pid 1 is alive: refused, naming it.
        std::fs::write(lock_path(dir.path(), w), "1\n").unwrap();
        let e = ShareLock::acquire(dir.path(), w).unwrap_err().to_string();
        assert!(e.contains("worker share 1/2 is already being run by process 1"), "{e}");
        // A gone process: taken over, and released on drop.
        std::fs::write(lock_path(dir.path(), w), format!("{}\n", u32::MAX - 1)).unwrap();
        let lock = ShareLock::acquire(dir.path(), w).unwrap();
        assert!(ShareLock::acquire(dir.path(), Worker { index: 0, count: 2 }).is_ok(), "other shares are free");
        drop(lock);
        assert!(!lock_path(dir.path(), w).exists());
    }
}
