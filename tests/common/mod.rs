//! Shared test helpers: paths to the test data, a loopback HTTP server with fault endpoints, and
//! fixtures built from the bundled photos.
#![allow(dead_code)]

pub mod caches;
pub mod server;
pub mod vlm;

use std::path::{Path, PathBuf};

/// The real data the tests read, inside the repository (`tests/data/`, origins and licences in its
/// README).
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A real photo or image edge case of `tests/data/images` by file name.
pub fn data_image(name: &str) -> PathBuf {
    data().join("images").join(name)
}

/// One of the real caption sets the demo bundles (`assets/demo/`: COCO captions, LLaVA answers).
pub fn caption_set(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(name)
}

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The pixforge binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pixforge"))
}

/// A PNG whose header declares `w` x `h` pixels but whose data is a few bytes (a decompression bomb
/// as far as the header is concerned).
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// ONNX Runtime's library, unpacked from the onnxruntime wheel by tools/install-onnxruntime.sh on
/// first use (once per test binary, into the user's cache, where pixforge finds it).
pub fn onnxruntime() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/install-onnxruntime.sh");
        let out = std::process::Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(
            out.status.success(),
            "tools/install-onnxruntime.sh failed (it downloads the onnxruntime wheel from PyPI with pip): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A 1x1 PNG of red `red` whose ICC profile (`iCCP` chunk) inflates to `inflated` zero bytes: a metadata bomb
/// of a few hundred kilobytes. The deflate stream repeats one sync-flushed block of a MiB of zeros.
pub fn png_with_icc_bomb(inflated: u64, red: u8) -> Vec<u8> {
    use std::io::Write;
    let mut one = Vec::new();
    let block = {
        let mut e = flate2::write::DeflateEncoder::new(&mut one, flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        e.flush().unwrap();
        drop(e);
        one
    };
    assert_eq!(inflated % (1 << 20), 0, "whole MiBs");
    let mut zlib = vec![0x78, 0xDA];
    for _ in 0..inflated >> 20 {
        zlib.extend_from_slice(&block);
    }
    zlib.extend_from_slice(&[0x03, 0x00]); // the final, empty block
                                           // Adler-32 of zeros: a = 1, b = n mod 65521.
    zlib.extend_from_slice(&(((inflated % 65521) << 16 | 1) as u32).to_be_bytes());
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend_from_slice(&zlib);
    let mut plain = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([red, 30, 30]))
        .write_to(&mut std::io::Cursor::new(&mut plain), image::ImageFormat::Png)
        .unwrap();
    let mut chunk = (iccp.len() as u32).to_be_bytes().to_vec();
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"iCCP");
    crc.update(&iccp);
    chunk.extend_from_slice(b"iCCP");
    chunk.extend_from_slice(&iccp);
    chunk.extend_from_slice(&crc.finalize().to_be_bytes());
    // After the signature (8 bytes) and IHDR (25 bytes).
    let mut out = plain[..33].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&plain[33..]);
    out
}

/// The largest resident set of any child process this process has waited for, in bytes.
pub fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}
