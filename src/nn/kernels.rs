//! The row kernels behind the fused ops, generic over f32 (training on CPU) and f64 (gradient checks),
//! with rayon parallelism over rows. f32 uses a branch-free polynomial `exp` that the compiler
//! vectorises (libm's scalar `expf`/`tanhf` were an eighth of a training step).

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;

/// Work smaller than this many elements runs on one thread.
pub const PARALLEL_MIN: usize = 1 << 15;

/// The float types the kernels run in.
pub trait Real:
    WithDType
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::MulAssign
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Div<Output = Self>
    + Send
    + Sync
{
    /// e^x (f32: within 2 ulp down to e^-87, 0 below: never subnormal).
    fn exp(self) -> Self;
    /// tanh, from [`Real::exp`].
    #[inline(always)]
    fn tanh(self) -> Self {
        let one = Self::from_f64(1.0);
        one - Self::from_f64(2.0) / ((self + self).exp() + one)
    }
}

impl Real for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
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

/// Cephes-style `expf`: 2^n · p(r) with n = round(x·log2 e), r = x − n·ln 2 (two-part), p of degree 6.
/// Branch-free so loops over it vectorise.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to nearest
                                     // Below e^-87 (the smallest normal float) the result is 0: a subnormal result (the softmax of a
                                     // masked key) would make every later product that reads it take the CPU's slow microcode path.
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n from n's bits in `shifted` (its last mantissa bits hold n): integer ops only, which
    // vectorise, where a saturating `n as i32` is converted one lane at a time.
    let e = p * f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if underflow {
        0.0
    } else {
        e
    }
}

/// The contiguous slice of `storage` under `layout`, or an error naming `op`.
pub fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: expected a contiguous tensor")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Runs `f(row_index, inputs, row_out)` over the rows of `n` elements of `out`, where `inputs` are the
/// matching rows of each of `ins`; in parallel when the work is large.
pub fn per_row<T: Real>(
    ins: &[&[T]],
    len: usize,
    n: usize,
    f: impl Fn(usize, &[&[T]], &mut [T]) + Send + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    let n = n.max(1);
    let rows_per_task = (PARALLEL_MIN / n).max(1);
    let task = |(t, chunk): (usize, &mut [T])| {
        let mut row_ins: Vec<&[T]> = Vec::with_capacity(ins.len());
        for (j, o) in chunk.chunks_mut(n).enumerate() {
            let r = t * rows_per_task + j;
            row_ins.clear();
            row_ins.extend(ins.iter().map(|i| &i[r * n..r * n + o.len()]));
            f(r, &row_ins, o);
        }
    };
    if len >= PARALLEL_MIN {
        out.par_chunks_mut(n * rows_per_task).enumerate().for_each(task);
    } else {
        out.chunks_mut(n * rows_per_task).enumerate().for_each(task);
    }
    out
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub struct Shared<T>(pub *mut T);
// SAFETY: users write disjoint parts from different tasks (each use says which).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer `offset` elements in.
    ///
    /// # Safety
    /// `offset` must stay inside the buffer.
    pub unsafe fn at(self, offset: usize) -> *mut T {
        self.0.add(offset)
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, all strided (column stride, row stride), one thread.
///
/// # Safety
/// The pointers must cover the strided extents.
pub unsafe fn mm<T: Real + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    mm_with(gemm::Parallelism::None, (m, n, k), dst, accumulate, lhs, rhs)
}

/// [`mm`] with the given parallelism.
///
/// # Safety
/// As [`mm`].
pub unsafe fn mm_with<T: Real + 'static>(
    par: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.1,
        dst.2,
        accumulate,
        lhs.0,
        lhs.1,
        lhs.2,
        rhs.0,
        rhs.1,
        rhs.2,
        T::one(),
        T::one(),
        false,
        false,
        false,
        par,
    )
}

/// Runs `$body` with `T` the storage's float type and `$x` its contiguous data; wraps the `Vec<T>` it
/// returns into a storage of `$shape`.
macro_rules! on_float {
    ($storage:expr, $layout:expr, $name:expr, $shape:expr, |$x:ident: $t:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            candle_core::DType::F32 => {
                type $t = f32;
                let $x = $crate::nn::kernels::contiguous::<f32>($storage, $layout, $name)?;
                Ok((candle_core::CpuStorage::F32($body), $shape))
            }
            candle_core::DType::F64 => {
                type $t = f64;
                let $x = $crate::nn::kernels::contiguous::<f64>($storage, $layout, $name)?;
                Ok((candle_core::CpuStorage::F64($body), $shape))
            }
            other => candle_core::bail!("{}: expected f32 or f64, found {other:?}", $name),
        }
    };
}
pub(crate) use on_float;

/// Which vector unit [`row_kernel!`] functions run on: 0 baseline, 1 AVX2 + FMA, 2 AVX-512. Read once.
#[cfg(target_arch = "x86_64")]
pub fn vector_level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    let level = LEVEL.load(Ordering::Relaxed);
    if level != u8::MAX {
        return level;
    }
    use std::arch::is_x86_feature_detected as has;
    let level = if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("fma") {
        2
    } else if has!("avx2") && has!("fma") {
        1
    } else {
        0
    };
    LEVEL.store(level, Ordering::Relaxed);
    level
}

/// Defines a row kernel generic over [`Real`] that runs compiled for the widest vector unit this CPU
/// has (AVX-512, else AVX2 + FMA), chosen at run time: the binary targets baseline x86-64, where
/// these loops (exp, tanh, reductions) would use a quarter of the machine's width or none.
macro_rules! row_kernel {
    ($(#[$m:meta])* pub fn $name:ident<T: Real>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub fn $name<T: Real>($($arg: $ty),*) {
            #[inline(always)]
            fn imp<T: Real>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,avx,fma,sse4.1,sse4.2,ssse3")]
                unsafe fn v4<T: Real>($($arg: $ty),*) {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,avx,fma,sse4.1,sse4.2,ssse3")]
                unsafe fn v3<T: Real>($($arg: $ty),*) {
                    imp($($arg),*)
                }
                match vector_level() {
                    // SAFETY: the CPU has every feature these are compiled for (checked at run time).
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}

/// Mean and 1/√(var + eps) of a row (two passes, in lanes).
#[inline(always)]
fn moments<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let n = T::from_f64(x.len() as f64);
    let mean = sum_of(x, x, |a, _| a) / n;
    let var = sum_of(x, x, |a, _| (a - mean) * (a - mean)) / n;
    (mean, T::from_f64(1.0 / (var.to_f64() + eps).sqrt()))
}

row_kernel! {
    /// y = (x − mean)/√(var + eps).
    pub fn layer_norm_row<T: Real>(x: &[T], y: &mut [T], eps: f64) {
        let (mean, rstd) = moments(x, eps);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - mean) * rstd;
        }
    }
}

row_kernel! {
    /// dx = rstd·(g − mean(g) − y·mean(g·y)) with y the normalised row.
    pub fn layer_norm_grad_row<T: Real>(x: &[T], g: &[T], dx: &mut [T], eps: f64) {
        let (mean, rstd) = moments(x, eps);
        let n = T::from_f64(x.len() as f64);
        let mg = sum_of(g, g, |a, _| a) / n;
        let mgy = sum_of(x, g, |x, g| g * ((x - mean) * rstd)) / n;
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            *dx = rstd * (g - mg - (x - mean) * rstd * mgy);
        }
    }
}

/// Lanes of the reductions below: independent accumulators the compiler keeps in one SIMD register.
const LANES: usize = 16;

/// The maximum of a row.
#[inline(always)]
fn max_of<T: Real>(x: &[T]) -> T {
    let mut m = [T::from_f64(f64::NEG_INFINITY); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    tail.iter().chain(m.iter()).fold(T::from_f64(f64::NEG_INFINITY), |a, &v| if v > a { v } else { a })
}

/// Σ f(aᵢ, bᵢ) over two rows, in lanes.
#[inline(always)]
fn sum_of<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut s = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            s[j] += f(x[j], y[j]);
        }
    }
    let mut total = T::zero();
    for (&x, &y) in ta.iter().zip(tb) {
        total += f(x, y);
    }
    s.iter().fold(total, |a, &v| a + v)
}

row_kernel! {
    /// y = softmax(scale·x + bias) over the row (`bias` per element, or none).
    pub fn softmax_row<T: Real>(x: &[T], bias: Option<&[T]>, scale: T, y: &mut [T]) {
        match bias {
            Some(b) => y.iter_mut().zip(x.iter().zip(b)).for_each(|(y, (&x, &b))| *y = x * scale + b),
            None => y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * scale),
        }
        let max = max_of(y);
        for y in y.iter_mut() {
            *y = (*y - max).exp();
        }
        let sum = sum_of(y, y, |a, _| a);
        let inv = T::from_f64(1.0) / sum;
        for y in y.iter_mut() {
            *y *= inv;
        }
    }
}

row_kernel! {
    /// dx = scale·y·(g − Σ g·y).
    pub fn softmax_grad_row<T: Real>(y: &[T], g: &[T], scale: T, dx: &mut [T]) {
        let dot = sum_of(y, g, |a, b| a * b);
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
            *dx = scale * y * (g - dot);
        }
    }
}

/// √(2/π), the tanh-GELU constant.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;

row_kernel! {
    /// y = ½x(1 + tanh(c(x + a·x³))).
    pub fn gelu_row<T: Real>(x: &[T], y: &mut [T]) {
        let (c, a, half, one) = (T::from_f64(GELU_C), T::from_f64(GELU_A), T::from_f64(0.5), T::from_f64(1.0));
        for (y, &x) in y.iter_mut().zip(x) {
            *y = half * x * (one + (c * (x + a * x * x * x)).tanh());
        }
    }
}

row_kernel! {
    /// g ← g·(½(1 + tanh u) + ½x(1 − tanh²u)·c(1 + 3a·x²)), u = c(x + a·x³): the gradient `g` of
    /// GELU's output becomes its input's, in place.
    pub fn gelu_grad_row<T: Real>(x: &[T], g: &mut [T]) {
        let (c, a, half, one) = (T::from_f64(GELU_C), T::from_f64(GELU_A), T::from_f64(0.5), T::from_f64(1.0));
        let a3 = T::from_f64(3.0 * GELU_A);
        for (g, &x) in g.iter_mut().zip(x) {
            let t = (c * (x + a * x * x * x)).tanh();
            *g *= half * (one + t) + half * x * (one - t * t) * c * (one + a3 * x * x);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(super::exp_f32(-87.01), 0.0);
        assert_eq!(super::exp_f32(-1e4), 0.0);
        assert!(super::exp_f32(-87.0).is_normal());
        assert!(super::exp_f32(200.0).is_finite());
    }
}
