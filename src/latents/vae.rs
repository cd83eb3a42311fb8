//! The SD VAE (`AutoencoderKL`) from a diffusers folder (`config.json` +
//! `diffusion_pytorch_model.safetensors`), through candle-transformers' implementation.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use std::path::Path;

#[derive(serde::Deserialize)]
struct VaeConfig {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    norm_num_groups: usize,
    #[serde(default = "yes")]
    use_quant_conv: bool,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "sd_scaling")]
    scaling_factor: f64,
    #[serde(default)]
    down_block_types: Vec<String>,
}

fn yes() -> bool {
    true
}

fn sd_scaling() -> f64 {
    0.18215
}

/// A loaded VAE.
pub struct Vae {
    model: AutoEncoderKL,
    /// Latents are the VAE's scaled by this (0.18215 for SD / PixArt-α).
    pub scaling_factor: f64,
    /// Pixels per latent along each side (8 for SD).
    pub scale: usize,
}

impl Vae {
    /// Loads a diffusers `AutoencoderKL` folder (or a pipeline folder with `vae/`), as f32.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let dir = if dir.join("vae").is_dir() { dir.join("vae") } else { dir.to_path_buf() };
        let cfg_path = dir.join("config.json");
        let c: VaeConfig = super::read_config(&cfg_path)?;
        if let Some(t) = c.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            anyhow::bail!(
                "{}: down block type {t:?} is not supported (expected DownEncoderBlock2D)",
                cfg_path.display()
            );
        }
        let files = super::weight_files(&dir, "diffusion_pytorch_model")?;
        // SAFETY: the files are memory-mapped read-only; we do not modify them while loaded.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let config = AutoEncoderKLConfig {
            block_out_channels: c.block_out_channels.clone(),
            layers_per_block: c.layers_per_block,
            latent_channels: c.latent_channels,
            norm_num_groups: c.norm_num_groups,
            use_quant_conv: c.use_quant_conv,
            use_post_quant_conv: c.use_post_quant_conv,
        };
        let model = AutoEncoderKL::new(vb, c.in_channels, c.out_channels, config)
            .map_err(|e| anyhow::anyhow!("{}: not an AutoencoderKL checkpoint: {e}", dir.display()))?;
        Ok(Vae { model, scaling_factor: c.scaling_factor, scale: 1 << (c.block_out_channels.len() - 1) })
    }

    /// Images `[B, 3, H, W]` in [−1, 1] from (scaled) latents `[B, C, H/scale, W/scale]`.
    pub fn decode(&self, latents: &Tensor) -> anyhow::Result<Tensor> {
        Ok(self.model.decode(&(latents.to_dtype(DType::F32)? / self.scaling_factor)?)?)
    }
}
