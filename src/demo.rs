//! `pixforge demo`: the pipeline on bundled public-domain and CC0 photos, with no downloads: ingest,
//! the concept-density report of the captions, the T5 and VAE feature caches — made with tiny
//! randomly initialised encoders in the real layouts, since no weights can be downloaded here (the
//! same commands take the real T5-v1.1-XXL and SD VAE folders) — and a short training run of a tiny
//! PixArtMS on those caches.

use crate::ingest::{self, CurationOptions, IngestConfig, RunOptions, SourceKind};
use crate::shards::{read_records, RunStats, Status};
use std::path::{Path, PathBuf};

/// The bundled photos: (file name, bytes).
pub const IMAGES: &[(&str, &[u8])] = &[
    ("astronaut.jpg", include_bytes!("../assets/demo/astronaut.jpg")),
    ("camera.jpg", include_bytes!("../assets/demo/camera.jpg")),
    ("chelsea.jpg", include_bytes!("../assets/demo/chelsea.jpg")),
    ("coffee.jpg", include_bytes!("../assets/demo/coffee.jpg")),
    ("hubble_deep_field.jpg", include_bytes!("../assets/demo/hubble_deep_field.jpg")),
    ("rocket.jpg", include_bytes!("../assets/demo/rocket.jpg")),
];

/// Tab-separated `file name<TAB>caption` lines for the bundled photos.
pub const CAPTIONS: &str = include_str!("../assets/demo/captions.txt");

/// Writes the bundled photos and their `.txt` captions into `dir` (a kohya-style folder).
pub fn write_inputs(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in IMAGES {
        std::fs::write(dir.join(name), bytes)?;
    }
    for line in CAPTIONS.lines() {
        if let Some((name, caption)) = line.split_once('\t') {
            std::fs::write(dir.join(Path::new(name).with_extension("txt")), caption)?;
        }
    }
    Ok(())
}

/// The T5 tokenizer of the demo's tiny T5 (a Unigram model in T5's format, trained on public captions).
const DEMO_TOKENIZER: &[u8] = include_bytes!("../tests/fixtures/t5-sentinels/tokenizer.json");

/// What the demo produced.
pub struct DemoReport {
    /// Ingest totals.
    pub ingest: RunStats,
    /// The shard directory.
    pub shards: PathBuf,
    /// The concept-density report of the shards' captions (files in `out/density`).
    pub density: crate::density::report::Report,
    /// The captioning run (`out/captions`, an untrained tiny LLaVA written to `out/models/llava`).
    pub captions: crate::latents::cache::CacheRunStats,
    /// The first sample's key and generated caption.
    pub first_caption: (String, String),
    /// The T5 cache run (`out/latents/t5`).
    pub t5: crate::latents::cache::CacheRunStats,
    /// The VAE cache run (`out/latents/vae-256ms`: the 256 px aspect-ratio buckets).
    pub vae: crate::latents::cache::CacheRunStats,
    /// The training run on those caches (`out/train`, configured by `out/train.toml`).
    pub train: crate::train::run::TrainSummary,
    /// Mean loss of the first steps of that run.
    pub first_loss: f64,
}

/// Runs the demo into `out`: bundled photos → folder ingest (512 px, keep ratio) → shards → density report.
pub fn run(out: &Path) -> anyhow::Result<DemoReport> {
    let input = out.join("input");
    let shards = out.join("shards");
    write_inputs(&input)?;
    let cfg = IngestConfig {
        source: SourceKind::Folder,
        inputs: vec![input],
        laion: Default::default(),
        image: Default::default(),
        curation: CurationOptions { samples_per_shard: 4, ..Default::default() },
        download: Default::default(),
    };
    let mut opts = RunOptions::new(&shards);
    opts.overwrite = true;
    let ingest = ingest::run(&cfg, &opts)?;
    let alt = crate::density::input::NamedInput { name: "demo alt text".into(), path: shards.clone() };
    let o = crate::density::report::DensityOptions::default();
    let density = crate::density::report::run(&[alt], &o, &out.join("density"))?;
    let (captions, first_caption) = caption(&shards, out)?;
    let (t5, vae) = cache_features(&shards, out)?;
    let (train, first_loss) = train(out)?;
    Ok(DemoReport { ingest, shards, density, captions, first_caption, t5, vae, train, first_loss })
}

/// Re-captions the shards with a tiny random LLaVA-1.5 in the llava-hf layout (`out/models/llava`),
/// the paper's prompt, 24 tokens at most: the stage works end to end, the captions are noise.
fn caption(shards: &Path, out: &Path) -> anyhow::Result<(crate::latents::cache::CacheRunStats, (String, String))> {
    let model = out.join("models").join("llava");
    crate::models::init_tiny(crate::models::ModelKind::Llava, &model, false, 0)?;
    let cfg = crate::caption::CaptionConfig {
        model: model.to_string_lossy().into_owned(),
        max_tokens: 24,
        ..Default::default()
    };
    let opts = crate::latents::cache::RunOptions {
        overwrite: true,
        progress: false,
        ..crate::latents::cache::RunOptions::new(shards, out.join("captions"))
    };
    let stats = crate::caption::run(&cfg, &opts)?;
    let first = crate::caption::read_captions(&out.join("captions").join("00000.captions.parquet"))?
        .into_iter()
        .next()
        .map(|(k, c, _)| (k, c.unwrap_or_default()))
        .unwrap_or_default();
    Ok((stats, first))
}

/// Trains a tiny PixArtMS for 60 steps on the demo's caches (written as `out/train.toml`, the same
/// file `pixforge train --config` takes), with a validation grid of two captions at two seeds.
fn train(out: &Path) -> anyhow::Result<(crate::train::run::TrainSummary, f64)> {
    let prompts: Vec<&str> = CAPTIONS.lines().filter_map(|l| l.split_once('\t').map(|(_, c)| c)).take(2).collect();
    std::fs::write(out.join("prompts.txt"), prompts.join("\n"))?;
    let toml = r#"# The demo's training run: a tiny PixArtMS (2 blocks, hidden 48) on the demo's caches, which
# were made with tiny random encoders. The same file format trains PixArt-XL/2 (pipelines/train-*.toml).
output_dir = "train"
max_steps = 60
seed = 43
max_grad_norm = 1.0
ema_decay = 0.99

[data]
caches = [{ t5 = "latents/t5", vae = "latents/vae-256ms" }]
batch_size = 1          # the six photos fall into several aspect-ratio buckets

[model]
layers = 2
heads = 2
head_dim = 24
sample_size = 32        # 256 px / 8
caption_channels = 32   # the tiny T5's width
micro_conditions = true

[optimizer]
lr = 1e-3
weight_decay = 0.0

[schedule]
warmup_steps = 5

[checkpoints]
every = 30
keep_last = 2

[logging]
every = 10
progress = false

[validation]
prompts = "prompts.txt"
t5 = "models"
vae = "models"
every = 60
seeds = [0, 1]
steps = 10
"#;
    let file = out.join("train.toml");
    crate::shards::write_atomic(&file, toml.as_bytes())?;
    let run_dir = out.join("train");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let cfg = crate::train::config::TrainConfig::load(&file)?;
    let summary = crate::train::run::run(&cfg, &crate::train::run::Resume::No)?;
    let text = std::fs::read_to_string(run_dir.join("log.jsonl"))?;
    let first: Vec<f64> = text
        .lines()
        .take(10)
        .filter_map(|l| serde_json::from_str::<crate::train::observe::LogLine>(l).ok())
        .map(|l| l.loss)
        .collect();
    Ok((summary, first.iter().sum::<f64>() / first.len().max(1) as f64))
}

/// Caches the shards' T5 embeddings and VAE moments with tiny random encoders written to `out/models`.
fn cache_features(
    shards: &Path,
    out: &Path,
) -> anyhow::Result<(crate::latents::cache::CacheRunStats, crate::latents::cache::CacheRunStats)> {
    use crate::latents::cache::{t5_stage, vae_stage, FeatureDType, T5CacheConfig, VaeCacheConfig};
    use crate::models::{init_tiny, ModelKind};
    let models = out.join("models");
    init_tiny(ModelKind::T5, &models, false, 0)?;
    init_tiny(ModelKind::Vae, &models, false, 0)?;
    std::fs::create_dir_all(models.join("tokenizer"))?;
    crate::shards::write_atomic(&models.join("tokenizer/tokenizer.json"), DEMO_TOKENIZER)?;
    let run = |name: &str| crate::latents::cache::RunOptions {
        overwrite: true,
        progress: false,
        ..crate::latents::cache::RunOptions::new(shards, out.join("latents").join(name))
    };
    let dev = candle_core::Device::Cpu;
    let t5 = T5CacheConfig {
        model: models.clone(),
        max_tokens: crate::latents::t5::MAX_TOKENS,
        cleaning: Default::default(),
        dtype: FeatureDType::Bf16,
        batch_size: 32,
    };
    let vae = VaeCacheConfig { model: models, resolution: 256, multiscale: true };
    Ok((t5_stage::run(&t5, &run("t5"), &dev)?, vae_stage::run(&vae, &run("vae-256ms"), &dev)?))
}

/// A human summary of a shard directory: one line per shard, then one per sample.
pub fn summarize(dir: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    for shard in crate::shards::done_shards(dir)? {
        let name = crate::shards::shard_name(shard);
        let recs = read_records(&dir.join(format!("{name}.parquet")))?;
        let tar = std::fs::metadata(dir.join(format!("{name}.tar"))).map(|m| m.len()).unwrap_or(0);
        s.push_str(&format!("  {name}.tar  {tar:>9} bytes  {} rows\n", recs.len()));
        for r in recs {
            let detail = match r.status() {
                Status::Success => format!(
                    "{}x{} from {}x{}",
                    r.width.unwrap_or(0),
                    r.height.unwrap_or(0),
                    r.original_width.unwrap_or(0),
                    r.original_height.unwrap_or(0)
                ),
                _ => r.error_message.clone().unwrap_or_default(),
            };
            s.push_str(&format!("    {}  {:<18} {:<24} {}\n", r.key, r.status().as_str(), r.source, detail));
        }
    }
    Ok(s)
}
