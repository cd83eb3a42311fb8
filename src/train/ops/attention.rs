//! Multi-head attention as one op: per (batch item, head), `softmax(scale·Q Kᵀ + bias) V` by `gemm`
//! on strided views of the `[B, len, heads·D]` projections, so no head transposes are copied and the
//! `[B, heads, N, L]` scores are never stored: the backward recomputes them (as flash attention does)
//! and produces dQ, dK, dV with four more products.

use super::kernels::{contiguous, mm, on_float, softmax_grad_row, softmax_row, Real, Shared};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Attention of `q` `[B, N, C]` over `k`, `v` `[B, L, C]` with `heads` heads (`C = heads·D`).
pub struct Attention {
    /// Number of heads.
    pub heads: usize,
    /// Score scale (1/√D).
    pub scale: f64,
    /// Additive key bias `[B, L]` (the caption mask), if any.
    pub bias: Option<Vec<f64>>,
}

struct Dims {
    b: usize,
    n: usize,
    l: usize,
    c: usize,
    d: usize,
    heads: usize,
}

impl Attention {
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<Dims> {
        let (b, n, c) = lq.shape().dims3()?;
        let (_, l, _) = lk.shape().dims3()?;
        if c % self.heads != 0 {
            candle_core::bail!("attention: width {c} is not divisible by {} heads", self.heads);
        }
        Ok(Dims { b, n, l, c, d: c / self.heads, heads: self.heads })
    }

    /// P = softmax(scale·Q_bh K_bhᵀ + bias_b) into `p` (n×l).
    fn probs<T: Real + 'static>(
        &self,
        z: &Dims,
        (item, head): (usize, usize),
        q: &[T],
        k: &[T],
        p: &mut [T],
        bias: &[T],
    ) {
        let (qo, ko) = (item * z.n * z.c + head * z.d, item * z.l * z.c + head * z.d);
        // SAFETY: q/k views stay inside their slices; p holds n×l.
        unsafe {
            mm(
                z.n,
                z.l,
                z.d,
                (p.as_mut_ptr(), 1, z.l as isize),
                false,
                (q[qo..].as_ptr(), 1, z.c as isize),
                (k[ko..].as_ptr(), z.c as isize, 1),
            );
        }
        let scale = T::from_f64(self.scale);
        let b = if bias.is_empty() { None } else { Some(&bias[item * z.l..(item + 1) * z.l]) };
        let mut s = vec![T::zero(); z.l];
        for row in p.chunks_mut(z.l) {
            s.copy_from_slice(row);
            softmax_row(&s, b, scale, row);
        }
    }

    fn bias<T: Real>(&self) -> Vec<T> {
        self.bias.as_ref().map(|b| b.iter().map(|&x| T::from_f64(x)).collect()).unwrap_or_default()
    }

    fn forward<T: Real + 'static>(&self, z: &Dims, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let mut out = vec![T::zero(); z.b * z.n * z.c];
        let dst = Shared(out.as_mut_ptr());
        let bias = self.bias::<T>();
        (0..z.b * z.heads).into_par_iter().for_each_init(
            || vec![T::zero(); z.n * z.l],
            |p, task| {
                let (item, head) = (task / z.heads, task % z.heads);
                self.probs(z, (item, head), q, k, p, &bias);
                let vo = item * z.l * z.c + head * z.d;
                // SAFETY: this task alone writes columns head·d..(head+1)·d of item's rows.
                unsafe {
                    mm(
                        z.n,
                        z.d,
                        z.l,
                        (dst.at(item * z.n * z.c + head * z.d), 1, z.c as isize),
                        false,
                        (p.as_ptr(), 1, z.l as isize),
                        (v[vo..].as_ptr(), 1, z.c as isize),
                    );
                }
            },
        );
        out
    }

    /// dQ `[B, N, C]`, dK and dV `[B, L, C]` packed one after the other in a flat buffer.
    fn backward<T: Real + 'static>(&self, z: &Dims, q: &[T], k: &[T], v: &[T], g: &[T]) -> Vec<T> {
        let (q_len, kv_len) = (z.b * z.n * z.c, z.b * z.l * z.c);
        let mut out = vec![T::zero(); q_len + 2 * kv_len];
        let dst = Shared(out.as_mut_ptr());
        let bias = self.bias::<T>();
        let scale = T::from_f64(self.scale);
        (0..z.b * z.heads).into_par_iter().for_each_init(
            || (vec![T::zero(); z.n * z.l], vec![T::zero(); z.n * z.l]),
            |(p, dp), task| {
                let (item, head) = (task / z.heads, task % z.heads);
                self.probs(z, (item, head), q, k, p, &bias);
                let (qo, ko) = (item * z.n * z.c + head * z.d, item * z.l * z.c + head * z.d);
                let dq = item * z.n * z.c + head * z.d;
                let dk = q_len + item * z.l * z.c + head * z.d;
                let dv = dk + kv_len;
                let c = z.c as isize;
                // SAFETY: all views stay inside their buffers; this task alone writes its head's
                // columns of item's dQ, dK and dV rows.
                unsafe {
                    // dP = dO Vᵀ
                    mm(
                        z.n,
                        z.l,
                        z.d,
                        (dp.as_mut_ptr(), 1, z.l as isize),
                        false,
                        (g[qo..].as_ptr(), 1, c),
                        (v[ko..].as_ptr(), c, 1),
                    );
                    // dV = Pᵀ dO
                    mm(
                        z.l,
                        z.d,
                        z.n,
                        (dst.at(dv), 1, c),
                        false,
                        (p.as_ptr(), z.l as isize, 1),
                        (g[qo..].as_ptr(), 1, c),
                    );
                }
                let mut g = vec![T::zero(); z.l];
                for (prow, dprow) in p.chunks(z.l).zip(dp.chunks_mut(z.l)) {
                    g.copy_from_slice(dprow);
                    softmax_grad_row(prow, &g, scale, dprow);
                }
                unsafe {
                    // dQ = dS K, dK = dSᵀ Q
                    mm(
                        z.n,
                        z.d,
                        z.l,
                        (dst.at(dq), 1, c),
                        false,
                        (dp.as_ptr(), 1, z.l as isize),
                        (k[ko..].as_ptr(), 1, c),
                    );
                    mm(
                        z.l,
                        z.d,
                        z.n,
                        (dst.at(dk), 1, c),
                        false,
                        (dp.as_ptr(), z.l as isize, 1),
                        (q[qo..].as_ptr(), 1, c),
                    );
                }
            },
        );
        out
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "pixforge-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.dims(l1, l2)?;
        on_float!(s1, l1, self.name(), l1.shape().clone(), |q: T| {
            let (k, v) = (contiguous::<T>(s2, l2, "k")?, contiguous::<T>(s3, l3, "v")?);
            self.forward(&z, q, k, v)
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = AttentionGrad { op: self, grad: grad.contiguous()? };
        let packed = q.apply_op3_no_bwd(k, v, &grad_op)?;
        let (q_len, kv_len) = (q.elem_count(), k.elem_count());
        let dq = packed.narrow(0, 0, q_len)?.reshape(q.shape())?;
        let dk = packed.narrow(0, q_len, kv_len)?.reshape(k.shape())?;
        let dv = packed.narrow(0, q_len + kv_len, kv_len)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

struct AttentionGrad<'a> {
    op: &'a Attention,
    grad: Tensor,
}

impl CustomOp3 for AttentionGrad<'_> {
    fn name(&self) -> &'static str {
        "pixforge-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = self.op.dims(l1, l2)?;
        let shape = Shape::from(z.b * (z.n + 2 * z.l) * z.c);
        let (gs, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else { candle_core::bail!("{}: expected a CPU gradient", self.name()) };
        on_float!(s1, l1, self.name(), shape, |q: T| {
            let (k, v) = (contiguous::<T>(s2, l2, "k")?, contiguous::<T>(s3, l3, "v")?);
            self.op.backward(&z, q, k, v, contiguous::<T>(gs, gl, "grad")?)
        })
    }
}
