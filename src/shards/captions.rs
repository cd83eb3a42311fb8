//! Caption shards: the `{shard}.captions.parquet` files the captioning stage writes beside the
//! image shards (one row per caption, with its status and provenance; see docs/formats.md), read by
//! the T5 cache, the demo and the density report.

use polars::prelude::{Column, DataType, ParquetReader, SerReader, StringChunked};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file name ending of a caption shard.
pub const CAPTIONS_SUFFIX: &str = ".captions.parquet";

/// The caption parquet of shard `shard` (e.g. `00000`) in `dir`.
pub fn captions_path(dir: &Path, shard: &str) -> PathBuf {
    dir.join(format!("{shard}{CAPTIONS_SUFFIX}"))
}

/// One row of a caption shard, as its consumers read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaptionEntry {
    /// The sample's key.
    pub key: String,
    /// The caption; `None` where captioning failed.
    pub caption: Option<String>,
    /// `success`, or why there is no caption (the `status` column).
    pub status: String,
}

/// Reads a caption shard's rows in file order; a missing `key`, `caption` or `status` column is an
/// error naming the file and the column.
pub fn read_captions(path: &Path) -> anyhow::Result<Vec<CaptionEntry>> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let df =
        ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("{}: not a parquet file: {e}", path.display()))?;
    let column = |name: &str| -> anyhow::Result<_> {
        let c = df.column(name).map_err(|_| anyhow::anyhow!("{}: no `{name}` column", path.display()))?;
        Ok(c.str().map_err(|e| anyhow::anyhow!("{}: `{name}` column: expected strings: {e}", path.display()))?.clone())
    };
    let (key, cap, status) = (column("key")?, column("caption")?, column("status")?);
    Ok((0..df.height())
        .map(|i| CaptionEntry {
            key: key.get(i).unwrap_or_default().to_string(),
            caption: cap.get(i).map(str::to_string),
            status: status.get(i).unwrap_or_default().to_string(),
        })
        .collect())
}

/// Each key's successful captions in a caption shard, in file order, each with its source:
/// `dense:{prompt_id}:{caption_index}`.
pub fn captions_with_sources(path: &Path) -> anyhow::Result<HashMap<String, Vec<(String, String)>>> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let df =
        ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("{}: not a parquet file: {e}", path.display()))?;
    let column = |name: &str| -> anyhow::Result<Column> {
        df.column(name).cloned().map_err(|_| anyhow::anyhow!("{}: no `{name}` column", path.display()))
    };
    let text = |name: &str| -> anyhow::Result<StringChunked> {
        Ok(column(name)?
            .str()
            .map_err(|e| anyhow::anyhow!("{}: `{name}` column: expected strings: {e}", path.display()))?
            .clone())
    };
    let (key, cap, status, prompt) = (text("key")?, text("caption")?, text("status")?, text("prompt_id")?);
    let index = column("caption_index")?.cast(&DataType::Int64)?;
    let index = index.i64()?;
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for i in 0..df.height() {
        if let (Some(k), Some(c), Some("success")) = (key.get(i), cap.get(i), status.get(i)) {
            let source = format!("dense:{}:{}", prompt.get(i).unwrap_or_default(), index.get(i).unwrap_or_default());
            out.entry(k.to_string()).or_default().push((source, c.to_string()));
        }
    }
    Ok(out)
}

/// Each key's first successful caption in a caption shard.
pub fn first_captions(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for e in read_captions(path)? {
        if let (Some(c), "success") = (e.caption, e.status.as_str()) {
            out.entry(e.key).or_insert(c);
        }
    }
    Ok(out)
}
