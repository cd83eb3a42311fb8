//! A dataset in an object store, browsed through a local cache folder: opening lists the prefix
//! (three levels down) and fetches the small files the browser opens from (manifests, shard stats,
//! the density report); a shard's parquet, caption and score files and its tar are fetched when
//! first needed, each once, atomically.

use crate::store::Remote;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An object-store prefix and its local cache.
#[derive(Debug)]
pub struct Mirror {
    remote: Remote,
    /// The cache folder, holding the prefix's layout.
    pub cache: PathBuf,
    /// Every object found under the prefix: path relative to it → size.
    objects: HashMap<String, u64>,
}

/// Parallel requests while fetching the small files.
const FETCHERS: usize = 16;

impl Mirror {
    /// Lists `url` and fetches its small files into a cache folder of its own
    /// (`$XDG_CACHE_HOME/pixforge/browse/…`, else `~/.cache/…`, else the temporary folder); a file
    /// already there with the listed size is kept.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let remote = Remote::open(url)?;
        remote.check()?;
        let mut objects = HashMap::new();
        list(&remote, "", 0, &mut objects)?;
        if objects.is_empty() {
            anyhow::bail!("{url}: nothing under this prefix");
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let digest = crate::shards::fingerprint_of(&serde_json::json!(remote.url()), &[]);
        let cache = base.join("pixforge/browse").join(&digest[..16]);
        let mirror = Self { remote, cache, objects };
        let small: Vec<&String> = mirror
            .objects
            .keys()
            .filter(|k| {
                k.ends_with("_stats.json") || k.ends_with("manifest.json") || k.ends_with("density/report.html")
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(FETCHERS).build()?;
        pool.install(|| small.par_iter().try_for_each(|k| mirror.fetch_rel(k)))?;
        Ok(mirror)
    }

    /// The prefix's URL.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    fn rel(&self, local: &Path) -> Option<String> {
        Some(local.strip_prefix(&self.cache).ok()?.to_string_lossy().replace('\\', "/"))
    }

    /// Whether the store has the object cached at `local`.
    pub fn has(&self, local: &Path) -> bool {
        self.rel(local).is_some_and(|r| self.objects.contains_key(&r))
    }

    /// Fetches the object cached at `local` unless it is there already (an object the store does
    /// not have is left missing).
    pub fn fetch(&self, local: &Path) -> anyhow::Result<()> {
        match self.rel(local) {
            Some(rel) => self.fetch_rel(&rel),
            None => Ok(()),
        }
    }

    fn fetch_rel(&self, rel: &str) -> anyhow::Result<()> {
        let Some(&size) = self.objects.get(rel) else { return Ok(()) };
        let local = self.cache.join(rel);
        if std::fs::metadata(&local).is_ok_and(|m| m.len() == size) {
            return Ok(());
        }
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        }
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        under(&self.remote, dir).download(file, &local)
    }
}

/// The prefix `rel` (`a/b`, one segment at a time) under `remote`.
fn under(remote: &Remote, rel: &str) -> Remote {
    rel.split('/').filter(|s| !s.is_empty()).fold(remote.clone(), |r, seg| r.child(seg))
}

/// Lists the objects under `remote`/`rel`, three prefixes down at most.
fn list(remote: &Remote, rel: &str, depth: usize, out: &mut HashMap<String, u64>) -> anyhow::Result<()> {
    let here = under(remote, rel);
    let join = |name: &str| if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
    for (name, size) in here.list()? {
        out.insert(join(&name), size);
    }
    if depth < 4 {
        for dir in here.list_dirs()? {
            list(remote, &join(&dir), depth + 1, out)?;
        }
    }
    Ok(())
}
