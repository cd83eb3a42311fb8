//! Training the averaged perceptron on a treebank, with case augmentation, and evaluating it.

use super::conllu::Token;
use super::tagger::{context_of, features, Tagger};
use std::collections::HashMap;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the (shuffled) training sentences.
    pub iterations: usize,
    /// Share of sentences added again lower-cased, and another share added Title-Cased.
    pub augment_share: f64,
    /// Seed of the shuffling and augmentation choices.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { iterations: 10, augment_share: 0.25, seed: 1 }
    }
}

/// A small seeded generator (xorshift64*), so training is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Title-Cases a word: first letter upper case, the rest as it was lower-cased.
pub fn title_case(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(|x| x.to_lowercase())).collect(),
        None => String::new(),
    }
}

/// Trains on `sents` (words with gold XPOS tags).
pub fn train(sents: &[Vec<Token>], o: &TrainOptions) -> Tagger {
    let mut rng = Rng(o.seed.max(1));
    let mut data: Vec<(Vec<String>, Vec<String>)> = sents
        .iter()
        .map(|s| (s.iter().map(|t| t.form.clone()).collect(), s.iter().map(|t| t.xpos.clone()).collect()))
        .collect();
    for s in sents {
        let r = rng.unit();
        let words: Vec<String> = if r < o.augment_share {
            s.iter().map(|t| t.form.to_lowercase()).collect()
        } else if r < 2.0 * o.augment_share {
            s.iter().map(|t| title_case(&t.form)).collect()
        } else {
            continue;
        };
        data.push((words, s.iter().map(|t| t.xpos.clone()).collect()));
    }
    let mut tags: Vec<String> = data.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
    tags.sort();
    tags.dedup();
    let class: HashMap<&str, usize> = tags.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let n = tags.len();

    // Tag dictionary: frequent, (nearly) unambiguous words.
    let mut counts: HashMap<&str, HashMap<usize, usize>> = HashMap::new();
    for (ws, ts) in &data {
        for (w, t) in ws.iter().zip(ts) {
            *counts.entry(w.as_str()).or_default().entry(class[t.as_str()]).or_default() += 1;
        }
    }
    let mut tagdict = HashMap::new();
    for (w, by) in &counts {
        let total: usize = by.values().sum();
        let (&c, &m) = by.iter().max_by_key(|(c, m)| (**m, **c)).expect("non-empty");
        if total >= 20 && m as f64 / total as f64 >= 0.97 {
            tagdict.insert(w.to_string(), c as u16);
        }
    }

    let mut model = Tagger { tags: tags.clone(), rows: HashMap::new(), weights: Vec::new(), tagdict };
    let mut totals: Vec<f64> = Vec::new();
    let mut stamps: Vec<u32> = Vec::new();
    let mut instances: u32 = 0;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut feats = Vec::with_capacity(24);
    let mut scores = vec![0.0f32; n];
    for _ in 0..o.iterations {
        for i in (1..order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &si in &order {
            let (ws, ts) = &data[si];
            let words: Vec<&str> = ws.iter().map(String::as_str).collect();
            let context = context_of(&words);
            let (mut p1, mut p2) = ("-START-".to_string(), "-START2-".to_string());
            for (k, w) in words.iter().enumerate() {
                let truth = class[ts[k].as_str()];
                let guess = match model.tagdict.get(*w) {
                    Some(&c) => c as usize,
                    None => {
                        features(k + 2, w, &context, &p1, &p2, &mut feats);
                        scores.iter_mut().for_each(|s| *s = 0.0);
                        for f in &feats {
                            if let Some(&r) = model.rows.get(f) {
                                for (s, w) in
                                    scores.iter_mut().zip(&model.weights[r as usize * n..(r as usize + 1) * n])
                                {
                                    *s += w;
                                }
                            }
                        }
                        let mut best = 0;
                        for (c, &s) in scores.iter().enumerate() {
                            if s >= scores[best] {
                                best = c;
                            }
                        }
                        instances += 1;
                        if best != truth {
                            for f in &feats {
                                let r = *model.rows.entry(*f).or_insert_with(|| {
                                    model.weights.extend(std::iter::repeat_n(0.0, n));
                                    totals.extend(std::iter::repeat_n(0.0, n));
                                    stamps.extend(std::iter::repeat_n(0, n));
                                    (model.weights.len() / n - 1) as u32
                                }) as usize;
                                for (c, delta) in [(truth, 1.0f32), (best, -1.0f32)] {
                                    let p = r * n + c;
                                    totals[p] += (instances - stamps[p]) as f64 * model.weights[p] as f64;
                                    stamps[p] = instances;
                                    model.weights[p] += delta;
                                }
                            }
                        }
                        best
                    }
                };
                p2 = std::mem::replace(&mut p1, tags[guess].clone());
            }
        }
    }
    let denom = instances.max(1) as f64;
    for p in 0..model.weights.len() {
        let total = totals[p] + (instances - stamps[p]) as f64 * model.weights[p] as f64;
        model.weights[p] = (total / denom) as f32;
    }
    model
}

/// Accuracy and noun detection quality of a tagger on gold sentences.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Eval {
    /// Share of tokens whose XPOS tag is right.
    pub tag_accuracy: f64,
    /// Of the tokens tagged NN/NNS/NNP/NNPS, the share that are gold NOUN or PROPN.
    pub noun_precision: f64,
    /// Of the gold NOUN/PROPN tokens, the share tagged NN*.
    pub noun_recall: f64,
    /// Harmonic mean of the two.
    pub noun_f1: f64,
    /// Tokens tagged per second, one core.
    pub tokens_per_s: f64,
}

/// Evaluates `model` on `sents`, optionally with every word Title-Cased.
pub fn evaluate(model: &Tagger, sents: &[Vec<Token>], title: bool) -> Eval {
    let words: Vec<Vec<String>> = sents
        .iter()
        .map(|s| s.iter().map(|t| if title { title_case(&t.form) } else { t.form.clone() }).collect())
        .collect();
    let start = std::time::Instant::now();
    let predicted: Vec<Vec<usize>> =
        words.iter().map(|ws| model.tag_ids(&ws.iter().map(String::as_str).collect::<Vec<_>>())).collect();
    let secs = start.elapsed().as_secs_f64();
    let (mut right, mut total, mut tp, mut pred_n, mut gold_n) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (s, p) in sents.iter().zip(&predicted) {
        for (t, &c) in s.iter().zip(p) {
            let tag = model.tags[c].as_str();
            total += 1;
            right += (tag == t.xpos) as usize;
            let pn = tag.starts_with("NN");
            let gn = t.upos == "NOUN" || t.upos == "PROPN";
            pred_n += pn as usize;
            gold_n += gn as usize;
            tp += (pn && gn) as usize;
        }
    }
    let p = tp as f64 / pred_n.max(1) as f64;
    let r = tp as f64 / gold_n.max(1) as f64;
    Eval {
        tag_accuracy: right as f64 / total.max(1) as f64,
        noun_precision: p,
        noun_recall: r,
        noun_f1: if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 },
        tokens_per_s: total as f64 / secs.max(1e-9),
    }
}
