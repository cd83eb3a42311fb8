//! WordNet 3.0 lemmas and morphology (embedded from Debian's `wordnet-base`, see
//! `assets/wordnet/LICENSE`): plural nouns folded to their lemma the way WordNet's morphy does, and a
//! per-word part-of-speech signature that the tagger uses for words its treebank never saw.

use super::hash::MixHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::OnceLock;

/// WordNet's parts of speech, in its order: noun, verb, adjective, adverb.
pub const POS: [u8; 4] = [b'n', b'v', b'a', b'r'];

/// Morphy's detachment rules per part of speech: (inflected suffix, lemma ending).
const RULES: [&[(&str, &str)]; 4] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// The embedded lexicon.
#[derive(Debug)]
pub struct WordNet {
    /// Lemma → its parts of speech (bit i = `POS[i]`) and the most frequent one.
    lemmas: HashMap<String, (u8, u8)>,
    /// (part of speech index, inflected form) → lemmas.
    exceptions: HashMap<(u8, String), Vec<String>>,
    /// Every lemma and every form morphy maps to a lemma → its [`WordNet::signature`].
    signatures: HashMap<String, u16, BuildHasherDefault<MixHasher>>,
}

fn pos_index(c: u8) -> Option<u8> {
    POS.iter().position(|&p| p == c).map(|i| i as u8)
}

impl WordNet {
    /// The lexicon built into the binary.
    pub fn embedded() -> &'static WordNet {
        static WN: OnceLock<WordNet> = OnceLock::new();
        WN.get_or_init(|| {
            WordNet::parse(
                include_str!("../../assets/wordnet/lemmas.tsv"),
                include_str!("../../assets/wordnet/exceptions.tsv"),
            )
            .expect("the embedded WordNet data parse")
        })
    }

    /// Reads `lemmas.tsv` and `exceptions.tsv` as written by `tools/wordnet/extract.py`.
    pub fn parse(lemmas: &str, exceptions: &str) -> Result<WordNet, String> {
        let mut wn = WordNet { lemmas: HashMap::new(), exceptions: HashMap::new(), signatures: Default::default() };
        let mut inflected: HashMap<String, u8> = HashMap::new();
        for (n, line) in lemmas.lines().enumerate() {
            let bad = || format!("lemmas.tsv line {}: expected `lemma<TAB>pos letters`, found {line:?}", n + 1);
            let (lemma, letters) = line.split_once('\t').ok_or_else(bad)?;
            let idx: Vec<u8> = letters.bytes().map(pos_index).collect::<Option<_>>().ok_or_else(bad)?;
            let mask = idx.iter().fold(0u8, |m, &i| m | 1 << i);
            wn.lemmas.insert(lemma.to_string(), (mask, *idx.first().ok_or_else(bad)?));
        }
        for (n, line) in exceptions.lines().enumerate() {
            let bad = || format!("exceptions.tsv line {}: expected `pos<TAB>form<TAB>lemmas`, found {line:?}", n + 1);
            let mut f = line.split('\t');
            let (Some(pos), Some(form), Some(bases), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad());
            };
            let p = pos.bytes().next().and_then(pos_index).ok_or_else(bad)?;
            wn.exceptions.insert((p, form.to_string()), bases.split(' ').map(str::to_string).collect());
            *inflected.entry(form.to_string()).or_default() |= 1 << p;
        }
        for (lemma, &(mask, _)) in &wn.lemmas {
            for (p, rules) in RULES.iter().enumerate() {
                if mask & (1 << p) == 0 {
                    continue;
                }
                for (suffix, ending) in *rules {
                    if let Some(stem) = lemma.strip_suffix(ending) {
                        *inflected.entry(format!("{stem}{suffix}")).or_default() |= 1 << p;
                    }
                }
            }
        }
        for (lemma, &(mask, dominant)) in &wn.lemmas {
            wn.signatures.insert(lemma.clone(), mask as u16 | (dominant as u16) << 4);
        }
        for (form, mask) in inflected {
            *wn.signatures.entry(form).or_insert(4 << 4) |= (mask as u16) << 8;
        }
        Ok(wn)
    }

    /// Whether `lemma` is a WordNet lemma with part of speech `pos` (an index into [`POS`]).
    pub fn is_lemma(&self, lemma: &str, pos: u8) -> bool {
        self.lemmas.get(lemma).is_some_and(|&(m, _)| m & (1 << pos) != 0)
    }

    /// Whether a lower-cased word is an irregular plural noun in WordNet's exception list ("men").
    pub fn is_irregular_plural(&self, lower: &str) -> bool {
        self.exceptions.contains_key(&(0, lower.to_string()))
    }

    /// What WordNet says about a lower-cased word, packed for the tagger's features: the parts of
    /// speech it is a lemma of (bits 0–3), the most frequent one (bits 4–6, 4 = none), and the parts of
    /// speech it is an inflection of (bits 8–11).
    pub fn signature(&self, lower: &str) -> u16 {
        self.signatures.get(lower).copied().unwrap_or(4 << 4)
    }

    /// The lemma of a plural noun (lower case), as morphy finds it: the exception list's lemma if it
    /// has one, else the shortest rule candidate that is a noun lemma, else — for words WordNet does
    /// not know — the word without its `s` (not after `ss`, `us` or `is`), else the word itself.
    pub fn singular(&self, lower: &str) -> String {
        if let Some(bases) = self.exceptions.get(&(0, lower.to_string())) {
            return bases[0].clone();
        }
        let mut best: Option<String> = None;
        for (suffix, ending) in RULES[0] {
            if let Some(stem) = lower.strip_suffix(suffix) {
                let cand = format!("{stem}{ending}");
                if !cand.is_empty() && self.is_lemma(&cand, 0) && best.as_ref().is_none_or(|b| cand.len() < b.len()) {
                    best = Some(cand);
                }
            }
        }
        if let Some(b) = best {
            return b;
        }
        if self.is_lemma(lower, 0) {
            return lower.to_string();
        }
        match lower.strip_suffix('s') {
            Some(stem) if stem.len() >= 2 && !["ss", "us", "is"].iter().any(|e| lower.ends_with(e)) => stem.to_string(),
            _ => lower.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn morphy_folds_plurals_like_wordnet() {
        let wn = WordNet::embedded();
        for (plural, lemma) in [
            ("dogs", "dog"),
            ("mice", "mouse"),
            ("geese", "goose"),
            ("knives", "knife"),
            ("boxes", "box"),
            ("churches", "church"),
            ("ladies", "lady"),
            ("glasses", "glass"),
            ("analyses", "analysis"),
            ("screenshots", "screenshot"),
            ("bus", "bus"),
            ("women", "woman"),
        ] {
            assert_eq!(wn.singular(plural), lemma, "{plural}");
        }
    }

    #[test]
    fn signatures_tell_parts_of_speech_apart() {
        let wn = WordNet::embedded();
        let chronic = wn.signature("chronic");
        assert_eq!(chronic & 0xf, 0b0100, "adjective only");
        assert_eq!(chronic >> 4 & 7, 2, "mostly an adjective");
        assert_eq!(wn.signature("ran") >> 8 & 0b10, 0b10, "an inflected verb (verb.exc)");
        assert_eq!(wn.signature("dogs") >> 8 & 0b11, 0b11, "plural noun and 3rd-person verb");
        assert_eq!(wn.signature("xyzzyq"), 4 << 4, "unknown");
        assert!(WordNet::parse("dog\tq\n", "").unwrap_err().contains("line 1"));
    }
}
