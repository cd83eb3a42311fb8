//! CLIP text embeddings from an ONNX text tower (a Hugging Face `CLIPTextModelWithProjection` or
//! OpenCLIP export taking `input_ids` and `attention_mask` `[N, L]` and giving `[N, D]` embeddings)
//! with its CLIP `tokenizer.json`: each text tokenised as `CLIPTokenizerFast` does with
//! `truncation=True, max_length=L` (`<|startoftext|>` … `<|endoftext|>`, the text cut so the end
//! token stays last) and padded to `L` with `<|endoftext|>` and a zero mask, where the tower pools.
//! A text longer than the tower's context is cut there ([`LongText::Truncate`], CLIP's own rule) or
//! embedded in windows of `L - 2` tokens, each between the start and end tokens, whose normalised
//! embeddings are averaged ([`LongText::Chunks`]); a long-context tower (Long-CLIP: 248 positions)
//! takes its own `L`.

use super::onnx::OnnxModel;
use std::path::Path;

/// CLIP's context length.
pub const CLIP_TOKENS: usize = 77;

/// What happens to a text longer than the tower's context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LongText {
    /// Cut at the context, the end token kept last (CLIP's `truncation=True`).
    #[default]
    Truncate,
    /// Every window of `L - 2` tokens embedded, the normalised embeddings averaged.
    Chunks,
}

/// An ONNX CLIP text tower with its tokenizer.
pub struct ClipTextTower {
    model: OnnxModel,
    tokenizer: tokenizers::Tokenizer,
    untruncated: tokenizers::Tokenizer,
    /// Tokens per text (77 for CLIP, 248 for Long-CLIP): the tower's input length.
    pub max_tokens: usize,
    /// What a longer text becomes.
    pub long: LongText,
    pad_id: u32,
    start_id: u32,
}

impl ClipTextTower {
    /// Loads the tower and its `tokenizer.json` (ONNX Runtime with `threads` intra-op threads).
    pub fn load(model: &Path, tokenizer: &Path, max_tokens: usize, threads: usize) -> anyhow::Result<Self> {
        let mut tok = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| anyhow::anyhow!("{}: not a usable tokenizer.json: {e}", tokenizer.display()))?;
        let pad_id = tok.token_to_id("<|endoftext|>").ok_or_else(|| {
            anyhow::anyhow!("{}: expected CLIP's `<|endoftext|>` token, found none", tokenizer.display())
        })?;
        let start_id = tok.token_to_id("<|startoftext|>").ok_or_else(|| {
            anyhow::anyhow!("{}: expected CLIP's `<|startoftext|>` token, found none", tokenizer.display())
        })?;
        tok.with_padding(None);
        let mut untruncated = tok.clone();
        untruncated.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
        if max_tokens < 3 {
            anyhow::bail!("a text tower's context of {max_tokens} tokens leaves no room for text (expected 77, or 248 for Long-CLIP)");
        }
        let model = OnnxModel::load(model, threads)?;
        Ok(Self { model, tokenizer: tok, untruncated, max_tokens, long: LongText::Truncate, pad_id, start_id })
    }

    /// The same tower embedding longer texts as `long` says.
    pub fn with_long_texts(mut self, long: LongText) -> Self {
        self.long = long;
        self
    }

    /// The windows a text is embedded as: one (cut to the context) with [`LongText::Truncate`];
    /// with [`LongText::Chunks`], its tokens between the start and end tokens in windows of
    /// `max_tokens - 2`, each wrapped in them again.
    pub fn windows(&self, text: &str) -> anyhow::Result<Vec<Vec<u32>>> {
        if self.long == LongText::Truncate {
            let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
            return Ok(vec![enc.get_ids().iter().copied().take(self.max_tokens).collect()]);
        }
        let enc = self.untruncated.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        let inner: Vec<u32> =
            enc.get_ids().iter().copied().filter(|&t| t != self.start_id && t != self.pad_id).collect();
        if inner.is_empty() {
            return Ok(vec![vec![self.start_id, self.pad_id]]);
        }
        Ok(inner
            .chunks(self.max_tokens - 2)
            .map(|w| std::iter::once(self.start_id).chain(w.iter().copied()).chain([self.pad_id]).collect())
            .collect())
    }

    /// The token ids and attention mask of `texts` (each cut to the context), `[N · max_tokens]`
    /// each, row by row.
    pub fn tokenize(&self, texts: &[&str]) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
        let mut rows = Vec::new();
        for text in texts {
            let enc = self.tokenizer.encode(*text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
            rows.push(enc.get_ids().iter().copied().take(self.max_tokens).collect::<Vec<u32>>());
        }
        Ok(self.pad(&rows))
    }

    fn pad(&self, rows: &[Vec<u32>]) -> (Vec<i64>, Vec<i64>) {
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for row in rows {
            let n = row.len().min(self.max_tokens);
            ids.extend(row[..n].iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(i64::from(self.pad_id), self.max_tokens - n));
            mask.extend(std::iter::repeat_n(1, n).chain(std::iter::repeat_n(0, self.max_tokens - n)));
        }
        (ids, mask)
    }

    /// Embeddings of `texts`, one row each: the tower's output for a text that fits (not
    /// normalised); with [`LongText::Chunks`], a longer text's mean of its windows' normalised
    /// embeddings.
    pub fn embed(&mut self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut windows = Vec::new();
        let mut owners = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for w in self.windows(text)? {
                windows.push(w);
                owners.push(i);
            }
        }
        let rows = self.embed_windows(&windows)?;
        if windows.len() == texts.len() {
            return Ok(rows);
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut counts = vec![0usize; texts.len()];
        for (row, &i) in rows.iter().zip(&owners) {
            counts[i] += 1;
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            if out[i].is_empty() {
                out[i] = vec![0.0; row.len()];
            }
            for (o, x) in out[i].iter_mut().zip(row) {
                *o += x / norm;
            }
        }
        for (o, n) in out.iter_mut().zip(counts) {
            o.iter_mut().for_each(|x| *x /= n as f32);
        }
        Ok(out)
    }

    /// The tower's outputs for token windows (each at most the context long).
    fn embed_windows(&mut self, windows: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let (ids, mask) = self.pad(windows);
        let texts = windows;
        let shape = vec![texts.len(), self.max_tokens];
        let ids = ndarray::ArrayD::from_shape_vec(shape.clone(), ids)?;
        let mask = ndarray::ArrayD::from_shape_vec(shape, mask)?;
        let names = self.model.inputs();
        let (id_name, mask_name) = match names.as_slice() {
            [a, b, ..] => (a.clone(), b.clone()),
            _ => anyhow::bail!("the text tower takes {names:?}; expected input_ids and attention_mask"),
        };
        let output = self.model.outputs().first().cloned().unwrap_or_default();
        let out = self.model.run_ids(&[(id_name.as_str(), ids.view()), (mask_name.as_str(), mask.view())])?;
        let y = &out[&output];
        if y.ndim() != 2 || y.shape()[0] != texts.len() {
            anyhow::bail!("the text tower's output `{output}` is {:?}, expected [{}, D]", y.shape(), texts.len());
        }
        Ok(y.outer_iter().map(|r| r.iter().copied().collect()).collect())
    }
}

/// The cosine of two embeddings (CLIP's image–text agreement).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}
