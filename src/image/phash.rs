//! Perceptual hashing (DCT pHash, as `imagehash.phash`) and de-duplication indexes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use std::collections::HashMap;
use std::sync::OnceLock;

const N: usize = 32;
const K: usize = 8;

fn dct_table() -> &'static [[f64; N]; K] {
    static T: OnceLock<[[f64; N]; K]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [[0.0; N]; K];
        for (k, row) in t.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                *v = (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * N) as f64).cos();
            }
        }
        t
    })
}

/// 64-bit pHash: the image shrunk to 32x32 grey, 2-D DCT-II, the 8x8 lowest frequencies compared with
/// their median; bit 63 is coefficient (0, 0), row-major.
pub fn phash(img: &RgbImage) -> u64 {
    let (w, h) = img.dimensions();
    let mut small = vec![0u8; N * N * 3];
    if let Ok(src) = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3) {
        let mut dst = Image::new(N as u32, N as u32, PixelType::U8x3);
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
        if Resizer::new().resize(&src, &mut dst, &opts).is_ok() {
            small.copy_from_slice(dst.buffer());
        }
    }
    let grey: Vec<f64> =
        small.chunks_exact(3).map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).collect();
    let t = dct_table();
    // rows: tmp[k][x] = sum_y t[k][y] * g[y][x]
    let mut tmp = [[0.0f64; N]; K];
    for k in 0..K {
        for y in 0..N {
            let c = t[k][y];
            for x in 0..N {
                tmp[k][x] += c * grey[y * N + x];
            }
        }
    }
    let mut coef = [0.0f64; K * K];
    for k in 0..K {
        for l in 0..K {
            coef[k * K + l] = (0..N).map(|x| tmp[k][x] * t[l][x]).sum();
        }
    }
    let mut sorted = coef;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = (sorted[31] + sorted[32]) / 2.0;
    coef.iter().fold(0u64, |acc, &c| (acc << 1) | (c > median) as u64)
}

/// Finds earlier hashes within a Hamming distance: the 64 bits are cut into `distance + 1` bands, and
/// by the pigeonhole principle a near hash agrees exactly on at least one band.
#[derive(Debug, Default)]
pub struct PhashIndex {
    distance: u32,
    bands: Vec<(u32, u32)>,
    tables: Vec<HashMap<u64, Vec<usize>>>,
    hashes: Vec<(u64, String)>,
}

impl PhashIndex {
    /// An index matching hashes within `distance` bits (0..=15).
    pub fn new(distance: u32) -> Self {
        let nb = distance.min(15) + 1;
        let mut bands = Vec::new();
        let mut start = 0;
        for i in 0..nb {
            let len = 64 / nb + u32::from(i < 64 % nb);
            bands.push((start, len));
            start += len;
        }
        Self { distance, tables: vec![HashMap::new(); bands.len()], bands, hashes: Vec::new() }
    }

    fn band(h: u64, (start, len): (u32, u32)) -> u64 {
        (h >> start) & (if len == 64 { u64::MAX } else { (1u64 << len) - 1 })
    }

    /// The largest Hamming distance matched.
    pub fn distance(&self) -> u32 {
        self.distance
    }

    /// The key of an earlier hash within the distance of `h`, if any.
    pub fn find(&self, h: u64) -> Option<&str> {
        for (b, table) in self.bands.iter().zip(&self.tables) {
            if let Some(ids) = table.get(&Self::band(h, *b)) {
                for &i in ids {
                    if (self.hashes[i].0 ^ h).count_ones() <= self.distance {
                        return Some(&self.hashes[i].1);
                    }
                }
            }
        }
        None
    }

    /// Adds `h` for sample `key`.
    pub fn insert(&mut self, h: u64, key: &str) {
        let id = self.hashes.len();
        self.hashes.push((h, key.to_string()));
        for (b, table) in self.bands.iter().zip(self.tables.iter_mut()) {
            table.entry(Self::band(h, *b)).or_default().push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_near_hashes_only() {
        let mut idx = PhashIndex::new(4);
        idx.insert(0xdead_beef_0000_ffff, "a");
        assert_eq!(idx.find(0xdead_beef_0000_ffff ^ 0b1011), Some("a"));
        assert_eq!(idx.find(0xdead_beef_0000_ffff ^ 0b11111), None);
        assert_eq!(PhashIndex::new(0).find(1), None);
    }

    #[test]
    fn phash_is_stable_under_resize_and_differs_between_images() {
        let grad = RgbImage::from_fn(200, 150, |x, y| {
            image::Rgb([(x % 256) as u8, (y * 2 % 256) as u8, ((x * y) % 256) as u8])
        });
        let small = image::imageops::resize(&grad, 100, 75, image::imageops::FilterType::Triangle);
        let flipped = image::imageops::flip_horizontal(&grad);
        let (a, b, c) = (phash(&grad), phash(&small), phash(&flipped));
        assert!((a ^ b).count_ones() <= 4, "{a:016x} {b:016x}");
        assert!((a ^ c).count_ones() > 10, "{a:016x} {c:016x}");
    }
}
