//! One-pass CPU kernels for the optimizer's arithmetic on f32 tensors: AdamW's update of a parameter
//! and its moments, the EMA step and the squared norm of a gradient. Element for element they compute
//! what [`super::optim`]'s candle expressions compute (scalars rounded to f32 as candle's affine ops
//! round them), without the dozen intermediate tensors those allocate — a pass over memory instead of
//! twelve, which on CPU is a tenth of a training step at PixArt's sizes.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk (fixed, so sums are grouped the same way on every run).
const CHUNK: usize = 1 << 14;

/// The elements of a contiguous f32 CPU tensor, copied out; `None` for any other tensor.
fn values(t: &Tensor) -> Option<Vec<f32>> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (s, l) = t.storage_and_layout();
    let (start, end) = l.contiguous_offsets()?;
    match &*s {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v[start..end].to_vec()),
        _ => None,
    }
}

/// Whether every tensor is an f32 CPU tensor (the kernels here apply).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
}

/// AdamW's scalars for one step.
pub struct AdamWStep {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the corrected root of the second moment.
    pub eps: f64,
    /// The weight-decay factor `1 − lr·wd`.
    pub decay: f64,
    /// `lr / (1 − β1^t)`.
    pub step_size: f64,
    /// `sqrt(1 − β2^t)`.
    pub bc2_sqrt: f64,
}

/// New (parameter, m, v) from the old ones and the gradient.
pub fn adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamWStep) -> Result<(Tensor, Tensor, Tensor)> {
    let (Some(mut p1), Some(gv), Some(mut m1), Some(mut v1)) = (values(p), values(g), values(m), values(v)) else {
        candle_core::bail!("adamw kernel: expected contiguous f32 CPU tensors");
    };
    let f = |x: f64| x as f32;
    let (b1, nb1, b2, nb2) = (f(s.beta1), f(1.0 - s.beta1), f(s.beta2), f(1.0 - s.beta2));
    let (decay, step, bc2, eps) = (f(s.decay), f(s.step_size), f(1.0 / s.bc2_sqrt), f(s.eps));
    p1.par_chunks_mut(CHUNK)
        .zip(m1.par_chunks_mut(CHUNK))
        .zip(v1.par_chunks_mut(CHUNK))
        .zip(gv.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            for i in 0..p.len() {
                let gi = g[i];
                m[i] = m[i] * b1 + gi * nb1;
                v[i] = v[i] * b2 + gi * gi * nb2;
                let denom = v[i].sqrt() * bc2 + eps;
                p[i] = p[i] * decay - (m[i] / denom) * step;
            }
        });
    let shape = p.shape().clone();
    let dev = Device::Cpu;
    Ok((Tensor::from_vec(p1, &shape, &dev)?, Tensor::from_vec(m1, &shape, &dev)?, Tensor::from_vec(v1, &shape, &dev)?))
}

/// `ema·decay + p·(1 − decay)`.
pub fn ema(e: &Tensor, p: &Tensor, decay: f64) -> Result<Tensor> {
    let (Some(mut e1), Some(pv)) = (values(e), values(p)) else {
        candle_core::bail!("ema kernel: expected contiguous f32 CPU tensors");
    };
    let (d, nd) = (decay as f32, (1.0 - decay) as f32);
    e1.par_chunks_mut(CHUNK).zip(pv.par_chunks(CHUNK)).for_each(|(e, p)| {
        for i in 0..e.len() {
            e[i] = e[i] * d + p[i] * nd;
        }
    });
    Tensor::from_vec(e1, e.shape(), &Device::Cpu)
}

/// The sum of squares of a gradient's elements, in f64.
pub fn sum_sq(g: &Tensor) -> Result<f64> {
    let Some(v) = values(g) else {
        candle_core::bail!("norm kernel: expected a contiguous f32 CPU tensor");
    };
    let parts: Vec<f64> = v.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum()).collect();
    Ok(parts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::init::Rng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The kernels give what the candle expressions of `optim` give (same f32 rounding of scalars).
    #[test]
    fn kernels_match_the_candle_expressions() {
        let mut rng = Rng::new(3);
        let n = [3 * CHUNK + 17];
        let dev = Device::Cpu;
        let (p, g, m) = (
            rng.normal_tensor(&n, 1.0, &dev).unwrap(),
            rng.normal_tensor(&n, 0.1, &dev).unwrap(),
            rng.normal_tensor(&n, 0.01, &dev).unwrap(),
        );
        let v = rng.normal_tensor(&n, 0.01, &dev).unwrap().sqr().unwrap();
        let s = AdamWStep {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-10,
            decay: 1.0 - 2e-5 * 0.03,
            step_size: 2e-4,
            bc2_sqrt: 0.3,
        };
        let (p1, m1, v1) = adamw(&p, &g, &m, &v, &s).unwrap();
        let m2 = ((&m * s.beta1).unwrap() + (&g * (1.0 - s.beta1)).unwrap()).unwrap();
        let v2 = ((&v * s.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - s.beta2)).unwrap()).unwrap();
        let denom = ((v2.sqrt().unwrap() / s.bc2_sqrt).unwrap() + s.eps).unwrap();
        let p2 = ((&p * s.decay).unwrap() - ((&m2 / denom).unwrap() * s.step_size).unwrap()).unwrap();
        assert!(max_diff(&m1, &m2) < 1e-7 && max_diff(&v1, &v2) < 1e-9, "moments");
        assert!(max_diff(&p1, &p2) < 1e-6, "parameters: {}", max_diff(&p1, &p2));
        assert!(max_diff(&p1, &p) > 1e-5, "the parameters moved");
        let e = ema(&p, &g, 0.9999).unwrap();
        let e2 = ((&p * 0.9999).unwrap() + (&g * 1e-4).unwrap()).unwrap();
        assert!(max_diff(&e, &e2) < 1e-7);
        let want = g.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((sum_sq(&g).unwrap() - want).abs() < 1e-9 * want);
    }
}
