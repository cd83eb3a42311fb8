//! A training run's folder (`output_dir`) wherever it lives. In a store, the run works in a local
//! working folder: at its start it fetches the run's logs and its newest complete checkpoint (so it
//! resumes), removes checkpoints a killed run left without their `state.json`, and as it goes it
//! uploads each checkpoint (its `state.json` last, so a listed `state.json` means a complete
//! checkpoint), removes the ones beyond `keep_last`, and uploads the logs, the loss curve and the
//! validation grids.

use super::checkpoint::CHECKPOINTS;
use crate::shards::Worker;
use crate::store::Staging;
use std::collections::HashSet;
use std::path::Path;

/// A run's folder: local, or a store prefix mirrored by a working folder.
pub struct RunFolder {
    staging: Staging,
    /// The validation grids uploaded already.
    uploaded: HashSet<String>,
    /// Whether this process writes the run (rank 0).
    main: bool,
}

/// The sub-folder of the validation grids.
pub const SAMPLES: &str = "samples";

impl RunFolder {
    /// Opens `output_dir` for process `rank` of `world` (each process of a run on one machine gets
    /// a working folder of its own); from a store, fetches what a resume needs.
    pub fn open(output_dir: &Path, rank: usize, world: usize) -> anyhow::Result<Self> {
        let staging = Staging::open(output_dir, Worker { index: rank, count: world.max(1) })
            .map_err(|e| anyhow::anyhow!("output_dir: {e:#}"))?;
        let folder = Self { staging, uploaded: HashSet::new(), main: rank == 0 };
        if folder.staging.remote().is_some() {
            folder.fetch()?;
        }
        Ok(folder)
    }

    /// The local folder the run reads and writes.
    pub fn dir(&self) -> &Path {
        &self.staging.dir
    }

    /// Fetches the run's top-level files and its newest complete checkpoint; the main process
    /// removes the checkpoints left incomplete.
    fn fetch(&self) -> anyhow::Result<()> {
        let top: Vec<String> = self.staging.names()?;
        self.staging.fetch(&top)?;
        let mut steps = self.steps()?;
        steps.reverse();
        let mut newest = None;
        for (_, name) in steps {
            let sub = format!("{CHECKPOINTS}/{name}");
            if self.staging.names_under(&sub)?.iter().any(|n| n == "state.json") {
                newest.get_or_insert(sub);
            } else if self.main {
                tracing::warn!("output_dir: removing the incomplete checkpoint {sub}");
                self.staging.delete_under(&sub)?;
            }
        }
        if let Some(sub) = newest {
            self.staging.fetch_under(&sub)?;
        }
        Ok(())
    }

    /// The checkpoint folders in the store, by step, oldest first.
    fn steps(&self) -> anyhow::Result<Vec<(u64, String)>> {
        let mut steps: Vec<(u64, String)> = self
            .staging
            .subdirs(CHECKPOINTS)?
            .into_iter()
            .filter_map(|n| Some((n.strip_prefix("step_")?.parse::<u64>().ok()?, n)))
            .collect();
        steps.sort();
        Ok(steps)
    }

    /// Uploads checkpoint folder `dir` (its `state.json` last) and removes the store's checkpoints
    /// beyond the newest `keep_last` (0: all kept).
    pub fn publish_checkpoint(&self, dir: &Path, keep_last: usize) -> anyhow::Result<()> {
        if self.staging.remote().is_none() || !self.main {
            return Ok(());
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let sub = format!("{CHECKPOINTS}/{name}");
        let mut files = crate::store::names_in(dir)?;
        files.sort_by_key(|n| (n == "state.json", n.clone()));
        self.staging.upload_under(&sub, &files)?;
        if keep_last > 0 {
            let steps = self.steps()?;
            for (_, old) in steps.iter().take(steps.len().saturating_sub(keep_last)) {
                self.staging.delete_under(&format!("{CHECKPOINTS}/{old}"))?;
            }
        }
        Ok(())
    }

    /// Uploads the run's top-level files (log, loss curve) and the validation grids not uploaded yet.
    pub fn publish_logs(&mut self) -> anyhow::Result<()> {
        if self.staging.remote().is_none() || !self.main {
            return Ok(());
        }
        let top: Vec<String> = crate::store::names_in(self.dir())?
            .into_iter()
            .filter(|n| !n.starts_with('.') && !n.contains(crate::shards::TEMP_MARKER))
            .collect();
        self.staging.upload_under("", &top)?;
        let grids: Vec<String> = crate::store::names_in(&self.dir().join(SAMPLES))?
            .into_iter()
            .filter(|n| !n.contains(crate::shards::TEMP_MARKER) && !self.uploaded.contains(n))
            .collect();
        self.staging.upload_under(SAMPLES, &grids)?;
        self.uploaded.extend(grids);
        Ok(())
    }

    /// Where the run's file `local` (in [`RunFolder::dir`]) is published: under `output_dir` in the
    /// store, or `local` itself for a local run.
    pub fn published(&self, output_dir: &Path, local: &Path) -> std::path::PathBuf {
        match (self.staging.remote(), local.strip_prefix(self.dir())) {
            (Some(_), Ok(rel)) => output_dir.join(rel),
            _ => local.to_path_buf(),
        }
    }
}

/// The steps of the complete checkpoints of the run in `output_dir` (a folder or a store prefix),
/// oldest first.
pub fn checkpoint_steps(output_dir: &Path) -> anyhow::Result<Vec<u64>> {
    if !crate::store::is_remote(output_dir) {
        if !output_dir.is_dir() {
            return Ok(Vec::new());
        }
        return Ok(super::checkpoint::list(output_dir)?.into_iter().map(|(s, _)| s).collect());
    }
    let root = crate::store::remote(&output_dir.to_string_lossy())?.child(CHECKPOINTS);
    let mut steps = Vec::new();
    for name in root.list_dirs()? {
        if let Some(step) = name.strip_prefix("step_").and_then(|s| s.parse::<u64>().ok()) {
            if root.child(&name).exists("state.json")? {
                steps.push(step);
            }
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// A local file holding `file` of the checkpoint at `step` of the run in `output_dir`: the file
/// itself, or for a run in a store the object downloaded into a reading folder of this process's.
pub fn checkpoint_file(output_dir: &Path, step: u64, file: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = super::checkpoint::dir_of(output_dir, step).join(file);
    crate::store::local_copy(&path, |_| true)
}

/// Removes the run in `output_dir` (a folder, or everything under a store prefix).
pub fn remove_run(output_dir: &Path) -> anyhow::Result<()> {
    if crate::store::is_remote(output_dir) {
        return crate::store::remote(&output_dir.to_string_lossy())?.delete_all();
    }
    std::fs::remove_dir_all(output_dir).map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", output_dir.display()))
}
