//! Curation scores against their reference implementations.

mod common;

use candle_core::{Device, Tensor};
use pixforge::score::aesthetic::AestheticHead;

/// The LAION aesthetic heads V1 and V2 (real released weights) on the ten real CLIP ViT-L/14
/// embeddings of tests/data/aesthetic equal the reference code's scores (`tools/golden/aesthetic.py`)
/// within 1e-4; a checkpoint of another kind is refused with the keys it has.
#[test]
fn aesthetic_heads_match_the_reference_scores() {
    let data = common::data().join("aesthetic");
    let rows: Vec<Tensor> =
        (0..10).map(|i| Tensor::read_npy(data.join(format!("vit_l_14_rating{i}.npy"))).unwrap()).collect();
    let emb = Tensor::cat(&rows, 0).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("golden/aesthetic.json")).unwrap())
            .unwrap();
    for (file, version) in [("sa_0_4_vit_l_14_linear.pth", "v1"), ("sac+logos+ava1-l14-linearMSE.pth", "v2")] {
        let head = AestheticHead::load(&data.join(file), &Device::Cpu).unwrap();
        assert_eq!((head.version, head.input_dim()), (version, 768));
        let scores = head.score(&emb).unwrap();
        let want: Vec<f64> = golden[version].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!((scores.len(), want.len()), (10, 10), "{version}: one score per embedding");
        for (i, (got, want)) in scores.iter().zip(&want).enumerate() {
            assert!((*got as f64 - want).abs() < 1e-4, "{version} rating {i}: {got} vs {want}");
        }
        // Scores rise with the rating bucket the embeddings were picked from.
        assert!(scores.windows(2).all(|w| w[1] > w[0]), "{version}: {scores:?}");
        // Normalisation is part of the head: a scaled embedding scores the same.
        let scaled = head.score(&(&emb * 3.0).unwrap()).unwrap();
        assert!(scaled.iter().zip(&scores).all(|(a, b)| (a - b).abs() < 1e-4));
    }
    let err = AestheticHead::load(&common::fixtures().join("golden/adamw.safetensors"), &Device::Cpu).unwrap_err();
    assert!(format!("{err}").contains("not a LAION aesthetic head"), "{err}");
    let head = AestheticHead::load(&data.join("sa_0_4_vit_l_14_linear.pth"), &Device::Cpu).unwrap();
    assert!(head.score(&Tensor::zeros((1, 512), candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
}

/// The committed ONNX graphs of the heads with their weights written from the released checkpoints
/// (`{name}.weights`: each layer's weight and bias as raw little-endian f32, in order).
fn onnx_head(dir: &std::path::Path, name: &str, checkpoint: &str, prefixes: &[&str]) -> std::path::PathBuf {
    let data = common::data().join("aesthetic");
    let sd: std::collections::HashMap<String, Tensor> =
        candle_core::pickle::read_all(data.join(checkpoint)).unwrap().into_iter().collect();
    let mut blob = Vec::new();
    for p in prefixes {
        for kind in ["weight", "bias"] {
            let v: Vec<f32> = sd[&format!("{p}{kind}")].flatten_all().unwrap().to_vec1().unwrap();
            blob.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    std::fs::write(dir.join(format!("{name}.weights")), blob).unwrap();
    let onnx = dir.join(format!("{name}.onnx"));
    std::fs::copy(common::fixtures().join(format!("golden/{name}.onnx")), &onnx).unwrap();
    onnx
}

/// The same heads exported to ONNX and run by ONNX Runtime through `ort` give onnxruntime-Python's
/// scores and the reference scores (1e-4); `pixforge score aesthetic` prints them; a missing runtime is
/// a clear error.
#[test]
fn aesthetic_heads_run_through_onnx_runtime() {
    common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let v1 = onnx_head(dir.path(), "aesthetic_v1", "sa_0_4_vit_l_14_linear.pth", &[""]);
    let layers = ["layers.0.", "layers.2.", "layers.4.", "layers.6.", "layers.7."];
    let v2 = onnx_head(dir.path(), "aesthetic_v2", "sac+logos+ava1-l14-linearMSE.pth", &layers);
    let data = common::data().join("aesthetic");
    let rows: Vec<Tensor> =
        (0..10).map(|i| Tensor::read_npy(data.join(format!("vit_l_14_rating{i}.npy"))).unwrap()).collect();
    let emb = Tensor::cat(&rows, 0).unwrap();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("golden").join(f)).unwrap()).unwrap()
    };
    let (ort_golden, reference) = (read("aesthetic_onnx.json"), read("aesthetic.json"));
    for (path, name, version) in [(&v1, "aesthetic_v1", "v1"), (&v2, "aesthetic_v2", "v2")] {
        let mut head = pixforge::score::aesthetic::Head::load(path, &Device::Cpu).unwrap();
        let scores = head.score(&emb).unwrap();
        assert_eq!(scores.len(), 10, "{name}: one score per embedding");
        for (i, s) in scores.iter().enumerate() {
            let (o, r) = (ort_golden[name][i].as_f64().unwrap(), reference[version][i].as_f64().unwrap());
            assert!((*s as f64 - o).abs() < 1e-5, "{name} {i}: {s} vs onnxruntime-Python {o}");
            assert!((*s as f64 - r).abs() < 1e-4, "{name} {i}: {s} vs the reference {r}");
        }
    }

    let files: Vec<std::path::PathBuf> = (0..3).map(|i| data.join(format!("vit_l_14_rating{i}.npy"))).collect();
    let out = std::process::Command::new(common::bin())
        .args(["score", "aesthetic", "--head"])
        .arg(&v2)
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s0 = printed[files[0].display().to_string()][0].as_f64().unwrap();
    assert!((s0 - reference["v2"][0].as_f64().unwrap()).abs() < 1e-4, "{printed}");

    let out = std::process::Command::new(common::bin())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args(["score", "aesthetic", "--head"])
        .arg(&v1)
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so: no such file"), "{err}");
}

/// ONNX Runtime is searched for at run time in the documented order, with no path compiled in: a
/// binary copied into a folder of its own, run with an empty cache, names the folder beside it and the
/// user's cache and nothing of the source tree it was built from; with the library beside it, it runs.
#[test]
fn onnx_runtime_is_found_beside_the_binary_or_in_the_users_cache() {
    let lib = common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let (bin_dir, home) = (dir.path().join("bin"), dir.path().join("home"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let bin = bin_dir.join("pixforge");
    std::fs::copy(common::bin(), &bin).unwrap();
    let onnx = onnx_head(dir.path(), "aesthetic_v1", "sa_0_4_vit_l_14_linear.pth", &[""]);
    let emb = common::data().join("aesthetic/vit_l_14_rating0.npy");
    let run = || {
        std::process::Command::new(&bin)
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", &home)
            .args(["score", "aesthetic", "--head"])
            .arg(&onnx)
            .arg(&emb)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let cache = home.join(".cache/pixforge/onnxruntime");
    assert!(err.contains("not found") && err.contains(&bin_dir.display().to_string()), "{err}");
    assert!(err.contains(&cache.display().to_string()), "{err}");
    assert!(!err.contains(env!("CARGO_MANIFEST_DIR")), "no source-tree path: {err}");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&lib, cache.join(lib.file_name().unwrap())).unwrap();
    let out = run();
    assert!(out.status.success(), "found in the user's cache: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::copy(&lib, bin_dir.join(lib.file_name().unwrap())).unwrap();
    let out = run();
    assert!(out.status.success(), "found beside the binary: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny random CLIP vision tower exported to ONNX (`tools/golden/clip_tiny.py`) gives PyTorch's
/// embeddings within 1e-4 on the processor's pixels of the bundled photos; our CLIP preprocessing
/// of those photos is within a grey level or two of `CLIPImageProcessor`'s (PIL's bicubic resize
/// rounds differently), and the embeddings of our pixels stay close to PyTorch's.
#[test]
fn clip_tower_runs_through_onnx_runtime() {
    use pixforge::score::clip::{ClipPreprocess, ClipTower};
    common::onnxruntime();
    let golden = common::fixtures().join("golden");
    let io = candle_core::safetensors::load(golden.join("clip_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("clip_tiny.json")).unwrap()).unwrap();
    let f3 = |k: &str| -> [f32; 3] {
        let v: Vec<f32> = meta[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        [v[0], v[1], v[2]]
    };
    let pre = ClipPreprocess { size: 32, crop: 32, mean: f3("mean"), std: f3("std") };
    let mut tower = ClipTower::load(&golden.join("clip_tiny.onnx"), pre.clone(), 2).unwrap();
    let want: Vec<Vec<f32>> = io["image_embeds"].to_vec2().unwrap();
    let pixels: Vec<f32> = io["pixel_values"].flatten_all().unwrap().to_vec1().unwrap();
    let got = tower.embed_pixels(pixels.clone(), want.len()).unwrap();
    let max = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    };
    assert!(max(&got, &want) < 1e-4, "ONNX Runtime vs PyTorch: {}", max(&got, &want));
    let mut pixel_head =
        pixforge::score::clip::PixelHead::load(&golden.join("pixel_tiny_head.onnx"), &pre, None).unwrap();
    let p = pixel_head.score_pixels(pixels.clone(), want.len()).unwrap();
    let wp: Vec<f32> = io["pixel_head_scores"].to_vec1().unwrap();
    assert!(p.iter().zip(&wp).all(|(a, b)| (a - b).abs() < 1e-5), "pixel head: {p:?} vs PyTorch {wp:?}");

    let photos: Vec<image::RgbImage> = meta["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            image::open(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(p.as_str().unwrap()))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let ours: Vec<f32> = photos.iter().flat_map(|img| pre.pixels(img).unwrap()).collect();
    let level = 1.0 / 255.0 / pre.std.iter().fold(f32::MAX, |a, &b| a.min(b));
    let diff = ours.iter().zip(&pixels).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mean_diff = ours.iter().zip(&pixels).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    eprintln!(
        "preprocessing vs CLIPImageProcessor: max {:.2} levels, mean {:.3} levels",
        diff / level,
        mean_diff / level
    );
    assert!(mean_diff < 0.5 * level && diff < 12.0 * level, "max {diff}, mean {mean_diff} (a level is {level})");
    let from_ours = tower.embed(&photos).unwrap();
    assert!(max(&from_ours, &want) < 0.05, "embeddings of our pixels: {}", max(&from_ours, &want));
}

/// The CLIP text tower (`tools/golden/clip_text_tiny.py`: transformers' `CLIPTextModelWithProjection`
/// with a tiny CLIP-format tokenizer, exported to ONNX): the demo's alt-texts, a caption longer than
/// 77 tokens and one with capitals and doubled spaces tokenise to exactly `CLIPTokenizerFast`'s ids
/// and mask, and embed within 1e-4 of PyTorch's.
#[test]
fn clip_text_tower_matches_transformers() {
    use pixforge::score::clip_text::{cosine, ClipTextTower, CLIP_TOKENS};
    common::onnxruntime();
    let golden = common::fixtures().join("golden");
    let io = candle_core::safetensors::load(golden.join("clip_text_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("clip_text_tiny_io.json")).unwrap()).unwrap();
    let texts: Vec<&str> = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let dir = golden.join("clip_text_tiny");
    let mut tower =
        ClipTextTower::load(&dir.join("text_model.onnx"), &dir.join("tokenizer.json"), CLIP_TOKENS, 2).unwrap();
    let (ids, mask) = tower.tokenize(&texts).unwrap();
    let want_ids: Vec<i64> = io["input_ids"].flatten_all().unwrap().to_vec1().unwrap();
    let want_mask: Vec<i64> = io["attention_mask"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ids, want_ids, "token ids");
    assert_eq!(mask, want_mask, "attention mask");
    assert_eq!(mask[6 * CLIP_TOKENS..7 * CLIP_TOKENS].iter().sum::<i64>(), 77, "the long caption fills the context");
    let got = tower.embed(&texts).unwrap();
    let want: Vec<Vec<f32>> = io["text_embeds"].to_vec2().unwrap();
    let d = got.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("CLIP text embeddings differ from transformers' by {d:e}");
    assert!(d < 1e-4, "{d}");
    assert!((cosine(&got[0], &got[0]) - 1.0).abs() < 1e-6 && cosine(&got[0], &got[1]).abs() < 1.0);

    // A caption longer than the context, embedded in windows: `cat` ×75 fills the first window
    // exactly and `dog` ×10 the second; the result is the mean of the two texts' normalised
    // embeddings, each embedded alone (each fits). A text that fits embeds as with truncation.
    use pixforge::score::clip_text::LongText;
    let mut chunked = ClipTextTower::load(&dir.join("text_model.onnx"), &dir.join("tokenizer.json"), CLIP_TOKENS, 2)
        .unwrap()
        .with_long_texts(LongText::Chunks);
    let (a, b) = (["cat"; 75].join(" "), ["dog"; 10].join(" "));
    assert_eq!(tower.windows(&a).unwrap()[0].len(), CLIP_TOKENS, "75 words, one token each, fill the context");
    let long = format!("{a} {b}");
    assert_eq!(chunked.windows(&long).unwrap().len(), 2);
    let both = chunked.embed(&[long.as_str(), texts[0]]).unwrap();
    let alone = tower.embed(&[a.as_str(), b.as_str(), texts[0]]).unwrap();
    let unit = |v: &Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let (ua, ub) = (unit(&alone[0]), unit(&alone[1]));
    let mean: Vec<f32> = ua.iter().zip(&ub).map(|(x, y)| (x + y) / 2.0).collect();
    let d = both[0].iter().zip(&mean).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "the windows' mean: {d}");
    assert!((cosine(&both[1], &alone[2]) - 1.0).abs() < 1e-6, "a short text embeds as with truncation");
    assert!(cosine(&both[0], &tower.embed(&[long.as_str()]).unwrap()[0]) < 0.9999, "truncation drops the dogs");

    // Each demo photo against its alt-text: the image tower on the image processor's pixels
    // (clip_tiny_io) and the text tower give PyTorch's cosine.
    let images = candle_core::safetensors::load(golden.join("clip_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let pixels: Vec<f32> = images["pixel_values"].flatten_all().unwrap().to_vec1().unwrap();
    let pre = pixforge::score::clip::ClipPreprocess { size: 32, crop: 32, ..Default::default() };
    let mut vision = pixforge::score::clip::ClipTower::load(&golden.join("clip_tiny.onnx"), pre, 1).unwrap();
    let photos = vision.embed_pixels(pixels, 6).unwrap();
    let want: Vec<f32> = io["demo_cosine"].to_vec1().unwrap();
    for (i, (photo, w)) in photos.iter().zip(&want).enumerate() {
        let c = cosine(photo, &got[i]);
        assert!((c - w).abs() < 1e-4, "photo {i}: cosine {c} vs PyTorch's {w}");
    }
}

/// The score config of the tiny CLIP tower (32 px, OpenAI's mean and std), no heads.
fn tiny_score_config(batch_size: usize) -> pixforge::score::stage::ScoreConfig {
    let golden = common::fixtures().join("golden");
    pixforge::score::stage::ScoreConfig {
        tower: golden.join("clip_tiny.onnx"),
        heads: vec![],
        pixel_heads: vec![],
        size: 32,
        crop: 32,
        mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
        batch_size,
        text_tower: None,
        text_tokenizer: None,
        captions: None,
        mismatch_below: None,
        text_max_tokens: pixforge::score::clip_text::CLIP_TOKENS,
        text_long: Default::default(),
    }
}

/// `pixforge score clip` over shards: one embedding row per decodable image (equal to the tower's
/// output on that image), the failure recorded with its reason, a parquet of head scores by key
/// (null for the failure), a rerun that does nothing, and a changed head refused without --overwrite.
#[test]
fn score_stage_embeds_and_scores_shards() {
    use pixforge::score::stage::{run, ScoreConfig};
    use pixforge::shards::stage::StageReader;
    common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::caches::source(&src);
    let golden = common::fixtures().join("golden");
    let cfg = ScoreConfig {
        heads: vec![golden.join("clip_tiny_head.onnx")],
        pixel_heads: vec![golden.join("pixel_tiny_head.onnx")],
        ..tiny_score_config(2)
    };
    let out = dir.path().join("scores");
    let stats = run(&cfg, &common::caches::opts(&src, &out), None).unwrap();
    assert_eq!((stats.shards_done, stats.samples, stats.successes, stats.failed), (2, 6, 5, 1), "{stats:?}");

    let cache = StageReader::open_unchecked(&out).unwrap();
    let mut tower = pixforge::score::clip::ClipTower::load(&cfg.tower, cfg.preprocess().unwrap(), 1).unwrap();
    let mut head = pixforge::score::aesthetic::Head::load(&cfg.heads[0], &Device::Cpu).unwrap();
    let mut pixel_head =
        pixforge::score::clip::PixelHead::load(&cfg.pixel_heads[0], &cfg.preprocess().unwrap(), None).unwrap();
    for (i, samples) in common::caches::source(&dir.path().join("again")).iter().enumerate() {
        let name = format!("{i:05}");
        let shard = cache.shard(&name).unwrap();
        use polars::prelude::SerReader;
        let df = polars::prelude::ParquetReader::new(
            std::fs::File::open(out.join(format!("{name}.scores.parquet"))).unwrap(),
        )
        .finish()
        .unwrap();
        let scores = df.column("clip_tiny_head").unwrap().f32().unwrap().clone();
        let pixel_scores = df.column("pixel_tiny_head").unwrap().f32().unwrap().clone();
        for (j, (key, img, _)) in samples.iter().enumerate() {
            let e = shard.entry(key).unwrap();
            assert_eq!(df.column("key").unwrap().str().unwrap().get(j), Some(key.as_str()));
            let Some(row) = e.row else {
                assert!(e.reason.as_deref().unwrap().contains("cannot decode"), "{e:?}");
                assert_eq!(scores.get(j), None, "no score without an embedding");
                continue;
            };
            let decoded = image::load_from_memory(img.as_ref().unwrap()).unwrap().to_rgb8();
            let want = tower.embed(&[decoded]).unwrap().remove(0);
            let got: Vec<f32> =
                shard.rows("embeddings", row, 1, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 2e-3, "{key}: f16 embedding vs the tower: {d}");
            let s = head.score(&Tensor::new(&want[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap()[0];
            assert!((scores.get(j).unwrap() - s).abs() < 1e-4, "{key}");
            let decoded = image::load_from_memory(img.as_ref().unwrap()).unwrap().to_rgb8();
            let p = pixel_head.score(&[&decoded]).unwrap()[0];
            assert!((pixel_scores.get(j).unwrap() - p).abs() < 1e-5 && (0.0..=1.0).contains(&p), "{key}: pixel head");
        }
    }
    let again = run(&cfg, &common::caches::opts(&src, &out), None).unwrap();
    assert_eq!((again.shards_done, again.shards_skipped), (0, 2), "a rerun does nothing");
    let other = ScoreConfig { heads: vec![], ..cfg };
    let err = run(&other, &common::caches::opts(&src, &out), None).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
}

/// Image–alt-text agreement in `score clip --text-tower`: `clip_sim_alt` is the cosine of each image's
/// embedding with its `.txt`'s text embedding (recomputed here from the two towers), null without
/// alt-text or without an image; `filter --min clip_sim_alt=V` keeps exactly the keys at or above V.
#[test]
fn score_stage_measures_image_alt_text_agreement() {
    use pixforge::score::clip_text::{cosine, ClipTextTower, CLIP_TOKENS};
    use pixforge::score::stage::{run, ScoreConfig, ALT_SIMILARITY};
    use polars::prelude::SerReader;
    common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let samples = common::caches::source(&src);
    let golden = common::fixtures().join("golden");
    let text = golden.join("clip_text_tiny");
    let cfg = ScoreConfig { text_tower: Some(text.join("text_model.onnx")), ..tiny_score_config(2) };
    let out = dir.path().join("scores");
    run(&cfg, &common::caches::opts(&src, &out), None).unwrap();
    let mut tower = pixforge::score::clip::ClipTower::load(&cfg.tower, cfg.preprocess().unwrap(), 1).unwrap();
    let mut texts =
        ClipTextTower::load(&text.join("text_model.onnx"), &text.join("tokenizer.json"), CLIP_TOKENS, 1).unwrap();
    let mut all = Vec::new();
    let reader = pixforge::shards::stage::StageReader::open_unchecked(&out).unwrap();
    for (i, shard) in samples.iter().enumerate() {
        let file = std::fs::File::open(out.join(format!("{i:05}.scores.parquet"))).unwrap();
        let df = polars::prelude::ParquetReader::new(file).finish().unwrap();
        let sims = df.column(ALT_SIMILARITY).unwrap().f32().unwrap().clone();
        // The alt-text embeddings stored beside the image embeddings, row for row.
        let tensors = candle_core::safetensors::load(out.join(format!("{i:05}.safetensors")), &Device::Cpu).unwrap();
        let stored: Vec<Vec<f32>> =
            tensors["alt_embeddings"].to_dtype(candle_core::DType::F32).unwrap().to_vec2().unwrap();
        assert_eq!(stored.len(), tensors["embeddings"].dims()[0]);
        let rows: std::collections::HashMap<String, usize> = reader
            .shard(&format!("{i:05}"))
            .unwrap()
            .entries
            .iter()
            .filter_map(|e| Some((e.key.clone(), e.row?)))
            .collect();
        for (j, (key, img, txt)) in shard.iter().enumerate() {
            let decoded = img.as_ref().and_then(|b| image::load_from_memory(b).ok());
            let txt = txt.as_ref().and_then(|t| String::from_utf8(t.clone()).ok());
            match (decoded, txt) {
                (Some(image), Some(alt)) => {
                    let alt_embedding = texts.embed(&[alt.as_str()]).unwrap().remove(0);
                    let want = cosine(&tower.embed(&[image.to_rgb8()]).unwrap()[0], &alt_embedding);
                    let kept = &stored[rows[key]];
                    let d = kept
                        .iter()
                        .zip(&alt_embedding)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-2))
                        .fold(0f32, f32::max);
                    assert!(d < 2e-3, "{key}: the stored alt-text embedding (f16) differs by {d}");
                    let got = sims.get(j).unwrap_or_else(|| panic!("{key}: no similarity"));
                    assert!((got - want).abs() < 1e-4, "{key}: {got} vs {want}");
                    all.push((key.clone(), got));
                }
                _ => assert_eq!(sims.get(j), None, "{key}: no image or no alt-text, no similarity"),
            }
        }
    }
    assert_eq!(all.len(), 4);
    // The filter keeps the samples at or above the median similarity.
    let mut values: Vec<f32> = all.iter().map(|(_, v)| *v).collect();
    values.sort_by(f32::total_cmp);
    let threshold = values[2];
    let kept = dir.path().join("kept.parquet");
    let o = std::process::Command::new(common::bin())
        .args(["filter", "--scores"])
        .arg(&out)
        .args(["--min", &format!("{ALT_SIMILARITY}={threshold}"), "--out"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let keys = pixforge::shards::selection::read_selection(&kept).unwrap();
    let want: std::collections::HashSet<String> =
        all.iter().filter(|(_, v)| *v >= threshold).map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, want);
}

/// Image–dense-caption agreement in `score clip --captions DIR`: every caption of the caption folder
/// (two per image) against its image, per caption in `{shard}.caption_scores.parquet` (recomputed
/// here from the two towers), the lowest in `clip_sim_dense_min`, and `--mismatch-below` flags the
/// captions below it and the samples that have one (`clip_mismatch`).
#[test]
fn score_stage_measures_image_dense_caption_agreement() {
    use pixforge::score::clip_text::{cosine, ClipTextTower, CLIP_TOKENS};
    use pixforge::score::stage::{run, ScoreConfig, DENSE_SIMILARITY_MIN, MISMATCH};
    use polars::prelude::SerReader;
    common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let samples = common::caches::source(&src);
    let vlm = common::vlm::VlmServer::start(common::vlm::Expect::answering("llava-hf/llava-1.5-7b-hf"));
    let captions = dir.path().join("captions");
    let o = std::process::Command::new(common::bin())
        .args(["caption", "--backend", "openai", "--model", "llava-hf/llava-1.5-7b-hf", "--captions-per-image", "2"])
        .arg("--endpoint")
        .arg(format!("{}/v1", vlm.base))
        .args(["--prompt", "Describe sample {key} in a very detailed manner", "--no-progress", "--input"])
        .arg(&src)
        .arg("--out")
        .arg(&captions)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = common::fixtures().join("golden/clip_text_tiny");
    let base = ScoreConfig {
        text_tower: Some(text.join("text_model.onnx")),
        captions: Some(captions.clone()),
        ..tiny_score_config(2)
    };
    let out = dir.path().join("scores");
    // The mismatch threshold: a value between this tiny pair's similarities (found with none first).
    run(&base, &common::caches::opts(&src, &dir.path().join("probe")), None).unwrap();
    let read = |dir: &std::path::Path, file: String| {
        polars::prelude::ParquetReader::new(std::fs::File::open(dir.join(file)).unwrap()).finish().unwrap()
    };
    let probe = read(&dir.path().join("probe"), "00000.caption_scores.parquet".into());
    let mut all: Vec<f32> = probe.column("similarity").unwrap().f32().unwrap().into_no_null_iter().collect();
    all.sort_by(f32::total_cmp);
    let threshold = all[all.len() / 2];
    let cfg = ScoreConfig { mismatch_below: Some(threshold), ..base };
    run(&cfg, &common::caches::opts(&src, &out), None).unwrap();

    let mut tower = pixforge::score::clip::ClipTower::load(&cfg.tower, cfg.preprocess().unwrap(), 1).unwrap();
    let mut texts =
        ClipTextTower::load(&text.join("text_model.onnx"), &text.join("tokenizer.json"), CLIP_TOKENS, 1).unwrap();
    let mut rows = 0;
    for (i, shard) in samples.iter().enumerate() {
        let per_caption = read(&out, format!("{i:05}.caption_scores.parquet"));
        let scores = read(&out, format!("{i:05}.scores.parquet"));
        let dense =
            pixforge::shards::captions::captions_with_sources(&captions.join(format!("{i:05}.captions.parquet")))
                .unwrap();
        for (j, (key, img, _)) in shard.iter().enumerate() {
            let lowest = scores.column(DENSE_SIMILARITY_MIN).unwrap().f32().unwrap().get(j);
            let flagged = scores.column(MISMATCH).unwrap().f32().unwrap().get(j);
            let Some(image) = img.as_ref().and_then(|b| image::load_from_memory(b).ok()) else {
                assert_eq!((lowest, flagged), (None, None), "{key}: no image, no agreement");
                continue;
            };
            let image = tower.embed(&[image.to_rgb8()]).unwrap().remove(0);
            let list = &dense[key];
            assert_eq!(list.len(), 2, "{key}");
            let mut want_lowest = f32::MAX;
            for (source, caption) in list {
                let want = cosine(&image, &texts.embed(&[caption.as_str()]).unwrap()[0]);
                want_lowest = want_lowest.min(want);
                let (k, s) = (
                    per_caption.column("key").unwrap().str().unwrap(),
                    per_caption.column("source").unwrap().str().unwrap(),
                );
                let at =
                    (0..per_caption.height()).find(|&r| k.get(r) == Some(key) && s.get(r) == Some(source)).unwrap();
                let got = per_caption.column("similarity").unwrap().f32().unwrap().get(at).unwrap();
                let stored = candle_core::safetensors::load(out.join(format!("{i:05}.safetensors")), &Device::Cpu)
                    .unwrap()["caption_embeddings"]
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                assert_eq!(stored.len(), per_caption.height(), "one caption embedding per caption score row");
                let emb = texts.embed(&[caption.as_str()]).unwrap().remove(0);
                let d =
                    stored[at].iter().zip(&emb).map(|(a, b)| (a - b).abs() / b.abs().max(1e-2)).fold(0f32, f32::max);
                assert!(d < 2e-3, "{key} {source}: the stored caption embedding (f16) differs by {d}");
                assert!((got - want).abs() < 1e-4, "{key} {source}: {got} vs {want}");
                assert_eq!(per_caption.column("mismatch").unwrap().bool().unwrap().get(at), Some(got < threshold));
                rows += 1;
            }
            assert!((lowest.unwrap() - want_lowest).abs() < 1e-4, "{key}");
            assert_eq!(flagged, Some(if lowest.unwrap() < threshold { 1.0 } else { 0.0 }), "{key}");
        }
    }
    assert_eq!(rows, 10, "two captions for each of the five images");

    // `filter --min-clip-similarity`: by one caption source, and by every dense caption, the kept
    // keys are those whose similarities (read back from the caption scores) reach the threshold.
    let mut by_source: std::collections::BTreeMap<String, Vec<(String, f32)>> = Default::default();
    for i in 0..samples.len() {
        let per_caption = read(&out, format!("{i:05}.caption_scores.parquet"));
        let (k, s) =
            (per_caption.column("key").unwrap().str().unwrap(), per_caption.column("source").unwrap().str().unwrap());
        let v = per_caption.column("similarity").unwrap().f32().unwrap();
        for r in 0..per_caption.height() {
            by_source
                .entry(s.get(r).unwrap().to_string())
                .or_default()
                .push((k.get(r).unwrap().to_string(), v.get(r).unwrap()));
        }
    }
    let first_source = by_source.keys().find(|s| s.ends_with(":0")).unwrap().clone();
    // Midway between two similarities, so no value sits on the line.
    let cut = (all[all.len() / 2 - 1] as f64 + all[all.len() / 2] as f64) / 2.0;
    let filter = |rule: &str| {
        let sel = dir.path().join("sel.parquet");
        let o = std::process::Command::new(common::bin())
            .args(["filter", "--min-clip-similarity", rule, "--scores"])
            .arg(&out)
            .arg("--out")
            .arg(&sel)
            .output()
            .unwrap();
        assert!(o.status.success(), "{rule}: {}", String::from_utf8_lossy(&o.stderr));
        pixforge::shards::selection::read_selection(&sel).unwrap()
    };
    let want: std::collections::HashSet<String> =
        by_source[&first_source].iter().filter(|(_, v)| *v as f64 >= cut).map(|(k, _)| k.clone()).collect();
    assert!(!want.is_empty() && want.len() < 5, "the threshold splits the samples: {want:?}");
    assert_eq!(filter(&format!("{first_source}={cut}")), want);
    let every: std::collections::HashSet<String> = by_source[&first_source]
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| by_source.values().all(|list| list.iter().filter(|(kk, _)| kk == k).all(|(_, v)| *v as f64 >= cut)))
        .collect();
    assert_eq!(filter(&format!("dense={cut}")), every);
    let o = std::process::Command::new(common::bin())
        .args(["filter", "--min-clip-similarity", "dense:nope=0.2", "--scores"])
        .arg(&out)
        .args(["--out", "x.parquet"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("dense:PROMPT_ID:N"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `pixforge filter`: thresholds then top fractions over the score columns, the kept keys written
/// with their scores; an unknown column or a malformed rule is named.
#[test]
fn filter_selects_by_thresholds_and_top_fraction() {
    use pixforge::score::filter::{run, Rule};
    use pixforge::shards::selection::read_selection;
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let scores = dir.path().join("scores");
    std::fs::create_dir_all(&scores).unwrap();
    for (shard, rows) in [
        ("00000", [("a", 1.0f32, 0.1f32), ("b", 5.0, 0.9), ("c", 7.0, 0.2)]),
        ("00001", [("d", 6.0, 0.3), ("e", 9.0, 0.8), ("f", 3.0, 0.0)]),
    ] {
        let mut df = DataFrame::new(
            3,
            vec![
                Column::new("key".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
                Column::new("aesthetic".into(), rows.iter().map(|r| Some(r.1)).collect::<Vec<_>>()),
                Column::new("nsfw".into(), rows.iter().map(|r| Some(r.2)).collect::<Vec<_>>()),
            ],
        )
        .unwrap();
        pixforge::shards::write_parquet_atomic(&mut df, &scores.join(format!("{shard}.scores.parquet"))).unwrap();
    }
    let out = dir.path().join("sel.parquet");
    let rules = [
        Rule::parse("min", "aesthetic=4").unwrap(),
        Rule::parse("max", "nsfw=0.5").unwrap(),
        Rule::parse("top", "aesthetic=0.5").unwrap(),
    ];
    let r = run(std::slice::from_ref(&scores), &rules, &out).unwrap();
    // aesthetic ≥ 4: b c d e; nsfw ≤ 0.5: c d; top half by aesthetic: c (7) over d (6).
    assert_eq!(r.after.iter().map(|a| a.1).collect::<Vec<_>>(), [4, 2, 1]);
    assert_eq!((r.input, r.kept), (6, 1));
    let keys = read_selection(&out).unwrap();
    assert_eq!(keys, ["c".to_string()].into_iter().collect());

    assert!(format!(
        "{}",
        run(std::slice::from_ref(&scores), &[Rule::parse("min", "clip=1").unwrap()], &out).unwrap_err()
    )
    .contains("`clip`"));
    assert!(format!("{}", Rule::parse("top", "aesthetic=2").unwrap_err()).contains("[0, 1]"));
    assert!(format!("{}", Rule::parse("min", "aesthetic").unwrap_err()).contains("COLUMN=VALUE"));
    let o = std::process::Command::new(common::bin())
        .args(["filter", "--scores"])
        .arg(&scores)
        .args(["--top", "nsfw=0.33", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_selection(&out).unwrap(), ["b".to_string(), "e".to_string()].into_iter().collect());
}

/// Semantic de-duplication finds planted near-duplicates of the bundled photos (a half-size copy, a
/// JPEG re-encoded at quality 50, a slightly cropped copy) through the tiny CLIP tower, and keeps
/// the six distinct photos.
#[test]
fn dedup_finds_planted_near_duplicates() {
    use pixforge::score::dedup::{run, DedupConfig};
    common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let encode = |img: &image::RgbImage, quality: u8| {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).unwrap();
        out
    };
    let mut samples: Vec<Vec<u8>> = pixforge::demo::IMAGES.iter().map(|(_, b)| b.to_vec()).collect();
    let photo = |i: usize| image::load_from_memory(pixforge::demo::IMAGES[i].1).unwrap().to_rgb8();
    let astronaut = photo(0);
    let half = image::imageops::resize(
        &astronaut,
        astronaut.width() / 2,
        astronaut.height() / 2,
        image::imageops::FilterType::Triangle,
    );
    samples.push(encode(&half, 90));
    samples.push(encode(&photo(2), 50));
    let coffee = photo(3);
    let cropped = image::imageops::crop_imm(&coffee, 10, 10, coffee.width() - 22, coffee.height() - 18).to_image();
    samples.push(encode(&cropped, 90));
    let mut b = tar::Builder::new(std::fs::File::create(src.join("00000.tar")).unwrap());
    for (i, data) in samples.iter().enumerate() {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{i:06}.jpg"), data.as_slice()).unwrap();
    }
    b.finish().unwrap();
    std::fs::write(src.join("00000_stats.json"), "{\"count\": 9}").unwrap();

    let cfg = tiny_score_config(4);
    let scores = dir.path().join("scores");
    pixforge::score::stage::run(&cfg, &common::caches::opts(&src, &scores), None).unwrap();
    let out = dir.path().join("kept.parquet");
    let dc = DedupConfig { clusters: 2, threshold: 0.998, iterations: 20, seed: 1, prefer: None };
    let r = run(std::slice::from_ref(&scores), &dc, &out).unwrap();
    assert_eq!((r.input, r.kept, r.removed), (9, 6, 3), "{r:#?}");
    let mut pairs: Vec<(String, String)> =
        r.groups.iter().flat_map(|g| g.removed.iter().map(|(k, _)| (g.kept.clone(), k.clone()))).collect();
    pairs.sort();
    let want = [("000000", "000006"), ("000002", "000007"), ("000003", "000008")];
    assert_eq!(pairs, want.map(|(a, b)| (a.to_string(), b.to_string())), "each copy is grouped with its photo");
    let kept = pixforge::shards::selection::read_selection(&out).unwrap();
    assert_eq!(kept.len(), 6);
    assert!(out.with_extension("groups.json").exists());
}

/// Concept-balanced selection on 1000 real COCO captions: 300 chosen cover far more distinct nouns
/// than 300 taken in file order, the most frequent noun is a smaller share of the nouns, and the
/// selection is deterministic.
#[test]
fn balanced_selection_covers_more_concepts() {
    use pixforge::score::balance::{balance, BalanceConfig};
    let text = std::fs::read_to_string(common::caption_set("coco_val2014_captions_1000.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let captions: Vec<String> = rows.iter().map(|r| r["caption"].as_str().unwrap().to_string()).collect();
    let cfg = BalanceConfig { size: 300, cap: 20, count: Default::default() };
    let b = balance(&captions, &cfg).unwrap();
    assert_eq!(b.selected.len(), 300);
    let first = balance(&captions[..300], &BalanceConfig { size: 300, cap: 0, count: Default::default() }).unwrap();
    let (ours, plain) = (&b.after, &first.before);
    eprintln!(
        "distinct nouns: balanced {} vs first 300 {} (all 1000: {}); top noun share {:.3} vs {:.3}",
        ours.distinct_nouns,
        plain.distinct_nouns,
        b.before.distinct_nouns,
        ours.top_nouns[0].1 as f64 / ours.total_nouns as f64,
        plain.top_nouns[0].1 as f64 / plain.total_nouns as f64
    );
    assert!(ours.distinct_nouns as f64 > 1.3 * plain.distinct_nouns as f64);
    assert!(
        (ours.top_nouns[0].1 as f64 / ours.total_nouns as f64)
            < (plain.top_nouns[0].1 as f64 / plain.total_nouns as f64)
    );
    assert_eq!(b.selected, balance(&captions, &cfg).unwrap().selected, "deterministic");
}

/// `pixforge balance` on a shard dataset (the bundled photos and their captions): the selection of
/// keys and the before/after table.
#[test]
fn balance_command_writes_a_selection() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("photos");
    pixforge::demo::write_inputs(&input).unwrap();
    let shards = dir.path().join("shards");
    let o = std::process::Command::new(common::bin())
        .args(["ingest", "folder"])
        .arg(&input)
        .arg("--out")
        .arg(&shards)
        .args(["--image-size", "64", "--no-progress"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("sel.parquet");
    let o = std::process::Command::new(common::bin())
        .args(["balance", "--input"])
        .arg(&shards)
        .args(["--size", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("| all | 6 |") && stdout.contains("| selected | 3 |"), "{stdout}");
    assert_eq!(pixforge::shards::selection::read_selection(&out).unwrap().len(), 3);
}

/// `pixforge score laion-emb`: embeddings from LAION's precomputed files (clip-retrieval layout,
/// f16 rows) matched to the shards by key, scored by the real V2 head; a key without a row is
/// recorded with its reason and scores null.
#[test]
fn laion_embeddings_are_matched_by_key_and_scored() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::caches::source(&src);
    let data = common::data().join("aesthetic");
    let rows: Vec<Tensor> =
        (0..10).map(|i| Tensor::read_npy(data.join(format!("vit_l_14_rating{i}.npy"))).unwrap()).collect();
    let (emb, meta) = (dir.path().join("img_emb"), dir.path().join("metadata"));
    std::fs::create_dir_all(&emb).unwrap();
    std::fs::create_dir_all(&meta).unwrap();
    // Two parts: rows 0-4 and 5-9; the shards' keys point at ratings 9, 0, 7 (part 0/1) and 3 and 5;
    // 010002 has no row.
    let keys = [["x1", "000001", "x2", "010000", "x3"], ["010001", "x4", "000002", "x5", "000000"]];
    let rating = |k: &str| keys.iter().flatten().position(|x| *x == k).unwrap();
    for (part, ks) in keys.iter().enumerate() {
        Tensor::cat(&rows[part * 5..part * 5 + 5], 0)
            .unwrap()
            .to_dtype(candle_core::DType::F16)
            .unwrap()
            .write_npy(emb.join(format!("img_emb_{part}.npy")))
            .unwrap();
        let mut df = DataFrame::new(5, vec![Column::new("key".into(), ks.to_vec())]).unwrap();
        pixforge::shards::write_parquet_atomic(&mut df, &meta.join(format!("metadata_{part}.parquet"))).unwrap();
    }
    let head = data.join("sac+logos+ava1-l14-linearMSE.pth");
    let out = dir.path().join("scores");
    let o = std::process::Command::new(common::bin())
        .args(["score", "laion-emb", "--emb-dir"])
        .arg(&emb)
        .arg("--meta-dir")
        .arg(&meta)
        .arg("--head")
        .arg(&head)
        .arg("--input")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .arg("--no-progress")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("golden/aesthetic.json")).unwrap())
            .unwrap();
    let col = "sac+logos+ava1-l14-linearMSE";
    for shard in ["00000", "00001"] {
        let df = ParquetReader::new(std::fs::File::open(out.join(format!("{shard}.scores.parquet"))).unwrap())
            .finish()
            .unwrap();
        let (k, v) = (df.column("key").unwrap().str().unwrap().clone(), df.column(col).unwrap().f32().unwrap().clone());
        for i in 0..df.height() {
            let key = k.get(i).unwrap();
            if key == "010002" {
                assert_eq!(v.get(i), None);
                continue;
            }
            let want = reference["v2"][rating(key)].as_f64().unwrap();
            assert!((v.get(i).unwrap() as f64 - want).abs() < 2e-2, "{key}: {:?} vs {want} (f16 rows)", v.get(i));
        }
    }
    let c = pixforge::shards::stage::StageReader::open_unchecked(&out).unwrap();
    let e = c.shard("00001").unwrap().entry("010002").unwrap().clone();
    assert!(e.reason.unwrap().contains("no embedding in the LAION files"));
}
