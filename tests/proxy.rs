//! Proxies from the environment: downloads and captioning requests go through `HTTP_PROXY` (a real
//! forwarding proxy on loopback logs every request), `NO_PROXY` hosts and loopback endpoints go
//! direct, and the private-address guard still refuses a private destination before anything is
//! sent to the proxy.

mod common;

use common::proxy::Proxy;
use common::server::Server;
use common::vlm::{Expect, VlmServer};
use pixforge::shards::{read_records, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// A pixforge command with exactly these proxy variables.
fn pixforge(proxy: &Proxy, no_proxy: &str) -> Command {
    let mut c = Command::new(common::bin());
    for v in
        ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"]
    {
        c.env_remove(v);
    }
    c.env("HTTP_PROXY", &proxy.url).env("NO_PROXY", no_proxy);
    c
}

#[test]
fn downloads_go_through_the_proxy_except_no_proxy_hosts_and_private_destinations() {
    let images = Server::start(common::data().join("images"));
    let proxy = Proxy::start(HashMap::from([("images.example".to_string(), addr(&images.base))]));
    let dir = tempfile::tempdir().unwrap();
    let urls = dir.path().join("urls.txt");
    let proxied = "http://images.example/img/rocket.jpg";
    std::fs::write(&urls, format!("{proxied}\nhttp://10.1.2.3/img/rocket.jpg\nhttp://direct.example/img/rocket.jpg\n"))
        .unwrap();
    let out = dir.path().join("out");
    let o = pixforge(&proxy, "direct.example")
        .args(["ingest", "laion", "--caption-col", "", "--retries", "0", "--no-progress", "--out"])
        .arg(&out)
        .arg(&urls)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = read_records(&out.join("00000.parquet")).unwrap();
    let by_url: HashMap<&str, &pixforge::shards::Record> = recs.iter().map(|r| (r.source.as_str(), r)).collect();
    assert_eq!(by_url[proxied].status, Some(Status::Success), "{:?}", by_url[proxied]);
    let private = by_url["http://10.1.2.3/img/rocket.jpg"];
    assert!(private.error_message.as_deref().unwrap().contains("refused private address"), "{private:?}");
    let direct = by_url["http://direct.example/img/rocket.jpg"];
    assert_eq!(direct.status, Some(Status::FailedToDownload), "{direct:?}");
    // The host's opt-out files are read through the proxy too, before the image.
    let mut through = proxy.requests();
    assert_eq!(through.pop().as_deref(), Some(proxied), "the image last: {through:?}");
    through.sort();
    let opt_outs = ["http://images.example/.well-known/tdmrep.json", "http://images.example/robots.txt"];
    assert_eq!(through, opt_outs, "only the proxied host reached the proxy");
    assert_eq!(images.hits("/img/rocket.jpg").len(), 1, "and through it the server");
}

#[test]
fn captioning_requests_go_through_the_proxy_and_loopback_endpoints_go_direct() {
    let model = "llava-hf/llava-1.5-7b-hf";
    let vlm = VlmServer::start(Expect::answering(model));
    let proxy = Proxy::start(HashMap::from([("vlm.example".to_string(), addr(&vlm.base))]));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::caches::source(&src);
    let run = |endpoint: &str, out: &str| {
        let o = pixforge(&proxy, "")
            .args(["caption", "--backend", "openai", "--model", model, "--endpoint", endpoint, "--no-progress"])
            .args(["--prompt", "Describe sample {key} in a very detailed manner", "--input"])
            .arg(&src)
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run("http://vlm.example/v1", "through-proxy");
    let through = proxy.requests();
    assert_eq!(through.len(), 6, "the probe, then one request per captionable image: {through:?}");
    assert_eq!(through[0], "http://vlm.example/v1/models", "the server probed first");
    assert!(through[1..].iter().all(|u| u == "http://vlm.example/v1/chat/completions"), "{through:?}");
    assert_eq!(vlm.requests("000000"), 1);
    run(&format!("{}/v1", vlm.base), "direct");
    assert_eq!(proxy.requests().len(), 6, "a loopback endpoint never goes through the proxy");
    assert_eq!(vlm.requests("000000"), 2);
    assert!(vlm.log.lock().unwrap().violations.is_empty());
}
