//! Validation samples during training: the prompts are encoded once at start (the T5 encoder is then
//! freed), and every N steps the model samples each prompt at each fixed seed; the images form one
//! grid (a row per prompt, a column per seed) written as `samples/step_NNNNNNN.png`, labelled with
//! its step, sampler, prompts and seeds (and a red note when the T5 or VAE is a made-up tiny model),
//! with a JSON sidecar naming the prompts, seeds and sampler.

use super::config::ValidationConfig;
use super::diffusion::Diffusion;
use super::model::PixArt;
use super::sampler::{self, Condition, Guided};
use crate::image::label::{labelled_grid, png_with_text, GridLabels};
use crate::latents::{t5::TextEncoder, vae::Vae};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Pixels between grid cells.
const GAP: u32 = 4;

/// The prompts' embeddings and the VAE, ready to sample.
pub struct Validation {
    cfg: ValidationConfig,
    prompts: Vec<String>,
    embeddings: Vec<Tensor>,
    vae: Vae,
    /// Said on the grid when the T5 or the VAE is made up (`models init-tiny`).
    note: Option<String>,
}

impl Validation {
    /// Reads the prompts, encodes them with the T5 folder (then drops it) and loads the VAE.
    pub fn prepare(cfg: &ValidationConfig, caption_channels: usize, device: &Device) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&cfg.prompts)
            .map_err(|e| anyhow::anyhow!("validation.prompts {}: cannot read: {e}", cfg.prompts.display()))?;
        let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        if prompts.is_empty() {
            anyhow::bail!("validation.prompts {}: no prompt (expected one per line)", cfg.prompts.display());
        }
        let mut t5 = TextEncoder::load(&cfg.t5, crate::latents::t5::MAX_TOKENS, Default::default(), device)?;
        if t5.d_model != caption_channels {
            anyhow::bail!(
                "validation.t5 {}: T5 width {} does not match the model's caption channels {caption_channels}",
                cfg.t5.display(),
                t5.d_model
            );
        }
        let embeddings = prompts.iter().map(|p| t5.encode(p)).collect::<anyhow::Result<Vec<_>>>()?;
        let vae = Vae::load(&cfg.vae, device)?;
        let note = crate::hub::random_weights_note(&[(&cfg.t5, "text_encoder", "T5"), (&cfg.vae, "vae", "VAE")]);
        Ok(Self { cfg: cfg.clone(), prompts, embeddings, vae, note })
    }

    /// Samples every prompt at every seed with `model` at its native size and writes the grid into
    /// `dir` as `step_{step:07}.png` (+ `.json`), labelled; returns the PNG's path.
    pub fn grid(&self, model: &PixArt, step: u64, dir: &Path) -> anyhow::Result<PathBuf> {
        let c = &model.config;
        let side = c.sample_size;
        let px = (side * self.vae.scale) as u32;
        let dev = self.embeddings[0].device().clone();
        let diffusion = Diffusion::linear(1000);
        let steps = self.cfg.steps.unwrap_or(self.cfg.sampler.default_steps());
        let micro = if model.has_micro_conditions() {
            Some((Tensor::new(&[[px as f32, px as f32]], &dev)?, Tensor::new(&[[1f32]], &dev)?))
        } else {
            None
        };
        let (rows, cols) = (self.prompts.len() as u32, self.cfg.seeds.len() as u32);
        let mut grid =
            image::RgbImage::from_pixel(cols * (px + GAP) - GAP, rows * (px + GAP) - GAP, image::Rgb([255; 3]));
        for (r, emb) in self.embeddings.iter().enumerate() {
            let l = emb.dim(0)?;
            let cond = Condition { caption: emb.unsqueeze(0)?, mask: Tensor::ones((1, l), DType::F32, &dev)? };
            let uncond = match model.null_caption() {
                Some(_) if self.cfg.cfg != 1.0 => Some(Condition::official_null(model, &cond)?),
                _ => None,
            };
            let guided = Guided::new(model, cond, uncond, self.cfg.cfg, micro.clone())?;
            for (col, &seed) in self.cfg.seeds.iter().enumerate() {
                let mut rng = Rng::new(seed);
                let x = rng.normal_tensor(&[1, c.in_channels, side, side], 1.0, &dev)?;
                let mut model_fn = |x: &Tensor, t: f64| guided.output(x, t);
                let mut noise_fn = |x: &Tensor| rng.normal_tensor(x.dims(), 1.0, x.device());
                let latents = sampler::sample(self.cfg.sampler, &diffusion, steps, x, &mut model_fn, &mut noise_fn)?;
                let rgb = super::generate::to_rgb(&self.vae.decode(&latents)?)?;
                let tile = image::RgbImage::from_raw(px, px, rgb).expect("the VAE decodes side × scale pixels");
                image::imageops::replace(
                    &mut grid,
                    &tile,
                    (col as u32 * (px + GAP)) as i64,
                    (r as u32 * (px + GAP)) as i64,
                );
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        let png = dir.join(format!("step_{step:07}.png"));
        let title = format!(
            "step {step}{} - {}, {steps} steps, cfg {}",
            if self.cfg.ema { " (EMA)" } else { "" },
            self.cfg.sampler.name(),
            self.cfg.cfg
        );
        let labels = GridLabels {
            title: title.clone(),
            note: self.note.clone(),
            columns: self.cfg.seeds.iter().map(|s| format!("seed {s}")).collect(),
            rows: self.prompts.clone(),
        };
        let labelled = labelled_grid(&grid, (px, px), GAP, &labels);
        let mut text = vec![("Title", title), ("Description", self.prompts.join("\n"))];
        if let Some(note) = &self.note {
            text.push(("Comment", note.clone()));
        }
        crate::shards::write_atomic(&png, &png_with_text(&labelled, &text)?)?;
        let meta = serde_json::json!({
            "step": step, "rows": self.prompts, "columns (seeds)": self.cfg.seeds, "sampler": self.cfg.sampler,
            "steps": steps, "cfg": self.cfg.cfg, "ema": self.cfg.ema, "size": px, "note": self.note,
        });
        crate::shards::write_atomic(&png.with_extension("json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        Ok(png)
    }
}
