//! `pixforge sample` against diffusers' `PixArtAlphaPipeline` on a tiny pipeline in the real folder
//! layout (`tools/golden/pixart_pipeline.py`): T5 prompt embedding, guided DPM-Solver++ latents and
//! the decoded image from the same initial noise.

use candle_core::{Device, Tensor};
use pixforge::latents::t5::{TextCleaning, TextEncoder};
use pixforge::train::generate::{generate, NullCondition, SampleConfig, SampleOptions};
use pixforge::train::sampler::SamplerKind;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-pipeline")
}

fn golden() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn prompt() -> String {
    std::fs::read_to_string(fixtures().join("prompt.txt")).unwrap().trim().to_string()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn t5_prompt_embedding_matches_transformers() {
    let g = golden();
    let mut t5 = TextEncoder::load(&fixtures(), 120, TextCleaning::Lower, &Device::Cpu).unwrap();
    let emb = t5.encode(&prompt()).unwrap();
    assert_eq!(emb.dims(), g["prompt_embeds"].dims(), "unpadded length = the pipeline's valid tokens");
    let d = max_abs_diff(&emb, &g["prompt_embeds"]);
    assert!(d < 1e-5, "T5 embedding differs by {d}");
}

#[test]
fn guided_sampling_and_vae_decode_match_the_diffusers_pipeline() {
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise".to_string(), g["noise"].clone())]),
        &noise,
    )
    .unwrap();
    let o = SampleOptions {
        transformer: fixtures(),
        official_shape: Some((4, 8)),
        t5: fixtures(),
        vae: fixtures(),
        noise: Some(noise),
        loras: Vec::new(),
        config: SampleConfig {
            size: Some("16x16".parse().unwrap()),
            sampler: SamplerKind::DpmSolverDiffusers,
            steps: Some(20),
            cfg: 4.5,
            null: NullCondition::Empty,
            cleaning: TextCleaning::Lower,
            seed: 0,
            binning: true,
            max_tokens: None,
            grid: false,
        },
    };
    let out = generate(&o, &[prompt()], &Device::Cpu).unwrap();
    let want = &g["latents"];
    let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let d = max_abs_diff(&out[0].latents, want);
    eprintln!("latents: largest difference {d:e} (values up to {scale})");
    assert!(d < 1e-3, "latents differ by {d} (values up to {scale})");
    let image: Vec<f32> = g["image"].flatten_all().unwrap().to_vec1().unwrap();
    let worst =
        out[0].rgb.iter().zip(&image).map(|(&a, &b)| (a as f32 - (b * 255.0).round()).abs()).fold(0.0, f32::max);
    assert!(worst <= 1.0, "pixels differ by up to {worst} levels");
}

#[test]
fn sample_cli_writes_a_png_per_prompt_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pixforge"))
        .args(["sample", "--pipeline"])
        .arg(fixtures())
        .args(["--prompt", "a cat", "--prompt", "a dog on a beach", "--size", "16x16", "--steps", "4", "--seed", "3"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    for i in 0..2 {
        let img = image::open(out.join(format!("{i:04}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("{i:04}.json"))).unwrap()).unwrap();
        assert_eq!(meta["seed"], 3);
        assert_eq!(meta["null"], "empty", "a diffusers transformer has no y_embedding: auto picks the empty prompt");
    }
    let pixels = |name: &str| image::open(out.join(name)).unwrap().to_rgb8();
    assert_ne!(pixels("0000.png"), pixels("0001.png"), "different prompts and noise give different images");
    // Each PNG carries its prompt and settings as Stable Diffusion tools write them; the fixture's
    // models are real-layout ones, not init-tiny's, so no note.
    let text = |name: &str| -> std::collections::HashMap<String, String> {
        pixforge::image::label::png_text(&std::fs::read(out.join(name)).unwrap()).unwrap().into_iter().collect()
    };
    let first = text("0001.png");
    assert!(first["parameters"].starts_with("a dog on a beach\nSteps: 4, Sampler: "), "{first:?}");
    assert!(first["parameters"].contains("Seed: 3, Prompt index: 1, Size: 16x16"), "{first:?}");
    assert!(!first.contains_key("Comment"), "{first:?}");
    // grid.png: both images one under another, each labelled with its prompt.
    let grid = pixels("grid.png");
    assert!(grid.width() > 16 + 200 && grid.height() >= 2 * 16 + 4, "{:?}", grid.dimensions());
    let (x0, y0) = (grid.width() - 8 - 16, grid.height() - 8 - (2 * 16 + 4));
    for (i, name) in ["0000.png", "0001.png"].iter().enumerate() {
        let tile = image::imageops::crop_imm(&grid, x0, y0 + i as u32 * 20, 16, 16).to_image();
        assert_eq!(tile, pixels(name), "{name} in the grid");
    }
    assert!(text("grid.png")["Title"].contains("seed 3"));
}

#[test]
fn sample_names_the_bad_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pixforge"))
        .args(["sample", "--pipeline"])
        .arg(fixtures())
        .args(["--prompt", "a cat", "--size", "15x16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size 15x16") && err.contains("multiples of 4"), "{err}");
}

#[test]
fn a_256px_model_samples_at_the_nearest_bucket_and_crops_to_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny transformer declared as a 256 px model (sample_size 32): binning applies.
    let t = dir.path().join("transformer");
    std::fs::create_dir_all(&t).unwrap();
    let src = fixtures().join("transformer");
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), t.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["sample_size"] = 32.into();
    std::fs::write(t.join("config.json"), cfg.to_string()).unwrap();
    let out = dir.path().join("samples");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pixforge"))
        .args(["sample", "--pipeline"])
        .arg(fixtures())
        .arg("--transformer")
        .arg(&t)
        .args(["--prompt", "a wide landscape", "--size", "300x200", "--steps", "1", "--sampler", "ddim", "--cfg", "1"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let img = image::open(out.join("0000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (300, 200), "cropped back to the requested size");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("0000.json")).unwrap()).unwrap();
    // h/w = 0.667: the nearest label is 0.68, [416, 608] at 512 px, halved for 256 px.
    assert_eq!(meta["bucket"], serde_json::json!({"key": 0.68, "height": 208, "width": 304}));
}

/// A PixArt-Σ pipeline folder (`model_index.json` naming `PixArtSigmaPipeline`, the tiny Σ
/// transformer of `tools/golden/pixart_sigma.py`) samples with Σ's 300 T5 tokens, as an official Σ
/// checkpoint does (its null caption has 300 rows); a PixArt-α folder keeps 120; `--max-tokens`
/// overrides both, and a prompt longer than 120 tokens then gives another image.
#[test]
fn pixart_sigma_pipelines_sample_with_300_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let sigma_fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-sigma");
    let (sigma, alpha) = (dir.path().join("sigma"), dir.path().join("alpha"));
    for folder in [&sigma, &alpha] {
        std::fs::create_dir_all(folder.join("transformer")).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(sigma_fixture.join("transformer").join(f), folder.join("transformer").join(f)).unwrap();
        }
    }
    let index = |class: &str| format!("{{\"_class_name\": \"{class}\", \"_diffusers_version\": \"0.42.1\"}}");
    std::fs::write(sigma.join("model_index.json"), index("PixArtSigmaPipeline")).unwrap();
    std::fs::write(alpha.join("model_index.json"), index("PixArtAlphaPipeline")).unwrap();
    let long = (0..150).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let run = |transformer: &Path, max_tokens: Option<usize>| {
        let config = SampleConfig {
            size: Some("32x48".parse().unwrap()),
            steps: Some(2),
            binning: false,
            max_tokens,
            ..SampleConfig::default()
        };
        let o = SampleOptions {
            transformer: transformer.to_path_buf(),
            official_shape: Some((3, 128)),
            t5: fixtures(),
            vae: fixtures(),
            noise: None,
            loras: Vec::new(),
            config,
        };
        generate(&o, std::slice::from_ref(&long), &Device::Cpu).unwrap().remove(0)
    };
    let (s, a) = (run(&sigma, None), run(&alpha, None));
    assert_eq!((s.max_tokens, a.max_tokens), (300, 120));
    assert_ne!(s.rgb, a.rgb, "150 words are cut at 120 tokens, not at 300");
    assert_eq!(run(&sigma, Some(120)).rgb, a.rgb, "--max-tokens 120 cuts as PixArt-α does");
    let official = run(&sigma_fixture.join("official.safetensors"), None);
    assert_eq!((official.max_tokens, official.null), (300, NullCondition::Official));
}
