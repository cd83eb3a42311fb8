//! The trainer's data and step on batches from real caches (tiny encoders in the real layouts).

mod common;

use candle_core::Device;
use common::caches::*;
use pixforge::latents::cache::{t5_stage, vae_stage, FeatureDType};
use pixforge::shards::stage::StageReader;

/// The trainer's view of the caches: joined by key, single-bucket batches with a fresh posterior draw,
/// captions padded to 120 with their mask, and the caption drop.
#[test]
fn train_set_joins_the_caches_and_assembles_batches() {
    use pixforge::rng::Rng;
    use pixforge::train::data::TrainSet;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let (t5_dir, vae_dir) = (dir.path().join("t5"), dir.path().join("vae"));
    let t5_cfg = t5_config(FeatureDType::F32);
    t5_stage::run(&t5_cfg, &opts(&src, &t5_dir), &Device::Cpu).unwrap();
    let model = tiny_vae(dir.path());
    let vae_cfg = vae_config(&model, 256, true);
    vae_stage::run(&vae_cfg, &opts(&src, &vae_dir), &Device::Cpu).unwrap();
    let set =
        TrainSet::open(&t5_dir, &t5_cfg.fingerprint().unwrap(), &vae_dir, &vae_cfg.fingerprint().unwrap()).unwrap();
    assert_eq!((set.len(), set.skipped), (4, 2), "cached in both: 4; no caption / no image: 2");
    let buckets = set.buckets();
    let one: Vec<usize> = (0..set.len()).filter(|&i| buckets[i] == buckets[0]).collect();
    let b = set.batch(&one, &mut Rng::new(5), 0.18215, 120, 0.0, &Device::Cpu).unwrap();
    assert_eq!(b.caption.dims()[..2], [one.len(), 120]);
    assert!(b.drop.iter().all(|d| !d));

    // The latents are (mean + std·ε)·0.18215 with ε drawn in order from the generator.
    let vae = StageReader::open_unchecked(&vae_dir).unwrap();
    let t5 = StageReader::open_unchecked(&t5_dir).unwrap();
    let mut rng = Rng::new(5);
    for (j, key) in b.keys.iter().enumerate() {
        let shard = format!("{:05}", key[..2].parse::<usize>().unwrap());
        let (vs, ts) = (vae.shard(&shard).unwrap(), t5.shard(&shard).unwrap());
        let (m, s) = vs.vae_moments(vs.entry(key).unwrap(), &Device::Cpu).unwrap();
        let eps = rng.normal_tensor(m.dims(), 1.0, &Device::Cpu).unwrap();
        rng.uniform();
        let want = ((m + (s * eps).unwrap()).unwrap() * 0.18215).unwrap();
        assert!(max_abs_diff(&b.latents.get(j).unwrap(), &want) < 1e-6, "{key}");
        let emb = ts.t5_embedding(ts.entry(key).unwrap(), &Device::Cpu).unwrap();
        let len = emb.dim(0).unwrap();
        assert!(max_abs_diff(&b.caption.get(j).unwrap().narrow(0, 0, len).unwrap(), &emb) < 1e-6);
        let mask: Vec<f32> = b.mask.get(j).unwrap().to_vec1().unwrap();
        assert_eq!(mask.iter().sum::<f32>() as usize, len);
        assert!(mask[..len].iter().all(|&v| v == 1.0));
    }
    assert!(set.batch(&one, &mut Rng::new(5), 0.18215, 120, 1.0, &Device::Cpu).unwrap().drop.iter().all(|&d| d));
    if let Some(other) = (0..set.len()).find(|&i| buckets[i] != buckets[0]) {
        assert!(
            set.batch(&[one[0], other], &mut Rng::new(5), 0.18215, 120, 0.0, &Device::Cpu).is_err(),
            "one bucket per batch"
        );
    }
}

/// The training step on batches from the caches: the loss falls on a fixed set of samples, a
/// non-finite batch is skipped without touching the weights.
#[test]
fn trainer_steps_on_cached_batches_and_skips_non_finite_ones() {
    use pixforge::rng::Rng;
    use pixforge::train::data::TrainSet;
    use pixforge::train::init::init;
    use pixforge::train::optim::OptimizerConfig;
    use pixforge::train::step::Trainer;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let (t5_dir, vae_dir) = (dir.path().join("t5"), dir.path().join("vae"));
    let t5_cfg = t5_config(FeatureDType::F32);
    t5_stage::run(&t5_cfg, &opts(&src, &t5_dir), &Device::Cpu).unwrap();
    let vae_cfg = vae_config(&tiny_vae(dir.path()), 32, false);
    vae_stage::run(&vae_cfg, &opts(&src, &vae_dir), &Device::Cpu).unwrap();
    let set =
        TrainSet::open(&t5_dir, &t5_cfg.fingerprint().unwrap(), &vae_dir, &vae_cfg.fingerprint().unwrap()).unwrap();
    let config = tiny_pixart(16, 4);
    let model = init(config, false, 120, 0, &Device::Cpu).unwrap();
    let adamw = OptimizerConfig { lr: 1e-3, weight_decay: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(model, adamw, 0.99, 1).unwrap();
    let all: Vec<usize> = (0..set.len()).collect();
    let mut data_rng = Rng::new(2);
    let mut losses = Vec::new();
    for _ in 0..80 {
        let batch = set.batch(&all, &mut data_rng, 0.18215, 120, 0.1, &Device::Cpu).unwrap();
        let log = trainer.step(&batch, 1e-3, 1.0).unwrap();
        assert!(!log.skipped && log.loss.is_finite() && log.grad_norm > 0.0, "{log:?}");
        losses.push(log.loss);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[70..]));
    eprintln!("loss over 80 steps: {first:.4} → {last:.4}");
    assert!(last < 0.5 * first, "the loss falls on a fixed set: {first} → {last}");

    // Nothing the trainer keeps between steps holds an op graph (which would keep each step's
    // activations alive: memory growing step after step).
    for t in trainer.optimizer.state().unwrap().values().chain(&trainer.ema.weights) {
        assert!(!t.track_op(), "optimizer state and EMA are plain tensors");
    }
    let before = trainer.model.weights().clone();
    let mut batch = set.batch(&all, &mut data_rng, 0.18215, 120, 0.0, &Device::Cpu).unwrap();
    batch.latents = (batch.latents * f64::NAN).unwrap();
    let log = trainer.step(&batch, 1e-3, 1.0).unwrap();
    assert!(log.skipped && trainer.skipped == 1, "{log:?}");
    for (k, w) in trainer.model.weights() {
        assert_eq!(max_abs_diff(w, &before[k]), 0.0, "{k} unchanged by a skipped step");
    }
    // K in a row stop the run, the weights still those of the last good step.
    trainer.max_skipped_in_a_row = 3;
    assert!(trainer.step(&batch, 1e-3, 1.0).unwrap().skipped);
    let err = trainer.step(&batch, 1e-3, 1.0).expect_err("the third non-finite step in a row stops");
    assert!(format!("{err}").contains("3 steps in a row"), "{err}");
    for (k, w) in trainer.model.weights() {
        assert_eq!(max_abs_diff(w, &before[k]), 0.0, "{k}");
    }
}

/// Mixed precision on CPU (the code path CUDA runs): bf16 and f16 steps follow the f32 run's losses
/// and gradient norms, the weights stay f32, and an f16 overflow halves the loss scale and skips the
/// step without counting it as a failure.
#[test]
fn mixed_precision_steps_follow_the_f32_run() {
    use candle_core::{DType, Tensor};
    use pixforge::rng::Rng;
    use pixforge::train::data::Batch;
    use pixforge::train::init::init;
    use pixforge::train::optim::OptimizerConfig;
    use pixforge::train::precision::Precision;
    use pixforge::train::step::Trainer;
    let dev = Device::Cpu;
    let config = tiny_pixart(16, 8);
    let mut rng = Rng::new(7);
    let mask: Vec<f32> = (0..2 * 12).map(|i| if i % 12 < [9, 5][i / 12] { 1.0 } else { 0.0 }).collect();
    let batch = Batch {
        keys: vec!["a".into(), "b".into()],
        latents: rng.normal_tensor(&[2, 4, 8, 8], 1.0, &dev).unwrap(),
        caption: rng.normal_tensor(&[2, 12, 16], 1.0, &dev).unwrap(),
        mask: Tensor::from_vec(mask, (2, 12), &dev).unwrap(),
        img_hw: Tensor::from_vec(vec![64f32, 64.0, 64.0, 64.0], (2, 2), &dev).unwrap(),
        aspect_ratio: Tensor::from_vec(vec![1f32, 1.0], (2, 1), &dev).unwrap(),
        drop: vec![false, true],
        caption_sources: Vec::new(),
        bucket: "1.0".into(),
    };
    let run = |precision: Precision| {
        let model = init(config.clone(), false, 12, 3, &dev).unwrap();
        let adamw = OptimizerConfig { lr: 1e-3, weight_decay: 0.0, ..Default::default() };
        let mut trainer = Trainer::new(model, adamw, 0.99, 1).unwrap();
        trainer.set_precision(precision);
        let logs: Vec<_> = (0..40).map(|_| trainer.step(&batch, 1e-3, 1.0).unwrap()).collect();
        (logs, trainer)
    };
    let (f32_logs, _) = run(Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let (logs, trainer) = run(precision);
        // bf16 keeps 8 bits of mantissa, f16 11: the same steps within a few percent.
        let tol = if precision == Precision::Bf16 { 0.05 } else { 0.01 };
        for (i, (a, b)) in f32_logs.iter().zip(&logs).enumerate().take(5) {
            assert!(!b.skipped, "{precision:?} step {i}");
            assert!(
                (a.loss - b.loss).abs() <= tol * a.loss,
                "{precision:?} step {i}: loss {} vs f32 {}",
                b.loss,
                a.loss
            );
            let rel = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
            assert!(rel <= 2.0 * tol, "{precision:?} step {i}: grad norm {} vs f32 {}", b.grad_norm, a.grad_norm);
        }
        eprintln!(
            "{precision:?}: first losses {:?} (f32 {:?})",
            &logs[..3].iter().map(|l| l.loss).collect::<Vec<_>>(),
            &f32_logs[..3].iter().map(|l| l.loss).collect::<Vec<_>>()
        );
        assert!(logs.iter().zip(&f32_logs).any(|(a, b)| a.loss != b.loss), "{precision:?} computes in 16 bits");
        let mean = |l: &[pixforge::train::step::StepLog]| l.iter().map(|s| s.loss).sum::<f64>() / l.len() as f64;
        let (first, last) = (mean(&logs[..5]), mean(&logs[35..]));
        assert!(last < 0.7 * first, "{precision:?}: the loss falls, {first} → {last}");
        for (name, w) in trainer.model.weights() {
            assert_eq!(w.dtype(), DType::F32, "{precision:?}: master weight {name} stays f32");
        }
    }

    // f16: a scale that overflows the gradients skips the step, halves the scale, counts no failure.
    let (_, mut trainer) = run(Precision::F16);
    assert_eq!(trainer.loss_scale.unwrap().scale, 65536.0, "40 good steps leave the scale");
    let before = trainer.model.weights().clone();
    trainer.loss_scale.as_mut().unwrap().scale = 1e30;
    let log = trainer.step(&batch, 1e-3, 1.0).unwrap();
    assert!(log.skipped && log.loss.is_finite(), "{log:?}");
    assert_eq!((trainer.skipped, trainer.loss_scale.unwrap().scale), (0, 5e29));
    for (k, w) in trainer.model.weights() {
        assert_eq!(max_abs_diff(w, &before[k]), 0.0, "{k} unchanged by an overflowing step");
    }
}
