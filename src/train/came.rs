//! CAME ("Confidence-guided Adaptive Memory Efficient Optimization", Luo et al. 2023) as the
//! `came-pytorch` package implements it, the optimizer PixArt-Σ trains with (the official code's
//! `CAMEWrapper` subclasses it unchanged). Per parameter: the second moment of the gradient is kept
//! factored (a row and a column average) for tensors of two or more dimensions, the update is the
//! gradient over its root, clipped to an RMS of `clip_threshold`, averaged into a first moment, and
//! scaled by the factored "instability" (the squared gap between the update and that moment) before
//! the learning rate; weight decay is decoupled. No bias correction. State: tensors by name, so a
//! checkpoint stores and restores it exactly.

use candle_core::{DType, Result, Tensor, Var, D};
use std::collections::HashMap;

/// CAME's own hyper-parameters (the learning rate and weight decay are the optimizer section's);
/// the default is `came-pytorch`'s and PixArt-Σ's configs'.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameConfig {
    /// Decays of the update's average, the squared gradient's and the instability's.
    pub betas: [f64; 3],
    /// Added to the squared gradient and to the instability.
    pub eps: [f64; 2],
    /// The update's RMS is clipped to this.
    pub clip_threshold: f64,
}

impl Default for CameConfig {
    fn default() -> Self {
        Self { betas: [0.9, 0.999, 0.9999], eps: [1e-30, 1e-16], clip_threshold: 1.0 }
    }
}

/// One parameter's second-moment state.
enum Second {
    /// Row and column averages of the squared gradient and of the instability (two or more dims).
    Factored { sq_row: Tensor, sq_col: Tensor, res_row: Tensor, res_col: Tensor },
    /// The squared gradient's average (vectors).
    Full { sq: Tensor },
}

/// CAME over a fixed list of parameters.
pub struct Came {
    /// Hyper-parameters.
    pub config: CameConfig,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)` before the update).
    pub weight_decay: f64,
    /// Steps taken.
    pub steps: u64,
    exp_avg: Vec<Tensor>,
    second: Vec<Second>,
}

/// `t`'s shape without its last dimension, and without its second-to-last.
fn row_col_dims(dims: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let n = dims.len();
    let row = dims[..n - 1].to_vec();
    let mut col = dims[..n - 2].to_vec();
    col.push(dims[n - 1]);
    (row, col)
}

/// The factored estimate `rsqrt(row / mean(row)) ⊗ rsqrt(col)` of `came-pytorch`'s `_approx_sq_grad`.
fn approx(row: &Tensor, col: &Tensor) -> Result<Tensor> {
    let r = row.broadcast_div(&row.mean_keepdim(D::Minus1)?)?.sqrt()?.recip()?.unsqueeze(row.rank())?;
    let c = col.unsqueeze(col.rank() - 1)?.sqrt()?.recip()?;
    r.broadcast_mul(&c)
}

/// `‖t‖₂ / √numel`.
fn rms(t: &Tensor) -> Result<f64> {
    let sum = t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok(sum.sqrt() / (t.elem_count() as f64).sqrt())
}

/// `avg ← avg·beta + x·(1 − beta)`.
fn average(avg: &Tensor, x: &Tensor, beta: f64) -> Result<Tensor> {
    (avg * beta)? + (x * (1.0 - beta))?
}

impl Came {
    /// Zero state for `params`.
    pub fn new(config: CameConfig, weight_decay: f64, params: &[Var]) -> Result<Self> {
        let mut exp_avg = Vec::new();
        let mut second = Vec::new();
        for p in params {
            exp_avg.push(p.zeros_like()?);
            let zeros = |dims: &[usize]| Tensor::zeros(dims, p.dtype(), p.device());
            second.push(if p.rank() >= 2 {
                let (row, col) = row_col_dims(p.dims());
                Second::Factored {
                    sq_row: zeros(&row)?,
                    sq_col: zeros(&col)?,
                    res_row: zeros(&row)?,
                    res_col: zeros(&col)?,
                }
            } else {
                Second::Full { sq: p.zeros_like()? }
            });
        }
        Ok(Self { config, weight_decay, steps: 0, exp_avg, second })
    }

    /// One update of `params` with `grads` (same order and shapes) times `grad_scale` (the clipping
    /// factor) at learning rate `lr`.
    pub fn step_scaled(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if params.len() != self.exp_avg.len() || grads.len() != params.len() {
            candle_core::bail!(
                "CAME: {} parameters and {} gradients for an optimizer of {}",
                params.len(),
                grads.len(),
                self.exp_avg.len()
            );
        }
        self.steps += 1;
        let CameConfig { betas: [b1, b2, b3], eps: [eps1, eps2], clip_threshold } = self.config;
        for ((p, g), (m, second)) in params.iter().zip(grads).zip(self.exp_avg.iter_mut().zip(self.second.iter_mut())) {
            let g = g.to_dtype(p.dtype())?;
            let g = if grad_scale == 1.0 { g } else { (g * grad_scale)? };
            let sq = (g.sqr()? + eps1)?;
            let update = match second {
                Second::Factored { sq_row, sq_col, .. } => {
                    *sq_row = average(sq_row, &sq.mean(D::Minus1)?, b2)?;
                    *sq_col = average(sq_col, &sq.mean(D::Minus2)?, b2)?;
                    (approx(sq_row, sq_col)? * &g)?
                }
                Second::Full { sq: avg } => {
                    *avg = average(avg, &sq, b2)?;
                    (avg.sqrt()?.recip()? * &g)?
                }
            };
            let clip = (rms(&update)? / clip_threshold).max(1.0);
            let update = (update / clip)?;
            *m = average(m, &update, b1)?;
            let update = match second {
                Second::Factored { res_row, res_col, .. } => {
                    let res = ((&update - &*m)?.sqr()? + eps2)?;
                    *res_row = average(res_row, &res.mean(D::Minus1)?, b3)?;
                    *res_col = average(res_col, &res.mean(D::Minus2)?, b3)?;
                    (approx(res_row, res_col)? * &*m)?
                }
                Second::Full { .. } => m.clone(),
            };
            let mut w = p.as_tensor().detach();
            if self.weight_decay != 0.0 {
                w = (&w + (&w * (-self.weight_decay * lr))?)?;
            }
            p.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The state by name (`came.exp_avg.{i}`, `came.exp_avg_sq_row.{i}`, `came.exp_avg_sq_col.{i}`,
    /// `came.exp_avg_res_row.{i}`, `came.exp_avg_res_col.{i}` or `came.exp_avg_sq.{i}`, and
    /// `came.steps`: `came-pytorch`'s state names), for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s = HashMap::new();
        for (i, (m, second)) in self.exp_avg.iter().zip(&self.second).enumerate() {
            s.insert(format!("came.exp_avg.{i}"), m.clone());
            for (name, t) in Self::named(second) {
                s.insert(format!("came.{name}.{i}"), t.clone());
            }
        }
        let dev = self.exp_avg.first().map(|m| m.device().clone()).unwrap_or(candle_core::Device::Cpu);
        s.insert("came.steps".into(), Tensor::new(&[self.steps as i64], &dev)?);
        Ok(s)
    }

    fn named(second: &Second) -> Vec<(&'static str, &Tensor)> {
        match second {
            Second::Factored { sq_row, sq_col, res_row, res_col } => vec![
                ("exp_avg_sq_row", sq_row),
                ("exp_avg_sq_col", sq_col),
                ("exp_avg_res_row", res_row),
                ("exp_avg_res_col", res_col),
            ],
            Second::Full { sq } => vec![("exp_avg_sq", sq)],
        }
    }

    /// Restores [`Came::state`], checking every tensor's presence and shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| state.get(k).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state: no `{k}`")));
        let restore = |key: String, slot: &Tensor| -> Result<Tensor> {
            let t = get(&key)?;
            if t.dims() != slot.dims() {
                candle_core::bail!("optimizer state `{key}`: expected {:?}, found {:?}", slot.dims(), t.dims());
            }
            t.to_dtype(slot.dtype())?.to_device(slot.device())?.copy()
        };
        for i in 0..self.exp_avg.len() {
            self.exp_avg[i] = restore(format!("came.exp_avg.{i}"), &self.exp_avg[i])?;
            self.second[i] = match &self.second[i] {
                Second::Factored { sq_row, sq_col, res_row, res_col } => Second::Factored {
                    sq_row: restore(format!("came.exp_avg_sq_row.{i}"), sq_row)?,
                    sq_col: restore(format!("came.exp_avg_sq_col.{i}"), sq_col)?,
                    res_row: restore(format!("came.exp_avg_res_row.{i}"), res_row)?,
                    res_col: restore(format!("came.exp_avg_res_col.{i}"), res_col)?,
                },
                Second::Full { sq } => Second::Full { sq: restore(format!("came.exp_avg_sq.{i}"), sq)? },
            };
        }
        self.steps = get("came.steps")?.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?[0] as u64;
        Ok(())
    }
}
