//! One PixArt-α transformer block as a single differentiable op on CPU: adaLN-single modulation,
//! self-attention with its gate, cross-attention over the caption (padding-masked), the tanh-GELU MLP
//! with its gate. The forward keeps the activations the backward needs; the backward is written out
//! by hand, so every gradient is produced by one `gemm` or one pass straight into its place (candle's
//! autograd would allocate a zero tensor and add into it for each of the block's ~40 gradients), q/k/v
//! run as one product over the fused `[3C, C]` weight, and bias gradients are column sums of our own.
//!
//! The op takes three tensors: `x` `[B, N, C]`; `ctx`, the caption `y` `[B, L, C]` (after the caption
//! projection) and the adaLN input `t0` `[B, 6C]`, both flattened and joined; and `params`, the block's
//! weights flattened and joined in the order of [`PARAMS`]. [`super::pixart_block`] builds the op.

use super::attention::{self, Dims, View};
use super::pool::{give, take};
use crate::nn::kernels::{
    contiguous, gelu_grad_row, gelu_row, layer_norm_grad_row, layer_norm_row, mm_with, Real, PARALLEL_MIN,
};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::any::Any;
use std::sync::Mutex;

/// The block's weights (diffusers names under `transformer_blocks.{i}.`), in the order they are packed.
pub const PARAMS: [&str; 21] = [
    "scale_shift_table",
    "attn1.to_q.weight",
    "attn1.to_k.weight",
    "attn1.to_v.weight",
    "attn1.to_q.bias",
    "attn1.to_k.bias",
    "attn1.to_v.bias",
    "attn1.to_out.0.weight",
    "attn1.to_out.0.bias",
    "attn2.to_q.weight",
    "attn2.to_q.bias",
    "attn2.to_k.weight",
    "attn2.to_v.weight",
    "attn2.to_k.bias",
    "attn2.to_v.bias",
    "attn2.to_out.0.weight",
    "attn2.to_out.0.bias",
    "ff.net.0.proj.weight",
    "ff.net.0.proj.bias",
    "ff.net.2.weight",
    "ff.net.2.bias",
];

/// Where each fused weight starts in the packed parameters.
struct Offsets {
    sst: usize,
    wqkv: usize,
    bqkv: usize,
    wo: usize,
    bo: usize,
    wq2: usize,
    bq2: usize,
    wkv2: usize,
    bkv2: usize,
    wo2: usize,
    bo2: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    total: usize,
}

impl Offsets {
    fn new(c: usize, ff: usize) -> Self {
        let sizes = [6 * c, 3 * c * c, 3 * c, c * c, c, c * c, c, 2 * c * c, 2 * c, c * c, c, ff * c, ff, c * ff, c];
        let mut at = [0; 16];
        for (i, s) in sizes.iter().enumerate() {
            at[i + 1] = at[i] + s;
        }
        let [sst, wqkv, bqkv, wo, bo, wq2, bq2, wkv2, bkv2, wo2, bo2, w1, b1, w2, b2, total] = at;
        Offsets { sst, wqkv, bqkv, wo, bo, wq2, bq2, wkv2, bkv2, wo2, bo2, w1, b1, w2, b2, total }
    }
}

/// The fused block op.
pub struct Block {
    /// Attention heads.
    pub heads: usize,
    /// Layer-norm epsilon.
    pub eps: f64,
    /// Caption tokens per item.
    pub l: usize,
    /// MLP width.
    pub ff: usize,
    /// Additive caption key bias `[B·L]` (0 or -10000).
    pub bias: Vec<f64>,
    /// Whether to keep the activations for a backward pass.
    pub save: bool,
    saved: Mutex<Option<Box<dyn Any + Send + Sync>>>,
}

impl Block {
    /// The op for `heads` heads, MLP width `ff`, `l` caption tokens with their key bias.
    pub fn new(heads: usize, eps: f64, l: usize, ff: usize, bias: Vec<f64>, save: bool) -> Self {
        Block { heads, eps, l, ff, bias, save, saved: Mutex::new(None) }
    }
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Sz {
    b: usize,
    n: usize,
    l: usize,
    c: usize,
    ff: usize,
    heads: usize,
    eps: f64,
}

/// The most attention probabilities a block keeps per attention for its backward (bytes): beyond it
/// (large images) they are recomputed, as flash attention does.
const KEEP_PROBABILITIES: usize = 32 << 20;

impl Sz {
    /// Checks the sizes of `ctx`, the packed parameters and the key bias (empty: no mask).
    fn check(&self, ctx: usize, params: usize, bias: usize) -> Result<()> {
        let (b, l, c) = (self.b, self.l, self.c);
        if c % self.heads != 0 {
            candle_core::bail!("transformer block: width {c} is not divisible by {} heads", self.heads);
        }
        if ctx != b * (l + 6) * c {
            candle_core::bail!("transformer block: ctx holds {ctx} values, expected {b}·({l} + 6)·{c}");
        }
        let want = Offsets::new(c, self.ff).total;
        if params != want {
            candle_core::bail!("transformer block: {params} packed parameters, expected {want}");
        }
        if bias != 0 && bias != b * l {
            candle_core::bail!("transformer block: caption bias of {bias} values, expected {b}·{l}");
        }
        Ok(())
    }

    fn attn(&self, keys: usize) -> Dims {
        Dims { b: self.b, n: self.n, l: keys, d: self.c / self.heads, heads: self.heads }
    }

    /// A buffer for the probabilities of an attention over `keys` keys, if they are to be kept.
    fn probability_buffer<T: Real>(&self, keys: usize, save: bool) -> Option<Vec<T>> {
        let len = self.b * self.heads * self.n * keys;
        (save && len * std::mem::size_of::<T>() <= KEEP_PROBABILITIES).then(|| take(len))
    }
}

/// The activations the backward reads.
struct Saved<T> {
    mods: Vec<T>,
    h1: Vec<T>,
    m1: Vec<T>,
    qkv: Vec<T>,
    a1: Vec<T>,
    o1: Vec<T>,
    x1: Vec<T>,
    q2: Vec<T>,
    kv2: Vec<T>,
    a2: Vec<T>,
    /// The attention probabilities, when small enough to keep (else the backward recomputes them).
    p1: Option<Vec<T>>,
    p2: Option<Vec<T>>,
    x2: Vec<T>,
    h2: Vec<T>,
    m2: Vec<T>,
    f1: Vec<T>,
    g1: Vec<T>,
    f2: Vec<T>,
}

impl<T: Real> Saved<T> {
    /// Gives the activations back to the buffer pool once the backward has read them.
    fn recycle(self) {
        let Saved { mods, h1, m1, qkv, a1, o1, x1, q2, kv2, a2, p1, p2, x2, h2, m2, f1, g1, f2 } = self;
        for v in [mods, h1, m1, qkv, a1, o1, x1, q2, kv2, a2, x2, h2, m2, f1, g1, f2].into_iter().chain(p1).chain(p2) {
            give(v);
        }
    }
}

fn threads(work: usize) -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    if work >= 1 << 18 && n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m×n) = [dst +] lhs · rhs` over row-major buffers given as (pointer, column stride, row stride),
/// on every thread when `parallel` (and the product is large enough), else on this one.
pub(super) fn product<T: Real + 'static>(
    parallel: bool,
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: (&[T], isize, isize),
    rhs: (&[T], isize, isize),
) {
    assert!(dst.len() >= m * n, "product: destination holds {} < {m}×{n}", dst.len());
    // SAFETY: callers pass buffers covering m×k, k×n and m×n elements with these strides (checked in
    // debug builds).
    debug_assert!(lhs.0.len() as isize > (m as isize - 1) * lhs.2 + (k as isize - 1) * lhs.1);
    debug_assert!(rhs.0.len() as isize > (k as isize - 1) * rhs.2 + (n as isize - 1) * rhs.1);
    let par = if parallel { threads(m * n * k) } else { gemm::Parallelism::None };
    unsafe {
        mm_with(
            par,
            (m, n, k),
            (dst.as_mut_ptr(), 1, n as isize),
            accumulate,
            (lhs.0.as_ptr(), lhs.1, lhs.2),
            (rhs.0.as_ptr(), rhs.1, rhs.2),
        )
    }
}

/// `out [r, m] = [out +] x [r, k] · wᵀ` for `w` `[m, k]`, on every thread when `parallel`.
fn x_wt<T: Real + 'static>(
    out: &mut [T],
    accumulate: bool,
    x: &[T],
    w: &[T],
    (r, k, m): (usize, usize, usize),
    parallel: bool,
) {
    product(parallel, (r, m, k), out, accumulate, (x, 1, k as isize), (w, k as isize, 1));
}

/// `dw [m, k] = dyᵀ · x` (one thread) for `dy` `[r, m]`, `x` `[r, k]`.
pub(super) fn dyt_x<T: Real + 'static>(dw: &mut [T], dy: &[T], x: &[T], (r, k, m): (usize, usize, usize)) {
    product(false, (m, k, r), dw, false, (dy, m as isize, 1), (x, 1, k as isize));
}

/// `dx [r, k] = [dx +] dy · w` (one thread) for `dy` `[r, m]`, `w` `[m, k]`.
pub(super) fn dy_w<T: Real + 'static>(
    dx: &mut [T],
    accumulate: bool,
    dy: &[T],
    w: &[T],
    (r, k, m): (usize, usize, usize),
) {
    product(false, (r, k, m), dx, accumulate, (dy, 1, m as isize), (w, 1, k as isize));
}

/// Rows of `out` (width `w`) given to `f(row, out_row)`, in parallel chunks.
pub(super) fn rows<T: Real>(out: &mut [T], w: usize, f: impl Fn(usize, &mut [T]) + Send + Sync) {
    let per = (PARALLEL_MIN / w.max(1)).max(1);
    out.par_chunks_mut(per * w).enumerate().for_each(|(t, chunk)| {
        for (j, row) in chunk.chunks_mut(w).enumerate() {
            f(t * per + j, row);
        }
    });
}

/// Rows of two outputs of width `w` at once.
fn rows2<T: Real>(a: &mut [T], b: &mut [T], w: usize, f: impl Fn(usize, &mut [T], &mut [T]) + Send + Sync) {
    let per = (PARALLEL_MIN / w.max(1)).max(1);
    a.par_chunks_mut(per * w).zip(b.par_chunks_mut(per * w)).enumerate().for_each(|(t, (ca, cb))| {
        for (j, (ra, rb)) in ca.chunks_mut(w).zip(cb.chunks_mut(w)).enumerate() {
            f(t * per + j, ra, rb);
        }
    });
}

/// Column sums of `dy` `[r, m]` into `db` `[m]`.
pub(super) fn col_sums<T: Real>(db: &mut [T], dy: &[T], m: usize) {
    const COLS: usize = 64;
    db.par_chunks_mut(COLS).enumerate().for_each(|(t, out)| {
        let start = t * COLS;
        out.fill(T::zero());
        let len = out.len();
        for row in dy.chunks(m) {
            for (o, &v) in out.iter_mut().zip(&row[start..start + len]) {
                *o += v;
            }
        }
    });
}

/// Fills every row of `out` `[r, m]` with `b` `[m]` (plus the matching row of `add`, if given).
fn bias_rows<T: Real>(out: &mut [T], b: &[T], add: Option<&[T]>) {
    let m = b.len();
    rows(out, m, |r, row| match add {
        Some(a) => row.iter_mut().zip(b.iter().zip(&a[r * m..(r + 1) * m])).for_each(|(o, (&b, &a))| *o = a + b),
        None => row.copy_from_slice(b),
    });
}

/// The weight and bias gradients `(dW [m, k], db [m])` of `y = x Wᵀ + b` for `dy` `[r, m]`, `x`
/// `[r, k]` (no input gradient).
pub fn linear_weight_grads<T: Real + 'static>(dy: &[T], x: &[T], (r, k, m): (usize, usize, usize)) -> (Vec<T>, Vec<T>) {
    let (mut dw, mut db) = (vec![T::zero(); m * k], vec![T::zero(); m]);
    rayon::join(|| dyt_x(&mut dw, dy, x, (r, k, m)), || col_sums(&mut db, dy, m));
    (dw, db)
}

/// `out = x Wᵀ + b` (plus `add`) for `x` `[r, k]`, `w` `[m, k]`.
pub(super) fn linear<T: Real + 'static>(
    x: &[T],
    w: &[T],
    b: &[T],
    add: Option<&[T]>,
    (r, k): (usize, usize),
) -> Vec<T> {
    linear_on(x, w, b, add, (r, k), true)
}

/// [`linear`] on this thread only (for two products run side by side).
fn linear_on<T: Real + 'static>(
    x: &[T],
    w: &[T],
    b: &[T],
    add: Option<&[T]>,
    (r, k): (usize, usize),
    parallel: bool,
) -> Vec<T> {
    let m = b.len();
    let mut out = take(r * m); // bias_rows writes every value
    bias_rows(&mut out, b, add);
    x_wt(&mut out, true, x, w, (r, k, m), parallel);
    out
}

/// The backward of a linear layer `y = x Wᵀ + b` (`x` `[r, k]`, `W` `[m, k]` at `w_at` in `p`, `b`
/// right after it): dW and db into `dp` at the same place, and `dx = [dx +] dy · W`. The weight and
/// input products run side by side, one thread each (two single-thread products beat one product
/// split over both threads by 15-40% at these sizes).
fn linear_back<T: Real + 'static>(
    (p, dp): (&[T], &mut [T]),
    w_at: usize,
    (dy, x): (&[T], &[T]),
    dx: (&mut [T], bool),
    (r, k, m): (usize, usize, usize),
) {
    let (dw, db) = dp[w_at..w_at + m * k + m].split_at_mut(m * k);
    let w = &p[w_at..w_at + m * k];
    rayon::join(
        || {
            dyt_x(dw, dy, x, (r, k, m));
            col_sums(db, dy, m);
        },
        || dy_w(dx.0, dx.1, dy, w, (r, k, m)),
    );
}

impl Sz {
    /// The row `j` (0 shift_msa … 5 gate_mlp) of item `i`'s modulation.
    fn md<'a, T>(&self, mods: &'a [T], i: usize, j: usize) -> &'a [T] {
        let c = self.c;
        &mods[(i * 6 + j) * c..(i * 6 + j + 1) * c]
    }

    /// `h = LN(x)`, `m = h·(1 + scale) + shift` with the modulation rows `j`, `j + 1` (shift, scale).
    fn norm_modulate<T: Real>(&self, x: &[T], mods: &[T], j: usize) -> (Vec<T>, Vec<T>) {
        let c = self.c;
        let (mut h, mut m) = (take(x.len()), take(x.len())); // every row written
        let one = T::one();
        rows2(&mut h, &mut m, c, |r, h, m| {
            let i = r / self.n;
            layer_norm_row(&x[r * c..(r + 1) * c], h, self.eps);
            let (shift, scale) = (self.md(mods, i, j), self.md(mods, i, j + 1));
            for (((m, &h), &sh), &sc) in m.iter_mut().zip(h.iter()).zip(shift).zip(scale) {
                *m = h * (one + sc) + sh;
            }
        });
        (h, m)
    }

    /// `x + y·gate` with the modulation row `j` as the gate.
    fn gated<T: Real>(&self, x: &[T], y: &[T], mods: &[T], j: usize) -> Vec<T> {
        let c = self.c;
        let mut out = take(x.len()); // every row written
        rows(&mut out, c, |r, o| {
            let gate = self.md(mods, r / self.n, j);
            let (x, y) = (&x[r * c..(r + 1) * c], &y[r * c..(r + 1) * c]);
            for (((o, &x), &y), &g) in o.iter_mut().zip(x).zip(y).zip(gate) {
                *o = x + y * g;
            }
        });
        out
    }

    /// Per item, `Σ_rows f(row)` over its `n` rows of width `c`, written to `dmods` row `j`.
    fn item_sums<T: Real>(&self, dmods: &mut [T], j: usize, f: impl Fn(usize, &mut [T]) + Send + Sync) {
        let c = self.c;
        dmods.par_chunks_mut(6 * c).enumerate().for_each(|(i, item)| {
            let acc = &mut item[j * c..(j + 1) * c];
            acc.fill(T::zero());
            for r in i * self.n..(i + 1) * self.n {
                f(r, acc);
            }
        });
    }

    /// The backward of `m = LN(x)·(1 + scale) + shift` (rows `j`, `j + 1`): shift and scale gradients
    /// into `dmods`, and `dx += LN'(x)·dm·(1 + scale)`.
    #[allow(clippy::too_many_arguments)]
    fn norm_modulate_grad<T: Real>(
        &self,
        dmods: &mut [T],
        mods: &[T],
        j: usize,
        dm: &[T],
        h: &[T],
        x: &[T],
        dx: &mut [T],
    ) {
        let c = self.c;
        self.item_sums(dmods, j, |r, acc| acc.iter_mut().zip(&dm[r * c..(r + 1) * c]).for_each(|(a, &g)| *a += g));
        self.item_sums(dmods, j + 1, |r, acc| {
            let (g, h) = (&dm[r * c..(r + 1) * c], &h[r * c..(r + 1) * c]);
            acc.iter_mut().zip(g.iter().zip(h)).for_each(|(a, (&g, &h))| *a += g * h)
        });
        let one = T::one();
        let per = (PARALLEL_MIN / c).max(1);
        dx.par_chunks_mut(per * c).enumerate().for_each_init(
            || (vec![T::zero(); c], vec![T::zero(); c]),
            |(dh, tmp), (t, chunk)| {
                for (jr, dxr) in chunk.chunks_mut(c).enumerate() {
                    let r = t * per + jr;
                    let scale = self.md(mods, r / self.n, j + 1);
                    for ((d, &g), &s) in dh.iter_mut().zip(&dm[r * c..(r + 1) * c]).zip(scale) {
                        *d = g * (one + s);
                    }
                    layer_norm_grad_row(&x[r * c..(r + 1) * c], dh, tmp, self.eps);
                    dxr.iter_mut().zip(tmp.iter()).for_each(|(d, &t)| *d += t);
                }
            },
        );
    }

    /// The gradients of `out = x + y·gate` (gate = modulation row `j`): the gate's into `dmods`, and
    /// `dy = g·gate`.
    fn gated_grad<T: Real>(&self, dmods: &mut [T], mods: &[T], j: usize, g: &[T], y: &[T]) -> Vec<T> {
        let c = self.c;
        self.item_sums(dmods, j, |r, acc| {
            let (g, y) = (&g[r * c..(r + 1) * c], &y[r * c..(r + 1) * c]);
            acc.iter_mut().zip(g.iter().zip(y)).for_each(|(a, (&g, &y))| *a += g * y)
        });
        let mut dy = take(g.len()); // every row written
        rows(&mut dy, c, |r, d| {
            let gate = self.md(mods, r / self.n, j);
            d.iter_mut().zip(&g[r * c..(r + 1) * c]).zip(gate).for_each(|((d, &g), &s)| *d = g * s);
        });
        dy
    }
}

fn forward<T: Real + 'static>(s: &Sz, bias: &[T], x: &[T], ctx: &[T], p: &[T], save: bool) -> (Vec<T>, Saved<T>) {
    let (c, ff) = (s.c, s.ff);
    let (r, rl) = (s.b * s.n, s.b * s.l);
    let o = Offsets::new(c, ff);
    let (y, t0) = ctx.split_at(rl * c);
    let sst = &p[o.sst..o.wqkv];
    let mods: Vec<T> = t0.iter().enumerate().map(|(i, &t)| t + sst[i % (6 * c)]).collect();
    let scale = T::from_f64(1.0 / ((c / s.heads) as f64).sqrt());

    let (h1, m1) = s.norm_modulate(x, &mods, 0);
    let qkv = linear(&m1, &p[o.wqkv..o.bqkv], &p[o.bqkv..o.wo], None, (r, c));
    let mut a1 = take(r * c); // attention writes every head's columns
    let views = (View::of(&qkv, 0, 3 * c), View::of(&qkv, c, 3 * c), View::of(&qkv, 2 * c, 3 * c));
    // SAFETY: qkv holds r rows of 3c, a1 r rows of c.
    let mut p1 = s.probability_buffer::<T>(s.n, save);
    unsafe { attention::forward(&s.attn(s.n), scale, &[], views, View::of_mut(&mut a1, 0, c), p1.as_deref_mut()) };
    let o1 = linear(&a1, &p[o.wo..o.bo], &p[o.bo..o.wq2], None, (r, c));
    let x1 = s.gated(x, &o1, &mods, 2);

    // The cross-attention's query and key/value products are independent: one thread each.
    let (q2, kv2) = rayon::join(
        || linear_on(&x1, &p[o.wq2..o.bq2], &p[o.bq2..o.wkv2], None, (r, c), false),
        || linear_on(y, &p[o.wkv2..o.bkv2], &p[o.bkv2..o.wo2], None, (rl, c), false),
    );
    let mut a2 = take(r * c);
    let views = (View::of(&q2, 0, c), View::of(&kv2, 0, 2 * c), View::of(&kv2, c, 2 * c));
    // SAFETY: q2 holds r rows of c, kv2 rl rows of 2c, a2 r rows of c.
    let mut p2 = s.probability_buffer::<T>(s.l, save);
    unsafe { attention::forward(&s.attn(s.l), scale, bias, views, View::of_mut(&mut a2, 0, c), p2.as_deref_mut()) };
    let x2 = linear(&a2, &p[o.wo2..o.bo2], &p[o.bo2..o.w1], Some(&x1), (r, c));

    let (h2, m2) = s.norm_modulate(&x2, &mods, 3);
    let f1 = linear(&m2, &p[o.w1..o.b1], &p[o.b1..o.w2], None, (r, c));
    let mut g1 = take(r * ff);
    rows(&mut g1, ff, |i, out| gelu_row(&f1[i * ff..(i + 1) * ff], out));
    let f2 = linear(&g1, &p[o.w2..o.b2], &p[o.b2..o.total], None, (r, ff));
    let out = s.gated(&x2, &f2, &mods, 5);
    (out, Saved { mods, h1, m1, qkv, a1, o1, x1, q2, kv2, a2, p1, p2, x2, h2, m2, f1, g1, f2 })
}

/// Gradients of x `[B·N·C]`, ctx `[B·L·C + B·6C]` and the packed parameters for the output gradient `g`.
fn backward<T: Real + 'static>(
    s: &Sz,
    bias: &[T],
    (x, ctx, p): (&[T], &[T], &[T]),
    v: &Saved<T>,
    g: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (c, ff) = (s.c, s.ff);
    let (r, rl) = (s.b * s.n, s.b * s.l);
    let o = Offsets::new(c, ff);
    let y = &ctx[..rl * c];
    let scale = T::from_f64(1.0 / ((c / s.heads) as f64).sqrt());
    let mut dp = vec![T::zero(); o.total];
    let mut dmods = vec![T::zero(); s.b * 6 * c];

    // MLP: out = x2 + gate_mlp·(W2 gelu(W1 m2 + b1) + b2).
    let df2 = s.gated_grad(&mut dmods, &v.mods, 5, g, &v.f2);
    // Buffers from the pool: each is written in full (products without accumulation, attention).
    let mut dg1 = take(r * ff);
    linear_back((p, &mut dp), o.w2, (&df2, &v.g1), (&mut dg1, false), (r, ff, c));
    give(df2);
    let f1 = &v.f1;
    rows(&mut dg1, ff, |i, d| gelu_grad_row(&f1[i * ff..(i + 1) * ff], d));
    let mut dm2 = take(r * c);
    linear_back((p, &mut dp), o.w1, (&dg1, &v.m2), (&mut dm2, false), (r, c, ff));
    give(dg1);
    let mut dx2 = g.to_vec();
    s.norm_modulate_grad(&mut dmods, &v.mods, 3, &dm2, &v.h2, &v.x2, &mut dx2);
    give(dm2);

    // Cross-attention: x2 = x1 + Wo2 attn(Wq2 x1, Wkv2 y) + bo2.
    let mut da2 = take(r * c);
    linear_back((p, &mut dp), o.wo2, (&dx2, &v.a2), (&mut da2, false), (r, c, c));
    let (mut dq2, mut dkv2) = (take(r * c), take(rl * 2 * c));
    let views = (View::of(&v.q2, 0, c), View::of(&v.kv2, 0, 2 * c), View::of(&v.kv2, c, 2 * c));
    let grads = (View::of_mut(&mut dq2, 0, c), View::of_mut(&mut dkv2, 0, 2 * c), View::of_mut(&mut dkv2, c, 2 * c));
    // SAFETY: the views cover their buffers' rows; the dk and dv views interleave without overlap.
    unsafe { attention::backward(&s.attn(s.l), scale, bias, views, View::of(&da2, 0, c), grads, v.p2.as_deref()) };
    give(da2);
    let mut dx1 = dx2;
    linear_back((p, &mut dp), o.wq2, (&dq2, &v.x1), (&mut dx1, true), (r, c, c));
    give(dq2);
    let mut dctx = take(rl * c + s.b * 6 * c);
    linear_back((p, &mut dp), o.wkv2, (&dkv2, y), (&mut dctx[..rl * c], false), (rl, c, 2 * c));
    give(dkv2);

    // Self-attention: x1 = x + gate_msa·(Wo attn(Wqkv m1 + bqkv) + bo).
    let do1 = s.gated_grad(&mut dmods, &v.mods, 2, &dx1, &v.o1);
    let mut da1 = take(r * c);
    linear_back((p, &mut dp), o.wo, (&do1, &v.a1), (&mut da1, false), (r, c, c));
    give(do1);
    let mut dqkv = take(r * 3 * c);
    let views = (View::of(&v.qkv, 0, 3 * c), View::of(&v.qkv, c, 3 * c), View::of(&v.qkv, 2 * c, 3 * c));
    let grads =
        (View::of_mut(&mut dqkv, 0, 3 * c), View::of_mut(&mut dqkv, c, 3 * c), View::of_mut(&mut dqkv, 2 * c, 3 * c));
    // SAFETY: as above, the three gradient views interleave without overlap.
    unsafe { attention::backward(&s.attn(s.n), scale, &[], views, View::of(&da1, 0, c), grads, v.p1.as_deref()) };
    give(da1);
    let mut dm1 = take(r * c);
    linear_back((p, &mut dp), o.wqkv, (&dqkv, &v.m1), (&mut dm1, false), (r, c, 3 * c));
    give(dqkv);
    let mut dx = dx1;
    s.norm_modulate_grad(&mut dmods, &v.mods, 0, &dm1, &v.h1, x, &mut dx);
    give(dm1);

    // The modulation: mods = scale_shift_table + t0.
    for item in dmods.chunks(6 * c) {
        dp[o.sst..o.wqkv].iter_mut().zip(item).for_each(|(d, &g)| *d += g);
    }
    dctx[rl * c..].copy_from_slice(&dmods);
    (dx, dctx, dp)
}

impl Block {
    fn sizes(&self, lx: &Layout, lctx: &Layout, lp: &Layout) -> Result<Sz> {
        let (b, n, c) = lx.shape().dims3()?;
        let sz = Sz { b, n, l: self.l, c, ff: self.ff, heads: self.heads, eps: self.eps };
        sz.check(lctx.shape().elem_count(), lp.shape().elem_count(), self.bias.len())?;
        Ok(sz)
    }

    fn bias_as<T: Real>(&self) -> Vec<T> {
        self.bias.iter().map(|&v| T::from_f64(v)).collect()
    }

    fn run_backward<T: Real + 'static>(&self, s: &Sz, ins: (&[T], &[T], &[T]), g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let bias = self.bias_as::<T>();
        let kept = self.saved.lock().expect("the saved activations are never poisoned").take();
        let saved = match kept.and_then(|b| b.downcast::<Saved<T>>().ok()) {
            Some(saved) => *saved,
            None => forward(s, &bias, ins.0, ins.1, ins.2, true).1,
        };
        let grads = backward(s, &bias, ins, &saved, g);
        saved.recycle();
        grads
    }
}

fn cpu_slice<'a, T: candle_core::WithDType>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [T]> {
    match storage {
        Storage::Cpu(s) => contiguous::<T>(s, layout, what),
        _ => candle_core::bail!("transformer block: {what} is not on the CPU"),
    }
}

impl CustomOp3 for Block {
    fn name(&self) -> &'static str {
        "pixforge-pixart-block"
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
        let sz = self.sizes(l1, l2, l3)?;
        macro_rules! run {
            ($t:ty, $wrap:path) => {{
                let x = contiguous::<$t>(s1, l1, "x")?;
                let (ctx, p) = (contiguous::<$t>(s2, l2, "ctx")?, contiguous::<$t>(s3, l3, "params")?);
                let (out, saved) = forward(&sz, &self.bias_as::<$t>(), x, ctx, p, self.save);
                if self.save {
                    *self.saved.lock().expect("the saved activations are never poisoned") = Some(Box::new(saved));
                }
                Ok(($wrap(out), l1.shape().clone()))
            }};
        }
        match candle_core::backend::BackendStorage::dtype(s1) {
            DType::F32 => run!(f32, CpuStorage::F32),
            DType::F64 => run!(f64, CpuStorage::F64),
            other => candle_core::bail!("transformer block: expected f32 or f64, found {other:?}"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sc, lc) = ctx.storage_and_layout();
        let (sp, lp) = params.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let sz = self.sizes(lx, lc, lp)?;
        macro_rules! run {
            ($t:ty) => {{
                let ins = (
                    cpu_slice::<$t>(&sx, lx, "x")?,
                    cpu_slice::<$t>(&sc, lc, "ctx")?,
                    cpu_slice::<$t>(&sp, lp, "params")?,
                );
                let (dx, dctx, dp) = self.run_backward::<$t>(&sz, ins, cpu_slice::<$t>(&sg, lg, "grad")?);
                (
                    Tensor::from_vec(dx, x.shape(), x.device()),
                    Tensor::from_vec(dctx, ctx.shape(), x.device()),
                    Tensor::from_vec(dp, params.shape(), x.device()),
                )
            }};
        }
        let wrap = |v: Result<Tensor>, t: &Tensor| -> Result<Option<Tensor>> {
            Ok(if t.track_op() { Some(v?) } else { None })
        };
        let (dx, dctx, dp) = match x.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            other => candle_core::bail!("transformer block: expected f32 or f64, found {other:?}"),
        };
        Ok((wrap(dx, x)?, wrap(dctx, ctx)?, wrap(dp, params)?))
    }
}

/// A block's forward run outside candle's autograd (the CPU training path of
/// [`crate::train::loss_and_grads`]): what its [`backward_taped`] needs.
pub struct Tape<T> {
    sz: Sz,
    bias: Vec<T>,
    saved: Saved<T>,
}

/// One block's forward on raw values: `x` `[B·N·C]`, `ctx` (`y` `[B·L·C]` then `t0` `[B·6C]`) and the
/// packed parameters `p` (the order of [`PARAMS`]); `dims` = (heads, eps, B, N, L, C, MLP width),
/// `key_bias` the caption mask as 0 / -10000 per key. Returns the output and its tape.
pub fn forward_taped<T: Real + 'static>(
    (heads, eps): (usize, f64),
    (b, n, l, c, ff): (usize, usize, usize, usize, usize),
    key_bias: &[f64],
    (x, ctx, p): (&[T], &[T], &[T]),
) -> Result<(Vec<T>, Tape<T>)> {
    let sz = Sz { b, n, l, c, ff, heads, eps };
    if x.len() != b * n * c {
        candle_core::bail!("transformer block: x holds {} values, expected {b}·{n}·{c}", x.len());
    }
    sz.check(ctx.len(), p.len(), key_bias.len())?;
    let bias: Vec<T> = key_bias.iter().map(|&v| T::from_f64(v)).collect();
    let (out, saved) = forward(&sz, &bias, x, ctx, p, true);
    Ok((out, Tape { sz, bias, saved }))
}

/// The gradients of `x`, `ctx` and the packed parameters of a [`forward_taped`] block for its output
/// gradient `g`, given the same inputs. The tape's buffers go back to the pool.
pub fn backward_taped<T: Real + 'static>(tape: Tape<T>, ins: (&[T], &[T], &[T]), g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let grads = backward(&tape.sz, &tape.bias, ins, &tape.saved, g);
    tape.saved.recycle();
    grads
}
