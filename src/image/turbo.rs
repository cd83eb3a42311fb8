//! JPEG through libjpeg-turbo's code (mozjpeg built with its SIMD): full or DCT-domain scaled
//! decoding, and fast baseline encoding. Enabled by the `libjpeg-turbo` cargo feature.
//!
//! libjpeg reports errors through `error_exit`, which unwinds here and is caught; the premature-end
//! warning is made an error too, so a truncated file fails as it does in the pure-Rust path.

use super::codec::JpegCodec;
use super::decode::ImageError;
use super::options::{check_filters, ImageOptions};
use super::resize::{plan, Scaled};
use image::RgbImage;
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JWRN_JPEG_EOF};
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code).unwrap_or(-1) };
    std::panic::resume_unwind(Box::new(format!("libjpeg error {code}")));
}

extern "C-unwind" fn message(cinfo: &mut jpeg_common_struct, level: c_int) {
    let code = unsafe { cinfo.err.as_ref().map(|e| e.msg_code).unwrap_or(-1) };
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new("premature end of JPEG data (truncated file)".to_string()));
    }
}

fn error_mgr() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills every field of a zeroed jpeg_error_mgr.
    unsafe {
        let mut err: jpeg_error_mgr = std::mem::zeroed();
        jpeg_std_error(&mut err);
        err.error_exit = Some(fail);
        err.emit_message = Some(message);
        err
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Decodes a JPEG at the smallest DCT scale that still covers the plan's target (full size when
/// `o.dct_downscale` is off). `None` when the caller must use the general path (CMYK/YCCK, EXIF
/// rotation).
fn decode_for_plan(bytes: &[u8], o: &ImageOptions) -> Result<Option<Scaled>, ImageError> {
    let run = || -> Result<Option<Scaled>, ImageError> {
        let io = |e: std::io::Error| ImageError::Decode(e.to_string());
        let mut d = mozjpeg::Decompress::builder()
            .with_err(error_mgr())
            .with_markers(&[mozjpeg::Marker::APP(1)])
            .from_mem(bytes)
            .map_err(io)?;
        if matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        for m in d.markers() {
            if let Some(exif) = m.data.strip_prefix(b"Exif\0\0") {
                let orient = image::metadata::Orientation::from_exif_chunk(exif);
                if orient.is_some_and(|o| o != image::metadata::Orientation::NoTransforms) {
                    return Ok(None);
                }
            }
        }
        let (w, h) = (d.width() as u32, d.height() as u32);
        check_filters(w, h, o)?;
        let p = plan(w, h, o);
        let (cw, ch) = (p.crop.2, p.crop.3);
        let num = if o.dct_downscale {
            [1u32, 2, 4, 8].into_iter().find(|&n| cw * n >= p.resized.0 * 8 && ch * n >= p.resized.1 * 8).unwrap_or(8)
        } else {
            8
        };
        d.scale(num as u8);
        let mut started = d.rgb().map_err(io)?;
        let (sw, sh) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines().map_err(io)?;
        started.finish().map_err(io)?;
        let img = RgbImage::from_raw(sw, sh, pixels).ok_or_else(|| ImageError::Decode("short scanlines".into()))?;
        Ok(Some(Scaled::new(img, p, w, h)))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) => Err(ImageError::Decode(panic_text(p))),
    }
}

/// Encodes RGB pixels as baseline JPEG, 4:2:0, libjpeg-turbo's defaults (no trellis, no progressive).
fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_fastest_defaults();
        c.set_size(img.width() as usize, img.height() as usize);
        c.set_quality(quality as f32);
        let mut started = c.start_compress(Vec::with_capacity(img.as_raw().len() / 6))?;
        started.write_scanlines(img.as_raw())?;
        started.finish()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| ImageError::Encode(e.to_string())),
        Err(p) => Err(ImageError::Encode(panic_text(p))),
    }
}

/// libjpeg-turbo's JPEG codec (mozjpeg's static build, SIMD).
pub struct TurboJpeg;

impl JpegCodec for TurboJpeg {
    fn decode_for_plan(&self, bytes: &[u8], o: &ImageOptions) -> Result<Option<Scaled>, ImageError> {
        decode_for_plan(bytes, o)
    }

    fn encode(&self, img: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
        encode_jpeg(img, quality)
    }
}
