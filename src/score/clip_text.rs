//! CLIP text embeddings from an ONNX text tower (a Hugging Face `CLIPTextModelWithProjection` or
//! OpenCLIP export taking `input_ids` and `attention_mask` `[N, L]` and giving `[N, D]` embeddings)
//! with its CLIP `tokenizer.json`: each text tokenised as `CLIPTokenizerFast` does with
//! `truncation=True, max_length=L` (`<|startoftext|>` … `<|endoftext|>`, the text cut so the end
//! token stays last) and padded to `L` with `<|endoftext|>` and a zero mask, where the tower pools.

use super::onnx::OnnxModel;
use std::path::Path;

/// CLIP's context length.
pub const CLIP_TOKENS: usize = 77;

/// An ONNX CLIP text tower with its tokenizer.
pub struct ClipTextTower {
    model: OnnxModel,
    tokenizer: tokenizers::Tokenizer,
    /// Tokens per text (77 for CLIP).
    pub max_tokens: usize,
    pad_id: u32,
}

impl ClipTextTower {
    /// Loads the tower and its `tokenizer.json` (ONNX Runtime with `threads` intra-op threads).
    pub fn load(model: &Path, tokenizer: &Path, max_tokens: usize, threads: usize) -> anyhow::Result<Self> {
        let mut tok = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| anyhow::anyhow!("{}: not a usable tokenizer.json: {e}", tokenizer.display()))?;
        let pad_id = tok.token_to_id("<|endoftext|>").ok_or_else(|| {
            anyhow::anyhow!("{}: expected CLIP's `<|endoftext|>` token, found none", tokenizer.display())
        })?;
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
        tok.with_padding(None);
        Ok(Self { model: OnnxModel::load(model, threads)?, tokenizer: tok, max_tokens, pad_id })
    }

    /// The token ids and attention mask of `texts`, `[N · max_tokens]` each, row by row.
    pub fn tokenize(&self, texts: &[&str]) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for text in texts {
            let enc = self.tokenizer.encode(*text, true).map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
            let n = enc.get_ids().len().min(self.max_tokens);
            ids.extend(enc.get_ids()[..n].iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(i64::from(self.pad_id), self.max_tokens - n));
            mask.extend(std::iter::repeat_n(1, n).chain(std::iter::repeat_n(0, self.max_tokens - n)));
        }
        Ok((ids, mask))
    }

    /// Embeddings of `texts`, one row each (not normalised).
    pub fn embed(&mut self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let (ids, mask) = self.tokenize(texts)?;
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
