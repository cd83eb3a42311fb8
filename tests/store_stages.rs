//! Every stage with its folders in an object store, against a real S3-compatible server on loopback
//! (s3s-fs, with signature checking): ingest → caption (openai backend, loopback server) → cache t5
//! (from the dense captions) and vae → train a few steps, once with every folder in the bucket and
//! once on local disk. The caches and the checkpoints are the same bytes; the captions the same
//! text; a rerun of each stage over the bucket finds its shards done; a resumed training run picks
//! its newest checkpoint up from the bucket.

mod common;
#[path = "common/s3.rs"]
mod s3;

use common::vlm::{Expect, VlmServer};
use s3::S3Server;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

const MODEL: &str = "llava-hf/llava-1.5-7b-hf";

fn pixforge(server: &S3Server) -> Command {
    let mut cmd = Command::new(common::bin());
    server.env(&mut cmd);
    cmd
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Folder names of the chain under `root` (a folder or `s3://bucket/prefix`).
fn at(root: &str, name: &str) -> String {
    format!("{root}/{name}")
}

/// Runs the whole chain with every folder under `root`; returns each stage's stdout.
fn chain(server: &S3Server, vlm: &VlmServer, photos: &Path, vae: &Path, config_dir: &Path, root: &str) -> Vec<String> {
    let mut said = Vec::new();
    said.push(ok(pixforge(server)
        .args(["ingest", "folder", "--samples-per-shard", "3", "--image-size", "64", "--no-progress", "--out"])
        .arg(at(root, "shards"))
        .arg(photos)
        .output()
        .unwrap()));
    said.push(ok(pixforge(server)
        .args(["caption", "--backend", "openai", "--model", MODEL, "--no-progress", "--endpoint"])
        .arg(format!("{}/v1", vlm.base))
        .args(["--prompt", "Describe sample {key} in a very detailed manner", "--input"])
        .arg(at(root, "shards"))
        .arg("--out")
        .arg(at(root, "captions"))
        .output()
        .unwrap()));
    said.push(ok(pixforge(server)
        .args(["cache", "t5", "--no-progress", "--model"])
        .arg(common::caches::pipeline())
        .arg("--captions")
        .arg(at(root, "captions"))
        .arg("--input")
        .arg(at(root, "shards"))
        .arg("--out")
        .arg(at(root, "t5"))
        .output()
        .unwrap()));
    said.push(ok(pixforge(server)
        .args(["cache", "vae", "--resolution", "64", "--no-progress", "--model"])
        .arg(vae)
        .arg("--input")
        .arg(at(root, "shards"))
        .arg("--out")
        .arg(at(root, "vae"))
        .output()
        .unwrap()));
    let config = train_config(config_dir, root, 4);
    said.push(ok(pixforge(server).arg("train").arg("--config").arg(&config).output().unwrap()));
    said
}

/// A training config in `dir` reading the caches under `root` and writing `root/run`.
fn train_config(dir: &Path, root: &str, max_steps: u64) -> PathBuf {
    let name = if root.starts_with("s3://") { "bucket" } else { "local" };
    let text = format!(
        r#"output_dir = "{run}"
max_steps = {max_steps}
seed = 7
[data]
caches = [{{ t5 = "{t5}", vae = "{vae}" }}]
batch_size = 2
t5_model = "{model}"
[model]
layers = 2
heads = 2
head_dim = 16
sample_size = 8
caption_channels = 16
[optimizer]
lr = 1e-3
[checkpoints]
every = 2
keep_last = 1
[logging]
progress = false
every = 2
"#,
        run = at(root, "run"),
        t5 = at(root, "t5"),
        vae = at(root, "vae"),
        model = common::caches::pipeline().display()
    );
    let path = dir.join(format!("{name}-{max_steps}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The files under `dir` at any depth, by path relative to it.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files of `files` whose names end with one of `endings`.
fn only(files: &BTreeMap<String, Vec<u8>>, endings: &[&str]) -> BTreeMap<String, Vec<u8>> {
    files.iter().filter(|(n, _)| endings.iter().any(|e| n.ends_with(e))).map(|(n, b)| (n.clone(), b.clone())).collect()
}

/// The first caption of each sample in a caption folder.
fn captions(dir: &Path) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for name in tree(dir).keys().filter(|n| n.ends_with(pixforge::shards::captions::CAPTIONS_SUFFIX)) {
        let path = dir.join(name);
        all.extend(pixforge::shards::captions::first_captions(&path).unwrap());
    }
    all
}

/// A store, a captioning server, and in a new folder the demo's photos and a tiny VAE.
fn servers_and_inputs() -> (S3Server, VlmServer, tempfile::TempDir, PathBuf, PathBuf) {
    let server = S3Server::start("data");
    let vlm = VlmServer::start(Expect::answering(MODEL));
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    pixforge::demo::write_inputs(&photos).unwrap();
    let vae = common::caches::tiny_vae(dir.path());
    (server, vlm, dir, photos, vae)
}

#[test]
fn the_whole_chain_in_a_bucket_makes_what_it_makes_on_local_disk() {
    let (server, vlm, dir, photos, vae) = servers_and_inputs();
    let local_root = dir.path().join("local");
    let local = local_root.to_str().unwrap();
    chain(&server, &vlm, &photos, &vae, dir.path(), local);
    let said = chain(&server, &vlm, &photos, &vae, dir.path(), "s3://data/chain");
    let bucket = server.root.join("data/chain");

    let (here, there) = (tree(&local_root), tree(&bucket));
    let features = [".safetensors", ".index.json"];
    for stage in ["t5/", "vae/"] {
        let pick = |t: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
            only(t, &features).into_iter().filter(|(n, _)| n.starts_with(stage)).collect()
        };
        assert!(pick(&here).len() >= 4, "{stage}: two shards' tensors and indexes: {:?}", here.keys());
        assert_eq!(pick(&there), pick(&here), "{stage} cache: the same bytes in the bucket");
    }
    assert!(!captions(&local_root.join("captions")).is_empty());
    assert_eq!(captions(&bucket.join("captions")), captions(&local_root.join("captions")));
    for shard in ["00000", "00001"] {
        for stage in ["captions", "t5", "vae"] {
            let stats = bucket.join(stage).join(format!("{shard}_stats.json"));
            let index = bucket.join(stage).join(format!("{shard}.index.json"));
            let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
            assert!(modified(&stats) >= modified(&index), "{stage}/{shard}: the stats object is written last");
        }
    }
    // The newest checkpoint only (keep_last = 1), the same weights and optimizer state.
    let ckpt = |t: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        t.iter().filter(|(n, _)| n.starts_with("run/checkpoints/")).map(|(n, b)| (n.clone(), b.clone())).collect()
    };
    let in_bucket = ckpt(&there);
    let names: Vec<&String> = in_bucket.keys().collect();
    assert!(names.iter().all(|n| n.starts_with("run/checkpoints/step_0000004/")), "{names:?}");
    assert!(in_bucket.contains_key("run/checkpoints/step_0000004/state.json"), "{names:?}");
    assert_eq!(
        only(&in_bucket, &[".safetensors"]),
        only(&ckpt(&here), &[".safetensors"]),
        "the checkpoint's tensors are the local run's"
    );
    assert!(there.contains_key("run/log.jsonl") && there.contains_key("run/loss.svg"), "{:?}", there.keys());
    assert!(said[4].contains("s3://data/chain/run/checkpoints/step_0000004"), "{}", said[4]);

    // Reruns over the bucket find every shard done.
    let cached = |out: &str| -> String {
        ok(pixforge(&server)
            .args(["cache", "vae", "--json", "--resolution", "64", "--no-progress", "--model"])
            .arg(&vae)
            .args(["--input", "s3://data/chain/shards", "--out", out])
            .output()
            .unwrap())
    };
    let again: serde_json::Value = serde_json::from_str(&cached("s3://data/chain/vae")).unwrap();
    assert_eq!((again["shards_done"].as_u64(), again["shards_skipped"].as_u64()), (Some(0), Some(2)), "{again}");
    let vae_files =
        |t: &BTreeMap<String, Vec<u8>>| only(t, &features).into_iter().filter(|(n, _)| n.starts_with("vae/")).count();
    assert_eq!(vae_files(&tree(&bucket)), vae_files(&there));

    // Server errors and throttling on every third request: retried and counted, the same cache.
    server.faults.every.store(3, Ordering::SeqCst);
    let before = server.faults.faulted.load(Ordering::SeqCst);
    let flaky: serde_json::Value = serde_json::from_str(&cached("s3://data/chain/vae-flaky")).unwrap();
    server.faults.every.store(0, Ordering::SeqCst);
    let faulted = server.faults.faulted.load(Ordering::SeqCst) - before;
    assert!(faulted > 2, "faults were injected");
    assert_eq!(flaky["store_retries"].as_u64(), Some(faulted as u64), "each retried failure counted: {flaky}");
    let vae_cache = |d: &Path| only(&s3::files(d), &features);
    assert_eq!(vae_cache(&bucket.join("vae-flaky")), vae_cache(&bucket.join("vae")));

    // A store that does not answer fails the stage at its start, naming the prefix; once it is
    // back, the rerun makes the same cache.
    server.faults.down.store(true, Ordering::SeqCst);
    let o = pixforge(&server)
        .env("PIXFORGE_STORE_RETRIES", "1")
        .env("PIXFORGE_STORE_RETRY_TIMEOUT", "1")
        .args(["cache", "vae", "--resolution", "64", "--no-progress", "--model"])
        .arg(&vae)
        .args(["--input", "s3://data/chain/shards", "--out", "s3://data/chain/vae-away"])
        .output()
        .unwrap();
    server.faults.down.store(false, Ordering::SeqCst);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("s3://data/chain/") && err.contains("503"), "{err}");
    cached("s3://data/chain/vae-away");
    assert_eq!(vae_cache(&bucket.join("vae-away")), vae_cache(&bucket.join("vae")));

    // Whole-dataset stages: a repeat search over the bucket's dataset writes its selection there,
    // which a cache takes from there; a density report reads the bucket's captions and is written
    // there.
    let said = ok(pixforge(&server)
        .args(["dedup", "--phash", "s3://data/chain/shards", "--out", "s3://data/chain/kept.parquet"])
        .output()
        .unwrap());
    assert!(bucket.join("kept.parquet").is_file() && bucket.join("kept.repeats.parquet").is_file(), "{said}");
    let kept = pixforge::shards::selection::read_selection(&bucket.join("kept.parquet")).unwrap();
    assert_eq!(kept.len(), 6, "six distinct photos: {kept:?}");
    let selected: serde_json::Value = serde_json::from_str(&ok(pixforge(&server)
        .args(["cache", "vae", "--json", "--resolution", "64", "--no-progress", "--model"])
        .arg(&vae)
        .args(["--input", "s3://data/chain/shards", "--out", "s3://data/chain/vae-kept"])
        .args(["--selection", "s3://data/chain/kept.parquet"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(selected["successes"].as_u64(), Some(6), "{selected}");
    ok(pixforge(&server)
        .args([
            "density",
            "--no-progress",
            "--input",
            "dense=s3://data/chain/captions",
            "--out",
            "s3://data/chain/density",
        ])
        .output()
        .unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bucket.join("density/report.json")).unwrap()).unwrap();
    assert_eq!(report["inputs"][0]["name"], "dense", "{report}");
    assert!(report["inputs"][0]["captions"].as_u64().unwrap_or(0) >= 6, "{}", report["inputs"][0]);

    // A resumed run continues from the bucket's checkpoint to the local run's numbers.
    let longer = train_config(dir.path(), "s3://data/chain", 6);
    ok(pixforge(&server).args(["train", "--resume", "--config"]).arg(&longer).output().unwrap());
    let local_longer = train_config(dir.path(), local, 6);
    ok(pixforge(&server).args(["train", "--resume", "--config"]).arg(&local_longer).output().unwrap());
    let (here, there) = (tree(&local_root.join("run")), tree(&bucket.join("run")));
    assert!(there.contains_key("checkpoints/step_0000006/model.safetensors"), "{:?}", there.keys());
    assert_eq!(
        only(&there, &["model.safetensors", "ema.safetensors", "optimizer.safetensors"]),
        only(&here, &["model.safetensors", "ema.safetensors", "optimizer.safetensors"])
    );
}

/// A pipeline whose `out` is a bucket prefix: ingest (a local folder), repeat search, caption
/// (openai backend), density, the caches, training and sampling, everything written under the
/// prefix; a rerun finds every stage current.
#[test]
fn a_pipeline_writes_every_stage_into_a_bucket() {
    let (server, vlm, dir, photos, vae) = servers_and_inputs();
    std::fs::write(dir.path().join("prompts.txt"), "a cup of coffee\n").unwrap();
    let t5 = common::caches::pipeline();
    let text = format!(
        r#"out = "s3://data/pipe"
[[ingest]]
name = "photos"
source = "folder"
inputs = ["{photos}"]
[ingest.image]
image_size = 64
[ingest.curation]
samples_per_shard = 3
[repeats]
[caption]
backend = "openai"
model = "{MODEL}"
endpoint = "{endpoint}/v1"
[density]
t5_tokenizer = "{t5}/tokenizer/tokenizer.json"
[cache.t5]
model = "{t5}"
[cache.vae]
model = "{vae}"
resolution = 64
[train]
max_steps = 4
seed = 7
[train.data]
batch_size = 2
t5_model = "{t5}"
[train.model]
layers = 2
heads = 2
head_dim = 16
sample_size = 8
caption_channels = 16
[train.checkpoints]
every = 2
keep_last = 1
[train.logging]
every = 2
progress = false
[sample]
prompts = "{prompts}"
t5 = "{t5}"
vae = "{vae}"
size = "64x64"
steps = 2
"#,
        photos = photos.display(),
        endpoint = vlm.base,
        t5 = t5.display(),
        vae = vae.display(),
        prompts = dir.path().join("prompts.txt").display(),
    );
    let file = dir.path().join("pipe.toml");
    std::fs::write(&file, text).unwrap();
    let run = || ok(pixforge(&server).arg("run").arg(&file).output().unwrap());
    let first = run();
    let bucket = server.root.join("data/pipe");
    let there = tree(&bucket);
    for f in [
        "photos/shards/00001_stats.json",
        "photos/captions/00001.captions.parquet",
        "photos/latents/t5/00001.safetensors",
        "photos/latents/vae/00001_stats.json",
        "density/report.json",
        "train/log.jsonl",
        "train/checkpoints/step_0000004/state.json",
        "samples/0000.png",
    ] {
        assert!(there.contains_key(f), "{f}: {:?}\n{first}", there.keys().collect::<Vec<_>>());
    }
    assert!(there.keys().any(|k| k == "photos/selection/repeats.parquet"), "{:?}", there.keys());
    let again = run();
    assert!(again.contains("nothing to do: every stage's outputs are current"), "{again}");
    assert_eq!(tree(&bucket).len(), there.len(), "the rerun wrote nothing new");
}
