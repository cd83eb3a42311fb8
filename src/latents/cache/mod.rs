//! The feature caches: T5 caption embeddings ([`t5_stage`]) and VAE posterior moments
//! ([`vae_stage`]), per source shard, on the shard-stage engine ([`crate::shards::stage`]):
//! resumable, shared out by `--worker I/N`, and guarded by a fingerprint that a consumer checks when
//! it opens a cache.

pub mod t5_stage;
pub mod vae_stage;

pub use t5_stage::{FeatureDType, T5CacheConfig};
pub use vae_stage::VaeCacheConfig;

use crate::shards::stage::{SampleEntry, StageShard};
use candle_core::{Device, Tensor};

/// The file name endings of a cache shard besides its `_stats.json`.
pub const CACHE_OUTPUTS: [&str; 2] = [".safetensors", ".index.json"];

impl StageShard {
    /// The T5 embedding `[tokens, d]` (f32) of a successful entry of a T5 cache.
    pub fn t5_embedding(&self, entry: &SampleEntry, device: &Device) -> anyhow::Result<Tensor> {
        let (Some(row), Some(n)) = (entry.row, entry.tokens) else {
            anyhow::bail!("sample {}: not cached ({})", entry.key, entry.reason.as_deref().unwrap_or("no T5 rows"));
        };
        self.rows("embeddings", row, n, device)
    }

    /// The posterior mean and std `[4, h, w]` (f32) of a successful entry of a VAE cache.
    pub fn vae_moments(&self, entry: &SampleEntry, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
        let (Some(row), Some(bucket)) = (entry.row, entry.bucket.as_deref()) else {
            anyhow::bail!("sample {}: not cached ({})", entry.key, entry.reason.as_deref().unwrap_or("no VAE rows"));
        };
        let get = |what: &str| -> anyhow::Result<Tensor> {
            Ok(self.rows(&format!("{what}.{bucket}"), row, 1, device)?.squeeze(0)?)
        };
        Ok((get("mean")?, get("std")?))
    }
}
