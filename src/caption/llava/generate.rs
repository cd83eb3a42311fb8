//! Token-by-token generation for a batch of prompts of equal length: one prefill over the prompt
//! embeddings, then one token per row per step with the key/value cache, greedy (temperature 0) or
//! sampled (temperature, nucleus top-p) from our own seeded generator, one per row.

use super::model::Llava;
use candle_core::Tensor;

/// How tokens are picked and when generation stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f64,
    /// New tokens at most.
    pub max_tokens: usize,
    /// Keep generating past the end-of-sequence token (benchmarks and parity checks).
    pub ignore_eos: bool,
}

/// Why a row stopped (OpenAI's `finish_reason` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model wrote its end-of-sequence token.
    Stop,
    /// `max_tokens` (or the model's context) ran out.
    Length,
}

impl Finish {
    /// `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One row's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens (the end-of-sequence token not included).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: Finish,
}

/// Picks a token from `logits` (f32, one row).
pub fn pick(logits: &[f32], sampling: &Sampling, rng: &mut crate::rng::Rng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
            as u32
    };
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let t = sampling.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &v)| (i as u32, (((v - max) / t) as f64).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if !total.is_finite() || total <= 0.0 {
        return argmax();
    }
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let keep_mass = sampling.top_p.clamp(0.0, 1.0) * total;
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= keep_mass {
            break;
        }
    }
    let mut u = rng.uniform() * mass;
    for p in &probs[..kept] {
        if u < p.1 {
            return p.0;
        }
        u -= p.1;
    }
    probs[kept - 1].0
}

/// Generates for prompts `ids` (equal lengths) with their images' features (`Llava::features`); row
/// `i` samples with seed `seeds[i]`.
pub fn generate(
    model: &Llava,
    ids: &[Vec<u32>],
    features: &[Tensor],
    sampling: &Sampling,
    seeds: &[u64],
) -> anyhow::Result<Vec<Generation>> {
    let len = ids.first().map_or(0, Vec::len);
    if ids.iter().any(|r| r.len() != len) {
        anyhow::bail!("generate: the prompts of one batch must have equal lengths");
    }
    let embeddings = model.input_embeddings(ids, features)?;
    let eos = model.config.eos_ids();
    let mut rngs: Vec<_> = seeds.iter().map(|&s| crate::rng::Rng::new(s)).collect();
    let mut out: Vec<Option<Generation>> = vec![None; ids.len()];
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    let mut cache = model.new_cache()?;
    let budget = sampling.max_tokens.min(model.max_positions().saturating_sub(len));
    let mut logits = model.step(&embeddings, 0, &mut cache)?;
    for step in 0..budget {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut next = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let t = pick(row, sampling, &mut rngs[i]);
            next.push(t);
            if out[i].is_some() {
                continue;
            }
            if !sampling.ignore_eos && eos.contains(&t) {
                out[i] = Some(Generation { tokens: std::mem::take(&mut tokens[i]), finish: Finish::Stop });
            } else {
                tokens[i].push(t);
            }
        }
        if out.iter().all(Option::is_some) || step + 1 == budget {
            break;
        }
        logits = model.step(&model.embed_tokens(&next)?, len + step, &mut cache)?;
    }
    Ok(out
        .into_iter()
        .zip(tokens)
        .map(|(o, t)| o.unwrap_or(Generation { tokens: t, finish: Finish::Length }))
        .collect())
}
