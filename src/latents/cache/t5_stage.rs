//! `pixforge cache t5`: every caption of every shard through the T5 encoder, stored unpadded.
//!
//! Per shard, `{shard}.safetensors` holds `embeddings` `[Σ tokens, d_model]` (bf16 by default) — the
//! captions' rows one after the other, in the shard's sample order — and `lengths` `[n]` (i64, one
//! per cached caption); the index gives each key its first row and token count, and with
//! `--all-captions` every caption's source, first row and token count. Captions are encoded packed, unpadded
//! ([`crate::latents::t5_packed`]), so a caption's rows equal the valid rows of PixArt-α's padded,
//! masked encoding.

use super::CACHE_OUTPUTS;
use crate::latents::t5::{CaptionTokenizer, TextCleaning, TextEncoder, MAX_TOKENS};
use crate::shards::captions::{captions_path, captions_with_sources};
use crate::shards::stage::{
    run_shards, CaptionRows, SampleEntry, ShardOutput, Stage, StageFingerprint, StageOptions, StageRunStats,
};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// Storage type of cached features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureDType {
    /// bfloat16: half the size of f32, T5's own range (the official extraction runs T5 in bf16).
    #[default]
    Bf16,
    /// float16.
    F16,
    /// float32.
    F32,
}

impl FeatureDType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            FeatureDType::Bf16 => DType::BF16,
            FeatureDType::F16 => DType::F16,
            FeatureDType::F32 => DType::F32,
        }
    }
}

fn default_max_tokens() -> usize {
    MAX_TOKENS
}
fn default_batch() -> usize {
    32
}

/// The T5 cache's configuration (CLI flags and pipeline TOML).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct T5CacheConfig {
    /// T5 folder (config.json, model.safetensors[.index.json], tokenizer.json) or a diffusers
    /// pipeline folder (text_encoder/, tokenizer/).
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens per caption, `</s>` included (PixArt-α: 120, PixArt-Σ: 300).
    #[arg(long, default_value_t = MAX_TOKENS)]
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Caption preparation before tokenizing.
    #[arg(long, value_enum, default_value = "pixart")]
    #[serde(default)]
    pub cleaning: TextCleaning,
    /// Storage type of the embeddings (computed in f32 on CPU).
    #[arg(long, value_enum, default_value = "bf16")]
    #[serde(default)]
    pub dtype: FeatureDType,
    /// Captions encoded together, packed without padding.
    #[arg(long, default_value_t = 32)]
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Take each sample's caption from this caption folder (a `pixforge caption` output: its first
    /// caption of the sample) instead of the shard's `.txt`; a sample without one is recorded as
    /// failed. A caption shard that changes is re-encoded on the next run.
    #[arg(long)]
    #[serde(default)]
    pub captions: Option<PathBuf>,
    /// Cache every caption of a sample, each with its source: with --captions, every caption of the
    /// caption folder (`dense:{prompt_id}:{caption_index}`, in its order) and then the shard's `.txt`
    /// (`alt`); without, the `.txt`. The first is the one the trainer takes by default
    /// (`data.captions` chooses among them).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_captions: bool,
}

impl T5CacheConfig {
    /// The fingerprint a cache made with this configuration carries (without its sources).
    pub fn fingerprint(&self) -> anyhow::Result<StageFingerprint> {
        let model_dir = crate::hub::part(&self.model, "text_encoder");
        let mut files = crate::hub::weight_files(&model_dir, "model")?;
        files.push(CaptionTokenizer::file_in(&self.model));
        let mut made_from = std::collections::BTreeMap::new();
        let caption = match &self.captions {
            None => "the sample's .txt member".to_string(),
            Some(dir) => {
                let m = crate::shards::Manifest::read(dir)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--captions {}: no manifest.json (expected a `pixforge caption` output)",
                        dir.display()
                    )
                })?;
                // How the captions were made (model, prompts, sampling), not from which shards: caches
                // of several datasets captioned alike train together.
                let how = match serde_json::from_value::<StageFingerprint>(m.config.clone()) {
                    Ok(mut f) => {
                        f.sources.clear();
                        made_from.insert("caption".to_string(), serde_json::to_value(&f)?);
                        f.digest()
                    }
                    Err(_) => m.fingerprint,
                };
                format!("the first caption of a caption folder made with fingerprint {how}")
            }
        };
        let mut preprocessing = serde_json::json!({
            "caption": caption,
            "cleaning": self.cleaning,
            "max_tokens": self.max_tokens,
            "dtype": self.dtype,
        });
        if self.all_captions {
            preprocessing["all_captions"] = serde_json::json!(true);
        }
        let mut fingerprint = StageFingerprint::of_model("t5", &model_dir, &files, preprocessing)?;
        fingerprint.made_from = made_from;
        Ok(fingerprint)
    }
}

/// Caches the T5 embeddings of the captions of `opts.input` into `opts.out`.
pub fn run(cfg: &T5CacheConfig, opts: &StageOptions, device: &Device) -> anyhow::Result<StageRunStats> {
    if cfg.batch_size == 0 || cfg.max_tokens == 0 {
        anyhow::bail!("--batch-size and --max-tokens: expected at least 1");
    }
    let fingerprint = cfg.fingerprint()?;
    let t5 = TextEncoder::load(&cfg.model, cfg.max_tokens, cfg.cleaning, device)?;
    let mut opts = opts.clone();
    opts.depends_on.extend(cfg.captions.iter().cloned());
    run_shards(
        &Stage { name: "cache-t5", outputs: &CACHE_OUTPUTS, scratch: &[] },
        fingerprint,
        &opts,
        |name, reader, _| {
            let dense = match (&cfg.captions, cfg.all_captions) {
                (Some(dir), all) => Some(captions_with_sources(&captions_path(&crate::store::reading_dir(dir), name))?)
                    .map(
                        |m| if all { m } else { m.into_iter().map(|(k, mut v)| (k, v.drain(..1).collect())).collect() },
                    ),
                (None, _) => None,
            };
            // Each sample's captions (source, text), the first the one trained on by default.
            let mut entries = Vec::with_capacity(reader.samples.len());
            let mut chosen: Vec<Vec<(String, Vec<u32>)>> = Vec::with_capacity(reader.samples.len());
            for sample in &reader.samples {
                let alt = || match reader.read(sample, "txt") {
                    Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| "caption is not UTF-8".to_string()),
                    Ok(None) => Err("no caption: the sample has no .txt member".to_string()),
                    Err(e) => Err(format!("cannot read the .txt member: {e}")),
                };
                let mut texts: Vec<Result<(String, String), String>> = Vec::new();
                match &dense {
                    Some(map) => match map.get(&sample.key) {
                        Some(list) => texts.extend(list.iter().cloned().map(Ok)),
                        None => texts.push(Err("no caption: the caption folder has no caption for this sample".into())),
                    },
                    None => texts.push(alt().map(|t| ("alt".to_string(), t))),
                }
                if cfg.all_captions && dense.is_some() {
                    if let Ok(t) = alt() {
                        texts.push(Ok(("alt".to_string(), t)));
                    }
                }
                let mut ok = Vec::new();
                let mut first_error = None;
                for text in texts {
                    match text.and_then(|(source, c)| Ok((source, t5.tokens(&c).map_err(|e| format!("{e:#}"))?))) {
                        Ok(pair) => ok.push(pair),
                        Err(reason) => {
                            first_error.get_or_insert(reason);
                        }
                    }
                }
                if ok.is_empty() {
                    let reason = first_error.unwrap_or_else(|| "no caption".to_string());
                    entries.push(SampleEntry::failed(&sample.key, reason));
                } else {
                    entries.push(SampleEntry::success(&sample.key));
                }
                chosen.push(ok);
            }
            let flat: Vec<Option<Vec<u32>>> = chosen.iter().flatten().map(|(_, ids)| Some(ids.clone())).collect();
            let mut embeddings = encode_packed(&t5, &flat, cfg.batch_size)?.into_iter();
            let (mut rows, mut parts, mut lengths) = (0usize, Vec::new(), Vec::new());
            for (entry, captions) in entries.iter_mut().zip(&chosen) {
                let mut cached = Vec::with_capacity(captions.len());
                for (source, _) in captions {
                    let e = embeddings.next().flatten().ok_or_else(|| anyhow::anyhow!("a caption was not encoded"))?;
                    let n = e.dim(0)?;
                    cached.push(CaptionRows { source: source.clone(), row: rows, tokens: n });
                    rows += n;
                    lengths.push(n as i64);
                    parts.push(e);
                }
                if let Some(first) = cached.first() {
                    entry.row = Some(first.row);
                    entry.tokens = Some(first.tokens);
                }
                if cfg.all_captions && !cached.is_empty() {
                    entry.captions = Some(cached);
                }
            }
            let embeddings = if parts.is_empty() {
                Tensor::zeros((0, t5.d_model), DType::F32, device)?
            } else {
                Tensor::cat(&parts, 0)?
            };
            let n = lengths.len();
            let tensors = HashMap::from([
                ("embeddings".to_string(), embeddings.to_dtype(cfg.dtype.dtype())?.to_device(&Device::Cpu)?),
                ("lengths".to_string(), Tensor::from_vec(lengths, n, &Device::Cpu)?),
            ]);
            Ok(ShardOutput { tensors: Some(tensors), entries, details: None })
        },
    )
}

/// Encodes each `Some` token sequence, packing `batch_size` captions at a time; returns `[L, d]` per input.
pub(crate) fn encode_packed(
    t5: &TextEncoder,
    ids: &[Option<Vec<u32>>],
    batch_size: usize,
) -> anyhow::Result<Vec<Option<Tensor>>> {
    let present: Vec<usize> = (0..ids.len()).filter(|&i| ids[i].is_some()).collect();
    let mut out: Vec<Option<Tensor>> = vec![None; ids.len()];
    for chunk in present.chunks(batch_size) {
        let seqs: Vec<Vec<u32>> = chunk.iter().filter_map(|&i| ids[i].clone()).collect();
        for (&i, emb) in chunk.iter().zip(t5.encode_many(&seqs)?) {
            out[i] = Some(emb);
        }
    }
    Ok(out)
}
