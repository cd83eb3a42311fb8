//! Captioning benchmarks (bench/caption.sh): a loopback OpenAI-compatible server that answers every
//! request after a fixed latency (the client's scaling is measured against it), and the local
//! backend's tokens per second.

use super::llava::{generate, ImageMode, LocalCaptioner, Sampling, DEFAULT_TEMPLATE};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `/v1/chat/completions` on `addr` (HTTP/1.1, keep-alive): each request is read whole and
/// answered with a fixed 40-word caption after `latency_ms`, any number at once. Prints the bound
/// address, then serves until killed.
pub fn fixed_latency_server(addr: &str, latency_ms: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = answer_connection(stream, latency_ms).await;
            });
        }
    })
}

async fn answer_connection(mut stream: tokio::net::TcpStream, latency_ms: u64) -> std::io::Result<()> {
    let caption = "A weathered red barn stands in a green field under a wide blue sky with scattered white clouds, \
                   a wooden fence in the foreground, tall grass, a gravel path, soft afternoon light and long shadows, \
                   in a realistic photographic style.";
    let body = serde_json::json!({
        "id": "bench", "object": "chat.completion", "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": caption}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 600, "completion_tokens": 48, "total_tokens": 648},
    })
    .to_string();
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        // The head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 16384];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + len);
        tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).await?;
    }
}

/// Tokens per second of the local backend.
#[derive(Debug, serde::Serialize)]
pub struct LocalThroughput {
    /// Prompts per generation.
    pub batch: usize,
    /// New tokens per prompt.
    pub new_tokens: usize,
    /// Prompt tokens (image tokens included).
    pub prompt_tokens: usize,
    /// Best seconds of one generation (prefill and decode), over the rounds.
    pub seconds: f64,
    /// New tokens per second over the batch.
    pub tokens_per_second: f64,
}

/// Greedy generation of `new_tokens` (end-of-sequence ignored) for `batch` copies of the paper's
/// prompt on `image`, best of `rounds` after a warm-up.
pub fn local_tokens_per_second(
    model: &Path,
    image: &Path,
    batch: usize,
    new_tokens: usize,
    rounds: usize,
) -> anyhow::Result<LocalThroughput> {
    let cap = LocalCaptioner::load(model, &Device::Cpu, DType::F32, ImageMode::Crop, DEFAULT_TEMPLATE)?;
    let img = image::open(image).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?.to_rgb8();
    let prepared = cap.processor.image(&img)?;
    let side = cap.processor.image.crop as usize;
    let px = Tensor::from_vec(prepared.pixels.clone(), (prepared.patches, 3, side, side), &Device::Cpu)?;
    let images = vec![(px, prepared.size); batch];
    let ids = cap.processor.input_ids(super::prompts::PAPER, prepared.tokens)?;
    let rows = vec![ids.clone(); batch];
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, max_tokens: new_tokens, ignore_eos: true };
    let seeds = vec![0; batch];
    let mut best = f64::MAX;
    for r in 0..=rounds {
        let t0 = std::time::Instant::now();
        let features = cap.model.features(&images)?;
        let out = generate(&cap.model, &rows, &features, &sampling, &seeds)?;
        let dt = t0.elapsed().as_secs_f64();
        anyhow::ensure!(out.iter().all(|g| g.tokens.len() == new_tokens), "generation stopped early");
        if r > 0 {
            best = best.min(dt);
        }
    }
    Ok(LocalThroughput {
        batch,
        new_tokens,
        prompt_tokens: ids.len(),
        seconds: best,
        tokens_per_second: (batch * new_tokens) as f64 / best,
    })
}
