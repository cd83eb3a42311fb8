//! `ingest --append`: new inputs become new shards numbered after the dataset's own, the manifest
//! records which inputs made which shards, nothing existing is touched, a rerun resumes, repeats of
//! earlier images are marked, and another configuration is still refused.

mod common;

use pixforge::ingest::{self, IngestConfig, RunOptions, SourceKind};
use pixforge::shards::{read_records, Manifest, Status, Worker};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn cfg(dir: &Path) -> IngestConfig {
    let mut c = common::ingest_config(SourceKind::Folder, vec![dir.to_path_buf()]);
    c.image.image_size = 64;
    c.curation.samples_per_shard = 2;
    c
}

fn folder(root: &Path, name: &str, images: &[&str]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, image) in images.iter().enumerate() {
        std::fs::copy(common::data_image(image), dir.join(format!("{i}_{image}"))).unwrap();
    }
    dir
}

fn opts(out: &Path, append: bool) -> RunOptions {
    let mut o = RunOptions::new(out);
    o.progress = false;
    o.append = append;
    o
}

/// Every file of the dataset with its bytes.
fn files(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn appended_inputs_become_new_shards_and_nothing_existing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = folder(dir.path(), "a", &["rocket.jpg", "camera.png", "chelsea.png"]);
    let b = folder(dir.path(), "b", &["coffee.png", "astronaut.png", "camera.png"]);
    let c = folder(dir.path(), "c", &["hubble_deep_field.jpg", "palette_color.png"]);
    let out = dir.path().join("out");
    ingest::run(&cfg(&a), &opts(&out, false)).unwrap();
    let before = files(&out);
    assert!(before.contains_key("00001_stats.json") && !before.contains_key("00002.tar"));

    // Without --append, other inputs are refused, with the way to add them.
    let err = format!("{:#}", ingest::run(&cfg(&b), &opts(&out, false)).unwrap_err());
    assert!(err.contains("`inputs` was") && err.contains("pass --append"), "{err}");

    let stats = ingest::run(&cfg(&b), &opts(&out, true)).unwrap();
    assert_eq!((stats.shards_done, stats.total.count), (2, 3));
    let after = files(&out);
    for (name, bytes) in &before {
        if name != "manifest.json" {
            assert_eq!(after.get(name), Some(bytes), "{name} is untouched");
        }
    }
    let recs: Vec<_> =
        [2, 3].iter().flat_map(|s| read_records(&out.join(format!("{s:05}.parquet"))).unwrap()).collect();
    assert_eq!(recs.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["000020", "000021", "000030"]);
    let camera_again = recs.iter().find(|r| r.source == "2_camera.png").unwrap();
    assert_eq!(camera_again.status, Some(Status::Duplicate), "a repeat of the dataset's own image");
    assert!(camera_again.error_message.as_deref().unwrap().contains("000001"), "{camera_again:?}");

    let m = Manifest::read(&out).unwrap().unwrap();
    let parts: Vec<(usize, usize, Vec<String>)> =
        m.parts.iter().map(|p| (p.first_shard, p.shards, p.inputs.clone())).collect();
    assert_eq!(parts, [(0, 2, vec![]), (2, 2, vec![b.display().to_string()])]);

    // Reruns resume: of the appended inputs (with or without --append) and of the dataset's own.
    for (inputs, append) in [(&b, true), (&b, false), (&a, false)] {
        let again = ingest::run(&cfg(inputs), &opts(&out, append)).unwrap();
        assert_eq!((again.shards_done, again.shards_skipped), (0, 2), "{inputs:?}");
    }
    assert_eq!(files(&out), after, "reruns change nothing");

    // A third batch by two workers, one after the other: the second finds the part the first added.
    for w in [Worker::new(1, 2).unwrap(), Worker::new(0, 2).unwrap()] {
        let mut o = opts(&out, true);
        o.worker = w;
        ingest::run(&cfg(&c), &o).unwrap();
    }
    let m = Manifest::read(&out).unwrap().unwrap();
    assert_eq!(m.parts.len(), 3);
    assert_eq!((m.parts[2].first_shard, m.parts[2].shards), (4, 1));
    assert_eq!(pixforge::shards::done_shards(&out).unwrap(), [0, 1, 2, 3, 4]);

    // Another configuration is refused, naming the field.
    let mut other = cfg(&c);
    other.image.image_size = 96;
    let d = folder(dir.path(), "d", &["coffee.png"]);
    other.inputs = vec![d];
    let err = format!("{:#}", ingest::run(&other, &opts(&out, true)).unwrap_err());
    assert!(err.contains("`image.image_size` was 64, is now 96"), "{err}");
}

#[test]
fn appending_to_an_unfinished_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = folder(dir.path(), "a", &["rocket.jpg", "camera.png", "chelsea.png"]);
    let b = folder(dir.path(), "b", &["coffee.png"]);
    let out = dir.path().join("out");
    // Only worker 1 of 2 ran: shard 0 is missing.
    let mut o = opts(&out, false);
    o.worker = Worker::new(1, 2).unwrap();
    ingest::run(&cfg(&a), &o).unwrap();
    let err = format!("{:#}", ingest::run(&cfg(&b), &opts(&out, true)).unwrap_err());
    assert!(err.contains("shard 00000 of the dataset is not done"), "{err}");
}
