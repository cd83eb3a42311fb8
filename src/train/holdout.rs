//! The held-out validation loss: which samples are kept out of training (a selection, or a seeded
//! share of the keys), and their mean hybrid loss at a fixed grid of timesteps with fixed noise
//! (each sample's from a generator seeded by its key), so that the value depends on the weights
//! alone: comparable across runs, the same after a resume.

use super::config::HoldoutConfig;
use super::data::TrainSet;
use super::diffusion::Diffusion;
use super::model::PixArt;
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

/// A 64-bit hash of `key` under `seed`.
fn key_hash(seed: u64, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(key.as_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Moves the held-out samples of `cfg` out of `set`'s training samples; returns how many.
pub fn hold_out(set: &mut TrainSet, cfg: &HoldoutConfig) -> anyhow::Result<usize> {
    let held = match &cfg.selection {
        Some(path) => {
            let keys = crate::shards::selection::read_selection(path)
                .map_err(|e| anyhow::anyhow!("holdout.selection {}: {e:#}", path.display()))?;
            set.hold_out(&|k| keys.contains(k))
        }
        None => {
            let threshold = cfg.fraction * u64::MAX as f64;
            set.hold_out(&|k| (key_hash(cfg.seed, k) as f64) < threshold)
        }
    };
    if held == 0 {
        anyhow::bail!(
            "holdout: no sample held out (a selection with none of the caches' keys, or too small a fraction)"
        );
    }
    if set.is_empty() {
        anyhow::bail!("holdout: every sample is held out; nothing is left to train on");
    }
    Ok(held)
}

/// The grid of `n` timesteps over `steps`: `(i + ½)·steps / n`.
pub fn timestep_grid(n: usize, steps: usize) -> Vec<usize> {
    (0..n).map(|i| (((i as f64 + 0.5) * steps as f64 / n as f64) as usize).min(steps - 1)).collect()
}

/// The mean hybrid loss of `model` over `set`'s held-out samples, each at every timestep of the grid
/// with its own fixed noise.
pub fn held_out_loss(
    model: &PixArt,
    set: &TrainSet,
    cfg: &HoldoutConfig,
    scaling_factor: f64,
    max_tokens: usize,
    device: &Device,
) -> anyhow::Result<f64> {
    let diffusion = Diffusion::linear(1000);
    let grid = timestep_grid(cfg.timesteps, diffusion.steps());
    let dtype = model.weights()["pos_embed.proj.weight"].dtype();
    let keys = set.held_keys();
    let mut sum = 0.0;
    for (i, key) in keys.iter().enumerate() {
        let batch = set.held_batch(i, grid.len(), scaling_factor, max_tokens, device)?;
        let x0 = batch.latents.to_dtype(dtype)?;
        let mut rng = Rng::new(key_hash(cfg.seed ^ 0x5EED_0F40_1D00, key));
        let noise = rng.normal_tensor(x0.dims(), 1.0, &Device::Cpu)?.to_device(device)?.to_dtype(dtype)?;
        let x_t = diffusion.q_sample(&x0, &grid, &noise)?;
        let t = Tensor::from_vec(grid.iter().map(|&v| v as f32).collect::<Vec<_>>(), grid.len(), device)?;
        let micro = model.has_micro_conditions().then_some((&batch.img_hw, &batch.aspect_ratio));
        let micro = match micro {
            Some((a, b)) => Some((a.to_dtype(dtype)?, b.to_dtype(dtype)?)),
            None => None,
        };
        let out = model.forward(
            &x_t,
            &t,
            &batch.caption.to_dtype(dtype)?,
            &batch.mask,
            micro.as_ref().map(|(a, b)| (a, b)),
        )?;
        let losses = diffusion.training_losses(&out, &x0, &x_t, &grid, &noise)?;
        sum += losses.loss.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(sum / keys.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_spans_the_steps_evenly() {
        assert_eq!(timestep_grid(4, 1000), [125, 375, 625, 875]);
        assert_eq!(timestep_grid(1, 1000), [500]);
    }

    #[test]
    fn the_share_held_out_follows_the_fraction() {
        let held = (0..10_000).filter(|i| (key_hash(3, &format!("{i:09}")) as f64) < 0.1 * u64::MAX as f64).count();
        assert!((900..1100).contains(&held), "{held}");
    }
}
