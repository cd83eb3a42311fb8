//! The report's numbers for one caption set, computed from its [`Counter`]: the paper's Table 1
//! (VN/DN, total nouns, nouns per image) and the distributions behind the charts.

use super::counts::{CountOptions, Counter, Histogram};
use serde::Serialize;

/// Mean and quantiles of a per-caption quantity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: u64,
    /// 10th percentile.
    pub p10: u64,
    /// 90th percentile.
    pub p90: u64,
    /// Largest value.
    pub max: u64,
}

impl From<&Histogram> for Summary {
    fn from(h: &Histogram) -> Self {
        Self { mean: h.mean(), median: h.quantile(0.5), p10: h.quantile(0.1), p90: h.quantile(0.9), max: h.max }
    }
}

/// T5 token lengths against PixArt-α's 120-token limit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct T5Lengths {
    /// Tokens per caption (with the end-of-sequence token).
    pub tokens: Summary,
    /// The limit (PixArt-α: 120).
    pub max_tokens: u64,
    /// Share of captions longer than the limit (truncated when embedded).
    pub truncated_share: f64,
    /// `histogram[v]` captions had `v` tokens (last bucket: that many or more).
    pub histogram: Vec<u64>,
}

/// A point of the VN/DN-against-threshold curve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Validity {
    /// A noun is valid when seen more than this many times.
    pub threshold: u64,
    /// Valid distinct nouns.
    pub valid: u64,
    /// Valid / distinct.
    pub share: f64,
}

/// Everything the report says about one caption set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// The input's name (`--input NAME=PATH`).
    pub name: String,
    /// The input's path.
    pub path: String,
    /// Captions read.
    pub captions: u64,
    /// Captions with no words.
    pub empty_captions: u64,
    /// Noun occurrences (Table 1 "Total Noun").
    pub total_nouns: u64,
    /// Distinct nouns (DN).
    pub distinct_nouns: u64,
    /// Distinct nouns seen more than `valid_threshold` times (VN).
    pub valid_nouns: u64,
    /// The threshold.
    pub valid_threshold: u64,
    /// VN / DN.
    pub vn_dn: f64,
    /// Nouns per caption (Table 1 "Average" is the mean).
    pub nouns_per_caption: Summary,
    /// Share of noun occurrences that are proper nouns (NNP, NNPS).
    pub proper_noun_share: f64,
    /// Words per caption.
    pub words_per_caption: Summary,
    /// T5 token lengths, when a T5 tokenizer was given.
    pub t5: Option<T5Lengths>,
    /// The most frequent nouns with their counts.
    pub top_nouns: Vec<(String, u64)>,
    /// VN/DN at several thresholds.
    pub validity: Vec<Validity>,
    /// (rank, occurrences) of the noun frequency list at log-spaced ranks.
    pub rank_frequency: Vec<(u64, u64)>,
    /// `nouns_histogram[v]` captions had `v` nouns (last bucket: that many or more).
    pub nouns_histogram: Vec<u64>,
    /// Lines of the input skipped as unreadable (not UTF-8, or too long), with examples.
    pub unreadable: super::input::ReadSummary,
}

/// The histogram's counts up to its 99.5th percentile (at least 10 buckets), the rest folded into
/// the last bucket, so a few outliers do not flatten the chart.
fn trimmed(h: &Histogram) -> Vec<u64> {
    let end = (h.quantile(0.995) as usize + 1).max(10).min(h.counts.len());
    let mut v = h.counts[..end].to_vec();
    let rest: u64 = h.counts[end..].iter().sum();
    *v.last_mut().expect("at least 10 buckets") += rest;
    v
}

/// Thresholds of the validity curve.
pub const THRESHOLDS: [u64; 9] = [0, 1, 2, 5, 10, 20, 50, 100, 1000];

impl Metrics {
    /// Computes the metrics of a counted input.
    pub fn new(name: &str, path: &str, c: &Counter, o: &CountOptions, max_tokens: u64) -> Self {
        let mut freqs: Vec<(&String, u64)> = c.nouns.iter().map(|(k, v)| (k, *v)).collect();
        freqs.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let distinct = freqs.len() as u64;
        let total: u64 = freqs.iter().map(|f| f.1).sum();
        let valid_at = |t: u64| freqs.iter().take_while(|f| f.1 > t).count() as u64;
        let share = |v: u64| if distinct == 0 { 0.0 } else { v as f64 / distinct as f64 };
        let valid = valid_at(o.valid_threshold);
        let mut ranks = Vec::new();
        let mut r = 1u64;
        while r <= distinct {
            ranks.push((r, freqs[r as usize - 1].1));
            r = ((r as f64 * 1.25).ceil() as u64).max(r + 1);
        }
        if distinct > 0 && ranks.last().map(|l| l.0) != Some(distinct) {
            ranks.push((distinct, freqs[distinct as usize - 1].1));
        }
        Metrics {
            name: name.to_string(),
            path: path.to_string(),
            captions: c.captions,
            empty_captions: c.empty,
            total_nouns: total,
            distinct_nouns: distinct,
            valid_nouns: valid,
            valid_threshold: o.valid_threshold,
            vn_dn: share(valid),
            nouns_per_caption: (&c.nouns_per_caption).into(),
            proper_noun_share: if total == 0 { 0.0 } else { c.proper as f64 / total as f64 },
            words_per_caption: (&c.words_per_caption).into(),
            t5: c.t5_tokens.as_ref().map(|h| T5Lengths {
                tokens: h.into(),
                max_tokens,
                truncated_share: h.above(max_tokens) as f64 / h.n().max(1) as f64,
                histogram: trimmed(h),
            }),
            top_nouns: freqs.iter().take(o.top).map(|(k, v)| (k.to_string(), *v)).collect(),
            validity: THRESHOLDS
                .iter()
                .map(|&t| {
                    let v = valid_at(t);
                    Validity { threshold: t, valid: v, share: share(v) }
                })
                .collect(),
            rank_frequency: ranks,
            nouns_histogram: trimmed(&c.nouns_per_caption),
            unreadable: Default::default(),
        }
    }
}
