//! The candle LLaVA backend against transformers (`tools/golden/llava_tiny.py`): a tiny random
//! LLaVA-1.5 in the llava-hf layout gives transformers' first-step logits within 1e-4 and the same 20
//! greedy tokens; our processor gives its token ids and (within a grey level or two) its pixels.

mod common;

use candle_core::{DType, Device, Tensor};
use pixforge::caption::llava::{generate, ImageMode, LocalCaptioner, Sampling, DEFAULT_TEMPLATE};

fn golden() -> std::path::PathBuf {
    common::fixtures().join("golden")
}

fn load() -> LocalCaptioner {
    LocalCaptioner::load(&golden().join("llava_tiny"), &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE)
        .unwrap()
}

#[test]
fn tiny_llava_matches_transformers() {
    let cap = load();
    let io = candle_core::safetensors::load(golden().join("llava_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let want_ids: Vec<u32> =
        io["input_ids"].squeeze(0).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
    let ids = cap.processor.input_ids(pixforge::caption::prompts::PAPER).unwrap();
    assert_eq!(ids, want_ids, "token ids differ from LlavaProcessor's");

    let pixels = &io["pixel_values"];
    let features = cap.model.image_features(pixels).unwrap();
    let emb = cap.model.input_embeddings(std::slice::from_ref(&ids), &features).unwrap();
    let mut cache = cap.model.new_cache().unwrap();
    let logits = cap.model.step(&emb, 0, &mut cache).unwrap();
    let want = &io["logits"];
    let diff = (logits - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "first-step logits differ from transformers by {diff}");

    let sampling = Sampling { temperature: 0.0, top_p: 1.0, max_tokens: 20, ignore_eos: true };
    let gen = generate(&cap.model, std::slice::from_ref(&ids), pixels, &sampling, &[0]).unwrap();
    let want_greedy: Vec<u32> = io["greedy"].to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
    assert_eq!(gen[0].tokens, want_greedy, "greedy tokens differ from transformers'");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().join("llava_tiny.json")).unwrap()).unwrap();
    assert_eq!(cap.processor.decode(&gen[0].tokens).unwrap(), meta["greedy_text"].as_str().unwrap());

    // A batch of two gives each row what it gives alone.
    let two = Tensor::cat(&[pixels, pixels], 0).unwrap();
    let gen2 = generate(&cap.model, &[ids.clone(), ids.clone()], &two, &sampling, &[0, 1]).unwrap();
    assert_eq!(gen2[0].tokens, want_greedy);
    assert_eq!(gen2[1].tokens, want_greedy);

    // Our preprocessing of the photo is within a grey level or two of CLIPImageProcessor's.
    let photo =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(meta["photo"].as_str().unwrap());
    let img = image::open(photo).unwrap().to_rgb8();
    let ours = cap.processor.pixels(&img).unwrap();
    let theirs: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    let level = 1.0 / 255.0 / cap.processor.image.std.iter().fold(f32::MAX, |a, &b| a.min(b));
    let mean = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    assert!(mean < 1.0 * level, "preprocessing differs by {:.2} grey levels on average", mean / level);
}

#[test]
fn sampling_is_seeded_and_eos_stops() {
    let cap = load();
    let io = candle_core::safetensors::load(golden().join("llava_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let ids = cap.processor.input_ids(pixforge::caption::prompts::PAPER).unwrap();
    let px = &io["pixel_values"];
    let s = Sampling { temperature: 1.0, top_p: 0.9, max_tokens: 12, ignore_eos: true };
    let a = generate(&cap.model, std::slice::from_ref(&ids), px, &s, &[7]).unwrap();
    let b = generate(&cap.model, std::slice::from_ref(&ids), px, &s, &[7]).unwrap();
    let c = generate(&cap.model, std::slice::from_ref(&ids), px, &s, &[8]).unwrap();
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
