//! PixArt-Σ's KV-token compression (the official `AttentionKVCompress`): in the self-attention of
//! chosen blocks the keys and values, after their projections, are reduced on the latent token grid
//! by `scale_factor` along each side before the attention — by a depthwise `scale_factor`-strided
//! convolution and a LayerNorm (`conv`, initialised to the average of each patch), by keeping each
//! patch's first token (`ave`, PyTorch's nearest down-sampling, and `uniform`), or by keeping every
//! `scale_factor`-th token of the sequence (`uniform_every`). The queries keep every token. Diffusers
//! has no such attention; the weights of `conv` are kept under
//! `transformer_blocks.{i}.attn1.kv_compress.{sr,norm}.*` (official: `blocks.{i}.attn.{sr,norm}.*`).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// How the keys and values are reduced (the official `sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvSampling {
    /// Depthwise convolution (kernel = stride = scale) and LayerNorm, both learned.
    Conv,
    /// Nearest down-sampling of the grid (each patch's first token).
    Ave,
    /// Every `scale`-th row and column of the grid.
    Uniform,
    /// Every `scale`-th token of the sequence.
    UniformEvery,
}

/// The official `kv_compress_config`: the sampling, the factor, and the blocks it applies to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCompressConfig {
    /// How keys and values are reduced.
    pub sampling: KvSampling,
    /// The reduction along each side of the grid (2 in the official configs).
    pub scale_factor: usize,
    /// The blocks whose self-attention is compressed (the 2K config: 14 to 27).
    pub kv_compress_layer: Vec<usize>,
}

impl KvCompressConfig {
    /// Whether block `i` compresses.
    pub fn applies_to(&self, i: usize) -> bool {
        self.kv_compress_layer.contains(&i)
    }

    /// The learned tensors of a compressing block (names under `attn1.kv_compress.`) and their shapes.
    pub fn weight_shapes(&self, hidden: usize) -> Vec<(&'static str, Vec<usize>)> {
        let s = self.scale_factor;
        match self.sampling {
            KvSampling::Conv => vec![
                ("sr.weight", vec![hidden, 1, s, s]),
                ("sr.bias", vec![hidden]),
                ("norm.weight", vec![hidden]),
                ("norm.bias", vec![hidden]),
            ],
            _ => Vec::new(),
        }
    }
}

/// The official LayerNorm's ε (`nn.LayerNorm`'s default).
const NORM_EPS: f64 = 1e-5;

/// One block's compression of its keys and values.
#[derive(Debug, Clone)]
pub struct KvCompressor {
    sampling: KvSampling,
    scale: usize,
    /// `conv`: the depthwise kernel `[C, 1, s, s]`, its bias, the LayerNorm's weight and bias.
    conv: Option<[Tensor; 4]>,
}

impl KvCompressor {
    /// The compressor of `config` with its weights under `vb` (`transformer_blocks.{i}.attn1.kv_compress`).
    pub fn new(vb: &VarBuilder, hidden: usize, config: &KvCompressConfig) -> Result<Self> {
        if config.scale_factor < 2 {
            candle_core::bail!("kv_compress.scale_factor: expected at least 2, found {}", config.scale_factor);
        }
        let conv = match config.sampling {
            KvSampling::Conv => {
                let w = config.weight_shapes(hidden);
                let get = |k: usize| vb.get(w[k].1.as_slice(), w[k].0);
                Some([get(0)?, get(1)?, get(2)?, get(3)?])
            }
            _ => None,
        };
        Ok(Self { sampling: config.sampling, scale: config.scale_factor, conv })
    }

    /// The reduced tokens `[B, N', C]` of keys or values `t` `[B, gh·gw, C]` on the grid `(gh, gw)`.
    pub fn compress(&self, t: &Tensor, (gh, gw): (usize, usize)) -> Result<Tensor> {
        let (b, n, c) = t.dims3()?;
        let s = self.scale;
        if n != gh * gw {
            candle_core::bail!("kv compression: {n} tokens on a {gh}×{gw} grid");
        }
        if self.sampling == KvSampling::UniformEvery {
            if n % s != 0 {
                candle_core::bail!("kv compression `uniform_every`: {n} tokens are not a multiple of {s}");
            }
            return t.reshape((b, n / s, s, c))?.narrow(2, 0, 1)?.reshape((b, n / s, c));
        }
        if self.sampling == KvSampling::Uniform && (gh % s != 0 || gw % s != 0) {
            candle_core::bail!("kv compression `uniform`: the {gh}×{gw} token grid is not a multiple of {s}");
        }
        // Patches of s×s tokens (a grid side's remainder dropped, as a stride-s convolution and
        // nearest down-sampling drop it): [B, h, s, w, s, C].
        let (h, w) = (gh / s, gw / s);
        let grid = t.reshape((b, gh, gw, c))?.narrow(1, 0, h * s)?.narrow(2, 0, w * s)?;
        let patches = grid.reshape((b, h, s, w, s, c))?;
        let Some([sr_w, sr_b, norm_w, norm_b]) = &self.conv else {
            return patches.narrow(2, 0, 1)?.narrow(4, 0, 1)?.reshape((b, h * w, c));
        };
        // The depthwise convolution: each channel's s×s kernel over its patch, plus the bias.
        let kernel = sr_w.reshape((c, s, s))?.permute((1, 2, 0))?.reshape((1, 1, s, 1, s, c))?;
        let reduced = patches.broadcast_mul(&kernel)?.sum(4)?.sum(2)?.reshape((b, h * w, c))?;
        let reduced = reduced.broadcast_add(sr_b)?;
        layer_norm_affine(&reduced, norm_w, norm_b)
    }
}

/// LayerNorm over the last dimension with a weight and bias, from composite ops (so it has a gradient).
fn layer_norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let wide = if x.dtype() == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
    let mean = wide.mean_keepdim(D::Minus1)?;
    let centred = wide.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.to_dtype(x.dtype())?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// The official initial weights of a `conv` compressor (`sr` the patch average, bias 0; the norm's
/// weight 1, bias 0), by name under `attn1.kv_compress.`.
pub fn initial_weights(
    config: &KvCompressConfig,
    hidden: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Vec<(&'static str, Tensor)>> {
    let s = config.scale_factor as f64;
    config
        .weight_shapes(hidden)
        .into_iter()
        .map(|(name, shape)| {
            let value = match name {
                "sr.weight" => 1.0 / (s * s),
                "norm.weight" => 1.0,
                _ => 0.0,
            };
            Ok((name, (Tensor::ones(shape.as_slice(), dtype, device)? * value)?))
        })
        .collect()
}

/// The `conv` compression an official checkpoint's weights (converted to diffusers names) carry:
/// the blocks with `attn1.kv_compress.sr.weight`, the factor its kernel's side. (`ave`, `uniform`
/// and `uniform_every` learn nothing: a checkpoint cannot say it was trained with them.)
pub fn from_official_weights(w: &std::collections::HashMap<String, Tensor>) -> Option<KvCompressConfig> {
    let mut layers = Vec::new();
    let mut scale = None;
    for (name, t) in w {
        let Some(block) =
            name.strip_prefix("transformer_blocks.").and_then(|r| r.strip_suffix(".attn1.kv_compress.sr.weight"))
        else {
            continue;
        };
        if let (Ok(i), Some(&s)) = (block.parse::<usize>(), t.dims().last()) {
            layers.push(i);
            scale = Some(s);
        }
    }
    layers.sort_unstable();
    Some(KvCompressConfig { sampling: KvSampling::Conv, scale_factor: scale?, kv_compress_layer: layers })
}
