//! The PixArt transformer's sub-modules, as candle-transformers builds its models: each built
//! through a `VarBuilder` whose paths mirror the diffusers `PixArtTransformer2DModel` keys
//! (`transformer_blocks.{i}.attn1.to_q.weight`, …), so a missing or mis-shaped tensor is named when
//! the model is built, and each holding its own tensors (no lookup by formatted name in the forward).

use crate::nn::linear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A linear layer `x Wᵀ + b` (`weight` `[out, in]`, `bias` `[out]`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Tensor,
}

impl Linear {
    /// `{vb}.weight` `[out, in]` and `{vb}.bias` `[out]`.
    pub fn new(vb: &VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Self { weight: vb.get((out, inp), "weight")?, bias: vb.get(out, "bias")? })
    }

    /// `x Wᵀ + b` (gradients recorded).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, &self.bias)
    }
}

/// `pos_embed.proj`: the stride-`p` patch convolution (`weight` `[hidden, C, p, p]`).
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    /// `[hidden, C, p, p]`.
    pub weight: Tensor,
    /// `[hidden]`.
    pub bias: Tensor,
}

impl PatchEmbed {
    /// `pos_embed.proj.{weight,bias}`.
    pub fn new(vb: &VarBuilder, hidden: usize, channels: usize, patch: usize) -> Result<Self> {
        let vb = vb.pp("proj");
        Ok(Self { weight: vb.get((hidden, channels, patch, patch), "weight")?, bias: vb.get(hidden, "bias")? })
    }
}

/// A value's sinusoidal features through a 2-layer SiLU MLP (`linear_1`, `linear_2`): the timestep
/// embedder, and PixArtMS's resolution and aspect-ratio embedders.
#[derive(Debug, Clone)]
pub struct TimestepEmbedder {
    /// `[width, 256]`.
    pub linear_1: Linear,
    /// `[width, width]`.
    pub linear_2: Linear,
}

impl TimestepEmbedder {
    /// `{vb}.linear_1` (256 features in) and `{vb}.linear_2`, `width` wide.
    pub fn new(vb: &VarBuilder, width: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(&vb.pp("linear_1"), width, 256)?,
            linear_2: Linear::new(&vb.pp("linear_2"), width, width)?,
        })
    }

    /// The embedding of features `[B, 256]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(features)?.silu()?)
    }
}

/// `adaln_single`: the timestep embedding (plus PixArtMS's micro-condition embeddings) and the
/// linear that makes the blocks' six modulation vectors from it.
#[derive(Debug, Clone)]
pub struct AdaLnSingle {
    /// `emb.timestep_embedder`.
    pub timestep_embedder: TimestepEmbedder,
    /// `emb.resolution_embedder` and `emb.aspect_ratio_embedder` (PixArtMS), `hidden / 3` wide each.
    pub micro: Option<(TimestepEmbedder, TimestepEmbedder)>,
    /// `linear`: `[6·hidden, hidden]`.
    pub linear: Linear,
}

impl AdaLnSingle {
    /// `adaln_single.*`; the micro-condition embedders when the weights have them.
    pub fn new(vb: &VarBuilder, hidden: usize) -> Result<Self> {
        let emb = vb.pp("emb");
        let micro = if emb.contains_tensor("resolution_embedder.linear_1.weight") {
            Some((
                TimestepEmbedder::new(&emb.pp("resolution_embedder"), hidden / 3)?,
                TimestepEmbedder::new(&emb.pp("aspect_ratio_embedder"), hidden / 3)?,
            ))
        } else {
            None
        };
        Ok(Self {
            timestep_embedder: TimestepEmbedder::new(&emb.pp("timestep_embedder"), hidden)?,
            micro,
            linear: Linear::new(&vb.pp("linear"), 6 * hidden, hidden)?,
        })
    }
}

/// `caption_projection`: `gelu(caption W1ᵀ + b1) W2ᵀ + b2`.
#[derive(Debug, Clone)]
pub struct CaptionProjection {
    /// `[hidden, caption_channels]`.
    pub linear_1: Linear,
    /// `[hidden, hidden]`.
    pub linear_2: Linear,
}

impl CaptionProjection {
    /// `caption_projection.linear_{1,2}`.
    pub fn new(vb: &VarBuilder, hidden: usize, caption_channels: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(&vb.pp("linear_1"), hidden, caption_channels)?,
            linear_2: Linear::new(&vb.pp("linear_2"), hidden, hidden)?,
        })
    }

    /// The projected caption `[B, L, hidden]`.
    pub fn forward(&self, caption: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&crate::nn::gelu(&self.linear_1.forward(caption)?)?)
    }
}

/// Multi-head attention's projections (`to_q`, `to_k`, `to_v`, `to_out.0`).
#[derive(Debug, Clone)]
pub struct Attention {
    /// `to_q`.
    pub to_q: Linear,
    /// `to_k`.
    pub to_k: Linear,
    /// `to_v`.
    pub to_v: Linear,
    /// `to_out.0`.
    pub to_out: Linear,
}

impl Attention {
    /// `{vb}.to_{q,k,v}` and `{vb}.to_out.0`, all `[hidden, hidden]`.
    pub fn new(vb: &VarBuilder, hidden: usize) -> Result<Self> {
        Ok(Self {
            to_q: Linear::new(&vb.pp("to_q"), hidden, hidden)?,
            to_k: Linear::new(&vb.pp("to_k"), hidden, hidden)?,
            to_v: Linear::new(&vb.pp("to_v"), hidden, hidden)?,
            to_out: Linear::new(&vb.pp("to_out").pp("0"), hidden, hidden)?,
        })
    }

    /// `x` attending over `ctx` with `heads` heads and an additive key bias `[B, L]` (or none).
    pub fn forward(&self, x: &Tensor, ctx: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let (q, k, v) = (self.to_q.forward(x)?, self.to_k.forward(ctx)?, self.to_v.forward(ctx)?);
        self.to_out.forward(&super::ops::attention(&q, &k, &v, heads, bias)?)
    }
}

/// The tanh-GELU MLP (`ff.net.0.proj`, `ff.net.2`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// `net.0.proj`: `[4·hidden, hidden]`.
    pub proj: Linear,
    /// `net.2`: `[hidden, 4·hidden]`.
    pub out: Linear,
}

impl FeedForward {
    /// `{vb}.net.0.proj` and `{vb}.net.2`.
    pub fn new(vb: &VarBuilder, hidden: usize) -> Result<Self> {
        let net = vb.pp("net");
        Ok(Self {
            proj: Linear::new(&net.pp("0").pp("proj"), 4 * hidden, hidden)?,
            out: Linear::new(&net.pp("2"), hidden, 4 * hidden)?,
        })
    }

    /// The MLP of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&crate::nn::gelu(&self.proj.forward(x)?)?)
    }
}

/// One transformer block: self-attention (`attn1`), cross-attention to the caption (`attn2`), the
/// MLP (`ff`) and the adaLN-single modulation table.
#[derive(Debug, Clone)]
pub struct Block {
    /// `attn1`.
    pub attn: Attention,
    /// `attn2`.
    pub cross_attn: Attention,
    /// `ff`.
    pub mlp: FeedForward,
    /// `[6, hidden]`.
    pub scale_shift_table: Tensor,
    /// The weights packed in the fused CPU kernel's order, laid out once when the weights are
    /// fixed (inference); `None` for trainable weights, which are packed per call.
    pub packed: Option<Tensor>,
    /// PixArt-Σ's compression of the self-attention's keys and values, in the blocks that have it.
    pub kv_compress: Option<super::kv_compress::KvCompressor>,
}

impl Block {
    /// `transformer_blocks.{i}.*`.
    pub fn new(vb: &VarBuilder, hidden: usize) -> Result<Self> {
        Ok(Self {
            attn: Attention::new(&vb.pp("attn1"), hidden)?,
            cross_attn: Attention::new(&vb.pp("attn2"), hidden)?,
            mlp: FeedForward::new(&vb.pp("ff"), hidden)?,
            scale_shift_table: vb.get((6, hidden), "scale_shift_table")?,
            packed: None,
            kv_compress: None,
        })
    }

    /// The weights in the order of [`super::ops::BLOCK_PARAMS`] (the fused kernel's).
    pub fn weights(&self) -> [&Tensor; 21] {
        let (a, c, f) = (&self.attn, &self.cross_attn, &self.mlp);
        [
            &self.scale_shift_table,
            &a.to_q.weight,
            &a.to_k.weight,
            &a.to_v.weight,
            &a.to_q.bias,
            &a.to_k.bias,
            &a.to_v.bias,
            &a.to_out.weight,
            &a.to_out.bias,
            &c.to_q.weight,
            &c.to_q.bias,
            &c.to_k.weight,
            &c.to_v.weight,
            &c.to_k.bias,
            &c.to_v.bias,
            &c.to_out.weight,
            &c.to_out.bias,
            &f.proj.weight,
            &f.proj.bias,
            &f.out.weight,
            &f.out.bias,
        ]
    }

    /// The width of the MLP.
    pub fn mlp_width(&self) -> usize {
        self.mlp.proj.bias.dims1().unwrap_or(0)
    }

    /// The packed weights: laid out at build time, or now.
    pub fn packed(&self) -> Result<Tensor> {
        match &self.packed {
            Some(p) => Ok(p.clone()),
            None => pack(&self.weights()),
        }
    }
}

/// `tensors` flattened and joined, in order.
pub fn pack(tensors: &[&Tensor]) -> Result<Tensor> {
    Tensor::cat(&tensors.iter().map(|t| t.flatten_all()).collect::<Result<Vec<_>>>()?, 0)
}

/// The final layer: the adaLN-modulated norm's table (`scale_shift_table` `[2, hidden]`) and the
/// projection to patches (`proj_out`).
#[derive(Debug, Clone)]
pub struct FinalLayer {
    /// `[2, hidden]`.
    pub scale_shift_table: Tensor,
    /// `[p·p·out_channels, hidden]`.
    pub proj_out: Linear,
}

impl FinalLayer {
    /// `scale_shift_table` and `proj_out` at the root.
    pub fn new(vb: &VarBuilder, hidden: usize, out: usize) -> Result<Self> {
        Ok(Self {
            scale_shift_table: vb.get((2, hidden), "scale_shift_table")?,
            proj_out: Linear::new(&vb.pp("proj_out"), out, hidden)?,
        })
    }
}
