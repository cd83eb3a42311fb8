//! The CPU training path: the loss and every weight's gradient with the transformer blocks run
//! outside candle's autograd. Each block's forward keeps its activations and its hand-written
//! backward returns all its gradients at once ([`super::ops::block_forward`]); candle's autograd,
//! which allocates a zero tensor and adds into it for every gradient it passes, only sees the small
//! parts around the blocks: the embeddings before them and the final layer and loss after them.
//!
//! The graph is cut at the blocks' input and output: the head and loss run on leaf variables (the
//! blocks' output and a copy of the timestep embedding), their gradients go backward through the
//! blocks by hand, and the timestep embeddings' weights get theirs from one backward pass of
//! `Σ t0·dt0 + Σ t_emb·dt_emb` (the gradients held constant), which is exactly the chain rule
//! through them. The caption projection (the largest part before the blocks, forward and backward,
//! `ops::caption`) and the patch embedding's weight gradients run by hand as well, unless the
//! caption or the latents themselves need a gradient (then `Σ y·dy` and `Σ x·dx` join the pass).
//! Elsewhere (other devices, f16/bf16) it is the plain autograd path.

use super::model::{key_bias_values, trim_caption_padding, PixArt};
use super::ops::pool;
use super::ops::{
    block_backward, block_forward, caption_backward, caption_forward, fused_block, linear_weight_grads, BlockTape,
    CaptionWeights,
};
use crate::nn::kernels::Real;
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

/// The caption projection's weights, in [`CaptionWeights`]' order.
fn caption_tensors(model: &PixArt) -> [&Tensor; 4] {
    let p = &model.caption_projection;
    [&p.linear_1.weight, &p.linear_1.bias, &p.linear_2.weight, &p.linear_2.bias]
}

fn caption_weights<T>(w: &[Vec<T>]) -> CaptionWeights<'_, T> {
    CaptionWeights { w1: &w[0], b1: &w[1], w2: &w[2], b2: &w[3] }
}

/// The caption positions (rows of `[B·L]`, `l` per item) that some query attends to, by their key
/// bias (0, or -10000 where masked: a weight that underflows to exactly 0), if that is not all of them.
/// `None` too when an item has no attended position (its attention is then uniform over all of them).
fn attended_rows(key_bias: &[f64], l: usize) -> Option<Vec<usize>> {
    let attended = |v: &f64| *v > -1000.0;
    let every_item_attends = key_bias.chunks(l.max(1)).all(|item| item.iter().any(attended));
    let rows: Vec<usize> = (0..key_bias.len()).filter(|&r| attended(&key_bias[r])).collect();
    (every_item_attends && rows.len() < key_bias.len()).then_some(rows)
}

/// The rows `rows` (of width `w`) of `v`, packed.
fn gather_rows<T: Real>(v: &[T], rows: &[usize], w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * w);
    for &r in rows {
        out.extend_from_slice(&v[r * w..(r + 1) * w]);
    }
    out
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

/// `loss(output)` for `model`'s output on these inputs (see [`PixArt::forward`]), and the gradients
/// of everything it depends on, as `loss.backward()` gives them (at least every weight's). On CPU in
/// f32/f64 the transformer blocks run outside candle's autograd over the sub-modules' tensors (same
/// values, a faster and leaner training step); elsewhere this is `loss(forward(..)).backward()`.
pub fn loss_and_grads(
    model: &PixArt,
    (latents, timestep, caption, mask): (&Tensor, &Tensor, &Tensor, &Tensor),
    micro: Option<(&Tensor, &Tensor)>,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, GradStore)> {
    let (caption, mask) = trim_caption_padding(caption, mask)?;
    let caption = &caption;
    let mut e = model.embed_latents(latents, timestep, &mask, micro)?;
    // The fused step has no KV compression: such a model trains through candle's autograd.
    if !fused_block(&e.x) || model.has_kv_compress() {
        e.y = Some(model.project_caption(caption)?);
        return autograd(model, &e, loss);
    }
    if caption.track_op() {
        // The caption itself needs a gradient: its projection stays in candle's graph.
        e.y = Some(model.project_caption(caption)?);
    }
    match e.x.dtype() {
        DType::F32 => taped::<f32>(model, e, caption, loss),
        DType::F64 => taped::<f64>(model, e, caption, loss),
        other => candle_core::bail!("the fused CPU path runs f32 or f64, not {other:?}"),
    }
}

/// [`loss_and_grads`] through candle's autograd on any device: `loss(forward(..)).backward()`.
pub fn autograd_loss_and_grads(
    model: &PixArt,
    (latents, timestep, caption, mask): (&Tensor, &Tensor, &Tensor, &Tensor),
    micro: Option<(&Tensor, &Tensor)>,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, GradStore)> {
    let (caption, mask) = trim_caption_padding(caption, mask)?;
    autograd(model, &model.embed(latents, timestep, &caption, &mask, micro)?, loss)
}

/// [`autograd_loss_and_grads`] with activation checkpointing: the blocks run in segments of `every`
/// blocks, each segment's forward first without keeping its activations (only its input), and again
/// in the backward, one segment at a time from the last, to take its gradients. The gradients are
/// those of the plain path; the memory held is one segment's activations plus each segment's input.
///
/// The graph is cut at each segment's input and at what every block reads (the projected caption
/// `y` and the adaLN input `t0`) and at the head's timestep embedding: the segments and the head
/// run on leaf variables, and one last backward pass of `Σ x·dx + Σ y·dy + Σ t0·dt0 + Σ t·dt` over
/// the embedding carries the gradients gathered at the cuts to the weights before the blocks.
pub fn checkpointed_loss_and_grads(
    model: &PixArt,
    (latents, timestep, caption, mask): (&Tensor, &Tensor, &Tensor, &Tensor),
    micro: Option<(&Tensor, &Tensor)>,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    every: usize,
) -> Result<(Tensor, GradStore)> {
    let (caption, mask) = trim_caption_padding(caption, mask)?;
    let e = model.embed(latents, timestep, &caption, &mask, micro)?;
    let y = e.y.clone().expect("embed projects the caption");
    let leaf = |t: &Tensor| -> Result<Var> { Var::from_tensor(&t.detach()) };
    let (y_leaf, t0_leaf, t_leaf) = (leaf(&y)?, leaf(&e.t0)?, leaf(&e.t_emb)?);
    let cut = super::model::Embedded {
        x: e.x.detach(),
        patches: e.patches.detach(),
        t_emb: t_leaf.as_tensor().clone(),
        t0: t0_leaf.as_tensor().clone(),
        y: Some(y_leaf.as_tensor().clone()),
        bias: e.bias.detach(),
        grid: e.grid,
    };
    let n = model.config.num_layers;
    let every = every.max(1);
    let segments: Vec<(usize, usize)> = (0..n).step_by(every).map(|a| (a, (a + every).min(n))).collect();
    // Forward: each segment's input kept, its activations dropped with the detached output.
    let mut inputs = Vec::with_capacity(segments.len());
    let mut x = cut.x.clone();
    for &(a, b) in &segments {
        inputs.push(x.clone());
        x = model.blocks_range(&cut, &x, a..b)?.detach();
    }
    let x_leaf = Var::from_tensor(&x)?;
    let value = loss(&model.head(x_leaf.as_tensor(), cut.t_emb.as_ref(), cut.grid)?)?;
    let head = value.backward()?;
    let missing = |what: &str| candle_core::Error::Msg(format!("checkpointing: no gradient for {what}"));
    let mut g = head.get(x_leaf.as_tensor()).ok_or_else(|| missing("the blocks' output"))?.clone();
    let mut dy = y.zeros_like()?;
    let mut dt0 = e.t0.zeros_like()?;
    let mut stores = vec![head];
    for (&(a, b), input) in segments.iter().zip(&inputs).rev() {
        let x_in = Var::from_tensor(input)?;
        let out = model.blocks_range(&cut, x_in.as_tensor(), a..b)?;
        let store = (out * &g)?.sum_all()?.backward()?;
        g = store.get(x_in.as_tensor()).ok_or_else(|| missing("a segment's input"))?.clone();
        if let Some(d) = store.get(y_leaf.as_tensor()) {
            dy = (dy + d)?;
        }
        if let Some(d) = store.get(t0_leaf.as_tensor()) {
            dt0 = (dt0 + d)?;
        }
        stores.push(store);
    }
    let dt = stores[0].get(t_leaf.as_tensor()).cloned().unwrap_or(e.t_emb.zeros_like()?);
    let chain =
        (((e.x * g)?.sum_all()? + (y * dy)?.sum_all()?)? + ((e.t0 * dt0)?.sum_all()? + (e.t_emb * dt)?.sum_all()?)?)?;
    let mut grads = chain.backward()?;
    for w in model.weights().values() {
        for store in &stores {
            if let Some(gw) = store.get(w) {
                let sum = match grads.get(w) {
                    Some(prev) => (prev + gw)?,
                    None => gw.clone(),
                };
                grads.insert(w, sum);
            }
        }
    }
    Ok((value, grads))
}

fn autograd(
    model: &PixArt,
    e: &super::model::Embedded,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, GradStore)> {
    let value = loss(&model.blocks_and_head(e)?)?;
    let grads = value.backward()?;
    Ok((value, grads))
}

fn taped<T: Real + 'static>(
    model: &PixArt,
    e: super::model::Embedded,
    caption: &Tensor,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, GradStore)> {
    let c = &model.config;
    let dev = Device::Cpu;
    let (b, n, hidden) = e.x.dims3()?;
    let l = caption.dim(1)?;
    let key_bias = key_bias_values(&e.bias)?;
    // What the blocks read: the projected caption, then the adaLN input. The projection runs by
    // hand (its weights' gradients below) unless `embed` left it in candle's graph.
    let y_len = b * l * hidden;
    let mut ctx_v: Vec<T> = pool::take_empty(y_len + e.t0.elem_count());
    let projection = match &e.y {
        Some(y) => {
            extend_values(&mut ctx_v, y)?;
            None
        }
        None => {
            // Only the positions some query attends to are projected: the others' `y` rows
            // (left 0) meet an attention weight of exactly 0 and get no gradient.
            let attended = attended_rows(&key_bias, l);
            let mut captions = values::<T>(caption)?;
            if let Some(rows) = &attended {
                captions = gather_rows(&captions, rows, caption.dim(2)?);
            }
            let weights = caption_tensors(model).iter().map(|t| values::<T>(t)).collect::<Result<Vec<_>>>()?;
            let r = attended.as_ref().map_or(b * l, Vec::len);
            let (y, tape) = caption_forward(&captions, &caption_weights(&weights), r);
            match &attended {
                Some(rows) => {
                    ctx_v.resize(y_len, T::zero());
                    for (row, src) in rows.iter().zip(y.chunks(hidden)) {
                        ctx_v[row * hidden..(row + 1) * hidden].copy_from_slice(src);
                    }
                }
                None => ctx_v.extend_from_slice(&y),
            }
            pool::give(y);
            Some((captions, weights, tape, attended))
        }
    };
    extend_values(&mut ctx_v, &e.t0)?;

    let mut x: Vec<T> = values(&e.x)?;
    let mut ran = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let weights = model.block_weights(i)?;
        let mut params = pool::take_empty(weights.iter().map(|t| t.elem_count()).sum());
        for t in &weights {
            extend_values(&mut params, t)?;
        }
        let dims = (b, n, l, hidden, model.mlp_width(i)?);
        let (out, tape) = block_forward((c.num_attention_heads, c.norm_eps), dims, &key_bias, (&x, &ctx_v, &params))?;
        ran.push(Ran { x: std::mem::replace(&mut x, out), params, weights, tape });
    }

    // The head and the loss on leaves: the blocks' output and the timestep embedding.
    let blocks_out = Var::from_tensor(&Tensor::from_vec(x, (b, n, hidden), &dev)?)?;
    let t_emb = Var::from_tensor(&e.t_emb.detach())?;
    let value = loss(&model.head(blocks_out.as_tensor(), t_emb.as_tensor(), e.grid)?)?;
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

    // The embeddings' gradients: the patch embedding's (`x = patches Wpᵀ + bp + positions`) by
    // hand unless the latents themselves need one, the rest from one backward pass of
    // Σ t0·dt0 (+ Σ x·dx, + Σ y·dy when the caption projection is in the graph, + Σ t_emb·dt_emb).
    let dt0 = Tensor::from_vec(dctx[y_len..].to_vec(), e.t0.shape(), &dev)?;
    let mut surrogate = (&e.t0 * dt0)?.sum_all()?;
    let patch_grads = if e.patches.track_op() {
        let dx = Tensor::from_vec(g, (b, n, hidden), &dev)?;
        surrogate = (surrogate + (&e.x * dx)?.sum_all()?)?;
        None
    } else {
        let patches = values::<T>(&e.patches)?;
        let k = patches.len() / (b * n);
        let grads = linear_weight_grads(&g, &patches, (b * n, k, hidden));
        pool::give(g);
        Some(grads)
    };
    if let Some(y) = &e.y {
        let dy = Tensor::from_vec(dctx[..y_len].to_vec(), y.shape(), &dev)?;
        surrogate = (surrogate + (y * dy)?.sum_all()?)?;
    }
    if let Some(d) = head_grads.get(t_emb.as_tensor()) {
        surrogate = (surrogate + (&e.t_emb * d)?.sum_all()?)?;
    }
    let mut grads = surrogate.backward()?;
    let mut by_hand = Vec::new();
    if let Some((dw, db)) = patch_grads {
        by_hand.extend([(&model.pos_embed.weight, dw), (&model.pos_embed.bias, db)]);
    }
    if let Some((captions, weights, tape, attended)) = projection {
        let packed;
        let dy = match &attended {
            Some(rows) => {
                packed = gather_rows(&dctx[..y_len], rows, hidden);
                &packed
            }
            None => &dctx[..y_len],
        };
        let got = caption_backward(tape, &captions, &caption_weights(&weights), dy);
        by_hand.extend(caption_tensors(model).into_iter().zip(got));
    }
    for (w, grad) in by_hand {
        grads.insert(w, Tensor::from_vec(grad, w.shape(), &dev)?);
    }
    pool::give(ctx_v);
    for w in model.weights().values() {
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
