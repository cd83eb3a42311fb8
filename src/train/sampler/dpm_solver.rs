//! DPM-Solver++(2M), the sampler of PixArt-α's inference (20 steps), with either schedule:
//! - official (`dpm_solver.py`: `NoiseScheduleVP('discrete')`, `skip_type="time_uniform"`,
//!   multistep order 2): continuous times `linspace(1, 1/N, steps + 1)`, log ᾱ interpolated piecewise
//!   linearly between the discrete steps, model input `(t − 1/N)·N`; second order to the end;
//! - diffusers (`DPMSolverMultistepScheduler` defaults): `timestep_spacing = "linspace"` over discrete
//!   timesteps, σ kept in float32, final σ = 0 reached with a first-order step.
//!
//! Both share the data-prediction update (midpoint second order).

use super::{eps_of, ModelFn};
use candle_core::{Result, Tensor};

/// Which timestep schedule the solver walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSchedule {
    /// The official PixArt-α inference (`DPMS`, time-uniform).
    Official,
    /// diffusers' `DPMSolverMultistepScheduler` (linspace spacing, final σ 0).
    Diffusers,
}

/// A DPM-Solver++(2M) schedule: the model times to visit and the σ at each (one more, the end).
#[derive(Debug, Clone)]
pub struct DpmSolverPP {
    /// Model timestep inputs, from high noise to low.
    pub times: Vec<f64>,
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) at each time, then at the end (0 for diffusers).
    pub sigmas: Vec<f64>,
    /// Whether the last step is first order (diffusers) or second (official).
    pub lower_order_final: bool,
}

/// α and σ of the data/noise mix for a given σ (variance preserving: α = 1/√(σ² + 1)).
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// log α(t) of the official `NoiseScheduleVP('discrete')`: `½ log ᾱ` at `t_i = (i + 1)/N`, linear in
/// between and beyond the ends.
fn official_log_alpha(alphas_cumprod: &[f64], t: f64) -> f64 {
    let n = alphas_cumprod.len();
    let pos = t * n as f64 - 1.0;
    let i = (pos.floor().max(0.0) as usize).min(n.saturating_sub(2));
    let (a, b) = (0.5 * alphas_cumprod[i].ln(), 0.5 * alphas_cumprod[(i + 1).min(n - 1)].ln());
    a + (b - a) * (pos - i as f64)
}

impl DpmSolverPP {
    /// The schedule for `steps` steps over a diffusion with cumulative alphas `alphas_cumprod`.
    pub fn new(alphas_cumprod: &[f64], steps: usize, schedule: DpmSchedule) -> Self {
        let n = alphas_cumprod.len();
        let steps = steps.clamp(1, n);
        match schedule {
            DpmSchedule::Official => {
                let (t_end, t_start) = (1.0 / n as f64, 1.0);
                let ts: Vec<f64> = (0..=steps).map(|i| t_start + (t_end - t_start) * i as f64 / steps as f64).collect();
                let sigmas = ts
                    .iter()
                    .map(|&t| {
                        let a = official_log_alpha(alphas_cumprod, t).exp();
                        (1.0 - a * a).sqrt() / a
                    })
                    .collect();
                let times = ts[..steps].iter().map(|t| (t - t_end) * n as f64).collect();
                DpmSolverPP { times, sigmas, lower_order_final: false }
            }
            DpmSchedule::Diffusers => {
                // linspace(0, n − 1, steps + 1).round()[::-1][:-1]
                let ts: Vec<usize> = (0..=steps)
                    .map(|i| ((n - 1) as f64 * i as f64 / steps as f64).round_ties_even() as usize)
                    .rev()
                    .take(steps)
                    .collect();
                let sigma = |t: usize| ((1.0 - alphas_cumprod[t]) / alphas_cumprod[t]).sqrt();
                // diffusers keeps σ in float32.
                let sigmas = ts.iter().map(|&t| sigma(t) as f32 as f64).chain(std::iter::once(0.0)).collect();
                DpmSolverPP { times: ts.iter().map(|&t| t as f64).collect(), sigmas, lower_order_final: true }
            }
        }
    }

    /// Runs the solver from `x` (standard normal noise: the initial σ scale is 1) with `model(x, t)`
    /// the model's output (ε in the first `C` channels); returns the sample.
    pub fn sample(&self, mut x: Tensor, model: &mut ModelFn) -> Result<Tensor> {
        let c = x.dim(1)?;
        let last = self.times.len() - 1;
        let mut prev_x0: Option<Tensor> = None;
        let lambda = |a: f64, s: f64| a.ln() - s.ln();
        for (i, &t) in self.times.iter().enumerate() {
            let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
            let eps = eps_of(&model(&x, t)?, c)?;
            let x0 = ((&x - eps.affine(sigma_s, 0.0)?)? / alpha_s)?;
            let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
            let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
            let ratio = if sigma_t == 0.0 { 0.0 } else { sigma_t / sigma_s };
            let phi = alpha_t * ((-h).exp() - 1.0);
            x = match &prev_x0 {
                Some(m1) if !(i == last && self.lower_order_final) => {
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
        let s = DpmSolverPP::new(d.alphas_cumprod(), 20, DpmSchedule::Diffusers);
        assert_eq!(s.times.len(), 20);
        assert_eq!(&s.times[..4], &[999.0, 949.0, 899.0, 849.0]);
        assert_eq!(s.times[10], 500.0, "499.5 rounds half to even");
        assert_eq!(*s.times.last().unwrap(), 50.0);
        assert_eq!(s.sigmas.len(), 21);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    }

    #[test]
    fn official_times_are_uniform_from_999_to_0() {
        let d = crate::train::diffusion::Diffusion::linear(1000);
        let s = DpmSolverPP::new(d.alphas_cumprod(), 20, DpmSchedule::Official);
        assert_eq!(s.times.len(), 20);
        assert!((s.times[0] - 999.0).abs() < 1e-9);
        assert!((s.times[1] - 949.05).abs() < 1e-9);
        // On the grid, σ is the discrete one: t = 1 is step 999, the end t = 1/N is step 0.
        let ac = d.alphas_cumprod();
        let sigma = |i: usize| ((1.0 - ac[i]) / ac[i]).sqrt();
        assert!((s.sigmas[0] - sigma(999)).abs() < 1e-9 * sigma(999));
        assert!((s.sigmas[20] - sigma(0)).abs() < 1e-9 * sigma(0));
    }
}
