//! The PixArt transformer forward pass against diffusers' `PixArtTransformer2DModel` on a tiny random
//! model in the diffusers layout (`tools/golden/pixart_tiny.py`), with one caption padded.

use candle_core::{DType, Device};
use pixforge::train::model::PixArt;

#[test]
fn forward_matches_diffusers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny");
    let model = PixArt::load_diffusers(&dir.join("transformer"), &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let out = model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"]).unwrap();
    assert_eq!(out.dims(), io["output"].dims());
    let diff = (out - &io["output"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let diff = diff.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    eprintln!("largest difference from diffusers: {diff:e}");
    assert!(diff < 1e-4, "largest difference {diff}");
}
