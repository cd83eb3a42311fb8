//! Synthetic data for the whole-dataset repeat benchmark (bench/repeats.sh): pHashes with planted
//! repeats, as shard parquets the way ingest writes them, and the in-memory search timed against
//! ingest's per-worker index.

use crate::image::phash::{first_copies, PhashIndex, KEPT};
use crate::rng::Rng;
use crate::shards::{write_atomic, write_parquet_atomic, ShardLayout};
use polars::prelude::{Column, DataFrame};
use std::path::Path;
use std::time::Instant;

/// `count` pHashes: random ones, and (one in `1 / repeat_share`) repeats of an earlier one with up
/// to `distance` bits flipped. Returns the hashes and how many repeats were planted.
pub fn synthetic_hashes(count: usize, distance: u32, repeat_share: f64, seed: u64) -> (Vec<u64>, usize) {
    let mut rng = Rng::new(seed);
    let mut hashes = Vec::with_capacity(count);
    let mut planted = 0;
    for i in 0..count {
        let repeat = i > 0 && (rng.next_u64() as f64 / u64::MAX as f64) < repeat_share;
        let h = if repeat {
            planted += 1;
            let mut h = hashes[(rng.next_u64() % i as u64) as usize];
            for _ in 0..rng.next_u64() % (distance as u64 + 1) {
                h ^= 1 << (rng.next_u64() % 64);
            }
            h
        } else {
            rng.next_u64()
        };
        hashes.push(h);
    }
    (hashes, planted)
}

/// Writes `count` synthetic samples as `shards` shard parquets (key, status, sha256, phash) with their
/// stats files into `out`; returns the planted repeats.
pub fn write_dataset(out: &Path, count: usize, shards: usize, distance: u32, seed: u64) -> anyhow::Result<usize> {
    std::fs::create_dir_all(out)?;
    let (hashes, planted) = synthetic_hashes(count, distance, 0.05, seed);
    let per_shard = count.div_ceil(shards.max(1));
    let layout = ShardLayout::new(per_shard);
    for (shard, chunk) in hashes.chunks(per_shard).enumerate() {
        let keys: Vec<String> = (0..chunk.len()).map(|row| layout.key(shard, row)).collect();
        // A distinct stand-in for each sample's sha256: its number, mixed, then the pHash.
        let sha: Vec<String> = (0..chunk.len())
            .map(|row| Rng::new((shard * per_shard + row) as u64).next_u64())
            .zip(chunk)
            .map(|(mixed, h)| format!("{mixed:016x}{:032x}{h:016x}", 0))
            .collect();
        let phash: Vec<String> = chunk.iter().map(|h| format!("{h:016x}")).collect();
        let mut df = DataFrame::new(
            chunk.len(),
            vec![
                Column::new("key".into(), keys),
                Column::new("status".into(), vec!["success"; chunk.len()]),
                Column::new("sha256".into(), sha),
                Column::new("phash".into(), phash),
            ],
        )?;
        let name = layout.name(shard);
        write_parquet_atomic(&mut df, &out.join(format!("{name}.parquet")))?;
        let stats = serde_json::json!({ "count": chunk.len(), "successes": chunk.len() });
        write_atomic(&out.join(format!("{name}_stats.json")), stats.to_string().as_bytes())?;
    }
    Ok(planted)
}

/// One timing of the in-memory search over synthetic hashes.
#[derive(Debug, serde::Serialize)]
pub struct SearchTiming {
    /// `first_copies` (the whole-dataset search) or `phash_index` (ingest's per-worker index).
    pub method: String,
    /// Hashes searched.
    pub count: usize,
    /// Largest Hamming distance matched.
    pub distance: u32,
    /// Repeats planted.
    pub planted: usize,
    /// Repeats found.
    pub found: usize,
    /// Seconds for the search, index building included.
    pub seconds: f64,
}

/// Times `method` over `count` synthetic hashes (5% planted repeats).
pub fn time_search(method: &str, count: usize, distance: u32, seed: u64) -> anyhow::Result<SearchTiming> {
    let (hashes, planted) = synthetic_hashes(count, distance, 0.05, seed);
    let start = Instant::now();
    let found = match method {
        "first_copies" => first_copies(&hashes, distance).iter().filter(|f| **f != KEPT).count(),
        "phash_index" => {
            let mut index = PhashIndex::new(distance);
            let mut found = 0;
            for (i, &h) in hashes.iter().enumerate() {
                if index.find(h).is_some() {
                    found += 1;
                } else {
                    index.insert(h, &format!("{i:09}"));
                }
            }
            found
        }
        other => anyhow::bail!("--method {other}: expected first_copies or phash_index"),
    };
    let seconds = start.elapsed().as_secs_f64();
    Ok(SearchTiming { method: method.to_string(), count, distance, planted, found, seconds })
}
