//! The CPU training path's fused ops for the PixArt transformer: a whole transformer block as one op
//! with a hand-written backward (`block`), multi-head attention (`attention`), the caption projection
//! by hand (`caption`), and the step's activation buffers recycled between steps (`pool`). They build
//! on the shared kernels of [`crate::nn`]; `train::tape` drives them.

mod attention;
mod block;
mod caption;
pub(crate) mod pool;

use crate::nn::{attention_softmax, fused, half};
use candle_core::{DType, Result, Tensor};

/// Multi-head attention `softmax(Q Kᵀ/√D + bias) V` of `q` `[B, N, heads·D]` over `k`, `v`
/// `[B, L, heads·D]`, with an optional additive key bias `[B, L]`; returns `[B, N, heads·D]`. In
/// f16/bf16 it is computed in f32 (mixed precision: scores, softmax and the weighted sum) and
/// returned in the inputs' type.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    if half(q) {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return attention(&f(q)?, &f(k)?, &f(v)?, heads, bias)?.to_dtype(q.dtype());
    }
    let (b, n, c) = q.dims3()?;
    let l = k.dim(1)?;
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    if fused(q) {
        let bias = match bias {
            Some(t) => Some(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?),
            None => None,
        };
        let op = attention::Attention { heads, scale, bias };
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let split = |t: &Tensor, len: usize| t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous();
    let (qh, kh, vh) = (split(q, n)?, split(k, l)?, split(v, l)?);
    let probs = attention_softmax(&qh.matmul(&kh.t()?)?, scale, bias)?;
    probs.matmul(&vh)?.transpose(1, 2)?.reshape((b, n, c))
}

/// Whether [`pixart_block`] runs as the fused op for `x` (CPU, f32 or f64).
pub fn fused_block(x: &Tensor) -> bool {
    fused(x)
}

pub use block::{
    backward_taped as block_backward, forward_taped as block_forward, linear_weight_grads, Tape as BlockTape,
};
pub use caption::{caption_backward, caption_forward, CaptionWeights};

/// The names of a PixArt block's weights (under `transformer_blocks.{i}.`) in the order
/// [`pixart_block`] takes them packed.
pub const BLOCK_PARAMS: [&str; 21] = block::PARAMS;

/// One PixArt-α transformer block as a single fused op (CPU, f32/f64; see [`fused_block`]): `x`
/// `[B, N, C]`; `ctx` = the projected caption `[B, L, C]` and the adaLN input `t0` `[B, 6C]`,
/// flattened and joined; `params` = the block's weights flattened and joined in the order of
/// [`BLOCK_PARAMS`]; `key_bias` the additive caption mask `[B·L]` (0 or -10000). Gradients flow to all
/// three tensors.
pub fn pixart_block(
    x: &Tensor,
    ctx: &Tensor,
    params: &Tensor,
    (heads, eps, l, ff): (usize, f64, usize, usize),
    key_bias: Vec<f64>,
) -> Result<Tensor> {
    let save = x.track_op() || ctx.track_op() || params.track_op();
    let op = block::Block::new(heads, eps, l, ff, key_bias, save);
    x.contiguous()?.apply_op3(&ctx.contiguous()?, &params.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{gated_add, gelu, layer_norm, linear, modulate};
    use candle_core::{Device, Var, D};

    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        d / s.max(1e-30)
    }

    /// Each fused kernel against the same math in candle ops, forward and backward (every input's
    /// gradient), in f64.
    #[test]
    fn fused_kernels_match_composite_ops_and_their_gradients() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(5);
        let mut var = |shape: &[usize]| {
            Var::from_tensor(&rng.normal_tensor(shape, 2.0, &dev).unwrap().to_dtype(DType::F64).unwrap()).unwrap()
        };
        let (x, shift, scale, y) = (var(&[3, 70, 130]), var(&[3, 1, 130]), var(&[3, 1, 130]), var(&[3, 70, 130]));
        let bias = Tensor::from_vec(
            (0..3 * 130).map(|i| if i % 7 == 0 { -10000.0 } else { 0.0 }).collect::<Vec<f64>>(),
            (3, 130),
            &dev,
        )
        .unwrap();
        let (lw, lb) = (var(&[50, 130]), var(&[50]));
        let (k40, v40) = (var(&[3, 40, 130]), var(&[3, 40, 130]));
        let bias40 = bias.narrow(1, 0, 40).unwrap();
        let composite_attention = |q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>| {
            let split = |t: &Tensor| t.reshape((3, t.dim(1)?, 10, 13))?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (split(q)?, split(k)?, split(v)?);
            let mut s = q.matmul(&k.t()?)?.affine(1.0 / 13f64.sqrt(), 0.0)?;
            if let Some(b) = bias {
                s = s.broadcast_add(&b.reshape((3, 1, 1, ()))?)?;
            }
            let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            p.matmul(&v)?.transpose(1, 2)?.reshape((3, 70, 130))
        };
        let w = var(&[3, 70, 130]).as_tensor().detach();
        let w50 = var(&[3, 70, 50]).as_tensor().detach();
        let vars = [&x, &shift, &scale, &y, &lw, &lb, &k40, &v40];
        type Op<'a> = Box<dyn Fn() -> Result<Tensor> + 'a>;
        // candle's own GELU backward uses 6-digit constants: 1e-5 there.
        let cases: Vec<(&str, Op, Op, f64)> = vec![
            (
                "layer_norm",
                Box::new(|| layer_norm(&x, 1e-6)),
                Box::new(|| {
                    let mean = x.mean_keepdim(D::Minus1)?;
                    let c = x.broadcast_sub(&mean)?;
                    c.broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)
                }),
                1e-10,
            ),
            (
                "softmax",
                Box::new(|| attention_softmax(&x, 0.3, Some(&bias))),
                Box::new(|| {
                    let s = x.affine(0.3, 0.0)?.broadcast_add(&bias.unsqueeze(1)?)?;
                    let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
                    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
                }),
                1e-10,
            ),
            ("gelu", Box::new(|| gelu(&x)), Box::new(|| x.gelu()), 1e-5),
            (
                "modulate",
                Box::new(|| modulate(&x, &shift, &scale)),
                Box::new(|| x.broadcast_mul(&(scale.as_tensor() + 1.0)?)?.broadcast_add(&shift)),
                1e-10,
            ),
            (
                "gated_add",
                Box::new(|| gated_add(&x, &y, &scale)),
                Box::new(|| x.as_tensor() + y.broadcast_mul(&scale)?),
                1e-10,
            ),
            (
                "self-attention",
                Box::new(|| attention(&x, &x, &y, 10, None)),
                Box::new(|| composite_attention(&x, &x, &y, None)),
                1e-10,
            ),
            (
                "masked cross-attention",
                Box::new(|| attention(&x, &k40, &v40, 10, Some(&bias40))),
                Box::new(|| composite_attention(&x, &k40, &v40, Some(&bias40))),
                1e-10,
            ),
            (
                "linear",
                Box::new(|| linear(&x, &lw, &lb)),
                Box::new(|| x.broadcast_matmul(&lw.t()?)?.broadcast_add(&lb)),
                1e-10,
            ),
            (
                "linear, input not tracked",
                Box::new(|| linear(&x.as_tensor().detach(), &lw, &lb)),
                Box::new(|| x.as_tensor().detach().broadcast_matmul(&lw.t()?)?.broadcast_add(&lb)),
                1e-10,
            ),
        ];
        for (name, fast, slow, grad_tol) in cases {
            let (a, b) = (fast().unwrap(), slow().unwrap());
            assert!(rel_diff(&a, &b) < 1e-12, "{name}: forward differs by {}", rel_diff(&a, &b));
            let w = if a.dims() == w.dims() { &w } else { &w50 };
            let ga = a.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = b.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in vars {
                match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
                    (Some(p), Some(q)) => {
                        assert!(rel_diff(p, q) < grad_tol, "{name}: gradient differs by {}", rel_diff(p, q))
                    }
                    (None, None) => {}
                    (p, q) => panic!("{name}: gradient present in one only ({} vs {})", p.is_some(), q.is_some()),
                }
            }
        }
    }

    /// The f32 kernels (fast exp) stay within f32 rounding of the f64 ones.
    #[test]
    fn f32_kernels_agree_with_f64() {
        let dev = Device::Cpu;
        let x = crate::rng::Rng::new(9).normal_tensor(&[4, 64, 300], 3.0, &dev).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let f = |t: &Tensor| -> Vec<Tensor> { vec![gelu(t).unwrap(), attention_softmax(t, 0.125, None).unwrap()] };
        for (a, b) in f(&x).iter().zip(f(&x64)) {
            assert!(rel_diff(&a.to_dtype(DType::F64).unwrap(), &b) < 1e-6);
        }
    }
}
