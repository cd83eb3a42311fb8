//! The hostile-input corpus: files small on disk that claim or inflate to far more — PNG metadata
//! chunks inflating to a GiB, headers declaring billions of pixels, gzipped text inflating to one
//! enormous line — each beside a normal counterpart, for the bomb benchmark (`pixforge bench
//! bomb-corpus`, bench/bombs.sh) and the fault tests.

use std::io::Write;
use std::path::Path;

/// The bytes of a zlib-less deflate stream of `inflated` bytes of `filler` (whole MiBs), without its
/// final block: one sync-flushed block of a MiB, repeated.
fn deflate_repeated(filler: u8, inflated: u64) -> Vec<u8> {
    assert_eq!(inflated % (1 << 20), 0, "whole MiBs");
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![filler; 1 << 20]).expect("in memory");
    // A sync flush ends the data on a byte boundary without a final block (which finishing adds).
    e.flush().expect("in memory");
    let block = e.get_ref().clone();
    let mut out = Vec::with_capacity(block.len() * (inflated >> 20) as usize + 2);
    for _ in 0..inflated >> 20 {
        out.extend_from_slice(&block);
    }
    out
}

/// A zlib stream inflating to `inflated` bytes of `filler` (whole MiBs).
fn zlib_repeated(filler: u8, inflated: u64) -> Vec<u8> {
    let mut z = vec![0x78, 0xDA];
    z.extend(deflate_repeated(filler, inflated));
    z.extend_from_slice(&[0x03, 0x00]); // the final, empty block
                                        // Adler-32 of n equal bytes: a = 1 + n*f, b = n + f*n(n+1)/2 (mod 65521).
    let n = inflated as u128;
    let (f, m) = (filler as u128, 65521u128);
    let a = (1 + n * f) % m;
    let b = (n + f * (n * (n + 1) / 2)) % m;
    z.extend_from_slice(&(((b << 16) | a) as u32).to_be_bytes());
    z
}

/// A gzip member inflating to `inflated` bytes of `filler` (whole MiBs), a few KiB per MiB on disk.
pub fn gzip_repeated(filler: u8, inflated: u64) -> Vec<u8> {
    let mut g = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    g.extend(deflate_repeated(filler, inflated));
    g.extend_from_slice(&[0x03, 0x00]);
    let (mib, mut crc) = (vec![filler; 1 << 20], crc32fast::Hasher::new());
    for _ in 0..inflated >> 20 {
        crc.update(&mib);
    }
    g.extend_from_slice(&crc.finalize().to_le_bytes());
    g.extend_from_slice(&((inflated & 0xffff_ffff) as u32).to_le_bytes());
    g
}

/// An ordinary gzip member of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

/// A gzipped text file: `head`, then `inflated` bytes of `filler` with no line end, then `tail`
/// (three gzip members, as `cat a.gz b.gz` makes; every reader of gzip reads them as one file).
pub fn gzip_text_bomb(head: &str, filler: u8, inflated: u64, tail: &str) -> Vec<u8> {
    let mut out = gzip(head.as_bytes());
    out.extend(gzip_repeated(filler, inflated));
    out.extend(gzip(tail.as_bytes()));
    out
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A 1x1 PNG of colour (`red`, 30, 30).
fn png_1x1(red: u8) -> Vec<u8> {
    let mut plain = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([red, 30, 30]))
        .write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::Png)
        .expect("in memory");
    plain
}

/// `png` with one more chunk after its header (the signature and IHDR are the first 33 bytes).
fn png_with_chunk(png: &[u8], chunk: &[u8]) -> Vec<u8> {
    let mut out = png[..33].to_vec();
    out.extend_from_slice(chunk);
    out.extend_from_slice(&png[33..]);
    out
}

/// A 1x1 PNG of red `red` whose ICC profile (`iCCP` chunk) inflates to `inflated` zero bytes
/// (whole MiBs): a metadata bomb of a few hundred kilobytes per GiB.
pub fn png_with_icc_bomb(inflated: u64, red: u8) -> Vec<u8> {
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend(zlib_repeated(0, inflated));
    png_with_chunk(&png_1x1(red), &png_chunk(b"iCCP", &iccp))
}

/// A 1x1 PNG of red `red` whose compressed text (`zTXt` chunk) inflates to `inflated` bytes of `a`.
pub fn png_with_text_bomb(inflated: u64, red: u8) -> Vec<u8> {
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend(zlib_repeated(b'a', inflated));
    png_with_chunk(&png_1x1(red), &png_chunk(b"zTXt", &ztxt))
}

/// A PNG whose header declares `w` x `h` pixels but whose data is a few bytes.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// An 8x8 baseline JPEG whose frame header declares `w` x `h` pixels.
pub fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([90, 120, 200]))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .expect("in memory");
    let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
    // FFC0, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

/// A WebP whose extended header (`VP8X`) declares a `w` x `h` canvas around a 1x1 lossless image.
pub fn webp_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut lossless = Vec::new();
    image::RgbaImage::from_pixel(1, 1, image::Rgba([10, 200, 30, 255]))
        .write_to(&mut std::io::Cursor::new(&mut lossless), image::ImageFormat::WebP)
        .expect("in memory");
    // RIFF size WEBP, then the VP8L chunk.
    let vp8l = &lossless[12..];
    let mut vp8x = b"VP8X".to_vec();
    vp8x.extend_from_slice(&10u32.to_le_bytes());
    vp8x.extend_from_slice(&[0, 0, 0, 0]);
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + vp8x.len() + vp8l.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend(vp8x);
    out.extend_from_slice(vp8l);
    out
}

/// A GIF whose logical screen is `w` x `h` pixels around a 1x1 frame.
pub fn gif_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut gif = Vec::new();
    image::RgbaImage::from_pixel(1, 1, image::Rgba([200, 10, 30, 255]))
        .write_to(&mut std::io::Cursor::new(&mut gif), image::ImageFormat::Gif)
        .expect("in memory");
    gif[6..8].copy_from_slice(&w.to_le_bytes());
    gif[8..10].copy_from_slice(&h.to_le_bytes());
    gif
}

/// A photo-like `side` x `side` JPEG (smooth gradients and texture), the normal image the bombs are
/// measured against.
pub fn normal_jpeg(side: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let t = (x * 7 + y * 13 + seed * 101) % 251;
        image::Rgb([(x * 255 / side) as u8, (y * 255 / side) as u8, t as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg).expect("in memory");
    out
}

/// How many files of each kind the corpus has.
pub const PER_KIND: usize = 8;

/// Makes the file of one index of an image kind.
pub type ImageMaker = Box<dyn Fn(usize) -> Vec<u8>>;

/// The image kinds of the corpus: folder name, file extension and maker.
pub fn image_kinds(inflated: u64) -> Vec<(&'static str, &'static str, ImageMaker)> {
    vec![
        ("normal", "jpg", Box::new(|i| normal_jpeg(512, i as u32))),
        ("icc-profile", "png", Box::new(move |i| png_with_icc_bomb(inflated, (30 * i) as u8))),
        ("text-chunk", "png", Box::new(move |i| png_with_text_bomb(inflated, (30 * i) as u8))),
        ("png-pixels", "png", Box::new(|i| png_declaring(100_000 + i as u32, 100_000))),
        ("jpeg-pixels", "jpg", Box::new(|i| jpeg_declaring(60_000 + i as u16, 60_000))),
        ("webp-pixels", "webp", Box::new(|i| webp_declaring(16_384, 16_384 - i as u32))),
        ("gif-pixels", "gif", Box::new(|i| gif_declaring(65_535, 65_535 - i as u16))),
    ]
}

/// Metadata and caption lists, each as `(name, normal, bomb)`: the bomb has the normal file's rows
/// with one row of `inflated` bytes between them.
pub fn text_kinds(inflated: u64) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let urls: Vec<String> = (0..PER_KIND).map(|i| format!("http://images.example/{i}.jpg")).collect();
    let captions: Vec<String> = (0..PER_KIND).map(|i| format!("a red chair number {i} beside a window")).collect();
    let half = PER_KIND / 2;
    let both = |rows: &[String], head: &str, sep: &str, open: &str, close: &str, tail: &str| {
        let normal = format!("{head}{}{tail}", rows.join(sep));
        let bomb_head = format!("{head}{}{sep}{open}", rows[..half].join(sep));
        let bomb_tail = format!("{close}{sep}{}{tail}", rows[half..].join(sep));
        (gzip(normal.as_bytes()), gzip_text_bomb(&bomb_head, b'x', inflated, &bomb_tail))
    };
    let csv: Vec<String> = urls.iter().zip(&captions).map(|(u, c)| format!("{u},{c}")).collect();
    let jsonl: Vec<String> =
        urls.iter().zip(&captions).map(|(u, c)| serde_json::json!({"URL": u, "TEXT": c}).to_string()).collect();
    let quoted: Vec<String> = captions.iter().map(|c| serde_json::json!(c).to_string()).collect();
    let mut kinds = Vec::new();
    let (n, b) = both(&urls, "", "\n", "", "", "\n");
    kinds.push(("urls.txt.gz", n, b));
    let (n, b) = both(&csv, "URL,TEXT\n", "\n", "http://images.example/bomb.jpg,", "", "\n");
    kinds.push(("metadata.csv.gz", n, b));
    let (n, b) = both(&jsonl, "", "\n", "{\"URL\": \"http://images.example/bomb.jpg\", \"TEXT\": \"", "\"}", "\n");
    kinds.push(("metadata.jsonl.gz", n, b));
    let (n, b) = both(&quoted, "[", ", ", "\"", "\"", "]");
    kinds.push(("captions.json.gz", n, b));
    let (n, b) = both(&captions, "", "\n", "", "", "\n");
    kinds.push(("captions.txt.gz", n, b));
    kinds
}

/// A WebDataset shard as another tool writes it (`00000.tar` + `00000_stats.json`): `images`, each
/// with a caption.
pub fn write_shard(dir: &Path, images: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut b = tar::Builder::new(std::fs::File::create(dir.join("00000.tar"))?);
    for (i, (name, bytes)) in images.iter().enumerate() {
        let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("png");
        let caption = format!("image {i}");
        for (ext, data) in [(ext, bytes.as_slice()), ("txt", caption.as_bytes())] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("{i:09}.{ext}"), data)?;
        }
    }
    b.finish()?;
    std::fs::write(dir.join("00000_stats.json"), format!("{{\"count\": {}}}", images.len()))?;
    Ok(())
}

/// Writes the corpus into `dir`: `images/KIND/` ([`PER_KIND`] files each), `images/all-bombs/`
/// (one of each bomb kind, as many files as the others), `text/normal/` and `text/bomb/`, and
/// `shards/KIND/` (the same images as a WebDataset shard). Returns the kinds written.
pub fn write_corpus(dir: &Path, inflated: u64) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut mixed = Vec::new();
    for (kind, ext, make) in image_kinds(inflated) {
        let files: Vec<(String, Vec<u8>)> = (0..PER_KIND).map(|i| (format!("{i}.{ext}"), make(i))).collect();
        if kind != "normal" {
            mixed.push(files[mixed.len() % PER_KIND].clone());
        }
        write_images(&dir.join("images").join(kind), &files)?;
        write_shard(&dir.join("shards").join(kind), &files)?;
        names.push(kind.to_string());
    }
    while mixed.len() < PER_KIND {
        let again = mixed[mixed.len() % 6].clone();
        mixed.push((format!("again-{}", again.0), again.1));
    }
    let mixed: Vec<(String, Vec<u8>)> =
        mixed.into_iter().enumerate().map(|(i, (n, b))| (format!("{i}-{}", n.replace('/', "_")), b)).collect();
    write_images(&dir.join("images/all-bombs"), &mixed)?;
    write_shard(&dir.join("shards/all-bombs"), &mixed)?;
    names.push("all-bombs".into());
    for (name, normal, bomb) in text_kinds(inflated) {
        for (which, bytes) in [("normal", &normal), ("bomb", &bomb)] {
            let d = dir.join("text").join(which);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(name), bytes)?;
        }
    }
    Ok(names)
}

fn write_images(dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_bombs_inflate_to_what_they_claim() {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&gzip_text_bomb("head\n", b'x', 3 << 20, "\ntail\n")[..])
            .read_to_end(&mut text)
            .expect("valid gzip with matching checksums");
        assert_eq!(text.len(), 5 + (3 << 20) + 6);
        assert!(text.starts_with(b"head\nxxx") && text.ends_with(b"xxx\ntail\n"));
        let icc = png_with_icc_bomb(2 << 20, 7);
        let chunk = &icc[33 + 8..];
        let at = chunk.iter().position(|&b| b == 0).expect("profile name") + 2;
        let mut profile = Vec::new();
        flate2::read::ZlibDecoder::new(&chunk[at..]).read_to_end(&mut profile).expect("valid zlib");
        assert_eq!(profile.len(), 2 << 20);
        for (bytes, w, h) in [
            (jpeg_declaring(60_000, 50_000), 60_000, 50_000),
            (webp_declaring(16_384, 9_000), 16_384, 9_000),
            (gif_declaring(65_535, 4_000), 65_535, 4_000),
            (png_declaring(100_000, 3), 100_000, 3),
        ] {
            let r = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().unwrap();
            assert_eq!(r.into_dimensions().unwrap(), (w, h));
        }
    }
}
