//! `pixforge bench …`: measured figures for docs/BENCHMARKS.md.

use crate::ingest::imageops::{decode_rgb, encode, plan, resize_rgb, sha256_hex, ImageOptions};
use crate::ingest::phash::phash;
use std::path::Path;
use std::time::{Duration, Instant};

/// Per-phase single-core timings of the image step over a directory of images.
#[derive(Debug, Default, serde::Serialize)]
pub struct PhaseTimes {
    /// Images measured.
    pub images: usize,
    /// Seconds decoding (header check, decode, orientation, RGB conversion).
    pub decode_s: f64,
    /// Seconds resizing.
    pub resize_s: f64,
    /// Seconds encoding.
    pub encode_s: f64,
    /// Seconds hashing (sha256 + pHash).
    pub hash_s: f64,
    /// Sum of the phases, as images per second on one core (full-size decode).
    pub phases_img_s: f64,
    /// The real image step (`imageops::process`, DCT downscaling as configured), images per second on one core.
    pub process_img_s: f64,
}

/// Times each phase of the image step on one core for every image file in `dir`.
pub fn image_phases(dir: &Path, o: &ImageOptions) -> anyhow::Result<PhaseTimes> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let blobs: Vec<Vec<u8>> = files.iter().filter(|p| p.is_file()).map(std::fs::read).collect::<Result<_, _>>()?;
    let mut t = PhaseTimes { images: blobs.len(), ..Default::default() };
    let (mut dec, mut res, mut enc, mut hash) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for b in &blobs {
        let s = Instant::now();
        let (img, _, _) = decode_rgb(b, o.max_image_pixels)?;
        dec += s.elapsed();
        let s = Instant::now();
        let p = plan(img.width(), img.height(), o);
        let c = p.crop;
        let out = resize_rgb(&img, (c.0 as f64, c.1 as f64, c.2 as f64, c.3 as f64), p.resized, o)?;
        res += s.elapsed();
        let s = Instant::now();
        let data = encode(&out, o.encode_format, o.encode_quality)?;
        enc += s.elapsed();
        let s = Instant::now();
        std::hint::black_box((sha256_hex(&data), phash(&out)));
        hash += s.elapsed();
    }
    t.decode_s = dec.as_secs_f64();
    t.resize_s = res.as_secs_f64();
    t.encode_s = enc.as_secs_f64();
    t.hash_s = hash.as_secs_f64();
    t.phases_img_s = t.images as f64 / (t.decode_s + t.resize_s + t.encode_s + t.hash_s).max(1e-9);
    let s = Instant::now();
    for b in &blobs {
        std::hint::black_box(crate::ingest::imageops::process(b, o)?);
    }
    t.process_img_s = t.images as f64 / s.elapsed().as_secs_f64().max(1e-9);
    Ok(t)
}
