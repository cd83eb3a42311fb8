//! Caches over a small source dataset, shared by tests/cache.rs and tests/train.rs.

use candle_core::Tensor;
use pixforge::latents::cache::{FeatureDType, T5CacheConfig, VaeCacheConfig};
use pixforge::latents::t5::{TextCleaning, MAX_TOKENS};
use pixforge::shards::stage::StageOptions;
use std::path::{Path, PathBuf};

/// One source sample: key, image bytes, caption bytes.
pub type Sample = (String, Option<Vec<u8>>, Option<Vec<u8>>);

pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + seed * 31) as u8, (y * 5 + seed * 17) as u8, ((x + y) * 3 + seed) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Two source shards as another tool (img2dataset) would write them: a tar and a `_stats.json`.
/// Shard 0: three captioned images; shard 1: one captioned image, one without a caption, one whose
/// caption is not UTF-8 and whose image is not an image.
pub fn source(dir: &Path) -> Vec<Vec<Sample>> {
    let prompts = std::fs::read_to_string(super::data().join("prompts/pixart_alpha_samples.txt")).unwrap();
    let p: Vec<&str> = prompts.lines().filter(|l| !l.trim().is_empty()).collect();
    let s = |k: &str, img: Option<Vec<u8>>, txt: Option<&[u8]>| (k.to_string(), img, txt.map(<[u8]>::to_vec));
    let shards = vec![
        vec![
            s("000000", Some(png(40, 30, 1)), Some(p[0].as_bytes())),
            s("000001", Some(png(24, 64, 2)), Some(p[1].as_bytes())),
            s("000002", Some(png(33, 33, 3)), Some(p[4].as_bytes())),
        ],
        vec![
            s("010000", Some(png(70, 20, 4)), Some(p[2].as_bytes())),
            s("010001", Some(png(16, 16, 5)), None),
            s("010002", Some(b"not an image".to_vec()), Some(&[0xff, 0xfe, 0x41])),
        ],
    ];
    std::fs::create_dir_all(dir).unwrap();
    for (i, samples) in shards.iter().enumerate() {
        let mut b = tar::Builder::new(std::fs::File::create(dir.join(format!("{i:05}.tar"))).unwrap());
        for (key, img, txt) in samples {
            for (ext, data) in [("png", img), ("txt", txt)] {
                if let Some(data) = data {
                    let mut h = tar::Header::new_ustar();
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, format!("{key}.{ext}"), data.as_slice()).unwrap();
                }
            }
        }
        b.finish().unwrap();
        std::fs::write(dir.join(format!("{i:05}_stats.json")), format!("{{\"count\": {}}}", samples.len())).unwrap();
    }
    shards
}

pub fn pipeline() -> PathBuf {
    super::fixtures().join("pixart-pipeline")
}

pub fn opts(input: &Path, out: &Path) -> StageOptions {
    StageOptions { progress: false, ..StageOptions::new(input, out) }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

pub fn t5_config(dtype: FeatureDType) -> T5CacheConfig {
    T5CacheConfig {
        model: pipeline(),
        max_tokens: MAX_TOKENS,
        cleaning: TextCleaning::Pixart,
        dtype,
        batch_size: 8,
        captions: None,
        all_captions: false,
    }
}

pub fn vae_config(model: &Path, resolution: usize, multiscale: bool) -> VaeCacheConfig {
    VaeCacheConfig { model: model.to_path_buf(), resolution, multiscale }
}

pub fn tiny_vae(dir: &Path) -> PathBuf {
    let out = dir.join("tiny");
    pixforge::models::init_tiny(pixforge::models::ModelKind::Vae, &out, false, 3).unwrap();
    out
}

/// A tiny PixArt shape: 2 blocks of 2 heads, patch 2, 16 caption channels, no micro-conditions.
pub fn tiny_pixart(head_dim: usize, sample_size: usize) -> pixforge::train::model::PixArtConfig {
    pixforge::train::model::PixArtConfig {
        num_attention_heads: 2,
        attention_head_dim: head_dim,
        in_channels: 4,
        out_channels: 8,
        num_layers: 2,
        sample_size,
        patch_size: 2,
        caption_channels: 16,
        interpolation_scale: Some(1.0),
        norm_eps: 1e-6,
        kv_compress: None,
    }
}
