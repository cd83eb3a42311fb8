//! `pixforge dedup`: semantic de-duplication over CLIP embeddings, as NeMo Curator's SemDeDup does
//! it: spherical k-means over the L2-normalised embeddings, then within each cluster, members taken
//! in order of preference keep their place and remove every later member whose cosine similarity
//! to them reaches the threshold. The kept keys are written as a selection (parquet with `key` and
//! `cluster`), and every near-duplicate group as a JSON report.

use crate::rng::Rng;
use crate::shards::stage::StageReader;
use candle_core::Device;
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The de-duplication stage's configuration (the `pixforge dedup` flags and a pipeline's `[dedup]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// k-means clusters (0: one per 50 embeddings).
    #[arg(long, default_value_t = 0)]
    pub clusters: usize,
    /// Cosine similarity at and above which two images are near-duplicates (SemDeDup's 1 − ε; it
    /// depends on the tower: ~0.95 for CLIP ViT-L/14).
    #[arg(long, default_value_t = 0.95)]
    pub threshold: f64,
    /// k-means (Lloyd) iterations.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Seed of the k-means++ initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the member with the highest value of this score column (from the `*.scores.parquet`
    /// beside the embeddings; default: the smallest key).
    #[arg(long)]
    pub prefer: Option<String>,
}

impl Default for DedupConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// One group of near-duplicates.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicateGroup {
    /// The member kept.
    pub kept: String,
    /// The members removed, with their similarity to the kept one.
    pub removed: Vec<(String, f64)>,
}

/// What de-duplication did.
#[derive(Debug, Clone, Serialize)]
pub struct DedupReport {
    /// Embeddings read.
    pub input: usize,
    /// Clusters used.
    pub clusters: usize,
    /// Samples kept.
    pub kept: usize,
    /// Samples removed as near-duplicates.
    pub removed: usize,
    /// The groups with at least one removal.
    pub groups: Vec<DuplicateGroup>,
    /// The selection file.
    pub out: PathBuf,
}

impl DedupReport {
    /// One line of counts, and the paths of the selection and the groups.
    pub fn text(&self) -> String {
        format!(
            "{} embeddings, {} clusters: kept {}, removed {} near-duplicates in {} groups\nselection: {}\ngroups: {}\n",
            self.input,
            self.clusters,
            self.kept,
            self.removed,
            self.groups.len(),
            self.out.display(),
            self.out.with_extension("groups.json").display()
        )
    }
}

/// Every embedding of the score caches in `dirs`: keys and unit rows.
fn read_embeddings(dirs: &[PathBuf]) -> anyhow::Result<(Vec<String>, Vec<Vec<f32>>)> {
    let (mut keys, mut rows) = (Vec::new(), Vec::new());
    for dir in dirs {
        let cache = StageReader::open_unchecked(dir)?;
        if cache.fingerprint.kind != "clip" {
            anyhow::bail!(
                "--embeddings {}: a `{}` cache, expected `pixforge score clip` output",
                dir.display(),
                cache.fingerprint.kind
            );
        }
        for name in &cache.shards {
            let shard = cache.shard(name)?;
            let emb: Vec<Vec<f32>> = match shard.tensor("embeddings", &Device::Cpu) {
                Ok(t) if t.dim(0)? > 0 => t.to_vec2()?,
                _ => continue,
            };
            for e in &shard.entries {
                if let Some(r) = e.row {
                    let v = &emb[r];
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    keys.push(e.key.clone());
                    rows.push(v.iter().map(|x| x / n).collect());
                }
            }
        }
    }
    if keys.is_empty() {
        anyhow::bail!("--embeddings {dirs:?}: no embeddings");
    }
    Ok((keys, rows))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

/// Spherical k-means: k-means++ seeding (cosine distance), then `iterations` Lloyd steps with
/// re-normalised means. Returns each row's cluster.
fn kmeans(rows: &[Vec<f32>], k: usize, iterations: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut centroids: Vec<Vec<f32>> = vec![rows[(rng.uniform() * rows.len() as f64) as usize % rows.len()].clone()];
    while centroids.len() < k {
        let d: Vec<f64> =
            rows.iter().map(|r| centroids.iter().map(|c| 1.0 - dot(r, c)).fold(f64::MAX, f64::min).max(0.0)).collect();
        let total: f64 = d.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut t = rng.uniform() * total;
        let pick = d.iter().position(|&x| {
            t -= x;
            t <= 0.0
        });
        centroids.push(rows[pick.unwrap_or(rows.len() - 1)].clone());
    }
    let assign = |centroids: &[Vec<f32>]| -> Vec<usize> {
        rows.iter()
            .map(|r| {
                (0..centroids.len())
                    .max_by(|&a, &b| dot(r, &centroids[a]).total_cmp(&dot(r, &centroids[b])))
                    .unwrap_or(0)
            })
            .collect()
    };
    let mut labels = assign(&centroids);
    for _ in 0..iterations {
        for (c, centroid) in centroids.iter_mut().enumerate() {
            let mut sum = vec![0f64; centroid.len()];
            for (r, _) in rows.iter().zip(&labels).filter(|(_, &l)| l == c) {
                for (s, x) in sum.iter_mut().zip(r) {
                    *s += *x as f64;
                }
            }
            let n = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
            if n > 0.0 {
                *centroid = sum.iter().map(|x| (x / n) as f32).collect();
            }
        }
        let next = assign(&centroids);
        if next == labels {
            break;
        }
        labels = next;
    }
    labels
}

/// De-duplicates the embeddings of `dirs` and writes the kept keys to `out` (and the groups to
/// `out` with the extension `.groups.json`).
pub fn run(dirs: &[PathBuf], cfg: &DedupConfig, out: &Path) -> anyhow::Result<DedupReport> {
    run_within(dirs, cfg, None, out)
}

/// [`run`] over the embeddings whose keys are in `within` only (all of them when `None`): a
/// pipeline de-duplicates what an earlier selection kept.
pub fn run_within(
    dirs: &[PathBuf],
    cfg: &DedupConfig,
    within: Option<&std::collections::HashSet<String>>,
    out: &Path,
) -> anyhow::Result<DedupReport> {
    if !(0.0..=1.0).contains(&cfg.threshold) {
        anyhow::bail!("--threshold {}: expected a cosine similarity in [0, 1]", cfg.threshold);
    }
    let (mut keys, mut rows) = read_embeddings(dirs)?;
    if let Some(within) = within {
        let keep: Vec<bool> = keys.iter().map(|k| within.contains(k)).collect();
        let mut flags = keep.iter();
        keys.retain(|_| *flags.next().expect("one flag per key"));
        let mut flags = keep.iter();
        rows.retain(|_| *flags.next().expect("one flag per row"));
    }
    if rows.is_empty() {
        anyhow::bail!("no embeddings to de-duplicate in {dirs:?}");
    }
    let prefer: Option<Vec<f64>> = match &cfg.prefer {
        Some(col) => {
            let (columns, scores) = super::filter::read_scores(dirs)?;
            if !columns.contains(col) {
                anyhow::bail!("--prefer {col}: no such score column (columns: {columns:?})");
            }
            Some(keys.iter().map(|k| scores.get(k).and_then(|s| s.get(col)).copied().unwrap_or(f64::MIN)).collect())
        }
        None => None,
    };
    let k = if cfg.clusters == 0 { rows.len().div_ceil(50) } else { cfg.clusters }.clamp(1, rows.len());
    let labels = kmeans(&rows, k, cfg.iterations, cfg.seed);
    let mut removed_by: Vec<Option<(usize, f64)>> = vec![None; rows.len()];
    for c in 0..k {
        let mut members: Vec<usize> = (0..rows.len()).filter(|&i| labels[i] == c).collect();
        members.sort_by(|&a, &b| match &prefer {
            Some(p) => p[b].total_cmp(&p[a]).then(keys[a].cmp(&keys[b])),
            None => keys[a].cmp(&keys[b]),
        });
        for (pos, &i) in members.iter().enumerate() {
            if removed_by[i].is_some() {
                continue;
            }
            for &j in &members[pos + 1..] {
                if removed_by[j].is_none() {
                    let s = dot(&rows[i], &rows[j]);
                    if s >= cfg.threshold {
                        removed_by[j] = Some((i, s));
                    }
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<(String, f64)>> = Default::default();
    for (j, r) in removed_by.iter().enumerate() {
        if let Some((i, s)) = r {
            groups.entry(*i).or_default().push((keys[j].clone(), *s));
        }
    }
    let kept: Vec<usize> = (0..rows.len()).filter(|&i| removed_by[i].is_none()).collect();
    let mut df = DataFrame::new(
        kept.len(),
        vec![
            Column::new("key".into(), kept.iter().map(|&i| keys[i].as_str()).collect::<Vec<_>>()),
            Column::new("cluster".into(), kept.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>()),
        ],
    )?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    crate::shards::write_parquet_atomic(&mut df, out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let report = DedupReport {
        input: rows.len(),
        clusters: k,
        kept: kept.len(),
        removed: rows.len() - kept.len(),
        groups: groups.into_iter().map(|(i, removed)| DuplicateGroup { kept: keys[i].clone(), removed }).collect(),
        out: out.to_path_buf(),
    };
    crate::shards::write_atomic(&out.with_extension("groups.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}
