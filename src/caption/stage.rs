//! `pixforge caption`: one caption parquet per source shard (`{shard}.captions.parquet`, the same
//! shard ids and keys), with provenance on every row, QC flags, per-shard stats and a journal that
//! keeps each finished caption of a shard in progress, so a killed run loses none of them.
//!
//! The shard loop, manifest fingerprint, `--worker I/N` split and done markers are the feature caches'
//! ([`crate::shards::stage::run_shards`]); `{shard}.index.json` holds each sample's status.

use super::config::{Backend, CaptionConfig};
use super::llava::{Job, LocalCaptioner};
use super::openai::{image_for_request, OpenAiClient, OpenAiOptions, Request};
use super::output::JOURNAL_SUFFIX;
use super::output::{journal_path, read_journal, shard_output, sweep_journals, CaptionRow, Slot};
use super::prompts::Prompt;
use super::qc;
use crate::shards::captions::CAPTIONS_SUFFIX;
use crate::shards::stage::Stage;
use crate::shards::stage::{ShardOutput, StageOptions, StageRunStats};
use crate::shards::{TarSample, WdsReader};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

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
    /// The seed sent with the request that gave this answer (from the key, prompt, caption index
    /// and QC retry only: HTTP retries resend the same seed).
    seed: u64,
}

/// An image as it is sent: its bytes and MIME type.
type Prepared = (Vec<u8>, &'static str);

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

enum Engine {
    Local(Box<LocalCaptioner>),
    Remote(Arc<OpenAiClient>, tokio::runtime::Runtime),
}

/// Captions the images of `opts.input` into `opts.out`.
pub fn run(cfg: &CaptionConfig, opts: &StageOptions) -> anyhow::Result<StageRunStats> {
    let prompts = cfg.check()?;
    let fingerprint = cfg.fingerprint()?;
    let engine = match cfg.backend {
        Backend::Candle => {
            let device = crate::device::device(&cfg.device)?;
            let dtype = match cfg.dtype {
                Some(d) => d.dtype(),
                None if device.is_cpu() => candle_core::DType::F32,
                None => candle_core::DType::BF16,
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
    let out_dir = crate::store::working_dir(&opts.out, opts.worker);
    sweep_journals(&out_dir);
    let stage = Stage { name: "caption", outputs: &[CAPTIONS_SUFFIX, ".index.json"], scratch: &[JOURNAL_SUFFIX] };
    // A server that cannot be reached stops the run before the first shard with work, not after
    // every caption's retries.
    let mut probed = false;
    let stats = crate::shards::stage::run_shards(&stage, fingerprint, opts, |shard, reader, pb| {
        if let (false, Engine::Remote(client, rt)) = (probed, &engine) {
            probed = true;
            rt.block_on(client.probe())
                .map_err(|e| anyhow::Error::new(crate::shards::stage::Fatal(format!("{e:#}"))))?;
        }
        caption_shard(cfg, &prompts, &engine, &out_dir, shard, reader, pb)
    });
    sweep_journals(&out_dir);
    stats
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
    let mut rows: HashMap<Slot, CaptionRow> = journal;
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
    let mut record = |row: CaptionRow, rows: &mut HashMap<Slot, CaptionRow>| -> anyhow::Result<()> {
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
                row.seed = a.seed;
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
                    .map(|(it, _)| crate::shards::stage::image_bytes(reader, &reader.samples[it.sample]))
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
                            seed: caption_seed(
                                cfg.seed,
                                &reader.samples[it.sample].key,
                                it.prompt_index,
                                it.index,
                                attempt,
                            ),
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
    finish: &mut impl FnMut(&Item, Result<Answer, (String, bool)>, &mut HashMap<Slot, CaptionRow>) -> anyhow::Result<()>,
    rows: &mut HashMap<Slot, CaptionRow>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    // A sample's image is prepared once for all its prompts and captions.
    let images: Vec<tokio::sync::OnceCell<Prepared>> = reader.samples.iter().map(|_| Default::default()).collect();
    let images = &images;
    // Images are decoded and resized one per core at most, however many requests are in flight, so
    // memory is that of a few decoded images, not of `concurrency` of them.
    let decoding = tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let decoding = &decoding;
    let mut stream = futures_util::stream::iter(todo.into_iter().map(|it| {
        let (client, reader) = (client.clone(), reader.clone());
        async move {
            let r = remote_one(cfg, &client, reader, (&images[it.sample], decoding), &it).await;
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
    (image, decoding): (&tokio::sync::OnceCell<Prepared>, &tokio::sync::Semaphore),
    it: &Item,
) -> Result<Answer, (String, bool)> {
    let sample = it.sample;
    let key = reader.samples[sample].key.clone();
    let side = cfg.image_side;
    let prepared = image
        .get_or_try_init(|| async move {
            let _permit = decoding.acquire().await.map_err(|e| (format!("image preparation stopped: {e}"), false))?;
            tokio::task::spawn_blocking(move || {
                let bytes = crate::shards::stage::image_bytes(&reader, &reader.samples[sample])?;
                image_for_request(&bytes, side)
            })
            .await
            .map_err(|e| (format!("image preparation panicked: {e}"), false))?
            .map_err(|e| (e, false))
        })
        .await?;
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
            seed,
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
