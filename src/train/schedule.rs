//! The learning rate per optimizer step: diffusers' `get_constant_schedule_with_warmup` (PixArt-α's)
//! or `get_cosine_schedule_with_warmup`, after the optional square-root batch scaling of the official
//! configs (`auto_scale_lr(rule='sqrt', base_batch_size=256)`).

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrShape {
    /// Constant after a linear warmup (PixArt-α).
    #[default]
    Constant,
    /// Half a cosine from the peak to 0 over the remaining steps.
    Cosine,
}

/// Learning-rate settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate before batch scaling (PixArt-α: 2e-5).
    pub lr: f64,
    /// Linear warmup from 0, in optimizer steps.
    pub warmup_steps: u64,
    /// After the warmup.
    #[serde(default)]
    pub shape: LrShape,
    /// Optimizer steps in all (the cosine's length).
    #[serde(default)]
    pub total_steps: u64,
    /// Multiply `lr` by `sqrt(effective batch / 256)` (the official configs' `auto_lr`).
    #[serde(default)]
    pub sqrt_batch_scaling: bool,
}

impl LrSchedule {
    /// The peak learning rate for an effective batch (batch × accumulation × world size).
    pub fn peak(&self, effective_batch: usize) -> f64 {
        if self.sqrt_batch_scaling {
            self.lr * (effective_batch as f64 / 256.0).sqrt()
        } else {
            self.lr
        }
    }

    /// The learning rate of optimizer step `step` (0 for the first), as diffusers' `LambdaLR` gives it.
    pub fn at(&self, step: u64, effective_batch: usize) -> f64 {
        let peak = self.peak(effective_batch);
        if step < self.warmup_steps {
            return peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        match self.shape {
            LrShape::Constant => peak,
            LrShape::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step - self.warmup_steps) as f64 / span;
                peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_constant_cosine_and_sqrt_scaling() {
        let s = LrSchedule {
            lr: 2e-5,
            warmup_steps: 4,
            shape: LrShape::Constant,
            total_steps: 0,
            sqrt_batch_scaling: false,
        };
        let lrs: Vec<f64> = (0..6).map(|k| s.at(k, 64)).collect();
        for (got, want) in lrs.iter().zip([0.0, 5e-6, 1e-5, 1.5e-5, 2e-5, 2e-5]) {
            assert!((got - want).abs() < 1e-18, "{lrs:?}");
        }
        // The official 1024 px stage: batch 11392 scales 2e-5 by sqrt(44.5).
        let scaled = LrSchedule { sqrt_batch_scaling: true, ..s };
        assert!((scaled.peak(11392) - 2e-5 * 44.5f64.sqrt()).abs() < 1e-15);
        let c =
            LrSchedule { lr: 1.0, warmup_steps: 2, shape: LrShape::Cosine, total_steps: 6, sqrt_batch_scaling: false };
        let lrs: Vec<f64> = (0..7).map(|k| c.at(k, 1)).collect();
        let want = [0.0, 0.5, 1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_24, 0.0];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
    }
}
