//! Training checkpoints: one folder per step under `checkpoints/`, written whole into a temporary
//! folder and renamed into place, so a killed run leaves either the complete checkpoint or none.
//!
//! ```text
//! checkpoints/step_0001000/
//!   model.safetensors      the weights, official PixArt keys (fused qkv / kv, y_embedder.y_embedding)
//!   ema.safetensors        the EMA weights, same keys
//!   config.json            the transformer's shape, a diffusers `PixArtTransformer2DModel` config
//!   adapter/, ema_adapter/ instead of the two above when training adapters (peft's format)
//!   optimizer.safetensors  the optimizer state: AdamW's moments (`adamw.m.{i}`, `adamw.v.{i}`) or CAME's
//!                          (`came.exp_avg.{i}`, …); parameter order = sorted names
//!   state.json             step, data cursor, generator states, counters, model shape, config digest
//! ```
//!
//! The folder, `model.safetensors` or `ema.safetensors` load in `pixforge sample --transformer` and
//! `export merge-lora` with no shape flags (the shape from `config.json`), and the two weight files in
//! the official code (`load_checkpoint` reads safetensors state dicts by key).

use super::model::{PixArt, PixArtConfig};
use super::step::Trainer;
use crate::shards::TEMP_MARKER;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The checkpoint folder's name inside the run directory.
pub const CHECKPOINTS: &str = "checkpoints";

/// Where training stands: everything besides tensors that an exact resume needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done (skipped ones included).
    pub step: u64,
    /// The epoch of the next batch.
    pub epoch: u64,
    /// The next batch's index in the epoch's batch list.
    pub batch: usize,
    /// The timestep/noise generator's state.
    pub trainer_rng: u64,
    /// The data generator's state (posterior draws, caption drop).
    pub data_rng: u64,
    /// With several processes, each rank's `[trainer_rng, data_rng]` (rank 0's are the two above).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_rngs: Vec<[u64; 2]>,
    /// Steps skipped for non-finite values, in all.
    pub skipped: usize,
    /// Skipped steps in a row at this point.
    pub skipped_in_a_row: usize,
    /// The f16 dynamic loss scale (mixed precision), if the run has one.
    #[serde(default)]
    pub loss_scale: Option<super::precision::LossScale>,
    /// Images trained on (micro-batches × batch size).
    pub images: u64,
    /// The transformer's shape.
    pub model: PixArtConfig,
    /// [`super::config::TrainConfig::digest`] of the run that wrote it.
    pub config_digest: String,
    /// The settings that digest covers ([`super::config::TrainConfig::digested`]), to name what
    /// changed when a resume is refused (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Where it was read from.
    pub dir: PathBuf,
    /// Its state.
    pub state: TrainState,
    /// The model (weights as trained); `None` for a run training adapters (its transformer is the
    /// config's, frozen).
    pub model: Option<PixArt>,
    /// The adapters as trained (peft's names), for a run training adapters.
    pub adapters: Option<HashMap<String, Tensor>>,
    /// The EMA weights by diffusers name (the adapters' by peft name).
    pub ema: HashMap<String, Tensor>,
    /// The optimizer's state.
    pub optimizer: HashMap<String, Tensor>,
}

/// A checkpoint's adapter folder (peft's format) of a run training adapters, and its EMA's.
pub const ADAPTER: &str = "adapter";
/// See [`ADAPTER`].
pub const EMA_ADAPTER: &str = "ema_adapter";

/// The folder of the checkpoint at `step`.
pub fn dir_of(run: &Path, step: u64) -> PathBuf {
    run.join(CHECKPOINTS).join(format!("step_{step:07}"))
}

/// The complete checkpoints of a run, oldest first, as (step, folder).
pub fn list(run: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let root = run.join(CHECKPOINTS);
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&root).map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step_").and_then(|s| s.parse::<u64>().ok()) {
            if e.path().join("state.json").exists() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes checkpoint folders a killed run left half-written.
pub fn remove_partial(run: &Path) -> anyhow::Result<usize> {
    let root = run.join(CHECKPOINTS);
    let mut n = 0;
    if root.exists() {
        for e in std::fs::read_dir(&root)? {
            let e = e?;
            if e.file_name().to_string_lossy().contains(TEMP_MARKER) {
                std::fs::remove_dir_all(e.path())?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

/// Writes the trainer's checkpoint at `state.step` and keeps the newest `keep_last` (0: all).
/// Nothing older is removed until the new one is complete.
pub fn save(run: &Path, trainer: &Trainer, state: &TrainState, keep_last: usize) -> anyhow::Result<PathBuf> {
    let dir = dir_of(run, state.step);
    let root = run.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", root.display()))?;
    let tmp = crate::shards::temp_path(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    match &trainer.lora {
        // Adapters: in peft's format, as trained and their EMA; the transformer is the config's.
        Some(lora) => {
            use super::lora_train::save_peft;
            save_peft(lora, &trainer.trained(), &tmp.join(ADAPTER))?;
            save_peft(
                lora,
                &trainer.ema_weights().into_iter().filter(|(k, _)| k.contains(".lora_")).collect(),
                &tmp.join(EMA_ADAPTER),
            )?;
        }
        None => {
            trainer.model.save_official(&tmp.join("model.safetensors"))?;
            trainer.ema_model()?.save_official(&tmp.join("ema.safetensors"))?;
            // The shape beside the weights, in diffusers' form: `sample`, `export` and the official
            // code need no shape flags.
            let config = serde_json::to_string_pretty(&trainer.model.diffusers_config()?)?;
            crate::shards::write_atomic(&tmp.join("config.json"), config.as_bytes())?;
        }
    }
    save_tensors(&trainer.optimizer.state()?, &tmp.join("optimizer.safetensors"))?;
    crate::shards::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    if dir.exists() {
        // Only when resuming from an older checkpoint by hand: the newer one of the same step goes.
        let old = crate::shards::temp_path(&dir.with_extension("old"));
        std::fs::rename(&dir, &old)?;
        std::fs::rename(&tmp, &dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, &dir)?;
    }
    if keep_last > 0 {
        let all = list(run)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
            std::fs::remove_dir_all(old).map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", old.display()))?;
        }
    }
    Ok(dir)
}

/// Reads the checkpoint in `dir`.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
    let state_file = dir.join("state.json");
    let text = std::fs::read_to_string(&state_file)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint ({e})", state_file.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint state: {e}", state_file.display()))?;
    let load_model = |name: &str| -> anyhow::Result<PixArt> {
        let c = &state.model;
        let m = PixArt::load_official(&dir.join(name), c.num_attention_heads, c.sample_size, device)?;
        // The run's own shape: its positions' interpolation, and a KV compression that learns
        // nothing (`ave`, `uniform`) and so leaves no trace in the weights.
        Ok(PixArt::from_weights(state.model.clone(), m.weights().clone())?)
    };
    let (model, adapters, ema) = if dir.join(ADAPTER).is_dir() {
        let read = |name: &str| super::lora_train::load_peft(&dir.join(name), device);
        (None, Some(read(ADAPTER)?), read(EMA_ADAPTER)?)
    } else {
        (Some(load_model("model.safetensors")?), None, load_model("ema.safetensors")?.weights().clone())
    };
    let opt_file = dir.join("optimizer.safetensors");
    let optimizer = candle_core::safetensors::load(&opt_file, device)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", opt_file.display()))?;
    Ok(Checkpoint { dir: dir.to_path_buf(), state, model, adapters, ema, optimizer })
}
