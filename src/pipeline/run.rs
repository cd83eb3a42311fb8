//! Running a pipeline: each stage in order, each resumable, with a line per stage saying what it did
//! (or that it had nothing to do) and the paths of what it wrote.

use super::{Dataset, Pipeline, ScoreStage, WhenDataChanges};
use crate::shards::stage::{DoneMarker, InputsDigest, StageOptions, StageRun, StageRunStats};
use std::path::{Path, PathBuf};

/// What one stage did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    /// The stage (`ingest`, `caption`, …).
    pub stage: String,
    /// Whether it did any work (false: its outputs were current).
    pub did_work: bool,
    /// One line: what it did.
    pub summary: String,
    /// What it wrote, by name.
    pub artifacts: Vec<(String, PathBuf)>,
}

/// What a pipeline run did, stage by stage, with the figures the demo prints.
#[derive(Debug, Default)]
pub struct PipelineReport {
    /// Each stage, in order.
    pub stages: Vec<StageReport>,
    /// The ingest stage's totals (this run).
    pub ingest: Option<crate::shards::RunStats>,
    /// The score stage's run.
    pub scores: Option<StageRunStats>,
    /// The caption stage's run.
    pub captions: Option<StageRunStats>,
    /// The density report, when it was made in this run.
    pub density: Option<crate::density::report::Report>,
    /// The T5 and VAE cache runs.
    pub t5: Option<StageRunStats>,
    /// The VAE cache run.
    pub vae: Option<StageRunStats>,
    /// The training run (`None` when it was already finished).
    pub train: Option<crate::train::run::TrainSummary>,
}

impl PipelineReport {
    /// Whether any stage did work.
    pub fn did_work(&self) -> bool {
        self.stages.iter().any(|s| s.did_work)
    }

    /// The stage lines and every artifact's path.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let width = self.stages.iter().map(|st| st.stage.len()).max().unwrap_or(0);
        for st in &self.stages {
            s.push_str(&format!("{:<width$} {}\n", st.stage, st.summary));
        }
        if !self.did_work() {
            s.push_str("nothing to do: every stage's outputs are current\n");
        }
        s.push_str("artifacts:\n");
        let names: Vec<(String, &PathBuf)> = self
            .stages
            .iter()
            .flat_map(|st| st.artifacts.iter().map(move |(n, p)| (format!("{}.{n}", st.stage), p)))
            .collect();
        let width = names.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, p) in names {
            s.push_str(&format!("  {name:<width$} {}\n", p.display()));
        }
        s
    }
}

/// Runs every stage of `p` in order. With a `worker` share of several (`--worker I/N`, or a SLURM
/// array / Kubernetes indexed job), only this worker's shards of the shard stages (ingest, caption,
/// caches) are done, and the whole-dataset stages (density, train) are left for a final run with one
/// worker.
pub fn run(p: &Pipeline, progress: bool, worker: crate::shards::Worker) -> anyhow::Result<PipelineReport> {
    // Every problem of the configuration and of the paths it names, at once.
    match (p.check(), p.check_paths()) {
        (Ok(()), Ok(())) => {}
        (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
        (Err(a), Err(b)) => anyhow::bail!("{a}\n{b}"),
    }
    let share = worker.count > 1;
    crate::store::create_dir(&p.out)?;
    let mut r = PipelineReport::default();
    let stage_err = |stage: &str| format!("{}: stage `{stage}`", p.file.display());
    if let Some(m) = &p.models {
        r.stages.push(tiny_models(&m.tiny, &p.out.join("models")).map_err(|e| e.context(stage_err("models")))?);
    }
    for ds in &p.datasets {
        let Some(cfg) = &ds.ingest else { continue };
        let label = ds.label("ingest");
        let mut opts = crate::ingest::RunOptions::new(&ds.shards);
        opts.progress = progress;
        opts.worker = worker;
        opts.overwrite = p.overwrite;
        let stats = crate::ingest::run(cfg, &opts).map_err(|e| e.context(stage_err(&label)))?;
        failed_shards(&label, &stats.shards_failed).map_err(|e| e.context(stage_err(&label)))?;
        r.stages.push(StageReport {
            stage: label,
            did_work: stats.shards_done > 0,
            summary: if stats.shards_done > 0 {
                format!(
                    "{} shard(s) written, {} of {} samples kept ({} already done)",
                    stats.shards_done, stats.total.successes, stats.total.count, stats.shards_skipped
                )
            } else {
                format!("nothing to do ({} shard(s) done)", stats.shards_skipped)
            },
            artifacts: vec![("shards".into(), ds.shards.clone())],
        });
        merge_ingest(&mut r.ingest, stats);
    }
    if let Some(score) = &p.score {
        for ds in &p.datasets {
            let run = &p.score_run;
            let label = ds.label(if matches!(score, ScoreStage::Clip(_)) { "score.clip" } else { "score.laion_emb" });
            let opts = run
                .apply(options(&ds.shards, &ds.scores, progress, worker))
                .map_err(|e| e.context(stage_err(&label)))?;
            let stats = match score {
                ScoreStage::Clip(cfg) => {
                    let cuda = crate::device::DeviceName::parse(&run.device)?.cuda_ordinal().map(|n| n as i32);
                    crate::score::stage::run(cfg, &opts, cuda)
                }
                ScoreStage::LaionEmb(cfg) => crate::score::stage::run_laion(cfg, &opts),
            }
            .map_err(|e| e.context(stage_err(&label)))?;
            failed_shards(&label, &stats.shards_failed)?;
            r.stages.push(cache_report(&label, &stats, "scores", &ds.scores));
            merge_cache(&mut r.scores, stats);
        }
    }
    // The selection stages see the whole dataset: a worker of several leaves them, and the shard
    // stages that take their selection, for a run after every worker's scores are done.
    let mut selection_pending = false;
    for ds in &p.datasets {
        let mut previous: Option<PathBuf> = None;
        for stage in p.selection_stages() {
            let label = ds.label(stage);
            let marker =
                selection_marker(p, ds, stage, previous.as_deref()).map_err(|e| e.context(stage_err(&label)))?;
            if share && !marker.is_current() {
                selection_pending = true;
                r.stages.push(left_for_final(&label, worker));
                break;
            }
            let report =
                selection(p, ds, stage, previous.as_deref(), &marker).map_err(|e| e.context(stage_err(&label)))?;
            r.stages.push(report);
            previous = Some(ds.selection(stage));
        }
    }
    let selected = |run: &StageRun, ds: &Dataset| p.selection_for(run, ds);
    if let Some(cfg) = &p.caption {
        for ds in &p.datasets {
            let label = ds.label("caption");
            if selection_pending {
                r.stages.push(left_for_final(&label, worker));
                continue;
            }
            let opts = selected(&p.caption_run, ds)
                .apply(options(&ds.shards, &ds.captions, progress, worker))
                .map_err(|e| e.context(stage_err(&label)))?;
            let stats = crate::caption::run(cfg, &opts).map_err(|e| e.context(stage_err(&label)))?;
            failed_shards(&label, &stats.shards_failed)?;
            r.stages.push(cache_report(&label, &stats, "captions", &ds.captions));
            merge_cache(&mut r.captions, stats);
        }
    }
    let whole = |stage: &str| left_for_final(stage, worker);
    if let (Some(_), true) = (&p.density, share) {
        r.stages.push(whole("density"));
    } else if let Some(d) = &p.density {
        let (report, stage) = density(d, &p.datasets, p.caption.is_some(), &p.out.join("density"))
            .map_err(|e| e.context(stage_err("density")))?;
        r.stages.push(stage);
        r.density = report;
    }
    if let Some(cfg) = &p.t5 {
        for ds in &p.datasets {
            let label = ds.label("cache.t5");
            if selection_pending {
                r.stages.push(left_for_final(&label, worker));
                continue;
            }
            let mut cfg = cfg.clone();
            if p.caption.is_some() && cfg.captions.is_none() {
                cfg.captions = Some(ds.captions.clone());
            }
            let dev = crate::device::device(&p.t5_run.device).map_err(|e| e.context(stage_err(&label)))?;
            let opts = selected(&p.t5_run, ds)
                .apply(options(&ds.shards, &ds.t5, progress, worker))
                .map_err(|e| e.context(stage_err(&label)))?;
            let stats =
                crate::latents::cache::t5_stage::run(&cfg, &opts, &dev).map_err(|e| e.context(stage_err(&label)))?;
            failed_shards(&label, &stats.shards_failed)?;
            r.stages.push(cache_report(&label, &stats, "t5", &ds.t5));
            merge_cache(&mut r.t5, stats);
        }
    }
    if let Some(cfg) = &p.vae {
        for ds in &p.datasets {
            let label = ds.label("cache.vae");
            if selection_pending {
                r.stages.push(left_for_final(&label, worker));
                continue;
            }
            let dev = crate::device::device(&p.vae_run.device).map_err(|e| e.context(stage_err(&label)))?;
            let opts = selected(&p.vae_run, ds)
                .apply(options(&ds.shards, &ds.vae, progress, worker))
                .map_err(|e| e.context(stage_err(&label)))?;
            let stats =
                crate::latents::cache::vae_stage::run(cfg, &opts, &dev).map_err(|e| e.context(stage_err(&label)))?;
            failed_shards(&label, &stats.shards_failed)?;
            r.stages.push(cache_report(&label, &stats, "vae", &ds.vae));
            merge_cache(&mut r.vae, stats);
        }
    }
    if let Some(cfg) = &p.export {
        for ds in &p.datasets {
            let label = ds.label("export");
            if share {
                r.stages.push(whole(&label));
                continue;
            }
            r.stages.push(export(cfg, ds, &label).map_err(|e| e.context(stage_err(&label)))?);
        }
    }
    if let (Some(_), true) = (&p.train, share) {
        r.stages.push(whole("train"));
    } else if let Some(cfg) = &p.train {
        let (summary, stage) = train(cfg, p.when_data_changes, &p.file).map_err(|e| e.context(stage_err("train")))?;
        r.stages.push(stage);
        r.train = summary;
    }
    if let (Some(_), true) = (&p.sample, share) {
        r.stages.push(whole("sample"));
    } else if let (Some(smp), Some(cfg)) = (&p.sample, &p.train) {
        r.stages.push(sample(smp, cfg, &p.out.join("samples")).map_err(|e| e.context(stage_err("sample")))?);
    }
    Ok(r)
}

/// Images from the prompts with the last checkpoint of the training run; redone only when the
/// checkpoint or the options change.
fn sample(
    s: &super::SampleStage,
    train: &crate::train::config::TrainConfig,
    out: &Path,
) -> anyhow::Result<StageReport> {
    let step = crate::train::run_folder::checkpoint_steps(&train.output_dir)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("{}: no checkpoint to sample from", train.output_dir.display()))?;
    // A run of adapters samples its frozen transformer with the checkpoint's adapter merged in.
    let (weights, loras) = match (&train.lora, &train.model.pretrained) {
        (None, _) => {
            let file = if s.ema { "ema.safetensors" } else { "model.safetensors" };
            (crate::train::run_folder::checkpoint_file(&train.output_dir, step, file)?, Vec::new())
        }
        (Some(_), Some(pretrained)) => {
            use crate::train::checkpoint::{ADAPTER, EMA_ADAPTER};
            let folder = if s.ema { EMA_ADAPTER } else { ADAPTER };
            let mut local = None;
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                let copy =
                    crate::train::run_folder::checkpoint_file(&train.output_dir, step, &format!("{folder}/{f}"))?;
                local = copy.parent().map(Path::to_path_buf);
            }
            let adapter = local.ok_or_else(|| anyhow::anyhow!("{}: no adapter folder", train.output_dir.display()))?;
            (pretrained.clone(), vec![(adapter, 1.0)])
        }
        (Some(_), None) => anyhow::bail!("stage `sample`: a [train] of adapters needs `model.pretrained` to sample"),
    };
    let mut digest = InputsDigest::new();
    if weights.is_dir() {
        digest.value(&weights)?;
    } else {
        digest.file(&weights)?;
    }
    digest.value(s)?.value(&s.config)?.file(&s.prompts)?;
    for (dir, _) in &loras {
        digest.file(&dir.join("adapter_model.safetensors"))?;
    }
    let marker = DoneMarker::new(out.join("inputs.sha256"), digest.finish());
    let artifacts = vec![("images".into(), out.to_path_buf())];
    if marker.is_current() {
        return Ok(StageReport {
            stage: "sample".into(),
            did_work: false,
            summary: format!("nothing to do (the images of step {step} are current)"),
            artifacts,
        });
    }
    let text = std::fs::read_to_string(&s.prompts)?;
    let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    let o = crate::train::generate::SampleOptions {
        transformer: weights,
        official_shape: Some((train.model.heads, train.model.sample_size)),
        t5: s.t5.clone(),
        vae: s.vae.clone(),
        noise: None,
        loras,
        config: s.config.clone(),
    };
    // Into a store: made in a working folder, then uploaded.
    let mut images = crate::store::Staging::open(out, crate::shards::Worker::default())?;
    let paths = crate::train::generate::run(&o, &prompts, &images.dir, &crate::device::device(&train.device)?)?;
    let mut written = crate::store::names_in(&images.dir)?;
    written.retain(|n| !n.starts_with('.'));
    written.sort();
    images.publish(&written)?;
    marker.write()?;
    Ok(StageReport {
        stage: "sample".into(),
        did_work: true,
        summary: format!(
            "{} image(s) from step {step}'s {} weights",
            paths.len(),
            if s.ema { "EMA" } else { "trained" }
        ),
        artifacts,
    })
}

/// Adds one dataset's ingest totals to the run's.
fn merge_ingest(total: &mut Option<crate::shards::RunStats>, s: crate::shards::RunStats) {
    match total {
        None => *total = Some(s),
        Some(t) => {
            for (shard, st) in &s.shards {
                t.add(*shard, st);
            }
            t.shards_skipped += s.shards_skipped;
        }
    }
}

/// Adds one dataset's shard-stage totals to the run's.
fn merge_cache(total: &mut Option<StageRunStats>, s: StageRunStats) {
    match total {
        None => *total = Some(s),
        Some(t) => {
            t.shards_done += s.shards_done;
            t.shards_skipped += s.shards_skipped;
            t.shards_failed.extend(s.shards_failed);
            t.samples += s.samples;
            t.successes += s.successes;
            t.failed += s.failed;
            t.seconds += s.seconds;
        }
    }
}

fn options(input: &Path, out: &Path, progress: bool, worker: crate::shards::Worker) -> StageOptions {
    StageOptions { progress, worker, ..StageOptions::new(input, out) }
}

/// An error naming the first of a shard stage's `failed` shards (shard, reason), if any.
fn failed_shards(stage: &str, failed: &[(String, String)]) -> anyhow::Result<()> {
    if let Some((name, why)) = failed.first() {
        anyhow::bail!(
            "stage `{stage}`: {} shard(s) failed, the first ({name}) with: {why}; rerun to retry them",
            failed.len()
        );
    }
    Ok(())
}

fn cache_report(stage: &str, s: &StageRunStats, name: &str, dir: &Path) -> StageReport {
    StageReport {
        stage: stage.into(),
        did_work: s.shards_done > 0,
        summary: if s.shards_done > 0 {
            format!(
                "{} shard(s) done: {} of {} samples ({} shard(s) already current)",
                s.shards_done, s.successes, s.samples, s.shards_skipped
            )
        } else {
            format!("nothing to do ({} shard(s) current)", s.shards_skipped)
        },
        artifacts: vec![(name.into(), dir.to_path_buf())],
    }
}

/// The tiny models the demo trains with, written once into `dir`.
fn tiny_models(kinds: &[String], dir: &Path) -> anyhow::Result<StageReport> {
    use crate::models::{init_tiny, ModelKind};
    let mut made = Vec::new();
    for kind in kinds {
        let (k, marker) = match kind.as_str() {
            "t5" => (ModelKind::T5, dir.join("text_encoder/model.safetensors")),
            "vae" => (ModelKind::Vae, dir.join("vae/diffusion_pytorch_model.safetensors")),
            "llava" => (ModelKind::Llava, dir.join("llava/model.safetensors")),
            other => anyhow::bail!("field `tiny`: unknown kind {other:?}; expected t5, vae or llava"),
        };
        if marker.is_file() {
            continue;
        }
        let target = if k == ModelKind::Llava { dir.join("llava") } else { dir.to_path_buf() };
        init_tiny(k, &target, false, 0)?;
        made.push(kind.clone());
    }
    Ok(StageReport {
        stage: "models".into(),
        did_work: !made.is_empty(),
        summary: if made.is_empty() {
            "nothing to do (the tiny models exist)".into()
        } else {
            format!("wrote tiny random {} in the real layouts (untrained)", made.join(", "))
        },
        artifacts: vec![("tiny".into(), dir.to_path_buf())],
    })
}

/// A line for a stage a worker of several leaves for the final run.
fn left_for_final(stage: &str, worker: crate::shards::Worker) -> StageReport {
    StageReport {
        stage: stage.into(),
        did_work: false,
        summary: format!(
            "left for the final run (this is worker {} of {}: run the pipeline once more with one worker when every worker is done)",
            worker.index, worker.count
        ),
        artifacts: Vec::new(),
    }
}

/// The done marker of a selection stage of `ds`: its configuration, what it reads (the score
/// shards, the source shards) and the selection before it.
fn selection_marker(p: &Pipeline, ds: &Dataset, stage: &str, previous: Option<&Path>) -> anyhow::Result<DoneMarker> {
    let mut d = InputsDigest::new();
    d.bytes(stage.as_bytes());
    match stage {
        "repeats" => d.value(&p.repeats)?.shards(&ds.shards)?,
        "filter" => d.value(&p.filter)?.shards(&ds.scores)?,
        "dedup" => d.value(&p.dedup)?.shards(&ds.scores)?,
        _ => d.value(&p.balance)?.shards(&ds.shards)?,
    };
    if let Some(prev) = previous {
        d.file(prev)?;
    }
    Ok(DoneMarker::new(ds.selections.join(format!("{stage}.inputs.sha256")), d.finish()))
}

/// Runs one selection stage over `ds` (among the keys the `previous` selection kept), unless its
/// selection is current.
fn selection(
    p: &Pipeline,
    ds: &Dataset,
    stage: &str,
    previous: Option<&Path>,
    marker: &DoneMarker,
) -> anyhow::Result<StageReport> {
    let out = ds.selection(stage);
    let artifacts = vec![("selection".into(), out.clone())];
    let label = ds.label(stage);
    if marker.is_current() && crate::store::exists(&out)? {
        return Ok(StageReport {
            stage: label,
            did_work: false,
            summary: "nothing to do (the selection is current)".into(),
            artifacts,
        });
    }
    crate::store::create_dir(&ds.selections)?;
    let within = previous.map(crate::shards::selection::read_selection).transpose()?;
    let scores = std::slice::from_ref(&ds.scores);
    let summary = match stage {
        "repeats" => {
            let cfg = p.repeats.as_ref().expect("a repeats stage has its section");
            let r = crate::score::repeats::run(&ds.shards, cfg, &out)?;
            format!("kept {} of {}: {} exact and {} near repeats removed", r.kept, r.samples, r.exact, r.near)
        }
        "filter" => {
            let cfg = p.filter.as_ref().expect("a filter stage has its section");
            let r = crate::score::filter::run_within(scores, &cfg.rules()?, within.as_ref(), &out)?;
            format!("kept {} of {} scored samples", r.kept, r.input)
        }
        "dedup" => {
            let cfg = p.dedup.as_ref().expect("a dedup stage has its section");
            let r = crate::score::dedup::run_within(scores, cfg, within.as_ref(), &out)?;
            format!(
                "kept {} of {}: {} near-duplicates removed in {} groups",
                r.kept,
                r.input,
                r.removed,
                r.groups.len()
            )
        }
        _ => {
            let cfg = p.balance.as_ref().expect("a balance stage has its section");
            let r = crate::score::balance::run_within(&ds.shards, cfg, within.as_ref(), &out)?;
            format!(
                "kept {} of {} captioned samples: distinct nouns {} → {}",
                r.selected, r.input, r.before.distinct_nouns, r.after.distinct_nouns
            )
        }
    };
    marker.write()?;
    Ok(StageReport { stage: label, did_work: true, summary, artifacts })
}

/// The official PixArt code's layout of `ds`'s shards and caches, unless it is current.
fn export(cfg: &crate::latents::export::ExportConfig, ds: &Dataset, label: &str) -> anyhow::Result<StageReport> {
    let out = ds.export.join("pixart-official");
    let mut d = InputsDigest::new();
    d.value(cfg)?.shards(&ds.shards)?.shards(&ds.t5)?.shards(&ds.vae)?;
    let marker = DoneMarker::new(out.join("inputs.sha256"), d.finish());
    let artifacts = vec![("pixart_official".into(), out.clone())];
    if marker.is_current() {
        return Ok(StageReport {
            stage: label.into(),
            did_work: false,
            summary: "nothing to do (the export is current)".into(),
            artifacts,
        });
    }
    let o = crate::latents::export::ExportOptions {
        shards: ds.shards.clone(),
        t5: ds.t5.clone(),
        vae: ds.vae.clone(),
        captions: None,
        out: out.clone(),
        config: cfg.clone(),
    };
    let stats = crate::latents::export::export_official(&o)?;
    marker.write()?;
    Ok(StageReport {
        stage: label.into(),
        did_work: true,
        summary: format!("{} sample(s) in the official layout ({} not in both caches)", stats.samples, stats.skipped),
        artifacts,
    })
}

/// The density report of each dataset's alt-text (when its source has any) and captions, and the
/// other sets; redone only when an input changed (the digest of the inputs is kept beside the report).
fn density(
    d: &super::DensityStage,
    datasets: &[super::Dataset],
    with_captions: bool,
    out: &Path,
) -> anyhow::Result<(Option<crate::density::report::Report>, StageReport)> {
    use crate::density::input::NamedInput;
    let mut inputs = Vec::new();
    let mut h = InputsDigest::new();
    for ds in datasets {
        let named = |what: &str| if ds.name.is_empty() { what.to_string() } else { format!("{what} ({})", ds.name) };
        let has_alt = ds.ingest.as_ref().is_none_or(|i| i.source != crate::ingest::SourceKind::Sa1b);
        if has_alt {
            inputs.push(NamedInput { name: named("alt-text"), path: ds.shards.clone(), selection: None });
            h.shards(&ds.shards)?;
        }
        if with_captions {
            inputs.push(NamedInput { name: named("captions"), path: ds.captions.clone(), selection: None });
            h.shards(&ds.captions)?;
        }
    }
    for (name, set) in &d.compare {
        inputs.push(set.input(name));
        h.bytes(name.as_bytes()).value(set)?;
        h.bytes(&std::fs::metadata(set.path()).map(|m| m.len()).unwrap_or(0).to_le_bytes());
    }
    h.value(&d.config)?;
    let marker = DoneMarker::new(out.join("inputs.sha256"), h.finish());
    let report_json = out.join("report.json");
    let artifacts = vec![("report".into(), out.join("report.html"))];
    if marker.is_current() && crate::store::exists(&report_json)? {
        let stage = StageReport {
            stage: "density".into(),
            did_work: false,
            summary: "nothing to do (the report is current)".into(),
            artifacts,
        };
        return Ok((None, stage));
    }
    let report = crate::density::report::run(&inputs, &d.config, false, out)?;
    marker.write()?;
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let stage = StageReport {
        stage: "density".into(),
        did_work: true,
        summary: format!("report of {} written", names.join(" vs ")),
        artifacts,
    };
    Ok((Some(report), stage))
}

/// Trains, resumes, or does nothing when the run is finished on the same caches.
fn train(
    cfg: &crate::train::config::TrainConfig,
    when: WhenDataChanges,
    file: &Path,
) -> anyhow::Result<(Option<crate::train::run::TrainSummary>, StageReport)> {
    use crate::train::run::Resume;
    let run_dir = &cfg.output_dir;
    let caches: Vec<&Path> = cfg.data.caches.iter().flat_map(|c| [c.t5.as_path(), c.vae.as_path()]).collect();
    let mut digest = InputsDigest::new();
    for dir in caches {
        digest.shards(dir)?;
    }
    let marker = DoneMarker::new(run_dir.join("data.sha256"), digest.finish());
    let checkpoints = crate::train::run_folder::checkpoint_steps(run_dir)?;
    let artifacts = vec![
        ("log".into(), run_dir.join("log.jsonl")),
        ("loss_curve".into(), run_dir.join("loss.svg")),
        ("checkpoints".into(), run_dir.join("checkpoints")),
        ("samples".into(), run_dir.join("samples")),
    ];
    let mut resume = Resume::No;
    if let Some(step) = checkpoints.last() {
        let same = marker.is_current();
        if !same {
            match when {
                WhenDataChanges::Stop => anyhow::bail!(
                    "{}: its caches changed since this run started; delete the folder to train again, or set \
                     when_data_changes = \"retrain\" in [train] of {}",
                    run_dir.display(),
                    file.display()
                ),
                WhenDataChanges::Retrain => crate::train::run_folder::remove_run(run_dir)?,
            }
        } else if *step >= cfg.max_steps {
            let stage = StageReport {
                stage: "train".into(),
                did_work: false,
                summary: format!("nothing to do (finished at step {step} on the same caches)"),
                artifacts,
            };
            return Ok((None, stage));
        } else {
            resume = Resume::Latest;
        }
    }
    crate::store::create_dir(run_dir)?;
    marker.write()?;
    let summary = crate::train::run::run(cfg, &resume)?;
    let stage = StageReport {
        stage: "train".into(),
        did_work: true,
        summary: format!(
            "steps {} → {} on {} samples, loss {:.3}",
            summary.start_step,
            summary.end_step,
            summary.samples,
            summary.final_loss.unwrap_or(f64::NAN)
        ),
        artifacts,
    };
    Ok((Some(summary), stage))
}
