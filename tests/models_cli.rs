//! `pixforge models init-tiny --kind pixart` writes the official initialisation in both layouts, which
//! load back to the same numbers; `pixforge models forward` runs a model folder on a safetensors file.

mod common;

use candle_core::{DType, Device, Tensor};
use pixforge::train::model::PixArt;
use std::collections::HashMap;
use std::process::Command;

fn stat(t: &Tensor) -> (f64, f64) {
    let v: Vec<f64> = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

#[test]
fn init_tiny_writes_both_layouts_and_forward_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(common::bin()).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let out = dir.path().join("tiny");
    run(&["models", "init-tiny", "--kind", "pixart", "--micro-conditions", "--out", out.to_str().unwrap()]);
    let d = PixArt::load_diffusers(&out.join("transformer"), &Device::Cpu).unwrap();
    let o = PixArt::load_official(&out.join("official.safetensors"), 3, 8, &Device::Cpu).unwrap();
    assert!(d.has_micro_conditions() && o.has_micro_conditions());
    assert_eq!(o.null_caption().unwrap().dims(), &[120, 32]);
    for (k, t) in d.weights() {
        let diff = (t - &o.weights()[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{k} differs between the layouts");
    }
    // The official initialisation.
    let w = d.weights();
    let zero = |k: &str| stat(&w[k]) == (0.0, 0.0);
    assert!(zero("proj_out.weight") && zero("proj_out.bias"), "final layer starts at zero");
    assert!(zero("transformer_blocks.1.attn2.to_out.0.weight"), "cross-attention starts as identity");
    assert!(zero("transformer_blocks.0.attn1.to_q.bias"));
    let (_, sd) = stat(&w["adaln_single.linear.weight"]);
    assert!((sd - 0.02).abs() < 0.004, "t_block ~ N(0, 0.02): {sd}");
    let (_, sd) = stat(&w["transformer_blocks.0.ff.net.0.proj.weight"]);
    let xavier = (6.0f64 / (24.0 + 96.0)).sqrt() / 3f64.sqrt();
    assert!((sd - xavier).abs() < 0.15 * xavier, "Xavier-uniform: {sd} vs {xavier}");

    // forward over a safetensors file of inputs.
    let inputs = dir.path().join("in.safetensors");
    let dev = Device::Cpu;
    let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, &dev).unwrap();
    let io = HashMap::from([
        ("latents".to_string(), t((0..2 * 4 * 8 * 8).map(|i| (i as f32 * 0.37).sin()).collect(), &[2, 4, 8, 8])),
        ("timestep".to_string(), t(vec![999.0, 5.0], &[2])),
        ("caption".to_string(), t((0..2 * 3 * 32).map(|i| (i as f32 * 0.11).cos()).collect(), &[2, 3, 32])),
        ("mask".to_string(), t(vec![1.0, 1.0, 0.0, 1.0, 0.0, 0.0], &[2, 3])),
        ("resolution".to_string(), t(vec![64.0, 64.0, 64.0, 64.0], &[2, 2])),
        ("aspect_ratio".to_string(), t(vec![1.0, 1.0], &[2, 1])),
    ]);
    candle_core::safetensors::save(&io, &inputs).unwrap();
    let result = dir.path().join("out.safetensors");
    run(&[
        "models",
        "forward",
        "--model",
        out.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        result.to_str().unwrap(),
    ]);
    let got = candle_core::safetensors::load(&result, &dev).unwrap();
    assert_eq!(got["output"].dims(), &[2, 8, 8, 8]);
    assert_eq!(stat(&got["output"]), (0.0, 0.0), "a zero-initialised final layer outputs zeros");
    // A missing input is named.
    let partial = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&HashMap::from([("latents".to_string(), io["latents"].clone())]), &partial).unwrap();
    let o = Command::new(common::bin())
        .args(["models", "forward", "--model", out.to_str().unwrap(), "--inputs", partial.to_str().unwrap(), "--out"])
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"timestep\""), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `models forward` on the T5 encoder and VAE folders of the tiny pipeline fixture gives the
/// reference outputs (transformers' prompt embedding, diffusers' posterior).
#[test]
fn forward_runs_t5_and_vae_folders() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let pipe = root.join("pixart-pipeline");
    let dir = tempfile::tempdir().unwrap();
    let run = |model: &std::path::Path, inputs: HashMap<String, Tensor>| -> HashMap<String, Tensor> {
        let (i, o) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        candle_core::safetensors::save(&inputs, &i).unwrap();
        let out = Command::new(common::bin())
            .args(["models", "forward", "--model"])
            .arg(model)
            .arg("--inputs")
            .arg(&i)
            .arg("--out")
            .arg(&o)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        candle_core::safetensors::load(&o, &Device::Cpu).unwrap()
    };
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    };

    let t5 =
        pixforge::latents::t5::TextEncoder::load(&pipe, 120, pixforge::latents::t5::TextCleaning::Lower, &Device::Cpu)
            .unwrap();
    let prompt = std::fs::read_to_string(pipe.join("prompt.txt")).unwrap();
    let ids: Vec<i64> = t5.tokens(prompt.trim()).unwrap().into_iter().map(i64::from).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let got = run(&pipe.join("text_encoder"), HashMap::from([("input_ids".to_string(), ids)]));
    let golden = candle_core::safetensors::load(pipe.join("golden.safetensors"), &Device::Cpu).unwrap();
    assert!(diff(&got["last_hidden_state"].squeeze(0).unwrap(), &golden["prompt_embeds"]) < 1e-5);

    let g = candle_core::safetensors::load(root.join("golden/vae_encode.safetensors"), &Device::Cpu).unwrap();
    let got = run(&pipe.join("vae"), HashMap::from([("pixels".to_string(), g["pixels"].clone())]));
    assert!(diff(&got["mean"], &g["mean"]) < 1e-4 && diff(&got["std"], &g["std"]) < 1e-4);
}

/// `init-tiny --kind t5|vae` write the transformers / diffusers layouts (real key names, loadable by
/// our loaders; transformers and diffusers load them with no missing or unexpected key, checked when
/// this was written), reproducibly from the seed.
#[test]
fn init_tiny_t5_and_vae_write_the_real_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let init = |kind: &str, out: &std::path::Path, seed: &str| {
        let o = Command::new(common::bin())
            .args(["models", "init-tiny", "--kind", kind, "--seed", seed, "--out"])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    for kind in ["t5", "vae"] {
        init(kind, &a, "1");
        init(kind, &b, "1");
        init(kind, &c, "2");
    }
    for f in ["text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"] {
        let (x, y, z) =
            (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), std::fs::read(c.join(f)).unwrap());
        assert!(x == y && x != z, "{f}: the same seed gives the same weights, another seed others");
    }
    // Each folder says its weights are made up (what sampled pictures then say of themselves).
    for part in ["text_encoder", "vae"] {
        assert!(pixforge::hub::has_random_weights(&a, part), "{part}");
    }
    assert!(!pixforge::hub::has_random_weights(&common::fixtures().join("pixart-pipeline"), "vae"));
    let t5 = candle_core::safetensors::load(a.join("text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    for key in [
        "shared.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
        "encoder.final_layer_norm.weight",
    ] {
        assert!(t5.contains_key(key), "{key}");
    }
    let vae = candle_core::safetensors::load(a.join("vae/diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    for key in [
        "encoder.conv_in.weight",
        "encoder.mid_block.attentions.0.to_q.weight",
        "quant_conv.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "post_quant_conv.bias",
    ] {
        assert!(vae.contains_key(key), "{key}");
    }
    let mut enc = pixforge::latents::t5::TextEncoder::load_encoder(&a, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[5u32, 6, 7, 1]], &Device::Cpu).unwrap();
    assert_eq!(enc.encode_ids(&ids).unwrap().dims(), &[1, 4, 32]);
    let v = pixforge::latents::vae::Vae::load(&a, &Device::Cpu).unwrap();
    let (mean, _) = v.encode(&Tensor::zeros((1, 3, 32, 16), DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(mean.dims(), &[1, 4, 4, 2], "four blocks: 8x down, as the SD VAE");
    assert_eq!(v.decode(&mean).unwrap().dims(), &[1, 3, 32, 16]);

    // The tiny T5 comes with its tokenizer, in a pipeline's place: `cache t5 --model` takes the
    // folder as it is. A folder without one is refused naming both places looked in.
    let enc =
        pixforge::latents::t5::TextEncoder::load(&a, 120, pixforge::latents::t5::TextCleaning::Lower, &Device::Cpu);
    assert!(a.join("tokenizer/tokenizer.json").is_file() && enc.is_ok());
    std::fs::remove_dir_all(a.join("tokenizer")).unwrap();
    let err =
        pixforge::latents::t5::TextEncoder::load(&a, 120, pixforge::latents::t5::TextCleaning::Lower, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
    let looked = a.join("tokenizer/tokenizer.json").display().to_string();
    assert!(err.contains("no tokenizer.json") && err.contains(&looked), "{err}");
}

/// A user error prints its message and causes and no stack trace, even where RUST_BACKTRACE=1; with
/// `--log debug` the trace is there for a bug report. Nothing written to a pipe carries colour codes.
#[test]
fn user_errors_print_without_backtraces_or_colour() {
    let run = |log: &str| {
        let o = std::process::Command::new(common::bin())
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE")
            .args(["--log", log, "run", "/nonexistent/pipeline.toml"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let err = run("warn");
    assert!(err.starts_with("Error: ") && err.contains("/nonexistent/pipeline.toml"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    let debug = run("debug");
    assert!(debug.contains("Stack backtrace"), "{debug}");
    assert!(!debug.contains('\x1b'), "{debug:?}");
}
