//! The browser's benchmark (bench/browse.sh): a synthetic dataset of ingest-layout shards (parquet
//! rows with statuses, reasons, alt-text, sizes and a score column; tars of tiny thumbnails), and
//! the served pages timed over loopback HTTP against a server started in process.

use crate::browse::BrowseConfig;
use crate::image::{encode, EncodeFormat};
use crate::rng::Rng;
use crate::shards::{write_atomic, write_parquet_atomic, ShardLayout};
use polars::prelude::{Column, DataFrame};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

const NOUNS: &[&str] =
    &["dog", "cat", "car", "tree", "house", "beach", "mountain", "city", "flower", "bird", "boat", "table"];
const ADJECTIVES: &[&str] = &["red", "small", "old", "bright", "quiet", "wooden", "tall", "blue"];

/// Writes `count` synthetic rows as `shards` shards into `out`: 90% `success` (each with a 16×16
/// JPEG thumbnail in the shard tar when `thumbnails`), the rest failures with img2dataset-style
/// messages; alt-text of two to four nouns; an `aesthetic` score column. Returns the rows written.
pub fn write_dataset(out: &Path, count: usize, shards: usize, thumbnails: bool, seed: u64) -> anyhow::Result<usize> {
    std::fs::create_dir_all(out)?;
    let per_shard = count.div_ceil(shards.max(1));
    let layout = ShardLayout::new(per_shard);
    let tiles: Vec<Vec<u8>> = (0..16u8)
        .map(|c| {
            let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([c * 16, (x * 16) as u8, (y * 16) as u8]));
            encode(&img, EncodeFormat::Jpg, 80)
        })
        .collect::<Result<_, _>>()?;
    let mut rng = Rng::new(seed);
    let mut written = 0;
    for shard in 0..shards {
        let n = per_shard.min(count - written);
        if n == 0 {
            break;
        }
        let keys: Vec<String> = (0..n).map(|row| layout.key(shard, row)).collect();
        let (mut status, mut reason, mut alt) = (Vec::new(), Vec::new(), Vec::new());
        let (mut width, mut height, mut score) = (Vec::new(), Vec::new(), Vec::new());
        let mut dict: BTreeMap<String, u64> = BTreeMap::new();
        let mut tar = tar::Builder::new(Vec::new());
        for key in &keys {
            let u = rng.uniform();
            let (st, why) = match u {
                u if u < 0.90 => ("success", None),
                u if u < 0.94 => ("failed_to_download", Some(format!("HTTP 404 (https://example.com/{key}.jpg)"))),
                u if u < 0.97 => ("failed_to_resize", Some("image decoding error: not a supported image".to_string())),
                u if u < 0.99 => ("filtered", Some(format!("caption too short: {} characters", rng.below(5)))),
                _ => ("duplicate", Some(format!("duplicate: identical sha256 to {}", keys[0]))),
            };
            let words = 2 + rng.below(3);
            let text: Vec<String> = (0..words)
                .map(|_| format!("a {} {}", ADJECTIVES[rng.below(ADJECTIVES.len())], NOUNS[rng.below(NOUNS.len())]))
                .collect();
            alt.push(text.join(" and "));
            let class = why.as_deref().map(crate::shards::reason_class).unwrap_or_else(|| "success".into());
            *dict.entry(class).or_default() += 1;
            let ok = st == "success";
            status.push(st);
            reason.push(why);
            width.push(ok.then(|| 256 + 64 * rng.below(8) as i32));
            height.push(ok.then(|| 256 + 64 * rng.below(8) as i32));
            score.push(ok.then(|| (4.0 + 3.0 * rng.uniform()) as f32));
            if ok && thumbnails {
                let bytes = &tiles[rng.below(tiles.len())];
                let mut h = tar::Header::new_ustar();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                tar.append_data(&mut h, format!("{key}.jpg"), bytes.as_slice())?;
            }
        }
        let name = layout.name(shard);
        let count_of = |s: &str| status.iter().filter(|x| **x == s).count();
        let stats = serde_json::json!({
            "count": n, "successes": count_of("success"), "failed_to_download": count_of("failed_to_download"),
            "failed_to_resize": count_of("failed_to_resize"), "filtered": count_of("filtered"),
            "duplicate": count_of("duplicate"), "status_dict": dict,
        });
        let mut df = DataFrame::new(
            n,
            vec![
                Column::new(
                    "url".into(),
                    keys.iter().map(|k| format!("https://example.com/{k}.jpg")).collect::<Vec<_>>(),
                ),
                Column::new("caption".into(), alt),
                Column::new("key".into(), keys),
                Column::new("status".into(), status),
                Column::new("error_message".into(), reason),
                Column::new("width".into(), width),
                Column::new("height".into(), height),
                Column::new("aesthetic".into(), score),
            ],
        )?;
        if thumbnails {
            write_atomic(&out.join(format!("{name}.tar")), &tar.into_inner()?)?;
        }
        write_parquet_atomic(&mut df, &out.join(format!("{name}.parquet")))?;
        write_atomic(&out.join(format!("{name}_stats.json")), stats.to_string().as_bytes())?;
        written += n;
    }
    Ok(written)
}

/// A raw loopback HTTP GET: status and body length.
fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, raw[head_end..].to_vec()))
}

struct Timer {
    addr: std::net::SocketAddr,
    requests: Vec<(String, String, f64, u16, usize)>,
}

impl Timer {
    /// Times one GET; returns its body.
    fn page(&mut self, what: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let t = Instant::now();
        let (status, body) = get(self.addr, path)?;
        self.requests.push((what.to_string(), path.to_string(), t.elapsed().as_secs_f64(), status, body.len()));
        Ok(body)
    }

    /// Times GETs of `paths`, one after another, as one entry.
    fn all(&mut self, what: &str, paths: &[String]) -> anyhow::Result<()> {
        let t = Instant::now();
        let (mut bytes, mut worst) = (0, 200);
        for p in paths {
            let (status, body) = get(self.addr, p)?;
            bytes += body.len();
            worst = worst.max(status);
        }
        let path = paths.first().cloned().unwrap_or_default();
        self.requests.push((what.to_string(), path, t.elapsed().as_secs_f64(), worst, bytes));
        Ok(())
    }
}

/// Seconds of each request of the benchmark (and the dataset's size).
#[derive(Debug, serde::Serialize)]
pub struct BrowseTimings {
    /// Rows in the dataset.
    pub rows: usize,
    /// Shards.
    pub shards: usize,
    /// Process start of the server to listening (the dataset opened from its stats).
    pub open_s: f64,
    /// Each request: (what, path, seconds, HTTP status, bytes).
    pub requests: Vec<(String, String, f64, u16, usize)>,
}

/// Serves `dataset` in process and times the pages a curator opens, in order: the first page and
/// its thumbnails, a deep page and its thumbnails, a status filter (every shard read: cold), its
/// next page (warm), a sort by `sort`, a reason filter, two sample pages, the failure reasons, a
/// filter by `noun` (cold) and by another noun (warm).
pub fn time_pages(dataset: &Path, sort: &str, noun: &str) -> anyhow::Result<BrowseTimings> {
    let cfg = BrowseConfig {
        dataset: dataset.to_path_buf(),
        host: "127.0.0.1".into(),
        port: 0,
        captions: None,
        scores: None,
        page_size: 60,
        static_out: None,
        limit: 0,
        query: Default::default(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let sent = tx.clone();
        if let Err(e) = crate::browse::serve(&cfg, move |ds, addr| {
            let _ = sent.send(Ok((addr, ds.total_rows(), ds.parts.iter().map(|p| p.shards.len()).sum::<usize>())));
        }) {
            let _ = tx.send(Err(e));
        }
    });
    let (addr, rows, shards) = rx.recv()??;
    let open_s = start.elapsed().as_secs_f64();
    let mut t = Timer { addr, requests: Vec::new() };
    let first = String::from_utf8(t.page("first page", "/")?)?;
    let images: Vec<String> = first
        .match_indices("src=\"/image/")
        .map(|(i, _)| first[i + 5..].split('"').next().unwrap_or("").to_string())
        .collect();
    t.all(&format!("first page's {} thumbnails, one after another", images.len()), &images)?;
    let deep = (rows / 60 / 2).max(1);
    let page = String::from_utf8(t.page("deep page", &format!("/?page={deep}"))?)?;
    let images: Vec<String> = page
        .match_indices("src=\"/image/")
        .map(|(i, _)| page[i + 5..].split('"').next().unwrap_or("").to_string())
        .collect();
    t.all(&format!("deep page's {} thumbnails (its shard tar indexed)", images.len()), &images)?;
    t.page("status filter (cold: every shard read)", "/?status=failed_to_download")?;
    t.page("status filter, page 2 (warm)", "/?status=failed_to_download&page=2")?;
    t.page("sort by score (warm)", &format!("/?sort={sort}"))?;
    t.page("sort by score, deep page", &format!("/?sort={sort}&page={deep}"))?;
    let page = String::from_utf8(t.page("reason filter", "/?reason=HTTP%20404")?)?;
    let samples: Vec<String> = page
        .match_indices("href=\"/sample/")
        .map(|(i, _)| page[i + 6..].split('"').next().unwrap_or("").to_string())
        .collect();
    for (i, href) in samples.iter().take(2).enumerate() {
        t.page(if i == 0 { "sample page (the tagger loaded)" } else { "another sample page" }, href)?;
    }
    t.page("failure reasons", "/reasons")?;
    t.page("noun filter (cold: the tagger over every alt-text)", &format!("/?noun={noun}"))?;
    t.page("another noun filter (warm: the shards' noun index)", "/?noun=cats")?;
    let requests = t.requests;
    Ok(BrowseTimings { rows, shards, open_s, requests })
}
