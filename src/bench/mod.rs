//! `pixforge bench …`: measured figures for docs/BENCHMARKS.md.

pub mod bombs;
pub mod browse;
pub mod repeats;
pub mod rows;

use crate::image::phash::phash;
use crate::image::{decode_rgb, encode, plan, resize_rgb, sha256_hex, ImageOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// Per-phase single-core timings of the image step over a directory of images.
#[derive(Debug, Default, serde::Serialize)]
pub struct PhaseTimes {
    /// Images measured.
    pub images: usize,
    /// Seconds decoding (header check, decode, orientation, RGB conversion).
    pub decode_s: f64,
    /// Seconds resizing.
    pub resize_s: f64,
    /// Seconds encoding.
    pub encode_s: f64,
    /// Seconds hashing (sha256 + pHash).
    pub hash_s: f64,
    /// Sum of the phases, as images per second on one core (full-size decode).
    pub phases_img_s: f64,
    /// The real image step (`image::process`, DCT downscaling as configured), images per second on one core.
    pub process_img_s: f64,
}

/// Times each phase of the image step on one core for every image file in `dir`.
pub fn image_phases(dir: &Path, o: &ImageOptions) -> anyhow::Result<PhaseTimes> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let blobs: Vec<Vec<u8>> = files.iter().filter(|p| p.is_file()).map(std::fs::read).collect::<Result<_, _>>()?;
    let mut t = PhaseTimes { images: blobs.len(), ..Default::default() };
    let (mut dec, mut res, mut enc, mut hash) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for b in &blobs {
        let s = Instant::now();
        let (img, _, _) = decode_rgb(b, o.max_image_pixels)?;
        dec += s.elapsed();
        let s = Instant::now();
        let p = plan(img.width(), img.height(), o);
        let c = p.crop;
        let out = resize_rgb(&img, (c.0 as f64, c.1 as f64, c.2 as f64, c.3 as f64), p.resized, o)?;
        res += s.elapsed();
        let s = Instant::now();
        let data = encode(&out, o.encode_format, o.encode_quality)?;
        enc += s.elapsed();
        let s = Instant::now();
        std::hint::black_box((sha256_hex(&data), phash(&out)));
        hash += s.elapsed();
    }
    t.decode_s = dec.as_secs_f64();
    t.resize_s = res.as_secs_f64();
    t.encode_s = enc.as_secs_f64();
    t.hash_s = hash.as_secs_f64();
    t.phases_img_s = t.images as f64 / (t.decode_s + t.resize_s + t.encode_s + t.hash_s).max(1e-9);
    let s = Instant::now();
    for b in &blobs {
        std::hint::black_box(crate::image::process(b, o)?);
    }
    t.process_img_s = t.images as f64 / s.elapsed().as_secs_f64().max(1e-9);
    Ok(t)
}

/// Encoder throughput of the feature caches (`bench/latents.sh`): the VAE encoder at 256 and 512 px
/// (one image at a time, as `cache vae` feeds it) and the T5 encoder over a prompt list (cleaned,
/// tokenized, packed 32 captions at a time, as `cache t5` runs it). Best of `rounds` after a warm-up.
#[derive(Debug, serde::Serialize)]
pub struct LatentThroughput {
    /// VAE images per second at 256 × 256.
    pub vae_256_images_per_s: f64,
    /// VAE images per second at 512 × 512.
    pub vae_512_images_per_s: f64,
    /// T5 captions per second.
    pub t5_captions_per_s: f64,
    /// Mean tokens per caption.
    pub t5_tokens_mean: f64,
}

fn best_of(rounds: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Measures [`LatentThroughput`] with the models in `models/vae` and `models/t5` on CPU (`only`: `t5`
/// or `vae` measures that one alone).
pub fn latents(
    models: &Path,
    prompts: &Path,
    tokenizer: &Path,
    rounds: usize,
    only: Option<&str>,
) -> anyhow::Result<LatentThroughput> {
    use crate::latents::t5::{CaptionTokenizer, TextCleaning, TextEncoder, MAX_TOKENS};
    use candle_core::{Device, Tensor};
    if !matches!(only, None | Some("t5") | Some("vae")) {
        anyhow::bail!("--only {:?}: expected t5 or vae", only.unwrap_or_default());
    }
    let dev = Device::Cpu;
    let mut per_s = [0.0; 2];
    let mut res = LatentThroughput {
        vae_256_images_per_s: 0.0,
        vae_512_images_per_s: 0.0,
        t5_captions_per_s: 0.0,
        t5_tokens_mean: 0.0,
    };
    if only != Some("t5") {
        let vae = crate::latents::vae::Vae::load(&models.join("vae"), &dev)?;
        for (slot, (size, n)) in per_s.iter_mut().zip([(256usize, 4usize), (512, 2)]) {
            let x = Tensor::rand(-1f32, 1f32, (n, 3, size, size), &dev)?;
            let s = best_of(rounds, || {
                for i in 0..n {
                    vae.encode(&x.narrow(0, i, 1)?)?;
                }
                Ok(())
            })?;
            *slot = n as f64 / s;
        }
        res.vae_256_images_per_s = per_s[0];
        res.vae_512_images_per_s = per_s[1];
    }
    if only == Some("vae") {
        return Ok(res);
    }
    let t5 = TextEncoder::load_encoder(&models.join("t5"), &dev)?;
    let tok = CaptionTokenizer::load(tokenizer, MAX_TOKENS, TextCleaning::Pixart)?;
    let text = std::fs::read_to_string(prompts).map_err(|e| anyhow::anyhow!("{}: {e}", prompts.display()))?;
    let captions: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut tokens = 0usize;
    let s = best_of(rounds, || {
        let ids = captions.iter().map(|c| tok.tokens(c).map(Some)).collect::<anyhow::Result<Vec<_>>>()?;
        tokens = ids.iter().flatten().map(Vec::len).sum();
        crate::latents::cache::t5_stage::encode_packed(&t5, &ids, 32)?;
        Ok(())
    })?;
    res.t5_captions_per_s = captions.len() as f64 / s;
    res.t5_tokens_mean = tokens as f64 / captions.len().max(1) as f64;
    Ok(res)
}
