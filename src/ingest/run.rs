//! Runs an ingest: lists rows, cuts them into shards, and for each shard this worker owns that is
//! not done yet fetches, processes, de-duplicates and writes it.

use super::download::Downloader;
use super::rows::{RowSpill, RowStore};
use super::sa1b::mask_stats;
use super::source::{InputRow, Payload};
use super::{DedupMode, IngestConfig, SourceKind};
use crate::image::phash::PhashIndex;
use crate::image::process;
use crate::shards::{
    done_shards, read_records, Manifest, Record, RunStats, ShardLayout, ShardWriter, Status, Value, WdsReader, Worker,
    TEMP_MARKER,
};
use indicatif::{ProgressBar, ProgressStyle};
use polars::prelude::DataFrame;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where and how a run writes; not part of the dataset fingerprint.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output dataset directory.
    pub out: PathBuf,
    /// This worker's share of the shards.
    pub worker: Worker,
    /// Replace an existing dataset written with another configuration.
    pub overwrite: bool,
    /// Re-attempt only the `failed_to_download` rows of done shards.
    pub retry_failed: bool,
    /// Add these inputs to the dataset in `out` (same configuration) as new shards after its own.
    pub append: bool,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
}

impl RunOptions {
    /// Options writing to `out` as the single worker.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            worker: Worker::default(),
            overwrite: false,
            retry_failed: false,
            append: false,
            progress: true,
        }
    }
}

/// A shard's rows fetched and processed, waiting to be de-duplicated and written.
struct Gathered {
    start: f64,
    outcomes: Vec<Outcome>,
    /// The source's own columns of the shard's rows.
    passthrough: Option<DataFrame>,
}

/// The result of one row: its record, plus the image bytes and pHash on success.
struct Outcome {
    record: Record,
    data: Option<Vec<u8>>,
    phash: Option<u64>,
}

struct Ctx {
    cfg: IngestConfig,
}

impl Ctx {
    /// The CPU part of a row: image work and SA-1B statistics.
    fn finish(&self, row: &InputRow, key: String, bytes: Result<Vec<u8>, String>) -> Outcome {
        let mut record = Record::new(key, row.source.clone(), row.caption.clone());
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                record.fail(Status::FailedToDownload, e);
                return Outcome { record, data: None, phash: None };
            }
        };
        let p = match process(&bytes, &self.cfg.image) {
            Ok(p) => p,
            Err(e) => {
                record.fail(Status::FailedToResize, e.to_string());
                return Outcome { record, data: None, phash: None };
            }
        };
        record.width = Some(p.width);
        record.height = Some(p.height);
        record.original_width = Some(p.original_width);
        record.original_height = Some(p.original_height);
        record.sha256 = Some(p.sha256);
        record.phash = Some(format!("{:016x}", p.phash));
        record.ext = Some(p.ext.to_string());
        record.status = Some(Status::Success);
        if self.cfg.source == SourceKind::Sa1b {
            let min = self.cfg.curation.min_masks;
            let stats = match &row.sidecar {
                Some(side) => side.read_local().and_then(|j| mask_stats(&j)),
                None => Err("no annotation JSON beside the image".to_string()),
            };
            match stats {
                Ok(s) => {
                    record.extra = s.columns();
                    if s.mask_count < min {
                        record.fail(Status::Filtered, format!("too few masks for --min-masks {min}: {}", s.mask_count));
                    }
                }
                Err(e) => {
                    record.extra = vec![("annotation_error".into(), Value::Str(e.clone()))];
                    if min > 0 {
                        record.fail(Status::Filtered, format!("no mask count for --min-masks: {e}"));
                    }
                }
            }
            if record.status != Some(Status::Success) {
                return Outcome { record, data: None, phash: None };
            }
        }
        Outcome { record, data: Some(p.data), phash: Some(p.phash) }
    }
}

/// Exact and perceptual de-duplication state, in shard then row order.
struct Dedup {
    mode: DedupMode,
    exact: HashMap<String, String>,
    near: PhashIndex,
}

impl Dedup {
    fn new(mode: DedupMode, distance: u32) -> Self {
        Self { mode, exact: HashMap::new(), near: PhashIndex::new(distance) }
    }

    /// Records a success; returns the reason if it repeats an earlier sample.
    fn check(&mut self, key: &str, sha: &str, phash: Option<u64>) -> Option<String> {
        if self.mode == DedupMode::None {
            return None;
        }
        if let Some(first) = self.exact.get(sha) {
            return Some(format!("duplicate: identical sha256 to {first}"));
        }
        if self.mode == DedupMode::Phash {
            if let Some(h) = phash {
                if let Some(first) = self.near.find(h) {
                    return Some(format!("near-duplicate: pHash within {} bits of {first}", self.near_distance()));
                }
                self.near.insert(h, key);
            }
        }
        self.exact.insert(sha.to_string(), key.to_string());
        None
    }

    fn near_distance(&self) -> u32 {
        self.near.distance()
    }

    fn add_existing(&mut self, records: &[Record]) {
        for r in records.iter().filter(|r| r.status == Some(Status::Success)) {
            let ph = r.phash.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(sha) = &r.sha256 {
                let _ = self.check(&r.key, sha, ph);
            }
        }
    }
}

fn check_paths(cfg: &IngestConfig, out: &Path) -> anyhow::Result<()> {
    let out_abs = std::path::absolute(out)?;
    for i in cfg.inputs.iter().filter(|i| !crate::store::is_remote(i)) {
        let i_abs = std::path::absolute(i)?;
        if i_abs == out_abs || (i.is_dir() && out_abs.starts_with(&i_abs)) || i_abs.starts_with(&out_abs) {
            anyhow::bail!(
                "input {} and output {} overlap: the output's own shards would be read as input. Choose an output directory outside the inputs.",
                i.display(),
                out.display()
            );
        }
    }
    Ok(())
}

fn remove_dataset_files(out: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(out)? {
        let p = entry?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tar")
            || name.ends_with(".parquet")
            || name.ends_with("_stats.json")
            || name == crate::shards::MANIFEST_FILE
            || name.contains(TEMP_MARKER)
        {
            std::fs::remove_file(p)?;
        }
    }
    Ok(())
}

/// A source's rows, kept on disk, and what the shards carry from it.
struct Listed {
    store: RowStore,
    /// Name of the source column in the shard parquet (`url` or `source`).
    source_col: &'static str,
    /// Descriptions of the input files for the manifest fingerprint.
    inputs: Vec<String>,
}

/// Lists the source's rows into a [`RowStore`]: LAION metadata chunk by chunk as it is read (a
/// parquet file by row ranges), so that memory does not grow with the rows; the other sources list
/// their files (or tar members) first.
fn list_rows(cfg: &IngestConfig) -> anyhow::Result<Listed> {
    // Inputs in an object store are read from local copies.
    let inputs: Vec<PathBuf> =
        cfg.inputs.iter().map(|i| crate::store::local_copy(i, |_| true)).collect::<anyhow::Result<_>>()?;
    let cfg = &IngestConfig { inputs, ..cfg.clone() };
    let rows = match cfg.source {
        SourceKind::Laion => {
            let mut spill = RowSpill::new();
            let inputs =
                super::laion::list_laion(&cfg.inputs, &cfg.laion, &mut |rows, pass| spill.push(rows, Some(pass)))?;
            return Ok(Listed { store: spill.finish()?, source_col: "url", inputs });
        }
        SourceKind::Sa1b => super::sa1b::read_sa1b(&cfg.inputs)?,
        SourceKind::Folder => {
            let [dir] = cfg.inputs.as_slice() else {
                anyhow::bail!("the folder source takes exactly one directory, got {}", cfg.inputs.len());
            };
            super::folder::read_folder(dir)?
        }
        SourceKind::Webdataset => super::webdataset::read_webdataset(&cfg.inputs)?,
        SourceKind::Hub => super::hub::read_hub(&cfg.inputs, &cfg.hub)?,
    };
    Ok(Listed {
        store: RowStore::from_rows(rows.rows, rows.passthrough)?,
        source_col: rows.source_col,
        inputs: rows.inputs,
    })
}

/// The manifest of an ingest with `cfg` over `inputs`.
fn manifest_for(cfg: &IngestConfig, inputs: &[String]) -> anyhow::Result<Manifest> {
    let mut fp_cfg = serde_json::to_value(cfg)?;
    if let Some(m) = fp_cfg.as_object_mut() {
        m.remove("download");
    }
    let mut m = Manifest::new("ingest", fp_cfg, inputs);
    m.config = serde_json::to_value(cfg)?;
    Ok(m)
}

struct Runner<'a> {
    ctx: Arc<Ctx>,
    rows: &'a Listed,
    layout: ShardLayout,
    /// The shard the rows' first shard is (after a dataset's own shards when appended).
    first_shard: usize,
    out: PathBuf,
    downloader: Option<Arc<Downloader>>,
    rt: Option<tokio::runtime::Runtime>,
    pb: ProgressBar,
}

impl Runner<'_> {
    /// Fetches and processes `todo` (indices into the shard's rows); results come back by index.
    fn outcomes(&self, shard: usize, rows: &[InputRow], todo: &[usize]) -> Vec<(usize, Outcome)> {
        let key = |i: usize| self.layout.key(shard, i);
        let (pre, fetch): (Vec<usize>, Vec<usize>) = todo.iter().partition(|&&i| rows[i].filtered.is_some());
        let mut out: Vec<(usize, Outcome)> = pre
            .into_iter()
            .map(|i| {
                let mut record = Record::new(key(i), rows[i].source.clone(), rows[i].caption.clone());
                record.fail(Status::Filtered, rows[i].filtered.clone().unwrap_or_default());
                self.pb.inc(1);
                (i, Outcome { record, data: None, phash: None })
            })
            .collect();
        let (urls, local): (Vec<usize>, Vec<usize>) =
            fetch.into_iter().partition(|&i| matches!(rows[i].payload, Payload::Url(_)));
        out.par_extend(local.into_par_iter().map(|i| {
            let o = self.ctx.finish(&rows[i], key(i), rows[i].payload.read_local());
            self.pb.inc(1);
            (i, o)
        }));
        if !urls.is_empty() {
            out.extend(self.download_and_process(shard, rows, &urls));
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Downloads on the tokio runtime; each body is processed on the rayon pool as it arrives.
    /// Bodies waiting for a CPU are bounded (back pressure on the downloads).
    fn download_and_process(&self, shard: usize, rows: &[InputRow], urls: &[usize]) -> Vec<(usize, Outcome)> {
        let (Some(dl), Some(rt)) = (&self.downloader, &self.rt) else {
            return Vec::new();
        };
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Outcome)>();
        let inflight =
            Arc::new(tokio::sync::Semaphore::new(dl.options().concurrency.max(1) + 2 * rayon::current_num_threads()));
        let shared_rows: Arc<Vec<InputRow>> = Arc::new(rows.to_vec());
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for &i in urls {
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (dl, ctx, tx, rows) = (dl.clone(), self.ctx.clone(), tx.clone(), shared_rows.clone());
                let key = self.layout.key(shard, i);
                set.spawn(async move {
                    let Payload::Url(url) = &rows[i].payload else {
                        return;
                    };
                    let res = dl.fetch(url).await;
                    rayon::spawn(move || {
                        let o = ctx.finish(&rows[i], key, res);
                        let _ = tx.send((i, o));
                        drop(permit);
                    });
                });
                while set.try_join_next().is_some() {}
            }
            while set.join_next().await.is_some() {}
        });
        drop(tx);
        let mut out = Vec::with_capacity(urls.len());
        for r in rx {
            self.pb.inc(1);
            out.push(r);
        }
        out
    }

    /// Writes a shard from its outcomes (in row order), marking duplicates among fresh successes.
    fn write(
        &self,
        shard: usize,
        mut outcomes: Vec<Outcome>,
        passthrough: Option<DataFrame>,
        dedup: &mut Dedup,
        start: f64,
    ) -> anyhow::Result<crate::shards::ShardStats> {
        let mut w = ShardWriter::create(&self.out, &self.layout, shard)?;
        for o in outcomes.iter_mut() {
            if o.record.status != Some(Status::Success) {
                continue;
            }
            // Fresh successes carry their pHash; successes kept by --retry-failed were checked when first written.
            if o.phash.is_some() {
                let sha = o.record.sha256.clone().unwrap_or_default();
                if let Some(reason) = dedup.check(&o.record.key, &sha, o.phash) {
                    o.record.fail(Status::Duplicate, reason);
                    o.data = None;
                    continue;
                }
            }
            if let Some(data) = &o.data {
                w.add_sample(&o.record, data, self.rows.source_col)?;
            }
        }
        let records: Vec<Record> = outcomes.into_iter().map(|o| o.record).collect();
        w.finish(&records, self.rows.source_col, passthrough.as_ref(), start)
    }

    /// Fetches and processes every row of a shard not written yet; de-duplication and writing
    /// happen in shard order afterwards ([`Self::write`]), so two shards may be gathered at once.
    fn gather(&self, shard: usize) -> anyhow::Result<Gathered> {
        let start = crate::shards::now();
        let (rows, passthrough) = self.shard_rows(shard)?;
        let todo: Vec<usize> = (0..rows.len()).collect();
        let outcomes = self.outcomes(shard, &rows, &todo).into_iter().map(|(_, o)| o).collect();
        Ok(Gathered { start, outcomes, passthrough })
    }

    /// The input rows of `shard`, with the source's own columns.
    fn shard_rows(&self, shard: usize) -> anyhow::Result<(Vec<InputRow>, Option<DataFrame>)> {
        self.rows.store.slice(self.layout.rows_of(shard - self.first_shard, self.rows.store.len()))
    }

    /// `--retry-failed`: re-attempts the `failed_to_download` rows of a done shard, keeps the rest.
    fn retry(&self, shard: usize, dedup: &mut Dedup) -> anyhow::Result<Option<crate::shards::ShardStats>> {
        let name = self.layout.name(shard);
        let old = read_records(&self.out.join(format!("{name}.parquet")))?;
        let redo: Vec<usize> = (0..old.len()).filter(|&i| old[i].status == Some(Status::FailedToDownload)).collect();
        if redo.is_empty() {
            dedup.add_existing(&old);
            return Ok(None);
        }
        let start = crate::shards::now();
        let (rows, passthrough) = self.shard_rows(shard)?;
        if rows.len() != old.len() {
            anyhow::bail!(
                "{name}.parquet has {} rows but the input has {} rows for this shard: inputs changed",
                old.len(),
                rows.len()
            );
        }
        let tar = WdsReader::open(&self.out.join(format!("{name}.tar")))?;
        let mut kept: HashMap<String, (String, Vec<u8>)> = HashMap::new();
        for s in &tar.samples {
            if let Some((ext, _)) = s.members.iter().find(|(e, _)| super::source::is_image_ext(e)) {
                if let Some(b) = tar.read(s, ext)? {
                    kept.insert(s.key.clone(), (ext.clone(), b));
                }
            }
        }
        let mut fresh: HashMap<usize, Outcome> = self.outcomes(shard, &rows, &redo).into_iter().collect();
        let mut outcomes = Vec::with_capacity(old.len());
        for (i, r) in old.into_iter().enumerate() {
            if let Some(o) = fresh.remove(&i) {
                outcomes.push(o);
                continue;
            }
            let mut r = r;
            let data = kept.remove(&r.key).map(|(ext, b)| {
                r.ext = Some(ext);
                b
            });
            if r.status == Some(Status::Success) {
                // Already de-duplicated when first written: register it without re-checking.
                dedup.add_existing(std::slice::from_ref(&r));
                outcomes.push(Outcome { record: r, data, phash: None });
                continue;
            }
            outcomes.push(Outcome { record: r, data: None, phash: None });
        }
        // Old successes are registered already (they carry no pHash here); only new ones are checked.
        std::fs::remove_file(self.out.join(format!("{name}_stats.json")))?;
        Ok(Some(self.write(shard, outcomes, passthrough, dedup, start)?))
    }
}

/// Uploads a run's files from its local folder to where the dataset lives, in the order given.
type Publish<'a> = dyn Fn(&[String]) -> anyhow::Result<()> + Sync + 'a;

/// Runs the ingest described by `cfg` into `opts.out` (a folder, or an object-store URL); returns
/// the totals of this run.
pub fn run(cfg: &IngestConfig, opts: &RunOptions) -> anyhow::Result<RunStats> {
    match crate::store::Location::parse(&opts.out)? {
        crate::store::Location::Local(_) => run_local(cfg, opts, None),
        crate::store::Location::Remote(_) => run_remote(cfg, opts),
    }
}

/// An ingest into an object store: the run works in the worker's working folder
/// ([`crate::store::Staging`]) holding what it reads of the dataset (the manifest, the stats files,
/// this worker's done shard parquets), and uploads each shard as it is written (tar, parquet, then
/// its stats file, so a listed stats file means a complete shard), deleting the local tar.
fn run_remote(cfg: &IngestConfig, opts: &RunOptions) -> anyhow::Result<RunStats> {
    let retries = crate::store::transient_failures();
    let staging = crate::store::Staging::open(&opts.out, opts.worker)?;
    let listed: std::collections::HashSet<String> = staging.names()?.into_iter().collect();
    let wanted: Vec<String> = listed
        .iter()
        .filter(|name| {
            let stats_of = |stem: &str| listed.contains(&format!("{stem}_stats.json"));
            let shard_file = |ext: &str| {
                name.strip_suffix(ext)
                    .filter(|stem| stem.parse::<usize>().is_ok_and(|s| opts.worker.owns(s)) && stats_of(stem))
                    .is_some()
            };
            name.as_str() == crate::shards::MANIFEST_FILE
                || name.ends_with("_stats.json")
                || shard_file(".parquet")
                || (opts.retry_failed && shard_file(".tar"))
        })
        .cloned()
        .collect();
    staging.fetch(&wanted)?;
    let publish = |names: &[String]| -> anyhow::Result<()> {
        staging.upload_under("", names)?;
        for name in names.iter().filter(|n| n.ends_with(".tar")) {
            let _ = std::fs::remove_file(staging.dir.join(name));
        }
        Ok(())
    };
    let mut local = opts.clone();
    local.out = staging.dir.clone();
    let mut stats = run_local(cfg, &local, Some(&publish))?;
    stats.store_retries = crate::store::transient_failures() - retries;
    Ok(stats)
}

/// [`run`] into a local folder; `publish` uploads the manifest and each written shard.
fn run_local(cfg: &IngestConfig, opts: &RunOptions, publish: Option<&Publish>) -> anyhow::Result<RunStats> {
    check_paths(cfg, &opts.out)?;
    if cfg.curation.samples_per_shard == 0 {
        anyhow::bail!("--samples-per-shard (curation.samples_per_shard): expected at least 1, found 0");
    }
    let rows = list_rows(cfg)?;
    let layout = ShardLayout::new(cfg.curation.samples_per_shard);
    let manifest = manifest_for(cfg, &rows.inputs)?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create output directory: {e}", opts.out.display()))?;
    let _lock = crate::shards::ShareLock::acquire(&opts.out, opts.worker)?;
    let shard_count = layout.shard_count(rows.store.len());
    let mut manifest = manifest;
    let mut first_shard = 0;
    if let Some(existing) = Manifest::read(&opts.out)? {
        if opts.overwrite {
            remove_dataset_files(&opts.out)?;
        } else if let Some(first) = manifest.first_shard_in(&existing) {
            // The dataset's own inputs, or inputs appended earlier: a resume.
            first_shard = first;
            manifest = existing;
        } else if opts.append {
            manifest.check_same_config(&existing, &opts.out, &["download"])?;
            (manifest, first_shard) = append_part(existing, &manifest, &opts.out, shard_count)?;
        } else {
            // Another fingerprint: refused, with the way to add inputs when only they differ.
            let refusal = manifest.check_resumable(&existing, &opts.out, &["download"]).unwrap_err();
            if manifest.check_same_config(&existing, &opts.out, &["download"]).is_ok() {
                anyhow::bail!("{refusal} To add these inputs to the dataset as new shards, pass --append.");
            }
            return Err(refusal);
        }
    }
    manifest.write(&opts.out)?;
    if let Some(publish) = publish {
        publish(&[crate::shards::MANIFEST_FILE.to_string()])?;
    }
    crate::shards::remove_owned_temp_files(&opts.out, opts.worker)?;

    let shards: Vec<usize> = (first_shard..first_shard + shard_count).filter(|&s| opts.worker.owns(s)).collect();
    let done: std::collections::HashSet<usize> = done_shards(&opts.out)?.into_iter().collect();
    let needs_net = cfg.source == SourceKind::Laion;
    let (downloader, rt) = if needs_net {
        let dl = Downloader::new(cfg.download.clone()).map_err(anyhow::Error::msg)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        (Some(Arc::new(dl)), Some(rt))
    } else {
        (None, None)
    };
    let todo_rows: usize = shards
        .iter()
        .filter(|s| !done.contains(s) || opts.retry_failed)
        .map(|&s| layout.rows_of(s - first_shard, rows.store.len()).len())
        .sum();
    let pb = if opts.progress { ProgressBar::new(todo_rows as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rows {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runner = Runner {
        ctx: Arc::new(Ctx { cfg: cfg.clone() }),
        rows: &rows,
        layout,
        first_shard,
        out: opts.out.clone(),
        downloader,
        rt,
        pb,
    };
    let mut dedup = Dedup::new(cfg.curation.dedup, cfg.curation.phash_distance);
    // Appended inputs are de-duplicated against this worker's shards of the parts before them.
    for &shard in
        done.iter().filter(|&&s| s < first_shard && opts.worker.owns(s)).collect::<std::collections::BTreeSet<_>>()
    {
        let path = opts.out.join(format!("{}.parquet", layout.name(shard)));
        let old = read_records(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        dedup.add_existing(&old);
    }
    let mut stats = RunStats::default();
    // Shard figures for TensorBoard (where asked for).
    let mut rates = crate::tensorboard::ShardRates::new(&opts.out, "ingest");
    // The shards gathered from scratch, in order: while one is being finished (its slowest
    // downloads, its writing), the next one's rows are already being fetched and processed.
    let fresh: Vec<usize> = shards.iter().copied().filter(|s| !done.contains(s)).collect();
    std::thread::scope(|scope| {
        let runner = &runner;
        let mut next: Option<(usize, std::thread::ScopedJoinHandle<'_, anyhow::Result<Gathered>>)> = None;
        let mut uploading: Option<Upload<'_>> = None;
        for &shard in &shards {
            let name = layout.name(shard);
            // A shard that fails is recorded and the run goes on (as every shard stage does); it is
            // left without a stats file, so the next run retries it.
            let result = if done.contains(&shard) && !opts.retry_failed {
                let path = opts.out.join(format!("{name}.parquet"));
                match read_records(&path) {
                    Ok(old) => {
                        dedup.add_existing(&old);
                        stats.shards_skipped += 1;
                    }
                    Err(e) => fail(&mut stats, &name, anyhow::anyhow!("{}: {e}", path.display())),
                }
                continue;
            } else if done.contains(&shard) {
                match runner.retry(shard, &mut dedup) {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        stats.shards_skipped += 1;
                        continue;
                    }
                    Err(e) => {
                        fail(&mut stats, &name, e);
                        continue;
                    }
                }
            } else {
                let prefetched = next.take().filter(|(s, _)| *s == shard).map(|(_, h)| h);
                let after = fresh.iter().copied().find(|&s| s > shard);
                next = after.map(|s| (s, scope.spawn(move || runner.gather(s))));
                let gathered = match prefetched {
                    Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    None => runner.gather(shard),
                };
                let written =
                    gathered.and_then(|g| runner.write(shard, g.outcomes, g.passthrough, &mut dedup, g.start));
                match written {
                    Ok(s) => s,
                    Err(e) => {
                        fail(&mut stats, &name, e);
                        continue;
                    }
                }
            };
            match publish {
                // The upload goes on while the next shard is written; the one before it ends first,
                // so shards are listed in order.
                Some(publish) => {
                    if let Some(up) = uploading.take() {
                        finish_upload(&mut stats, up, &runner.pb, &mut rates);
                    }
                    let files = [format!("{name}.tar"), format!("{name}.parquet"), format!("{name}_stats.json")];
                    uploading = Some((shard, name, result, scope.spawn(move || publish(&files))));
                }
                None => record(&mut stats, shard, &name, &result, &runner.pb, &mut rates),
            }
        }
        if let Some(up) = uploading.take() {
            finish_upload(&mut stats, up, &runner.pb, &mut rates);
        }
    });
    runner.pb.finish_and_clear();
    Ok(stats)
}

/// A shard being uploaded: its id, name, stats and the upload.
type Upload<'a> = (usize, String, crate::shards::ShardStats, std::thread::ScopedJoinHandle<'a, anyhow::Result<()>>);

/// Waits for the upload of a shard, then records it as done (or failed).
fn finish_upload(
    stats: &mut RunStats,
    (shard, name, result, upload): Upload<'_>,
    pb: &ProgressBar,
    rates: &mut crate::tensorboard::ShardRates,
) {
    match upload.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
        Ok(()) => record(stats, shard, &name, &result, pb, rates),
        Err(e) => fail(stats, &name, e),
    }
}

/// Records shard `shard` as done (in the run's totals and its TensorBoard figures).
fn record(
    stats: &mut RunStats,
    shard: usize,
    name: &str,
    result: &crate::shards::ShardStats,
    pb: &ProgressBar,
    rates: &mut crate::tensorboard::ShardRates,
) {
    stats.add(shard, result);
    let mut figures = crate::tensorboard::shard_figures(result.count, result.successes, result.duration).to_vec();
    figures.extend([
        ("failed_to_download", result.failed_to_download as f64),
        ("failed_to_resize", result.failed_to_resize as f64),
        ("filtered", result.filtered as f64),
        ("duplicate", result.duplicate as f64),
    ]);
    rates.shard(shard, &figures);
    let t = &stats.total;
    pb.set_message(format!(
        "{} ok ({:.0}%), shard {name} done",
        t.successes,
        100.0 * t.successes as f64 / t.count.max(1) as f64
    ));
    tracing::info!(shard = %name, count = result.count, successes = result.successes, "shard done");
}

/// `existing` with a new part for the inputs of `manifest` (`shards` shards) after its last one;
/// the first append also records the dataset as it was as the first part, which must be complete
/// (every shard with its stats file). Returns the manifest to write and the new part's first shard.
fn append_part(
    mut existing: Manifest,
    manifest: &Manifest,
    out: &Path,
    shards: usize,
) -> anyhow::Result<(Manifest, usize)> {
    if existing.parts.is_empty() {
        let done: std::collections::HashSet<usize> = done_shards(out)?.into_iter().collect();
        let mut written = Vec::new();
        for entry in std::fs::read_dir(out)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".parquet").and_then(|s| s.parse::<usize>().ok()) {
                written.push(id);
            }
        }
        written.extend(done.iter().copied());
        let count = written.iter().max().map_or(0, |m| m + 1);
        if let Some(missing) = (0..count).find(|s| !done.contains(s)) {
            anyhow::bail!(
                "{}: shard {missing:05} of the dataset is not done (no stats file): finish the ingest (every worker) \
                 before appending to it",
                out.display()
            );
        }
        let own = crate::shards::InputsPart {
            fingerprint: existing.fingerprint.clone(),
            inputs: Vec::new(),
            first_shard: 0,
            shards: count,
        };
        existing.parts.push(own);
    }
    let last = existing.parts.last().expect("at least the dataset's own part");
    let first_shard = last.first_shard + last.shards;
    let inputs = manifest.config.get("inputs").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    existing.parts.push(crate::shards::InputsPart {
        fingerprint: manifest.fingerprint.clone(),
        inputs,
        first_shard,
        shards,
    });
    Ok((existing, first_shard))
}

/// Records that shard `name` could not be written.
fn fail(stats: &mut RunStats, name: &str, e: anyhow::Error) {
    tracing::warn!(shard = %name, error = %format!("{e:#}"), "shard failed");
    stats.shards_failed.push((name.to_string(), format!("{e:#}")));
}

/// The end-of-run summary: one line per shard, the totals, the most frequent reasons, and the
/// shards that could not be written.
pub fn summary(stats: &RunStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !stats.shards.is_empty() {
        let _ = writeln!(out, "shard   rows  success  download  resize  filtered  duplicate   seconds");
        for (id, s) in &stats.shards {
            let _ = writeln!(
                out,
                "{:05} {:>6} {:>8} {:>9} {:>7} {:>9} {:>10} {:>9.1}",
                id, s.count, s.successes, s.failed_to_download, s.failed_to_resize, s.filtered, s.duplicate, s.duration
            );
        }
    }
    let t = &stats.total;
    let _ = writeln!(out,
        "shards: {} written, {} already done | rows: {} | success {} | failed_to_download {} | failed_to_resize {} | filtered {} | duplicate {} | {:.1} MB written",
        stats.shards_done,
        stats.shards_skipped,
        t.count,
        t.successes,
        t.failed_to_download,
        t.failed_to_resize,
        t.filtered,
        t.duplicate,
        t.bytes_written as f64 / 1e6
    );
    if stats.store_retries > 0 {
        let _ = writeln!(out, "store: {} transient failure(s) retried", stats.store_retries);
    }
    if t.without_caption > 0 {
        let _ = writeln!(
            out,
            "warning: {} of {} written image(s) have no caption (no alt-text): they train unconditioned unless \
             re-captioned (`pixforge caption`); `pixforge browse` shows them",
            t.without_caption, t.successes
        );
    }
    if t.upscaled > 0 {
        let _ = writeln!(
            out,
            "warning: {} written image(s) were enlarged more than twice their source size (--image-size above a small \
             image: blurry training data); --min-image-size refuses such sources",
            t.upscaled
        );
    }
    if t.count > 0 {
        let _ = writeln!(out, "reasons:");
        let mut reasons: Vec<_> = t.status_dict.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, n) in reasons.iter().take(15) {
            let _ = writeln!(out, "  {n:>8}  {reason}");
        }
    }
    if !stats.shards_failed.is_empty() {
        let _ = writeln!(out, "shards not written (a rerun retries them):");
        for (name, why) in &stats.shards_failed {
            let _ = writeln!(out, "  {name}: {why}");
        }
    }
    out
}
