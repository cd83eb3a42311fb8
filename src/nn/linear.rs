//! `x Wᵀ + b` as one op: the bias is written first and the product accumulated onto it by one `gemm`
//! call, and the backward computes only the gradients that are needed (none for an input that tracks
//! no gradient, such as the T5 captions), where `matmul` + `broadcast_add` cost a bias pass forward,
//! four passes over the output backward and a full product for the input gradient.

use super::kernels::{contiguous, on_float};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// The fused linear op over `x` `[R, K]`, `w` `[M, K]`, `b` `[M]`.
pub struct Linear;

/// `dst[R, M] = b + x · wᵀ` with `gemm`.
fn forward<T: candle_core::WithDType + 'static>(x: &[T], w: &[T], b: &[T], r: usize, k: usize, m: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(r * m);
    for _ in 0..r {
        out.extend_from_slice(b);
    }
    let threads = if r * m * k >= 1 << 18 { rayon::current_num_threads() } else { 1 };
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the pointers cover r×m, r×k and m×k elements with the strides given (row-major
    // dst and x; w read as its transpose: element (kk, mm) at mm·k + kk).
    unsafe {
        gemm::gemm(
            r,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
    out
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "pixforge-linear"
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
        let (r, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 || l3.shape().elem_count() != m {
            candle_core::bail!("{}: x {:?}, w {:?}, b {:?} do not fit", self.name(), l1.dims(), l2.dims(), l3.dims());
        }
        on_float!(s1, l1, self.name(), Shape::from((r, m)), |x: T| {
            forward(x, contiguous::<T>(s2, l2, "w")?, contiguous::<T>(s3, l3, "b")?, r, k, m)
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(grad.matmul(w)?) } else { None };
        let dw = if w.track_op() { Some(grad.t()?.matmul(x)?) } else { None };
        let db = if b.track_op() { Some(grad.sum(0)?) } else { None };
        Ok((dx, dw, db))
    }
}
