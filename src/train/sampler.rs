//! DPM-Solver++(2M), the sampler of PixArt-α's inference (20 steps), with the schedule of diffusers'
//! `DPMSolverMultistepScheduler` defaults: linear betas, `timestep_spacing = "linspace"`, ε prediction,
//! second order (midpoint), first order on the first step and on the last (whose σ is 0).

use candle_core::{Result, Tensor};

/// A DPM-Solver++(2M) schedule: the model timesteps to visit and the σ at each (one more, the final 0).
#[derive(Debug, Clone)]
pub struct DpmSolverPP {
    /// Model timesteps, from high noise to low.
    pub timesteps: Vec<usize>,
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) at each timestep, then 0.
    pub sigmas: Vec<f64>,
}

/// numpy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// α and σ of the data/noise mix for a given σ (variance preserving: α = 1/√(σ² + 1)).
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl DpmSolverPP {
    /// The schedule for `steps` steps over a diffusion with cumulative alphas `alphas_cumprod`.
    pub fn new(alphas_cumprod: &[f64], steps: usize) -> Self {
        let n = alphas_cumprod.len();
        let steps = steps.clamp(1, n);
        // linspace(0, n − 1, steps + 1).round()[::-1][:-1]
        let timesteps: Vec<usize> = (0..=steps)
            .map(|i| round_half_even((n - 1) as f64 * i as f64 / steps as f64) as usize)
            .rev()
            .take(steps)
            .collect();
        let sigma = |t: usize| ((1.0 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt();
        // diffusers keeps σ in float32.
        let sigmas = timesteps.iter().map(|&t| sigma(t) as f32 as f64).chain(std::iter::once(0.0)).collect();
        DpmSolverPP { timesteps, sigmas }
    }

    /// Runs the solver from `x` (noise, σ_max-scaled as drawn: diffusers' init sigma is 1) with
    /// `eps(x, t)` the model's noise prediction at timestep `t`; returns the sample.
    pub fn sample(&self, mut x: Tensor, eps: &mut dyn FnMut(&Tensor, usize) -> Result<Tensor>) -> Result<Tensor> {
        let last = self.timesteps.len() - 1;
        let mut prev_x0: Option<Tensor> = None;
        for (i, &t) in self.timesteps.iter().enumerate() {
            let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
            let x0 = ((&x - eps(&x, t)?.affine(sigma_s, 0.0)?)? / alpha_s)?;
            let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
            let lambda = |a: f64, s: f64| a.ln() - s.ln();
            let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
            let ratio = if sigma_t == 0.0 { 0.0 } else { sigma_t / sigma_s };
            let phi = alpha_t * ((-h).exp() - 1.0);
            x = match &prev_x0 {
                Some(m1) if i != last => {
                    let (alpha_p, sigma_p) = alpha_sigma(self.sigmas[i - 1]);
                    let r0 = (lambda(alpha_s, sigma_s) - lambda(alpha_p, sigma_p)) / h;
                    let d1 = ((&x0 - m1)? / r0)?;
                    ((x.affine(ratio, 0.0)? - x0.affine(phi, 0.0)?)? - d1.affine(0.5 * phi, 0.0)?)?
                }
                _ => (x.affine(ratio, 0.0)? - x0.affine(phi, 0.0)?)?,
            };
            prev_x0 = Some(x0);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_diffusers_linspace_spacing() {
        let d = crate::train::diffusion::Diffusion::linear(1000);
        let s = DpmSolverPP::new(d.alphas_cumprod(), 20);
        assert_eq!(s.timesteps.len(), 20);
        assert_eq!(&s.timesteps[..4], &[999, 949, 899, 849]);
        assert_eq!(s.timesteps[10], 500, "499.5 rounds half to even");
        assert_eq!(*s.timesteps.last().unwrap(), 50);
        assert_eq!(s.sigmas.len(), 21);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    }
}
