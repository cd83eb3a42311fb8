//! The SD VAE (`AutoencoderKL`) from a diffusers folder (`config.json` +
//! `diffusion_pytorch_model.safetensors`): our encoder ([`super::vae_encoder`], posterior mean and
//! std) and candle-transformers' decoder.

use super::vae_encoder::{Encoder, EncoderConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn as nn;
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

/// Runs `f` on each image of a batch and concatenates: candle 0.11's VAE attention block
/// (`AttentionBlock`) mixes the images of a batch (tests/vae.rs checks a batch of two against
/// diffusers), so images go through one at a time.
fn per_image(x: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
    let outs = (0..x.dim(0)?).map(|i| f(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}

/// A loaded VAE.
pub struct Vae {
    model: AutoEncoderKL,
    encoder: Encoder,
    /// Latents are the VAE's scaled by this (0.18215 for SD / PixArt-α).
    pub scaling_factor: f64,
    /// Pixels per latent along each side (8 for SD).
    pub scale: usize,
}

impl Vae {
    /// Loads a diffusers `AutoencoderKL` folder (or a pipeline folder with `vae/`), as f32.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let dir = crate::hub::part(dir, "vae");
        let cfg_path = dir.join("config.json");
        let c: VaeConfig = crate::hub::read_config(&cfg_path)?;
        if let Some(t) = c.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            anyhow::bail!(
                "{}: down block type {t:?} is not supported (expected DownEncoderBlock2D)",
                cfg_path.display()
            );
        }
        let files = crate::hub::weight_files(&dir, "diffusion_pytorch_model")?;
        let vb = crate::hub::Weights::open(&files)?.var_builder(DType::F32, device);
        Self::from_parts(vb, c).map_err(|e| anyhow::anyhow!("{}: not an AutoencoderKL checkpoint: {e}", dir.display()))
    }

    /// Builds the VAE of a diffusers `config.json` value on `vb` (which may create the weights:
    /// `pixforge models init-tiny --kind vae`).
    pub fn build(vb: nn::VarBuilder, config: &serde_json::Value) -> anyhow::Result<Self> {
        let c: VaeConfig = serde_json::from_value(config.clone())?;
        Ok(Self::from_parts(vb, c)?)
    }

    fn from_parts(vb: nn::VarBuilder, c: VaeConfig) -> candle_core::Result<Self> {
        let config = AutoEncoderKLConfig {
            block_out_channels: c.block_out_channels.clone(),
            layers_per_block: c.layers_per_block,
            latent_channels: c.latent_channels,
            norm_num_groups: c.norm_num_groups,
            use_quant_conv: c.use_quant_conv,
            use_post_quant_conv: c.use_post_quant_conv,
        };
        let encoder = Encoder::load(
            vb.clone(),
            &EncoderConfig {
                in_channels: c.in_channels,
                block_out_channels: &c.block_out_channels,
                layers_per_block: c.layers_per_block,
                latent_channels: c.latent_channels,
                norm_num_groups: c.norm_num_groups,
                use_quant_conv: c.use_quant_conv,
            },
        )?;
        let model = AutoEncoderKL::new(vb, c.in_channels, c.out_channels, config)?;
        Ok(Vae { model, encoder, scaling_factor: c.scaling_factor, scale: 1 << (c.block_out_channels.len() - 1) })
    }

    /// The posterior of images `[B, 3, H, W]` in [−1, 1]: mean and std `[B, C, H/scale, W/scale]`
    /// (unscaled; the log variance clamped to [−30, 20] as diffusers' `DiagonalGaussianDistribution`).
    pub fn encode(&self, pixels: &Tensor) -> anyhow::Result<(Tensor, Tensor)> {
        let m = per_image(&pixels.to_dtype(DType::F32)?, |x| self.encoder.moments(x))?;
        let c = m.dim(1)? / 2;
        let mean = m.narrow(1, 0, c)?;
        let std = (m.narrow(1, c, c)?.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
        Ok((mean, std))
    }

    /// Images `[B, 3, H, W]` in [−1, 1] from (scaled) latents `[B, C, H/scale, W/scale]`.
    pub fn decode(&self, latents: &Tensor) -> anyhow::Result<Tensor> {
        Ok(per_image(&(latents.to_dtype(DType::F32)? / self.scaling_factor)?, |z| self.model.decode(z))?)
    }
}
