//! IDDPM ancestral sampling, the official `p_sample_loop` with `IDDPM(str(steps))`: the training
//! diffusion respaced to `steps` steps, each step drawing x_{t−1} ~ N(μ, σ²) with the learned-range
//! variance from the model's second half, no noise on the last step, x̂0 not clipped
//! (`clip_denoised=False`, as the official inference script).

use super::{ModelFn, NoiseFn};
use crate::train::diffusion::Diffusion;
use candle_core::{Result, Tensor};

/// An ancestral sampler over a respaced diffusion.
#[derive(Debug, Clone)]
pub struct Ancestral {
    diffusion: Diffusion,
    /// The original timestep of each respaced step (what the model is given), ascending.
    pub timestep_map: Vec<usize>,
}

impl Ancestral {
    /// `steps` ancestral steps over `base` (PixArt's 1000-step diffusion).
    pub fn new(base: &Diffusion, steps: usize) -> Self {
        let (diffusion, timestep_map) = base.respaced(steps);
        Ancestral { diffusion, timestep_map }
    }

    /// Runs the chain from noise `x`; the model must predict the variance (2C output channels).
    pub fn sample(&self, mut x: Tensor, model: &mut ModelFn, noise: &mut NoiseFn) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        for i in (0..self.timestep_map.len()).rev() {
            let out = model(&x, self.timestep_map[i] as f64)?;
            if out.dim(1)? != 2 * c {
                candle_core::bail!(
                    "IDDPM sampling needs a learned-variance model ({} output channels); this one has {}",
                    2 * c,
                    out.dim(1)?
                );
            }
            let t = vec![i; b];
            let (mean, logvar) =
                self.diffusion.p_mean_variance(&out.narrow(1, 0, c)?, &out.narrow(1, c, c)?, &x, &t)?;
            x = if i > 0 { (mean + noise(&x)?.mul(&logvar.affine(0.5, 0.0)?.exp()?)?)? } else { mean };
        }
        Ok(x)
    }
}
