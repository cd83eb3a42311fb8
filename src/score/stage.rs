//! `pixforge score clip`: CLIP image embeddings of every image of a shard dataset from an ONNX tower,
//! and the scores of heads over them, per shard: `{shard}.safetensors` (`embeddings` `[n, D]` f16, one
//! row per embedded sample), `{shard}.index.json` (every sample with its row, or why it has none),
//! `{shard}.scores.parquet` (`key` plus one f32 column per head, null where no embedding) and
//! `{shard}_stats.json` last. The shard loop, manifest fingerprint, resume and `--worker` split are the
//! feature caches' ([`crate::latents::cache`]).

use super::aesthetic::Head;
use super::clip::{ClipPreprocess, ClipTower};
use crate::latents::cache::{CacheEntry, CacheFingerprint, CacheRunStats, FileHash, RunOptions, ShardOutput};
use candle_core::{DType, Device, Tensor};
use polars::prelude::{Column, DataFrame};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// Image members tried, in order.
const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];
/// Decoded images larger than this are refused (PIL's default bomb limit).
const MAX_PIXELS: u64 = 178_956_970;

/// The scoring stage's configuration (CLI flags and pipeline TOML).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// The CLIP vision tower as ONNX (`[N, 3, S, S]` pixels in, `[N, D]` embeddings out).
    #[arg(long)]
    pub tower: PathBuf,
    /// Score heads over the embeddings: LAION aesthetic checkpoints (`.pth`) or `.onnx` heads; each
    /// becomes a column named after its file.
    #[arg(long = "head")]
    #[serde(default)]
    pub heads: Vec<PathBuf>,
    /// Shortest side after resizing (OpenAI CLIP: 224).
    #[arg(long, default_value_t = 224)]
    #[serde(default = "default_side")]
    pub size: u32,
    /// Center-crop side (OpenAI CLIP: 224).
    #[arg(long, default_value_t = 224)]
    #[serde(default = "default_side")]
    pub crop: u32,
    /// Per-channel mean, comma-separated (OpenAI CLIP's by default).
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = ClipPreprocess::default().mean)]
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Per-channel std, comma-separated (OpenAI CLIP's by default).
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = ClipPreprocess::default().std)]
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
    /// Images per tower call.
    #[arg(long, default_value_t = 32)]
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_side() -> u32 {
    224
}
fn default_mean() -> Vec<f32> {
    ClipPreprocess::default().mean.to_vec()
}
fn default_std() -> Vec<f32> {
    ClipPreprocess::default().std.to_vec()
}
fn default_batch() -> usize {
    32
}

impl ScoreConfig {
    /// The preprocessing, checking the channel lists.
    pub fn preprocess(&self) -> anyhow::Result<ClipPreprocess> {
        let three = |v: &[f32], name: &str| -> anyhow::Result<[f32; 3]> {
            <[f32; 3]>::try_from(v).map_err(|_| anyhow::anyhow!("--{name}: expected 3 values, found {}", v.len()))
        };
        Ok(ClipPreprocess {
            size: self.size,
            crop: self.crop,
            mean: three(&self.mean, "mean")?,
            std: three(&self.std, "std")?,
        })
    }

    /// The column name of each head: its file stem.
    pub fn head_names(&self) -> Vec<String> {
        self.heads.iter().map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()).collect()
    }

    /// What the scores depend on: the tower's and heads' bytes, the preprocessing.
    pub fn fingerprint(&self) -> anyhow::Result<CacheFingerprint> {
        let files = std::iter::once(&self.tower)
            .chain(&self.heads)
            .map(|p| {
                let bytes = std::fs::metadata(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?.len();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(FileHash { name, bytes, sha256: crate::latents::cache::sha256_file(p)? })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CacheFingerprint {
            kind: "clip".into(),
            model_config: serde_json::json!({ "tower": self.tower.file_name().map(|n| n.to_string_lossy().into_owned()), "heads": self.head_names() }),
            files,
            preprocessing: serde_json::to_value(self.preprocess()?)?,
            sources: Default::default(),
        })
    }
}

/// Embeds and scores the images of `opts.input` into `opts.out`.
pub fn run(cfg: &ScoreConfig, opts: &RunOptions) -> anyhow::Result<CacheRunStats> {
    let pre = cfg.preprocess()?;
    let fingerprint = cfg.fingerprint()?;
    let mut tower = ClipTower::load(&cfg.tower, pre.clone(), 0)?;
    let mut heads = cfg.heads.iter().map(|p| Head::load(p, &Device::Cpu)).collect::<anyhow::Result<Vec<_>>>()?;
    let names = cfg.head_names();
    let out_dir = opts.out.clone();
    crate::latents::cache::run_shards("score-clip", fingerprint, opts, |shard, reader, _| {
        let mut entries = Vec::with_capacity(reader.samples.len());
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for chunk in reader.samples.chunks(cfg.batch_size.max(1)) {
            let prepared: Vec<Result<Vec<f32>, String>> = chunk
                .par_iter()
                .map(|sample| {
                    let ext = IMAGE_EXTS.iter().find(|e| sample.members.contains_key(**e)).ok_or_else(|| {
                        format!("no image: the sample has none of the members {}", IMAGE_EXTS.join(", "))
                    })?;
                    let bytes = reader
                        .read(sample, ext)
                        .map_err(|e| format!("cannot read the .{ext} member: {e}"))?
                        .ok_or_else(|| format!("no .{ext} member"))?;
                    let (img, _, _) = crate::ingest::imageops::decode_rgb(&bytes, MAX_PIXELS)
                        .map_err(|e| format!("cannot decode the image: {e}"))?;
                    pre.pixels(&img).map_err(|e| format!("{e:#}"))
                })
                .collect();
            let mut pixels = Vec::new();
            let mut n = 0;
            for (sample, p) in chunk.iter().zip(prepared) {
                match p {
                    Ok(p) => {
                        let mut e = CacheEntry::success(&sample.key);
                        e.row = Some(rows.len() + n);
                        entries.push(e);
                        pixels.extend(p);
                        n += 1;
                    }
                    Err(reason) => entries.push(CacheEntry::failed(&sample.key, reason)),
                }
            }
            if n > 0 {
                rows.extend(tower.embed_pixels(pixels, n)?);
            }
        }
        let d = rows.first().map_or(0, Vec::len);
        let emb = Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu)?;
        let mut columns = vec![Column::new("key".into(), entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>())];
        for (head, name) in heads.iter_mut().zip(&names) {
            let scores = if rows.is_empty() { Vec::new() } else { head.score(&emb)? };
            let col: Vec<Option<f32>> = entries.iter().map(|e| e.row.map(|r| scores[r])).collect();
            columns.push(Column::new(name.as_str().into(), col));
        }
        let mut df = DataFrame::new(entries.len(), columns)?;
        crate::shards::write_parquet_atomic(&mut df, &out_dir.join(format!("{shard}.scores.parquet")))?;
        let mut tensors = HashMap::new();
        tensors.insert("embeddings".to_string(), emb.to_dtype(DType::F16)?);
        Ok(ShardOutput { tensors, entries })
    })
}
