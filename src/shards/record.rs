//! One row of a shard parquet: the outcome of one input row.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What happened to an input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Written to the shard tar.
    Success,
    /// Could not be fetched (network, HTTP status, opt-out headers, unreadable file).
    FailedToDownload,
    /// Fetched but could not be decoded, was too large, or failed an image filter.
    FailedToResize,
    /// Refused by a metadata filter before any download.
    Filtered,
    /// An exact or perceptual duplicate of an earlier sample.
    Duplicate,
}

impl Status {
    /// The name stored in the `status` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FailedToDownload => "failed_to_download",
            Status::FailedToResize => "failed_to_resize",
            Status::Filtered => "filtered",
            Status::Duplicate => "duplicate",
        }
    }

    /// Parses a `status` column value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Status::Success,
            "failed_to_download" => Status::FailedToDownload,
            "failed_to_resize" => Status::FailedToResize,
            "filtered" => Status::Filtered,
            "duplicate" => Status::Duplicate,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scalar value of an extra column (source-specific statistics such as SA-1B mask counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Missing.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

/// The outcome of one input row, as stored in the shard parquet and the per-sample `.json`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// Sample key (img2dataset's `key`).
    pub key: String,
    /// Outcome.
    pub status: Option<Status>,
    /// Why the row did not succeed (empty on success).
    pub error_message: Option<String>,
    /// Where the image came from: a URL, a file path, or `tar_path:member`.
    pub source: String,
    /// The row's caption (alt text), if any.
    pub caption: Option<String>,
    /// Width of the written image.
    pub width: Option<u32>,
    /// Height of the written image.
    pub height: Option<u32>,
    /// Width of the source image.
    pub original_width: Option<u32>,
    /// Height of the source image.
    pub original_height: Option<u32>,
    /// Hex sha256 of the written image bytes.
    pub sha256: Option<String>,
    /// Hex 64-bit perceptual hash (DCT pHash) of the written image.
    pub phash: Option<String>,
    /// Extension of the written image member (`jpg`, `png`, `webp`).
    pub ext: Option<String>,
    /// Source-specific columns computed while processing (e.g. SA-1B mask statistics).
    pub extra: Vec<(String, Value)>,
}

impl Record {
    /// A new record for `key` read from `source`.
    pub fn new(key: String, source: String, caption: Option<String>) -> Self {
        Self { key, source, caption, ..Default::default() }
    }

    /// Marks the record failed with `status` and `message`.
    pub fn fail(&mut self, status: Status, message: impl Into<String>) {
        self.status = Some(status);
        self.error_message = Some(message.into());
    }

    /// The record's status, `failed_to_download` if none was set.
    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::FailedToDownload)
    }

    /// The per-sample metadata JSON written as `{key}.json` (img2dataset's fields plus extras).
    pub fn to_json(&self, source_col: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(source_col.into(), self.source.clone().into());
        m.insert("caption".into(), self.caption.clone().into());
        m.insert("key".into(), self.key.clone().into());
        m.insert("status".into(), self.status().as_str().into());
        m.insert("error_message".into(), self.error_message.clone().into());
        m.insert("width".into(), self.width.into());
        m.insert("height".into(), self.height.into());
        m.insert("original_width".into(), self.original_width.into());
        m.insert("original_height".into(), self.original_height.into());
        m.insert("sha256".into(), self.sha256.clone().into());
        m.insert("phash".into(), self.phash.clone().into());
        for (k, v) in &self.extra {
            m.insert(k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null));
        }
        serde_json::Value::Object(m)
    }
}
