//! The ingest stage: sources (LAION metadata, SA-1B, image folders, WebDataset) to curated
//! WebDataset shards. Readers list input rows, the downloader fetches URLs, [`crate::image::process`] decodes,
//! filters, resizes and encodes, the de-duplicator marks repeats, and [`crate::shards`] writes.

pub mod download;
pub mod folder;
pub mod hub;
pub mod laion;
pub mod optout;
pub mod rle;
pub mod rows;
mod run;
pub mod sa1b;
pub mod source;
pub mod webdataset;

pub use run::{run, summary, RunOptions};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The kind of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// LAION-style metadata with image URLs.
    Laion,
    /// SA-1B tars or extracted folders.
    Sa1b,
    /// A directory tree of images with optional `.txt` captions.
    Folder,
    /// Existing WebDataset tar shards.
    Webdataset,
    /// Parquet files with the images inside (Hugging Face `datasets` Image columns).
    Hub,
}

/// How repeated images are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupMode {
    /// No de-duplication.
    None,
    /// Identical written bytes (sha256).
    Exact,
    /// Identical bytes, then perceptual hashes within `--phash-distance`.
    #[default]
    Phash,
}

/// Options about shards and curation shared by every source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Parser)]
#[serde(deny_unknown_fields, default)]
pub struct CurationOptions {
    /// Input rows per shard (img2dataset's `number_sample_per_shard`).
    #[arg(long, default_value_t = 10_000)]
    pub samples_per_shard: usize,
    /// De-duplication: later copies get status `duplicate` with the key of the first one.
    #[arg(long, value_enum, default_value_t = DedupMode::Phash)]
    pub dedup: DedupMode,
    /// Largest pHash Hamming distance (of 64 bits) counted as a near-duplicate.
    #[arg(long, default_value_t = 4)]
    pub phash_distance: u32,
    /// SA-1B: refuse images with fewer masks than this.
    #[arg(long, default_value_t = 0)]
    pub min_masks: usize,
}

impl Default for CurationOptions {
    fn default() -> Self {
        clap::Parser::parse_from(["curation"])
    }
}

/// The full configuration of an ingest run; the manifest fingerprint covers all of it except
/// `download`, whose knobs (concurrency, timeouts) may change between a run and its resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Kind of input.
    pub source: SourceKind,
    /// Input files or directories.
    pub inputs: Vec<PathBuf>,
    /// `laion` column mapping and metadata filters.
    #[serde(default)]
    pub laion: laion::LaionOptions,
    /// `hub` column mapping (left out of the manifest while default, so that datasets of the other
    /// sources keep their fingerprints).
    #[serde(default, skip_serializing_if = "is_default_hub")]
    pub hub: hub::HubOptions,
    /// Image decoding, filtering, resizing and encoding.
    #[serde(default)]
    pub image: crate::image::ImageOptions,
    /// Shards and de-duplication.
    #[serde(default)]
    pub curation: CurationOptions,
    /// HTTP downloader (`laion` only).
    #[serde(default)]
    pub download: download::DownloadOptions,
}

fn is_default_hub(h: &hub::HubOptions) -> bool {
    *h == hub::HubOptions::default()
}
