//! Mixed precision: the forward and backward in bf16 or f16 on copies of the f32 master weights,
//! with layer norms, attention and the loss in f32, and for f16 a dynamic loss scale (PyTorch's
//! `GradScaler` rule), so small gradients do not flush to zero and an overflow skips the step.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// The compute precision of a training run (`precision` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (CPU and GPU).
    F32,
    /// bf16 compute on f32 master weights.
    Bf16,
    /// f16 compute on f32 master weights, with a dynamic loss scale.
    F16,
}

impl Precision {
    /// Parses the config value `f32`, `bf16` or `f16`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            other => anyhow::bail!("`precision`: expected \"f32\", \"bf16\" or \"f16\", found {other:?}"),
        }
    }

    /// The dtype the model computes in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// PyTorch `GradScaler`'s dynamic loss scale: the loss is multiplied by `scale` before the backward
/// and the gradients divided by it; a step with non-finite gradients is skipped and halves the scale,
/// and `growth_interval` good steps in a row double it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The current factor.
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: u64,
}

/// `GradScaler`'s defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;
/// Below this the scale stops shrinking: the overflow is then the model's, and counts as a failure.
pub const MIN_SCALE: f64 = 1.0;

impl Default for LossScale {
    fn default() -> Self {
        LossScale { scale: INIT_SCALE, good_steps: 0 }
    }
}

impl LossScale {
    /// After a step: `overflow` when its gradients were not finite.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale = (self.scale * 0.5).max(MIN_SCALE);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_precisions_and_names_the_field_otherwise() {
        assert_eq!(Precision::parse("bf16").unwrap().dtype(), DType::BF16);
        assert_eq!(Precision::parse("f16").unwrap(), Precision::F16);
        let err = Precision::parse("fp8").unwrap_err().to_string();
        assert!(err.contains("`precision`") && err.contains("fp8"), "{err}");
    }

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScale::default();
        s.update(true);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        for _ in 0..40 {
            s.update(true);
        }
        assert_eq!(s.scale, MIN_SCALE);
    }
}
