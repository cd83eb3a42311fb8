//! Classifier-free guidance of a PixArt model: the batch runs once as `[unconditional; conditional]`
//! (diffusers' order) and ε = ε_u + s·(ε_c − ε_u) on every latent channel; the learned variance is the
//! conditional half's. The null condition is either the checkpoint's `y_embedding` with the prompt's
//! own mask (the official inference) or an encoded empty prompt with its own mask (diffusers).

use crate::train::model::PixArt;
use candle_core::{DType, Result, Tensor};

/// A batch of captions `[B, L, C]` with their 0/1 masks `[B, L]`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Caption embeddings.
    pub caption: Tensor,
    /// Valid-token mask.
    pub mask: Tensor,
}

impl Condition {
    /// The official null condition for `cond`: the model's `y_embedding` (`[L_max, C]`) cut to the
    /// prompts' length, with the prompts' mask.
    pub fn official_null(model: &PixArt, cond: &Condition) -> Result<Condition> {
        let null = model.null_caption().ok_or_else(|| {
            candle_core::Error::Msg(
                "this checkpoint has no y_embedding (diffusers layout): use an empty-prompt null condition".into(),
            )
        })?;
        let (b, l, c) = cond.caption.dims3()?;
        if l > null.dim(0)? {
            candle_core::bail!("captions of {l} tokens are longer than the null caption's {}", null.dim(0)?);
        }
        let caption = null.narrow(0, 0, l)?.to_dtype(cond.caption.dtype())?.unsqueeze(0)?.broadcast_as((b, l, c))?;
        Ok(Condition { caption: caption.contiguous()?, mask: cond.mask.clone() })
    }

    /// One condition repeated for a batch of `b`.
    pub fn repeat(&self, b: usize) -> Result<Condition> {
        Ok(Condition { caption: self.caption.repeat((b, 1, 1))?, mask: self.mask.repeat((b, 1))? })
    }

    /// Padded with masked zero tokens to `len`.
    fn padded(&self, len: usize) -> Result<Condition> {
        let (b, l, c) = self.caption.dims3()?;
        if l >= len {
            return Ok(self.clone());
        }
        let dev = self.caption.device();
        let caption = Tensor::cat(&[&self.caption, &Tensor::zeros((b, len - l, c), self.caption.dtype(), dev)?], 1)?;
        let mask = Tensor::cat(&[&self.mask, &Tensor::zeros((b, len - l), self.mask.dtype(), dev)?], 1)?;
        Ok(Condition { caption, mask })
    }
}

/// A PixArt model with its condition, guided. The batch the model sees (`[unconditional;
/// conditional]` captions, masks and micro-conditions) is assembled once, not at every step.
pub struct Guided<'a> {
    model: &'a PixArt,
    caption: Tensor,
    mask: Tensor,
    micro: Option<(Tensor, Tensor)>,
    /// `Some(scale)` when the batch holds both halves.
    scale: Option<f64>,
}

impl<'a> Guided<'a> {
    /// Guidance of `scale` (1 or no `uncond`: the conditional model alone); `micro` = PixArtMS image
    /// sizes `[B, 2]` and aspect ratios `[B, 1]`.
    pub fn new(
        model: &'a PixArt,
        cond: Condition,
        uncond: Option<Condition>,
        scale: f64,
        micro: Option<(Tensor, Tensor)>,
    ) -> Result<Self> {
        let Some(uncond) = uncond.filter(|_| scale != 1.0) else {
            let mask = cond.mask.to_dtype(DType::F32)?;
            return Ok(Guided { model, caption: cond.caption, mask, micro, scale: None });
        };
        let len = cond.caption.dim(1)?.max(uncond.caption.dim(1)?);
        let (u, c) = (uncond.padded(len)?, cond.padded(len)?);
        let micro = match micro {
            Some((r, a)) => Some((Tensor::cat(&[&r, &r], 0)?, Tensor::cat(&[&a, &a], 0)?)),
            None => None,
        };
        Ok(Guided {
            model,
            caption: Tensor::cat(&[&u.caption, &c.caption], 0)?,
            mask: Tensor::cat(&[&u.mask, &c.mask], 0)?.to_dtype(DType::F32)?,
            micro,
            scale: Some(scale),
        })
    }

    /// The (guided) model output `[B, out_channels, H, W]` at model timestep `t`.
    pub fn output(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let b = x.dim(0)?;
        let micro = self.micro.as_ref().map(|(r, a)| (r, a));
        let Some(scale) = self.scale else {
            let tt = Tensor::full(t as f32, b, x.device())?;
            return self.model.forward(x, &tt, &self.caption, &self.mask, micro);
        };
        let xx = Tensor::cat(&[x, x], 0)?;
        let tt = Tensor::full(t as f32, 2 * b, x.device())?;
        let out = self.model.forward(&xx, &tt, &self.caption, &self.mask, micro)?;
        let ch = x.dim(1)?;
        let (out_u, out_c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        let (eps_u, eps_c) = (out_u.narrow(1, 0, ch)?, out_c.narrow(1, 0, ch)?);
        let eps = (&eps_u + (eps_c - &eps_u)?.affine(scale, 0.0)?)?;
        let rest = out.dim(1)? - ch;
        if rest == 0 {
            Ok(eps)
        } else {
            Tensor::cat(&[&eps, &out_c.narrow(1, ch, rest)?], 1)
        }
    }
}
