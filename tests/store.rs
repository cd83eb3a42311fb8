//! Datasets in an object store, against a real S3-compatible server on loopback (s3s-fs, with
//! signature checking): `ingest --out s3://bucket/prefix` writes the same shard objects, byte for
//! byte, as the same run into a local folder, each shard's stats object last; a rerun lists the
//! prefix and does nothing; server errors and throttling (500 InternalError, 503 SlowDown) on some
//! requests are retried, counted and lose nothing; a bucket that does not exist fails the run at
//! its start, naming the URL.

mod common;
#[path = "common/s3.rs"]
mod s3;

use s3::S3Server;
use std::path::{Path, PathBuf};
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

/// The demo's photos in `dir/input`, ingested into the local folder `dir/local` (two a shard).
fn photos_ingested_locally(server: &S3Server, dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("input");
    pixforge::demo::write_inputs(&input).unwrap();
    let local = dir.join("local");
    let o = ingest(server, &input, local.to_str().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (input, local)
}

/// `pixforge ingest webdataset URL --out out`, reaching `server`.
fn ingest_webdataset(server: &S3Server, url: &str, out: &Path) -> std::process::Output {
    let mut cmd = Command::new(common::bin());
    server.env(&mut cmd);
    cmd.args(["ingest", "webdataset", url, "--image-size", "64", "--no-progress", "--out"]).arg(out).output().unwrap()
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
    let (input, local) = photos_ingested_locally(&server, dir.path());

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

    // Server errors and throttling on every third request: retried with backoff, nothing lost.
    server.faults.every.store(3, Ordering::SeqCst);
    let o = ingest(&server, &input, "s3://data/datasets/flaky");
    server.faults.every.store(0, Ordering::SeqCst);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let faulted = server.faults.faulted.load(Ordering::SeqCst);
    assert!(faulted > 3, "faults were injected");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("store: {faulted} transient failure(s) retried")), "{said}");
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

/// Every shard whose stats object is in the bucket has the local run's tar and parquet.
fn listed_shards_are_complete(bucket: &Path, local: &std::collections::BTreeMap<String, Vec<u8>>) -> usize {
    let there = s3::files(bucket);
    let mut complete = 0;
    for name in there.keys().filter(|n| n.ends_with("_stats.json")) {
        let stem = name.trim_end_matches("_stats.json");
        for ext in ["tar", "parquet"] {
            let file = format!("{stem}.{ext}");
            assert_eq!(there.get(&file), local.get(&file), "{file}: listed by its stats object, so complete");
        }
        complete += 1;
    }
    complete
}

/// `pixforge ingest folder` with one image a shard, reaching `server`, not waited for.
fn spawn_ingest(server: &S3Server, input: &Path, out: &str, env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(common::bin());
    server.env(&mut cmd).envs(env.iter().copied());
    cmd.args(["ingest", "folder", "--samples-per-shard", "1", "--image-size", "64", "--no-progress", "--out", out])
        .arg(input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most a minute) until `path` exists.
fn wait_for(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_store_that_goes_away_or_a_killed_upload_loses_nothing_on_the_rerun() {
    let server = S3Server::start("data");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    pixforge::demo::write_inputs(&input).unwrap();
    let local = dir.path().join("local");
    let o = spawn_ingest(&server, &input, local.to_str().unwrap(), &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let here = shard_files(&local);
    assert_eq!(here.len(), 12);

    // The store goes away after the first shard: the run fails naming an object and the store's
    // answer, and leaves no stats object for a shard it could not finish.
    let bucket = server.root.join("data/away");
    let quick = [("PIXFORGE_STORE_RETRIES", "2"), ("PIXFORGE_STORE_RETRY_TIMEOUT", "1")];
    let child = spawn_ingest(&server, &input, "s3://data/away", &quick);
    wait_for(&bucket.join("00000_stats.json"));
    server.faults.down.store(true, Ordering::SeqCst);
    let o = child.wait_with_output().unwrap();
    server.faults.down.store(false, Ordering::SeqCst);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the run went on past the store going away");
    assert!(err.contains("s3://data/away/0000") && err.contains("503"), "{err}");
    let listed = listed_shards_are_complete(&bucket, &here);
    assert!((1..6).contains(&listed), "{listed} shards listed");
    let o = spawn_ingest(&server, &input, "s3://data/away", &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(shard_files(&bucket), here, "the rerun completes the dataset");

    // SIGKILL while shards are being uploaded: every listed shard is complete, the rerun finishes
    // the dataset identically.
    let bucket = server.root.join("data/killed");
    let mut child = spawn_ingest(&server, &input, "s3://data/killed", &[]);
    wait_for(&bucket.join("00001.tar"));
    child.kill().unwrap();
    child.wait().unwrap();
    listed_shards_are_complete(&bucket, &here);
    let o = spawn_ingest(&server, &input, "s3://data/killed", &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(shard_files(&bucket), here, "the rerun completes the dataset identically");
}

#[test]
fn inputs_in_a_bucket_are_read_like_local_ones() {
    let server = S3Server::start("data");
    let dir = tempfile::tempdir().unwrap();
    let (input, local) = photos_ingested_locally(&server, dir.path());
    // The same images as objects under a prefix.
    let objects = server.root.join("data/photos");
    std::fs::create_dir_all(&objects).unwrap();
    for e in std::fs::read_dir(&input).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, objects.join(p.file_name().unwrap())).unwrap();
    }
    let o = ingest(&server, Path::new("s3://data/photos"), "s3://data/from-bucket");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(shard_files(&server.root.join("data/from-bucket")), shard_files(&local), "a prefix reads as a folder");

    // One object: a WebDataset tar written by the local run.
    std::fs::create_dir_all(server.root.join("data/wds")).unwrap();
    std::fs::copy(local.join("00001.tar"), server.root.join("data/wds/00001.tar")).unwrap();
    let out = dir.path().join("rewds");
    let o = ingest_webdataset(&server, "s3://data/wds/00001.tar", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = pixforge::shards::read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.status == Some(pixforge::shards::Status::Success)), "{recs:?}");

    let o = ingest_webdataset(&server, "s3://data/wds/missing.tar", &out);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("s3://data/wds/missing.tar: no object and no objects under it"), "{err}");
}

#[test]
fn an_input_on_a_web_server_is_read_from_its_url() {
    let server = S3Server::start("data");
    let dir = tempfile::tempdir().unwrap();
    let (_, local) = photos_ingested_locally(&server, dir.path());
    let tar = std::fs::read(local.join("00000.tar")).unwrap();
    let routes = std::collections::HashMap::from([(
        "/wds/00000.tar".to_string(),
        common::server::Route::ok("application/x-tar", tar),
    )]);
    let web = common::server::Server::with_routes(common::data().join("images"), routes);
    let out = dir.path().join("from-web");
    let o = ingest_webdataset(&server, &web.url("/wds/00000.tar"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = pixforge::shards::read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.status == Some(pixforge::shards::Status::Success)), "{recs:?}");
    assert_eq!(web.hits("/wds/00000.tar").len(), 1, "fetched once");
}
