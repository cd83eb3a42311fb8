//! The one engine every shard stage runs on: which shards this worker owns and has not done yet,
//! done markers (`{shard}_stats.json`, written last), the manifest fingerprint and its refusal with
//! every difference named ([`StageFingerprint`]), overwrite (each stage names its own output files,
//! [`Stage`]), selections, source digests (a shard whose source changed is redone), progress, and
//! per-shard failure recorded with the run going on ([`run_shards`]); the shard files themselves
//! ([`write_shard`]: safetensors, the key index, the stats), and a reader that checks the
//! fingerprint ([`StageReader`]); and the whole-dataset stages' done-checks ([`DoneMarker`]).

mod done;
mod fingerprint;
mod reader;
mod run;
mod store;

pub use done::{DoneMarker, InputsDigest};
pub use fingerprint::{sha256_file, FileHash, StageFingerprint};
pub use reader::{StageReader, StageShard};
pub use run::{image_bytes, run_shards, Fatal, Stage, StageOptions, StageRun, StageRunStats, IMAGE_EXTS};
pub use store::{write_shard, CaptionRows, EntryStatus, SampleEntry, ShardOutput, StageShardStats};
