//! The shard format: the contract between every pixforge stage.
//!
//! The layout is img2dataset's: `{shard:05d}.tar` (WebDataset members `{key}.jpg|webp|png`, `{key}.txt`,
//! `{key}.json`), `{shard:05d}.parquet` (one row per *input* row, failures included) and
//! `{shard:05d}_stats.json`, written last: a shard is done exactly when its stats file exists.
//! A dataset directory also carries a `manifest.json` (stage, configuration, fingerprint, version).

mod atomic;
pub mod captions;
mod keys;
mod lock;
mod manifest;
mod parquet;
mod record;
pub mod selection;
pub mod stage;
mod stats;
mod tar_reader;
mod worker;
mod writer;

pub use atomic::{process_alive, remove_owned_temp_files, remove_temp_files, temp_path, write_atomic, TEMP_MARKER};
pub use keys::{done_shards, key_file_stem, shard_name, ShardLayout, MAX_KEY_STEM};
pub use lock::{lock_path, ShareLock};
pub use manifest::{fingerprint_of, json_changes, InputsPart, Manifest, MANIFEST_FILE};
pub use parquet::{read_records, records_to_frame, write_parquet_atomic, RESERVED};
pub use record::{Record, Status, Value};
pub use stats::{reason_class, RunStats, ShardStats};
pub use tar_reader::{group_samples, index_tar, index_tar_partial, read_member, TarMember, TarSample, WdsReader};
pub use worker::Worker;
pub use writer::{now, ShardWriter};
