//! What `LlavaProcessor` does before the model: the chat template around the instruction, `<image>`
//! expanded to one token per image feature, tokenization with `tokenizer.json`, and the image as
//! `CLIPImageProcessor` prepares it (shortest side resized bicubic, center crop, CLIP mean/std), or
//! first padded to a square with the mean colour as the original LLaVA-1.5 does (`pad`).

use super::config::LlavaConfig;
use crate::score::clip::ClipPreprocess;
use image::RgbImage;
use std::path::Path;

/// How an image becomes a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ImageMode {
    /// Resize the shortest side, center-crop (transformers' `CLIPImageProcessor`, llava-hf's processor).
    #[default]
    Crop,
    /// Pad to a square with the mean colour, then resize (the original LLaVA-1.5 `expand2square`).
    Pad,
}

/// LLaVA-1.5's conversation template (llava-hf's chat template for one user turn with one image).
pub const DEFAULT_TEMPLATE: &str = "USER: <image>\n{prompt} ASSISTANT:";

/// Turns an instruction and an image into the model's inputs.
pub struct LlavaProcessor {
    tokenizer: tokenizers::Tokenizer,
    /// The image preprocessing.
    pub image: ClipPreprocess,
    /// Crop or pad.
    pub mode: ImageMode,
    /// The conversation around the instruction: `{prompt}` and one `<image>`.
    pub template: String,
    image_token: String,
    image_tokens: usize,
}

impl LlavaProcessor {
    /// Reads `tokenizer.json` and the image processor's settings (`preprocessor_config.json`, or the
    /// `image_processor` of transformers 5's `processor_config.json`) from `dir`.
    pub fn load(dir: &Path, config: &LlavaConfig, mode: ImageMode, template: &str) -> anyhow::Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            anyhow::bail!("{}: missing (the model folder needs its tokenizer.json)", tok_path.display());
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("{}: not a tokenizers file: {e}", tok_path.display()))?;
        let image_token = tokenizer.id_to_token(config.image_token_index).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: has no token with the id {} (config.json image_token_index)",
                tok_path.display(),
                config.image_token_index
            )
        })?;
        if !template.contains("{prompt}") || template.matches("<image>").count() != 1 {
            anyhow::bail!("chat template {template:?}: expected {{prompt}} and exactly one <image>");
        }
        let image = image_settings(dir, config)?;
        Ok(Self {
            tokenizer,
            image,
            mode,
            template: template.to_string(),
            image_token,
            image_tokens: config.image_tokens(),
        })
    }

    /// The token ids of `instruction` in the template, with `<s>` and the expanded image tokens.
    pub fn input_ids(&self, instruction: &str) -> anyhow::Result<Vec<u32>> {
        let text = self
            .template
            .replace("{prompt}", instruction)
            .replace("<image>", &self.image_token.repeat(self.image_tokens));
        let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of generated tokens (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// The image as `3 × S × S` values (CHW).
    pub fn pixels(&self, img: &RgbImage) -> anyhow::Result<Vec<f32>> {
        match self.mode {
            ImageMode::Crop => self.image.pixels(img),
            ImageMode::Pad => self.image.pixels(&expand_to_square(img, self.image.mean)),
        }
    }
}

/// `expand2square`: the image centred on a square of the mean colour (`int(m * 255)` per channel).
pub fn expand_to_square(img: &RgbImage, mean: [f32; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let fill = image::Rgb(mean.map(|m| (m * 255.0) as u8));
    let mut out = RgbImage::from_pixel(side, side, fill);
    image::imageops::replace(&mut out, img, ((side - w) / 2) as i64, ((side - h) / 2) as i64);
    out
}

fn image_settings(dir: &Path, config: &LlavaConfig) -> anyhow::Result<ClipPreprocess> {
    let pre = dir.join("preprocessor_config.json");
    let proc = dir.join("processor_config.json");
    let (file, v): (&Path, serde_json::Value) = if pre.is_file() {
        (&pre, crate::latents::read_config(&pre)?)
    } else if proc.is_file() {
        let v: serde_json::Value = crate::latents::read_config(&proc)?;
        let ip = v.get("image_processor").cloned().ok_or_else(|| {
            anyhow::anyhow!("{}: no \"image_processor\" section (the image preprocessing)", proc.display())
        })?;
        (&proc, ip)
    } else {
        anyhow::bail!(
            "{}: neither preprocessor_config.json nor processor_config.json (the image preprocessing)",
            dir.display()
        );
    };
    let side = |key: &str| -> Option<u32> {
        let s = v.get(key)?;
        s.as_u64()
            .or_else(|| s.get("shortest_edge").and_then(|x| x.as_u64()))
            .or_else(|| s.get("height").and_then(|x| x.as_u64()))
            .map(|x| x as u32)
    };
    let three = |key: &str, default: [f32; 3]| -> anyhow::Result<[f32; 3]> {
        match v.get(key) {
            None => Ok(default),
            Some(a) => {
                let vals: Vec<f32> =
                    a.as_array().into_iter().flatten().filter_map(|x| x.as_f64().map(|x| x as f32)).collect();
                <[f32; 3]>::try_from(vals.as_slice())
                    .map_err(|_| anyhow::anyhow!("{}: {key}: expected 3 numbers, found {a}", file.display()))
            }
        }
    };
    let defaults = ClipPreprocess::default();
    let tower = config.vision_config.image_size as u32;
    let size = side("size").unwrap_or(tower);
    let crop = if v.get("do_center_crop").and_then(|b| b.as_bool()) == Some(false) {
        size
    } else {
        side("crop_size").unwrap_or(tower)
    };
    if crop != tower {
        anyhow::bail!(
            "{}: crop_size {crop} ≠ the vision tower's image_size {tower} (config.json vision_config)",
            file.display()
        );
    }
    Ok(ClipPreprocess { size, crop, mean: three("image_mean", defaults.mean)?, std: three("image_std", defaults.std)? })
}
