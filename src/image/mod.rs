//! The crate's image library, shared by every stage that reads or writes pixels: decoding with the
//! decompression-bomb check and EXIF orientation ([`decode`]), resize plans and resampling
//! ([`resize`]), the codecs behind one JPEG trait with the pure-Rust and libjpeg-turbo
//! implementations ([`codec`]), perceptual hashes ([`phash`]), CLIP's preprocessing ([`clip`]), and
//! [`process`], ingest's whole image step on one sample, and labels drawn into pictures ([`label`]).
//! One pixel limit, [`MAX_PIXELS`].

pub mod clip;
pub mod codec;
pub mod decode;
pub mod label;
pub mod options;
pub mod phash;
pub mod resize;
#[cfg(feature = "libjpeg-turbo")]
mod turbo;

pub use codec::JpegCodec;
pub use decode::{
    checked_header, decode_rgb, is_lean, jpeg_is_complete, peek_dimensions, to_rgb_on_white, ImageError, MAX_PIXELS,
};
pub use options::{check_filters, EncodeFormat, Filter, ImageOptions, ResizeMode};
pub use resize::{plan, resize_exact, resize_rgb, Plan};

use codec::format_matches;
use decode::decode_checked;
use image::{ImageFormat, RgbImage};
use phash::phash;
use resize::{crop_f64, pad_white};
use sha2::{Digest, Sha256};
use std::io::Cursor;

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

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The JPEG codec of this build: libjpeg-turbo's with the `libjpeg-turbo` feature, else pure Rust.
pub fn jpeg_codec() -> &'static dyn JpegCodec {
    #[cfg(feature = "libjpeg-turbo")]
    return &turbo::TurboJpeg;
    #[cfg(not(feature = "libjpeg-turbo"))]
    return &codec::PureRustJpeg;
}

/// Encodes `img` in `format`.
pub fn encode(img: &RgbImage, format: EncodeFormat, quality: u8) -> Result<Vec<u8>, ImageError> {
    let image_format = match format {
        EncodeFormat::Jpg => return jpeg_codec().encode(img, quality.clamp(1, 100)),
        EncodeFormat::Png => ImageFormat::Png,
        EncodeFormat::Webp => ImageFormat::WebP,
    };
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    img.write_to(&mut Cursor::new(&mut out), image_format).map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(out)
}

/// Runs the whole image step on `bytes`.
pub fn process(bytes: &[u8], o: &ImageOptions) -> Result<Processed, ImageError> {
    let (format, w0, h0) = checked_header(bytes, o.max_image_pixels, o.load_truncated_images)?;
    // A cut JPEG kept on request is decoded whole (the scaled decoders refuse the missing data).
    let scaled = if format == ImageFormat::Jpeg && (!o.load_truncated_images || decode::jpeg_is_complete(bytes)) {
        jpeg_codec().decode_for_plan(bytes, o)?
    } else {
        None
    };
    let (out, w, h, untouched) = match scaled {
        Some(s) => {
            // The scaled paths only run on unrotated images.
            let p = s.plan;
            let untouched = p.crop == (0, 0, w0, h0) && p.resized == (w0, h0) && p.canvas == (w0, h0);
            (pad_white(resize_rgb(&s.img, s.crop, p.resized, o)?, p.canvas), w0, h0, untouched)
        }
        None => {
            let (img, rotated, _) = decode_checked(bytes, format, w0 as u64 * h0 as u64)?;
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
