//! `pixforge caption`: one caption parquet per source shard (`{shard}.captions.parquet`, the same
//! shard ids and keys), with provenance on every row, QC flags, per-shard stats and a journal that
//! keeps each finished caption of a shard in progress, so a killed run loses none of them.
//!
//! The shard loop, manifest fingerprint, `--worker I/N` split and done markers are the feature caches'
//! ([`crate::latents::cache::run_shards`]); `{shard}.index.json` holds each sample's status.

use super::llava::{ImageMode, Job, LocalCaptioner, Sampling, DEFAULT_TEMPLATE};
use super::openai::{image_for_request, OpenAiClient, OpenAiOptions, Request};
use super::prompts::Prompt;
use super::qc;
use crate::latents::cache::{CacheEntry, CacheFingerprint, CacheRunStats, FileHash, RunOptions, ShardOutput};
use crate::shards::{TarSample, WdsReader};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where captions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A llava-hf LLaVA-1.5 folder run in-process with candle.
    Candle,
    /// An OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, llama.cpp, Ollama).
    Openai,
}

impl Backend {
    fn as_str(self) -> &'static str {
        match self {
            Backend::Candle => "candle",
            Backend::Openai => "openai",
        }
    }
}

/// The captioning stage's configuration (CLI flags and pipeline TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionConfig {
    /// `candle` (a local llava-hf folder) or `openai` (a server).
    #[arg(long, value_enum, default_value_t = Backend::Candle)]
    pub backend: Backend,
    /// candle: the model folder; openai: the model name the server serves.
    #[arg(long, default_value = "")]
    pub model: String,
    /// openai: the server (`http://host:8000`, `…/v1` or the full chat-completions URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// openai: the environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// The instruction: `paper` (the PixArt-α prompt), `with-alt` (shows the source caption), or a
    /// template with `{alt}`, `{key}` and the sample's `.json` fields. Repeat for several prompts.
    #[arg(long = "prompt", default_values_t = vec!["paper".to_string()])]
    pub prompts: Vec<String>,
    /// Captions per image and prompt (each with its own seed).
    #[arg(long, default_value_t = 1)]
    pub captions_per_image: usize,
    /// Sampling temperature (0 = greedy; PixArt-α used 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// New tokens per caption at most (a caption cut there is flagged `truncated`).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// The base seed; each caption's seed derives from it, the key and the caption number.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Remove boilerplate openings ("The image shows …") from the captions (still flagged).
    #[arg(long)]
    pub strip_boilerplate: bool,
    /// Ask again, with a new seed, up to N times when a caption is empty, a refusal or a loop.
    #[arg(long, default_value_t = 0)]
    pub qc_retries: usize,
    /// openai: requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// openai: seconds one request may take.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// openai: retries of a failed request (connection errors, timeouts, 5xx, 429, malformed answers).
    #[arg(long, default_value_t = 5)]
    pub retries: usize,
    /// openai: first backoff between retries, seconds (doubled each time, at most 30).
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,
    /// openai: the longest `Retry-After` honoured, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub max_retry_after: f64,
    /// openai: images whose shorter side is longer are sent resized to it (JPEG); 0 = as stored.
    #[arg(long, default_value_t = 448)]
    pub image_side: u32,
    /// candle: `cpu` or `cuda:N` (on the command line: `--device`).
    #[arg(skip = String::from("cpu"))]
    pub device: String,
    /// candle: weights and activations `f32`, `f16` or `bf16` (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// candle: prompts of equal token length generated together.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// candle: `crop` (llava-hf's processor) or `pad` (the original LLaVA-1.5's square padding).
    #[arg(long, value_enum, default_value_t)]
    pub image_mode: ImageMode,
    /// candle: the conversation around the instruction (`{prompt}` and one `<image>`).
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    pub chat_template: String,
}

impl Default for CaptionConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Candle,
            model: String::new(),
            endpoint: None,
            api_key_env: "OPENAI_API_KEY".into(),
            prompts: vec!["paper".into()],
            captions_per_image: 1,
            temperature: 0.2,
            top_p: 1.0,
            max_tokens: 512,
            seed: 0,
            strip_boilerplate: false,
            qc_retries: 0,
            concurrency: 16,
            timeout: 300.0,
            retries: 5,
            backoff: 1.0,
            max_retry_after: 120.0,
            image_side: 448,
            device: "cpu".into(),
            dtype: None,
            batch_size: 4,
            image_mode: ImageMode::Crop,
            chat_template: DEFAULT_TEMPLATE.into(),
        }
    }
}

/// One caption row (a line of the journal and of `{shard}.captions.parquet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRow {
    /// The sample key.
    pub key: String,
    /// Which `--prompt` (from 0).
    pub prompt_index: u32,
    /// Which caption of this image and prompt (from 0).
    pub index: u32,
    /// The caption, when there is one.
    pub caption: Option<String>,
    /// `paper`, `with-alt` or `custom-N` (the one used: `with-alt` on an empty alt-text is `paper`).
    pub prompt_id: String,
    /// The instruction sent.
    pub prompt: String,
    /// The source caption (alt-text), unchanged.
    pub alt: String,
    /// The model folder's name or the served model's name.
    pub model: String,
    /// `candle` or `openai`.
    pub backend: String,
    /// Sampling temperature.
    pub temperature: f64,
    /// The seed of the attempt that gave the caption.
    pub seed: u64,
    /// The token budget.
    pub max_tokens: u32,
    /// Tokens generated (the server's `usage.completion_tokens`).
    pub n_tokens: Option<u32>,
    /// `stop`, `length`, …
    pub finish_reason: Option<String>,
    /// Milliseconds the caption took (the last attempt).
    pub latency_ms: Option<f64>,
    /// QC flags (`empty`, `refusal`, `repetition`, `truncated`, `boilerplate`).
    pub qc_flags: Vec<String>,
    /// `success` or `failed`.
    pub status: String,
    /// Why there is no caption.
    pub error: Option<String>,
    /// Requests or generations made (retries and QC retries included).
    pub attempts: u32,
    /// Whether a rerun should try again (transport errors), rather than keep the failure.
    #[serde(default)]
    pub retryable: bool,
}

/// One caption to make.
#[derive(Debug, Clone)]
struct Item {
    sample: usize,
    prompt_index: u32,
    index: u32,
    prompt_id: String,
    instruction: String,
    alt: String,
}

/// What one attempt gave.
#[derive(Debug, Clone)]
struct Answer {
    text: String,
    tokens: Option<u32>,
    finish: String,
    latency_ms: f64,
    attempts: u32,
}

/// The seed of caption `index` of `key` with prompt `prompt`, QC attempt `attempt`.
pub fn caption_seed(base: u64, key: &str, prompt: u32, index: u32, attempt: u32) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(base.to_le_bytes());
    h.update(key.as_bytes());
    h.update([0]);
    h.update(prompt.to_le_bytes());
    h.update(index.to_le_bytes());
    h.update(attempt.to_le_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

const RETRY_ON: [&str; 3] = ["empty", "refusal", "repetition"];

impl CaptionConfig {
    fn sampling(&self) -> Sampling {
        Sampling { temperature: self.temperature, top_p: self.top_p, max_tokens: self.max_tokens, ignore_eos: false }
    }

    fn model_name(&self) -> String {
        match self.backend {
            Backend::Candle => {
                Path::new(&self.model).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            }
            Backend::Openai => self.model.clone(),
        }
    }

    /// Checks the values, naming the flag / field that is wrong.
    pub fn check(&self) -> anyhow::Result<Vec<Prompt>> {
        if self.model.is_empty() {
            anyhow::bail!("--model (model): required: the model folder (candle) or the served model name (openai)");
        }
        if self.backend == Backend::Openai && self.endpoint.is_none() {
            anyhow::bail!("--endpoint (endpoint): required with --backend openai");
        }
        if self.backend == Backend::Candle && !Path::new(&self.model).is_dir() {
            anyhow::bail!(
                "--model (model) {}: not a folder (the candle backend needs a llava-hf model folder)",
                self.model
            );
        }
        if self.captions_per_image == 0 || self.concurrency == 0 || self.batch_size == 0 || self.max_tokens == 0 {
            anyhow::bail!("captions_per_image, concurrency, batch_size and max_tokens must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            anyhow::bail!("--top-p (top_p) {}: expected a value in (0, 1]", self.top_p);
        }
        if self.temperature < 0.0 {
            anyhow::bail!("--temperature (temperature) {}: expected ≥ 0", self.temperature);
        }
        if self.prompts.is_empty() {
            anyhow::bail!("--prompt (prompts): at least one prompt");
        }
        self.prompts.iter().enumerate().map(|(i, p)| Prompt::parse(p, i)).collect()
    }

    /// What the captions depend on: backend, model (its files for candle), prompts and sampling.
    fn fingerprint(&self) -> anyhow::Result<CacheFingerprint> {
        let mut files = Vec::new();
        if self.backend == Backend::Candle {
            let dir = Path::new(&self.model);
            let mut paths = crate::latents::weight_files(dir, "model")?;
            paths.push(dir.join("config.json"));
            paths.push(dir.join("tokenizer.json"));
            for f in paths {
                files.push(FileHash::of(&f)?);
            }
        }
        Ok(CacheFingerprint {
            kind: "caption".into(),
            model_config: serde_json::json!({ "backend": self.backend, "model": self.model_name() }),
            files,
            preprocessing: serde_json::json!({
                "prompts": self.prompts, "captions_per_image": self.captions_per_image,
                "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "strip_boilerplate": self.strip_boilerplate, "qc_retries": self.qc_retries,
                "image_side": if self.backend == Backend::Openai { Some(self.image_side) } else { None },
                "image_mode": if self.backend == Backend::Candle { Some(self.image_mode) } else { None },
                "chat_template": if self.backend == Backend::Candle { Some(&self.chat_template) } else { None },
            }),
            sources: Default::default(),
        })
    }
}

/// The device a `--device` value names.
pub fn parse_device(s: &str) -> anyhow::Result<candle_core::Device> {
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let n = s.strip_prefix("cuda:").or_else(|| (s == "cuda").then_some("0"));
    match n.and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => Ok(candle_core::Device::new_cuda(n).map_err(|e| anyhow::anyhow!("--device {s}: {e}"))?),
        None => anyhow::bail!("--device {s:?}: expected cpu or cuda:N"),
    }
}

enum Engine {
    Local(Box<LocalCaptioner>),
    Remote(Arc<OpenAiClient>, tokio::runtime::Runtime),
}

/// The journal of a shard in progress.
fn journal_path(out: &Path, shard: &str) -> PathBuf {
    out.join(format!("{shard}.captions.journal.jsonl"))
}

/// The rows a journal holds (a torn last line, from a killed run, is ignored), later lines winning.
fn read_journal(path: &Path) -> HashMap<(String, u32, u32), CaptionRow> {
    let mut rows = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            if let Ok(r) = serde_json::from_str::<CaptionRow>(line) {
                rows.insert((r.key.clone(), r.prompt_index, r.index), r);
            }
        }
    }
    rows
}

/// Captions the images of `opts.input` into `opts.out`.
pub fn run(cfg: &CaptionConfig, opts: &RunOptions) -> anyhow::Result<CacheRunStats> {
    let prompts = cfg.check()?;
    let fingerprint = cfg.fingerprint()?;
    let engine = match cfg.backend {
        Backend::Candle => {
            let device = parse_device(&cfg.device)?;
            let dtype = match cfg.dtype.as_deref() {
                None if device.is_cpu() => candle_core::DType::F32,
                None => candle_core::DType::BF16,
                Some("f32") => candle_core::DType::F32,
                Some("f16") => candle_core::DType::F16,
                Some("bf16") => candle_core::DType::BF16,
                Some(other) => anyhow::bail!("--dtype (dtype) {other:?}: expected f32, f16 or bf16"),
            };
            let model = Path::new(&cfg.model);
            Engine::Local(Box::new(LocalCaptioner::load(model, &device, dtype, cfg.image_mode, &cfg.chat_template)?))
        }
        Backend::Openai => {
            let o = OpenAiOptions {
                endpoint: cfg.endpoint.clone().unwrap_or_default(),
                model: cfg.model.clone(),
                api_key_env: cfg.api_key_env.clone(),
                timeout: cfg.timeout,
                retries: cfg.retries,
                backoff: cfg.backoff,
                max_retry_after: cfg.max_retry_after,
            };
            let client = Arc::new(OpenAiClient::new(o, cfg.concurrency)?);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Engine::Remote(client, rt)
        }
    };
    let out_dir = opts.out.clone();
    sweep_journals(&out_dir);
    let stats = crate::latents::cache::run_shards("caption", fingerprint, opts, |shard, reader, pb| {
        caption_shard(cfg, &prompts, &engine, &out_dir, shard, reader, pb)
    });
    sweep_journals(&out_dir);
    stats
}

/// Removes the journals of shards that are done.
fn sweep_journals(dir: &Path) {
    let Ok(done) = crate::shards::done_shards(dir) else { return };
    for s in done {
        let _ = std::fs::remove_file(journal_path(dir, &crate::shards::shard_name(s)));
    }
}

fn caption_shard(
    cfg: &CaptionConfig,
    prompts: &[Prompt],
    engine: &Engine,
    out_dir: &Path,
    shard: &str,
    reader: &WdsReader,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<ShardOutput> {
    let jpath = journal_path(out_dir, shard);
    let mut journal = read_journal(&jpath);
    journal.retain(|_, r| !r.retryable);
    let mut rows: HashMap<(String, u32, u32), CaptionRow> = journal;
    let mut todo = Vec::new();
    let model = cfg.model_name();
    let base_row = |key: &str, it: &Item| CaptionRow {
        key: key.to_string(),
        prompt_index: it.prompt_index,
        index: it.index,
        caption: None,
        prompt_id: it.prompt_id.clone(),
        prompt: it.instruction.clone(),
        alt: it.alt.clone(),
        model: model.clone(),
        backend: cfg.backend.as_str().into(),
        temperature: cfg.temperature,
        seed: caption_seed(cfg.seed, key, it.prompt_index, it.index, 0),
        max_tokens: cfg.max_tokens as u32,
        n_tokens: None,
        finish_reason: None,
        latency_ms: None,
        qc_flags: Vec::new(),
        status: "failed".into(),
        error: None,
        attempts: 0,
        retryable: false,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jpath)
        .map_err(|e| anyhow::anyhow!("{}: cannot write the journal: {e}", jpath.display()))?;
    let mut record = |row: CaptionRow, rows: &mut HashMap<(String, u32, u32), CaptionRow>| -> anyhow::Result<()> {
        let mut line = serde_json::to_string(&row)?;
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", jpath.display()))?;
        rows.insert((row.key.clone(), row.prompt_index, row.index), row);
        Ok(())
    };
    for (si, sample) in reader.samples.iter().enumerate() {
        let (alt, meta) = sample_text(reader, sample);
        for (pi, p) in prompts.iter().enumerate() {
            for j in 0..cfg.captions_per_image as u32 {
                let slot = (sample.key.clone(), pi as u32, j);
                if rows.contains_key(&slot) {
                    continue;
                }
                match p.render(&sample.key, &alt, &meta) {
                    Ok((prompt_id, instruction)) => todo.push(Item {
                        sample: si,
                        prompt_index: pi as u32,
                        index: j,
                        prompt_id,
                        instruction,
                        alt: alt.clone(),
                    }),
                    Err(reason) => {
                        let it = Item {
                            sample: si,
                            prompt_index: pi as u32,
                            index: j,
                            prompt_id: p.id.clone(),
                            instruction: p.template.clone(),
                            alt: alt.clone(),
                        };
                        let mut row = base_row(&sample.key, &it);
                        row.error = Some(reason);
                        record(row, &mut rows)?;
                    }
                }
            }
        }
    }
    let total = rows.len() + todo.len();
    let mut done = rows.len();
    pb.set_message(format!("{shard}: {done}/{total} captions"));
    let mut finish = |it: &Item, result: Result<Answer, (String, bool)>, rows: &mut HashMap<_, _>| {
        let key = &reader.samples[it.sample].key;
        let mut row = base_row(key, it);
        match result {
            Ok(a) => {
                let flags = qc::flags(&a.text, &a.finish);
                row.caption =
                    Some(if cfg.strip_boilerplate { qc::strip_boilerplate(&a.text) } else { a.text.trim().into() });
                row.qc_flags = flags.iter().map(|f| f.to_string()).collect();
                row.n_tokens = a.tokens;
                row.finish_reason = Some(a.finish);
                row.latency_ms = Some(a.latency_ms);
                row.status = "success".into();
                row.attempts = a.attempts;
                row.seed = caption_seed(cfg.seed, key, it.prompt_index, it.index, a.attempts.saturating_sub(1));
            }
            Err((reason, retryable)) => {
                row.error = Some(reason);
                row.retryable = retryable;
            }
        }
        done += 1;
        pb.set_message(format!("{shard}: {done}/{total} captions"));
        record(row, rows)
    };
    match engine {
        Engine::Local(cap) => {
            let mut pending: Vec<(Item, u32)> = todo.into_iter().map(|it| (it, 0)).collect();
            let chunk = cfg.batch_size * 4;
            while !pending.is_empty() {
                let batch: Vec<(Item, u32)> = pending.drain(..pending.len().min(chunk)).collect();
                let images: Vec<Result<Vec<u8>, String>> = batch
                    .iter()
                    .map(|(it, _)| crate::latents::cache::image_bytes(reader, &reader.samples[it.sample]))
                    .collect();
                let mut jobs = Vec::new();
                let mut job_of = Vec::new();
                for (b, ((it, attempt), img)) in batch.iter().zip(&images).enumerate() {
                    if let Ok(bytes) = img {
                        let key = &reader.samples[it.sample].key;
                        let seed = caption_seed(cfg.seed, key, it.prompt_index, it.index, *attempt);
                        jobs.push(Job { instruction: &it.instruction, image: bytes, seed });
                        job_of.push(b);
                    }
                }
                let results = cap.caption(&jobs, &cfg.sampling(), cfg.batch_size);
                let mut by_batch: Vec<Option<Result<super::llava::Written, String>>> = vec![None; batch.len()];
                for (b, r) in job_of.into_iter().zip(results) {
                    by_batch[b] = Some(r);
                }
                for (((it, attempt), img), r) in batch.into_iter().zip(images).zip(by_batch) {
                    let result = match (img, r) {
                        (Err(e), _) => Err((e, false)),
                        (_, Some(Ok(w))) => Ok(Answer {
                            tokens: Some(w.tokens as u32),
                            finish: w.finish.as_str().into(),
                            latency_ms: w.latency_ms,
                            attempts: attempt + 1,
                            text: w.text,
                        }),
                        (_, Some(Err(e))) => {
                            let retryable = e.starts_with("generation failed");
                            Err((e, retryable))
                        }
                        (_, None) => Err(("not captioned".into(), true)),
                    };
                    if let Ok(a) = &result {
                        let bad = qc::flags(&a.text, &a.finish).iter().any(|f| RETRY_ON.contains(f));
                        if bad && (attempt as usize) < cfg.qc_retries {
                            pending.push((it, attempt + 1));
                            continue;
                        }
                    }
                    finish(&it, result, &mut rows)?;
                }
            }
        }
        Engine::Remote(client, rt) => {
            let reader = Arc::new(reader.clone());
            let results = rt.block_on(remote_shard(cfg, client.clone(), reader.clone(), todo, &mut finish, &mut rows));
            results?;
        }
    }
    drop(file);
    shard_output(cfg, prompts, reader, rows, out_dir, shard)
}

/// Asks the server for every item, `cfg.concurrency` in flight, recording each answer as it comes.
async fn remote_shard(
    cfg: &CaptionConfig,
    client: Arc<OpenAiClient>,
    reader: Arc<WdsReader>,
    todo: Vec<Item>,
    finish: &mut impl FnMut(
        &Item,
        Result<Answer, (String, bool)>,
        &mut HashMap<(String, u32, u32), CaptionRow>,
    ) -> anyhow::Result<()>,
    rows: &mut HashMap<(String, u32, u32), CaptionRow>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let mut stream = futures_util::stream::iter(todo.into_iter().map(|it| {
        let client = client.clone();
        let reader = reader.clone();
        let cfg = cfg.clone();
        async move {
            let r = remote_one(&cfg, &client, reader, &it).await;
            (it, r)
        }
    }))
    .buffer_unordered(cfg.concurrency);
    while let Some((it, r)) = stream.next().await {
        finish(&it, r, rows)?;
    }
    Ok(())
}

async fn remote_one(
    cfg: &CaptionConfig,
    client: &OpenAiClient,
    reader: Arc<WdsReader>,
    it: &Item,
) -> Result<Answer, (String, bool)> {
    let sample = it.sample;
    let key = reader.samples[sample].key.clone();
    let side = cfg.image_side;
    let prepared = tokio::task::spawn_blocking(move || {
        let bytes = crate::latents::cache::image_bytes(&reader, &reader.samples[sample])?;
        image_for_request(&bytes, side)
    })
    .await
    .map_err(|e| (format!("image preparation panicked: {e}"), false))?
    .map_err(|e| (e, false))?;
    let mut attempts = 0;
    let mut qc_attempt = 0u32;
    loop {
        let seed = caption_seed(cfg.seed, &key, it.prompt_index, it.index, qc_attempt);
        let req = Request {
            text: &it.instruction,
            image: &prepared.0,
            mime: prepared.1,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            max_tokens: cfg.max_tokens,
            seed,
        };
        let reply = client.caption(&req).await.map_err(|e| (e, true))?;
        attempts += reply.attempts as u32;
        let bad = qc::flags(&reply.text, &reply.finish_reason).iter().any(|f| RETRY_ON.contains(f));
        if bad && (qc_attempt as usize) < cfg.qc_retries {
            qc_attempt += 1;
            continue;
        }
        return Ok(Answer {
            text: reply.text,
            tokens: reply.completion_tokens.map(|t| t as u32),
            finish: reply.finish_reason,
            latency_ms: reply.latency_ms,
            attempts: attempts.max(qc_attempt + 1),
        });
    }
}

/// The sample's source caption (`.txt`) and metadata (`.json`; `{}` when absent or unreadable).
fn sample_text(reader: &WdsReader, sample: &TarSample) -> (String, serde_json::Value) {
    let alt =
        reader.read(sample, "txt").ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let meta = reader
        .read(sample, "json")
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    (alt, meta)
}

/// The shard's parquet (rows in source order, then prompt, then caption number), its index entries
/// and its stats details; fails the shard when nothing succeeded and a rerun could do better.
fn shard_output(
    cfg: &CaptionConfig,
    prompts: &[Prompt],
    reader: &WdsReader,
    mut rows: HashMap<(String, u32, u32), CaptionRow>,
    out_dir: &Path,
    shard: &str,
) -> anyhow::Result<ShardOutput> {
    let mut ordered = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(reader.samples.len());
    for sample in &reader.samples {
        let mut first_error = None;
        let mut ok = false;
        for pi in 0..prompts.len() as u32 {
            for j in 0..cfg.captions_per_image as u32 {
                if let Some(r) = rows.remove(&(sample.key.clone(), pi, j)) {
                    ok |= r.status == "success";
                    if first_error.is_none() {
                        first_error = r.error.clone();
                    }
                    ordered.push(r);
                }
            }
        }
        entries.push(if ok {
            CacheEntry::success(&sample.key)
        } else {
            CacheEntry::failed(&sample.key, first_error.unwrap_or_else(|| "no caption".into()))
        });
    }
    let successes = ordered.iter().filter(|r| r.status == "success").count();
    if successes == 0 {
        if let Some(r) = ordered.iter().find(|r| r.retryable) {
            anyhow::bail!(
                "no caption in the shard; every request failed, the first with: {} (rerun to retry; finished captions are kept)",
                r.error.clone().unwrap_or_default()
            );
        }
    }
    let mut df = rows_to_frame(&ordered)?;
    crate::shards::write_parquet_atomic(&mut df, &out_dir.join(format!("{shard}.captions.parquet")))?;
    let mut qc_counts: std::collections::BTreeMap<&str, usize> = qc::FLAGS.iter().map(|f| (*f, 0)).collect();
    for r in &ordered {
        for f in &r.qc_flags {
            if let Some(c) = qc_counts.get_mut(f.as_str()) {
                *c += 1;
            }
        }
    }
    let tokens: u64 = ordered.iter().filter_map(|r| r.n_tokens).map(u64::from).sum();
    let lat: Vec<f64> = ordered.iter().filter_map(|r| r.latency_ms).collect();
    let details = serde_json::json!({
        "captions": successes,
        "caption_failures": ordered.len() - successes,
        "tokens": tokens,
        "mean_latency_ms": if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
        "mean_words": if successes == 0 { 0.0 } else {
            ordered.iter().filter_map(|r| r.caption.as_ref()).map(|c| c.split_whitespace().count()).sum::<usize>() as f64 / successes as f64
        },
        "qc": qc_counts,
    });
    Ok(ShardOutput { tensors: None, entries, details: Some(details) })
}

/// The parquet frame of caption rows (`qc_flags` comma-separated).
fn rows_to_frame(rows: &[CaptionRow]) -> anyhow::Result<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let s = |f: &dyn Fn(&CaptionRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let o = |f: &dyn Fn(&CaptionRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let columns = vec![
        Column::new("key".into(), s(&|r| r.key.clone())),
        Column::new("caption".into(), o(&|r| r.caption.clone())),
        Column::new("prompt_id".into(), s(&|r| r.prompt_id.clone())),
        Column::new("prompt".into(), s(&|r| r.prompt.clone())),
        Column::new("model".into(), s(&|r| r.model.clone())),
        Column::new("backend".into(), s(&|r| r.backend.clone())),
        Column::new("temperature".into(), rows.iter().map(|r| r.temperature).collect::<Vec<_>>()),
        Column::new("seed".into(), rows.iter().map(|r| r.seed).collect::<Vec<_>>()),
        Column::new("max_tokens".into(), rows.iter().map(|r| r.max_tokens).collect::<Vec<_>>()),
        Column::new("n_tokens".into(), rows.iter().map(|r| r.n_tokens).collect::<Vec<_>>()),
        Column::new("finish_reason".into(), o(&|r| r.finish_reason.clone())),
        Column::new("latency_ms".into(), rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>()),
        Column::new("qc_flags".into(), s(&|r| r.qc_flags.join(","))),
        Column::new("status".into(), s(&|r| r.status.clone())),
        Column::new("error".into(), o(&|r| r.error.clone())),
        Column::new("attempts".into(), rows.iter().map(|r| r.attempts).collect::<Vec<_>>()),
        Column::new("caption_index".into(), rows.iter().map(|r| r.index).collect::<Vec<_>>()),
        Column::new("alt".into(), s(&|r| r.alt.clone())),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Reads a shard's caption parquet back as rows (for consumers and tests).
pub fn read_captions(path: &Path) -> anyhow::Result<Vec<(String, Option<String>, String)>> {
    use polars::prelude::SerReader;
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let df = polars::prelude::ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let key = df.column("key")?.str()?.clone();
    let cap = df.column("caption")?.str()?.clone();
    let status = df.column("status")?.str()?.clone();
    Ok((0..df.height())
        .map(|i| {
            (
                key.get(i).unwrap_or_default().to_string(),
                cap.get(i).map(str::to_string),
                status.get(i).unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// A run's figures and the totals over every caption shard in `out` (this run's and earlier ones).
pub fn summary(out: &Path, run: &CacheRunStats) -> anyhow::Result<serde_json::Value> {
    let mut captions = 0u64;
    let mut failures = 0u64;
    let mut tokens = 0u64;
    let mut qc_totals: std::collections::BTreeMap<String, u64> = Default::default();
    for s in crate::shards::done_shards(out)? {
        let p = out.join(format!("{}_stats.json", crate::shards::shard_name(s)));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        let d = &v["details"];
        captions += d["captions"].as_u64().unwrap_or(0);
        failures += d["caption_failures"].as_u64().unwrap_or(0);
        tokens += d["tokens"].as_u64().unwrap_or(0);
        if let Some(q) = d["qc"].as_object() {
            for (k, n) in q {
                *qc_totals.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(serde_json::json!({
        "run": run,
        "captions": captions,
        "caption_failures": failures,
        "tokens": tokens,
        "qc": qc_totals,
        "images_per_second": if run.seconds > 0.0 { run.successes as f64 / run.seconds } else { 0.0 },
    }))
}
