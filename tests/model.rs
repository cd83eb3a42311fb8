//! The PixArt transformer forward pass against diffusers' `PixArtTransformer2DModel` on a tiny random
//! model in the diffusers layout (`tools/golden/pixart_tiny.py`), with one caption padded.

use candle_core::{DType, Device};
use pixforge::train::model::PixArt;

/// The largest absolute difference of two tensors of the same shape.
fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn forward_matches_diffusers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny");
    let model = PixArt::load_diffusers(&dir.join("transformer"), &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let out = model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap();
    assert_eq!(out.dims(), io["output"].dims());
    let diff = (out - &io["output"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    eprintln!("largest difference from diffusers: {diff:e}");
    assert!(diff < 1e-4, "largest difference {diff}");
}

#[test]
fn official_checkpoint_gives_identical_outputs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny");
    let diffusers = PixArt::load_diffusers(&dir.join("transformer"), &Device::Cpu).unwrap();
    let official = PixArt::load_official(&dir.join("official.pth"), 4, 8, &Device::Cpu).unwrap();
    assert_eq!(official.config.num_layers, 2);
    assert_eq!(official.config.out_channels, 8);
    assert_eq!(official.null_caption().unwrap().dims(), &[6, 16]);
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let run = |m: &PixArt| m.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap();
    let (a, b) = (run(&diffusers), run(&official));
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "the same weights, the same numbers");
}

#[test]
fn official_loader_names_missing_and_unexpected_keys() {
    use candle_core::Tensor;
    use std::collections::HashMap;
    let mut sd: HashMap<String, Tensor> = HashMap::new();
    let z = Tensor::zeros((6, 4), DType::F32, &Device::Cpu).unwrap();
    sd.insert("blocks.0.scale_shift_table".into(), z.clone());
    sd.insert("blocks.0.attn.qkv.weight".into(), Tensor::zeros((12, 4), DType::F32, &Device::Cpu).unwrap());
    sd.insert("blocks.0.surprise.weight".into(), z);
    let e = pixforge::train::keys::official_to_diffusers(sd).unwrap_err();
    assert!(e.contains("blocks.0.attn.qkv.bias") && e.contains("blocks.0.surprise.weight"), "{e}");
    assert!(e.contains("`x_embedder.proj.weight`"), "{e}");
}

#[test]
fn pixart_ms_micro_conditions_and_non_square_latents_match_diffusers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny");
    let model = PixArt::load_diffusers(&dir.join("transformer-ms"), &Device::Cpu).unwrap();
    assert!(model.has_micro_conditions());
    let io = candle_core::safetensors::load(dir.join("io-ms.safetensors"), &Device::Cpu).unwrap();
    let micro = Some((&io["resolution"], &io["aspect_ratio"]));
    let out = model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], micro).unwrap();
    assert_eq!(out.dims(), &[2, 8, 8, 12]);
    let diff = (out - &io["output"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    eprintln!("PixArtMS: largest difference from diffusers: {diff:e}");
    assert!(diff < 1e-4, "largest difference {diff}");
    let e = model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap_err();
    assert!(e.to_string().contains("micro-conditions"), "{e}");
}

/// A diffusers folder with one tensor removed, or one truncated to fewer rows, or its weight file cut
/// short, is refused at load with the file and the tensor's name (not later, mid-forward).
#[test]
fn damaged_diffusers_folders_are_refused_at_load_naming_file_and_tensor() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny/transformer");
    let weights =
        candle_core::safetensors::load(src.join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    let folder = |name: &str, edit: &dyn Fn(&mut std::collections::HashMap<String, candle_core::Tensor>)| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let mut w = weights.clone();
        edit(&mut w);
        candle_core::safetensors::save(&w, dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
        let e = PixArt::load_diffusers(dir.path(), &Device::Cpu).err().unwrap_or_else(|| panic!("{name}: loaded"));
        (dir, format!("{e:#}"))
    };
    let tensor = "transformer_blocks.1.attn2.to_k.weight";
    let (dir, e) = folder("removed", &|w| {
        w.remove(tensor);
    });
    assert!(e.contains(tensor) && e.contains("missing"), "{e}");
    assert!(e.contains(&dir.path().join("diffusion_pytorch_model.safetensors").display().to_string()), "{e}");
    let (dir, e) = folder("truncated", &|w| {
        let t = w[tensor].narrow(0, 0, 3).unwrap();
        w.insert(tensor.into(), t);
    });
    assert!(e.contains(tensor) && e.contains("[3, 32]"), "the shape found: {e}");
    assert!(e.contains(&dir.path().join("diffusion_pytorch_model.safetensors").display().to_string()), "{e}");
    // The weight file itself cut short.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let cut = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", PixArt::load_diffusers(dir.path(), &Device::Cpu).err().expect("a cut file is refused"));
    assert!(e.contains(&cut.display().to_string()), "{e}");
}

/// An official checkpoint whose fused `qkv` has the wrong shape is refused at load, naming the file
/// and the tensor the model is built from (the sub-modules check every shape), not later mid-forward.
#[test]
fn a_mis_shaped_official_tensor_is_refused_at_load() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny/transformer");
    let model = PixArt::load_diffusers(&src, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("official.safetensors");
    model.save_official(&file).unwrap();
    let mut w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let qkv = w["blocks.0.attn.qkv.weight"].clone();
    let cols = qkv.dim(1).unwrap();
    w.insert("blocks.0.attn.qkv.weight".into(), qkv.narrow(1, 0, cols - 1).unwrap());
    candle_core::safetensors::save(&w, &file).unwrap();
    let heads = model.config.num_attention_heads;
    let e = format!("{:#}", PixArt::load_official(&file, heads, model.config.sample_size, &Device::Cpu).err().unwrap());
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("transformer_blocks.0.attn1.to_q.weight"), "{e}");
}

/// PixArt-Σ (`tools/golden/pixart_sigma.py`): a diffusers `PixArtTransformer2DModel` without
/// micro-conditions at the 1024 px model's sample_size 128 and interpolation_scale 2, a non-square
/// 12×20 latent and captions padded to Σ's 300 tokens, within 1e-4 of diffusers; its official-key
/// checkpoint (with the 300-row null caption) gives the same numbers.
#[test]
fn pixart_sigma_matches_diffusers_and_its_official_checkpoint() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-sigma");
    let model = PixArt::load_diffusers(&dir.join("transformer"), &Device::Cpu).unwrap();
    assert!(!model.has_micro_conditions());
    assert_eq!((model.config.sample_size, model.config.interpolation_scale), (128, Some(2.0)));
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(io["caption"].dims(), &[2, 300, 16]);
    let out = model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap();
    assert_eq!(out.dims(), &[2, 8, 12, 20]);
    let diff = (&out - &io["output"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    eprintln!("PixArt-Σ: largest difference from diffusers: {diff:e}");
    assert!(diff < 1e-4, "largest difference {diff}");

    // The official keys, read with the 1024 px model's sample size: its positions are laid out at
    // interpolation scale 128 / 64 = 2, as the official Σ config's `pe_interpolation`.
    let official = PixArt::load_official(&dir.join("official.safetensors"), 3, 128, &Device::Cpu).unwrap();
    assert_eq!(official.null_caption().unwrap().dims(), &[300, 16]);
    let theirs = official.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap();
    let diff =
        (out - theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "official checkpoint: {diff}");
}

/// PixArt-Σ's KV-token compression against the official `AttentionKVCompress`
/// (`tools/golden/kv_compress.py`, f64): each sampling mode (`conv` with random kernel and LayerNorm,
/// `ave`, `uniform`, `uniform_every`), factor 2, 3 heads of 8, a 6×10 token grid, within 1e-10.
#[test]
fn kv_compression_matches_the_official_attention() {
    use pixforge::train::kv_compress::{KvCompressConfig, KvCompressor, KvSampling};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let g = candle_core::safetensors::load(root.join("kv_compress.safetensors"), &Device::Cpu).unwrap();
    let x = &g["x"];
    let c = 24;
    let linear = |x: &candle_core::Tensor, w: &candle_core::Tensor, b: &candle_core::Tensor| {
        x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
    };
    for (mode, sampling) in [
        ("conv", KvSampling::Conv),
        ("ave", KvSampling::Ave),
        ("uniform", KvSampling::Uniform),
        ("uniform_every", KvSampling::UniformEvery),
    ] {
        let get = |k: &str| g[&format!("{mode}.{k}")].clone();
        let config = KvCompressConfig { sampling, scale_factor: 2, kv_compress_layer: vec![0] };
        let weights: std::collections::HashMap<String, candle_core::Tensor> =
            ["sr.weight", "sr.bias", "norm.weight", "norm.bias"]
                .iter()
                .filter_map(|k| g.get(&format!("{mode}.{k}")).map(|t| (k.to_string(), t.clone())))
                .collect();
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F64, &Device::Cpu);
        let kv = KvCompressor::new(&vb, c, &config).unwrap();
        let (qkv_w, qkv_b) = (get("qkv.weight"), get("qkv.bias"));
        let part = |i: usize| linear(x, &qkv_w.narrow(0, i * c, c).unwrap(), &qkv_b.narrow(0, i * c, c).unwrap());
        let (q, k, v) = (part(0), kv.compress(&part(1), (6, 10)).unwrap(), kv.compress(&part(2), (6, 10)).unwrap());
        let n = if sampling == KvSampling::UniformEvery { 30 } else { 15 };
        assert_eq!(k.dims(), &[2, n, c], "{mode}");
        let out = linear(
            &pixforge::train::ops::attention(&q, &k, &v, 3, None).unwrap(),
            &get("proj.weight"),
            &get("proj.bias"),
        );
        let diff = max_abs_diff(&out, &get("out"));
        eprintln!("kv compression `{mode}`: largest difference from the official attention {diff:e}");
        assert!(diff < 1e-10, "{mode}: {diff}");
    }
}

/// A model that compresses keys and values in one block keeps the compression through the official
/// keys (`blocks.{i}.attn.sr` / `attn.norm`): written and read back, the same numbers; and the
/// compression changes what the block computes.
#[test]
fn kv_compression_round_trips_through_official_keys() {
    use pixforge::train::kv_compress::{KvCompressConfig, KvSampling};
    let dir = tempfile::tempdir().unwrap();
    let sigma = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-sigma");
    let plain = PixArt::load_diffusers(&sigma.join("transformer"), &Device::Cpu).unwrap();
    let mut config = plain.config.clone();
    config.kv_compress =
        Some(KvCompressConfig { sampling: KvSampling::Conv, scale_factor: 2, kv_compress_layer: vec![1] });
    let mut w = plain.weights().clone();
    let mut rng = pixforge::rng::Rng::new(3);
    for (name, shape) in
        [("sr.weight", vec![24, 1, 2, 2]), ("sr.bias", vec![24]), ("norm.weight", vec![24]), ("norm.bias", vec![24])]
    {
        w.insert(
            format!("transformer_blocks.1.attn1.kv_compress.{name}"),
            rng.normal_tensor(&shape, 0.3, &Device::Cpu).unwrap(),
        );
    }
    let model = PixArt::from_weights(config, w).unwrap();
    assert!(model.has_kv_compress());
    let path = dir.path().join("official.safetensors");
    model.save_official(&path).unwrap();
    let official = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(official.contains_key("blocks.1.attn.sr.weight") && official.contains_key("blocks.1.attn.norm.bias"));
    assert!(!official.contains_key("blocks.0.attn.sr.weight"));
    let back = PixArt::load_official(&path, 3, 128, &Device::Cpu).unwrap();
    assert_eq!(back.config.kv_compress, model.config.kv_compress, "conv compression read from the weights");
    let io = candle_core::safetensors::load(sigma.join("io.safetensors"), &Device::Cpu).unwrap();
    let run = |m: &PixArt| m.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap();
    let (a, b, c) = (run(&model), run(&back), run(&plain));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 1e-3, "the compression changes the output");
}
