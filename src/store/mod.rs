//! Where a dataset lives: a local folder, or a prefix in an object store (`s3://bucket/prefix`,
//! `gs://…`, `az://…`; `http(s)://` for reading) through the `object_store` crate, with credentials
//! and endpoints from each cloud's standard environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for an S3-compatible
//! store such as MinIO, Ceph or R2; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_*`).
//!
//! Objects are written whole (a file over [`PART_BYTES`] as a streamed multipart upload, memory
//! bounded by the parts in flight), so a listed object is complete. Transient store errors (5xx,
//! throttling, broken connections) are retried with exponential backoff by the store client, up to
//! [`RETRIES`] times within [`RETRY_TIMEOUT`] (`PIXFORGE_STORE_RETRIES`,
//! `PIXFORGE_STORE_RETRY_TIMEOUT` in seconds change them); a permanent one (no bucket, access denied) is an
//! error naming the object and carrying the store's message. The transient failures are counted
//! ([`transient_failures`]) for the runs' stats. The calls block: each runs on a
//! small runtime of its own.

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod counted;
mod staging;
pub use counted::transient_failures;
pub use staging::{
    create_dir, exists, local_copy, names_in, put_file, read_file, read_in, reading_dir, remote, temp_for, working_dir,
    write_file, ReadAhead, Staging, READ_AHEAD,
};

/// Bytes of each part of a multipart upload (and the largest object sent in one request).
pub const PART_BYTES: usize = 8 << 20;

/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Attempts after a transient store error.
pub const RETRIES: usize = 10;

/// The longest a request is retried for.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(180);

/// URL schemes read and written through an object store.
pub const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "http", "https"];

/// A dataset's place: a local folder or an object-store prefix.
#[derive(Debug, Clone)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// A prefix in an object store.
    Remote(Remote),
}

impl Location {
    /// A URL with an object-store scheme is remote; anything else is a local path.
    pub fn parse(path: &Path) -> anyhow::Result<Self> {
        if is_remote(path) {
            Ok(Location::Remote(Remote::open(&path.to_string_lossy())?))
        } else {
            Ok(Location::Local(path.to_path_buf()))
        }
    }
}

/// Whether `path` names an object-store location.
pub fn is_remote(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.split_once("://").is_some_and(|(s, _)| SCHEMES.contains(&s.to_ascii_lowercase().as_str()))
}

/// A prefix in an object store.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: ObjectPath,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pixforge-store")
            .enable_all()
            .build()
            .expect("the object-store runtime starts")
    })
}

/// The retry policy: [`RETRIES`] within [`RETRY_TIMEOUT`], or `PIXFORGE_STORE_RETRIES` and
/// `PIXFORGE_STORE_RETRY_TIMEOUT` (seconds) when set.
fn retry() -> RetryConfig {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| *v >= 0.0);
    RetryConfig {
        max_retries: var("PIXFORGE_STORE_RETRIES").map_or(RETRIES, |v| v as usize),
        retry_timeout: var("PIXFORGE_STORE_RETRY_TIMEOUT").map_or(RETRY_TIMEOUT, Duration::from_secs_f64),
        ..RetryConfig::default()
    }
}

impl Remote {
    /// The store and prefix `url` names, configured from the environment.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let trimmed = url.trim_end_matches('/');
        let parsed = url::Url::parse(trimmed).map_err(|e| anyhow::anyhow!("{url}: not a URL: {e}"))?;
        let bad = |e: object_store::Error| anyhow::anyhow!("{url}: {e}");
        let scheme = parsed.scheme().to_ascii_lowercase();
        // The clouds' builders: configured from the environment, then the URL, the counting
        // client and the retry policy.
        macro_rules! cloud {
            ($builder:expr) => {
                Arc::new(
                    $builder
                        .with_url(trimmed)
                        .with_http_connector(counted::CountingConnector)
                        .with_retry(retry())
                        .build()
                        .map_err(bad)?,
                )
            };
        }
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" | "s3a" => cloud!(object_store::aws::AmazonS3Builder::from_env()),
            "gs" => cloud!(object_store::gcp::GoogleCloudStorageBuilder::from_env()),
            "az" | "abfs" | "abfss" | "azure" => cloud!(object_store::azure::MicrosoftAzureBuilder::from_env()),
            "http" | "https" => {
                let origin = parsed.origin().ascii_serialization();
                let client = object_store::ClientOptions::new().with_allow_http(scheme == "http");
                Arc::new(
                    object_store::http::HttpBuilder::new()
                        .with_url(origin)
                        .with_client_options(client)
                        .with_http_connector(counted::CountingConnector)
                        .with_retry(retry())
                        .build()
                        .map_err(bad)?,
                )
            }
            other => anyhow::bail!("{url}: unsupported scheme {other:?} (expected one of {SCHEMES:?})"),
        };
        // The bucket (or container) is the URL's host for the clouds; the rest is the prefix.
        let path = parsed.path().trim_matches('/');
        let prefix = ObjectPath::parse(path).map_err(|e| anyhow::anyhow!("{url}: not an object path: {e}"))?;
        Ok(Self { store, url: trimmed.to_string(), prefix })
    }

    /// The location as given, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn named(&self, name: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}/{name}: {e}", self.url)
    }

    /// Lists the prefix once, so that a store that cannot be reached, a bucket that does not exist or
    /// credentials that are refused fail the run at its start, with the store's message.
    pub fn check(&self) -> anyhow::Result<()> {
        self.list().map(|_| ()).map_err(|e| {
            anyhow::anyhow!("{e:#} (check the bucket, the credentials and AWS_ENDPOINT_URL / the cloud's variables)")
        })
    }

    /// What is directly under the prefix: objects and sub-prefixes.
    fn listing(&self) -> anyhow::Result<object_store::ListResult> {
        runtime().block_on(async {
            self.store
                .list_with_delimiter(Some(&self.prefix))
                .await
                .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", self.url))
        })
    }

    /// The names (and sizes) of the objects directly under the prefix.
    pub fn list(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let listed = self.listing()?;
        Ok(listed.objects.into_iter().filter_map(|o| o.location.filename().map(|n| (n.to_string(), o.size))).collect())
    }

    /// The names of the sub-prefixes ("folders") directly under the prefix.
    pub fn list_dirs(&self) -> anyhow::Result<Vec<String>> {
        let listed = self.listing()?;
        Ok(listed.common_prefixes.into_iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    /// The prefix `name` under this one, on the same store.
    pub fn child(&self, name: &str) -> Self {
        Self { store: self.store.clone(), url: format!("{}/{name}", self.url), prefix: self.path(name) }
    }

    /// Removes every object under the prefix, at any depth.
    pub fn delete_all(&self) -> anyhow::Result<()> {
        runtime().block_on(async {
            let mut listed = self.store.list(Some(&self.prefix));
            let mut paths = Vec::new();
            while let Some(meta) = listed.next().await {
                paths.push(meta.map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", self.url))?.location);
            }
            for p in paths {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => anyhow::bail!("{}: cannot delete {p}: {e}", self.url),
                }
            }
            Ok(())
        })
    }

    /// The bytes of `name`, or `None` when there is no such object.
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        runtime().block_on(async {
            match self.store.get(&self.path(name)).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.named(name, e))?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.named(name, e)),
            }
        })
    }

    /// Whether there is an object `name`.
    pub fn exists(&self, name: &str) -> anyhow::Result<bool> {
        runtime().block_on(async {
            match self.store.head(&self.path(name)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.named(name, e)),
            }
        })
    }

    /// Writes `bytes` as `name`, whole.
    pub fn write(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        runtime().block_on(async {
            self.store.put(&self.path(name), PutPayload::from(bytes)).await.map_err(|e| self.named(name, e))?;
            Ok(())
        })
    }

    /// Uploads the local file `local` as `name`: in one request up to [`PART_BYTES`], else as a
    /// multipart upload read part by part (at most [`PARTS_IN_FLIGHT`] parts in memory). An upload
    /// that fails is aborted: no object appears.
    pub fn upload(&self, local: &Path, name: &str) -> anyhow::Result<()> {
        let mut file =
            std::fs::File::open(local).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", local.display()))?;
        let len = file.metadata()?.len() as usize;
        if len <= PART_BYTES {
            let mut bytes = Vec::with_capacity(len);
            file.read_to_end(&mut bytes)?;
            return self.write(name, bytes);
        }
        runtime().block_on(async {
            let upload = self.store.put_multipart(&self.path(name)).await.map_err(|e| self.named(name, e))?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = read_full(&mut file, &mut buf).map_err(|e| anyhow::anyhow!("{}: {e}", local.display()))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    writer.abort().await.ok();
                    return Err(self.named(name, e));
                }
                writer.put(Bytes::copy_from_slice(&buf[..n]));
            }
            writer.finish().await.map_err(|e| self.named(name, e))?;
            Ok(())
        })
    }

    /// Downloads `name` to the local file `local` (streamed, through a temporary file).
    pub fn download(&self, name: &str, local: &Path) -> anyhow::Result<()> {
        runtime().block_on(async {
            let r = self.store.get(&self.path(name)).await.map_err(|e| self.named(name, e))?;
            let tmp = crate::shards::temp_path(local);
            let mut out =
                std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.map_err(|e| self.named(name, e))?)?;
            }
            out.flush()?;
            std::fs::rename(&tmp, local)?;
            Ok(())
        })
    }

    /// Removes `name` (a missing object is not an error).
    pub fn delete(&self, name: &str) -> anyhow::Result<()> {
        runtime().block_on(async {
            match self.store.delete(&self.path(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.named(name, e)),
            }
        })
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_remote_and_paths_local() {
        for p in ["s3://bucket/a/b", "gs://bucket/x", "az://container/p", "https://host/data"] {
            assert!(is_remote(Path::new(p)), "{p}");
        }
        for p in ["out", "/tmp/s3/x", "./gs:/x", "C:/data"] {
            assert!(!is_remote(Path::new(p)), "{p}");
        }
        assert!(matches!(Location::parse(Path::new("runs/a")).unwrap(), Location::Local(_)));
        let err = Remote::open("s3://").unwrap_err().to_string();
        assert!(err.starts_with("s3://"), "{err}");
    }
}
