//! Synthetic captions for the density benchmark: a deterministic mix of LAION-style Title-Case alt
//! text (with product codes, so the noun table keeps growing like a real crawl's) and LLaVA-style
//! dense descriptions, with nouns drawn from a Zipf-like distribution.

use crate::rng::Rng;

const NOUNS: &[&str] = &[
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "table",
    "chair",
    "car",
    "tree",
    "house",
    "street",
    "window",
    "door",
    "sky",
    "cloud",
    "mountain",
    "river",
    "lake",
    "beach",
    "boat",
    "bird",
    "flower",
    "garden",
    "kitchen",
    "plate",
    "cup",
    "bottle",
    "book",
    "lamp",
    "sofa",
    "bed",
    "wall",
    "floor",
    "road",
    "bridge",
    "city",
    "building",
    "shirt",
    "dress",
    "hat",
    "shoe",
    "bag",
    "phone",
    "laptop",
    "screen",
    "sign",
    "fence",
    "field",
    "horse",
    "cow",
    "train",
    "bus",
    "bicycle",
    "umbrella",
    "clock",
    "mirror",
    "painting",
    "statue",
    "forest",
    "snow",
    "wave",
    "sand",
    "rock",
    "leaf",
    "fruit",
    "apple",
    "banana",
    "cake",
    "pizza",
    "sandwich",
    "bowl",
    "knife",
    "fork",
    "glass",
    "candle",
    "jacket",
    "ring",
    "necklace",
    "watch",
    "poster",
    "logo",
    "pattern",
    "texture",
    "background",
    "light",
    "shadow",
];
const ADJS: &[&str] = &[
    "red", "blue", "green", "small", "large", "old", "modern", "wooden", "bright", "dark", "vintage", "white", "black",
    "colorful", "tall", "round", "soft", "shiny", "rustic", "elegant",
];
const PREPS: &[&str] = &["on", "next to", "near", "behind", "under", "in front of", "beside", "above"];
const VERBS: &[&str] = &["shows", "depicts", "captures", "features", "displays", "presents"];

/// A seeded generator of captions.
pub struct Synth {
    rng: Rng,
    n: u64,
}

impl Synth {
    /// A generator; the same seed gives the same captions.
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::from_state(seed), n: 0 }
    }

    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[(self.next() % list.len() as u64) as usize]
    }

    /// Zipf-like: low ranks much more often than high ones.
    fn noun(&mut self) -> &'static str {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let rank = ((NOUNS.len() as f64 + 1.0).powf(u) - 1.0) as usize;
        NOUNS[rank.min(NOUNS.len() - 1)]
    }

    fn title(w: &str) -> String {
        let mut c = w.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
    }

    /// The next caption: every third one a dense description, the others alt text.
    pub fn caption(&mut self) -> String {
        self.n += 1;
        if self.n % 3 == 0 {
            let mut s = format!("The image {} a {} {}", self.pick(VERBS), self.pick(ADJS), self.noun());
            s += &format!(" {} a {} {}. ", self.pick(PREPS), self.pick(ADJS), self.noun());
            s += &format!(
                "In the background, there are several {}s and a {} {}",
                self.noun(),
                self.pick(ADJS),
                self.noun()
            );
            s += &format!(", while a {} sits {} the {}.", self.noun(), self.pick(PREPS), self.noun());
            s
        } else {
            let code = self.next() % 2_000_000;
            format!(
                "{} {} {} With {} {} - Model Zx{code}",
                Self::title(self.pick(ADJS)),
                Self::title(self.noun()),
                Self::title(self.noun()),
                Self::title(self.pick(ADJS)),
                Self::title(self.noun()),
            )
        }
    }
}

/// Writes `count` captions to `path` (one per line), atomically.
pub fn write_captions(path: &std::path::Path, count: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = crate::shards::temp_path(path);
    let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut g = Synth::new(seed);
    for _ in 0..count {
        writeln!(w, "{}", g.caption())?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
