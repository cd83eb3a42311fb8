//! A dataset as the browser sees it: the shard folders under a path (each a *part*, with the
//! caption and score folders beside it), opened from the `_stats.json` files alone, and each
//! shard's rows read on demand and kept in a bounded cache.

use super::mirror::Mirror;
use super::rows::ShardRows;
use crate::shards::Manifest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One shard of a part, as known from its `_stats.json`.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Shard name (`00000`).
    pub name: String,
    /// Rows in the shard (the stats' `count`).
    pub rows: usize,
    /// Rows per status (`success`, `failed_to_download`, …).
    pub statuses: BTreeMap<String, u64>,
    /// Rows per error class (the stats' `status_dict`).
    pub reasons: BTreeMap<String, u64>,
    /// Why the shard cannot be shown (its stats or parquet unreadable), naming the file.
    pub problem: Option<String>,
}

/// One shard folder and the folders made from it.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its name: the folder's path under the dataset, without a trailing `shards`.
    pub name: String,
    /// The shard folder.
    pub shards_dir: PathBuf,
    /// The caption folder (`pixforge caption`) made from it, if any.
    pub captions: Option<PathBuf>,
    /// The score folder (`pixforge score`) made from it, if any.
    pub scores: Option<PathBuf>,
    /// Its shards, in name order.
    pub shards: Vec<ShardInfo>,
    /// The object store the folders are a cache of, for a dataset in a store.
    pub mirror: Option<Arc<Mirror>>,
}

impl Part {
    /// Whether the file `path` of the part's folders exists (in the store, for a dataset there).
    pub fn has(&self, path: &Path) -> bool {
        match &self.mirror {
            Some(m) => m.has(path),
            None => path.is_file(),
        }
    }

    /// Makes sure the file `path` is on this machine (fetched from the store once, for a dataset
    /// there) and says whether it exists.
    pub fn local(&self, path: &Path) -> anyhow::Result<bool> {
        if let Some(m) = &self.mirror {
            m.fetch(path)?;
        }
        Ok(path.is_file())
    }
}

/// Folders named on the command line instead of found beside the shards (for a dataset of one part).
#[derive(Debug, Clone, Default)]
pub struct Companions {
    /// A caption folder.
    pub captions: Option<PathBuf>,
    /// A score folder.
    pub scores: Option<PathBuf>,
}

/// Where a row lives: part index, shard index and row within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowRef {
    /// Index into [`Dataset::parts`].
    pub part: usize,
    /// Index into the part's shards.
    pub shard: usize,
    /// Row within the shard.
    pub row: usize,
}

/// Rows kept in memory at most; past it the cache starts again empty.
const CACHE_ROWS: usize = 4_000_000;

/// An opened dataset.
pub struct Dataset {
    /// What the dataset is called: its folder or store URL, as given.
    pub name: String,
    /// The folder (canonical; for a dataset in a store, its cache folder); nothing outside it is
    /// served.
    pub root: PathBuf,
    /// The object store, for a dataset there.
    pub mirror: Option<Arc<Mirror>>,
    /// Its shard folders.
    pub parts: Vec<Part>,
    /// The density report (`density/report.html`) under the root, if any.
    pub density: Option<PathBuf>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    rows: HashMap<(usize, usize), Arc<ShardRows>>,
    held: usize,
    problems: HashMap<(usize, usize), String>,
}

impl Dataset {
    /// Opens the dataset at `root`: the shard folders in it (itself, or any folder up to three
    /// levels down holding `NNNNN_stats.json` files and no other stage's manifest), and each one's
    /// caption and score folders among its siblings. Reads only manifests and `_stats.json` files.
    pub fn open(root: &Path, companions: &Companions) -> anyhow::Result<Self> {
        let name = root.display().to_string();
        let mirror =
            if crate::store::is_remote(root) { Some(Arc::new(Mirror::open(&root.to_string_lossy())?)) } else { None };
        let root = mirror.as_ref().map(|m| m.cache.clone()).unwrap_or_else(|| root.to_path_buf());
        let root = root
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("{}: cannot open the dataset folder: {e}", root.display()))?;
        let mut dirs = Vec::new();
        find_shard_dirs(&root, 0, &mut dirs)?;
        if dirs.is_empty() {
            anyhow::bail!(
                "{}: no shard folder in it (expected NNNNN_stats.json + NNNNN.parquet files, as `pixforge ingest` or \
                 img2dataset write, in it or up to three folders down)",
                root.display()
            );
        }
        dirs.sort();
        let one = dirs.len() == 1;
        let mut parts = Vec::new();
        for dir in dirs {
            let mut part = open_part(&root, &dir, mirror.clone())?;
            if one {
                part.captions = companions.captions.clone().or(part.captions);
                part.scores = companions.scores.clone().or(part.scores);
            }
            parts.push(part);
        }
        if !one && (companions.captions.is_some() || companions.scores.is_some()) {
            anyhow::bail!(
                "{}: --captions and --scores name the folders of one shard folder, and this dataset has {} ({}): browse one \
                 of them",
                root.display(),
                parts.len(),
                parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        // The density report: the dataset's own, or the one of the pipeline folder above a part.
        let above_parts =
            parts.iter().flat_map(|p| p.shards_dir.ancestors().skip(1).take_while(|a| a.starts_with(&root)));
        let density = [root.join("report.html")]
            .into_iter()
            .chain(std::iter::once(root.as_path()).chain(above_parts).map(|d| d.join("density/report.html")))
            .find(|p| p.is_file());
        Ok(Self { name, root, mirror, parts, density, cache: Mutex::new(Cache::default()) })
    }

    /// Rows in the whole dataset (from the stats).
    pub fn total_rows(&self) -> usize {
        self.parts.iter().flat_map(|p| &p.shards).map(|s| s.rows).sum()
    }

    /// The rows of one shard, read on first use; an unreadable shard gives its problem (once read,
    /// also listed by [`Dataset::problems`]).
    pub fn rows(&self, part: usize, shard: usize) -> Result<Arc<ShardRows>, String> {
        let key = (part, shard);
        {
            let cache = self.cache.lock().expect("cache lock");
            if let Some(r) = cache.rows.get(&key) {
                return Ok(r.clone());
            }
            if let Some(p) = cache.problems.get(&key) {
                return Err(p.clone());
            }
        }
        let p = &self.parts[part];
        let info = &p.shards[shard];
        let loaded = match &info.problem {
            Some(problem) => Err(problem.clone()),
            None => ShardRows::read(p, &info.name).map(Arc::new).map_err(|e| format!("{e:#}")),
        };
        let mut cache = self.cache.lock().expect("cache lock");
        match loaded {
            Ok(rows) => {
                if cache.held + rows.len() > CACHE_ROWS {
                    cache.rows.clear();
                    cache.held = 0;
                }
                cache.held += rows.len();
                cache.rows.insert(key, rows.clone());
                Ok(rows)
            }
            Err(e) => {
                cache.problems.insert(key, e.clone());
                Err(e)
            }
        }
    }

    /// Up to `n` rows whose error class is `class` and that `keep` accepts, from the first shards
    /// whose stats count it (only those are read).
    pub fn examples(&self, class: &str, n: usize, keep: &dyn Fn(RowRef) -> bool) -> Vec<(RowRef, Arc<ShardRows>)> {
        let mut found = Vec::new();
        for (pi, p) in self.parts.iter().enumerate() {
            for (si, info) in p.shards.iter().enumerate() {
                if info.reasons.get(class).copied().unwrap_or(0) == 0 {
                    continue;
                }
                let Ok(rows) = self.rows(pi, si) else { continue };
                for row in 0..rows.len() {
                    let r = RowRef { part: pi, shard: si, row };
                    if found.len() == n {
                        return found;
                    }
                    if rows.class(row) == class && keep(r) {
                        found.push((r, rows.clone()));
                    }
                }
            }
        }
        found
    }

    /// Every shard known to be unreadable so far: (part name, shard name, why).
    pub fn problems(&self) -> Vec<(String, String, String)> {
        let cache = self.cache.lock().expect("cache lock");
        let mut out: Vec<_> = self
            .parts
            .iter()
            .enumerate()
            .flat_map(|(pi, p)| p.shards.iter().enumerate().map(move |(si, s)| (pi, si, p, s)))
            .filter_map(|(pi, si, p, s)| {
                let why = s.problem.clone().or_else(|| cache.problems.get(&(pi, si)).cloned())?;
                Some((p.name.clone(), s.name.clone(), why))
            })
            .collect();
        out.dedup();
        out
    }

    /// The part and shard indices of `part_name`/`shard_name`.
    pub fn find_shard(&self, part: usize, shard_name: &str) -> Option<usize> {
        self.parts.get(part)?.shards.iter().position(|s| s.name == shard_name)
    }

    /// Rows per status over the dataset (from the stats).
    pub fn statuses(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.parts.iter().flat_map(|p| &p.shards) {
            for (k, v) in &s.statuses {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    /// Rows per error class over the dataset (from the stats).
    pub fn reasons(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.parts.iter().flat_map(|p| &p.shards) {
            for (k, v) in &s.reasons {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }
}

/// Whether `dir` holds `NNNNN_stats.json` files.
fn has_shard_stats(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).any(|e| shard_of_stats(&e.file_name().to_string_lossy()).is_some()))
        .unwrap_or(false)
}

/// The shard name of a `NNNNN_stats.json` file name.
fn shard_of_stats(name: &str) -> Option<&str> {
    let shard = name.strip_suffix("_stats.json")?;
    (!shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit())).then_some(shard)
}

/// The stage of the folder's `manifest.json`, if it has one.
fn stage_of(dir: &Path) -> Option<String> {
    Manifest::read(dir).ok().flatten().map(|m| m.stage)
}

fn find_shard_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if has_shard_stats(dir) {
        match stage_of(dir).as_deref() {
            None | Some("ingest") => out.push(dir.to_path_buf()),
            Some(_) => {}
        }
        return Ok(());
    }
    if depth == 3 {
        return Ok(());
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    for d in subdirs {
        find_shard_dirs(&d, depth + 1, out)?;
    }
    Ok(())
}

fn open_part(root: &Path, dir: &Path, mirror: Option<Arc<Mirror>>) -> anyhow::Result<Part> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let rel = if rel.file_name().is_some_and(|n| n == "shards") { rel.parent().unwrap_or(rel) } else { rel };
    let name = match rel.to_string_lossy().as_ref() {
        "" => root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dataset".into()),
        s => s.to_string(),
    };
    let (mut captions, mut scores) = (None, None);
    if let Some(parent) = dir.parent() {
        let mut siblings: Vec<PathBuf> = std::fs::read_dir(parent)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir() && p != dir).collect())
            .unwrap_or_default();
        siblings.sort();
        for s in siblings {
            match stage_of(&s).as_deref() {
                Some("caption") if captions.is_none() => captions = Some(s),
                Some(st) if st.starts_with("score") && scores.is_none() => scores = Some(s),
                _ => {}
            }
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| shard_of_stats(&e.file_name().to_string_lossy()).map(str::to_string))
        .collect();
    names.sort();
    let shards = names.into_iter().map(|n| shard_info(dir, n, mirror.as_deref())).collect();
    Ok(Part { name, shards_dir: dir.to_path_buf(), captions, scores, shards, mirror })
}

/// A shard's counts from its stats, or its problem: stats that are not JSON or lack `count`, a
/// parquet that is missing or (on this machine) does not end with parquet's magic bytes.
fn shard_info(dir: &Path, name: String, mirror: Option<&Mirror>) -> ShardInfo {
    let mut info = ShardInfo { name, rows: 0, statuses: BTreeMap::new(), reasons: BTreeMap::new(), problem: None };
    let stats_path = dir.join(format!("{}_stats.json", info.name));
    let stats: Result<serde_json::Value, String> = std::fs::read(&stats_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")));
    let count = |v: &serde_json::Value, k: &str| v.get(k).and_then(|c| c.as_u64()).unwrap_or(0);
    match stats {
        Ok(v) => match v.get("count").and_then(|c| c.as_u64()) {
            Some(n) => {
                info.rows = n as usize;
                let successes = count(&v, "successes");
                for (k, n) in [
                    ("success", successes),
                    ("failed_to_download", count(&v, "failed_to_download")),
                    ("failed_to_resize", count(&v, "failed_to_resize")),
                    ("filtered", count(&v, "filtered")),
                    ("duplicate", count(&v, "duplicate")),
                ] {
                    if n > 0 {
                        info.statuses.insert(k.to_string(), n);
                    }
                }
                if let Some(d) = v.get("status_dict").and_then(|d| d.as_object()) {
                    for (k, n) in d {
                        if k != "success" {
                            info.reasons.insert(k.clone(), n.as_u64().unwrap_or(0));
                        }
                    }
                }
            }
            None => {
                info.problem = Some(format!("{}: no `count` field (expected a shard's stats)", stats_path.display()))
            }
        },
        Err(e) => info.problem = Some(format!("{}: cannot be read: {e}", stats_path.display())),
    }
    if info.problem.is_none() {
        let parquet = dir.join(format!("{}.parquet", info.name));
        let checked = match mirror {
            Some(m) if m.has(&parquet) => Ok(()),
            Some(_) => Err("not in the store".to_string()),
            None => parquet_looks_whole(&parquet),
        };
        if let Err(why) = checked {
            info.problem = Some(format!("{}: {why}", parquet.display()));
        }
    }
    info
}

/// Checks a parquet file's size and trailing magic bytes (`PAR1`) without reading it.
fn parquet_looks_whole(path: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < 12 {
        return Err(format!("{len} bytes, too short for a parquet file"));
    }
    let mut tail = [0u8; 4];
    f.seek(SeekFrom::End(-4)).and_then(|_| f.read_exact(&mut tail)).map_err(|e| e.to_string())?;
    if &tail != b"PAR1" {
        return Err(format!("not a whole parquet file (ends with {tail:02x?}, expected PAR1)"));
    }
    Ok(())
}
