//! An averaged-perceptron part-of-speech tagger (greedy, two tags of history) in the design of NLTK's
//! `PerceptronTagger` (Honnibal), with hashed features, sparse weight rows, and two additions:
//! - a sentence-level feature, the sentence's letter case (normal, Title Case, lower, upper), so a
//!   capital letter means "proper noun" only where the sentence is normally cased;
//! - what WordNet knows of each word (its parts of speech, the most frequent one, what it inflects),
//!   which is what tells a noun from an adjective among the words the treebank never saw.

use super::hash::fold_bytes;
pub use super::hash::MixHasher;
use super::wordnet::WordNet;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// The history tags before the first word.
pub const START: [&str; 2] = ["-START-", "-START2-"];
const END: [&str; 2] = ["-END-", "-END2-"];

/// Word → class, for the words that skip scoring.
pub type TagDict = HashMap<String, u16, BuildHasherDefault<MixHasher>>;

/// Feature hash → weight row (training).
pub type FeatureRows = HashMap<u64, u32, BuildHasherDefault<MixHasher>>;

/// NLTK's normalisation (`!HYPHEN`, `!YEAR`, `!DIGITS`, else lower case), appended to `out`.
fn normalize_into(word: &str, out: &mut String) {
    let first = word.chars().next();
    if word.contains('-') && first != Some('-') {
        out.push_str("!HYPHEN");
    } else if word.len() == 4 && word.bytes().all(|b| b.is_ascii_digit()) {
        out.push_str("!YEAR");
    } else if first.is_some_and(|c| c.is_ascii_digit()) {
        out.push_str("!DIGITS");
    } else {
        lower_into(word, out);
    }
}

fn lower_into(word: &str, out: &mut String) {
    if word.is_ascii() {
        out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
    } else {
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
}

fn suffix(w: &str, n: usize) -> &[u8] {
    let start = w.char_indices().rev().nth(n.saturating_sub(1)).map(|(i, _)| i).unwrap_or(0);
    &w.as_bytes()[start..]
}

fn prefix(w: &str, n: usize) -> &[u8] {
    let end = w.char_indices().nth(n).map(|(i, _)| i).unwrap_or(w.len());
    &w.as_bytes()[..end]
}

/// The word's shape with runs collapsed ("Hello-2" → "Xx-d"), cut at 8 bytes.
fn shape(w: &str, out: &mut [u8; 8]) -> usize {
    let mut n = 0;
    for c in w.chars() {
        let k = if c.is_uppercase() {
            b'X'
        } else if c.is_lowercase() {
            b'x'
        } else if c.is_ascii_digit() {
            b'd'
        } else if c.is_ascii() {
            c as u8
        } else {
            b'*'
        };
        if n > 0 && out[n - 1] == k {
            continue;
        }
        if n == out.len() {
            break;
        }
        out[n] = k;
        n += 1;
    }
    n
}

/// How a sentence is cased (`n`ormal, `t`itle, `l`ower, `u`pper), which decides what a capital means.
fn case_class(words: &[&str]) -> u8 {
    let (mut alpha, mut upper_initial, mut all_upper, mut any_upper) = (0usize, 0usize, 0usize, false);
    for (i, w) in words.iter().enumerate() {
        let mut letters = w.chars().filter(|c| c.is_alphabetic());
        let Some(first) = letters.next() else { continue };
        let rest_upper = letters.clone().all(char::is_uppercase) && letters.next().is_some();
        any_upper |= w.chars().any(char::is_uppercase);
        if i == 0 {
            continue;
        }
        alpha += 1;
        upper_initial += first.is_uppercase() as usize;
        all_upper += (first.is_uppercase() && rest_upper) as usize;
    }
    if !any_upper {
        b'l'
    } else if alpha >= 2 && all_upper * 4 >= alpha * 3 {
        b'u'
    } else if alpha >= 2 && upper_initial * 4 >= alpha * 3 {
        b't'
    } else {
        b'n'
    }
}

/// Mixes a template id and two hashes into a feature hash.
fn mix(template: u64, a: u64, b: u64) -> u64 {
    let mut h = a ^ (template + 1).wrapping_mul(0x9E3779B97F4A7C15);
    h = (h ^ (h >> 31)).wrapping_mul(0xBF58476D1CE4E5B9) ^ b;
    h = (h ^ (h >> 27)).wrapping_mul(0x94D049BB133111EB);
    h ^ (h >> 31)
}

/// The hash of a string, as features use it.
pub fn str_hash(s: &[u8]) -> u64 {
    let h = fold_bytes(0x243F6A8885A308D3, s);
    let h = (h ^ (h >> 32)).wrapping_mul(0x9E3779B97F4A7C15);
    h ^ (h >> 29)
}

/// The hashes of one word's parts that features are made of.
#[derive(Default, Clone, Copy)]
struct WordHashes {
    /// The normalised word.
    word: u64,
    /// Its last three characters (of the normalised word, as NLTK does for neighbours).
    suf3: u64,
    /// Affixes of the lower-cased raw word: suffixes of 1–4 characters, prefixes of 1 and 3.
    own: [u64; 6],
    /// The raw word's shape.
    shape: u64,
    /// What WordNet knows of the lower-cased word (see [`WordNet::signature`]).
    wordnet: u64,
    /// The word's class if the tag dictionary has it (then `own` and `shape` are not computed).
    known: Option<u16>,
}

/// A sentence prepared for feature extraction: hashes of every word's parts (with two pads on each
/// side) and the sentence's case class. Reused between sentences.
#[derive(Default)]
pub struct Context {
    norm: String,
    lower: String,
    words: Vec<WordHashes>,
    case: u64,
}

impl Context {
    /// Prepares `words`, looking them up in `tagdict`.
    pub fn fill(&mut self, words: &[&str], tagdict: &TagDict) {
        let wn = WordNet::embedded();
        self.words.clear();
        let pad = |p: &str| {
            let word = str_hash(p.as_bytes());
            WordHashes { word, suf3: str_hash(suffix(p, 3)), ..Default::default() }
        };
        self.words.extend(START.iter().map(|p| pad(p)));
        for w in words {
            self.norm.clear();
            normalize_into(w, &mut self.norm);
            self.lower.clear();
            lower_into(w, &mut self.lower);
            let l = self.lower.as_str();
            let mut h = WordHashes {
                word: str_hash(self.norm.as_bytes()),
                suf3: str_hash(suffix(&self.norm, 3)),
                wordnet: wordnet_signature(wn, l),
                known: tagdict.get(*w).copied(),
                ..Default::default()
            };
            if h.known.is_none() {
                h.own =
                    [suffix(l, 1), suffix(l, 2), suffix(l, 3), suffix(l, 4), prefix(l, 1), prefix(l, 3)].map(str_hash);
                let mut shape_buf = [0u8; 8];
                let len = shape(w, &mut shape_buf);
                h.shape = str_hash(&shape_buf[..len]);
            }
            self.words.push(h);
        }
        self.words.extend(END.iter().map(|p| pad(p)));
        self.case = case_class(words) as u64;
    }

    /// The tag dictionary's class of word `k`, if it has one.
    pub fn known(&self, k: usize) -> Option<u16> {
        self.words[k + 2].known
    }
}

/// The WordNet signature of a lower-cased word; for a hyphenated word not in WordNet, that of its
/// last part ("well-known" → "known").
fn wordnet_signature(wn: &WordNet, lower: &str) -> u64 {
    let mut sig = wn.signature(lower);
    if sig == 4 << 4 {
        if let Some((_, last)) = lower.rsplit_once('-') {
            sig = wn.signature(last) | 1 << 15;
        }
    }
    sig as u64 + 1
}

/// The features of word `k` of the sentence in `ctx`, given the hashes of the two previous tags.
pub fn features(ctx: &Context, k: usize, prev: u64, prev2: u64, out: &mut Vec<u64>) {
    out.clear();
    let i = k + 2;
    let (w, p1, p2, n1, n2) =
        (&ctx.words[i], &ctx.words[i - 1], &ctx.words[i - 2], &ctx.words[i + 1], &ctx.words[i + 2]);
    let case = ctx.case << 1 | (k == 0) as u64;
    let [s1, s2, s3, s4, pre1, pre3] = w.own;
    out.extend([
        // NLTK's templates.
        mix(0, 0, 0),
        mix(1, s3, 0),
        mix(2, pre1, 0),
        mix(3, prev, 0),
        mix(4, prev2, 0),
        mix(5, prev, prev2),
        mix(6, w.word, 0),
        mix(7, prev, w.word),
        mix(8, p1.word, 0),
        mix(9, p1.suf3, 0),
        mix(10, p2.word, 0),
        mix(11, n1.word, 0),
        mix(12, n1.suf3, 0),
        mix(13, n2.word, 0),
        // More affixes, word bigrams, and the raw word's shape in the sentence's case.
        mix(14, s1, 0),
        mix(15, s2, 0),
        mix(16, s4, 0),
        mix(17, pre3, 0),
        mix(18, case, w.shape),
        mix(19, mix(case, prev, 0), w.shape),
        mix(20, w.word, n1.word),
        mix(21, p1.word, w.word),
        mix(22, case, w.word),
        // What WordNet knows of this word and the next (helps most on words EWT never saw).
        mix(23, w.wordnet, 0),
        mix(24, prev, w.wordnet),
        mix(25, n1.wordnet, 0),
        mix(26, mix(case, w.shape, 0), w.wordnet),
    ]);
}

/// Entries kept in the slot itself; longer rows live in `Weights::overflow`.
const INLINE: usize = 3;

/// Class byte that marks a slot whose entries are in `Weights::overflow` (classes are below 254).
const OVERFLOW: u32 = 0xff;

/// Class byte that marks a slot whose row is dense, in `Weights::dense` (rows with more entries than
/// [`DENSE_FROM`]: the frequent features, added with SIMD instead of one class at a time).
const DENSE: u32 = 0xfe;

/// Rows with at least this many entries are stored densely.
const DENSE_FROM: usize = 6;

/// A weight entry packed in 32 bits: the class in the low 8 bits of an `f32` whose lowest 8 mantissa
/// bits are given up (relative precision 2^-15, far below what averaging gives). `0` (class 0,
/// weight 0.0) pads short rows and adds nothing.
fn pack(class: u8, value: f32) -> u32 {
    (value.to_bits() & !0xff) | class as u32
}

fn unpack(e: u32) -> (u8, f32) {
    ((e & 0xff) as u8, f32::from_bits(e & !0xff))
}

/// One 16-byte slot of the weights' open-addressing table: the feature's fingerprint (the high half
/// of its hash, never 0; the low half picks the slot) and up to [`INLINE`] entries, zero-padded, or a
/// marker: `entries[0]` = start << 8 | [`OVERFLOW`] with `entries[1]` = length, or row << 8 |
/// [`DENSE`]. Four slots share a cache line and the whole table of EWT's features fits in a 4 MiB L2.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    tag: u32,
    entries: [u32; INLINE],
}

fn fingerprint(key: u64) -> u32 {
    ((key >> 32) as u32).max(1)
}

/// Sparse weights: for each feature, the classes it votes for and how much. Features live in an
/// open-addressing table (linear probing, at most 3/4 full) whose slots are prefetched together before
/// they are read, since tagging speed is bound by these random memory reads. The full rows are kept
/// apart for writing the model out.
#[derive(Debug, Default, Clone)]
pub struct Weights {
    slots: Vec<Slot>,
    overflow: Vec<u32>,
    dense: Vec<f32>,
    classes: usize,
    rows: Vec<(u64, Vec<u32>)>,
}

impl Weights {
    fn slot_of(&self, key: u64) -> usize {
        ((key as u32 as u64).wrapping_mul(0x9E3779B97F4A7C15) >> 32) as usize & (self.slots.len() - 1)
    }

    fn find(&self, key: u64) -> Option<&Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let (tag, mask) = (fingerprint(key), self.slots.len() - 1);
        let mut i = self.slot_of(key);
        loop {
            let s = &self.slots[i];
            if s.tag == tag {
                return Some(s);
            }
            if s.tag == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a slot's weights to `scores`.
    fn add_to(&self, s: &Slot, scores: &mut [f32]) {
        let sparse = match s.entries[0] & 0xff {
            OVERFLOW => {
                let start = (s.entries[0] >> 8) as usize;
                &self.overflow[start..start + s.entries[1] as usize]
            }
            DENSE => {
                let row = (s.entries[0] >> 8) as usize * self.classes;
                scores.iter_mut().zip(&self.dense[row..row + self.classes]).for_each(|(x, w)| *x += w);
                return;
            }
            _ => &s.entries[..],
        };
        for &e in sparse {
            let (c, v) = unpack(e);
            if let Some(x) = scores.get_mut(c as usize) {
                *x += v;
            }
        }
    }

    /// Rebuilds the table from `rows`, sized for at most 3/4 load.
    fn rebuild(&mut self) {
        let size = (self.rows.len() * 4 / 3 + 1).next_power_of_two().max(1024);
        self.slots = vec![Slot::default(); size];
        self.overflow.clear();
        self.dense.clear();
        for r in 0..self.rows.len() {
            let (key, ref packed) = self.rows[r];
            let mut slot = Slot { tag: fingerprint(key), entries: [0; INLINE] };
            if packed.len() <= INLINE {
                slot.entries[..packed.len()].copy_from_slice(packed);
            } else if packed.len() >= DENSE_FROM {
                slot.entries = [((self.dense.len() / self.classes) as u32) << 8 | DENSE, 0, 0];
                let start = self.dense.len();
                self.dense.resize(start + self.classes, 0.0);
                for &e in packed {
                    let (c, v) = unpack(e);
                    self.dense[start + c as usize] = v;
                }
            } else {
                slot.entries = [(self.overflow.len() as u32) << 8 | OVERFLOW, packed.len() as u32, 0];
                self.overflow.extend_from_slice(packed);
            }
            let mask = self.slots.len() - 1;
            let mut i = self.slot_of(key);
            while self.slots[i].tag != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Builds the weights of a `classes`-class model from feature rows (each feature once; classes
    /// below `classes`, which is at most 254).
    pub fn from_rows(classes: usize, rows: impl IntoIterator<Item = (u64, Vec<(u8, f32)>)>) -> Self {
        assert!(classes <= DENSE as usize, "at most {DENSE} classes");
        let mut w = Weights { classes, ..Default::default() };
        w.rows = rows.into_iter().map(|(k, e)| (k, e.into_iter().map(|(c, v)| pack(c, v)).collect())).collect();
        w.rows.sort_unstable_by_key(|r| r.0);
        w.rebuild();
        w
    }

    /// Every feature with its entries, in feature order.
    pub fn rows(&self) -> Vec<(u64, Vec<(u8, f32)>)> {
        self.rows.iter().map(|(k, e)| (*k, e.iter().map(|&x| unpack(x)).collect())).collect()
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no features.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The best class for `feats` (ties go to the higher class, as in NLTK).
    fn predict(&self, feats: &[u64], n: usize, scores: &mut Vec<f32>) -> usize {
        scores.clear();
        scores.resize(n, 0.0);
        if self.slots.is_empty() {
            return best_class(scores);
        }
        #[cfg(target_arch = "x86_64")]
        for f in feats {
            let p = self.slots.as_ptr().wrapping_add(self.slot_of(*f));
            // SAFETY: prefetching is a hint and never faults; `p` is in bounds of `slots`.
            unsafe { std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0) };
        }
        for f in feats {
            if let Some(s) = self.find(*f) {
                self.add_to(s, scores);
            }
        }
        best_class(scores)
    }
}

/// The index of the highest score (the last one on ties).
pub fn best_class(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s >= scores[best] {
            best = i;
        }
    }
    best
}

/// A trained tagger.
#[derive(Debug, Default, Clone)]
pub struct Tagger {
    /// Class names: Penn Treebank tags, some refined with a UPOS tag (see [`super::train::label`]).
    pub tags: Vec<String>,
    tag_hashes: Vec<u64>,
    /// Unambiguous frequent words (as written) → class.
    pub tagdict: TagDict,
    /// The perceptron's (averaged) weights.
    pub weights: Weights,
}

/// Buffers reused between sentences.
#[derive(Default)]
pub struct Scratch {
    ctx: Context,
    feats: Vec<u64>,
    scores: Vec<f32>,
}

/// The hashes of the two history tags before the first word.
pub fn start_hashes() -> [u64; 2] {
    START.map(|t| str_hash(t.as_bytes()))
}

impl Tagger {
    /// A tagger with these classes and tag dictionary and no weights yet.
    pub fn new(tags: Vec<String>, tagdict: TagDict) -> Self {
        let tag_hashes = tags.iter().map(|t| str_hash(t.as_bytes())).collect();
        Self { tags, tag_hashes, tagdict, weights: Weights::default() }
    }

    /// The Penn Treebank tag of class `c` (without the UPOS refinement).
    pub fn xpos(&self, c: usize) -> &str {
        let t = self.tags[c].as_str();
        t.split_once('^').map_or(t, |(x, _)| x)
    }

    /// Whether class `c` is a noun in UD's sense (NOUN or PROPN): NN, NNS, NNP or NNPS unless refined
    /// as another UPOS, or another tag refined as NOUN or PROPN.
    pub fn is_noun(&self, c: usize) -> bool {
        match self.tags[c].split_once('^') {
            None => self.tags[c].starts_with("NN"),
            Some((_, upos)) => upos == "NOUN" || upos == "PROPN",
        }
    }

    /// The hash of class `c`'s name, as features use it.
    pub fn tag_hash(&self, c: usize) -> u64 {
        self.tag_hashes[c]
    }

    /// Tags a tokenised sentence into `out` (class indices), reusing `scratch` between calls.
    pub fn tag_into(&self, words: &[&str], scratch: &mut Scratch, out: &mut Vec<usize>) {
        out.clear();
        scratch.ctx.fill(words, &self.tagdict);
        let [mut p1, mut p2] = start_hashes();
        for k in 0..words.len() {
            let c = match scratch.ctx.known(k) {
                Some(c) => c as usize,
                None => {
                    features(&scratch.ctx, k, p1, p2, &mut scratch.feats);
                    self.weights.predict(&scratch.feats, self.tags.len(), &mut scratch.scores)
                }
            };
            out.push(c);
            p2 = p1;
            p1 = self.tag_hashes[c];
        }
    }

    /// Tags a tokenised sentence; returns class indices.
    pub fn tag_ids(&self, words: &[&str]) -> Vec<usize> {
        let mut out = Vec::with_capacity(words.len());
        self.tag_into(words, &mut Scratch::default(), &mut out);
        out
    }

    /// Tags a tokenised sentence; returns Penn Treebank tag names.
    pub fn tag<'a>(&'a self, words: &[&str]) -> Vec<&'a str> {
        self.tag_ids(words).into_iter().map(|c| self.xpos(c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_score_like_a_dense_sum_for_every_row_layout() {
        let classes = 40;
        // Rows of 1..=40 entries: inline, overflow and dense layouts.
        let rows: Vec<(u64, Vec<(u8, f32)>)> = (1..=40u64)
            .map(|len| {
                let key = len.wrapping_mul(0x9E3779B97F4A7C15) ^ 0xABCDEF;
                (key, (0..len as u8).map(|c| (c, (c as f32 + 1.0) * 0.25 - len as f32 * 0.5)).collect())
            })
            .collect();
        let w = Weights::from_rows(classes, rows.clone());
        assert_eq!(w.len(), 40);
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| r.0);
        assert_eq!(w.rows(), sorted, "rows come back exactly (the weights are exact in 24 bits)");
        for pick in [vec![0usize], vec![2, 3], vec![5, 6, 7, 30], (0..40).collect()] {
            let feats: Vec<u64> = pick.iter().map(|&i| rows[i].0).chain([12345]).collect();
            let mut expect = vec![0f32; classes];
            for &i in &pick {
                for &(c, v) in &rows[i].1 {
                    expect[c as usize] += v;
                }
            }
            let mut scores = Vec::new();
            let best = w.predict(&feats, classes, &mut scores);
            for (a, b) in scores.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-4, "{scores:?} vs {expect:?}");
            }
            assert_eq!(best, best_class(&expect));
        }
    }
}
