//! What the image step is asked to do: size, resize mode, filters, output format, and the size
//! filters that refuse an image before it is resized.

use super::decode::{ImageError, MAX_PIXELS};
use serde::{Deserialize, Serialize};

/// How images are resized (img2dataset's `resize_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Keep the image as it is.
    No,
    /// Smallest side to `image_size`, aspect ratio kept (what aspect-ratio bucketing wants).
    #[default]
    KeepRatio,
    /// Largest side to `image_size`, aspect ratio kept.
    KeepRatioLargest,
    /// Smallest side to `image_size`, then the centre square.
    CenterCrop,
    /// Largest side to `image_size`, then padded to a white square.
    Border,
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Filter {
    /// Box filter: area averaging when shrinking (OpenCV's INTER_AREA, img2dataset's default down).
    Area,
    /// Bilinear (triangle) filter.
    Bilinear,
    /// Catmull-Rom bicubic filter.
    Bicubic,
    /// Lanczos3 filter (img2dataset's default up).
    Lanczos3,
}

/// Output encoding of the written images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum EncodeFormat {
    /// JPEG with `encode_quality`.
    #[default]
    Jpg,
    /// PNG (lossless).
    Png,
    /// WebP (lossless; `encode_quality` is not used).
    Webp,
}

impl EncodeFormat {
    /// File extension of the format.
    pub fn ext(&self) -> &'static str {
        match self {
            EncodeFormat::Jpg => "jpg",
            EncodeFormat::Png => "png",
            EncodeFormat::Webp => "webp",
        }
    }
}

/// Image options shared by every source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Parser)]
#[serde(deny_unknown_fields, default)]
pub struct ImageOptions {
    /// Target size in pixels for the resize mode.
    #[arg(long, default_value_t = 512)]
    pub image_size: u32,
    /// Resize mode (img2dataset's): keep_ratio suits aspect-ratio buckets.
    #[arg(long, value_enum, default_value_t = ResizeMode::KeepRatio)]
    pub resize_mode: ResizeMode,
    /// Only ever shrink: images already within `image_size` are not upscaled.
    #[arg(long)]
    pub resize_only_if_bigger: bool,
    /// Filter when shrinking.
    #[arg(long, value_enum, default_value_t = Filter::Area)]
    pub downscale_filter: Filter,
    /// Filter when enlarging.
    #[arg(long, value_enum, default_value_t = Filter::Lanczos3)]
    pub upscale_filter: Filter,
    /// Output format.
    #[arg(long, value_enum, default_value_t = EncodeFormat::Jpg)]
    pub encode_format: EncodeFormat,
    /// JPEG quality, 1-100.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub encode_quality: u8,
    /// Keep the source bytes when no resize or rotation is needed and the format already matches.
    #[arg(long)]
    pub skip_reencode: bool,
    /// Decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the target is that much smaller
    /// than the source (less work; the scaled IDCT acts as a box prefilter): from 2x down with the
    /// `libjpeg-turbo` build, from 4x down in the pure-Rust build. `--dct-downscale false` decodes at
    /// full size.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub dct_downscale: bool,
    /// Refuse images whose header declares more pixels than this, before decoding (decompression bombs).
    #[arg(long, default_value_t = MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Keep images whose data ends before the image does (the missing rows one flat colour), as
    /// Pillow's `LOAD_TRUNCATED_IMAGES` does; by default they are refused as `failed_to_resize`.
    #[arg(long)]
    pub load_truncated_images: bool,
    /// Refuse images whose smaller side is below this (img2dataset's `min_image_size`).
    #[arg(long, default_value_t = 0)]
    pub min_image_size: u32,
    /// Refuse images with more pixels than this (img2dataset's `max_image_area`); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub max_image_area: u64,
    /// Refuse images whose longer/shorter side ratio exceeds this; 0 = no limit.
    #[arg(long, default_value_t = 0.0)]
    pub max_aspect_ratio: f64,
}

impl Default for ImageOptions {
    fn default() -> Self {
        clap::Parser::parse_from(["image"])
    }
}

/// Refuses an image whose size fails `o`'s filters (`--min-image-size`, `--max-image-area`,
/// `--max-aspect-ratio`), naming the flag.
pub fn check_filters(w: u32, h: u32, o: &ImageOptions) -> Result<(), ImageError> {
    if w.min(h) < o.min_image_size {
        return Err(ImageError::TooSmall { width: w, height: h, limit: o.min_image_size });
    }
    if o.max_image_area > 0 && w as u64 * h as u64 > o.max_image_area {
        return Err(ImageError::AreaTooLarge { width: w, height: h, limit: o.max_image_area });
    }
    if o.max_aspect_ratio > 0.0 && w.max(h) as f64 / w.min(h).max(1) as f64 > o.max_aspect_ratio {
        return Err(ImageError::AspectTooLarge { width: w, height: h, limit: o.max_aspect_ratio });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_flag() {
        let mut o = ImageOptions { resize_mode: ResizeMode::KeepRatio, image_size: 64, ..Default::default() };
        o.min_image_size = 100;
        let e = check_filters(50, 200, &o).unwrap_err();
        assert!(e.to_string().contains("--min-image-size 100"), "{e}");
        o.min_image_size = 0;
        o.max_aspect_ratio = 2.0;
        assert!(matches!(check_filters(50, 200, &o), Err(ImageError::AspectTooLarge { .. })));
    }
}
