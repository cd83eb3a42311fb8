//! Multi-head attention as one op: per (batch item, head), `softmax(scale·Q Kᵀ + bias) V` by `gemm`
//! on strided views of the `[B, len, heads·D]` projections, so no head transposes are copied and the
//! `[B, heads, N, L]` scores are never stored: the backward recomputes them (as flash attention does)
//! and produces dQ, dK, dV with four more products. The views may sit inside packed projections (the
//! fused block's `[B, N, 3C]` q/k/v), see [`View`].

use crate::nn::kernels::{contiguous, mm, on_float, softmax_grad_row, softmax_row, Real, Shared};
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

/// The sizes of one attention: `b` items of `n` queries over `l` keys, `heads` heads of `d`.
#[derive(Clone, Copy)]
pub struct Dims {
    /// Batch items.
    pub b: usize,
    /// Queries per item.
    pub n: usize,
    /// Keys per item.
    pub l: usize,
    /// Width of one head.
    pub d: usize,
    /// Heads.
    pub heads: usize,
}

/// Rows of `heads·d` values inside a buffer: row `r` starts at `off + r·stride`.
#[derive(Clone, Copy)]
pub struct View<P> {
    /// The buffer's first element.
    pub ptr: P,
    /// Offset of row 0's first value.
    pub off: usize,
    /// Elements between rows.
    pub stride: usize,
}

impl<T> View<*const T> {
    /// A view of `data`'s rows.
    pub fn of(data: &[T], off: usize, stride: usize) -> Self {
        View { ptr: data.as_ptr(), off, stride }
    }
}

impl<T> View<Shared<T>> {
    /// A writable view of `data`'s rows.
    pub fn of_mut(data: &mut [T], off: usize, stride: usize) -> Self {
        View { ptr: Shared(data.as_mut_ptr()), off, stride }
    }
}

/// The (pointer, column stride, row stride) of head `head` of item `item` (of `len` rows).
fn at<T>(v: View<*const T>, item: usize, len: usize, head: usize, d: usize) -> (*const T, isize, isize) {
    (v.ptr.wrapping_add(v.off + item * len * v.stride + head * d), 1, v.stride as isize)
}

fn at_mut<T>(v: View<Shared<T>>, item: usize, len: usize, head: usize, d: usize) -> (*mut T, isize, isize) {
    (v.ptr.0.wrapping_add(v.off + item * len * v.stride + head * d), 1, v.stride as isize)
}

/// Transposed: Xᵀ as a matrix of `d` rows.
fn t<T>((p, cs, rs): (*const T, isize, isize)) -> (*const T, isize, isize) {
    (p, rs, cs)
}

/// P = softmax(scale·Q Kᵀ + bias) of one (item, head) into `p` (n×l).
fn probs<T: Real + 'static>(
    z: &Dims,
    (item, head): (usize, usize),
    (q, k): (View<*const T>, View<*const T>),
    scale: T,
    bias: &[T],
    p: &mut [T],
) {
    // SAFETY: the views cover their rows; p holds n×l.
    unsafe {
        mm(
            z.n,
            z.l,
            z.d,
            (p.as_mut_ptr(), 1, z.l as isize),
            false,
            at(q, item, z.n, head, z.d),
            t(at(k, item, z.l, head, z.d)),
        );
    }
    let b = if bias.is_empty() { None } else { Some(&bias[item * z.l..(item + 1) * z.l]) };
    let mut s = vec![T::zero(); z.l];
    for row in p.chunks_mut(z.l) {
        s.copy_from_slice(row);
        softmax_row(&s, b, scale, row);
    }
}

/// `out = softmax(scale·Q Kᵀ + bias) V` over every item and head (in parallel); `bias` `[B·L]` or empty.
/// With `keep` (`[B·heads·N·L]`), the probabilities are left there for [`backward`].
///
/// # Safety
/// The views must cover `b·n` (q, out) and `b·l` (k, v) rows of `heads·d` values; `out` must not
/// overlap the inputs.
pub unsafe fn forward<T: Real + 'static>(
    z: &Dims,
    scale: T,
    bias: &[T],
    (q, k, v): (View<*const T>, View<*const T>, View<*const T>),
    out: View<Shared<T>>,
    keep: Option<&mut [T]>,
) {
    let (q, k, v) = (SendView(q), SendView(k), SendView(v));
    let size = z.n * z.l;
    if let Some(kept) = &keep {
        assert_eq!(kept.len(), z.b * z.heads * size, "attention: the probability buffer has the wrong size");
    }
    let keep = keep.map(|k| Shared(k.as_mut_ptr()));
    (0..z.b * z.heads).into_par_iter().for_each_init(
        || vec![T::zero(); if keep.is_some() { 0 } else { size }],
        |local, task| {
            let (item, head) = (task / z.heads, task % z.heads);
            let p: &mut [T] = match keep {
                // SAFETY: each task owns its own n×l part of the buffer (checked size above).
                Some(buf) => unsafe { std::slice::from_raw_parts_mut(buf.at(task * size), size) },
                None => local,
            };
            probs(z, (item, head), (q.get(), k.get()), scale, bias, p);
            // SAFETY: this task alone writes its head's columns of item's rows.
            unsafe {
                mm(
                    z.n,
                    z.d,
                    z.l,
                    at_mut(out, item, z.n, head, z.d),
                    false,
                    (p.as_ptr(), 1, z.l as isize),
                    at(v.get(), item, z.l, head, z.d),
                );
            }
        },
    );
}

/// dQ, dK, dV of [`forward`] for the output gradient `g`, from the probabilities `kept` by the
/// forward or, without them, recomputed.
///
/// # Safety
/// As [`forward`]; `dq`, `dk`, `dv` cover the rows of q, k, v and overlap nothing else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn backward<T: Real + 'static>(
    z: &Dims,
    scale: T,
    bias: &[T],
    (q, k, v): (View<*const T>, View<*const T>, View<*const T>),
    g: View<*const T>,
    (dq, dk, dv): GradViews<T>,
    kept: Option<&[T]>,
) {
    let (q, k, v, g) = (SendView(q), SendView(k), SendView(v), SendView(g));
    let size = z.n * z.l;
    if let Some(kept) = kept {
        assert_eq!(kept.len(), z.b * z.heads * size, "attention: the probability buffer has the wrong size");
    }
    (0..z.b * z.heads).into_par_iter().for_each_init(
        || (vec![T::zero(); if kept.is_some() { 0 } else { size }], vec![T::zero(); size], vec![T::zero(); z.l]),
        |(local, dp, row), task| {
            let (item, head) = (task / z.heads, task % z.heads);
            let (q, k, v, g) = (q.get(), k.get(), v.get(), g.get());
            let p: &[T] = match kept {
                Some(kept) => &kept[task * size..(task + 1) * size],
                None => {
                    probs(z, (item, head), (q, k), scale, bias, local);
                    local
                }
            };
            let gi = at(g, item, z.n, head, z.d);
            // SAFETY: all views stay inside their buffers; this task alone writes its head's columns
            // of item's dQ, dK and dV rows.
            unsafe {
                // dP = dO Vᵀ
                mm(z.n, z.l, z.d, (dp.as_mut_ptr(), 1, z.l as isize), false, gi, t(at(v, item, z.l, head, z.d)));
                // dV = Pᵀ dO
                mm(z.l, z.d, z.n, at_mut(dv, item, z.l, head, z.d), false, (p.as_ptr(), z.l as isize, 1), gi);
            }
            for (prow, dprow) in p.chunks(z.l).zip(dp.chunks_mut(z.l)) {
                row.copy_from_slice(dprow);
                softmax_grad_row(prow, row, scale, dprow);
            }
            unsafe {
                // dQ = dS K, dK = dSᵀ Q
                let (kh, qh) = (at(k, item, z.l, head, z.d), at(q, item, z.n, head, z.d));
                mm(z.n, z.d, z.l, at_mut(dq, item, z.n, head, z.d), false, (dp.as_ptr(), 1, z.l as isize), kh);
                mm(z.l, z.d, z.n, at_mut(dk, item, z.l, head, z.d), false, (dp.as_ptr(), z.l as isize, 1), qh);
            }
        },
    );
}

/// Writable views of dQ, dK and dV.
pub type GradViews<T> = (View<Shared<T>>, View<Shared<T>>, View<Shared<T>>);

/// A read view handed to rayon tasks (they only read through it).
#[derive(Clone, Copy)]
struct SendView<T>(View<*const T>);
// SAFETY: the tasks only read through the pointer, and the caller keeps the buffer alive.
unsafe impl<T> Send for SendView<T> {}
unsafe impl<T> Sync for SendView<T> {}

impl<T> SendView<T> {
    fn get(self) -> View<*const T> {
        self.0
    }
}

impl Attention {
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<Dims> {
        let (b, n, c) = lq.shape().dims3()?;
        let (_, l, _) = lk.shape().dims3()?;
        if c % self.heads != 0 {
            candle_core::bail!("attention: width {c} is not divisible by {} heads", self.heads);
        }
        Ok(Dims { b, n, l, d: c / self.heads, heads: self.heads })
    }

    fn bias<T: Real>(&self) -> Vec<T> {
        self.bias.as_ref().map(|b| b.iter().map(|&x| T::from_f64(x)).collect()).unwrap_or_default()
    }

    fn run_forward<T: Real + 'static>(&self, z: &Dims, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let c = z.heads * z.d;
        let mut out = vec![T::zero(); z.b * z.n * c];
        let views = (View::of(q, 0, c), View::of(k, 0, c), View::of(v, 0, c));
        // SAFETY: q/out hold b·n rows of c, k/v b·l rows of c.
        unsafe { forward(z, T::from_f64(self.scale), &self.bias::<T>(), views, View::of_mut(&mut out, 0, c), None) };
        out
    }

    /// dQ `[B, N, C]`, dK and dV `[B, L, C]` packed one after the other in a flat buffer.
    fn run_backward<T: Real + 'static>(&self, z: &Dims, q: &[T], k: &[T], v: &[T], g: &[T]) -> Vec<T> {
        let c = z.heads * z.d;
        let (q_len, kv_len) = (z.b * z.n * c, z.b * z.l * c);
        let mut out = vec![T::zero(); q_len + 2 * kv_len];
        let views = (View::of(q, 0, c), View::of(k, 0, c), View::of(v, 0, c));
        let grads =
            (View::of_mut(&mut out, 0, c), View::of_mut(&mut out, q_len, c), View::of_mut(&mut out, q_len + kv_len, c));
        // SAFETY: as in run_forward; the three gradient views are disjoint parts of `out`.
        unsafe { backward(z, T::from_f64(self.scale), &self.bias::<T>(), views, View::of(g, 0, c), grads, None) };
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
            self.run_forward(&z, q, k, v)
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
        let shape = Shape::from(z.b * (z.n + 2 * z.l) * z.heads * z.d);
        let (gs, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else { candle_core::bail!("{}: expected a CPU gradient", self.name()) };
        on_float!(s1, l1, self.name(), shape, |q: T| {
            let (k, v) = (contiguous::<T>(s2, l2, "k")?, contiguous::<T>(s3, l3, "v")?);
            self.op.run_backward(&z, q, k, v, contiguous::<T>(gs, gl, "grad")?)
        })
    }
}
