//! The shard loop every shard stage shares: which shards to do (done source shards owned by this
//! worker, not yet done here), the manifest check that refuses to mix outputs of other inputs,
//! temporary-file cleanup, progress, and per-shard failure that does not stop the others.

use super::fingerprint::StageFingerprint;
use super::store::{write_shard, SampleEntry, ShardOutput, StageShardStats};
use crate::shards::{done_shards, shard_name, Manifest, WdsReader, Worker, MANIFEST_FILE, TEMP_MARKER};
use crate::store::Staging;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A shard stage as the engine sees it: its name (recorded in the manifest) and the files it writes
/// per shard besides `{shard}_stats.json`.
#[derive(Debug, Clone, Copy)]
pub struct Stage<'a> {
    /// The stage's name in the manifest (`cache-t5`, `caption`, …).
    pub name: &'a str,
    /// File name endings of a done shard's outputs (`{shard}{ending}`), all required for it to be done.
    pub outputs: &'a [&'a str],
    /// File name endings of a shard's working files (a journal), removed with the outputs on
    /// `--overwrite` but not required.
    pub scratch: &'a [&'a str],
}

/// How a shard stage runs, beyond what it computes: the same fields for its command's flags and
/// for its pipeline section (`device`, `selection`, `overwrite`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct StageRun {
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only the keys of this selection (pixforge filter / dedup / balance output); the other samples
    /// are indexed as "not in the selection".
    #[arg(long)]
    pub selection: Option<PathBuf>,
    /// Replace a cache made from other inputs (model, preprocessing, source shards) instead of refusing it.
    #[arg(long)]
    pub overwrite: bool,
}

impl Default for StageRun {
    fn default() -> Self {
        Self { device: "cpu".into(), selection: None, overwrite: false }
    }
}

impl StageRun {
    /// `opts` with this run's overwrite and selection (the selection file read, naming it on error).
    pub fn apply(&self, mut opts: StageOptions) -> anyhow::Result<StageOptions> {
        opts.overwrite = self.overwrite;
        if let Some(p) = &self.selection {
            let keys = crate::shards::selection::read_selection(p)
                .map_err(|e| anyhow::anyhow!("selection {}: {e:#}", p.display()))?;
            opts.selection = Some(std::sync::Arc::new(keys));
        }
        Ok(opts)
    }
}

/// Where a shard stage reads and writes, and how it shares the work.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// The source dataset: WebDataset shards with `_stats.json` done markers (an ingest output).
    pub input: PathBuf,
    /// The stage's output directory.
    pub out: PathBuf,
    /// This worker's share: the shards with `shard % N == I`.
    pub worker: Worker,
    /// Replace outputs made with a different fingerprint instead of refusing them.
    pub overwrite: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Only these sample keys (a `pixforge filter` / `dedup` / `balance` selection); the others get
    /// an index entry with the reason "not in the selection".
    pub selection: Option<std::sync::Arc<std::collections::HashSet<String>>>,
    /// Other stage folders each shard also depends on (the caption folder of a T5 cache made from
    /// dense captions): a shard is done there first, and is redone here when it changes there.
    pub depends_on: Vec<PathBuf>,
}

impl StageOptions {
    /// Options reading `input` and writing `out`, single worker, no overwrite, progress shown.
    pub fn new(input: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out: out.into(),
            worker: Worker::default(),
            overwrite: false,
            progress: true,
            selection: None,
            depends_on: Vec::new(),
        }
    }
}

/// Image members read, in order of preference.
pub const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];
/// The bytes of a sample's image member (the first of [`IMAGE_EXTS`] it has), or why there are none.
pub fn image_bytes(reader: &WdsReader, sample: &crate::shards::TarSample) -> Result<Vec<u8>, String> {
    let ext = IMAGE_EXTS
        .iter()
        .find(|e| sample.members.contains_key(**e))
        .ok_or_else(|| format!("no image: the sample has none of the members {}", IMAGE_EXTS.join(", ")))?;
    reader
        .read(sample, ext)
        .map_err(|e| format!("cannot read the .{ext} member: {e}"))?
        .ok_or_else(|| format!("no .{ext} member"))
}

/// What one run of a shard stage did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageRunStats {
    /// Shards done in this run.
    pub shards_done: usize,
    /// Shards skipped because they were already done.
    pub shards_skipped: usize,
    /// Shards that could not be done, with the reason (rerun to retry them).
    pub shards_failed: Vec<(String, String)>,
    /// Samples seen in the shards cached in this run.
    pub samples: usize,
    /// Samples cached.
    pub successes: usize,
    /// Samples not cached (see each shard's index for the reason).
    pub failed: usize,
    /// Seconds spent.
    pub seconds: f64,
    /// Transient object-store failures (5xx, throttling, broken connections) met and retried.
    pub store_retries: u64,
}

/// Runs `per_shard` over the shards of `opts.input` this worker owns and has not done yet, writing
/// each result into `opts.out`; the manifest of `stage` records `fingerprint`. A shard is done when
/// its `_stats.json` and every file named `{shard}{ending}` for the stage's `outputs` exist and it
/// was made from the source shard as it is now; otherwise it is (re)done.
///
/// Any of the folders may be a store prefix: the stage then works in local working folders
/// ([`Staging`]); a shard's source files are fetched while the shard before it is computed, and its
/// outputs are uploaded as soon as they are written, the `_stats.json` last.
pub fn run_shards(
    stage: &Stage,
    fingerprint: StageFingerprint,
    opts: &StageOptions,
    mut per_shard: impl FnMut(&str, &WdsReader, &ProgressBar) -> anyhow::Result<ShardOutput>,
) -> anyhow::Result<StageRunStats> {
    let t0 = std::time::Instant::now();
    let retries = crate::store::transient_failures();
    let input = Staging::open_to_read(&opts.input)?;
    let deps = opts.depends_on.iter().map(|d| Staging::open_to_read(d)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut sources: Vec<usize> = done_shards(&opts.input)
        .map_err(|e| anyhow::anyhow!("{}: cannot list the source shards: {e}", opts.input.display()))?;
    for dep in &opts.depends_on {
        let there: std::collections::HashSet<usize> = done_shards(dep)
            .map_err(|e| anyhow::anyhow!("{}: cannot list its shards: {e}", dep.display()))?
            .into_iter()
            .collect();
        sources.retain(|s| there.contains(s));
    }
    if sources.is_empty() {
        anyhow::bail!(
            "{}: no finished shards (expected {{shard}}.tar with {{shard}}_stats.json, as `pixforge ingest` writes)",
            opts.input.display()
        );
    }
    let names: Vec<String> = sources.iter().map(|&s| shard_name(s)).collect();
    let inputs: Vec<PathBuf> = std::iter::once(opts.input.clone()).chain(opts.depends_on.iter().cloned()).collect();
    let mut fingerprint = fingerprint.with_sources_in(&inputs, &names)?;
    if let (Some(sel), Some(obj)) = (&opts.selection, fingerprint.preprocessing.as_object_mut()) {
        use sha2::Digest;
        let mut keys: Vec<&String> = sel.iter().collect();
        keys.sort();
        let mut h = sha2::Sha256::new();
        for k in keys {
            h.update(k.as_bytes());
            h.update(b"\n");
        }
        let digest = hex::encode(&h.finalize()[..16]);
        obj.insert("selection".into(), serde_json::json!({ "keys": sel.len(), "sha256": digest }));
    }
    let mut out = Staging::open(&opts.out, opts.worker)?;
    let _lock = prepare_out(stage, &fingerprint, opts, &mut out)?;
    let done: std::collections::HashSet<usize> = done_shards(&opts.out)?
        .into_iter()
        .filter(|&s| is_current(&out, &shard_name(s), stage.outputs, fingerprint.sources.get(&shard_name(s))))
        .collect();
    let todo: Vec<usize> = sources.iter().copied().filter(|&s| opts.worker.owns(s)).collect();
    let mut stats = StageRunStats::default();
    let pb = if opts.progress { ProgressBar::new(todo.len() as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} shards {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    stats.shards_skipped = todo.iter().filter(|s| done.contains(s)).count();
    pb.inc(stats.shards_skipped as u64);
    let pending: Vec<String> = todo.iter().filter(|s| !done.contains(s)).map(|&s| shard_name(s)).collect();
    let sources_of = |name: &str| -> Vec<(&Staging, Vec<String>)> {
        std::iter::once((&input, vec![format!("{name}.tar")]))
            .chain(deps.iter().map(|d| (d, d.shard_files(name))))
            .filter(|(s, _)| s.remote().is_some())
            .collect()
    };
    let fetch = |name: &str| -> anyhow::Result<()> {
        for (staging, files) in sources_of(name) {
            staging.fetch(&files)?;
        }
        Ok(())
    };
    let mut rates = crate::tensorboard::ShardRates::new(&opts.out, stage.name);
    let mut fatal: Option<anyhow::Error> = None;
    std::thread::scope(|scope| {
        let mut ahead: Option<std::thread::ScopedJoinHandle<anyhow::Result<()>>> = None;
        for (i, name) in pending.iter().enumerate() {
            pb.inc(1);
            pb.set_message(name.clone());
            let fetched = match ahead.take() {
                Some(h) => h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the fetch of {name}'s files panicked"))),
                None => fetch(name),
            };
            if let Some(next) = pending.get(i + 1).filter(|_| !sources_of(name).is_empty()) {
                ahead = Some(scope.spawn(|| fetch(next)));
            }
            let digest = fingerprint.sources.get(name).cloned();
            let done = fetched.and_then(|()| run_one(name, opts, &input.dir, &out.dir, &pb, digest, &mut per_shard));
            let done = done.and_then(|s| {
                let mut files: Vec<String> =
                    stage.outputs.iter().chain(&[".index.json"]).map(|e| format!("{name}{e}")).collect();
                files.push(format!("{name}_stats.json"));
                out.publish(&files)?;
                Ok(s)
            });
            for (staging, files) in sources_of(name) {
                staging.forget(&files);
            }
            match done {
                Ok(s) => {
                    stats.shards_done += 1;
                    stats.samples += s.count;
                    stats.successes += s.successes;
                    stats.failed += s.failed;
                    rates.shard(shard_number(name), &shard_figures(&s));
                }
                Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                    fatal = Some(e);
                    break;
                }
                Err(e) => {
                    tracing::error!("shard {name}: {e:#}");
                    stats.shards_failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        if let Some(h) = ahead {
            let _ = h.join();
        }
    });
    pb.finish_and_clear();
    if let Some(e) = fatal {
        return Err(e);
    }
    stats.seconds = t0.elapsed().as_secs_f64();
    stats.store_retries = crate::store::transient_failures() - retries;
    Ok(stats)
}

impl StageRunStats {
    /// A few lines for the terminal: what `what` (e.g. `cache t5`) did into `out`.
    pub fn text(&self, what: &str, out: &Path) -> String {
        let mut s = if self.shards_done > 0 {
            format!(
                "{what} into {}: {} shard(s) done ({} already current): {} of {} samples, {} failed, {:.1} s\n",
                out.display(),
                self.shards_done,
                self.shards_skipped,
                self.successes,
                self.samples,
                self.failed,
                self.seconds
            )
        } else {
            format!("{what} into {}: nothing to do ({} shard(s) current)\n", out.display(), self.shards_skipped)
        };
        if self.store_retries > 0 {
            s.push_str(&format!("  {} transient store failure(s) retried\n", self.store_retries));
        }
        for (shard, why) in &self.shards_failed {
            s.push_str(&format!("  shard {shard} failed: {why}\n"));
        }
        s
    }
}

/// An error that stops the whole stage rather than failing one shard: something every shard needs
/// is missing (a server that cannot be reached). A shard function returns it (wrapped in
/// `anyhow::Error`) and [`run_shards`] returns it at once.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// The number of shard `name` (its file stem).
fn shard_number(name: &str) -> usize {
    name.parse().unwrap_or_default()
}

/// A done shard's figures for TensorBoard: success rate and samples per second, and where the stage
/// reports them, captions and tokens per second.
fn shard_figures(s: &StageShardStats) -> Vec<(&'static str, f64)> {
    let mut figures = crate::tensorboard::shard_figures(s.count, s.successes, s.duration).to_vec();
    for (key, name) in [("captions", "captions_per_s"), ("tokens", "tokens_per_s")] {
        if let Some(n) = s.details.as_ref().and_then(|d| d.get(key)).and_then(|v| v.as_f64()) {
            figures.push((name, n / s.duration.max(1e-9)));
        }
    }
    figures
}

/// Whether done shard `name` of `dir` has all its `outputs` and was made from the source as it is
/// (`digest`; a shard that recorded none is taken as current).
fn is_current(dir: &Staging, name: &str, outputs: &[&str], digest: Option<&String>) -> bool {
    if !outputs.iter().all(|o| dir.has(&format!("{name}{o}"))) {
        return false;
    }
    let stats = dir
        .read(&format!("{name}_stats.json"))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<StageShardStats>(&b).ok());
    match (stats.and_then(|s| s.source_digest), digest) {
        (Some(recorded), Some(now)) => &recorded == now,
        _ => true,
    }
}

/// Runs `per_shard` on source shard `name` (its selected samples, read from `input`) and writes the
/// result into `out`.
fn run_one(
    name: &str,
    opts: &StageOptions,
    input: &Path,
    out: &Path,
    pb: &ProgressBar,
    digest: Option<String>,
    per_shard: &mut impl FnMut(&str, &WdsReader, &ProgressBar) -> anyhow::Result<ShardOutput>,
) -> anyhow::Result<StageShardStats> {
    let start = crate::shards::now();
    let tar = input.join(format!("{name}.tar"));
    let mut reader =
        WdsReader::open(&tar).map_err(|e| anyhow::anyhow!("{}: not a readable tar: {e}", tar.display()))?;
    let Some(selection) = &opts.selection else {
        let out_files = per_shard(name, &reader, pb)?;
        return write_shard(out, name, &out_files, start, digest);
    };
    // Unselected samples are not read; their entries take their place in the source order.
    let order: std::collections::HashMap<String, usize> =
        reader.samples.iter().enumerate().map(|(i, s)| (s.key.clone(), i)).collect();
    let (kept, left): (Vec<_>, Vec<_>) = reader.samples.drain(..).partition(|s| selection.contains(&s.key));
    reader.samples = kept;
    let mut computed = per_shard(name, &reader, pb)?;
    computed.entries.extend(left.iter().map(|s| SampleEntry::failed(&s.key, "not in the selection")));
    computed.entries.sort_by_key(|e| order.get(&e.key).copied().unwrap_or(usize::MAX));
    write_shard(out, name, &computed, start, digest)
}

/// Creates the output directory, refuses (or with `overwrite` clears) outputs made from other
/// inputs, writes the manifest and removes this worker's leftover temporary files.
fn prepare_out(
    stage: &Stage,
    fingerprint: &StageFingerprint,
    opts: &StageOptions,
    out: &mut Staging,
) -> anyhow::Result<Option<crate::shards::ShareLock>> {
    std::fs::create_dir_all(&out.dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the output directory: {e}", out.dir.display()))?;
    // A working folder for a store holds the lock already.
    let lock = if out.is_locked() { None } else { Some(crate::shards::ShareLock::acquire(&out.dir, opts.worker)?) };
    let manifest = Manifest {
        stage: stage.name.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(fingerprint)?,
        fingerprint: fingerprint.digest(),
        parts: Vec::new(),
    };
    if let Some(existing) = Manifest::read(&opts.out)? {
        // Changed source shards are redone one by one (their digests differ); anything else is
        // another cache.
        // Compared as read back from JSON on both sides: a float written and read back may print
        // differently from the one computed.
        let now: StageFingerprint = serde_json::from_str(&serde_json::to_string(fingerprint)?)?;
        let same_kind = serde_json::from_value::<StageFingerprint>(existing.config.clone()).is_ok_and(|old| {
            existing.stage == stage.name && old.digest_without_sources() == now.digest_without_sources()
        });
        if !same_kind {
            if opts.overwrite {
                remove_stage_files(out, stage)?;
            } else {
                let what = match serde_json::from_value::<StageFingerprint>(existing.config.clone()) {
                    Ok(old) => {
                        let mut now = fingerprint.clone();
                        now.sources.clear();
                        old.changes(&now).join("; ")
                    }
                    Err(_) => format!("it was written by stage `{}`", existing.stage),
                };
                anyhow::bail!(
                    "{}: this `{}` output was made from other inputs ({what}). Use a new --out, or pass --overwrite to replace it.",
                    opts.out.join(MANIFEST_FILE).display(),
                    stage.name
                );
            }
        }
    }
    manifest.write(&out.dir)?;
    out.publish(&[MANIFEST_FILE.to_string()])?;
    crate::shards::remove_owned_temp_files(&out.dir, opts.worker)?;
    Ok(lock)
}

/// Removes what a stage wrote into `dir`: its outputs and working files of every shard, the key
/// indexes and stats ([`super::write_shard`] writes them for every stage), the manifest and
/// temporary files.
fn remove_stage_files(dir: &mut Staging, stage: &Stage) -> anyhow::Result<()> {
    for name in dir.names()? {
        let written =
            stage.outputs.iter().chain(stage.scratch).chain(&[".index.json", "_stats.json"]).any(|e| name.ends_with(e));
        if written || name == MANIFEST_FILE || name.contains(TEMP_MARKER) {
            dir.delete(&name)?;
        }
    }
    Ok(())
}
