//! Decoder edge cases: CMYK, 16-bit, grey+alpha, EXIF orientation, palette, GIF, TIFF, truncated
//! files, decompression bombs. Expected pixels come from Pillow (`tools/golden/make_image_fixtures.py`).

mod common;

use pixforge::image::{decode_rgb, process, ImageError, ImageOptions, ResizeMode};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join("images").join(name)).unwrap()
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&fixture("expected.json")).unwrap()
}

fn close(a: [u8; 3], b: &serde_json::Value, tol: i32) -> bool {
    (0..3).all(|c| (a[c] as i32 - b[c].as_i64().unwrap() as i32).abs() <= tol)
}

fn px(img: &image::RgbImage, x: u32, y: u32) -> [u8; 3] {
    img.get_pixel(x, y).0
}

#[test]
fn cmyk_jpeg_matches_pillow() {
    let e = &expected()["cmyk.jpg"];
    let (img, _, _) = decode_rgb(&fixture("cmyk.jpg"), u64::MAX).unwrap();
    assert_eq!(img.dimensions(), (32, 16));
    assert!(close(px(&img, 4, 8), &e["pixel_4_8"], 12), "{:?} vs {}", px(&img, 4, 8), e["pixel_4_8"]);
    assert!(close(px(&img, 28, 8), &e["pixel_28_8"], 12), "{:?} vs {}", px(&img, 28, 8), e["pixel_28_8"]);
}

#[test]
fn grey_alpha_composites_on_white_and_16_bit_reads() {
    let e = &expected()["grey_alpha.png"];
    let (img, _, _) = decode_rgb(&fixture("grey_alpha.png"), u64::MAX).unwrap();
    assert!(close(px(&img, 2, 5), &e["pixel_2_5"], 0));
    assert!(close(px(&img, 15, 5), &e["pixel_15_5"], 0));
    let (g16, _, _) = decode_rgb(&fixture("grey16.png"), u64::MAX).unwrap();
    assert_eq!(g16.dimensions(), (40, 20));
    assert!(px(&g16, 0, 0)[0] < 5 && px(&g16, 39, 0)[0] > 250, "16-bit ramp scaled to 8 bits");
}

#[test]
fn exif_orientation_is_applied() {
    let e = &expected()["exif_rotate90.jpg"];
    let (img, rotated, _) = decode_rgb(&fixture("exif_rotate90.jpg"), u64::MAX).unwrap();
    assert!(rotated);
    assert_eq!(img.dimensions(), (20, 40));
    assert!(close(px(&img, 10, 2), &e["pixel_10_2"], 12), "{:?} vs {}", px(&img, 10, 2), e["pixel_10_2"]);
    let o = ImageOptions { resize_mode: ResizeMode::No, skip_reencode: true, ..Default::default() };
    let p = process(&fixture("exif_rotate90.jpg"), &o).unwrap();
    assert_eq!((p.original_width, p.original_height), (20, 40));
    assert!(p.data != fixture("exif_rotate90.jpg"), "a rotated image is re-encoded even with skip_reencode");
}

#[test]
fn real_edge_case_files() {
    let o = ImageOptions { image_size: 64, ..Default::default() };
    let read = |n: &str| std::fs::read(common::data_image(n)).unwrap();
    for ok in ["palette_color.png", "foo3x5x4indexed.png", "no_time_for_that_tiny.gif", "multipage.tif", "camera.png"] {
        let p = process(&read(ok), &o).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(p.width.min(p.height), 64, "{ok}");
    }
    let e = process(&read("truncated.jpg"), &o).unwrap_err();
    assert!(matches!(e, ImageError::Decode(_)), "truncated.jpg: {e}");
    let bomb = pixforge::bench::bombs::png_declaring(60000, 60000);
    assert!(matches!(process(&bomb, &o), Err(ImageError::Bomb { pixels: 3_600_000_000, .. })));
    let e = process(b"GIF89a\x01\x00\x01\x00\x00", &o).unwrap_err();
    assert!(matches!(e, ImageError::Decode(_)), "{e:?}");
    assert!(matches!(process(b"hello world", &o), Err(ImageError::UnknownFormat(_))));
}

#[test]
fn skip_reencode_keeps_source_bytes_when_nothing_changes() {
    let src = std::fs::read(common::data_image("rocket.jpg")).unwrap();
    let o =
        ImageOptions { image_size: 427, resize_mode: ResizeMode::KeepRatio, skip_reencode: true, ..Default::default() };
    let p = process(&src, &o).unwrap();
    assert!(p.data == src, "640x427 at keep_ratio 427 needs no resize: bytes kept");
    let o = ImageOptions { image_size: 256, ..o };
    assert!(process(&src, &o).unwrap().data != src);
}

fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let mse: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

#[test]
fn dct_downscaled_decode_matches_full_decode() {
    // hubble_deep_field.jpg is 1000x872: at 256 px the DCT path decodes at 1/2 or 1/4 scale.
    let src = std::fs::read(common::data_image("hubble_deep_field.jpg")).unwrap();
    for mode in [ResizeMode::KeepRatio, ResizeMode::CenterCrop, ResizeMode::Border, ResizeMode::KeepRatioLargest] {
        for size in [100, 256, 333] {
            let fast = ImageOptions {
                image_size: size,
                resize_mode: mode,
                encode_format: pixforge::image::EncodeFormat::Png,
                ..Default::default()
            };
            let full = ImageOptions { dct_downscale: false, ..fast.clone() };
            let (a, b) = (process(&src, &fast).unwrap(), process(&src, &full).unwrap());
            assert_eq!(
                (a.width, a.height, a.original_width, a.original_height),
                (b.width, b.height, b.original_width, b.original_height)
            );
            let (ia, ib) = (
                image::load_from_memory(&a.data).unwrap().to_rgb8(),
                image::load_from_memory(&b.data).unwrap().to_rgb8(),
            );
            let q = psnr(&ia, &ib);
            assert!(q > 28.0, "{mode:?} {size}: PSNR {q:.1} dB between DCT-scaled and full decode");
        }
    }
}
