//! The official PixArt-α initialisation (`PixArt.initialize_weights` / `PixArtMS.initialize`), drawn
//! from our own seeded generator (candle's CPU RNG cannot be seeded):
//! - every linear layer: Xavier-uniform weight, zero bias; the patch embedding likewise on its
//!   `(hidden, C·p·p)` view;
//! - timestep, micro-condition and caption MLPs, and `t_block`: weights ~ N(0, 0.02);
//! - each block's cross-attention output projection and the final linear layer: zero;
//! - `scale_shift_table`s: randn / √hidden; the null caption `y_embedding`: randn / √caption_channels.

use super::keys::NULL_CAPTION;
use super::model::{PixArt, PixArtConfig};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

/// An `out × inp` Xavier-uniform matrix in `shape`.
fn xavier(rng: &mut Rng, out: usize, inp: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
    let a = (6.0 / (inp + out) as f64).sqrt();
    let v: Vec<f32> = (0..out * inp).map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32).collect();
    Tensor::from_vec(v, shape, device)
}

/// Builds a freshly initialised model (`micro`: with PixArtMS micro-condition embedders; `null_tokens`:
/// length of the null caption, 120 in PixArt-α).
pub fn init(config: PixArtConfig, micro: bool, null_tokens: usize, seed: u64, device: &Device) -> Result<PixArt> {
    let mut rng = Rng::new(seed);
    let c = &config;
    let (h, p) = (c.hidden(), c.patch_size);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, device);
    let linear =
        |w: &mut HashMap<String, Tensor>, rng: &mut Rng, name: &str, out: usize, inp: usize, std: Option<f64>| {
            let weight = match std {
                Some(s) => rng.normal_tensor(&[out, inp], s, device)?,
                None => xavier(rng, out, inp, &[out, inp], device)?,
            };
            w.insert(format!("{name}.weight"), weight);
            w.insert(format!("{name}.bias"), zeros(&[out])?);
            Ok::<(), candle_core::Error>(())
        };
    let patch = xavier(&mut rng, h, c.in_channels * p * p, &[h, c.in_channels, p, p], device)?;
    w.insert("pos_embed.proj.weight".into(), patch);
    w.insert("pos_embed.proj.bias".into(), zeros(&[h])?);
    let ts = "adaln_single.emb.timestep_embedder";
    linear(&mut w, &mut rng, &format!("{ts}.linear_1"), h, 256, Some(0.02))?;
    linear(&mut w, &mut rng, &format!("{ts}.linear_2"), h, h, Some(0.02))?;
    if micro {
        for e in ["resolution_embedder", "aspect_ratio_embedder"] {
            linear(&mut w, &mut rng, &format!("adaln_single.emb.{e}.linear_1"), h / 3, 256, Some(0.02))?;
            linear(&mut w, &mut rng, &format!("adaln_single.emb.{e}.linear_2"), h / 3, h / 3, Some(0.02))?;
        }
    }
    linear(&mut w, &mut rng, "adaln_single.linear", 6 * h, h, Some(0.02))?;
    linear(&mut w, &mut rng, "caption_projection.linear_1", h, c.caption_channels, Some(0.02))?;
    linear(&mut w, &mut rng, "caption_projection.linear_2", h, h, Some(0.02))?;
    for i in 0..c.num_layers {
        let b = format!("transformer_blocks.{i}");
        w.insert(format!("{b}.scale_shift_table"), rng.normal_tensor(&[6, h], 1.0 / (h as f64).sqrt(), device)?);
        for l in ["attn1.to_out.0", "attn2.to_q"] {
            linear(&mut w, &mut rng, &format!("{b}.{l}"), h, h, None)?;
        }
        // The official code initialises the fused qkv / kv as one Xavier matrix: same bound as one
        // (3h or 2h) × h matrix.
        for (names, fused) in
            [(&["attn1.to_q", "attn1.to_k", "attn1.to_v"][..], 3), (&["attn2.to_k", "attn2.to_v"][..], 2)]
        {
            let weight = xavier(&mut rng, fused * h, h, &[fused * h, h], device)?;
            for (j, n) in names.iter().enumerate() {
                w.insert(format!("{b}.{n}.weight"), weight.narrow(0, j * h, h)?.contiguous()?);
                w.insert(format!("{b}.{n}.bias"), zeros(&[h])?);
            }
        }
        w.insert(format!("{b}.attn2.to_out.0.weight"), zeros(&[h, h])?);
        w.insert(format!("{b}.attn2.to_out.0.bias"), zeros(&[h])?);
        linear(&mut w, &mut rng, &format!("{b}.ff.net.0.proj"), 4 * h, h, None)?;
        linear(&mut w, &mut rng, &format!("{b}.ff.net.2"), h, 4 * h, None)?;
    }
    if let Some(kv) = &c.kv_compress {
        add_kv_compress(&mut w, kv, h, c.num_layers, device)?;
    }
    w.insert("scale_shift_table".into(), rng.normal_tensor(&[2, h], 1.0 / (h as f64).sqrt(), device)?);
    let out = p * p * c.out_channels;
    w.insert("proj_out.weight".into(), zeros(&[out, h])?);
    w.insert("proj_out.bias".into(), zeros(&[out])?);
    let null_std = 1.0 / (c.caption_channels as f64).sqrt();
    w.insert(NULL_CAPTION.into(), rng.normal_tensor(&[null_tokens, c.caption_channels], null_std, device)?);
    PixArt::from_weights(config, w)
}

/// The official initial KV-compression weights of the blocks `kv` applies to, where `w` lacks them.
fn add_kv_compress(
    w: &mut HashMap<String, Tensor>,
    kv: &crate::train::kv_compress::KvCompressConfig,
    hidden: usize,
    layers: usize,
    device: &Device,
) -> Result<()> {
    for i in (0..layers).filter(|&i| kv.applies_to(i)) {
        let dtype = candle_core::DType::F32;
        for (name, t) in crate::train::kv_compress::initial_weights(kv, hidden, dtype, device)? {
            w.entry(format!("transformer_blocks.{i}.attn1.kv_compress.{name}")).or_insert(t);
        }
    }
    Ok(())
}

/// Adds to a pretrained `model` what training needs and its checkpoint may lack, initialised as
/// [`init`] would: the null caption `y_embedding` (diffusers folders have none), with `micro`
/// PixArtMS's micro-condition embedders (a 256 px PixArt checkpoint going into a multi-scale stage,
/// as the official `load_checkpoint(strict=False)` leaves them at their initial values), and with
/// `kv` PixArt-Σ's KV-token compression (its `conv` weights at their official initial values).
pub fn complete(
    model: PixArt,
    micro: bool,
    kv: Option<&crate::train::kv_compress::KvCompressConfig>,
    null_tokens: usize,
    seed: u64,
) -> Result<PixArt> {
    let mut w = model.weights().clone();
    let mut c = model.config.clone();
    let device = w.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
    let mut rng = Rng::new(seed ^ 0xC0_4D1E);
    let h = c.hidden();
    if micro && !model.has_micro_conditions() {
        if h % 3 != 0 {
            candle_core::bail!("micro-conditions need a hidden size divisible by 3 (PixArtMS splits it in thirds); this model's is {h}");
        }
        for e in ["resolution_embedder", "aspect_ratio_embedder"] {
            for (layer, inp) in [("linear_1", 256), ("linear_2", h / 3)] {
                let name = format!("adaln_single.emb.{e}.{layer}");
                w.insert(format!("{name}.weight"), rng.normal_tensor(&[h / 3, inp], 0.02, &device)?);
                w.insert(format!("{name}.bias"), Tensor::zeros(h / 3, candle_core::DType::F32, &device)?);
            }
        }
    }
    if let Some(kv) = kv {
        add_kv_compress(&mut w, kv, h, c.num_layers, &device)?;
        c.kv_compress = Some(kv.clone());
    }
    if !w.contains_key(NULL_CAPTION) {
        let std = 1.0 / (c.caption_channels as f64).sqrt();
        w.insert(NULL_CAPTION.into(), rng.normal_tensor(&[null_tokens, c.caption_channels], std, &device)?);
    }
    PixArt::from_weights(c, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_continues_the_sequence() {
        let mut a = Rng::new(11);
        for _ in 0..5 {
            a.uniform();
        }
        let mut b = Rng::from_state(a.state());
        let (x, y): (Vec<f64>, Vec<f64>) = (0..10).map(|_| (a.normal(), b.normal())).unzip();
        assert_eq!(x, y);
    }
}
