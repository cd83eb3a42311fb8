//! `pixforge train`: the training loop over the feature caches. Each optimizer step takes the next
//! `grad_accum` batches of the epoch order ([`super::data::epoch_batches`]), runs
//! [`Trainer::step_accumulated`], appends a line to `log.jsonl`, and at the configured intervals
//! redraws `loss.svg`, writes a checkpoint and a validation grid. Everything random is drawn from two
//! seeded generators whose states, with the data cursor, are part of each checkpoint: a run resumed
//! from a checkpoint continues with exactly the numbers of an uninterrupted one.

use super::checkpoint::{self, TrainState};
use super::config::TrainConfig;
use super::data::{bucket_table, bucket_table_text, epoch_batches_with, BucketRow, TrainSet};
use super::distributed::{Place, Reducer};
use super::model::PixArt;
use super::observe::{peak_rss_mib, LogLine, StepLog};
use super::step::Trainer;
use crate::rng::Rng;
use crate::shards::stage::{StageFingerprint, StageReader};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Where to start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A fresh run (refused when the output folder already has checkpoints).
    No,
    /// The newest complete checkpoint of the output folder (a fresh run when there is none).
    Latest,
    /// This checkpoint folder.
    From(PathBuf),
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    /// The step it started from (0, or the resumed checkpoint's).
    pub start_step: u64,
    /// The step it ended at.
    pub end_step: u64,
    /// Trainable samples (cached in both caches).
    pub samples: usize,
    /// Samples left out: missing from one cache or failed, and those of a bucket holding fewer
    /// than a batch when leftovers are dropped (never trained).
    pub left_out: usize,
    /// Samples per bucket.
    pub buckets: std::collections::BTreeMap<String, usize>,
    /// Per bucket: images, batches an epoch, leftovers, images never trained.
    pub bucket_table: Vec<BucketRow>,
    /// The peak learning rate after batch scaling.
    pub peak_lr: f64,
    /// Steps skipped for non-finite values.
    pub skipped: usize,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// The last validation grid written.
    pub validation: Option<PathBuf>,
    /// Transient object-store failures (5xx, throttling, broken connections) met and retried.
    pub store_retries: u64,
    /// Samples held out of training for the validation loss.
    pub held_out: usize,
    /// The last held-out validation loss (trained weights, EMA weights).
    pub holdout_loss: Option<(f64, f64)>,
    /// Mean loss of the last (up to) 10 steps of this run.
    pub final_loss: Option<f64>,
}

/// The expected fingerprint of a cache made with the model folder `model` (when given): the cache's
/// own, with each of its files hashed again from that folder (or its `text_encoder`, `tokenizer` and
/// `vae` subfolders). Without a model folder, the first cache of the kind is the reference.
fn expected(first: &StageFingerprint, model: Option<&Path>) -> anyhow::Result<StageFingerprint> {
    let mut e = first.clone();
    e.sources.clear();
    if let Some(dir) = model {
        for f in &mut e.files {
            let found = ["", "text_encoder", "tokenizer", "vae", "transformer"]
                .iter()
                .map(|sub| dir.join(sub).join(&f.name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: the {} cache was made with a file {} that this folder does not have",
                        dir.display(),
                        first.kind,
                        f.name
                    )
                })?;
            f.bytes = std::fs::metadata(&found)?.len();
            f.sha256 = crate::shards::stage::sha256_file(&found)?;
        }
    }
    Ok(e)
}

/// Warns when the model folder `dir` a step outside the caches uses (`validation.t5`,
/// `validation.vae`) is not the one the `cache` was made with: a file missing or with other bytes.
fn warn_if_other_model(field: &str, dir: &Path, cache: &StageFingerprint) {
    let differ = match expected(cache, Some(dir)) {
        Ok(e) => cache
            .files
            .iter()
            .zip(&e.files)
            .filter(|(a, b)| a.sha256 != b.sha256)
            .map(|(a, _)| a.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("{e:#}"),
    };
    if !differ.is_empty() {
        tracing::warn!(
            "{field} {} is not the {} model the caches were made with ({differ} differ): the validation images are made \
             with another model than the one training saw",
            dir.display(),
            cache.kind
        );
    }
}

/// Opens every cache pair, each checked against the expected fingerprint of its kind.
fn open_data(cfg: &TrainConfig) -> anyhow::Result<TrainSet> {
    let mut pairs = Vec::new();
    let (mut t5_ref, mut vae_ref) = (None, None);
    for p in &cfg.data.caches {
        let (t5, vae) = (StageReader::open_unchecked(&p.t5)?, StageReader::open_unchecked(&p.vae)?);
        for (r, kind) in [(&t5, "t5"), (&vae, "vae")] {
            if r.fingerprint.kind != kind {
                anyhow::bail!(
                    "data.caches: {} holds `{}` features, expected a {kind} cache",
                    r.dir().display(),
                    r.fingerprint.kind
                );
            }
        }
        let t5_e = match &t5_ref {
            Some(e) => e,
            None => t5_ref.insert(expected(&t5.fingerprint, cfg.data.t5_model.as_deref())?),
        };
        let vae_e = match &vae_ref {
            Some(e) => e,
            None => vae_ref.insert(expected(&vae.fingerprint, cfg.data.vae_model.as_deref())?),
        };
        pairs.push((StageReader::open(&p.t5, t5_e)?, StageReader::open(&p.vae, vae_e)?));
    }
    let mut set = TrainSet::join(&pairs)?;
    if let Some(sel) = &cfg.data.selection {
        let keys = crate::shards::selection::read_selection(sel)?;
        let dropped = set.retain(&keys);
        set.skipped += dropped;
        if set.is_empty() {
            anyhow::bail!("data.selection {}: none of its {} keys is in the caches", sel.display(), keys.len());
        }
        tracing::info!(dropped, kept = set.len(), "selection {}", sel.display());
    }
    Ok(set)
}

/// The VAE scaling factor the latents are multiplied by (`scaling_factor` of the VAE's config).
fn scaling_factor(cfg: &TrainConfig) -> anyhow::Result<f64> {
    let vae = StageReader::open_unchecked(&cfg.data.caches[0].vae)?;
    Ok(vae.fingerprint.model_config.get("scaling_factor").and_then(|v| v.as_f64()).unwrap_or(0.18215))
}

/// A new model, or the pretrained one of the config.
fn initial_model(cfg: &TrainConfig, device: &Device) -> anyhow::Result<PixArt> {
    let m = &cfg.model;
    let mut model = match &m.pretrained {
        Some(p) => {
            let mut loaded = if p.is_dir() {
                PixArt::load_diffusers(p, device)?
            } else {
                PixArt::load_official(p, m.heads, m.sample_size, device)?
            };
            if let Some(scale) = m.lewei_scale {
                loaded.config.interpolation_scale = Some(scale);
            }
            super::init::complete(loaded, m.micro_conditions, m.kv_compress.as_ref(), cfg.data.max_tokens, cfg.seed)?
        }
        None => match &m.from_dit {
            Some(p) => super::dit::from_dit(p, m, cfg.data.max_tokens, cfg.seed, device)?,
            None => super::init::init(m.pixart(), m.micro_conditions, cfg.data.max_tokens, cfg.seed, device)?,
        },
    };
    model.to_dtype(candle_core::DType::F32)?;
    Ok(model)
}

impl TrainSummary {
    /// A few lines for the terminal: steps, data, buckets, loss, and what was written.
    pub fn text(&self) -> String {
        let mut s = format!(
            "trained steps {} to {} on {} sample(s) ({} left out{}), peak lr {:.3e}\n",
            self.start_step,
            self.end_step,
            self.samples,
            self.left_out,
            if self.held_out > 0 { format!(", {} held out", self.held_out) } else { String::new() },
            self.peak_lr
        );
        s.push_str(
            &super::data::bucket_table_text(&self.bucket_table, Default::default())
                .lines()
                .take(self.bucket_table.len() + 1)
                .map(|l| format!("  {l}\n"))
                .collect::<String>(),
        );
        if let Some(l) = self.final_loss {
            s.push_str(&format!("final loss {l:.4} (mean of the last steps)"));
            if let Some((t, e)) = self.holdout_loss {
                s.push_str(&format!(", held-out {t:.4} (EMA {e:.4})"));
            }
            s.push('\n');
        }
        if self.skipped > 0 {
            s.push_str(&format!("{} step(s) skipped for non-finite values\n", self.skipped));
        }
        if let Some(c) = &self.checkpoint {
            s.push_str(&format!("checkpoint: {}\n", c.display()));
        }
        if let Some(v) = &self.validation {
            s.push_str(&format!("validation grid: {}\n", v.display()));
        }
        s
    }
}

/// Runs (or resumes) the training of `cfg`.
pub fn run(cfg: &TrainConfig, resume: &Resume) -> anyhow::Result<TrainSummary> {
    // A torchrun-style launch: one process per GPU (`cuda:LOCAL_RANK`), gradients averaged over NCCL.
    let place = Place::from_env()?;
    let device = match cfg.device.starts_with("cuda") && place.launched {
        true => crate::device::device(&format!("cuda:{}", place.local_rank))?,
        false => crate::device::device(&cfg.device)?,
    };
    let reducer = Reducer::connect(&place, &device)?;
    let (rank, world, main) = (place.rank, place.world, place.is_main());
    let retries = crate::store::transient_failures();
    let mut folder = super::run_folder::RunFolder::open(&cfg.output_dir, rank, world)?;
    let out = &folder.dir().to_path_buf();
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("output_dir {}: cannot create: {e}", out.display()))?;
    if main {
        checkpoint::remove_partial(out)?;
    }
    let existing = checkpoint::list(out)?;
    let from = match resume {
        Resume::No if !existing.is_empty() => anyhow::bail!(
            "output_dir {} already has checkpoints (newest: {}); pass --resume to continue it, or choose another \
             output_dir",
            cfg.output_dir.display(),
            existing.last().map(|c| c.1.display().to_string()).unwrap_or_default()
        ),
        Resume::No => None,
        Resume::Latest => existing.last().map(|c| c.1.clone()),
        Resume::From(p) => Some(p.clone()),
    };

    let mut set = open_data(cfg)?;
    set.captions = cfg.data.captions.clone();
    let held_out = match &cfg.holdout {
        Some(h) => super::holdout::hold_out(&mut set, h)?,
        None => 0,
    };
    let scaling = scaling_factor(cfg)?;
    let labels = set.buckets();
    let mut buckets = std::collections::BTreeMap::new();
    for b in &labels {
        *buckets.entry(b.to_string()).or_insert(0) += 1;
    }
    let table = bucket_table(&buckets, cfg.data.batch_size, cfg.data.bucket_leftovers);
    let never_trained: usize = table.iter().map(|r| r.never_trained).sum();
    if main {
        let text = bucket_table_text(&table, cfg.data.bucket_leftovers);
        if cfg.logging.progress {
            eprint!("{text}");
        }
        tracing::info!("buckets:\n{text}");
        let lone: Vec<&str> = table.iter().filter(|r| r.never_trained > 0).map(|r| r.bucket.as_str()).collect();
        if !lone.is_empty() {
            tracing::warn!(
                "{never_trained} image(s) in bucket(s) {} hold fewer than a batch of {} and are never trained; set \
                 data.bucket_leftovers = \"repeat\" to train them (their batches completed with repeats)",
                lone.join(", "),
                cfg.data.batch_size
            );
        }
    }
    let effective_batch = cfg.data.batch_size * cfg.grad_accum * world;
    let schedule = cfg.lr_schedule();

    let (mut trainer, mut state) = match &from {
        Some(dir) => {
            let mut ck = checkpoint::load(dir, &device)?;
            if ck.state.config_digest != cfg.digest() {
                let changed: Vec<String> = crate::shards::json_changes(&ck.state.config, &cfg.digested())
                    .into_iter()
                    .map(|(field, was, now)| {
                        let show = |v: Option<serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
                        format!("{field}: was {}, is now {}", show(was), show(now))
                    })
                    .collect();
                let what = if ck.state.config.is_null() {
                    "seed, data, model, optimizer, schedule, accumulation or clipping differ".to_string()
                } else {
                    changed.join("; ")
                };
                anyhow::bail!(
                    "{}: written by a run with other settings ({what}); resuming would not continue it exactly. Use \
                     the config it was made with.",
                    dir.display()
                );
            }
            let mut t = match (ck.model.take(), ck.adapters.take(), &cfg.lora) {
                (Some(model), None, None) => Trainer::new(model, cfg.optimizer, cfg.ema_decay, cfg.seed)?,
                (None, Some(adapters), Some(lora)) => {
                    // The frozen transformer is the config's (its digest is the checkpoint's).
                    let mut t = Trainer::new_lora(
                        initial_model(cfg, &device)?,
                        lora.clone(),
                        cfg.optimizer,
                        cfg.ema_decay,
                        cfg.seed,
                    )?;
                    t.set_trained(&adapters)?;
                    t
                }
                _ => anyhow::bail!(
                    "{}: a checkpoint of adapters and a run of the whole model (or the reverse)",
                    dir.display()
                ),
            };
            t.optimizer.load_state(&ck.optimizer)?;
            t.set_ema_weights(&ck.ema)?;
            t.rng = Rng::from_state(ck.state.trainer_rng);
            // A run of several processes resumes with as many; each rank continues its own generators,
            // which rank 0 gathered into the checkpoint (a single process's checkpoint has none).
            let written_by = ck.state.rank_rngs.len().max(1);
            if written_by != world {
                anyhow::bail!(
                    "{}: written by {written_by} process(es), resumed by WORLD_SIZE={world}; resume with as many",
                    dir.display()
                );
            }
            if let Some(&[trainer_rng, data_rng]) = ck.state.rank_rngs.get(rank).filter(|_| world > 1) {
                t.rng = Rng::from_state(trainer_rng);
                ck.state.data_rng = data_rng;
            }
            t.skipped = ck.state.skipped;
            t.skipped_in_a_row = ck.state.skipped_in_a_row;
            (t, ck.state)
        }
        None => {
            let model = initial_model(cfg, &device)?;
            let state = TrainState {
                step: 0,
                epoch: 0,
                batch: 0,
                trainer_rng: 0,
                data_rng: Rng::new(place.seed(cfg.seed ^ 0xDA7A)).state(),
                rank_rngs: Vec::new(),
                skipped: 0,
                skipped_in_a_row: 0,
                loss_scale: None,
                images: 0,
                model: model.config.clone(),
                config_digest: cfg.digest(),
                config: cfg.digested(),
            };
            let seed = place.seed(cfg.seed.wrapping_add(1));
            let trainer = match &cfg.lora {
                Some(lora) => Trainer::new_lora(model, lora.clone(), cfg.optimizer, cfg.ema_decay, seed)?,
                None => Trainer::new(model, cfg.optimizer, cfg.ema_decay, seed)?,
            };
            (trainer, state)
        }
    };
    trainer.max_skipped_in_a_row = cfg.max_skipped_in_a_row;
    trainer.checkpoint_every = cfg.memory.checkpoint.every();
    trainer.reducer = reducer;
    trainer.set_precision(super::precision::Precision::parse(&cfg.precision)?);
    if trainer.loss_scale.is_some() && state.loss_scale.is_some() {
        trainer.loss_scale = state.loss_scale; // resumed: the scale where the checkpoint left it
    }
    let start_step = state.step;
    let mut data_rng = Rng::from_state(state.data_rng);
    let mut log = StepLog::open(out, state.step, main)?;
    let validation = match &cfg.validation {
        Some(v) => {
            if let Some(pair) = cfg.data.caches.first().filter(|_| main) {
                warn_if_other_model("validation.t5", &v.t5, &StageReader::open_unchecked(&pair.t5)?.fingerprint);
                warn_if_other_model("validation.vae", &v.vae, &StageReader::open_unchecked(&pair.vae)?.fingerprint);
            }
            Some(super::validation::Validation::prepare(v, trainer.model.config.caption_channels, &device)?)
        }
        None => None,
    };
    let bar = progress_bar(cfg, state.step);
    let mut summary = TrainSummary {
        start_step,
        end_step: state.step,
        samples: set.len(),
        left_out: set.skipped + never_trained,
        buckets,
        bucket_table: table,
        peak_lr: schedule.peak(effective_batch),
        skipped: trainer.skipped,
        checkpoint: None,
        validation: None,
        final_loss: None,
        store_retries: 0,
        held_out,
        holdout_loss: None,
    };
    tracing::info!(
        samples = set.len(),
        left_out = set.skipped + never_trained,
        peak_lr = summary.peak_lr,
        effective_batch,
        "training from step {}",
        state.step
    );

    // This rank's share of an epoch: every `world`-th batch from `rank`.
    let share = |epoch: u64| -> Vec<Vec<usize>> {
        epoch_batches_with(&labels, cfg.data.batch_size, cfg.seed, epoch, cfg.data.bucket_leftovers)
            .into_iter()
            .skip(rank)
            .step_by(world)
            .collect()
    };
    let mut mine = share(state.epoch);
    if mine.is_empty() {
        anyhow::bail!(
            "data.batch_size {}: no aspect-ratio bucket holds that many samples (largest: {}); lower it",
            cfg.data.batch_size,
            summary.buckets.values().max().copied().unwrap_or(0)
        );
    }
    while state.step < cfg.max_steps {
        let started = std::time::Instant::now();
        let mut batches = Vec::with_capacity(cfg.grad_accum);
        while batches.len() < cfg.grad_accum {
            if state.batch >= mine.len() {
                state.epoch += 1;
                state.batch = 0;
                mine = share(state.epoch);
                continue;
            }
            let indices = &mine[state.batch];
            state.batch += 1;
            batches.push(set.batch(
                indices,
                &mut data_rng,
                scaling,
                cfg.data.max_tokens,
                cfg.data.caption_drop,
                &device,
            )?);
        }
        check_shapes(&trainer.model, &batches[0])?;
        let lr = schedule.at(state.step, effective_batch);
        let result = trainer.step_accumulated(&batches, lr, cfg.max_grad_norm)?;
        state.step += 1;
        if result.skipped {
            let keys: Vec<&String> = batches.iter().flat_map(|b| b.keys.iter()).collect();
            tracing::warn!(
                step = state.step,
                loss = result.loss,
                grad_norm = result.grad_norm,
                ?keys,
                "non-finite step skipped"
            );
        }
        state.images += (batches.len() * cfg.data.batch_size) as u64;
        state.trainer_rng = trainer.rng.state();
        state.data_rng = data_rng.state();
        state.skipped = trainer.skipped;
        state.skipped_in_a_row = trainer.skipped_in_a_row;
        state.loss_scale = trainer.loss_scale;
        let secs = started.elapsed().as_secs_f64();
        let bucket = batches[0].bucket.clone();
        let holdout = match &cfg.holdout {
            Some(h) if main && (state.step % h.every == 0 || state.step == cfg.max_steps) => {
                let loss =
                    |m: &PixArt| super::holdout::held_out_loss(m, &set, h, scaling, cfg.data.max_tokens, &device);
                let (ema, adapted) = (trainer.ema_model()?, trainer.adapted_model()?);
                let both = (loss(adapted.as_ref().unwrap_or(&trainer.model))?, loss(&ema)?);
                summary.holdout_loss = Some(both);
                Some(both)
            }
            _ => None,
        };
        log.push(LogLine {
            step: state.step,
            epoch: state.epoch,
            loss: result.loss,
            mse: result.mse,
            vb: result.vb,
            grad_norm: result.grad_norm,
            lr,
            images_per_s: (batches.len() * cfg.data.batch_size) as f64 / secs.max(1e-9),
            bucket,
            skipped: result.skipped,
            peak_rss_mib: peak_rss_mib(),
            holdout_loss: holdout.map(|h| h.0),
            holdout_loss_ema: holdout.map(|h| h.1),
        })?;
        bar.set_position(state.step);
        bar.set_message(format!("loss {:.4}", result.loss));
        let last = state.step == cfg.max_steps;
        if state.step % cfg.logging.every == 0 || last {
            log.draw_curve()?;
        }
        if state.step % cfg.checkpoints.every == 0 || last {
            if let Some(r) = &trainer.reducer {
                let all = r.gather(&[state.trainer_rng, state.data_rng])?;
                state.rank_rngs = all.chunks(2).map(|c| [c[0], c[1]]).collect();
            }
            if main {
                let saved = checkpoint::save(out, &trainer, &state, cfg.checkpoints.keep_last)?;
                folder.publish_checkpoint(&saved, cfg.checkpoints.keep_last)?;
                folder.publish_logs()?;
                summary.checkpoint = Some(folder.published(&cfg.output_dir, &saved));
            }
        }
        if let (Some(v), Some(vc), true) = (&validation, &cfg.validation, main) {
            if state.step % vc.every == 0 || last {
                let grid = if vc.ema {
                    v.grid(&trainer.ema_model()?, state.step, &out.join(super::run_folder::SAMPLES))?
                } else {
                    let adapted = trainer.adapted_model()?;
                    v.grid(
                        adapted.as_ref().unwrap_or(&trainer.model),
                        state.step,
                        &out.join(super::run_folder::SAMPLES),
                    )?
                };
                log.image("validation/grid", state.step, &grid)?;
                summary.validation = Some(folder.published(&cfg.output_dir, &grid));
                folder.publish_logs()?;
            }
        }
    }
    bar.finish_and_clear();
    folder.publish_logs()?;
    let run_lines: Vec<&LogLine> = log.lines.iter().filter(|l| l.step > start_step && !l.skipped).collect();
    let tail = &run_lines[run_lines.len().saturating_sub(10)..];
    summary.final_loss = (!tail.is_empty()).then(|| tail.iter().map(|l| l.loss).sum::<f64>() / tail.len() as f64);
    summary.end_step = state.step;
    summary.skipped = trainer.skipped;
    summary.store_retries = crate::store::transient_failures() - retries;
    Ok(summary)
}

/// Refuses caches whose feature widths do not fit the model, naming both.
fn check_shapes(model: &PixArt, batch: &super::data::Batch) -> anyhow::Result<()> {
    let c = &model.config;
    let (latent_c, caption_c) = (batch.latents.dim(1)?, batch.caption.dim(2)?);
    if latent_c != c.in_channels {
        anyhow::bail!("the VAE cache has {latent_c} latent channels; the model takes in_channels = {}", c.in_channels);
    }
    if caption_c != c.caption_channels {
        anyhow::bail!(
            "the T5 cache has {caption_c}-wide embeddings; the model takes caption_channels = {}",
            c.caption_channels
        );
    }
    Ok(())
}

fn progress_bar(cfg: &TrainConfig, at: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !cfg.logging.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(cfg.max_steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  {per_sec}  ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(at);
    bar
}
