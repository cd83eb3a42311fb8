//! `pixforge train --config FILE.toml`: every setting of a training run, field by field. The defaults
//! are PixArt-α's stage configs (`configs/pixart_config/PixArt_xl2_img256_*.py`): PixArt-XL/2 at
//! 256 px, AdamW lr 2e-5 / wd 0.03 / eps 1e-10, 1000 warmup steps then constant, gradient clip 0.01,
//! EMA 0.9999, caption drop 0.1, 120 T5 tokens, VAE scaling 0.18215, seed 43.

use super::optim::OptimizerConfig;
use super::sampler::SamplerKind;
use super::schedule::{LrSchedule, LrShape};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run directory: `log.jsonl`, `loss.svg`, `checkpoints/`, `samples/` (relative paths in the file are
    /// relative to the file's folder).
    pub output_dir: PathBuf,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Seed of the data order, the posterior draws, the caption drop, timesteps and noise.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Optimizer steps to train for (a resumed run continues to the same number).
    pub max_steps: u64,
    /// Micro-batches summed into one optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Global gradient-norm clip (the stage configs: 0.01; the base config: 1.0).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// EMA decay per optimizer step.
    #[serde(default = "default_ema")]
    pub ema_decay: f64,
    /// Compute precision: `f32`, or mixed `bf16` / `f16` (f32 master weights, optimizer and EMA;
    /// norms, attention and the loss in f32; f16 with a dynamic loss scale). Meant for CUDA: on CPU
    /// candle runs 16-bit types slower than f32.
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Stop with an error after this many non-finite steps in a row.
    #[serde(default = "default_max_skipped")]
    pub max_skipped_in_a_row: usize,
    /// The training data.
    pub data: DataConfig,
    /// The transformer: a new one of this shape, or pretrained weights.
    #[serde(default)]
    pub model: ModelConfig,
    /// AdamW.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// LoRA / DoRA adapters to train instead of the whole transformer (peft's format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<super::lora_train::LoraTrainConfig>,
    /// Learning-rate schedule (the peak is `optimizer.lr`).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoints: CheckpointConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Validation samples (none when absent).
    #[serde(default)]
    pub validation: Option<ValidationConfig>,
    /// A held-out validation loss (none when absent).
    #[serde(default)]
    pub holdout: Option<HoldoutConfig>,
    /// How the step spends memory.
    #[serde(default)]
    pub memory: MemoryConfig,
}

/// How the training step spends memory (the results do not change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Activation checkpointing of the transformer blocks: `"none"`, `"blocks"` (each block's
    /// activations recomputed in the backward) or N (segments of N blocks).
    pub checkpoint: Checkpoint,
}

/// Activation checkpointing: off, or the blocks in segments of N.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every activation kept.
    #[default]
    None,
    /// Segments of this many blocks.
    Every(usize),
}

impl Checkpoint {
    /// Blocks a segment (0: off).
    pub fn every(&self) -> usize {
        match self {
            Checkpoint::None => 0,
            Checkpoint::Every(n) => *n,
        }
    }
}

impl Serialize for Checkpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Checkpoint::None => s.serialize_str("none"),
            Checkpoint::Every(1) => s.serialize_str("blocks"),
            Checkpoint::Every(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Checkpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Name(String),
            Every(u64),
        }
        match Given::deserialize(d)? {
            Given::Name(n) if n == "none" => Ok(Checkpoint::None),
            Given::Name(n) if n == "blocks" => Ok(Checkpoint::Every(1)),
            Given::Every(n) if n >= 1 => Ok(Checkpoint::Every(n as usize)),
            Given::Name(n) => Err(serde::de::Error::custom(format!(
                "expected \"none\", \"blocks\" or a number of blocks, found \"{n}\""
            ))),
            Given::Every(_) => Err(serde::de::Error::custom("expected at least 1 block a segment, found 0")),
        }
    }
}

/// The held-out validation loss: samples kept out of training, and every `every` steps (and at the
/// end) their mean hybrid loss at a fixed grid of timesteps with fixed noise, for the trained and
/// the EMA weights — the same values in any run with the same weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// The held-out keys (a `pixforge filter` / `dedup` / `balance` selection); without it,
    /// `fraction` of the keys, chosen by a seeded hash of each key.
    #[serde(default)]
    pub selection: Option<PathBuf>,
    /// The share of keys held out when no selection is given.
    #[serde(default = "default_holdout_fraction")]
    pub fraction: f64,
    /// The seed of the choice of keys and of the noise.
    #[serde(default)]
    pub seed: u64,
    /// Every this many optimizer steps (and at the end).
    #[serde(default = "default_every")]
    pub every: u64,
    /// Timesteps of the grid: `(i + ½)·T / n` for `i < n`.
    #[serde(default = "default_holdout_timesteps")]
    pub timesteps: usize,
}

fn default_holdout_fraction() -> f64 {
    0.05
}
fn default_holdout_timesteps() -> usize {
    8
}

/// One T5 cache and one VAE cache of the same source shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePair {
    /// A `pixforge cache t5` directory.
    pub t5: PathBuf,
    /// A `pixforge cache vae` directory.
    pub vae: PathBuf,
}

/// What to train on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Cache pairs, joined by key within each pair; all T5 caches must come from one encoder and
    /// preprocessing, all VAE caches likewise.
    pub caches: Vec<CachePair>,
    /// Samples per micro-batch and device (official 256 px stage: 176).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Probability of replacing a caption by the null caption (classifier-free guidance).
    #[serde(default = "default_drop")]
    pub caption_drop: f64,
    /// Caption length the embeddings are padded to.
    #[serde(default = "default_tokens")]
    pub max_tokens: usize,
    /// Train only on the keys of this selection (`pixforge filter`'s parquet).
    #[serde(default)]
    pub selection: Option<PathBuf>,
    /// When set, the T5 caches must have been made with this folder's weights (checked by hash).
    #[serde(default)]
    pub t5_model: Option<PathBuf>,
    /// When set, the VAE caches must have been made with this folder's weights (checked by hash).
    #[serde(default)]
    pub vae_model: Option<PathBuf>,
    /// Which of a sample's cached captions each step takes (a T5 cache made with
    /// `--all-captions`): `"first"`, `"random"`, or weights by source (`{ dense = 0.8, alt = 0.2 }`).
    #[serde(default, skip_serializing_if = "CaptionChoice::is_first")]
    pub captions: CaptionChoice,
    /// What becomes of the images left in a bucket at the end of an epoch, fewer than a batch:
    /// `"drop"` (PixArt-α's `drop_last`; a bucket holding fewer images than a batch is never trained,
    /// counted in `left_out` and warned about) or `"repeat"` (the batch filled with other images of
    /// its bucket, as SimpleTuner does, so every image trains every epoch).
    #[serde(default, skip_serializing_if = "BucketLeftovers::is_drop")]
    pub bucket_leftovers: BucketLeftovers,
}

/// What becomes of a bucket's images left over at the end of an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketLeftovers {
    /// Dropped (PixArt-α's `drop_last`).
    #[default]
    Drop,
    /// The last batch filled with other images of the bucket.
    Repeat,
}

impl BucketLeftovers {
    /// Whether it is the default.
    pub fn is_drop(&self) -> bool {
        *self == BucketLeftovers::Drop
    }
}

/// Which cached caption of a sample a step takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CaptionChoice {
    /// The first (the one a cache without every caption holds).
    #[default]
    First,
    /// One of them, uniformly, from the data generator (seeded, part of an exact resume).
    Random,
    /// One of them with these weights by source (`alt`, `dense`: the part before the first `:`), a
    /// source's weight shared by its captions.
    Weights(std::collections::BTreeMap<String, f64>),
}

impl CaptionChoice {
    /// Whether this is [`CaptionChoice::First`].
    pub fn is_first(&self) -> bool {
        *self == CaptionChoice::First
    }
}

impl Serialize for CaptionChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CaptionChoice::First => s.serialize_str("first"),
            CaptionChoice::Random => s.serialize_str("random"),
            CaptionChoice::Weights(w) => w.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CaptionChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Name(String),
            Weights(std::collections::BTreeMap<String, f64>),
        }
        match Given::deserialize(d)? {
            Given::Name(n) if n == "first" => Ok(CaptionChoice::First),
            Given::Name(n) if n == "random" => Ok(CaptionChoice::Random),
            Given::Name(n) => Err(serde::de::Error::custom(format!(
                "expected \"first\", \"random\" or weights by source, found \"{n}\""
            ))),
            Given::Weights(w) if w.values().all(|v| v.is_finite() && *v >= 0.0) && w.values().any(|v| *v > 0.0) => {
                Ok(CaptionChoice::Weights(w))
            }
            Given::Weights(_) => {
                Err(serde::de::Error::custom("caption weights: expected non-negative numbers, one above 0"))
            }
        }
    }
}

/// The transformer to train.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Fine-tune these weights: a diffusers transformer folder, or an official checkpoint (`.pth` /
    /// `.safetensors`, whose heads and sample size are the fields below). The shape fields are then
    /// read from the weights.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Experimental: initialise from DiT ImageNet weights (DiT's `.pt` or safetensors) with the
    /// adaLN-single re-parameterisation at t = 500 (PixArt-α §2.3); the shape comes from the weights,
    /// `heads` and `caption_channels` from the fields below.
    #[serde(default)]
    pub from_dit: Option<PathBuf>,
    /// Blocks (PixArt-XL/2: 28).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Attention heads (16).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Channels per head (72: hidden 1152).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// Patch size (2).
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Latent side the positions are laid out for (256 px: 32, 512: 64, 1024: 128).
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    /// Latent channels (4).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// T5 width (XXL: 4096).
    #[serde(default = "default_caption_channels")]
    pub caption_channels: usize,
    /// PixArtMS: image-size and aspect-ratio micro-conditions.
    #[serde(default)]
    pub micro_conditions: bool,
    /// Position interpolation (`lewei_scale`: 1 at 256/512 px, 2 at 1024).
    #[serde(default)]
    pub lewei_scale: Option<f64>,
    /// PixArt-Σ's KV-token compression (`{ sampling = "conv", scale_factor = 2, kv_compress_layer = [..] }`),
    /// added freshly initialised to a pretrained model without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_compress: Option<super::kv_compress::KvCompressConfig>,
}

/// The learning-rate schedule after AdamW's `lr`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Linear warmup from 0, in optimizer steps (stage configs: 1000).
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// `constant` (PixArt-α) or `cosine` (to 0 at `max_steps`).
    #[serde(default)]
    pub shape: LrShape,
    /// Multiply the lr by `sqrt(batch × grad_accum × world size / 256)` (official `auto_lr`).
    #[serde(default)]
    pub sqrt_batch_scaling: bool,
}

/// When and how many checkpoints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write one every this many optimizer steps (and at the end).
    #[serde(default = "default_every")]
    pub every: u64,
    /// Keep the newest this many (0 keeps all).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
}

/// Logging.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Redraw `loss.svg` every this many steps (`log.jsonl` gets every step).
    #[serde(default = "default_log_every")]
    pub every: u64,
    /// Show a progress bar (on a terminal).
    #[serde(default = "yes")]
    pub progress: bool,
}

/// Validation samples: a grid of one row per prompt, one column per seed, every `every` steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Prompts, one per line.
    pub prompts: PathBuf,
    /// T5 folder (the one the T5 cache was made with), used once at start and freed.
    pub t5: PathBuf,
    /// VAE folder for decoding.
    pub vae: PathBuf,
    /// Every this many optimizer steps (and at the end).
    #[serde(default = "default_every")]
    pub every: u64,
    /// One column per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Sampler.
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// Sampler steps (its default when absent).
    #[serde(default)]
    pub steps: Option<usize>,
    /// Guidance scale on ε, the null caption `y_embedding`.
    #[serde(default = "default_cfg")]
    pub cfg: f64,
    /// Sample with the EMA weights instead of the trained ones (at 0.9999 the EMA moves slowly).
    #[serde(default)]
    pub ema: bool,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_seed() -> u64 {
    43
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_clip() -> f64 {
    0.01
}
fn default_ema() -> f64 {
    0.9999
}
fn default_precision() -> String {
    "f32".into()
}
fn default_max_skipped() -> usize {
    10
}
fn default_batch() -> usize {
    176
}
fn default_drop() -> f64 {
    0.1
}
fn default_tokens() -> usize {
    crate::latents::t5::MAX_TOKENS
}
fn default_layers() -> usize {
    28
}
fn default_heads() -> usize {
    16
}
fn default_head_dim() -> usize {
    72
}
fn default_patch() -> usize {
    2
}
fn default_sample_size() -> usize {
    32
}
fn default_in_channels() -> usize {
    4
}
fn default_caption_channels() -> usize {
    4096
}
fn default_warmup() -> u64 {
    1000
}
fn default_every() -> u64 {
    1000
}
fn default_keep() -> usize {
    3
}
fn default_log_every() -> u64 {
    10
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_sampler() -> SamplerKind {
    SamplerKind::DpmSolver
}
fn default_cfg() -> f64 {
    4.5
}

impl Default for ModelConfig {
    fn default() -> Self {
        toml::from_str("").expect("every model field has a default")
    }
}
impl Default for ScheduleConfig {
    fn default() -> Self {
        toml::from_str("").expect("every schedule field has a default")
    }
}
impl Default for CheckpointConfig {
    fn default() -> Self {
        toml::from_str("").expect("every checkpoint field has a default")
    }
}
impl Default for LoggingConfig {
    fn default() -> Self {
        toml::from_str("").expect("every logging field has a default")
    }
}

impl ModelConfig {
    /// The transformer shape of a new model.
    pub fn pixart(&self) -> super::model::PixArtConfig {
        super::model::PixArtConfig {
            num_attention_heads: self.heads,
            attention_head_dim: self.head_dim,
            in_channels: self.in_channels,
            out_channels: 2 * self.in_channels,
            num_layers: self.layers,
            sample_size: self.sample_size,
            patch_size: self.patch_size,
            caption_channels: self.caption_channels,
            interpolation_scale: self.lewei_scale,
            norm_eps: 1e-6,
            kv_compress: self.kv_compress.clone(),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; relative paths in it are taken relative to the file's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let mut cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a training config: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Makes the relative paths absolute against `base` (the config file's folder).
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !crate::store::is_remote(p) {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.output_dir);
        for c in &mut self.data.caches {
            fix(&mut c.t5);
            fix(&mut c.vae);
        }
        for p in [
            &mut self.data.t5_model,
            &mut self.data.vae_model,
            &mut self.data.selection,
            &mut self.model.pretrained,
            &mut self.model.from_dit,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(p) = self.holdout.as_mut().and_then(|h| h.selection.as_mut()) {
            fix(p);
        }
        if let Some(v) = &mut self.validation {
            fix(&mut v.prompts);
            fix(&mut v.t5);
            fix(&mut v.vae);
        }
    }

    /// Checks the values a TOML parser cannot (each message names the field).
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(h) = &self.holdout {
            if h.selection.is_none() && !(h.fraction > 0.0 && h.fraction < 1.0) {
                anyhow::bail!("holdout.fraction: expected a share between 0 and 1, found {}", h.fraction);
            }
            if h.every == 0 || h.timesteps == 0 {
                anyhow::bail!("holdout.every and holdout.timesteps: expected at least 1");
            }
        }
        let positive = [
            ("max_steps", self.max_steps as usize),
            ("grad_accum", self.grad_accum),
            ("data.batch_size", self.data.batch_size),
            ("data.max_tokens", self.data.max_tokens),
            ("checkpoints.every", self.checkpoints.every as usize),
            ("logging.every", self.logging.every as usize),
            ("max_skipped_in_a_row", self.max_skipped_in_a_row),
        ];
        for (name, v) in positive {
            if v == 0 {
                anyhow::bail!("`{name}` must be at least 1, found 0");
            }
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if self.optimizer.came.is_some() && self.optimizer.kind != super::optim::OptimizerKind::Came {
            anyhow::bail!("`optimizer.came` is set but `optimizer.kind` is \"adamw\": add kind = \"came\" to use CAME");
        }
        if let Some(c) = &self.optimizer.came {
            if c.betas.iter().any(|b| !(0.0..=1.0).contains(b)) || c.clip_threshold <= 0.0 {
                anyhow::bail!(
                    "`optimizer.came`: expected betas in [0, 1] and a positive clip_threshold, found {:?} and {}",
                    c.betas,
                    c.clip_threshold
                );
            }
        }
        if self.data.caches.is_empty() {
            anyhow::bail!("`data.caches`: expected at least one {{ t5 = \"…\", vae = \"…\" }} pair, found none");
        }
        if !(0.0..=1.0).contains(&self.data.caption_drop) {
            anyhow::bail!("`data.caption_drop`: expected a probability in [0, 1], found {}", self.data.caption_drop);
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            anyhow::bail!("`ema_decay`: expected a value in [0, 1], found {}", self.ema_decay);
        }
        super::precision::Precision::parse(&self.precision)?;
        if self.model.pretrained.is_some() && self.model.from_dit.is_some() {
            anyhow::bail!("`model.pretrained` and `model.from_dit` are both set: choose one starting point");
        }
        let hidden = self.model.heads * self.model.head_dim;
        if self.model.micro_conditions && self.model.pretrained.is_none() && hidden % 3 != 0 {
            anyhow::bail!(
                "`model.micro_conditions` needs heads × head_dim divisible by 3 (PixArtMS splits it in thirds), found {hidden}"
            );
        }
        if let Some(v) = &self.validation {
            if v.seeds.is_empty() || v.every == 0 {
                anyhow::bail!("`validation`: expected at least one seed and `every` ≥ 1");
            }
        }
        Ok(())
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.optimizer.lr,
            warmup_steps: self.schedule.warmup_steps,
            shape: self.schedule.shape,
            total_steps: self.max_steps,
            sqrt_batch_scaling: self.schedule.sqrt_batch_scaling,
        }
    }

    /// A hash of everything that determines the run's numbers (not the output folder, logging,
    /// checkpoint cadence, validation or `max_steps`, which a resumed run may change).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.digested().to_string().as_bytes())[..16])
    }

    /// The settings [`TrainConfig::digest`] covers, as JSON (kept in checkpoints, so that a refused
    /// resume names what changed).
    pub fn digested(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seed": self.seed, "grad_accum": self.grad_accum, "max_grad_norm": self.max_grad_norm,
            "ema_decay": self.ema_decay, "precision": self.precision, "data": self.data, "model": self.model,
            "optimizer": self.optimizer, "schedule": self.schedule,
        });
        // What is held out changes what is trained on (absent: the digest of earlier versions).
        if let Some(h) = &self.holdout {
            v["holdout"] = serde_json::json!(h);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpointing_reads_none_blocks_or_a_segment_length() {
        let read = |v: &str| toml::from_str::<MemoryConfig>(&format!("checkpoint = {v}")).map(|m| m.checkpoint);
        assert_eq!(read("\"none\"").unwrap(), Checkpoint::None);
        assert_eq!(read("\"blocks\"").unwrap(), Checkpoint::Every(1));
        assert_eq!(read("3").unwrap(), Checkpoint::Every(3));
        assert!(read("0").unwrap_err().to_string().contains("at least 1"));
        assert!(read("\"layers\"").unwrap_err().to_string().contains("\"blocks\""));
        let written = toml::to_string(&MemoryConfig { checkpoint: Checkpoint::Every(1) }).unwrap();
        assert_eq!(written.trim(), "checkpoint = \"blocks\"");
    }
}
