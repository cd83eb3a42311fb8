//! Hostile model folders: every loader (T5, VAE, LLaVA-1.5 / 1.6, PixArt diffusers and official)
//! is driven with each of its tensors missing, mis-shaped and stored as an integer type, with the
//! weights cut short and with broken configs. None panics; each refusal names the file (or folder),
//! the tensor or config field, and what was found. A tensor a loader does not use may be broken
//! without a refusal, and the test lists which those are.

mod common;

use candle_core::{DType, Device, Tensor};
use pixforge::caption::llava::{ImageMode, LocalCaptioner, DEFAULT_TEMPLATE};
use pixforge::latents::{t5::TextEncoder, vae::Vae};
use pixforge::train::model::PixArt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What one load gave: `Ok(())`, or the refusal's text. A panic fails the test with the case named.
fn attempt(case: &str, load: &dyn Fn() -> anyhow::Result<()>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(_) => panic!("{case}: the loader panicked"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// One mutation of a weight file.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Missing,
    MisShaped,
    Integer(DType),
}

fn mutate(w: &HashMap<String, Tensor>, name: &str, fault: Fault) -> HashMap<String, Tensor> {
    let mut w = w.clone();
    let t = w[name].clone();
    match fault {
        Fault::Missing => {
            w.remove(name);
        }
        Fault::MisShaped => {
            let mut dims = t.dims().to_vec();
            dims.push(1);
            w.insert(name.to_string(), t.reshape(dims).unwrap());
        }
        Fault::Integer(dtype) => {
            w.insert(name.to_string(), t.to_dtype(dtype).unwrap());
        }
    }
    w
}

/// A stored tensor's name and the names a loader may ask for it by: diffusers' legacy attention
/// names, T5's two embedding names, and llava-hf's older layout (which the newer maps to).
fn names_of(name: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    for (a, b) in [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")] {
        if name.contains(a) {
            out.push(name.replace(a, b));
        }
    }
    if name == "encoder.embed_tokens.weight" {
        out.push("shared.weight".into());
    }
    let llava = [
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("vision_tower.", "vision_tower.vision_model."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ];
    if let Some((from, to)) =
        llava.iter().find(|(from, _)| name.starts_with(from) && !name.starts_with("vision_tower.vision_model."))
    {
        out.push(format!("{to}{}", &name[from.len()..]));
    }
    out
}

/// Drives `load(folder)` with every tensor of `weights` (inside `folder`) broken each way, then with
/// the file cut short. Returns the tensors whose faults were accepted (unused by the loader).
fn every_tensor(folder: &Path, weights: &str, load: &dyn Fn(&Path) -> anyhow::Result<()>) -> Vec<String> {
    let file = folder.join(weights);
    let original = std::fs::read(&file).unwrap();
    let w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    attempt("the intact folder", &|| load(folder)).expect("the intact folder loads");
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let mut accepted = Vec::new();
    for name in names {
        for fault in [Fault::Missing, Fault::MisShaped, Fault::Integer(DType::I64), Fault::Integer(DType::U8)] {
            candle_core::safetensors::save(&mutate(&w, name, fault), &file).unwrap();
            let case = format!("{} with `{name}` {fault:?}", folder.display());
            match attempt(&case, &|| load(folder)) {
                Ok(()) => {
                    accepted.push(name.clone());
                    break;
                }
                Err(e) => {
                    assert!(
                        names_of(name).iter().any(|n| e.contains(&format!("`{n}`"))),
                        "{case}: the refusal does not name the tensor: {e}"
                    );
                    let place = if matches!(fault, Fault::Missing) { folder } else { file.as_path() };
                    assert!(e.contains(&place.display().to_string()), "{case}: the refusal names no file: {e}");
                    let found = match fault {
                        Fault::Missing => "missing".to_string(),
                        Fault::MisShaped => "shape".to_string(),
                        Fault::Integer(d) => format!("{d:?}").to_uppercase(),
                    };
                    assert!(e.to_uppercase().contains(&found.to_uppercase()), "{case}: says not what was found: {e}");
                }
            }
        }
    }
    std::fs::write(&file, &original[..original.len() / 2]).unwrap();
    let e = attempt("cut short", &|| load(folder)).expect_err("a cut file is refused");
    assert!(e.contains(&file.display().to_string()), "a cut file: {e}");
    std::fs::write(&file, &original).unwrap();
    accepted
}

/// Edits `config.json` of `folder` with `edit`, loads, restores; the refusal must contain `expect`.
fn broken_config(
    folder: &Path,
    file: &str,
    edit: &dyn Fn(&mut serde_json::Value),
    expect: &[&str],
    load: &dyn Fn(&Path) -> anyhow::Result<()>,
) {
    let path = folder.join(file);
    let original = std::fs::read(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let case = format!("{} edited to {v}", path.display());
    let e = attempt(&case, &|| load(folder)).expect_err(&case);
    assert!(e.contains(&path.display().to_string()) || e.contains(&folder.display().to_string()), "{case}: {e}");
    for x in expect {
        assert!(e.contains(x), "{case}: expected {x:?} in: {e}");
    }
    std::fs::write(&path, original).unwrap();
}

fn folder_of(fixture: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&common::fixtures().join(fixture), &dir);
    (tmp, dir)
}

#[test]
fn t5_encoder_refuses_each_broken_tensor_and_config() {
    let (_tmp, dir) = folder_of("pixart-pipeline/text_encoder");
    let load = |d: &Path| TextEncoder::load_encoder(d, &Device::Cpu).map(|_| ());
    let accepted = every_tensor(&dir, "model.safetensors", &load);
    assert!(accepted.is_empty(), "faults accepted in {accepted:?}");
    broken_config(&dir, "config.json", &|v| v["d_model"] = "sixteen".into(), &["d_model"], &load);
}

#[test]
fn vae_refuses_each_broken_encoder_tensor_and_config() {
    let (_tmp, dir) = folder_of("pixart-pipeline/vae");
    let load = |d: &Path| Vae::load(d, &Device::Cpu).map(|_| ());
    let accepted = every_tensor(&dir, "diffusion_pytorch_model.safetensors", &load);
    assert!(
        accepted.iter().all(|n| n.starts_with("decoder.") || n.starts_with("post_quant_conv.")),
        "faults accepted in tensors the encoder uses: {accepted:?}"
    );
    broken_config(
        &dir,
        "config.json",
        &|v| v["block_out_channels"] = serde_json::json!("eight"),
        &["block_out_channels"],
        &load,
    );
}

fn llava_load(d: &Path) -> anyhow::Result<()> {
    LocalCaptioner::load(d, &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE).map(|_| ())
}

#[test]
fn llava_refuses_each_broken_tensor_and_config() {
    for fixture in ["golden/llava_tiny", "golden/llava_next_tiny"] {
        let (_tmp, dir) = folder_of(fixture);
        let accepted = every_tensor(&dir, "model.safetensors", &llava_load);
        // The tower is built up to the feature layer: its last layer and post-layernorm are unused.
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let last = config["vision_config"]["num_hidden_layers"].as_u64().unwrap() - 1;
        let unused = |n: &str| {
            n.contains(&format!("encoder.layers.{last}."))
                || n.contains("post_layernorm")
                || n.contains("visual_projection")
        };
        assert!(accepted.iter().all(|n| unused(n)), "{fixture}: faults accepted in used tensors: {accepted:?}");
        let remove = |path: &'static [&'static str]| {
            move |v: &mut serde_json::Value| {
                let (last, parents) = path.split_last().unwrap();
                let mut at = v;
                for p in parents {
                    at = &mut at[*p];
                }
                at.as_object_mut().unwrap().remove(*last);
            }
        };
        broken_config(&dir, "config.json", &remove(&["vision_config"]), &["vision_config"], &llava_load);
        broken_config(&dir, "config.json", &remove(&["text_config"]), &["text_config"], &llava_load);
        broken_config(
            &dir,
            "config.json",
            &remove(&["text_config", "hidden_size"]),
            &["hidden_size", "4096"],
            &llava_load,
        );
        broken_config(
            &dir,
            "config.json",
            &|v| v["vision_config"]["hidden_size"] = 7.into(),
            &["vision_config.hidden_size is 7"],
            &llava_load,
        );
        for file in ["preprocessor_config.json", "processor_config.json"] {
            if !dir.join(file).is_file() {
                continue;
            }
            let at_processor = file == "processor_config.json";
            broken_config(
                &dir,
                file,
                &move |v| {
                    let p = if at_processor { &mut v["image_processor"] } else { v };
                    p["crop_size"] = "big".into();
                },
                &["crop_size", "\"big\""],
                &llava_load,
            );
        }
    }
}

#[test]
fn pixart_diffusers_folder_refuses_each_broken_tensor_and_config() {
    let (_tmp, dir) = folder_of("pixart-pipeline/transformer");
    let load = |d: &Path| PixArt::load_diffusers(d, &Device::Cpu).map(|_| ());
    let accepted = every_tensor(&dir, "diffusion_pytorch_model.safetensors", &load);
    assert!(accepted.is_empty(), "faults accepted in {accepted:?}");
    broken_config(&dir, "config.json", &|v| v["num_layers"] = 3.into(), &["transformer_blocks.2.", "missing"], &load);
    broken_config(&dir, "config.json", &|v| v["num_layers"] = (-1).into(), &["num_layers"], &load);
}

#[test]
fn pixart_official_checkpoint_refuses_each_broken_tensor() {
    let src = common::fixtures().join("pixart-pipeline/transformer");
    let model = PixArt::load_diffusers(&src, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("official");
    std::fs::create_dir_all(&dir).unwrap();
    model.save_official(&dir.join("official.safetensors")).unwrap();
    let (heads, size) = (model.config.num_attention_heads, model.config.sample_size);
    let load = |d: &Path| PixArt::load_official(&d.join("official.safetensors"), heads, size, &Device::Cpu).map(|_| ());
    let accepted = every_tensor(&dir, "official.safetensors", &load);
    // The positional embedding is a buffer the loader recomputes.
    assert!(accepted.iter().all(|n| n == "pos_embed"), "faults accepted in {accepted:?}");
}
