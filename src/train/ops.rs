//! Differentiable fused kernels for the transformer's hot paths on CPU: layer norm without affine
//! parameters and softmax over the last dimension, each one pass per row in the forward and one in the
//! backward (candle_nn's fused versions record no gradient; composing them from candle ops costs five
//! to ten passes over the data each way). Rows run in parallel on rayon, like candle's matmul.
//!
//! On other devices, and for dtypes other than f32/f64, the same math runs as composite candle ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Rows smaller than this many elements in all are normalised on one thread.
const PARALLEL_MIN: usize = 1 << 15;

/// The float types the kernels run in.
trait Real:
    WithDType
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::MulAssign
    + std::ops::Add<Output = Self>
    + Send
    + Sync
{
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
}

/// The contiguous slice of `storage` under `layout`, or an error naming `op`.
fn rows<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: expected a contiguous tensor")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Runs `f(row_in, row_out)` over rows of `n`, in parallel when the tensor is large.
fn per_row<T: Real>(input: &[T], n: usize, f: impl Fn(&[T], &mut [T]) + Send + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); input.len()];
    if input.len() >= PARALLEL_MIN {
        let rows_per_task = (PARALLEL_MIN / n.max(1)).max(1);
        out.par_chunks_mut(n * rows_per_task)
            .zip(input.par_chunks(n * rows_per_task))
            .for_each(|(o, i)| o.chunks_mut(n).zip(i.chunks(n)).for_each(|(o, i)| f(i, o)));
    } else {
        out.chunks_mut(n).zip(input.chunks(n)).for_each(|(o, i)| f(i, o));
    }
    out
}

/// Like [`per_row`] with a second input of the same shape.
fn per_row2<T: Real>(a: &[T], b: &[T], n: usize, f: impl Fn(&[T], &[T], &mut [T]) + Send + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    let chunk = n * (PARALLEL_MIN / n.max(1)).max(1);
    let run = |(o, (a, b)): (&mut [T], (&[T], &[T]))| {
        o.chunks_mut(n).zip(a.chunks(n).zip(b.chunks(n))).for_each(|(o, (a, b))| f(a, b, o))
    };
    if a.len() >= PARALLEL_MIN {
        out.par_chunks_mut(chunk).zip(a.par_chunks(chunk).zip(b.par_chunks(chunk))).for_each(run);
    } else {
        run((&mut out, (a, b)));
    }
    out
}

/// Mean and 1/√(var + eps) of a row, accumulated in f64.
fn moments<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn layer_norm_row<T: Real>(x: &[T], y: &mut [T], eps: f64) {
    let (mean, rstd) = moments(x, eps);
    let (mean, rstd) = (T::from_f64(mean), T::from_f64(rstd));
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - mean) * rstd;
    }
}

/// dx = rstd·(g − mean(g) − y·mean(g·y)) with y the normalised row.
fn layer_norm_grad_row<T: Real>(x: &[T], g: &[T], dx: &mut [T], eps: f64) {
    let (mean, rstd) = moments(x, eps);
    let n = x.len() as f64;
    let (mut sum_g, mut sum_gy) = (0.0, 0.0);
    for (&x, &g) in x.iter().zip(g) {
        let y = (x.to_f64() - mean) * rstd;
        sum_g += g.to_f64();
        sum_gy += g.to_f64() * y;
    }
    let (mg, mgy) = (sum_g / n, sum_gy / n);
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        let y = (x.to_f64() - mean) * rstd;
        *dx = T::from_f64(rstd * (g.to_f64() - mg - y * mgy));
    }
}

fn softmax_row<T: Real>(x: &[T], y: &mut [T]) {
    let max = x.iter().fold(T::from_f64(f64::NEG_INFINITY), |m, &v| if v > m { v } else { m });
    let mut sum = 0.0;
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - max).exp();
        sum += y.to_f64();
    }
    let inv = T::from_f64(1.0 / sum);
    for y in y.iter_mut() {
        *y *= inv;
    }
}

/// dx = y·(g − Σ g·y).
fn softmax_grad_row<T: Real>(y: &[T], g: &[T], dx: &mut [T]) {
    let dot = T::from_f64(y.iter().zip(g).map(|(&y, &g)| (y * g).to_f64()).sum::<f64>());
    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
        *dx = y * (g - dot);
    }
}

/// Dispatches a row kernel on the storage's dtype (f32 or f64).
macro_rules! on_float {
    ($storage:expr, $layout:expr, $name:expr, |$x:ident: $t:ident| $body:expr) => {
        match $storage.dtype() {
            DType::F32 => {
                type $t = f32;
                let $x = rows::<f32>($storage, $layout, $name)?;
                Ok((CpuStorage::F32($body), $layout.shape().clone()))
            }
            DType::F64 => {
                type $t = f64;
                let $x = rows::<f64>($storage, $layout, $name)?;
                Ok((CpuStorage::F64($body), $layout.shape().clone()))
            }
            other => candle_core::bail!("{}: expected f32 or f64, found {other:?}", $name),
        }
    };
}

struct LayerNorm(f64);

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "pixforge-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1);
        on_float!(s, l, self.name(), |x: T| per_row::<T>(x, n, |x, y| layer_norm_row(x, y, self.0)))
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
        let n = l1.dims().last().copied().unwrap_or(1);
        on_float!(s1, l1, self.name(), |x: T| {
            let g = rows::<T>(s2, l2, self.name())?;
            per_row2::<T>(x, g, n, |x, g, dx| layer_norm_grad_row(x, g, dx, self.0))
        })
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "pixforge-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1);
        on_float!(s, l, self.name(), |x: T| per_row::<T>(x, n, softmax_row))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "pixforge-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims().last().copied().unwrap_or(1);
        on_float!(s1, l1, self.name(), |y: T| {
            let g = rows::<T>(s2, l2, self.name())?;
            per_row2::<T>(y, g, n, softmax_grad_row)
        })
    }
}

/// √(2/π), the tanh-GELU constant.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;

fn gelu_row<T: Real>(x: &[T], y: &mut [T]) {
    let (c, a, half, one) = (T::from_f64(GELU_C), T::from_f64(GELU_A), T::from_f64(0.5), T::from_f64(1.0));
    for (y, &x) in y.iter_mut().zip(x) {
        *y = half * x * (one + (c * (x + a * x * x * x)).tanh());
    }
}

/// d/dx of tanh-GELU: ½(1 + tanh u) + ½x(1 − tanh²u)·c(1 + 3a·x²), u = c(x + a·x³).
fn gelu_grad_row<T: Real>(x: &[T], g: &[T], dx: &mut [T]) {
    let (c, a, half, one) = (T::from_f64(GELU_C), T::from_f64(GELU_A), T::from_f64(0.5), T::from_f64(1.0));
    let a3 = T::from_f64(3.0 * GELU_A);
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        let t = (c * (x + a * x * x * x)).tanh();
        let d = half * (one + t) + half * x * (one - t * t) * c * (one + a3 * x * x);
        *dx = g * d;
    }
}

/// Elementwise kernels run over fixed-size chunks.
const ELEMENTWISE_CHUNK: usize = 4096;

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "pixforge-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        on_float!(s, l, self.name(), |x: T| per_row::<T>(x, ELEMENTWISE_CHUNK.min(x.len()).max(1), gelu_row))
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
        on_float!(s1, l1, self.name(), |x: T| {
            let g = rows::<T>(s2, l2, self.name())?;
            per_row2::<T>(x, g, ELEMENTWISE_CHUNK.min(x.len()).max(1), gelu_grad_row)
        })
    }
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Layer norm over the last dimension without affine parameters, differentiable.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(LayerNorm(eps));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// The tanh approximation of GELU, differentiable (candle's own backward takes ten passes).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Gelu);
    }
    x.gelu()
}

/// Softmax over the last dimension, differentiable.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused kernels against the composite ops, forward and backward, in f64.
    #[test]
    fn fused_kernels_match_composite_ops_and_their_gradients() {
        let dev = Device::Cpu;
        let mut rng = crate::train::init::Rng::new(5);
        let x = Var::from_tensor(&rng.normal_tensor(&[3, 70, 130], 2.0, &dev).unwrap().to_dtype(DType::F64).unwrap())
            .unwrap();
        let w = rng.normal_tensor(&[3, 70, 130], 1.0, &dev).unwrap().to_dtype(DType::F64).unwrap();
        let composite_ln = |x: &Tensor| {
            let mean = x.mean_keepdim(D::Minus1)?;
            let c = x.broadcast_sub(&mean)?;
            c.broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)
        };
        let composite_sm = |x: &Tensor| {
            let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
        };
        type Op<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;
        // candle's own GELU backward uses 6-digit constants: 1e-5 there.
        let cases: [(Op, Op, f64); 3] = [
            (&|x| layer_norm(x, 1e-6), &composite_ln, 1e-10),
            (&|x| softmax(x), &composite_sm, 1e-10),
            (&gelu, &|x| x.gelu(), 1e-5),
        ];
        for (fast, slow, grad_tol) in cases {
            let (a, b) = (fast(x.as_tensor()).unwrap(), slow(x.as_tensor()).unwrap());
            let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(diff < 1e-12, "forward differs by {diff}");
            let ga = a.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = b.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            let diff = (ga - gb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(diff < grad_tol, "gradient differs by {diff}");
        }
    }
}
