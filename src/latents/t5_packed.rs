//! The T5 encoder run over many captions at once with no padding ("packed"): every caption's tokens
//! are stacked into one `[Σ L, d_model]` matrix, so the projections and the feed-forward — nearly all
//! of the work — are single large matrix products over real tokens only, while attention runs per
//! caption. PixArt-α pads every caption to 120 tokens and masks; candle-transformers' T5 takes no
//! mask, so it can only batch captions of equal length. The result per caption equals the valid rows
//! of transformers' padded, masked `T5EncoderModel` output (tested against it and against candle's T5).
//!
//! Same weights and key names as transformers' `T5EncoderModel` (`shared.weight`,
//! `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}`, `relative_attention_bias` in block 0,
//! `layer.1.DenseReluDense.{wi_0,wi_1,wo}` or `wi` for v1.0, `layer_norm`s, `encoder.final_layer_norm`),
//! any device.

use candle_core::{Device, Module, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::t5::Config;

struct Layer {
    norm_attn: Tensor,
    /// `[3 · inner, d_model]`: q, k and v stacked.
    qkv: Tensor,
    o: Tensor,
    norm_ff: Tensor,
    /// `[2 · d_ff, d_model]` (gated: wi_0 then wi_1) or `[d_ff, d_model]`.
    wi: Tensor,
    wo: Tensor,
}

/// A T5 encoder that encodes a list of token sequences packed together.
pub struct PackedT5 {
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    /// `[buckets, heads]`.
    relative_bias: Tensor,
    cfg: Config,
}

impl PackedT5 {
    /// Builds the encoder from transformers' key names under `vb` (f32 compute).
    pub fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
        // `shared.weight`, or `encoder.embed_tokens.weight` alone; a refusal names the first.
        let embed = if vb.contains_tensor("shared.weight") || !vb.contains_tensor("encoder.embed_tokens.weight") {
            vb.get((cfg.vocab_size, d), "shared.weight")?
        } else {
            vb.get((cfg.vocab_size, d), "encoder.embed_tokens.weight")?
        };
        let enc = vb.pp("encoder");
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = enc.pp("block").pp(i);
            let att = b.pp("layer.0.SelfAttention");
            let qkv = Tensor::cat(
                &[att.get((inner, d), "q.weight")?, att.get((inner, d), "k.weight")?, att.get((inner, d), "v.weight")?],
                0,
            )?;
            let dense = b.pp("layer.1.DenseReluDense");
            let wi = if cfg.feed_forward_proj.gated {
                Tensor::cat(&[dense.get((ff, d), "wi_0.weight")?, dense.get((ff, d), "wi_1.weight")?], 0)?
            } else {
                dense.get((ff, d), "wi.weight")?
            };
            layers.push(Layer {
                norm_attn: b.get(d, "layer.0.layer_norm.weight")?,
                qkv,
                o: att.get((d, inner), "o.weight")?,
                norm_ff: b.get(d, "layer.1.layer_norm.weight")?,
                wi,
                wo: dense.get((d, ff), "wo.weight")?,
            });
        }
        let relative_bias = enc.get(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        Ok(Self { embed, layers, final_norm: enc.get(d, "final_layer_norm.weight")?, relative_bias, cfg: cfg.clone() })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// The encoder output `[L_i, d_model]` of each token sequence (none may be empty).
    pub fn encode(&self, sequences: &[Vec<u32>]) -> candle_core::Result<Vec<Tensor>> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let dev = self.device();
        let lens: Vec<usize> = sequences.iter().map(Vec::len).collect();
        if lens.contains(&0) {
            candle_core::bail!("T5: an empty token sequence (every caption has at least </s>)");
        }
        let flat: Vec<u32> = sequences.iter().flatten().copied().collect();
        let max_len = *lens.iter().max().unwrap_or(&1);
        let bias = self.position_bias(max_len)?;
        let mut x = self.embed.embedding(&Tensor::new(flat.as_slice(), dev)?)?;
        let (h, dkv) = (self.cfg.num_heads, self.cfg.d_kv);
        let inner = h * dkv;
        for layer in &self.layers {
            let qkv = self.rms_norm(&x, &layer.norm_attn)?.matmul(&layer.qkv.t()?)?;
            let mut ctx = Vec::with_capacity(lens.len());
            let mut start = 0;
            for &len in &lens {
                let part = |i: usize| -> candle_core::Result<Tensor> {
                    qkv.narrow(0, start, len)?
                        .narrow(1, i * inner, inner)?
                        .reshape((len, h, dkv))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let (q, k, v) = (part(0)?, part(1)?, part(2)?);
                let scores = q.matmul(&k.t()?)?.broadcast_add(&bias.narrow(1, 0, len)?.narrow(2, 0, len)?)?;
                let p = candle_nn::ops::softmax_last_dim(&scores)?;
                ctx.push(p.matmul(&v)?.transpose(0, 1)?.reshape((len, inner))?);
                start += len;
            }
            x = (x + Tensor::cat(&ctx, 0)?.matmul(&layer.o.t()?)?)?;
            let hidden = self.rms_norm(&x, &layer.norm_ff)?.matmul(&layer.wi.t()?)?;
            let act = &self.cfg.feed_forward_proj;
            let hidden = if act.gated && matches!(act.activation, Activation::NewGelu | Activation::GeluPytorchTanh) {
                crate::nn::gated_gelu(&hidden)?
            } else if act.gated {
                let ff = self.cfg.d_ff;
                (activate(act.activation, &hidden.narrow(1, 0, ff)?)? * hidden.narrow(1, ff, ff)?)?
            } else {
                activate(act.activation, &hidden)?
            };
            x = (x + hidden.matmul(&layer.wo.t()?)?)?;
        }
        let x = self.rms_norm(&x, &self.final_norm)?;
        let mut out = Vec::with_capacity(lens.len());
        let mut start = 0;
        for len in lens {
            out.push(x.narrow(0, start, len)?);
            start += len;
        }
        Ok(out)
    }

    /// T5's layer norm: `w · x / sqrt(mean(x²) + eps)`, no centring, no bias.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, w, self.cfg.layer_norm_epsilon as f32)
    }

    /// The relative position bias `[heads, n, n]` shared by every layer (bidirectional buckets).
    fn position_bias(&self, n: usize) -> candle_core::Result<Tensor> {
        let buckets: Vec<u32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| {
                relative_bucket(
                    j as i64 - i as i64,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                )
            })
            .collect();
        let idx = Tensor::new(buckets.as_slice(), self.device())?;
        self.relative_bias.embedding(&idx)?.reshape((n, n, self.cfg.num_heads))?.permute((2, 0, 1))?.contiguous()
    }
}

/// The feed-forward activation; the tanh GELU of T5 v1.1 (`gelu_new`) runs as pixforge's vectorised
/// kernel on CPU.
fn activate(a: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match a {
        Activation::NewGelu | Activation::GeluPytorchTanh => crate::nn::gelu(x),
        _ => a.forward(x),
    }
}

/// transformers' `_relative_position_bucket` (bidirectional) for `key − query` = `relative`, in f32
/// as PyTorch computes it.
fn relative_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let base = if relative > 0 { half } else { 0 };
    let distance = relative.abs();
    let max_exact = half / 2;
    if distance < max_exact {
        return (base + distance) as u32;
    }
    let large = ((distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
        * (half - max_exact) as f32) as i64;
    (base + (max_exact + large).min(half - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_transformers() {
        // Values from transformers' T5Attention._relative_position_bucket(32 buckets, max 128).
        let want = [(0, 0), (1, 17), (-1, 1), (7, 23), (8, 24), (-12, 9), (16, 26), (-64, 14), (127, 31), (-500, 15)];
        for (rel, bucket) in want {
            assert_eq!(relative_bucket(rel, 32, 128), bucket, "relative position {rel}");
        }
    }
}
