//! `pixforge train` end to end on 8 bundled photos (6 photos and 2 mirrored), cached through the tiny
//! T5 (the pipeline fixture) and a tiny SD-layout VAE: the loss falls, a SIGKILLed run resumes to
//! the same numbers, non-finite batches are skipped and K in a row stop the run.

mod common;

use candle_core::{Device, Tensor};
use common::caches::{opts, pipeline, t5_config, tiny_pixart, tiny_vae, vae_config};
use pixforge::latents::cache::{t5_stage, vae_stage, FeatureDType};
use pixforge::train::observe::LogLine;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Ingests the 8 photos (64 px, 4 per shard) and caches them; returns the run folder's parent with
/// `t5/`, `vae/` and the VAE model in `tiny/`.
fn cached_photos(dir: &Path) {
    cached_photos_with(dir, false)
}

/// [`cached_photos`], the VAE cache fixed at 64 px or in the 256 px aspect-ratio buckets.
fn cached_photos_with(dir: &Path, multiscale: bool) {
    let input = dir.join("photos");
    pixforge::demo::write_inputs(&input).unwrap();
    for (name, caption) in [("astronaut", "a mirrored astronaut"), ("coffee", "a mirrored cup of coffee")] {
        let img = image::open(input.join(format!("{name}.jpg"))).unwrap().fliph();
        img.save(input.join(format!("{name}_mirrored.png"))).unwrap();
        std::fs::write(input.join(format!("{name}_mirrored.txt")), caption).unwrap();
    }
    let shards = dir.join("shards");
    let cfg = pixforge::ingest::IngestConfig {
        source: pixforge::ingest::SourceKind::Folder,
        inputs: vec![input],
        hub: Default::default(),
        laion: Default::default(),
        image: pixforge::image::ImageOptions { image_size: 64, ..Default::default() },
        curation: pixforge::ingest::CurationOptions { samples_per_shard: 4, ..Default::default() },
        download: Default::default(),
    };
    let mut o = pixforge::ingest::RunOptions::new(&shards);
    o.progress = false;
    let stats = pixforge::ingest::run(&cfg, &o).unwrap();
    assert_eq!(stats.total.successes, 8, "{stats:?}");
    t5_stage::run(&t5_config(FeatureDType::F32), &opts(&shards, &dir.join("t5")), &Device::Cpu).unwrap();
    let vae = tiny_vae(dir);
    let res = if multiscale { 256 } else { 64 };
    vae_stage::run(&vae_config(&vae, res, multiscale), &opts(&shards, &dir.join("vae")), &Device::Cpu).unwrap();
}

/// Aspect-ratio buckets with a batch of 2: the Hubble photo is alone in its bucket, so with
/// leftovers dropped (PixArt-α's sampler) it is never trained — counted in `left_out`, shown in the
/// bucket table and warned about — and with `data.bucket_leftovers = "repeat"` its batch is
/// completed with itself and it trains.
#[test]
fn a_lone_image_bucket_is_counted_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos_with(dir.path(), true);
    let run = |name: &str, leftovers: &str| {
        let cfg = config(dir.path(), name, 10, 2, "", "");
        let text =
            std::fs::read_to_string(&cfg).unwrap().replace("batch_size = 2", &format!("batch_size = 2\n{leftovers}"));
        std::fs::write(&cfg, text).unwrap();
        let o = Command::new(common::bin()).args(["train", "--json", "--config"]).arg(&cfg).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (summary, String::from_utf8_lossy(&o.stderr).to_string(), log_of(&dir.path().join(name)))
    };
    let (dropped, warning, log) = run("dropped", "");
    let table = dropped["bucket_table"].as_array().unwrap();
    let lone: Vec<&serde_json::Value> = table.iter().filter(|r| r["images"] == 1).collect();
    assert_eq!(lone.len(), 1, "{table:?}");
    let bucket = lone[0]["bucket"].as_str().unwrap().to_string();
    assert_eq!((lone[0]["batches"].as_u64(), lone[0]["never_trained"].as_u64()), (Some(0), Some(1)));
    assert_eq!(dropped["left_out"], 1, "{dropped}");
    assert_eq!(table.iter().map(|r| r["images"].as_u64().unwrap()).sum::<u64>(), 8);
    assert!(warning.contains("never trained") && warning.contains("bucket_leftovers = \"repeat\""), "{warning}");
    assert!(log.iter().all(|l| l.bucket != bucket), "the lone bucket never comes up");

    let (repeated, _, log) = run("repeated", "bucket_leftovers = \"repeat\"");
    assert_eq!(repeated["left_out"], 0, "{repeated}");
    let row =
        repeated["bucket_table"].as_array().unwrap().iter().find(|r| r["bucket"] == bucket.as_str()).unwrap().clone();
    assert_eq!((row["batches"].as_u64(), row["never_trained"].as_u64()), (Some(1), Some(0)));
    assert!(log.iter().any(|l| l.bucket == bucket), "the lone bucket trains");
}

/// A training config in `dir` (paths relative to it) with `extra` lines appended at the top level.
fn config(dir: &Path, name: &str, max_steps: u64, batch: usize, top: &str, tables: &str) -> PathBuf {
    let text = format!(
        r#"output_dir = "{name}"
max_steps = {max_steps}
seed = 7
max_grad_norm = 1.0
ema_decay = 0.99
{top}
[data]
caches = [{{ t5 = "t5", vae = "vae" }}]
batch_size = {batch}
t5_model = "{t5}"
[model]
layers = 2
heads = 2
head_dim = 16
sample_size = 8
caption_channels = 16
[optimizer]
lr = 1e-3
weight_decay = 0.0
[schedule]
warmup_steps = 2
[logging]
progress = false
every = 5
{tables}
"#,
        t5 = pipeline().display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn log_of(run: &Path) -> Vec<LogLine> {
    std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn train(config: &Path, resume: bool) -> std::process::Output {
    let mut c = Command::new(common::bin());
    c.arg("train").arg("--config").arg(config);
    if resume {
        c.arg("--resume");
    }
    c.output().unwrap()
}

/// The overfit check of the trainer: 8 cached samples, a tiny model, a fixed seed; the mean loss
/// of the last 10 steps is under half that of the first 10. Also: the loss curve, the validation
/// grid and the checkpoints are written.
#[test]
fn loss_halves_on_eight_cached_photos() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "an astronaut\na cup of coffee\n").unwrap();
    let validation = format!(
        "[validation]\nprompts = \"prompts.txt\"\nt5 = \"{}\"\nvae = \"tiny\"\nevery = 100\nseeds = [1, 2, 3]\nsteps = 5\n\
         [checkpoints]\nevery = 50\nkeep_last = 2",
        pipeline().display()
    );
    let cfg_path = config(dir.path(), "overfit", 150, 8, "", &validation);
    let cfg = pixforge::train::config::TrainConfig::load(&cfg_path).unwrap();
    let summary = pixforge::train::run::run(&cfg, &pixforge::train::run::Resume::No).unwrap();
    assert_eq!((summary.samples, summary.end_step, summary.skipped), (8, 150, 0), "{summary:?}");
    let log = log_of(&cfg.output_dir);
    assert_eq!(log.len(), 150);
    let mean = |l: &[LogLine]| l.iter().map(|l| l.loss).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&log[..10]), mean(&log[140..]));
    eprintln!("loss: first 10 steps {first:.4}, last 10 {last:.4}");
    assert!(last < 0.5 * first, "the loss at least halves: {first} → {last}");
    assert!(log.iter().all(|l| l.grad_norm.is_finite() && l.images_per_s > 0.0 && l.bucket == "64"));
    assert_eq!((log[0].lr, log[1].lr, log[2].lr), (0.0, 5e-4, 1e-3), "linear warmup over 2 steps");

    // The TensorBoard event file holds every scalar of the log and the validation grid.
    let files = common::tfevents::files(&cfg.output_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let events = common::tfevents::read(&files[0]);
    assert_eq!(events.file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!(events.session_starts, [1]);
    for l in &log {
        for (tag, v) in [
            ("train/loss", l.loss),
            ("train/mse", l.mse),
            ("train/vb", l.vb),
            ("train/grad_norm", l.grad_norm),
            ("train/lr", l.lr),
            ("train/images_per_s", l.images_per_s),
            ("train/peak_rss_mib", l.peak_rss_mib.unwrap()),
        ] {
            let found = events.values.iter().find(|e| e.step == l.step && e.tag == tag);
            assert_eq!(found.and_then(|e| e.scalar), Some(v as f32), "step {}: {tag}", l.step);
        }
    }
    let grids: Vec<_> = events.values.iter().filter(|e| e.tag == "validation/grid").collect();
    assert_eq!(grids.iter().map(|e| e.step).collect::<Vec<_>>(), [100, 150]);
    let (w, h, png) = grids[1].image.clone().unwrap();
    assert_eq!(png, std::fs::read(summary.validation.as_ref().unwrap()).unwrap());
    assert_eq!(image::image_dimensions(summary.validation.as_ref().unwrap()).unwrap(), (w as u32, h as u32));

    let svg = std::fs::read_to_string(cfg.output_dir.join("loss.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("training loss") && svg.matches("<polyline").count() >= 3);
    let grid = image::open(summary.validation.as_ref().unwrap()).unwrap().to_rgb8();
    // 2 prompts × 3 seeds of 64 px (8 latents × VAE scale 8), 4 px apart, at the bottom right inside
    // an 8 px margin; the labels left of and above them.
    let (gw, gh) = (3 * 64 + 2 * 4, 2 * 64 + 4);
    assert!(grid.width() > gw + 200 && grid.height() > gh + 30, "{:?}", grid.dimensions());
    let (x0, y0) = (grid.width() - 8 - gw, grid.height() - 8 - gh);
    let inked = |x: std::ops::Range<u32>, y: std::ops::Range<u32>| {
        y.flat_map(|y| x.clone().map(move |x| (x, y))).filter(|&(x, y)| grid.get_pixel(x, y).0 != [255; 3]).count()
    };
    assert!(inked(0..x0, y0..y0 + 15) > 20, "the first prompt left of its row");
    assert!(inked(x0..x0 + 64, y0 - 15..y0) > 20, "the first seed above its column");
    assert_eq!(inked(x0 + 64..x0 + 68, y0..y0 + gh), 0, "the gap between columns");
    let tile = inked(x0..x0 + 64, y0..y0 + 64);
    assert!(tile > 64 * 32, "a picture in the first tile: {tile}");
    // The PNG's text: the step and sampler, the prompts, and a note naming the made-up VAE (the
    // validation T5 is a real-layout fixture, not init-tiny's).
    let text: std::collections::HashMap<String, String> =
        pixforge::image::label::png_text(&png).unwrap().into_iter().collect();
    assert!(text["Title"].starts_with("step 150 - dpm-solver, 5 steps"), "{text:?}");
    assert_eq!(text["Description"], "an astronaut\na cup of coffee");
    assert!(text["Comment"].contains("the VAE made up by `pixforge models init-tiny`"), "{text:?}");
    assert!(cfg.output_dir.join("samples/step_0000100.png").exists());
    let kept: Vec<u64> = pixforge::train::checkpoint::list(&cfg.output_dir).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kept, [100, 150], "every 50 steps and at the end, the newest 2 kept");

    // The checkpoint's EMA loads in `pixforge sample` as an official checkpoint with its shape
    // flags; the checkpoint describes itself (config.json, diffusers' form), so the folder or the
    // file alone give the same image, and flags that contradict it are refused.
    let checkpoint = cfg.output_dir.join("checkpoints/step_0000150");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["_class_name"], "PixArtTransformer2DModel");
    assert_eq!((config["num_attention_heads"].as_u64(), config["sample_size"].as_u64()), (Some(2), Some(8)));
    let sample = |name: &str, transformer: &Path, flags: &[&str]| {
        let out = dir.path().join(name);
        let st = Command::new(common::bin())
            .args(["sample", "--prompt", "an astronaut", "--size", "64x64", "--steps", "3", "--no-binning", "--t5"])
            .arg(pipeline())
            .args(flags)
            .arg("--vae")
            .arg(dir.path().join("tiny"))
            .arg("--transformer")
            .arg(transformer)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        (st, out.join("0000.png"))
    };
    let (st, with_flags) =
        sample("sampled", &checkpoint.join("ema.safetensors"), &["--heads", "2", "--sample-size", "8"]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (st, from_folder) = sample("from-folder", &checkpoint, &[]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let pixels = |png: &Path| image::open(png).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&from_folder), pixels(&with_flags));
    let (st, from_file) = sample("from-file", &checkpoint.join("ema.safetensors"), &[]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(pixels(&from_file), pixels(&with_flags));
    let (st, _) = sample("wrong", &checkpoint, &["--heads", "16"]);
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("config.json says 2 heads"), "{err}");
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let bytes: Vec<f32> =
                t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
            (k, bytes.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    v.sort();
    v
}

/// N steps straight, and the same run killed with SIGKILL part-way then resumed to N, give the same
/// loss at every step and the same final weights, EMA and optimizer state.
#[test]
fn killed_training_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let steps = 120;
    // A held-out validation loss every 10 steps: the resumed run logs the straight run's values.
    let ck = "[checkpoints]\nevery = 7\nkeep_last = 2\n[holdout]\nfraction = 0.3\nevery = 10\ntimesteps = 4";
    // Batches of 2 over 8 samples: 4 batches an epoch, so the resume crosses epochs.
    let straight = config(dir.path(), "straight", steps, 2, "grad_accum = 2", ck);
    let out = train(&straight, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let killed = config(dir.path(), "killed", steps, 2, "grad_accum = 2", ck);
    let run = dir.path().join("killed");
    let mut child = Command::new(common::bin()).arg("train").arg("--config").arg(&killed).spawn().unwrap();
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(run.join("log.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 30 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the run did not get to step 30");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before the end");
    let before = log_of(&run).len();
    assert!(before < steps as usize, "killed part-way ({before} steps logged)");
    let fresh = train(&killed, false);
    assert!(!fresh.status.success(), "a fresh run into a folder with checkpoints is refused");
    assert!(String::from_utf8_lossy(&fresh.stderr).contains("--resume"));
    // The resume starts from the latest checkpoint; the lines up to it must stay as written.
    let from = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_prefix("step_")?.parse::<u64>().ok())
        .max()
        .unwrap();
    let written = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let kept: String = written
        .split_inclusive('\n')
        .take_while(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["step"].as_u64() <= Some(from)))
        .collect();
    assert!(kept.lines().count() as u64 == from, "{from} lines before the checkpoint");
    let resumed = train(&killed, true);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let after = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert!(after.starts_with(&kept), "the resume rewrote the log's first {from} lines");
    // Each run has its event file; the resumed one starts a session at the checkpoint's next step
    // (TensorBoard drops the killed run's later steps) and holds every step after it.
    let runs: Vec<_> = common::tfevents::files(&run).iter().map(|f| common::tfevents::read(f)).collect();
    assert_eq!(runs.len(), 2);
    let resumed_events = runs.iter().find(|e| e.session_starts == [from + 1]).expect("the resumed run's file");
    let steps_logged: Vec<u64> =
        resumed_events.values.iter().filter(|v| v.tag == "train/loss").map(|v| v.step).collect();
    assert_eq!(steps_logged, (from + 1..=steps).collect::<Vec<_>>());

    let (a, b) = (log_of(&dir.path().join("straight")), log_of(&run));
    assert_eq!(a.len(), steps as usize);
    assert_eq!(b.len(), steps as usize, "the log holds each step once after the resume");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.grad_norm, x.lr), (y.step, y.loss, y.grad_norm, y.lr), "step {}", x.step);
        assert_eq!((x.holdout_loss, x.holdout_loss_ema), (y.holdout_loss, y.holdout_loss_ema), "step {}", x.step);
        assert_eq!(x.holdout_loss.is_some(), x.step % 10 == 0, "step {}", x.step);
    }
    assert!(a.iter().all(|l| l.holdout_loss.is_none_or(|v| v.is_finite() && v > 0.0)));
    assert!(std::fs::read_to_string(run.join("loss.svg")).unwrap().contains("held-out loss, EMA"));
    let held: Vec<u64> = resumed_events.values.iter().filter(|v| v.tag == "holdout/loss_ema").map(|v| v.step).collect();
    assert_eq!(held, (from + 1..=steps).filter(|s| s % 10 == 0).collect::<Vec<_>>());
    let last = format!("checkpoints/step_{steps:07}");
    for f in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        let (x, y) = (tensors(&dir.path().join("straight").join(&last).join(f)), tensors(&run.join(&last).join(f)));
        assert!(x == y, "{f} differs after the resume");
    }
}

/// A torchrun-style launch: one process launched with `WORLD_SIZE=1` trains exactly as an unlaunched
/// one; a checkpoint of two processes is not resumed by one; a bad rank is refused naming the
/// variables, and so is a second rank on a build or device without NCCL.
#[test]
fn launch_variables_of_one_process_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let run = |name: &str, vars: &[(&str, &str)]| {
        let cfg = config(dir.path(), name, 6, 2, "", "");
        let mut c = Command::new(common::bin());
        c.arg("train").arg("--config").arg(&cfg).env_remove("RANK").env_remove("WORLD_SIZE").env_remove("LOCAL_RANK");
        c.envs(vars.iter().copied());
        c.output().unwrap()
    };
    let plain = run("plain", &[]);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let launched = run("launched", &[("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")]);
    assert!(launched.status.success(), "{}", String::from_utf8_lossy(&launched.stderr));
    let (a, b) = (log_of(&dir.path().join("plain")), log_of(&dir.path().join("launched")));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.grad_norm), (y.step, y.loss, y.grad_norm), "step {}", x.step);
    }
    // A checkpoint of two processes (rank_rngs of two ranks) is not resumed by one.
    let state = dir.path().join("launched/checkpoints/step_0000006/state.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    json["rank_rngs"] = serde_json::json!([[1, 2], [3, 4]]);
    std::fs::write(&state, json.to_string()).unwrap();
    let cfg = dir.path().join("launched.toml");
    let resumed = Command::new(common::bin()).args(["train", "--resume", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(err.contains("written by 2 process(es), resumed by WORLD_SIZE=1"), "{err}");
    let bad = run("bad", &[("RANK", "2"), ("WORLD_SIZE", "2")]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RANK=2 WORLD_SIZE=2: expected 0 ≤ RANK < WORLD_SIZE"));
    let second =
        run("second", &[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && err.contains("RANK=1 WORLD_SIZE=2") && err.contains("NCCL"), "{err}");
    assert!(!dir.path().join("second").join("log.jsonl").exists(), "a refused rank writes nothing");
}

/// f16 training keeps its dynamic loss scale across a resume: a run stopped at step 12 and resumed
/// to 24 logs the same steps (skips included) and ends with the same loss scale (factor and good-step
/// count), weights and optimizer state as 24 steps straight. Without the scale in `state.json` the
/// resumed run would restart the count at 0 (and at 65536).
#[test]
fn f16_loss_scale_survives_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let (top, ck) = ("precision = \"f16\"", "[checkpoints]\nevery = 8\nkeep_last = 3");
    let straight = config(dir.path(), "straight", 24, 2, top, ck);
    let out = train(&straight, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = config(dir.path(), "cut", 12, 2, top, ck);
    let out = train(&first, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rest = config(dir.path(), "cut", 24, 2, top, ck);
    let out = train(&rest, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (a, b) = (log_of(&dir.path().join("straight")), log_of(&dir.path().join("cut")));
    assert_eq!((a.len(), b.len()), (24, 24), "each step logged once");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.loss, x.grad_norm, x.skipped),
            (y.step, y.loss, y.grad_norm, y.skipped),
            "step {}",
            x.step
        );
    }
    let last = "checkpoints/step_0000024";
    let scale = |run: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.path().join(run).join(last).join("state.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["loss_scale"].clone()
    };
    let (s, c) = (scale("straight"), scale("cut"));
    let good = s["good_steps"].as_u64().expect("an f16 run saves its loss scale");
    assert!(good > 12, "the good-step count runs on past the cut: {s}");
    assert_eq!(s, c, "the loss scale after the resume");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (x, y) = (
            tensors(&dir.path().join("straight").join(last).join(f)),
            tensors(&dir.path().join("cut").join(last).join(f)),
        );
        assert!(x == y, "{f} differs after the resume");
    }
}

/// Sets the VAE cache's means to NaN: every sample of shard `shard`, or (with `first_only`) the
/// first row of each of its tensors.
fn poison(vae_dir: &Path, shard: &str, first_only: bool) {
    let file = vae_dir.join(format!("{shard}.safetensors"));
    let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    for (name, v) in t.iter_mut() {
        if name.starts_with("mean") {
            let nan = (Tensor::ones(v.dims(), v.dtype(), &Device::Cpu).unwrap() * f64::NAN).unwrap();
            *v = if first_only {
                let rest = v.narrow(0, 1, v.dim(0).unwrap() - 1).unwrap();
                Tensor::cat(&[&nan.narrow(0, 0, 1).unwrap(), &rest], 0).unwrap()
            } else {
                nan
            };
        }
    }
    candle_core::safetensors::save(&t, &file).unwrap();
}

/// A NaN in one batch is skipped and logged; K non-finite steps in a row stop the run with a clear
/// error, the last good checkpoint untouched and no newer one written.
#[test]
fn non_finite_batches_are_skipped_then_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    poison(&dir.path().join("vae"), "00001", true);
    let ck = "[checkpoints]\nevery = 8";
    let cfg = config(dir.path(), "nan", 8, 1, "max_skipped_in_a_row = 3", ck);
    let out = train(&cfg, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = log_of(&dir.path().join("nan"));
    let skipped: Vec<u64> = log.iter().filter(|l| l.skipped).map(|l| l.step).collect();
    assert_eq!(skipped.len(), 1, "one poisoned sample in 8 batches of 1: {skipped:?}");
    assert!(log.iter().filter(|l| !l.skipped).all(|l| l.loss.is_finite()));

    let good = dir.path().join("nan/checkpoints/step_0000008");
    let before: Vec<Vec<u8>> =
        ["model.safetensors", "state.json"].iter().map(|f| std::fs::read(good.join(f)).unwrap()).collect();
    for shard in ["00000", "00001"] {
        poison(&dir.path().join("vae"), shard, false);
    }
    let cfg = config(dir.path(), "nan", 40, 1, "max_skipped_in_a_row = 3", ck);
    let out = train(&cfg, true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 steps in a row had a non-finite loss"), "{err}");
    let after: Vec<Vec<u8>> =
        ["model.safetensors", "state.json"].iter().map(|f| std::fs::read(good.join(f)).unwrap()).collect();
    assert!(before == after, "the last good checkpoint is intact");
    let all: Vec<u64> =
        pixforge::train::checkpoint::list(&dir.path().join("nan")).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(all, [8]);
    let log = log_of(&dir.path().join("nan"));
    assert_eq!(log.iter().filter(|l| l.step > 8 && l.skipped).count(), 2, "two skipped steps logged before the stop");
}

/// The example configs parse and hold the paper's stage settings; a wrong field is named.
#[test]
fn example_configs_parse_and_errors_name_the_field() {
    use pixforge::train::config::TrainConfig;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for (file, batch, sample, micro) in
        [("train-256.toml", 176, 32, false), ("train-512-ms.toml", 40, 64, true), ("train-1024-ms.toml", 12, 128, true)]
    {
        let c = TrainConfig::load(&root.join(file)).unwrap();
        assert_eq!(
            (c.data.batch_size, c.model.sample_size, c.model.micro_conditions),
            (batch, sample, micro),
            "{file}"
        );
        assert_eq!((c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.eps), (2e-5, 0.03, 1e-10), "{file}");
        assert_eq!((c.max_grad_norm, c.ema_decay, c.schedule.warmup_steps), (0.01, 0.9999, 1000), "{file}");
        assert!(c.data.caches[0].t5.starts_with(&root), "paths are relative to the file");
    }
    // PixArt-Σ's stages: CAME, 300 tokens, no micro-conditions, the positions' interpolation.
    for (file, sample, lewei) in [("train-sigma-512-ms.toml", 64, 1.0), ("train-sigma-1024-ms.toml", 128, 2.0)] {
        let c = TrainConfig::load(&root.join(file)).unwrap();
        assert_eq!(c.optimizer.kind, pixforge::train::optim::OptimizerKind::Came, "{file}");
        assert_eq!((c.optimizer.lr, c.optimizer.weight_decay), (2e-5, 0.0), "{file}");
        let came = c.optimizer.came.unwrap();
        assert_eq!((came.betas, came.eps), ([0.9, 0.999, 0.9999], [1e-30, 1e-16]), "{file}");
        assert_eq!((c.data.max_tokens, c.model.sample_size, c.model.micro_conditions), (300, sample, false), "{file}");
        assert_eq!((c.model.lewei_scale, c.max_grad_norm, c.data.batch_size), (Some(lewei), 0.01, 2), "{file}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = |body: &str| {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, body).unwrap();
        format!("{:#}", TrainConfig::load(&p).unwrap_err())
    };
    let base = "output_dir = \"o\"\nmax_steps = 10\n[data]\ncaches = [{ t5 = \"a\", vae = \"b\" }]\n";
    assert!(bad(&format!("{base}batch_sise = 4\n")).contains("batch_sise"));
    assert!(bad(&format!("{base}batch_size = 0\n")).contains("`data.batch_size` must be at least 1"));
    assert!(bad(&base.replace("max_steps = 10", "max_steps = 10\nprecision = \"fp8\"")).contains("`precision`"));
    assert!(bad("max_steps = 10\n").contains("output_dir"));
}

/// A `pixforge filter` selection restricts training to its keys.
#[test]
fn trains_only_on_a_selection() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let t5 = pixforge::shards::stage::StageReader::open_unchecked(&dir.path().join("t5")).unwrap();
    let mut keys: Vec<String> =
        t5.shards.iter().flat_map(|s| t5.shard(s).unwrap().entries.into_iter().map(|e| e.key)).collect();
    keys.sort();
    assert_eq!(keys.len(), 8);
    let scores = dir.path().join("scores");
    std::fs::create_dir_all(&scores).unwrap();
    let mut df = DataFrame::new(
        8,
        vec![
            Column::new("key".into(), keys.clone()),
            Column::new("aesthetic".into(), (0..8).map(|i| Some(i as f32)).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    pixforge::shards::write_parquet_atomic(&mut df, &scores.join("00000.scores.parquet")).unwrap();
    let sel = dir.path().join("sel.parquet");
    let rules = [pixforge::score::filter::Rule::parse("min", "aesthetic=5").unwrap()];
    pixforge::score::filter::run(&[scores], &rules, &sel).unwrap();
    let cfg_path = config(dir.path(), "sel", 2, 1, "", "");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("batch_size = 1\n", "batch_size = 1\nselection = \"sel.parquet\"\n");
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = pixforge::train::config::TrainConfig::load(&cfg_path).unwrap();
    let summary = pixforge::train::run::run(&cfg, &pixforge::train::run::Resume::No).unwrap();
    assert_eq!((summary.samples, summary.left_out), (3, 5), "the 3 keys scored 5 to 7 only: {summary:?}");
}

/// Fine-tuning from a diffusers transformer folder: its weights are the starting point (at lr 0 they
/// come out unchanged), and what it lacks for training is added (the null caption for the caption
/// drop, PixArtMS's micro-condition embedders).
#[test]
fn fine_tunes_from_a_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    // A PixArt (no micro-conditions) of hidden 48 (divisible by 3, as PixArtMS needs), in diffusers' layout.
    let shape = tiny_pixart(24, 8);
    let pretrained = dir.path().join("pretrained");
    pixforge::train::init::init(shape, false, 120, 5, &Device::Cpu).unwrap().save_diffusers(&pretrained).unwrap();
    let cfg_path = config(dir.path(), "ft", 3, 4, "", "");
    let text = std::fs::read_to_string(&cfg_path).unwrap().replace(
        "[model]\nlayers = 2\nheads = 2\nhead_dim = 16\nsample_size = 8\ncaption_channels = 16\n",
        &format!("[model]\npretrained = \"{}\"\nmicro_conditions = true\n", pretrained.display()),
    );
    let text = text.replace("lr = 1e-3", "lr = 0.0");
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = pixforge::train::config::TrainConfig::load(&cfg_path).unwrap();
    let summary = pixforge::train::run::run(&cfg, &pixforge::train::run::Resume::No).unwrap();
    assert_eq!(summary.end_step, 3);
    let ck = pixforge::train::checkpoint::load(summary.checkpoint.as_ref().unwrap(), &Device::Cpu).unwrap();
    let model = ck.model.expect("a whole-model checkpoint");
    assert!(model.null_caption().is_some() && model.has_micro_conditions());
    let original = pixforge::train::model::PixArt::load_diffusers(&pretrained, &Device::Cpu).unwrap();
    for (k, w) in original.weights() {
        let diff = common::caches::max_abs_diff(w, &model.weights()[k]);
        assert_eq!(diff, 0.0, "{k}: fine-tuning starts from the pretrained weights");
    }
}

/// The full field names a docs table lists in its first column: "`a.b`, `c`" names `a.b` and `a.c`
/// (a name without a dot takes the section of the first one).
fn documented_fields(docs: &str) -> std::collections::HashSet<String> {
    let mut names = std::collections::HashSet::new();
    for line in docs.lines().filter(|l| l.starts_with("| `")) {
        let first = line.trim_start_matches('|').split(" | ").next().unwrap_or("");
        let mut section = String::new();
        for item in first.split(", ") {
            let name = item.trim().trim_matches('`');
            if let Some((sec, _)) = name.rsplit_once('.') {
                section = format!("{sec}.");
                names.insert(name.to_string());
            } else {
                names.insert(format!("{section}{name}"));
            }
        }
    }
    names
}

/// Every field of the training config is in docs/train.md's field table, by its full name.
#[test]
fn every_config_field_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = documented_fields(&std::fs::read_to_string(root.join("docs/train.md")).unwrap());
    let cfg = pixforge::train::config::TrainConfig::load(&root.join("pipelines/train-256.toml")).unwrap();
    let value = serde_json::to_value(&cfg).unwrap();
    let mut missing = Vec::new();
    for (k, v) in value.as_object().unwrap() {
        let nested: Vec<String> = match v.as_object() {
            Some(o) => o.keys().map(|f| format!("{k}.{f}")).collect(),
            None => vec![k.clone()],
        };
        for name in nested {
            if !docs.contains(&name) {
                missing.push(name);
            }
        }
    }
    assert!(missing.is_empty(), "docs/train.md does not describe {missing:?}");
}

/// Experimental DiT initialisation: the re-parameterised PixArt computes, at t = 500 and for any
/// caption, what the DiT (a port of facebookresearch/DiT's forward, `tools/golden/dit_tiny.py`)
/// computes at t = 500 without a class.
#[test]
fn dit_weights_reparameterised_at_t500_give_dits_output() {
    let golden = common::fixtures().join("golden");
    let m =
        pixforge::train::config::ModelConfig { heads: 2, caption_channels: 16, sample_size: 8, ..Default::default() };
    let model = pixforge::train::dit::from_dit(&golden.join("dit_tiny.safetensors"), &m, 120, 3, &Device::Cpu).unwrap();
    assert_eq!((model.config.num_layers, model.config.hidden()), (2, 48));
    let io = candle_core::safetensors::load(golden.join("dit_tiny_io.safetensors"), &Device::Cpu).unwrap();
    let mut rng = pixforge::rng::Rng::new(9);
    let caption = rng.normal_tensor(&[2, 7, 16], 1.0, &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1., 1.]], &Device::Cpu).unwrap();
    let t = Tensor::new(&[500f32, 500.], &Device::Cpu).unwrap();
    let out = model.forward(&io["x"], &t, &caption, &mask, None).unwrap();
    let diff = common::caches::max_abs_diff(&out, &io["output"]);
    assert!(diff < 1e-4, "PixArt from DiT at t = 500 vs DiT: {diff}");
    // At another timestep the per-block tables no longer match DiT's modulation.
    let t = Tensor::new(&[100f32, 100.], &Device::Cpu).unwrap();
    let other = model.forward(&io["x"], &t, &caption, &mask, None).unwrap();
    assert!(common::caches::max_abs_diff(&other, &io["output"]) > 1e-3);
}

/// PixArt-Σ's optimizer in the trainer: a CAME run stopped at step 5 and resumed to 12 logs the
/// straight run's loss, gradient norm and lr at every step and ends with the same weights and CAME
/// state (came-pytorch's names in `optimizer.safetensors`); a resume with AdamW instead is refused.
#[test]
fn came_training_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let came = |name: &str, steps: u64| {
        let path = config(dir.path(), name, steps, 2, "", "[checkpoints]\nevery = 5");
        let text = std::fs::read_to_string(&path).unwrap().replace("[optimizer]\n", "[optimizer]\nkind = \"came\"\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(train(&came("straight", 12), false));
    ok(train(&came("stopped", 5), false));
    ok(train(&came("stopped", 12), true));
    let (a, b) = (log_of(&dir.path().join("straight")), log_of(&dir.path().join("stopped")));
    assert_eq!((a.len(), b.len()), (12, 12));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.grad_norm, x.lr), (y.step, y.loss, y.grad_norm, y.lr), "step {}", x.step);
    }
    let last = "checkpoints/step_0000012";
    for f in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        let (x, y) = (
            tensors(&dir.path().join("straight").join(last).join(f)),
            tensors(&dir.path().join("stopped").join(last).join(f)),
        );
        assert!(x == y, "{f} differs after the resume");
    }
    let state = candle_core::safetensors::load(
        dir.path().join("straight").join(last).join("optimizer.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(state.keys().any(|k| k.starts_with("came.exp_avg_sq_row.")) && state.contains_key("came.steps"));
    assert!(!state.keys().any(|k| k.starts_with("adamw.")));
    // The weights moved and differ from an AdamW run's.
    let adamw = config(dir.path(), "adamw", 12, 2, "", "[checkpoints]\nevery = 5");
    ok(train(&adamw, false));
    assert!(
        tensors(&dir.path().join("adamw").join(last).join("model.safetensors"))
            != tensors(&dir.path().join("straight").join(last).join("model.safetensors"))
    );
    // Another optimizer is another run: its resume is refused.
    std::fs::copy(&adamw, dir.path().join("other.toml")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("other.toml"))
        .unwrap()
        .replace("output_dir = \"adamw\"", "output_dir = \"stopped\"");
    std::fs::write(dir.path().join("other.toml"), text.replace("max_steps = 12", "max_steps = 14")).unwrap();
    let refused = train(&dir.path().join("other.toml"), true);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("written by a run with other settings"), "{err}");
    assert!(err.contains("optimizer.kind: was \"came\""), "the change is named: {err}");
}

/// PixArt-Σ's KV-token compression in training (`model.kv_compress`, through candle's autograd):
/// `conv` in the second block trains its kernel and norm away from their official initial values
/// and a run stopped at step 4 and resumed to 8 gives the straight run's numbers; `ave`, which
/// learns nothing, resumes exactly too (the checkpoint's shape carries it).
#[test]
fn kv_compressed_training_trains_the_compression_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let with_kv = |name: &str, steps: u64, sampling: &str| {
        let path = config(dir.path(), name, steps, 2, "", "[checkpoints]\nevery = 4");
        let kv = format!(
            "[model]\nkv_compress = {{ sampling = \"{sampling}\", scale_factor = 2, kv_compress_layer = [1] }}\n"
        );
        let text = std::fs::read_to_string(&path).unwrap().replace("[model]\n", &kv);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for sampling in ["conv", "ave"] {
        let (straight, stopped) = (format!("{sampling}-straight"), format!("{sampling}-stopped"));
        ok(train(&with_kv(&straight, 8, sampling), false));
        ok(train(&with_kv(&stopped, 4, sampling), false));
        ok(train(&with_kv(&stopped, 8, sampling), true));
        let (a, b) = (log_of(&dir.path().join(&straight)), log_of(&dir.path().join(&stopped)));
        assert_eq!((a.len(), b.len()), (8, 8), "{sampling}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.step, x.loss, x.grad_norm), (y.step, y.loss, y.grad_norm), "{sampling}: step {}", x.step);
        }
        let last = |run: &str| dir.path().join(run).join("checkpoints/step_0000008/model.safetensors");
        assert!(tensors(&last(&straight)) == tensors(&last(&stopped)), "{sampling}: weights differ after the resume");
        let w = candle_core::safetensors::load(last(&straight), &Device::Cpu).unwrap();
        assert_eq!(w.contains_key("blocks.1.attn.sr.weight"), sampling == "conv");
        assert!(!w.contains_key("blocks.0.attn.sr.weight"));
        if sampling == "conv" {
            let sr: Vec<f32> = w["blocks.1.attn.sr.weight"].flatten_all().unwrap().to_vec1().unwrap();
            assert!(sr.iter().any(|v| (v - 0.25).abs() > 1e-6), "the kernel trained away from the patch average");
        }
    }
}

/// Training LoRA / DoRA adapters (`[lora]`) of a frozen tiny PixArt-Σ: the adapter has exactly the
/// tensor names and shapes, and its config the fields, that peft writes for the same `LoraConfig`
/// (tests/fixtures/lora, made by peft); the loss falls; nothing but the adapter is written or
/// changed; a run killed with SIGKILL resumes to the straight run's numbers and adapter; and the
/// trained adapter changes what `pixforge sample --lora` draws.
#[test]
fn lora_fine_tune_trains_only_the_adapter_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A tiny PixArt-Σ (no micro-conditions, 300-token captions) trained far enough that its output
    // depends on its blocks (the official init zeroes the output projection).
    let sigma = |path: PathBuf| {
        let text =
            std::fs::read_to_string(&path).unwrap().replace("batch_size = 2\n", "batch_size = 2\nmax_tokens = 300\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    ok(train(&sigma(config(dir.path(), "base", 60, 2, "", "")), false));
    let base = dir.path().join("base/checkpoints/step_0000060/model.safetensors");
    let base_bytes = std::fs::read(&base).unwrap();
    let null = &candle_core::safetensors::load(&base, &Device::Cpu).unwrap()["y_embedder.y_embedding"];
    assert_eq!(null.dims(), &[300, 16], "Σ's null caption of 300 tokens");
    let peft = common::fixtures().join("lora");
    let peft_config = |kind: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(peft.join(kind).join("adapter_config.json")).unwrap()).unwrap()
    };
    let targets = peft_config("lora")["target_modules"].clone();
    let lora_run = |name: &str, steps: u64, dora: bool| {
        let dropout = if name.starts_with("dropout") { 0.2 } else { 0.0 };
        let lora = format!(
            "[lora]\nrank = 4\nalpha = 8.0\nuse_dora = {dora}\ndropout = {dropout}\ntarget_modules = {targets}\n\
             [checkpoints]\nevery = 7\nkeep_last = 2"
        );
        let path = config(dir.path(), name, steps, 2, "", &lora);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[model]\n", &format!("[model]\npretrained = \"{}\"\n", base.display()));
        let text = text.replace("lr = 1e-3", "lr = 5e-3");
        std::fs::write(&path, text).unwrap();
        sigma(path)
    };
    let steps = 120;
    ok(train(&lora_run("straight", steps, false), false));
    let killed = lora_run("killed", steps, false);
    let run = dir.path().join("killed");
    let mut child = Command::new(common::bin()).arg("train").arg("--config").arg(&killed).spawn().unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(run.join("log.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < 30 {
        assert!(start.elapsed() < Duration::from_secs(120), "the run did not get to step 30");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "killed before the end");
    ok(train(&killed, true));

    let (a, b) = (log_of(&dir.path().join("straight")), log_of(&run));
    assert_eq!((a.len(), b.len()), (steps as usize, steps as usize));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.grad_norm, x.lr), (y.step, y.loss, y.grad_norm, y.lr), "step {}", x.step);
    }
    let mean = |l: &[LogLine]| l.iter().map(|l| l.loss).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&a[..20]), mean(&a[a.len() - 20..]));
    eprintln!(
        "LoRA loss: first 20 steps {first:.4}, last 20 {last:.4}; grad norms {:?}",
        a.iter().step_by(20).map(|l| l.grad_norm).collect::<Vec<_>>()
    );
    assert!(last < first, "the loss falls: {first} → {last}");

    let ck = |run: &str| dir.path().join(run).join(format!("checkpoints/step_{steps:07}"));
    for f in ["adapter/adapter_model.safetensors", "ema_adapter/adapter_model.safetensors", "optimizer.safetensors"] {
        assert!(tensors(&ck("straight").join(f)) == tensors(&ck("killed").join(f)), "{f} differs after the resume");
    }
    assert!(!ck("straight").join("model.safetensors").exists(), "the frozen transformer is not rewritten");
    assert_eq!(std::fs::read(&base).unwrap(), base_bytes, "the base weights are untouched");

    // Exactly peft's tensor names, shapes and config fields for the same LoraConfig.
    let shapes = |p: &Path| -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = candle_core::safetensors::load(p, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.dims().to_vec()))
            .collect();
        v.sort();
        v
    };
    let ours = ck("straight").join("adapter");
    assert_eq!(shapes(&ours.join("adapter_model.safetensors")), shapes(&peft.join("lora/adapter_model.safetensors")));
    let ours_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ours.join("adapter_config.json")).unwrap()).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours_config), keys(&peft_config("lora")));
    for field in ["r", "peft_type", "use_dora", "use_rslora", "bias", "fan_in_fan_out"] {
        assert_eq!(ours_config[field], peft_config("lora")[field], "{field}");
    }
    assert_eq!(ours_config["lora_alpha"].as_f64(), peft_config("lora")["lora_alpha"].as_f64());
    let set = |v: &serde_json::Value| {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(set(&ours_config["target_modules"]), set(&targets));

    // DoRA: the magnitudes too, as peft names them.
    ok(train(&lora_run("dora", 6, true), false));
    let dora = dir.path().join("dora/checkpoints/step_0000006/adapter/adapter_model.safetensors");
    assert_eq!(shapes(&dora), shapes(&peft.join("dora/adapter_model.safetensors")));

    // Dropout on the adapters' input (computed beside each layer): seeded from the run's generator,
    // so a stopped run resumes to the straight run's numbers; and it changes them.
    ok(train(&lora_run("dropout-straight", 10, true), false));
    ok(train(&lora_run("dropout-stopped", 7, true), false));
    ok(train(&lora_run("dropout-stopped", 10, true), true));
    let (x, y) = (log_of(&dir.path().join("dropout-straight")), log_of(&dir.path().join("dropout-stopped")));
    assert_eq!(
        x.iter().map(|l| (l.step, l.loss, l.grad_norm)).collect::<Vec<_>>(),
        y.iter().map(|l| (l.step, l.loss, l.grad_norm)).collect::<Vec<_>>()
    );
    let no_dropout = log_of(&dir.path().join("dora"));
    assert_ne!(x[1].loss, no_dropout[1].loss, "dropout changes the step");

    // The trained adapter changes the samples.
    let pipeline = pipeline();
    let sample = |name: &str, lora: Option<PathBuf>| {
        let mut c = Command::new(common::bin());
        c.args(["sample", "--transformer"])
            .arg(&base)
            .args(["--heads", "2", "--sample-size", "8", "--t5"])
            .arg(&pipeline);
        c.arg("--vae").arg(dir.path().join("tiny")).args([
            "--prompt",
            "an astronaut",
            "--size",
            "64x64",
            "--steps",
            "4",
        ]);
        c.arg("--out").arg(dir.path().join(name));
        if let Some(l) = lora {
            c.arg("--lora").arg(l);
        }
        ok(c.output().unwrap());
        image::open(dir.path().join(name).join("0000.png")).unwrap().to_rgb8().into_raw()
    };
    assert_ne!(sample("without", None), sample("with", Some(ck("straight").join("ema_adapter"))));
}

/// A validation T5 other than the one the caches were made with is warned about (here the same
/// weights with another tokenizer file), naming the field and the file; the caches' own is not.
#[test]
fn a_validation_encoder_other_than_the_caches_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    cached_photos(dir.path());
    let other = dir.path().join("other-t5");
    for sub in ["text_encoder", "tokenizer"] {
        std::fs::create_dir_all(other.join(sub)).unwrap();
        for e in std::fs::read_dir(pipeline().join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), other.join(sub).join(e.file_name())).unwrap();
        }
    }
    let tok = other.join("tokenizer/tokenizer.json");
    let mut text = std::fs::read_to_string(&tok).unwrap();
    text.push('\n');
    std::fs::write(&tok, text).unwrap();
    std::fs::write(dir.path().join("prompts.txt"), "an astronaut\n").unwrap();
    let run = |name: &str, t5: &Path| {
        let validation = format!(
            "[validation]\nprompts = \"prompts.txt\"\nt5 = \"{}\"\nvae = \"tiny\"\nevery = 2\nseeds = [1]\nsteps = 2",
            t5.display()
        );
        let o = train(&config(dir.path(), name, 2, 2, "", &validation), false);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let warned = run("other", &other);
    assert!(warned.contains("validation.t5") && warned.contains("tokenizer.json differ"), "{warned}");
    let same = run("same", &pipeline());
    assert!(!same.contains("validation.t5"), "{same}");
}
