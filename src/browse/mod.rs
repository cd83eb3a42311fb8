//! `pixforge browse`: a read-only local web server over a dataset folder — a grid of samples with
//! status, reason, size and bucket, filters and sorts, a page per sample with its alt-text and
//! dense captions (nouns marked, QC flags, image–text similarity) and scores, a page of failure
//! reasons, the density report — and `--static`, the same pages for a selection written as files.

pub mod dataset;
pub mod html;
pub mod mirror;
pub mod query;
pub mod rows;
pub mod server;
pub mod status;

use dataset::{Companions, Dataset, RowRef};
use html::Links;
use query::Query;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The browser's configuration (`pixforge browse` flags).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct BrowseConfig {
    /// The dataset: a shard folder, or a folder holding shard folders (a pipeline's `out`, with
    /// each source's `shards/` and its `captions/` and score folders beside it); or the same in an
    /// object store (`s3://bucket/prefix`, fetched into a local cache as pages need it).
    pub dataset: PathBuf,
    /// The address to listen on (loopback by default; `0.0.0.0` shares it on the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// The caption folder, where it is not the shard folder's sibling (a dataset of one shard folder).
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// The score folder (`pixforge score clip --out`), where it is not the shard folder's sibling.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Samples per grid page.
    #[arg(long, default_value_t = 60)]
    pub page_size: usize,
    /// Write the pages of the selection (the filters below) as files into this folder instead of
    /// serving: `index.html`, further grid pages, a page and the image of every sample shown,
    /// `reasons.html` and the density report.
    #[arg(long = "static", value_name = "OUT")]
    pub static_out: Option<PathBuf>,
    /// With `--static`: at most this many samples.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// With `--static`: which samples, in which order.
    #[command(flatten)]
    pub query: Query,
}

/// Opens the dataset `cfg` names.
pub fn open(cfg: &BrowseConfig) -> anyhow::Result<Dataset> {
    Dataset::open(&cfg.dataset, &Companions { captions: cfg.captions.clone(), scores: cfg.scores.clone() })
}

/// Serves the dataset until the process is stopped; `ready` is called with the address once
/// listening.
pub fn serve(cfg: &BrowseConfig, ready: impl FnOnce(&Dataset, std::net::SocketAddr)) -> anyhow::Result<()> {
    let dataset = open(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
        let addr = listener.local_addr()?;
        ready(&dataset, addr);
        let shared = Arc::new(server::Shared { dataset, page_size: cfg.page_size.max(1) });
        axum::serve(listener, server::router(shared)).await?;
        Ok(())
    })
}

/// What `--static` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct StaticReport {
    /// The folder.
    pub out: PathBuf,
    /// Grid pages.
    pub pages: usize,
    /// Sample pages (and images).
    pub samples: usize,
    /// Images written.
    pub images: usize,
}

/// Writes the pages of `cfg.query`'s selection (at most `cfg.limit` samples) into `out`; every
/// file is written atomically, links are relative, nothing outside the folder is referenced.
pub fn write_static(ds: &Dataset, cfg: &BrowseConfig, out: &Path) -> anyhow::Result<StaticReport> {
    std::fs::create_dir_all(out.join("img")).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    let page_size = cfg.page_size.max(1);
    let mut q = Query { page: Some(1), ..cfg.query.clone() };
    let mut shown: Vec<RowRef> = Vec::new();
    let mut report = StaticReport { out: out.to_path_buf(), pages: 0, samples: 0, images: 0 };
    loop {
        let mut page = query::page(ds, &q, page_size);
        let room = cfg.limit.saturating_sub(shown.len());
        page.rows.truncate(room);
        // The pages of the selection as written (the limit may cut it short).
        page.total = page.total.min(cfg.limit);
        page.pages = page.total.div_ceil(page_size).max(1);
        for &r in &page.rows {
            let rows = ds.rows(r.part, r.shard).map_err(|e| anyhow::anyhow!(e))?;
            let key = &rows.keys[r.row];
            if let Some((bytes, ext)) = rows.image(r.row).map_err(|e| anyhow::anyhow!(e))? {
                let name = Links::Static.image(ds, r, key, ext);
                crate::shards::write_atomic(&out.join(name), &bytes)?;
                report.images += 1;
            }
            let html = html::sample(ds, Links::Static, r, &rows);
            crate::shards::write_atomic(&out.join(Links::Static.sample(ds, r, key)), html.as_bytes())?;
            report.samples += 1;
        }
        shown.extend(&page.rows);
        let name = Links::Static.grid(&q, page.page);
        crate::shards::write_atomic(&out.join(name), html::grid(ds, Links::Static, &q, &page).as_bytes())?;
        report.pages += 1;
        if page.page >= page.pages || page.rows.is_empty() {
            break;
        }
        q.page = Some(page.page + 1);
    }
    let set: std::collections::HashSet<RowRef> = shown.into_iter().collect();
    let reasons = html::reasons(ds, Links::Static, 6, &|r| set.contains(&r));
    crate::shards::write_atomic(&out.join(Links::Static.reasons()), reasons.as_bytes())?;
    if let Some(d) = &ds.density {
        crate::shards::write_atomic(&out.join("density.html"), &std::fs::read(d)?)?;
    }
    Ok(report)
}
