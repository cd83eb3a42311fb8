//! The IDDPM hybrid loss against a straight numpy port of the official functions
//! (`tools/golden/iddpm_loss.py`), in f64 and f32, including t = 0 (the decoder NLL) and values past
//! ±0.999 (the edge bins); and the VB term sends no gradient into the predicted noise.

use candle_core::{DType, Device, Tensor, Var};
use pixforge::train::diffusion::Diffusion;
use serde_json::Value;

fn golden() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/iddpm_loss.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tensor(g: &Value, key: &str, shape: &[usize], dtype: DType) -> Tensor {
    let v: Vec<f64> = g[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn floats(g: &Value, key: &str) -> Vec<f64> {
    g[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn tables_match_the_official_schedule() {
    let g = golden();
    let d = Diffusion::linear(1000);
    let at = &g["tables_at"];
    for (i, t) in at["t"].as_array().unwrap().iter().enumerate() {
        let t = t.as_u64().unwrap() as usize;
        for (name, table) in [
            ("betas", &d.betas),
            ("post_log_var_clipped", &d.posterior_log_variance_clipped),
            ("coef1", &d.posterior_mean_coef1),
            ("coef2", &d.posterior_mean_coef2),
        ] {
            let want = at[name][i].as_f64().unwrap();
            assert!((table[t] - want).abs() <= 1e-12 * want.abs().max(1.0), "{name}[{t}]: {} vs {want}", table[t]);
        }
    }
}

#[test]
fn hybrid_loss_matches_the_reference_in_f64_and_f32() {
    let g = golden();
    let shape: Vec<usize> = g["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let out_shape = [shape[0], 2 * shape[1], shape[2], shape[3]];
    let t: Vec<usize> = g["t"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert!(t.contains(&0) && t.contains(&999));
    let d = Diffusion::linear(1000);
    for (dtype, tol) in [(DType::F64, 1e-6), (DType::F32, 1e-4)] {
        let x0 = tensor(&g, "x0", &shape, dtype);
        let noise = tensor(&g, "noise", &shape, dtype);
        let out = tensor(&g, "model_output", &out_shape, dtype);
        let x_t = d.q_sample(&x0, &t, &noise).unwrap();
        let want_xt = floats(&g, "x_t");
        let got_xt: Vec<f64> = x_t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got_xt.len(), want_xt.len(), "x_t has the golden's size");
        for (a, b) in got_xt.iter().zip(&want_xt) {
            assert!((a - b).abs() < tol, "x_t {a} vs {b} ({dtype:?})");
        }
        let l = d.training_losses(&out, &x0, &x_t, &t, &noise).unwrap();
        for (name, got) in [("mse", &l.mse), ("vb", &l.vb), ("loss", &l.loss)] {
            let got: Vec<f64> = got.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            assert_eq!(got.len(), floats(&g, name).len(), "{name}: one value per item");
            for (i, (a, b)) in got.iter().zip(floats(&g, name)).enumerate() {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{name}[{i}] (t={}): {a} vs {b} ({dtype:?})", t[i]);
            }
        }
    }
}

#[test]
fn vb_sends_no_gradient_into_the_noise_prediction() {
    let g = golden();
    let shape: Vec<usize> = g["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let t: Vec<usize> = g["t"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let d = Diffusion::linear(1000);
    let x0 = tensor(&g, "x0", &shape, DType::F64);
    let noise = tensor(&g, "noise", &shape, DType::F64);
    let out = Var::from_tensor(&tensor(&g, "model_output", &[shape[0], 2 * shape[1], shape[2], shape[3]], DType::F64))
        .unwrap();
    let x_t = d.q_sample(&x0, &t, &noise).unwrap();
    let l = d.training_losses(out.as_tensor(), &x0, &x_t, &t, &noise).unwrap();
    let grads = l.vb.sum_all().unwrap().backward().unwrap();
    let grad = grads.get(out.as_tensor()).unwrap();
    let eps_grad = grad.narrow(1, 0, shape[1]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let var_grad =
        grad.narrow(1, shape[1], shape[1]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(eps_grad, 0.0, "the mean is detached in VB");
    assert!(var_grad > 0.0, "VB trains the variance");
    // The full loss trains both halves.
    let grads = l.loss.sum_all().unwrap().backward().unwrap();
    let eps_grad =
        grads.get(out.as_tensor()).unwrap().narrow(1, 0, shape[1]).unwrap().abs().unwrap().sum_all().unwrap();
    assert!(eps_grad.to_scalar::<f64>().unwrap() > 0.0);
}
