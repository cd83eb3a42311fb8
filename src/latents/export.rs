//! `pixforge export pixart-official`: shards plus their T5 and VAE caches in the layout the official
//! PixArt-α training code reads (`InternalData` / `InternalDataMS`), so the same features can train the
//! PyTorch code too.
//!
//! ```text
//! OUT/InternImgs/{shard}/{key}.png                       the images (PNG, as the readers name features
//!                                                        by replacing `.png`)
//! OUT/InternData/partition/data_info.json                fixed resolution  (InternalData)
//! OUT/InternData/partition_filter/data_info.json         multi-scale       (InternalDataMS)
//! OUT/InternData/caption_feature_wmask/{shard}_{key}.npz caption_feature f32 (1, 120, d), attention_mask i64 (1, 120)
//! OUT/InternData/img_vae_features_{res}resolution/noflip/{shard}_{key}.npy   fixed: mean ‖ std, f32 (8, h, w)
//! OUT/InternData/img_vae_fatures_{res}_multiscale/ms/{shard}_{key}.npy      multi-scale (the reader's spelling)
//! ```
//!
//! `{key}` is the sample key with `/` as `_`, or, for a key too long for a file name, its start and
//! a hash of it ([`crate::shards::key_file_stem`]). `data_info.json` records each image's original
//! height and width, their ratio, its path, its caption and its sample key. Caption rows past the caption's length are zeros (the official extractor keeps T5's
//! outputs at padded positions; every reader masks them out with `attention_mask`). Only samples cached
//! in both caches are exported.

use crate::shards::stage::{EntryStatus, StageReader};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where `export pixart-official` reads and writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The source shards the caches were made from.
    pub shards: PathBuf,
    /// The T5 cache.
    pub t5: PathBuf,
    /// The VAE cache.
    pub vae: PathBuf,
    /// The caption folder the T5 cache embedded (`cache t5 --captions`); when `None` and the cache
    /// was made from one, the `captions` folder beside the shard folder.
    pub captions: Option<PathBuf>,
    /// Output root.
    pub out: PathBuf,
    /// How the export is written.
    pub config: ExportConfig,
}

/// The export stage's configuration (the `pixforge export pixart-official` flags and a pipeline's
/// `[export]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Caption length of the .npz files (PixArt-α: 120).
    #[arg(long, default_value_t = 120)]
    pub max_tokens: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// What an export wrote.
#[derive(Debug, Default, Serialize)]
pub struct ExportStats {
    /// Samples exported.
    pub samples: usize,
    /// Samples skipped because one of the caches lacks them (failed or not cached).
    pub skipped: usize,
    /// The `data_info.json` written.
    pub data_info: PathBuf,
}

impl ExportStats {
    /// A line for the terminal.
    pub fn text(&self) -> String {
        format!(
            "exported {} sample(s) in the official PixArt layout ({} not in both caches); data_info: {}\n",
            self.samples,
            self.skipped,
            self.data_info.display()
        )
    }
}

#[derive(Serialize)]
struct DataInfo {
    height: usize,
    width: usize,
    ratio: f64,
    path: String,
    prompt: String,
    /// The sample's key (the file names hold it, hashed when too long for a file name).
    key: String,
}

/// A `.npy` file (format 1.0) of a little-endian array.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, ending in \n.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes `files` (name, bytes) as an uncompressed `.npz` (what `np.savez` writes; `np.load` reads it).
fn write_npz(path: &Path, files: &[(&str, Vec<u8>)]) -> anyhow::Result<()> {
    let tmp = crate::shards::temp_path(path);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&tmp)?);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files {
        zip.start_file(*name, opts)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The caption folder a T5 cache was made from, if it was: `o.captions`, else the `captions` folder
/// beside the shard folder (a pipeline's layout); an error when the cache says it embedded a
/// caption folder and none is found.
fn caption_folder(t5: &StageReader, o: &ExportOptions) -> anyhow::Result<Option<PathBuf>> {
    let made_from = t5.fingerprint.preprocessing["caption"].as_str().unwrap_or("");
    if !made_from.contains("caption folder") {
        return Ok(None);
    }
    if let Some(dir) = &o.captions {
        return Ok(Some(dir.clone()));
    }
    let beside = o.shards.parent().map(|p| p.join("captions"));
    match beside.filter(|d| matches!(crate::shards::Manifest::read(d), Ok(Some(m)) if m.stage == "caption")) {
        Some(dir) => Ok(Some(dir)),
        None => anyhow::bail!(
            "{}: a T5 cache of {made_from}: give the caption folder it was made from with --captions (no caption \
             folder beside {})",
            o.t5.display(),
            o.shards.display()
        ),
    }
}

/// Exports the samples cached in both caches (see the module documentation); returns what it wrote.
pub fn export_official(o: &ExportOptions) -> anyhow::Result<ExportStats> {
    let dev = Device::Cpu;
    let t5 = StageReader::open_unchecked(&o.t5)?;
    let vae = StageReader::open_unchecked(&o.vae)?;
    // A T5 cache of re-captions was made from the shards and the caption folder together.
    let captions = caption_folder(&t5, o)?;
    let t5_inputs: Vec<PathBuf> = std::iter::once(o.shards.clone()).chain(captions.clone()).collect();
    for (cache, dir, inputs) in [(&t5, &o.t5, t5_inputs), (&vae, &o.vae, vec![o.shards.clone()])] {
        let names: Vec<String> = cache.fingerprint.sources.keys().cloned().collect();
        let expected = cache.fingerprint.clone().with_sources_in(&inputs, &names).map_err(|e| {
            let from: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            anyhow::anyhow!("{}: the cache's source shards are not in {}: {e:#}", dir.display(), from.join(" + "))
        })?;
        let changes = cache.fingerprint.changes(&expected);
        if !changes.is_empty() {
            anyhow::bail!(
                "{}: made from other shards than {}: {}",
                dir.display(),
                o.shards.display(),
                changes.join("; ")
            );
        }
    }
    if t5.fingerprint.kind != "t5" || vae.fingerprint.kind != "vae" {
        anyhow::bail!("--t5 and --vae: expected a T5 cache and a VAE cache");
    }
    let pre = &vae.fingerprint.preprocessing;
    let multiscale = pre["mode"] == "multiscale";
    let res = if multiscale {
        pre["buckets"].as_str().and_then(|b| b.strip_prefix("ASPECT_RATIO_")).unwrap_or("512").to_string()
    } else {
        pre["resolution"].to_string()
    };
    let data = o.out.join("InternData");
    let (partition, vae_dir) = if multiscale {
        ("partition_filter", data.join(format!("img_vae_fatures_{res}_multiscale/ms")))
    } else {
        ("partition", data.join(format!("img_vae_features_{res}resolution/noflip")))
    };
    let caption_dir = data.join("caption_feature_wmask");
    for d in [&vae_dir, &caption_dir, &data.join(partition)] {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", d.display()))?;
    }
    let mut infos = Vec::new();
    let mut stats = ExportStats::default();
    for name in vae.shards.iter().filter(|n| t5.shards.contains(n)) {
        let (ts, vs) = (t5.shard(name)?, vae.shard(name)?);
        // The caption the T5 features are of: the caption folder's first, for a cache of re-captions.
        let dense = match &captions {
            Some(dir) => Some(crate::shards::captions::first_captions(&crate::shards::captions::captions_path(
                &crate::store::reading_dir(dir),
                name,
            ))?),
            None => None,
        };
        let tar_path = o.shards.join(format!("{name}.tar"));
        let tar =
            crate::shards::WdsReader::open(&tar_path).map_err(|e| anyhow::anyhow!("{}: {e}", tar_path.display()))?;
        let images = o.out.join("InternImgs").join(name);
        std::fs::create_dir_all(&images)?;
        for sample in &tar.samples {
            let (Some(te), Some(ve)) = (ts.entry(&sample.key), vs.entry(&sample.key)) else {
                stats.skipped += 1;
                continue;
            };
            if te.status != EntryStatus::Success || ve.status != EntryStatus::Success {
                stats.skipped += 1;
                continue;
            }
            let prompt = match dense.as_ref().and_then(|d| d.get(&sample.key)) {
                Some(caption) => caption.clone(),
                None => String::from_utf8(tar.read(sample, "txt")?.unwrap_or_default())?,
            };
            let ext = ["png", "jpg", "jpeg", "webp"].into_iter().find(|e| sample.members.contains_key(*e));
            let bytes = match ext {
                Some(e) => tar.read(sample, e)?.unwrap_or_default(),
                None => Vec::new(),
            };
            // A PNG is copied as stored when its header passes and it carries nothing but pixels.
            let stored = ext == Some("png")
                && crate::image::checked_header(&bytes, crate::image::MAX_PIXELS, false)
                    .is_ok_and(|(_, w, h)| crate::image::is_lean(&bytes, w, h));
            let png = if stored {
                bytes
            } else {
                let (img, _, _) = crate::image::decode_rgb(&bytes, crate::image::MAX_PIXELS)
                    .map_err(|e| anyhow::anyhow!("{}: sample {}: {e}", tar_path.display(), sample.key))?;
                let mut buf = std::io::Cursor::new(Vec::new());
                img.write_to(&mut buf, image::ImageFormat::Png)?;
                buf.into_inner()
            };
            let stem = crate::shards::key_file_stem(&sample.key);
            let flat = format!("{name}_{stem}");
            crate::shards::write_atomic(&images.join(format!("{stem}.png")), &png)?;

            let emb = ts.t5_embedding(te, &dev)?;
            let (len, d) = emb.dims2()?;
            let len = len.min(o.config.max_tokens);
            let padded = Tensor::zeros((o.config.max_tokens, d), DType::F32, &dev)?
                .slice_assign(&[0..len, 0..d], &emb.narrow(0, 0, len)?)?;
            let mask: Vec<u8> = (0..o.config.max_tokens).flat_map(|i| i64::from(i < len).to_le_bytes()).collect();
            write_npz(
                &caption_dir.join(format!("{flat}.npz")),
                &[
                    ("caption_feature.npy", npy("<f4", &[1, o.config.max_tokens, d], &f32_bytes(&padded)?)),
                    ("attention_mask.npy", npy("<i8", &[1, o.config.max_tokens], &mask)),
                ],
            )?;
            let (mean, std) = vs.vae_moments(ve, &dev)?;
            let moments = Tensor::cat(&[mean, std], 0)?;
            crate::shards::write_atomic(
                &vae_dir.join(format!("{flat}.npy")),
                &npy("<f4", moments.dims(), &f32_bytes(&moments)?),
            )?;
            let [h, w] = ve.original_size.unwrap_or([0, 0]);
            infos.push(DataInfo {
                height: h,
                width: w,
                ratio: h as f64 / w.max(1) as f64,
                path: format!("{name}/{stem}.png"),
                prompt,
                key: sample.key.clone(),
            });
            stats.samples += 1;
        }
    }
    stats.data_info = data.join(partition).join("data_info.json");
    crate::shards::write_atomic(&stats.data_info, &serde_json::to_vec_pretty(&infos)?)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpys() {
        let b = npy("<f4", &[1, 2], &[0u8; 8]);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }") && header.ends_with('\n')
        );
        assert_eq!(b.len(), 10 + hlen + 8);
        assert!(String::from_utf8_lossy(&npy("<i8", &[3], &[])).contains("'shape': (3,)"));
    }
}
