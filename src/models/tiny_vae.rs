//! The weights that make the tiny `AutoencoderKL` of `init-tiny --kind vae` carry the image as a
//! trained one does: its latents are the image's colours averaged over each `scale`×`scale` patch
//! (and their luminance), its posterior has a small log-variance, and its decoder turns latents back
//! into the blurred image; the other weights stay random.
//!
//! How: every residual branch (ResNet `conv2`, attention `to_out`) is zero, so each block passes its
//! input through; `conv_in` writes each colour `c` as the pair `(+A·c, −A·c)` into channels
//! `(2c, 2c+1)`, the downsamplers average 2×2, the upsamplers copy. A pair has mean zero in every
//! group of the `GroupNorm`s, and with `A` small its variance is far below their ε, so each norm
//! multiplies by `1/√ε` instead of standardising the image: the final norms' weights `√ε/A` give the
//! colours back, their bias puts them where SiLU is almost linear, and `conv_out` removes that offset.

use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// The `GroupNorm` ε of diffusers' (and candle's) VAE blocks.
const EPS: f64 = 1e-6;
/// The amplitude the colours travel at inside the networks (variance far below `EPS`).
const AMPLITUDE: f64 = 1e-5;
/// Where the final norms put the colours (in [−1, 1]) on SiLU, whose slope varies by 1.5 % on [5, 7].
const OFFSET: f64 = 6.0;
/// Unscaled latent per unit of colour (SD's latents are of the same order).
pub const GAIN: f64 = 10.0;
/// One over the std of the unscaled latent means of the bundled photos at 256 px
/// (`tests/vae.rs` measures it), as SD's 0.18215 was measured on its data.
pub const SCALING_FACTOR: f64 = 0.19684;
/// The posterior's log-variance: a std of e^−4 ≈ 0.018 against latent means of std ≈ 4.
pub const LOGVAR: f64 = -8.0;

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// SiLU's slope at `x`.
fn silu_slope(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// A convolution weight `[out, in, k, k]` with the given `(out, in, row, col, value)` taps, zero elsewhere.
fn conv(
    dims: &[usize],
    taps: impl IntoIterator<Item = (usize, usize, usize, usize, f64)>,
) -> candle_core::Result<Tensor> {
    let (o, i, kh, kw) = (dims[0], dims[1], dims[2], dims[3]);
    let mut w = vec![0f32; o * i * kh * kw];
    for (a, b, r, c, v) in taps {
        w[((a * i + b) * kh + r) * kw + c] = v as f32;
    }
    Tensor::from_vec(w, dims, &Device::Cpu)
}

/// A vector of `n` values, `f(index)` each.
fn vector(n: usize, f: impl Fn(usize) -> f64) -> candle_core::Result<Tensor> {
    Tensor::from_vec((0..n).map(|k| f(k) as f32).collect::<Vec<_>>(), n, &Device::Cpu)
}

/// Rewrites the weights of a randomly initialised `AutoencoderKL` (diffusers key names) so that it
/// carries the image. `groups` is `norm_num_groups`; `latent_channels` at least 4; each group of
/// every norm must hold an even number of channels, and every block at least 6.
pub fn carry_image(tensors: &mut HashMap<String, Tensor>, groups: usize, latent_channels: usize) -> anyhow::Result<()> {
    anyhow::ensure!(latent_channels >= 4, "the tiny VAE needs 4 latent channels, has {latent_channels}");
    let keys: Vec<String> = tensors.keys().cloned().collect();
    let center = |dims: &[usize]| dims[2] / 2;
    // The colour pairs pass every block unchanged.
    for key in &keys {
        let dims = tensors[key].dims().to_vec();
        let identity = |taps: &[(usize, usize, f64)]| {
            let n = dims[0].min(dims[1]);
            conv(&dims, (0..n).flat_map(|c| taps.iter().map(move |&(r, k, v)| (c, c, r, k, v))))
        };
        let new = if key.ends_with("conv2.weight")
            || key.ends_with("conv2.bias")
            || key.contains(".to_out.0.")
            || key.ends_with("conv_shortcut.bias")
            || key.ends_with("samplers.0.conv.bias")
        {
            Tensor::zeros(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
        } else if key.ends_with("conv_shortcut.weight") {
            identity(&[(0, 0, 1.0)])?
        } else if key.ends_with("downsamplers.0.conv.weight") {
            // Padded right and bottom, stride 2: the taps (0..2, 0..2) average each 2×2 patch.
            identity(&[(0, 0, 0.25), (0, 1, 0.25), (1, 0, 0.25), (1, 1, 0.25)])?
        } else if key.ends_with("upsamplers.0.conv.weight") {
            let m = center(&dims);
            identity(&[(m, m, 1.0)])?
        } else {
            continue;
        };
        tensors.insert(key.clone(), new);
    }
    let get = |tensors: &HashMap<String, Tensor>, k: &str| -> anyhow::Result<Vec<usize>> {
        Ok(tensors.get(k).ok_or_else(|| anyhow::anyhow!("the VAE has no {k}"))?.dims().to_vec())
    };
    for part in ["encoder", "decoder"] {
        let n = get(tensors, &format!("{part}.conv_norm_out.weight"))?[0];
        anyhow::ensure!(
            n >= 6 && n % groups == 0 && (n / groups) % 2 == 0,
            "{part}: {n} channels in {groups} groups cannot carry three colour pairs"
        );
    }
    // Encoder: colours in as pairs, out as latent means (R, G, B, luminance) and a small log-variance.
    let d = get(tensors, "encoder.conv_in.weight")?;
    let m = center(&d);
    let pairs = (0..3).flat_map(|c| [(2 * c, c, m, m, AMPLITUDE), (2 * c + 1, c, m, m, -AMPLITUDE)]);
    tensors.insert("encoder.conv_in.weight".into(), conv(&d, pairs)?);
    tensors.insert("encoder.conv_in.bias".into(), vector(d[0], |_| 0.0)?);
    for part in ["encoder", "decoder"] {
        let n = get(tensors, &format!("{part}.conv_norm_out.weight"))?[0];
        tensors.insert(format!("{part}.conv_norm_out.weight"), vector(n, |_| EPS.sqrt() / AMPLITUDE)?);
        tensors.insert(format!("{part}.conv_norm_out.bias"), vector(n, |_| OFFSET)?);
    }
    let d = get(tensors, "encoder.conv_out.weight")?;
    let m = center(&d);
    let g = GAIN / silu_slope(OFFSET);
    let means = (0..3).flat_map(|c| [(c, 2 * c, m, m, g), (3, 2 * c, m, m, g / 3.0)]);
    tensors.insert("encoder.conv_out.weight".into(), conv(&d, means)?);
    let (mean_offset, l) = (g * silu(OFFSET), latent_channels);
    let bias = vector(2 * l, |k| {
        if k < 4 {
            -mean_offset
        } else if k >= l {
            LOGVAR
        } else {
            0.0
        }
    })?;
    tensors.insert("encoder.conv_out.bias".into(), bias);
    for (key, n) in [("quant_conv", 2 * l), ("post_quant_conv", l)] {
        if tensors.contains_key(&format!("{key}.weight")) {
            tensors.insert(format!("{key}.weight"), conv(&[n, n, 1, 1], (0..n).map(|c| (c, c, 0, 0, 1.0)))?);
            tensors.insert(format!("{key}.bias"), vector(n, |_| 0.0)?);
        }
    }
    // Decoder: latent colours in as pairs (luminance unused), the colours out.
    let d = get(tensors, "decoder.conv_in.weight")?;
    let m = center(&d);
    let a = AMPLITUDE / GAIN;
    let pairs = (0..3).flat_map(|c| [(2 * c, c, m, m, a), (2 * c + 1, c, m, m, -a)]);
    tensors.insert("decoder.conv_in.weight".into(), conv(&d, pairs)?);
    tensors.insert("decoder.conv_in.bias".into(), vector(d[0], |_| 0.0)?);
    let d = get(tensors, "decoder.conv_out.weight")?;
    let m = center(&d);
    let g = 1.0 / silu_slope(OFFSET);
    tensors.insert("decoder.conv_out.weight".into(), conv(&d, (0..3).map(|c| (c, 2 * c, m, m, g)))?);
    tensors.insert("decoder.conv_out.bias".into(), vector(3, |_| -g * silu(OFFSET))?);
    Ok(())
}
