//! The local backend: LLaVA-1.5 in the llava-hf layout run with candle ([`Llava`]), its processor
//! ([`LlavaProcessor`]) and generation ([`generate()`]); [`LocalCaptioner`] ties them together and
//! batches prompts of equal length.

pub mod config;
pub mod generate;
pub mod model;
pub mod processor;

pub use config::LlavaConfig;
pub use generate::{generate, Finish, Generation, Sampling};
pub use model::Llava;
pub use processor::{ImageMode, LlavaProcessor, PreparedImage, DEFAULT_TEMPLATE};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::path::Path;

/// One caption to write: the instruction, the image's encoded bytes and the sampling seed.
pub struct Job<'a> {
    /// The instruction (placed in the chat template).
    pub instruction: &'a str,
    /// The image file's bytes.
    pub image: &'a [u8],
    /// The sampling seed.
    pub seed: u64,
}

/// One caption written: text, tokens and why it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The decoded text.
    pub text: String,
    /// New tokens generated.
    pub tokens: usize,
    /// `stop` or `length`.
    pub finish: Finish,
    /// Milliseconds of the batch it was in, divided by the batch size.
    pub latency_ms: f64,
}

/// A prompt's token ids and its image.
type Prepared = (Vec<u32>, PreparedImage);

/// A loaded LLaVA with its processor.
pub struct LocalCaptioner {
    /// The model.
    pub model: Llava,
    /// The processor.
    pub processor: LlavaProcessor,
}

impl LocalCaptioner {
    /// Loads the model folder `dir` onto `device` as `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType, mode: ImageMode, template: &str) -> anyhow::Result<Self> {
        let model = Llava::load(dir, device, dtype)?;
        let processor = LlavaProcessor::load(dir, &model.config, mode, template)?;
        Ok(Self { model, processor })
    }

    /// Captions `jobs`, `batch_size` prompts of equal token length per forward pass; each job gets its
    /// caption or the reason it has none.
    pub fn caption(&self, jobs: &[Job], sampling: &Sampling, batch_size: usize) -> Vec<Result<Written, String>> {
        let prepared: Vec<Result<Prepared, String>> = jobs
            .par_iter()
            .map(|j| {
                let (img, _, _) = crate::image::decode_rgb(j.image, crate::image::MAX_PIXELS)
                    .map_err(|e| format!("cannot decode the image: {e}"))?;
                let prepared = self.processor.image(&img).map_err(|e| format!("cannot preprocess the image: {e:#}"))?;
                let ids = self.processor.input_ids(j.instruction, prepared.tokens).map_err(|e| format!("{e:#}"))?;
                Ok((ids, prepared))
            })
            .collect();
        let mut out: Vec<Option<Result<Written, String>>> = vec![None; jobs.len()];
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, p) in prepared.iter().enumerate() {
            match p {
                Ok((ids, _)) => by_len.entry(ids.len()).or_default().push(i),
                Err(e) => out[i] = Some(Err(e.clone())),
            }
        }
        let side = self.processor.image.crop as usize;
        for group in by_len.values() {
            for chunk in group.chunks(batch_size.max(1)) {
                let t0 = std::time::Instant::now();
                let ids: Vec<Vec<u32>> =
                    chunk.iter().map(|&i| prepared[i].as_ref().map(|p| p.0.clone()).unwrap_or_default()).collect();
                let seeds: Vec<u64> = chunk.iter().map(|&i| jobs[i].seed).collect();
                let images: anyhow::Result<Vec<(Tensor, (usize, usize))>> = chunk
                    .iter()
                    .filter_map(|&i| prepared[i].as_ref().ok())
                    .map(|(_, p)| {
                        Ok((Tensor::from_vec(p.pixels.clone(), (p.patches, 3, side, side), &Device::Cpu)?, p.size))
                    })
                    .collect();
                let result = images
                    .and_then(|images| self.model.features(&images))
                    .and_then(|features| generate(&self.model, &ids, &features, sampling, &seeds));
                let ms = t0.elapsed().as_secs_f64() * 1e3 / chunk.len() as f64;
                match result {
                    Ok(gens) => {
                        for (&i, g) in chunk.iter().zip(gens) {
                            out[i] = Some(self.processor.decode(&g.tokens).map_err(|e| format!("{e:#}")).map(|text| {
                                Written { text, tokens: g.tokens.len(), finish: g.finish, latency_ms: ms }
                            }));
                        }
                    }
                    Err(e) => {
                        for &i in chunk {
                            out[i] = Some(Err(format!("generation failed: {e:#}")));
                        }
                    }
                }
            }
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err("not captioned".into()))).collect()
    }
}
