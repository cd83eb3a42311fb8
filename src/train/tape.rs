//! The CPU training path: the loss and every weight's gradient with the transformer blocks run
//! outside candle's autograd. Each block's forward keeps its activations and its hand-written
//! backward returns all its gradients at once ([`super::ops::block_forward`]); candle's autograd,
//! which allocates a zero tensor and adds into it for every gradient it passes, only sees the small
//! parts around the blocks: the embeddings before them and the final layer and loss after them.
//!
//! The graph is cut at the blocks' input and output: the head and loss run on leaf variables (the
//! blocks' output and a copy of the timestep embedding), their gradients go backward through the
//! blocks by hand, and the embeddings' weights get theirs from one backward pass of
//! `Σ x·dx + Σ ctx·dctx + Σ t_emb·dt_emb` (the gradients held constant), which is exactly the chain
//! rule through them. Elsewhere (other devices, f16/bf16) it is the plain autograd path.

use super::model::{fused_inputs, PixArt};
use super::ops::kernels::Real;
use super::ops::pool;
use super::ops::{block_backward, block_forward, fused_block, BlockTape};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Storage, Tensor, Var};

/// Appends the values of `t` (any layout) to `dst`.
fn extend_values<T: Real>(dst: &mut Vec<T>, t: &Tensor) -> Result<()> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(s), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            dst.extend_from_slice(&s.as_slice::<T>()?[start..end]);
            return Ok(());
        }
    }
    dst.extend(t.flatten_all()?.to_vec1::<T>()?);
    Ok(())
}

fn values<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    let mut v = Vec::with_capacity(t.elem_count());
    extend_values(&mut v, t)?;
    Ok(v)
}

/// One block's forward kept for its backward: its input, its packed weights (and the tensors they
/// came from, in order) and its tape.
struct Ran<'a, T> {
    x: Vec<T>,
    params: Vec<T>,
    weights: Vec<&'a Tensor>,
    tape: BlockTape<T>,
}

impl PixArt {
    /// `loss(output)` for the model's output on these inputs (see [`PixArt::forward`]), and the
    /// gradients of everything it depends on, as `loss.backward()` gives them (at least every weight's).
    /// On CPU in f32/f64 the transformer blocks run outside candle's autograd (same values, a faster
    /// and leaner training step); elsewhere this is `loss(forward(..)).backward()`.
    pub fn loss_and_grads(
        &self,
        (latents, timestep, caption, mask): (&Tensor, &Tensor, &Tensor, &Tensor),
        micro: Option<(&Tensor, &Tensor)>,
        loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        let e = self.embed(latents, timestep, caption, mask, micro)?;
        if !fused_block(&e.x) {
            let value = loss(&self.blocks_and_head(&e)?)?;
            let grads = value.backward()?;
            return Ok((value, grads));
        }
        match e.x.dtype() {
            DType::F32 => self.taped::<f32>(e, loss),
            DType::F64 => self.taped::<f64>(e, loss),
            other => candle_core::bail!("the fused CPU path runs f32 or f64, not {other:?}"),
        }
    }

    fn taped<T: Real + 'static>(
        &self,
        e: super::model::Embedded,
        loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        let c = &self.config;
        let dev = Device::Cpu;
        let (b, n, hidden) = e.x.dims3()?;
        let l = e.y.dim(1)?;
        let (ctx, key_bias) = fused_inputs(&e.y, &e.t0, &e.bias)?;
        let ctx_v: Vec<T> = values(&ctx)?;

        let mut x: Vec<T> = values(&e.x)?;
        let mut ran = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let weights = self.block_weights(i)?;
            let mut params = pool::take_empty(weights.iter().map(|t| t.elem_count()).sum());
            for t in &weights {
                extend_values(&mut params, t)?;
            }
            let dims = (b, n, l, hidden, self.mlp_width(i)?);
            let (out, tape) =
                block_forward((c.num_attention_heads, c.norm_eps), dims, &key_bias, (&x, &ctx_v, &params))?;
            ran.push(Ran { x: std::mem::replace(&mut x, out), params, weights, tape });
        }

        // The head and the loss on leaves: the blocks' output and the timestep embedding.
        let blocks_out = Var::from_tensor(&Tensor::from_vec(x, (b, n, hidden), &dev)?)?;
        let t_emb = Var::from_tensor(&e.t_emb.detach())?;
        let value = loss(&self.head(blocks_out.as_tensor(), t_emb.as_tensor(), e.grid)?)?;
        let head_grads = value.backward()?;
        let mut g: Vec<T> = match head_grads.get(blocks_out.as_tensor()) {
            Some(t) => values(t)?,
            None => vec![T::zero(); b * n * hidden],
        };

        let mut block_grads = Vec::new();
        let mut dctx = vec![T::zero(); ctx_v.len()];
        for r in ran.into_iter().rev() {
            let (dx, dc, dp) = block_backward(r.tape, (&r.x, &ctx_v, &r.params), &g);
            dctx.iter_mut().zip(&dc).for_each(|(a, &d)| *a += d);
            let params_len = r.params.len();
            for done in [dc, r.x, r.params, std::mem::replace(&mut g, dx)] {
                pool::give(done);
            }
            // Every weight's gradient is a view into the block's one buffer (no copies).
            let dp = Tensor::from_vec(dp, params_len, &dev)?;
            let mut at = 0;
            for w in r.weights {
                let len = w.elem_count();
                block_grads.push((w, dp.narrow(0, at, len)?.reshape(w.shape())?));
                at += len;
            }
        }

        // The embeddings' gradients: one backward pass of Σ x·dx + Σ ctx·dctx (+ Σ t_emb·dt_emb).
        let dx = Tensor::from_vec(g, (b, n, hidden), &dev)?;
        let dctx = Tensor::from_vec(dctx, ctx.shape(), &dev)?;
        let mut surrogate = ((&e.x * dx)?.sum_all()? + (&ctx * dctx)?.sum_all()?)?;
        if let Some(d) = head_grads.get(t_emb.as_tensor()) {
            surrogate = (surrogate + (&e.t_emb * d)?.sum_all()?)?;
        }
        let mut grads = surrogate.backward()?;
        for w in self.weights().values() {
            if let Some(g) = head_grads.get(w) {
                let sum = match grads.get(w) {
                    Some(other) => (other + g)?,
                    None => g.clone(),
                };
                grads.insert(w, sum);
            }
        }
        for (w, grad) in block_grads {
            grads.insert(w, grad);
        }
        Ok((value, grads))
    }
}
