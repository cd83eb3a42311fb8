//! Counting nouns over a caption set (PixArt-α Table 1): per caption, the tokens the tagger calls
//! nouns, keyed by lemma or surface form; over the set, total and distinct nouns, the nouns seen more
//! than the validity threshold, and histograms of nouns, words and T5 tokens per caption. Counters
//! merge, so a caption set is counted in parallel pieces and in bounded memory (the noun table grows
//! with the vocabulary, not with the number of captions).

use super::tagger::{MixHasher, Scratch, Tagger};
use super::tokenize::{normalize_quotes, tokenize};
use super::wordnet::WordNet;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Which form of a noun is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum NounForm {
    /// Plural nouns (NNS, NNPS) folded to their WordNet lemma: "dogs" and "dog" are one noun.
    Lemma,
    /// The word as written: "dogs" and "dog" are two nouns (closest to the paper's NLTK count).
    Surface,
}

/// How nouns are counted. Every choice is a flag of `pixforge density`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountOptions {
    /// A distinct noun is "valid" when it occurs more than this many times (the paper: 10).
    #[arg(long, default_value_t = 10)]
    pub valid_threshold: u64,
    /// Count lemmas (plurals folded with WordNet) or surface forms.
    #[arg(long, value_enum, default_value_t = NounForm::Lemma)]
    pub form: NounForm,
    /// Keep letter case ("Apple" and "apple" are two nouns); by default nouns are lower-cased.
    #[arg(long)]
    pub case_sensitive: bool,
    /// Leave proper nouns (NNP, NNPS) out of the counts.
    #[arg(long)]
    pub no_proper_nouns: bool,
    /// How many of the most frequent nouns the report lists.
    #[arg(long, default_value_t = 50)]
    pub top: usize,
}

impl Default for CountOptions {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// Counts of a non-negative quantity per caption: exact up to `CAP - 1`, the rest in the last bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// `counts[v]` captions had value `v` (the last bucket: `v >= counts.len() - 1`).
    pub counts: Vec<u64>,
    /// Sum of all values (for the mean).
    pub sum: u64,
    /// Largest value seen.
    pub max: u64,
}

const CAP: usize = 1024;

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; CAP], sum: 0, max: 0 }
    }
}

impl Histogram {
    /// Records one caption's value.
    pub fn add(&mut self, v: u64) {
        self.counts[(v as usize).min(CAP - 1)] += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Histogram) {
        self.counts.iter_mut().zip(&o.counts).for_each(|(a, b)| *a += b);
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    /// Number of values.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean value (0 when empty).
    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.n().max(1) as f64
    }

    /// The smallest value `v` with at least `q` of the values `<= v` (exact below the cap).
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.n();
        if n == 0 {
            return 0;
        }
        let target = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (v, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return if v == CAP - 1 { self.max } else { v as u64 };
            }
        }
        self.max
    }

    /// Number of values greater than `v`.
    pub fn above(&self, v: u64) -> u64 {
        self.counts.iter().skip(v as usize + 1).sum()
    }
}

/// Noun → occurrences.
pub type NounTable = HashMap<String, u64, BuildHasherDefault<MixHasher>>;

/// The running counts of one caption set.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    /// Captions seen (including empty ones).
    pub captions: u64,
    /// Captions with no words.
    pub empty: u64,
    /// Noun occurrences.
    pub nouns: NounTable,
    /// Noun tokens that are proper nouns (counted in `nouns` unless proper nouns are left out).
    pub proper: u64,
    /// Nouns per caption.
    pub nouns_per_caption: Histogram,
    /// Words (tokens with a letter or digit) per caption.
    pub words_per_caption: Histogram,
    /// T5 tokens per caption (with the end-of-sequence token), when a T5 tokenizer is given.
    pub t5_tokens: Option<Histogram>,
}

impl Counter {
    /// Adds another counter's counts.
    pub fn merge(&mut self, o: Counter) {
        self.captions += o.captions;
        self.empty += o.empty;
        self.proper += o.proper;
        if self.nouns.len() < o.nouns.len() {
            let mine = std::mem::replace(&mut self.nouns, o.nouns);
            Self::merge_table(&mut self.nouns, mine);
        } else {
            Self::merge_table(&mut self.nouns, o.nouns);
        }
        self.nouns_per_caption.merge(&o.nouns_per_caption);
        self.words_per_caption.merge(&o.words_per_caption);
        match (&mut self.t5_tokens, o.t5_tokens) {
            (Some(a), Some(b)) => a.merge(&b),
            (a @ None, b) => *a = b,
            _ => {}
        }
    }

    fn merge_table(into: &mut NounTable, from: NounTable) {
        for (k, v) in from {
            *into.entry(k).or_default() += v;
        }
    }

    /// Total noun occurrences.
    pub fn total_nouns(&self) -> u64 {
        self.nouns.values().sum()
    }
}

/// Whether a tagged token counts as a concept noun: a noun class, with a letter, not an address.
fn is_concept_noun(tagger: &Tagger, class: usize, word: &str) -> bool {
    tagger.is_noun(class) && tagger.xpos(class) != "ADD" && word.chars().any(char::is_alphabetic)
}

/// The key a noun is counted under: lower-cased (or as written with `case_sensitive`), plurals
/// folded to their WordNet lemma in lemma form (keeping a capital initial with `case_sensitive`).
pub fn noun_key(word: &str, xpos: &str, o: &CountOptions, wn: &WordNet) -> String {
    // Title-Case alt text tags "Men" NNP: irregular plurals are folded whatever the tag.
    let plural = o.form == NounForm::Lemma
        && (xpos == "NNS" || xpos == "NNPS" || (xpos == "NNP" && wn.is_irregular_plural(&word.to_lowercase())));
    match (plural, o.case_sensitive) {
        (false, true) => word.to_string(),
        (false, false) => word.to_lowercase(),
        (true, false) => wn.singular(&word.to_lowercase()),
        (true, true) => {
            let lemma = wn.singular(&word.to_lowercase());
            if word.starts_with(char::is_uppercase) {
                let mut c = lemma.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
            } else {
                lemma
            }
        }
    }
}

/// Buffers one worker reuses between captions.
#[derive(Default)]
pub struct Work {
    scratch: Scratch,
    classes: Vec<usize>,
}

/// Counts nouns in captions with a tagger (and optionally a T5 tokenizer).
pub struct NounCounter<'a> {
    /// The tagger.
    pub tagger: &'a Tagger,
    /// Counting choices.
    pub options: &'a CountOptions,
    /// T5 tokenizer for token-length statistics.
    pub t5: Option<&'a tokenizers::Tokenizer>,
}

impl NounCounter<'_> {
    /// The nouns of one caption, in order, as (key, is proper noun); also its word count.
    pub fn caption_nouns(&self, text: &str, work: &mut Work) -> (Vec<(String, bool)>, u64) {
        let text = normalize_quotes(text);
        let mut tokens = Vec::new();
        tokenize(&text, &mut tokens);
        let words = tokens.iter().filter(|t| t.chars().any(char::is_alphanumeric)).count() as u64;
        self.tagger.tag_into(&tokens, &mut work.scratch, &mut work.classes);
        let wn = WordNet::embedded();
        let mut nouns = Vec::new();
        for (t, &c) in tokens.iter().zip(&work.classes) {
            if !is_concept_noun(self.tagger, c, t) {
                continue;
            }
            let xpos = self.tagger.xpos(c);
            let proper = xpos.starts_with("NNP");
            if proper && self.options.no_proper_nouns {
                continue;
            }
            nouns.push((noun_key(t, xpos, self.options, wn), proper));
        }
        (nouns, words)
    }

    /// The words of one caption the tagger takes for concept nouns, in order, each with the key it
    /// is counted under (for showing them in the caption).
    pub fn noun_words(&self, text: &str, work: &mut Work) -> Vec<(String, String)> {
        let text = normalize_quotes(text);
        let mut tokens = Vec::new();
        tokenize(&text, &mut tokens);
        self.tagger.tag_into(&tokens, &mut work.scratch, &mut work.classes);
        let wn = WordNet::embedded();
        tokens
            .iter()
            .zip(&work.classes)
            .filter(|(t, &c)| is_concept_noun(self.tagger, c, t))
            .map(|(t, &c)| (t.to_string(), noun_key(t, self.tagger.xpos(c), self.options, wn)))
            .collect()
    }

    /// Adds one caption to `counter`.
    pub fn add(&self, text: &str, counter: &mut Counter, work: &mut Work) -> anyhow::Result<()> {
        let (nouns, words) = self.caption_nouns(text, work);
        counter.captions += 1;
        counter.empty += (words == 0) as u64;
        counter.words_per_caption.add(words);
        counter.nouns_per_caption.add(nouns.len() as u64);
        for (key, proper) in nouns {
            counter.proper += proper as u64;
            match counter.nouns.get_mut(key.as_str()) {
                Some(n) => *n += 1,
                None => {
                    counter.nouns.insert(key, 1);
                }
            }
        }
        if let Some(tok) = self.t5 {
            let enc = tok.encode(text, true).map_err(|e| anyhow::anyhow!("T5 tokenizer failed on {text:?}: {e}"))?;
            counter.t5_tokens.get_or_insert_with(Histogram::default).add(enc.get_ids().len() as u64);
        }
        Ok(())
    }
}
