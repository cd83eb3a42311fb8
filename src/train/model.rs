//! The PixArt-α transformer forward pass in candle (PixArt and PixArtMS), from weights in the diffusers
//! `PixArtTransformer2DModel` layout: patch embedding + 2D sin-cos positions, timestep embedding and
//! adaLN-single, caption projection, blocks of self-attention / cross-attention (padding-masked, no
//! norm, no gate) / tanh-GELU MLP, the final layer and unpatchify; PixArtMS micro-conditions. Official
//! checkpoints load through [`super::keys`]; [`PixArt::trainable`] makes the weights variables.
//!
//! Every op here records gradients: the hot ones are our fused differentiable kernels
//! (`train::ops`), never candle_nn's fused ones (which record none).

use super::modules::{AdaLnSingle, Block, CaptionProjection, FinalLayer, PatchEmbed};
use super::ops::{fused_block, pixart_block, BLOCK_PARAMS};
use crate::nn::{gated_add, layer_norm, linear, modulate};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::HashMap;

/// The shape of a PixArt transformer (diffusers `config.json` names).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct PixArtConfig {
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Channels per head.
    pub attention_head_dim: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (8 with learned sigma).
    pub out_channels: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Latent size the positions are laid out for.
    pub sample_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// T5 channels.
    pub caption_channels: usize,
    /// Position interpolation (PixArt's `lewei_scale`); default `max(sample_size / 64, 1)`.
    pub interpolation_scale: Option<f64>,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// PixArt-Σ's KV-token compression in the self-attention of some blocks (the official code's
    /// `kv_compress_config`; diffusers has no such attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_compress: Option<super::kv_compress::KvCompressConfig>,
}

fn default_eps() -> f64 {
    1e-6
}

impl PixArtConfig {
    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// The shape a folder's `config.json` (a diffusers `PixArtTransformer2DModel` config) or a training
/// checkpoint's `state.json` (`model`) gives, and the file it came from.
fn described_shape(dir: &std::path::Path) -> anyhow::Result<Option<(PixArtConfig, std::path::PathBuf)>> {
    let config = dir.join("config.json");
    if config.is_file() {
        // Another model's config (a T5's, a VAE's) beside a weight file says nothing of it.
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)
            .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", config.display()))?;
        if v.get("caption_channels").is_some() {
            return Ok(Some((crate::hub::read_config(&config)?, config)));
        }
    }
    let state = dir.join("state.json");
    if state.is_file() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state)?)
            .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", state.display()))?;
        if let Some(model) = v.get("model") {
            let c: PixArtConfig = serde_json::from_value(model.clone())
                .map_err(|e| anyhow::anyhow!("{}: `model`: not a transformer shape: {e}", state.display()))?;
            return Ok(Some((c, state)));
        }
    }
    Ok(None)
}

/// Every tensor of a PixArt transformer in the diffusers layout with its shape (`micro`: with
/// PixArtMS's micro-condition embedders); the null caption `y_embedding`, which diffusers folders do
/// not carry, is not listed.
pub fn parameter_shapes(c: &PixArtConfig, micro: bool) -> Vec<(String, Vec<usize>)> {
    let (h, p) = (c.hidden(), c.patch_size);
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let linear = |out: &mut Vec<(String, Vec<usize>)>, name: &str, o: usize, i: usize| {
        out.push((format!("{name}.weight"), vec![o, i]));
        out.push((format!("{name}.bias"), vec![o]));
    };
    out.push(("pos_embed.proj.weight".into(), vec![h, c.in_channels, p, p]));
    out.push(("pos_embed.proj.bias".into(), vec![h]));
    let ts = "adaln_single.emb.timestep_embedder";
    linear(&mut out, &format!("{ts}.linear_1"), h, 256);
    linear(&mut out, &format!("{ts}.linear_2"), h, h);
    if micro {
        for e in ["resolution_embedder", "aspect_ratio_embedder"] {
            linear(&mut out, &format!("adaln_single.emb.{e}.linear_1"), h / 3, 256);
            linear(&mut out, &format!("adaln_single.emb.{e}.linear_2"), h / 3, h / 3);
        }
    }
    linear(&mut out, "adaln_single.linear", 6 * h, h);
    linear(&mut out, "caption_projection.linear_1", h, c.caption_channels);
    linear(&mut out, "caption_projection.linear_2", h, h);
    for i in 0..c.num_layers {
        let b = format!("transformer_blocks.{i}");
        out.push((format!("{b}.scale_shift_table"), vec![6, h]));
        for l in [
            "attn1.to_q",
            "attn1.to_k",
            "attn1.to_v",
            "attn1.to_out.0",
            "attn2.to_q",
            "attn2.to_k",
            "attn2.to_v",
            "attn2.to_out.0",
        ] {
            linear(&mut out, &format!("{b}.{l}"), h, h);
        }
        linear(&mut out, &format!("{b}.ff.net.0.proj"), 4 * h, h);
        linear(&mut out, &format!("{b}.ff.net.2"), h, 4 * h);
        if let Some(kv) = c.kv_compress.as_ref().filter(|kv| kv.applies_to(i)) {
            out.extend(kv.weight_shapes(h).into_iter().map(|(n, s)| (format!("{b}.attn1.kv_compress.{n}"), s)));
        }
    }
    out.push(("scale_shift_table".into(), vec![2, h]));
    linear(&mut out, "proj_out", p * p * c.out_channels, h);
    out
}

/// A loaded PixArt transformer: its sub-modules, built through a `VarBuilder` over the weights
/// (paths mirror the diffusers keys), and the weights by diffusers name (what checkpoints, the
/// optimizer and the official-key mapping read).
pub struct PixArt {
    /// Its configuration.
    pub config: PixArtConfig,
    /// `pos_embed`.
    pub pos_embed: PatchEmbed,
    /// `adaln_single`.
    pub adaln_single: AdaLnSingle,
    /// `caption_projection`.
    pub caption_projection: CaptionProjection,
    /// `transformer_blocks`.
    pub transformer_blocks: Vec<Block>,
    /// `scale_shift_table` and `proj_out`.
    pub final_layer: FinalLayer,
    w: HashMap<String, Tensor>,
    /// Position tables by latent grid and dtype, computed once.
    pos_cache: std::sync::Mutex<HashMap<(usize, usize, DType), Tensor>>,
}

/// The 2D sin-cos position table `[h·w, dim]` (diffusers `get_2d_sincos_pos_embed`): first half from
/// the column coordinate, second from the row, each `[sin, cos]`; coordinates scaled to `base_size`.
pub fn pos_embed_2d(dim: usize, h: usize, w: usize, base_size: usize, scale: f64) -> Vec<f32> {
    let half = dim / 2;
    let omega: Vec<f64> = (0..half / 2).map(|k| 1.0 / 10000f64.powf(k as f64 / (half as f64 / 2.0))).collect();
    let mut out = Vec::with_capacity(h * w * dim);
    for r in 0..h {
        for c in 0..w {
            let col = c as f64 / (w as f64 / base_size as f64) / scale;
            let row = r as f64 / (h as f64 / base_size as f64) / scale;
            for pos in [col, row] {
                out.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                out.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    out
}

/// The sinusoidal timestep features (256 channels, cos first) in `dtype`: computed in f32 step by
/// step, as diffusers and the official code compute them (`exp(-ln(10000) * k / 128)`, whatever the
/// model's type), and in f64 for an f64 model (the exact values an f64 reference computes).
pub(crate) fn timestep_features(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let half = 128;
    let args = if dtype == DType::F64 {
        let freqs: Vec<f64> = (0..half).map(|k| ((-(10000f64.ln()) * k as f64) / half as f64).exp()).collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        t.to_dtype(DType::F64)?.unsqueeze(1)?.broadcast_mul(&freqs)?
    } else {
        let freqs: Vec<f32> = (0..half).map(|k| ((-(10000f64.ln() as f32) * k as f32) / half as f32).exp()).collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?
    };
    Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(dtype)
}

/// `w` checked against `config`: every tensor [`parameter_shapes`] lists is there with its shape and a
/// floating-point dtype (else an error naming `source(tensor)`, the tensor, the shape expected
/// `why` and the one found), and all in the dtype of the patch embedding's weight.
fn checked_parameters(
    config: &PixArtConfig,
    w: HashMap<String, Tensor>,
    source: &dyn Fn(&str) -> String,
    why: &str,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let micro = w.keys().any(|k| k.starts_with("adaln_single.emb.resolution_embedder."));
    for (name, shape) in parameter_shapes(config, micro) {
        match w.get(&name) {
            None => anyhow::bail!("{}: tensor `{name}` is missing (expected shape {shape:?} {why})", source(&name)),
            Some(t) if t.dims() != shape.as_slice() => {
                anyhow::bail!("{}: tensor `{name}` has shape {:?}, expected {shape:?} {why}", source(&name), t.dims())
            }
            Some(t) if !crate::hub::is_float(t.dtype()) => {
                anyhow::bail!(crate::hub::not_float(&source(&name), &name, t.dtype()))
            }
            Some(_) => {}
        }
    }
    let dtype = w["pos_embed.proj.weight"].dtype();
    w.into_iter().map(|(k, t)| Ok((k, if t.dtype() == dtype { t } else { t.to_dtype(dtype)? }))).collect()
}

impl PixArt {
    /// The model of `config` over the weights `w` (diffusers names): its sub-modules built through a
    /// `VarBuilder` that checks every tensor's shape. Fixed weights (none a variable) of a model the
    /// fused CPU kernel runs have each block's weights laid out once, in the kernel's order, with the
    /// sub-modules' tensors views into that layout.
    pub fn new(config: PixArtConfig, mut w: HashMap<String, Tensor>) -> Result<Self> {
        let first = w
            .get("pos_embed.proj.weight")
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: "pos_embed.proj.weight".into() })?;
        let (dtype, device) = (first.dtype(), first.device().clone());
        let c = &config;
        let hidden = c.hidden();
        let packs = device.is_cpu() && matches!(dtype, DType::F32 | DType::F64) && !w.values().any(|t| t.is_variable());
        let mut packed = Vec::new();
        if packs {
            for i in 0..c.num_layers {
                let names: Vec<String> = BLOCK_PARAMS.iter().map(|n| format!("transformer_blocks.{i}.{n}")).collect();
                let parts = names
                    .iter()
                    .map(|n| w.get(n).ok_or_else(|| candle_core::Error::CannotFindTensor { path: n.clone() }))
                    .collect::<Result<Vec<_>>>()?;
                let flat = super::modules::pack(&parts)?;
                let mut offset = 0;
                for n in &names {
                    let shape = w[n].shape().clone();
                    let view = flat.narrow(0, offset, shape.elem_count())?.reshape(shape.clone())?;
                    offset += shape.elem_count();
                    w.insert(n.clone(), view);
                }
                packed.push(flat);
            }
        }
        let vb = candle_nn::VarBuilder::from_tensors(w.clone(), dtype, &device);
        let mut transformer_blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let vb_block = vb.pp("transformer_blocks").pp(i);
            let mut block = Block::new(&vb_block, hidden)?;
            block.packed = packed.get(i).cloned();
            if let Some(kv) = c.kv_compress.as_ref().filter(|kv| kv.applies_to(i)) {
                let vb_kv = vb_block.pp("attn1").pp("kv_compress");
                block.kv_compress = Some(super::kv_compress::KvCompressor::new(&vb_kv, hidden, kv)?);
            }
            transformer_blocks.push(block);
        }
        Ok(Self {
            pos_embed: PatchEmbed::new(&vb.pp("pos_embed"), hidden, c.in_channels, c.patch_size)?,
            adaln_single: AdaLnSingle::new(&vb.pp("adaln_single"), hidden)?,
            caption_projection: CaptionProjection::new(&vb.pp("caption_projection"), hidden, c.caption_channels)?,
            transformer_blocks,
            final_layer: FinalLayer::new(&vb, hidden, c.patch_size * c.patch_size * c.out_channels)?,
            config,
            w,
            pos_cache: Default::default(),
        })
    }

    /// Loads a diffusers transformer folder (`config.json` + `diffusion_pytorch_model.safetensors`, or
    /// its shards with `diffusion_pytorch_model.safetensors.index.json`). Every tensor the config
    /// calls for ([`parameter_shapes`]) must be there with its shape: a missing or mis-shaped one is
    /// refused here, naming the file and the tensor, not later in the forward.
    pub fn load_diffusers(dir: &std::path::Path, device: &Device) -> anyhow::Result<Self> {
        let cfg = dir.join("config.json");
        let config: PixArtConfig = crate::hub::read_config(&cfg)?;
        let files = crate::hub::weight_files(dir, "diffusion_pytorch_model")?;
        let weights = crate::hub::Weights::open(&files)?;
        let w = weights.load_all(device)?;
        let named = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        let source = |name: &str| weights.file_of(name).map(|f| f.display().to_string()).unwrap_or(named.clone());
        let w = checked_parameters(&config, w, &source, &format!("for {}", cfg.display()))?;
        PixArt::new(config, w).map_err(|e| anyhow::anyhow!("{named}: {e}"))
    }

    /// Loads an official PixArt-α checkpoint (`.pth` with `state_dict`, or `.safetensors` with the
    /// official keys). Checkpoints carry no config: the shape is read from the weights, except the
    /// number of heads and the latent size the positions were laid out for (PixArt-XL/2: 16 heads;
    /// 512 px: 64, 1024 px: 128). `pos_embed` is recomputed; `y_embedder.y_embedding` (the
    /// classifier-free-guidance null caption) is kept as [`PixArt::null_caption`].
    pub fn load_official(
        path: &std::path::Path,
        heads: usize,
        sample_size: usize,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let is_st = path.extension().is_some_and(|e| e == "safetensors");
        let named: Vec<(String, Tensor)> = if is_st {
            crate::hub::Weights::open(&[path.to_path_buf()])?.load_all(device)?.into_iter().collect()
        } else {
            candle_core::pickle::read_all_with_key(path, Some("state_dict"))
                .map_err(|e| anyhow::anyhow!("{}: not a PyTorch checkpoint with a state_dict: {e}", path.display()))?
        };
        let sd: HashMap<String, Tensor> =
            named.into_iter().map(|(k, t)| Ok((k, t.to_device(device)?))).collect::<Result<_>>()?;
        for (name, t) in &sd {
            if !crate::hub::is_float(t.dtype()) {
                anyhow::bail!(crate::hub::not_float(&path.display().to_string(), name, t.dtype()));
            }
        }
        let w = super::keys::official_to_diffusers(sd).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (hidden, in_channels, patch) =
            w["pos_embed.proj.weight"].dims4().map(|(h, c, p, _)| (h, c, p)).map_err(|e| {
                anyhow::anyhow!(
                    "{}: tensor `x_embedder.proj.weight`: expected shape [hidden, channels, patch, patch]: {e}",
                    path.display()
                )
            })?;
        if heads == 0 || patch == 0 {
            anyhow::bail!(
                "{}: {heads} heads or a patch of {patch} (x_embedder.proj.weight): expected both positive",
                path.display()
            );
        }
        if hidden % heads != 0 {
            anyhow::bail!("{}: hidden size {hidden} is not divisible by {heads} heads", path.display());
        }
        let config = PixArtConfig {
            num_attention_heads: heads,
            attention_head_dim: hidden / heads,
            in_channels,
            out_channels: w["proj_out.weight"].dim(0)? / (patch * patch),
            num_layers: super::keys::block_count(w.keys(), "transformer_blocks."),
            sample_size,
            patch_size: patch,
            caption_channels: w["caption_projection.linear_1.weight"].dim(1)?,
            interpolation_scale: None,
            norm_eps: default_eps(),
            kv_compress: super::kv_compress::from_official_weights(&w),
        };
        let source = |name: &str| format!("{} (official `{}`)", path.display(), super::keys::official_name(name));
        let w = checked_parameters(&config, w, &source, "for the shape its other tensors give")?;
        PixArt::new(config, w).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Loads a transformer from whatever holds one: a diffusers folder (or a pipeline with
    /// `transformer/`); a training checkpoint folder (its `ema.safetensors`, the shape from its
    /// `config.json`, or `state.json` for older ones); an official checkpoint file, its shape from
    /// a `config.json` (or a checkpoint's `state.json`) beside it, else from `shape` (heads, latent
    /// size; PixArt-XL/2 at 512 px: 16, 64). A `shape` given for a model that describes itself must
    /// agree with it.
    pub fn load_any(path: &std::path::Path, shape: Option<(usize, usize)>, device: &Device) -> anyhow::Result<Self> {
        let t = crate::hub::part(path, "transformer");
        let file = if t.is_dir() {
            if t.join("diffusion_pytorch_model.safetensors").is_file()
                || t.join("diffusion_pytorch_model.safetensors.index.json").is_file()
            {
                return PixArt::load_diffusers(&t, device);
            }
            if t.join("adapter").is_dir() {
                anyhow::bail!(
                    "{}: a checkpoint of adapters: give the base transformer with --transformer and the adapter with \
                     --lora {}",
                    t.display(),
                    t.join("ema_adapter").display()
                );
            }
            let ema = t.join("ema.safetensors");
            if !ema.is_file() {
                anyhow::bail!(
                    "{}: neither a diffusers transformer folder (config.json + diffusion_pytorch_model.safetensors) nor a \
                     training checkpoint (config.json + ema.safetensors)",
                    t.display()
                );
            }
            ema
        } else {
            t.clone()
        };
        let described = file.parent().map(described_shape).transpose()?.flatten();
        let Some((config, from)) = described else {
            let (heads, sample_size) = shape.unwrap_or((16, 64));
            return PixArt::load_official(&file, heads, sample_size, device);
        };
        if let Some((heads, sample_size)) = shape {
            if (heads, sample_size) != (config.num_attention_heads, config.sample_size) {
                anyhow::bail!(
                    "{}: --heads {heads} --sample-size {sample_size}, but {} says {} heads and a latent size of {}",
                    file.display(),
                    from.display(),
                    config.num_attention_heads,
                    config.sample_size
                );
            }
        }
        let m = PixArt::load_official(&file, config.num_attention_heads, config.sample_size, device)?;
        PixArt::from_weights(config, m.weights().clone()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }

    /// A model from its configuration and weights in the diffusers layout (plus, optionally, the
    /// null caption under [`super::keys::NULL_CAPTION`]); [`PixArt::new`].
    pub fn from_weights(config: PixArtConfig, w: HashMap<String, Tensor>) -> Result<Self> {
        PixArt::new(config, w)
    }

    /// The weights, by diffusers name.
    pub fn weights(&self) -> &HashMap<String, Tensor> {
        &self.w
    }

    /// The model's `config.json` in diffusers' form (`PixArtTransformer2DModel`).
    pub fn diffusers_config(&self) -> anyhow::Result<serde_json::Value> {
        let mut cfg = serde_json::to_value(&self.config)?;
        let obj = cfg.as_object_mut().expect("a struct serialises to an object");
        obj.insert("_class_name".into(), "PixArtTransformer2DModel".into());
        let c = &self.config;
        for (k, v) in [
            ("activation_fn", serde_json::json!("gelu-approximate")),
            ("attention_bias", serde_json::json!(true)),
            ("cross_attention_dim", serde_json::json!(c.hidden())),
            ("norm_type", serde_json::json!("ada_norm_single")),
            ("norm_elementwise_affine", serde_json::json!(false)),
            ("num_embeds_ada_norm", serde_json::json!(1000)),
            ("use_additional_conditions", serde_json::json!(self.has_micro_conditions())),
        ] {
            obj.insert(k.into(), v);
        }
        Ok(cfg)
    }

    /// Writes a diffusers transformer folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (diffusers keeps no null caption), each atomically.
    pub fn save_diffusers(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let cfg = self.diffusers_config()?;
        crate::shards::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        let tensors: HashMap<String, Tensor> = self
            .w
            .iter()
            .filter(|(k, _)| *k != super::keys::NULL_CAPTION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let file = dir.join("diffusion_pytorch_model.safetensors");
        let tmp = crate::shards::temp_path(&file);
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    /// Writes the weights with the official keys (fused qkv and kv, `y_embedder.y_embedding`) as
    /// safetensors, atomically.
    pub fn save_official(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let official = super::keys::diffusers_to_official(&self.w).map_err(anyhow::Error::msg)?;
        let tmp = crate::shards::temp_path(path);
        candle_core::safetensors::save(&official, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The official checkpoint's null caption `[L, caption_channels]` (`y_embedder.y_embedding`), if any.
    pub fn null_caption(&self) -> Option<&Tensor> {
        self.w.get(super::keys::NULL_CAPTION)
    }

    /// Converts every weight to `dtype` (F64 for gradient checks; F32 to train on CPU).
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        let w = self.w.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?))).collect::<Result<_>>()?;
        *self = PixArt::new(self.config.clone(), w)?;
        Ok(())
    }

    /// Makes every weight a trainable variable (all but the null-caption buffer, which the official
    /// code keeps out of the optimizer) and returns them by name, sorted.
    pub fn trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (name, t) in self.w.iter_mut() {
            if name == super::keys::NULL_CAPTION {
                continue;
            }
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push((name.clone(), v));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        *self = PixArt::new(self.config.clone(), std::mem::take(&mut self.w))?;
        Ok(vars)
    }

    /// This model computing in `dtype` (mixed precision): every weight cast by a tracked op, so the
    /// gradients of a loss on the copy flow back to this model's (f32) weights in their own type.
    pub fn cast(&self, dtype: DType) -> Result<PixArt> {
        let w = self.w.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?))).collect::<Result<_>>()?;
        PixArt::new(self.config.clone(), w)
    }

    /// The position table `[1, gh·gw, hidden]` of a latent grid (cached).
    fn positions(&self, gh: usize, gw: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut cache = self.pos_cache.lock().expect("the position cache is never poisoned");
        if let Some(t) = cache.get(&(gh, gw, dtype)) {
            return Ok(t.clone());
        }
        let c = &self.config;
        let scale = c.interpolation_scale.unwrap_or((c.sample_size / 64).max(1) as f64);
        let pos = pos_embed_2d(c.hidden(), gh, gw, c.sample_size / c.patch_size, scale);
        let t = Tensor::from_vec(pos, (1, gh * gw, c.hidden()), device)?.to_dtype(dtype)?;
        cache.insert((gh, gw, dtype), t.clone());
        Ok(t)
    }

    /// Whether the model takes PixArtMS micro-conditions (it has the resolution and aspect-ratio
    /// embedders).
    pub fn has_micro_conditions(&self) -> bool {
        self.adaln_single.micro.is_some()
    }

    /// The timestep embedding `[B, hidden]`, plus for PixArtMS the micro-condition embeddings of the
    /// image size `[B, 2]` (height, width) and aspect ratio `[B, 1]`, each value through the
    /// sinusoidal features and its own 2-layer MLP.
    fn time_embedding(&self, timestep: &Tensor, micro: Option<(&Tensor, &Tensor)>, dtype: DType) -> Result<Tensor> {
        let features = |x: &Tensor| timestep_features(x, dtype);
        let t = self.adaln_single.timestep_embedder.forward(&features(timestep)?)?;
        let Some((res_embedder, ratio_embedder)) = &self.adaln_single.micro else {
            return Ok(t);
        };
        let (size, ratio) = micro.ok_or_else(|| {
            candle_core::Error::Msg("this PixArtMS model needs the image size and aspect ratio micro-conditions".into())
        })?;
        let b = timestep.dim(0)?;
        let size = res_embedder.forward(&features(&size.flatten_all()?)?)?.reshape((b, ()))?;
        let ratio = ratio_embedder.forward(&features(&ratio.flatten_all()?)?)?.reshape((b, ()))?;
        t + Tensor::cat(&[size, ratio], 1)?
    }

    /// Transformer block `i` of `x`: the fused op on CPU (f32/f64), composite ops elsewhere and in
    /// blocks that compress their keys and values.
    fn block(&self, i: usize, x: &Tensor, blocks: &Blocks) -> Result<Tensor> {
        match &blocks.fused {
            Some((ctx, key_bias))
                if self.transformer_blocks[i].kv_compress.is_none() && !self.transformer_blocks[i].has_adapters() =>
            {
                self.block_fused(i, x, ctx, blocks.y.dim(1)?, key_bias)
            }
            _ => self.block_composite(i, x, blocks),
        }
    }

    /// The linear layer at the diffusers module name `name` (`transformer_blocks.0.attn1.to_q`,
    /// `caption_projection.linear_1`, `adaln_single.linear`, `proj_out`, …).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut super::modules::Linear> {
        if let Some(rest) = name.strip_prefix("transformer_blocks.") {
            let (i, inner) = rest.split_once('.')?;
            return self.transformer_blocks.get_mut(i.parse::<usize>().ok()?)?.linear_mut(inner);
        }
        let a = &mut self.adaln_single;
        Some(match name {
            "caption_projection.linear_1" => &mut self.caption_projection.linear_1,
            "caption_projection.linear_2" => &mut self.caption_projection.linear_2,
            "adaln_single.linear" => &mut a.linear,
            "adaln_single.emb.timestep_embedder.linear_1" => &mut a.timestep_embedder.linear_1,
            "adaln_single.emb.timestep_embedder.linear_2" => &mut a.timestep_embedder.linear_2,
            "adaln_single.emb.resolution_embedder.linear_1" => &mut a.micro.as_mut()?.0.linear_1,
            "adaln_single.emb.resolution_embedder.linear_2" => &mut a.micro.as_mut()?.0.linear_2,
            "adaln_single.emb.aspect_ratio_embedder.linear_1" => &mut a.micro.as_mut()?.1.linear_1,
            "adaln_single.emb.aspect_ratio_embedder.linear_2" => &mut a.micro.as_mut()?.1.linear_2,
            "proj_out" => &mut self.final_layer.proj_out,
            _ => return None,
        })
    }

    /// Whether any block compresses its keys and values (PixArt-Σ's `kv_compress`).
    pub fn has_kv_compress(&self) -> bool {
        self.transformer_blocks.iter().any(|b| b.kv_compress.is_some())
    }

    fn block_fused(&self, i: usize, x: &Tensor, ctx: &Tensor, l: usize, key_bias: &[f64]) -> Result<Tensor> {
        let c = &self.config;
        let block = &self.transformer_blocks[i];
        let dims = (c.num_attention_heads, c.norm_eps, l, block.mlp_width());
        pixart_block(x, ctx, &block.packed()?, dims, key_bias.to_vec())
    }

    /// Block `i` from composite ops (any device and dtype).
    fn block_composite(&self, i: usize, x: &Tensor, blocks: &Blocks) -> Result<Tensor> {
        let (y, bias) = (&blocks.y, &blocks.bias);
        let c = &self.config;
        let block = &self.transformer_blocks[i];
        let heads = c.num_attention_heads;
        let mods = block.scale_shift_table.unsqueeze(0)?.broadcast_add(&blocks.t0)?;
        let m = |j: usize| mods.narrow(1, j, 1);
        let (shift_msa, scale_msa, gate_msa) = (m(0)?, m(1)?, m(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (m(3)?, m(4)?, m(5)?);
        let h = modulate(&layer_norm(x, c.norm_eps)?, &shift_msa, &scale_msa)?;
        let a = &block.attn;
        let attended = match &block.kv_compress {
            None => a.forward(&h, &h, heads, None)?,
            Some(kv) => {
                let (k, v) =
                    (kv.compress(&a.to_k.forward(&h)?, blocks.grid)?, kv.compress(&a.to_v.forward(&h)?, blocks.grid)?);
                a.to_out.forward(&super::ops::attention(&a.to_q.forward(&h)?, &k, &v, heads, None)?)?
            }
        };
        let x = gated_add(x, &attended, &gate_msa)?;
        let x = (&x + block.cross_attn.forward(&x, y, heads, Some(bias))?)?;
        let h = modulate(&layer_norm(&x, c.norm_eps)?, &shift_mlp, &scale_mlp)?;
        gated_add(&x, &block.mlp.forward(&h)?, &gate_mlp)
    }

    /// The model output `[B, out_channels, H, W]` for latents `[B, C, H, W]`, timesteps `[B]`,
    /// captions `[B, L, caption_channels]` with their 0/1 mask `[B, L]`, and for PixArtMS the
    /// micro-conditions (image size `[B, 2]`, aspect ratio `[B, 1]`).
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        caption: &Tensor,
        mask: &Tensor,
        micro: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (caption, mask) = trim_caption_padding(caption, mask)?;
        self.blocks_and_head(&self.embed(latents, timestep, &caption, &mask, micro)?)
    }

    /// Blocks `range` over `x`, reading the rest of [`PixArt::embed`]'s output `e`.
    pub(crate) fn blocks_range(&self, e: &Embedded, x: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor> {
        let y = e.y.as_ref().ok_or_else(|| candle_core::Error::Msg("the projected caption is missing".into()))?;
        let blocks = Blocks::new(x, y, &e.t0, &e.bias, (e.grid.1, e.grid.2))?;
        let mut x = x.clone();
        for i in range {
            x = self.block(i, &x, &blocks)?;
        }
        Ok(x)
    }

    /// The blocks and the head over [`PixArt::embed`]'s output: the model output.
    pub(crate) fn blocks_and_head(&self, e: &Embedded) -> Result<Tensor> {
        let y = e.y.as_ref().ok_or_else(|| candle_core::Error::Msg("the projected caption is missing".into()))?;
        let blocks = Blocks::new(&e.x, y, &e.t0, &e.bias, (e.grid.1, e.grid.2))?;
        let mut x = e.x.clone();
        for i in 0..self.config.num_layers {
            x = self.block(i, &x, &blocks)?;
        }
        self.head(&x, &e.t_emb, e.grid)
    }

    /// Everything before the blocks: patch embedding with positions, timestep (and micro-condition)
    /// embedding, the adaLN input, the caption projection and the caption key bias.
    pub(crate) fn embed(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        caption: &Tensor,
        mask: &Tensor,
        micro: Option<(&Tensor, &Tensor)>,
    ) -> Result<Embedded> {
        let mut e = self.embed_latents(latents, timestep, mask, micro)?;
        e.y = Some(self.project_caption(caption)?);
        Ok(e)
    }

    /// [`PixArt::embed`] without the caption projection (`y` is `None`).
    pub(crate) fn embed_latents(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        mask: &Tensor,
        micro: Option<(&Tensor, &Tensor)>,
    ) -> Result<Embedded> {
        let c = &self.config;
        let (b, ch, hh, ww) = latents.dims4()?;
        let p = c.patch_size;
        let (gh, gw) = (hh / p, ww / p);
        let hidden = c.hidden();
        // Patch embedding: the stride-p convolution as a matmul over flattened patches.
        let patches =
            latents.reshape((b, ch, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, gh * gw, ch * p * p))?;
        let conv_w = self.pos_embed.weight.reshape((hidden, ch * p * p))?;
        let x = linear(&patches, &conv_w, &self.pos_embed.bias)?;
        let x = x.broadcast_add(&self.positions(gh, gw, x.dtype(), latents.device())?)?;

        let t_emb = self.time_embedding(timestep, micro, x.dtype())?;
        let t0 = self.adaln_single.linear.forward(&t_emb.silu()?)?.reshape((b, 6, hidden))?;
        let bias = mask.to_dtype(x.dtype())?.affine(10000.0, -10000.0)?;
        Ok(Embedded { x, patches, t_emb, t0, y: None, bias, grid: (b, gh, gw) })
    }

    /// The caption projection (`y_embedder`): `gelu(caption W1ᵀ + b1) W2ᵀ + b2`, `[B, L, C]`.
    pub(crate) fn project_caption(&self, caption: &Tensor) -> Result<Tensor> {
        self.caption_projection.forward(caption)
    }

    /// The final layer (adaLN-modulated norm and projection) and unpatchify of the blocks' output.
    pub(crate) fn head(&self, x: &Tensor, t_emb: &Tensor, (b, gh, gw): (usize, usize, usize)) -> Result<Tensor> {
        let c = &self.config;
        let p = c.patch_size;
        let f = &self.final_layer;
        let mods = f.scale_shift_table.unsqueeze(0)?.broadcast_add(&t_emb.unsqueeze(1)?)?;
        let x = modulate(&layer_norm(x, c.norm_eps)?, &mods.narrow(1, 0, 1)?, &mods.narrow(1, 1, 1)?)?;
        let x = f.proj_out.forward(&x)?;
        // Unpatchify: (B, gh·gw, p·p·C) → (B, C, gh·p, gw·p).
        x.reshape((b, gh, gw, p, p, c.out_channels))?.permute((0, 5, 1, 3, 2, 4))?.reshape((
            b,
            c.out_channels,
            gh * p,
            gw * p,
        ))
    }

    /// Block `i`'s weights in the order of [`BLOCK_PARAMS`].
    pub(crate) fn block_weights(&self, i: usize) -> Result<Vec<&Tensor>> {
        Ok(self.transformer_blocks[i].weights().to_vec())
    }

    /// The width of block `i`'s MLP.
    pub(crate) fn mlp_width(&self, i: usize) -> Result<usize> {
        Ok(self.transformer_blocks[i].mlp_width())
    }
}

/// The inputs of the blocks and the head: tokens `x` `[B, N, C]` (from the flattened latent patches
/// `[B, N, C_in·p·p]`), the timestep embedding `t_emb`
/// `[B, C]`, the adaLN input `t0` `[B, 6, C]`, the projected caption `y` `[B, L, C]` (`None` where
/// the caller projects it itself), the caption key bias `[B, L]` and (batch, grid height, grid width).
pub(crate) struct Embedded {
    pub x: Tensor,
    pub patches: Tensor,
    pub t_emb: Tensor,
    pub t0: Tensor,
    pub y: Option<Tensor>,
    pub bias: Tensor,
    pub grid: (usize, usize, usize),
}

/// What every block reads: the projected caption `y` `[B, L, C]`, the adaLN input `t0` `[B, 6, C]`,
/// the caption key bias `[B, L]`, and for the fused op the first two joined plus the bias as values.
struct Blocks {
    y: Tensor,
    t0: Tensor,
    bias: Tensor,
    fused: Option<(Tensor, Vec<f64>)>,
    /// The latent token grid (rows, columns).
    grid: (usize, usize),
}

impl Blocks {
    fn new(x: &Tensor, y: &Tensor, t0: &Tensor, bias: &Tensor, grid: (usize, usize)) -> Result<Self> {
        let fused = if fused_block(x) { Some(fused_inputs(y, t0, bias)?) } else { None };
        Ok(Blocks { y: y.clone(), t0: t0.clone(), bias: bias.clone(), fused, grid })
    }
}

/// What the fused blocks read besides `x`: `ctx` (`y` and `t0` flattened and joined) and the caption
/// key bias as values.
fn fused_inputs(y: &Tensor, t0: &Tensor, bias: &Tensor) -> Result<(Tensor, Vec<f64>)> {
    let ctx = Tensor::cat(&[y.flatten_all()?, t0.flatten_all()?], 0)?;
    Ok((ctx, key_bias_values(bias)?))
}

/// The caption `[B, L, ·]` and its 0/1 mask `[B, L]` cut after the last position any item attends
/// to. The positions cut are masked for every item: their attention weight underflows to exactly 0,
/// so they change no output and get no gradient, but they cost the caption projection, every block's
/// cross-attention key/value product and the scores (T5 captions padded to 120 tokens are mostly
/// padding). The official code skips each caption's own padding (xformers over the packed tokens).
/// Kept whole where an item has no valid position at all (its attention is then uniform over every
/// position, as in diffusers).
pub(crate) fn trim_caption_padding(caption: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let last = rows.iter().map(|r| r.iter().rposition(|&m| m != 0.0)).collect::<Option<Vec<_>>>();
    let keep = last.and_then(|l| l.into_iter().max()).map_or(mask.dim(1)?, |i| i + 1);
    if keep == mask.dim(1)? {
        return Ok((caption.clone(), mask.clone()));
    }
    Ok((caption.narrow(1, 0, keep)?, mask.narrow(1, 0, keep)?))
}

/// The caption key bias `[B, L]` as values (what the fused blocks take).
pub(crate) fn key_bias_values(bias: &Tensor) -> Result<Vec<f64>> {
    bias.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let d: f64 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let s: f64 = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        // The key bias's gradient is zero in exact arithmetic (softmax is shift-invariant): rounding only.
        d / s.max(1e-3)
    }

    /// The fused block op against the same block from composite ops (forward, and the gradient of
    /// every input and every one of the block's weights), in f64 with random weights everywhere.
    #[test]
    fn fused_block_matches_composite_ops_and_their_gradients() {
        let dev = Device::Cpu;
        let config = PixArtConfig {
            num_attention_heads: 3,
            attention_head_dim: 8,
            in_channels: 4,
            out_channels: 8,
            num_layers: 1,
            sample_size: 8,
            patch_size: 2,
            caption_channels: 16,
            interpolation_scale: None,
            norm_eps: 1e-6,
            kv_compress: None,
        };
        let base = crate::train::init::init(config.clone(), false, 5, 1, &dev).unwrap();
        let mut rng = Rng::new(7);
        let mut random =
            |dims: &[usize], std: f64| rng.normal_tensor(dims, std, &dev).unwrap().to_dtype(DType::F64).unwrap();
        let w = base.weights().iter().map(|(k, t)| (k.clone(), random(t.dims(), 0.3))).collect();
        let mut model = PixArt::from_weights(config, w).unwrap();
        let vars = model.trainable().unwrap();
        let (b, n, l, c) = (2, 16, 5, 24);
        let x = Var::from_tensor(&random(&[b, n, c], 1.0)).unwrap();
        let y = Var::from_tensor(&random(&[b, l, c], 1.0)).unwrap();
        let t0 = Var::from_tensor(&random(&[b, 6, c], 0.5)).unwrap();
        let mask: Vec<f64> = (0..b * l).map(|i| if i % l < 3 + i / l { 1.0 } else { 0.0 }).collect();
        let bias = Tensor::from_vec(mask, (b, l), &dev).unwrap().affine(10000.0, -10000.0).unwrap();
        let probe = random(&[b, n, c], 1.0);

        let blocks = Blocks::new(&x, &y, &t0, &bias, (4, 4)).unwrap();
        assert!(blocks.fused.is_some());
        let fused = model.block(0, &x, &blocks).unwrap();
        let composite = model.block_composite(0, &x, &blocks).unwrap();
        assert!(max_rel(&fused, &composite) < 1e-12, "forward differs by {}", max_rel(&fused, &composite));

        let gf = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&composite * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let mut checked = 0;
        let inputs = [("x", &x), ("y", &y), ("t0", &t0)];
        let weights = vars.iter().filter(|(k, _)| k.starts_with("transformer_blocks.0.")).map(|(k, v)| (k.as_str(), v));
        for (name, var) in inputs.into_iter().chain(weights) {
            let (a, e) = (gf.get(var.as_tensor()).unwrap(), gc.get(var.as_tensor()).unwrap());
            assert!(max_rel(a, e) < 1e-10, "{name}: gradient differs by {}", max_rel(a, e));
            checked += 1;
        }
        assert_eq!(checked, 3 + BLOCK_PARAMS.len());
    }
}
