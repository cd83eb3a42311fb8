//! Resize plans (img2dataset's modes and rounding) and resampling (fast_image_resize, Pillow's
//! convolution filters), cropping and white padding.

use super::decode::ImageError;
use super::options::{Filter, ImageOptions, ResizeMode};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// The plan for one image: source crop (x, y, w, h), resized size, and final canvas size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Source region to use.
    pub crop: (u32, u32, u32, u32),
    /// Size the region is resized to.
    pub resized: (u32, u32),
    /// Size of the written image (larger than `resized` only for `border`).
    pub canvas: (u32, u32),
}

fn scaled(v: u32, num: u32, den: u32) -> u32 {
    ((v as f64 * num as f64 / den as f64).round() as u32).max(1)
}

/// Computes the resize plan for a `w`x`h` source (img2dataset's rounding).
pub fn plan(w: u32, h: u32, o: &ImageOptions) -> Plan {
    let s = o.image_size;
    let full = (0, 0, w, h);
    match o.resize_mode {
        ResizeMode::No => Plan { crop: full, resized: (w, h), canvas: (w, h) },
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => {
            let m = w.min(h);
            let resize = !(o.resize_only_if_bigger && m <= s);
            let (rw, rh) = if !resize {
                (w, h)
            } else if w <= h {
                (s, scaled(h, s, w))
            } else {
                (scaled(w, s, h), s)
            };
            if o.resize_mode == ResizeMode::KeepRatio {
                return Plan { crop: full, resized: (rw, rh), canvas: (rw, rh) };
            }
            // Centre square of the source, resized to the target square.
            let side = if resize { s } else { m };
            let (cx, cy) = ((w - m) / 2, (h - m) / 2);
            Plan { crop: (cx, cy, m, m), resized: (side, side), canvas: (side, side) }
        }
        ResizeMode::KeepRatioLargest | ResizeMode::Border => {
            let m = w.max(h);
            let resize = !(o.resize_only_if_bigger && m <= s);
            let (rw, rh) = if !resize {
                (w, h)
            } else if w >= h {
                (s, scaled(h, s, w))
            } else {
                (scaled(w, s, h), s)
            };
            let side = rw.max(rh);
            let canvas = if o.resize_mode == ResizeMode::Border { (side, side) } else { (rw, rh) };
            Plan { crop: full, resized: (rw, rh), canvas }
        }
    }
}

/// Resizes the `crop` region of `img` to `size`, with `o.downscale_filter` when the region shrinks and
/// `o.upscale_filter` when it grows.
pub fn resize_rgb(
    img: &RgbImage,
    crop: (f64, f64, f64, f64),
    size: (u32, u32),
    o: &ImageOptions,
) -> Result<RgbImage, ImageError> {
    let (w, h) = img.dimensions();
    if crop == (0.0, 0.0, w as f64, h as f64) && size == (w, h) {
        return Ok(img.clone());
    }
    let filter = if (size.0 as f64) < crop.2 { o.downscale_filter } else { o.upscale_filter };
    resize_region(img, crop, size, filter)
}

/// Resizes the whole of `img` to `size` (width, height) with `filter` (Pillow's convolution resampling:
/// `Bilinear` and `Bicubic` give what PIL's `BILINEAR` / `BICUBIC` resize gives).
pub fn resize_exact(img: &RgbImage, size: (u32, u32), filter: Filter) -> Result<RgbImage, ImageError> {
    let (w, h) = img.dimensions();
    if size == (w, h) {
        return Ok(img.clone());
    }
    resize_region(img, (0.0, 0.0, w as f64, h as f64), size, filter)
}

fn resize_region(
    img: &RgbImage,
    crop: (f64, f64, f64, f64),
    size: (u32, u32),
    filter: Filter,
) -> Result<RgbImage, ImageError> {
    let (w, h) = img.dimensions();
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| ImageError::Encode(e.to_string()))?;
    let mut dst = Image::new(size.0, size.1, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(alg(filter)).crop(crop.0, crop.1, crop.2, crop.3);
    Resizer::new().resize(&src, &mut dst, &opts).map_err(|e| ImageError::Encode(e.to_string()))?;
    RgbImage::from_raw(size.0, size.1, dst.into_vec()).ok_or_else(|| ImageError::Encode("resize buffer size".into()))
}

/// `img` centred on a white canvas of `canvas` (as it is when the sizes match).
pub fn pad_white(img: RgbImage, canvas: (u32, u32)) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == canvas {
        return img;
    }
    let mut out = RgbImage::from_pixel(canvas.0, canvas.1, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &img, ((canvas.0 - w) / 2) as i64, ((canvas.1 - h) / 2) as i64);
    out
}

/// A JPEG decoded at reduced scale for a plan: the pixels, the plan's crop in their coordinates, and
/// the plan in source coordinates.
pub struct Scaled {
    /// Decoded pixels.
    pub img: RgbImage,
    /// The plan's crop in the decoded image's coordinates.
    pub crop: (f64, f64, f64, f64),
    /// The plan, in source coordinates.
    pub plan: Plan,
}

impl Scaled {
    /// `img` decoded at reduced scale from a `w`x`h` source, with `plan`'s crop mapped onto it.
    pub fn new(img: RgbImage, plan: Plan, w: u32, h: u32) -> Self {
        let (sw, sh) = (img.width() as f64, img.height() as f64);
        let (fx, fy) = (sw / w as f64, sh / h as f64);
        let (x, y) = (plan.crop.0 as f64 * fx, plan.crop.1 as f64 * fy);
        // Clamp: the scaled size is rounded up, so the scaled crop may pass the edge by a fraction.
        let crop = (x, y, (plan.crop.2 as f64 * fx).min(sw - x), (plan.crop.3 as f64 * fy).min(sh - y));
        Self { img, crop, plan }
    }
}

/// A whole-pixel crop as resampling coordinates.
pub fn crop_f64(c: (u32, u32, u32, u32)) -> (f64, f64, f64, f64) {
    (c.0 as f64, c.1 as f64, c.2 as f64, c.3 as f64)
}

/// fast_image_resize's algorithm for a filter.
fn alg(filter: Filter) -> ResizeAlg {
    ResizeAlg::Convolution(match filter {
        Filter::Area => FilterType::Box,
        Filter::Bilinear => FilterType::Bilinear,
        Filter::Bicubic => FilterType::CatmullRom,
        Filter::Lanczos3 => FilterType::Lanczos3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: ResizeMode, size: u32) -> ImageOptions {
        ImageOptions { resize_mode: mode, image_size: size, ..Default::default() }
    }

    #[test]
    fn plans_match_img2dataset_reference_sizes() {
        // img2dataset tests/blur_test_files: a 389x535 input at image_size 600.
        assert_eq!(plan(389, 535, &opts(ResizeMode::KeepRatio, 600)).canvas, (600, 825));
        assert_eq!(plan(389, 535, &opts(ResizeMode::KeepRatioLargest, 600)).canvas, (436, 600));
        assert_eq!(plan(389, 535, &opts(ResizeMode::Border, 600)).canvas, (600, 600));
        assert_eq!(plan(389, 535, &opts(ResizeMode::CenterCrop, 600)).canvas, (600, 600));
        assert_eq!(plan(389, 535, &opts(ResizeMode::No, 600)).canvas, (389, 535));
        let mut o = opts(ResizeMode::KeepRatio, 600);
        o.resize_only_if_bigger = true;
        assert_eq!(plan(389, 535, &o).canvas, (389, 535));
    }
}
