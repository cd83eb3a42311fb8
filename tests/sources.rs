//! The four sources end to end: folder (with duplicates), WebDataset (re-reading our own shards),
//! SA-1B (tars and extracted folders built from the bundled photos), and LAION metadata.

mod common;

use pixforge::ingest::rle::Rle;
use pixforge::ingest::{self, IngestConfig, RunOptions, SourceKind};
use pixforge::shards::{read_records, Record, Status, WdsReader};
use std::path::{Path, PathBuf};

fn cfg(source: SourceKind, inputs: Vec<PathBuf>) -> IngestConfig {
    let mut c = common::ingest_config(source, inputs);
    c.image.image_size = 96;
    c
}

fn run(c: &IngestConfig, out: &Path) -> pixforge::shards::RunStats {
    let mut o = RunOptions::new(out);
    o.progress = false;
    ingest::run(c, &o).unwrap()
}

fn all_records(out: &Path) -> Vec<Record> {
    let mut v = Vec::new();
    for s in pixforge::shards::done_shards(out).unwrap() {
        v.extend(read_records(&out.join(format!("{}.parquet", pixforge::shards::shard_name(s)))).unwrap());
    }
    v
}

fn copy(name: &str, dir: &Path, as_name: &str) {
    std::fs::copy(common::data_image(name), dir.join(as_name)).unwrap();
}

#[test]
fn folder_with_captions_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    copy("chelsea.png", &input, "a_chelsea.png");
    std::fs::write(input.join("a_chelsea.txt"), "a cat\n").unwrap();
    copy("chelsea.png", &input, "b_chelsea_copy.png");
    copy("rocket.jpg", &input, "c_rocket.jpg");
    copy("truncated.jpg", &input, "d_truncated.jpg");
    copy("coffee.png", &input.join("sub"), "e_coffee.png");
    std::fs::write(input.join("notes.md"), "not an image").unwrap();
    // A near-duplicate: chelsea shrunk by 10% and re-encoded as JPEG.
    let img =
        image::open(common::data_image("chelsea.png")).unwrap().resize(405, 270, image::imageops::FilterType::Triangle);
    img.to_rgb8().save(input.join("f_chelsea_small.jpg")).unwrap();
    let mut c = cfg(SourceKind::Folder, vec![input.clone()]);
    c.curation.samples_per_shard = 4;
    let out = dir.path().join("out");
    let stats = run(&c, &out);
    assert_eq!(stats.total.count, 6);
    assert_eq!(stats.shards_done, 2);
    let recs = all_records(&out);
    let by = |s: &str| recs.iter().find(|r| r.source == s).unwrap_or_else(|| panic!("{s} missing"));
    assert_eq!(by("a_chelsea.png").caption.as_deref(), Some("a cat"));
    assert_eq!(by("a_chelsea.png").status, Some(Status::Success));
    let first = by("a_chelsea.png").key.clone();
    assert_eq!(by("b_chelsea_copy.png").status, Some(Status::Duplicate));
    assert!(by("b_chelsea_copy.png").error_message.as_deref().unwrap().contains(&first));
    assert_eq!(by("d_truncated.jpg").status, Some(Status::FailedToResize));
    assert_eq!(by("sub/e_coffee.png").status, Some(Status::Success));
    let near = by("f_chelsea_small.jpg");
    assert_eq!(near.status, Some(Status::Duplicate), "{:?}", near.error_message);
    assert!(near.error_message.as_deref().unwrap().contains("near-duplicate"));

    // Rerun: everything is done, nothing is rewritten.
    let before = std::fs::read(out.join("00000.tar")).unwrap();
    let again = run(&c, &out);
    assert_eq!((again.shards_done, again.shards_skipped), (0, 2));
    assert_eq!(std::fs::read(out.join("00000.tar")).unwrap(), before);

    // A different configuration into the same directory is refused with a clear message.
    let mut other = c.clone();
    other.image.image_size = 128;
    let mut o = RunOptions::new(&out);
    o.progress = false;
    let err = ingest::run(&other, &o).unwrap_err().to_string();
    assert!(err.contains("manifest.json") && err.contains("--overwrite"), "{err}");
    assert!(err.contains("`image.image_size` was 96, is now 128"), "the change is named: {err}");

    // Our own shards are a valid webdataset input; captions come along.
    let out2 = dir.path().join("rewds");
    let mut w = cfg(SourceKind::Webdataset, vec![out.clone()]);
    w.curation.dedup = pixforge::ingest::DedupMode::None;
    let s2 = run(&w, &out2);
    assert_eq!(s2.total.successes, stats.total.successes);
    let recs2 = all_records(&out2);
    assert!(recs2.iter().any(|r| r.caption.as_deref() == Some("a cat")));
    assert!(recs2.iter().all(|r| r.source.contains(".tar:")));
}

fn rect_mask(h: u32, w: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Rle {
    let mut m = vec![0u8; (h * w) as usize];
    for x in x0..x1 {
        for y in y0..y1 {
            m[(x * h + y) as usize] = 1;
        }
    }
    Rle::encode(&m, h, w)
}

fn sa_json(id: u64, w: u32, h: u32, rects: &[(u32, u32, u32, u32)]) -> String {
    let anns: Vec<serde_json::Value> = rects
        .iter()
        .enumerate()
        .map(|(i, &(x0, y0, x1, y1))| {
            let r = rect_mask(h, w, x0, y0, x1, y1);
            serde_json::json!({
                "bbox": [x0, y0, x1 - x0 - 1, y1 - y0 - 1], "area": r.area(),
                "segmentation": {"size": [h, w], "counts": String::from_utf8(r.to_string_bytes()).unwrap()},
                "predicted_iou": 0.95, "point_coords": [[x0 as f64 + 0.5, y0 as f64 + 0.5]],
                "crop_box": [0, 0, w, h], "id": i, "stability_score": 0.97
            })
        })
        .collect();
    serde_json::json!({"image": {"image_id": id, "width": w, "height": h, "file_name": format!("sa_{id}.jpg")}, "annotations": anns})
        .to_string()
}

/// An SA-1B-format tar from the bundled photos: sa_1 (3 masks), sa_2 (1 mask), sa_3 (no JSON),
/// sa_4 (a corrupt counts string).
fn sa1b_tar(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let rocket = std::fs::read(common::data_image("rocket.jpg")).unwrap();
    let hubble = std::fs::read(common::data_image("hubble_deep_field.jpg")).unwrap();
    let chelsea = image::open(common::data_image("chelsea.png")).unwrap();
    let mut chelsea_jpg = Vec::new();
    chelsea.to_rgb8().write_to(&mut std::io::Cursor::new(&mut chelsea_jpg), image::ImageFormat::Jpeg).unwrap();
    add("sa_1.jpg", &rocket);
    add("sa_1.json", sa_json(1, 640, 427, &[(10, 10, 110, 60), (200, 100, 300, 400), (0, 0, 640, 427)]).as_bytes());
    add("sa_2.jpg", &hubble);
    add("sa_2.json", sa_json(2, 1000, 872, &[(5, 5, 55, 25)]).as_bytes());
    add("sa_3.jpg", &chelsea_jpg);
    add(
        "sa_4.jpg",
        &std::fs::read(common::data_image("astronaut.png"))
            .map(|_| {
                let mut v = Vec::new();
                image::open(common::data_image("astronaut.png"))
                    .unwrap()
                    .to_rgb8()
                    .write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Jpeg)
                    .unwrap();
                v
            })
            .unwrap(),
    );
    add("sa_4.json", br#"{"image":{"image_id":4,"width":512,"height":512},"annotations":[{"segmentation":{"size":[512,512],"counts":"~~bad"}}]}"#);
    b.finish().unwrap();
}

fn extra_f64(out: &Path, name: &str) -> Vec<Option<f64>> {
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(out.join("00000.parquet")).unwrap()).finish().unwrap();
    df.column(name).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().iter().collect()
}

#[test]
fn sa1b_tars_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("sa_000000.tar");
    sa1b_tar(&tar);
    let mut c = cfg(SourceKind::Sa1b, vec![tar.clone()]);
    c.image.image_size = 64;
    let out = dir.path().join("out");
    run(&c, &out);
    let recs = read_records(&out.join("00000.parquet")).unwrap();
    assert_eq!(recs.len(), 4);
    assert!(recs.iter().all(|r| r.status == Some(Status::Success)), "{recs:?}");
    let counts = extra_f64(&out, "mask_count");
    assert_eq!(counts, vec![Some(3.0), Some(1.0), None, None]);
    let maxes = extra_f64(&out, "mask_area_max");
    assert_eq!(maxes[0], Some(1.0), "the full-image mask covers everything");
    let density = extra_f64(&out, "masks_per_megapixel");
    assert!((density[0].unwrap() - 3.0 / (640.0 * 427.0 / 1e6)).abs() < 1e-9);
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(out.join("00000.parquet")).unwrap()).finish().unwrap();
    let errs: Vec<Option<String>> =
        df.column("annotation_error").unwrap().str().unwrap().iter().map(|s| s.map(str::to_owned)).collect();
    assert!(errs[2].as_deref().unwrap().contains("no annotation JSON"));
    assert!(errs[3].as_deref().unwrap().contains("annotation 0: RLE counts"), "{:?}", errs[3]);

    // --min-masks filters, with the count in the reason.
    let mut c2 = c.clone();
    c2.curation.min_masks = 2;
    let out2 = dir.path().join("out2");
    run(&c2, &out2);
    let recs2 = read_records(&out2.join("00000.parquet")).unwrap();
    assert_eq!(recs2[0].status, Some(Status::Success));
    assert_eq!(recs2[1].status, Some(Status::Filtered));
    assert!(recs2[1].error_message.as_deref().unwrap().contains("too few masks for --min-masks 2: 1"));
    assert_eq!(WdsReader::open(&out2.join("00000.tar")).unwrap().samples.len(), 1);

    // The same data extracted into a folder gives the same statistics.
    let ex = dir.path().join("extracted");
    std::fs::create_dir_all(&ex).unwrap();
    let reader = WdsReader::open(&tar).unwrap();
    for s in &reader.samples {
        for ext in s.members.keys() {
            std::fs::write(ex.join(format!("{}.{ext}", s.key)), reader.read(s, ext).unwrap().unwrap()).unwrap();
        }
    }
    let out3 = dir.path().join("out3");
    run(&cfg(SourceKind::Sa1b, vec![ex]), &out3);
    assert_eq!(extra_f64(&out3, "mask_count"), counts);
}

#[test]
fn laion_parquet_with_no_network() {
    // The img2dataset test parquet: 1000 real 2021 URLs. The binary runs in a network namespace with no
    // interfaces (`unshare -n`), so no packet leaves this machine; every row must be recorded.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let meta = common::data().join("laion/img2dataset_test_1000.parquet");
    let args = [
        "ingest",
        "laion",
        meta.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--url-col",
        "URL",
        "--caption-col",
        "TEXT",
        "--retries",
        "0",
        "--samples-per-shard",
        "400",
        "--no-progress",
    ];
    let status = std::process::Command::new("unshare").arg("-n").arg(common::bin()).args(args).status();
    let status = match status {
        Ok(s) if s.code() != Some(1) || out.join("manifest.json").exists() => s,
        _ => {
            eprintln!("unshare -n is not available: running with the machine's closed network instead");
            std::process::Command::new(common::bin()).args(args).status().unwrap()
        }
    };
    assert!(status.success());
    let recs = all_records(&out);
    assert_eq!(recs.len(), 1000, "one row per input row");
    assert_eq!(pixforge::shards::done_shards(&out).unwrap(), vec![0, 1, 2]);
    for r in &recs {
        assert_eq!(r.status, Some(Status::FailedToDownload), "{}", r.source);
        let m = r.error_message.as_deref().unwrap();
        assert!(
            m.contains("DNS resolution failed") || m.contains("connection failed") || m.contains("invalid URL"),
            "{m}"
        );
        assert!(r.source.starts_with("http"));
    }
    assert!(recs[0].caption.is_some());
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(out.join("00000.parquet")).unwrap()).finish().unwrap();
    assert!(df.column("__index_level_0__").is_ok(), "extra columns are carried");
    assert!(df.column("url").is_ok() && df.column("caption").is_ok());
    assert_eq!(df.column("key").unwrap().str().unwrap().get(0), Some("00000000"));
}

#[test]
fn workers_from_slurm_environment_split_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (i, n) in ["chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "astronaut.png"].iter().enumerate() {
        copy(n, &input, &format!("{i}_{n}"));
    }
    let out = dir.path().join("out");
    let run_worker = |task: &str| {
        let st = std::process::Command::new(common::bin())
            .args(["ingest", "folder"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(["--samples-per-shard", "1", "--image-size", "32", "--no-progress"])
            .env("SLURM_ARRAY_TASK_ID", task)
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    };
    run_worker("1");
    assert_eq!(pixforge::shards::done_shards(&out).unwrap(), vec![1, 3], "worker 1/2 owns the odd shards");
    run_worker("0");
    assert_eq!(pixforge::shards::done_shards(&out).unwrap(), vec![0, 1, 2, 3, 4]);
}

/// The ingest's summary warns about written images without a caption and images enlarged more
/// than twice, with their counts (also in each shard's stats).
#[test]
fn captionless_and_upscaled_images_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    pixforge::demo::write_inputs(&input).unwrap();
    std::fs::remove_file(input.join("camera.txt")).unwrap();
    image::RgbImage::from_pixel(3, 5, image::Rgb([200, 10, 10])).save(input.join("tiny.png")).unwrap();
    std::fs::write(input.join("tiny.txt"), "a red dot").unwrap();
    let out = dir.path().join("out");
    let o = std::process::Command::new(common::bin())
        .args(["ingest", "folder", "--image-size", "64", "--no-progress", "--out"])
        .arg(&out)
        .arg(&input)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("warning: 1 of 7 written image(s) have no caption"), "{text}");
    assert!(text.contains("warning: 1 written image(s) were enlarged more than twice"), "{text}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("00000_stats.json")).unwrap()).unwrap();
    assert_eq!((stats["without_caption"].as_u64(), stats["upscaled"].as_u64()), (Some(1), Some(1)), "{stats}");
}
