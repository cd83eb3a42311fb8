//! One-pass CPU kernels for the optimizer's arithmetic on f32 tensors: AdamW's update of a parameter
//! and its moments, the EMA step and the squared norm of a gradient. Element for element they compute
//! what [`super::optim`]'s candle expressions compute (scalars rounded to f32 as candle's affine ops
//! round them), without the dozen intermediate tensors those allocate — a pass over memory instead of
//! twelve, which on CPU is a tenth of a training step at PixArt's sizes.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk (fixed, so sums are grouped the same way on every run).
const CHUNK: usize = 1 << 14;

/// The elements of a contiguous f32 CPU tensor's storage under its layout.
fn slice<'a>(s: &'a Storage, l: &candle_core::Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("optimizer kernel: expected a contiguous f32 CPU tensor"),
    }
}

/// Whether every tensor is a contiguous f32 CPU tensor (the kernels here apply).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous())
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
    let ((sp, lp), (sg, lg), (sm, lm), (sv, lv)) =
        (p.storage_and_layout(), g.storage_and_layout(), m.storage_and_layout(), v.storage_and_layout());
    let (p0, gv, m0, v0) = (slice(&sp, lp)?, slice(&sg, lg)?, slice(&sm, lm)?, slice(&sv, lv)?);
    let n = p0.len();
    // Fresh zeroed buffers come from the allocator already zero: one pass reads the inputs and writes these.
    let (mut p1, mut m1, mut v1) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let f = |x: f64| x as f32;
    let (b1, nb1, b2, nb2) = (f(s.beta1), f(1.0 - s.beta1), f(s.beta2), f(1.0 - s.beta2));
    let (decay, step, bc2, eps) = (f(s.decay), f(s.step_size), f(1.0 / s.bc2_sqrt), f(s.eps));
    p1.par_chunks_mut(CHUNK)
        .zip(m1.par_chunks_mut(CHUNK))
        .zip(v1.par_chunks_mut(CHUNK))
        .zip(p0.par_chunks(CHUNK).zip(gv.par_chunks(CHUNK)).zip(m0.par_chunks(CHUNK).zip(v0.par_chunks(CHUNK))))
        .for_each(|(((p, m), v), ((p_in, g), (m_in, v_in)))| {
            for i in 0..p.len() {
                let gi = g[i];
                m[i] = m_in[i] * b1 + gi * nb1;
                v[i] = v_in[i] * b2 + gi * gi * nb2;
                let denom = v[i].sqrt() * bc2 + eps;
                p[i] = p_in[i] * decay - (m[i] / denom) * step;
            }
        });
    let shape = p.shape().clone();
    let dev = Device::Cpu;
    Ok((Tensor::from_vec(p1, &shape, &dev)?, Tensor::from_vec(m1, &shape, &dev)?, Tensor::from_vec(v1, &shape, &dev)?))
}

/// `ema·decay + p·(1 − decay)`.
pub fn ema(e: &Tensor, p: &Tensor, decay: f64) -> Result<Tensor> {
    let ((se, le), (sp, lp)) = (e.storage_and_layout(), p.storage_and_layout());
    let (e0, pv) = (slice(&se, le)?, slice(&sp, lp)?);
    let mut e1 = vec![0f32; e0.len()];
    let (d, nd) = (decay as f32, (1.0 - decay) as f32);
    e1.par_chunks_mut(CHUNK).zip(e0.par_chunks(CHUNK).zip(pv.par_chunks(CHUNK))).for_each(|(e, (e_in, p))| {
        for i in 0..e.len() {
            e[i] = e_in[i] * d + p[i] * nd;
        }
    });
    Tensor::from_vec(e1, e.shape(), &Device::Cpu)
}

/// The sum of squares of a gradient's elements, in f64.
pub fn sum_sq(g: &Tensor) -> Result<f64> {
    let (s, l) = g.storage_and_layout();
    let v = slice(&s, l)?;
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
