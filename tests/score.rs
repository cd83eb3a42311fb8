//! Curation scores against their reference implementations.

mod common;

use candle_core::{Device, Tensor};
use pixforge::score::aesthetic::AestheticHead;

/// The LAION aesthetic heads V1 and V2 (real released weights) on the ten real CLIP ViT-L/14
/// embeddings of ../shared/data/aesthetic equal the reference code's scores (`tools/golden/aesthetic.py`)
/// within 1e-4; a checkpoint of another kind is refused with the keys it has.
#[test]
fn aesthetic_heads_match_the_reference_scores() {
    let data = common::shared_data().join("aesthetic");
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
    let data = common::shared_data().join("aesthetic");
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
    let data = common::shared_data().join("aesthetic");
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
