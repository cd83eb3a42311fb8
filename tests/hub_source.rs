//! The `hub` source: parquet files with the images inside, as Hugging Face `datasets` writes them
//! (written here with polars: an `Image` struct column of `bytes` and `path`, or a binary column,
//! and a caption column, in row groups of 2), ingest exactly like a folder of the same images and
//! captions; a row without bytes is that row's refusal, and a file without an image column is
//! refused naming the columns it has.

mod common;

use pixforge::ingest::{self, IngestConfig, RunOptions, SourceKind};
use pixforge::shards::{read_records, Record, Status, WdsReader};
use polars::prelude::{Column, DataFrame, IntoColumn, IntoSeries, NamedFrom, ParquetWriter, Series, StructChunked};
use std::path::{Path, PathBuf};

const PHOTOS: [(&str, &str); 6] = [
    ("astronaut.png", "an astronaut with a flag"),
    ("camera.png", "a man with a camera"),
    ("chelsea.png", "a tabby cat"),
    ("coffee.png", "a cup of coffee"),
    ("hubble_deep_field.jpg", "galaxies in deep space"),
    ("rocket.jpg", "a rocket on its launch pad"),
];

fn cfg(source: SourceKind, inputs: Vec<PathBuf>) -> IngestConfig {
    let mut c = common::ingest_config(source, inputs);
    c.image.image_size = 96;
    c.curation.samples_per_shard = 4;
    c
}

fn run(c: &IngestConfig, out: &Path) -> anyhow::Result<pixforge::shards::RunStats> {
    let mut o = RunOptions::new(out);
    o.progress = false;
    ingest::run(c, &o)
}

fn records(out: &Path) -> Vec<Record> {
    let mut v = Vec::new();
    for s in pixforge::shards::done_shards(out).unwrap() {
        v.extend(read_records(&out.join(format!("{}.parquet", pixforge::shards::shard_name(s)))).unwrap());
    }
    v
}

/// Every sample of the dataset's tars: key, image bytes and caption.
fn samples(out: &Path) -> Vec<(String, Vec<u8>, String)> {
    let mut v = Vec::new();
    for s in pixforge::shards::done_shards(out).unwrap() {
        let tar = WdsReader::open(&out.join(format!("{}.tar", pixforge::shards::shard_name(s)))).unwrap();
        for sample in &tar.samples {
            let jpg = tar.read(sample, "jpg").unwrap().unwrap();
            let txt = tar.read(sample, "txt").unwrap().unwrap();
            v.push((sample.key.clone(), jpg, String::from_utf8(txt).unwrap()));
        }
    }
    v
}

/// Writes `df` as parquet in row groups of 2 rows.
fn write_parquet(df: &mut DataFrame, path: &Path) {
    ParquetWriter::new(std::fs::File::create(path).unwrap()).with_row_group_size(Some(2)).finish(df).unwrap();
}

/// A `datasets` Image column: a struct of `bytes` (binary) and `path` (string).
fn image_struct(name: &str, bytes: Vec<Option<Vec<u8>>>, paths: Vec<Option<String>>) -> Column {
    let bytes = Series::new("bytes".into(), bytes.iter().map(|b| b.as_deref()).collect::<Vec<_>>());
    let paths = Series::new("path".into(), paths);
    let s = StructChunked::from_series(name.into(), bytes.len(), [bytes, paths].iter()).unwrap();
    s.into_series().into_column()
}

#[test]
fn a_hub_parquet_ingests_like_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let mut bytes = Vec::new();
    for (name, caption) in PHOTOS {
        std::fs::copy(common::data_image(name), folder.join(name)).unwrap();
        std::fs::write(folder.join(Path::new(name).with_extension("txt")), caption).unwrap();
        bytes.push(Some(std::fs::read(common::data_image(name)).unwrap()));
    }
    let names: Vec<Option<String>> = PHOTOS.iter().map(|(n, _)| Some(n.to_string())).collect();
    let captions: Vec<&str> = PHOTOS.iter().map(|(_, c)| *c).collect();
    let hub = dir.path().join("hub");
    std::fs::create_dir(&hub).unwrap();
    // Two files, as a dataset's train-0000x-of-0000y shards: 4 rows, then 2.
    let mut first = DataFrame::new(
        4,
        vec![
            image_struct("image", bytes[..4].to_vec(), names[..4].to_vec()),
            Column::new("text".into(), &captions[..4]),
        ],
    )
    .unwrap();
    write_parquet(&mut first, &hub.join("train-00000-of-00002.parquet"));
    let mut second = DataFrame::new(
        2,
        vec![
            image_struct("image", bytes[4..].to_vec(), names[4..].to_vec()),
            Column::new("text".into(), &captions[4..]),
        ],
    )
    .unwrap();
    write_parquet(&mut second, &hub.join("train-00001-of-00002.parquet"));

    let (from_folder, from_hub) = (dir.path().join("out-folder"), dir.path().join("out-hub"));
    let a = run(&cfg(SourceKind::Folder, vec![folder]), &from_folder).unwrap();
    let b = run(&cfg(SourceKind::Hub, vec![hub.clone()]), &from_hub).unwrap();
    assert_eq!((a.total.successes, b.total.successes), (6, 6));
    assert_eq!(samples(&from_hub), samples(&from_folder), "the same keys, image bytes and captions");
    let (ra, rb) = (records(&from_folder), records(&from_hub));
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (&x.key, &x.caption, x.width, x.height, &x.sha256, &x.phash, x.original_width),
            (&y.key, &y.caption, y.width, y.height, &y.sha256, &y.phash, y.original_width),
        );
    }
    assert_eq!(rb[4].source, "train-00001-of-00002.parquet#0", "the source names the file and row");

    // A rerun does nothing; the dedup, filters and resize are the same as any source's.
    let again = run(&cfg(SourceKind::Hub, vec![hub]), &from_hub).unwrap();
    assert_eq!(again.shards_done, 0);
}

#[test]
fn binary_columns_rows_without_bytes_and_files_without_images() {
    let dir = tempfile::tempdir().unwrap();
    let rocket = std::fs::read(common::data_image("rocket.jpg")).unwrap();
    let coffee = std::fs::read(common::data_image("coffee.png")).unwrap();
    let file = dir.path().join("data.parquet");
    let mut df = DataFrame::new(
        3,
        vec![
            Column::new("id".into(), [1i64, 2, 3]),
            Column::new("img".into(), [Some(rocket.as_slice()), None, Some(coffee.as_slice())]),
            Column::new("caption".into(), ["a rocket", "nothing", "coffee"]),
        ],
    )
    .unwrap();
    write_parquet(&mut df, &file);
    let out = dir.path().join("out");
    let stats = run(&cfg(SourceKind::Hub, vec![file.clone()]), &out).unwrap();
    assert_eq!(stats.total.successes, 2);
    let recs = records(&out);
    assert_eq!(recs[0].caption.as_deref(), Some("a rocket"), "the caption column found by name");
    assert_eq!(recs[1].status, Some(Status::FailedToDownload));
    let msg = recs[1].error_message.clone().unwrap();
    assert!(msg.contains("data.parquet: row 1, column `img`: no image (null)"), "{msg}");
    assert_eq!(recs[2].status, Some(Status::Success));

    // A datasets Image whose bytes are null but whose path is set refers to a file outside.
    let outside = dir.path().join("outside.parquet");
    let mut df = DataFrame::new(
        2,
        vec![image_struct("image", vec![Some(rocket.clone()), None], vec![None, Some("images/b.jpg".into())])],
    )
    .unwrap();
    write_parquet(&mut df, &outside);
    let out2 = dir.path().join("out2");
    run(&cfg(SourceKind::Hub, vec![outside]), &out2).unwrap();
    let recs = records(&out2);
    assert_eq!(recs[0].caption, None, "no caption column: no captions");
    let msg = recs[1].error_message.clone().unwrap();
    assert!(msg.contains("no image bytes (only the path \"images/b.jpg\""), "{msg}");

    // No image column: refused, naming the file and what it has.
    let plain = dir.path().join("plain.parquet");
    let mut df = DataFrame::new(1, vec![Column::new("url".into(), ["http://x/a.jpg"])]).unwrap();
    write_parquet(&mut df, &plain);
    let err = run(&cfg(SourceKind::Hub, vec![plain.clone()]), &dir.path().join("out3")).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("plain.parquet: no image column") && err.contains("url (str)"), "{err}");
    let mut named = cfg(SourceKind::Hub, vec![plain]);
    named.hub.image_col = "url".into();
    let err = format!("{:#}", run(&named, &dir.path().join("out4")).unwrap_err());
    assert!(err.contains("--image-col url: expected a struct with binary `bytes`, or binary; found str"), "{err}");
}
