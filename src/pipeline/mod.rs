//! `pixforge run PIPELINE.toml`: the stages in order (tiny models → ingest → caption → density →
//! cache t5 / vae → train), each configured inline by its own section, the outputs of one feeding the
//! next under one output folder, each stage resumable so that a rerun does only what is missing.
//!
//! A pipeline file:
//!
//! ```toml
//! out = "runs/sam-256"            # every stage writes under it (relative to this file)
//! [ingest]                        # pixforge ingest's configuration  -> {out}/shards
//! [repeats]                       # pixforge dedup --phash's          -> {out}/selection/repeats.parquet
//! [score.clip]                    # pixforge score clip's (or [score.laion_emb]) -> {out}/scores
//! [filter]                        # pixforge filter's rules           -> {out}/selection/filter.parquet
//! [dedup]                         # pixforge dedup's                  -> {out}/selection/dedup.parquet
//! [balance]                       # pixforge balance's                -> {out}/selection/balance.parquet
//! [caption]                       # pixforge caption's               -> {out}/captions
//! [density]                       # the alt-text against the captions -> {out}/density
//! [cache.t5]                      # pixforge cache t5's (captions from [caption] when present)
//! [cache.vae]                     # pixforge cache vae's              -> {out}/latents/{t5,vae}
//! [export]                        # pixforge export pixart-official's -> {out}/export/pixart-official
//! [train]                         # a pixforge train config without output_dir and data.caches
//! [sample]                        # images from prompts with the trained model -> {out}/samples
//! ```
//!
//! Each section is its command's configuration struct, so a field has the same name, meaning and
//! default in both; a shard stage's section (`[score.*]`, `[caption]`, `[cache.*]`) also takes its
//! command's `device`, `selection` and `overwrite`. The selection stages run in the order above,
//! each choosing among the samples the one before kept; the last one's selection is what the
//! caption and cache stages (and so the training run) take, unless a section names its own.
//!
//! `{out}` in any string is the output folder; other relative paths are relative to the file. The
//! file's `out` is relative to the file's folder; `pixforge run --out DIR` is relative to the working
//! directory.
//!
//! Several sources are several `[[ingest]]` tables, each with a `name`: each is a dataset with its
//! own folders (`{out}/{name}/shards`, `/captions`, `/latents/{t5,vae}`) that every shard stage
//! runs over, and the training run takes all their caches.

mod run;

pub use run::{run, PipelineReport, StageReport};

use crate::shards::stage::StageRun;
use crate::train::generate::SampleConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tiny random models in the real layouts (the demo's; nothing is downloaded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsStage {
    /// Kinds to write into `{out}/models`: `t5` (with a T5-format tokenizer), `vae`, `llava`.
    pub tiny: Vec<String>,
}

/// The density stage: PixArt-α's Table 1 for the shards' alt-text, the captions, and any other sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DensityStage {
    /// Other caption sets to compare, by name: any input `pixforge density` takes, as a path or as
    /// `{ path = "…", column = "text", filter = "category=detail" }`.
    pub compare: BTreeMap<String, CompareSet>,
    /// The `pixforge density` configuration (counting, token statistics).
    pub config: crate::density::report::DensityConfig,
}

/// A caption set the density stage compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CompareSet {
    /// A file or folder, its captions found as `pixforge density` finds them.
    Path(PathBuf),
    /// A file or folder with the caption field and a row filter.
    Set {
        /// The file or folder.
        path: PathBuf,
        /// The caption column or field.
        #[serde(default)]
        column: Option<String>,
        /// Keep only rows whose field has a value: `field=value`.
        #[serde(default)]
        filter: Option<crate::config::FieldFilter>,
    },
}

impl CompareSet {
    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            CompareSet::Path(p) | CompareSet::Set { path: p, .. } => p,
        }
    }

    fn path_mut(&mut self) -> &mut PathBuf {
        match self {
            CompareSet::Path(p) | CompareSet::Set { path: p, .. } => p,
        }
    }

    /// The density input named `name`.
    pub fn input(&self, name: &str) -> crate::density::input::NamedInput {
        let selection = match self {
            CompareSet::Path(_) => None,
            CompareSet::Set { column, filter, .. } => {
                Some(crate::density::input::Selection { column: column.clone(), filter: filter.clone(), limit: None })
            }
        };
        crate::density::input::NamedInput { name: name.into(), path: self.path().to_path_buf(), selection }
    }
}

/// The sample stage: images from prompts with the trained model's EMA weights (or its raw weights),
/// the T5 encoder and the VAE; the other fields are `pixforge sample`'s ([`SampleConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleStage {
    /// Prompts, one per line.
    pub prompts: PathBuf,
    /// The T5 folder (or a diffusers pipeline folder with text_encoder/, tokenizer/).
    pub t5: PathBuf,
    /// The VAE folder (or a diffusers pipeline folder with vae/).
    pub vae: PathBuf,
    /// The EMA weights (true) or the trained weights.
    #[serde(default = "default_true")]
    pub ema: bool,
    /// Size, sampler, steps, guidance, seed: `pixforge sample`'s configuration.
    #[serde(skip)]
    pub config: SampleConfig,
}

fn default_true() -> bool {
    true
}

/// The score stage: `[score.clip]` (a CLIP tower and heads) or `[score.laion_emb]` (LAION's
/// precomputed embeddings), as `pixforge score clip` / `score laion-emb` configure them.
#[derive(Debug, Clone)]
pub enum ScoreStage {
    /// Embeddings from an ONNX tower.
    Clip(crate::score::stage::ScoreConfig),
    /// LAION's embeddings matched by key.
    LaionEmb(crate::score::stage::LaionEmbeddings),
}

/// What the train stage does when its caches changed after a finished or started run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenDataChanges {
    /// Stop with a message (the run's checkpoints are kept).
    #[default]
    Stop,
    /// Delete the run and train again (the demo's choice).
    Retrain,
}

/// One source and the folders its stages write.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Empty for a single `[ingest]`; the `name` of an `[[ingest]]` table.
    pub name: String,
    /// How its shards are made (`None`: the shards are already in `shards`).
    pub ingest: Option<crate::ingest::IngestConfig>,
    /// Its shards.
    pub shards: PathBuf,
    /// Its captions.
    pub captions: PathBuf,
    /// Its T5 cache.
    pub t5: PathBuf,
    /// Its VAE cache.
    pub vae: PathBuf,
    /// Its score shards (embeddings and scores).
    pub scores: PathBuf,
    /// Its selections (one parquet per selection stage).
    pub selections: PathBuf,
    /// Its exports in other trainers' layouts.
    pub export: PathBuf,
}

impl Dataset {
    fn new(out: &Path, name: &str, ingest: Option<crate::ingest::IngestConfig>) -> Self {
        let root = if name.is_empty() { out.to_path_buf() } else { out.join(name) };
        Self {
            name: name.to_string(),
            ingest,
            shards: root.join("shards"),
            captions: root.join("captions"),
            t5: root.join("latents/t5"),
            vae: root.join("latents/vae"),
            scores: root.join("scores"),
            selections: root.join("selection"),
            export: root.join("export"),
        }
    }

    /// The selection file a selection stage (`repeats`, `filter`, `dedup`, `balance`) writes.
    pub fn selection(&self, stage: &str) -> PathBuf {
        self.selections.join(format!("{stage}.parquet"))
    }

    /// `stage` or `stage[name]`.
    pub fn label(&self, stage: &str) -> String {
        if self.name.is_empty() {
            stage.to_string()
        } else {
            format!("{stage}[{}]", self.name)
        }
    }
}

/// A parsed pipeline: its sections, paths resolved.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it was read from.
    pub file: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// Replace the ingest's shards made with another configuration (`pixforge run --overwrite`;
    /// the shard stages' sections then all have `overwrite = true`).
    pub overwrite: bool,
    /// `[models]`.
    pub models: Option<ModelsStage>,
    /// The datasets: one per `[[ingest]]` (one for `[ingest]`, or none given).
    pub datasets: Vec<Dataset>,
    /// `[score.clip]` or `[score.laion_emb]`.
    pub score: Option<ScoreStage>,
    /// The score section's `device`, `selection` and `overwrite`.
    pub score_run: StageRun,
    /// `[repeats]`: repeats across every shard by pHash (`pixforge dedup --phash`).
    pub repeats: Option<crate::score::repeats::RepeatsConfig>,
    /// `[filter]`.
    pub filter: Option<crate::score::filter::FilterConfig>,
    /// `[dedup]`.
    pub dedup: Option<crate::score::dedup::DedupConfig>,
    /// `[balance]`.
    pub balance: Option<crate::score::balance::BalanceConfig>,
    /// `[caption]`.
    pub caption: Option<crate::caption::CaptionConfig>,
    /// `[caption]`'s `selection` and `overwrite` (its `device` is the section's own field).
    pub caption_run: StageRun,
    /// `[density]`.
    pub density: Option<DensityStage>,
    /// `[cache.t5]`.
    pub t5: Option<crate::latents::cache::T5CacheConfig>,
    /// `[cache.t5]`'s `device`, `selection` and `overwrite`.
    pub t5_run: StageRun,
    /// `[cache.vae]`.
    pub vae: Option<crate::latents::cache::VaeCacheConfig>,
    /// `[cache.vae]`'s `device`, `selection` and `overwrite`.
    pub vae_run: StageRun,
    /// `[export]` (the official PixArt code's layout).
    pub export: Option<crate::latents::export::ExportConfig>,
    /// `[train]`, with its output folder and caches filled in.
    pub train: Option<crate::train::config::TrainConfig>,
    /// `[train] when_data_changes`.
    pub when_data_changes: WhenDataChanges,
    /// `[sample]`.
    pub sample: Option<SampleStage>,
}

/// The stage sections a pipeline file may have.
const SECTIONS: [&str; 15] = [
    "out",
    "description",
    "models",
    "ingest",
    "score",
    "repeats",
    "filter",
    "dedup",
    "balance",
    "caption",
    "density",
    "cache",
    "export",
    "train",
    "sample",
];

/// The selection stages, in the order they run.
pub const SELECTION_STAGES: [&str; 4] = ["repeats", "filter", "dedup", "balance"];

impl Pipeline {
    /// Reads `file`; `out` overrides its `out`. Errors name the file, the stage and the field.
    pub fn load(file: &Path, out: Option<&Path>) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
        Self::parse(&text, file, out)
    }

    /// Parses pipeline `text` (from `file`, which relative paths are relative to).
    pub fn parse(text: &str, file: &Path, out: Option<&Path>) -> anyhow::Result<Self> {
        let f = file.display();
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{f}: not valid TOML: {e}"))?;
        for key in doc.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                anyhow::bail!(
                    "{f}: unknown stage `{key}`; a pipeline has out, description, [models], [ingest], \
                     [score.clip] or [score.laion_emb], [repeats], [filter], [dedup], [balance], [caption], [density], \
                     [cache.t5], [cache.vae], [export], [train] and [sample]"
                );
            }
        }
        // `--out` is relative to the working directory, the file's `out` to the file's folder; made
        // absolute so that `{out}` in other fields (relative to the file) means the same folder.
        // A store prefix (`s3://…`) is taken as it is.
        let absolute = |p: PathBuf| if crate::store::is_remote(&p) { p } else { std::path::absolute(&p).unwrap_or(p) };
        let out = match (out, doc.get("out")) {
            (Some(o), _) => absolute(o.to_path_buf()),
            (None, Some(toml::Value::String(s))) if crate::store::is_remote(Path::new(s)) => PathBuf::from(s),
            (None, Some(toml::Value::String(s))) => absolute(base.join(s)),
            (None, Some(v)) => anyhow::bail!("{f}: field `out`: expected a folder name, found {v}"),
            (None, None) => anyhow::bail!("{f}: field `out`: missing (the folder every stage writes under)"),
        };
        substitute_out(&mut doc, &out.to_string_lossy());
        let stage = |name: &str| doc.get(name).cloned();
        let models = stage("models").map(|v| typed::<ModelsStage>(file, "models", v)).transpose()?;
        let mut datasets = match stage("ingest") {
            None => vec![Dataset::new(&out, "", None)],
            Some(toml::Value::Array(tables)) => {
                let mut sets: Vec<Dataset> = Vec::new();
                for (i, t) in tables.into_iter().enumerate() {
                    let toml::Value::Table(mut t) = t else {
                        anyhow::bail!("{f}: stage `ingest`: [[ingest]] entry {i}: expected a table");
                    };
                    let name = match t.remove("name") {
                        Some(toml::Value::String(n))
                            if !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_') =>
                        {
                            n
                        }
                        other => anyhow::bail!(
                            "{f}: stage `ingest`, [[ingest]] entry {i}, field `name`: expected a name of letters, digits,                              - and _ (its folder under out), found {}",
                            other.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                        ),
                    };
                    if sets.iter().any(|d| d.name == name) {
                        anyhow::bail!("{f}: stage `ingest`, field `name`: {name:?} is used twice");
                    }
                    let label = format!("ingest[{name}]");
                    let cfg = typed::<crate::ingest::IngestConfig>(file, &label, toml::Value::Table(t))?;
                    sets.push(Dataset::new(&out, &name, Some(cfg)));
                }
                sets
            }
            Some(v) => vec![Dataset::new(&out, "", Some(typed::<crate::ingest::IngestConfig>(file, "ingest", v)?))],
        };
        let score_section = match stage("score") {
            Some(toml::Value::Table(t)) => t,
            Some(v) => {
                anyhow::bail!("{f}: stage `score`: expected a [score.clip] or [score.laion_emb] table, found {v}")
            }
            None => toml::Table::new(),
        };
        let (mut score, mut score_run) = (None, StageRun::default());
        for (key, v) in score_section {
            let label = format!("score.{key}");
            if score.is_some() {
                anyhow::bail!("{f}: stage `{label}`: a pipeline scores once: [score.clip] or [score.laion_emb]");
            }
            let (section, run) = split_run(file, &label, Some(v), &["device", "selection", "overwrite"])?;
            let section = section.expect("split_run keeps a section it was given");
            score = Some(match key.as_str() {
                "clip" => ScoreStage::Clip(typed(file, &label, section)?),
                "laion_emb" => ScoreStage::LaionEmb(typed(file, &label, section)?),
                _ => anyhow::bail!("{f}: unknown stage `{label}`; expected [score.clip] or [score.laion_emb]"),
            });
            score_run = run;
        }
        let filter = stage("filter").map(|v| typed(file, "filter", v)).transpose()?;
        let dedup = stage("dedup").map(|v| typed(file, "dedup", v)).transpose()?;
        let repeats = stage("repeats").map(|v| typed(file, "repeats", v)).transpose()?;
        let balance = stage("balance").map(|v| typed(file, "balance", v)).transpose()?;
        let (caption_section, mut caption_run) =
            split_run(file, "caption", stage("caption"), &["selection", "overwrite"])?;
        let mut caption =
            caption_section.map(|v| typed::<crate::caption::CaptionConfig>(file, "caption", v)).transpose()?;
        if let Some(c) = &caption {
            caption_run.device = c.device.clone();
        }
        let mut density = match stage("density") {
            None => None,
            Some(toml::Value::Table(mut t)) => {
                let compare = match t.remove("compare") {
                    None => BTreeMap::new(),
                    Some(v) => typed::<BTreeMap<String, CompareSet>>(file, "density", v)
                        .map_err(|e| anyhow::anyhow!("{e:#} (field `compare`)"))?,
                };
                Some(DensityStage { compare, config: typed(file, "density", toml::Value::Table(t))? })
            }
            Some(v) => anyhow::bail!("{f}: stage `density`: expected a table, found {v}"),
        };
        let export = stage("export").map(|v| typed(file, "export", v)).transpose()?;
        let cache = match stage("cache") {
            Some(toml::Value::Table(t)) => t,
            Some(v) => anyhow::bail!("{f}: stage `cache`: expected [cache.t5] and/or [cache.vae] tables, found {v}"),
            None => toml::Table::new(),
        };
        for key in cache.keys() {
            if key != "t5" && key != "vae" {
                anyhow::bail!("{f}: unknown stage `cache.{key}`; expected [cache.t5] and/or [cache.vae]");
            }
        }
        const RUN: [&str; 3] = ["device", "selection", "overwrite"];
        let (t5_section, mut t5_run) = split_run(file, "cache.t5", cache.get("t5").cloned(), &RUN)?;
        let mut t5 =
            t5_section.map(|v| typed::<crate::latents::cache::T5CacheConfig>(file, "cache.t5", v)).transpose()?;
        let (vae_section, mut vae_run) = split_run(file, "cache.vae", cache.get("vae").cloned(), &RUN)?;
        let mut vae =
            vae_section.map(|v| typed::<crate::latents::cache::VaeCacheConfig>(file, "cache.vae", v)).transpose()?;
        let (train, when_data_changes) = match stage("train") {
            None => (None, WhenDataChanges::Stop),
            Some(toml::Value::Table(mut t)) => {
                let when = match t.remove("when_data_changes") {
                    None => WhenDataChanges::Stop,
                    Some(v) => typed::<WhenDataChanges>(file, "train", v).map_err(|e| {
                        anyhow::anyhow!("{e:#} (field `when_data_changes`: expected \"stop\" or \"retrain\")")
                    })?,
                };
                let dir = out.join("train").to_string_lossy().into_owned();
                t.entry("output_dir").or_insert(toml::Value::String(dir));
                let data = t.entry("data").or_insert(toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(d) = data {
                    d.entry("caches").or_insert_with(|| {
                        let pairs = datasets.iter().map(|ds| {
                            let mut pair = toml::Table::new();
                            pair.insert("t5".into(), ds.t5.to_string_lossy().into_owned().into());
                            pair.insert("vae".into(), ds.vae.to_string_lossy().into_owned().into());
                            toml::Value::Table(pair)
                        });
                        toml::Value::Array(pairs.collect())
                    });
                }
                let mut cfg = typed::<crate::train::config::TrainConfig>(file, "train", toml::Value::Table(t))?;
                cfg.resolve_paths(&base);
                (Some(cfg), when)
            }
            Some(v) => anyhow::bail!("{f}: stage `train`: expected a table, found {v}"),
        };
        let mut sample = match stage("sample") {
            None => None,
            Some(toml::Value::Table(mut t)) => {
                let mut own = toml::Table::new();
                for key in ["prompts", "t5", "vae", "ema"] {
                    if let Some(v) = t.remove(key) {
                        own.insert(key.into(), v);
                    }
                }
                let mut smp = typed::<SampleStage>(file, "sample", toml::Value::Table(own))?;
                smp.config = typed(file, "sample", toml::Value::Table(t))?;
                Some(smp)
            }
            Some(v) => anyhow::bail!("{f}: stage `sample`: expected a table, found {v}"),
        };
        if sample.is_some() && train.is_none() {
            anyhow::bail!("{f}: stage `sample` samples the model of [train]: add a [train] stage");
        }
        // Relative paths are relative to the file.
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !crate::store::is_remote(p) {
                *p = base.join(&*p);
            }
        };
        for ds in &mut datasets {
            if let Some(i) = &mut ds.ingest {
                i.inputs.iter_mut().for_each(fix);
            }
        }
        if let Some(c) = &mut caption {
            if c.backend == crate::caption::Backend::Candle && Path::new(&c.model).is_relative() {
                c.model = base.join(&c.model).to_string_lossy().into_owned();
            }
        }
        if let Some(d) = &mut density {
            d.compare.values_mut().for_each(|c| fix(c.path_mut()));
            d.config.t5_tokenizer.iter_mut().for_each(fix);
        }
        if let Some(ScoreStage::Clip(c)) = &mut score {
            fix(&mut c.tower);
            c.heads.iter_mut().chain(c.pixel_heads.iter_mut()).for_each(fix);
        }
        if let Some(ScoreStage::LaionEmb(l)) = &mut score {
            fix(&mut l.emb_dir);
            fix(&mut l.meta_dir);
            l.heads.iter_mut().for_each(fix);
        }
        if let Some(t) = &mut t5 {
            fix(&mut t.model);
        }
        if let Some(v) = &mut vae {
            fix(&mut v.model);
        }
        for run in [&mut t5_run, &mut vae_run, &mut score_run, &mut caption_run] {
            run.selection.iter_mut().for_each(fix);
        }
        if let Some(smp) = &mut sample {
            fix(&mut smp.prompts);
            fix(&mut smp.t5);
            fix(&mut smp.vae);
        }
        Ok(Self {
            file: file.to_path_buf(),
            out,
            overwrite: false,
            models,
            datasets,
            score,
            score_run,
            repeats,
            filter,
            dedup,
            balance,
            caption,
            caption_run,
            density,
            t5,
            t5_run,
            vae,
            vae_run,
            export,
            train,
            when_data_changes,
            sample,
        })
    }

    /// This pipeline with every output made from other inputs replaced rather than refused: the
    /// ingest's shards and every shard stage's folder (`pixforge run --overwrite`).
    pub fn overwriting(mut self) -> Self {
        self.overwrite = true;
        for run in [&mut self.t5_run, &mut self.vae_run, &mut self.score_run, &mut self.caption_run] {
            run.overwrite = true;
        }
        self
    }

    /// Checks the configuration before the run starts: fields that need each other, value forms,
    /// and the caches a training stage trains on, naming the file, stage and field. Needs no input
    /// to exist ([`Pipeline::check_paths`] checks those).
    pub fn check(&self) -> anyhow::Result<()> {
        let f = self.file.display();
        let mut errors: Vec<String> = Vec::new();
        let has_stage = self.models.is_some()
            || self.datasets.iter().any(|d| d.ingest.is_some())
            || self.score.is_some()
            || !self.selection_stages().is_empty()
            || self.caption.is_some()
            || self.density.is_some()
            || self.t5.is_some()
            || self.vae.is_some()
            || self.export.is_some()
            || self.train.is_some();
        if !has_stage {
            errors.push(format!(
                "{f}: no stage to run; a pipeline has [models], [ingest], [score.clip], … (docs/pipelines.md)"
            ));
        }
        for ds in &self.datasets {
            if ds.ingest.as_ref().is_some_and(|i| i.curation.samples_per_shard == 0) {
                errors.push(format!(
                    "{f}: stage `{}`, field `curation.samples_per_shard`: expected at least 1, found 0",
                    ds.label("ingest")
                ));
            }
        }
        if let Some(t) = &self.train {
            if let Err(e) = t.validate() {
                errors.push(format!("{f}: stage `train`, field {e}"));
            }
        }
        for (stage, run) in self.shard_runs() {
            if let Err(e) = crate::device::DeviceName::parse(&run.device) {
                errors.push(format!("{f}: stage `{stage}`, field `device`: {e}"));
            }
        }
        if let Some(flt) = &self.filter {
            if let Err(e) = flt.rules() {
                errors.push(format!("{f}: stage `filter`: {e:#}"));
            }
        }
        for (stage, needs_score) in [("filter", self.filter.is_some()), ("dedup", self.dedup.is_some())] {
            if needs_score && self.score.is_none() {
                errors.push(format!(
                    "{f}: stage `{stage}` reads the scores of a score stage: add [score.clip] or [score.laion_emb]"
                ));
            }
        }
        if let Some(r) = &self.repeats {
            if r.phash_distance > crate::image::phash::MAX_REPEAT_DISTANCE {
                errors.push(format!(
                    "{f}: stage `repeats`, field `phash_distance`: expected at most {} of 64 bits, found {}",
                    crate::image::phash::MAX_REPEAT_DISTANCE,
                    r.phash_distance
                ));
            }
        }
        if let Some(d) = &self.dedup {
            if !(0.0..=1.0).contains(&d.threshold) {
                errors.push(format!(
                    "{f}: stage `dedup`, field `threshold`: expected a cosine similarity in [0, 1], found {}",
                    d.threshold
                ));
            }
        }
        if let Some(b) = &self.balance {
            if b.size == 0 {
                errors.push(format!("{f}: stage `balance`, field `size`: expected at least 1 sample, found 0"));
            }
        }
        if self.export.is_some() && (self.t5.is_none() || self.vae.is_none()) {
            errors.push(format!("{f}: stage `export` writes the pipeline's caches: add [cache.t5] and [cache.vae]"));
        }
        // Model folders and the official code's layout are read from local disk.
        if crate::store::is_remote(&self.out) {
            for (stage, present) in [("models", self.models.is_some()), ("export", self.export.is_some())] {
                if present {
                    errors.push(format!(
                        "{f}: stage `{stage}` writes folders that are read from local disk, and out = \"{}\" is in a \
                         store: run it in a pipeline with a local out",
                        self.out.display()
                    ));
                }
            }
        }
        if let Some(c) = &self.caption {
            if c.backend == crate::caption::Backend::Openai && c.endpoint.is_none() {
                errors.push(format!("{f}: stage `caption`, field `endpoint`: required with backend = \"openai\""));
            }
        }
        if let Some(d) = &self.density {
            for (name, c) in &d.compare {
                if let CompareSet::Set { filter: Some(flt), .. } = c {
                    if flt.value.is_empty() {
                        errors.push(format!(
                            "{f}: stage `density`, field `compare.{name}.filter`: expected field=value, found \"{flt}\""
                        ));
                    }
                }
            }
        }
        if let (Some(train), true) = (&self.train, self.t5.is_none() || self.vae.is_none()) {
            if train.data.caches.iter().any(|c| self.datasets.iter().any(|d| c.t5 == d.t5 || c.vae == d.vae)) {
                errors.push(format!(
                    "{f}: stage `train` trains on the pipeline's caches: add [cache.t5] and [cache.vae]"
                ));
            }
        }
        all_errors(errors)
    }

    /// Checks what must exist before the run starts (inputs, and model folders a tiny-models stage
    /// will not write), naming the file, stage and field.
    pub fn check_paths(&self) -> anyhow::Result<()> {
        let f = self.file.display();
        let mut errors: Vec<String> = Vec::new();
        let made = self.out.join("models");
        // Inputs in a store are checked when the stage lists them.
        let exists =
            |p: &Path| crate::store::is_remote(p) || p.exists() || (self.models.is_some() && p.starts_with(&made));
        for ds in &self.datasets {
            for p in ds.ingest.iter().flat_map(|i| &i.inputs) {
                if !exists(p) {
                    errors.push(format!(
                        "{f}: stage `{}`, field `inputs`: {}: no such file or folder",
                        ds.label("ingest"),
                        p.display()
                    ));
                }
            }
        }
        if let Some(c) = &self.caption {
            if c.backend == crate::caption::Backend::Candle && !exists(Path::new(&c.model)) {
                errors.push(format!("{f}: stage `caption`, field `model`: {}: no such model folder", c.model));
            }
        }
        for (stage, model) in
            [("cache.t5", self.t5.as_ref().map(|t| &t.model)), ("cache.vae", self.vae.as_ref().map(|v| &v.model))]
        {
            if let Some(m) = model {
                if !exists(m) {
                    errors.push(format!("{f}: stage `{stage}`, field `model`: {}: no such model folder", m.display()));
                }
            }
        }
        if let Some(ScoreStage::Clip(c)) = &self.score {
            for (field, p) in std::iter::once(("tower", &c.tower))
                .chain(c.heads.iter().map(|h| ("heads", h)))
                .chain(c.pixel_heads.iter().map(|h| ("pixel_heads", h)))
            {
                if !exists(p) {
                    errors.push(format!("{f}: stage `score.clip`, field `{field}`: {}: no such file", p.display()));
                }
            }
        }
        if let Some(ScoreStage::LaionEmb(l)) = &self.score {
            for (field, p) in [("emb_dir", &l.emb_dir), ("meta_dir", &l.meta_dir)] {
                if !exists(p) {
                    errors.push(format!(
                        "{f}: stage `score.laion_emb`, field `{field}`: {}: no such folder",
                        p.display()
                    ));
                }
            }
        }
        if let Some(t) = self.density.as_ref().and_then(|d| d.config.t5_tokenizer.as_ref()) {
            if !exists(t) {
                errors.push(format!("{f}: stage `density`, field `t5_tokenizer`: {}: no such file", t.display()));
            }
        }
        for (stage, run) in self.shard_runs() {
            if let Some(sel) = run.selection.as_ref().filter(|s| !s.exists()) {
                errors.push(format!("{f}: stage `{stage}`, field `selection`: {}: no such file", sel.display()));
            }
        }
        if let Some(t5) = self.t5.as_ref().map(|t| &t.model).filter(|m| m.exists()) {
            let tokenizer = crate::latents::t5::CaptionTokenizer::file_in(t5);
            if !tokenizer.is_file() {
                errors.push(format!(
                    "{f}: stage `cache.t5`, field `model`: {}: no tokenizer (expected {})",
                    t5.display(),
                    tokenizer.display()
                ));
            }
        }
        if let Some(smp) = &self.sample {
            for (field, p) in [("prompts", &smp.prompts), ("t5", &smp.t5), ("vae", &smp.vae)] {
                let made_here =
                    self.t5.as_ref().is_some_and(|t| &t.model == p) || self.vae.as_ref().is_some_and(|v| &v.model == p);
                if !exists(p) && !made_here {
                    errors
                        .push(format!("{f}: stage `sample`, field `{field}`: {}: no such file or folder", p.display()));
                }
            }
        }
        if let Some(d) = &self.density {
            for (name, c) in &d.compare {
                if !c.path().exists() {
                    errors.push(format!(
                        "{f}: stage `density`, field `compare.{name}`: {}: no such file or folder",
                        c.path().display()
                    ));
                }
            }
        }
        // Data read from inside the output folder must be put there first: say so once.
        let inputs =
            self.datasets.iter().flat_map(|d| d.ingest.iter().flat_map(|i| i.inputs.iter().map(|p| p.as_path())));
        let inputs = inputs
            .chain(self.sample.iter().map(|s| s.prompts.as_path()))
            .chain(self.density.iter().flat_map(|d| d.compare.values().map(|c| c.path())));
        let inside_out = inputs.filter(|p| !exists(p) && p.starts_with(&self.out)).count();
        all_errors(errors).map_err(|e| match inside_out {
            0 => e,
            n => anyhow::anyhow!(
                "{e}\n  ({n} of them inside the output folder {}, which this pipeline reads but does not write: put \
                 them there first; pipelines/demo.toml's are written by `pixforge demo --out {}`)",
                self.out.display(),
                self.out.display()
            ),
        })
    }
}

/// `Ok` when `errors` is empty, else one error listing them all, one per line.
fn all_errors(errors: Vec<String>) -> anyhow::Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(anyhow::anyhow!("{}", errors[0])),
        n => Err(anyhow::anyhow!("{n} problems:\n  {}", errors.join("\n  "))),
    }
}

impl Pipeline {
    /// Each shard stage present with its run settings.
    fn shard_runs(&self) -> Vec<(&'static str, &StageRun)> {
        let mut runs = Vec::new();
        if let Some(s) = &self.score {
            runs.push((
                if matches!(s, ScoreStage::Clip(_)) { "score.clip" } else { "score.laion_emb" },
                &self.score_run,
            ));
        }
        if self.caption.is_some() {
            runs.push(("caption", &self.caption_run));
        }
        if self.t5.is_some() {
            runs.push(("cache.t5", &self.t5_run));
        }
        if self.vae.is_some() {
            runs.push(("cache.vae", &self.vae_run));
        }
        runs
    }

    /// The selection stages present, in the order they run.
    pub fn selection_stages(&self) -> Vec<&'static str> {
        let present = [self.repeats.is_some(), self.filter.is_some(), self.dedup.is_some(), self.balance.is_some()];
        SELECTION_STAGES.iter().zip(present).filter(|(_, p)| *p).map(|(s, _)| *s).collect()
    }

    /// The selection a shard stage after the selection stages takes for `ds`: its own, else the
    /// last selection stage's.
    pub fn selection_for(&self, run: &StageRun, ds: &Dataset) -> StageRun {
        let mut run = run.clone();
        if run.selection.is_none() {
            run.selection = self.selection_stages().last().map(|s| ds.selection(s));
        }
        run
    }
}

/// Replaces `{out}` in every string of `v`.
fn substitute_out(t: &mut toml::Table, out: &str) {
    fn walk(v: &mut toml::Value, out: &str) {
        match v {
            toml::Value::String(s) if s.contains("{out}") => *s = s.replace("{out}", out),
            toml::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, out)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| walk(x, out)),
            _ => {}
        }
    }
    t.iter_mut().for_each(|(_, v)| walk(v, out));
}

/// A shard stage's section split into what the stage computes and how it runs ([`StageRun`]: the
/// `keys` of `device`, `selection` and `overwrite` its command takes as flags).
fn split_run(
    file: &Path,
    stage: &str,
    v: Option<toml::Value>,
    keys: &[&str],
) -> anyhow::Result<(Option<toml::Value>, StageRun)> {
    let Some(toml::Value::Table(mut t)) = v else {
        return Ok((v, StageRun::default()));
    };
    let mut run = toml::Table::new();
    for &key in keys {
        if let Some(x) = t.remove(key) {
            run.insert(key.into(), x);
        }
    }
    Ok((Some(toml::Value::Table(t)), typed::<StageRun>(file, stage, toml::Value::Table(run))?))
}

/// A stage's section as `T`, an error naming the file, the stage and the field.
fn typed<T: DeserializeOwned>(file: &Path, stage: &str, v: toml::Value) -> anyhow::Result<T> {
    let f = file.display();
    let table = match v {
        toml::Value::Table(t) => t,
        // A bare value (an enum) is checked through a one-field table.
        other => {
            let mut t = toml::Table::new();
            t.insert("value".into(), other);
            #[derive(Deserialize)]
            struct One<T> {
                value: T,
            }
            let text = toml::to_string(&t)?;
            return toml::from_str::<One<T>>(&text)
                .map(|o| o.value)
                .map_err(|e| anyhow::anyhow!("{f}: stage `{stage}`: {}", e.message().trim()));
        }
    };
    let text = toml::to_string(&table)?;
    toml::from_str::<T>(&text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let field =
            (!msg.starts_with("missing field")).then(|| e.span().and_then(|s| field_at(&text, s.start))).flatten();
        match field {
            Some(field) => anyhow::anyhow!("{f}: stage `{stage}`, field `{field}`: {msg}"),
            None => anyhow::anyhow!("{f}: stage `{stage}`: {msg}"),
        }
    })
}

/// The dotted name of the key on the line of byte `pos` in TOML `text` (its table's header included).
fn field_at(text: &str, pos: usize) -> Option<String> {
    let line_start = text[..pos.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?.trim();
    let header = |l: &str| l.starts_with('[').then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if let Some(h) = header(line) {
        return Some(h);
    }
    let key = line.split('=').next()?.trim().trim_matches('"').to_string();
    let table = text[..line_start].lines().rev().find_map(|l| header(l.trim()));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_the_stage_and_the_field() {
        let file = Path::new("/p/demo.toml");
        let e = |text: &str| Pipeline::parse(text, file, None).err().unwrap().to_string();
        let unknown = e("out = \"o\"\n[caption]\nmodel = \"m\"\nmax_tokns = 3\n");
        assert!(
            unknown.contains("/p/demo.toml: stage `caption`, field `max_tokns`: unknown field `max_tokns`"),
            "{unknown}"
        );
        let wrong = e("out = \"o\"\n[cache.vae]\nmodel = \"m\"\nresolution = \"big\"\n");
        assert!(wrong.contains("stage `cache.vae`, field `resolution`: invalid type: string \"big\""), "{wrong}");
        let nested =
            e("out = \"o\"\n[ingest]\nsource = \"folder\"\ninputs = []\n[ingest.curation]\nsamples_per_shard = -1\n");
        assert!(nested.contains("stage `ingest`, field `curation.samples_per_shard`"), "{nested}");
        let missing = e("out = \"o\"\n[ingest]\ninputs = []\n");
        assert!(missing.contains("stage `ingest`: missing field `source`"), "{missing}");
        let stage = e("out = \"o\"\n[captions]\n");
        assert!(stage.contains("unknown stage `captions`"), "{stage}");
        let train = e("out = \"o\"\n[train]\nmax_steps = 5\n[train.data]\nbatch_size = \"x\"\n");
        assert!(train.contains("stage `train`, field `data.batch_size`"), "{train}");
    }

    #[test]
    fn out_is_substituted_and_paths_resolve_against_the_file() {
        let text = "out = \"run\"\n[caption]\nmodel = \"{out}/models/llava\"\n[cache.t5]\nmodel = \"t5\"\n";
        let p = Pipeline::parse(text, Path::new("/p/x.toml"), None).unwrap();
        assert_eq!(p.out, Path::new("/p/run"));
        assert_eq!(p.caption.unwrap().model, "/p/run/models/llava");
        assert_eq!(p.t5.unwrap().model, Path::new("/p/t5"));
        // `--out` is the working directory's, for the stages' outputs and `{out}` alike; a relative
        // file's own `out` is its folder's.
        let cwd = std::env::current_dir().unwrap();
        let p = Pipeline::parse(text, Path::new("dir/x.toml"), Some(Path::new("myout"))).unwrap();
        assert_eq!(p.out, cwd.join("myout"));
        assert_eq!(Path::new(&p.caption.unwrap().model), cwd.join("myout/models/llava"));
        let p = Pipeline::parse(text, Path::new("dir/x.toml"), None).unwrap();
        assert_eq!(Path::new(&p.caption.unwrap().model), cwd.join("dir/run/models/llava"));
        assert_eq!(p.t5.unwrap().model, Path::new("dir/t5"));
    }
}
