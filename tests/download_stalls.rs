//! No stall at shard ends: the next shard's rows are fetched while the current one waits for its
//! slowest download, and a host that stopped answering is given up after `--max-host-timeouts`
//! timeouts in a row instead of holding the shard for its whole queue (the server's log shows both).

mod common;

use common::server::Server;
use pixforge::ingest::{self, IngestConfig, RunOptions};
use pixforge::shards::{read_records, Record, Status};
use std::path::Path;
use std::time::Duration;

fn config(meta: std::path::PathBuf) -> IngestConfig {
    let mut cfg = common::loopback_laion_config(meta);
    cfg.curation.samples_per_shard = 2;
    cfg.download.retries = 0;
    cfg
}

fn ingest_urls(dir: &Path, urls: &[String], cfg: impl FnOnce(&mut IngestConfig)) -> Vec<Record> {
    let meta = dir.join("meta.jsonl");
    let lines: Vec<String> =
        urls.iter().map(|u| serde_json::json!({"url": u, "caption": "a photo"}).to_string()).collect();
    std::fs::write(&meta, lines.join("\n")).unwrap();
    let mut c = config(meta);
    cfg(&mut c);
    let out = dir.join("out");
    let mut opts = RunOptions::new(&out);
    opts.progress = false;
    ingest::run(&c, &opts).unwrap();
    pixforge::shards::done_shards(&out)
        .unwrap()
        .into_iter()
        .flat_map(|s| read_records(&out.join(format!("{s:05}.parquet"))).unwrap())
        .collect()
}

#[test]
fn the_next_shard_is_fetched_while_a_slow_download_finishes_this_one() {
    let srv = Server::start(common::data().join("images"));
    let dir = tempfile::tempdir().unwrap();
    let paths = ["/delay/rocket.jpg", "/img/camera.png", "/img/chelsea.png", "/img/coffee.png"];
    let urls: Vec<String> = paths.iter().map(|p| srv.url(p)).collect();
    let recs = ingest_urls(dir.path(), &urls, |_| {});
    assert_eq!(recs.len(), 4);
    assert!(recs.iter().all(|r| r.status == Some(Status::Success)), "{recs:?}");
    // Shard 0 waits 1.5 s for its first row; shard 1's rows are requested in that time.
    let slow = srv.hits("/delay/rocket.jpg")[0];
    for next in ["/img/chelsea.png", "/img/coffee.png"] {
        let at = srv.hits(next)[0];
        assert!(at < slow + Duration::from_millis(1000), "{next} requested {:?} after the slow row", at - slow);
    }
}

#[test]
fn a_host_that_stopped_answering_is_given_up() {
    let srv = Server::start(common::data().join("images"));
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = (0..30).map(|i| srv.url(&format!("/hang/{i}"))).collect();
    let recs = ingest_urls(dir.path(), &urls, |c| {
        c.curation.samples_per_shard = 30;
        c.download.per_host_concurrency = 2;
        c.download.read_timeout = 0.3;
        c.download.total_timeout = 0.5;
        c.download.max_host_timeouts = 4;
    });
    assert!(recs.iter().all(|r| r.status == Some(Status::FailedToDownload)));
    let timed_out = recs.iter().filter(|r| r.error_message.as_deref() == Some("timed out")).count();
    let skipped: Vec<&Record> = recs
        .iter()
        .filter(|r| r.error_message.as_deref().is_some_and(|m| m.starts_with("host skipped: 127.0.0.1 timed out on 4")))
        .collect();
    assert_eq!(timed_out + skipped.len(), 30, "{recs:?}");
    assert!(skipped[0].error_message.as_deref().unwrap().contains("--retry-failed"));
    let requested = (0..30).filter(|i| !srv.hits(&format!("/hang/{i}")).is_empty()).count();
    assert!(requested <= 4 + 2, "{requested} requests reached the host after it stopped answering");
    assert_eq!(requested, timed_out);
}
