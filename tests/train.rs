//! The trainer's data and step on batches from real caches (tiny encoders in the real layouts).

mod common;

use candle_core::Device;
use common::caches::*;
use pixforge::latents::cache::{t5_stage, vae_stage, CacheReader, FeatureDType};

/// The trainer's view of the caches: joined by key, single-bucket batches with a fresh posterior draw,
/// captions padded to 120 with their mask, and the caption drop.
#[test]
fn train_set_joins_the_caches_and_assembles_batches() {
    use pixforge::train::data::TrainSet;
    use pixforge::train::init::Rng;
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
    let vae = CacheReader::open_unchecked(&vae_dir).unwrap();
    let t5 = CacheReader::open_unchecked(&t5_dir).unwrap();
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
    use pixforge::train::data::TrainSet;
    use pixforge::train::init::{init, Rng};
    use pixforge::train::model::PixArtConfig;
    use pixforge::train::optim::AdamWConfig;
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
    let config = PixArtConfig {
        num_attention_heads: 2,
        attention_head_dim: 16,
        in_channels: 4,
        out_channels: 8,
        num_layers: 2,
        sample_size: 4,
        patch_size: 2,
        caption_channels: 16,
        interpolation_scale: Some(1.0),
        norm_eps: 1e-6,
    };
    let model = init(config, false, 120, 0, &Device::Cpu).unwrap();
    let adamw = AdamWConfig { lr: 1e-3, weight_decay: 0.0, ..Default::default() };
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
