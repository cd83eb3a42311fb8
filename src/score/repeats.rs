//! `pixforge dedup --phash`: repeats across a whole ingested dataset. Ingest finds repeats within
//! one worker's shards; this pass reads the pHash and sha256 every shard parquet records for its
//! kept samples, over all workers' shards in shard order, and finds every sample within
//! `--phash-distance` bits of an earlier kept one ([`crate::image::phash::first_copies`]). It
//! writes the kept keys as a selection (which the caches and the trainer take) and the repeats,
//! each with its first copy's key, beside it. Memory grows by about 40 bytes a sample (the hashes,
//! the answer and the substring tables), never with the keys, which are read again shard by shard.

use crate::image::phash::{first_copies, KEPT, MAX_REPEAT_DISTANCE};
use crate::shards::selection::KEY_COLUMN;
use crate::shards::write_parquet_atomic;
use polars::prelude::{
    Column, DataFrame, DataType, ParquetCompression, ParquetReader, ParquetWriter, Schema, SerReader,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The whole-dataset repeat search's configuration (`pixforge dedup --phash`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct RepeatsConfig {
    /// Largest pHash Hamming distance (of 64 bits) at which a sample repeats an earlier one (0:
    /// identical pHashes only; at most 15).
    #[arg(long, default_value_t = 4)]
    pub phash_distance: u32,
}

impl Default for RepeatsConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// What the repeat search found.
#[derive(Debug, Clone, Serialize)]
pub struct RepeatsReport {
    /// Shards read.
    pub shards: usize,
    /// Kept samples of those shards (status `success`).
    pub samples: usize,
    /// Samples left in the selection.
    pub kept: usize,
    /// Repeats with the same bytes (sha256) as their first copy.
    pub exact: usize,
    /// Repeats with other bytes within the pHash distance.
    pub near: usize,
    /// The selection of kept keys.
    pub out: PathBuf,
    /// The repeats (`key`, `first`, `distance`, `exact`).
    pub repeats: PathBuf,
}

impl RepeatsReport {
    /// One line of counts, and the two files.
    pub fn text(&self) -> String {
        format!(
            "{} samples in {} shards: kept {}, removed {} exact and {} near repeats\nselection: {}\nrepeats: {}\n",
            self.samples,
            self.shards,
            self.kept,
            self.exact,
            self.near,
            self.out.display(),
            self.repeats.display()
        )
    }
}

/// The repeats file written beside the selection `out`.
pub fn repeats_path(out: &Path) -> PathBuf {
    out.with_extension("repeats.parquet")
}

/// The done shards of `dataset` (base names, in shard order); a shard parquet without its stats
/// file (a run still going or killed) is refused by name.
fn done_shard_names(dataset: &Path) -> anyhow::Result<Vec<String>> {
    let read = std::fs::read_dir(dataset).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", dataset.display()))?;
    let (mut done, mut parquets) = (Vec::new(), Vec::new());
    for entry in read {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix("_stats.json").filter(|s| s.parse::<u64>().is_ok()) {
            done.push(stem.to_string());
        } else if let Some(stem) = name.strip_suffix(".parquet").filter(|s| s.parse::<u64>().is_ok()) {
            parquets.push(stem.to_string());
        }
    }
    if let Some(open) = parquets.iter().find(|p| !done.contains(p)) {
        anyhow::bail!(
            "{}: shard {open} is not complete (no {open}_stats.json): finish the ingest (every worker) first",
            dataset.display()
        );
    }
    if done.is_empty() {
        anyhow::bail!("{}: no ingested shards (no NNNNN_stats.json)", dataset.display());
    }
    done.sort_by_key(|s| s.parse::<u64>().unwrap_or(u64::MAX));
    Ok(done)
}

/// The kept rows of one shard parquet: their keys, pHashes and sha256 prefixes.
struct ShardRows {
    keys: Vec<String>,
    phash: Vec<u64>,
    sha: Vec<u64>,
}

fn read_shard(path: &Path, with_keys: bool) -> anyhow::Result<ShardRows> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let cols = vec!["key".to_string(), "status".into(), "sha256".into(), "phash".into()];
    let df = ParquetReader::new(f)
        .with_columns(Some(cols))
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a shard parquet (key, status, sha256, phash): {e}", path.display()))?;
    let text = |name: &str| {
        df.column(name)
            .and_then(|c| c.cast(&DataType::String))
            .map_err(|e| anyhow::anyhow!("{}: column `{name}`: {e}", path.display()))
    };
    let (key, status, sha, phash) = (text("key")?, text("status")?, text("sha256")?, text("phash")?);
    let (key, status, sha, phash) = (key.str()?, status.str()?, sha.str()?, phash.str()?);
    let mut rows = ShardRows { keys: Vec::new(), phash: Vec::new(), sha: Vec::new() };
    for i in 0..df.height() {
        if status.get(i) != Some("success") {
            continue;
        }
        let k = key.get(i).unwrap_or("");
        let hex = |col: &str, v: Option<&str>, digits: usize| {
            v.filter(|v| v.len() >= digits).and_then(|v| u64::from_str_radix(&v[..16], 16).ok()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: row {i} (key {k}), column `{col}`: expected {digits} hex digits, found {v:?}",
                    path.display()
                )
            })
        };
        rows.phash.push(hex("phash", phash.get(i), 16)?);
        rows.sha.push(hex("sha256", sha.get(i), 64)?);
        if with_keys {
            rows.keys.push(k.to_string());
        }
    }
    Ok(rows)
}

/// Finds the repeats across every shard of `dataset` and writes the kept keys to `out` (the repeats
/// to [`repeats_path`] first, the selection last).
pub fn run(dataset: &Path, cfg: &RepeatsConfig, out: &Path) -> anyhow::Result<RepeatsReport> {
    if cfg.phash_distance > MAX_REPEAT_DISTANCE {
        anyhow::bail!("--phash-distance {}: expected at most {MAX_REPEAT_DISTANCE} of 64 bits", cfg.phash_distance);
    }
    let dataset = &crate::store::local_copy(dataset, |n| n.ends_with(".parquet") || n.ends_with("_stats.json"))?;
    let names = done_shard_names(dataset)?;
    let shard_path = |name: &String| dataset.join(format!("{name}.parquet"));
    // First pass: the hashes, in shard order (each file decoded on polars' threads; reading files
    // in parallel on rayon's as well nests work-stealing past a thread's stack).
    let (mut phash, mut sha) = (Vec::new(), Vec::new());
    for name in &names {
        let rows = read_shard(&shard_path(name), false)?;
        phash.extend_from_slice(&rows.phash);
        sha.extend_from_slice(&rows.sha);
    }
    phash.shrink_to_fit();
    sha.shrink_to_fit();
    let first = first_copies(&phash, cfg.phash_distance);
    let mut is_first = vec![false; first.len()];
    for &i in first.iter().filter(|&&i| i != KEPT) {
        is_first[i as usize] = true;
    }

    // Second pass: the keys, shard by shard, into the selection (streamed) and the repeats.
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty() && !crate::store::is_remote(out)) {
        std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", parent.display()))?;
    }
    let tmp = crate::store::temp_for(out);
    let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    let schema = Schema::from_iter([(KEY_COLUMN.into(), DataType::String)]);
    let mut writer = ParquetWriter::new(file).with_compression(ParquetCompression::Zstd(None)).batched(&schema)?;
    let mut first_keys: HashMap<u32, String> = HashMap::new();
    let (mut rep_key, mut rep_first, mut rep_distance, mut rep_exact) = (vec![], vec![], vec![], vec![]);
    let mut id = 0usize;
    for name in &names {
        let rows = read_shard(&shard_path(name), true)?;
        if rows.keys.len() + id > first.len() {
            anyhow::bail!("{}: changed while it was read", shard_path(name).display());
        }
        let mut kept = Vec::new();
        for key in rows.keys {
            match first[id] {
                KEPT => {
                    if is_first[id] {
                        first_keys.insert(id as u32, key.clone());
                    }
                    kept.push(key);
                }
                i => {
                    rep_first.push(first_keys[&i].clone());
                    rep_key.push(key);
                    rep_distance.push((phash[i as usize] ^ phash[id]).count_ones());
                    rep_exact.push(sha[i as usize] == sha[id]);
                }
            }
            id += 1;
        }
        let batch = DataFrame::new(kept.len(), vec![Column::new(KEY_COLUMN.into(), kept)])?;
        writer.write_batch(&batch)?;
    }
    writer.finish()?;
    let exact = rep_exact.iter().filter(|e| **e).count();
    let repeats = repeats_path(out);
    let mut df = DataFrame::new(
        rep_key.len(),
        vec![
            Column::new("key".into(), rep_key),
            Column::new("first".into(), rep_first),
            Column::new("distance".into(), rep_distance),
            Column::new("exact".into(), rep_exact),
        ],
    )?;
    write_parquet_atomic(&mut df, &repeats).map_err(|e| anyhow::anyhow!("{}: {e}", repeats.display()))?;
    crate::store::put_file(&tmp, out)?;
    let removed = first.iter().filter(|&&f| f != KEPT).count();
    Ok(RepeatsReport {
        shards: names.len(),
        samples: first.len(),
        kept: first.len() - removed,
        exact,
        near: removed - exact,
        out: out.to_path_buf(),
        repeats,
    })
}
