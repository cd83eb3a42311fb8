//! Workers sharing one output folder, as a SLURM array or an indexed Job starts them: `--worker 0/2`
//! and `--worker 1/2` started together, twenty times, for ingest and for `cache vae`, never fail and
//! give the one-worker dataset; a share started while another process runs it is refused, naming
//! that process.

mod common;

use common::caches::{png, source, tiny_vae};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TRIALS: usize = 20;

/// Every file of `dir` but the timing-bearing stats and the manifest (which names no worker but
/// is rewritten by each), by name.
fn contents(dir: &Path, skip: &[&str]) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            !skip.iter().any(|s| n.ends_with(s))
        })
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn both(start: &dyn Fn(&str) -> Command) -> [Output; 2] {
    let children: Vec<_> = ["0/2", "1/2"].iter().map(|w| start(w).spawn().unwrap()).collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    outs.try_into().unwrap()
}

fn check(outs: &[Output; 2], trial: usize) {
    for (w, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "trial {trial}, worker {w}/2: {}", String::from_utf8_lossy(&o.stderr));
    }
}

fn ingest_folder(input: &Path, out: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["ingest", "folder"]).arg(input).arg("--out").arg(out);
    c.args(["--samples-per-shard", "1", "--image-size", "32", "--no-progress"]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c
}

#[test]
fn ingest_workers_started_together_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..6 {
        std::fs::write(input.join(format!("{i}.png")), png(40 + i, 30, i)).unwrap();
    }
    let one = dir.path().join("one");
    let o = ingest_folder(&input, &one).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let skip = ["_stats.json", "manifest.json"];
    let want = contents(&one, &skip);
    assert_eq!(want.len(), 12, "six shards of a tar and a parquet: {:?}", want.keys());
    for trial in 0..TRIALS {
        let out = dir.path().join(format!("two{trial}"));
        let outs = both(&|w| {
            let mut c = ingest_folder(&input, &out);
            c.args(["--worker", w]);
            c
        });
        check(&outs, trial);
        assert_eq!(contents(&out, &skip), want, "trial {trial}: the two-worker dataset");
    }
}

fn cache_vae(model: &Path, src: &Path, out: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["cache", "vae", "--resolution", "32", "--no-progress", "--model"]).arg(model);
    c.arg("--input").arg(src).arg("--out").arg(out);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c
}

#[test]
fn vae_cache_workers_started_together_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let model = tiny_vae(dir.path());
    let one = dir.path().join("one");
    let o = cache_vae(&model, &src, &one).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let skip = ["_stats.json", "manifest.json"];
    let want = contents(&one, &skip);
    assert!(want.len() >= 2, "{:?}", want.keys());
    for trial in 0..TRIALS {
        let out: PathBuf = dir.path().join(format!("two{trial}"));
        let outs = both(&|w| {
            let mut c = cache_vae(&model, &src, &out);
            c.args(["--worker", w]);
            c
        });
        check(&outs, trial);
        assert_eq!(contents(&out, &skip), want, "trial {trial}: the two-worker cache");
    }
}

#[test]
fn a_share_already_running_is_refused_naming_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.png"), png(40, 30, 1)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Another live process holds share 1/2.
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    let lock = pixforge::shards::lock_path(&out, pixforge::shards::Worker { index: 1, count: 2 });
    std::fs::write(&lock, format!("{}\n", other.id())).unwrap();
    let o = ingest_folder(&input, &out).args(["--worker", "1/2"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a second run of a running share is refused");
    assert!(err.contains(&format!("already being run by process {}", other.id())) && err.contains("1/2"), "{err}");
    assert!(!out.join("00000.tar").exists() && !out.join("manifest.json").exists(), "nothing written");
    // The other share is free; once the holder is gone its share is taken over.
    let o = ingest_folder(&input, &out).args(["--worker", "0/2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    other.kill().unwrap();
    other.wait().unwrap();
    let o = ingest_folder(&input, &out).args(["--worker", "1/2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!lock.exists(), "released at the end");
}
