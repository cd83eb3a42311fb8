//! `sa1b` source: SA-1B tars (`sa_N.jpg` + `sa_N.json`) or extracted folders, with per-image mask
//! statistics computed from the COCO-RLE annotations.

use super::rle::Rle;
use super::source::{describe_input, ext_of, walk_sorted, InputRow, Payload, SourceRows};
use super::webdataset::tar_inputs;
use crate::shards::{Value, WdsReader};
use serde::Deserialize;
use std::path::PathBuf;

/// Reads SA-1B inputs: `.tar` files, directories of tars, or extracted directories of `sa_N.jpg` +
/// `sa_N.json`. An image without its JSON is still ingested (its mask columns stay empty).
pub fn read_sa1b(inputs: &[PathBuf]) -> anyhow::Result<SourceRows> {
    let mut rows = Vec::new();
    let mut descs = Vec::new();
    for input in inputs {
        let extracted =
            input.is_dir() && !std::fs::read_dir(input)?.filter_map(|e| e.ok()).any(|e| ext_of(&e.path()) == "tar");
        if extracted {
            for f in walk_sorted(input)? {
                if ext_of(&f) != "jpg" {
                    continue;
                }
                descs.push(describe_input(&f));
                let json = f.with_extension("json");
                let mut row = InputRow::new(
                    f.strip_prefix(input).unwrap_or(&f).to_string_lossy().into_owned(),
                    Payload::File(f.clone()),
                );
                row.sidecar = json.is_file().then_some(Payload::File(json));
                rows.push(row);
            }
            continue;
        }
        for tar in tar_inputs(std::slice::from_ref(input))? {
            descs.push(describe_input(&tar));
            let reader =
                WdsReader::open(&tar).map_err(|e| anyhow::anyhow!("{}: not a readable tar: {e}", tar.display()))?;
            for s in &reader.samples {
                let Some(jpg) = s.members.get("jpg").or_else(|| s.members.get("jpeg")) else {
                    continue;
                };
                let mut row = InputRow::new(
                    format!("{}:{}", tar.display(), jpg.name),
                    Payload::Tar { tar: tar.clone(), member: jpg.clone() },
                );
                row.sidecar = s.members.get("json").map(|m| Payload::Tar { tar: tar.clone(), member: m.clone() });
                rows.push(row);
            }
        }
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs: descs })
}

#[derive(Deserialize)]
struct SaFile {
    image: SaImage,
    #[serde(default)]
    annotations: Vec<SaAnnotation>,
}

#[derive(Deserialize)]
struct SaImage {
    width: u64,
    height: u64,
    #[serde(default)]
    image_id: Option<u64>,
}

#[derive(Deserialize)]
struct SaAnnotation {
    segmentation: SaSegmentation,
    #[serde(default)]
    area: Option<f64>,
}

#[derive(Deserialize)]
struct SaSegmentation {
    size: [u32; 2],
    counts: String,
}

/// Per-image mask statistics of an SA-1B annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskStats {
    /// The annotation's `image_id`.
    pub image_id: Option<u64>,
    /// Number of masks.
    pub mask_count: usize,
    /// Mean mask area as a fraction of the image.
    pub mask_area_mean: f64,
    /// Median mask area as a fraction of the image.
    pub mask_area_median: f64,
    /// Smallest mask area as a fraction of the image.
    pub mask_area_min: f64,
    /// Largest mask area as a fraction of the image.
    pub mask_area_max: f64,
    /// Masks per megapixel of the annotated image (object density).
    pub masks_per_megapixel: f64,
}

impl MaskStats {
    /// The stats as extra parquet columns.
    pub fn columns(&self) -> Vec<(String, Value)> {
        vec![
            ("image_id".into(), self.image_id.map(|v| Value::Int(v as i64)).unwrap_or(Value::Null)),
            ("mask_count".into(), Value::Int(self.mask_count as i64)),
            ("mask_area_mean".into(), Value::Float(self.mask_area_mean)),
            ("mask_area_median".into(), Value::Float(self.mask_area_median)),
            ("mask_area_min".into(), Value::Float(self.mask_area_min)),
            ("mask_area_max".into(), Value::Float(self.mask_area_max)),
            ("masks_per_megapixel".into(), Value::Float(self.masks_per_megapixel)),
        ]
    }
}

/// Parses an SA-1B annotation JSON and computes its mask statistics; every mask's RLE is decoded
/// (runs only) and checked against the image size, and its area is taken from the runs.
pub fn mask_stats(json: &[u8]) -> Result<MaskStats, String> {
    let f: SaFile = serde_json::from_slice(json).map_err(|e| format!("annotation JSON: {e}"))?;
    let (w, h) = (f.image.width, f.image.height);
    if w == 0 || h == 0 {
        return Err(format!("annotation JSON: image size {w}x{h} is empty"));
    }
    let pixels = (w * h) as f64;
    let mut areas = Vec::with_capacity(f.annotations.len());
    for (i, a) in f.annotations.iter().enumerate() {
        let [mh, mw] = a.segmentation.size;
        if mh as u64 != h || mw as u64 != w {
            return Err(format!("annotation {i}: segmentation size [{mh}, {mw}] differs from image size [{h}, {w}]"));
        }
        let rle =
            Rle::from_string(a.segmentation.counts.as_bytes(), mh, mw).map_err(|e| format!("annotation {i}: {e}"))?;
        let area = rle.area();
        if let Some(stored) = a.area {
            if (stored - area as f64).abs() > 0.5 {
                return Err(format!("annotation {i}: stored area {stored} but the mask has {area} pixels"));
            }
        }
        areas.push(area as f64 / pixels);
    }
    let n = areas.len();
    let mut sorted = areas.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Ok(MaskStats {
        image_id: f.image.image_id,
        mask_count: n,
        mask_area_mean: if n > 0 { areas.iter().sum::<f64>() / n as f64 } else { 0.0 },
        mask_area_median: median,
        mask_area_min: sorted.first().copied().unwrap_or(0.0),
        mask_area_max: sorted.last().copied().unwrap_or(0.0),
        masks_per_megapixel: n as f64 / (pixels / 1e6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_small_annotation() {
        let json = br#"{"image":{"image_id":7,"width":10,"height":5,"file_name":"sa_7.jpg"},
            "annotations":[{"bbox":[3,1,0,3],"area":4,"segmentation":{"size":[5,10],"counts":"`04n0"}},
                           {"area":0,"segmentation":{"size":[5,10],"counts":"b1"}}]}"#;
        let s = mask_stats(json).unwrap();
        assert_eq!(s.mask_count, 2);
        assert_eq!(s.mask_area_max, 4.0 / 50.0);
        assert_eq!(s.mask_area_median, 2.0 / 50.0);
        assert_eq!(s.image_id, Some(7));
        let bad =
            br#"{"image":{"width":10,"height":6},"annotations":[{"segmentation":{"size":[5,10],"counts":"b1"}}]}"#;
        assert!(mask_stats(bad).unwrap_err().contains("differs from image size"));
    }
}
