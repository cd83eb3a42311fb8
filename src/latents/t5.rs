//! The T5 v1.1 encoder (PixArt-α: T5-v1.1-XXL, 120 tokens) from a Hugging Face folder (`config.json`,
//! `model.safetensors` or sharded with an index, `tokenizer.json`) or a diffusers pipeline folder
//! (`text_encoder/` + `tokenizer/tokenizer.json`). Captions are encoded unpadded and packed together
//! ([`PackedT5`]): a caption's rows come out exactly as the valid rows of PixArt-α's padded, masked
//! encoding.

use super::t5_packed::PackedT5;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5;
use std::path::{Path, PathBuf};

/// PixArt-α's caption length in T5 tokens (`</s>` included).
pub const MAX_TOKENS: usize = 120;

/// How a caption is prepared before tokenizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TextCleaning {
    /// PixArt-α's: DeepFloyd IF's `clean_caption` applied twice ([`super::clean::pixart_clean`]), as
    /// the official `T5Embedder` and diffusers' pipeline (`clean_caption=True`) do.
    #[default]
    Pixart,
    /// Trimmed and lower-cased only (diffusers with `clean_caption=False`).
    Lower,
}

impl TextCleaning {
    /// `text` prepared for the tokenizer.
    pub fn apply(self, text: &str) -> String {
        match self {
            TextCleaning::Pixart => super::clean::pixart_clean(text),
            TextCleaning::Lower => text.trim().to_lowercase(),
        }
    }
}

/// T5's tokenizer as PixArt-α calls it: cleaned text, truncated to `max_tokens` tokens with `</s>`
/// last (the tokenizer's post-processor appends it), unpadded.
pub struct CaptionTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// The caption preparation applied before tokenizing.
    pub cleaning: TextCleaning,
}

impl CaptionTokenizer {
    /// Loads `tokenizer.json` (a T5 folder's, or a pipeline's `tokenizer/`), truncating to `max_tokens`.
    pub fn load(file: &Path, max_tokens: usize, cleaning: TextCleaning) -> anyhow::Result<Self> {
        if !file.is_file() {
            anyhow::bail!(
                "{}: expected the tokenizer as tokenizer.json (a sentencepiece spiece.model alone is not read)",
                file.display()
            );
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(file)
            .map_err(|e| anyhow::anyhow!("{}: cannot load the tokenizer: {e}", file.display()))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        tokenizer.with_padding(None);
        Ok(Self { tokenizer, cleaning })
    }

    /// The tokenizer file of a T5 folder or a diffusers pipeline folder.
    pub fn file_in(dir: &Path) -> PathBuf {
        locate(dir).1
    }

    /// The token ids of a caption (cleaned, truncated, `</s>` last).
    pub fn tokens(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(self.cleaning.apply(text), true)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// A loaded T5 encoder and its tokenizer.
pub struct TextEncoder {
    model: PackedT5,
    tokenizer: Option<CaptionTokenizer>,
    /// The encoder's width (4096 for XXL).
    pub d_model: usize,
}

/// The (model folder, tokenizer file) of a T5 folder or a diffusers pipeline folder.
fn locate(dir: &Path) -> (PathBuf, PathBuf) {
    (crate::hub::part(dir, "text_encoder"), crate::hub::part(dir, "tokenizer").join("tokenizer.json"))
}

impl TextEncoder {
    /// Loads the encoder (weights as f32) and tokenizer, truncating to `max_tokens` tokens.
    pub fn load(dir: &Path, max_tokens: usize, cleaning: TextCleaning, device: &Device) -> anyhow::Result<Self> {
        let file = CaptionTokenizer::file_in(dir);
        if !file.is_file() {
            anyhow::bail!(
                "{}: no tokenizer.json (looked for {} and {}; a sentencepiece spiece.model alone is not read)",
                dir.display(),
                dir.join("tokenizer/tokenizer.json").display(),
                dir.join("tokenizer.json").display()
            );
        }
        let tokenizer = CaptionTokenizer::load(&file, max_tokens, cleaning)?;
        let mut enc = Self::load_encoder(dir, device)?;
        enc.tokenizer = Some(tokenizer);
        Ok(enc)
    }

    /// Loads the encoder alone (weights as f32): it takes token ids ([`TextEncoder::encode_ids`]).
    pub fn load_encoder(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let (model_dir, _) = locate(dir);
        let config: t5::Config = crate::hub::read_config(&model_dir.join("config.json"))?;
        let files = crate::hub::weight_files(&model_dir, "model")?;
        let vb = crate::hub::Weights::open(&files)?.var_builder(DType::F32, device);
        let model = PackedT5::load(vb, &config)
            .map_err(|e| anyhow::anyhow!("{}: not a T5 encoder checkpoint: {e}", model_dir.display()))?;
        Ok(TextEncoder { model, tokenizer: None, d_model: config.d_model })
    }

    /// The token ids of a caption ([`CaptionTokenizer::tokens`]).
    pub fn tokens(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this T5 encoder was loaded without a tokenizer"))?
            .tokens(text)
    }

    /// The encoder output `[B, L, d_model]` of token ids `[B, L]` (u32 or i64; no padding mask).
    pub fn encode_ids(&mut self, ids: &Tensor) -> anyhow::Result<Tensor> {
        let rows: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
        let out = self.model.encode(&rows)?;
        Ok(Tensor::stack(&out, 0)?)
    }

    /// The unpadded outputs `[L_i, d_model]` of several token sequences, encoded packed together.
    pub fn encode_many(&self, sequences: &[Vec<u32>]) -> anyhow::Result<Vec<Tensor>> {
        Ok(self.model.encode(sequences)?)
    }

    /// The unpadded embedding `[L, d_model]` of a caption.
    pub fn encode(&mut self, text: &str) -> anyhow::Result<Tensor> {
        let ids = self.tokens(text)?;
        Ok(self.model.encode(&[ids])?.remove(0))
    }
}
