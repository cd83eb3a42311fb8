//! DPM-Solver++(2M) against diffusers' `DPMSolverMultistepScheduler` (PixArt-α's inference sampler)
//! over 20 steps with fixed noise and an analytic stand-in for the model
//! (`tools/golden/dpm_solver.py`): same timesteps, same σ, same trajectory within 1e-3.

use candle_core::{Device, Tensor};
use pixforge::train::diffusion::Diffusion;
use pixforge::train::sampler::DpmSolverPP;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn dpm_solver_pp_matches_diffusers() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dpm_solver.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let d = Diffusion::linear(1000);
    let s = DpmSolverPP::new(d.alphas_cumprod(), 20);
    let want_t: Vec<usize> = g["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    assert_eq!(s.timesteps, want_t);
    for (a, b) in s.sigmas.iter().zip(floats(&g["sigmas"])) {
        assert!((a - b).abs() <= 1e-6 * b.max(1.0), "sigma {a} vs {b}");
    }
    let shape: Vec<usize> = g["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let noise = Tensor::from_vec(floats(&g["noise"]), shape.as_slice(), &Device::Cpu).unwrap();
    let mut visited = Vec::new();
    let mut model = |x: &Tensor, t: usize| {
        visited.push(t);
        x.affine(0.3 * t as f64 / 1000.0, 0.0)? + x.affine(3.0, 0.0)?.sin()?.affine(0.05, 0.0)?
    };
    let out = s.sample(noise, &mut model).unwrap();
    assert_eq!(visited, want_t, "one model call per step");
    let want = floats(g["steps"].as_array().unwrap().last().unwrap());
    let got: Vec<f64> = out.flatten_all().unwrap().to_vec1().unwrap();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("largest difference from diffusers after 20 steps: {worst:e}");
    assert!(worst < 1e-3, "largest difference after 20 steps: {worst}");
}
