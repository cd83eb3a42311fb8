//! Repeats across workers: a folder ingested as 3 workers into one dataset, with exact copies and
//! re-encoded, downscaled copies of photos planted in other workers' shards (which no worker's own
//! pHash index sees), then `pixforge dedup --phash`: every planted repeat is found with its first
//! copy's key, nothing else is removed, and the selection holds exactly the rest.

mod common;

use pixforge::shards::selection::read_selection;
use pixforge::shards::{read_records, Status};
use polars::prelude::{ParquetReader, SerReader};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A copy of `name` downscaled by `scale` and saved as a JPEG of quality 60.
fn reencoded(name: &str, scale: f32, to: &Path) {
    let img = image::open(common::data_image(name)).unwrap().to_rgb8();
    let (w, h) = ((img.width() as f32 * scale) as u32, (img.height() as f32 * scale) as u32);
    let small = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    let mut out = std::fs::File::create(to).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 60).encode_image(&small).unwrap();
}

fn pixforge(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let o = Command::new(common::bin()).args(args).args(paths).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn repeats_planted_across_workers_are_all_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Two images a shard, shard s owned by worker s % 3: each copy below lands in another worker
    // than its original.
    let originals = [
        "rocket.jpg",
        "camera.png",
        "chelsea.png",
        "coffee.png",
        "astronaut.png",
        "hubble_deep_field.jpg",
        "palette_color.png",
    ];
    for (i, name) in originals.iter().enumerate() {
        std::fs::copy(common::data_image(name), src.join(format!("{i:02}_{name}"))).unwrap();
    }
    std::fs::copy(common::data_image("coffee.png"), src.join("07_coffee_copy.png")).unwrap();
    std::fs::copy(common::data_image("rocket.jpg"), src.join("08_rocket_copy.jpg")).unwrap();
    reencoded("astronaut.png", 0.8, &src.join("09_astronaut_small.jpg"));
    reencoded("chelsea.png", 0.7, &src.join("10_chelsea_small.jpg"));
    std::fs::copy(common::data_image("coffee.png"), src.join("11_coffee_again.png")).unwrap();
    // planted repeat (file index) -> its first copy (file index), and whether the bytes are the same.
    let planted: BTreeMap<usize, (usize, bool)> =
        BTreeMap::from([(7, (3, true)), (8, (0, true)), (9, (4, false)), (10, (2, false)), (11, (3, true))]);

    let out = dir.path().join("dataset");
    for w in ["0/3", "1/3", "2/3"] {
        pixforge(
            &["ingest", "folder", "--worker", w, "--samples-per-shard", "2", "--image-size", "96", "--no-progress"],
            &[&src, Path::new("--out"), &out],
        );
    }
    // Each worker kept its copies: none saw the other workers' shards.
    let mut source_key = BTreeMap::new();
    for shard in 0..6 {
        for r in read_records(&out.join(format!("{shard:05}.parquet"))).unwrap() {
            assert_eq!(r.status, Some(Status::Success), "{}: {:?}", r.source, r.error_message);
            let index: usize = r.source[..2].parse().unwrap();
            source_key.insert(index, r.key.clone());
        }
    }
    assert_eq!(source_key.len(), 12);

    let selection = dir.path().join("sel/repeats-removed.parquet");
    let o = pixforge(&["dedup", "--phash"], &[&out, Path::new("--out"), &selection]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("12 samples in 6 shards: kept 7, removed 3 exact and 2 near repeats"), "{text}");

    let kept = read_selection(&selection).unwrap();
    let expected: std::collections::HashSet<String> =
        source_key.iter().filter(|(i, _)| !planted.contains_key(i)).map(|(_, k)| k.clone()).collect();
    assert_eq!(kept, expected, "the selection is every sample but the planted repeats");

    let df = ParquetReader::new(std::fs::File::open(dir.path().join("sel/repeats-removed.repeats.parquet")).unwrap())
        .finish()
        .unwrap();
    let col = |n: &str| df.column(n).unwrap().as_materialized_series().clone();
    let (keys, firsts, exact, distance) = (col("key"), col("first"), col("exact"), col("distance"));
    let mut found = BTreeMap::new();
    let mut identical_phash = 0;
    for i in 0..df.height() {
        let key = keys.str().unwrap().get(i).unwrap().to_string();
        let first = firsts.str().unwrap().get(i).unwrap().to_string();
        let same = exact.bool().unwrap().get(i).unwrap();
        let d = distance.u32().unwrap().get(i).unwrap();
        assert!(d <= 4 && (d == 0 || !same), "{key}: distance {d}");
        identical_phash += usize::from(d == 0);
        found.insert(key, (first, same));
    }
    let expected: BTreeMap<String, (String, bool)> =
        planted.iter().map(|(i, (f, same))| (source_key[i].clone(), (source_key[f].clone(), *same))).collect();
    assert_eq!(found, expected, "every planted repeat, with its first copy's key");

    // At distance 0 only identical pHashes repeat: the exact copies, and a re-encoded copy only if
    // its pHash came out identical.
    let exact_only = dir.path().join("sel/exact.parquet");
    let o = pixforge(&["dedup", "--phash-distance", "0", "--phash"], &[&out, Path::new("--out"), &exact_only]);
    let text = String::from_utf8_lossy(&o.stdout);
    let near = identical_phash - 3;
    assert!(near < 2, "the downscaled copies are not all identical in pHash");
    let counts = format!("kept {}, removed 3 exact and {near} near", 12 - 3 - near);
    assert!(text.contains(&counts), "{counts}: {text}");
    assert_eq!(read_selection(&exact_only).unwrap().len(), 12 - 3 - near);

    // A shard without its stats file (a worker still running or killed) is refused by name.
    std::fs::remove_file(out.join("00004_stats.json")).unwrap();
    let o = Command::new(common::bin()).args(["dedup", "--phash"]).arg(&out).arg("--out").arg(&selection).output();
    let o = o.unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shard 00004 is not complete (no 00004_stats.json)"), "{err}");
}
