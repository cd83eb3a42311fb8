//! DPM-Solver++(2M) against diffusers' `DPMSolverMultistepScheduler` (PixArt-α's inference sampler)
//! over 20 steps with fixed noise and an analytic stand-in for the model
//! (`tools/golden/dpm_solver.py`): same timesteps, same σ, same trajectory within 1e-3.

use candle_core::{Device, Tensor};
use pixforge::train::diffusion::Diffusion;
use pixforge::train::sampler::{sample, Condition, DpmSchedule, DpmSolverPP, Guided, SamplerKind};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn dpm_solver_pp_matches_diffusers() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dpm_solver.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let d = Diffusion::linear(1000);
    let s = DpmSolverPP::new(d.alphas_cumprod(), 20, DpmSchedule::Diffusers);
    let want_t: Vec<f64> = g["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert_eq!(s.times, want_t);
    let want_sigmas = floats(&g["sigmas"]);
    assert_eq!(s.sigmas.len(), want_sigmas.len(), "one sigma per step");
    for (a, b) in s.sigmas.iter().zip(want_sigmas) {
        assert!((a - b).abs() <= 1e-6 * b.max(1.0), "sigma {a} vs {b}");
    }
    let shape: Vec<usize> = g["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let noise = Tensor::from_vec(floats(&g["noise"]), shape.as_slice(), &Device::Cpu).unwrap();
    let mut visited = Vec::new();
    let mut model = |x: &Tensor, t: f64| {
        visited.push(t);
        x.affine(0.3 * t / 1000.0, 0.0)? + x.affine(3.0, 0.0)?.sin()?.affine(0.05, 0.0)?
    };
    let out = s.sample(noise, &mut model).unwrap();
    assert_eq!(visited, want_t, "one model call per step");
    let want = floats(g["steps"].as_array().unwrap().last().unwrap());
    let got: Vec<f64> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "the sample has the golden's size");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("largest difference from diffusers after 20 steps: {worst:e}");
    assert!(worst < 1e-3, "largest difference after 20 steps: {worst}");
}

/// The golden trajectories of `tools/golden/samplers.py` on the tiny transformer with guidance 4.5.
struct Golden {
    t: std::collections::HashMap<String, Tensor>,
    model: pixforge::train::model::PixArt,
}

fn golden() -> Golden {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let t = candle_core::safetensors::load(root.join("golden/samplers.safetensors"), &Device::Cpu).unwrap();
    let model =
        pixforge::train::model::PixArt::load_official(&root.join("pixart-tiny/official.pth"), 4, 8, &Device::Cpu)
            .unwrap();
    Golden { t, model }
}

fn cond(g: &Golden, caption: &str, mask: &str) -> Condition {
    Condition { caption: g.t[caption].clone(), mask: g.t[mask].clone() }
}

/// Runs `kind` with the null condition `uncond` and compares with the golden `key` (times in `key_times`).
fn check(g: &Golden, kind: SamplerKind, steps: usize, uncond: Condition, key: &str) {
    let c = cond(g, "cond", "cond_mask");
    let guided = Guided::new(&g.model, c, Some(uncond), 4.5, None).unwrap();
    let mut times = Vec::new();
    let mut model = |x: &Tensor, t: f64| {
        times.push(t);
        guided.output(x, t)
    };
    let golden_noise = g.t.get("iddpm_noise").cloned();
    let mut k = 0;
    let mut noise = |_: &Tensor| {
        k += 1;
        golden_noise.as_ref().unwrap().get(k - 1)
    };
    let d = Diffusion::linear(1000);
    let out = sample(kind, &d, steps, g.t["noise"].clone(), &mut model, &mut noise).unwrap();
    let want_times: Vec<f64> =
        g.t[&format!("{key}_times")].to_vec1::<f32>().unwrap().iter().map(|&x| x as f64).collect();
    let mut want_times_desc = want_times.clone();
    want_times_desc.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(times.len(), want_times.len(), "{key}: one model call per step");
    for (a, b) in times.iter().zip(&want_times_desc) {
        assert!((a - b).abs() < 1e-3, "{key}: model times {times:?} vs {want_times_desc:?}");
    }
    let want: Vec<f32> = g.t[key].flatten_all().unwrap().to_vec1().unwrap();
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{key}: the sample has the golden's size");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    eprintln!("{key}: largest difference {worst:e} (values up to {scale})");
    assert!(worst < 1e-3, "{key}: largest difference {worst} (values up to {scale})");
}

#[test]
fn guided_dpm_solver_on_the_tiny_model_matches_the_diffusers_pipeline() {
    let g = golden();
    check(&g, SamplerKind::DpmSolverDiffusers, 20, cond(&g, "empty", "empty_mask"), "dpm_diffusers");
}

#[test]
fn guided_dpm_solver_with_the_official_schedule_and_null_matches_the_official_code() {
    let g = golden();
    let null = Condition::official_null(&g.model, &cond(&g, "cond", "cond_mask")).unwrap();
    check(&g, SamplerKind::DpmSolver, 20, null, "dpm_official");
}

#[test]
fn guided_ddim_matches_diffusers() {
    let g = golden();
    check(&g, SamplerKind::Ddim, 10, cond(&g, "empty", "empty_mask"), "ddim");
}

#[test]
fn guided_iddpm_ancestral_sampling_matches_the_official_p_sample_loop() {
    let g = golden();
    let null = Condition::official_null(&g.model, &cond(&g, "cond", "cond_mask")).unwrap();
    check(&g, SamplerKind::Iddpm, 10, null, "iddpm");
}
