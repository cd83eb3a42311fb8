//! One bad row costs that row only: a JSONL line that is not JSON, a CSV row or a caption file that
//! is not UTF-8, a WebDataset tar cut in the middle of a member, a sample key too long for a file
//! name. Each becomes that row's status with the file and line; the rest of the run goes on.

mod common;

use common::caches::*;
use pixforge::ingest::laion::{read_laion, LaionOptions};
use pixforge::ingest::{self, RunOptions, SourceKind};
use pixforge::shards::{done_shards, read_records, shard_name, Record, Status};
use std::path::{Path, PathBuf};
use std::process::Command;

fn laion_rows(name: &str, text: &[u8]) -> (PathBuf, Vec<pixforge::ingest::source::InputRow>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let mut o = LaionOptions::default();
    if name.ends_with(".txt") {
        o.caption_col = String::new();
    }
    let rows = read_laion(std::slice::from_ref(&path), &o).unwrap().rows;
    (path, rows, dir)
}

#[test]
fn a_malformed_jsonl_line_is_its_rows_refusal() {
    let text = b"{\"URL\": \"http://a.example/1.jpg\", \"TEXT\": \"one\"}\n\n{\"URL\": \"http://a.example/2.jpg\", \"TEXT\": \"two\"\n[1, 2]\n{\"URL\": \"http://a.example/3.jpg\", \"TEXT\": \"three\"}\n";
    let (path, rows, _dir) = laion_rows("meta.jsonl", text);
    assert_eq!(rows.len(), 4, "one row per non-blank line");
    assert_eq!((rows[0].source.as_str(), rows[0].filtered.as_deref()), ("http://a.example/1.jpg", None));
    let at = |line: usize| format!("{}: line {line}:", path.display());
    let reason = rows[1].filtered.as_deref().unwrap();
    assert!(reason.contains(&at(3)) && reason.contains("not valid JSON"), "{reason}");
    let reason = rows[2].filtered.as_deref().unwrap();
    assert!(reason.contains(&at(4)) && reason.contains("expected a JSON object, found an array"), "{reason}");
    assert_eq!((rows[3].caption.as_deref(), rows[3].filtered.as_deref()), (Some("three"), None));
}

#[test]
fn a_csv_row_that_is_not_utf8_is_its_rows_refusal() {
    let text = b"URL,TEXT\nhttp://a.example/1.jpg,\"first, with a comma\"\nhttp://a.example/2.jpg,caf\xe9 latin-1\nhttp://a.example/3.jpg,\"two\nlines\"\nhttp://a.example/4.jpg,fine\n";
    let (path, rows, _dir) = laion_rows("meta.csv", text);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].caption.as_deref(), Some("first, with a comma"));
    let reason = rows[1].filtered.as_deref().unwrap();
    assert!(reason.contains(&format!("{}:3: not UTF-8", path.display())), "{reason}");
    assert_eq!((rows[2].filtered.as_deref(), rows[2].caption.as_deref()), (None, Some("two\nlines")));
    assert_eq!((rows[3].filtered.as_deref(), rows[3].caption.as_deref()), (None, Some("fine")));
}

#[test]
fn a_ragged_csv_row_is_its_rows_refusal() {
    let text = b"URL,TEXT\nhttp://a.example/1.jpg,one\nhttp://a.example/2.jpg,two,extra\nhttp://a.example/3.jpg\n\nhttp://a.example/4.jpg,\"four, quoted\"\n";
    let (path, rows, _dir) = laion_rows("meta.csv", text);
    assert_eq!(rows.len(), 4, "one row per non-blank record");
    assert_eq!((rows[0].source.as_str(), rows[0].filtered.as_deref()), ("http://a.example/1.jpg", None));
    for (row, line, found) in [(1, 3, 3), (2, 4, 1)] {
        let reason = rows[row].filtered.as_deref().unwrap();
        let want = format!("{}:{line}: expected 2 fields as in the header, found {found}", path.display());
        assert!(reason.contains(&want), "{reason}");
    }
    assert_eq!((rows[3].caption.as_deref(), rows[3].filtered.as_deref()), (Some("four, quoted"), None));
}

#[test]
fn an_overlong_url_list_line_is_its_rows_refusal() {
    let mut text = b"http://a.example/1.jpg\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', pixforge::text::MAX_LINE_BYTES + 1));
    text.extend_from_slice(b"\nhttp://a.example/3.jpg\n");
    let (path, rows, _dir) = laion_rows("urls.txt", &text);
    assert_eq!(rows.len(), 3);
    let reason = rows[1].filtered.as_deref().unwrap();
    assert!(reason.contains(&format!("{}:2: line 2 is longer than", path.display())), "{reason}");
    assert_eq!(rows[2].source, "http://a.example/3.jpg");
}

fn ingest(source: SourceKind, input: &Path, out: &Path) -> Vec<Record> {
    let mut c = common::ingest_config(source, vec![input.to_path_buf()]);
    c.image.image_size = 32;
    let mut o = RunOptions::new(out);
    o.progress = false;
    ingest::run(&c, &o).unwrap();
    let mut v = Vec::new();
    for s in done_shards(out).unwrap() {
        v.extend(read_records(&out.join(format!("{}.parquet", shard_name(s)))).unwrap());
    }
    v
}

#[test]
fn a_caption_file_that_is_not_utf8_refuses_its_image_only() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(input.join(format!("{name}.png")), png(40, 30, i as u32)).unwrap();
    }
    std::fs::write(input.join("a.txt"), "a caption").unwrap();
    std::fs::write(input.join("b.txt"), b"caf\xe9").unwrap();
    let recs = ingest(SourceKind::Folder, &input, &dir.path().join("out"));
    let status: Vec<_> = recs.iter().map(|r| r.status).collect();
    assert_eq!(status, [Some(Status::Success), Some(Status::Filtered), Some(Status::Success)], "{recs:?}");
    assert_eq!(recs[0].caption.as_deref(), Some("a caption"));
    let reason = recs[1].error_message.as_deref().unwrap();
    assert!(reason.contains(&input.join("b.txt").display().to_string()) && reason.contains("not UTF-8"), "{reason}");
}

#[test]
fn a_tar_cut_mid_member_loses_only_that_member() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let write = |name: &str, keys: &[&str]| {
        let path = input.join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (i, key) in keys.iter().enumerate() {
            let data = png(48, 40, i as u32 + name.as_bytes()[0] as u32 * 7);
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("{key}.png"), data.as_slice()).unwrap();
        }
        b.finish().unwrap();
        path
    };
    std::fs::create_dir_all(&input).unwrap();
    let cut = write("a.tar", &["a0", "a1"]);
    write("b.tar", &["b0", "b1"]);
    // Cut a.tar in the middle of its second member's data.
    let members = pixforge::shards::index_tar(&cut).unwrap();
    let end = members[1].offset + members[1].size / 2;
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..end as usize]).unwrap();
    let recs = ingest(SourceKind::Webdataset, &input, &dir.path().join("out"));
    let by = |s: &str| recs.iter().find(|r| r.source.ends_with(s)).unwrap_or_else(|| panic!("{s}: {recs:?}"));
    assert_eq!(recs.len(), 4, "{recs:?}");
    for ok in ["a.tar:a0.png", "b.tar:b0.png", "b.tar:b1.png"] {
        assert_eq!(by(ok).status, Some(Status::Success), "{ok}");
    }
    let lost = by("a.tar:a1.png");
    assert_ne!(lost.status, Some(Status::Success));
    assert!(lost.error_message.as_deref().unwrap_or("").contains("truncated"), "{lost:?}");
}

#[test]
fn a_key_too_long_for_a_file_name_is_exported_under_a_hashed_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let long = format!("{}_{}", "k".repeat(200), "z".repeat(54));
    assert_eq!(long.len(), 255);
    {
        let mut b = tar::Builder::new(std::fs::File::create(src.join("00000.tar")).unwrap());
        for (key, seed) in [("short", 1), (long.as_str(), 2)] {
            for (ext, data) in [("png", png(40, 30, seed)), ("txt", b"a red square on a table".to_vec())] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, format!("{key}.{ext}"), data.as_slice()).unwrap();
            }
        }
        b.finish().unwrap();
    }
    std::fs::write(src.join("00000_stats.json"), "{\"count\": 2}").unwrap();
    let (t5_dir, vae_dir, out) = (dir.path().join("t5"), dir.path().join("vae"), dir.path().join("official"));
    use pixforge::latents::cache::{t5_stage, vae_stage, FeatureDType};
    t5_stage::run(&t5_config(FeatureDType::F32), &opts(&src, &t5_dir), &candle_core::Device::Cpu).unwrap();
    let model = tiny_vae(dir.path());
    vae_stage::run(&vae_config(&model, 32, false), &opts(&src, &vae_dir), &candle_core::Device::Cpu).unwrap();
    let o = Command::new(common::bin())
        .args(["export", "pixart-official", "--shards"])
        .arg(&src)
        .args(["--t5".as_ref(), t5_dir.as_os_str(), "--vae".as_ref(), vae_dir.as_os_str(), "--out".as_ref()])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("InternData/partition/data_info.json")).unwrap()).unwrap();
    assert_eq!(info.len(), 2);
    let entry = info.iter().find(|i| i["key"] == long.as_str()).expect("the long key is in the index");
    let path = entry["path"].as_str().unwrap();
    assert!(path.len() < 160 && path.starts_with("00000/kkkk"), "{path}");
    assert!(out.join("InternImgs").join(path).is_file());
    let stem = Path::new(path).file_stem().unwrap().to_str().unwrap();
    assert!(out.join(format!("InternData/caption_feature_wmask/00000_{stem}.npz")).is_file());
}
