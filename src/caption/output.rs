//! What the captioning stage writes: the caption rows, the journal of a shard in progress (one JSON
//! row per finished caption, appended as it comes, so a killed run keeps them), and per shard the
//! caption parquet, the index entries and the stats details; and the run summary.

use super::config::CaptionConfig;
use super::prompts::Prompt;
use super::qc;
use crate::shards::stage::{SampleEntry, ShardOutput, StageRunStats};
use crate::shards::WdsReader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file name ending of a shard's journal: the captions finished so far of a shard being captioned.
pub const JOURNAL_SUFFIX: &str = ".captions.journal.jsonl";

/// A caption's place in a shard: key, prompt number, caption number.
pub type Slot = (String, u32, u32);

/// One caption row (a line of the journal and of `{shard}.captions.parquet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRow {
    /// The sample key.
    pub key: String,
    /// Which `--prompt` (from 0).
    pub prompt_index: u32,
    /// Which caption of this image and prompt (from 0).
    pub index: u32,
    /// The caption, when there is one.
    pub caption: Option<String>,
    /// `paper`, `with-alt` or `custom-N` (the one used: `with-alt` on an empty alt-text is `paper`).
    pub prompt_id: String,
    /// The instruction sent.
    pub prompt: String,
    /// The source caption (alt-text), unchanged.
    pub alt: String,
    /// The model folder's name or the served model's name.
    pub model: String,
    /// `candle` or `openai`.
    pub backend: String,
    /// Sampling temperature.
    pub temperature: f64,
    /// The seed of the attempt that gave the caption.
    pub seed: u64,
    /// The token budget.
    pub max_tokens: u32,
    /// Tokens generated (the server's `usage.completion_tokens`).
    pub n_tokens: Option<u32>,
    /// `stop`, `length`, …
    pub finish_reason: Option<String>,
    /// Milliseconds the caption took (the last attempt).
    pub latency_ms: Option<f64>,
    /// QC flags (`empty`, `refusal`, `repetition`, `truncated`, `boilerplate`).
    pub qc_flags: Vec<String>,
    /// `success` or `failed`.
    pub status: String,
    /// Why there is no caption.
    pub error: Option<String>,
    /// Requests or generations made (retries and QC retries included).
    pub attempts: u32,
    /// Whether a rerun should try again (transport errors), rather than keep the failure.
    #[serde(default)]
    pub retryable: bool,
}

/// The journal of a shard in progress.
pub(super) fn journal_path(out: &Path, shard: &str) -> PathBuf {
    out.join(format!("{shard}{JOURNAL_SUFFIX}"))
}

/// The rows a journal holds (a torn last line, from a killed run, is ignored), later lines winning.
pub(super) fn read_journal(path: &Path) -> HashMap<Slot, CaptionRow> {
    let mut rows = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            if let Ok(r) = serde_json::from_str::<CaptionRow>(line) {
                rows.insert((r.key.clone(), r.prompt_index, r.index), r);
            }
        }
    }
    rows
}

/// Removes the journals of shards that are done.
pub(super) fn sweep_journals(dir: &Path) {
    let Ok(done) = crate::shards::done_shards(dir) else { return };
    for s in done {
        let _ = std::fs::remove_file(journal_path(dir, &crate::shards::shard_name(s)));
    }
}

/// The shard's parquet (rows in source order, then prompt, then caption number), its index entries
/// and its stats details; fails the shard when nothing succeeded and a rerun could do better.
pub(super) fn shard_output(
    cfg: &CaptionConfig,
    prompts: &[Prompt],
    reader: &WdsReader,
    mut rows: HashMap<Slot, CaptionRow>,
    out_dir: &Path,
    shard: &str,
) -> anyhow::Result<ShardOutput> {
    let mut ordered = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(reader.samples.len());
    for sample in &reader.samples {
        let mut first_error = None;
        let mut ok = false;
        for pi in 0..prompts.len() as u32 {
            for j in 0..cfg.captions_per_image as u32 {
                if let Some(r) = rows.remove(&(sample.key.clone(), pi, j)) {
                    ok |= r.status == "success";
                    if first_error.is_none() {
                        first_error = r.error.clone();
                    }
                    ordered.push(r);
                }
            }
        }
        entries.push(if ok {
            SampleEntry::success(&sample.key)
        } else {
            SampleEntry::failed(&sample.key, first_error.unwrap_or_else(|| "no caption".into()))
        });
    }
    let successes = ordered.iter().filter(|r| r.status == "success").count();
    if successes == 0 {
        if let Some(r) = ordered.iter().find(|r| r.retryable) {
            anyhow::bail!(
                "no caption in the shard; every request failed, the first with: {} (rerun to retry; finished captions are kept)",
                r.error.clone().unwrap_or_default()
            );
        }
    }
    let mut df = rows_to_frame(&ordered)?;
    crate::shards::write_parquet_atomic(&mut df, &crate::shards::captions::captions_path(out_dir, shard))?;
    let mut qc_counts: std::collections::BTreeMap<&str, usize> = qc::FLAGS.iter().map(|f| (*f, 0)).collect();
    for r in &ordered {
        for f in &r.qc_flags {
            if let Some(c) = qc_counts.get_mut(f.as_str()) {
                *c += 1;
            }
        }
    }
    let tokens: u64 = ordered.iter().filter_map(|r| r.n_tokens).map(u64::from).sum();
    let lat: Vec<f64> = ordered.iter().filter_map(|r| r.latency_ms).collect();
    let details = serde_json::json!({
        "captions": successes,
        "caption_failures": ordered.len() - successes,
        "tokens": tokens,
        "mean_latency_ms": if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
        "mean_words": if successes == 0 { 0.0 } else {
            ordered.iter().filter_map(|r| r.caption.as_ref()).map(|c| c.split_whitespace().count()).sum::<usize>() as f64 / successes as f64
        },
        "qc": qc_counts,
    });
    Ok(ShardOutput { tensors: None, entries, details: Some(details) })
}

/// The parquet frame of caption rows (`qc_flags` comma-separated).
fn rows_to_frame(rows: &[CaptionRow]) -> anyhow::Result<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let s = |f: &dyn Fn(&CaptionRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let o = |f: &dyn Fn(&CaptionRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let columns = vec![
        Column::new("key".into(), s(&|r| r.key.clone())),
        Column::new("caption".into(), o(&|r| r.caption.clone())),
        Column::new("prompt_id".into(), s(&|r| r.prompt_id.clone())),
        Column::new("prompt".into(), s(&|r| r.prompt.clone())),
        Column::new("model".into(), s(&|r| r.model.clone())),
        Column::new("backend".into(), s(&|r| r.backend.clone())),
        Column::new("temperature".into(), rows.iter().map(|r| r.temperature).collect::<Vec<_>>()),
        Column::new("seed".into(), rows.iter().map(|r| r.seed).collect::<Vec<_>>()),
        Column::new("max_tokens".into(), rows.iter().map(|r| r.max_tokens).collect::<Vec<_>>()),
        Column::new("n_tokens".into(), rows.iter().map(|r| r.n_tokens).collect::<Vec<_>>()),
        Column::new("finish_reason".into(), o(&|r| r.finish_reason.clone())),
        Column::new("latency_ms".into(), rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>()),
        Column::new("qc_flags".into(), s(&|r| r.qc_flags.join(","))),
        Column::new("status".into(), s(&|r| r.status.clone())),
        Column::new("error".into(), o(&|r| r.error.clone())),
        Column::new("attempts".into(), rows.iter().map(|r| r.attempts).collect::<Vec<_>>()),
        Column::new("caption_index".into(), rows.iter().map(|r| r.index).collect::<Vec<_>>()),
        Column::new("alt".into(), s(&|r| r.alt.clone())),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// A run's figures and the totals over every caption shard in `out` (a folder or a store prefix;
/// this run's shards and earlier ones).
pub fn summary(out: &Path, run: &StageRunStats) -> anyhow::Result<serde_json::Value> {
    let mut captions = 0u64;
    let mut failures = 0u64;
    let mut tokens = 0u64;
    let mut qc_totals: std::collections::BTreeMap<String, u64> = Default::default();
    for s in crate::shards::done_shards(out)? {
        let name = format!("{}_stats.json", crate::shards::shard_name(s));
        let bytes = crate::store::read_in(out, &name)?.unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", out.join(&name).display()))?;
        let d = &v["details"];
        captions += d["captions"].as_u64().unwrap_or(0);
        failures += d["caption_failures"].as_u64().unwrap_or(0);
        tokens += d["tokens"].as_u64().unwrap_or(0);
        if let Some(q) = d["qc"].as_object() {
            for (k, n) in q {
                *qc_totals.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(serde_json::json!({
        "run": run,
        "captions": captions,
        "caption_failures": failures,
        "tokens": tokens,
        "qc": qc_totals,
        "images_per_second": if run.seconds > 0.0 { run.successes as f64 / run.seconds } else { 0.0 },
    }))
}

/// The caption summary ([`summary`]) as a few lines for the terminal.
pub fn summary_text(out: &Path, run: &StageRunStats, v: &serde_json::Value) -> String {
    let mut s = run.text("caption", out);
    s.push_str(&format!(
        "  in the folder: {} caption(s), {} failure(s), {} tokens; {:.2} images/s this run\n",
        v["captions"].as_u64().unwrap_or(0),
        v["caption_failures"].as_u64().unwrap_or(0),
        v["tokens"].as_u64().unwrap_or(0),
        v["images_per_second"].as_f64().unwrap_or(0.0)
    ));
    if let Some(q) = v["qc"].as_object().filter(|q| !q.is_empty()) {
        let flags: Vec<String> = q.iter().map(|(k, n)| format!("{k} {n}")).collect();
        s.push_str(&format!("  QC flags: {}\n", flags.join(", ")));
    }
    s
}
