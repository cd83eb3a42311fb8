//! The downloader against a loopback server with fault endpoints: every row ends with the right
//! status and message, nothing panics, and the shard completes.

mod common;

use common::server::Server;
use pixforge::ingest::{self, IngestConfig, RunOptions, SourceKind};
use pixforge::shards::{read_records, Record, Status, WdsReader};
use std::time::Duration;

fn config(meta: std::path::PathBuf, allow_private: bool) -> IngestConfig {
    let mut cfg = common::ingest_config(SourceKind::Laion, vec![meta]);
    cfg.laion.url_col = "url".into();
    cfg.laion.caption_col = "caption".into();
    cfg.laion.min_caption_chars = 3;
    cfg.image.image_size = 128;
    cfg.download.allow_private_addresses = allow_private;
    cfg.download.read_timeout = 1.0;
    cfg.download.total_timeout = 2.5;
    cfg.download.connect_timeout = 2.0;
    cfg.download.retries = 1;
    cfg.download.retry_backoff = 0.05;
    cfg.download.max_body_bytes = 8 << 20;
    cfg.download.max_redirects = 5;
    cfg
}

fn write_jsonl(path: &std::path::Path, rows: &[(String, &str)]) {
    let mut s = String::new();
    for (i, (url, caption)) in rows.iter().enumerate() {
        s.push_str(
            &serde_json::json!({"url": url, "caption": caption, "similarity": 0.3 + i as f64 / 100.0}).to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn expect(r: &Record, status: Status, needle: &str) {
    assert_eq!(r.status, Some(status), "{}: {:?}", r.source, r.error_message);
    if !needle.is_empty() {
        let msg = r.error_message.clone().unwrap_or_default();
        assert!(msg.contains(needle), "{}: expected {needle:?} in {msg:?}", r.source);
    }
}

#[test]
fn every_fault_ends_with_the_right_status() {
    let srv = Server::start(common::data().join("images"));
    let dir = tempfile::tempdir().unwrap();
    let paths = [
        "/img/chelsea.png",
        "/404",
        "/flaky/a",
        "/429/a",
        "/slow",
        "/truncated-body",
        "/text",
        "/huge-declared",
        "/huge-chunked",
        "/loop",
        "/noai",
        "/bomb.png",
        "/img/truncated.jpg",
        "/chain/3",
        "/chain/9",
        "/googlebot-only",
        "/img/palette_color.png",
        "/img/rocket.jpg",
        "/always-500",
    ];
    let mut rows: Vec<(String, &str)> = paths.iter().map(|p| (srv.url(p), "a caption")).collect();
    rows.push(("ftp://example.invalid/a.jpg".into(), "a caption"));
    rows.push((srv.url("/img/coffee.png"), ""));
    let meta = dir.path().join("meta.jsonl");
    write_jsonl(&meta, &rows);
    let out = dir.path().join("out");
    let mut opts = RunOptions::new(&out);
    opts.progress = false;
    let stats = ingest::run(&config(meta, true), &opts).unwrap();
    assert_eq!(stats.total.count, rows.len());

    let recs = read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(recs.len(), rows.len(), "one parquet row per input row");
    let by = |p: &str| recs.iter().find(|r| r.source == srv.url(p)).unwrap();
    expect(by("/img/chelsea.png"), Status::Success, "");
    expect(by("/404"), Status::FailedToDownload, "HTTP 404 Not Found");
    expect(by("/flaky/a"), Status::Success, "");
    assert_eq!(srv.hits("/flaky/a").len(), 2, "500 then success: one retry");
    expect(by("/429/a"), Status::Success, "");
    let h = srv.hits("/429/a");
    assert_eq!(h.len(), 2);
    assert!(h[1] - h[0] >= Duration::from_millis(950), "Retry-After: 1 honoured, waited {:?}", h[1] - h[0]);
    expect(by("/slow"), Status::FailedToDownload, "timed out");
    expect(by("/truncated-body"), Status::FailedToDownload, "truncated body");
    expect(by("/text"), Status::FailedToResize, "unknown image format");
    expect(by("/huge-declared"), Status::FailedToDownload, "Content-Length 4000000000 exceeds --max-body-bytes");
    expect(by("/huge-chunked"), Status::FailedToDownload, "more than --max-body-bytes");
    expect(by("/loop"), Status::FailedToDownload, "redirect");
    expect(by("/noai"), Status::FailedToDownload, "X-Robots-Tag directive noai");
    let noai_sent = srv.log.lock().unwrap().body_bytes_sent.get("/noai").copied().unwrap_or(0);
    assert!(noai_sent < 32 << 20, "the noai body must not be downloaded; server sent {noai_sent} bytes");
    expect(by("/bomb.png"), Status::FailedToResize, "60000x60000 = 3600000000 pixels exceeds --max-image-pixels");
    expect(by("/img/truncated.jpg"), Status::FailedToResize, "image decoding error");
    expect(by("/chain/3"), Status::Success, "");
    expect(by("/chain/9"), Status::FailedToDownload, "too many redirects");
    expect(by("/googlebot-only"), Status::Success, "");
    expect(by("/img/palette_color.png"), Status::Success, "");
    let chain_key = by("/chain/3").key.clone();
    expect(by("/img/rocket.jpg"), Status::Duplicate, &format!("duplicate: identical sha256 to {chain_key}"));
    expect(by("/always-500"), Status::FailedToDownload, "HTTP 503 Service Unavailable (after 2 attempts)");
    let ftp = recs.iter().find(|r| r.source.starts_with("ftp://")).unwrap();
    expect(ftp, Status::FailedToDownload, "unsupported URL scheme");
    expect(by("/img/coffee.png"), Status::Filtered, "--min-caption-chars 3");

    assert!(srv.log.lock().unwrap().user_agent.starts_with("pixforge/"), "honest User-Agent");
    let successes: Vec<&Record> = recs.iter().filter(|r| r.status == Some(Status::Success)).collect();
    let tar = WdsReader::open(&out.join("00000.tar")).unwrap();
    assert_eq!(tar.samples.len(), successes.len(), "only successes are in the tar");
    for s in &tar.samples {
        assert!(s.members.contains_key("jpg") && s.members.contains_key("txt") && s.members.contains_key("json"));
        let r = successes.iter().find(|r| r.key == s.key).unwrap();
        let jpg = tar.read(s, "jpg").unwrap().unwrap();
        assert_eq!(Some(pixforge::image::sha256_hex(&jpg)), r.sha256, "sha256 of the written bytes");
        assert_eq!(r.width.unwrap().min(r.height.unwrap()), 128);
    }
    assert!(out.join("00000_stats.json").exists());
    use polars::prelude::SerReader;
    let df =
        polars::prelude::ParquetReader::new(std::fs::File::open(out.join("00000.parquet")).unwrap()).finish().unwrap();
    assert!(df.column("similarity").is_ok(), "source columns are carried into the shard parquet");
}

#[test]
fn private_addresses_are_refused_by_default() {
    let srv = Server::start(common::data().join("images"));
    let dir = tempfile::tempdir().unwrap();
    let port = srv.base.rsplit(':').next().unwrap().to_string();
    let rows = vec![
        (srv.url("/img/chelsea.png"), "cat"),
        (format!("http://localhost:{port}/img/chelsea.png"), "cat"),
        (format!("http://[::1]:{port}/img/chelsea.png"), "cat"),
    ];
    let meta = dir.path().join("meta.jsonl");
    write_jsonl(&meta, &rows);
    let mut opts = RunOptions::new(dir.path().join("out"));
    opts.progress = false;
    ingest::run(&config(meta, false), &opts).unwrap();
    let recs = read_records(&dir.path().join("out/00000.parquet")).unwrap();
    for r in &recs {
        expect(r, Status::FailedToDownload, "refused private address");
        assert!(r.error_message.as_deref().unwrap().contains("--allow-private-addresses"));
    }
    assert!(srv.log.lock().unwrap().hits.is_empty(), "no request reached the server");
}

#[test]
fn retry_failed_reattempts_only_failed_rows() {
    let srv = Server::start(common::data().join("images"));
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        (srv.url("/img/chelsea.png"), "cat"),
        (srv.url("/flaky/r"), "astronaut"),
        (srv.url("/404"), "missing"),
        (srv.url("/img/rocket.jpg"), "rocket"),
    ];
    let meta = dir.path().join("meta.jsonl");
    write_jsonl(&meta, &rows);
    let mut cfg = config(meta, true);
    cfg.download.retries = 0;
    let out = dir.path().join("out");
    let mut opts = RunOptions::new(&out);
    opts.progress = false;
    ingest::run(&cfg, &opts).unwrap();
    let first = read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(first[1].status, Some(Status::FailedToDownload));
    let tar_before = WdsReader::open(&out.join("00000.tar")).unwrap();
    let chelsea_before = tar_before.read(&tar_before.samples[0], "jpg").unwrap().unwrap();

    // A plain rerun changes nothing: the shard is done.
    let again = ingest::run(&cfg, &opts).unwrap();
    assert_eq!(again.shards_skipped, 1);
    assert_eq!(srv.hits("/flaky/r").len(), 1);

    opts.retry_failed = true;
    let stats = ingest::run(&cfg, &opts).unwrap();
    assert_eq!(stats.total.successes, 3);
    let after = read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(after[1].status, Some(Status::Success), "{:?}", after[1].error_message);
    assert_eq!(after[0], first[0], "successful rows are kept as they were");
    assert_eq!(after[3], first[3]);
    assert_eq!(srv.hits("/img/chelsea.png").len(), 1, "successes are not downloaded again");
    assert_eq!(srv.hits("/404").len(), 2, "failed rows are retried");
    let tar = WdsReader::open(&out.join("00000.tar")).unwrap();
    assert_eq!(tar.samples.len(), 3);
    assert_eq!(tar.read(&tar.samples[0], "jpg").unwrap().unwrap(), chelsea_before);
    assert_eq!(tar.samples.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["000000000", "000000001", "000000003"]);
}
