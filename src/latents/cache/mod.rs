//! The feature caches: T5 caption embeddings ([`t5_stage`]) and VAE posterior moments
//! ([`vae_stage`]), per source shard, resumable, shared out by `--worker I/N`, and guarded by a
//! fingerprint ([`CacheFingerprint`]) that a consumer checks when it opens a cache ([`CacheReader`]).

mod fingerprint;
mod reader;
mod run;
mod store;
pub mod t5_stage;
pub mod vae_stage;

pub use fingerprint::{sha256_file, CacheFingerprint, FileHash};
pub use reader::{CacheReader, CacheShard};
pub use run::{image_bytes, run_shards, CacheRunStats, RunOptions, IMAGE_EXTS};
pub use store::{CacheEntry, CacheShardStats, EntryStatus, ShardOutput};
pub use t5_stage::{FeatureDType, T5CacheConfig};
pub use vae_stage::VaeCacheConfig;
