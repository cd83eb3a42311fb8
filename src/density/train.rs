//! Training the averaged perceptron on a treebank, with case augmentation, and evaluating it.

use super::conllu::{read_conllu, Token};
use super::model_file;
use super::tagger::{best_class, features, start_hashes, Context, FeatureRows, Scratch, TagDict, Tagger, Weights};
use crate::rng::Rng;
use std::collections::HashMap;
use std::path::Path;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the (shuffled) training sentences.
    pub iterations: usize,
    /// Share of sentences added again lower-cased, and another share added Title-Cased.
    pub augment_share: f64,
    /// Seed of the shuffling and augmentation choices.
    pub seed: u64,
    /// Averaged weights below this magnitude are dropped.
    pub min_weight: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { iterations: 10, augment_share: 0.25, seed: 1, min_weight: 0.05 }
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

/// The class a treebank token is trained on: its XPOS tag, refined with the UPOS tag where the two
/// disagree about noun-hood (PTB `NN` for the UD pronoun "anything" becomes `NN^PRON`, `NNP` for the
/// adjective "United" becomes `NNP^ADJ`, an e-mail address `ADD` that UD calls a proper noun becomes
/// `ADD^PROPN`), so that the tagger learns the UD notion of a noun while keeping PTB tags.
pub fn label(t: &Token) -> String {
    let upos_noun = t.upos == "NOUN" || t.upos == "PROPN";
    if t.xpos.starts_with("NN") != upos_noun {
        format!("{}^{}", t.xpos, t.upos)
    } else {
        t.xpos.clone()
    }
}

/// A training sentence: words and gold classes.
struct Item {
    words: Vec<String>,
    labels: Vec<usize>,
}

/// The training weights: dense rows with the running sums that averaging needs.
struct Dense {
    n: usize,
    rows: FeatureRows,
    weights: Vec<f32>,
    totals: Vec<f64>,
    stamps: Vec<u32>,
    instances: u32,
}

impl Dense {
    fn new(n: usize) -> Self {
        Self { n, rows: Default::default(), weights: vec![], totals: vec![], stamps: vec![], instances: 0 }
    }

    fn predict(&self, feats: &[u64], scores: &mut Vec<f32>) -> usize {
        scores.clear();
        scores.resize(self.n, 0.0);
        for f in feats {
            if let Some(&r) = self.rows.get(f) {
                let row = &self.weights[r as usize * self.n..(r as usize + 1) * self.n];
                scores.iter_mut().zip(row).for_each(|(s, w)| *s += w);
            }
        }
        best_class(scores)
    }

    fn update(&mut self, feats: &[u64], truth: usize, guess: usize) {
        self.instances += 1;
        if truth == guess {
            return;
        }
        let n = self.n;
        for f in feats {
            let r = *self.rows.entry(*f).or_insert_with(|| {
                self.weights.extend(std::iter::repeat_n(0.0, n));
                self.totals.extend(std::iter::repeat_n(0.0, n));
                self.stamps.extend(std::iter::repeat_n(0, n));
                (self.weights.len() / n - 1) as u32
            }) as usize;
            for (c, delta) in [(truth, 1.0f32), (guess, -1.0f32)] {
                let p = r * n + c;
                self.totals[p] += (self.instances - self.stamps[p]) as f64 * self.weights[p] as f64;
                self.stamps[p] = self.instances;
                self.weights[p] += delta;
            }
        }
    }

    /// The averaged weights, sparse, without entries below `min_weight`.
    fn average(self, min_weight: f32) -> Weights {
        let denom = self.instances.max(1) as f64;
        let mut rows: Vec<(u64, u32)> = self.rows.iter().map(|(f, r)| (*f, *r)).collect();
        rows.sort_unstable();
        let mut out = Vec::with_capacity(rows.len());
        for (f, r) in rows {
            let range = r as usize * self.n..(r as usize + 1) * self.n;
            let entries: Vec<(u8, f32)> = range
                .enumerate()
                .map(|(c, p)| {
                    let total = self.totals[p] + (self.instances - self.stamps[p]) as f64 * self.weights[p] as f64;
                    (c as u8, (total / denom) as f32)
                })
                .filter(|(_, w)| w.abs() >= min_weight && *w != 0.0)
                .collect();
            if !entries.is_empty() {
                out.push((f, entries));
            }
        }
        Weights::from_rows(self.n, out)
    }
}

/// Runs the perceptron over `items` and returns the averaged weights.
fn fit(base: &Tagger, items: &[Item], o: &TrainOptions, rng: &mut Rng) -> Weights {
    let mut dense = Dense::new(base.tags.len());
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut ctx = Context::default();
    let (mut feats, mut scores) = (Vec::with_capacity(32), Vec::with_capacity(base.tags.len()));
    for _ in 0..o.iterations {
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for &ii in &order {
            let item = &items[ii];
            let words: Vec<&str> = item.words.iter().map(String::as_str).collect();
            ctx.fill(&words, &base.tagdict);
            let [mut p1, mut p2] = start_hashes();
            for k in 0..words.len() {
                let guess = match ctx.known(k) {
                    Some(c) => c as usize,
                    None => {
                        features(&ctx, k, p1, p2, &mut feats);
                        let guess = dense.predict(&feats, &mut scores);
                        dense.update(&feats, item.labels[k], guess);
                        guess
                    }
                };
                p2 = p1;
                p1 = base.tag_hash(guess);
            }
        }
    }
    dense.average(o.min_weight)
}

/// The training sentences: the treebank's, plus lower-cased and Title-Cased copies of some.
fn items(sents: &[Vec<Token>], class: &HashMap<String, usize>, o: &TrainOptions, rng: &mut Rng) -> Vec<Item> {
    let labels = |s: &[Token]| s.iter().map(|t| class[&label(t)]).collect::<Vec<_>>();
    let mut out: Vec<Item> =
        sents.iter().map(|s| Item { words: s.iter().map(|t| t.form.clone()).collect(), labels: labels(s) }).collect();
    for s in sents {
        let r = rng.uniform();
        let words: Vec<String> = if r < o.augment_share {
            s.iter().map(|t| t.form.to_lowercase()).collect()
        } else if r < 2.0 * o.augment_share {
            s.iter().map(|t| title_case(&t.form)).collect()
        } else {
            continue;
        };
        out.push(Item { words, labels: labels(s) });
    }
    out
}

const TAGDICT_MIN: usize = 10;

/// Frequent, (nearly) unambiguous words: at least `TAGDICT_MIN` occurrences, 97% with one class.
fn tag_dictionary(items: &[Item]) -> TagDict {
    let mut counts: HashMap<&str, HashMap<usize, usize>> = HashMap::new();
    for it in items {
        for (w, &c) in it.words.iter().zip(&it.labels) {
            *counts.entry(w.as_str()).or_default().entry(c).or_default() += 1;
        }
    }
    let mut tagdict = TagDict::default();
    for (w, by) in &counts {
        let total: usize = by.values().sum();
        let (&c, &m) = by.iter().max_by_key(|(c, m)| (**m, **c)).expect("non-empty");
        if total >= TAGDICT_MIN && m as f64 / total as f64 >= 0.97 {
            tagdict.insert(w.to_string(), c as u16);
        }
    }
    tagdict
}

/// Trains on `sents` (words with gold XPOS and UPOS tags).
pub fn train(sents: &[Vec<Token>], o: &TrainOptions) -> Tagger {
    let mut rng = Rng::from_state(o.seed);
    let mut tags: Vec<String> = sents.iter().flatten().map(label).collect();
    tags.sort();
    tags.dedup();
    let class: HashMap<String, usize> = tags.iter().enumerate().map(|(i, t)| (t.clone(), i)).collect();
    let data = items(sents, &class, o, &mut rng);
    let mut model = Tagger::new(tags, tag_dictionary(&data));
    model.weights = fit(&model, &data, o, &mut rng);
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
    let refs: Vec<Vec<&str>> = words.iter().map(|ws| ws.iter().map(String::as_str).collect()).collect();
    let mut scratch = Scratch::default();
    let mut predicted: Vec<Vec<usize>> = vec![Vec::new(); refs.len()];
    // Speed: the best of three runs, so that first-touch page faults and noise do not count.
    let mut secs = f64::INFINITY;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        for (ws, out) in refs.iter().zip(&mut predicted) {
            model.tag_into(ws, &mut scratch, out);
        }
        secs = secs.min(start.elapsed().as_secs_f64());
    }
    let (mut right, mut total, mut tp, mut pred_n, mut gold_n) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (s, p) in sents.iter().zip(&predicted) {
        for (t, &c) in s.iter().zip(p) {
            total += 1;
            right += (model.xpos(c) == t.xpos) as usize;
            let pn = model.is_noun(c);
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

/// `pixforge density train-tagger`: trains on the CoNLL-U file `train` (`.conllu` or `.conllu.zst`),
/// writes the model file to `out` (atomically) and, with `dev`, evaluates the written model there
/// (normal and Title-Cased); returns the report's text.
pub fn train_file(train: &Path, dev: Option<&Path>, out: &Path, o: &TrainOptions) -> anyhow::Result<String> {
    let model = self::train(&read_conllu(train)?, o);
    let bytes = model_file::to_bytes(&model);
    crate::shards::write_atomic(out, &bytes)?;
    let mut text = format!("model: {} ({} bytes, {} tags)\n", out.display(), bytes.len(), model.tags.len());
    if let Some(dev) = dev {
        let d = read_conllu(dev)?;
        let back = model_file::from_bytes(&bytes).map_err(anyhow::Error::msg)?;
        text.push_str(&format!("dev: {}\n", serde_json::to_string(&evaluate(&back, &d, false))?));
        text.push_str(&format!("dev Title-Cased: {}\n", serde_json::to_string(&evaluate(&back, &d, true))?));
    }
    Ok(text)
}

/// `pixforge density eval-tagger`: evaluates the model file `model` (the embedded model when `None`)
/// on the CoNLL-U file `conllu`.
pub fn evaluate_file(conllu: &Path, model: Option<&Path>, title_case: bool) -> anyhow::Result<Eval> {
    let loaded = match model {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", p.display()))?;
            Some(model_file::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let m = loaded.as_ref().unwrap_or_else(|| Tagger::embedded());
    Ok(evaluate(m, &read_conllu(conllu)?, title_case))
}

impl Eval {
    /// One line for a terminal.
    pub fn text(&self) -> String {
        format!(
            "tag accuracy {:.2}%  noun precision {:.2}%  recall {:.2}%  F1 {:.2}%  {:.0} tokens/s\n",
            100.0 * self.tag_accuracy,
            100.0 * self.noun_precision,
            100.0 * self.noun_recall,
            100.0 * self.noun_f1,
            self.tokens_per_s
        )
    }
}
