//! An averaged-perceptron part-of-speech tagger (greedy, two tags of history), as in NLTK's
//! `PerceptronTagger` and Honnibal's design, with hashed features and dense per-feature rows.

use std::collections::HashMap;

const START: [&str; 2] = ["-START-", "-START2-"];
const END: [&str; 2] = ["-END-", "-END2-"];

/// FNV-1a over a template id and byte strings.
fn fhash(template: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ template as u64;
    h = h.wrapping_mul(0x100000001b3);
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// NLTK's normalisation: `!HYPHEN`, `!YEAR`, `!DIGITS`, else lower case.
pub fn normalize(word: &str) -> String {
    let first = word.chars().next();
    if word.contains('-') && first != Some('-') {
        "!HYPHEN".into()
    } else if word.len() == 4 && word.bytes().all(|b| b.is_ascii_digit()) {
        "!YEAR".into()
    } else if first.is_some_and(|c| c.is_ascii_digit()) {
        "!DIGITS".into()
    } else {
        word.to_lowercase()
    }
}

fn suffix(w: &str, n: usize) -> &str {
    let start = w.char_indices().rev().nth(n.saturating_sub(1)).map(|(i, _)| i).unwrap_or(0);
    &w[start..]
}

fn prefix(w: &str, n: usize) -> &str {
    let end = w.char_indices().nth(n).map(|(i, _)| i).unwrap_or(w.len());
    &w[..end]
}

fn shape(w: &str) -> String {
    let mut s = String::new();
    for c in w.chars() {
        let k = if c.is_uppercase() {
            'X'
        } else if c.is_lowercase() {
            'x'
        } else if c.is_ascii_digit() {
            'd'
        } else {
            c
        };
        if !s.ends_with(k) {
            s.push(k);
        }
    }
    s
}

/// The feature hashes of position `i` (index into `context`, which has two start pads) given the raw
/// word and the two previous tags.
pub fn features(i: usize, raw: &str, context: &[String], prev: &str, prev2: &str, out: &mut Vec<u64>) {
    out.clear();
    let w = context[i].as_str();
    out.push(fhash(0, &[]));
    out.push(fhash(1, &[suffix(w, 3).as_bytes()]));
    out.push(fhash(2, &[prefix(w, 1).as_bytes()]));
    out.push(fhash(3, &[prev.as_bytes()]));
    out.push(fhash(4, &[prev2.as_bytes()]));
    out.push(fhash(5, &[prev.as_bytes(), prev2.as_bytes()]));
    out.push(fhash(6, &[w.as_bytes()]));
    out.push(fhash(7, &[prev.as_bytes(), w.as_bytes()]));
    out.push(fhash(8, &[context[i - 1].as_bytes()]));
    out.push(fhash(9, &[suffix(&context[i - 1], 3).as_bytes()]));
    out.push(fhash(10, &[context[i - 2].as_bytes()]));
    out.push(fhash(11, &[context[i + 1].as_bytes()]));
    out.push(fhash(12, &[suffix(&context[i + 1], 3).as_bytes()]));
    out.push(fhash(13, &[context[i + 2].as_bytes()]));
    // Richer features: more affixes and the raw word's shape (case pattern).
    out.push(fhash(14, &[suffix(w, 1).as_bytes()]));
    out.push(fhash(15, &[suffix(w, 2).as_bytes()]));
    out.push(fhash(16, &[suffix(w, 4).as_bytes()]));
    out.push(fhash(17, &[prefix(w, 3).as_bytes()]));
    let sh = shape(raw);
    out.push(fhash(18, &[sh.as_bytes()]));
    out.push(fhash(19, &[prev.as_bytes(), sh.as_bytes()]));
    out.push(fhash(20, &[w.as_bytes(), context[i + 1].as_bytes()]));
    out.push(fhash(21, &[context[i - 1].as_bytes(), w.as_bytes()]));
}

/// The context array of a sentence: two start pads, normalised words, two end pads.
pub fn context_of(words: &[&str]) -> Vec<String> {
    let mut c: Vec<String> = START.iter().map(|s| s.to_string()).collect();
    c.extend(words.iter().map(|w| normalize(w)));
    c.extend(END.iter().map(|s| s.to_string()));
    c
}

/// A trained (or training) tagger.
#[derive(Debug, Default, Clone)]
pub struct Tagger {
    /// Tag names; a class is an index into this.
    pub tags: Vec<String>,
    /// Feature hash → row of `weights`.
    pub rows: HashMap<u64, u32>,
    /// Dense weights, `rows.len() * tags.len()`.
    pub weights: Vec<f32>,
    /// Unambiguous frequent words (normalised form as in training: the raw word) → class.
    pub tagdict: HashMap<String, u16>,
}

impl Tagger {
    fn scores(&self, feats: &[u64], scores: &mut [f32]) {
        scores.iter_mut().for_each(|s| *s = 0.0);
        let n = self.tags.len();
        for f in feats {
            if let Some(&r) = self.rows.get(f) {
                let row = &self.weights[r as usize * n..(r as usize + 1) * n];
                for (s, w) in scores.iter_mut().zip(row) {
                    *s += w;
                }
            }
        }
    }

    fn best(scores: &[f32]) -> usize {
        let mut best = 0;
        for (i, &s) in scores.iter().enumerate() {
            if s >= scores[best] {
                best = i;
            }
        }
        best
    }

    /// Tags a tokenised sentence; returns class indices.
    pub fn tag_ids(&self, words: &[&str]) -> Vec<usize> {
        let context = context_of(words);
        let mut feats = Vec::with_capacity(24);
        let mut scores = vec![0.0f32; self.tags.len()];
        let mut out = Vec::with_capacity(words.len());
        let (mut p1, mut p2) = (START[0].to_string(), START[1].to_string());
        for (i, w) in words.iter().enumerate() {
            let c = match self.tagdict.get(*w) {
                Some(&c) => c as usize,
                None => {
                    features(i + 2, w, &context, &p1, &p2, &mut feats);
                    self.scores(&feats, &mut scores);
                    Self::best(&scores)
                }
            };
            out.push(c);
            p2 = std::mem::replace(&mut p1, self.tags[c].clone());
        }
        out
    }

    /// Tags a tokenised sentence; returns tag names.
    pub fn tag<'a>(&'a self, words: &[&str]) -> Vec<&'a str> {
        self.tag_ids(words).into_iter().map(|c| self.tags[c].as_str()).collect()
    }
}
