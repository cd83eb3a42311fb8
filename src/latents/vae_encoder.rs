//! The SD VAE encoder up to the posterior moments, with diffusers' names: `conv_in`, the down blocks
//! (ResNet blocks and a stride-2 downsampler padded right and bottom), the mid block (ResNet,
//! single-head self-attention, ResNet), `conv_norm_out` + SiLU + `conv_out`, then `quant_conv`.
//! candle's `AutoEncoderKL::encode` keeps the mean and std private, and its CPU convolutions are slow,
//! so the encoder is ours, on the kernels of [`super::conv`] (implicit-GEMM convolution, group norm
//! with fused SiLU, residual adds fused into the convolutions).

use crate::nn::conv::{Conv2d, GroupNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

const EPS: f64 = 1e-6;
const SAME: [usize; 4] = [1, 1, 1, 1];

/// diffusers' `ResnetBlock2D` (no time embedding, output scale 1).
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn load(vb: VarBuilder, groups: usize, ci: usize, co: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), groups, ci, EPS)?,
            conv1: Conv2d::load(vb.pp("conv1"), ci, co, 3, 1, SAME)?,
            norm2: GroupNorm::load(vb.pp("norm2"), groups, co, EPS)?,
            conv2: Conv2d::load(vb.pp("conv2"), co, co, 3, 1, SAME)?,
            shortcut: if ci != co { Some(Conv2d::load(vb.pp("conv_shortcut"), ci, co, 1, 1, [0; 4])?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let residual = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&self.norm2.forward(&h, true)?, &residual)
    }
}

/// The mid block's self-attention over the `h·w` positions, one head of all channels.
struct Attention {
    norm: GroupNorm,
    /// `[3C, C]`: q, k, v stacked; bias `[3C]`.
    qkv_w: Tensor,
    qkv_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
}

impl Attention {
    fn load(vb: VarBuilder, groups: usize, c: usize) -> Result<Self> {
        // diffusers writes to_q/to_k/to_v/to_out.0; checkpoints from before its rename hold
        // query/key/value/proj_attn (sd-vae-ft-ema among them).
        let new = vb.contains_tensor("to_q.weight") || !vb.contains_tensor("query.weight");
        let [q, k, v, o] =
            if new { ["to_q", "to_k", "to_v", "to_out.0"] } else { ["query", "key", "value", "proj_attn"] };
        let w = |n: &str| vb.pp(n).get((c, c), "weight");
        let b = |n: &str| vb.pp(n).get(c, "bias");
        Ok(Self {
            norm: GroupNorm::load(vb.pp("group_norm"), groups, c, EPS)?,
            qkv_w: Tensor::cat(&[w(q)?, w(k)?, w(v)?], 0)?,
            qkv_b: Tensor::cat(&[b(q)?, b(k)?, b(v)?], 0)?,
            out_w: w(o)?,
            out_b: b(o)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            let xi = x.narrow(0, i, 1)?;
            let tokens = self.norm.forward(&xi, false)?.reshape((c, h * w))?.t()?.contiguous()?;
            let qkv = crate::nn::linear(&tokens, &self.qkv_w, &self.qkv_b)?;
            let (q, k, v) = (qkv.narrow(1, 0, c)?, qkv.narrow(1, c, c)?, qkv.narrow(1, 2 * c, c)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (c as f64).sqrt()))?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let o = crate::nn::linear(&p.matmul(&v.contiguous()?)?, &self.out_w, &self.out_b)?;
            outs.push((o.t()?.reshape((1, c, h, w))? + xi)?);
        }
        Tensor::cat(&outs, 0)
    }
}

/// The encoder's settings from the VAE's `config.json`.
pub struct EncoderConfig<'a> {
    /// Image channels (3).
    pub in_channels: usize,
    /// Channels of each down block.
    pub block_out_channels: &'a [usize],
    /// ResNet blocks per down block.
    pub layers_per_block: usize,
    /// Latent channels (4); the encoder outputs twice as many moments.
    pub latent_channels: usize,
    /// Group norm groups.
    pub norm_num_groups: usize,
    /// Whether `quant_conv` follows the encoder.
    pub use_quant_conv: bool,
}

/// The VAE encoder; [`Encoder::moments`] gives `[B, 2·latent, h, w]` (mean, then log variance).
pub struct Encoder {
    conv_in: Conv2d,
    /// Per down block: its ResNets and its downsampler (all but the last block).
    down: Vec<(Vec<Resnet>, Option<Conv2d>)>,
    mid: (Resnet, Attention, Resnet),
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

impl Encoder {
    /// Builds the encoder under `vb` (the VAE's root: `encoder.*`, `quant_conv.*`).
    pub fn load(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let enc = vb.pp("encoder");
        let ch = c.block_out_channels;
        let g = c.norm_num_groups;
        let conv_in = Conv2d::load(enc.pp("conv_in"), c.in_channels, ch[0], 3, 1, SAME)?;
        let mut down = Vec::with_capacity(ch.len());
        for (i, &out) in ch.iter().enumerate() {
            let b = enc.pp(format!("down_blocks.{i}"));
            let mut resnets = Vec::with_capacity(c.layers_per_block);
            for j in 0..c.layers_per_block {
                let input = if j == 0 {
                    if i == 0 {
                        ch[0]
                    } else {
                        ch[i - 1]
                    }
                } else {
                    out
                };
                resnets.push(Resnet::load(b.pp(format!("resnets.{j}")), g, input, out)?);
            }
            let downsample = if i + 1 < ch.len() {
                Some(Conv2d::load(b.pp("downsamplers.0.conv"), out, out, 3, 2, [0, 1, 0, 1])?)
            } else {
                None
            };
            down.push((resnets, downsample));
        }
        let last = *ch.last().ok_or_else(|| candle_core::Error::Msg("a VAE has at least one block".into()))?;
        let m = enc.pp("mid_block");
        let mid = (
            Resnet::load(m.pp("resnets.0"), g, last, last)?,
            Attention::load(m.pp("attentions.0"), g, last)?,
            Resnet::load(m.pp("resnets.1"), g, last, last)?,
        );
        let z = 2 * c.latent_channels;
        Ok(Self {
            conv_in,
            down,
            mid,
            norm_out: GroupNorm::load(enc.pp("conv_norm_out"), g, last, EPS)?,
            conv_out: Conv2d::load(enc.pp("conv_out"), last, z, 3, 1, SAME)?,
            quant_conv: if c.use_quant_conv {
                Some(Conv2d::load(vb.pp("quant_conv"), z, z, 1, 1, [0; 4])?)
            } else {
                None
            },
        })
    }

    /// The posterior moments `[B, 2·C, h, w]` (mean, then log variance) of images in [−1, 1].
    pub fn moments(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for (resnets, downsample) in &self.down {
            for r in resnets {
                h = r.forward(&h)?;
            }
            if let Some(d) = downsample {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid.2.forward(&self.mid.1.forward(&self.mid.0.forward(&h)?)?)?;
        let h = self.conv_out.forward(&self.norm_out.forward(&h, true)?)?;
        match &self.quant_conv {
            Some(q) => q.forward(&h),
            None => Ok(h),
        }
    }
}
