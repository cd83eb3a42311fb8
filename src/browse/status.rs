//! `pixforge status DATASET`: what a dataset folder holds, without a parquet reader — its shard
//! folders, rows by status, the top failure reasons each with example keys and messages, the
//! folders made from it, and the shards that cannot be read.

use super::dataset::Dataset;
use serde::Serialize;
use std::collections::BTreeMap;

/// One failure reason of a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    /// The error class (the message up to its first `": "` or `" ("`).
    pub class: String,
    /// Rows with it.
    pub rows: u64,
    /// Examples: (part/shard, key, the whole message).
    pub examples: Vec<(String, String, String)>,
}

/// One shard folder of a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct PartStatus {
    /// Its name.
    pub name: String,
    /// Shards.
    pub shards: usize,
    /// Rows.
    pub rows: usize,
    /// Rows per status.
    pub statuses: BTreeMap<String, u64>,
    /// The caption folder beside it, if any.
    pub captions: Option<String>,
    /// The score folder beside it, if any.
    pub scores: Option<String>,
}

/// What `pixforge status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The dataset as given.
    pub dataset: String,
    /// Rows in all.
    pub rows: usize,
    /// Rows per status.
    pub statuses: BTreeMap<String, u64>,
    /// Its shard folders.
    pub parts: Vec<PartStatus>,
    /// The most frequent failure reasons, most first.
    pub reasons: Vec<Reason>,
    /// Shards that cannot be read: (part/shard, why).
    pub problems: Vec<(String, String)>,
    /// The density report, if any.
    pub density: Option<String>,
}

/// The status of `ds`: the `top` most frequent failure reasons with up to `examples` rows each
/// (read from the first shards that have them).
pub fn status(ds: &Dataset, top: usize, examples: usize) -> Status {
    let several = ds.parts.len() > 1;
    let label = |p: usize, s: usize| {
        let shard = &ds.parts[p].shards[s].name;
        if several {
            format!("{}/{shard}", ds.parts[p].name)
        } else {
            shard.clone()
        }
    };
    let mut reasons: Vec<(String, u64)> = ds.reasons().into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let reasons = reasons
        .into_iter()
        .take(top)
        .map(|(class, rows)| {
            let found = ds
                .examples(&class, examples, &|_| true)
                .into_iter()
                .map(|(r, rows)| (label(r.part, r.shard), rows.keys[r.row].clone(), rows.reason[r.row].clone()))
                .collect();
            Reason { class, rows, examples: found }
        })
        .collect();
    let parts = ds
        .parts
        .iter()
        .map(|p| {
            let mut statuses = BTreeMap::new();
            for s in &p.shards {
                for (k, v) in &s.statuses {
                    *statuses.entry(k.clone()).or_default() += v;
                }
            }
            PartStatus {
                name: p.name.clone(),
                shards: p.shards.len(),
                rows: p.shards.iter().map(|s| s.rows).sum(),
                statuses,
                captions: p.captions.as_ref().map(|d| d.display().to_string()),
                scores: p.scores.as_ref().map(|d| d.display().to_string()),
            }
        })
        .collect();
    let problems =
        ds.problems().into_iter().map(|(p, s, why)| (if several { format!("{p}/{s}") } else { s }, why)).collect();
    Status {
        dataset: ds.name.clone(),
        rows: ds.total_rows(),
        statuses: ds.statuses(),
        parts,
        reasons,
        problems,
        density: ds.density.as_ref().map(|d| d.display().to_string()),
    }
}

impl Status {
    /// The report as a few lines of text.
    pub fn text(&self) -> String {
        let statuses = |m: &BTreeMap<String, u64>, of: usize| {
            let pct = |n: u64| 100.0 * n as f64 / of.max(1) as f64;
            m.iter().map(|(k, v)| format!("{k} {v} ({:.1}%)", pct(*v))).collect::<Vec<_>>().join(", ")
        };
        let shards: usize = self.parts.iter().map(|p| p.shards).sum();
        let mut s = format!("{}: {} rows in {shards} shards\n", self.dataset, self.rows);
        s.push_str(&format!("  {}\n", statuses(&self.statuses, self.rows)));
        if self.parts.len() > 1 {
            for p in &self.parts {
                s.push_str(&format!(
                    "  {:<12} {:>4} shards {:>10} rows: {}\n",
                    p.name,
                    p.shards,
                    p.rows,
                    statuses(&p.statuses, p.rows)
                ));
            }
        }
        for p in &self.parts {
            for (what, dir) in [("captions", &p.captions), ("scores", &p.scores)] {
                if let Some(d) = dir {
                    s.push_str(&format!("  {what}: {d}\n"));
                }
            }
        }
        if let Some(d) = &self.density {
            s.push_str(&format!("  density report: {d}\n"));
        }
        if self.reasons.is_empty() {
            s.push_str("no failures\n");
        } else {
            s.push_str("top failure reasons:\n");
            for r in &self.reasons {
                s.push_str(&format!("  {:>8}  {}\n", r.rows, r.class));
                for (shard, key, msg) in &r.examples {
                    s.push_str(&format!("            {shard} {key}: {msg}\n"));
                }
            }
        }
        for (shard, why) in &self.problems {
            s.push_str(&format!("cannot read shard {shard}: {why}\n"));
        }
        s
    }
}
