//! Image work on one sample: size check before decoding, decode, orientation, colour conversion,
//! size filters, resize (img2dataset's modes), encode, hashes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Cursor;

use super::phash::phash;

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

impl Filter {
    fn alg(self) -> ResizeAlg {
        ResizeAlg::Convolution(match self {
            Filter::Area => FilterType::Box,
            Filter::Bilinear => FilterType::Bilinear,
            Filter::Bicubic => FilterType::CatmullRom,
            Filter::Lanczos3 => FilterType::Lanczos3,
        })
    }
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
    #[arg(long, default_value_t = 89_478_485)]
    pub max_image_pixels: u64,
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

/// Why an image could not be processed (stored as `failed_to_resize` with this message).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    /// The bytes are not a known image format.
    #[error("image decoding error: unknown image format (first bytes {0})")]
    UnknownFormat(String),
    /// The header declares too many pixels.
    #[error("image too large to decode: {width}x{height} = {pixels} pixels exceeds --max-image-pixels {limit}")]
    Bomb { width: u32, height: u32, pixels: u64, limit: u64 },
    /// The decoder failed.
    #[error("image decoding error: {0}")]
    Decode(String),
    /// The smaller side is under `min_image_size`.
    #[error("image too small: {width}x{height}, smaller side below --min-image-size {limit}")]
    TooSmall { width: u32, height: u32, limit: u32 },
    /// Too many pixels for `max_image_area`.
    #[error("image area too large: {width}x{height} exceeds --max-image-area {limit}")]
    AreaTooLarge { width: u32, height: u32, limit: u64 },
    /// Aspect ratio beyond `max_aspect_ratio`.
    #[error("aspect ratio too large: {width}x{height} exceeds --max-aspect-ratio {limit}")]
    AspectTooLarge { width: u32, height: u32, limit: f64 },
    /// Resize or encode failed.
    #[error("image encoding error: {0}")]
    Encode(String),
}

/// A processed image, ready to write.
#[derive(Debug, Clone)]
pub struct Processed {
    /// Encoded bytes.
    pub data: Vec<u8>,
    /// Extension of `data`'s format.
    pub ext: &'static str,
    /// Written width.
    pub width: u32,
    /// Written height.
    pub height: u32,
    /// Source width (after EXIF orientation).
    pub original_width: u32,
    /// Source height (after EXIF orientation).
    pub original_height: u32,
    /// Hex sha256 of `data`.
    pub sha256: String,
    /// 64-bit DCT perceptual hash of the written pixels.
    pub phash: u64,
}

fn first_bytes(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Width and height declared by the header of `bytes`, without decoding pixels.
pub fn peek_dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat(first_bytes(bytes)))?;
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader.into_dimensions().map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok((format, w, h))
}

/// Decodes `bytes` to RGB: EXIF orientation applied, alpha composited on white, 16-bit, grey,
/// palette and CMYK converted. Returns the image and whether the orientation changed it.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<(RgbImage, bool, ImageFormat), ImageError> {
    let (format, _, _) = checked_header(bytes, max_pixels)?;
    decode_checked(bytes, format, max_pixels)
}

/// The format and size declared by the header, refused when it declares more than `max_pixels`.
fn checked_header(bytes: &[u8], max_pixels: u64) -> Result<(ImageFormat, u32, u32), ImageError> {
    let (format, w, h) = peek_dimensions(bytes)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ImageError::Bomb { width: w, height: h, pixels, limit: max_pixels });
    }
    Ok((format, w, h))
}

/// [`decode_rgb`] once the header has passed [`checked_header`].
fn decode_checked(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<(RgbImage, bool, ImageFormat), ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| ImageError::Decode(e.to_string()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Decode(e.to_string()))?;
    let rotated = orientation != image::metadata::Orientation::NoTransforms;
    if rotated {
        img.apply_orientation(orientation);
    }
    Ok((to_rgb_on_white(img), rotated, format))
}

/// Converts any decoded image to 8-bit RGB, compositing transparent pixels on white.
pub fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

pub(crate) fn check_filters(w: u32, h: u32, o: &ImageOptions) -> Result<(), ImageError> {
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
    let opts = ResizeOptions::new().resize_alg(filter.alg()).crop(crop.0, crop.1, crop.2, crop.3);
    Resizer::new().resize(&src, &mut dst, &opts).map_err(|e| ImageError::Encode(e.to_string()))?;
    RgbImage::from_raw(size.0, size.1, dst.into_vec()).ok_or_else(|| ImageError::Encode("resize buffer size".into()))
}

fn pad_white(img: RgbImage, canvas: (u32, u32)) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == canvas {
        return img;
    }
    let mut out = RgbImage::from_pixel(canvas.0, canvas.1, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &img, ((canvas.0 - w) / 2) as i64, ((canvas.1 - h) / 2) as i64);
    out
}

/// Encodes `img` in `format`.
pub fn encode(img: &RgbImage, format: EncodeFormat, quality: u8) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    let err = |e: image::ImageError| ImageError::Encode(e.to_string());
    match format {
        #[cfg(feature = "libjpeg-turbo")]
        EncodeFormat::Jpg => out = super::turbo::encode_jpeg(img, quality.clamp(1, 100))?,
        #[cfg(not(feature = "libjpeg-turbo"))]
        EncodeFormat::Jpg => {
            let (w, h) = img.dimensions();
            let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
                return Err(ImageError::Encode(format!("{w}x{h} is too large for JPEG (65535 px per side at most)")));
            };
            let mut enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
            // 4:2:0 with averaged chroma, as libjpeg and OpenCV write by default at every quality.
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            enc.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
            enc.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| ImageError::Encode(e.to_string()))?;
        }
        EncodeFormat::Png => img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).map_err(err)?,
        EncodeFormat::Webp => img.write_to(&mut Cursor::new(&mut out), ImageFormat::WebP).map_err(err)?,
    }
    Ok(out)
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn format_matches(src: ImageFormat, dst: EncodeFormat) -> bool {
    matches!(
        (src, dst),
        (ImageFormat::Jpeg, EncodeFormat::Jpg)
            | (ImageFormat::Png, EncodeFormat::Png)
            | (ImageFormat::WebP, EncodeFormat::Webp)
    )
}

/// A JPEG decoded at reduced scale for a plan: the pixels, the plan's crop in their coordinates, and
/// the plan in source coordinates.
pub(crate) struct Scaled {
    /// Decoded pixels.
    pub img: RgbImage,
    /// The plan's crop in the decoded image's coordinates.
    pub crop: (f64, f64, f64, f64),
    /// The plan, in source coordinates.
    pub plan: Plan,
}

impl Scaled {
    /// `img` decoded at reduced scale from a `w`x`h` source, with `plan`'s crop mapped onto it.
    pub(crate) fn new(img: RgbImage, plan: Plan, w: u32, h: u32) -> Self {
        let (sw, sh) = (img.width() as f64, img.height() as f64);
        let (fx, fy) = (sw / w as f64, sh / h as f64);
        let (x, y) = (plan.crop.0 as f64 * fx, plan.crop.1 as f64 * fy);
        // Clamp: the scaled size is rounded up, so the scaled crop may pass the edge by a fraction.
        let crop = (x, y, (plan.crop.2 as f64 * fx).min(sw - x), (plan.crop.3 as f64 * fy).min(sh - y));
        Self { img, crop, plan }
    }
}

fn crop_f64(c: (u32, u32, u32, u32)) -> (f64, f64, f64, f64) {
    (c.0 as f64, c.1 as f64, c.2 as f64, c.3 as f64)
}

#[cfg(not(feature = "libjpeg-turbo"))]
/// A JPEG decoded at reduced scale for `plan`, when that saves work: `(image, crop in its
/// coordinates, source width, source height)`. `None` when the full-size path must be used
/// (less than 4x downscale, EXIF rotation, CMYK).
fn decode_jpeg_scaled(bytes: &[u8], o: &ImageOptions) -> Result<Option<Scaled>, ImageError> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(|e| ImageError::Decode(e.to_string()))?;
    let Some(info) = d.info() else {
        return Ok(None);
    };
    if !matches!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8) {
        return Ok(None);
    }
    if let Some(exif) = d.exif_data() {
        let o = image::metadata::Orientation::from_exif_chunk(exif);
        if o.is_some_and(|o| o != image::metadata::Orientation::NoTransforms) {
            return Ok(None);
        }
    }
    let (w, h) = (info.width as u32, info.height as u32);
    check_filters(w, h, o)?;
    let p = plan(w, h, o);
    let (cw, ch) = (p.crop.2, p.crop.3);
    // jpeg-decoder's Huffman stage is slower than zune-jpeg's full decode; its scaled IDCT only
    // pays off from 1/4 scale on (measured in docs/BENCHMARKS.md).
    if p.resized.0 * 4 > cw || p.resized.1 * 4 > ch {
        return Ok(None);
    }
    let req_w = (w as u64 * p.resized.0 as u64).div_ceil(cw as u64) as u16;
    let req_h = (h as u64 * p.resized.1 as u64).div_ceil(ch as u64) as u16;
    let (sw, sh) = d.scale(req_w, req_h).map_err(|e| ImageError::Decode(e.to_string()))?;
    let pixels = d.decode().map_err(|e| ImageError::Decode(e.to_string()))?;
    let (sw, sh) = (sw as u32, sh as u32);
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => pixels,
    };
    let img = RgbImage::from_raw(sw, sh, rgb)
        .ok_or_else(|| ImageError::Decode("decoded buffer has the wrong size".into()))?;
    Ok(Some(Scaled::new(img, p, w, h)))
}

/// Runs the whole image step on `bytes`.
pub fn process(bytes: &[u8], o: &ImageOptions) -> Result<Processed, ImageError> {
    let (format, w0, h0) = checked_header(bytes, o.max_image_pixels)?;
    #[cfg(feature = "libjpeg-turbo")]
    let scaled = if format == ImageFormat::Jpeg { super::turbo::decode_for_plan(bytes, o)? } else { None };
    #[cfg(not(feature = "libjpeg-turbo"))]
    let scaled = if o.dct_downscale && format == ImageFormat::Jpeg { decode_jpeg_scaled(bytes, o)? } else { None };
    let (out, w, h, untouched) = match scaled {
        Some(s) => {
            // The scaled paths only run on unrotated images.
            let p = s.plan;
            let untouched = p.crop == (0, 0, w0, h0) && p.resized == (w0, h0) && p.canvas == (w0, h0);
            (pad_white(resize_rgb(&s.img, s.crop, p.resized, o)?, p.canvas), w0, h0, untouched)
        }
        None => {
            let (img, rotated, _) = decode_checked(bytes, format, o.max_image_pixels)?;
            let (w, h) = img.dimensions();
            check_filters(w, h, o)?;
            let p = plan(w, h, o);
            let untouched = p.crop == (0, 0, w, h) && p.resized == (w, h) && p.canvas == (w, h) && !rotated;
            (pad_white(resize_rgb(&img, crop_f64(p.crop), p.resized, o)?, p.canvas), w, h, untouched)
        }
    };
    let data = if untouched && o.skip_reencode && format_matches(format, o.encode_format) {
        bytes.to_vec()
    } else {
        encode(&out, o.encode_format, o.encode_quality)?
    };
    Ok(Processed {
        sha256: sha256_hex(&data),
        phash: phash(&out),
        ext: o.encode_format.ext(),
        width: out.width(),
        height: out.height(),
        original_width: w,
        original_height: h,
        data,
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

    #[test]
    fn alpha_composites_on_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = to_rgb_on_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn filters_name_the_flag() {
        let mut o = opts(ResizeMode::KeepRatio, 64);
        o.min_image_size = 100;
        let e = check_filters(50, 200, &o).unwrap_err();
        assert!(e.to_string().contains("--min-image-size 100"), "{e}");
        o.min_image_size = 0;
        o.max_aspect_ratio = 2.0;
        assert!(matches!(check_filters(50, 200, &o), Err(ImageError::AspectTooLarge { .. })));
    }
}
