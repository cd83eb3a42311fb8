//! The hash the tagger's and the density report's tables use: FxHash's byte folding and one
//! multiply-xorshift mix, fast for short words and for keys that are already hashes.

use std::hash::Hasher;

/// Hasher for keys that are already hashes: one multiply-xorshift mix.
#[derive(Default, Clone, Copy)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fold_bytes(self.0, bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E3779B97F4A7C15);
        x ^ (x >> 29)
    }
}

/// Folds bytes into a running hash eight at a time (FxHash's step), with the length mixed in.
pub fn fold_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517cc1b727220a95;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    let last = chunks.remainder().iter().rev().fold(0u64, |v, &b| v << 8 | b as u64);
    h = (h.rotate_left(5) ^ last).wrapping_mul(K);
    (h.rotate_left(5) ^ bytes.len() as u64).wrapping_mul(K)
}
