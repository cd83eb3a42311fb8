//! CLIP image embeddings from an ONNX vision tower (any OpenCLIP / Hugging Face CLIP export with a
//! `pixel_values`-like `[N, 3, S, S]` input and an `[N, D]` embedding output), with CLIP's
//! preprocessing as `CLIPImageProcessor` does it: the shortest side resized to `size` (bicubic), a
//! center crop of `crop`, values / 255, then `(x − mean) / std` per channel.

use super::onnx::OnnxModel;
pub use crate::image::clip::ClipPreprocess;
use image::RgbImage;
use std::path::Path;

/// An ONNX CLIP vision tower with its preprocessing.
pub struct ClipTower {
    model: OnnxModel,
    /// The preprocessing applied to each image.
    pub preprocess: ClipPreprocess,
}

impl ClipTower {
    /// Loads the tower (ONNX Runtime with `threads` intra-op threads; 0 = its default).
    pub fn load(path: &Path, preprocess: ClipPreprocess, threads: usize) -> anyhow::Result<Self> {
        Self::load_on(path, preprocess, threads, None)
    }

    /// Loads the tower on CUDA device `cuda` when given (see [`OnnxModel::load_on`]).
    pub fn load_on(path: &Path, preprocess: ClipPreprocess, threads: usize, cuda: Option<i32>) -> anyhow::Result<Self> {
        Ok(Self { model: OnnxModel::load_on(path, threads, cuda)?, preprocess })
    }

    /// Runs the tower on already preprocessed `[N, 3, S, S]` values; returns `[N, D]` rows.
    pub fn embed_pixels(&mut self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let c = self.preprocess.crop as usize;
        let x = ndarray::ArrayD::from_shape_vec(vec![n, 3, c, c], pixels)?;
        let input = self.model.inputs().first().cloned().unwrap_or_default();
        let output = self.model.outputs().first().cloned().unwrap_or_default();
        let out = self.model.run(&[(input.as_str(), x.view())])?;
        let y = &out[&output];
        if y.ndim() != 2 || y.shape()[0] != n {
            anyhow::bail!("the tower's output `{output}` is {:?}, expected [{n}, D]", y.shape());
        }
        Ok(y.outer_iter().map(|r| r.iter().copied().collect()).collect())
    }

    /// Embeddings of `images`, one row each.
    pub fn embed(&mut self, images: &[RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut pixels = Vec::new();
        for img in images {
            pixels.extend(self.preprocess.pixels(img)?);
        }
        self.embed_pixels(pixels, images.len())
    }
}

/// A score head on pixels (a watermark classifier, say): an ONNX model taking `[N, 3, S, S]` with its
/// own preprocessing, read from `{stem}.json` beside it (`size`, `crop`, `mean`, `std`; the tower's
/// when absent). An `[N]` or `[N, 1]` output is the score; an `[N, 2]` one gives the softmax
/// probability of its second class.
pub struct PixelHead {
    /// The column name: the file stem.
    pub name: String,
    model: ClipTower,
}

impl PixelHead {
    /// Loads `path` and its preprocessing sidecar (or `fallback`).
    pub fn load(path: &Path, fallback: &ClipPreprocess, cuda: Option<i32>) -> anyhow::Result<Self> {
        let sidecar = path.with_extension("json");
        let pre = if sidecar.exists() {
            let text = std::fs::read_to_string(&sidecar)?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: expected size, crop, mean, std: {e}", sidecar.display()))?
        } else {
            fallback.clone()
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { name, model: ClipTower::load_on(path, pre, 0, cuda)? })
    }

    /// One score per image.
    pub fn score(&mut self, images: &[&RgbImage]) -> anyhow::Result<Vec<f32>> {
        let mut pixels = Vec::new();
        for img in images {
            pixels.extend(self.model.preprocess.pixels(img)?);
        }
        self.score_pixels(pixels, images.len())
    }

    /// One score per image of already preprocessed `[n, 3, S, S]` values.
    pub fn score_pixels(&mut self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        let rows = self.model.embed_pixels(pixels, n)?;
        rows.iter()
            .map(|r| match r.as_slice() {
                [s] => Ok(*s),
                [a, b] => Ok(1.0 / (1.0 + (a - b).exp())),
                other => {
                    anyhow::bail!("pixel head {}: expected 1 or 2 outputs per image, found {}", self.name, other.len())
                }
            })
            .collect()
    }
}
