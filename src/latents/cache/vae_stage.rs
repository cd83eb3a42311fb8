//! `pixforge cache vae`: every image of every shard through the VAE encoder; the posterior mean and
//! std are stored (f16), as PixArt-α caches them, so the trainer draws a fresh latent each epoch.
//!
//! Fixed resolution (`extract_img_vae`): shorter side resized to the resolution (bilinear), center crop.
//! Multi-scale (`--multiscale`, `InternalDataMS`): the nearest of the 40 `ASPECT_RATIO_{256,512,1024}`
//! buckets by h/w, aspect-preserving bicubic resize to cover it, center crop. Per shard,
//! `{shard}.safetensors` holds `mean.{bucket}` and `std.{bucket}` `[n, 4, h/8, w/8]` per bucket; the
//! index gives each key its bucket, row, original size, resized size and crop box.

use super::CACHE_OUTPUTS;
use crate::image::{decode_rgb, resize_exact, Filter};
use crate::latents::buckets::{self, Bucket, CropPlan};
use crate::latents::vae::Vae;
use crate::shards::stage::{
    run_shards, SampleEntry, ShardOutput, Stage, StageFingerprint, StageOptions, StageRunStats,
};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Images decoded and resized together before encoding (bounds memory at 1024 px).
const CHUNK: usize = 16;

fn default_resolution() -> usize {
    512
}

/// The VAE cache's configuration (CLI flags and pipeline TOML).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct VaeCacheConfig {
    /// VAE folder (diffusers AutoencoderKL: config.json + diffusion_pytorch_model.safetensors) or a
    /// diffusers pipeline folder (vae/).
    #[arg(long)]
    pub model: PathBuf,
    /// Image side in pixels (fixed) or the bucket table's base (multi-scale: 256, 512, 1024 or 2048).
    #[arg(long, default_value_t = 512)]
    #[serde(default = "default_resolution")]
    pub resolution: usize,
    /// Aspect-ratio buckets instead of square crops.
    #[arg(long)]
    #[serde(default)]
    pub multiscale: bool,
}

/// How one image is brought to the encoder's input.
struct Prepared {
    bucket: String,
    original: [usize; 2],
    plan: CropPlan,
    pixels: Tensor,
}

impl VaeCacheConfig {
    /// The bucket table (multi-scale) or `None` (fixed), checking the resolution.
    fn table(&self) -> anyhow::Result<Option<Vec<Bucket>>> {
        if self.resolution == 0 || self.resolution % 8 != 0 {
            anyhow::bail!("--resolution {}: expected a positive multiple of 8", self.resolution);
        }
        if !self.multiscale {
            return Ok(None);
        }
        buckets::table(self.resolution, false).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "--resolution {} with --multiscale: expected 256, 512, 1024 or 2048 (the official tables)",
                self.resolution
            )
        })
    }

    /// The fingerprint a cache made with this configuration carries (without its sources).
    pub fn fingerprint(&self) -> anyhow::Result<StageFingerprint> {
        let model_dir = crate::hub::part(&self.model, "vae");
        let files = crate::hub::weight_files(&model_dir, "diffusion_pytorch_model")?;
        let preprocessing = if self.multiscale {
            serde_json::json!({
                "mode": "multiscale", "buckets": format!("ASPECT_RATIO_{}", self.resolution),
                "resize": "bicubic, aspect kept, covering the bucket", "crop": "center", "dtype": "f16",
            })
        } else {
            serde_json::json!({
                "mode": "fixed", "resolution": self.resolution,
                "resize": "bilinear, shorter side", "crop": "center", "dtype": "f16",
            })
        };
        StageFingerprint::of_model("vae", &model_dir, &files, preprocessing)
    }

    /// Decodes, resizes and crops one image into `[1, 3, H, W]` pixels in [−1, 1].
    fn prepare(&self, table: Option<&[Bucket]>, bytes: &[u8]) -> Result<Prepared, String> {
        let (img, _, _) =
            decode_rgb(bytes, crate::image::MAX_PIXELS).map_err(|e| format!("cannot decode the image: {e}"))?;
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (bucket, plan, filter) = match table {
            Some(t) => {
                let b = buckets::closest(t, h, w);
                (label(b.key), buckets::cover_and_crop(h, w, b), Filter::Bicubic)
            }
            None => {
                (self.resolution.to_string(), buckets::shorter_side_and_crop(h, w, self.resolution), Filter::Bilinear)
            }
        };
        let resized = resize_exact(&img, (plan.resize.1 as u32, plan.resize.0 as u32), filter)
            .map_err(|e| format!("cannot resize the image: {e}"))?;
        let pixels = to_pixels(&resized, plan.crop).map_err(|e| format!("{e:#}"))?;
        Ok(Prepared { bucket, original: [h, w], plan, pixels })
    }
}

/// A bucket label as Python prints the float key (`1.0`, `0.57`).
fn label(key: f64) -> String {
    if key.fract() == 0.0 {
        format!("{key:.1}")
    } else {
        format!("{key}")
    }
}

/// The crop box of `img` as `[1, 3, h, w]` in [−1, 1] (`ToTensor` + `Normalize(0.5, 0.5)`).
fn to_pixels(img: &RgbImage, (top, left, h, w): (usize, usize, usize, usize)) -> anyhow::Result<Tensor> {
    let width = img.width() as usize;
    let raw = img.as_raw();
    let mut v = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let p = ((top + y) * width + left + x) * 3;
            for c in 0..3 {
                v[c * h * w + y * w + x] = raw[p + c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu)?)
}

/// Caches the VAE posterior moments of the images of `opts.input` into `opts.out`.
pub fn run(cfg: &VaeCacheConfig, opts: &StageOptions, device: &Device) -> anyhow::Result<StageRunStats> {
    let table = cfg.table()?;
    let fingerprint = cfg.fingerprint()?;
    let vae = Vae::load(&crate::hub::part(&cfg.model, "vae"), device)?;
    run_shards(
        &Stage { name: "cache-vae", outputs: &CACHE_OUTPUTS, scratch: &[] },
        fingerprint,
        opts,
        |_, reader, _| {
            let mut entries = Vec::with_capacity(reader.samples.len());
            let mut moments: BTreeMap<String, (Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
            for chunk in reader.samples.chunks(CHUNK) {
                let prepared: Vec<Result<Prepared, String>> = chunk
                    .par_iter()
                    .map(|sample| {
                        let bytes = crate::shards::stage::image_bytes(reader, sample)?;
                        cfg.prepare(table.as_deref(), &bytes)
                    })
                    .collect();
                for (sample, p) in chunk.iter().zip(prepared) {
                    let p = match p {
                        Ok(p) => p,
                        Err(reason) => {
                            entries.push(SampleEntry::failed(&sample.key, reason));
                            continue;
                        }
                    };
                    let (mean, std) = vae.encode(&p.pixels.to_device(device)?)?;
                    let slot = moments.entry(p.bucket.clone()).or_default();
                    let mut e = SampleEntry::success(&sample.key);
                    e.row = Some(slot.0.len());
                    e.bucket = Some(p.bucket);
                    e.original_size = Some(p.original);
                    e.resized = Some([p.plan.resize.0, p.plan.resize.1]);
                    let (t, l, h, w) = p.plan.crop;
                    e.crop = Some([t, l, h, w]);
                    slot.0.push(mean);
                    slot.1.push(std);
                    entries.push(e);
                }
            }
            let mut tensors = HashMap::new();
            for (bucket, (means, stds)) in moments {
                let f16 = |v: &[Tensor]| -> anyhow::Result<Tensor> {
                    Ok(Tensor::cat(v, 0)?.to_dtype(DType::F16)?.to_device(&Device::Cpu)?)
                };
                tensors.insert(format!("mean.{bucket}"), f16(&means)?);
                tensors.insert(format!("std.{bucket}"), f16(&stds)?);
            }
            Ok(ShardOutput { tensors: Some(tensors), entries, details: None })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_print_like_python_floats() {
        assert_eq!(label(1.0), "1.0");
        assert_eq!(label(0.57), "0.57");
        assert_eq!(label(4.0), "4.0");
        assert_eq!(label(2.09), "2.09");
    }
}
