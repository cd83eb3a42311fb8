//! The `pixforge` command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pixforge::image::ImageOptions;
use pixforge::ingest::{download::DownloadOptions, laion::LaionOptions};
use pixforge::ingest::{CurationOptions, IngestConfig, RunOptions, SourceKind};
use pixforge::shards::Worker;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pixforge", version, about = "Raw image collections to a PixArt-α training set", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `pixforge=debug`.
    #[arg(long, global = true, default_value = "warn", env = "PIXFORGE_LOG")]
    log: String,
    /// Print what a command did as JSON (the figures its stats files hold) instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Turn LAION metadata, SA-1B tars, image folders or WebDataset shards into curated WebDataset shards.
    Ingest(Box<IngestArgs>),
    /// Run the pipeline on the bundled photos (no downloads) and print what was written.
    Demo {
        /// Output directory.
        #[arg(long, default_value = "pixforge-demo")]
        out: PathBuf,
    },
    /// Run a pipeline file: its stages in order (tiny models, ingest, score, repeats, filter, dedup, balance,
    /// caption, density, cache t5/vae, export, train, sample), each configured by its section, each
    /// resumable; prints what each stage did and every artifact's path. `pipelines/*.toml` are examples.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The output folder (instead of the file's `out`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace what an earlier run made with another configuration (the ingest's shards, every
        /// shard stage's folder) instead of refusing it, as each section's `overwrite = true` does.
        #[arg(long)]
        overwrite: bool,
        /// Hide the progress bars.
        #[arg(long)]
        no_progress: bool,
        /// This worker's share of the shard stages, I/N (default: SLURM_ARRAY_TASK_ID /
        /// SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with PIXFORGE_WORKER_COUNT, else 0/1); with
        /// N > 1, the whole-dataset stages (selections, density, export, train, sample) are left for a
        /// final run with one worker.
        #[arg(long)]
        worker: Option<Worker>,
    },
    /// Look at a dataset in a web browser: a read-only local server over a dataset folder (the grid
    /// of samples with status, reason, size and bucket; filters and sorts; each sample's alt-text and
    /// dense captions with their nouns marked, QC flags and scores; failure reasons; the density
    /// report), or with `--static OUT` the same pages for a selection written as files.
    Browse(Box<pixforge::browse::BrowseConfig>),
    /// What a dataset folder holds (a shard folder or a pipeline's out, local or in a store): rows by
    /// status, the top failure reasons with example keys and messages, the folders made from it, and
    /// the shards that cannot be read.
    Status {
        /// The dataset folder.
        dataset: PathBuf,
        /// Failure reasons listed.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Examples per reason.
        #[arg(long, default_value_t = 3)]
        examples: usize,
    },
    /// Measurements for docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Tiny models in the real layouts, and forward passes for parity checks.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Concept density (PixArt-α Table 1) of caption sets, compared side by side; and the tagger behind it.
    Density(Box<DensityArgs>),
    /// Generate images from prompts with a PixArt transformer, the T5 encoder and the VAE.
    Sample(Box<SampleArgs>),
    /// Re-caption every image of a shard dataset with a LLaVA-style model, locally (candle) or through an
    /// OpenAI-compatible server: one caption parquet per shard, with provenance and QC flags.
    Caption {
        #[command(flatten)]
        cfg: Box<pixforge::caption::CaptionConfig>,
        #[command(flatten)]
        run: CacheRunArgs,
    },
    /// Cache T5 caption embeddings and VAE latents of a shard dataset, for training.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Train PixArt-α on T5 and VAE caches, as a TOML file configures it (docs/train.md lists every field).
    Train {
        /// The run's configuration (pipelines/train-256.toml is an example).
        #[arg(long)]
        config: PathBuf,
        /// Continue the run in its output_dir from its newest checkpoint, or from the checkpoint folder given.
        #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "CHECKPOINT")]
        resume: Option<String>,
    },
    /// Write shards and their feature caches in another trainer's layout.
    #[command(subcommand)]
    Export(ExportCmd),
    /// Curation scores: CLIP image embeddings over shards, and aesthetic or ONNX heads on them.
    #[command(subcommand)]
    Score(ScoreCmd),
    /// Concept-balanced selection: captions chosen greedily to cover the most distinct nouns, each noun
    /// capped; prints Table-1 metrics before and after and writes the kept keys as a selection.
    Balance {
        /// A shard dataset (its parquet `caption` column).
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        cfg: pixforge::score::balance::BalanceConfig,
        /// The selection (parquet of keys).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Semantic de-duplication (SemDeDup) over CLIP embeddings: k-means, then near-duplicates removed
    /// within each cluster; writes the kept keys as a selection and the groups as JSON. With
    /// `--phash DATASET`: repeats across all the workers' shards of an ingested dataset by the pHash
    /// ingest recorded, each with its first copy's key (same name with .repeats.parquet).
    Dedup {
        /// Folders written by `pixforge score clip`.
        #[arg(long = "embeddings", required_unless_present = "phash", conflicts_with = "phash")]
        embeddings: Vec<PathBuf>,
        /// An ingested dataset (the folder of every worker's shards): find repeats by pHash instead.
        #[arg(long, value_name = "DATASET")]
        phash: Option<PathBuf>,
        #[command(flatten)]
        cfg: pixforge::score::dedup::DedupConfig,
        #[command(flatten)]
        repeats: pixforge::score::repeats::RepeatsConfig,
        /// The selection of kept keys (parquet); the groups go to the same name with .groups.json.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Select sample keys by score columns (thresholds, then top fractions), DataComp style; the
    /// trainer takes the selection (`data.selection`).
    Filter {
        /// Folders of `*.scores.parquet` (pixforge score clip outputs), joined by key.
        #[arg(long = "scores", required = true)]
        scores: Vec<PathBuf>,
        #[command(flatten)]
        cfg: pixforge::score::filter::FilterConfig,
        /// The selection: a parquet of the kept keys with their scores.
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ScoreCmd {
    /// CLIP image embeddings of every image of a shard dataset (an ONNX vision tower, run by ONNX
    /// Runtime) and the scores of heads over them: per shard, embeddings (f16 safetensors), an index,
    /// and a parquet of scores by key.
    Clip {
        #[command(flatten)]
        cfg: pixforge::score::stage::ScoreConfig,
        #[command(flatten)]
        run: CacheRunArgs,
    },
    /// The same per-shard embeddings and scores as `score clip`, from LAION's precomputed `img_emb`
    /// files matched to the shards' samples by key (no tower run).
    LaionEmb {
        #[command(flatten)]
        cfg: pixforge::score::stage::LaionEmbeddings,
        #[command(flatten)]
        run: CacheRunArgs,
    },
    /// LAION aesthetic scores of CLIP ViT-L/14 image embeddings (`.npy`, `[N, 768]` or `[768]`, f32 or
    /// f16, e.g. LAION's `img_emb/*.npy`), printed as JSON (one array per file).
    Aesthetic {
        /// The head: a released checkpoint (`sa_0_4_vit_l_14_linear.pth` = V1,
        /// `sac+logos+ava1-l14-linearMSE.pth` = V2), safetensors with its keys, or an `.onnx` export
        /// (run by ONNX Runtime: tools/install-onnxruntime.sh or ORT_DYLIB_PATH).
        #[arg(long)]
        head: PathBuf,
        /// Embedding files.
        #[arg(required = true)]
        embeddings: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ExportCmd {
    /// The official PixArt-α code's layout (InternalData / InternalDataMS): InternImgs/, data_info.json,
    /// caption_feature_wmask/*.npz, img_vae_features_*/*.npy.
    PixartOfficial {
        /// The source shards the caches were made from.
        #[arg(long)]
        shards: PathBuf,
        /// The T5 cache (pixforge cache t5).
        #[arg(long)]
        t5: PathBuf,
        /// The VAE cache (pixforge cache vae).
        #[arg(long)]
        vae: PathBuf,
        /// The caption folder a T5 cache of re-captions was made from (`cache t5 --captions`; default:
        /// the `captions` folder beside the shard folder); its first caption of each sample becomes the
        /// prompt in data_info.json.
        #[arg(long)]
        captions: Option<PathBuf>,
        /// Output root (InternData/ and InternImgs/ are written under it).
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        cfg: pixforge::latents::export::ExportConfig,
    },
    /// A diffusers transformer folder with LoRA / DoRA adapters (peft's format) merged into its
    /// weights, as peft's `merge_and_unload` does.
    MergeLora {
        /// The transformer: a diffusers folder (or a pipeline with `transformer/`), or an official
        /// checkpoint (.pth / .safetensors).
        #[arg(long)]
        transformer: PathBuf,
        /// An adapter folder (adapter_config.json + adapter_model.safetensors), DIR or DIR:SCALE
        /// (repeatable; merged in order).
        #[arg(long = "lora", required = true, value_parser = pixforge::train::lora::parse_lora_arg)]
        loras: Vec<(PathBuf, f64)>,
        /// Attention heads of an official checkpoint without a config.json beside it (default 16,
        /// PixArt-XL/2's); pixforge's checkpoints carry theirs.
        #[arg(long)]
        heads: Option<usize>,
        /// Latent size such a checkpoint's positions are laid out for (512 px: 64, the default; 1024
        /// px: 128).
        #[arg(long)]
        sample_size: Option<usize>,
        /// The merged transformer's folder (config.json + diffusion_pytorch_model.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// T5 embeddings of every caption (each sample's .txt), unpadded, one safetensors file per shard.
    T5 {
        #[command(flatten)]
        cfg: pixforge::latents::cache::T5CacheConfig,
        #[command(flatten)]
        run: CacheRunArgs,
    },
    /// VAE posterior mean and std of every image (f16), per shard and aspect-ratio bucket.
    Vae {
        #[command(flatten)]
        cfg: pixforge::latents::cache::VaeCacheConfig,
        #[command(flatten)]
        run: CacheRunArgs,
    },
}

#[derive(Args)]
struct CacheRunArgs {
    /// Source dataset: shards with _stats.json done markers (an ingest output).
    #[arg(long)]
    input: PathBuf,
    /// Cache directory.
    #[arg(long, short)]
    out: PathBuf,
    /// This worker's share, I/N: owns shards with shard % N == I. Default: SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with PIXFORGE_WORKER_COUNT, else 0/1.
    #[arg(long)]
    worker: Option<Worker>,
    #[command(flatten)]
    stage: pixforge::shards::stage::StageRun,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl CacheRunArgs {
    fn options(&self) -> anyhow::Result<pixforge::shards::stage::StageOptions> {
        let worker = match self.worker {
            Some(w) => w,
            None => Worker::from_env().map_err(anyhow::Error::msg)?,
        };
        let opts = pixforge::shards::stage::StageOptions {
            worker,
            progress: !self.no_progress,
            ..pixforge::shards::stage::StageOptions::new(&self.input, &self.out)
        };
        self.stage.apply(opts).map_err(|e| anyhow::anyhow!("--{e:#}"))
    }
}

/// Prints a cache run's stats as JSON; fails when a shard could not be cached.
fn finish_cache(
    stats: &pixforge::shards::stage::StageRunStats,
    what: &str,
    out: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    report(json, stats, || stats.text(what, out))?;
    if !stats.shards_failed.is_empty() {
        anyhow::bail!("{} shard(s) could not be cached (listed above); rerun to retry them", stats.shards_failed.len());
    }
    Ok(())
}

#[derive(Args)]
struct SampleArgs {
    /// A diffusers pipeline folder (transformer/, text_encoder/, tokenizer/, vae/); the three options
    /// below override its parts.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Transformer: a diffusers folder, or an official checkpoint (.pth / .safetensors).
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// T5 folder (config.json, model.safetensors[.index.json], tokenizer.json).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// VAE folder (diffusers AutoencoderKL).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Attention heads of an official checkpoint without a config.json beside it (default 16,
    /// PixArt-XL/2's); pixforge's checkpoints carry theirs.
    #[arg(long)]
    heads: Option<usize>,
    /// Latent size such a checkpoint's positions are laid out for (512 px: 64, the default; 1024 px:
    /// 128).
    #[arg(long)]
    sample_size: Option<usize>,
    /// A LoRA / DoRA adapter in peft's format (adapter_config.json + adapter_model.safetensors),
    /// DIR or DIR:SCALE, merged into the transformer (repeatable; in order).
    #[arg(long = "lora", value_parser = pixforge::train::lora::parse_lora_arg)]
    loras: Vec<(PathBuf, f64)>,
    /// A prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// A text file of prompts, one per line.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[command(flatten)]
    config: pixforge::train::generate::SampleConfig,
    /// Initial noise from a safetensors file (tensor "noise" [N or 1, 4, h, w]) instead of the seed.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output folder (NNNN.png + NNNN.json per prompt).
    #[arg(long, default_value = "pixforge-samples")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Write a tiny randomly initialised model (official initialisation) in the real layouts.
    InitTiny {
        /// Model kind.
        #[arg(long, value_enum)]
        kind: pixforge::models::ModelKind,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// With PixArtMS micro-condition embedders.
        #[arg(long)]
        micro_conditions: bool,
        /// Seed of the initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Run a model (kind from its config.json) on the tensors of a safetensors file; write its outputs.
    Forward {
        /// Model folder (or a folder with `transformer/`).
        #[arg(long)]
        model: PathBuf,
        /// Inputs. PixArt: latents [B,4,H,W], timestep [B], caption [B,L,C], mask [B,L], optional
        /// resolution [B,2] and aspect_ratio [B,1] → output. T5 encoder: input_ids [B,L] →
        /// last_hidden_state. AutoencoderKL: pixels [B,3,H,W] in [-1,1] → mean, std. LLaVA: input_ids
        /// [B,L] (image tokens expanded) and pixel_values [B,3,S,S] → logits [B,V] of the last position.
        #[arg(long)]
        inputs: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// A LoRA / DoRA adapter (peft's format) merged into a PixArt transformer first, DIR or
        /// DIR:SCALE (repeatable).
        #[arg(long = "lora", value_parser = pixforge::train::lora::parse_lora_arg)]
        loras: Vec<(PathBuf, f64)>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DensityArgs {
    #[command(subcommand)]
    cmd: Option<DensityCmd>,
    #[command(flatten)]
    report: ReportArgs,
}

/// `pixforge density [PATH…] [--input NAME=PATH…]`: the report.
#[derive(Args)]
struct ReportArgs {
    /// Caption sets, each named after its file: a folder of shard parquet or .tar, .parquet, .jsonl, .json,
    /// .txt (optionally .gz).
    paths: Vec<PathBuf>,
    /// A named caption set, NAME=PATH (repeat to compare sets side by side).
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<pixforge::density::input::NamedInput>,
    #[command(flatten)]
    config: pixforge::density::report::DensityConfig,
    /// Output folder for report.html, report.json and report.md.
    #[arg(long, default_value = "density-report")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand)]
enum DensityCmd {
    /// Train the averaged-perceptron tagger on a CoNLL-U treebank (XPOS tags).
    TrainTagger {
        /// Training treebank (UD English-EWT train).
        #[arg(long)]
        train: PathBuf,
        /// Treebank to report accuracy on after training.
        #[arg(long)]
        dev: Option<PathBuf>,
        /// Where to write the model.
        #[arg(long)]
        out: PathBuf,
        /// Training passes.
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        /// Share of sentences added lower-cased, and another share added Title-Cased.
        #[arg(long, default_value_t = 0.25)]
        augment_share: f64,
        /// Averaged weights below this magnitude are dropped.
        #[arg(long, default_value_t = 0.05)]
        min_weight: f32,
        /// Seed of the shuffling and of the choice of augmented sentences.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Tag accuracy, noun precision/recall/F1 and tokens/s of a model on a CoNLL-U treebank.
    EvalTagger {
        /// Gold treebank.
        #[arg(long)]
        conllu: PathBuf,
        /// A model file (default: the embedded model, trained on UD English-EWT).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Title-Case every word first (robustness to LAION-style alt text).
        #[arg(long)]
        title_case: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Single-core time of each phase of the image step (decode, resize, encode, hashes) over a directory.
    ImageOps {
        /// Directory of images.
        dir: PathBuf,
        #[command(flatten)]
        image: ImageOptions,
    },
    /// One PixArt transformer training step (depth 4, hidden 384, 32x32 latents, batch 4), median of N.
    PixartStep {
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Transformer blocks.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// The autograd path instead of the fused CPU path.
        #[arg(long)]
        autograd: bool,
        /// On the autograd path, checkpoint the blocks in segments of N (0: off).
        #[arg(long, default_value_t = 0)]
        checkpoint: usize,
    },
    /// Encoder throughput of the feature caches: VAE at 256/512 px and T5 over a prompt list (bench/latents.sh).
    Latents {
        /// Folder with vae/ (diffusers AutoencoderKL) and t5/ (T5 encoder).
        #[arg(long)]
        models: PathBuf,
        /// Prompts, one per line.
        #[arg(long)]
        prompts: PathBuf,
        /// T5 tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Timed rounds (best is reported), after one warm-up.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Measure only this encoder (t5 or vae); the other's figures are reported as 0.
        #[arg(long)]
        only: Option<String>,
    },
    /// A loopback OpenAI-compatible server answering every chat completion after a fixed latency (the
    /// captioning client's benchmark, bench/caption.sh). Prints its address, serves until killed.
    VlmServer {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: String,
        /// Milliseconds before each answer.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
    },
    /// Tokens per second of the local LLaVA backend: greedy generation on one image, CPU, f32.
    CaptionLocal {
        /// A llava-hf model folder.
        #[arg(long)]
        model: PathBuf,
        /// The image.
        #[arg(long)]
        image: PathBuf,
        /// Prompts per generation.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// New tokens per prompt (end-of-sequence ignored).
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        /// Timed rounds (best is reported), after one warm-up.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Write the hostile-input corpus of the bomb benchmark (bench/bombs.sh): images whose metadata
    /// inflates or whose header lies, gzipped metadata and caption lists with one enormous row, each
    /// kind beside normal files, as folders and as WebDataset shards.
    BombCorpus {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// What each inflating bomb inflates to, in MiB.
        #[arg(long, default_value_t = 1024)]
        inflated_mib: u64,
    },
    /// LAION-style metadata of N synthetic rows, as parquet (bench/rows.sh).
    LaionRows {
        /// Output parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Rows.
        #[arg(long)]
        rows: usize,
        /// Where the URLs point (scheme, host and port).
        #[arg(long, default_value = "http://127.0.0.1:9")]
        base: String,
    },
    /// Write a synthetic ingested dataset for the browser benchmark (bench/browse.sh): shard parquets
    /// with statuses, reasons, alt-text, sizes and an `aesthetic` score, and tars of 16×16 thumbnails.
    BrowseDataset {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Rows.
        #[arg(long)]
        count: usize,
        /// Shards they are spread over.
        #[arg(long, default_value_t = 100)]
        shards: usize,
        /// Leave the tars out (parquet and stats only).
        #[arg(long)]
        no_thumbnails: bool,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve a dataset in process and time the browser's pages over loopback HTTP (bench/browse.sh);
    /// prints JSON.
    BrowsePages {
        /// The dataset folder.
        #[arg(long)]
        dataset: PathBuf,
        /// The numeric column to sort by.
        #[arg(long, default_value = "aesthetic")]
        sort: String,
        /// The noun to filter by.
        #[arg(long, default_value = "dog")]
        noun: String,
    },
    /// Write a synthetic ingested dataset for the repeat benchmark (bench/repeats.sh): shard
    /// parquets of random pHashes with 5% planted repeats within `--distance` bits.
    RepeatsDataset {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Samples.
        #[arg(long)]
        count: usize,
        /// Shards they are spread over.
        #[arg(long, default_value_t = 1000)]
        shards: usize,
        /// Largest distance of a planted repeat.
        #[arg(long, default_value_t = 4)]
        distance: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Time the in-memory repeat search over synthetic pHashes (5% planted repeats): the
    /// whole-dataset search (`first_copies`) or ingest's per-worker index (`phash_index`).
    RepeatsSearch {
        /// `first_copies` or `phash_index`.
        #[arg(long)]
        method: String,
        /// Hashes.
        #[arg(long)]
        count: usize,
        /// Largest Hamming distance matched (and planted).
        #[arg(long, default_value_t = 4)]
        distance: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write synthetic captions (alt text and dense descriptions), one per line, for the density benchmark.
    SynthCaptions {
        /// How many.
        #[arg(long)]
        count: u64,
        /// Output text file.
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Args)]
struct IngestArgs {
    /// Kind of input.
    #[arg(value_enum)]
    source: SourceKind,
    /// Input files or directories (laion: metadata files; sa1b: tars or extracted folders; folder: one
    /// directory; webdataset: tars or directories of tars; hub: parquet files or directories of them).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output dataset directory.
    #[arg(long, short)]
    out: PathBuf,
    /// This worker's share, I/N: owns shards with shard % N == I. Default: SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with PIXFORGE_WORKER_COUNT, else 0/1.
    #[arg(long)]
    worker: Option<Worker>,
    /// Replace a dataset written earlier with a different configuration.
    #[arg(long)]
    overwrite: bool,
    /// Re-attempt only the failed_to_download rows of done shards.
    #[arg(long)]
    retry_failed: bool,
    /// Add these inputs to the dataset in --out (written with the same configuration) as new shards
    /// numbered after its own; the manifest records which inputs made which shards.
    #[arg(long, conflicts_with = "overwrite")]
    append: bool,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten, next_help_heading = "LAION metadata (laion source)")]
    laion: LaionOptions,
    #[command(flatten, next_help_heading = "Parquet with images inside (hub source)")]
    hub: pixforge::ingest::hub::HubOptions,
    #[command(flatten, next_help_heading = "Images")]
    image: ImageOptions,
    #[command(flatten, next_help_heading = "Shards and curation")]
    curation: CurationOptions,
    #[command(flatten, next_help_heading = "Downloader (laion source)")]
    download: DownloadOptions,
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the program quietly.
/// Prints `value` as JSON with `--json`, else the human summary `text` gives.
fn report(json: bool, value: &impl serde::Serialize, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    emit(&if json { format!("{}\n", serde_json::to_string_pretty(value)?) } else { text() });
    Ok(())
}

/// The transformer shape the `--heads` / `--sample-size` flags give, if either is set (the other at
/// PixArt-XL/2's 512 px value).
fn shape_flags(heads: Option<usize>, sample_size: Option<usize>) -> Option<(usize, usize)> {
    (heads.is_some() || sample_size.is_some()).then(|| (heads.unwrap_or(16), sample_size.unwrap_or(64)))
}

fn emit(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error writing to stdout: {e}");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A user error is its message and causes; the stack trace only with a debug log (it is for
    // reporting a bug), even where RUST_BACKTRACE is set.
    let debug = cli.log.contains("debug") || cli.log.contains("trace");
    if !debug {
        // Set before any thread starts (anyhow reads it at its first error).
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if debug => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
            if !causes.is_empty() {
                eprintln!("\nCaused by:");
                for (i, c) in causes.iter().enumerate() {
                    eprintln!("    {i}: {c}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    pixforge::device::configure_cpu_threads();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let json = cli.json;
    match cli.cmd {
        Cmd::Ingest(a) => {
            let a = *a;
            let worker = match a.worker {
                Some(w) => w,
                None => Worker::from_env().map_err(anyhow::Error::msg)?,
            };
            let cfg = IngestConfig {
                source: a.source,
                inputs: a.inputs,
                laion: a.laion,
                hub: a.hub,
                image: a.image,
                curation: a.curation,
                download: a.download,
            };
            let opts = RunOptions {
                out: a.out.clone(),
                worker,
                overwrite: a.overwrite,
                retry_failed: a.retry_failed,
                append: a.append,
                progress: !a.no_progress,
            };
            let stats =
                pixforge::ingest::run(&cfg, &opts).with_context(|| format!("ingest into {}", a.out.display()))?;
            emit(&pixforge::ingest::summary(&stats));
            if !stats.shards_failed.is_empty() {
                anyhow::bail!(
                    "{} shard(s) could not be written (listed above); rerun to retry them",
                    stats.shards_failed.len()
                );
            }
        }
        Cmd::Bench(BenchCmd::Latents { models, prompts, tokenizer, rounds, only }) => {
            let t = pixforge::bench::latents(&models, &prompts, &tokenizer, rounds, only.as_deref())?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::ImageOps { dir, image }) => {
            let t = pixforge::bench::image_phases(&dir, &image)?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::PixartStep { iters, layers, autograd, checkpoint }) => {
            use pixforge::models::StepPath;
            let path = match (autograd, checkpoint) {
                (_, k) if k > 0 => StepPath::Checkpointed(k),
                (true, _) => StepPath::Autograd,
                (false, _) => StepPath::Fused,
            };
            let t = pixforge::models::bench_pixart_step(iters, layers, path)?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::VlmServer { addr, latency_ms }) => {
            pixforge::caption::bench::fixed_latency_server(&addr, latency_ms)?;
        }
        Cmd::Bench(BenchCmd::CaptionLocal { model, image, batch, tokens, rounds }) => {
            let t = pixforge::caption::bench::local_tokens_per_second(&model, &image, batch, tokens, rounds)?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::BombCorpus { out, inflated_mib }) => {
            let kinds = pixforge::bench::bombs::write_corpus(&out, inflated_mib << 20)?;
            emit(&format!("wrote the bomb corpus ({}) to {}\n", kinds.join(", "), out.display()));
        }
        Cmd::Bench(BenchCmd::LaionRows { out, rows, base }) => {
            pixforge::bench::rows::write_laion(&out, rows, &base)?;
            emit(&format!("wrote {rows} rows to {}\n", out.display()));
        }
        Cmd::Bench(BenchCmd::BrowseDataset { out, count, shards, no_thumbnails, seed }) => {
            let n = pixforge::bench::browse::write_dataset(&out, count, shards, !no_thumbnails, seed)?;
            emit(&format!("{}\n", serde_json::json!({ "rows": n, "shards": shards })));
        }
        Cmd::Bench(BenchCmd::BrowsePages { dataset, sort, noun }) => {
            let t = pixforge::bench::browse::time_pages(&dataset, &sort, &noun)?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::RepeatsDataset { out, count, shards, distance, seed }) => {
            let planted = pixforge::bench::repeats::write_dataset(&out, count, shards, distance, seed)?;
            emit(&format!("{}\n", serde_json::json!({ "count": count, "shards": shards, "planted": planted })));
        }
        Cmd::Bench(BenchCmd::RepeatsSearch { method, count, distance, seed }) => {
            let t = pixforge::bench::repeats::time_search(&method, count, distance, seed)?;
            emit(&format!("{}\n", serde_json::to_string(&t)?));
        }
        Cmd::Bench(BenchCmd::SynthCaptions { count, out, seed }) => {
            pixforge::density::synth::write_captions(&out, count, seed)?;
            emit(&format!("wrote {count} captions to {}\n", out.display()));
        }
        Cmd::Status { dataset, top, examples } => {
            let ds = pixforge::browse::dataset::Dataset::open(&dataset, &Default::default())?;
            let st = pixforge::browse::status::status(&ds, top, examples);
            report(json, &st, || st.text())?;
        }
        Cmd::Browse(cfg) => match &cfg.static_out {
            Some(out) => {
                let ds = pixforge::browse::open(&cfg)?;
                let r = pixforge::browse::write_static(&ds, &cfg, out)?;
                emit(&format!(
                    "wrote {} grid pages, {} sample pages and {} images of {} to {} (open {}/index.html)\n",
                    r.pages,
                    r.samples,
                    r.images,
                    cfg.dataset.display(),
                    out.display(),
                    out.display()
                ));
            }
            None => pixforge::browse::serve(&cfg, |ds, addr| {
                let problems = ds.problems();
                let mut text = format!(
                    "browsing {} ({} rows in {} shards of {} shard folders) at http://{addr}/ (read-only; Ctrl-C stops)\n",
                    ds.name,
                    ds.total_rows(),
                    ds.parts.iter().map(|p| p.shards.len()).sum::<usize>(),
                    ds.parts.len()
                );
                for (part, shard, why) in problems {
                    text.push_str(&format!("  shard {part}/{shard} cannot be shown: {why}\n"));
                }
                emit(&text);
            })?,
        },
        Cmd::Density(d) if matches!(d.cmd, Some(DensityCmd::TrainTagger { .. })) => {
            let Some(DensityCmd::TrainTagger { train, dev, out, iterations, augment_share, min_weight, seed }) = d.cmd
            else {
                unreachable!()
            };
            let o = pixforge::density::train::TrainOptions { iterations, augment_share, seed, min_weight };
            emit(&pixforge::density::train::train_file(&train, dev.as_deref(), &out, &o)?);
        }
        Cmd::Density(d) if matches!(d.cmd, Some(DensityCmd::EvalTagger { .. })) => {
            let Some(DensityCmd::EvalTagger { conllu: path, model, title_case, json }) = d.cmd else { unreachable!() };
            let e = pixforge::density::train::evaluate_file(&path, model.as_deref(), title_case)?;
            emit(&if json { format!("{}\n", serde_json::to_string(&e)?) } else { e.text() });
        }
        Cmd::Density(d) => {
            let r = d.report;
            let mut inputs: Vec<pixforge::density::input::NamedInput> =
                r.paths.iter().map(|p| p.display().to_string().parse().expect("a path always parses")).collect();
            inputs.extend(r.inputs);
            let report = pixforge::density::report::run(&inputs, &r.config, !r.no_progress, &r.out)?;
            let mut text = pixforge::density::report::markdown(&report);
            text.push_str(&format!("\nwritten: {}/report.{{html,json,md}}\n", r.out.display()));
            emit(&text);
        }
        Cmd::Models(ModelsCmd::InitTiny { kind, out, micro_conditions, seed }) => {
            pixforge::models::init_tiny(kind, &out, micro_conditions, seed)?;
            emit(&format!("wrote a tiny {kind:?} model to {}\n", out.display()));
        }
        Cmd::Models(ModelsCmd::Forward { model, inputs, out, loras }) => {
            for (name, dims) in pixforge::models::forward(&model, &inputs, &out, &loras)? {
                emit(&format!("{name} {dims:?} written to {}\n", out.display()));
            }
        }
        Cmd::Sample(a) => {
            let part = |own: &Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
                own.clone().or_else(|| a.pipeline.clone()).ok_or_else(|| {
                    anyhow::anyhow!("--{name}: expected a folder (or --pipeline with the whole diffusers pipeline)")
                })
            };
            let mut prompts = a.prompt.clone();
            if let Some(f) = &a.prompts {
                let text = std::fs::read_to_string(f).with_context(|| format!("--prompts {}", f.display()))?;
                prompts.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
            }
            if prompts.is_empty() {
                anyhow::bail!("expected at least one --prompt or a --prompts file");
            }
            let o = pixforge::train::generate::SampleOptions {
                transformer: part(&a.transformer, "transformer")?,
                official_shape: shape_flags(a.heads, a.sample_size),
                t5: part(&a.t5, "t5")?,
                vae: part(&a.vae, "vae")?,
                noise: a.noise.clone(),
                loras: a.loras.clone(),
                config: a.config.clone(),
            };
            let device = pixforge::device::device(&a.device)?;
            let paths = pixforge::train::generate::run(&o, &prompts, &a.out, &device)?;
            for p in paths {
                emit(&format!("{}\n", p.display()));
            }
        }
        Cmd::Cache(CacheCmd::T5 { cfg, run }) => {
            let device = pixforge::device::device(&run.stage.device)?;
            let stats = pixforge::latents::cache::t5_stage::run(&cfg, &run.options()?, &device)
                .with_context(|| format!("cache t5 into {}", run.out.display()))?;
            finish_cache(&stats, "cache t5", &run.out, json)?;
        }
        Cmd::Cache(CacheCmd::Vae { cfg, run }) => {
            let device = pixforge::device::device(&run.stage.device)?;
            let stats = pixforge::latents::cache::vae_stage::run(&cfg, &run.options()?, &device)
                .with_context(|| format!("cache vae into {}", run.out.display()))?;
            finish_cache(&stats, "cache vae", &run.out, json)?;
        }
        Cmd::Export(ExportCmd::MergeLora { transformer, loras, heads, sample_size, out }) => {
            let model = pixforge::train::model::PixArt::load_any(
                &transformer,
                shape_flags(heads, sample_size),
                &candle_core::Device::Cpu,
            )?;
            let merged = pixforge::train::lora::with_adapters(model, &loras, &candle_core::Device::Cpu)?;
            merged.save_diffusers(&out)?;
            emit(&format!("merged {} adapter(s) into {}\n", loras.len(), out.display()));
        }
        Cmd::Export(ExportCmd::PixartOfficial { shards, t5, vae, captions, out, cfg }) => {
            let o = pixforge::latents::export::ExportOptions { shards, t5, vae, captions, out, config: cfg };
            let stats = pixforge::latents::export::export_official(&o)
                .with_context(|| format!("export pixart-official into {}", o.out.display()))?;
            report(json, &stats, || stats.text())?;
        }
        Cmd::Train { config, resume } => {
            let cfg = pixforge::train::config::TrainConfig::load(&config)?;
            let resume = match resume.as_deref() {
                None => pixforge::train::run::Resume::No,
                Some("latest") => pixforge::train::run::Resume::Latest,
                Some(dir) => pixforge::train::run::Resume::From(PathBuf::from(dir)),
            };
            let summary = pixforge::train::run::run(&cfg, &resume)
                .with_context(|| format!("train {} into {}", config.display(), cfg.output_dir.display()))?;
            report(json, &summary, || summary.text())?;
        }
        Cmd::Balance { input, cfg, out } => {
            emit(&pixforge::score::balance::run(&input, &cfg, &out)?.text());
        }
        Cmd::Dedup { embeddings, phash, cfg, repeats, out } => match phash {
            Some(dataset) => emit(&pixforge::score::repeats::run(&dataset, &repeats, &out)?.text()),
            None => emit(&pixforge::score::dedup::run(&embeddings, &cfg, &out)?.text()),
        },
        Cmd::Filter { scores, cfg, out } => {
            let r = pixforge::score::filter::run(&scores, &cfg.rules()?, &out)?;
            report(json, &r, || r.text())?;
        }
        Cmd::Score(ScoreCmd::Clip { cfg, run }) => {
            let cuda = pixforge::device::DeviceName::parse(&run.stage.device)?.cuda_ordinal().map(|n| n as i32);
            let stats = pixforge::score::stage::run(&cfg, &run.options()?, cuda)
                .with_context(|| format!("score clip into {}", run.out.display()))?;
            finish_cache(&stats, "score clip", &run.out, json)?;
        }
        Cmd::Caption { mut cfg, run } => {
            cfg.device = run.stage.device.clone();
            let stats = pixforge::caption::run(&cfg, &run.options()?)
                .with_context(|| format!("caption into {}", run.out.display()))?;
            let summary = pixforge::caption::summary(&run.out, &stats)?;
            report(json, &summary, || pixforge::caption::summary_text(&run.out, &stats, &summary))?;
            if !stats.shards_failed.is_empty() {
                anyhow::bail!(
                    "{} shard(s) could not be captioned (listed above); rerun to retry them",
                    stats.shards_failed.len()
                );
            }
        }
        Cmd::Score(ScoreCmd::LaionEmb { cfg, run }) => {
            let stats = pixforge::score::stage::run_laion(&cfg, &run.options()?)
                .with_context(|| format!("score laion-emb into {}", run.out.display()))?;
            finish_cache(&stats, "score laion-emb", &run.out, json)?;
        }
        Cmd::Score(ScoreCmd::Aesthetic { head, embeddings }) => {
            let scores = pixforge::score::aesthetic::score_npy_files(&head, &embeddings)?;
            emit(&format!("{}\n", serde_json::to_string_pretty(&scores)?));
        }
        Cmd::Run { pipeline, out, overwrite, no_progress, worker } => {
            let mut p = pixforge::pipeline::Pipeline::load(&pipeline, out.as_deref())?;
            if overwrite {
                p = p.overwriting();
            }
            let worker = match worker {
                Some(w) => w,
                None => Worker::from_env().map_err(anyhow::Error::msg)?,
            };
            let report = pixforge::pipeline::run(&p, !no_progress, worker)?;
            emit(&report.text());
        }
        Cmd::Demo { out } => {
            let report = pixforge::demo::run(&out).context("demo")?;
            emit(&report.text(&out)?);
        }
    }
    Ok(())
}
