//! Decoding with the decompression-bomb check: the header's size is read before any pixel is decoded
//! and refused above a limit; EXIF orientation applied; palette, grey, alpha (on white), 16-bit and
//! CMYK inputs become 8-bit RGB.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;

/// The largest image, in pixels, decoded unless a stage is told otherwise (PIL's
/// `Image.MAX_IMAGE_PIXELS`, its decompression-bomb limit): every stage that decodes uses it.
pub const MAX_PIXELS: u64 = 89_478_485;

/// The most a decoder may allocate beyond an image's pixels, for its metadata (ICC profiles, EXIF,
/// XMP and text chunks, which PNG stores compressed) and its working buffers. A metadata chunk that
/// inflates past it is dropped (the PNG decoder skips such an ICC profile) or the image refused, so a
/// metadata bomb costs what a normal image costs.
pub const METADATA_BYTES: u64 = 4 << 20;

/// The decoder limits for an image of `pixels` pixels: its largest pixel buffer (16 bytes a pixel,
/// RGBA of f32) and [`METADATA_BYTES`].
fn limits_for(pixels: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(METADATA_BYTES));
    limits
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
    /// The data ends before the image does (a cut download or a damaged file).
    #[error("image file is truncated: {0} (--load-truncated-images keeps such images)")]
    Truncated(String),
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

fn first_bytes(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Width and height declared by the header of `bytes`, without decoding pixels.
pub fn peek_dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat(first_bytes(bytes)))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Reading the header allocates no pixels: only the metadata allowance.
    reader.limits(limits_for(0));
    let (w, h) = reader.into_dimensions().map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok((format, w, h))
}

/// Bytes beyond an image's raw pixels (3 a pixel) that a file passed on as stored may have: its
/// headers, tables and a small profile.
pub const STORED_SLACK: u64 = 64 << 10;

/// Whether the file `bytes` of a `w` x `h` image (its header already checked) may leave the process
/// as stored — to a server or an export — because it is no larger than its pixels plus
/// [`STORED_SLACK`]. A larger file carries more than its pixels (a metadata chunk, trailing data)
/// and is decoded and re-encoded instead, so what the decoders' metadata limit dropped stays dropped.
pub fn is_lean(bytes: &[u8], w: u32, h: u32) -> bool {
    bytes.len() as u64 <= w as u64 * h as u64 * 3 + STORED_SLACK
}

/// Decodes `bytes` to RGB: EXIF orientation applied, alpha composited on white, 16-bit, grey,
/// palette and CMYK converted; a truncated image refused. Returns the image and whether the
/// orientation changed it.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<(RgbImage, bool, ImageFormat), ImageError> {
    let (format, w, h) = checked_header(bytes, max_pixels, false)?;
    decode_checked(bytes, format, w as u64 * h as u64)
}

/// The format and size declared by the header, refused when it declares more than `max_pixels`
/// or, unless `load_truncated`, when the data visibly ends before the image does.
pub fn checked_header(
    bytes: &[u8],
    max_pixels: u64,
    load_truncated: bool,
) -> Result<(ImageFormat, u32, u32), ImageError> {
    let (format, w, h) = peek_dimensions(bytes)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ImageError::Bomb { width: w, height: h, pixels, limit: max_pixels });
    }
    if !load_truncated && format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::Truncated(format!(
            "the JPEG's {} bytes end before its end-of-image marker",
            bytes.len()
        )));
    }
    Ok((format, w, h))
}

/// Whether a JPEG runs to its end-of-image marker (`FF D9`) after its first scan. Decoders fill
/// the rows a cut file lacks with one flat colour and report success; this catches the cut.
/// Inside the entropy-coded data an `FF` byte is always followed by `00` or a restart marker, so
/// an `FF D9` after the first start-of-scan is the end of the image.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 2; // past SOI
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return false;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            at += 2; // markers without a length
            continue;
        }
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let next = at + 2 + len;
        if marker == 0xDA {
            // Searched from the end, where a whole file has it: a whole image costs a few bytes.
            return bytes.get(next..).is_some_and(|scan| scan.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
        }
        at = next;
    }
    false
}

/// [`decode_rgb`] once the header has passed [`checked_header`], which found `pixels` pixels: the
/// decoder may allocate what those pixels need ([`limits_for`]).
pub(crate) fn decode_checked(
    bytes: &[u8],
    format: ImageFormat,
    pixels: u64,
) -> Result<(RgbImage, bool, ImageFormat), ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits_for(pixels));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_composites_on_white() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = to_rgb_on_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }
}
