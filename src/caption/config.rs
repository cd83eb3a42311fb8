//! The captioning stage's configuration: backend, model, prompts, sampling, QC, and each backend's
//! knobs (CLI flags and pipeline TOML), with the checks that name the wrong field and the fingerprint
//! of what the captions depend on.

use super::llava::{ImageMode, Sampling, DEFAULT_TEMPLATE};
use super::prompts::Prompt;
use crate::shards::stage::{FileHash, StageFingerprint};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// `candle` or `openai`.
    pub fn as_str(self) -> &'static str {
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
    #[arg(long, value_enum)]
    pub dtype: Option<crate::latents::cache::FeatureDType>,
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

impl CaptionConfig {
    pub(super) fn sampling(&self) -> Sampling {
        Sampling { temperature: self.temperature, top_p: self.top_p, max_tokens: self.max_tokens, ignore_eos: false }
    }

    pub(super) fn model_name(&self) -> String {
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
    pub(super) fn fingerprint(&self) -> anyhow::Result<StageFingerprint> {
        let mut files = Vec::new();
        if self.backend == Backend::Candle {
            let dir = Path::new(&self.model);
            let mut paths = crate::hub::weight_files(dir, "model")?;
            paths.push(dir.join("config.json"));
            paths.push(dir.join("tokenizer.json"));
            for f in paths {
                files.push(FileHash::of(&f)?);
            }
        }
        Ok(StageFingerprint {
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
            made_from: Default::default(),
        })
    }
}
