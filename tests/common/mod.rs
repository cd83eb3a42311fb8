//! Shared test helpers: paths to the test data, a loopback HTTP server with fault endpoints, and
//! fixtures built from the bundled photos.
#![allow(dead_code)]

pub mod caches;
pub mod chromium;
pub mod proxy;
pub mod server;
pub mod tfevents;
pub mod vlm;

use pixforge::ingest::{DedupMode, IngestConfig, SourceKind};
use std::path::{Path, PathBuf};

/// An ingest of `inputs` with every section at its default.
pub fn ingest_config(source: SourceKind, inputs: Vec<PathBuf>) -> IngestConfig {
    IngestConfig {
        source,
        inputs,
        hub: Default::default(),
        laion: Default::default(),
        image: Default::default(),
        curation: Default::default(),
        download: Default::default(),
    }
}

/// A `laion` ingest of JSONL `{url, caption}` rows served on loopback: 64 px images, no
/// de-duplication, private addresses allowed.
pub fn loopback_laion_config(meta: PathBuf) -> IngestConfig {
    let mut cfg = ingest_config(SourceKind::Laion, vec![meta]);
    cfg.laion.url_col = "url".into();
    cfg.laion.caption_col = "caption".into();
    cfg.image.image_size = 64;
    cfg.curation.dedup = DedupMode::None;
    cfg.download.allow_private_addresses = true;
    cfg
}

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

/// The largest resident set of any child process this process has waited for, in bytes.
pub fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

/// A raw HTTP/1.1 GET of `path` on `base` (`http://host:port`), exactly as written (no client
/// normalising `..`): the status and the body.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `pixforge browse DIR --port 0` started, with its printed first line and address; killed on drop.
pub struct Browse {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The line it printed on start.
    pub first_line: String,
}

impl Browse {
    /// Starts the browser on `dir`, `env` setting the command's environment first.
    pub fn start(dir: &Path, env: impl FnOnce(&mut std::process::Command)) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(bin());
        env(&mut cmd);
        let mut child = cmd
            .args(["browse", "--port", "0"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first_line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
        let base = first_line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {first_line:?}"))
            .trim_end_matches('/')
            .to_string();
        Self { child, base, first_line }
    }
}

impl Drop for Browse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
