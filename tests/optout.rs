//! Publishers' opt-outs against loopback servers that log every request: robots.txt and
//! `/.well-known/tdmrep.json` are read once per host before any image request, a disallowed or
//! reserved image is never requested (the server's log proves it), allowed ones are downloaded, the
//! `tdm-reservation` and `X-Robots-Tag: noml` headers refuse before the body, an unreachable opt-out
//! file disallows its host unless asked otherwise, and each refusal is its row's status and reason.

mod common;

use common::server::{Route, Server};
use pixforge::ingest::download::Unreachable;
use pixforge::ingest::{self, IngestConfig, RunOptions};
use pixforge::shards::{read_records, Record, Status};
use std::collections::HashMap;

const ROBOTS: &str = "# everyone else: nothing\nUser-agent: *\nDisallow: /\n\n\
User-agent: googlebot\nUser-agent: pixforge\nDisallow: /img/chelsea\nDisallow: /*.gif$\nAllow: /img/\n";

const TDMREP: &str = r#"[{"location": "/img/camera*", "tdm-reservation": 1, "tdm-policy": "https://rights.example/policy.json"},
 {"location": "/*", "tdm-reservation": 0}]"#;

/// A host publishing robots.txt and tdmrep.json, with an image answered with opt-out headers.
fn publishing_host() -> Server {
    let photo = std::fs::read(common::data_image("hubble_deep_field.jpg")).unwrap();
    let header_route = |name: &'static str, value: &str| Route {
        status: "200 OK",
        headers: vec![("Content-Type", "image/jpeg".into()), (name, value.to_string())],
        body: photo.clone(),
    };
    let routes = HashMap::from([
        ("/robots.txt".to_string(), Route::ok("text/plain", ROBOTS)),
        ("/.well-known/tdmrep.json".to_string(), Route::ok("application/json", TDMREP)),
        ("/img/tdm-header.jpg".to_string(), header_route("tdm-reservation", "1")),
        ("/img/noml.jpg".to_string(), header_route("X-Robots-Tag", "pixforge: noml")),
        ("/go/chelsea".to_string(), redirect("/img/chelsea.png")),
    ]);
    Server::with_routes(common::data().join("images"), routes)
}

/// A `302 Found` to `location`.
fn redirect(location: &str) -> Route {
    Route { status: "302 Found", headers: vec![("Location", location.to_string())], body: Vec::new() }
}

/// A host whose opt-out files answer 503 on every request.
fn failing_host() -> Server {
    let down = Route { status: "503 Service Unavailable", headers: vec![], body: b"down".to_vec() };
    let routes =
        HashMap::from([("/robots.txt".to_string(), down.clone()), ("/.well-known/tdmrep.json".to_string(), down)]);
    Server::with_routes(common::data().join("images"), routes)
}

fn config(meta: std::path::PathBuf) -> IngestConfig {
    let mut cfg = common::loopback_laion_config(meta);
    cfg.download.retries = 1;
    cfg.download.retry_backoff = 0.05;
    cfg.download.per_host_concurrency = 4;
    cfg
}

/// Ingests `urls` with `cfg` changed by `change`; the shard's rows by URL.
fn ingest_urls(urls: &[String], change: impl FnOnce(&mut IngestConfig)) -> HashMap<String, Record> {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.jsonl");
    let lines: Vec<String> =
        urls.iter().map(|u| serde_json::json!({"url": u, "caption": "a photo"}).to_string()).collect();
    std::fs::write(&meta, lines.join("\n")).unwrap();
    let mut cfg = config(meta);
    change(&mut cfg);
    let out = dir.path().join("out");
    let mut opts = RunOptions::new(&out);
    opts.progress = false;
    ingest::run(&cfg, &opts).unwrap();
    read_records(&out.join("00000.parquet")).unwrap().into_iter().map(|r| (r.source.clone(), r)).collect()
}

fn expect(rows: &HashMap<String, Record>, url: &str, status: Status, needle: &str) {
    let r = &rows[url];
    assert_eq!(r.status, Some(status), "{url}: {:?}", r.error_message);
    let msg = r.error_message.clone().unwrap_or_default();
    assert!(msg.contains(needle), "{url}: expected {needle:?} in {msg:?}");
}

#[test]
fn opted_out_images_are_never_requested_and_the_files_are_read_once_per_host() {
    let host = publishing_host();
    // A host without opt-out files, one of whose URLs redirects to a reserved image of the first.
    let away = HashMap::from([("/away".to_string(), redirect(&host.url("/img/camera.png")))]);
    let free = Server::with_routes(common::data().join("images"), away);
    let paths = [
        "/img/rocket.jpg",
        "/img/chelsea.png",
        "/img/camera.png",
        "/img/coffee.png",
        "/img/no_time_for_that_tiny.gif",
        "/img/tdm-header.jpg",
        "/img/noml.jpg",
        "/img/astronaut.png",
    ];
    let mut urls: Vec<String> = paths.iter().map(|p| host.url(p)).collect();
    urls.extend([free.url("/img/chelsea.png"), host.url("/go/chelsea"), free.url("/away")]);
    let rows = ingest_urls(&urls, |_| {});

    expect(&rows, &host.url("/img/rocket.jpg"), Status::Success, "");
    expect(&rows, &host.url("/img/coffee.png"), Status::Success, "");
    expect(&rows, &host.url("/img/astronaut.png"), Status::Success, "");
    let robots = "robots.txt (User-agent: pixforge, Disallow: /img/chelsea), checked before any request";
    expect(&rows, &host.url("/img/chelsea.png"), Status::FailedToDownload, robots);
    expect(&rows, &host.url("/img/no_time_for_that_tiny.gif"), Status::FailedToDownload, "Disallow: /*.gif$");
    let tdm = "rights reserved by ".to_string()
        + &host.base
        + "/.well-known/tdmrep.json (location /img/camera*, \
        policy https://rights.example/policy.json)";
    expect(&rows, &host.url("/img/camera.png"), Status::FailedToDownload, &tdm);
    expect(&rows, &host.url("/img/tdm-header.jpg"), Status::FailedToDownload, "tdm-reservation: 1");
    expect(&rows, &host.url("/img/noml.jpg"), Status::FailedToDownload, "X-Robots-Tag directive noml");
    expect(&rows, &free.url("/img/chelsea.png"), Status::Success, "");
    // Redirect targets are checked like the URLs they come from, before they are requested.
    expect(&rows, &host.url("/go/chelsea"), Status::FailedToDownload, robots);
    expect(&rows, &free.url("/away"), Status::FailedToDownload, &tdm);
    assert_eq!((host.hits("/go/chelsea").len(), free.hits("/away").len()), (1, 1));

    for never in ["/img/chelsea.png", "/img/camera.png", "/img/no_time_for_that_tiny.gif"] {
        assert!(host.hits(never).is_empty(), "{never} was requested although opted out");
    }
    for once in ["/img/rocket.jpg", "/img/coffee.png", "/img/tdm-header.jpg", "/img/noml.jpg"] {
        assert_eq!(host.hits(once).len(), 1, "{once}");
    }
    assert_eq!(host.hits("/robots.txt").len(), 1, "robots.txt read once for the host's 8 rows");
    assert_eq!(host.hits("/.well-known/tdmrep.json").len(), 1, "tdmrep.json read once");
    let first_image = host.hits("/img/rocket.jpg")[0];
    assert!(host.hits("/robots.txt")[0] < first_image, "robots.txt read before any image");
    assert_eq!(free.hits("/robots.txt").len(), 1, "a host without the files (404) allows everything");

    // Ignoring them is the user's choice: the opted-out images are then downloaded.
    let ignored = ingest_urls(&urls, |c| {
        c.download.ignore_robots_txt = true;
        c.download.ignore_tdmrep = true;
        c.download.ignore_robots_headers = true;
    });
    for p in paths {
        expect(&ignored, &host.url(p), Status::Success, "");
    }
    assert_eq!(host.hits("/robots.txt").len(), 1, "an ignored robots.txt is not read");
    assert_eq!(host.hits("/.well-known/tdmrep.json").len(), 1);
}

#[test]
fn an_unreachable_opt_out_file_disallows_its_host_unless_allowed() {
    let host = failing_host();
    let urls = vec![host.url("/img/rocket.jpg"), host.url("/img/coffee.png")];
    let rows = ingest_urls(&urls, |_| {});
    for u in &urls {
        expect(&rows, u, Status::FailedToDownload, "/robots.txt could not be read (HTTP 503 Service Unavailable");
        expect(&rows, u, Status::FailedToDownload, "--opt-outs-unreachable allow");
    }
    assert!(host.hits("/img/rocket.jpg").is_empty() && host.hits("/img/coffee.png").is_empty());
    assert_eq!(host.hits("/robots.txt").len(), 2, "one retry, then the answer is kept for the run");

    let allowed = ingest_urls(&urls, |c| c.download.opt_outs_unreachable = Unreachable::Allow);
    for u in &urls {
        expect(&allowed, u, Status::Success, "");
    }
}
