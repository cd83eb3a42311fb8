//! CPU kernels and gradient-safe tensor ops shared by the frozen encoders and the trainer: linear
//! layers, layer norm without affine parameters, (scaled, key-masked) softmax, tanh-GELU and T5's
//! gated GELU, adaLN modulation `x·(1 + scale) + shift`, the gated residual `x + y·gate`, and the
//! convolutions (`conv`). Each fused op is one pass over the data forward and one backward, where
//! candle ops composed take five to ten (and candle_nn's fused versions record no gradient). Rows run
//! in parallel on rayon, like candle's matmul.
//!
//! On other devices, and for dtypes other than f32/f64, the same math runs as composite candle ops.

pub mod conv;
mod fused;
pub(crate) mod kernels;
mod linear;

use candle_core::{DType, Result, Tensor, D};

/// Whether `x` runs on the fused CPU kernels (CPU, f32 or f64).
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether `x` is in a 16-bit float type, which mixed precision computes norms and attention above.
pub(crate) fn half(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::F16 | DType::BF16)
}

/// `x Wᵀ + b` for `x` of any rank (one matrix product over all leading dimensions).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("a tensor of rank >= 1") = w.dim(0)?;
    let x2 = x.reshape((rows, k))?;
    let y = if fused(x) && w.dtype() == x.dtype() && b.dtype() == x.dtype() {
        x2.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, linear::Linear)?
    } else {
        x2.matmul(&w.t()?)?.broadcast_add(b)?
    };
    y.reshape(out_dims)
}

/// Layer norm over the last dimension without affine parameters.
/// In f16/bf16 it is computed in f32 (mixed precision) and returned in the input's type.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if half(x) {
        return layer_norm(&x.to_dtype(DType::F32)?, eps)?.to_dtype(x.dtype());
    }
    if fused(x) {
        return x.contiguous()?.apply_op1(fused::LayerNorm(eps));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// `softmax(scale·scores + bias)` over the last dimension, for attention scores `[B, …, L]` and an
/// optional additive key bias `[B, L]` (no gradient flows into the bias).
pub fn attention_softmax(scores: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    if fused(scores) {
        let op = fused::Softmax { scale };
        return match bias {
            Some(b) => scores.contiguous()?.apply_op2(&b.to_dtype(scores.dtype())?.contiguous()?.detach(), op),
            None => scores.contiguous()?.apply_op1(op),
        };
    }
    let mut x = scores.affine(scale, 0.0)?;
    if let Some(b) = bias {
        let (bsz, l) = b.dims2()?;
        let mut shape = vec![bsz];
        shape.extend(std::iter::repeat_n(1, scores.rank() - 2));
        shape.push(l);
        x = x.broadcast_add(&b.to_dtype(x.dtype())?.reshape(shape)?)?;
    }
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The tanh approximation of GELU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(fused::Gelu);
    }
    x.gelu()
}

/// The gated tanh GELU of T5 v1.1's feed-forward, for inference: `h` `[R, 2F]` holds the two
/// projections side by side; the result `[R, F]` is `gelu(h[:, :F]) · h[:, F:]`. No gradient.
pub fn gated_gelu(h: &Tensor) -> Result<Tensor> {
    let f = h.dim(candle_core::D::Minus1)? / 2;
    if fused(h) && h.rank() == 2 {
        return h.contiguous()?.apply_op1_no_bwd(&fused::GatedGelu);
    }
    h.narrow(candle_core::D::Minus1, 0, f)?.gelu()? * h.narrow(candle_core::D::Minus1, f, f)?
}

/// adaLN modulation `x·(1 + scale) + shift` for `x` `[B, N, H]` and `shift`, `scale` `[B, 1, H]`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, fused::Modulate);
    }
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// The gated residual `x + y·gate` for `x`, `y` `[B, N, H]` and `gate` `[B, 1, H]`.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op3(&y.contiguous()?, &gate.contiguous()?, fused::GatedAdd);
    }
    x + y.broadcast_mul(gate)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gated_gelu_matches_gelu_times_gate() {
        let mut rng = crate::rng::Rng::new(9);
        let h = rng.normal_tensor(&[37, 2 * 300], 2.0, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let want = (h.narrow(1, 0, 300).unwrap().gelu().unwrap() * h.narrow(1, 300, 300).unwrap()).unwrap();
        let got = gated_gelu(&h).unwrap();
        let d: f64 = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(d < 1e-12, "{d}");
    }
}
