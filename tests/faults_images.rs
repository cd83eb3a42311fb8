//! Hostile images: a JPEG cut in the middle of its scan (decoders fill the rest with one colour and
//! report success) and PNG metadata bombs (an ICC profile inflating to a GiB), through the image
//! step every stage shares and through a real `pixforge ingest folder` run.

mod common;

use pixforge::image::{decode_rgb, jpeg_is_complete, process, ImageError, ImageOptions, MAX_PIXELS};
use pixforge::shards::{read_records, Status};
use std::process::Command;

#[test]
fn a_jpeg_cut_in_its_scan_is_refused_unless_asked_for() {
    let full = std::fs::read(common::data_image("rocket.jpg")).unwrap();
    let cut = &full[..full.len() / 2];
    let o = ImageOptions { image_size: 64, ..Default::default() };
    let e = process(cut, &o).unwrap_err();
    assert!(matches!(e, ImageError::Truncated(_)), "{e}");
    assert!(e.to_string().contains("truncated") && e.to_string().contains("--load-truncated-images"), "{e}");
    // Every stage that decodes (VAE cache, captioning, scoring) goes through the same check.
    assert!(matches!(decode_rgb(cut, MAX_PIXELS), Err(ImageError::Truncated(_))));
    let kept = process(cut, &ImageOptions { load_truncated_images: true, ..o.clone() }).unwrap();
    assert_eq!(kept.width.min(kept.height), 64);
    // Whole files pass, also with bytes after the end-of-image marker.
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"trailing bytes");
    assert!(process(&trailing, &o).is_ok());
    for e in std::fs::read_dir(common::data().join("images")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jpg") && !p.ends_with("truncated.jpg") {
            assert!(jpeg_is_complete(&std::fs::read(&p).unwrap()), "{}", p.display());
        }
    }
}

fn ingest_peak(images: &[(String, Vec<u8>)]) -> (u64, Vec<pixforge::shards::Record>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (name, bytes) in images {
        std::fs::write(input.join(name), bytes).unwrap();
    }
    let out = dir.path().join("out");
    let o = Command::new(common::bin())
        .args(["ingest", "folder"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(["--image-size", "32", "--no-progress"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (common::children_peak_rss(), read_records(&out.join("00000.parquet")).unwrap())
}

/// Four 1x1 PNGs whose ICC profiles inflate to a GiB each cost an ingest what four plain 1x1 PNGs
/// cost: the profile is dropped at the decoder's metadata allowance, the images kept.
#[test]
fn an_icc_bomb_costs_what_a_normal_image_costs() {
    let bomb = |red| pixforge::bench::bombs::png_with_icc_bomb(1 << 30, red);
    assert!(bomb(0).len() < 4 << 20, "the bomb is small on disk: {} bytes", bomb(0).len());
    let o = ImageOptions { image_size: 32, ..Default::default() };
    let p = process(&bomb(0), &o).expect("the pixels are fine");
    assert_eq!((p.original_width, p.original_height), (1, 1));

    let plain = |red| pixforge::bench::bombs::png_with_icc_bomb(1 << 20, red);
    let names = |f: &dyn Fn(u8) -> Vec<u8>| (0..4).map(|i| (format!("{i}.png"), f(60 * i as u8))).collect::<Vec<_>>();
    // The children's peak only grows: the plain run first, then the bombs.
    let (normal, recs) = ingest_peak(&names(&plain));
    assert!(recs.iter().all(|r| r.status == Some(Status::Success)), "{recs:?}");
    let (with_bombs, recs) = ingest_peak(&names(&bomb));
    assert_eq!(recs.len(), 4);
    assert!(recs.iter().all(|r| r.status == Some(Status::Success)), "{recs:?}");
    assert!(
        (with_bombs as f64) <= 1.5 * normal as f64,
        "peak RSS {} MiB with the bombs, {} MiB with plain images",
        with_bombs >> 20,
        normal >> 20
    );
}
