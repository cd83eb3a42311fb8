//! What the grid shows: filters and a sort over a dataset's rows, and the page of them asked for.
//! With no filter and no sort a page is found from the shards' row counts alone and reads only its
//! own shards; otherwise the shards in scope are read (once, then cached) and scanned.

use super::dataset::{Dataset, RowRef};
use super::rows::ShardRows;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Filters, sort and page of the grid (the grid page's query string, and `browse --static`'s flags).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Query {
    /// Only rows with this status (`success`, `failed_to_download`, `failed_to_resize`, `filtered`,
    /// `duplicate`).
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub status: Option<String>,
    /// Only rows whose error class (the message up to its first `": "` or `" ("`) is this.
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub reason: Option<String>,
    /// Only rows whose dense captions carry this QC flag (`mismatch`, `repetition`, …).
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub qc: Option<String>,
    /// Only rows whose alt-text or dense captions use this noun (as the density tagger finds nouns:
    /// `dogs` matches `dog`).
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub noun: Option<String>,
    /// Only this shard: `NNNNN`, or `PART/NNNNN` in a dataset of several shard folders.
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub shard: Option<String>,
    /// Sort by this numeric column (a score, `width`, a source's column); rows without it last.
    #[arg(long)]
    #[serde(default, deserialize_with = "empty_is_none")]
    pub sort: Option<String>,
    /// Smallest first (the default is largest first).
    #[arg(long)]
    #[serde(default, deserialize_with = "flag")]
    pub ascending: bool,
    /// The page (1-based).
    #[arg(skip)]
    #[serde(default)]
    pub page: Option<usize>,
}

fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(matches!(s.as_deref(), Some("1" | "true" | "on" | "yes")))
}

impl Query {
    /// Whether any filter or sort is set (a page then needs a scan).
    pub fn scans(&self) -> bool {
        self.status.is_some()
            || self.reason.is_some()
            || self.qc.is_some()
            || self.noun.is_some()
            || self.sort.is_some()
    }

    /// The query string of this query at `page` (for links).
    pub fn to_query_string(&self, page: Option<usize>) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
        };
        add("status", &self.status);
        add("reason", &self.reason);
        add("qc", &self.qc);
        add("noun", &self.noun);
        add("shard", &self.shard);
        add("sort", &self.sort);
        if self.ascending {
            parts.push("ascending=1".into());
        }
        if let Some(p) = page.filter(|&p| p > 1) {
            parts.push(format!("page={p}"));
        }
        parts.join("&")
    }
}

/// One page of the grid.
pub struct Page {
    /// Its rows.
    pub rows: Vec<RowRef>,
    /// Rows matching the query (all pages).
    pub total: usize,
    /// This page (1-based) and the number of pages.
    pub page: usize,
    /// Pages in all.
    pub pages: usize,
    /// Why the query is not what was asked (an unknown shard), or nothing.
    pub note: Option<String>,
}

/// The shards a query looks at: (part, shard) pairs, or a note when `--shard` names none.
fn scope(ds: &Dataset, q: &Query) -> (Vec<(usize, usize)>, Option<String>) {
    let all: Vec<(usize, usize)> =
        ds.parts.iter().enumerate().flat_map(|(pi, p)| (0..p.shards.len()).map(move |si| (pi, si))).collect();
    let Some(want) = &q.shard else { return (all, None) };
    let (part, shard) = match want.rsplit_once('/') {
        Some((p, s)) => (Some(p), s),
        None => (None, want.as_str()),
    };
    let hits: Vec<_> = all
        .into_iter()
        .filter(|&(pi, si)| ds.parts[pi].shards[si].name == shard && part.is_none_or(|p| ds.parts[pi].name == p))
        .collect();
    let note = hits.is_empty().then(|| format!("no shard {want} in this dataset"));
    (hits, note)
}

/// The page `q.page` of `page_size` rows.
pub fn page(ds: &Dataset, q: &Query, page_size: usize) -> Page {
    let page_size = page_size.max(1);
    let page = q.page.unwrap_or(1).max(1);
    let (shards, note) = scope(ds, q);
    if !q.scans() {
        let total: usize = shards.iter().map(|&(p, s)| ds.parts[p].shards[s].rows).sum();
        let (start, end) = ((page - 1) * page_size, (page * page_size).min(total));
        let mut rows = Vec::new();
        let mut offset = 0;
        for &(p, s) in &shards {
            let n = ds.parts[p].shards[s].rows;
            if offset + n > start && offset < end {
                let from = start.saturating_sub(offset);
                let to = (end - offset).min(n);
                // The stats count the rows; an unreadable parquet is named on the page instead.
                if let Ok(r) = ds.rows(p, s) {
                    rows.extend((from..to.min(r.len())).map(|row| RowRef { part: p, shard: s, row }));
                }
            }
            offset += n;
            if offset >= end {
                break;
            }
        }
        return Page { rows, total, page, pages: total.div_ceil(page_size).max(1), note };
    }
    // Shards are read and scanned in parallel, then their hits joined in dataset order.
    let noun = q.noun.as_deref().map(noun_key);
    let mut hits: Vec<(RowRef, Option<f64>)> = shards
        .par_iter()
        .flat_map_iter(|&(p, s)| {
            let rows = ds.rows(p, s).ok();
            let rows2 = rows.clone();
            let sort = q.sort.clone();
            let noun = noun.clone();
            (0..rows.as_ref().map_or(0, |r| r.len())).filter_map(move |row| {
                let r = rows2.as_ref()?;
                if !matches(r, row, q, noun.as_deref()) {
                    return None;
                }
                let v = sort.as_deref().and_then(|c| r.number(c)).and_then(|c| c[row]);
                Some((RowRef { part: p, shard: s, row }, v))
            })
        })
        .collect();
    if q.sort.is_some() {
        // Rows without the column last; ties in dataset order.
        hits.par_sort_unstable_by(|(ra, a), (rb, b)| match (a, b) {
            (Some(a), Some(b)) => {
                let o = a.total_cmp(b);
                (if q.ascending { o } else { o.reverse() }).then(ra.cmp(rb))
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => ra.cmp(rb),
        });
    }
    let total = hits.len();
    let rows = hits.into_iter().skip((page - 1) * page_size).take(page_size).map(|(r, _)| r).collect();
    Page { rows, total, page, pages: total.div_ceil(page_size).max(1), note }
}

fn matches(r: &ShardRows, row: usize, q: &Query, noun: Option<&str>) -> bool {
    if q.status.as_ref().is_some_and(|s| &r.status[row] != s) {
        return false;
    }
    if let Some(want) = &q.reason {
        if &r.class(row) != want {
            return false;
        }
    }
    if q.qc.as_ref().is_some_and(|f| !r.qc[row].split(',').any(|x| x == f)) {
        return false;
    }
    if let Some(n) = noun {
        if !r.nouns().has(row, n) {
            return false;
        }
    }
    true
}

/// The form a noun is counted under (lower case, singular): `Galaxies` → `galaxy`.
pub fn noun_key(word: &str) -> String {
    crate::density::wordnet::WordNet::embedded().singular(&word.trim().to_lowercase())
}
