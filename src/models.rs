//! `pixforge models`: tiny randomly initialised models in the real layouts, and a forward pass over
//! tensors from a safetensors file, so anyone can check parity against another implementation.

use crate::train::init::init;
use crate::train::model::{PixArt, PixArtConfig};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Model kinds `init-tiny` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ModelKind {
    /// The PixArt-α transformer (diffusers folder `transformer/` and official-key `official.safetensors`).
    Pixart,
}

/// Writes a tiny model of `kind` into `out`.
pub fn init_tiny(kind: ModelKind, out: &Path, micro_conditions: bool, seed: u64) -> anyhow::Result<()> {
    match kind {
        ModelKind::Pixart => {
            let config = PixArtConfig {
                num_attention_heads: 3,
                attention_head_dim: 8,
                in_channels: 4,
                out_channels: 8,
                num_layers: 2,
                sample_size: 8,
                patch_size: 2,
                caption_channels: 32,
                interpolation_scale: Some(1.0),
                norm_eps: 1e-6,
            };
            let model = init(config, micro_conditions, 120, seed, &Device::Cpu)?;
            model.save_diffusers(&out.join("transformer"))?;
            model.save_official(&out.join("official.safetensors"))?;
        }
    }
    Ok(())
}

/// The model folder of a directory: the folder itself when it has a `config.json`, else its
/// `transformer/` (a diffusers pipeline or an `init-tiny` output).
fn model_folder(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    for d in [dir.to_path_buf(), dir.join("transformer")] {
        if d.join("config.json").is_file() {
            return Ok(d);
        }
    }
    anyhow::bail!("{}: expected a config.json in the folder or in its transformer/", dir.display())
}

/// Runs the model in `model_dir` (its kind read from `config.json`: diffusers' `_class_name` or
/// transformers' `architectures`) on the tensors of `inputs` and writes its outputs to `out`:
/// - `PixArtTransformer2DModel`: `latents`, `timestep`, `caption`, `mask` (+ `resolution`,
///   `aspect_ratio`) → `output`;
/// - `T5EncoderModel`: `input_ids` `[B, L]` → `last_hidden_state` `[B, L, d_model]`;
/// - `AutoencoderKL`: `pixels` `[B, 3, H, W]` in [−1, 1] → posterior `mean` and `std`.
///
/// Returns each output's name and shape.
pub fn forward(model_dir: &Path, inputs: &Path, out: &Path) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let folder = model_folder(model_dir)?;
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder.join("config.json"))?)?;
    let class = cfg["_class_name"].as_str().or_else(|| cfg["architectures"][0].as_str()).unwrap_or_default();
    let io = candle_core::safetensors::load(inputs, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", inputs.display()))?;
    let get = |k: &str| -> anyhow::Result<&Tensor> {
        io.get(k).ok_or_else(|| {
            let mut have: Vec<&String> = io.keys().collect();
            have.sort();
            anyhow::anyhow!("{}: expected a tensor {k:?}; found {have:?}", inputs.display())
        })
    };
    let outputs: Vec<(&str, Tensor)> = match class {
        "PixArtTransformer2DModel" => {
            let model = PixArt::load_diffusers(&folder, &Device::Cpu)?;
            let micro = match (io.get("resolution"), io.get("aspect_ratio")) {
                (Some(r), Some(a)) => Some((r, a)),
                _ => None,
            };
            vec![("output", model.forward(get("latents")?, get("timestep")?, get("caption")?, get("mask")?, micro)?)]
        }
        "T5EncoderModel" => {
            let mut t5 = crate::latents::t5::TextEncoder::load_encoder(&folder, &Device::Cpu)?;
            vec![("last_hidden_state", t5.encode_ids(get("input_ids")?)?)]
        }
        "AutoencoderKL" => {
            let vae = crate::latents::vae::Vae::load(&folder, &Device::Cpu)?;
            let (mean, std) = vae.encode(get("pixels")?)?;
            vec![("mean", mean), ("std", std)]
        }
        other => anyhow::bail!("{}: model kind {other:?} is not supported by `models forward`", folder.display()),
    };
    let shapes = outputs.iter().map(|(k, t)| (k.to_string(), t.dims().to_vec())).collect();
    let tensors: HashMap<String, Tensor> = outputs.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
    let tmp = crate::shards::temp_path(out);
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out)?;
    Ok(shapes)
}

/// Timings of one training step of a PixArt transformer.
#[derive(Debug, serde::Serialize)]
pub struct StepTiming {
    /// Median seconds per forward + backward step.
    pub seconds_per_step: f64,
    /// Every step's seconds.
    pub steps: Vec<f64>,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The benchmark step of issue 4: depth 4, hidden 384, 6 heads, 32×32 latents, 120 caption tokens of
/// 4096 channels, batch 4, f32; loss = mean of the squared output; forward + backward, `iters` times
/// after one warm-up step.
pub fn bench_pixart_step(iters: usize) -> anyhow::Result<StepTiming> {
    let config = PixArtConfig {
        num_attention_heads: 6,
        attention_head_dim: 64,
        in_channels: 4,
        out_channels: 8,
        num_layers: 4,
        sample_size: 32,
        patch_size: 2,
        caption_channels: 4096,
        interpolation_scale: Some(1.0),
        norm_eps: 1e-6,
    };
    let dev = Device::Cpu;
    let mut model = init(config, false, 120, 0, &dev)?;
    let _vars = model.trainable()?;
    let mut rng = crate::train::init::Rng::new(1);
    let latents = rng.normal_tensor(&[4, 4, 32, 32], 1.0, &dev)?;
    let caption = rng.normal_tensor(&[4, 120, 4096], 1.0, &dev)?;
    let mask = Tensor::ones((4, 120), candle_core::DType::F32, &dev)?;
    let t = Tensor::from_vec(vec![999f32, 500.0, 100.0, 1.0], 4, &dev)?;
    let mut steps = Vec::new();
    for i in 0..=iters {
        let start = std::time::Instant::now();
        let out = model.forward(&latents, &t, &caption, &mask, None)?;
        let grads = out.sqr()?.mean_all()?.backward()?;
        drop(grads);
        if i > 0 {
            steps.push(start.elapsed().as_secs_f64());
        }
    }
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(StepTiming {
        seconds_per_step: sorted[sorted.len() / 2],
        steps,
        peak_rss_mib: crate::density::report::peak_rss_mib(),
    })
}
