//! A tiny PixArt learns what its captions show: the six bundled photos with their alt-text, cached
//! at 64 px with the test T5 and the tiny VAE that carries the image (`init-tiny --kind vae`), a
//! tiny PixArt trained on them with `pixforge train`; `pixforge sample` from its EMA weights, each
//! caption with two seeds and the default guidance, then gives images nearer that caption's own
//! photo than any other photo, both seen through the same VAE decoder (the photo as its cached
//! latent, decoded).

mod common;

use candle_core::{Device, Tensor};
use pixforge::latents::vae::Vae;
use pixforge::shards::stage::StageReader;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs the binary with `args` in `dir`.
fn pixforge(dir: &Path, args: &[&str]) -> String {
    ok(Command::new(common::bin()).current_dir(dir).args(args).output().unwrap())
}

/// An image file as `[3, H, W]` in [−1, 1].
fn pixels(path: &Path) -> Tensor {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let px: Vec<f32> = img.into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect();
    Tensor::from_vec(px, (h as usize, w as usize, 3), &Device::Cpu).unwrap().permute((2, 0, 1)).unwrap()
}

fn mean_squared(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

#[test]
fn samples_of_each_caption_are_nearest_its_own_photo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pixforge::demo::write_inputs(&d.join("photos")).unwrap();
    let t5 = common::caches::pipeline();
    let t5 = t5.to_str().unwrap();
    pixforge(d, &["ingest", "folder", "--image-size", "64", "--no-progress", "--out", "shards", "photos"]);
    pixforge(d, &["cache", "t5", "--no-progress", "--model", t5, "--input", "shards", "--out", "t5"]);
    pixforge(d, &["models", "init-tiny", "--kind", "vae", "--out", "vae-model"]);
    pixforge(
        d,
        &[
            "cache",
            "vae",
            "--resolution",
            "64",
            "--no-progress",
            "--model",
            "vae-model",
            "--input",
            "shards",
            "--out",
            "vae",
        ],
    );

    // 6000 steps of all six photos: at 1000 or 3000 steps several captions still give another photo.
    let steps = 6000;
    let config = format!(
        "output_dir = \"run\"\nmax_steps = {steps}\nseed = 3\nema_decay = 0.99\n\
         [data]\ncaches = [{{ t5 = \"t5\", vae = \"vae\" }}]\nbatch_size = 6\n\
         [model]\nlayers = 2\nheads = 2\nhead_dim = 16\nsample_size = 8\ncaption_channels = 16\n\
         [optimizer]\nlr = 3e-3\nweight_decay = 0.0\n[checkpoints]\nevery = {steps}\n[logging]\nprogress = false\n"
    );
    std::fs::write(d.join("train.toml"), config).unwrap();
    pixforge(d, &["train", "--config", "train.toml"]);

    // Each photo's caption and its cached latent, decoded.
    let vae = Vae::load(&d.join("vae-model"), &Device::Cpu).unwrap();
    let mut captions = BTreeMap::new();
    for shard in std::fs::read_dir(d.join("shards")).unwrap().map(|e| e.unwrap().path()) {
        if shard.extension().is_some_and(|e| e == "parquet") {
            for r in pixforge::shards::read_records(&shard).unwrap() {
                captions.insert(r.key, r.caption.unwrap());
            }
        }
    }
    let cache = StageReader::open_unchecked(&d.join("vae")).unwrap();
    let mut photos = BTreeMap::new();
    for name in &cache.shards {
        let shard = cache.shard(name).unwrap();
        for e in &shard.entries {
            let (mean, _) = shard.vae_moments(e, &Device::Cpu).unwrap();
            let latent = (mean.unsqueeze(0).unwrap() * vae.scaling_factor).unwrap();
            photos.insert(e.key.clone(), vae.decode(&latent).unwrap().squeeze(0).unwrap());
        }
    }
    assert_eq!((captions.len(), photos.len()), (6, 6));
    let keys: Vec<&String> = captions.keys().collect();
    let prompts: Vec<&str> = captions.values().map(String::as_str).collect();
    std::fs::write(d.join("prompts.txt"), prompts.join("\n")).unwrap();

    let ema = format!("run/checkpoints/step_{steps:07}/ema.safetensors");
    let mut report = String::new();
    let mut wrong = Vec::new();
    for seed in ["0", "1"] {
        let out = format!("samples-{seed}");
        pixforge(
            d,
            &[
                "sample",
                "--transformer",
                &ema,
                "--heads",
                "2",
                "--sample-size",
                "8",
                "--t5",
                t5,
                "--vae",
                "vae-model",
                "--prompts",
                "prompts.txt",
                "--size",
                "64x64",
                "--seed",
                seed,
                "--out",
                &out,
            ],
        );
        for (i, key) in keys.iter().enumerate() {
            let sample = pixels(&d.join(&out).join(format!("{i:04}.png")));
            let distances: Vec<(f64, &String)> = photos.iter().map(|(k, p)| (mean_squared(&sample, p), k)).collect();
            let nearest = distances.iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
            report += &format!("seed {seed}, {key}: {distances:.3?}\n");
            if nearest.1 != *key {
                wrong.push(format!("seed {seed}: the caption of {key} gave an image nearest {}", nearest.1));
            }
        }
    }
    eprintln!("mean squared distance of each sample to each photo:\n{report}");
    assert!(wrong.is_empty(), "{wrong:#?}\n{report}");
}
