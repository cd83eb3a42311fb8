//! A real S3-compatible server on loopback for the object-store tests: `s3s-fs` (the S3 protocol of
//! the `s3s` crate over a folder, one directory per bucket), served in process with signature
//! checking, in front of which a fault switch answers chosen requests with `503 SlowDown` or
//! `500 InternalError` and counts every request.

use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The credentials the server accepts.
pub const ACCESS_KEY: &str = "pixforge-test";
/// The secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "pixforge-test-secret";

/// What the fault switch does.
#[derive(Default)]
pub struct Faults {
    /// Answer every n-th request with a fault, `503 SlowDown` and `500 InternalError` in turn (0: none).
    pub every: AtomicUsize,
    /// Refuse every request with `503` (the store "went away").
    pub down: AtomicBool,
    /// Requests seen.
    pub requests: AtomicUsize,
    /// Requests answered with a fault.
    pub faulted: AtomicUsize,
}

/// A running server; it stops when the test process ends.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The folder holding the buckets.
    pub root: PathBuf,
    /// The fault switch.
    pub faults: Arc<Faults>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server with one empty bucket named `bucket`.
    pub fn start(bucket: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let faults = Arc::new(Faults::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (root2, faults2) = (root.clone(), faults.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(serve(listener, root2, faults2));
        });
        Self { endpoint, root, faults, _dir: dir }
    }

    /// Sets the environment a pixforge process needs to reach this server.
    pub fn env<'a>(&self, cmd: &'a mut std::process::Command) -> &'a mut std::process::Command {
        for v in ["AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT", "AWS_DEFAULT_REGION"] {
            cmd.env_remove(v);
        }
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
    }
}

async fn serve(listener: std::net::TcpListener, root: PathBuf, faults: Arc<Faults>) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let (service, faults) = (service.clone(), faults.clone());
        let handler = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (service, faults) = (service.clone(), faults.clone());
            async move {
                let n = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
                let every = faults.every.load(Ordering::SeqCst);
                if faults.down.load(Ordering::SeqCst) || (every > 0 && n % every == 0) {
                    let k = faults.faulted.fetch_add(1, Ordering::SeqCst);
                    // Every other injected fault is a server error, the rest throttling.
                    let (status, body) = if !faults.down.load(Ordering::SeqCst) && k % 2 == 1 {
                        (500, "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>")
                    } else {
                        (503, "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
                    };
                    let resp = hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/xml")
                        .body(s3s::Body::from(body.to_string()))
                        .unwrap();
                    return Ok::<_, s3s::HttpError>(resp);
                }
                service.call(req.map(s3s::Body::from)).await
            }
        });
        let conn = http.serve_connection(TokioIo::new(socket), handler).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Every file under `dir` (relative path → bytes), for comparing a bucket with a local folder.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}
