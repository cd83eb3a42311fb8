//! The candle LLaVA backend against transformers (`tools/golden/llava_tiny.py`): tiny random
//! LLaVA-1.5 and LLaVA-1.6 models in the llava-hf layout give transformers' first-step logits within
//! 1e-4 and the same 20 greedy tokens; our processors give their token ids and (within a grey level
//! or two on average) their pixels.

mod common;

use candle_core::{DType, Device, Tensor};
use pixforge::caption::llava::{generate, ImageMode, LocalCaptioner, Sampling, DEFAULT_TEMPLATE};

fn golden() -> std::path::PathBuf {
    common::fixtures().join("golden")
}

fn load() -> LocalCaptioner {
    load_named("llava_tiny")
}

fn load_named(name: &str) -> LocalCaptioner {
    LocalCaptioner::load(&golden().join(name), &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE).unwrap()
}

/// Checks one tiny model against its golden outputs; `pixels` are the processor's patches of the
/// image (one image), `size` its (h, w).
fn check_against_transformers(name: &str, cap: &LocalCaptioner, pixels: &Tensor, size: (usize, usize)) {
    let io = candle_core::safetensors::load(golden().join(format!("{name}_io.safetensors")), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().join(format!("{name}.json"))).unwrap()).unwrap();
    let photo =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(meta["photo"].as_str().unwrap());
    let img = image::open(photo).unwrap().to_rgb8();
    let ours = cap.processor.image(&img).unwrap();
    assert_eq!(ours.size, size);
    let want_ids: Vec<u32> =
        io["input_ids"].squeeze(0).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
    let ids = cap.processor.input_ids(pixforge::caption::prompts::PAPER, ours.tokens).unwrap();
    assert_eq!(ids, want_ids, "{name}: token ids differ from the processor's");

    let images = vec![(pixels.clone(), size)];
    let features = cap.model.features(&images).unwrap();
    let emb = cap.model.input_embeddings(std::slice::from_ref(&ids), &features).unwrap();
    let mut cache = cap.model.new_cache().unwrap();
    let logits = cap.model.step(&emb, 0, &mut cache).unwrap();
    let diff = (logits - &io["logits"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "{name}: first-step logits differ from transformers by {diff}");

    let sampling = Sampling { temperature: 0.0, top_p: 1.0, max_tokens: 20, ignore_eos: true };
    let gen = generate(&cap.model, std::slice::from_ref(&ids), &features, &sampling, &[0]).unwrap();
    let want_greedy: Vec<u32> = io["greedy"].to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
    assert_eq!(gen[0].tokens, want_greedy, "{name}: greedy tokens differ from transformers'");
    assert_eq!(cap.processor.decode(&gen[0].tokens).unwrap(), meta["greedy_text"].as_str().unwrap());

    // A batch of two gives each row what it gives alone.
    let two = cap.model.features(&[images[0].clone(), images[0].clone()]).unwrap();
    let gen2 = generate(&cap.model, &[ids.clone(), ids.clone()], &two, &sampling, &[0, 1]).unwrap();
    assert_eq!(gen2[0].tokens, want_greedy);
    assert_eq!(gen2[1].tokens, want_greedy);

    // Our preprocessing of the photo is within a grey level of the processor's on average.
    let theirs: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.pixels.len(), theirs.len(), "{name}: patch count");
    let level = 1.0 / 255.0 / cap.processor.image.std.iter().fold(f32::MAX, |a, &b| a.min(b));
    let mean = ours.pixels.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).sum::<f32>() / theirs.len() as f32;
    eprintln!("{name}: logits within {diff:.2e}; preprocessing {:.3} grey levels off on average", mean / level);
    assert!(mean < level, "{name}: preprocessing differs by {:.2} grey levels on average", mean / level);
}

#[test]
fn tiny_llava_matches_transformers() {
    let cap = load();
    let io = candle_core::safetensors::load(golden().join("llava_tiny_io.safetensors"), &Device::Cpu).unwrap();
    check_against_transformers("llava_tiny", &cap, &io["pixel_values"], (300, 451));
}

#[test]
fn tiny_llava_next_matches_transformers() {
    let cap = load_named("llava_next_tiny");
    let io = candle_core::safetensors::load(golden().join("llava_next_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let sizes = io["image_sizes"].to_vec2::<i64>().unwrap();
    let size = (sizes[0][0] as usize, sizes[0][1] as usize);
    check_against_transformers("llava_next_tiny", &cap, &io["pixel_values"].squeeze(0).unwrap(), size);
    assert_eq!(cap.model.patches_for(size), 5, "a 451x300 photo: the overview and 2x2 tiles");
}

#[test]
fn sampling_is_seeded_and_eos_stops() {
    let cap = load();
    let io = candle_core::safetensors::load(golden().join("llava_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let ids = cap.processor.input_ids(pixforge::caption::prompts::PAPER, cap.processor.image_tokens()).unwrap();
    let f = cap.model.features(&[(io["pixel_values"].clone(), (56, 56))]).unwrap();
    let s = Sampling { temperature: 1.0, top_p: 0.9, max_tokens: 12, ignore_eos: true };
    let a = generate(&cap.model, std::slice::from_ref(&ids), &f, &s, &[7]).unwrap();
    let b = generate(&cap.model, std::slice::from_ref(&ids), &f, &s, &[7]).unwrap();
    let c = generate(&cap.model, std::slice::from_ref(&ids), &f, &s, &[8]).unwrap();
    assert_eq!(a, b, "the same seed gives the same caption");
    assert_ne!(a[0].tokens, c[0].tokens, "another seed gives another caption");
    assert_eq!(a[0].tokens.len(), 12);
    assert_eq!(a[0].finish.as_str(), "length");
}

#[test]
fn missing_files_and_unsupported_configs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden().join("llava_tiny");
    for f in ["config.json", "processor_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let load = |d: &std::path::Path| {
        LocalCaptioner::load(d, &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE).err().unwrap().to_string()
    };
    assert!(load(dir.path()).contains("expected model.safetensors"), "{}", load(dir.path()));
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(load(dir.path()).contains("tokenizer.json: missing"), "{}", load(dir.path()));
    std::fs::copy(src.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["text_config"]["model_type"] = "mistral".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load(dir.path());
    assert!(e.contains("config.json") && e.contains("text_config.model_type is \"mistral\""), "{e}");
    // A checkpoint without the projector names the tensors it expected.
    cfg["text_config"]["model_type"] = "llama".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let st = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<String, Tensor> =
        st.into_iter().filter(|(k, _)| !k.starts_with("multi_modal_projector.linear_2")).collect();
    candle_core::safetensors::save(&kept, dir.path().join("model.safetensors")).unwrap();
    let e = load(dir.path());
    assert!(e.contains("multi_modal_projector.linear_2"), "{e}");
}

/// `pixforge models forward` runs both tiny models on transformers' inputs and writes their logits;
/// `models init-tiny --kind llava` writes a folder the backend loads.
#[test]
fn models_forward_and_init_tiny() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llava_tiny", "llava_next_tiny"] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let io = golden().join(format!("{name}_io.safetensors"));
        let st = std::process::Command::new(common::bin())
            .args(["models", "forward", "--model"])
            .arg(golden().join(name))
            .arg("--inputs")
            .arg(&io)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let want = candle_core::safetensors::load(&io, &Device::Cpu).unwrap();
        let diff =
            (&got["logits"] - &want["logits"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{name}: {diff}");
    }
    let tiny = dir.path().join("tiny");
    let st = std::process::Command::new(common::bin())
        .args(["models", "init-tiny", "--kind", "llava", "--out"])
        .arg(&tiny)
        .status()
        .unwrap();
    assert!(st.success());
    for f in ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"] {
        assert!(tiny.join(f).is_file(), "{f}");
    }
    let cap = LocalCaptioner::load(&tiny, &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE).unwrap();
    assert_eq!(cap.processor.image_tokens(), 16);
}

/// Half precision (what `--dtype f16` runs on CUDA) goes through the same code: on CPU the f16 model
/// gives the f32 model's first-step logits within f16's precision.
#[test]
fn half_precision_follows_f32() {
    let io = candle_core::safetensors::load(golden().join("llava_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let logits = |dtype: DType| {
        let cap =
            LocalCaptioner::load(&golden().join("llava_tiny"), &Device::Cpu, dtype, ImageMode::Crop, DEFAULT_TEMPLATE)
                .unwrap();
        let ids = cap.processor.input_ids(pixforge::caption::prompts::PAPER, cap.processor.image_tokens()).unwrap();
        let f = cap.model.features(&[(io["pixel_values"].clone(), (56, 56))]).unwrap();
        let emb = cap.model.input_embeddings(&[ids], &f).unwrap();
        let mut cache = cap.model.new_cache().unwrap();
        cap.model.step(&emb, 0, &mut cache).unwrap()
    };
    let (a, b) = (logits(DType::F32), logits(DType::F16));
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 2e-2, "f16 logits differ from f32 by {diff}");
}
