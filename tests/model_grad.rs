//! Training through the PixArt transformer: with the hybrid loss, every trainable parameter of a tiny
//! PixArtMS model receives a non-zero gradient, and the model's gradients agree with central finite
//! differences in f64 on sampled elements of ten differently placed parameters.

use candle_core::{DType, Device, Tensor, Var};
use pixforge::train::diffusion::Diffusion;
use pixforge::train::model::PixArt;
use std::collections::HashMap;

struct Setup {
    model: PixArt,
    vars: Vec<(String, Var)>,
    io: HashMap<String, Tensor>,
    noise: Tensor,
    t: Vec<usize>,
}

fn setup() -> Setup {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixart-tiny");
    let mut model = PixArt::load_diffusers(&dir.join("transformer-ms"), &Device::Cpu).unwrap();
    model.to_dtype(DType::F64).unwrap();
    let vars = model.trainable().unwrap();
    let io: HashMap<String, Tensor> = candle_core::safetensors::load(dir.join("io-ms.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
        .collect();
    // Deterministic "noise" of the latents' shape.
    let n = io["latents"].elem_count();
    let noise: Vec<f64> = (0..n).map(|i| ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0).collect();
    let noise = Tensor::from_vec(noise, io["latents"].shape(), &Device::Cpu).unwrap();
    Setup { model, vars, io, noise, t: vec![500, 3] }
}

/// The model output on the noised latents, and the diffusion that noised them.
fn output(s: &Setup) -> (Tensor, Tensor, Diffusion) {
    let d = Diffusion::linear(1000);
    let x_t = d.q_sample(&s.io["latents"], &s.t, &s.noise).unwrap();
    let t = Tensor::from_vec(s.t.iter().map(|&t| t as f64).collect::<Vec<_>>(), s.t.len(), &Device::Cpu).unwrap();
    let micro = Some((&s.io["resolution"], &s.io["aspect_ratio"]));
    (s.model.forward(&x_t, &t, &s.io["caption"], &s.io["mask"], micro).unwrap(), x_t, d)
}

/// The training loss (its VB term stops the gradient into ε, so it is not a function finite
/// differences can check).
fn hybrid_loss(s: &Setup) -> Tensor {
    let (out, x_t, d) = output(s);
    d.training_losses(&out, &s.io["latents"], &x_t, &s.t, &s.noise).unwrap().loss.mean_all().unwrap()
}

/// A smooth scalar of every output element, for finite differences: the output against fixed weights.
fn probe(s: &Setup) -> Tensor {
    let (out, _, _) = output(s);
    let w = (s.noise.affine(0.5, 0.0).unwrap().sin().unwrap() + 0.3).unwrap();
    let w = Tensor::cat(&[&w, &w.cos().unwrap()], 1).unwrap();
    (out * w).unwrap().sum_all().unwrap()
}

#[test]
fn every_parameter_gets_a_gradient_that_matches_finite_differences() {
    let s = setup();
    assert!(s.vars.iter().any(|(n, _)| n.contains("resolution_embedder")), "micro-condition weights are trained");
    let grads = hybrid_loss(&s).backward().unwrap();
    for (name, var) in &s.vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
    // Central differences on a few elements of differently placed parameters.
    let grads = probe(&s).backward().unwrap();
    let h = 1e-6;
    for name in [
        "pos_embed.proj.weight",
        "adaln_single.linear.weight",
        "adaln_single.emb.aspect_ratio_embedder.linear_2.bias",
        "caption_projection.linear_1.weight",
        "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.1.attn2.to_k.bias",
        "transformer_blocks.1.ff.net.0.proj.weight",
        "transformer_blocks.0.scale_shift_table",
        "scale_shift_table",
        "proj_out.weight",
    ] {
        let var = &s.vars.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1;
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let analytic: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for &i in &[0, base.len() / 2, base.len() - 1] {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                probe(&s).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let err = (numeric - analytic[i]).abs() / analytic[i].abs().max(1e-4);
            assert!(err < 1e-4, "{name}[{i}]: analytic {} vs numeric {numeric}", analytic[i]);
        }
    }
}

/// The training path (blocks outside candle's autograd) gives the loss and every weight's gradient
/// that plain autograd gives, in f64, on the PixArtMS fixture with a padded caption.
#[test]
fn taped_training_path_matches_autograd() {
    let s = setup();
    let want_loss = hybrid_loss(&s);
    let want = want_loss.backward().unwrap();
    let d = Diffusion::linear(1000);
    let x_t = d.q_sample(&s.io["latents"], &s.t, &s.noise).unwrap();
    let t = Tensor::from_vec(s.t.iter().map(|&t| t as f64).collect::<Vec<_>>(), s.t.len(), &Device::Cpu).unwrap();
    let micro = Some((&s.io["resolution"], &s.io["aspect_ratio"]));
    let inputs = (&x_t, &t, &s.io["caption"], &s.io["mask"]);
    // Twice: the second run gets the first one's recycled buffers (ops::pool) and must not see their
    // old values.
    for run in 0..2 {
        let (loss, got) = pixforge::train::loss_and_grads(&s.model, inputs, micro, |out| {
            d.training_losses(out, &s.io["latents"], &x_t, &s.t, &s.noise)?.loss.mean_all()
        })
        .unwrap();
        let scalar = |t: &Tensor| t.to_scalar::<f64>().unwrap();
        assert!((scalar(&loss) - scalar(&want_loss)).abs() < 1e-12 * scalar(&want_loss).abs(), "run {run}");
        for (name, var) in &s.vars {
            let (a, e) = (got.get(var.as_tensor()), want.get(var.as_tensor()));
            let (a, e) = (a.unwrap_or_else(|| panic!("{name}: no gradient")), e.unwrap());
            let diff = scalar(&(a - e).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap());
            let size = scalar(&e.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
            assert!(diff <= 1e-10 * size.max(1e-3), "run {run}, {name}: gradients differ by {diff} (largest {size})");
        }
    }
}

/// More caption padding (masked positions, whatever they hold) changes neither the training loss nor
/// any gradient: the training path cuts the padding that no item attends to and projects only the
/// attended positions of the rest (the fixture's two items attend to 4 and 2 of 5 positions).
#[test]
fn caption_padding_changes_no_loss_or_gradient() {
    let s = setup();
    let d = Diffusion::linear(1000);
    let x_t = d.q_sample(&s.io["latents"], &s.t, &s.noise).unwrap();
    let t = Tensor::from_vec(s.t.iter().map(|&t| t as f64).collect::<Vec<_>>(), s.t.len(), &Device::Cpu).unwrap();
    let micro = Some((&s.io["resolution"], &s.io["aspect_ratio"]));
    let (caption, mask) = (&s.io["caption"], &s.io["mask"]);
    let (b, _, ch) = caption.dims3().unwrap();
    let junk = Tensor::arange(0.0f64, (b * 9 * ch) as f64, &Device::Cpu).unwrap().sin().unwrap();
    let junk = junk.affine(3.0, 0.5).unwrap().reshape((b, 9, ch)).unwrap();
    let padded = Tensor::cat(&[caption, &junk], 1).unwrap();
    let padded_mask = Tensor::cat(&[mask, &Tensor::zeros((b, 9), DType::F64, &Device::Cpu).unwrap()], 1).unwrap();
    let run = |caption: &Tensor, mask: &Tensor| {
        pixforge::train::loss_and_grads(&s.model, (&x_t, &t, caption, mask), micro, |out| {
            d.training_losses(out, &s.io["latents"], &x_t, &s.t, &s.noise)?.loss.mean_all()
        })
        .unwrap()
    };
    let ((loss, want), (padded_loss, got)) = (run(caption, mask), run(&padded, &padded_mask));
    let scalar = |t: &Tensor| t.to_scalar::<f64>().unwrap();
    assert!((scalar(&loss) - scalar(&padded_loss)).abs() < 1e-12 * scalar(&loss).abs());
    for (name, var) in &s.vars {
        let (a, e) = (got.get(var.as_tensor()).unwrap(), want.get(var.as_tensor()).unwrap());
        let diff = scalar(&(a - e).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap());
        let size = scalar(&e.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
        assert!(diff <= 1e-12 * size.max(1e-3), "{name}: gradients differ by {diff} (largest {size})");
    }
}

/// Activation checkpointing (the blocks in segments of 1, 2 and all, recomputed in the backward)
/// gives the plain autograd path's loss and every weight's gradient, in f64, to 1e-12.
#[test]
fn checkpointed_blocks_give_the_plain_gradients() {
    let s = setup();
    let d = Diffusion::linear(1000);
    let x_t = d.q_sample(&s.io["latents"], &s.t, &s.noise).unwrap();
    let t = Tensor::from_vec(s.t.iter().map(|&t| t as f64).collect::<Vec<_>>(), s.t.len(), &Device::Cpu).unwrap();
    let micro = Some((&s.io["resolution"], &s.io["aspect_ratio"]));
    let inputs = (&x_t, &t, &s.io["caption"], &s.io["mask"]);
    let loss = |out: &Tensor| d.training_losses(out, &s.io["latents"], &x_t, &s.t, &s.noise)?.loss.mean_all();
    let (want_loss, want) = pixforge::train::autograd_loss_and_grads(&s.model, inputs, micro, loss).unwrap();
    let scalar = |t: &Tensor| t.to_scalar::<f64>().unwrap();
    for every in [1, 2, 8] {
        let (got_loss, got) =
            pixforge::train::checkpointed_loss_and_grads(&s.model, inputs, micro, loss, every).unwrap();
        assert!((scalar(&got_loss) - scalar(&want_loss)).abs() <= 1e-12 * scalar(&want_loss).abs(), "every {every}");
        for (name, var) in &s.vars {
            let e = want.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no plain gradient"));
            let a = got.get(var.as_tensor()).unwrap_or_else(|| panic!("every {every}, {name}: no gradient"));
            let diff = scalar(&(a - e).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap());
            let size = scalar(&e.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
            assert!(
                diff <= 1e-12 * size.max(1e-9),
                "every {every}, {name}: gradients differ by {diff} (largest {size})"
            );
        }
    }
}
