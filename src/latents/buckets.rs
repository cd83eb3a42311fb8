//! PixArt's aspect-ratio buckets (`ASPECT_RATIO_256` / `_512` / `_1024` of the official PixArt-α code,
//! PixArt-Σ's `_2048`, and diffusers' `*_BIN` test tables): 40 `[height, width]` sizes per base
//! resolution keyed by an h/w label, and the nearest-label assignment `argmin |key − h/w|` both use.

/// `(key, height, width)` of the 512 px table; the 1024 table doubles it, the 256 table halves it,
/// PixArt-Σ's 2048 table is four times it.
const ASPECT_RATIO_512: [(f64, usize, usize); 40] = [
    (0.25, 256, 1024),
    (0.26, 256, 992),
    (0.27, 256, 960),
    (0.28, 256, 928),
    (0.32, 288, 896),
    (0.33, 288, 864),
    (0.35, 288, 832),
    (0.4, 320, 800),
    (0.42, 320, 768),
    (0.48, 352, 736),
    (0.5, 352, 704),
    (0.52, 352, 672),
    (0.57, 384, 672),
    (0.6, 384, 640),
    (0.68, 416, 608),
    (0.72, 416, 576),
    (0.78, 448, 576),
    (0.82, 448, 544),
    (0.88, 480, 544),
    (0.94, 480, 512),
    (1.0, 512, 512),
    (1.07, 512, 480),
    (1.13, 544, 480),
    (1.21, 544, 448),
    (1.29, 576, 448),
    (1.38, 576, 416),
    (1.46, 608, 416),
    (1.67, 640, 384),
    (1.75, 672, 384),
    (2.0, 704, 352),
    (2.09, 736, 352),
    (2.4, 768, 320),
    (2.5, 800, 320),
    (2.89, 832, 288),
    (3.0, 864, 288),
    (3.11, 896, 288),
    (3.62, 928, 256),
    (3.75, 960, 256),
    (3.88, 992, 256),
    (4.0, 1024, 256),
];

/// Keys the `*_TEST` / diffusers `*_BIN` tables leave out.
const NOT_IN_TEST: [f64; 7] = [0.26, 0.27, 2.89, 3.11, 3.62, 3.75, 3.88];

/// A bucket: its h/w label and size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// The h/w label (e.g. 0.57).
    pub key: f64,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// The buckets of a base resolution (256, 512, 1024 or 2048 px); `test` = the inference tables
/// diffusers bins with: 33 entries, but all 40 at 2048 (PixArt-Σ's `ASPECT_RATIO_2048_BIN`).
pub fn table(base: usize, test: bool) -> Option<Vec<Bucket>> {
    let scale = |v: usize| match base {
        256 => Some(v / 2),
        512 => Some(v),
        1024 => Some(v * 2),
        2048 => Some(v * 4),
        _ => None,
    };
    ASPECT_RATIO_512
        .iter()
        .filter(|(k, _, _)| !test || base == 2048 || !NOT_IN_TEST.contains(k))
        .map(|&(key, h, w)| Some(Bucket { key, height: scale(h)?, width: scale(w)? }))
        .collect()
}

/// The bucket whose label is nearest `height / width` (the first on ties, as Python's `min`).
pub fn closest(buckets: &[Bucket], height: usize, width: usize) -> Bucket {
    let ratio = height as f64 / width as f64;
    *buckets
        .iter()
        .min_by(|a, b| (a.key - ratio).abs().total_cmp(&(b.key - ratio).abs()))
        .expect("a bucket table is never empty")
}

/// How an image is brought to a `height × width` target: resized to `resize` (height, width), then
/// the `crop` box (top, left, height, width) taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CropPlan {
    /// Size after resizing, (height, width).
    pub resize: (usize, usize),
    /// (top, left, height, width) of the crop in the resized image.
    pub crop: (usize, usize, usize, usize),
}

/// torchvision's `CenterCrop` offset: `int(round((size − crop) / 2))` (Python rounds half to even).
fn center_offset(size: usize, crop: usize) -> usize {
    ((size - crop) as f64 / 2.0).round_ties_even() as usize
}

/// The official multi-scale rule (`InternalDataMS`): resize preserving the aspect ratio so the image
/// covers the bucket (the side that needs the larger scale is set exactly, the other is
/// `int(side · scale)`), then center-crop to the bucket.
pub fn cover_and_crop(height: usize, width: usize, bucket: Bucket) -> CropPlan {
    let (bh, bw) = (bucket.height, bucket.width);
    let resize = if bh as f64 / height as f64 > bw as f64 / width as f64 {
        (bh, ((width * bh) as f64 / height as f64) as usize)
    } else {
        (((height * bw) as f64 / width as f64) as usize, bw)
    };
    let resize = (resize.0.max(bh), resize.1.max(bw));
    CropPlan { resize, crop: (center_offset(resize.0, bh), center_offset(resize.1, bw), bh, bw) }
}

/// The official single-scale rule (`extract_img_vae`): torchvision `Resize(size)` sets the shorter
/// side to `size` and the longer to `int(size · long / short)`, then `CenterCrop(size)`.
pub fn shorter_side_and_crop(height: usize, width: usize, size: usize) -> CropPlan {
    let resize = if height <= width {
        (size, (size as f64 * width as f64 / height as f64) as usize)
    } else {
        ((size as f64 * height as f64 / width as f64) as usize, size)
    };
    CropPlan { resize, crop: (center_offset(resize.0, size), center_offset(resize.1, size), size, size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_assignment_follow_the_official_code() {
        let t = table(1024, false).unwrap();
        assert_eq!(t.len(), 40);
        assert_eq!(table(512, true).unwrap().len(), 33);
        assert_eq!(closest(&t, 1024, 1024), Bucket { key: 1.0, height: 1024, width: 1024 });
        // 600/1000 = 0.6 → [768, 1280]
        assert_eq!(closest(&t, 600, 1000), Bucket { key: 0.6, height: 768, width: 1280 });
        // 3:4 portrait (1.333) is nearer 1.29 than 1.38
        assert_eq!(closest(&table(512, true).unwrap(), 800, 600).key, 1.29);
        assert!(table(768, false).is_none());
        let t512 = table(512, false).unwrap();
        // 1200×1600 portrait (h/w 1.333 → key 1.29, [576, 448]): 576/1600 = 0.36 < 448/1200 = 0.373, so
        // the width is set and the height is int(1600·448/1200) = 597; top = round(10.5) = 10 (half to even).
        let b = closest(&t512, 1600, 1200);
        assert_eq!((b.key, b.height, b.width), (1.29, 576, 448));
        assert_eq!(cover_and_crop(1600, 1200, b), CropPlan { resize: (597, 448), crop: (10, 0, 576, 448) });
        // 640×480 landscape (h/w 0.75, as near 0.72 as 0.78: the first wins) → [416, 576]: 416/480 = 0.867 <
        // 576/640 = 0.9, so the width is set and the height is 432; top = 8.
        let b = closest(&t512, 480, 640);
        assert_eq!((b.key, b.height, b.width), (0.72, 416, 576));
        assert_eq!(cover_and_crop(480, 640, b), CropPlan { resize: (432, 576), crop: (8, 0, 416, 576) });
        // An exact bucket size is untouched.
        assert_eq!(
            cover_and_crop(512, 512, closest(&t512, 512, 512)),
            CropPlan { resize: (512, 512), crop: (0, 0, 512, 512) }
        );
        // Single scale: 480×640 → shorter side 256 → 256×341, crop left int(round(42.5)) = 42.
        assert_eq!(shorter_side_and_crop(480, 640, 256), CropPlan { resize: (256, 341), crop: (0, 42, 256, 256) });
        assert_eq!(shorter_side_and_crop(700, 500, 512), CropPlan { resize: (716, 512), crop: (102, 0, 512, 512) });
        for b in table(256, false).unwrap() {
            assert_eq!((b.height % 16, b.width % 16), (0, 0), "latent sides stay multiples of the patch grid");
        }
    }

    /// PixArt-Σ's 2K table: the official `ASPECT_RATIO_2048` and diffusers' `ASPECT_RATIO_2048_BIN`
    /// (which, unlike the smaller BIN tables, keeps all 40 entries); entries checked against both.
    #[test]
    fn the_2k_table_is_pixart_sigmas() {
        let (train, bin) = (table(2048, false).unwrap(), table(2048, true).unwrap());
        assert_eq!((train.len(), bin.len()), (40, 40));
        assert_eq!(train, bin);
        let get = |key: f64| train.iter().find(|b| b.key == key).map(|b| (b.height, b.width));
        for (key, hw) in [(0.25, (1024, 4096)), (0.26, (1024, 3968)), (0.57, (1536, 2688)), (1.0, (2048, 2048))] {
            assert_eq!(get(key), Some(hw), "{key}");
        }
        for (key, hw) in [(1.46, (2432, 1664)), (2.89, (3328, 1152)), (3.88, (3968, 1024)), (4.0, (4096, 1024))] {
            assert_eq!(get(key), Some(hw), "{key}");
        }
        assert_eq!(closest(&bin, 1080, 1920).key, 0.57);
    }
}
