//! The PixArt transformer's sub-modules, as candle-transformers builds its models: each built
//! through a `VarBuilder` whose paths mirror the diffusers `PixArtTransformer2DModel` keys
//! (`transformer_blocks.{i}.attn1.to_q.weight`, …), so a missing or mis-shaped tensor is named when
//! the model is built, and each holding its own tensors (no lookup by formatted name in the forward).

use crate::nn::linear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A linear layer `x Wᵀ + b` (`weight` `[out, in]`, `bias` `[out]`), with a LoRA / DoRA adapter
/// computed beside it when training adapters with dropout.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Tensor,
    /// The adapter beside the layer (training with dropout; otherwise adapters are merged).
    pub adapter: Option<LinearAdapter>,
}

/// A LoRA (or DoRA) adapter computed beside a linear layer as peft's layers compute it:
/// `x Wᵀ + b + s·B·A·drop(x)`, and for DoRA `x Wᵀ + b + (m/‖W + s·B·A‖ − 1)·drop(x) Wᵀ +
/// m/‖W + s·B·A‖ · s·B·A·drop(x)`, the row norm held constant in the gradient.
#[derive(Debug, Clone)]
pub struct LinearAdapter {
    /// `lora_A` `[r, in]`.
    pub a: Tensor,
    /// `lora_B` `[out, r]`.
    pub b: Tensor,
    /// DoRA's magnitude `[out]`.
    pub magnitude: Option<Tensor>,
    /// The scaling `s`.
    pub scale: f64,
    /// Dropout on the adapter's input (a probability).
    pub dropout: f64,
    /// The seed of the dropout masks (the same seed, the same masks: a recomputed forward repeats them).
    pub seed: u64,
}

impl LinearAdapter {
    /// `x` with each element zeroed with probability `dropout`, the others scaled by `1 / (1 − p)`.
    fn drop(&self, x: &Tensor) -> Result<Tensor> {
        if self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let mut rng = crate::rng::Rng::new(self.seed);
        let keep = 1.0 / (1.0 - self.dropout);
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.uniform() < self.dropout { 0.0 } else { keep as f32 }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }

    /// What the adapter adds to the layer's output `out` for the input `x`.
    fn add(&self, x: &Tensor, weight: &Tensor, out: Tensor) -> Result<Tensor> {
        let xd = self.drop(x)?;
        let lora = (xd.broadcast_matmul(&self.a.t()?)?.broadcast_matmul(&self.b.t()?)? * self.scale)?;
        let Some(m) = &self.magnitude else { return out + lora };
        let merged = (weight + (self.b.matmul(&self.a)? * self.scale)?)?;
        let norm = merged.detach().sqr()?.sum(1)?.sqrt()?;
        let ratio = (m / norm)?;
        let base = xd.broadcast_matmul(&weight.t()?)?;
        (out + base.broadcast_mul(&(&ratio - 1.0)?)?)? + lora.broadcast_mul(&ratio)?
    }
}

impl Linear {
    /// `{vb}.weight` `[out, in]` and `{vb}.bias` `[out]`.
    pub fn new(vb: &VarBuilder, out: usize, inp: usize) -> Result<Self> {
        Ok(Self { weight: vb.get((out, inp), "weight")?, bias: vb.get(out, "bias")?, adapter: None })
    }

    /// `x Wᵀ + b` (gradients recorded), plus the adapter's part.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = linear(x, &self.weight, &self.bias)?;
        match &self.adapter {
            None => Ok(out),
            Some(a) => a.add(x, &self.weight, out),
        }
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

    /// Whether any of the block's linear layers carries an adapter (then it runs as composite ops).
    pub fn has_adapters(&self) -> bool {
        let (a, c, f) = (&self.attn, &self.cross_attn, &self.mlp);
        [&a.to_q, &a.to_k, &a.to_v, &a.to_out, &c.to_q, &c.to_k, &c.to_v, &c.to_out, &f.proj, &f.out]
            .iter()
            .any(|l| l.adapter.is_some())
    }

    /// The linear layer of the block at `name` (`attn1.to_q`, `ff.net.2`, … : diffusers' names).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        let (a, c, f) = (&mut self.attn, &mut self.cross_attn, &mut self.mlp);
        Some(match name {
            "attn1.to_q" => &mut a.to_q,
            "attn1.to_k" => &mut a.to_k,
            "attn1.to_v" => &mut a.to_v,
            "attn1.to_out.0" => &mut a.to_out,
            "attn2.to_q" => &mut c.to_q,
            "attn2.to_k" => &mut c.to_k,
            "attn2.to_v" => &mut c.to_v,
            "attn2.to_out.0" => &mut c.to_out,
            "ff.net.0.proj" => &mut f.proj,
            "ff.net.2" => &mut f.out,
            _ => return None,
        })
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
