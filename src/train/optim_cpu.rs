//! One-pass CPU kernels for the optimizer's arithmetic on f32 tensors: AdamW's update of a parameter
//! and its moments, the EMA step and the squared norm of a gradient. Element for element they compute
//! what [`super::optim`]'s candle expressions compute (scalars rounded to f32 as candle's affine ops
//! round them), in place (candle's in-place ops) and without the dozen intermediate tensors those
//! expressions allocate; the clipping factor is applied as each gradient is read.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk (fixed, so sums are grouped the same way on every run).
const CHUNK: usize = 1 << 14;

/// The elements of a contiguous f32 CPU tensor's storage under its layout.
fn slice<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => cpu_slice(c, l),
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

/// The elements of a contiguous f32 CPU storage under its layout, for writing.
fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("optimizer kernel: expected a contiguous f32 CPU tensor"),
    }
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("optimizer kernel: expected a contiguous f32 CPU tensor"),
    }
}

/// A moment's update in place: `m ← m·β + (g·scale)·(1 − β)`, or with `(g·scale)²` for the second.
struct Moment {
    beta: f32,
    one_minus: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "pixforge-adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (m, g) = (slice_mut(s1, l1)?, cpu_slice(s2, l2)?);
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            for (m, &g) in m.iter_mut().zip(g) {
                let g = g * self.scale;
                *m = *m * self.beta + if self.square { g * g } else { g } * self.one_minus;
            }
        });
        Ok(())
    }
}

/// The parameter's update in place from the updated moments.
struct Update {
    decay: f32,
    step: f32,
    inv_bc2: f32,
    eps: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "pixforge-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (p, m, v) = (slice_mut(s1, l1)?, cpu_slice(s2, l2)?, cpu_slice(s3, l3)?);
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let denom = v.sqrt() * self.inv_bc2 + self.eps;
                *p = *p * self.decay - (m / denom) * self.step;
            }
        });
        Ok(())
    }
}

/// One AdamW step in place on the parameter `p` and its moments `m`, `v`, for the gradient `g` times
/// `grad_scale` (the clipping factor, applied as the gradient is read). Element for element what the
/// candle expressions of [`super::optim`] give for the scaled gradient, without allocating anything.
pub fn adamw(p: &Tensor, g: &Tensor, (m, v): (&Tensor, &Tensor), s: &AdamWStep, grad_scale: f64) -> Result<()> {
    let f = |x: f64| x as f32;
    let scale = f(grad_scale);
    m.inplace_op2(g, &Moment { beta: f(s.beta1), one_minus: f(1.0 - s.beta1), scale, square: false })?;
    v.inplace_op2(g, &Moment { beta: f(s.beta2), one_minus: f(1.0 - s.beta2), scale, square: true })?;
    let update = Update { decay: f(s.decay), step: f(s.step_size), inv_bc2: f(1.0 / s.bc2_sqrt), eps: f(s.eps) };
    p.inplace_op3(m, v, &update)
}

/// The EMA step in place: `e ← e·decay + p·(1 − decay)`.
struct EmaStep(f32, f32);

impl InplaceOp2 for EmaStep {
    fn name(&self) -> &'static str {
        "pixforge-ema"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (e, p) = (slice_mut(s1, l1)?, cpu_slice(s2, l2)?);
        e.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(|(e, p)| {
            for (e, &p) in e.iter_mut().zip(p) {
                *e = *e * self.0 + p * self.1;
            }
        });
        Ok(())
    }
}

/// `ema ← ema·decay + p·(1 − decay)` in place.
pub fn ema(e: &Tensor, p: &Tensor, decay: f64) -> Result<()> {
    e.inplace_op2(p, &EmaStep(decay as f32, (1.0 - decay) as f32))
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
    use crate::rng::Rng;
    use candle_core::Device;

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
        let (p1, m1, v1) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
        adamw(&p1, &g, (&m1, &v1), &s, 0.5).unwrap();
        let g = (&g * 0.5).unwrap();
        let m2 = ((&m * s.beta1).unwrap() + (&g * (1.0 - s.beta1)).unwrap()).unwrap();
        let v2 = ((&v * s.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - s.beta2)).unwrap()).unwrap();
        let denom = ((v2.sqrt().unwrap() / s.bc2_sqrt).unwrap() + s.eps).unwrap();
        let p2 = ((&p * s.decay).unwrap() - ((&m2 / denom).unwrap() * s.step_size).unwrap()).unwrap();
        assert!(max_diff(&m1, &m2) < 1e-7 && max_diff(&v1, &v2) < 1e-9, "moments");
        assert!(max_diff(&p1, &p2) < 1e-6, "parameters: {}", max_diff(&p1, &p2));
        assert!(max_diff(&p1, &p) > 1e-5, "the parameters moved");
        let e = p.copy().unwrap();
        ema(&e, &g, 0.9999).unwrap();
        let e2 = ((&p * 0.9999).unwrap() + (&g * 1e-4).unwrap()).unwrap();
        assert!(max_diff(&e, &e2) < 1e-7);
        let want = g.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((sum_sq(&g).unwrap() - want).abs() < 1e-9 * want);
    }
}
