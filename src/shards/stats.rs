//! Per-shard and per-run statistics (img2dataset's `_stats.json` fields plus ours).

use super::record::{Record, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The content of `{shard:05d}_stats.json`; its presence marks the shard done.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardStats {
    /// Input rows in the shard.
    pub count: usize,
    /// Rows written to the tar.
    pub successes: usize,
    /// Rows that could not be fetched.
    pub failed_to_download: usize,
    /// Rows fetched but not decodable or refused by an image filter.
    pub failed_to_resize: usize,
    /// Rows refused by a metadata filter before download.
    #[serde(default)]
    pub filtered: usize,
    /// Rows that duplicate an earlier sample.
    #[serde(default)]
    pub duplicate: usize,
    /// Bytes of image data written.
    #[serde(default)]
    pub bytes_written: u64,
    /// Seconds the shard took.
    pub duration: f64,
    /// Unix time the shard started.
    pub start_time: f64,
    /// Unix time the shard ended.
    pub end_time: f64,
    /// How many rows ended with each error message (`success` included).
    pub status_dict: BTreeMap<String, usize>,
    /// Written images without a caption (no alt-text): they train unconditioned unless re-captioned.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub without_caption: usize,
    /// Written images enlarged more than twice their source size on a side (`--image-size` above a
    /// small source): blurry training data.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub upscaled: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Whether a written image is more than twice its source on a side.
fn is_upscaled(r: &Record) -> bool {
    match (r.width, r.height, r.original_width, r.original_height) {
        (Some(w), Some(h), Some(ow), Some(oh)) => w > 2 * ow.max(1) || h > 2 * oh.max(1),
        _ => false,
    }
}

impl ShardStats {
    /// Counts `records` into a stats object.
    pub fn from_records(records: &[Record]) -> Self {
        let mut s = ShardStats { count: records.len(), ..Default::default() };
        for r in records {
            match r.status() {
                Status::Success => {
                    s.successes += 1;
                    s.without_caption += usize::from(r.caption.as_deref().is_none_or(|c| c.trim().is_empty()));
                    s.upscaled += usize::from(is_upscaled(r));
                }
                Status::FailedToDownload => s.failed_to_download += 1,
                Status::FailedToResize => s.failed_to_resize += 1,
                Status::Filtered => s.filtered += 1,
                Status::Duplicate => s.duplicate += 1,
            }
            let reason = match (&r.status(), &r.error_message) {
                (Status::Success, _) => "success".to_string(),
                (_, Some(m)) => reason_class(m),
                (st, None) => st.as_str().to_string(),
            };
            *s.status_dict.entry(reason).or_default() += 1;
        }
        s
    }
}

/// The class of an error message for counting: the text before the first `": "` or `" ("`, where
/// every message puts its row-specific detail (host, key, value).
pub fn reason_class(msg: &str) -> String {
    let end = [msg.find(": "), msg.find(" (")].into_iter().flatten().min().unwrap_or(msg.len());
    msg[..end].chars().take(80).collect()
}

/// Totals over the shards of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunStats {
    /// Shards processed in this run.
    pub shards_done: usize,
    /// Shards skipped because they were already done.
    pub shards_skipped: usize,
    /// Totals over processed shards.
    pub total: ShardStats,
    /// Each processed shard's stats, by shard id.
    pub shards: Vec<(usize, ShardStats)>,
    /// Shards that could not be written, with the reason (left without a stats file: the next run
    /// retries them).
    #[serde(default)]
    pub shards_failed: Vec<(String, String)>,
    /// Transient object-store failures (5xx, throttling, broken connections) met and retried.
    #[serde(default)]
    pub store_retries: u64,
}

impl RunStats {
    /// Adds the stats of shard `shard`.
    pub fn add(&mut self, shard: usize, s: &ShardStats) {
        self.shards_done += 1;
        self.shards.push((shard, s.clone()));
        let t = &mut self.total;
        t.count += s.count;
        t.successes += s.successes;
        t.failed_to_download += s.failed_to_download;
        t.failed_to_resize += s.failed_to_resize;
        t.filtered += s.filtered;
        t.duplicate += s.duplicate;
        t.bytes_written += s.bytes_written;
        t.without_caption += s.without_caption;
        t.upscaled += s.upscaled;
        t.duration += s.duration;
        for (k, v) in &s.status_dict {
            *t.status_dict.entry(k.clone()).or_default() += v;
        }
    }
}
