//! LLaVA-1.5 (`LlavaForConditionalGeneration`) and LLaVA-1.6 (`LlavaNextForConditionalGeneration`)
//! from a llava-hf folder, built from candle-transformers' CLIP vision transformer and Llama: the
//! tower's hidden state at `vision_feature_layer` (CLS dropped with strategy `default`), the projector
//! (linear, activation, linear), for LLaVA-1.6 the tiles' features laid out as one grid, unpadded and
//! closed by `image_newline` on each row after the overview's; and the Llama run on the prompt's
//! embeddings with the image features in place of the image tokens.
//!
//! transformers counts hidden states from the embeddings' output (`hidden_states[-2]` is the output of
//! the second-to-last layer); the tower is built with just the layers that feature needs.

use super::config::LlavaConfig;
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::vision_model::ClipVisionTransformer;
use candle_transformers::models::llama::{Cache, Llama};
use std::path::{Path, PathBuf};

/// A loaded LLaVA-1.5 model.
pub struct Llava {
    vision: ClipVisionTransformer,
    proj1: Linear,
    proj2: Linear,
    llama: Llama,
    image_newline: Option<Tensor>,
    /// The parsed `config.json`.
    pub config: LlavaConfig,
    llama_config: candle_transformers::models::llama::Config,
    device: Device,
    dtype: DType,
}

fn linear(vb: &VarBuilder, name: &str, din: usize, dout: usize, bias: bool) -> candle_core::Result<Linear> {
    let vb = vb.pp(name);
    let w = vb.get((dout, din), "weight")?;
    let b = if bias { Some(vb.get(dout, "bias")?) } else { None };
    Ok(Linear::new(w, b))
}

impl Llava {
    /// Loads the model in `dir` (`config.json`, `model.safetensors` or its sharded index) with weights
    /// as `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let cfg_path = dir.join("config.json");
        let config: LlavaConfig = crate::hub::read_config(&cfg_path)?;
        config.check(&cfg_path)?;
        let files = crate::hub::weight_files(dir, "model")?;
        let weights = crate::hub::Weights::open(&files)?;
        let names = std::sync::Arc::new(llava_names(&weights, &files)?);
        check_sizes(&config, &cfg_path, &weights, &names)?;
        for (name, shape) in expected_tensors(&config, &cfg_path)? {
            weights.check(&stored_name(&name, &names), Some(&shape))?;
        }
        let vb = weights.var_builder(dtype, device).rename_f(move |name: &str| stored_name(name, &names));
        let err = |part: &str, e: candle_core::Error| {
            anyhow::anyhow!("{}: cannot load the {part} ({e}); expected llava-hf tensor names", dir.display())
        };
        let v = &config.vision_config;
        let layer = config.feature_layer(&cfg_path)?;
        // Only the layers up to the selected one are built.
        let vision_cfg = v.clip((v.num_hidden_layers as i64 + 1 + layer) as usize);
        // candle draws a random CLS embedding when the checkpoint has none: refuse that instead.
        vb.get(v.hidden_size, "vision_tower.vision_model.embeddings.class_embedding")
            .map_err(|e| err("vision tower's CLS embedding", e))?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_tower.vision_model"), &vision_cfg)
            .map_err(|e| err("vision tower (vision_tower.vision_model.*)", e))?;
        let h = config.text_config.hidden_size;
        let bias = config.multimodal_projector_bias;
        let proj1 = linear(&vb, "multi_modal_projector.linear_1", v.hidden_size, h, bias)
            .map_err(|e| err("projector (multi_modal_projector.linear_1)", e))?;
        let proj2 = linear(&vb, "multi_modal_projector.linear_2", h, h, bias)
            .map_err(|e| err("projector (multi_modal_projector.linear_2)", e))?;
        let llama_config = config.llama();
        let llama = Llama::load(vb.pp("language_model"), &llama_config)
            .map_err(|e| err("language model (language_model.model.*, language_model.lm_head)", e))?;
        let image_newline = if config.is_next() {
            Some(vb.get(h, "image_newline").map_err(|e| err("image_newline (LLaVA-1.6)", e))?)
        } else {
            None
        };
        Ok(Self { vision, proj1, proj2, llama, image_newline, config, llama_config, device: device.clone(), dtype })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projected features `[n, tokens per patch, hidden]` of patches `[n, 3, S, S]`.
    pub fn image_features(&self, pixels: &Tensor) -> anyhow::Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        let states = self.vision.output_hidden_states(&pixels)?;
        // The list ends with the pooled output; the layer before it is the selected one.
        let x = &states[states.len() - 2];
        let x = if self.config.vision_feature_select_strategy == "default" { x.i((.., 1..))? } else { x.clone() };
        let x = self.proj1.forward(&x)?;
        let x = match self.config.projector_hidden_act.as_str() {
            "gelu" => x.gelu_erf()?,
            "gelu_pytorch_tanh" => x.gelu()?,
            "quick_gelu" => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
            _ => x.silu()?,
        };
        Ok(self.proj2.forward(&x)?)
    }

    /// Each image's features `[tokens, hidden]`: its patches `[p, 3, S, S]` and original (h, w),
    /// the towers of all images run as one batch.
    pub fn features(&self, images: &[(Tensor, (usize, usize))]) -> anyhow::Result<Vec<Tensor>> {
        let all = Tensor::cat(&images.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), 0)?;
        let feats = self.image_features(&all)?;
        let mut out = Vec::with_capacity(images.len());
        let mut start = 0;
        for (pixels, size) in images {
            let p = pixels.dim(0)?;
            let f = feats.narrow(0, start, p)?;
            start += p;
            out.push(match &self.image_newline {
                None => f.flatten(0, 1)?,
                Some(newline) => self.pack(&f, *size, newline)?,
            });
        }
        Ok(out)
    }

    /// Patches of an image of `(h, w)`: 1 for LLaVA-1.5; the overview and the tiles for LLaVA-1.6.
    pub fn patches_for(&self, size: (usize, usize)) -> usize {
        if !self.config.is_next() {
            return 1;
        }
        let s = self.config.vision_config.image_size;
        let (bh, bw) = super::processor::select_best_resolution(size, &self.config.pinpoints());
        1 + (bh / s) * (bw / s)
    }

    /// LLaVA-1.6's `pack_image_features` for one image: the overview's features, then the tiles'
    /// as one grid, unpadded to the image's aspect, each row closed by `image_newline`.
    fn pack(&self, f: &Tensor, size: (usize, usize), newline: &Tensor) -> anyhow::Result<Tensor> {
        let base = f.get(0)?;
        let hidden = f.dim(2)?;
        if f.dim(0)? == 1 {
            return Ok(Tensor::cat(&[base, newline.unsqueeze(0)?], 0)?);
        }
        let v = &self.config.vision_config;
        let side = v.image_size / v.patch_size;
        let (bh, bw) = super::processor::select_best_resolution(size, &self.config.pinpoints());
        let (nph, npw) = (bh / v.image_size, bw / v.image_size);
        if nph * npw + 1 != f.dim(0)? {
            anyhow::bail!("the image has {} patches, expected {} for its size {size:?}", f.dim(0)?, nph * npw + 1);
        }
        let grid = f
            .narrow(0, 1, nph * npw)?
            .reshape((nph, npw, side, side, hidden))?
            .permute((4, 0, 2, 1, 3))?
            .reshape((hidden, nph * side, npw * side))?;
        let (rows, cols) = super::processor::unpadded_grid(size, (nph * side, npw * side));
        let grid = grid.narrow(1, (nph * side - rows) / 2, rows)?.narrow(2, (npw * side - cols) / 2, cols)?;
        let nl = newline.reshape((hidden, 1, 1))?.broadcast_as((hidden, rows, 1))?;
        let grid = Tensor::cat(&[grid, nl], 2)?.reshape((hidden, rows * (cols + 1)))?.t()?;
        Ok(Tensor::cat(&[base, grid], 0)?)
    }

    /// The language model's input embeddings `[b, L, hidden]` for token rows of equal length, each
    /// run of image tokens replaced by its image's features (`features[i]`, `[tokens, hidden]`, for
    /// row `i`).
    pub fn input_embeddings(&self, ids: &[Vec<u32>], features: &[Tensor]) -> anyhow::Result<Tensor> {
        let image_token = self.config.image_token_index;
        let mut rows = Vec::with_capacity(ids.len());
        for (i, row) in ids.iter().enumerate() {
            let n_feat = features[i].dim(0)?;
            let n_img = row.iter().filter(|&&t| t == image_token).count();
            if n_img != n_feat {
                anyhow::bail!(
                    "prompt {i} has {n_img} image tokens (id {image_token}) but the image has {n_feat} features"
                );
            }
            let safe: Vec<u32> = row.iter().map(|&t| if t == image_token { 0 } else { t }).collect();
            let emb = self.llama.embed(&Tensor::new(safe.as_slice(), &self.device)?)?;
            let mut parts = Vec::new();
            let mut start = 0;
            let mut used = 0;
            while start < row.len() {
                let is_img = row[start] == image_token;
                let end = (start..row.len()).find(|&j| (row[j] == image_token) != is_img).unwrap_or(row.len());
                parts.push(if is_img {
                    let p = features[i].i(used..used + end - start)?;
                    used += end - start;
                    p
                } else {
                    emb.i(start..end)?
                });
                start = end;
            }
            rows.push(Tensor::cat(&parts, 0)?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// A fresh key/value cache for one generation.
    pub fn new_cache(&self) -> anyhow::Result<Cache> {
        Ok(Cache::new(true, self.dtype, &self.llama_config, &self.device)?)
    }

    /// The next-token logits `[b, vocab]` (f32) after `embeddings` `[b, L, hidden]` placed at
    /// position `pos` (the cache holds the positions before it).
    pub fn step(&self, embeddings: &Tensor, pos: usize, cache: &mut Cache) -> anyhow::Result<Tensor> {
        Ok(self.llama.forward_input_embed(embeddings, pos, cache)?.to_dtype(DType::F32)?)
    }

    /// The embeddings `[b, 1, hidden]` of one token per row.
    pub fn embed_tokens(&self, tokens: &[u32]) -> anyhow::Result<Tensor> {
        let t = Tensor::new(tokens, &self.device)?.unsqueeze(D::Minus1)?;
        Ok(self.llama.embed(&t)?)
    }

    /// The longest sequence the language model takes.
    pub fn max_positions(&self) -> usize {
        self.llama_config.max_position_embeddings
    }
}

/// The config's sizes against the tensors that carry them, so that a field left at transformers'
/// default (or wrong) is named rather than found later as a tensor of the wrong shape.
fn check_sizes(
    config: &LlavaConfig,
    cfg_path: &Path,
    weights: &crate::hub::Weights,
    names: &std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let (t, v) = (&config.text_config, &config.vision_config);
    let checks: [(&str, usize, &str, usize); 4] = [
        ("text_config.hidden_size", t.hidden_size, "language_model.model.embed_tokens.weight", 1),
        ("text_config.vocab_size", t.vocab_size, "language_model.model.embed_tokens.weight", 0),
        ("vision_config.hidden_size", v.hidden_size, "vision_tower.vision_model.embeddings.class_embedding", 0),
        ("vision_config.patch_size", v.patch_size, "vision_tower.vision_model.embeddings.patch_embedding.weight", 2),
    ];
    for (field, value, tensor, dim) in checks {
        let stored = stored_name(tensor, names);
        let Some((shape, _)) = weights.info(&stored) else {
            let dir = cfg_path.parent().unwrap_or(cfg_path);
            anyhow::bail!("{}: tensor `{tensor}` is missing (it carries {field})", dir.display());
        };
        if shape.get(dim) != Some(&value) {
            anyhow::bail!(
                "{}: {field} is {value}, but tensor `{stored}` in {} has shape {shape:?} (a field left out takes \
                 transformers' default)",
                cfg_path.display(),
                weights.file_of(&stored).map(|f| f.display().to_string()).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Every tensor the model is built from, in llava-hf's names, with its shape: checked before any
/// is loaded (candle-transformers' Llama loader panics on a missing one).
fn expected_tensors(config: &LlavaConfig, cfg_path: &Path) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut linear = |name: String, o: usize, i: usize, bias: bool| {
        if bias {
            out.push((format!("{name}.bias"), vec![o]));
        }
        out.push((format!("{name}.weight"), vec![o, i]));
    };
    let (v, t) = (&config.vision_config, &config.text_config);
    let (vh, th) = (v.hidden_size, t.hidden_size);
    let tower = "vision_tower.vision_model";
    let layers = (v.num_hidden_layers as i64 + 1 + config.feature_layer(cfg_path)?).max(0) as usize;
    for i in 0..layers {
        let l = format!("{tower}.encoder.layers.{i}");
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(format!("{l}.self_attn.{p}"), vh, vh, true);
        }
        linear(format!("{l}.mlp.fc1"), v.intermediate_size, vh, true);
        linear(format!("{l}.mlp.fc2"), vh, v.intermediate_size, true);
    }
    let bias = config.multimodal_projector_bias;
    linear("multi_modal_projector.linear_1".into(), th, vh, bias);
    linear("multi_modal_projector.linear_2".into(), th, th, bias);
    let heads = t.num_attention_heads.max(1);
    let head_dim = t.head_dim.unwrap_or(th / heads);
    let kv = t.num_key_value_heads.unwrap_or(heads);
    for i in 0..t.num_hidden_layers {
        let l = format!("language_model.model.layers.{i}");
        linear(format!("{l}.self_attn.q_proj"), heads * head_dim, th, false);
        linear(format!("{l}.self_attn.k_proj"), kv * head_dim, th, false);
        linear(format!("{l}.self_attn.v_proj"), kv * head_dim, th, false);
        linear(format!("{l}.self_attn.o_proj"), th, heads * head_dim, false);
        linear(format!("{l}.mlp.gate_proj"), t.intermediate_size, th, false);
        linear(format!("{l}.mlp.up_proj"), t.intermediate_size, th, false);
        linear(format!("{l}.mlp.down_proj"), th, t.intermediate_size, false);
    }
    if !t.tie_word_embeddings {
        linear("language_model.lm_head".into(), t.vocab_size, th, false);
    }
    for i in 0..layers {
        let l = format!("{tower}.encoder.layers.{i}");
        for n in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{l}.{n}.weight"), vec![vh]));
            out.push((format!("{l}.{n}.bias"), vec![vh]));
        }
    }
    for i in 0..t.num_hidden_layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            out.push((format!("language_model.model.layers.{i}.{n}.weight"), vec![th]));
        }
    }
    let positions = (v.image_size / v.patch_size.max(1)).pow(2) + 1;
    out.extend([
        (format!("{tower}.embeddings.class_embedding"), vec![vh]),
        (format!("{tower}.embeddings.patch_embedding.weight"), vec![vh, v.num_channels, v.patch_size, v.patch_size]),
        (format!("{tower}.embeddings.position_embedding.weight"), vec![positions, vh]),
        (format!("{tower}.pre_layrnorm.weight"), vec![vh]),
        (format!("{tower}.pre_layrnorm.bias"), vec![vh]),
        ("language_model.model.embed_tokens.weight".into(), vec![t.vocab_size, th]),
        ("language_model.model.norm.weight".into(), vec![th]),
    ]);
    if config.is_next() {
        out.push(("image_newline".into(), vec![th]));
    }
    Ok(out)
}

/// The tensor names of a checkpoint, refused when it holds no LLaVA.
fn llava_names(weights: &crate::hub::Weights, files: &[PathBuf]) -> anyhow::Result<std::collections::HashSet<String>> {
    let out: std::collections::HashSet<String> = weights.names().map(str::to_string).collect();
    if !out.iter().any(|n| n.contains("language_model.")) {
        anyhow::bail!(
            "{}: no LLaVA tensors (expected language_model.model.* and vision_tower.vision_model.* as llava-hf has them)",
            files.first().map(|f| f.display().to_string()).unwrap_or_default()
        );
    }
    Ok(out)
}

/// The name under which the checkpoint stores tensor `name` (llava-hf's Hub names, which candle's
/// modules ask for): the same name, or its equivalent in the layouts transformers ≥ 4.52 writes
/// (`vision_tower.*` without `vision_model`, `model.language_model.*`, a top-level `lm_head`).
fn stored_name(name: &str, names: &std::collections::HashSet<String>) -> String {
    if names.contains(name) {
        return name.to_string();
    }
    let mut candidates = Vec::new();
    if let Some(rest) = name.strip_prefix("vision_tower.vision_model.") {
        candidates.push(format!("vision_tower.{rest}"));
        candidates.push(format!("model.vision_tower.vision_model.{rest}"));
        candidates.push(format!("model.vision_tower.{rest}"));
    } else if let Some(rest) = name.strip_prefix("language_model.model.") {
        candidates.push(format!("model.language_model.{rest}"));
    } else if name == "language_model.lm_head.weight" {
        candidates.push("lm_head.weight".into());
    } else if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
        candidates.push(format!("model.multi_modal_projector.{rest}"));
    }
    candidates.into_iter().find(|c| names.contains(c)).unwrap_or_else(|| name.to_string())
}
