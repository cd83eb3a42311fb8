//! What every source produces: an ordered list of input rows, each pointing at its image bytes.

use crate::shards::{read_member, TarMember};
use polars::prelude::DataFrame;
use std::path::{Path, PathBuf};

/// Where a row's bytes live.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Payload {
    /// An http(s) URL to download.
    Url(String),
    /// A local file.
    File(PathBuf),
    /// One row's image inside a parquet file (the `hub` source).
    Parquet(Box<super::hub::CellRef>),
    /// A member of a local tar.
    Tar {
        /// The tar file.
        tar: PathBuf,
        /// The member.
        member: TarMember,
    },
}

impl Payload {
    /// Reads a local payload (files and tar members); URLs are fetched by the downloader instead.
    pub fn read_local(&self) -> Result<Vec<u8>, String> {
        match self {
            Payload::Url(u) => Err(format!("{u}: URL payloads are downloaded, not read")),
            Payload::File(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
            Payload::Parquet(cell) => super::hub::read_cell(cell),
            Payload::Tar { tar, member } => {
                read_member(tar, member).map_err(|e| format!("cannot read {}:{}: {e}", tar.display(), member.name))
            }
        }
    }
}

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    /// What goes in the `url`/`source` column.
    pub source: String,
    /// The row's caption, if the source has one.
    pub caption: Option<String>,
    /// The image bytes.
    pub payload: Payload,
    /// A side file (SA-1B's per-image annotation JSON).
    pub sidecar: Option<Payload>,
    /// Set when a metadata filter refused the row before any download: the reason.
    pub filtered: Option<String>,
}

impl InputRow {
    /// A row for `payload` described as `source`.
    pub fn new(source: String, payload: Payload) -> Self {
        Self { source, caption: None, payload, sidecar: None, filtered: None }
    }
}

/// A source's rows plus what the shard parquet carries from it.
#[derive(Debug, Default)]
pub struct SourceRows {
    /// Rows in input order.
    pub rows: Vec<InputRow>,
    /// Name of the source column in the shard parquet (`url` or `source`).
    pub source_col: &'static str,
    /// The source's own columns, one row per input row, carried into the shard parquet.
    pub passthrough: Option<DataFrame>,
    /// Descriptions of the input files (path and size) for the manifest fingerprint.
    pub inputs: Vec<String>,
}

/// A description of a file for fingerprints: path and size.
pub fn describe_input(p: &Path) -> String {
    let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!("{}:{size}", p.display())
}

/// Image file extensions read from folders.
pub const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp"];

/// Whether `ext` (lower case) names an image.
pub fn is_image_ext(ext: &str) -> bool {
    IMAGE_EXTS.contains(&ext)
}

/// Every regular file under `dir`, sorted by path (deterministic shard contents).
pub fn walk_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))?
        {
            let entry = entry?;
            let ft = entry.file_type()?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() || (ft.is_symlink() && entry.path().is_file()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lower-case extension of `p`.
pub fn ext_of(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}
