//! Shard ids and sample keys, computed exactly as img2dataset does.

use std::path::Path;

/// How input rows are cut into shards and how keys are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    /// Input rows per shard (img2dataset's `number_sample_per_shard`).
    pub samples_per_shard: usize,
    /// Digits of the shard id in names (img2dataset's `oom_shard_count`, default 5).
    pub shard_digits: usize,
}

impl ShardLayout {
    /// A layout with `samples_per_shard` rows per shard and 5-digit shard ids.
    pub fn new(samples_per_shard: usize) -> Self {
        Self { samples_per_shard: samples_per_shard.max(1), shard_digits: 5 }
    }

    /// Digits of the in-shard row index: `ceil(log10(samples_per_shard))`.
    pub fn row_digits(&self) -> usize {
        let mut digits = 0;
        let mut p: u64 = 1;
        while p < self.samples_per_shard as u64 {
            p *= 10;
            digits += 1;
        }
        digits
    }

    /// The sample key of row `row` of shard `shard`: `shard * 10^row_digits + row`, zero-padded.
    pub fn key(&self, shard: usize, row: usize) -> String {
        let rd = self.row_digits();
        let value = shard as u128 * 10u128.pow(rd as u32) + row as u128;
        format!("{value:0width$}", width = rd + self.shard_digits)
    }

    /// Number of shards needed for `rows` input rows.
    pub fn shard_count(&self, rows: usize) -> usize {
        rows.div_ceil(self.samples_per_shard)
    }

    /// The input row range of shard `shard` when there are `rows` rows in all.
    pub fn rows_of(&self, shard: usize, rows: usize) -> std::ops::Range<usize> {
        let start = (shard * self.samples_per_shard).min(rows);
        start..(start + self.samples_per_shard).min(rows)
    }

    /// The base name of shard `shard`: `00042`.
    pub fn name(&self, shard: usize) -> String {
        format!("{shard:0width$}", width = self.shard_digits)
    }
}

/// The longest file stem [`key_file_stem`] gives, in bytes: room left under the usual 255-byte
/// name limit for a shard prefix, an extension and a temporary-file suffix.
pub const MAX_KEY_STEM: usize = 128;

/// A file stem for sample `key`: the key with `/` as `_`, or, when that is longer than
/// [`MAX_KEY_STEM`] bytes or holds a character no file name may, its first 64 bytes made safe and
/// 16 hex digits of the key's sha256. Distinct keys give distinct stems; the key itself is kept in
/// the index that names the file.
pub fn key_file_stem(key: &str) -> String {
    let flat = key.replace('/', "_");
    if flat.len() <= MAX_KEY_STEM && !flat.contains(['\\', '\0']) {
        return flat;
    }
    let flat = flat.replace(['\\', '\0'], "_");
    let mut cut = 64.min(flat.len());
    while !flat.is_char_boundary(cut) {
        cut -= 1;
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    format!("{}-{}", &flat[..cut], &digest[..16])
}

/// The base name of shard `shard` with the default 5 digits.
pub fn shard_name(shard: usize) -> String {
    ShardLayout::new(1).name(shard)
}

/// Shard ids in `dir` (a folder or a store prefix) that are done (their `_stats.json` exists), sorted.
pub fn done_shards(dir: &Path) -> std::io::Result<Vec<usize>> {
    let names = crate::store::names_in(dir).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let mut ids: Vec<usize> =
        names.iter().filter_map(|n| n.strip_suffix("_stats.json").and_then(|s| s.parse::<usize>().ok())).collect();
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_get_short_distinct_stems() {
        assert_eq!(key_file_stem("a/b"), "a_b");
        let (k1, k2) = ("x".repeat(255), format!("{}y", "x".repeat(254)));
        let (s1, s2) = (key_file_stem(&k1), key_file_stem(&k2));
        assert!(s1.len() <= MAX_KEY_STEM && s1.starts_with(&"x".repeat(64)), "{s1}");
        assert_ne!(s1, s2);
        assert_eq!(key_file_stem("a\\b").len(), 3 + 17);
    }

    #[test]
    fn keys_match_img2dataset() {
        let l = ShardLayout::new(10_000);
        assert_eq!(l.row_digits(), 4);
        assert_eq!(l.key(1, 5), "000010005");
        assert_eq!(l.key(0, 0), "000000000");
        assert_eq!(ShardLayout::new(1000).key(3, 7), "00003007");
        assert_eq!(ShardLayout::new(1).key(3, 0), "00003");
        assert_eq!(l.name(42), "00042");
        assert_eq!(l.shard_count(20_001), 3);
        assert_eq!(l.rows_of(2, 20_001), 20_000..20_001);
    }
}
