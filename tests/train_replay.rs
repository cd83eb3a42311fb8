//! The whole trainer replayed against PixArt-α's training loop in PyTorch
//! (`tools/golden/train_replay.py`: diffusers' PixArtMS, the official IDDPM hybrid loss,
//! `clip_grad_norm_`, `torch.optim.AdamW` with diffusers' constant-with-warmup schedule, the
//! official EMA, the caption drop to the null caption), float64, 20 steps over recorded batches,
//! timesteps, noise and drop flags: pixforge's `Trainer` — the real step, on the fused CPU path,
//! on the autograd path and with activation checkpointing — gives every step's loss and gradient norm and the final weights and
//! EMA to 1e-9 relative; and the comparison fails when the loss's inputs, the clipping, the
//! schedule, the optimizer or the EMA is changed.

mod common;

use candle_core::{DType, Device, Tensor};
use pixforge::train::data::Batch;
use pixforge::train::model::{PixArt, PixArtConfig};
use pixforge::train::optim::OptimizerConfig;
use pixforge::train::schedule::{LrSchedule, LrShape};
use pixforge::train::step::Trainer;
use std::collections::HashMap;

const TOL: f64 = 1e-9;

struct Golden {
    t: HashMap<String, Tensor>,
    cfg: serde_json::Value,
}

fn golden() -> Golden {
    let dir = common::fixtures().join("golden");
    let t = candle_core::safetensors::load(dir.join("train_replay.safetensors"), &Device::Cpu).unwrap();
    let cfg = serde_json::from_str(&std::fs::read_to_string(dir.join("train_replay.json")).unwrap()).unwrap();
    Golden { t, cfg }
}

impl Golden {
    fn f(&self, key: &str) -> f64 {
        self.cfg[key].as_f64().unwrap_or_else(|| panic!("train_replay.json: {key}"))
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.t.get(key).unwrap_or_else(|| panic!("train_replay.safetensors: no {key}"))
    }

    fn record(&self, what: &str) -> Vec<f64> {
        self.tensor(&format!("record.{what}")).to_vec1::<f64>().unwrap()
    }

    /// The weights under `prefix.`, by their names.
    fn weights(&self, prefix: &str) -> HashMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.t.iter().filter_map(|(k, v)| Some((k.strip_prefix(&p)?.to_string(), v.clone()))).collect()
    }
}

/// What the replay changes, to show the comparison catches it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    None,
    /// Every timestep one later: other inputs to the loss.
    Timesteps,
    MaxGradNorm,
    NoWarmup,
    WeightDecay,
    EmaDecay,
}

/// The replay's largest relative differences from the reference: over every step's loss, gradient
/// norm and learning rate; and over the final weights and EMA (each tensor's difference against its
/// largest value).
/// How a replay runs.
#[derive(Clone, Copy)]
struct Run {
    autograd: bool,
    checkpoint_every: usize,
    change: Change,
    dtype: DType,
}

const PLAIN: Run = Run { autograd: false, checkpoint_every: 0, change: Change::None, dtype: DType::F64 };

fn replay(g: &Golden, run: Run) -> (f64, f64) {
    let Run { autograd, checkpoint_every, change, dtype } = run;
    // The per-step checks hold in f64; an f32 run is measured against the f64 reference.
    let exact = change == Change::None && dtype == DType::F64;
    let m = &g.cfg["model"];
    let u = |k: &str| m[k].as_u64().unwrap() as usize;
    let config = PixArtConfig {
        num_attention_heads: u("num_attention_heads"),
        attention_head_dim: u("attention_head_dim"),
        in_channels: u("in_channels"),
        out_channels: u("out_channels"),
        num_layers: u("num_layers"),
        sample_size: u("sample_size"),
        patch_size: u("patch_size"),
        caption_channels: u("caption_channels"),
        interpolation_scale: m["interpolation_scale"].as_f64(),
        norm_eps: 1e-6,
        kv_compress: None,
    };
    let init: HashMap<String, Tensor> =
        g.weights("init").into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect();
    let model = PixArt::from_weights(config, init).unwrap();
    let betas = &g.cfg["betas"];
    let adamw = OptimizerConfig {
        lr: g.f("lr"),
        beta1: betas[0].as_f64().unwrap(),
        beta2: betas[1].as_f64().unwrap(),
        eps: g.f("eps"),
        weight_decay: if change == Change::WeightDecay { 0.0 } else { g.f("weight_decay") },
        ..OptimizerConfig::default()
    };
    let ema_decay = if change == Change::EmaDecay { 0.8 } else { g.f("ema_decay") };
    let mut trainer = Trainer::new(model, adamw, ema_decay, 0).unwrap();
    trainer.autograd = autograd;
    trainer.checkpoint_every = checkpoint_every;
    let steps = g.f("steps") as usize;
    let draws: Vec<(Vec<usize>, Tensor)> = (0..steps)
        .map(|s| {
            let t = g.tensor(&format!("step{s:02}.t")).to_vec1::<f64>().unwrap();
            let shift = usize::from(change == Change::Timesteps);
            (t.iter().map(|&v| v as usize + shift).collect(), g.tensor(&format!("step{s:02}.noise")).clone())
        })
        .collect();
    let mut next = draws.into_iter();
    trainer.draws = Some(Box::new(move |_, _| next.next().ok_or_else(|| anyhow::anyhow!("no more recorded draws"))));
    let schedule = LrSchedule {
        lr: g.f("lr"),
        warmup_steps: if change == Change::NoWarmup { 0 } else { g.f("warmup_steps") as u64 },
        shape: LrShape::Constant,
        total_steps: steps as u64,
        sqrt_batch_scaling: false,
    };
    let max_norm = if change == Change::MaxGradNorm { 0.5 } else { g.f("max_grad_norm") };
    let (losses, norms, lrs) = (g.record("loss"), g.record("grad_norm"), g.record("lr"));
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    let mut worst = 0f64;
    for s in 0..steps {
        let step = |k: &str| g.tensor(&format!("step{s:02}.{k}")).to_dtype(dtype).unwrap();
        let drop: Vec<bool> =
            g.tensor(&format!("step{s:02}.drop")).to_vec1::<f64>().unwrap().iter().map(|&d| d > 0.5).collect();
        let batch = Batch {
            keys: vec![format!("{s}-0"), format!("{s}-1")],
            latents: step("latents"),
            caption: step("caption"),
            mask: step("mask"),
            img_hw: step("img_hw"),
            aspect_ratio: step("aspect_ratio"),
            drop,
            caption_sources: Vec::new(),
            bucket: "1.0".into(),
        };
        let lr = schedule.at(s as u64, 2);
        let log = trainer.step(&batch, lr, max_norm).unwrap();
        assert!(!log.skipped, "step {s}");
        worst = worst.max(rel(log.loss, losses[s])).max(rel(log.grad_norm, norms[s]));
        worst = worst.max((lr - lrs[s]).abs() / g.f("lr"));
        if exact {
            assert!(rel(log.loss, losses[s]) <= TOL, "step {s}: loss {} against {}", log.loss, losses[s]);
            assert!(rel(log.grad_norm, norms[s]) <= TOL, "step {s}: grad norm {} against {}", log.grad_norm, norms[s]);
        }
    }
    let compare = |got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>, what: &str| -> f64 {
        let mut worst = 0f64;
        for (name, w) in want {
            let t = got.get(name).unwrap_or_else(|| panic!("{what}: no {name}"));
            let t = t.to_dtype(DType::F64).unwrap();
            let diff =
                (&t - w).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            let size = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            let r = diff / size.max(1e-12);
            if exact {
                assert!(r <= TOL, "{what} {name}: differs by {diff} (largest {size})");
            }
            // Attention key biases get a gradient of exactly 0 (softmax ignores a shift shared by every
            // key), so in f32 AdamW scales rounding noise into full steps on them: left out there.
            if dtype == DType::F32 && name.ends_with("to_k.bias") {
                continue;
            }
            worst = worst.max(r);
        }
        worst
    };
    let weights = trainer.model.weights().clone();
    let final_worst = compare(&weights, &g.weights("final"), "final weights");
    (worst, final_worst.max(compare(&trainer.ema_weights(), &g.weights("ema"), "EMA")))
}

#[test]
fn twenty_steps_match_the_pytorch_loop_on_the_fused_path() {
    let g = golden();
    assert!(g.f("clipped_steps") >= 3.0 && g.f("clipped_steps") <= 17.0, "clipped and unclipped steps both");
    let worst = replay(&g, PLAIN);
    assert!(worst.0 <= TOL && worst.1 <= TOL, "{worst:?}");
}

#[test]
fn twenty_steps_match_the_pytorch_loop_on_the_autograd_path() {
    let g = golden();
    let worst = replay(&g, Run { autograd: true, ..PLAIN });
    assert!(worst.0 <= TOL && worst.1 <= TOL, "{worst:?}");
}

#[test]
fn twenty_steps_match_the_pytorch_loop_with_checkpointed_blocks() {
    let g = golden();
    for every in [1, 2] {
        let worst = replay(&g, Run { autograd: true, checkpoint_every: every, ..PLAIN });
        assert!(worst.0 <= TOL && worst.1 <= TOL, "segments of {every}: {worst:?}");
    }
}

/// In f32 (the CPU trainer's precision) the same 20 steps stay within 1e-5 of the f64 reference:
/// every step's loss and gradient norm, and the final weights and EMA but for the attention key
/// biases, whose exact gradient is 0 (measured: about 1e-6 and 5e-6).
#[test]
fn twenty_f32_steps_stay_near_the_f64_reference() {
    let g = golden();
    for autograd in [false, true] {
        let (steps, weights) = replay(&g, Run { autograd, dtype: DType::F32, ..PLAIN });
        eprintln!("f32, autograd {autograd}: steps {steps:e}, weights {weights:e}");
        assert!(steps <= 1e-5 && weights <= 1e-5, "autograd {autograd}: steps {steps}, weights {weights}");
    }
}

#[test]
fn the_replay_fails_when_a_part_of_the_recipe_changes() {
    let g = golden();
    for change in [Change::Timesteps, Change::MaxGradNorm, Change::NoWarmup, Change::WeightDecay, Change::EmaDecay] {
        let worst = replay(&g, Run { change, ..PLAIN });
        assert!(worst.0.max(worst.1) > 1e-6, "{change:?}: the replay still matches ({worst:?})");
    }
}
