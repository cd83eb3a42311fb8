//! The PixArt transformer forward pass against diffusers' `PixArtTransformer2DModel` on a tiny random
//! model in the diffusers layout (`tools/golden/pixart_tiny.py`), with one caption padded.

use candle_core::{DType, Device};
use pixforge::train::model::PixArt;

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
    assert!(e.contains("pos_embed.proj.weight"), "{e}");
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
