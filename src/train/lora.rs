//! LoRA and DoRA adapters in peft's format (`adapter_config.json` + `adapter_model.safetensors` with
//! the keys `PeftModel.save_pretrained` writes for a diffusers PixArt transformer:
//! `base_model.model.{module}.lora_A.weight` `[r, in]`, `….lora_B.weight` `[out, r]`, and for DoRA
//! `….lora_magnitude_vector` `[out]`), read and merged into a transformer's weights as peft's
//! `merge_and_unload` does: `W + s·B·A` with `s = lora_alpha / r` (`/ √r` with `use_rslora`), and for
//! DoRA that sum rescaled row by row to the magnitude, `m / ‖W + s·B·A‖ · (W + s·B·A)`. A merged
//! model computes what peft's adapted one does (its DoRA forward is the same product regrouped).

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The fields of peft's `adapter_config.json` that decide the weights (the others are ignored).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct AdapterConfig {
    /// `"LORA"`.
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// The scaling's numerator.
    pub lora_alpha: f64,
    /// DoRA: a learned magnitude per output row.
    #[serde(default)]
    pub use_dora: bool,
    /// Scaling `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Per-module ranks (by module-name suffix).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas (by module-name suffix).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Bias training: only `"none"` is read.
    #[serde(default = "no_bias")]
    pub bias: String,
    /// Weights stored transposed (Conv1D-style): not read.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Whole modules saved beside the adapter: not read.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

fn no_bias() -> String {
    "none".into()
}

/// One adapted module's tensors.
#[derive(Debug, Clone)]
pub struct ModuleAdapter {
    /// `lora_A.weight` `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight` `[out, r]`.
    pub b: Tensor,
    /// DoRA's `lora_magnitude_vector` `[out]`.
    pub magnitude: Option<Tensor>,
}

/// An adapter read from a peft folder.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Its folder.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: AdapterConfig,
    /// The adapted modules by diffusers name (`transformer_blocks.0.attn1.to_q`).
    pub modules: BTreeMap<String, ModuleAdapter>,
}

/// The prefix `PeftModel` puts before the model's own module names.
const PEFT_PREFIX: &str = "base_model.model.";

/// The value of `pattern` for `module` (a key equal to the module name or a suffix of it after a
/// dot, as peft matches them), if any.
fn pattern_value<T: Copy>(pattern: &BTreeMap<String, T>, module: &str) -> Option<T> {
    pattern.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).map(|(_, v)| *v)
}

impl Adapter {
    /// Reads a peft adapter folder; every tensor is checked against the others (A's rank against B's,
    /// the magnitude's length), errors naming the file and the key.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let config: AdapterConfig = crate::hub::read_config(&cfg_path)?;
        let fail = |what: String| anyhow::anyhow!("{}: {what}", cfg_path.display());
        if config.peft_type != "LORA" {
            return Err(fail(format!("`peft_type` is {:?}; expected \"LORA\" (LoRA or DoRA)", config.peft_type)));
        }
        if config.bias != "none"
            || config.fan_in_fan_out
            || config.modules_to_save.as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(fail(
                "expected `bias` \"none\", `fan_in_fan_out` false and no `modules_to_save` (trained biases, \
                 transposed weights and whole saved modules are not read)"
                    .into(),
            ));
        }
        let file = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the adapter's weights: {e}", file.display()))?;
        let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        for (key, t) in tensors {
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
            let (module, slot) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else if let Some(m) = name
                .strip_suffix(".lora_magnitude_vector")
                .or_else(|| name.strip_suffix(".lora_magnitude_vector.weight"))
            {
                (m, 2)
            } else {
                anyhow::bail!(
                    "{}: unexpected key {key:?} (expected {{module}}.lora_A.weight, .lora_B.weight or .lora_magnitude_vector)",
                    file.display()
                );
            };
            parts.entry(module.to_string()).or_default()[slot] = Some(t.to_dtype(DType::F32)?);
        }
        let mut modules = BTreeMap::new();
        for (module, [a, b, m]) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                anyhow::bail!("{}: module {module:?} lacks lora_A or lora_B", file.display());
            };
            let ((r, _), (out, rb)) = (a.dims2()?, b.dims2()?);
            if r != rb {
                anyhow::bail!("{}: {module}: lora_A has rank {r}, lora_B {rb}", file.display());
            }
            if config.use_dora != m.is_some() || m.as_ref().is_some_and(|m| m.dims() != [out]) {
                anyhow::bail!(
                    "{}: {module}: expected {} (use_dora = {})",
                    file.display(),
                    if config.use_dora { format!("a lora_magnitude_vector of {out}") } else { "no magnitude".into() },
                    config.use_dora
                );
            }
            modules.insert(module, ModuleAdapter { a, b, magnitude: m });
        }
        if modules.is_empty() {
            anyhow::bail!("{}: no adapted module", file.display());
        }
        Ok(Self { dir: dir.to_path_buf(), config, modules })
    }

    /// The scaling `s` of `module`: `alpha / r` (`alpha / √r` with rslora), with its pattern's rank
    /// and alpha where the config has them.
    pub fn scaling(&self, module: &str) -> f64 {
        let c = &self.config;
        let r = pattern_value(&c.rank_pattern, module).unwrap_or(c.r) as f64;
        let alpha = pattern_value(&c.alpha_pattern, module).unwrap_or(c.lora_alpha);
        if c.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Merges the adapter, its scaling times `scale`, into the weights `w` (diffusers names), as
    /// peft's `merge_and_unload`; computed in f64 and stored in each weight's dtype.
    pub fn merge_into(&self, w: &mut HashMap<String, Tensor>, scale: f64) -> anyhow::Result<()> {
        for (module, m) in &self.modules {
            let key = format!("{module}.weight");
            let weight = w.get(&key).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the adapter adapts {module:?}, which the transformer does not have",
                    self.dir.display()
                )
            })?;
            let (out, inp) = weight.dims2().map_err(|_| {
                anyhow::anyhow!(
                    "{}: {module}: a LoRA adapts linear weights; {key} is {:?}",
                    self.dir.display(),
                    weight.dims()
                )
            })?;
            if m.a.dim(1)? != inp || m.b.dim(0)? != out {
                anyhow::bail!(
                    "{}: {module}: lora_A {:?} and lora_B {:?} do not fit the weight {:?}",
                    self.dir.display(),
                    m.a.dims(),
                    m.b.dims(),
                    weight.dims()
                );
            }
            let f = |t: &Tensor| t.to_dtype(DType::F64);
            let magnitude = m.magnitude.as_ref().map(f).transpose()?;
            let s = self.scaling(module) * scale;
            let merged = merged_weight(&f(weight)?, &f(&m.a)?, &f(&m.b)?, magnitude.as_ref(), s)?;
            w.insert(key, merged.to_dtype(weight.dtype())?);
        }
        Ok(())
    }
}

/// A weight with its adapter merged in: `W + s·B·A`, and for DoRA that sum rescaled row by row to
/// `magnitude` over its norm (the norm held constant in a gradient, as peft detaches it).
pub fn merged_weight(
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    magnitude: Option<&Tensor>,
    s: f64,
) -> candle_core::Result<Tensor> {
    let summed = (weight + (b.matmul(a)? * s)?)?;
    match magnitude {
        None => Ok(summed),
        Some(m) => {
            let norm = summed.detach().sqr()?.sum_keepdim(1)?.sqrt()?;
            summed.broadcast_mul(&m.unsqueeze(1)?.broadcast_div(&norm)?)
        }
    }
}

/// `DIR` or `DIR:SCALE` (a command line's `--lora`): the folder and the scale (1 when absent; a
/// part after the last `:` that is not a number belongs to the path).
pub fn parse_lora_arg(arg: &str) -> Result<(PathBuf, f64), String> {
    match arg.rsplit_once(':').map(|(dir, s)| (dir, s.parse::<f64>())) {
        Some((dir, Ok(s))) if !dir.is_empty() && s.is_finite() => Ok((PathBuf::from(dir), s)),
        _ if arg.is_empty() => Err("--lora: expected DIR or DIR:SCALE".into()),
        _ => Ok((PathBuf::from(arg), 1.0)),
    }
}

/// `model` with the adapters `loras` (folder, scale) merged in, in order.
pub fn with_adapters(
    model: super::model::PixArt,
    loras: &[(PathBuf, f64)],
    device: &Device,
) -> anyhow::Result<super::model::PixArt> {
    if loras.is_empty() {
        return Ok(model);
    }
    let mut w = model.weights().clone();
    for (dir, scale) in loras {
        Adapter::load(dir, device)?.merge_into(&mut w, *scale)?;
    }
    Ok(super::model::PixArt::from_weights(model.config.clone(), w)?)
}
