//! The JPEG codec behind one trait with two implementations: the pure-Rust one
//! (zune-jpeg through `image`, jpeg-decoder's scaled IDCT, jpeg-encoder) and libjpeg-turbo's
//! (the `libjpeg-turbo` feature, `super::turbo`). The build picks one ([`super::jpeg_codec`]).

use super::decode::ImageError;
use super::options::{check_filters, EncodeFormat, ImageOptions};
use super::resize::{plan, Scaled};
use image::{ImageFormat, RgbImage};
use std::io::Cursor;

/// A JPEG codec: scaled decoding for a resize plan, and encoding.
pub trait JpegCodec: Sync {
    /// The JPEG `bytes` decoded at a reduced scale that still covers `o`'s plan, when that saves
    /// work; `None` when the caller must decode at full size (EXIF rotation, CMYK, too little
    /// downscale for this codec).
    fn decode_for_plan(&self, bytes: &[u8], o: &ImageOptions) -> Result<Option<Scaled>, ImageError>;
    /// `img` as baseline JPEG at `quality` (1-100), 4:2:0.
    fn encode(&self, img: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError>;
}

/// The pure-Rust JPEG codec.
pub struct PureRustJpeg;

impl JpegCodec for PureRustJpeg {
    fn decode_for_plan(&self, bytes: &[u8], o: &ImageOptions) -> Result<Option<Scaled>, ImageError> {
        if !o.dct_downscale {
            return Ok(None);
        }
        decode_jpeg_scaled(bytes, o)
    }

    fn encode(&self, img: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::with_capacity(img.as_raw().len() / 8);
        let (w, h) = img.dimensions();
        let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
            return Err(ImageError::Encode(format!("{w}x{h} is too large for JPEG (65535 px per side at most)")));
        };
        let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
        // 4:2:0 with averaged chroma, as libjpeg and OpenCV write by default at every quality.
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        enc.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
        enc.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| ImageError::Encode(e.to_string()))?;
        Ok(out)
    }
}

/// Whether bytes of `src` format can be kept as they are for output `dst`.
pub fn format_matches(src: ImageFormat, dst: EncodeFormat) -> bool {
    matches!(
        (src, dst),
        (ImageFormat::Jpeg, EncodeFormat::Jpg)
            | (ImageFormat::Png, EncodeFormat::Png)
            | (ImageFormat::WebP, EncodeFormat::Webp)
    )
}

/// A JPEG decoded by jpeg-decoder's scaled IDCT for `o`'s plan, when that saves work. `None` when
/// the full-size path must be used (less than 4x downscale, EXIF rotation, CMYK).
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
