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

/// The six bundled photos at 256×256 as `[6, 3, 256, 256]` in [−1, 1].
fn bundled_photos() -> Tensor {
    let images: Vec<Tensor> = pixforge::demo::IMAGES
        .iter()
        .map(|(_, bytes)| {
            let img = image::load_from_memory(bytes).unwrap().to_rgb8();
            let img = image::imageops::resize(&img, 256, 256, image::imageops::FilterType::Triangle);
            let px: Vec<f32> = img.into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect();
            Tensor::from_vec(px, (256, 256, 3), &Device::Cpu).unwrap().permute((2, 0, 1)).unwrap()
        })
        .collect();
    Tensor::stack(&images, 0).unwrap()
}

fn std_of(t: &Tensor) -> f64 {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// The tiny VAE `init-tiny` writes carries the image as a trained one does: on the bundled photos its
/// scaled latents have unit variance, the posterior std is small against them, the latents are the
/// colours (and luminance) of each 8×8 patch, and decoding gives back the blurred photo.
#[test]
fn the_tiny_vae_carries_the_image() {
    let dir = tempfile::tempdir().unwrap();
    pixforge::models::init_tiny(pixforge::models::ModelKind::Vae, dir.path(), false, 7).unwrap();
    let vae = Vae::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(vae.scale, 8);
    let pixels = bundled_photos();
    let (mean, std) = vae.encode(&pixels).unwrap();
    let latents = (&mean * vae.scaling_factor).unwrap();
    let (latent_std, posterior_std) = (std_of(&latents), std.max_keepdim(0).unwrap().flatten_all().unwrap());
    let posterior_std: f32 = posterior_std.max(0).unwrap().to_scalar().unwrap();
    let posterior_scaled = posterior_std as f64 * vae.scaling_factor;
    eprintln!(
        "scaled latents: std {latent_std:.4}; posterior std {posterior_scaled:.5} (unscaled mean std {:.4})",
        std_of(&mean)
    );
    assert!((0.95..1.05).contains(&latent_std), "scaled latents of std {latent_std}, expected about 1");
    assert!(posterior_scaled < 0.01, "posterior std {posterior_scaled} against latents of std {latent_std}");

    // Each latent: the patch's colours (and their mean), up to SiLU's slight curve.
    let patches = pixels.avg_pool2d(8).unwrap();
    let colours = (mean.narrow(1, 0, 3).unwrap() / pixforge::models::TINY_VAE_GAIN).unwrap();
    let luminance = (mean.narrow(1, 3, 1).unwrap() / pixforge::models::TINY_VAE_GAIN).unwrap();
    let d = max_abs_diff(&colours, &patches);
    let dl = max_abs_diff(&luminance, &patches.mean_keepdim(1).unwrap());
    eprintln!("latent colours differ from the 8x8 patch means by {d:.4}, luminance by {dl:.4}");
    assert!(d < 0.015 && dl < 0.015, "colours {d}, luminance {dl}");

    // Decoded: each patch's colour over its 8×8 pixels.
    let decoded = vae.decode(&latents).unwrap();
    let blurred = patches.upsample_nearest2d(256, 256).unwrap();
    let d = max_abs_diff(&decoded, &blurred);
    let rms = std_of(&(&decoded - &blurred).unwrap());
    eprintln!("decoded differs from the blurred photos by {d:.4} at most, rms {rms:.4}");
    assert!(d < 0.03 && rms < 0.008, "decoded differs by {d} (rms {rms})");
}
