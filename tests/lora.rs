//! LoRA and DoRA adapters in peft's format (`tools/golden/lora_peft.py`: peft 0.21.2 on the tiny
//! PixArt transformer, every adapted module of the attention, feed-forward, caption projection and
//! adaLN linear, random non-zero B and DoRA magnitudes): merged by pixforge, the transformer's output
//! is peft's adapted output within 1e-4 and its weights peft's `merge_and_unload` within 1e-5;
//! `pixforge export merge-lora` writes that transformer, `pixforge sample --lora` samples with it.

use candle_core::{DType, Device, Tensor};
use pixforge::train::lora::{parse_lora_arg, with_adapters, Adapter};
use pixforge::train::model::PixArt;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn tiny() -> PixArt {
    PixArt::load_diffusers(&fixtures().join("pixart-tiny/transformer"), &Device::Cpu).unwrap()
}

fn output(model: &PixArt) -> Tensor {
    let io = candle_core::safetensors::load(fixtures().join("pixart-tiny/io.safetensors"), &Device::Cpu).unwrap();
    model.forward(&io["latents"], &io["timestep"], &io["caption"], &io["mask"], None).unwrap()
}

#[test]
fn lora_and_dora_merged_match_peft() {
    for kind in ["lora", "dora"] {
        let golden =
            candle_core::safetensors::load(fixtures().join(format!("lora/{kind}.safetensors")), &Device::Cpu).unwrap();
        let adapter = Adapter::load(&fixtures().join("lora").join(kind), &Device::Cpu).unwrap();
        assert_eq!((adapter.config.r, adapter.config.use_dora), (4, kind == "dora"));
        assert_eq!(adapter.modules.len(), 23, "10 modules in each of 2 blocks, the caption projection's 2, adaLN's");
        let base = tiny();
        let merged = with_adapters(tiny(), &[(fixtures().join("lora").join(kind), 1.0)], &Device::Cpu).unwrap();
        let d = max_abs_diff(&output(&merged), &golden["output"]);
        eprintln!("{kind}: output differs from peft's by {d:e}");
        assert!(d < 1e-4, "{kind}: output differs by {d}");
        assert!(max_abs_diff(&output(&base), &golden["output"]) > 1e-2, "{kind}: the adapter changes the output");
        let mut compared = 0;
        for (name, want) in golden.iter().filter_map(|(k, t)| Some((k.strip_prefix("merged.")?, t))) {
            let d = max_abs_diff(&merged.weights()[name], want);
            assert!(d < 1e-5, "{kind}: merged {name} differs by {d}");
            compared += 1;
        }
        assert_eq!(compared, 23, "{kind}");
    }
}

#[test]
fn scales_and_bad_adapters() {
    let dir = fixtures().join("lora/lora");
    // Scale 0 changes nothing; scale 2 doubles the weights' change.
    let zero = with_adapters(tiny(), &[(dir.clone(), 0.0)], &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&output(&zero), &output(&tiny())), 0.0);
    let (one, two) = (
        with_adapters(tiny(), &[(dir.clone(), 1.0)], &Device::Cpu).unwrap(),
        with_adapters(tiny(), &[(dir.clone(), 2.0)], &Device::Cpu).unwrap(),
    );
    let key = "transformer_blocks.0.attn1.to_q.weight";
    let base = &tiny().weights()[key].clone();
    let (d1, d2) = ((&one.weights()[key] - base).unwrap(), (&two.weights()[key] - base).unwrap());
    assert!(max_abs_diff(&(d1 * 2.0).unwrap(), &d2) < 1e-6);
    assert_eq!(parse_lora_arg("a/b:0.5").unwrap(), (PathBuf::from("a/b"), 0.5));
    assert_eq!(parse_lora_arg("a/b").unwrap(), (PathBuf::from("a/b"), 1.0));
    assert_eq!(parse_lora_arg("s3://x/y").unwrap(), (PathBuf::from("s3://x/y"), 1.0));

    // An adapter of a module the model lacks, or of another rank than its B, is refused by name.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(dir.join("adapter_config.json"), bad.join("adapter_config.json")).unwrap();
    let mut t = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = t.remove("base_model.model.transformer_blocks.1.attn1.to_q.lora_A.weight").unwrap();
    let b = t.remove("base_model.model.transformer_blocks.1.attn1.to_q.lora_B.weight").unwrap();
    t.insert("base_model.model.transformer_blocks.7.attn1.to_q.lora_A.weight".into(), a);
    t.insert("base_model.model.transformer_blocks.7.attn1.to_q.lora_B.weight".into(), b.clone());
    candle_core::safetensors::save(&t, bad.join("adapter_model.safetensors")).unwrap();
    let e = with_adapters(tiny(), &[(bad.clone(), 1.0)], &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("transformer_blocks.7.attn1.to_q") && e.contains("does not have"), "{e}");
    let a = t.remove("base_model.model.transformer_blocks.7.attn1.to_q.lora_A.weight").unwrap();
    t.remove("base_model.model.transformer_blocks.7.attn1.to_q.lora_B.weight").unwrap();
    t.insert("base_model.model.transformer_blocks.1.attn1.to_q.lora_A.weight".into(), a.narrow(0, 0, 2).unwrap());
    t.insert("base_model.model.transformer_blocks.1.attn1.to_q.lora_B.weight".into(), b);
    candle_core::safetensors::save(&t, bad.join("adapter_model.safetensors")).unwrap();
    let e = Adapter::load(&bad, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("transformer_blocks.1.attn1.to_q") && e.contains("rank 2"), "{e}");
}

fn pixforge(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pixforge")).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command line: `export merge-lora` writes the merged diffusers transformer (peft's output from
/// it), `models forward --lora` computes peft's output, `sample --lora DIR[:SCALE]` samples with the
/// adapter (another image than without it; a LoRA at scale 0 the same image) and records it.
#[test]
fn merge_forward_and_sample_with_adapters_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let (tiny_dir, dora) = (fixtures().join("pixart-tiny/transformer"), fixtures().join("lora/dora"));
    let (tiny_dir, dora) = (tiny_dir.to_str().unwrap(), dora.to_str().unwrap());
    let golden = candle_core::safetensors::load(fixtures().join("lora/dora.safetensors"), &Device::Cpu).unwrap();

    pixforge(&["export", "merge-lora", "--transformer", tiny_dir, "--lora", dora, "--out", &d("merged")]);
    let merged = PixArt::load_diffusers(Path::new(&d("merged")), &Device::Cpu).unwrap();
    assert!(max_abs_diff(&output(&merged), &golden["output"]) < 1e-4);

    let io = fixtures().join("pixart-tiny/io.safetensors");
    pixforge(&[
        "models",
        "forward",
        "--model",
        tiny_dir,
        "--inputs",
        io.to_str().unwrap(),
        "--out",
        &d("out.safetensors"),
        "--lora",
        dora,
    ]);
    let out = candle_core::safetensors::load(d("out.safetensors"), &Device::Cpu).unwrap();
    assert!(max_abs_diff(&out["output"], &golden["output"]) < 1e-4);

    let pipeline = fixtures().join("pixart-pipeline");
    let sample = |name: &str, lora: Option<String>| {
        let mut args = vec!["sample", "--transformer", tiny_dir, "--t5", pipeline.to_str().unwrap()];
        args.extend(["--vae", pipeline.to_str().unwrap(), "--prompt", "a red fox", "--size", "16x16", "--steps", "3"]);
        let out = d(name);
        args.extend(["--no-binning", "--out", &out]);
        if let Some(l) = &lora {
            args.extend(["--lora", l.as_str()]);
        }
        pixforge(&args);
        image::open(dir.path().join(name).join("0000.png")).unwrap().to_rgb8().into_raw()
    };
    // (A DoRA adapter at scale 0 still sets its magnitudes; a LoRA one at scale 0 changes nothing.)
    let lora = fixtures().join("lora/lora").display().to_string();
    let (plain, adapted, zero) =
        (sample("plain", None), sample("adapted", Some(dora.to_string())), sample("zero", Some(format!("{lora}:0"))));
    assert_ne!(plain, adapted, "the adapter changes the image");
    assert_eq!(plain, zero, "a LoRA at scale 0 changes nothing");
    let meta = std::fs::read_to_string(dir.path().join("adapted/0000.json")).unwrap();
    assert!(meta.contains("lora/dora"), "{meta}");
}

/// The adapters computed beside each layer (how training with dropout runs them) give peft's adapted
/// output too, LoRA and DoRA: at dropout 0 the masks are all ones; and dropout changes the output.
#[test]
fn adapters_beside_the_layers_match_peft() {
    use pixforge::train::lora_train::{adapted, beside, LoraTrainConfig};
    for kind in ["lora", "dora"] {
        let golden =
            candle_core::safetensors::load(fixtures().join(format!("lora/{kind}.safetensors")), &Device::Cpu).unwrap();
        let dir = fixtures().join("lora").join(kind);
        let adapters = pixforge::train::lora_train::load_peft(&dir, &Device::Cpu).unwrap();
        let peft: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        let targets = peft["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string());
        let mut config = LoraTrainConfig {
            rank: 4,
            alpha: Some(8.0),
            dropout: 0.0,
            target_modules: targets.collect(),
            use_dora: kind == "dora",
            use_rslora: false,
        };
        let model = tiny();
        let by_layer = beside(&config, &model, &adapters, 7).unwrap();
        let d = max_abs_diff(&output(&by_layer), &golden["output"]);
        eprintln!("{kind} beside the layers: output differs from peft's by {d:e}");
        assert!(d < 1e-4, "{kind}: {d}");
        config.dropout = 0.3;
        let dropped = adapted(&config, &model, &adapters, Some(7)).unwrap();
        assert!(max_abs_diff(&output(&dropped), &golden["output"]) > 1e-3, "{kind}: dropout changes the output");
        let again = adapted(&config, &model, &adapters, Some(7)).unwrap();
        assert_eq!(max_abs_diff(&output(&dropped), &output(&again)), 0.0, "{kind}: the same seed, the same masks");
    }
}
