//! `pixforge cache t5|vae`: what is stored equals the encoders' own output for each sample, bad
//! samples get a reason, reruns resume, workers split the shards, and a cache made from other inputs
//! is refused with a message that names what changed.

mod common;

use common::caches::*;

use candle_core::{Device, Tensor};
use pixforge::latents::cache::{t5_stage, vae_stage, FeatureDType};
use pixforge::latents::t5::{TextCleaning, TextEncoder, MAX_TOKENS};
use pixforge::shards::stage::{EntryStatus, StageOptions, StageReader};
use pixforge::shards::Worker;
use std::process::Command;

#[test]
fn t5_cache_holds_each_captions_own_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("t5"));
    let shards = source(&src);
    let cfg = t5_config(FeatureDType::F32);
    let stats = t5_stage::run(&cfg, &opts(&src, &out), &Device::Cpu).unwrap();
    assert_eq!((stats.shards_done, stats.samples, stats.successes, stats.failed), (2, 6, 4, 2));

    let reader = StageReader::open(&out, &cfg.fingerprint().unwrap()).unwrap();
    assert_eq!(reader.shards, ["00000", "00001"]);
    let mut t5 = TextEncoder::load(&pipeline(), MAX_TOKENS, TextCleaning::Pixart, &Device::Cpu).unwrap();
    for (name, samples) in reader.shards.iter().zip(&shards) {
        let shard = reader.shard(name).unwrap();
        assert_eq!(shard.entries.len(), samples.len(), "one entry per source sample, failures included");
        for (key, _, txt) in samples {
            let e = shard.entry(key).unwrap();
            match txt.as_deref().map(std::str::from_utf8) {
                Some(Ok(caption)) => {
                    let want = t5.encode(caption).unwrap();
                    let got = shard.t5_embedding(e, &Device::Cpu).unwrap();
                    assert_eq!(got.dims(), want.dims(), "{key}: unpadded, `</s>` included");
                    assert!(max_abs_diff(&got, &want) < 1e-5, "{key}");
                }
                Some(Err(_)) => assert_eq!(e.reason.as_deref(), Some("caption is not UTF-8")),
                None => {
                    assert_eq!(e.status, EntryStatus::Failed);
                    assert!(e.reason.as_deref().unwrap().contains("no .txt member"), "{e:?}");
                }
            }
        }
    }

    // bf16 (the default) stores the same values, rounded.
    let out16 = dir.path().join("t5-bf16");
    let cfg16 = t5_config(FeatureDType::Bf16);
    t5_stage::run(&cfg16, &opts(&src, &out16), &Device::Cpu).unwrap();
    let (a, b) = (reader.shard("00000").unwrap(), StageReader::open_unchecked(&out16).unwrap().shard("00000").unwrap());
    let (x, y) = (a.tensor("embeddings", &Device::Cpu).unwrap(), b.tensor("embeddings", &Device::Cpu).unwrap());
    let scale: f32 = x.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let d = max_abs_diff(&x, &y);
    assert!(d > 0.0 && d <= scale / 128.0, "bf16 rounding: {d} of {scale}");
    assert!(
        std::fs::metadata(out16.join("00000.safetensors")).unwrap().len()
            < std::fs::metadata(out.join("00000.safetensors")).unwrap().len()
    );
}

#[test]
fn t5_cache_resumes_and_splits_among_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("t5"));
    source(&src);
    let cfg = t5_config(FeatureDType::Bf16);
    let whole = dir.path().join("whole");
    t5_stage::run(&cfg, &opts(&src, &whole), &Device::Cpu).unwrap();

    // Two workers into one directory: each does its own shard.
    for i in 0..2 {
        let o = StageOptions { worker: Worker::new(i, 2).unwrap(), ..opts(&src, &out) };
        let s = t5_stage::run(&cfg, &o, &Device::Cpu).unwrap();
        assert_eq!((s.shards_done, s.shards_skipped), (1, 0), "worker {i}/2");
    }
    for f in ["00000.safetensors", "00001.safetensors", "00000.index.json", "00001.index.json", "manifest.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(whole.join(f)).unwrap(), "{f}");
    }

    // A killed run: shard 1 has only a temporary file (of a process that is gone) and no done marker. The rerun redoes only it.
    std::fs::remove_file(out.join("00001_stats.json")).unwrap();
    std::fs::remove_file(out.join("00001.safetensors")).unwrap();
    let tmp = out.join("00001.safetensors.pixforge-tmp-4294967294-0");
    std::fs::write(&tmp, b"half").unwrap();
    let s = t5_stage::run(&cfg, &opts(&src, &out), &Device::Cpu).unwrap();
    assert_eq!((s.shards_done, s.shards_skipped), (1, 1));
    assert!(!tmp.exists(), "leftover temporary files are removed");
    assert_eq!(
        std::fs::read(out.join("00001.safetensors")).unwrap(),
        std::fs::read(whole.join("00001.safetensors")).unwrap()
    );
}

/// The posterior moments stored per bucket equal `Vae::encode` of the image resized and cropped by
/// the official rule the index records (f16 rounding aside).
#[test]
fn vae_cache_holds_each_images_moments_per_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let shards = source(&src);
    let model = tiny_vae(dir.path());
    let vae = pixforge::latents::vae::Vae::load(&model, &Device::Cpu).unwrap();
    for (multiscale, resolution) in [(false, 32), (true, 256)] {
        let out = dir.path().join(format!("vae-{resolution}"));
        let cfg = vae_config(&model, resolution, multiscale);
        let stats = vae_stage::run(&cfg, &opts(&src, &out), &Device::Cpu).unwrap();
        assert_eq!((stats.successes, stats.failed), (5, 1));
        let reader = StageReader::open(&out, &cfg.fingerprint().unwrap()).unwrap();
        let table = pixforge::latents::buckets::table(256, false).unwrap();
        for (name, samples) in reader.shards.iter().zip(&shards) {
            let shard = reader.shard(name).unwrap();
            for (key, img, _) in samples {
                let e = shard.entry(key).unwrap();
                if e.status == EntryStatus::Failed {
                    assert!(e.reason.as_deref().unwrap().starts_with("cannot decode the image"), "{e:?}");
                    continue;
                }
                let rgb = image::load_from_memory(img.as_ref().unwrap()).unwrap().to_rgb8();
                let (h, w) = (rgb.height() as usize, rgb.width() as usize);
                assert_eq!(e.original_size, Some([h, w]));
                let (plan, filter) = if multiscale {
                    let b = pixforge::latents::buckets::closest(&table, h, w);
                    assert_eq!(e.bucket.as_deref().unwrap().parse::<f64>().unwrap(), b.key, "{key}");
                    (pixforge::latents::buckets::cover_and_crop(h, w, b), pixforge::image::Filter::Bicubic)
                } else {
                    assert_eq!(e.bucket.as_deref(), Some("32"));
                    (pixforge::latents::buckets::shorter_side_and_crop(h, w, 32), pixforge::image::Filter::Bilinear)
                };
                assert_eq!(e.resized, Some([plan.resize.0, plan.resize.1]));
                let (t, l, ch, cw) = plan.crop;
                assert_eq!(e.crop, Some([t, l, ch, cw]));
                let resized =
                    pixforge::image::resize_exact(&rgb, (plan.resize.1 as u32, plan.resize.0 as u32), filter).unwrap();
                let crop = image::imageops::crop_imm(&resized, l as u32, t as u32, cw as u32, ch as u32).to_image();
                let px: Vec<f32> = (0..3)
                    .flat_map(|c| crop.pixels().map(move |p| p[c] as f32 / 127.5 - 1.0).collect::<Vec<_>>())
                    .collect();
                let pixels = Tensor::from_vec(px, (1, 3, ch, cw), &Device::Cpu).unwrap();
                let (mean, std) = vae.encode(&pixels).unwrap();
                let (m, s) = shard.vae_moments(e, &Device::Cpu).unwrap();
                assert_eq!(m.dims(), &[4, ch / 8, cw / 8]);
                // Stored as f16: within its rounding of the largest value.
                let tol = |t: &Tensor| 1e-3 * t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(max_abs_diff(&m, &mean.squeeze(0).unwrap()) < tol(&mean), "{key} mean");
                assert!(max_abs_diff(&s, &std.squeeze(0).unwrap()) < tol(&std), "{key} std");
            }
        }
    }
}

/// A cache made, then its VAE's config changed: the reader refuses it and says what changed; a rerun
/// into the same directory refuses too, until --overwrite.
/// A cache stage run with a selection caches only its keys (through the CLI's `--selection`); the
/// others are indexed "not in the selection" in source order, and the selection is part of the
/// fingerprint.
#[test]
fn cache_takes_a_selection() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let sel = dir.path().join("sel.parquet");
    let mut df = DataFrame::new(2, vec![Column::new("key".into(), vec!["000001", "010000"])]).unwrap();
    pixforge::shards::write_parquet_atomic(&mut df, &sel).unwrap();
    let out = dir.path().join("t5");
    let run = |with: bool| {
        let mut c = Command::new(common::bin());
        c.args(["cache", "t5", "--model"]).arg(pipeline()).arg("--input").arg(&src).arg("--out").arg(&out);
        if with {
            c.arg("--selection").arg(&sel);
        }
        c.arg("--no-progress").output().unwrap()
    };
    let o = run(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = StageReader::open_unchecked(&out).unwrap();
    let mut seen = Vec::new();
    for name in &c.shards {
        for e in c.shard(name).unwrap().entries {
            let selected = e.key == "000001" || e.key == "010000";
            assert_eq!(e.status == EntryStatus::Success, selected, "{e:?}");
            if !selected {
                assert_eq!(e.reason.as_deref(), Some("not in the selection"));
            }
            seen.push(e.key);
        }
    }
    assert_eq!(seen, ["000000", "000001", "000002", "010000", "010001", "010002"], "source order");
    let o = run(false);
    assert!(!o.status.success(), "a cache made with a selection is not reused without it");
}

#[test]
fn changed_vae_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let model = tiny_vae(dir.path());
    let out = dir.path().join("vae");
    let cfg = vae_config(&model, 32, false);
    vae_stage::run(&cfg, &opts(&src, &out), &Device::Cpu).unwrap();
    assert!(StageReader::open(&out, &cfg.fingerprint().unwrap()).is_ok());

    let config = model.join("vae/config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("0.19684", "0.13025");
    std::fs::write(&config, text).unwrap();
    let err = StageReader::open(&out, &cfg.fingerprint().unwrap()).err().expect("a stale cache is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("stale vae cache") && msg.contains("`scaling_factor` was 0.19684 in the cache, is now 0.13025"),
        "{msg}"
    );

    let o = Command::new(common::bin())
        .args(["cache", "vae", "--resolution", "32", "--no-progress", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("scaling_factor") && stderr.contains("--overwrite"), "{stderr}");
    let o = Command::new(common::bin())
        .args(["cache", "vae", "--json", "--resolution", "32", "--no-progress", "--overwrite", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["shards_done"], 2);
    assert!(StageReader::open(&out, &cfg.fingerprint().unwrap()).is_ok());
}

/// A changed weight file or source shard is named too.
#[test]
fn changed_weights_and_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let model = tiny_vae(dir.path());
    let out = dir.path().join("vae");
    let cfg = vae_config(&model, 32, false);
    vae_stage::run(&cfg, &opts(&src, &out), &Device::Cpu).unwrap();
    pixforge::models::init_tiny(pixforge::models::ModelKind::Vae, &model, false, 4).unwrap();
    std::fs::write(src.join("00001_stats.json"), "{\"count\": 2}").unwrap();
    let expected = cfg.fingerprint().unwrap().with_sources(&src, &["00000".into(), "00001".into()]).unwrap();
    let msg = format!("{:#}", StageReader::open(&out, &expected).err().unwrap());
    assert!(msg.contains("model file diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("source shard 00001: its _stats.json changed") && !msg.contains("00000"), "{msg}");
}

/// The array of a `.npy` file: its header text and its little-endian data bytes.
fn parse_npy(bytes: &[u8]) -> (String, &[u8]) {
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let n = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    (String::from_utf8(bytes[10..10 + n].to_vec()).unwrap(), &bytes[10 + n..])
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// `export pixart-official` writes the official readers' layout: data_info.json, per-sample npz
/// (padded caption features + mask) and npy (mean ‖ std), PNG images, for samples in both caches.
#[test]
fn export_writes_the_official_layout() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let (t5_dir, vae_dir, out) = (dir.path().join("t5"), dir.path().join("vae"), dir.path().join("official"));
    t5_stage::run(&t5_config(FeatureDType::F32), &opts(&src, &t5_dir), &Device::Cpu).unwrap();
    let model = tiny_vae(dir.path());
    vae_stage::run(&vae_config(&model, 32, false), &opts(&src, &vae_dir), &Device::Cpu).unwrap();
    let o = Command::new(common::bin())
        .args(["export", "pixart-official", "--json", "--shards"])
        .arg(&src)
        .arg("--t5")
        .arg(&t5_dir)
        .arg("--vae")
        .arg(&vae_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (stats["samples"].as_u64(), stats["skipped"].as_u64()),
        (Some(4), Some(2)),
        "no caption / no image: skipped"
    );

    let info: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("InternData/partition/data_info.json")).unwrap()).unwrap();
    assert_eq!(info.len(), 4);
    assert_eq!(info[0]["path"], "00000/000000.png");
    assert_eq!(
        (info[0]["height"].as_u64(), info[0]["width"].as_u64(), info[0]["ratio"].as_f64()),
        (Some(30), Some(40), Some(0.75))
    );
    let prompts = std::fs::read_to_string(common::data().join("prompts/pixart_alpha_samples.txt")).unwrap();
    assert_eq!(info[0]["prompt"], prompts.lines().next().unwrap());
    let img = image::open(out.join("InternImgs/00000/000000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (40, 30));

    let t5 = StageReader::open_unchecked(&t5_dir).unwrap().shard("00000").unwrap();
    let e = t5.entry("000000").unwrap();
    let emb = t5.t5_embedding(e, &Device::Cpu).unwrap();
    let (len, d) = emb.dims2().unwrap();
    let npz = std::fs::File::open(out.join("InternData/caption_feature_wmask/00000_000000.npz")).unwrap();
    let mut zip = zip::ZipArchive::new(npz).unwrap();
    let mut read = |name: &str| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(name).unwrap(), &mut b).unwrap();
        b
    };
    let (feature, mask) = (read("caption_feature.npy"), read("attention_mask.npy"));
    let (header, data) = parse_npy(&feature);
    assert!(header.contains(&format!("'descr': '<f4', 'fortran_order': False, 'shape': (1, 120, {d})")), "{header}");
    let values = f32s(data);
    let want: Vec<f32> = emb.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(&values[..len * d], &want[..]);
    assert!(values[len * d..].iter().all(|&v| v == 0.0), "rows past the caption are zeros");
    let (header, data) = parse_npy(&mask);
    assert!(header.contains("'descr': '<i8'") && header.contains("'shape': (1, 120)"), "{header}");
    let ones = data.chunks_exact(8).filter(|c| i64::from_le_bytes((*c).try_into().unwrap()) == 1).count();
    assert_eq!(ones, len);

    let vae = StageReader::open_unchecked(&vae_dir).unwrap().shard("00000").unwrap();
    let (m, s) = vae.vae_moments(vae.entry("000000").unwrap(), &Device::Cpu).unwrap();
    let bytes = std::fs::read(out.join("InternData/img_vae_features_32resolution/noflip/00000_000000.npy")).unwrap();
    let (header, data) = parse_npy(&bytes);
    assert!(header.contains("'shape': (8, 4, 4)"), "{header}");
    let want: Vec<f32> = Tensor::cat(&[m, s], 0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(f32s(data), want);
}
