//! `pixforge models`: tiny randomly initialised models in the real layouts, and a forward pass over
//! tensors from a safetensors file, so anyone can check parity against another implementation.

use crate::train::init::init;
use crate::train::model::{PixArt, PixArtConfig};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The T5 tokenizer of the tiny T5 (a Unigram model in T5's format, trained on public captions,
/// with T5's sentinels; `assets/t5/`).
pub const TINY_T5_TOKENIZER: &[u8] = include_bytes!("../assets/t5/tokenizer.json");

/// Model kinds `init-tiny` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ModelKind {
    /// The PixArt-α transformer (diffusers folder `transformer/` and official-key `official.safetensors`).
    Pixart,
    /// A T5 v1.1 encoder (gated GELU, T5's 32,128-token vocabulary) in the transformers layout
    /// (`text_encoder/`) with a T5-format tokenizer (`tokenizer/tokenizer.json`, trained on public
    /// captions, T5's sentinels).
    T5,
    /// An SD-style `AutoencoderKL` in the diffusers layout (`vae/`, 4 blocks: 8x downscale) that
    /// carries the image: its latents are the colours and luminance of each 8×8 patch, with a small
    /// posterior std and a `scaling_factor` that gives them unit variance; it decodes to the blurred image.
    Vae,
    /// A LLaVA-1.5 in the llava-hf layout (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json): CLIP ViT 56 px / patch 14, Llama 2 layers of 48, a 502-token BPE.
    /// Its captions are noise: it is untrained.
    Llava,
}

mod tiny_vae;

/// Unscaled latent per unit of colour of the tiny VAE `init-tiny --kind vae` writes.
pub use tiny_vae::GAIN as TINY_VAE_GAIN;

/// Every variable a candle model builds through `build` in a fresh `VarMap`, redrawn from our seeded
/// RNG (normal, std 0.05; norm weights 1, biases 0), saved as safetensors with their real names
/// (`rename` replaces parts of the names candle builds by those the real checkpoints use).
fn save_random<F>(path: &Path, seed: u64, rename: &[(&str, &str)], build: F) -> anyhow::Result<()>
where
    F: FnOnce(candle_nn::VarBuilder) -> candle_core::Result<()>,
{
    save_tensors(path, &random_tensors(seed, rename, build)?)
}

/// Saves `tensors` as safetensors at `path` (temp + rename).
fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
    let tmp = crate::shards::temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The variables of [`save_random`], by their real names.
fn random_tensors<F>(seed: u64, rename: &[(&str, &str)], build: F) -> anyhow::Result<HashMap<String, Tensor>>
where
    F: FnOnce(candle_nn::VarBuilder) -> candle_core::Result<()>,
{
    let map = candle_nn::VarMap::new();
    build(candle_nn::VarBuilder::from_varmap(&map, candle_core::DType::F32, &Device::Cpu))?;
    let mut rng = crate::rng::Rng::new(seed);
    let mut vars: Vec<(String, candle_core::Var)> =
        map.data().lock().expect("not poisoned").clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        let dims = var.dims().to_vec();
        let norm = name.contains("norm") || name.ends_with("layer_norm.weight");
        let t = if norm && name.ends_with(".weight") {
            Tensor::ones(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
        } else {
            rng.normal_tensor(&dims, 0.05, &Device::Cpu)?
        };
        var.set(&t)?;
    }
    let tensors: HashMap<String, Tensor> = vars
        .into_iter()
        .map(|(name, var)| {
            let name = rename.iter().fold(name, |n, (from, to)| n.replace(from, to));
            (name, var.as_tensor().clone())
        })
        .collect();
    Ok(tensors)
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    Ok(crate::shards::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?)
}

/// Marks the model folder `dir` as made up by `init-tiny` (see [`crate::hub::RANDOM_WEIGHTS_FILE`]).
fn mark_random(dir: &Path, kind: ModelKind, seed: u64) -> anyhow::Result<()> {
    let what = match kind {
        ModelKind::Vae => "weights made up to carry each 8x8 patch's colour (they decode to a blurred image)",
        _ => "random weights (normal, std 0.05), never trained",
    };
    write_json(
        &dir.join(crate::hub::RANDOM_WEIGHTS_FILE),
        &serde_json::json!({
            "written_by": "pixforge models init-tiny", "kind": format!("{kind:?}").to_lowercase(), "seed": seed,
            "weights": what,
        }),
    )
}

/// Writes a tiny model of `kind` into `out`.
pub fn init_tiny(kind: ModelKind, out: &Path, micro_conditions: bool, seed: u64) -> anyhow::Result<()> {
    init_tiny_weights(kind, out, micro_conditions, seed)?;
    let part = match kind {
        ModelKind::Pixart => out.join("transformer"),
        ModelKind::T5 => out.join("text_encoder"),
        ModelKind::Vae => out.join("vae"),
        ModelKind::Llava => out.to_path_buf(),
    };
    mark_random(&part, kind, seed)
}

fn init_tiny_weights(kind: ModelKind, out: &Path, micro_conditions: bool, seed: u64) -> anyhow::Result<()> {
    match kind {
        ModelKind::Pixart => {
            let config = PixArtConfig {
                num_attention_heads: 3,
                attention_head_dim: 8,
                in_channels: 4,
                out_channels: 8,
                num_layers: 2,
                sample_size: 8,
                patch_size: 2,
                caption_channels: 32,
                interpolation_scale: Some(1.0),
                norm_eps: 1e-6,
                kv_compress: None,
            };
            let model = init(config, micro_conditions, 120, seed, &Device::Cpu)?;
            model.save_diffusers(&out.join("transformer"))?;
            model.save_official(&out.join("official.safetensors"))?;
        }
        ModelKind::T5 => {
            let dir = out.join("text_encoder");
            std::fs::create_dir_all(&dir)?;
            let cfg = serde_json::json!({
                "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 32128, "d_model": 32,
                "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
                "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0,
                "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
                "tie_word_embeddings": false, "is_encoder_decoder": true, "pad_token_id": 0,
                "eos_token_id": 1, "decoder_start_token_id": 0,
            });
            let config: candle_transformers::models::t5::Config = serde_json::from_value(cfg.clone())?;
            // transformers keeps the tied input embedding as `shared.weight`.
            let shared = [("encoder.embed_tokens.weight", "shared.weight")];
            save_random(&dir.join("model.safetensors"), seed, &shared, |vb| {
                candle_transformers::models::t5::T5EncoderModel::load(vb, &config).map(|_| ())
            })?;
            write_json(&dir.join("config.json"), &cfg)?;
            // A pipeline's layout: the T5-format tokenizer in tokenizer/.
            std::fs::create_dir_all(out.join("tokenizer"))?;
            crate::shards::write_atomic(&out.join("tokenizer/tokenizer.json"), TINY_T5_TOKENIZER)?;
        }
        ModelKind::Llava => init_tiny_llava(out, seed)?,
        ModelKind::Vae => {
            let dir = out.join("vae");
            std::fs::create_dir_all(&dir)?;
            let cfg = serde_json::json!({
                "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [16, 16, 32, 32],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3,
                "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3,
                "sample_size": 64, "scaling_factor": tiny_vae::SCALING_FACTOR,
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
                "use_quant_conv": true, "use_post_quant_conv": true, "mid_block_add_attention": true,
            });
            write_json(&dir.join("config.json"), &cfg)?;
            // candle builds the attention under the old names when none exist yet; diffusers writes these.
            let attention =
                [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")];
            let mut tensors = random_tensors(seed, &attention, |vb| {
                crate::latents::vae::Vae::build(vb, &cfg)
                    .map(|_| ())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?;
            tiny_vae::carry_image(&mut tensors, 8, 4)?;
            save_tensors(&dir.join("diffusion_pytorch_model.safetensors"), &tensors)?;
        }
    }
    Ok(())
}

/// The tiny LLaVA's tokenizer (tools/golden/llava_tiny.py's BPE of the llava-hf layout).
const TINY_LLAVA_TOKENIZER: &str = include_str!("../assets/llava/tiny-tokenizer.json");

fn init_tiny_llava(out: &Path, seed: u64) -> anyhow::Result<()> {
    use candle_transformers::models::clip::vision_model::ClipVisionTransformer;
    std::fs::create_dir_all(out)?;
    let cfg = serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 500,
        "image_seq_length": 16, "projector_hidden_act": "gelu", "multimodal_projector_bias": true,
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "tie_word_embeddings": false,
        "text_config": {
            "model_type": "llama", "vocab_size": 502, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 512, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 501, "hidden_act": "silu", "tie_word_embeddings": false,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 56, "patch_size": 14, "projection_dim": 32,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        },
    });
    let config: crate::caption::llava::LlavaConfig = serde_json::from_value(cfg.clone())?;
    let v = &config.vision_config;
    let vision = v.clip(v.num_hidden_layers);
    let h = config.text_config.hidden_size;
    save_random(&out.join("model.safetensors"), seed, &[], |vb| {
        let tower = vb.pp("vision_tower.vision_model");
        tower.get(v.hidden_size, "embeddings.class_embedding")?;
        ClipVisionTransformer::new(tower, &vision)?;
        for (name, din) in [("linear_1", v.hidden_size), ("linear_2", h)] {
            let p = vb.pp("multi_modal_projector").pp(name);
            p.get((h, din), "weight")?;
            p.get(h, "bias")?;
        }
        candle_transformers::models::llama::Llama::load(vb.pp("language_model"), &config.llama()).map(|_| ())
    })?;
    write_json(&out.join("config.json"), &cfg)?;
    write_json(
        &out.join("preprocessor_config.json"),
        &serde_json::json!({
            "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
            "size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}, "do_resize": true,
            "do_center_crop": true, "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
            "image_mean": crate::image::clip::ClipPreprocess::default().mean,
            "image_std": crate::image::clip::ClipPreprocess::default().std, "resample": 3, "do_convert_rgb": true,
        }),
    )?;
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
            "model_max_length": 4096, "processor_class": "LlavaProcessor", "tokenizer_class": "LlamaTokenizerFast"}),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 501}),
    )?;
    crate::shards::write_atomic(&out.join("tokenizer.json"), TINY_LLAVA_TOKENIZER.as_bytes())?;
    Ok(())
}

/// The model folder of a directory: the folder itself when it has a `config.json`, else its
/// `transformer/` (a diffusers pipeline or an `init-tiny` output).
fn model_folder(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    for d in [dir.to_path_buf(), dir.join("transformer")] {
        if d.join("config.json").is_file() {
            return Ok(d);
        }
    }
    anyhow::bail!("{}: expected a config.json in the folder or in its transformer/", dir.display())
}

/// Runs the model in `model_dir` (its kind read from `config.json`: diffusers' `_class_name` or
/// transformers' `architectures`) on the tensors of `inputs` and writes its outputs to `out`:
/// - `PixArtTransformer2DModel`: `latents`, `timestep`, `caption`, `mask` (+ `resolution`,
///   `aspect_ratio`) → `output`;
/// - `T5EncoderModel`: `input_ids` `[B, L]` → `last_hidden_state` `[B, L, d_model]`;
/// - `AutoencoderKL`: `pixels` `[B, 3, H, W]` in [−1, 1] → posterior `mean` and `std`;
/// - `LlavaForConditionalGeneration`: `input_ids` `[B, L]` (image tokens expanded, rows of equal
///   length) and `pixel_values` `[B, 3, S, S]` → `logits` `[B, vocab]` of the last position;
///   `LlavaNextForConditionalGeneration` likewise, with `pixel_values` `[B, P, 3, S, S]` and
///   `image_sizes` `[B, 2]` as `LlavaNextProcessor` writes them.
///
/// `loras` (peft adapter folders and scales) are merged into a PixArt transformer first.
///
/// Returns each output's name and shape.
pub fn forward(
    model_dir: &Path,
    inputs: &Path,
    out: &Path,
    loras: &[(std::path::PathBuf, f64)],
) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let folder = model_folder(model_dir)?;
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder.join("config.json"))?)?;
    let class = cfg["_class_name"].as_str().or_else(|| cfg["architectures"][0].as_str()).unwrap_or_default();
    let io = candle_core::safetensors::load(inputs, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", inputs.display()))?;
    let get = |k: &str| -> anyhow::Result<&Tensor> {
        io.get(k).ok_or_else(|| {
            let mut have: Vec<&String> = io.keys().collect();
            have.sort();
            anyhow::anyhow!("{}: expected a tensor {k:?}; found {have:?}", inputs.display())
        })
    };
    if !loras.is_empty() && class != "PixArtTransformer2DModel" {
        anyhow::bail!("{}: --lora adapts a PixArt transformer; this model is a {class}", folder.display());
    }
    let outputs: Vec<(&str, Tensor)> = match class {
        "PixArtTransformer2DModel" => {
            let model = PixArt::load_diffusers(&folder, &Device::Cpu)?;
            let model = crate::train::lora::with_adapters(model, loras, &Device::Cpu)?;
            let micro = match (io.get("resolution"), io.get("aspect_ratio")) {
                (Some(r), Some(a)) => Some((r, a)),
                _ => None,
            };
            vec![("output", model.forward(get("latents")?, get("timestep")?, get("caption")?, get("mask")?, micro)?)]
        }
        "T5EncoderModel" => {
            let mut t5 = crate::latents::t5::TextEncoder::load_encoder(&folder, &Device::Cpu)?;
            vec![("last_hidden_state", t5.encode_ids(get("input_ids")?)?)]
        }
        "AutoencoderKL" => {
            let vae = crate::latents::vae::Vae::load(&folder, &Device::Cpu)?;
            let (mean, std) = vae.encode(get("pixels")?)?;
            vec![("mean", mean), ("std", std)]
        }
        "LlavaForConditionalGeneration" | "LlavaNextForConditionalGeneration" => {
            let model = crate::caption::llava::Llava::load(&folder, &Device::Cpu, candle_core::DType::F32)?;
            let ids = get("input_ids")?.to_dtype(candle_core::DType::I64)?.to_vec2::<i64>()?;
            let ids: Vec<Vec<u32>> = ids.into_iter().map(|r| r.into_iter().map(|t| t as u32).collect()).collect();
            let px = get("pixel_values")?;
            let mut images = Vec::new();
            for b in 0..ids.len() {
                if px.rank() == 5 {
                    let sizes = get("image_sizes")?.to_dtype(candle_core::DType::I64)?.to_vec2::<i64>()?;
                    let size = (sizes[b][0] as usize, sizes[b][1] as usize);
                    images.push((px.get(b)?.narrow(0, 0, model.patches_for(size))?, size));
                } else {
                    let s = model.config.vision_config.image_size;
                    images.push((px.narrow(0, b, 1)?, (s, s)));
                }
            }
            let features = model.features(&images)?;
            let emb = model.input_embeddings(&ids, &features)?;
            let mut cache = model.new_cache()?;
            vec![("logits", model.step(&emb, 0, &mut cache)?)]
        }
        other => anyhow::bail!("{}: model kind {other:?} is not supported by `models forward`", folder.display()),
    };
    let shapes = outputs.iter().map(|(k, t)| (k.to_string(), t.dims().to_vec())).collect();
    let tensors: HashMap<String, Tensor> = outputs.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
    let tmp = crate::shards::temp_path(out);
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out)?;
    Ok(shapes)
}

/// Timings of one training step of a PixArt transformer.
#[derive(Debug, serde::Serialize)]
pub struct StepTiming {
    /// Median seconds per forward + backward step.
    pub seconds_per_step: f64,
    /// Every step's seconds.
    pub steps: Vec<f64>,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Which training path [`bench_pixart_step`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPath {
    /// The fused CPU path (the trainer's on CPU).
    Fused,
    /// candle's autograd (every other device's).
    Autograd,
    /// The autograd path with the blocks checkpointed in segments of this many.
    Checkpointed(usize),
}

/// The training-step benchmark's model: depth `layers` (4 by default), hidden 384, 6 heads, 32×32
/// latents, 120 caption tokens of 4096 channels, batch 4, f32; loss = mean of the squared output;
/// forward + backward on `path`, `iters` times after one warm-up step.
pub fn bench_pixart_step(iters: usize, layers: usize, path: StepPath) -> anyhow::Result<StepTiming> {
    let config = PixArtConfig {
        num_attention_heads: 6,
        attention_head_dim: 64,
        in_channels: 4,
        out_channels: 8,
        num_layers: layers,
        sample_size: 32,
        patch_size: 2,
        caption_channels: 4096,
        interpolation_scale: Some(1.0),
        norm_eps: 1e-6,
        kv_compress: None,
    };
    let dev = Device::Cpu;
    let mut model = init(config, false, 120, 0, &dev)?;
    let _vars = model.trainable()?;
    let mut rng = crate::rng::Rng::new(1);
    let latents = rng.normal_tensor(&[4, 4, 32, 32], 1.0, &dev)?;
    let caption = rng.normal_tensor(&[4, 120, 4096], 1.0, &dev)?;
    let mask = Tensor::ones((4, 120), candle_core::DType::F32, &dev)?;
    let t = Tensor::from_vec(vec![999f32, 500.0, 100.0, 1.0], 4, &dev)?;
    let mut steps = Vec::new();
    for i in 0..=iters {
        let start = std::time::Instant::now();
        // The trainer's path: forward, loss and every weight's gradient.
        let inputs = (&latents, &t, &caption, &mask);
        let loss = |out: &Tensor| out.sqr()?.mean_all();
        let (_, grads) = match path {
            StepPath::Fused => crate::train::loss_and_grads(&model, inputs, None, loss)?,
            StepPath::Autograd => crate::train::autograd_loss_and_grads(&model, inputs, None, loss)?,
            StepPath::Checkpointed(k) => crate::train::checkpointed_loss_and_grads(&model, inputs, None, loss, k)?,
        };
        drop(grads);
        if i > 0 {
            steps.push(start.elapsed().as_secs_f64());
        }
    }
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(StepTiming {
        seconds_per_step: sorted[sorted.len() / 2],
        steps,
        peak_rss_mib: crate::density::report::peak_rss_mib(),
    })
}
