//! Samplers for PixArt-α: DPM-Solver++(2M) (the official inference sampler, 20 steps, with the
//! official time-uniform schedule or diffusers' discrete one), DDIM and IDDPM ancestral sampling with
//! the learned variance (the official `p_sample_loop`), and classifier-free guidance on ε.
//!
//! A sampler calls the model as `model(x, t)` with `t` the model's timestep input (fractional for the
//! official DPM-Solver schedule) and expects its whole output `[B, C or 2C, H, W]`: ε first, then (for
//! learned-σ models) the variance interpolation. Noise comes from the caller (our seeded RNG), never
//! from candle's unseedable one.

mod ddim;
mod dpm_solver;
mod guidance;
mod iddpm;

pub use ddim::Ddim;
pub use dpm_solver::{DpmSchedule, DpmSolverPP};
pub use guidance::{Condition, Guided};
pub use iddpm::Ancestral;

use candle_core::{Result, Tensor};

/// The model as a sampler sees it: whole output at model timestep `t`.
pub type ModelFn<'a> = dyn FnMut(&Tensor, f64) -> Result<Tensor> + 'a;
/// A source of standard normal noise shaped like its argument.
pub type NoiseFn<'a> = dyn FnMut(&Tensor) -> Result<Tensor> + 'a;

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// DPM-Solver++(2M), official time-uniform schedule (default 20 steps).
    DpmSolver,
    /// DPM-Solver++(2M) with diffusers' `DPMSolverMultistepScheduler` schedule (default 20 steps).
    DpmSolverDiffusers,
    /// DDIM, deterministic (η = 0), diffusers' "leading" spacing (default 50 steps).
    Ddim,
    /// IDDPM ancestral sampling with the learned variance (default 100 steps).
    Iddpm,
}

impl SamplerKind {
    /// The sampler's name as `--sampler` takes it (`dpm-solver`).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    /// The official inference's step count for this sampler.
    pub fn default_steps(self) -> usize {
        match self {
            SamplerKind::DpmSolver | SamplerKind::DpmSolverDiffusers => 20,
            SamplerKind::Ddim => 50,
            SamplerKind::Iddpm => 100,
        }
    }
}

/// The first `c` channels (ε) of a model output.
fn eps_of(output: &Tensor, c: usize) -> Result<Tensor> {
    output.narrow(1, 0, c)
}

/// Runs `kind` for `steps` steps over the PixArt-α training diffusion `diffusion` from noise `x`.
pub fn sample(
    kind: SamplerKind,
    diffusion: &crate::train::diffusion::Diffusion,
    steps: usize,
    x: Tensor,
    model: &mut ModelFn,
    noise: &mut NoiseFn,
) -> Result<Tensor> {
    match kind {
        SamplerKind::DpmSolver => {
            DpmSolverPP::new(diffusion.alphas_cumprod(), steps, DpmSchedule::Official).sample(x, model)
        }
        SamplerKind::DpmSolverDiffusers => {
            DpmSolverPP::new(diffusion.alphas_cumprod(), steps, DpmSchedule::Diffusers).sample(x, model)
        }
        SamplerKind::Ddim => Ddim::new(diffusion.alphas_cumprod(), steps, 0.0).sample(x, model, noise),
        SamplerKind::Iddpm => Ancestral::new(diffusion, steps).sample(x, model, noise),
    }
}
