//! `pixforge score clip`: CLIP image embeddings of every image of a shard dataset from an ONNX tower,
//! and the scores of heads over them, per shard: `{shard}.safetensors` (`embeddings` `[n, D]` f16, one
//! row per embedded sample), `{shard}.index.json` (every sample with its row, or why it has none),
//! `{shard}.scores.parquet` (`key` plus one f32 column per head, null where no embedding) and
//! `{shard}_stats.json` last. The shard loop, manifest fingerprint, resume and `--worker` split are the
//! feature caches' ([`crate::latents::cache`]).

use super::aesthetic::Head;
use super::clip::{ClipPreprocess, ClipTower, PixelHead};
use crate::shards::stage::Stage;
use crate::shards::stage::{FileHash, SampleEntry, ShardOutput, StageFingerprint, StageOptions, StageRunStats};
use candle_core::{DType, Device, Tensor};
use polars::prelude::{Column, DataFrame, SerReader};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// The file name endings of a score shard besides its `_stats.json`.
const SCORE_OUTPUTS: [&str; 2] = [".safetensors", ".scores.parquet"];

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
    /// Score heads on the images' pixels (ONNX, with their preprocessing in `{stem}.json` beside them:
    /// size, crop, mean, std); each becomes a column named after its file.
    #[arg(long = "pixel-head")]
    #[serde(default)]
    pub pixel_heads: Vec<PathBuf>,
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
    /// A CLIP text tower as ONNX (`input_ids` and `attention_mask` in, `[N, D]` embeddings out, the
    /// image tower's D): each sample's alt-text (its `.txt`) is embedded and its cosine with the
    /// image embedding goes into the `clip_sim_alt` column (null without alt-text).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_tower: Option<PathBuf>,
    /// The text tower's CLIP `tokenizer.json` (default: `tokenizer.json` beside the tower).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_tokenizer: Option<PathBuf>,
    /// The text tower's context in tokens: its input length (77 for CLIP, 248 for Long-CLIP).
    #[arg(long, default_value_t = super::clip_text::CLIP_TOKENS)]
    #[serde(default = "clip_tokens", skip_serializing_if = "is_clip_tokens")]
    pub text_max_tokens: usize,
    /// A text longer than the context: `truncate` (cut, as CLIP does) or `chunks` (windows of the
    /// context embedded and their normalised embeddings averaged).
    #[arg(long, value_enum, default_value_t = super::clip_text::LongText::Truncate)]
    #[serde(default, skip_serializing_if = "is_truncate")]
    pub text_long: super::clip_text::LongText,
    /// A caption folder (`pixforge caption`'s): every dense caption of a sample is embedded too, its
    /// cosine with the image written per caption to `{shard}.caption_scores.parquet` (key, source,
    /// similarity, mismatch) and the lowest into the `clip_sim_dense_min` column (needs --text-tower).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions: Option<PathBuf>,
    /// A dense caption whose cosine with its image is below this is flagged `mismatch`, and the
    /// sample's `clip_mismatch` column is true (with --captions).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_below: Option<f32>,
}

fn clip_tokens() -> usize {
    super::clip_text::CLIP_TOKENS
}

fn is_clip_tokens(n: &usize) -> bool {
    *n == super::clip_text::CLIP_TOKENS
}

fn is_truncate(l: &super::clip_text::LongText) -> bool {
    *l == super::clip_text::LongText::Truncate
}

/// The tensor of alt-text embeddings (`[n, D]` f16, row for row with `embeddings`; zeros without
/// alt-text), with `--text-tower`.
pub const ALT_EMBEDDINGS: &str = "alt_embeddings";
/// The tensor of dense-caption embeddings (`[m, D]` f16, row for row with the shard's
/// `caption_scores.parquet`), with `--captions`.
pub const CAPTION_EMBEDDINGS: &str = "caption_embeddings";

/// The embedding width of a shard's image embeddings tensor.
fn tower_width(tensors: &HashMap<String, Tensor>) -> usize {
    tensors.get("embeddings").and_then(|t| t.dims().get(1).copied()).unwrap_or(0)
}

/// The score column of the lowest image–dense-caption agreement of a sample.
pub const DENSE_SIMILARITY_MIN: &str = "clip_sim_dense_min";
/// The score column saying a sample has a dense caption below `--mismatch-below`.
pub const MISMATCH: &str = "clip_mismatch";
/// The per-caption agreement file of a shard (with `--captions`).
const CAPTION_SCORES: &str = ".caption_scores.parquet";

/// The score column of the image–alt-text agreement.
pub const ALT_SIMILARITY: &str = "clip_sim_alt";

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

    /// The column name of each head (embedding heads, then pixel heads): its file stem.
    pub fn head_names(&self) -> Vec<String> {
        self.heads
            .iter()
            .chain(&self.pixel_heads)
            .map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
            .collect()
    }

    /// The text tower's tokenizer file, when there is a text tower.
    pub fn text_tokenizer(&self) -> Option<PathBuf> {
        let tower = self.text_tower.as_ref()?;
        Some(self.text_tokenizer.clone().unwrap_or_else(|| tower.with_file_name("tokenizer.json")))
    }

    /// What the scores depend on: the towers', tokenizer's and heads' bytes, the preprocessing.
    pub fn fingerprint(&self) -> anyhow::Result<StageFingerprint> {
        let sidecars: Vec<PathBuf> =
            self.pixel_heads.iter().map(|p| p.with_extension("json")).filter(|p| p.exists()).collect();
        let text: Vec<PathBuf> = self.text_tower.iter().cloned().chain(self.text_tokenizer()).collect();
        let files = std::iter::once(&self.tower)
            .chain(&self.heads)
            .chain(&self.pixel_heads)
            .chain(&sidecars)
            .chain(&text)
            .map(|p| FileHash::of(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut model_config = serde_json::json!({ "tower": self.tower.file_name().map(|n| n.to_string_lossy().into_owned()), "heads": self.head_names() });
        if self.captions.is_some() {
            model_config["dense_captions"] = serde_json::json!({ "mismatch_below": self.mismatch_below });
        }
        Ok(StageFingerprint {
            kind: "clip".into(),
            model_config,
            files,
            preprocessing: serde_json::to_value(self.preprocess()?)?,
            sources: Default::default(),
            made_from: Default::default(),
        })
    }
}

/// One image ready for the tower (and, when there are pixel heads, the decoded image for them).
type Prepared = (Vec<f32>, Option<image::RgbImage>);

/// Embeds and scores the images of `opts.input` into `opts.out` (the tower on CUDA device `cuda`
/// when given).
pub fn run(cfg: &ScoreConfig, opts: &StageOptions, cuda: Option<i32>) -> anyhow::Result<StageRunStats> {
    let pre = cfg.preprocess()?;
    let fingerprint = cfg.fingerprint()?;
    let mut tower = ClipTower::load_on(&cfg.tower, pre.clone(), 0, cuda)?;
    let mut heads = cfg.heads.iter().map(|p| Head::load(p, &Device::Cpu)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut pixel_heads =
        cfg.pixel_heads.iter().map(|p| PixelHead::load(p, &pre, cuda)).collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<String> = cfg.head_names().into_iter().take(cfg.heads.len()).collect();
    if cfg.captions.is_some() && cfg.text_tower.is_none() {
        anyhow::bail!("--captions: the dense captions are embedded by a text tower; give --text-tower");
    }
    let mut opts = opts.clone();
    opts.depends_on.extend(cfg.captions.iter().cloned());
    let opts = &opts;
    let outputs: &[&str] =
        if cfg.captions.is_some() { &[".safetensors", ".scores.parquet", CAPTION_SCORES] } else { &SCORE_OUTPUTS };
    let mut text_tower = match (&cfg.text_tower, cfg.text_tokenizer()) {
        (Some(t), Some(tok)) => {
            Some(super::clip_text::ClipTextTower::load(t, &tok, cfg.text_max_tokens, 0)?.with_long_texts(cfg.text_long))
        }
        _ => None,
    };
    let out_dir = crate::store::working_dir(&opts.out, opts.worker);
    crate::shards::stage::run_shards(
        &Stage { name: "score-clip", outputs, scratch: &[] },
        fingerprint,
        opts,
        |shard, reader, _| {
            let dense = match &cfg.captions {
                Some(dir) => Some(crate::shards::captions::captions_with_sources(
                    &crate::shards::captions::captions_path(&crate::store::reading_dir(dir), shard),
                )?),
                None => None,
            };
            let mut entries = Vec::with_capacity(reader.samples.len());
            let mut rows: Vec<Vec<f32>> = Vec::new();
            let mut pixel_scores: Vec<(String, Vec<f32>)> =
                pixel_heads.iter().map(|h| (h.name.clone(), Vec::new())).collect();
            // Per embedded row: its alt-text (the `.txt` member), when it has a readable one.
            let mut alt_texts: Vec<Option<String>> = Vec::new();
            for chunk in reader.samples.chunks(cfg.batch_size.max(1)) {
                let prepared: Vec<Result<Prepared, String>> = chunk
                    .par_iter()
                    .map(|sample| {
                        let bytes = crate::shards::stage::image_bytes(reader, sample)?;
                        let (img, _, _) = crate::image::decode_rgb(&bytes, crate::image::MAX_PIXELS)
                            .map_err(|e| format!("cannot decode the image: {e}"))?;
                        let pixels = pre.pixels(&img).map_err(|e| format!("{e:#}"))?;
                        Ok((pixels, (!cfg.pixel_heads.is_empty()).then_some(img)))
                    })
                    .collect();
                let mut pixels = Vec::new();
                let mut images = Vec::new();
                let mut n = 0;
                for (sample, p) in chunk.iter().zip(prepared) {
                    match p {
                        Ok((p, img)) => {
                            let mut e = SampleEntry::success(&sample.key);
                            e.row = Some(rows.len() + n);
                            if text_tower.is_some() {
                                let txt = reader.read(sample, "txt").ok().flatten();
                                let txt = txt.and_then(|b| String::from_utf8(b).ok()).filter(|t| !t.trim().is_empty());
                                alt_texts.push(txt);
                            }
                            entries.push(e);
                            pixels.extend(p);
                            images.extend(img);
                            n += 1;
                        }
                        Err(reason) => entries.push(SampleEntry::failed(&sample.key, reason)),
                    }
                }
                if n > 0 {
                    rows.extend(tower.embed_pixels(pixels, n)?);
                    let refs: Vec<&image::RgbImage> = images.iter().collect();
                    for (head, (_, scores)) in pixel_heads.iter_mut().zip(pixel_scores.iter_mut()) {
                        scores.extend(head.score(&refs)?);
                    }
                }
            }
            let mut text_embeddings = Vec::new();
            if let Some(text) = text_tower.as_mut() {
                let (similarity, alt) = alt_similarity(text, &rows, &alt_texts)?;
                pixel_scores.push((ALT_SIMILARITY.to_string(), similarity));
                text_embeddings.push((ALT_EMBEDDINGS, alt));
                if let Some(dense) = &dense {
                    let (lowest, mismatch, captions) =
                        dense_similarity(text, &rows, &entries, dense, cfg.mismatch_below, &out_dir, shard)?;
                    pixel_scores.push((DENSE_SIMILARITY_MIN.to_string(), lowest));
                    pixel_scores.push((MISMATCH.to_string(), mismatch));
                    text_embeddings.push((CAPTION_EMBEDDINGS, captions));
                }
            }
            let mut out = shard_output(entries, rows, &mut heads, &names, &pixel_scores, &out_dir, shard)?;
            if let Some(tensors) = out.tensors.as_mut() {
                for (name, rows) in text_embeddings {
                    let d = rows.first().map_or(tower_width(tensors), Vec::len);
                    let t = Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu)?;
                    tensors.insert(name.to_string(), t.to_dtype(DType::F16)?);
                }
            }
            Ok(out)
        },
    )
}

/// Per image row the lowest caption similarity and the mismatch flag, and the caption embeddings.
type DenseAgreement = (Vec<f32>, Vec<f32>, Vec<Vec<f32>>);

/// Each embedded sample's dense captions against its image: the per-caption rows written to
/// `{shard}.caption_scores.parquet`, and per row the lowest cosine and whether any is below
/// `mismatch_below` (1.0 / 0.0; NaN, written as null, without dense captions); and the captions'
/// embeddings, one per row of that file.
fn dense_similarity(
    tower: &mut super::clip_text::ClipTextTower,
    rows: &[Vec<f32>],
    entries: &[SampleEntry],
    dense: &HashMap<String, Vec<(String, String)>>,
    mismatch_below: Option<f32>,
    out_dir: &std::path::Path,
    shard: &str,
) -> anyhow::Result<DenseAgreement> {
    let (mut lowest, mut flagged) = (vec![f32::NAN; rows.len()], vec![f32::NAN; rows.len()]);
    let mut embeddings = Vec::new();
    let (mut keys, mut sources, mut sims, mut flags) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        let (Some(r), Some(captions)) = (e.row, dense.get(&e.key)) else { continue };
        let texts: Vec<&str> = captions.iter().map(|(_, c)| c.as_str()).collect();
        for ((source, _), emb) in captions.iter().zip(tower.embed(&texts)?) {
            let sim = super::clip_text::cosine(&rows[r], &emb);
            let mismatch = mismatch_below.is_some_and(|t| sim < t);
            lowest[r] = if lowest[r].is_nan() { sim } else { lowest[r].min(sim) };
            flagged[r] = if mismatch || flagged[r] == 1.0 { 1.0 } else { 0.0 };
            keys.push(e.key.clone());
            sources.push(source.clone());
            sims.push(sim);
            flags.push(mismatch);
            embeddings.push(emb);
        }
    }
    let mut df = DataFrame::new(
        keys.len(),
        vec![
            Column::new("key".into(), keys),
            Column::new("source".into(), sources),
            Column::new("similarity".into(), sims),
            Column::new("mismatch".into(), flags),
        ],
    )?;
    crate::shards::write_parquet_atomic(&mut df, &out_dir.join(format!("{shard}{CAPTION_SCORES}")))?;
    Ok((lowest, flagged, embeddings))
}

/// The cosine of each image embedding with its alt-text's embedding (NaN, written as null, without
/// alt-text), the texts embedded in batches; and the alt-text embeddings, one per image row (zeros
/// without alt-text).
fn alt_similarity(
    tower: &mut super::clip_text::ClipTextTower,
    rows: &[Vec<f32>],
    texts: &[Option<String>],
) -> anyhow::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let mut out = vec![f32::NAN; rows.len()];
    let mut embeddings = vec![Vec::new(); rows.len()];
    let with: Vec<usize> = (0..rows.len()).filter(|&r| texts.get(r).is_some_and(Option::is_some)).collect();
    for chunk in with.chunks(32) {
        let batch: Vec<&str> = chunk.iter().filter_map(|&r| texts[r].as_deref()).collect();
        for (&r, emb) in chunk.iter().zip(tower.embed(&batch)?) {
            if emb.len() != rows[r].len() {
                anyhow::bail!("the text tower gives {} values, the image tower {}", emb.len(), rows[r].len());
            }
            out[r] = super::clip_text::cosine(&rows[r], &emb);
            embeddings[r] = emb;
        }
    }
    let d = rows.first().map_or(0, Vec::len);
    embeddings.iter_mut().filter(|e| e.is_empty()).for_each(|e| *e = vec![0.0; d]);
    Ok((out, embeddings))
}

/// One shard's output: the embeddings tensor, the index entries and the scores parquet (written
/// here, before the stats that mark the shard done).
fn shard_output(
    entries: Vec<SampleEntry>,
    rows: Vec<Vec<f32>>,
    heads: &mut [Head],
    names: &[String],
    per_row: &[(String, Vec<f32>)],
    out_dir: &std::path::Path,
    shard: &str,
) -> anyhow::Result<ShardOutput> {
    let d = rows.first().map_or(0, Vec::len);
    let emb = Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu)?;
    let mut columns = vec![Column::new("key".into(), entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>())];
    for (head, name) in heads.iter_mut().zip(names) {
        let scores = if rows.is_empty() { Vec::new() } else { head.score(&emb)? };
        let col: Vec<Option<f32>> = entries.iter().map(|e| e.row.map(|r| scores[r])).collect();
        columns.push(Column::new(name.as_str().into(), col));
    }
    for (name, scores) in per_row {
        let col: Vec<Option<f32>> = entries.iter().map(|e| e.row.map(|r| scores[r]).filter(|v| !v.is_nan())).collect();
        columns.push(Column::new(name.as_str().into(), col));
    }
    let mut df = DataFrame::new(entries.len(), columns)?;
    crate::shards::write_parquet_atomic(&mut df, &out_dir.join(format!("{shard}.scores.parquet")))?;
    let mut tensors = HashMap::new();
    tensors.insert("embeddings".to_string(), emb.to_dtype(DType::F16)?);
    Ok(ShardOutput { tensors: Some(tensors), entries, details: None })
}

/// Where LAION's precomputed embeddings are: clip-retrieval's layout, `img_emb/img_emb_{i}.npy`
/// (`[n, D]` f16 or f32) with `metadata/metadata_{i}.parquet` holding the rows' keys in order.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LaionEmbeddings {
    /// The folder of `img_emb_{i}.npy` files.
    #[arg(long)]
    pub emb_dir: PathBuf,
    /// The folder of `metadata_{i}.parquet` files.
    #[arg(long)]
    pub meta_dir: PathBuf,
    /// The metadata column holding each row's sample key (img2dataset's key; clip-retrieval writes
    /// it as `image_path` for img2dataset inputs).
    #[arg(long, default_value = "key")]
    #[serde(default = "default_key_col")]
    pub key_col: String,
    /// Score heads over the embeddings, as for `score clip`.
    #[arg(long = "head")]
    #[serde(default)]
    pub heads: Vec<PathBuf>,
}

fn default_key_col() -> String {
    "key".into()
}

/// One `.npy` file's layout: rows of `dim` little-endian values of `width` bytes after `offset`.
struct NpyRows {
    file: std::fs::File,
    offset: u64,
    dim: usize,
    f16: bool,
}

impl NpyRows {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut head = [0u8; 10];
        file.read_exact(&mut head)?;
        if &head[..6] != b"\x93NUMPY" {
            anyhow::bail!("{}: not a .npy file", path.display());
        }
        let (len, skip) = if head[6] == 1 {
            (u16::from_le_bytes([head[8], head[9]]) as usize, 10)
        } else {
            let mut more = [0u8; 2];
            file.read_exact(&mut more)?;
            (u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize, 12)
        };
        let mut dict = vec![0u8; len];
        file.read_exact(&mut dict)?;
        let dict = String::from_utf8_lossy(&dict);
        let f16 = dict.contains("'<f2'");
        if !(f16 || dict.contains("'<f4'")) || dict.contains("'fortran_order': True") {
            anyhow::bail!("{}: expected a C-order <f2 or <f4 array, found {dict}", path.display());
        }
        let shape = dict.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
        let dims: Vec<usize> = shape.split(',').filter_map(|d| d.trim().parse().ok()).collect();
        let dim = *dims
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("{}: expected a 2-D array, found shape ({shape})", path.display()))?;
        Ok(Self { file, offset: (skip + len) as u64, dim, f16 })
    }

    fn row(&mut self, r: usize) -> anyhow::Result<Vec<f32>> {
        use std::io::{Read, Seek, SeekFrom};
        let width = if self.f16 { 2 } else { 4 };
        let mut buf = vec![0u8; self.dim * width];
        self.file.seek(SeekFrom::Start(self.offset + (r * self.dim * width) as u64))?;
        self.file.read_exact(&mut buf)?;
        let dtype = if self.f16 { DType::F16 } else { DType::F32 };
        Ok(Tensor::from_raw_buffer(&buf, dtype, &[self.dim], &Device::Cpu)?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// Takes each sample's embedding from LAION's precomputed files (matched by key) instead of running
/// a tower, and scores it: the same per-shard output as [`run`]. A sample without a row is recorded
/// with the reason.
pub fn run_laion(cfg: &LaionEmbeddings, opts: &StageOptions) -> anyhow::Result<StageRunStats> {
    let mut metas: Vec<PathBuf> = std::fs::read_dir(&cfg.meta_dir)
        .map_err(|e| anyhow::anyhow!("--meta-dir {}: {e}", cfg.meta_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    metas.sort();
    let mut index: HashMap<String, (usize, usize)> = HashMap::new();
    let mut files = Vec::new();
    for meta in &metas {
        let stem = meta.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let part = stem.strip_prefix("metadata_").ok_or_else(|| {
            anyhow::anyhow!("{}: expected metadata_{{i}}.parquet (clip-retrieval's naming)", meta.display())
        })?;
        let npy = cfg.emb_dir.join(format!("img_emb_{part}.npy"));
        let df = polars::prelude::ParquetReader::new(std::fs::File::open(meta)?)
            .finish()
            .map_err(|e| anyhow::anyhow!("{}: {e}", meta.display()))?;
        let keys = df
            .column(&cfg.key_col)
            .map_err(|_| anyhow::anyhow!("{}: no column `{}` (--key-col)", meta.display(), cfg.key_col))?
            .cast(&polars::prelude::DataType::String)?;
        let keys = keys.str()?;
        for r in 0..keys.len() {
            if let Some(k) = keys.get(r) {
                index.insert(k.to_string(), (files.len(), r));
            }
        }
        files.push(NpyRows::open(&npy)?);
    }
    if files.is_empty() {
        anyhow::bail!("--meta-dir {}: no metadata_{{i}}.parquet files", cfg.meta_dir.display());
    }
    let fp_files = metas.iter().chain(&cfg.heads).map(|p| FileHash::of(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<String> =
        cfg.heads.iter().map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    let fingerprint = StageFingerprint {
        kind: "clip".into(),
        model_config: serde_json::json!({ "source": "LAION img_emb", "heads": names }),
        files: fp_files,
        preprocessing: serde_json::json!({ "key_col": cfg.key_col }),
        sources: Default::default(),
        made_from: Default::default(),
    };
    let mut heads = cfg.heads.iter().map(|p| Head::load(p, &Device::Cpu)).collect::<anyhow::Result<Vec<_>>>()?;
    let out_dir = crate::store::working_dir(&opts.out, opts.worker);
    crate::shards::stage::run_shards(
        &Stage { name: "score-laion-emb", outputs: &SCORE_OUTPUTS, scratch: &[] },
        fingerprint,
        opts,
        |shard, reader, _| {
            let mut entries = Vec::with_capacity(reader.samples.len());
            let mut rows = Vec::new();
            for sample in &reader.samples {
                match index.get(&sample.key) {
                    Some(&(f, r)) => {
                        let mut e = SampleEntry::success(&sample.key);
                        e.row = Some(rows.len());
                        rows.push(files[f].row(r)?);
                        entries.push(e);
                    }
                    None => {
                        entries.push(SampleEntry::failed(&sample.key, "no embedding in the LAION files for this key"))
                    }
                }
            }
            shard_output(entries, rows, &mut heads, &names, &[], &out_dir, shard)
        },
    )
}
