//! One training step of PixArt-α's recipe: uniform timesteps and noise from our seeded generator,
//! the classifier-free-guidance caption drop to the null caption (`y_embedding`, the caption's own
//! mask kept), the IDDPM hybrid loss, global gradient clipping, AdamW and the EMA. A step whose loss
//! or gradients are not finite changes nothing and is counted; too many in a row stop training.

use super::data::Batch;
use super::diffusion::Diffusion;
use super::distributed::Reducer;
use super::model::PixArt;
use super::optim::{grad_norm_and_scale, Ema, Optimizer, OptimizerConfig};
use super::precision::{LossScale, Precision, MIN_SCALE};
use crate::rng::Rng;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// What one step did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StepLog {
    /// Mean hybrid loss of the batch (`mse + vb`).
    pub loss: f64,
    /// Mean noise MSE.
    pub mse: f64,
    /// Mean variational-bound term.
    pub vb: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The step was skipped (loss or gradients not finite).
    pub skipped: bool,
}

/// Recorded timesteps and noise for a batch of `B` latents of the given shape (a replay of another
/// trainer's draws), in place of the trainer's generator.
pub type Draws = Box<dyn FnMut(usize, &[usize]) -> anyhow::Result<(Vec<usize>, Tensor)> + Send>;

/// A model with its optimizer, EMA, diffusion and generator.
pub struct Trainer {
    /// The model being trained.
    pub model: PixArt,
    vars: Vec<(String, Var)>,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The EMA of the weights.
    pub ema: Ema,
    diffusion: Diffusion,
    /// The generator of timesteps and noise (its state is part of a checkpoint).
    pub rng: Rng,
    /// Steps skipped for non-finite values, in all.
    pub skipped: usize,
    /// Skipped steps in a row (0 after a good step).
    pub skipped_in_a_row: usize,
    /// Stop with an error after this many skipped steps in a row.
    pub max_skipped_in_a_row: usize,
    /// The compute precision (see [`Trainer::set_precision`]).
    pub precision: Precision,
    /// The dynamic loss scale (f16 only).
    pub loss_scale: Option<LossScale>,
    /// With several processes: averages the gradients and losses over the ranks.
    pub reducer: Option<Reducer>,
    /// Timesteps and noise from a recording instead of [`Trainer::rng`] (replays).
    pub draws: Option<Draws>,
    /// Computes the gradients with candle's autograd even where the fused CPU path would run (the
    /// path every other device takes).
    pub autograd: bool,
    /// Activation checkpointing: the blocks in segments of this many, their activations recomputed
    /// in the backward (autograd; 0: off).
    pub checkpoint_every: usize,
    /// Training adapters: the transformer frozen, [`Trainer::names`] the adapters' variables.
    pub lora: Option<super::lora_train::LoraTrainConfig>,
}

impl Trainer {
    /// Makes `model`'s weights trainable and sets up the optimizer, the EMA (`ema_decay`) and the generator.
    pub fn new(mut model: PixArt, optimizer: OptimizerConfig, ema_decay: f64, seed: u64) -> anyhow::Result<Self> {
        let vars = model.trainable()?;
        Self::over(model, vars, optimizer, ema_decay, seed)
    }

    /// Trains fresh `lora` adapters (seeded by `seed`) of the frozen `model`: the optimizer and the
    /// EMA hold the adapters alone; the gradients come from candle's autograd through the merged
    /// weights ([`super::lora_train::adapted`]).
    pub fn new_lora(
        model: PixArt,
        lora: super::lora_train::LoraTrainConfig,
        optimizer: OptimizerConfig,
        ema_decay: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let vars = super::lora_train::init_adapters(&lora, &model, seed)?;
        let mut t = Self::over(model, vars, optimizer, ema_decay, seed)?;
        t.autograd = true;
        t.lora = Some(lora);
        Ok(t)
    }

    /// A trainer of the variables `vars` of `model`.
    fn over(
        model: PixArt,
        vars: Vec<(String, Var)>,
        optimizer: OptimizerConfig,
        ema_decay: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let params: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
        Ok(Self {
            optimizer: Optimizer::new(optimizer, &params)?,
            ema: Ema::new(ema_decay, &params)?,
            model,
            vars,
            diffusion: Diffusion::linear(1000),
            rng: Rng::new(seed),
            skipped: 0,
            skipped_in_a_row: 0,
            max_skipped_in_a_row: 10,
            precision: Precision::F32,
            loss_scale: None,
            reducer: None,
            draws: None,
            autograd: false,
            checkpoint_every: 0,
            lora: None,
        })
    }

    /// Computes the forward and backward in `precision` from now on: bf16/f16 on cast copies of the
    /// f32 weights (which the optimizer and the EMA keep updating in f32), norms, attention and the
    /// loss in f32; f16 with a dynamic loss scale (a fresh one).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.loss_scale = (precision == Precision::F16).then(LossScale::default);
    }

    /// The hybrid loss of one batch (its per-sample terms) and the gradients of
    /// `mean loss · scale · loss_scale`, computed by `compute` (the weights cast to 16 bits) if given,
    /// else by the model.
    fn loss_and_grads(
        &mut self,
        compute: Option<&PixArt>,
        batch: &Batch,
        scale: f64,
        loss_scale: f64,
    ) -> anyhow::Result<(super::diffusion::Losses, candle_core::backprop::GradStore)> {
        let x0 = &batch.latents;
        let (b, dev) = (x0.dim(0)?, x0.device().clone());
        let steps = self.diffusion.steps();
        let (t, noise) = match &mut self.draws {
            Some(draws) => {
                let (t, noise) = draws(b, x0.dims())?;
                if t.len() != b || noise.dims() != x0.dims() || t.iter().any(|&v| v >= steps) {
                    anyhow::bail!("recorded draws: expected {b} timesteps below {steps} and noise of {:?}", x0.dims());
                }
                (t, noise.to_device(&dev)?.to_dtype(x0.dtype())?)
            }
            None => {
                let t = (0..b).map(|_| ((self.rng.uniform() * steps as f64) as usize).min(steps - 1)).collect();
                (t, self.rng.normal_tensor(x0.dims(), 1.0, &dev)?.to_dtype(x0.dtype())?)
            }
        };
        let x_t = self.diffusion.q_sample(x0, &t, &noise)?;
        let caption = match self.model.null_caption() {
            Some(null) if batch.drop.iter().any(|&d| d) => {
                let rows = (0..b)
                    .map(|i| if batch.drop[i] { Ok(null.clone()) } else { batch.caption.get(i) })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?
            }
            _ => batch.caption.clone(),
        };
        let timesteps = Tensor::from_vec(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), b, &dev)?;
        let micro = self.model.has_micro_conditions().then_some((&batch.img_hw, &batch.aspect_ratio));
        let mut kept = None;
        let diffusion = &self.diffusion;
        let loss_fn = |out: &Tensor| {
            let losses = diffusion.training_losses(&out.to_dtype(x0.dtype())?, x0, &x_t, &t, &noise)?;
            let loss = (losses.loss.mean_all()? * (scale * loss_scale))?;
            kept = Some(losses);
            Ok(loss)
        };
        let (every, autograd) = (self.checkpoint_every, self.autograd);
        let run = |model: &PixArt, inputs, micro, loss_fn| match (every, autograd) {
            (0, false) => super::loss_and_grads(model, inputs, micro, loss_fn),
            (0, true) => super::tape::autograd_loss_and_grads(model, inputs, micro, loss_fn),
            (k, _) => super::tape::checkpointed_loss_and_grads(model, inputs, micro, loss_fn, k),
        };
        let (_, grads) = match compute {
            None => run(&self.model, (&x_t, &timesteps, &caption, &batch.mask), micro, loss_fn)?,
            Some(model) => {
                let dt = self.precision.dtype();
                let micro = match micro {
                    Some((a, b)) => Some((a.to_dtype(dt)?, b.to_dtype(dt)?)),
                    None => None,
                };
                let inputs = (&x_t.to_dtype(dt)?, &timesteps, &caption.to_dtype(dt)?, &batch.mask);
                run(model, inputs, micro.as_ref().map(|(a, b)| (a, b)), loss_fn)?
            }
        };
        let losses = kept.ok_or_else(|| anyhow::anyhow!("the loss was not computed"))?;
        Ok((losses, grads))
    }

    /// The model a step computes with, when it is not [`Trainer::model`] itself: the adapted model
    /// (adapters in training; `dropout_seed` seeds their dropout) and the 16-bit copy of mixed precision.
    fn compute_model(&self, dropout_seed: Option<u64>) -> anyhow::Result<Option<PixArt>> {
        Ok(match (&self.lora, self.precision) {
            (Some(lora), p) => {
                // In 16 bits, the frozen weights and the adapters are cast first (the adapters by a
                // tracked op, so their gradients come back in f32).
                let (cast, dtype) = match p {
                    Precision::F32 => (None, DType::F32),
                    p => (Some(self.model.cast(p.dtype())?), p.dtype()),
                };
                let adapters = self
                    .vars
                    .iter()
                    .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(dtype)?)))
                    .collect::<candle_core::Result<_>>()?;
                let base = cast.as_ref().unwrap_or(&self.model);
                Some(super::lora_train::adapted(lora, base, &adapters, dropout_seed)?)
            }
            (None, Precision::F32) => None,
            (None, p) => Some(self.model.cast(p.dtype())?),
        })
    }

    /// One step on `batch` at learning rate `lr`, gradients clipped to `max_grad_norm`.
    pub fn step(&mut self, batch: &Batch, lr: f64, max_grad_norm: f64) -> anyhow::Result<StepLog> {
        self.step_accumulated(std::slice::from_ref(batch), lr, max_grad_norm)
    }

    /// One optimizer step over the micro-batches `batches` (gradient accumulation): each one's loss
    /// is divided by their number and the gradients summed, as `loss / accum; loss.backward()` does.
    pub fn step_accumulated(&mut self, batches: &[Batch], lr: f64, max_grad_norm: f64) -> anyhow::Result<StepLog> {
        if batches.is_empty() {
            anyhow::bail!("a training step needs at least one batch");
        }
        let n = batches.len() as f64;
        let (mut loss_v, mut mse, mut vb) = (0.0, 0.0, 0.0);
        let mut grads: Vec<Tensor> = Vec::new();
        let loss_scale = self.loss_scale.map_or(1.0, |s| s.scale);
        // Mixed precision: one 16-bit copy of the weights for all the micro-batches of this step.
        // Adapters with dropout: a model (and masks) per micro-batch, seeded from the generator.
        let per_batch = self.lora.as_ref().is_some_and(|l| l.dropout > 0.0);
        let shared = if per_batch { None } else { self.compute_model(None)? };
        for batch in batches {
            let own = if per_batch {
                let seed = self.rng.next_u64();
                self.compute_model(Some(seed))?
            } else {
                None
            };
            let compute = own.as_ref().or(shared.as_ref());
            let (losses, store) = self.loss_and_grads(compute, batch, 1.0 / n, loss_scale)?;
            let mean =
                |x: &Tensor| -> anyhow::Result<f64> { Ok(x.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
            loss_v += mean(&losses.loss)? / n;
            mse += mean(&losses.mse)? / n;
            vb += mean(&losses.vb)? / n;
            for (i, (_, v)) in self.vars.iter().enumerate() {
                // Detached: a gradient our fused ops computed from tracked tensors would otherwise keep
                // the step's whole graph (activations included) alive in the optimizer's moments.
                let g = match store.get(v.as_tensor()) {
                    Some(g) => g.detach(),
                    None => v.zeros_like()?,
                };
                if i < grads.len() {
                    grads[i] = (&grads[i] + g)?;
                } else {
                    grads.push(g);
                }
            }
        }
        if let Some(r) = &self.reducer {
            // Data parallel: every rank goes on with the means over the ranks, so all take the same
            // step (or all skip it).
            grads = r.mean_all(&grads)?;
            let dev = batches[0].latents.device();
            let means = r.mean(&Tensor::new(&[loss_v, mse, vb], dev)?)?.to_vec1::<f64>()?;
            (loss_v, mse, vb) = (means[0], means[1], means[2]);
        }
        // The norm before clipping; a non-finite one (or loss) skips the step, the clipped gradients unused.
        // The gradients are still multiplied by the loss scale: the factor divides it out as AdamW reads them.
        let (grad_norm, grad_scale) = grad_norm_and_scale(&grads, max_grad_norm, loss_scale)?;
        if let (Some(ls), true) = (self.loss_scale.as_mut(), loss_v.is_finite()) {
            // f16: an overflow of the scaled gradients (the loss itself finite) halves the scale and
            // skips the step without counting as a failure, as GradScaler does, until the scale is 1.
            // A non-finite loss is a failure below and leaves the scale as it is.
            let overflow = !grad_norm.is_finite();
            let counts = ls.scale <= MIN_SCALE;
            ls.update(overflow);
            if overflow && !counts {
                return Ok(StepLog { loss: loss_v, mse, vb, grad_norm, skipped: true });
            }
        }
        if !(loss_v.is_finite() && grad_norm.is_finite()) {
            self.skipped += 1;
            self.skipped_in_a_row += 1;
            if self.skipped_in_a_row >= self.max_skipped_in_a_row {
                anyhow::bail!(
                    "{} steps in a row had a non-finite loss or gradient (last loss {loss_v}); stopping with the \
                     weights of the last good step. Lower the learning rate or check the data of batch {:?}.",
                    self.skipped_in_a_row,
                    batches.iter().flat_map(|b| b.keys.iter()).collect::<Vec<_>>()
                );
            }
            return Ok(StepLog { loss: loss_v, mse, vb, grad_norm, skipped: true });
        }
        self.skipped_in_a_row = 0;
        let params: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        self.optimizer.step_scaled(&params, &grads, lr, grad_scale)?;
        self.ema.update(&params)?;
        Ok(StepLog { loss: loss_v, mse, vb, grad_norm, skipped: false })
    }

    /// The trainable parameters' names, in the optimizer's and the EMA's order.
    pub fn names(&self) -> Vec<&str> {
        self.vars.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The EMA weights by name, with the (untrained) null caption: a whole model's weights.
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        let mut w: HashMap<String, Tensor> =
            self.vars.iter().zip(&self.ema.weights).map(|((n, _), t)| (n.clone(), t.clone())).collect();
        if let Some(null) = self.model.null_caption() {
            w.insert(super::keys::NULL_CAPTION.into(), null.clone());
        }
        w
    }

    /// The model of the EMA weights: the whole transformer, or with adapters the frozen one with the
    /// EMA adapters merged in.
    pub fn ema_model(&self) -> anyhow::Result<PixArt> {
        match &self.lora {
            Some(lora) => super::lora_train::adapted(lora, &self.model, &self.ema_weights(), None),
            None => Ok(PixArt::from_weights(self.model.config.clone(), self.ema_weights())?),
        }
    }

    /// With adapters, the frozen transformer with the current adapters merged in (no gradient); `None`
    /// when the whole transformer trains (it is [`Trainer::model`]).
    pub fn adapted_model(&self) -> anyhow::Result<Option<PixArt>> {
        let Some(lora) = &self.lora else { return Ok(None) };
        let adapters = self.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        Ok(Some(super::lora_train::adapted(lora, &self.model, &adapters, None)?))
    }

    /// The trained variables by name (with adapters, the adapters' tensors under peft's names).
    pub fn trained(&self) -> std::collections::BTreeMap<String, Tensor> {
        self.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    /// Sets the trained variables to `values` (by name, as [`Trainer::trained`] gives them).
    pub fn set_trained(&mut self, values: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, v) in &self.vars {
            let t = values.get(name).ok_or_else(|| anyhow::anyhow!("trained tensors: no `{name}`"))?;
            if t.dims() != v.dims() {
                anyhow::bail!("trained tensor `{name}`: expected {:?}, found {:?}", v.dims(), t.dims());
            }
            v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?;
        }
        Ok(())
    }

    /// Replaces the EMA by `weights` (by name, as [`Trainer::ema_weights`] gives them).
    pub fn set_ema_weights(&mut self, weights: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        for ((name, v), slot) in self.vars.iter().zip(self.ema.weights.iter_mut()) {
            let t = weights.get(name).ok_or_else(|| anyhow::anyhow!("EMA weights: no `{name}`"))?;
            if t.dims() != v.dims() {
                anyhow::bail!("EMA weight `{name}`: expected {:?}, found {:?}", v.dims(), t.dims());
            }
            *slot = t.to_dtype(v.dtype())?.to_device(v.device())?.copy()?; // updated in place later
        }
        Ok(())
    }
}
