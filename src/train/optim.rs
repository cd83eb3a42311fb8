//! The optimisation steps of PixArt-α's recipe, with the semantics of the PyTorch functions the
//! official code calls: AdamW (`torch.optim.AdamW`: decoupled weight decay, bias-corrected moments,
//! eps outside the square root), global gradient-norm clipping (`clip_grad_norm_`) and the EMA of the
//! weights; and PixArt-Σ's CAME ([`super::came`]) beside AdamW. Their state is plain tensors by name, so a checkpoint can store and restore it exactly.

use candle_core::{DType, Result, Tensor, Var};
use std::collections::HashMap;

/// Which optimizer trains the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW` (PixArt-α).
    #[default]
    Adamw,
    /// CAME (`came-pytorch`; PixArt-Σ), its own settings in `came`.
    Came,
}

fn is_adamw(k: &OptimizerKind) -> bool {
    *k == OptimizerKind::Adamw
}

/// The optimizer's hyper-parameters; the default is PixArt-α's AdamW (lr 2e-5, betas 0.9/0.999,
/// eps 1e-10, weight decay 0.03). `beta1`, `beta2` and `eps` are AdamW's; CAME takes its own from
/// `came` (PixArt-Σ's defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `adamw` (default) or `came`.
    #[serde(skip_serializing_if = "is_adamw")]
    pub kind: OptimizerKind,
    /// Learning rate (the schedule may change it per step: [`AdamW::step`] takes the current one).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)` before the update).
    pub weight_decay: f64,
    /// CAME's betas, eps pair and clip threshold (with `kind = "came"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub came: Option<super::came::CameConfig>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 2e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-10,
            weight_decay: 0.03,
            came: None,
        }
    }
}

/// The optimizer of a run: AdamW or CAME, with their state.
pub enum Optimizer {
    /// AdamW.
    AdamW(AdamW),
    /// CAME.
    Came(super::came::Came),
}

impl Optimizer {
    /// The optimizer `config` names, with zero state for `params`.
    pub fn new(config: OptimizerConfig, params: &[Var]) -> Result<Self> {
        Ok(match config.kind {
            OptimizerKind::Adamw => Self::AdamW(AdamW::new(config, params)?),
            OptimizerKind::Came => {
                let came = config.came.unwrap_or_default();
                Self::Came(super::came::Came::new(came, config.weight_decay, params)?)
            }
        })
    }

    /// One update with the gradients times `grad_scale` at learning rate `lr`.
    pub fn step_scaled(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        match self {
            Self::AdamW(o) => o.step_scaled(params, grads, lr, grad_scale),
            Self::Came(o) => o.step_scaled(params, grads, lr, grad_scale),
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        match self {
            Self::AdamW(o) => o.steps,
            Self::Came(o) => o.steps,
        }
    }

    /// The state by name, for a checkpoint (`adamw.*` or `came.*`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            Self::AdamW(o) => o.state(),
            Self::Came(o) => o.state(),
        }
    }

    /// Restores [`Optimizer::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match self {
            Self::AdamW(o) => o.load_state(state),
            Self::Came(o) => o.load_state(state),
        }
    }
}

/// AdamW over a fixed list of parameters.
pub struct AdamW {
    /// Hyper-parameters.
    pub config: OptimizerConfig,
    /// Steps taken.
    pub steps: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(config: OptimizerConfig, params: &[Var]) -> Result<Self> {
        // Separate buffers: the moments are updated in place.
        let zeros = || params.iter().map(|p| p.zeros_like()).collect::<Result<Vec<_>>>();
        Ok(Self { config, steps: 0, m: zeros()?, v: zeros()? })
    }

    /// One update of `params` with `grads` (same order and shapes) at learning rate `lr`.
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(params, grads, lr, 1.0)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_scale` first (the clipping factor of
    /// [`grad_norm_and_scale`]; on CPU it is applied as the gradient is read, with no scaled copy).
    /// The moments are updated in place (a checkpoint's [`AdamW::state`] is written before the next step).
    pub fn step_scaled(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != params.len() {
            candle_core::bail!(
                "AdamW: {} parameters and {} gradients for an optimizer of {}",
                params.len(),
                grads.len(),
                self.m.len()
            );
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let step_size = lr / (1.0 - c.beta1.powi(t));
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let fused = super::optim_cpu::AdamWStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            decay: 1.0 - lr * c.weight_decay,
            step_size,
            bc2_sqrt,
        };
        for ((p, g), (m, v)) in params.iter().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            if super::optim_cpu::applies(&[p.as_tensor(), g, m, v]) {
                super::optim_cpu::adamw(p.as_tensor(), g, (m, v), &fused, grad_scale)?;
                continue;
            }
            let g = g.to_dtype(p.dtype())?;
            let g = if grad_scale == 1.0 { g } else { (g * grad_scale)? };
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // Detached: the update is plain arithmetic, never part of a graph.
            let decayed = (p.as_tensor().detach() * (1.0 - lr * c.weight_decay))?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            p.set(&(decayed - ((&*m / denom)? * step_size)?)?)?;
        }
        Ok(())
    }

    /// The state by name (`adamw.m.{i}`, `adamw.v.{i}`, `adamw.steps`), for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            s.insert(format!("adamw.m.{i}"), m.clone());
            s.insert(format!("adamw.v.{i}"), v.clone());
        }
        let dev = self.m.first().map(|m| m.device().clone()).unwrap_or(candle_core::Device::Cpu);
        s.insert("adamw.steps".into(), Tensor::new(&[self.steps as i64], &dev)?);
        Ok(s)
    }

    /// Restores [`AdamW::state`], checking every moment's presence and shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| state.get(k).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state: no `{k}`")));
        for i in 0..self.m.len() {
            for (name, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adamw.{name}.{i}");
                let t = get(&key)?;
                if t.dims() != slot.dims() {
                    candle_core::bail!("optimizer state `{key}`: expected {:?}, found {:?}", slot.dims(), t.dims());
                }
                // A copy: the moments are updated in place, never through the caller's tensors.
                *slot = t.to_dtype(slot.dtype())?.to_device(slot.device())?.copy()?;
            }
        }
        self.steps = get("adamw.steps")?.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?[0] as u64;
        Ok(())
    }
}

/// `clip_grad_norm_(max_norm)`: the 2-norm over all gradients together; when it exceeds `max_norm`
/// every gradient is scaled by `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let (norm, coef) = grad_norm_and_scale(grads, max_norm, 1.0)?;
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// The global 2-norm of the gradients `grads / loss_scale` (`loss_scale` 1 but under f16's loss
/// scaling) and the factor that turns `grads` into them clipped as `clip_grad_norm_(max_norm)` does
/// (`max_norm / (norm + 1e-6)` when the norm exceeds `max_norm`, else 1; times `1 / loss_scale`),
/// without scaling them.
pub fn grad_norm_and_scale(grads: &[Tensor], max_norm: f64, loss_scale: f64) -> Result<(f64, f64)> {
    let mut sum = 0f64;
    for g in grads.iter() {
        sum += if super::optim_cpu::applies(&[g]) {
            super::optim_cpu::sum_sq(g)?
        } else {
            g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
        };
    }
    let norm = sum.sqrt() / loss_scale;
    Ok((norm, (max_norm / (norm + 1e-6)).min(1.0) / loss_scale))
}

/// The exponential moving average of the weights (`ema ← decay·ema + (1 − decay)·p`).
pub struct Ema {
    /// Decay per update (PixArt-α: 0.9999).
    pub decay: f64,
    /// The averaged weights, in the parameters' order.
    pub weights: Vec<Tensor>,
}

impl Ema {
    /// An average starting at the current `params`.
    pub fn new(decay: f64, params: &[Var]) -> Result<Self> {
        Ok(Self { decay, weights: params.iter().map(|p| p.as_tensor().detach().copy()).collect::<Result<_>>()? })
    }

    /// Moves the average towards `params`.
    pub fn update(&mut self, params: &[Var]) -> Result<()> {
        for (e, p) in self.weights.iter_mut().zip(params) {
            if super::optim_cpu::applies(&[e, p.as_tensor()]) {
                super::optim_cpu::ema(e, p.as_tensor(), self.decay)?;
                continue;
            }
            // Detached, or each average would hold the op graph of every earlier one (a leak per step).
            *e = ((&*e * self.decay)? + (p.as_tensor().detach() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }
}
