//! Training LoRA / DoRA adapters (`[lora]` in the training config): the transformer's weights stay
//! frozen and only the adapters of the target modules are trained, held by the optimizer and the
//! EMA, and saved in peft's format (what `PeftModel.from_pretrained(transformer, dir)` loads, and
//! `pixforge sample --lora` / `export merge-lora` read back).
//!
//! Each step builds the adapted transformer from the frozen weights and the adapters as tracked
//! operations — `W + s·B·A`, for DoRA rescaled row by row to the magnitude over the sum's norm, the
//! norm held constant in the gradient as peft detaches it — so candle's autograd carries the
//! gradients to `A`, `B` and the magnitudes alone; with dropout, each adapted layer computes its
//! adapter beside it on the dropped-out input instead, as peft's layers do.

use super::model::PixArt;
use candle_core::{DType, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `[lora]`: the adapters to train.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraTrainConfig {
    /// Rank.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// The scaling's numerator (`s = alpha / rank`); default the rank.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Dropout on the adapters' input (peft's `lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// The modules adapted, by peft's rule (a diffusers module name equal to an entry or ending in
    /// `.{entry}`); default the attention's q, k, v and output projections.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    /// DoRA: a trained magnitude per output row.
    #[serde(default)]
    pub use_dora: bool,
    /// Scaling `alpha / √rank`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_rank() -> usize {
    16
}

fn default_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"].map(String::from).to_vec()
}

impl LoraTrainConfig {
    /// The scaling `s` of every adapted module.
    pub fn scaling(&self) -> f64 {
        let alpha = self.alpha.unwrap_or(self.rank as f64);
        if self.use_rslora {
            alpha / (self.rank as f64).sqrt()
        } else {
            alpha / self.rank as f64
        }
    }

    /// Checks the fields (named in the error).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.rank == 0 {
            anyhow::bail!("`lora.rank` must be at least 1, found 0");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!("`lora.dropout`: expected a probability in [0, 1), found {}", self.dropout);
        }
        if self.target_modules.is_empty() {
            anyhow::bail!("`lora.target_modules`: expected at least one module name");
        }
        Ok(())
    }

    /// The linear modules of `model` the adapters apply to (diffusers names, sorted).
    pub fn modules(&self, model: &PixArt) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = model
            .weights()
            .iter()
            .filter(|(_, t)| t.rank() == 2)
            .filter_map(|(k, _)| k.strip_suffix(".weight"))
            .filter(|m| self.target_modules.iter().any(|t| *m == t.as_str() || m.ends_with(&format!(".{t}"))))
            .map(String::from)
            .collect();
        out.sort();
        if out.is_empty() {
            anyhow::bail!(
                "`lora.target_modules` {:?} match no linear module of the transformer (e.g. to_q, attn2.to_k, ff.net.2)",
                self.target_modules
            );
        }
        Ok(out)
    }
}

/// The adapters' variable names of `module`: `lora_A.weight`, `lora_B.weight` (and DoRA's magnitude).
fn names(module: &str) -> [String; 3] {
    [format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"), format!("{module}.lora_magnitude_vector")]
}

/// Fresh adapters for `model` as peft initialises them: `A` Kaiming-uniform (bound `1/√in`), `B`
/// zero, the magnitudes the rows' norms of the frozen weight; by name, sorted.
pub fn init_adapters(config: &LoraTrainConfig, model: &PixArt, seed: u64) -> anyhow::Result<Vec<(String, Var)>> {
    let mut rng = crate::rng::Rng::new(seed ^ 0x10_7A);
    let mut vars = Vec::new();
    for module in config.modules(model)? {
        let w = &model.weights()[&format!("{module}.weight")];
        let (out, inp) = w.dims2()?;
        let dev = w.device();
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..config.rank * inp).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
        let [na, nb, nm] = names(&module);
        vars.push((na, Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), dev)?)?));
        vars.push((nb, Var::from_tensor(&Tensor::zeros((out, config.rank), DType::F32, dev)?)?));
        if config.use_dora {
            let norm = w.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?;
            vars.push((nm, Var::from_tensor(&norm)?));
        }
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// `model` with the adapters `adapters` (by variable name) applied as tracked operations (gradients
/// reach the adapters; the frozen weights are untouched): merged into the weights, or — for a
/// training step (`dropout_seed`) with dropout — computed beside each layer, as peft's layers do,
/// with dropout masks drawn from the seed.
pub fn adapted(
    config: &LoraTrainConfig,
    model: &PixArt,
    adapters: &HashMap<String, Tensor>,
    dropout_seed: Option<u64>,
) -> anyhow::Result<PixArt> {
    match dropout_seed {
        Some(seed) if config.dropout > 0.0 => beside(config, model, adapters, seed),
        _ => merged(config, model, adapters),
    }
}

/// The adapters computed beside each adapted layer, with dropout (seeded per module from `seed`).
pub fn beside(
    config: &LoraTrainConfig,
    model: &PixArt,
    adapters: &HashMap<String, Tensor>,
    seed: u64,
) -> anyhow::Result<PixArt> {
    let mut out = PixArt::from_weights(model.config.clone(), model.weights().clone())?;
    for module in config.modules(model)? {
        let [na, nb, nm] = names(&module);
        let get = |n: &str| adapters.get(n).cloned().ok_or_else(|| anyhow::anyhow!("adapter `{n}` missing"));
        let adapter = super::modules::LinearAdapter {
            a: get(&na)?,
            b: get(&nb)?,
            magnitude: if config.use_dora { Some(get(&nm)?) } else { None },
            scale: config.scaling(),
            dropout: config.dropout,
            seed: seed ^ crate::rng::Rng::new(fnv(&module)).next_u64(),
        };
        let layer = out
            .linear_mut(&module)
            .ok_or_else(|| anyhow::anyhow!("{module}: not a linear layer of the transformer"))?;
        layer.adapter = Some(adapter);
    }
    Ok(out)
}

/// FNV-1a of a name (a module's own dropout stream).
fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The adapters merged into the weights (no dropout).
fn merged(config: &LoraTrainConfig, model: &PixArt, adapters: &HashMap<String, Tensor>) -> anyhow::Result<PixArt> {
    let mut w = model.weights().clone();
    let s = config.scaling();
    for module in config.modules(model)? {
        let [na, nb, nm] = names(&module);
        let get = |n: &str| adapters.get(n).ok_or_else(|| anyhow::anyhow!("adapter `{n}` missing"));
        let key = format!("{module}.weight");
        let magnitude = if config.use_dora { Some(get(&nm)?) } else { None };
        let merged = super::lora::merged_weight(&w[&key], get(&na)?, get(&nb)?, magnitude, s)?;
        w.insert(key, merged);
    }
    Ok(PixArt::from_weights(model.config.clone(), w)?)
}

/// The fields and values `adapter_config.json` gets (the fields peft 0.21 writes, with this
/// adapter's values).
fn peft_config(config: &LoraTrainConfig) -> serde_json::Value {
    serde_json::json!({
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
        "auto_mapping": {"base_model_class": "PixArtTransformer2DModel",
                         "parent_library": "diffusers.models.transformers.pixart_transformer_2d"},
        "base_model_name_or_path": null, "bias": "none", "corda_config": null, "ensure_weight_tying": false,
        "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
        "init_lora_weights": true, "kasa_config": null, "layer_replication": null, "layers_pattern": null,
        "layers_to_transform": null, "loftq_config": {}, "lora_alpha": config.alpha.unwrap_or(config.rank as f64),
        "lora_bias": false, "lora_dropout": config.dropout, "lora_ga_config": null, "megatron_config": null,
        "megatron_core": "megatron.core", "modules_to_save": null, "monteclora_config": null, "peft_type": "LORA",
        "peft_version": "0.21.2", "qalora_group_size": 16, "r": config.rank, "rank_pattern": {}, "revision": null,
        "target_modules": config.target_modules, "target_parameters": null, "task_type": null,
        "trainable_token_indices": null, "use_bdlora": null, "use_dora": config.use_dora, "use_qalora": false,
        "use_rslora": config.use_rslora, "velora_config": null,
    })
}

/// Writes `adapters` (by variable name) as a peft adapter folder `dir` (`adapter_config.json` +
/// `adapter_model.safetensors`, keys prefixed `base_model.model.` as `PeftModel.save_pretrained`
/// writes them), each file atomically.
pub fn save_peft(config: &LoraTrainConfig, adapters: &BTreeMap<String, Tensor>, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let tensors: HashMap<String, Tensor> =
        adapters.iter().map(|(k, t)| (format!("base_model.model.{k}"), t.clone())).collect();
    let file = dir.join("adapter_model.safetensors");
    let tmp = crate::shards::temp_path(&file);
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &file)?;
    let text = serde_json::to_string_pretty(&peft_config(config))?;
    crate::shards::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())?;
    Ok(())
}

/// Reads the adapter tensors of a peft folder written by [`save_peft`], by variable name.
pub fn load_peft(dir: &Path, device: &candle_core::Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let file = dir.join("adapter_model.safetensors");
    let t = candle_core::safetensors::load(&file, device).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(t.into_iter().map(|(k, v)| (k.strip_prefix("base_model.model.").unwrap_or(&k).to_string(), v)).collect())
}
