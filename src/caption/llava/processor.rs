//! What `LlavaProcessor` / `LlavaNextProcessor` do before the model: the chat template around the
//! instruction, `<image>` expanded to one token per image feature, tokenization with `tokenizer.json`,
//! and the image as `CLIPImageProcessor` prepares it (shortest side resized bicubic, center crop, CLIP
//! mean/std), first padded to a square with the mean colour as the original LLaVA-1.5 does (`pad`);
//! or, for LLaVA-1.6, tiled as `LlavaNextImageProcessor` does (the best pinpoint resolution, the
//! image resized into it and padded with black, cut into tower-size tiles after a squashed overview).

use super::config::LlavaConfig;
use crate::image::clip::ClipPreprocess;
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

/// One image ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// `patches × 3 × S × S` values (CHW per patch).
    pub pixels: Vec<f32>,
    /// Patches (1 for LLaVA-1.5; the overview then the tiles for LLaVA-1.6).
    pub patches: usize,
    /// The original (height, width).
    pub size: (usize, usize),
    /// Image tokens in the prompt (= image features).
    pub tokens: usize,
}

/// transformers' `select_best_resolution`: the (height, width) of `pinpoints` that keeps the most of
/// an image of `(h, w)` when scaled into it, the least wasted on a tie.
pub fn select_best_resolution(size: (usize, usize), pinpoints: &[[usize; 2]]) -> (usize, usize) {
    let (h, w) = (size.0 as f64, size.1 as f64);
    let mut best = (pinpoints[0][0], pinpoints[0][1]);
    let (mut max_eff, mut min_waste) = (0i64, i64::MAX);
    for &[ph, pw] in pinpoints {
        let scale = (pw as f64 / w).min(ph as f64 / h);
        let (dw, dh) = ((w * scale) as i64, (h * scale) as i64);
        let eff = (dw * dh).min((w * h) as i64);
        let waste = (ph * pw) as i64 - eff;
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            max_eff = eff;
            min_waste = waste;
            best = (ph, pw);
        }
    }
    best
}

/// LLaVA-1.6's unpadded feature grid: the (rows, columns) of a `(gh, gw)` feature grid that hold
/// the image of `(h, w)` (transformers' `unpad_image`, rounding as it does).
pub fn unpadded_grid(size: (usize, usize), grid: (usize, usize)) -> (usize, usize) {
    let (h, w) = (size.0 as f64, size.1 as f64);
    let (gh, gw) = grid;
    if w / h > gw as f64 / gh as f64 {
        let new_h = round7(h * (gw as f64 / w)) as usize;
        (gh - 2 * ((gh - new_h) / 2), gw)
    } else {
        let new_w = round7(w * (gh as f64 / h)) as usize;
        (gh, gw - 2 * ((gw - new_w) / 2))
    }
}

/// Python's `int(round(x, 7))`.
fn round7(x: f64) -> f64 {
    ((x * 1e7).round_ties_even() / 1e7).trunc()
}

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
    /// LLaVA-1.6's tiling resolutions; `None` for LLaVA-1.5.
    pinpoints: Option<Vec<[usize; 2]>>,
    /// The tower's patch size.
    patch: usize,
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
            pinpoints: config.is_next().then(|| config.pinpoints()),
            patch: config.vision_config.patch_size,
        })
    }

    /// The token ids of `instruction` in the template, with `<s>` and `image_tokens` image tokens
    /// (LLaVA-1.5: always [`LlavaProcessor::image_tokens`]; LLaVA-1.6: [`PreparedImage::tokens`]).
    pub fn input_ids(&self, instruction: &str, image_tokens: usize) -> anyhow::Result<Vec<u32>> {
        let text =
            self.template.replace("{prompt}", instruction).replace("<image>", &self.image_token.repeat(image_tokens));
        let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of generated tokens (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// LLaVA-1.5's image tokens per image.
    pub fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    /// The image as the model takes it.
    pub fn image(&self, img: &RgbImage) -> anyhow::Result<PreparedImage> {
        let (w, h) = img.dimensions();
        let size = (h as usize, w as usize);
        let Some(pinpoints) = &self.pinpoints else {
            let pixels = match self.mode {
                ImageMode::Crop => self.image.pixels(img)?,
                ImageMode::Pad => self.image.pixels(&expand_to_square(img, self.image.mean))?,
            };
            return Ok(PreparedImage { pixels, patches: 1, size, tokens: self.image_tokens });
        };
        use crate::image::{resize_exact, Filter};
        if w == 0 || h == 0 {
            anyhow::bail!("an empty image");
        }
        let s = self.image.crop as usize;
        let (bh, bw) = select_best_resolution(size, pinpoints);
        // transformers' get_patch_output_size, then centred on black.
        let (sw, sh) = (bw as f64 / w as f64, bh as f64 / h as f64);
        let (nh, nw) = if sw < sh {
            (((h as f64 * sw).ceil() as usize).min(bh), bw)
        } else {
            (bh, ((w as f64 * sh).ceil() as usize).min(bw))
        };
        let resized = resize_exact(img, (nw as u32, nh as u32), Filter::Bicubic)?;
        let mut canvas = RgbImage::new(bw as u32, bh as u32);
        image::imageops::replace(&mut canvas, &resized, ((bw - nw) / 2) as i64, ((bh - nh) / 2) as i64);
        let side = self.image.size;
        let mut pixels = self.image.pixels(&resize_exact(img, (side, side), Filter::Bicubic)?)?;
        for y in (0..bh).step_by(s) {
            for x in (0..bw).step_by(s) {
                let tile = image::imageops::crop_imm(&canvas, x as u32, y as u32, s as u32, s as u32).to_image();
                pixels.extend(self.image.pixels(&tile)?);
            }
        }
        let per_side = s / self.patch;
        let (rows, cols) = unpadded_grid(size, (per_side * bh / s, per_side * bw / s));
        let tokens = per_side * per_side + rows * (cols + 1);
        Ok(PreparedImage { pixels, patches: 1 + (bh / s) * (bw / s), size, tokens })
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
        (&pre, crate::hub::read_config(&pre)?)
    } else if proc.is_file() {
        let v: serde_json::Value = crate::hub::read_config(&proc)?;
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
    // A side given as a number or as {"shortest_edge": n} / {"height": n, "width": n}; absent: None.
    let side = |key: &str| -> anyhow::Result<Option<u32>> {
        let Some(s) = v.get(key) else { return Ok(None) };
        s.as_u64()
            .or_else(|| s.get("shortest_edge").and_then(|x| x.as_u64()))
            .or_else(|| s.get("height").and_then(|x| x.as_u64()))
            .filter(|&x| x > 0 && x <= u32::MAX as u64)
            .map(|x| Some(x as u32))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: {key}: expected a positive number or {{\"shortest_edge\": n}} / {{\"height\": n, \"width\": n}}, found {s}",
                    file.display()
                )
            })
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
    let size = side("size")?.unwrap_or(tower);
    let crop = if v.get("do_center_crop").and_then(|b| b.as_bool()) == Some(false) {
        size
    } else {
        side("crop_size")?.unwrap_or(tower)
    };
    if crop != tower {
        anyhow::bail!(
            "{}: crop_size {crop} ≠ the vision tower's image_size {tower} (config.json vision_config)",
            file.display()
        );
    }
    Ok(ClipPreprocess { size, crop, mean: three("image_mean", defaults.mean)?, std: three("image_std", defaults.std)? })
}
