//! The OpenAI-compatible backend: one `POST {endpoint}/chat/completions` per caption (vLLM, SGLang,
//! llama.cpp's server, Ollama), the image as a base64 data URL before the instruction (LLaVA-1.5's
//! order), the API key from an environment variable, a timeout per request, and retries with
//! exponential backoff on connection errors, timeouts, 5xx, 429 (its `Retry-After` honoured) and
//! malformed replies.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How to reach the server and what to ask it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiOptions {
    /// The server: `http://host:port`, `…/v1` or the full `…/v1/chat/completions` URL.
    pub endpoint: String,
    /// The model name the server knows.
    pub model: String,
    /// The environment variable holding the API key (sent as `Authorization: Bearer`); unset = none.
    pub api_key_env: String,
    /// Seconds one request may take, answer included.
    pub timeout: f64,
    /// Retries after the first attempt.
    pub retries: usize,
    /// The first backoff in seconds (doubled after each retry, at most 30 s).
    pub backoff: f64,
    /// The longest `Retry-After` honoured (seconds); a longer one fails the sample.
    pub max_retry_after: f64,
}

/// The sampling parameters sent with each request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// The instruction.
    pub text: &'a str,
    /// The image bytes.
    pub image: &'a [u8],
    /// Its MIME type (`image/jpeg`, `image/png`, `image/webp`).
    pub mime: &'a str,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// New tokens at most.
    pub max_tokens: usize,
    /// The seed (vLLM and SGLang honour it).
    pub seed: u64,
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `choices[0].message.content`.
    pub text: String,
    /// `choices[0].finish_reason` (`stop`, `length`, …).
    pub finish_reason: String,
    /// `usage.completion_tokens`, when the server reports it.
    pub completion_tokens: Option<usize>,
    /// Milliseconds of the successful attempt.
    pub latency_ms: f64,
    /// Attempts made (1 = no retry).
    pub attempts: usize,
}

/// A client for one server and model.
pub struct OpenAiClient {
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    opts: OpenAiOptions,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}
#[derive(Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}
#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<usize>,
}

/// One attempt's failure: whether to retry, and after how long the server asked.
struct Failure {
    message: String,
    retry: bool,
    after: Option<Duration>,
}

/// The chat-completions URL of an endpoint.
pub fn completions_url(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim_end_matches('/');
    let parsed = url::Url::parse(e).map_err(|err| anyhow::anyhow!("--endpoint {endpoint:?}: not a URL ({err})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("--endpoint {endpoint:?}: expected an http:// or https:// URL");
    }
    Ok(if e.ends_with("/chat/completions") {
        e.to_string()
    } else if e.ends_with("/v1") {
        format!("{e}/chat/completions")
    } else {
        format!("{e}/v1/chat/completions")
    })
}

/// The request body (OpenAI chat completions, one user message: the image, then the text).
pub fn body(model: &str, r: &Request) -> serde_json::Value {
    let data = base64::engine::general_purpose::STANDARD.encode(r.image);
    serde_json::json!({
        "model": model,
        "messages": [{
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": format!("data:{};base64,{data}", r.mime)}},
                {"type": "text", "text": r.text},
            ],
        }],
        "max_tokens": r.max_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "seed": r.seed,
    })
}

impl OpenAiClient {
    /// A client for `opts` (reads the API key and the environment's proxies now).
    pub fn new(opts: OpenAiOptions, concurrency: usize) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = completions_url(&opts.endpoint)?;
        let key = std::env::var(&opts.api_key_env).ok().filter(|k| !k.is_empty());
        let proxy = crate::proxy::ProxyEnv::from_env()?;
        let client = proxy
            .apply(reqwest::Client::builder())
            .user_agent(concat!("pixforge/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs_f64(opts.timeout))
            .connect_timeout(Duration::from_secs_f64(opts.timeout.min(10.0)))
            .pool_max_idle_per_host(concurrency.max(1))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { client, url, key, opts })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks that a server answers at the endpoint (`GET {endpoint}/models`; any HTTP answer will
    /// do): an address nothing listens on, a name that does not resolve or a host that cannot be
    /// reached is an error naming the endpoint, instead of every caption's retries. A server too
    /// slow to answer within 10 s is left to the retries.
    pub async fn probe(&self) -> anyhow::Result<()> {
        let models = format!("{}/models", self.opts.endpoint.trim_end_matches('/'));
        let mut req = self.client.get(&models).timeout(Duration::from_secs(10));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.is_connect() => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                anyhow::bail!(
                    "cannot reach the captioning server at {}: {why} (is it running, and is --endpoint its address?)",
                    self.opts.endpoint
                )
            }
            Err(e) => {
                tracing::warn!("the captioning server at {} did not answer a probe: {e}", self.opts.endpoint);
                Ok(())
            }
        }
    }

    /// Asks for one caption, retrying as the options say; the error names the last failure and the
    /// attempts made.
    pub async fn caption(&self, r: &Request<'_>) -> Result<Reply, String> {
        let body = body(&self.opts.model, r);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let t0 = Instant::now();
            match self.attempt(&body).await {
                Ok(mut reply) => {
                    reply.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
                    reply.attempts = attempt;
                    return Ok(reply);
                }
                Err(f) => {
                    if !f.retry || attempt > self.opts.retries {
                        let tries = if attempt == 1 { String::new() } else { format!(" (after {attempt} attempts)") };
                        return Err(format!("{}{tries}", f.message));
                    }
                    let backoff = (self.opts.backoff * 2f64.powi(attempt as i32 - 1)).min(30.0);
                    let wait = match f.after {
                        Some(d) if d.as_secs_f64() > self.opts.max_retry_after => {
                            return Err(format!(
                                "{}: the server asked to wait {:.0} s (Retry-After), more than --max-retry-after {}",
                                f.message,
                                d.as_secs_f64(),
                                self.opts.max_retry_after
                            ))
                        }
                        Some(d) => d,
                        None => Duration::from_secs_f64(backoff),
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<Reply, Failure> {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| Failure {
            message: format!("request to {}: {}", self.url, crate::ingest::download::describe(&e).message),
            retry: true,
            after: None,
        })?;
        let status = resp.status();
        let after = crate::ingest::download::retry_after(resp.headers());
        let text = resp.text().await.map_err(|e| Failure {
            message: format!("reading the answer of {}: {}", self.url, crate::ingest::download::describe(&e).message),
            retry: true,
            after: None,
        })?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(200).collect();
            let retry = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
            return Err(Failure { message: format!("HTTP {status} from {}: {excerpt}", self.url), retry, after });
        }
        let parsed: Completion = serde_json::from_str(&text).map_err(|e| {
            let excerpt: String = text.chars().take(120).collect();
            Failure {
                message: format!(
                    "malformed answer from {} ({e}); expected chat-completions JSON, found {excerpt:?}",
                    self.url
                ),
                retry: true,
                after: None,
            }
        })?;
        let choice = parsed.choices.into_iter().next().ok_or_else(|| Failure {
            message: format!("answer from {} has no choices", self.url),
            retry: true,
            after: None,
        })?;
        Ok(Reply {
            text: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason.unwrap_or_else(|| "unknown".into()),
            completion_tokens: parsed.usage.and_then(|u| u.completion_tokens),
            latency_ms: 0.0,
            attempts: 0,
        })
    }
}

/// The image as sent: the original bytes when its shorter side is at most `max_side` (0 = always)
/// and the file carries nothing but its pixels ([`crate::image::is_lean`]),
/// else decoded (under the decoders' metadata limit), resized (bicubic) to that shorter side if
/// longer, and encoded as JPEG (quality 90), so no metadata of the file reaches the server. Either
/// way the image first passes the header check every stage applies (the pixel limit, a truncated
/// file refused).
pub fn image_for_request(bytes: &[u8], max_side: u32) -> Result<(Vec<u8>, &'static str), String> {
    use crate::image::{checked_header, decode_rgb, encode, resize_exact, EncodeFormat, Filter};
    let (format, w, h) =
        checked_header(bytes, crate::image::MAX_PIXELS, false).map_err(|e| format!("cannot read the image: {e}"))?;
    let mime = match format {
        image::ImageFormat::Jpeg => Some("image/jpeg"),
        image::ImageFormat::Png => Some("image/png"),
        image::ImageFormat::WebP => Some("image/webp"),
        _ => None,
    };
    let lean = crate::image::is_lean(bytes, w, h);
    if let Some(mime) = mime.filter(|_| lean && (max_side == 0 || w.min(h) <= max_side)) {
        return Ok((bytes.to_vec(), mime));
    }
    let (img, _, _) =
        decode_rgb(bytes, crate::image::MAX_PIXELS).map_err(|e| format!("cannot decode the image: {e}"))?;
    let (w, h) = img.dimensions();
    let short = w.min(h);
    let img = if max_side > 0 && short > max_side {
        let scale = max_side as f64 / short as f64;
        let size = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
        resize_exact(&img, size, Filter::Bicubic).map_err(|e| format!("cannot resize the image: {e}"))?
    } else {
        img
    };
    let jpeg = encode(&img, EncodeFormat::Jpg, 90).map_err(|e| format!("cannot encode the image: {e}"))?;
    Ok((jpeg, "image/jpeg"))
}
