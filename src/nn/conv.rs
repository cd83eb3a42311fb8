//! Inference kernels of the VAE encoder on CPU: 2D convolution as implicit GEMM and group norm with
//! an optional fused SiLU. Other devices (and dtypes other than f32/f64) use candle's ops.
//!
//! Convolution without im2col: the input is copied once into a zero-padded buffer; for stride 1 the
//! output is computed on the padded grid (`ho × wp`, the `kw − 1` extra columns per row are
//! discarded), where tap (dy, dx) of the kernel reads the buffer shifted by `dy·wp + dx`, so each tap
//! is one matrix product `W_tap [Co, Ci] · P [Ci, cols]` accumulated onto the output. Columns are
//! processed in cache-sized chunks, in parallel. Strided convolutions take one product per output row
//! and tap, reading the buffer with a column stride.

use crate::nn::kernels::{contiguous, mm, on_float, Real, Shared};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, WithDType};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::sync::Arc;

/// A convolution's geometry and its weights regrouped by tap (`[kh·kw][Co][Ci]`).
struct Kernel {
    taps: Vec<f32>,
    bias: Vec<f32>,
    co: usize,
    ci: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    /// Zero padding: top, bottom, left, right.
    pad: [usize; 4],
    /// For 3×3, stride 1, padding 1: the Winograd F(2×2, 3×3) weights `G g Gᵀ`, `[16][Co][Ci]`.
    winograd: Option<Vec<f32>>,
}

/// A 2D convolution (weights `[Co, Ci, kh, kw]`, bias `[Co]`) with explicit padding and stride.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    kernel: Arc<Kernel>,
}

/// `v` as a slice of `T`: borrowed for f32, converted otherwise (f64 in tests).
#[allow(clippy::ptr_arg)] // the downcast needs the Vec's own type
fn as_type<T: Real + 'static>(v: &Vec<f32>) -> std::borrow::Cow<'_, [T]> {
    match (v as &dyn std::any::Any).downcast_ref::<Vec<T>>() {
        Some(same) => std::borrow::Cow::Borrowed(same.as_slice()),
        None => std::borrow::Cow::Owned(v.iter().map(|&x| T::from_f64(x as f64)).collect()),
    }
}

impl Kernel {
    /// Output height and width for an `h × w` input.
    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (hp, wp) = (h + self.pad[0] + self.pad[1], w + self.pad[2] + self.pad[3]);
        ((hp - self.kh) / self.stride + 1, (wp - self.kw) / self.stride + 1)
    }

    /// One image `[Ci, h, w]` → `[Co, ho, wo]` (+ `residual`, same shape as the output).
    fn run<T: Real + 'static>(&self, x: &[T], h: usize, w: usize, residual: Option<&[T]>) -> Vec<T> {
        if let Some(u) = &self.winograd {
            return self.run_winograd(u, x, h, w, residual);
        }
        let (ci, co) = (self.ci, self.co);
        let (hp, wp) = (h + self.pad[0] + self.pad[1], w + self.pad[2] + self.pad[3]);
        let (ho, wo) = self.out_size(h, w);
        // Channel stride of the padded buffer: the last tap of the last grid column reads kw − 1 past it.
        let cs = hp * wp + self.kw;
        let mut padded = vec![T::zero(); ci * cs];
        padded.par_chunks_mut(cs).zip(x.par_chunks(h * w)).for_each(|(p, src)| {
            for y in 0..h {
                let at = (y + self.pad[0]) * wp + self.pad[2];
                p[at..at + w].copy_from_slice(&src[y * w..(y + 1) * w]);
            }
        });
        let taps = as_type::<T>(&self.taps);
        let bias = as_type::<T>(&self.bias);
        let tap = |t: usize| taps[t * co * ci..].as_ptr();
        let offset = |t: usize| (t / self.kw) * wp + t % self.kw;
        let mut out = vec![T::zero(); co * ho * wo];
        if self.stride == 1 {
            // The padded grid: ho rows of wp columns, of which the first wo are the output.
            let n = ho * wp;
            let mut grid = vec![T::zero(); co * n];
            for (c, row) in grid.chunks_mut(n).enumerate() {
                row.fill(bias[c]);
            }
            let chunk = (131_072 / co).clamp(64, 4096);
            let g = Shared(grid.as_mut_ptr());
            let p = padded.as_ptr() as usize;
            (0..n.div_ceil(chunk)).into_par_iter().for_each(|i| {
                let (n0, nc) = (i * chunk, chunk.min(n - i * chunk));
                for t in 0..self.kh * self.kw {
                    // SAFETY: dst covers rows 0..co at n0..n0+nc of the co×n grid; rhs reads columns
                    // n0 + offset .. + nc of each channel, < ho·wp + (kh−1)·wp + kw ≤ cs.
                    unsafe {
                        mm(
                            co,
                            nc,
                            ci,
                            (g.at(n0), 1, n as isize),
                            true,
                            (tap(t), 1, ci as isize),
                            ((p as *const T).add(n0 + offset(t)), 1, cs as isize),
                        )
                    }
                }
            });
            out.par_chunks_mut(ho * wo).zip(grid.par_chunks(n)).enumerate().for_each(|(c, (o, g))| {
                for y in 0..ho {
                    let (o, g) = (&mut o[y * wo..(y + 1) * wo], &g[y * wp..y * wp + wo]);
                    match residual {
                        Some(r) => {
                            let r = &r[c * ho * wo + y * wo..][..wo];
                            for ((o, &g), &r) in o.iter_mut().zip(g).zip(r) {
                                *o = g + r;
                            }
                        }
                        None => o.copy_from_slice(g),
                    }
                }
            });
            return out;
        } else {
            for (c, o) in out.chunks_mut(ho * wo).enumerate() {
                o.fill(bias[c]);
            }
            let o = Shared(out.as_mut_ptr());
            let p = padded.as_ptr() as usize;
            let s = self.stride;
            (0..ho).into_par_iter().for_each(|y| {
                for t in 0..self.kh * self.kw {
                    // SAFETY: dst is output row y of every channel; rhs reads row s·y + dy, columns
                    // dx + s·x for x < wo, inside the padded image.
                    unsafe {
                        mm(
                            co,
                            wo,
                            ci,
                            (o.at(y * wo), 1, (ho * wo) as isize),
                            true,
                            (tap(t), 1, ci as isize),
                            ((p as *const T).add(s * y * wp + offset(t)), s as isize, cs as isize),
                        )
                    }
                }
            });
        }
        if let Some(r) = residual {
            out.par_iter_mut().zip(r.par_iter()).for_each(|(o, &r)| *o += r);
        }
        out
    }
}

/// Winograd F(2×2, 3×3): `G g Gᵀ` of a 3×3 kernel `g` (row-major), as 16 values.
fn winograd_weight(g: &[f32]) -> [f32; 16] {
    // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]], applied to rows then columns.
    let rows = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    let mut t = [[0f32; 3]; 4];
    for col in 0..3 {
        let r = rows(g[col], g[3 + col], g[6 + col]);
        for i in 0..4 {
            t[i][col] = r[i];
        }
    }
    let mut u = [0f32; 16];
    for i in 0..4 {
        let r = rows(t[i][0], t[i][1], t[i][2]);
        u[i * 4..i * 4 + 4].copy_from_slice(&r);
    }
    u
}

impl Kernel {
    /// A 3×3, stride 1, padding 1 convolution by Winograd F(2×2, 3×3): per tile of 2×2 outputs, 16
    /// products instead of 36, as 16 matrix products `U_k [Co, Ci] · V_k [Ci, tiles]` over chunks of
    /// whole tile rows (the transforms run along rows, so they vectorise, and stay in cache), in
    /// parallel.
    #[allow(clippy::ptr_arg)]
    fn run_winograd<T: Real + 'static>(
        &self,
        u: &Vec<f32>,
        x: &[T],
        h: usize,
        w: usize,
        residual: Option<&[T]>,
    ) -> Vec<T> {
        let (ci, co) = (self.ci, self.co);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let (hp, wp) = (2 * th + 2, 2 * tw + 2);
        let mut padded = vec![T::zero(); ci * hp * wp];
        padded.par_chunks_mut(hp * wp).zip(x.par_chunks(h * w)).for_each(|(p, src)| {
            for y in 0..h {
                p[(y + 1) * wp + 1..(y + 1) * wp + 1 + w].copy_from_slice(&src[y * w..(y + 1) * w]);
            }
        });
        let u = as_type::<T>(u);
        let bias = as_type::<T>(&self.bias);
        // Tile rows per chunk: about 64K / Ci tiles, and at least four chunks to share out.
        let rows = ((65_536 / ci).max(32) / tw).clamp(1, th.div_ceil(4).max(1));
        let mut out = vec![T::zero(); co * h * w];
        let o = Shared(out.as_mut_ptr());
        (0..th.div_ceil(rows)).into_par_iter().for_each(|c| {
            let (ty0, nrows) = (c * rows, rows.min(th - c * rows));
            let n = nrows * tw;
            let mut v = vec![T::zero(); 16 * ci * n];
            let mut t = vec![T::zero(); 4 * wp];
            for i in 0..ci {
                let p = &padded[i * hp * wp..(i + 1) * hp * wp];
                for r in 0..nrows {
                    let base = 2 * (ty0 + r) * wp;
                    let (r0, r1, r2, r3) = (
                        &p[base..base + wp],
                        &p[base + wp..base + 2 * wp],
                        &p[base + 2 * wp..base + 3 * wp],
                        &p[base + 3 * wp..base + 4 * wp],
                    );
                    let (t0, rest) = t.split_at_mut(wp);
                    let (t1, rest) = rest.split_at_mut(wp);
                    let (t2, t3) = rest.split_at_mut(wp);
                    for cidx in 0..wp {
                        t0[cidx] = r0[cidx] - r2[cidx];
                        t1[cidx] = r1[cidx] + r2[cidx];
                        t2[cidx] = r2[cidx] - r1[cidx];
                        t3[cidx] = r1[cidx] - r3[cidx];
                    }
                    for (q, tq) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                        let at = |k: usize| ((q * 4 + k) * ci + i) * n + r * tw;
                        // SAFETY: the four destinations are disjoint rows of v (k differs), each tw long.
                        let (d0, d1, d2, d3) = unsafe {
                            let b = v.as_mut_ptr();
                            (
                                std::slice::from_raw_parts_mut(b.add(at(0)), tw),
                                std::slice::from_raw_parts_mut(b.add(at(1)), tw),
                                std::slice::from_raw_parts_mut(b.add(at(2)), tw),
                                std::slice::from_raw_parts_mut(b.add(at(3)), tw),
                            )
                        };
                        for tx in 0..tw {
                            let a = &tq[2 * tx..2 * tx + 4];
                            d0[tx] = a[0] - a[2];
                            d1[tx] = a[1] + a[2];
                            d2[tx] = a[2] - a[1];
                            d3[tx] = a[1] - a[3];
                        }
                    }
                }
            }
            let mut m = vec![T::zero(); 16 * co * n];
            for k in 0..16 {
                // SAFETY: U_k is co×ci at k·co·ci, V_k is ci×n at k·ci·n, M_k is co×n at k·co·n.
                unsafe {
                    mm(
                        co,
                        n,
                        ci,
                        (m.as_mut_ptr().add(k * co * n), 1, n as isize),
                        false,
                        (u.as_ptr().add(k * co * ci), 1, ci as isize),
                        (v.as_ptr().add(k * ci * n), 1, n as isize),
                    )
                }
            }
            let mut y = vec![T::zero(); 4 * tw];
            for oc in 0..co {
                for r in 0..nrows {
                    let mk = |k: usize| &m[(k * co + oc) * n + r * tw..][..tw];
                    let (y00, rest) = y.split_at_mut(tw);
                    let (y01, rest) = rest.split_at_mut(tw);
                    let (y10, y11) = rest.split_at_mut(tw);
                    for q in 0..4 {
                        // Column transform of row q of M, then the row transform accumulates it.
                        let (m0, m1, m2, m3) = (mk(q * 4), mk(q * 4 + 1), mk(q * 4 + 2), mk(q * 4 + 3));
                        let (w0, w1) = match q {
                            0 => (T::one(), T::zero()),
                            1 => (T::one(), T::one()),
                            2 => (T::one(), T::zero() - T::one()),
                            _ => (T::zero(), T::zero() - T::one()),
                        };
                        for tx in 0..tw {
                            let c0 = m0[tx] + m1[tx] + m2[tx];
                            let c1 = m1[tx] - m2[tx] - m3[tx];
                            if q == 0 {
                                y00[tx] = c0;
                                y01[tx] = c1;
                                y10[tx] = T::zero();
                                y11[tx] = T::zero();
                            } else {
                                y00[tx] += w0 * c0;
                                y01[tx] += w0 * c1;
                            }
                            y10[tx] += w1 * c0;
                            y11[tx] += w1 * c1;
                        }
                    }
                    let ty = ty0 + r;
                    for (a, (ya, yb)) in [(&*y00, &*y01), (&*y10, &*y11)].into_iter().enumerate() {
                        let yy = 2 * ty + a;
                        if yy >= h {
                            continue;
                        }
                        let row = oc * h * w + yy * w;
                        for xx in 0..w {
                            let val = if xx % 2 == 0 { ya[xx / 2] } else { yb[xx / 2] };
                            let res = residual.map_or(T::zero(), |r| r[row + xx]);
                            // SAFETY: output rows 2ty, 2ty+1 belong to this chunk's tile rows only.
                            unsafe { *o.at(row + xx) = val + bias[oc] + res };
                        }
                    }
                }
            }
        });
        out
    }
}

struct ConvOp(Arc<Kernel>);

impl ConvOp {
    fn shapes(&self, l: &Layout) -> Result<(usize, usize, usize, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        if c != self.0.ci {
            candle_core::bail!("conv2d: expected {} input channels, found {c}", self.0.ci);
        }
        let (ho, wo) = self.0.out_size(h, w);
        Ok((b, h, w, Shape::from((b, self.0.co, ho, wo))))
    }

    fn all<T: Real + 'static>(&self, x: &[T], b: usize, h: usize, w: usize, res: Option<&[T]>) -> Vec<T> {
        let (ho, wo) = self.0.out_size(h, w);
        let (per_in, per_out) = (self.0.ci * h * w, self.0.co * ho * wo);
        let mut out = Vec::with_capacity(b * per_out);
        for i in 0..b {
            let one =
                self.0.run(&x[i * per_in..(i + 1) * per_in], h, w, res.map(|r| &r[i * per_out..(i + 1) * per_out]));
            if b == 1 {
                return one;
            }
            out.extend_from_slice(&one);
        }
        out
    }
}

impl CustomOp1 for ConvOp {
    fn name(&self) -> &'static str {
        "pixforge-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, shape) = self.shapes(l)?;
        on_float!(s, l, "pixforge-conv2d", shape, |x: T| self.all::<T>(x, b, h, w, None))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "pixforge-conv2d-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, shape) = self.shapes(l1)?;
        if l2.shape() != &shape {
            candle_core::bail!("conv2d-add: residual {:?} does not match the output {:?}", l2.shape(), shape);
        }
        on_float!(s1, l1, "pixforge-conv2d-add", shape, |x: T| {
            let r = contiguous::<T>(s2, l2, "pixforge-conv2d-add")?;
            self.all::<T>(x, b, h, w, Some(r))
        })
    }
}

fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

impl Conv2d {
    /// Loads `weight` `[co, ci, k, k]` and `bias` under `vb` (diffusers names).
    pub fn load(vb: VarBuilder, ci: usize, co: usize, k: usize, stride: usize, pad: [usize; 4]) -> Result<Self> {
        let weight = vb.get((co, ci, k, k), "weight")?;
        let bias = vb.get(co, "bias")?;
        let w: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut taps = vec![0f32; w.len()];
        for o in 0..co {
            for i in 0..ci {
                for t in 0..k * k {
                    taps[(t * co + o) * ci + i] = w[(o * ci + i) * k * k + t];
                }
            }
        }
        let b = bias.to_dtype(DType::F32)?.to_vec1()?;
        let winograd = (k == 3 && stride == 1 && pad == [1; 4] && ci >= 16).then(|| {
            let mut u = vec![0f32; 16 * co * ci];
            for o in 0..co {
                for i in 0..ci {
                    let g = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
                    for (kk, val) in winograd_weight(g).into_iter().enumerate() {
                        u[(kk * co + o) * ci + i] = val;
                    }
                }
            }
            u
        });
        let kernel = Arc::new(Kernel { taps, bias: b, co, ci, kh: k, kw: k, stride, pad, winograd });
        Ok(Self { weight, bias, kernel })
    }

    /// `conv(x) + residual`, the residual shaped as the output.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if fast(x) && residual.dtype() == x.dtype() {
            return x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &ConvOp(self.kernel.clone()));
        }
        self.forward(x)? + residual
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fast(x) {
            return x.contiguous()?.apply_op1_no_bwd(&ConvOp(self.kernel.clone()));
        }
        let [t, b, l, r] = self.kernel.pad;
        let x = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
        let y = x.conv2d(&self.weight.to_dtype(x.dtype())?, 0, self.kernel.stride, 1, 1)?;
        y.broadcast_add(&self.bias.to_dtype(x.dtype())?.reshape((1, (), 1, 1))?)
    }
}

/// Group norm over `[B, C, H, W]` with a per-channel affine, optionally followed by SiLU.
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    weight: Tensor,
    bias: Tensor,
    affine: Arc<(Vec<f32>, Vec<f32>)>,
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
    affine: Arc<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "pixforge-group-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let per_group = (c / self.groups) * h * w;
        let hw = h * w;
        on_float!(s, l, self.name(), l.shape().clone(), |x: T| {
            let mut out = vec![T::from_f64(0.0); b * c * hw];
            out.par_chunks_mut(per_group).zip(x.par_chunks(per_group)).enumerate().for_each(|(i, (y, x))| {
                let n = x.len() as f64;
                let mean = lane_sum(x, |v| v) / n;
                let m = T::from_f64(mean);
                let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
                let rstd = 1.0 / (var + self.eps).sqrt();
                let first = (i % self.groups) * (c / self.groups);
                for (j, (y, x)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                    let (g, b) = (self.affine.0[first + j] as f64, self.affine.1[first + j] as f64);
                    let (scale, shift) = (T::from_f64(g * rstd), T::from_f64(b - mean * g * rstd));
                    for (y, &x) in y.iter_mut().zip(x) {
                        let v = x * scale + shift;
                        *y =
                            if self.silu { v / (T::from_f64(1.0) + <T as Real>::exp(T::from_f64(0.0) - v)) } else { v };
                    }
                }
            });
            out
        })
    }
}

/// Σ f(v) over `x`, in 16 lanes of `T` per block of 4096 (so it vectorises), blocks added in f64.
fn lane_sum<T: Real>(x: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(4096) {
        let mut acc = [T::from_f64(0.0); 16];
        let mut lanes = block.chunks_exact(16);
        for c in &mut lanes {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        total += lanes.remainder().iter().map(|&v| f(v).to_f64()).sum::<f64>();
        total += acc.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    total
}

impl GroupNorm {
    /// Loads `weight` and `bias` `[channels]` under `vb`.
    pub fn load(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("group norm: {channels} channels do not split into {groups} groups");
        }
        let (weight, bias) = (vb.get(channels, "weight")?, vb.get(channels, "bias")?);
        let affine = Arc::new((weight.to_dtype(DType::F32)?.to_vec1()?, bias.to_dtype(DType::F32)?.to_vec1()?));
        Ok(Self { groups, eps, weight, bias, affine })
    }

    /// The normalised `x`, then SiLU when `silu`.
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if fast(x) && x.rank() == 4 {
            let op = GroupNormOp { groups: self.groups, eps: self.eps, silu, affine: self.affine.clone() };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        let (b, c, h, w) = x.dims4()?;
        let g = x.reshape((b, self.groups, c / self.groups * h * w))?;
        let mean = g.mean_keepdim(2)?;
        let centred = g.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape((b, c, h, w))?;
        let y =
            y.broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The implicit-GEMM and Winograd convolutions equal candle's `conv2d` on explicitly padded input,
    /// for stride 1 and 2, kernel 1 and 3, symmetric and one-sided padding, batches and odd sizes.
    #[test]
    fn convolution_matches_candle() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(3);
        for (ci, co, k, stride, pad, (b, h, w)) in [
            (3, 8, 3, 1, [1, 1, 1, 1], (2, 9, 13)),
            (8, 16, 3, 2, [0, 1, 0, 1], (1, 10, 7)),
            (16, 8, 1, 1, [0, 0, 0, 0], (2, 5, 6)),
            (5, 7, 3, 1, [0, 0, 0, 0], (1, 6, 6)),
            (4, 4, 3, 2, [1, 1, 1, 1], (1, 9, 9)),
            // Winograd (3×3, stride 1, padding 1, 16+ input channels), even and odd sizes.
            (16, 24, 3, 1, [1, 1, 1, 1], (2, 12, 14)),
            (32, 16, 3, 1, [1, 1, 1, 1], (1, 7, 9)),
        ] {
            let weights = HashMap::from([
                ("weight".to_string(), rng.normal_tensor(&[co, ci, k, k], 0.5, &dev).unwrap()),
                ("bias".to_string(), rng.normal_tensor(&[co], 0.5, &dev).unwrap()),
            ]);
            let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
            let conv = Conv2d::load(vb, ci, co, k, stride, pad).unwrap();
            let x = rng.normal_tensor(&[b, ci, h, w], 1.0, &dev).unwrap();
            let xp = x.pad_with_zeros(2, pad[0], pad[1]).unwrap().pad_with_zeros(3, pad[2], pad[3]).unwrap();
            let want = xp
                .conv2d(&weights["weight"], 0, stride, 1, 1)
                .unwrap()
                .broadcast_add(&weights["bias"].reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims(), "ci {ci} co {co} k {k} stride {stride}");
            assert!(max_diff(&got, &want) < 1e-4, "ci {ci} co {co} k {k} stride {stride}: {}", max_diff(&got, &want));
            let r = rng.normal_tensor(want.dims(), 1.0, &dev).unwrap();
            let added = conv.forward_add(&x, &r).unwrap();
            assert!(max_diff(&added, &(want + r).unwrap()) < 1e-4);
        }
    }

    #[test]
    fn group_norm_with_silu_matches_the_formula() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(4);
        let (g, c) = (4, 12);
        let weights = HashMap::from([
            ("weight".to_string(), rng.normal_tensor(&[c], 1.0, &dev).unwrap()),
            ("bias".to_string(), rng.normal_tensor(&[c], 1.0, &dev).unwrap()),
        ]);
        let norm = GroupNorm::load(VarBuilder::from_tensors(weights.clone(), DType::F32, &dev), g, c, 1e-6).unwrap();
        let x = (rng.normal_tensor(&[2, c, 5, 7], 3.0, &dev).unwrap() + 1.5).unwrap();
        let gx = x.reshape((2, g, c / g * 35)).unwrap();
        let mean = gx.mean_keepdim(2).unwrap();
        let var = gx.broadcast_sub(&mean).unwrap().sqr().unwrap().mean_keepdim(2).unwrap();
        let y = gx.broadcast_sub(&mean).unwrap().broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let y = y
            .reshape((2, c, 5, 7))
            .unwrap()
            .broadcast_mul(&weights["weight"].reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&weights["bias"].reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        assert!(max_diff(&norm.forward(&x, false).unwrap(), &y) < 1e-5);
        assert!(max_diff(&norm.forward(&x, true).unwrap(), &candle_nn::ops::silu(&y).unwrap()) < 1e-5);
    }
}
