//! Training batches from the feature caches: the T5 and VAE caches joined by key, single-bucket batches
//! in the order PixArt-α's `AspectRatioBatchSampler` forms them, a fresh posterior sample per step.
//!
//! The sampler walks a seeded permutation of the samples (one per epoch), appends each index to its
//! bucket's pending list and emits that list as a batch when it holds `batch_size` indices; what is
//! left in the lists at the end of the epoch is dropped (`drop_last`). Buckets therefore alternate in
//! proportion to their size, as in the paper. Everything is a function of (seed, epoch), so a run
//! resumes at any batch by recomputing the epoch's order.

use super::config::BucketLeftovers;
use crate::rng::Rng;
use crate::shards::stage::{EntryStatus, SampleEntry, StageFingerprint, StageReader, StageShard};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// One trainable sample: where its features are.
#[derive(Debug, Clone)]
struct Sample {
    shard: usize,
    t5: usize,
    vae: usize,
    bucket: String,
}

/// The samples cached in both a T5 and a VAE cache.
pub struct TrainSet {
    shards: Vec<(StageShard, StageShard)>,
    samples: Vec<Sample>,
    /// Samples held out of training (the held-out validation loss's).
    held: Vec<Sample>,
    /// Samples present in one cache only, or failed in either (not trained on).
    pub skipped: usize,
    /// Which of a sample's cached captions a batch takes.
    pub captions: super::config::CaptionChoice,
}

/// One batch, ready for the model.
pub struct Batch {
    /// Sample keys, in batch order.
    pub keys: Vec<String>,
    /// `mean + std·ε`, times the VAE scaling factor: `[B, 4, h, w]`.
    pub latents: Tensor,
    /// T5 embeddings padded with zeros to `max_tokens`: `[B, max_tokens, d]`.
    pub caption: Tensor,
    /// 1 for a caption's tokens, 0 for padding: `[B, max_tokens]`.
    pub mask: Tensor,
    /// Original (height, width) of each image (PixArtMS's `img_hw`): `[B, 2]`.
    pub img_hw: Tensor,
    /// The bucket's h/w label (PixArtMS's `aspect_ratio`): `[B, 1]`.
    pub aspect_ratio: Tensor,
    /// Which captions the classifier-free-guidance drop replaces by the null caption.
    pub drop: Vec<bool>,
    /// Where each sample's caption came from (`alt`, `dense:…`; empty for a cache with one).
    pub caption_sources: Vec<String>,
    /// The samples' aspect-ratio bucket.
    pub bucket: String,
}

impl TrainSet {
    /// Opens both caches, refusing either when its fingerprint differs from the expected one, and joins
    /// their successful entries by key (shard by shard).
    pub fn open(
        t5_dir: &Path,
        t5_expected: &StageFingerprint,
        vae_dir: &Path,
        vae_expected: &StageFingerprint,
    ) -> anyhow::Result<Self> {
        let t5 = StageReader::open(t5_dir, t5_expected)?;
        let vae = StageReader::open(vae_dir, vae_expected)?;
        Self::join(&[(t5, vae)])
    }

    /// Joins the successful entries of each (T5, VAE) cache pair by key, shard by shard.
    pub fn join(pairs: &[(StageReader, StageReader)]) -> anyhow::Result<Self> {
        let mut shards = Vec::new();
        let mut samples = Vec::new();
        let mut skipped = 0;
        for (t5, vae) in pairs {
            for name in &t5.shards {
                if !vae.shards.contains(name) {
                    skipped += t5.shard(name)?.entries.len();
                    continue;
                }
                let (ts, vs) = (t5.shard(name)?, vae.shard(name)?);
                for (i, e) in ts.entries.iter().enumerate() {
                    match vs.index_of(&e.key) {
                        Some(j) if e.status == EntryStatus::Success && vs.entries[j].status == EntryStatus::Success => {
                            let bucket = vs.entries[j].bucket.clone().unwrap_or_default();
                            samples.push(Sample { shard: shards.len(), t5: i, vae: j, bucket });
                        }
                        _ => skipped += 1,
                    }
                }
                shards.push((ts, vs));
            }
        }
        if samples.is_empty() {
            let dirs: Vec<String> =
                pairs.iter().map(|(t, v)| format!("{} + {}", t.dir().display(), v.dir().display())).collect();
            anyhow::bail!("{}: no sample is cached in both (are they caches of the same shards?)", dirs.join(", "));
        }
        Ok(Self { shards, samples, held: Vec::new(), skipped, captions: Default::default() })
    }

    /// Keeps only the samples whose key is in `keys` (a `pixforge filter` selection); returns how
    /// many were dropped.
    pub fn retain(&mut self, keys: &std::collections::HashSet<String>) -> usize {
        let before = self.samples.len();
        let shards = &self.shards;
        self.samples.retain(|s| keys.contains(&shards[s.shard].0.entries[s.t5].key));
        before - self.samples.len()
    }

    /// Moves the samples whose key `held` accepts out of training; returns how many.
    pub fn hold_out(&mut self, held: &dyn Fn(&str) -> bool) -> usize {
        let shards = &self.shards;
        let (out, kept): (Vec<Sample>, Vec<Sample>) =
            self.samples.drain(..).partition(|s| held(&shards[s.shard].0.entries[s.t5].key));
        self.samples = kept;
        self.held.extend(out);
        self.held.len()
    }

    /// The held-out samples' keys, in order.
    pub fn held_keys(&self) -> Vec<&str> {
        self.held.iter().map(|s| self.shards[s.shard].0.entries[s.t5].key.as_str()).collect()
    }

    /// Held-out sample `i` as a batch of `copies` identical rows: its posterior mean times
    /// `scaling_factor` (no draw), its caption (no drop) padded to `max_tokens`.
    pub fn held_batch(
        &self,
        i: usize,
        copies: usize,
        scaling_factor: f64,
        max_tokens: usize,
        device: &Device,
    ) -> anyhow::Result<Batch> {
        let s = &self.held[i];
        let cpu = Device::Cpu;
        let (ts, vs) = &self.shards[s.shard];
        let (te, ve) = (&ts.entries[s.t5], &vs.entries[s.vae]);
        let (mean, _) = vs.vae_moments(ve, &cpu)?;
        let latents = (mean * scaling_factor)?;
        let (caption, mask) = padded_caption(&ts.t5_embedding(te, &cpu)?, max_tokens)?;
        let [h, w] = ve.original_size.unwrap_or([0, 0]);
        let hw = Tensor::new(&[h as f32, w as f32], &cpu)?;
        let ar = Tensor::new(&[s.bucket.parse::<f32>().unwrap_or(1.0)], &cpu)?;
        let rows = |t: &Tensor| -> anyhow::Result<Tensor> {
            Ok(Tensor::stack(&vec![t.clone(); copies], 0)?.to_device(device)?)
        };
        Ok(Batch {
            keys: vec![te.key.clone(); copies],
            latents: rows(&latents)?,
            caption: rows(&caption)?,
            mask: rows(&mask)?,
            img_hw: rows(&hw)?,
            aspect_ratio: rows(&ar)?,
            drop: vec![false; copies],
            caption_sources: Vec::new(),
            bucket: s.bucket.clone(),
        })
    }

    /// Trainable samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is nothing to train on (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Each sample's bucket label, by index.
    pub fn buckets(&self) -> Vec<&str> {
        self.samples.iter().map(|s| s.bucket.as_str()).collect()
    }

    /// Assembles the batch of sample `indices` (all of one bucket): a posterior draw from `rng`,
    /// captions padded to `max_tokens`, and the caption drop with probability `drop_prob`.
    pub fn batch(
        &self,
        indices: &[usize],
        rng: &mut Rng,
        scaling_factor: f64,
        max_tokens: usize,
        drop_prob: f64,
        device: &Device,
    ) -> anyhow::Result<Batch> {
        let cpu = Device::Cpu;
        let (mut keys, mut latents, mut captions, mut masks, mut hw, mut ar, mut drop) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut sources = Vec::new();
        if indices.is_empty() {
            anyhow::bail!("a batch needs at least one sample");
        }
        for &i in indices {
            let s = &self.samples[i];
            let (ts, vs) = &self.shards[s.shard];
            let (te, ve) = (&ts.entries[s.t5], &vs.entries[s.vae]);
            if s.bucket != self.samples[indices[0]].bucket {
                anyhow::bail!("batch mixes buckets {} and {}", self.samples[indices[0]].bucket, s.bucket);
            }
            let (mean, std) = vs.vae_moments(ve, &cpu)?;
            let eps = rng.normal_tensor(mean.dims(), 1.0, &cpu)?;
            latents.push(((mean + (std * eps)?)? * scaling_factor)?);
            let (emb, source) = self.caption_of(ts, te, rng)?;
            sources.push(source);
            let (padded, mask) = padded_caption(&emb, max_tokens)?;
            captions.push(padded);
            masks.push(mask);
            let [h, w] = ve.original_size.unwrap_or([0, 0]);
            hw.push(Tensor::new(&[h as f32, w as f32], &cpu)?);
            ar.push(Tensor::new(&[s.bucket.parse::<f32>().unwrap_or(1.0)], &cpu)?);
            drop.push(rng.uniform() < drop_prob);
            keys.push(te.key.clone());
        }
        let stack = |v: &[Tensor]| -> anyhow::Result<Tensor> { Ok(Tensor::stack(v, 0)?.to_device(device)?) };
        Ok(Batch {
            keys,
            latents: stack(&latents)?,
            caption: stack(&captions)?,
            mask: stack(&masks)?,
            img_hw: stack(&hw)?,
            aspect_ratio: stack(&ar)?,
            drop,
            caption_sources: sources,
            bucket: self.samples[indices[0]].bucket.clone(),
        })
    }

    /// The caption embedding of T5 entry `te` that [`TrainSet::captions`] chooses (one draw from
    /// `rng` unless it takes the first), and its source.
    fn caption_of(&self, ts: &StageShard, te: &SampleEntry, rng: &mut Rng) -> anyhow::Result<(Tensor, String)> {
        use super::config::CaptionChoice;
        let cpu = Device::Cpu;
        let options = match (&self.captions, &te.captions) {
            (CaptionChoice::First, _) | (_, None) => return Ok((ts.t5_embedding(te, &cpu)?, String::new())),
            (_, Some(options)) => options,
        };
        // A source's weight is shared by its captions (two dense captions at 0.8 take 0.4 each).
        let category = |source: &str| source.split(':').next().unwrap_or(source).to_string();
        let weight = |source: &str| match &self.captions {
            CaptionChoice::Weights(w) => {
                let c = category(source);
                let n = options.iter().filter(|o| category(&o.source) == c).count().max(1);
                w.get(&c).copied().unwrap_or(0.0) / n as f64
            }
            _ => 1.0,
        };
        let total: f64 = options.iter().map(|c| weight(&c.source)).sum();
        let mut r = rng.uniform() * total;
        let mut pick = &options[0];
        for c in options {
            let w = weight(&c.source);
            if w > 0.0 {
                pick = c;
                if r < w {
                    break;
                }
                r -= w;
            }
        }
        Ok((ts.rows("embeddings", pick.row, pick.tokens, &cpu)?, pick.source.clone()))
    }
}

/// A caption's embedding `[L, d]` cut or padded with zeros to `max_tokens` rows, and its mask (1 for
/// its own tokens).
fn padded_caption(emb: &Tensor, max_tokens: usize) -> anyhow::Result<(Tensor, Tensor)> {
    let cpu = Device::Cpu;
    let (len, d) = emb.dims2()?;
    let len = len.min(max_tokens);
    let mut padded = emb.narrow(0, 0, len)?;
    if len < max_tokens {
        padded = Tensor::cat(&[padded, Tensor::zeros((max_tokens - len, d), DType::F32, &cpu)?], 0)?;
    }
    let mask = Tensor::from_vec((0..max_tokens).map(|t| f32::from(u8::from(t < len))).collect(), max_tokens, &cpu)?;
    Ok((padded, mask))
}

/// The batches of one epoch as PixArt-α's `AspectRatioBatchSampler` forms them over a seeded
/// permutation of the samples: single-bucket, in the order buckets fill up, leftovers dropped
/// ([`epoch_batches_with`] can repeat them instead).
pub fn epoch_batches(buckets: &[&str], batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    epoch_batches_with(buckets, batch_size, seed, epoch, BucketLeftovers::Drop)
}

/// [`epoch_batches`], and with [`BucketLeftovers::Repeat`] then each bucket's leftover list (in the
/// order the buckets first appeared) completed with images of its bucket drawn by the same
/// generator, appended as last batches.
pub fn epoch_batches_with(
    buckets: &[&str],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    leftovers: BucketLeftovers,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..buckets.len()).collect();
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    for i in (1..order.len()).rev() {
        let j = (rng.uniform() * (i + 1) as f64) as usize;
        order.swap(i, j.min(i));
    }
    let mut pending: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut first_seen: Vec<&str> = Vec::new();
    let mut batches = Vec::new();
    for i in order {
        let list = pending.entry(buckets[i]).or_default();
        list.push(i);
        if list.len() == batch_size.max(1) {
            batches.push(std::mem::take(list));
        }
        let m = members.entry(buckets[i]).or_default();
        if m.is_empty() {
            first_seen.push(buckets[i]);
        }
        m.push(i);
    }
    if leftovers == BucketLeftovers::Repeat {
        for b in first_seen {
            let mut list = std::mem::take(pending.get_mut(b).expect("a bucket seen has a list"));
            if list.is_empty() {
                continue;
            }
            let pool = &members[b];
            while list.len() < batch_size.max(1) {
                list.push(pool[rng.below(pool.len())]);
            }
            batches.push(list);
        }
    }
    batches
}

/// One bucket of a training set as an epoch uses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BucketRow {
    /// The bucket (its `h/w` ratio key, or the fixed size).
    pub bucket: String,
    /// Images in it.
    pub images: usize,
    /// Batches an epoch forms from it.
    pub batches: usize,
    /// Images left over each epoch (dropped, or completed by repeats).
    pub leftover: usize,
    /// Images never trained: all of a bucket smaller than a batch when leftovers are dropped.
    pub never_trained: usize,
}

/// The bucket table of a training set: per bucket, images, batches an epoch, leftovers.
pub fn bucket_table(
    counts: &std::collections::BTreeMap<String, usize>,
    batch_size: usize,
    leftovers: BucketLeftovers,
) -> Vec<BucketRow> {
    let b = batch_size.max(1);
    counts
        .iter()
        .map(|(bucket, &images)| {
            let repeat = leftovers == BucketLeftovers::Repeat;
            BucketRow {
                bucket: bucket.clone(),
                images,
                batches: images / b + usize::from(repeat && images % b != 0),
                leftover: images % b,
                never_trained: if !repeat && images < b { images } else { 0 },
            }
        })
        .collect()
}

/// The bucket table as text, one line per bucket.
pub fn bucket_table_text(rows: &[BucketRow], leftovers: BucketLeftovers) -> String {
    let mut s =
        format!("{:<10} {:>8} {:>8} {:>9} {:>14}\n", "bucket", "images", "batches", "leftover", "never trained");
    for r in rows {
        s.push_str(&format!(
            "{:<10} {:>8} {:>8} {:>9} {:>14}\n",
            r.bucket, r.images, r.batches, r.leftover, r.never_trained
        ));
    }
    let how = match leftovers {
        BucketLeftovers::Drop => "leftovers dropped each epoch (data.bucket_leftovers = \"drop\")",
        BucketLeftovers::Repeat => {
            "leftovers completed with repeats of their bucket (data.bucket_leftovers = \"repeat\")"
        }
    };
    s.push_str(how);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_leftovers_complete_their_bucket() {
        let buckets: Vec<&str> = [vec!["a"; 5], vec!["b"; 1], vec!["c"; 4]].concat();
        let b = epoch_batches_with(&buckets, 4, 3, 0, BucketLeftovers::Repeat);
        assert_eq!(b.len(), 1 + 1 + 1 + 1, "a: one full and one completed, b: one completed, c: one full");
        for batch in &b {
            assert_eq!(batch.len(), 4);
            assert!(batch.iter().all(|&i| buckets[i] == buckets[batch[0]]), "single-bucket: {batch:?}");
        }
        let seen: std::collections::HashSet<usize> = b.iter().flatten().copied().collect();
        assert_eq!(seen.len(), buckets.len(), "every image trains");
        assert_eq!(b[..2], epoch_batches(&buckets, 4, 3, 0)[..], "the full batches are drop_last's");
        let t =
            bucket_table(&[("a".to_string(), 5), ("b".to_string(), 1)].into_iter().collect(), 4, BucketLeftovers::Drop);
        assert_eq!((t[0].batches, t[0].leftover, t[0].never_trained), (1, 1, 0));
        assert_eq!((t[1].batches, t[1].leftover, t[1].never_trained), (0, 1, 1));
    }

    #[test]
    fn batches_are_single_bucket_seeded_and_drop_the_rest() {
        // 30 samples in bucket "1.0", 12 in "0.57", 5 in "2.0".
        let buckets: Vec<&str> = (0..47)
            .map(|i| {
                if i < 30 {
                    "1.0"
                } else if i < 42 {
                    "0.57"
                } else {
                    "2.0"
                }
            })
            .collect();
        let b = epoch_batches(&buckets, 4, 7, 0);
        assert_eq!(b.len(), 30 / 4 + 12 / 4 + 5 / 4, "full batches only (drop_last)");
        for batch in &b {
            assert_eq!(batch.len(), 4);
            assert!(batch.iter().all(|&i| buckets[i] == buckets[batch[0]]), "one bucket per batch");
        }
        let mut seen: Vec<usize> = b.concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), b.len() * 4, "no sample twice in an epoch");
        assert_eq!(b, epoch_batches(&buckets, 4, 7, 0), "same seed and epoch, same batches");
        assert_ne!(b, epoch_batches(&buckets, 4, 7, 1), "another epoch, another order");
        assert_ne!(b, epoch_batches(&buckets, 4, 8, 0), "another seed, another order");
        // Buckets alternate from batch to batch rather than coming one after the other.
        let switches = b.windows(2).filter(|w| buckets[w[0][0]] != buckets[w[1][0]]).count();
        assert!(switches > 2, "{switches} bucket switches in {} batches", b.len());
    }
}
