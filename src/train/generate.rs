//! `pixforge sample`: prompts → images with a PixArt transformer, the T5 encoder and the VAE, as the
//! official inference runs them (or diffusers' pipeline, by choice of sampler and null condition):
//! prompt embeddings unpadded with their mask, noise from our seeded RNG (or a file, for parity with
//! another implementation), guided sampling, VAE decode of latents / scaling factor, PNG out.

use super::model::PixArt;
use super::sampler::{self, Condition, Guided, SamplerKind};
use crate::latents::{t5::TextEncoder, vae::Vae};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// The unconditional branch of classifier-free guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NullCondition {
    /// `y_embedding` when the checkpoint has one (official), else the empty prompt.
    Auto,
    /// The checkpoint's `y_embedding` with the prompt's mask (the official inference).
    Official,
    /// T5 of the empty prompt with its own mask (diffusers' `negative_prompt=""`).
    Empty,
}

/// The sample stage's configuration (the `pixforge sample` flags and a pipeline's `[sample]`): how
/// images are sampled, whatever the models.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Image size, WIDTHxHEIGHT in pixels (default: the model's resolution, its sample_size × 8).
    #[arg(long)]
    pub size: Option<crate::config::ImageSize>,
    /// Sampler.
    #[arg(long, value_enum, default_value = "dpm-solver")]
    pub sampler: SamplerKind,
    /// Steps (default: the sampler's official count: 20, 50 or 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 4.5)]
    pub cfg: f64,
    /// Unconditional branch of the guidance.
    #[arg(long, value_enum, default_value = "auto")]
    pub null: NullCondition,
    /// Prompt preparation before T5: PixArt-α's caption cleaning, or lower-case only.
    #[arg(long, value_enum, default_value = "pixart")]
    pub cleaning: crate::latents::t5::TextCleaning,
    /// Seed of the noise (one stream, drawn prompt after prompt).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Binning: a 256/512/1024/2048 px model generates at the nearest aspect-ratio bucket and the image is
    /// resized + center-cropped to the size, as diffusers does; `--no-binning` (in a pipeline:
    /// `binning = false`) generates at exactly the size.
    #[arg(long = "no-binning", action = clap::ArgAction::SetFalse)]
    pub binning: bool,
    /// T5 tokens per prompt (default: the model's: 300 for PixArt-Σ — a pipeline folder whose
    /// model_index.json names PixArtSigmaPipeline, or an official checkpoint whose null caption has
    /// 300 rows — else PixArt-α's 120).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Also write `grid.png`: every image of the run in one picture, labelled with its prompt and
    /// the settings; `--no-grid` (in a pipeline: `grid = false`) writes only the images.
    #[arg(long = "no-grid", action = clap::ArgAction::SetFalse)]
    pub grid: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// What to sample: the models, and how.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// A diffusers transformer folder, or an official checkpoint (`.pth` / `.safetensors`).
    pub transformer: PathBuf,
    /// For an official checkpoint without a `config.json` beside it: heads and the latent size its
    /// positions were laid out for (default 16, 64); checked against one where there is.
    pub official_shape: Option<(usize, usize)>,
    /// T5 folder (or a diffusers pipeline folder).
    pub t5: PathBuf,
    /// VAE folder (or a diffusers pipeline folder).
    pub vae: PathBuf,
    /// Initial noise `noise` [N or 1, C, h, w] from a safetensors file instead of the seed.
    pub noise: Option<PathBuf>,
    /// LoRA / DoRA adapters (peft folders) and their scales, merged into the transformer in order.
    pub loras: Vec<(PathBuf, f64)>,
    /// Size, sampler, guidance, seed.
    pub config: SampleConfig,
}

/// One generated image.
pub struct Generated {
    /// The null condition used (never `Auto`).
    pub null: NullCondition,
    /// The final latents `[1, C, h, w]`.
    pub latents: Tensor,
    /// RGB pixels, row-major, `height × width × 3`.
    pub rgb: Vec<u8>,
    /// Image width and height.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The bucket generated at, when binning applied.
    pub bucket: Option<crate::latents::buckets::Bucket>,
    /// The T5 tokens a prompt was cut to.
    pub max_tokens: usize,
}

fn load_transformer(o: &SampleOptions, dev: &Device) -> anyhow::Result<PixArt> {
    let model = PixArt::load_any(&o.transformer, o.official_shape, dev)?;
    super::lora::with_adapters(model, &o.loras, dev)
}

/// `[1, 3, H, W]` images resized to cover `height × width` (bilinear) and center-cropped to it
/// (diffusers' `resize_and_crop_tensor`).
fn resize_and_crop(img: &Tensor, height: usize, width: usize) -> anyhow::Result<Tensor> {
    let (_, _, h, w) = img.dims4()?;
    if (h, w) == (height, width) {
        return Ok(img.clone());
    }
    let ratio = (width as f64 / w as f64).max(height as f64 / h as f64);
    let (rh, rw) = (((h as f64 * ratio) as usize).max(height), ((w as f64 * ratio) as usize).max(width));
    let resized = img.upsample_bilinear2d(rh, rw, false)?;
    Ok(resized.narrow(2, (rh - height) / 2, height)?.narrow(3, (rw - width) / 2, width)?)
}

/// Pixels of `[1, 3, H, W]` images in [−1, 1] as diffusers rounds them: `round((x/2 + ½)·255)`.
pub(crate) fn to_rgb(img: &Tensor) -> anyhow::Result<Vec<u8>> {
    let img = ((img.squeeze(0)?.permute((1, 2, 0))? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let v: Vec<f32> = img.flatten_all()?.to_vec1()?;
    Ok(v.iter().map(|x| (x * 255.0).round() as u8).collect())
}

/// PixArt-Σ's caption length (diffusers' `PixArtSigmaPipeline` `max_sequence_length`).
pub const SIGMA_MAX_TOKENS: usize = 300;

/// The caption length the model was trained with: its null caption's rows (an official
/// checkpoint), else 300 when the transformer sits in a `PixArtSigmaPipeline` folder, else 120.
fn model_max_tokens(o: &SampleOptions, model: &PixArt) -> usize {
    if let Some(rows) = model.null_caption().and_then(|n| n.dim(0).ok()) {
        return rows;
    }
    let index = [o.transformer.join("model_index.json"), o.transformer.join("../model_index.json")];
    let sigma = index.iter().filter_map(|p| std::fs::read_to_string(p).ok()).any(|text| {
        serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v["_class_name"].as_str() == Some("PixArtSigmaPipeline"))
    });
    if sigma {
        SIGMA_MAX_TOKENS
    } else {
        crate::latents::t5::MAX_TOKENS
    }
}

/// Generates one image per prompt.
pub fn generate(o: &SampleOptions, prompts: &[String], device: &Device) -> anyhow::Result<Vec<Generated>> {
    let model = load_transformer(o, device)?;
    let max_tokens = o.config.max_tokens.unwrap_or_else(|| model_max_tokens(o, &model));
    let mut t5 = TextEncoder::load(&o.t5, max_tokens, o.config.cleaning, device)?;
    let vae = Vae::load(&o.vae, device)?;
    let c = &model.config;
    if t5.d_model != c.caption_channels {
        anyhow::bail!(
            "{}: T5 width {} does not match the transformer's caption_channels {}",
            o.t5.display(),
            t5.d_model,
            c.caption_channels
        );
    }
    let base = c.sample_size * 8;
    let (want_h, want_w) = o.config.size.map_or((base, base), |s| s.hw());
    let bucket = match crate::latents::buckets::table(base, true) {
        Some(t) if o.config.binning => Some(crate::latents::buckets::closest(&t, want_h, want_w)),
        _ => None,
    };
    let (h, w) = bucket.map(|b| (b.height, b.width)).unwrap_or((want_h, want_w));
    let unit = vae.scale * c.patch_size;
    if h % unit != 0 || w % unit != 0 || h == 0 || w == 0 {
        anyhow::bail!("--size {w}x{h}: width and height must be positive multiples of {unit} (VAE scale × patch size)");
    }
    let (lh, lw) = (h / vae.scale, w / vae.scale);
    let null = match o.config.null {
        NullCondition::Auto if model.null_caption().is_some() => NullCondition::Official,
        NullCondition::Auto => NullCondition::Empty,
        n => n,
    };
    let empty = if null == NullCondition::Empty && o.config.cfg != 1.0 { Some(t5.encode("")?) } else { None };
    let file_noise = match &o.noise {
        Some(p) => Some(
            crate::hub::Weights::open(&[p.to_path_buf()])?
                .load_all(device)?
                .remove("noise")
                .ok_or_else(|| anyhow::anyhow!("{}: expected a tensor \"noise\"", p.display()))?,
        ),
        None => None,
    };
    let micro = if model.has_micro_conditions() {
        Some((Tensor::new(&[[h as f32, w as f32]], device)?, Tensor::new(&[[h as f32 / w as f32]], device)?))
    } else {
        None
    };
    let diffusion = super::diffusion::Diffusion::linear(1000);
    let steps = o.config.steps.unwrap_or(o.config.sampler.default_steps());
    let mut rng = crate::rng::Rng::new(o.config.seed);
    let mut out = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let emb = t5.encode(prompt)?;
        let l = emb.dim(0)?;
        let cond = Condition { caption: emb.unsqueeze(0)?, mask: Tensor::ones((1, l), DType::F32, device)? };
        let uncond = match (&empty, null) {
            (Some(e), NullCondition::Empty) => {
                Some(Condition { caption: e.unsqueeze(0)?, mask: Tensor::ones((1, e.dim(0)?), DType::F32, device)? })
            }
            (_, NullCondition::Official) => Some(Condition::official_null(&model, &cond)?),
            _ => None,
        };
        let guided = Guided::new(&model, cond, uncond, o.config.cfg, micro.clone())?;
        let x = match &file_noise {
            Some(n) => n.narrow(0, i.min(n.dim(0)? - 1), 1)?.to_dtype(DType::F32)?,
            None => rng.normal_tensor(&[1, c.in_channels, lh, lw], 1.0, device)?,
        };
        if x.dims() != [1, c.in_channels, lh, lw] {
            anyhow::bail!(
                "noise of shape {:?} does not fit {w}x{h} images (expected [1, {}, {lh}, {lw}])",
                x.dims(),
                c.in_channels
            );
        }
        let mut model_fn = |x: &Tensor, t: f64| guided.output(x, t);
        let mut noise_fn = |x: &Tensor| rng.normal_tensor(x.dims(), 1.0, x.device());
        let latents = sampler::sample(o.config.sampler, &diffusion, steps, x, &mut model_fn, &mut noise_fn)?;
        let image = resize_and_crop(&vae.decode(&latents)?, want_h, want_w)?;
        out.push(Generated { null, rgb: to_rgb(&image)?, latents, width: want_w, height: want_h, bucket, max_tokens });
    }
    Ok(out)
}

/// Generates the images and writes `NNNN.png` and `NNNN.json` (prompt and settings) per prompt into
/// `out`, atomically, each PNG carrying its prompt and settings as text (`parameters`, the form
/// Stable Diffusion tools read), and with `config.grid` all of them labelled in `grid.png`; returns
/// the images' paths.
pub fn run(o: &SampleOptions, prompts: &[String], out: &Path, device: &Device) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    let images = generate(o, prompts, device)?;
    let steps = o.config.steps.unwrap_or(o.config.sampler.default_steps());
    let note = crate::hub::random_weights_note(&[
        (&o.transformer, "transformer", "transformer"),
        (&o.t5, "text_encoder", "T5"),
        (&o.vae, "vae", "VAE"),
    ]);
    let mut paths = Vec::new();
    let mut pictures = Vec::new();
    for (i, (g, prompt)) in images.iter().zip(prompts).enumerate() {
        let png = out.join(format!("{i:04}.png"));
        let picture = image::RgbImage::from_raw(g.width as u32, g.height as u32, g.rgb.clone())
            .expect("the buffer holds width × height × 3 bytes");
        let parameters = format!(
            "{prompt}\nSteps: {steps}, Sampler: {}, CFG scale: {}, Seed: {}, Prompt index: {i}, Size: {}x{}, Model: {}",
            o.config.sampler.name(),
            o.config.cfg,
            o.config.seed,
            g.width,
            g.height,
            o.transformer.display()
        );
        let mut text =
            vec![("parameters", parameters), ("Software", format!("pixforge {}", env!("CARGO_PKG_VERSION")))];
        if let Some(note) = &note {
            text.push(("Comment", note.clone()));
        }
        crate::shards::write_atomic(&png, &crate::image::label::png_with_text(&picture, &text)?)?;
        let meta = serde_json::json!({
            "prompt": prompt, "seed": o.config.seed, "sampler": o.config.sampler, "steps": steps,
            "cfg": o.config.cfg, "null": g.null, "width": g.width, "height": g.height, "bucket": g.bucket,
            "max_tokens": g.max_tokens, "transformer": o.transformer, "t5": o.t5, "vae": o.vae,
            "loras": o.loras, "note": note,
        });
        crate::shards::write_atomic(
            &out.join(format!("{i:04}.json")),
            serde_json::to_string_pretty(&meta)?.as_bytes(),
        )?;
        paths.push(png);
        pictures.push(picture);
    }
    if o.config.grid && !pictures.is_empty() {
        // The transformer by its last two path parts (the full path is in each image's parameters).
        let parts: Vec<String> = o.transformer.iter().rev().take(2).map(|p| p.to_string_lossy().into_owned()).collect();
        let model: Vec<&str> = parts.iter().rev().map(String::as_str).collect();
        let title = format!(
            "pixforge sample - {}, {steps} steps, cfg {}, seed {} - {}",
            o.config.sampler.name(),
            o.config.cfg,
            o.config.seed,
            model.join("/")
        );
        write_grid(&out.join("grid.png"), &pictures, prompts, title, note)?;
    }
    Ok(paths)
}

/// Writes `pictures` (of one size) one under another, each labelled with its prompt, under `title`
/// and `note`, as the PNG `path`.
fn write_grid(
    path: &Path,
    pictures: &[image::RgbImage],
    prompts: &[String],
    title: String,
    note: Option<String>,
) -> anyhow::Result<()> {
    use crate::image::label::{labelled_grid, png_with_text, GridLabels};
    const GAP: u32 = 4;
    let (w, h) = pictures[0].dimensions();
    let mut grid = image::RgbImage::from_pixel(w, pictures.len() as u32 * (h + GAP) - GAP, image::Rgb([255; 3]));
    for (i, p) in pictures.iter().enumerate() {
        image::imageops::replace(&mut grid, p, 0, (i as u32 * (h + GAP)) as i64);
    }
    let rows = prompts.iter().enumerate().map(|(i, p)| format!("{i:04}: {p}")).collect();
    let labels = GridLabels { title: title.clone(), note: note.clone(), columns: Vec::new(), rows };
    let mut text = vec![("Title", title)];
    text.extend(note.map(|n| ("Comment", n)));
    Ok(crate::shards::write_atomic(path, &png_with_text(&labelled_grid(&grid, (w, h), GAP, &labels), &text)?)?)
}
