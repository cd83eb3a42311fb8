//! CLIP's image preprocessing as transformers' `CLIPImageProcessor` does it: the shortest side
//! resized to `size` (bicubic), a center crop of `crop`, values / 255, then `(x − mean) / std` per
//! channel. The CLIP scoring tower and LLaVA's vision tower both take it.

use super::options::Filter;
use super::resize::resize_exact;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// CLIP's preprocessing; the default is OpenAI CLIP's (224 px, its mean and std).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipPreprocess {
    /// The shortest side after resizing.
    pub size: u32,
    /// The center crop's side.
    pub crop: u32,
    /// Per-channel mean (RGB) of values in [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

impl Default for ClipPreprocess {
    fn default() -> Self {
        Self {
            size: 224,
            crop: 224,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

impl ClipPreprocess {
    /// The image as `3 × crop × crop` values (CHW), ready for the tower.
    pub fn pixels(&self, img: &RgbImage) -> anyhow::Result<Vec<f32>> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            anyhow::bail!("an empty image");
        }
        // transformers' get_resize_output_image_size: the short side to `size`, the long one truncated.
        let (nw, nh) = if w <= h {
            (self.size, ((self.size as u64 * h as u64) / w as u64) as u32)
        } else {
            (((self.size as u64 * w as u64) / h as u64) as u32, self.size)
        };
        let resized = resize_exact(img, (nw.max(1), nh.max(1)), Filter::Bicubic)?;
        let c = self.crop;
        if nw < c || nh < c {
            anyhow::bail!("resized to {nw}x{nh}, smaller than the {c} px crop");
        }
        let (top, left) = ((nh - c) / 2, (nw - c) / 2);
        let n = (c * c) as usize;
        let mut out = vec![0f32; 3 * n];
        for y in 0..c {
            for x in 0..c {
                let p = resized.get_pixel(left + x, top + y);
                for ch in 0..3 {
                    let v = p[ch] as f32 / 255.0;
                    out[ch * n + (y * c + x) as usize] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(out)
    }
}
