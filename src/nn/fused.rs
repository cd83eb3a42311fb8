//! candle custom ops (forward and backward) over the kernels of [`super::kernels`].

use super::kernels::{self as k, contiguous, on_float, per_row, Real};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

/// The last dimension of a layout.
fn last(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// Layer norm over the last dimension, no affine parameters.
pub struct LayerNorm(pub f64);

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "pixforge-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last(l);
        on_float!(s, l, self.name(), l.shape().clone(), |x: T| {
            per_row::<T>(&[x], x.len(), n, |_, i, y| k::layer_norm_row(i[0], y, self.0))
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &LayerNormGrad(self.0))?))
    }
}

struct LayerNormGrad(f64);

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "pixforge-layer-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last(l1);
        on_float!(s1, l1, self.name(), l1.shape().clone(), |x: T| {
            let g = contiguous::<T>(s2, l2, self.name())?;
            per_row::<T>(&[x, g], x.len(), n, |_, i, dx| k::layer_norm_grad_row(i[0], i[1], dx, self.0))
        })
    }
}

/// softmax(scale·x + bias) over the last dimension, with `bias` `[B, L]` added to the rows of batch
/// item b (the attention key mask); applied to `x` `[B, …, L]` and `bias` as an op of two.
pub struct Softmax {
    /// Multiplies the input first.
    pub scale: f64,
}

impl Softmax {
    fn run<T: Real>(&self, x: &[T], bias: Option<&[T]>, n: usize) -> Vec<T> {
        let scale = T::from_f64(self.scale);
        let rows_per_item = bias.map(|b| x.len() / n / (b.len() / n).max(1)).unwrap_or(1).max(1);
        per_row::<T>(&[x], x.len(), n, |r, i, y| {
            let b = bias.map(|b| {
                let item = r / rows_per_item;
                &b[item * n..(item + 1) * n]
            });
            k::softmax_row(i[0], b, scale, y)
        })
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "pixforge-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last(l);
        on_float!(s, l, CustomOp1::name(self), l.shape().clone(), |x: T| self.run::<T>(x, None, n))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad(self.scale))?))
    }
}

impl CustomOp2 for Softmax {
    fn name(&self) -> &'static str {
        "pixforge-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last(l1);
        if last(l2) != n || l1.dims()[0] != l2.dims()[0] {
            candle_core::bail!("{}: bias {:?} does not fit scores {:?}", CustomOp2::name(self), l2.dims(), l1.dims());
        }
        on_float!(s1, l1, CustomOp2::name(self), l1.shape().clone(), |x: T| {
            let b = contiguous::<T>(s2, l2, CustomOp2::name(self))?;
            self.run::<T>(x, Some(b), n)
        })
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad(self.scale))?), None))
    }
}

struct SoftmaxGrad(f64);

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "pixforge-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last(l1);
        on_float!(s1, l1, self.name(), l1.shape().clone(), |y: T| {
            let g = contiguous::<T>(s2, l2, self.name())?;
            let scale = T::from_f64(self.0);
            per_row::<T>(&[y, g], y.len(), n, |_, i, dx| k::softmax_grad_row(i[0], i[1], scale, dx))
        })
    }
}

/// Elementwise work is split into rows of this many elements.
const CHUNK: usize = 4096;

/// tanh-approximated GELU.
pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "pixforge-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        on_float!(s, l, self.name(), l.shape().clone(), |x: T| {
            per_row::<T>(&[x], x.len(), CHUNK, |_, i, y| k::gelu_row(i[0], y))
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "pixforge-gelu-tanh-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        on_float!(s1, l1, self.name(), l1.shape().clone(), |x: T| {
            let g = contiguous::<T>(s2, l2, self.name())?;
            // Chunks must not straddle: both inputs are split at the same offsets.
            per_row::<T>(&[x, g], x.len(), CHUNK.min(x.len()), |_, i, dx| {
                dx.copy_from_slice(i[1]);
                k::gelu_grad_row(i[0], dx)
            })
        })
    }
}

/// `gelu(a) · b` for `[R, 2F]` = `[a | b]` row by row, giving `[R, F]` (inference only).
pub struct GatedGelu;

impl CustomOp1 for GatedGelu {
    fn name(&self) -> &'static str {
        "pixforge-gated-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, two_f) = l.shape().dims2()?;
        let f = two_f / 2;
        on_float!(s, l, self.name(), Shape::from((r, f)), |x: T| {
            use rayon::prelude::*;
            let mut out = vec![T::from_f64(0.0); r * f];
            out.par_chunks_mut(f).zip(x.par_chunks(two_f)).for_each(|(y, row)| {
                k::gelu_row(&row[..f], y);
                for (y, &b) in y.iter_mut().zip(&row[f..]) {
                    *y *= b;
                }
            });
            out
        })
    }
}

/// (B, N, H) of a `[B, N, H]` layout.
fn bnh(l: &Layout) -> Result<(usize, usize, usize)> {
    l.shape().dims3()
}

/// `x·(1 + scale) + shift` for `x` `[B, N, H]` and `shift`, `scale` `[B, 1, H]` (adaLN modulation).
pub struct Modulate;

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "pixforge-modulate"
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
        let (_, n, h) = bnh(l1)?;
        on_float!(s1, l1, self.name(), l1.shape().clone(), |x: T| {
            let shift = contiguous::<T>(s2, l2, self.name())?;
            let scale = contiguous::<T>(s3, l3, self.name())?;
            let one = T::from_f64(1.0);
            per_row::<T>(&[x], x.len(), h, |r, i, y| {
                let b = r / n;
                let (sh, sc) = (&shift[b * h..(b + 1) * h], &scale[b * h..(b + 1) * h]);
                for (((y, &x), &sh), &sc) in y.iter_mut().zip(i[0]).zip(sh).zip(sc) {
                    *y = x * (one + sc) + sh;
                }
            })
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        _shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, h) = x.dims3()?;
        let packed = x.apply_op3_no_bwd(scale, &grad.contiguous()?, &ModulateGrad)?;
        let mut p = unpack(&packed, b, n, h, 2)?.into_iter();
        Ok((p.next(), p.next(), p.next()))
    }
}

/// The gradients of [`Modulate`] packed flat (see [`per_item`]): dx, then per item dshift = Σₙ g and
/// dscale = Σₙ g·x.
struct ModulateGrad;

impl CustomOp3 for ModulateGrad {
    fn name(&self) -> &'static str {
        "pixforge-modulate-grad"
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
        let (b, n, h) = bnh(l1)?;
        on_float!(s1, l1, self.name(), Shape::from(b * (n + 2) * h), |x: T| {
            let scale = contiguous::<T>(s2, l2, self.name())?;
            let g = contiguous::<T>(s3, l3, self.name())?;
            let one = T::from_f64(1.0);
            per_item::<T>(b, n, h, 2, |item, dx, sums| {
                let (x, g) = (&x[item * n * h..(item + 1) * n * h], &g[item * n * h..(item + 1) * n * h]);
                let sc = &scale[item * h..(item + 1) * h];
                let (dshift, dscale) = sums.split_at_mut(h);
                for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    for j in 0..h {
                        dx[j] = g[j] * (one + sc[j]);
                        dshift[j] += g[j];
                        dscale[j] += g[j] * x[j];
                    }
                }
            })
        })
    }
}

/// Fills a flat buffer of `B·N·H` elements followed by `B·extra·H` item by item (in parallel over the
/// batch): `f(item, its N×H block, its extra×H block)`. The parts come out as contiguous slices, so
/// candle accumulates them on its fast path.
fn per_item<T: Real>(
    b: usize,
    n: usize,
    h: usize,
    extra: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Send + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::zero(); b * (n + extra) * h];
    let (main, rest) = out.split_at_mut(b * n * h);
    main.par_chunks_mut(n * h).zip(rest.par_chunks_mut(extra * h)).enumerate().for_each(|(i, (m, e))| f(i, m, e));
    out
}

/// Splits a flat `[B·N·H + B·k·H]` gradient pack into `[B, N, H]` and `k` tensors of `[B, 1, H]`.
fn unpack(packed: &Tensor, b: usize, n: usize, h: usize, k: usize) -> Result<Vec<Tensor>> {
    let mut parts = vec![packed.narrow(0, 0, b * n * h)?.reshape((b, n, h))?];
    let extra = packed.narrow(0, b * n * h, b * k * h)?.reshape((b, k, h))?;
    for j in 0..k {
        parts.push(extra.narrow(1, j, 1)?.contiguous()?);
    }
    Ok(parts)
}

/// `x + y·gate` for `x`, `y` `[B, N, H]` and `gate` `[B, 1, H]` (the gated residual of adaLN-single).
pub struct GatedAdd;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "pixforge-gated-add"
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
        let (_, n, h) = bnh(l1)?;
        on_float!(s1, l1, self.name(), l1.shape().clone(), |x: T| {
            let y = contiguous::<T>(s2, l2, self.name())?;
            let gate = contiguous::<T>(s3, l3, self.name())?;
            per_row::<T>(&[x, y], x.len(), h, |r, i, out| {
                let gt = &gate[(r / n) * h..(r / n + 1) * h];
                for (((o, &x), &y), &gt) in out.iter_mut().zip(i[0]).zip(i[1]).zip(gt) {
                    *o = x + y * gt;
                }
            })
        })
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, h) = y.dims3()?;
        let packed = y.apply_op3_no_bwd(gate, &grad.contiguous()?, &GatedAddGrad)?;
        let mut p = unpack(&packed, b, n, h, 1)?.into_iter();
        Ok((Some(grad.clone()), p.next(), p.next()))
    }
}

/// The gradients of [`GatedAdd`] for y and gate packed flat (see [`per_item`]): g·gate, then per
/// item Σₙ g·y.
struct GatedAddGrad;

impl CustomOp3 for GatedAddGrad {
    fn name(&self) -> &'static str {
        "pixforge-gated-add-grad"
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
        let (b, n, h) = bnh(l1)?;
        on_float!(s1, l1, self.name(), Shape::from(b * (n + 1) * h), |y: T| {
            let gate = contiguous::<T>(s2, l2, self.name())?;
            let g = contiguous::<T>(s3, l3, self.name())?;
            per_item::<T>(b, n, h, 1, |item, dy, dgate| {
                let (y, g) = (&y[item * n * h..(item + 1) * n * h], &g[item * n * h..(item + 1) * n * h]);
                let gt = &gate[item * h..(item + 1) * h];
                for ((dy, y), g) in dy.chunks_mut(h).zip(y.chunks(h)).zip(g.chunks(h)) {
                    for j in 0..h {
                        dy[j] = g[j] * gt[j];
                        dgate[j] += g[j] * y[j];
                    }
                }
            })
        })
    }
}
