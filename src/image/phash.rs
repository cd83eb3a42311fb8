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

/// The largest Hamming distance the whole-dataset search takes (of 64 bits; beyond it unrelated
/// images match).
pub const MAX_REPEAT_DISTANCE: u32 = 15;

/// How the whole-dataset search cuts the 64 bits: `parts` substrings (offset, bits), each probed
/// with every value within `radius` bits of the sample's (a hash within `distance` of another is,
/// by the pigeonhole principle, within `distance / parts` on at least one substring).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MultiIndexPlan {
    parts: Vec<(u32, u32)>,
    radius: u32,
}

impl MultiIndexPlan {
    /// The plan with the least expected work for `n` hashes: probes times bucket occupancy, plus the
    /// tables' size (substrings of at most 24 bits, 64 MiB of offsets).
    fn for_size(n: usize, distance: u32) -> Self {
        let mut best: Option<(f64, Self)> = None;
        for m in 3..=16u32 {
            let parts: Vec<(u32, u32)> = (0..m)
                .scan(0, |start, i| {
                    let bits = 64 / m + u32::from(i < 64 % m);
                    let part = (*start, bits);
                    *start += bits;
                    Some(part)
                })
                .collect();
            let radius = distance / m;
            let widest = parts[0].1;
            let probes: f64 = (0..=radius).map(|k| binomial(widest, k)).sum();
            let table = (1u64 << widest) as f64;
            let cost = n as f64 * m as f64 * probes * (1.0 + n as f64 / table) + m as f64 * table;
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, Self { parts, radius }));
            }
        }
        best.expect("at least one plan").1
    }
}

fn binomial(n: u32, k: u32) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Calls `f` with every value of `bits` bits within Hamming distance `radius` of `value`.
fn for_each_neighbour(value: u32, bits: u32, radius: u32, lowest: u32, f: &mut impl FnMut(u32)) {
    f(value);
    if radius == 0 {
        return;
    }
    for b in lowest..bits {
        for_each_neighbour(value ^ (1 << b), bits, radius - 1, b + 1, f);
    }
}

/// One substring's table: for each of its values, the ids of the hashes having it, ascending.
struct PartTable {
    offsets: Vec<u32>,
    ids: Vec<u32>,
}

impl PartTable {
    fn build(hashes: &[u64], (start, bits): (u32, u32)) -> Self {
        let mask = (1u64 << bits) - 1;
        let mut offsets = vec![0u32; (1usize << bits) + 1];
        for h in hashes {
            offsets[((h >> start) & mask) as usize + 1] += 1;
        }
        for v in 1..offsets.len() {
            offsets[v] += offsets[v - 1];
        }
        let mut next = offsets.clone();
        let mut ids = vec![0u32; hashes.len()];
        for (id, h) in hashes.iter().enumerate() {
            let slot = &mut next[((h >> start) & mask) as usize];
            ids[*slot as usize] = id as u32;
            *slot += 1;
        }
        Self { offsets, ids }
    }

    fn bucket(&self, value: u32) -> &[u32] {
        &self.ids[self.offsets[value as usize] as usize..self.offsets[value as usize + 1] as usize]
    }
}

/// What [`first_copies`] answers for a hash that repeats none before it.
pub const KEPT: u32 = u32::MAX;

/// Whole-dataset repeats in one pass over `hashes` in dataset order, as ingest finds them within a
/// worker: a hash within `distance` bits of an earlier kept one is a repeat of the earliest such
/// kept hash, and is not kept itself (so repeats never chain). Returns, for each hash, the index of
/// the kept hash it repeats, or [`KEPT`]. Memory besides the hashes: 4 bytes a hash for the
/// answer and 4 per substring table (3 for large sets), plus the tables' offsets (at most 48 MiB);
/// `distance` at most [`MAX_REPEAT_DISTANCE`]. Multi-index hashing (Norouzi et al.) over
/// direct-addressed substrings.
pub fn first_copies(hashes: &[u64], distance: u32) -> Vec<u32> {
    use rayon::prelude::*;
    assert!(distance <= MAX_REPEAT_DISTANCE, "pHash distance {distance} over {MAX_REPEAT_DISTANCE}");
    assert!(hashes.len() < u32::MAX as usize, "more hashes than a u32 counts");
    let index =
        MultiIndex { plan: MultiIndexPlan::for_size(hashes.len(), distance), tables: Vec::new(), hashes, distance };
    let tables = index.plan.parts.par_iter().map(|&p| PartTable::build(hashes, p)).collect();
    let index = MultiIndex { tables, ..index };
    // In parallel: the earliest few hashes near each one, kept or not (most hashes have none).
    let near: Vec<(u32, Nearest)> = (0..hashes.len() as u32)
        .into_par_iter()
        .with_min_len(1 << 12)
        .filter_map(|j| {
            let mut found = Vec::new();
            index.visit_near(j, &mut |i| found.push(i));
            (!found.is_empty()).then(|| (j, Nearest::of(found)))
        })
        .collect();
    // In order: a hash repeats the earliest kept one among them; when those stored were all
    // repeats themselves and there were more, the table is searched again for a kept one.
    let mut first = vec![KEPT; hashes.len()];
    for (j, nearest) in near {
        let stored = nearest.ids[..nearest.len as usize].iter().copied().find(|&i| first[i as usize] == KEPT);
        first[j as usize] = match stored {
            Some(i) => i,
            None if nearest.more => {
                let mut best = KEPT;
                index.visit_near(j, &mut |i| {
                    if first[i as usize] == KEPT && i < best {
                        best = i;
                    }
                });
                best
            }
            None => KEPT,
        };
    }
    first
}

/// Near hashes stored per hash in the parallel pass.
const STORED_NEAR: usize = 4;

/// The earliest hashes near one hash (ascending), and whether there were more.
struct Nearest {
    ids: [u32; STORED_NEAR],
    len: u8,
    more: bool,
}

impl Nearest {
    fn of(mut found: Vec<u32>) -> Self {
        found.sort_unstable();
        found.dedup();
        let mut ids = [0; STORED_NEAR];
        let len = found.len().min(STORED_NEAR);
        ids[..len].copy_from_slice(&found[..len]);
        Self { ids, len: len as u8, more: found.len() > STORED_NEAR }
    }
}

/// The substring tables over a set of hashes.
struct MultiIndex<'a> {
    plan: MultiIndexPlan,
    tables: Vec<PartTable>,
    hashes: &'a [u64],
    distance: u32,
}

impl MultiIndex<'_> {
    /// Calls `f` with every earlier hash (index below `j`) within the distance of hash `j`, once per
    /// substring it shares (so possibly more than once).
    fn visit_near(&self, j: u32, f: &mut impl FnMut(u32)) {
        let h = self.hashes[j as usize];
        for (&(start, bits), table) in self.plan.parts.iter().zip(&self.tables) {
            let value = ((h >> start) & ((1u64 << bits) - 1)) as u32;
            for_each_neighbour(value, bits, self.plan.radius, 0, &mut |v| {
                for &i in table.bucket(v) {
                    if i >= j {
                        break;
                    }
                    if (self.hashes[i as usize] ^ h).count_ones() <= self.distance {
                        f(i);
                    }
                }
            });
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

    /// The greedy search of every pair, which `first_copies` must equal.
    fn first_copies_by_every_pair(hashes: &[u64], distance: u32) -> Vec<u32> {
        let mut first = vec![KEPT; hashes.len()];
        for j in 0..hashes.len() {
            first[j] = (0..j)
                .find(|&i| first[i] == KEPT && (hashes[i] ^ hashes[j]).count_ones() <= distance)
                .map_or(KEPT, |i| i as u32);
        }
        first
    }

    #[test]
    fn first_copies_equal_the_search_of_every_pair() {
        let mut rng = crate::rng::Rng::new(7);
        for distance in [0, 1, 4, 8, 15] {
            // Random hashes, and repeats planted at every distance up to twice the limit.
            let mut hashes: Vec<u64> = (0..3000).map(|_| rng.next_u64()).collect();
            for k in 0..1500 {
                let of = hashes[(rng.next_u64() % hashes.len() as u64) as usize];
                let mut h = of;
                for _ in 0..(k % (2 * distance as usize + 2)) {
                    h ^= 1 << (rng.next_u64() % 64);
                }
                hashes.push(h);
            }
            // A cluster of 40 copies of one hash and its near variants: more near hashes than stored.
            let base = hashes[0];
            for k in 0..40u64 {
                hashes.push(base ^ if k % 2 == 0 { 0 } else { 1 << (k % 64) });
            }
            let expected = first_copies_by_every_pair(&hashes, distance);
            assert!(expected.iter().filter(|f| **f != KEPT).count() > 500, "planted repeats are found");
            assert_eq!(first_copies(&hashes, distance), expected, "distance {distance}");
        }
        assert!(first_copies(&[], 4).is_empty());
    }

    #[test]
    fn a_hash_whose_earliest_near_hashes_are_all_repeats_finds_the_kept_one() {
        // 0 is kept; five 4-bit hashes repeat it; `y` (7 bits) is kept; `x` (5 bits) is within 1 of
        // the five repeats, 2 of `y` and 5 of 0: its earliest near hashes are all repeats.
        let repeats = [0b01111, 0b10111, 0b11011, 0b11101, 0b11110];
        let (y, x) = (0b11_0001_1111, 0b1_1111);
        let hashes: Vec<u64> = [0].into_iter().chain(repeats).chain([y, x]).collect();
        let first = first_copies(&hashes, 4);
        assert_eq!(first, [KEPT, 0, 0, 0, 0, 0, KEPT, 6]);
        assert_eq!(first, first_copies_by_every_pair(&hashes, 4));
    }

    #[test]
    fn plans_use_wide_substrings_for_large_sets() {
        let big = MultiIndexPlan::for_size(10_000_000, 4);
        assert_eq!((big.parts.len(), big.radius), (3, 1));
        assert_eq!(big.parts.iter().map(|p| p.1).sum::<u32>(), 64);
        let small = MultiIndexPlan::for_size(100, 4);
        assert!(small.parts[0].1 <= 16, "{small:?}");
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
