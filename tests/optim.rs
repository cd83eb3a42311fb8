//! AdamW, gradient clipping and EMA against PyTorch (`tools/golden/adamw.py`: torch.optim.AdamW with
//! PixArt-α's settings, clip_grad_norm_ to 0.01, EMA 0.9999) over 5 steps in f64, and an exact
//! state round trip.

mod common;

use candle_core::{Device, Tensor, Var};
use pixforge::train::optim::{clip_grad_norm, AdamW, Ema, OptimizerConfig};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn adamw_clipping_and_ema_match_pytorch() {
    let g = candle_core::safetensors::load(common::fixtures().join("golden/adamw.safetensors"), &Device::Cpu).unwrap();
    let params: Vec<Var> = (0..2).map(|i| Var::from_tensor(&g[&format!("p{i}_init")]).unwrap()).collect();
    let mut opt = AdamW::new(OptimizerConfig::default(), &params).unwrap();
    let mut ema = Ema::new(0.9999, &params).unwrap();
    for s in 0..5 {
        let mut grads: Vec<Tensor> = (0..2).map(|i| g[&format!("g{s}_{i}")].clone()).collect();
        let norm = clip_grad_norm(&mut grads, 0.01).unwrap();
        let want: f64 = g[&format!("norm{s}")].flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
        assert!((norm - want).abs() < 1e-12, "step {s}: norm {norm} vs {want}");
        opt.step(&params, &grads, 2e-5).unwrap();
        ema.update(&params).unwrap();
    }
    for i in 0..2 {
        let d = max_diff(params[i].as_tensor(), &g[&format!("p{i}_final")]);
        assert!(d < 1e-12, "parameter {i}: {d}");
        let moved = max_diff(params[i].as_tensor(), &g[&format!("p{i}_init")]);
        assert!(moved > 1e-5, "parameter {i} moved by {moved}");
        assert!(max_diff(&ema.weights[i], &g[&format!("ema{i}_final")]) < 1e-12, "ema {i}");
    }

    // The state restores exactly: one more step from a restored optimizer equals one more step here.
    let state = opt.state().unwrap();
    let copies: Vec<Var> = params.iter().map(|p| Var::from_tensor(&p.as_tensor().copy().unwrap()).unwrap()).collect();
    let mut restored = AdamW::new(OptimizerConfig::default(), &copies).unwrap();
    restored.load_state(&state).unwrap();
    assert_eq!(restored.steps, 5);
    let grads: Vec<Tensor> = (0..2).map(|i| g[&format!("g0_{i}")].clone()).collect();
    opt.step(&params, &grads, 2e-5).unwrap();
    restored.step(&copies, &grads, 2e-5).unwrap();
    for (a, b) in params.iter().zip(&copies) {
        assert_eq!(max_diff(a.as_tensor(), b.as_tensor()), 0.0);
    }
    let mut bad = state.clone();
    bad.remove("adamw.v.1");
    assert!(format!("{}", restored.load_state(&bad).unwrap_err()).contains("adamw.v.1"));
}

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
}

/// CAME against `came-pytorch` (`tools/golden/came.py`): a matrix, a vector and a 4-D convolution
/// weight, 5 steps with PixArt-Σ's settings, then 3 with weight decay, a lower clip threshold and a
/// changing learning rate, f64, within 1e-10; the state it keeps equals the package's, by name.
#[test]
fn came_matches_came_pytorch() {
    use pixforge::train::came::{Came, CameConfig};
    let g = candle_core::safetensors::load(common::fixtures().join("golden/came.safetensors"), &Device::Cpu).unwrap();
    let params: Vec<Var> = (0..3).map(|i| Var::from_tensor(&g[&format!("p{i}_init")]).unwrap()).collect();
    let mut opt = Came::new(CameConfig::default(), 0.0, &params).unwrap();
    for s in 0..8 {
        if s == 5 {
            for (i, p) in params.iter().enumerate() {
                let d = max_diff(p.as_tensor(), &g[&format!("p{i}_after5")]);
                assert!(d < 1e-10, "parameter {i} after 5 steps: {d}");
                assert!(max_diff(p.as_tensor(), &g[&format!("p{i}_init")]) > 1e-5, "parameter {i} moved");
            }
            opt.weight_decay = 0.03;
            opt.config.clip_threshold = 0.5;
        }
        let grads: Vec<Tensor> = (0..3).map(|i| g[&format!("g{s}_{i}")].clone()).collect();
        opt.step_scaled(&params, &grads, scalar(&g[&format!("lr{s}")]), 1.0).unwrap();
    }
    for (i, p) in params.iter().enumerate() {
        let d = max_diff(p.as_tensor(), &g[&format!("p{i}_final")]);
        assert!(d < 1e-10, "parameter {i}: {d}");
    }
    let state = opt.state().unwrap();
    let mut compared = 0;
    for (name, want) in g.iter().filter(|(k, _)| k.starts_with("state")) {
        let (i, key) = name.strip_prefix("state").unwrap().split_once('_').unwrap();
        let got = &state[&format!("came.{key}.{i}")];
        assert_eq!(got.dims(), want.dims(), "{name}");
        let scale = scalar(&want.abs().unwrap().flatten_all().unwrap().max_keepdim(0).unwrap()).max(1e-300);
        assert!(max_diff(got, want) / scale < 1e-10, "{name}: {}", max_diff(got, want));
        compared += 1;
    }
    assert_eq!(compared, 12, "exp_avg of all three, the factored four of the matrix and conv weight, the vector's");
    assert_eq!(state.len(), compared + 1, "and the step count");

    // The state restores exactly, and a missing tensor is named.
    let copies: Vec<Var> = params.iter().map(|p| Var::from_tensor(&p.as_tensor().copy().unwrap()).unwrap()).collect();
    let mut restored = Came::new(opt.config, opt.weight_decay, &copies).unwrap();
    restored.load_state(&state).unwrap();
    assert_eq!(restored.steps, 8);
    let grads: Vec<Tensor> = (0..3).map(|i| g[&format!("g0_{i}")].clone()).collect();
    opt.step_scaled(&params, &grads, 1e-3, 1.0).unwrap();
    restored.step_scaled(&copies, &grads, 1e-3, 1.0).unwrap();
    for (a, b) in params.iter().zip(&copies) {
        assert_eq!(max_diff(a.as_tensor(), b.as_tensor()), 0.0);
    }
    let mut bad = state.clone();
    bad.remove("came.exp_avg_res_col.2");
    assert!(format!("{}", restored.load_state(&bad).unwrap_err()).contains("came.exp_avg_res_col.2"));
}
