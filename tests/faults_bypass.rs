//! No bypass: every image that leaves the process — to a captioning server, into the VAE cache, to
//! the local LLaVA, into an export — passes the same header check and pixel limit, is resized as
//! configured, and carries no metadata the decoders dropped. One shard of hostile images goes
//! through each stage: headers declaring billions of pixels (WebP, PNG), a JPEG cut in its scan, a
//! 1x1 PNG whose ICC profile inflates to 256 MiB, beside a small PNG and a large JPEG.

mod common;

use common::caches::*;
use common::vlm::{Expect, VlmServer};
use pixforge::bench::bombs::{png_declaring, png_with_icc_bomb, webp_declaring, write_shard};
use pixforge::caption::{Backend, CaptionConfig};
use pixforge::latents::cache::{t5_stage, vae_stage, FeatureDType};
use pixforge::shards::stage::{EntryStatus, StageReader};
use polars::prelude::SerReader;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const SMALL: usize = 0;
const WEBP_PIXELS: usize = 1;
const PNG_PIXELS: usize = 2;
const ICC_BOMB: usize = 3;
const CUT_JPEG: usize = 4;
const LARGE: usize = 5;

fn key(i: usize) -> String {
    format!("{i:09}")
}

fn large_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1200, 600, |x, y| image::Rgb([(x / 5) as u8, (y / 3) as u8, 90]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
    out
}

/// The hostile shard; returns its images by index.
fn hostile_shard(dir: &Path) -> Vec<Vec<u8>> {
    let rocket = std::fs::read(common::data_image("rocket.jpg")).unwrap();
    let images = vec![
        ("png", png(64, 48, 1)),
        ("webp", webp_declaring(16_384, 16_384)),
        ("png", png_declaring(100_000, 100_000)),
        ("png", png_with_icc_bomb(256 << 20, 200)),
        ("jpg", rocket[..rocket.len() / 2].to_vec()),
        ("jpg", large_jpeg()),
    ];
    let named: Vec<(String, Vec<u8>)> = images.iter().map(|(ext, b)| (format!("x.{ext}"), b.clone())).collect();
    write_shard(dir, &named).unwrap();
    images.into_iter().map(|(_, b)| b).collect()
}

/// Each sample's caption error (None for a caption), by key.
fn caption_errors(path: &Path) -> HashMap<String, Option<String>> {
    let df = polars::prelude::ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
    let keys = df.column("key").unwrap().str().unwrap().clone();
    let errors = df.column("error").unwrap().str().unwrap().clone();
    (0..df.height()).map(|i| (keys.get(i).unwrap().to_string(), errors.get(i).map(str::to_string))).collect()
}

fn assert_refused(stage: &str, errors: &HashMap<String, Option<String>>) {
    for (i, words) in [
        (WEBP_PIXELS, "exceeds --max-image-pixels"),
        (PNG_PIXELS, "exceeds --max-image-pixels"),
        (CUT_JPEG, "truncated"),
    ] {
        let e = errors[&key(i)].as_deref().unwrap_or_else(|| panic!("{stage}: sample {i} was not refused"));
        assert!(e.contains(words), "{stage}: sample {i}: {e}");
    }
    for i in [SMALL, ICC_BOMB, LARGE] {
        assert_eq!(errors[&key(i)], None, "{stage}: sample {i}");
    }
}

#[test]
fn hostile_images_are_checked_resized_and_cleaned_by_every_stage_that_sends_them_on() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let images = hostile_shard(&src);

    // To a captioning server.
    let srv = VlmServer::start(Expect::answering("m"));
    let cfg = CaptionConfig {
        backend: Backend::Openai,
        model: "m".into(),
        endpoint: Some(format!("{}/v1", srv.base)),
        prompts: vec!["Describe sample {key} in a very detailed manner".into()],
        image_side: 448,
        ..CaptionConfig::default()
    };
    let out = dir.path().join("captions");
    pixforge::caption::run(&cfg, &opts(&src, &out)).unwrap();
    assert_refused("openai", &caption_errors(&out.join("00000.captions.parquet")));
    let log = srv.log.lock().unwrap();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    for i in [WEBP_PIXELS, PNG_PIXELS, CUT_JPEG] {
        assert_eq!(log.requests.get(&key(i)), None, "sample {i} must not be sent");
    }
    assert_eq!(log.images[&key(SMALL)].bytes, images[SMALL], "a small clean image goes as stored");
    let bomb = &log.images[&key(ICC_BOMB)];
    assert_eq!((bomb.mime.as_str(), bomb.width, bomb.height), ("image/jpeg", 1, 1));
    assert!(bomb.bytes.len() < 4096, "re-encoded without its profile: {} bytes", bomb.bytes.len());
    let large = &log.images[&key(LARGE)];
    assert_eq!((large.mime.as_str(), large.width, large.height), ("image/jpeg", 896, 448), "resized to --image-side");
    drop(log);

    // To the local LLaVA.
    let llava = CaptionConfig {
        model: common::fixtures().join("golden/llava_tiny").to_string_lossy().into_owned(),
        max_tokens: 2,
        temperature: 0.0,
        ..CaptionConfig::default()
    };
    let out = dir.path().join("llava");
    pixforge::caption::run(&llava, &opts(&src, &out)).unwrap();
    assert_refused("candle", &caption_errors(&out.join("00000.captions.parquet")));

    // Into the VAE cache.
    let (t5_dir, vae_dir) = (dir.path().join("t5"), dir.path().join("vae"));
    let model = tiny_vae(dir.path());
    let vae = vae_config(&model, 32, false);
    vae_stage::run(&vae, &opts(&src, &vae_dir), &candle_core::Device::Cpu).unwrap();
    let reader = StageReader::open(&vae_dir, &vae.fingerprint().unwrap()).unwrap();
    let shard = reader.shard(&reader.shards[0]).unwrap();
    let errors: HashMap<String, Option<String>> = (0..images.len())
        .map(|i| {
            let e = shard.entry(&key(i)).unwrap();
            assert_eq!(e.status == EntryStatus::Success, e.reason.is_none(), "{e:?}");
            (key(i), e.reason.clone())
        })
        .collect();
    assert_refused("cache vae", &errors);

    // Into an export for the official PixArt code.
    t5_stage::run(&t5_config(FeatureDType::F32), &opts(&src, &t5_dir), &candle_core::Device::Cpu).unwrap();
    let official = dir.path().join("official");
    let o = Command::new(common::bin())
        .args(["export", "pixart-official", "--shards"])
        .arg(&src)
        .args(["--t5".as_ref(), t5_dir.as_os_str(), "--vae".as_ref(), vae_dir.as_os_str(), "--out".as_ref()])
        .arg(&official)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exported = |i: usize| std::fs::read(official.join(format!("InternImgs/00000/{}.png", key(i))));
    assert_eq!(exported(SMALL).unwrap(), images[SMALL], "a clean PNG is copied as stored");
    let bomb = exported(ICC_BOMB).unwrap();
    assert!(bomb.len() < 4096 && !bomb.windows(4).any(|w| w == b"iCCP"), "re-encoded without its profile");
    let large = image::load_from_memory(&exported(LARGE).unwrap()).unwrap();
    assert_eq!((large.width(), large.height()), (1200, 600));
    for i in [WEBP_PIXELS, PNG_PIXELS, CUT_JPEG] {
        assert!(exported(i).is_err(), "sample {i} must not be exported");
    }
}
