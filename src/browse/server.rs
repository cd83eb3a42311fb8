//! The browser's HTTP server (axum): read-only GET routes over one opened dataset.

use super::dataset::{Dataset, RowRef};
use super::html::{self, Links};
use super::query::{self, Query};
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;

/// What every handler reads.
pub struct Shared {
    /// The dataset.
    pub dataset: Dataset,
    /// Tiles per grid page.
    pub page_size: usize,
}

/// The routes: `/` (the grid; the query string is a [`Query`]), `/sample/{part}/{shard}/{key}`,
/// `/image/{part}/{shard}/{key}`, `/reasons` and `/files/{path}` (a file under the dataset folder,
/// such as the density report).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(grid))
        .route("/sample/{part}/{shard}/{key}", get(sample))
        .route("/image/{part}/{shard}/{key}", get(image))
        .route("/reasons", get(reasons))
        .route("/files/{*path}", get(file))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "no such page: the browser serves /, /sample/…, /image/…, /reasons and /files/…")
        })
        .with_state(shared)
}

fn refused(status: StatusCode, why: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], why).into_response()
}

/// Runs `f` on the blocking pool (shards are read from disk).
async fn blocking<F: FnOnce() -> Response + Send + 'static>(f: F) -> Response {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, format!("the page failed: {e}")))
}

async fn grid(
    State(s): State<Arc<Shared>>,
    q: Result<UrlQuery<Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(UrlQuery(q)) => q,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("the grid's query string: {e}")),
    };
    blocking(move || {
        let page = query::page(&s.dataset, &q, s.page_size);
        Html(html::grid(&s.dataset, Links::Server, &q, &page)).into_response()
    })
    .await
}

/// The row a `/sample` or `/image` path names, or the status and message saying why not.
fn locate(
    ds: &Dataset,
    part: usize,
    shard: &str,
    key: &str,
) -> Result<(RowRef, Arc<super::rows::ShardRows>), (StatusCode, String)> {
    if part >= ds.parts.len() {
        return Err((StatusCode::NOT_FOUND, format!("no part {part}: the dataset has {}", ds.parts.len())));
    }
    let Some(si) = ds.find_shard(part, shard) else {
        return Err((StatusCode::NOT_FOUND, format!("no shard {shard} in {}", ds.parts[part].name)));
    };
    let rows = ds.rows(part, si).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    match rows.find(key) {
        Some(row) => Ok((RowRef { part, shard: si, row }, rows)),
        None => Err((StatusCode::NOT_FOUND, format!("no key {key} in shard {shard}"))),
    }
}

async fn sample(
    State(s): State<Arc<Shared>>,
    UrlPath((part, shard, key)): UrlPath<(usize, String, String)>,
) -> Response {
    blocking(move || match locate(&s.dataset, part, &shard, &key) {
        Ok((r, rows)) => Html(html::sample(&s.dataset, Links::Server, r, &rows)).into_response(),
        Err((status, why)) => refused(status, why),
    })
    .await
}

async fn image(
    State(s): State<Arc<Shared>>,
    UrlPath((part, shard, key)): UrlPath<(usize, String, String)>,
) -> Response {
    blocking(move || {
        let (r, rows) = match locate(&s.dataset, part, &shard, &key) {
            Ok(x) => x,
            Err((status, why)) => return refused(status, why),
        };
        match rows.image(r.row) {
            Ok(Some((bytes, ext))) => {
                ([(header::CONTENT_TYPE, content_type(ext)), (header::CACHE_CONTROL, "max-age=3600")], bytes)
                    .into_response()
            }
            Ok(None) => refused(StatusCode::NOT_FOUND, format!("{key}: no image in the shard tar")),
            Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    })
    .await
}

async fn reasons(State(s): State<Arc<Shared>>) -> Response {
    blocking(move || Html(html::reasons(&s.dataset, Links::Server, 6, &|_| true)).into_response()).await
}

async fn file(State(s): State<Arc<Shared>>, UrlPath(path): UrlPath<String>) -> Response {
    blocking(move || {
        let root = &s.dataset.root;
        if let Some(m) = &s.dataset.mirror {
            // A file of a dataset in a store: fetched into the cache folder (a path leaving it is
            // never in the listing, so never fetched).
            if let Err(e) = m.fetch(&root.join(path.trim_start_matches('/'))) {
                return refused(StatusCode::BAD_GATEWAY, format!("{e:#}"));
            }
        }
        match inside(root, &path) {
            Ok(p) => match std::fs::read(&p) {
                Ok(bytes) => {
                    let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
                    ([(header::CONTENT_TYPE, content_type(&ext))], bytes).into_response()
                }
                Err(e) => refused(StatusCode::NOT_FOUND, format!("{path}: cannot be read: {e}")),
            },
            Err(why) => refused(StatusCode::FORBIDDEN, why),
        }
    })
    .await
}

/// `path` resolved under `root` (links followed), or why it is refused: outside the dataset
/// folder, or not a file.
pub fn inside(root: &std::path::Path, path: &str) -> Result<PathBuf, String> {
    let joined = root.join(path.trim_start_matches('/'));
    let real = joined.canonicalize().map_err(|e| format!("{path}: not in the dataset folder ({e})"))?;
    if !real.starts_with(root) {
        return Err(format!("{path}: outside the dataset folder {} (refused)", root.display()));
    }
    if !real.is_file() {
        return Err(format!("{path}: not a file"));
    }
    Ok(real)
}

fn content_type(ext: &str) -> &'static str {
    match ext {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "md" | "txt" | "jsonl" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
