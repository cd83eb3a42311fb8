//! `pixforge browse`: the server over a pipeline's dataset (the bundled photos plus two broken
//! files, re-captioned, scored with the tiny CLIP towers, with a density report) checked in a real
//! headless Chromium — the grid, a filter by status, a sort by score, a sample page with both
//! captions and their nouns marked, no console errors — and over HTTP: paths outside the dataset
//! refused, a corrupt shard named while the rest opens, and `--static`'s files.

mod common;
#[path = "common/s3.rs"]
#[allow(dead_code)]
mod s3;

use common::chromium::Browser;
use common::Browse;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The dataset every test reads: `run/` of a pipeline (ingest of the bundled photos with a
/// non-image and a cut JPEG among them, captions by the tiny LLaVA, the density report), then the
/// tiny CLIP towers' scores of it (`run/scores`: a head's score, alt-text and dense-caption
/// similarities, and a mismatch flag below a similarity of 2, so every caption is flagged).
fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let ort = common::onnxruntime();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        pixforge::demo::write_inputs(&input).unwrap();
        std::fs::write(input.join("notes.jpg"), b"this is text, not a JPEG").unwrap();
        let coffee = pixforge::demo::IMAGES.iter().find(|(n, _)| *n == "coffee.jpg").unwrap().1;
        std::fs::write(input.join("zz_cut.jpg"), &coffee[..coffee.len() / 3]).unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "out = \"run\"\n[models]\ntiny = [\"llava\"]\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n\
             [ingest.curation]\nsamples_per_shard = 4\n\
             [caption]\nbackend = \"candle\"\nmodel = \"{out}/models/llava\"\nmax_tokens = 16\n[density]\n",
        )
        .unwrap();
        let o =
            Command::new(common::bin()).args(["run", "--no-progress"]).arg(dir.path().join("p.toml")).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let golden = common::fixtures().join("golden");
        let run = dir.path().join("run");
        let o = Command::new(common::bin())
            .env("ORT_DYLIB_PATH", &ort)
            .args(["score", "clip", "--no-progress", "--size", "32", "--crop", "32", "--batch-size", "4", "--tower"])
            .arg(golden.join("clip_tiny.onnx"))
            .arg("--head")
            .arg(golden.join("clip_tiny_head.onnx"))
            .arg("--text-tower")
            .arg(golden.join("clip_text_tiny/text_model.onnx"))
            .arg("--captions")
            .arg(run.join("captions"))
            .args(["--mismatch-below", "2"])
            .arg("--input")
            .arg(run.join("shards"))
            .arg("--out")
            .arg(run.join("scores"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir
    })
    .path()
}

fn serve(dir: &Path) -> Browse {
    Browse::start(dir, |_| {})
}

fn get(base: &str, path: &str) -> (u16, String) {
    common::http_get(base, path)
}

fn screenshots() -> Option<PathBuf> {
    std::env::var_os("PIXFORGE_SCREENSHOTS").map(PathBuf::from)
}

#[test]
fn the_grid_filters_sorts_and_opens_samples_in_a_real_browser() {
    let server = serve(&dataset().join("run"));
    let mut b = Browser::launch();
    let base = server.base.clone();
    b.goto(&format!("{base}/"));
    let keys = |b: &mut Browser| -> Vec<String> {
        serde_json::from_value(b.eval("[...document.querySelectorAll('#grid .tile')].map(t => t.dataset.key)")).unwrap()
    };
    let statuses = |b: &mut Browser| -> Vec<String> {
        serde_json::from_value(b.eval("[...document.querySelectorAll('#grid .tile')].map(t => t.dataset.status)"))
            .unwrap()
    };
    // Every row of the dataset: the six photos and the two broken files, with their images loaded.
    let all = keys(&mut b);
    assert_eq!(all.len(), 8, "{all:?}");
    let loaded = b.eval(
        "Promise.all([...document.images].map(i => i.complete ? i : new Promise(r => { i.onload = i.onerror = r; })))\
         .then(() => [...document.images].filter(i => i.naturalWidth > 0).length)",
    );
    assert_eq!(loaded, 6, "every photo's thumbnail decodes");
    if let Some(dir) = screenshots() {
        std::fs::write(dir.join("browse-grid.png"), b.screenshot()).unwrap();
    }
    // A filter by status, chosen in the form: only the two broken files, with their reason.
    b.navigate_by("const s = document.querySelector('#f-status'); s.value = 'failed_to_resize'; s.dispatchEvent(new Event('change'));");
    let failed = keys(&mut b);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(statuses(&mut b).iter().all(|s| s == "failed_to_resize"));
    let reasons = b.eval("[...document.querySelectorAll('#grid .tile .r')].map(r => r.textContent)").to_string();
    assert!(reasons.contains("not a decodable image") || reasons.contains("truncated"), "{reasons}");
    // A sort by the head's score, largest first: the grid's order is the scores', not the shards'.
    b.goto(&format!("{base}/"));
    b.navigate_by("const s = document.querySelector('#f-sort'); s.value = 'clip_tiny_head'; s.dispatchEvent(new Event('change'));");
    let sorted = keys(&mut b);
    let values: Vec<f64> = serde_json::from_value::<Vec<String>>(
        b.eval("[...document.querySelectorAll('#grid .tile .v')].map(v => v.dataset.sort)"),
    )
    .unwrap()
    .iter()
    .filter_map(|v| v.parse().ok())
    .collect();
    assert_eq!(values.len(), 6, "the six photos have a score");
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    assert_ne!(sorted[..6], all[..6], "the sort changes the order");
    assert_eq!(
        &sorted[6..].iter().collect::<std::collections::BTreeSet<_>>(),
        &failed.iter().collect(),
        "unscored rows last"
    );
    // The sample page of the best-scored photo: its image, the alt-text and the dense caption, both
    // with nouns marked, the caption's prompt, model, QC flag and similarity.
    b.navigate_by("document.querySelector('#grid .tile').click()");
    assert_eq!(b.eval("document.querySelector('#key').textContent"), serde_json::json!(sorted[0]));
    assert_eq!(b.eval("document.querySelector('#image').naturalWidth > 0"), serde_json::json!(true));
    let alt = b.eval("document.querySelector('#alt .text').textContent").as_str().unwrap().to_string();
    let caption = pixforge::demo::CAPTIONS.lines().find_map(|l| l.split_once('\t').map(|(_, c)| c.to_string()));
    assert!(!alt.is_empty() && caption.is_some());
    let marked = b.eval("[...document.querySelectorAll('#alt mark')].map(m => m.textContent)");
    assert!(!marked.as_array().unwrap().is_empty(), "the alt-text's nouns are marked: {alt}");
    let dense = b.eval("document.querySelector('#dense-0').textContent").as_str().unwrap().to_string();
    assert!(dense.contains("llava") && dense.contains("mismatch") && dense.contains("similarity"), "{dense}");
    if let Some(dir) = screenshots() {
        std::fs::write(dir.join("browse-sample.png"), b.screenshot()).unwrap();
    }
    // The failure reasons page and the density report open from the header.
    b.navigate_by("document.querySelector('header a[href=\"/reasons\"]').click()");
    assert_eq!(b.eval("document.querySelectorAll('.reason #grid .tile').length"), serde_json::json!(2));
    b.navigate_by("document.querySelector('#density-link').click()");
    assert!(b.eval("document.body.textContent").as_str().unwrap().contains("Noun"));
    let errors = b.errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// The noun filter finds nouns as the density tagger does: `camera` is the camera photo's and not
/// the cameraman's, `galaxies` and `galaxy` are one noun.
#[test]
fn a_noun_filter_keeps_the_rows_that_use_the_noun() {
    let server = serve(dataset());
    let mut key_of = std::collections::HashMap::new();
    for shard in ["00000", "00001"] {
        for r in pixforge::shards::read_records(&dataset().join(format!("run/shards/{shard}.parquet"))).unwrap() {
            key_of.insert(r.source.clone(), r.key.clone());
        }
    }
    for (noun, file) in
        [("camera", "camera.jpg"), ("galaxy", "hubble_deep_field.jpg"), ("Galaxies", "hubble_deep_field.jpg")]
    {
        let (status, page) = get(&server.base, &format!("/?noun={noun}"));
        assert_eq!(status, 200);
        let shown: Vec<&str> = page.match_indices("data-key=\"").map(|(i, _)| &page[i + 10..i + 16]).collect();
        assert_eq!(shown, [key_of[file].as_str()], "{noun}");
    }
}

#[test]
fn paths_outside_the_dataset_are_refused() {
    let server = serve(dataset());
    for path in ["/files/../../../../etc/passwd", "/files/..%2F..%2F..%2Fetc%2Fpasswd", "/files/%2Fetc%2Fpasswd"] {
        let (status, body) = get(&server.base, path);
        assert!(status == 403 || status == 404, "{path}: {status} {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    let (status, body) = get(&server.base, "/files/run/density/report.html");
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(&server.base, "/image/0/00000/..%2F..%2Fetc");
    assert_eq!(status, 404);
}

#[test]
fn a_dataset_with_a_corrupt_shard_opens_and_names_it() {
    let copy = tempfile::tempdir().unwrap();
    let shards = copy.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    for e in std::fs::read_dir(dataset().join("run/shards")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), shards.join(e.file_name())).unwrap();
    }
    let bytes = std::fs::read(shards.join("00001.parquet")).unwrap();
    std::fs::write(shards.join("00001.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let server = serve(&shards);
    assert!(server.first_line.contains("8 rows in 2 shards"), "{}", server.first_line);
    let (status, page) = get(&server.base, "/");
    assert_eq!(status, 200);
    assert!(page.contains("shard 00001 cannot be shown") && page.contains("00001.parquet"), "{page}");
    assert_eq!(page.matches("class=\"tile\"").count(), 4, "the readable shard's rows are shown");
}

#[test]
fn static_pages_of_a_selection_stand_alone() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(common::bin())
        .args(["browse", "--status", "success", "--sort", "clip_tiny_head", "--page-size", "4", "--static"])
        .arg(out.path())
        .arg(dataset().join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index = std::fs::read_to_string(out.path().join("index.html")).unwrap();
    assert!(index.contains("page 1 of 2") && index.contains("href=\"page-2.html\""), "{index}");
    let samples: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("sample-"))
        .collect();
    assert_eq!(samples.len(), 6);
    assert_eq!(std::fs::read_dir(out.path().join("img")).unwrap().count(), 6);
    // Every local link and image of every page names a file that was written; nothing is fetched
    // from elsewhere.
    for e in std::fs::read_dir(out.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "html") && p.file_name().unwrap() != "density.html" {
            let html = std::fs::read_to_string(&p).unwrap();
            for attr in ["href=\"", "src=\""] {
                for (i, _) in html.match_indices(attr) {
                    let target = &html[i + attr.len()..];
                    let target = &target[..target.find('"').unwrap()];
                    if target.starts_with("data:") {
                        continue;
                    }
                    assert!(!target.contains("//") && out.path().join(target).is_file(), "{}: {target}", p.display());
                }
            }
        }
    }
}

/// A dataset in an object store (the loopback S3 server): the same grid, sample page and images,
/// the shard files fetched into a cache folder only when a page needs them.
#[test]
fn a_dataset_in_an_object_store_is_browsed_the_same() {
    let server = s3::S3Server::start("data");
    let prefix = server.root.join("data/runs/run");
    let copy = |from: &Path, to: &Path| {
        let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
        while let Some((a, b)) = stack.pop() {
            std::fs::create_dir_all(&b).unwrap();
            for e in std::fs::read_dir(&a).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().to_string();
                if e.file_type().unwrap().is_dir() {
                    if name != "models" {
                        stack.push((e.path(), b.join(&name)));
                    }
                } else {
                    std::fs::copy(e.path(), b.join(&name)).unwrap();
                }
            }
        }
    };
    copy(&dataset().join("run"), &prefix);
    let cache = tempfile::tempdir().unwrap();
    let remote = Browse::start(Path::new("s3://data/runs/run"), |c| {
        server.env(c).env("XDG_CACHE_HOME", cache.path());
    });
    assert!(remote.first_line.contains("8 rows in 2 shards"), "{}", remote.first_line);
    let cached = |ext: &str| {
        let mut n = 0;
        let mut stack = vec![cache.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(ext) {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(
        (cached("_stats.json") > 0, cached(".tar"), cached(".parquet")),
        (true, 0, 0),
        "opening fetches the stats only"
    );
    let local = serve(&dataset().join("run"));
    let (status, remote_grid) = get(&remote.base, "/?sort=clip_tiny_head");
    assert_eq!(status, 200);
    let (_, local_grid) = get(&local.base, "/?sort=clip_tiny_head");
    let tiles = |page: &str| {
        page.match_indices("data-key=\"").map(|(i, _)| page[i + 10..i + 16].to_string()).collect::<Vec<_>>()
    };
    assert_eq!(tiles(&remote_grid), tiles(&local_grid));
    let key = &tiles(&remote_grid)[0];
    let shard = if key.as_str() < "000010" { "00000" } else { "00001" };
    let (status, image) = get(&remote.base, &format!("/image/0/{shard}/{key}"));
    assert_eq!(status, 200);
    let (_, local_image) = get(&local.base, &format!("/image/0/{shard}/{key}"));
    assert_eq!(image, local_image);
    assert_eq!(cached(".tar"), 1, "one shard's tar fetched for its image");
    let (status, page) = get(&remote.base, &format!("/sample/0/{shard}/{key}"));
    assert_eq!(status, 200);
    assert!(page.contains("id=\"dense-0\"") && page.contains("<mark"), "{page}");
    assert!(page.contains("s3://data/runs/run"), "the page names the store prefix");
}

/// `pixforge status`: rows by status and the failure reasons with example keys and whole messages,
/// as text and as JSON, with no parquet reader; a corrupt shard is named.
#[test]
fn status_lists_statuses_and_failure_reasons_with_examples() {
    let run = |dir: &Path, json: bool| {
        let mut c = Command::new(common::bin());
        c.arg("status").arg(dir);
        if json {
            c.arg("--json");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let text = run(&dataset().join("run"), false);
    assert!(text.contains("8 rows in 2 shards") && text.contains("success 6 (75.0%)"), "{text}");
    assert!(text.contains("failed_to_resize 2 (25.0%)") && text.contains("top failure reasons:"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&run(&dataset().join("run"), true)).unwrap();
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.iter().map(|r| r["rows"].as_u64().unwrap()).sum::<u64>(), 2, "{v}");
    let records: Vec<pixforge::shards::Record> = ["00000", "00001"]
        .iter()
        .flat_map(|s| pixforge::shards::read_records(&dataset().join(format!("run/shards/{s}.parquet"))).unwrap())
        .collect();
    for r in reasons {
        for e in r["examples"].as_array().unwrap() {
            let key = e[1].as_str().unwrap();
            let rec = records.iter().find(|x| x.key == key).unwrap();
            assert_eq!(rec.error_message.as_deref(), e[2].as_str(), "{e}");
            assert!(text.contains(key) && text.contains(e[2].as_str().unwrap()), "{text}");
        }
    }
}
