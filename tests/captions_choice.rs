//! Every caption used: the demo's photos captioned twice each (openai backend, loopback server),
//! cached with `--all-captions` (three captions a sample: both dense ones and the alt-text, each
//! with its source); `data.captions = "random"` takes each of them over the epochs, weights by
//! source take only what they weigh; and a run killed with SIGKILL and resumed from its checkpoint
//! continues the seeded choice exactly.

mod common;

use candle_core::Device;
use common::vlm::{Expect, VlmServer};
use pixforge::rng::Rng;
use pixforge::shards::stage::StageReader;
use pixforge::train::config::CaptionChoice;
use pixforge::train::data::TrainSet;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

const MODEL: &str = "llava-hf/llava-1.5-7b-hf";

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A `pixforge` command whose data stages write their event files under `dir/tensorboard`.
fn bin(dir: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.env("PIXFORGE_TENSORBOARD", dir.join("tensorboard"));
    c
}

/// The demo's photos ingested at 64 px into `dir/shards`.
fn ingested(dir: &Path) {
    let photos = dir.join("photos");
    pixforge::demo::write_inputs(&photos).unwrap();
    ok(bin(dir)
        .args(["ingest", "folder", "--samples-per-shard", "3", "--image-size", "64", "--no-progress", "--out"])
        .arg(dir.join("shards"))
        .arg(&photos)
        .output()
        .unwrap());
}

/// `dir/shards` captioned `per_image` times with `prompt` by `vlm` into `dir/{out}`.
fn captioned(dir: &Path, vlm: &VlmServer, prompt: &str, per_image: usize, out: &str) {
    ok(bin(dir)
        .args(["caption", "--backend", "openai", "--model", MODEL, "--no-progress", "--captions-per-image"])
        .arg(per_image.to_string())
        .arg("--endpoint")
        .arg(format!("{}/v1", vlm.base))
        .arg("--prompt")
        .arg(prompt)
        .arg("--input")
        .arg(dir.join("shards"))
        .arg("--out")
        .arg(dir.join(out))
        .output()
        .unwrap());
}

/// `cache t5` of `dir/shards` with the captions of `dir/{captions}` into `dir/t5` (`extra` flags added).
fn cache_t5(dir: &Path, captions: &str, extra: &[&str]) -> std::process::Output {
    bin(dir)
        .args(["cache", "t5", "--no-progress"])
        .args(extra)
        .arg("--model")
        .arg(common::caches::pipeline())
        .arg("--captions")
        .arg(dir.join(captions))
        .arg("--input")
        .arg(dir.join("shards"))
        .arg("--out")
        .arg(dir.join("t5"))
        .output()
        .unwrap()
}

/// The photos ingested, captioned twice each, and cached with every caption (T5) and at 64 px (VAE).
fn cached(dir: &Path) {
    let vlm = VlmServer::start(Expect::answering(MODEL));
    ingested(dir);
    captioned(dir, &vlm, "Describe sample {key} in a very detailed manner", 2, "captions");
    ok(cache_t5(dir, "captions", &["--all-captions"]));
    let vae = common::caches::tiny_vae(dir);
    ok(bin(dir)
        .args(["cache", "vae", "--resolution", "64", "--no-progress", "--model"])
        .arg(&vae)
        .arg("--input")
        .arg(dir.join("shards"))
        .arg("--out")
        .arg(dir.join("vae"))
        .output()
        .unwrap());
}

/// How often each (key, source) is taken over `epochs` passes of single-sample batches.
fn counts(dir: &Path, choice: CaptionChoice, epochs: usize) -> BTreeMap<(String, String), usize> {
    let (t5, vae) =
        (StageReader::open_unchecked(&dir.join("t5")).unwrap(), StageReader::open_unchecked(&dir.join("vae")).unwrap());
    let mut set = TrainSet::join(&[(t5, vae)]).unwrap();
    set.captions = choice;
    let mut rng = Rng::new(5);
    let mut seen = BTreeMap::new();
    for _ in 0..epochs {
        for i in 0..set.len() {
            let b = set.batch(&[i], &mut rng, 0.18215, 120, 0.0, &Device::Cpu).unwrap();
            *seen.entry((b.keys[0].clone(), b.caption_sources[0].clone())).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn every_cached_caption_is_trained_on_and_the_choice_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    cached(dir.path());

    // Three captions a sample, each with its source and rows; the first is the entry's own.
    let t5 = StageReader::open_unchecked(&dir.path().join("t5")).unwrap();
    assert_eq!(t5.fingerprint.preprocessing["all_captions"], true);
    let mut samples = 0;
    for name in &t5.shards {
        for e in &t5.shard(name).unwrap().entries {
            let c = e.captions.as_ref().unwrap_or_else(|| panic!("{}: no captions", e.key));
            let sources: Vec<&str> = c.iter().map(|c| c.source.split(':').next().unwrap()).collect();
            assert_eq!(sources, ["dense", "dense", "alt"], "{}", e.key);
            assert_ne!(c[0].source, c[1].source);
            assert_eq!((e.row, e.tokens), (Some(c[0].row), Some(c[0].tokens)));
            samples += 1;
        }
    }
    assert_eq!(samples, pixforge::demo::IMAGES.len());

    // Each data stage's event file (under PIXFORGE_TENSORBOARD, not in the dataset) has every
    // shard's success rate and throughput (captions/s too).
    for (folder, stage) in [("shards", "ingest"), ("captions", "caption"), ("t5", "cache-t5"), ("vae", "cache-vae")] {
        let files = common::tfevents::files(&dir.path().join("tensorboard").join(format!("{stage}-{folder}")));
        let folder = dir.path().join(folder);
        assert!(common::tfevents::files(&folder).is_empty(), "no event file in the dataset {}", folder.display());
        assert_eq!(files.len(), 1, "{stage}: {files:?}");
        let events = common::tfevents::read(&files[0]);
        let mut shards = 0;
        for entry in std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()) {
            let Some(name) = entry.file_name().unwrap().to_str().unwrap().strip_suffix("_stats.json") else { continue };
            let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
            let step: u64 = name.parse().unwrap();
            let value = |tag: &str| {
                let tag = format!("{stage}/{tag}");
                events.values.iter().find(|v| v.step == step && v.tag == tag).and_then(|v| v.scalar)
            };
            let rate = stats["successes"].as_f64().unwrap() / stats["count"].as_f64().unwrap();
            assert_eq!(value("success_rate"), Some(rate as f32), "{stage}, shard {name}");
            assert!(value("samples_per_s").is_some_and(|v| v > 0.0), "{stage}, shard {name}");
            assert_eq!(value("captions_per_s").is_some(), stage == "caption", "{stage}, shard {name}");
            shards += 1;
        }
        assert_eq!(shards, 2, "{stage}");
    }

    // The density report counts each caption source apart: the folder, then each caption index.
    let density = dir.path().join("density");
    ok(Command::new(common::bin())
        .args(["density", "--by-source", "--no-progress", "--input"])
        .arg(format!("captions={}", dir.path().join("captions").display()))
        .arg("--out")
        .arg(&density)
        .output()
        .unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(density.join("report.json")).unwrap()).unwrap();
    let rows = report["inputs"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let prompt = t5.shard(&t5.shards[0]).unwrap().entries[0].captions.as_ref().unwrap()[0].source.clone();
    let prompt = prompt.rsplit_once(':').unwrap().0.to_string();
    let by_source = [format!("captions {prompt}:0"), format!("captions {prompt}:1")];
    assert_eq!(names, ["captions", by_source[0].as_str(), by_source[1].as_str()]);
    let field = |i: usize, f: &str| rows[i][f].as_u64().unwrap();
    assert_eq!([field(0, "captions"), field(1, "captions"), field(2, "captions")], [12, 6, 6]);
    assert_eq!(field(1, "total_nouns") + field(2, "total_nouns"), field(0, "total_nouns"));

    // `first` takes the entry's own caption; `random` each of the three; weights only what they weigh.
    let first = counts(dir.path(), CaptionChoice::First, 2);
    assert!(first.keys().all(|(_, s)| s.is_empty()), "{first:?}");
    let random = counts(dir.path(), CaptionChoice::Random, 30);
    let per_key: BTreeMap<&String, HashSet<&String>> = random.keys().fold(BTreeMap::new(), |mut m, (k, s)| {
        m.entry(k).or_default().insert(s);
        m
    });
    assert_eq!(per_key.len(), samples);
    assert!(per_key.values().all(|s| s.len() == 3), "every caption of every sample taken: {per_key:?}");
    let only_alt = counts(dir.path(), CaptionChoice::Weights(BTreeMap::from([("alt".into(), 1.0)])), 5);
    assert!(only_alt.keys().all(|(_, s)| s == "alt"), "{only_alt:?}");
    let mostly_dense =
        counts(dir.path(), CaptionChoice::Weights(BTreeMap::from([("dense".into(), 0.8), ("alt".into(), 0.2)])), 40);
    let alt: usize = mostly_dense.iter().filter(|((_, s), _)| s == "alt").map(|(_, n)| n).sum();
    let all: usize = mostly_dense.values().sum();
    assert!((0.1..0.3).contains(&(alt as f64 / all as f64)), "{alt} of {all} alt-text");

    // Training with random captions: a run killed with SIGKILL part-way and resumed from its last
    // checkpoint logs the straight run's steps (the choice comes from the data generator, which the
    // checkpoint keeps).
    let steps = 150;
    let config = |name: &str| {
        let text = format!(
            "output_dir = \"{name}\"\nmax_steps = {steps}\nseed = 3\n[data]\ncaches = [{{ t5 = \"t5\", vae = \"vae\" }}]\n\
             batch_size = 2\ncaptions = \"random\"\nt5_model = \"{t5}\"\n[model]\nlayers = 2\nheads = 2\nhead_dim = 16\n\
             sample_size = 8\ncaption_channels = 16\n[optimizer]\nlr = 1e-3\n[checkpoints]\nevery = 7\n\
             [logging]\nprogress = false\n",
            t5 = common::caches::pipeline().display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let train = |cfg: &Path, resume: bool| {
        let mut c = Command::new(common::bin());
        c.arg("train").arg("--config").arg(cfg);
        if resume {
            c.arg("--resume");
        }
        ok(c.output().unwrap())
    };
    train(&config("straight"), false);
    let killed = config("killed");
    let mut child = Command::new(common::bin()).arg("train").arg("--config").arg(&killed).spawn().unwrap();
    let start = std::time::Instant::now();
    let logged = || std::fs::read_to_string(dir.path().join("killed/log.jsonl")).map_or(0, |t| t.lines().count());
    while logged() < 30 {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "the run did not get to step 30");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "killed before the end");
    assert!(logged() < steps as usize, "killed part-way");
    train(&killed, true);
    let log = |name: &str| -> Vec<(u64, f64, f64)> {
        std::fs::read_to_string(dir.path().join(name).join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap())
            })
            .collect()
    };
    let (a, b) = (log("straight"), log("killed"));
    assert_eq!(a.len(), steps as usize);
    assert_eq!(a, b, "the resumed run continues the straight run's caption choice");
}

#[test]
fn a_cache_of_other_captions_is_refused_naming_what_changed_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let vlm = VlmServer::start(Expect::answering(MODEL));
    ingested(dir.path());
    captioned(dir.path(), &vlm, "Describe sample {key} in detail", 1, "captions");
    captioned(dir.path(), &vlm, "Describe sample {key} briefly", 1, "captions-brief");
    ok(cache_t5(dir.path(), "captions", &[]));
    let refused = cache_t5(dir.path(), "captions-brief", &[]);
    assert!(!refused.status.success(), "a cache of other captions is refused");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("`prompts`") && err.contains("briefly") && err.contains("in detail"), "{err}");
    assert!(!err.contains("fingerprint"), "what changed, not two hashes: {err}");
}
