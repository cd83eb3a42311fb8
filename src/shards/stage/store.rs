//! A cache shard on disk: `{shard}.safetensors` (the features, memory-mappable), `{shard}.index.json`
//! (one entry per input sample, failures included: the key index) and `{shard}_stats.json`, written
//! last as the done marker. Each file is written under a temporary name and renamed into place.

use crate::shards::{temp_path, write_atomic};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Whether a sample's features were cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// Cached.
    Success,
    /// Not cached; `reason` says why.
    Failed,
}

/// One input sample's line in a cache shard's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleEntry {
    /// The sample key (joins with the source shard's `{key}.*` members).
    pub key: String,
    /// Cached or not.
    pub status: EntryStatus,
    /// Why the sample was not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// T5: first row of the sample in `embeddings`; VAE: its row in the bucket's `mean`/`std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    /// T5: the caption's token count (`</s>` included) = its rows in `embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// VAE: the bucket label (`1.0`, `0.57`, … or the fixed resolution `512`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// VAE: the image's original (height, width) (PixArt-MS's `img_hw` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<[usize; 2]>,
    /// VAE: (height, width) after resizing, before the crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resized: Option<[usize; 2]>,
    /// VAE: the crop box (top, left, height, width) in the resized image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<[usize; 4]>,
    /// T5 with every caption cached: each caption's source and rows (the first is `row`/`tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions: Option<Vec<CaptionRows>>,
}

/// One cached caption of a sample: where it came from (`alt`: the shard's `.txt`;
/// `dense:{prompt_id}:{caption_index}`: a caption folder's) and its rows in `embeddings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionRows {
    /// Where the caption came from.
    pub source: String,
    /// Its first row in `embeddings`.
    pub row: usize,
    /// Its token count (`</s>` included).
    pub tokens: usize,
}

impl SampleEntry {
    /// A successful entry for `key` (fields filled by the stage).
    pub fn success(key: &str) -> Self {
        Self {
            key: key.into(),
            status: EntryStatus::Success,
            reason: None,
            row: None,
            tokens: None,
            bucket: None,
            original_size: None,
            resized: None,
            crop: None,
            captions: None,
        }
    }

    /// A failed entry for `key` with `reason`.
    pub fn failed(key: &str, reason: impl Into<String>) -> Self {
        Self { status: EntryStatus::Failed, reason: Some(reason.into()), ..Self::success(key) }
    }
}

/// The content of a cache shard's `_stats.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageShardStats {
    /// Input samples in the shard.
    pub count: usize,
    /// Samples cached.
    pub successes: usize,
    /// Samples not cached.
    pub failed: usize,
    /// How many samples ended with each reason (`success` included).
    pub status_dict: BTreeMap<String, usize>,
    /// Unix time the shard started.
    pub start_time: f64,
    /// Seconds the shard took.
    pub duration: f64,
    /// The hash of the source shard (and of the stage shards it also depends on) it was made from; a
    /// rerun redoes the shard when its source has changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// Stage-specific figures (captioning: tokens, QC flag counts, latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// What a stage computed for one shard.
pub struct ShardOutput {
    /// The feature tensors, by name (`None`: the stage writes no `{shard}.safetensors`).
    pub tensors: Option<HashMap<String, Tensor>>,
    /// One entry per input sample, in the source shard's order.
    pub entries: Vec<SampleEntry>,
    /// Stage-specific figures for the shard's `_stats.json` (`details`).
    pub details: Option<serde_json::Value>,
}

/// Writes shard `name` into `dir`: safetensors, index, then stats (the done marker) recording
/// `source_digest`.
pub fn write_shard(
    dir: &Path,
    name: &str,
    out: &ShardOutput,
    start_time: f64,
    source_digest: Option<String>,
) -> anyhow::Result<StageShardStats> {
    if let Some(tensors) = &out.tensors {
        let st = dir.join(format!("{name}.safetensors"));
        let tmp = temp_path(&st);
        candle_core::safetensors::save(tensors, &tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &st)?;
    }
    write_atomic(&dir.join(format!("{name}.index.json")), &serde_json::to_vec_pretty(&out.entries)?)?;
    let mut stats = StageShardStats {
        count: out.entries.len(),
        start_time,
        details: out.details.clone(),
        source_digest,
        ..Default::default()
    };
    for e in &out.entries {
        let reason = match e.status {
            EntryStatus::Success => {
                stats.successes += 1;
                "success".to_string()
            }
            EntryStatus::Failed => {
                stats.failed += 1;
                let r = e.reason.as_deref().unwrap_or("failed");
                r.split(": ").next().unwrap_or(r).to_string()
            }
        };
        *stats.status_dict.entry(reason).or_default() += 1;
    }
    stats.duration = crate::shards::now() - start_time;
    write_atomic(&dir.join(format!("{name}_stats.json")), &serde_json::to_vec_pretty(&stats)?)?;
    Ok(stats)
}
