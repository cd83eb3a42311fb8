//! Datasets in an object store, against a real S3-compatible server on loopback (s3s-fs, with
//! signature checking): `ingest --out s3://bucket/prefix` writes the same shard objects, byte for
//! byte, as the same run into a local folder, each shard's stats object last; a rerun lists the
//! prefix and does nothing; throttling answers (503 SlowDown) on some requests are retried and
//! lose nothing; a bucket that does not exist fails the run at its start, naming the URL.

mod common;
#[path = "common/s3.rs"]
mod s3;

use s3::S3Server;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

fn ingest(server: &S3Server, input: &Path, out: &str) -> std::process::Output {
    let mut cmd = Command::new(common::bin());
    server.env(&mut cmd);
    cmd.args(["ingest", "folder", "--samples-per-shard", "2", "--image-size", "64", "--no-progress", "--out", out])
        .arg(input)
        .output()
        .unwrap()
}

/// The dataset's shard files (tar, parquet) by name; stats and manifest are checked apart (they hold
/// times and the output path).
fn shard_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    s3::files(dir).into_iter().filter(|(n, _)| n.ends_with(".tar") || n.ends_with(".parquet")).collect()
}

#[test]
fn ingest_into_a_bucket_writes_what_a_local_run_writes() {
    let server = S3Server::start("data");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    pixforge::demo::write_inputs(&input).unwrap();
    let local = dir.path().join("local");
    let o = ingest(&server, &input, local.to_str().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = ingest(&server, &input, "s3://data/datasets/photos");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bucket = server.root.join("data/datasets/photos");
    let (here, there) = (shard_files(&local), shard_files(&bucket));
    assert_eq!(here.len(), 6, "3 shards of 2: {:?}", here.keys().collect::<Vec<_>>());
    assert_eq!(there, here, "the bucket holds the local run's shard files, byte for byte");
    for shard in ["00000", "00001", "00002"] {
        let stats = bucket.join(format!("{shard}_stats.json"));
        assert!(stats.is_file(), "{shard}: its stats object");
        // Uploaded after its shard's tar and parquet.
        let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert!(modified(&stats) >= modified(&bucket.join(format!("{shard}.tar"))));
    }
    assert!(bucket.join("manifest.json").is_file());

    // A rerun lists the prefix and finds every shard done.
    let before = server.faults.requests.load(Ordering::SeqCst);
    let o = ingest(&server, &input, "s3://data/datasets/photos");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("shards: 0 written, 3 already done"), "{out}");
    assert!(server.faults.requests.load(Ordering::SeqCst) > before, "the rerun asked the store");
    assert_eq!(shard_files(&bucket), here);

    // Throttling on every third request: retried with backoff, nothing lost.
    server.faults.every.store(3, Ordering::SeqCst);
    let o = ingest(&server, &input, "s3://data/datasets/flaky");
    server.faults.every.store(0, Ordering::SeqCst);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(server.faults.faulted.load(Ordering::SeqCst) > 3, "faults were injected");
    assert_eq!(shard_files(&server.root.join("data/datasets/flaky")), here);
}

#[test]
fn a_bucket_that_does_not_exist_fails_the_run_at_its_start() {
    let server = S3Server::start("data");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    pixforge::demo::write_inputs(&input).unwrap();
    let o = ingest(&server, &input, "s3://no-such-bucket/photos");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("s3://no-such-bucket/photos: cannot list"), "{err}");
    assert!(err.contains("NoSuchBucket") || err.contains("not exist") || err.contains("404"), "{err}");
    assert_eq!(server.faults.faulted.load(Ordering::SeqCst), 0);
}
