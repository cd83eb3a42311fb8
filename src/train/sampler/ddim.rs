//! DDIM (Song et al.) as diffusers' `DDIMScheduler` runs it for PixArt's diffusion: "leading" spacing
//! (`t = k·⌊T/steps⌋`), ᾱ of the step before or 1 past the start (`set_alpha_to_one`), x̂0 not clipped,
//! η-scaled noise (η = 0: deterministic).

use super::{eps_of, ModelFn, NoiseFn};
use candle_core::{Result, Tensor};

/// A DDIM schedule.
#[derive(Debug, Clone)]
pub struct Ddim {
    /// Model timesteps, from high noise to low.
    pub timesteps: Vec<usize>,
    /// ᾱ at each timestep.
    alpha_bar: Vec<f64>,
    /// ᾱ at the step each one leads to (1 after the last).
    alpha_bar_prev: Vec<f64>,
    /// Stochasticity η (0 = deterministic DDIM, 1 = DDPM-like).
    pub eta: f64,
}

impl Ddim {
    /// `steps` DDIM steps over a diffusion with cumulative alphas `alphas_cumprod`.
    pub fn new(alphas_cumprod: &[f64], steps: usize, eta: f64) -> Self {
        let n = alphas_cumprod.len();
        let steps = steps.clamp(1, n);
        let ratio = n / steps;
        let timesteps: Vec<usize> = (0..steps).rev().map(|k| k * ratio).collect();
        let alpha_bar = timesteps.iter().map(|&t| alphas_cumprod[t]).collect();
        let alpha_bar_prev =
            timesteps.iter().map(|&t| if t >= ratio { alphas_cumprod[t - ratio] } else { 1.0 }).collect();
        Ddim { timesteps, alpha_bar, alpha_bar_prev, eta }
    }

    /// Runs DDIM from noise `x`; `noise` is only drawn from when η > 0.
    pub fn sample(&self, mut x: Tensor, model: &mut ModelFn, noise: &mut NoiseFn) -> Result<Tensor> {
        let c = x.dim(1)?;
        for (i, &t) in self.timesteps.iter().enumerate() {
            let (a, a_prev) = (self.alpha_bar[i], self.alpha_bar_prev[i]);
            let eps = eps_of(&model(&x, t as f64)?, c)?;
            let x0 = ((&x - eps.affine((1.0 - a).sqrt(), 0.0)?)? / a.sqrt())?;
            let variance = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev);
            let std = self.eta * variance.max(0.0).sqrt();
            let dir = eps.affine((1.0 - a_prev - std * std).max(0.0).sqrt(), 0.0)?;
            x = (x0.affine(a_prev.sqrt(), 0.0)? + dir)?;
            if std > 0.0 {
                x = (&x + noise(&x)?.affine(std, 0.0)?)?;
            }
        }
        Ok(x)
    }
}
