//! The VAE (diffusers `AutoencoderKL` folder) against diffusers on the tiny pipeline fixture
//! (`tools/golden/vae_encode.py`): the posterior mean and std PixArt caches, and decoding, within
//! 1e-4, on a batch of two (candle's own VAE attention mixes batch items; ours must not).

use candle_core::{Device, Tensor};
use pixforge::latents::vae::Vae;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn posterior_mean_and_std_match_diffusers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let g = candle_core::safetensors::load(root.join("golden/vae_encode.safetensors"), &Device::Cpu).unwrap();
    let vae = Vae::load(&root.join("pixart-pipeline"), &Device::Cpu).unwrap();
    let (mean, std) = vae.encode(&g["pixels"]).unwrap();
    assert_eq!(mean.dims(), g["mean"].dims());
    let (dm, ds) = (max_abs_diff(&mean, &g["mean"]), max_abs_diff(&std, &g["std"]));
    eprintln!("mean differs by {dm:e}, std by {ds:e}");
    assert!(dm <= 1e-4 && ds <= 1e-4, "mean differs by {dm}, std by {ds}");
}

#[test]
fn decoding_a_batch_matches_diffusers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let g = candle_core::safetensors::load(root.join("golden/vae_encode.safetensors"), &Device::Cpu).unwrap();
    let vae = Vae::load(&root.join("pixart-pipeline"), &Device::Cpu).unwrap();
    let latents = (&g["mean"] * vae.scaling_factor).unwrap();
    let images = vae.decode(&latents).unwrap();
    assert_eq!(images.dims(), g["decoded"].dims());
    let d = max_abs_diff(&images, &g["decoded"]);
    assert!(d <= 1e-4, "decoded images differ by {d}");
}
