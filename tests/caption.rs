//! `pixforge caption`: the openai backend against a loopback server that checks each request's shape
//! and injects faults (500s, 429 with Retry-After, a hang past the timeout, malformed JSON), a killed
//! run resumed without loss or duplicates, caption QC, and the candle backend on the tiny LLaVA.

mod common;

use common::caches::{opts, source};
use common::vlm::{Expect, Fault, VlmServer};
use pixforge::caption::{Backend, CaptionConfig};
use pixforge::shards::captions::read_captions;
use polars::prelude::SerReader;
use std::collections::HashMap;

fn frame(path: &std::path::Path) -> polars::prelude::DataFrame {
    polars::prelude::ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap()
}

fn strs(df: &polars::prelude::DataFrame, col: &str) -> Vec<Option<String>> {
    let c = df.column(col).unwrap().str().unwrap().clone();
    (0..df.height()).map(|i| c.get(i).map(str::to_string)).collect()
}

fn texts(df: &polars::prelude::DataFrame, col: &str) -> Vec<String> {
    strs(df, col).into_iter().map(Option::unwrap).collect()
}

fn u32s(df: &polars::prelude::DataFrame, col: &str) -> Vec<Option<u32>> {
    let c = df.column(col).unwrap().u32().unwrap().clone();
    (0..df.height()).map(|i| c.get(i)).collect()
}

fn openai_config(srv: &VlmServer) -> CaptionConfig {
    CaptionConfig {
        backend: Backend::Openai,
        model: "llava-hf/llava-1.5-7b-hf".into(),
        endpoint: Some(format!("{}/v1", srv.base)),
        prompts: vec!["Describe sample {key} in a very detailed manner".into()],
        timeout: 1.0,
        retries: 3,
        backoff: 0.05,
        max_retry_after: 5.0,
        concurrency: 4,
        ..CaptionConfig::default()
    }
}

fn expect(faults: HashMap<String, Fault>) -> Expect {
    Expect { model: "llava-hf/llava-1.5-7b-hf".into(), temperature: 0.2, api_key: None, latency_ms: 20, faults }
}

/// A server that fails every first request changes nothing but `latency_ms` and `attempts`: the
/// seed sent (and recorded) comes from the key, prompt, caption index and QC retry, never from HTTP
/// attempts; a QC retry's seed is the one its caption was made with.
#[test]
fn transient_errors_change_only_latency_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    let keys = ["000000", "000001", "000002", "010000", "010001", "010002"];
    let run = |fail_first: bool, out: &std::path::Path| {
        let mut faults: HashMap<String, Fault> =
            keys.iter().filter(|_| fail_first).map(|k| (k.to_string(), Fault::Error500(1))).collect();
        faults.insert("000001".into(), Fault::RefuseOnce);
        let srv = VlmServer::start(expect(faults));
        let mut cfg = openai_config(&srv);
        cfg.qc_retries = 1;
        pixforge::caption::run(&cfg, &opts(&src, out)).unwrap();
        if fail_first {
            assert_eq!(srv.requests("000000"), 2, "the first request failed and was retried");
        }
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(false, &a);
    run(true, &b);
    for shard in ["00000", "00001"] {
        let name = format!("{shard}.captions.parquet");
        let (fa, fb) = (frame(&a.join(&name)), frame(&b.join(&name)));
        let without = |df: &polars::prelude::DataFrame| df.drop_many(["latency_ms", "attempts"]);
        assert_eq!(without(&fa), without(&fb), "{shard}: the captions and their provenance");
        let (ua, ub) = (u32s(&fa, "attempts"), u32s(&fb, "attempts"));
        assert_ne!(ua, ub, "{shard}: the retries are counted");
    }
    let df = frame(&b.join("00000.captions.parquet"));
    let seed = pixforge::caption::caption_seed(CaptionConfig::default().seed, "000001", 0, 0, 1);
    assert_eq!(df.column("seed").unwrap().u64().unwrap().get(1), Some(seed), "the QC retry's seed");
    let caption = strs(&df, "caption")[1].clone().unwrap();
    assert!(caption.contains(&format!("(seed {seed})")), "{caption}");
}

#[test]
fn every_sample_ends_with_a_caption_or_a_recorded_error() {
    let faults = HashMap::from([
        ("000000".to_string(), Fault::Error500(2)),
        ("000001".to_string(), Fault::TooMany(1)),
        ("000002".to_string(), Fault::Malformed),
        ("010000".to_string(), Fault::Hang(2500)),
        ("010001".to_string(), Fault::Always500),
    ]);
    let srv = VlmServer::start(expect(faults));
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("captions"));
    source(&src);
    let stats = pixforge::caption::run(&openai_config(&srv), &opts(&src, &out)).unwrap();
    assert_eq!((stats.shards_done, stats.samples, stats.successes, stats.failed), (2, 6, 4, 2), "{stats:?}");
    let log = srv.log.lock().unwrap();
    assert!(log.violations.is_empty(), "malformed requests: {:?}", log.violations);
    // 429: the retry waited for Retry-After (1 s), not the 50 ms backoff.
    let t = &log.times["000001"];
    assert!(t[1].duration_since(t[0]).as_secs_f64() >= 0.95, "Retry-After not honoured");
    assert_eq!(log.requests["000000"], 3);
    assert_eq!(log.requests["010001"], 4, "1 attempt + 3 retries");
    drop(log);

    let df = frame(&out.join("00000.captions.parquet"));
    for col in [
        "key",
        "caption",
        "prompt_id",
        "prompt",
        "model",
        "backend",
        "temperature",
        "seed",
        "max_tokens",
        "n_tokens",
        "finish_reason",
        "latency_ms",
        "qc_flags",
        "status",
        "error",
        "attempts",
        "alt",
    ] {
        assert!(df.column(col).is_ok(), "no column {col}");
    }
    let rows = read_captions(&out.join("00000.captions.parquet")).unwrap();
    assert_eq!(rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["000000", "000001", "000002"]);
    for r in &rows {
        let (key, caption, status) = (&r.key, &r.caption, &r.status);
        assert_eq!(status, "success");
        assert!(caption.as_deref().unwrap().contains(&format!("sample {key}")), "{caption:?}");
    }
    let attempts = df.column("attempts").unwrap().u32().unwrap().get(0);
    assert_eq!(attempts, Some(3), "two 500s, then the caption");
    assert_eq!(df.column("backend").unwrap().str().unwrap().get(0), Some("openai"));
    assert_eq!(
        df.column("prompt").unwrap().str().unwrap().get(1),
        Some("Describe sample 000001 in a very detailed manner")
    );
    assert_eq!(df.column("finish_reason").unwrap().str().unwrap().get(0), Some("stop"));
    let alt = df.column("alt").unwrap().str().unwrap().get(0).unwrap().to_string();
    assert!(!alt.is_empty(), "the source caption is kept beside the new one");

    let rows = read_captions(&out.join("00001.captions.parquet")).unwrap();
    let by_key: HashMap<_, _> = rows.iter().map(|r| (r.key.clone(), r.clone())).collect();
    assert_eq!(by_key["010000"].status, "success", "the hung request was retried after the timeout");
    let df1 = frame(&out.join("00001.captions.parquet"));
    let errors = strs(&df1, "error");
    assert!(
        errors[1].as_deref().unwrap().contains("HTTP 500")
            && errors[1].as_deref().unwrap().contains("after 4 attempts"),
        "{errors:?}"
    );
    assert!(errors[2].as_deref().unwrap().contains("cannot read the image"), "{errors:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("00001_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["details"]["captions"], 1);
    assert_eq!(stats["details"]["caption_failures"], 2);
    assert!(!out.join("00001.captions.journal.jsonl").exists(), "the journal goes once the shard is done");

    // A rerun does nothing.
    let again = pixforge::caption::run(&openai_config(&srv), &opts(&src, &out)).unwrap();
    assert_eq!((again.shards_done, again.shards_skipped), (0, 2));
}

#[test]
fn qc_flags_retries_and_strips() {
    let faults = HashMap::from([("000000".to_string(), Fault::RefuseOnce), ("000001".to_string(), Fault::Boilerplate)]);
    let srv = VlmServer::start(expect(faults));
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("captions"));
    source(&src);
    let cfg = CaptionConfig { qc_retries: 1, strip_boilerplate: true, captions_per_image: 2, ..openai_config(&srv) };
    pixforge::caption::run(&cfg, &opts(&src, &out)).unwrap();
    let df = frame(&out.join("00000.captions.parquet"));
    assert_eq!(df.height(), 6, "two captions per image");
    let keys = texts(&df, "key");
    assert_eq!(keys, ["000000", "000000", "000001", "000001", "000002", "000002"]);
    let caps = texts(&df, "caption");
    let flags = texts(&df, "qc_flags");
    let attempts: Vec<u32> = u32s(&df, "attempts").into_iter().map(Option::unwrap).collect();
    let seed_col = df.column("seed").unwrap().u64().unwrap().clone();
    let seeds: Vec<u64> = (0..df.height()).map(|i| seed_col.get(i).unwrap()).collect();
    // The refusal was asked again once (a new seed) and the second answer kept.
    assert!(!caps[0].starts_with("I'm sorry") && flags[0].is_empty(), "{caps:?} {flags:?}");
    assert_eq!(attempts[0] + attempts[1], 3, "one of the two captions needed a second request");
    assert_ne!(seeds[0], seeds[1], "each caption of an image has its own seed");
    // Boilerplate stripped, still flagged.
    assert!(caps[2].starts_with("Sample 000001, a red barn"), "{}", caps[2]);
    assert_eq!(flags[2], "boilerplate");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("00000_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["details"]["qc"]["boilerplate"], 2);
    assert_eq!(stats["details"]["qc"]["refusal"], 0);
}

#[test]
fn a_killed_run_resumes_without_loss_or_duplicates() {
    let srv = VlmServer::start(Expect { latency_ms: 150, ..expect(HashMap::new()) });
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("captions"));
    std::fs::create_dir_all(&src).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("{i:06}")).collect();
    let mut b = tar::Builder::new(std::fs::File::create(src.join("00000.tar")).unwrap());
    for (i, k) in keys.iter().enumerate() {
        let png = common::caches::png(24, 20, i as u32);
        let mut h = tar::Header::new_ustar();
        h.set_size(png.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{k}.png"), png.as_slice()).unwrap();
    }
    b.finish().unwrap();
    std::fs::write(src.join("00000_stats.json"), "{\"count\": 40}").unwrap();
    let args = |out: &std::path::Path| {
        let mut c = std::process::Command::new(common::bin());
        c.args(["caption", "--backend", "openai", "--model", "llava-hf/llava-1.5-7b-hf", "--endpoint", &srv.base])
            .args([
                "--prompt",
                "Describe sample {key} in a very detailed manner",
                "--concurrency",
                "4",
                "--no-progress",
            ])
            .arg("--input")
            .arg(&src)
            .arg("--out")
            .arg(out);
        c
    };
    let mut child = args(&out).stdout(std::process::Stdio::null()).spawn().unwrap();
    let journal = out.join("00000.captions.journal.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&journal).map(|s| s.lines().count()).unwrap_or(0) < 12 {
        assert!(t0.elapsed().as_secs() < 60, "the run made no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("00000_stats.json").exists(), "killed before the shard finished");
    let kept: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert!(kept.len() >= 12 && kept.len() < 40, "{}", kept.len());

    // The dead client's requests finish on the server before the rerun starts counting.
    while srv.log.lock().unwrap().in_flight > 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    srv.log.lock().unwrap().max_in_flight = 0;
    let status = args(&out).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let rows = read_captions(&out.join("00000.captions.parquet")).unwrap();
    let got: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(got, keys.iter().map(String::as_str).collect::<Vec<_>>(), "each key once, in order");
    assert!(rows.iter().all(|r| r.status == "success" && r.caption.is_some()));
    for k in &kept {
        assert_eq!(srv.requests(k), 1, "{k} was captioned before the kill and must not be asked again");
    }
    let max = srv.log.lock().unwrap().max_in_flight;
    assert_eq!(max, 4, "--concurrency requests in flight, no more");
}

#[test]
fn candle_backend_captions_with_the_tiny_llava() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("captions"));
    source(&src);
    let model = common::fixtures().join("golden/llava_tiny");
    let cfg = CaptionConfig {
        model: model.to_string_lossy().into_owned(),
        max_tokens: 8,
        temperature: 0.0,
        prompts: vec!["paper".into(), "with-alt".into()],
        ..CaptionConfig::default()
    };
    let stats = pixforge::caption::run(&cfg, &opts(&src, &out)).unwrap();
    assert_eq!((stats.shards_done, stats.samples, stats.successes, stats.failed), (2, 6, 5, 1), "{stats:?}");
    let df = frame(&out.join("00001.captions.parquet"));
    assert_eq!(df.height(), 6, "two prompts per image");
    let ids = texts(&df, "prompt_id");
    // 010001 has no alt-text: `with-alt` falls back to the paper's prompt.
    assert_eq!(ids, ["paper", "with-alt", "paper", "paper", "paper", "with-alt"]);
    let tokens = u32s(&df, "n_tokens");
    assert!(tokens[..4].iter().all(|t| t.is_some_and(|t| (1..=8).contains(&t))), "{tokens:?}");
    let backend = texts(&df, "backend");
    assert!(backend.iter().all(|b| *b == "candle"));
    // Greedy captions are reproducible: a second run elsewhere writes the same ones.
    let out2 = dir.path().join("again");
    pixforge::caption::run(&cfg, &opts(&src, &out2)).unwrap();
    assert_eq!(
        read_captions(&out.join("00000.captions.parquet")).unwrap(),
        read_captions(&out2.join("00000.captions.parquet")).unwrap()
    );
    // LLaVA-1.6 (tiled images of different token counts) through the same stage.
    let next = CaptionConfig {
        model: common::fixtures().join("golden/llava_next_tiny").to_string_lossy().into_owned(),
        ..cfg.clone()
    };
    let s = pixforge::caption::run(&next, &opts(&src, &dir.path().join("next"))).unwrap();
    assert_eq!((s.successes, s.failed), (5, 1));
    // Another prompt set is another caption set: refused in the same folder.
    let other = CaptionConfig { prompts: vec!["paper".into()], ..cfg };
    let e = pixforge::caption::run(&other, &opts(&src, &out)).unwrap_err().to_string();
    assert!(e.contains("made from other inputs"), "{e}");
}

/// A captioning endpoint nothing listens on stops the run before the first shard, naming the
/// address, instead of each caption's retries; nothing is written for any shard.
#[test]
fn a_dead_endpoint_stops_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source(&src);
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}/v1");
    let out = dir.path().join("captions");
    let start = std::time::Instant::now();
    let o = std::process::Command::new(common::bin())
        .args(["caption", "--backend", "openai", "--model", "llava-hf/llava-1.5-7b-hf", "--retries", "5"])
        .args(["--endpoint", &endpoint, "--no-progress", "--input"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("cannot reach the captioning server at") && err.contains(&endpoint), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "took {:?}", start.elapsed());
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    assert!(written.iter().all(|n| !n.ends_with("_stats.json") && !n.ends_with(".captions.parquet")), "{written:?}");
}
