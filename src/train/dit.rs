//! Experimental: a PixArt initialised from DiT ImageNet weights (facebookresearch/DiT's
//! `DiT-XL-2-256x256.pt` layout) with the adaLN-single re-parameterisation of PixArt-α §2.3. The
//! official code never released this; the recipe here is the paper's sentence made exact:
//!
//! - `x_embedder`, `t_embedder`, each block's self-attention (`attn.qkv`, `attn.proj`) and MLP, and
//!   `final_layer.linear` are DiT's;
//! - with `t* = t_embedder(500)` and `s = SiLU(t*)`, each block's `scale_shift_table` becomes
//!   `adaLN_modulation_i(s) − t_block(s)` (reshaped `[6, hidden]`), so at t = 500 every block gets the
//!   modulation DiT gives it without a class embedding, whatever `t_block` is; the final layer's
//!   table becomes `final_adaLN(s) − t*` (its modulation adds `t*`, not `t_block`);
//! - the rest (cross-attention, caption projection, `t_block`, the null caption, micro-conditions) is
//!   PixArt's initialisation; the cross-attention output starts at zero, so at t = 500 the model
//!   computes DiT's function for any caption (`tests/train_run.rs` checks this against a port of DiT's
//!   forward).
//!
//! DiT's class embedder and fixed `pos_embed` are dropped (positions are recomputed).

use super::keys::{diffusers_to_official, official_to_diffusers};
use super::model::{timestep_features, PixArt, PixArtConfig};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The timestep whose modulation the re-parameterisation keeps (the paper's choice).
pub const REPARAM_T: f64 = 500.0;

/// Reads a DiT checkpoint: a `.pt` state dict (as DiT releases them, or under `model`/`ema`), or
/// safetensors with DiT's keys.
fn read(path: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let named: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "safetensors") {
        crate::hub::Weights::open(&[path.to_path_buf()])?.load_all(device)?.into_iter().collect()
    } else {
        let try_key = |k: Option<&str>| candle_core::pickle::read_all_with_key(path, k);
        try_key(None)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| try_key(Some("ema")).ok())
            .or_else(|| try_key(Some("model")).ok())
            .ok_or_else(|| anyhow::anyhow!("{}: not a DiT state dict (.pt or .safetensors)", path.display()))?
    };
    named.into_iter().map(|(k, t)| Ok((k, t.to_device(device)?.to_dtype(DType::F32)?))).collect()
}

fn linear(x: &Tensor, sd: &HashMap<String, Tensor>, prefix: &str) -> anyhow::Result<Tensor> {
    let get = |k: &str| sd.get(k).ok_or_else(|| anyhow::anyhow!("DiT checkpoint: no `{k}`"));
    let (w, b) = (get(&format!("{prefix}.weight"))?, get(&format!("{prefix}.bias"))?);
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// A PixArt of DiT's depth, width and patch, initialised from the DiT checkpoint at `path` (see the
/// module docs); `m` gives the heads, caption width, latent side (DiT-XL/2-256: 32) and whether to add
/// micro-conditions; `seed` draws the parts DiT lacks.
pub fn from_dit(
    path: &Path,
    m: &super::config::ModelConfig,
    null_tokens: usize,
    seed: u64,
    device: &Device,
) -> anyhow::Result<PixArt> {
    let (heads, caption_channels, sample_size, micro) =
        (m.heads, m.caption_channels, m.sample_size, m.micro_conditions);
    let sd = read(path, device)?;
    let err = |k: &str| anyhow::anyhow!("{}: not a DiT checkpoint: no `{k}`", path.display());
    let (hidden, in_channels, patch) = sd
        .get("x_embedder.proj.weight")
        .ok_or_else(|| err("x_embedder.proj.weight"))?
        .dims4()
        .map(|(h, c, p, _)| (h, c, p))?;
    let layers = (0..).take_while(|i| sd.contains_key(&format!("blocks.{i}.adaLN_modulation.1.weight"))).count();
    let out_channels =
        sd.get("final_layer.linear.weight").ok_or_else(|| err("final_layer.linear.weight"))?.dim(0)? / (patch * patch);
    if hidden % heads != 0 || layers == 0 {
        anyhow::bail!("{}: hidden {hidden} with {heads} heads and {layers} blocks is not a usable DiT", path.display());
    }
    let config = PixArtConfig {
        num_attention_heads: heads,
        attention_head_dim: hidden / heads,
        in_channels,
        out_channels,
        num_layers: layers,
        sample_size,
        patch_size: patch,
        caption_channels,
        interpolation_scale: None,
        norm_eps: 1e-6,
        kv_compress: None,
    };
    let fresh = super::init::init(config.clone(), micro, null_tokens, seed, device)?;
    let mut official = diffusers_to_official(fresh.weights()).map_err(anyhow::Error::msg)?;
    let mut copied = 0;
    for (k, t) in &sd {
        let kept = k.starts_with("x_embedder.")
            || k.starts_with("t_embedder.")
            || k.starts_with("final_layer.linear.")
            || (k.starts_with("blocks.") && (k.contains(".attn.") || k.contains(".mlp.")));
        if kept {
            let slot = official
                .get(k)
                .ok_or_else(|| anyhow::anyhow!("{}: `{k}` has no PixArt counterpart", path.display()))?;
            if slot.dims() != t.dims() {
                anyhow::bail!("{}: `{k}` is {:?}, PixArt expects {:?}", path.display(), t.dims(), slot.dims());
            }
            official.insert(k.clone(), t.clone());
            copied += 1;
        }
    }
    // The re-parameterisation at t* = t_embedder(500).
    let t = Tensor::new(&[REPARAM_T as f32], device)?;
    let t_star = linear(
        &linear(&timestep_features(&t, DType::F32)?, &sd, "t_embedder.mlp.0")?.silu()?,
        &sd,
        "t_embedder.mlp.2",
    )?;
    let s = t_star.silu()?;
    let shared = linear(&s, &official, "t_block.1")?;
    for i in 0..layers {
        let dit = linear(&s, &sd, &format!("blocks.{i}.adaLN_modulation.1"))?;
        official.insert(format!("blocks.{i}.scale_shift_table"), (dit - &shared)?.reshape((6, hidden))?);
    }
    let final_mod = linear(&s, &sd, "final_layer.adaLN_modulation.1")?.reshape((2, hidden))?;
    official.insert("final_layer.scale_shift_table".into(), final_mod.broadcast_sub(&t_star)?.contiguous()?);
    tracing::info!(copied, layers, hidden, "initialised from DiT weights ({} keys copied)", copied);
    let w = official_to_diffusers(official).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(PixArt::from_weights(config, w)?)
}
