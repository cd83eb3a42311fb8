//! The PixArt-α training diffusion (IDDPM, as in the official `gaussian_diffusion.py`): linear betas
//! 1e-4…0.02 over T = 1000 steps with float64 tables, ε prediction with a learned-range variance, and
//! the hybrid loss MSE(ε) + VB, where VB sees the predicted mean detached (no gradient from VB into
//! ε) and is the discretized Gaussian decoder NLL at t = 0.

use candle_core::{DType, Device, Result, Tensor, D};

/// The diffusion's per-timestep tables (float64, as the official code keeps them).
#[derive(Debug, Clone)]
pub struct Diffusion {
    /// β_t.
    pub betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    sqrt_ac: Vec<f64>,
    sqrt_one_minus_ac: Vec<f64>,
    sqrt_recip_ac: Vec<f64>,
    sqrt_recipm1_ac: Vec<f64>,
    /// log of the posterior variance β̃_t, with t = 0 clipped to β̃_1.
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Posterior mean coefficient of x0.
    pub posterior_mean_coef1: Vec<f64>,
    /// Posterior mean coefficient of x_t.
    pub posterior_mean_coef2: Vec<f64>,
    log_betas: Vec<f64>,
}

/// Per-sample loss terms, each of shape `[B]`.
#[derive(Debug)]
pub struct Losses {
    /// Mean squared error of the predicted noise.
    pub mse: Tensor,
    /// Variational bound term, in bits per dimension.
    pub vb: Tensor,
    /// `mse + vb`.
    pub loss: Tensor,
}

impl Diffusion {
    /// PixArt-α's schedule: `linspace(1e-4, 0.02)` scaled by 1000/T, over `steps` steps.
    pub fn linear(steps: usize) -> Self {
        let scale = 1000.0 / steps as f64;
        let (lo, hi) = (scale * 1e-4, scale * 0.02);
        let betas: Vec<f64> =
            (0..steps).map(|i| if steps == 1 { lo } else { lo + (hi - lo) * i as f64 / (steps - 1) as f64 }).collect();
        Self::from_betas(betas)
    }

    /// The tables of a diffusion with the given β_t (the official `GaussianDiffusion.__init__`).
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let steps = betas.len();
        let mut ac = Vec::with_capacity(steps);
        let mut prod = 1.0;
        for b in &betas {
            prod *= 1.0 - b;
            ac.push(prod);
        }
        let ac_prev: Vec<f64> = std::iter::once(1.0).chain(ac[..steps - 1].iter().copied()).collect();
        let post_var: Vec<f64> = (0..steps).map(|i| betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i])).collect();
        let clipped = (0..steps).map(|i| post_var[if i == 0 { 1.min(steps - 1) } else { i }].ln()).collect();
        Diffusion {
            sqrt_ac: ac.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_ac: ac.iter().map(|a| (1.0 - a).sqrt()).collect(),
            sqrt_recip_ac: ac.iter().map(|a| (1.0 / a).sqrt()).collect(),
            sqrt_recipm1_ac: ac.iter().map(|a| (1.0 / a - 1.0).sqrt()).collect(),
            posterior_log_variance_clipped: clipped,
            posterior_mean_coef1: (0..steps).map(|i| betas[i] * ac_prev[i].sqrt() / (1.0 - ac[i])).collect(),
            posterior_mean_coef2: (0..steps)
                .map(|i| (1.0 - ac_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i]))
                .collect(),
            log_betas: betas.iter().map(|b| b.ln()).collect(),
            betas,
            alphas_cumprod: ac,
        }
    }

    /// The diffusion restricted to `count` timesteps evenly spread over `0..T` (the official
    /// `space_timesteps(T, str(count))` + `SpacedDiffusion`): β recomputed from ᾱ at the kept steps.
    /// Returns it and, for each of its steps, the original timestep (what the model is given).
    pub fn respaced(&self, count: usize) -> (Diffusion, Vec<usize>) {
        let n = self.steps();
        let count = count.clamp(1, n);
        let stride = if count > 1 { (n - 1) as f64 / (count - 1) as f64 } else { 1.0 };
        let mut keep = Vec::with_capacity(count);
        let mut cur = 0.0f64;
        for _ in 0..count {
            keep.push(cur.round_ties_even() as usize);
            cur += stride;
        }
        keep.dedup();
        let mut last = 1.0;
        let betas = keep
            .iter()
            .map(|&t| {
                let b = 1.0 - self.alphas_cumprod[t] / last;
                last = self.alphas_cumprod[t];
                b
            })
            .collect();
        (Diffusion::from_betas(betas), keep)
    }

    /// Number of timesteps.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// ᾱ_t, the cumulative product of 1 − β.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `table[t_b]` as a `[B, 1, 1, 1]` tensor of `dtype` (the official `_extract_into_tensor`).
    fn extract(table: &[f64], t: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let v: Vec<f64> = t.iter().map(|&i| table[i]).collect();
        Tensor::from_vec(v, (t.len(), 1, 1, 1), device)?.to_dtype(dtype)
    }

    fn ex(&self, table: &[f64], t: &[usize], like: &Tensor) -> Result<Tensor> {
        Self::extract(table, t, like.dtype(), like.device())
    }

    /// `x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε`.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let a = x0.broadcast_mul(&self.ex(&self.sqrt_ac, t, x0)?)?;
        a + noise.broadcast_mul(&self.ex(&self.sqrt_one_minus_ac, t, x0)?)?
    }

    /// The model's reverse step p(x_{t−1} | x_t) from its noise prediction `eps` and variance
    /// interpolation `v` (learned range: `log σ² = frac·log β_t + (1 − frac)·log β̃_t`, `frac = (v + 1)/2`):
    /// the mean (through x̂0, not clipped) and the log variance.
    pub fn p_mean_variance(&self, eps: &Tensor, v: &Tensor, x_t: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
        let min_log = self.ex(&self.posterior_log_variance_clipped, t, x_t)?;
        let max_log = self.ex(&self.log_betas, t, x_t)?;
        let frac = v.affine(0.5, 0.5)?;
        let logvar = (frac.broadcast_mul(&max_log)? + frac.affine(-1.0, 1.0)?.broadcast_mul(&min_log)?)?;
        let pred_x0 = (x_t.broadcast_mul(&self.ex(&self.sqrt_recip_ac, t, x_t)?)?
            - eps.broadcast_mul(&self.ex(&self.sqrt_recipm1_ac, t, x_t)?)?)?;
        let coef1 = self.ex(&self.posterior_mean_coef1, t, x_t)?;
        let coef2 = self.ex(&self.posterior_mean_coef2, t, x_t)?;
        let mean = (pred_x0.broadcast_mul(&coef1)? + x_t.broadcast_mul(&coef2)?)?;
        Ok((mean, logvar))
    }

    /// The hybrid loss of a model output `[B, 2C, H, W]` (ε, then the variance interpolation `v`) for
    /// clean latents `x0`, their noised `x_t` at timesteps `t` and the noise used.
    pub fn training_losses(
        &self,
        model_output: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Losses> {
        let c = x0.dim(1)?;
        let eps = model_output.narrow(1, 0, c)?;
        let v = model_output.narrow(1, c, c)?;
        let mse = mean_flat(&(noise - &eps)?.sqr()?)?;

        // VB on the frozen mean: gradients reach only the variance half.
        let eps_frozen = eps.detach();
        let coef1 = self.ex(&self.posterior_mean_coef1, t, x0)?;
        let coef2 = self.ex(&self.posterior_mean_coef2, t, x0)?;
        let true_mean = (x0.broadcast_mul(&coef1)? + x_t.broadcast_mul(&coef2)?)?;
        let (model_mean, model_logvar) = self.p_mean_variance(&eps_frozen, &v, x_t, t)?;
        let min_log = self.ex(&self.posterior_log_variance_clipped, t, x0)?;
        let ln2 = std::f64::consts::LN_2;
        let kl = (mean_flat(&normal_kl(&true_mean, &min_log, &model_mean, &model_logvar)?)? / ln2)?;
        let nll =
            (mean_flat(&discretized_gaussian_log_likelihood(x0, &model_mean, &model_logvar.affine(0.5, 0.0)?)?)?
                / -ln2)?;
        let at_zero: Vec<u8> = t.iter().map(|&i| (i == 0) as u8).collect();
        let at_zero = Tensor::from_vec(at_zero, t.len(), x0.device())?;
        let vb = at_zero.where_cond(&nll, &kl)?;
        let loss = (&mse + &vb)?;
        Ok(Losses { mse, vb, loss })
    }
}

/// Mean over every dimension but the first.
fn mean_flat(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(1)?.mean(D::Minus1)
}

/// KL divergence of two Gaussians given means and log variances (broadcasting).
fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let d = logvar2.broadcast_sub(logvar1)?;
    let ratio = logvar1.broadcast_sub(logvar2)?.exp()?;
    let sq = (mean1 - mean2)?.sqr()?.broadcast_mul(&logvar2.neg()?.exp()?)?;
    ((d.affine(1.0, -1.0)? + ratio)? + sq)?.affine(0.5, 0.0)
}

/// The tanh approximation of the standard normal CDF used by the official code.
fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let inner = (x + x.powf(3.0)?.affine(0.044715, 0.0)?)?.affine((2.0 / std::f64::consts::PI).sqrt(), 0.0)?;
    inner.tanh()?.affine(0.5, 0.5)
}

/// Log-likelihood of `x` (data in [−1, 1]) under a Gaussian discretized to 255 bins.
fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Result<Tensor> {
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&centered.affine(1.0, 1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&centered.affine(1.0, -1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let log_cdf_plus = cdf_plus.maximum(1e-12)?.log()?;
    let log_one_minus_cdf_min = cdf_min.affine(-1.0, 1.0)?.maximum(1e-12)?.log()?;
    let log_delta = (&cdf_plus - &cdf_min)?.maximum(1e-12)?.log()?;
    let high = x.gt(0.999)?.where_cond(&log_one_minus_cdf_min, &log_delta)?;
    x.lt(-0.999)?.where_cond(&log_cdf_plus, &high)
}
