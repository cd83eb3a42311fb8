//! `pixforge demo`: `pipelines/demo.toml` on bundled public-domain and CC0 photos, with no
//! downloads: ingest, re-captioning, the concept-density report, the T5 and VAE feature caches —
//! made with tiny randomly initialised models in the real layouts, since no weights can be
//! downloaded here (the same stages take the real LLaVA, T5-v1.1-XXL and SD VAE folders) — and a
//! short training run of a tiny PixArtMS on those caches.

use crate::shards::{read_records, Status};
use std::path::{Path, PathBuf};

/// The bundled photos: (file name, bytes).
pub const IMAGES: &[(&str, &[u8])] = &[
    ("astronaut.jpg", include_bytes!("../assets/demo/astronaut.jpg")),
    ("camera.jpg", include_bytes!("../assets/demo/camera.jpg")),
    ("chelsea.jpg", include_bytes!("../assets/demo/chelsea.jpg")),
    ("coffee.jpg", include_bytes!("../assets/demo/coffee.jpg")),
    ("hubble_deep_field.jpg", include_bytes!("../assets/demo/hubble_deep_field.jpg")),
    ("rocket.jpg", include_bytes!("../assets/demo/rocket.jpg")),
];

/// Tab-separated `file name<TAB>caption` lines for the bundled photos.
pub const CAPTIONS: &str = include_str!("../assets/demo/captions.txt");

/// Writes the bundled photos and their `.txt` captions into `dir` (a kohya-style folder).
pub fn write_inputs(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in IMAGES {
        std::fs::write(dir.join(name), bytes)?;
    }
    for line in CAPTIONS.lines() {
        if let Some((name, caption)) = line.split_once('\t') {
            std::fs::write(dir.join(Path::new(name).with_extension("txt")), caption)?;
        }
    }
    Ok(())
}

/// Writes the bundled photos as one SA-1B-format tar (`sa_N.jpg` + `sa_N.json`) at `path`, each
/// image with two COCO-RLE masks: the pixels brighter than its mean luminance, and the others.
pub fn write_sa1b_tar(path: &Path) -> anyhow::Result<()> {
    use crate::ingest::rle::Rle;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, name, data)
    };
    for (i, (name, bytes)) in IMAGES.iter().enumerate() {
        let img = image::load_from_memory(bytes)?.to_luma8();
        let (w, h) = img.dimensions();
        let mean = img.pixels().map(|p| p[0] as f64).sum::<f64>() / (w as f64 * h as f64);
        // COCO masks are column-major.
        let bright: Vec<u8> = (0..w)
            .flat_map(|x| (0..h).map(move |y| (x, y)))
            .map(|(x, y)| u8::from(img.get_pixel(x, y)[0] as f64 > mean))
            .collect();
        let dark: Vec<u8> = bright.iter().map(|&v| 1 - v).collect();
        let annotations: Vec<serde_json::Value> = [bright, dark]
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let rle = Rle::encode(m, h, w);
                serde_json::json!({
                    "id": i * 2 + k + 1, "area": rle.area(), "bbox": rle.bbox(),
                    "segmentation": {"size": [h, w], "counts": String::from_utf8_lossy(&rle.to_string_bytes())},
                })
            })
            .collect();
        let id = i + 1;
        let json = serde_json::json!({
            "image": {"image_id": id, "width": w, "height": h, "file_name": format!("sa_{id}.jpg"), "source": name},
            "annotations": annotations,
        });
        add(format!("sa_{id}.jpg"), bytes)?;
        add(format!("sa_{id}.json"), serde_json::to_string(&json)?.as_bytes())?;
    }
    let data = b.into_inner()?;
    if std::fs::read(path).ok().as_deref() != Some(data.as_slice()) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::shards::write_atomic(path, &data)?;
    }
    Ok(())
}

/// Real caption sets the demo's density report compares: (file name, bytes) — COCO captions
/// (human-written) and LLaVA's GPT-4 answers (the `detail` ones are dense descriptions).
pub const REFERENCE_CAPTIONS: &[(&str, &[u8])] = &[
    ("coco_val2014_captions_1000.json", include_bytes!("../assets/demo/coco_val2014_captions_1000.json")),
    ("llava_qa90_gpt4_answer.jsonl", include_bytes!("../assets/demo/llava_qa90_gpt4_answer.jsonl")),
];

/// The demo's pipeline (`pipelines/demo.toml`).
pub const PIPELINE: &str = include_str!("../pipelines/demo.toml");

/// What the demo produced.
pub struct DemoReport {
    /// Every stage's report.
    pub pipeline: crate::pipeline::PipelineReport,
    /// The shard directory.
    pub shards: PathBuf,
    /// The first sample's key and generated caption.
    pub first_caption: (String, String),
    /// Mean loss of the first steps of the training run.
    pub first_loss: f64,
}

impl DemoReport {
    /// What the demo did, stage by stage, and where everything is (printed by `pixforge demo`).
    pub fn text(&self, out: &Path) -> anyhow::Result<String> {
        let p = &self.pipeline;
        let mut text = format!("pixforge demo ({}: pipelines/demo.toml on the bundled photos)\n\n", out.display());
        text.push_str(&p.text());
        if let Some(stats) = &p.ingest {
            if stats.shards_done > 0 {
                text.push_str(&format!("\ningested the bundled photos into {}\n", self.shards.display()));
                text.push_str(&crate::ingest::summary(stats));
                text.push_str("samples:\n");
                text.push_str(&summarize(&self.shards)?);
            }
        }
        if let Some(c) = p.captions.as_ref().filter(|c| c.shards_done > 0) {
            text.push_str(&format!(
                "\ncaptions in {}/{{photos,sa1b}}/captions: {} of {} images re-captioned with the paper's prompt by a tiny LLaVA-1.5 in \
                 the llava-hf layout ({}/models/llava) — UNTRAINED, random weights, so its captions are noise; the \
                 same stage takes llava-hf/llava-1.5-7b-hf or a vLLM server (docs/caption.md)\n  {}: {:?}\n",
                out.display(),
                c.successes,
                c.samples,
                out.display(),
                self.first_caption.0,
                self.first_caption.1,
            ));
        }
        if let Some(d) = &p.density {
            text.push_str(&format!("\nconcept density ({}/density/self.html):\n\n", out.display()));
            text.push_str(&crate::density::report::markdown(d));
        }
        let (t5, vae) = (p.t5.as_ref().filter(|s| s.shards_done > 0), p.vae.as_ref().filter(|s| s.shards_done > 0));
        if let (Some(t5), Some(vae)) = (t5, vae) {
            text.push_str(&format!(
                "\nfeature caches in {}/{{photos,sa1b}}/latents (tiny random T5 and VAE in the real layouts: no weights are downloaded \
                 here):\n  t5: {} of {} captions embedded (the captions above; PixArt-α cleaning, unpadded, bf16)\n  \
                 vae: {} of {} images encoded into the 256 px aspect-ratio buckets (mean and std, f16)\n",
                out.display(),
                t5.successes,
                t5.samples,
                vae.successes,
                vae.samples
            ));
        }
        if let Some(t) = &p.train {
            text.push_str(&format!(
                "\ntraining ([train] of pipelines/demo.toml, the format of pixforge train --config): a tiny PixArtMS, {} \
                 steps on {} samples in {} buckets\n  loss {:.3} (first 10 steps) -> {:.3} (last 10)\n  log: \
                 {}/train/log.jsonl, curve: {}/train/loss.svg\n  checkpoint: {}\n  validation grid: {} (labelled \
                 with its prompts and seeds)\n  samples: {}/samples/NNNN.png (+ .json: prompt, seed; all of them \
                 labelled in grid.png)\n  the grid and the samples are from tiny random-weight models trained for seconds: blotches \
                 of the photos' colours, not pictures; the same commands train and sample real PixArt weights\n",
                t.end_step,
                t.samples,
                t.buckets.len(),
                self.first_loss,
                t.final_loss.unwrap_or(f64::NAN),
                out.display(),
                out.display(),
                t.checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                t.validation.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                out.display(),
            ));
        }
        text.push_str(&format!("\nlook at the data: pixforge browse {} (a web page on loopback)\n", out.display()));
        Ok(text)
    }
}

/// Runs the demo into `out`: the bundled photos and their captions written to `out/input` (a
/// folder source) and as an SA-1B-format tar to `out/input-sa1b`, then `pipelines/demo.toml` (tiny
/// models, both sources ingested, captions, density, caches, training, samples) into `out`.
/// A rerun does only what is missing.
pub fn run(out: &Path) -> anyhow::Result<DemoReport> {
    write_inputs(&out.join("input"))?;
    write_sa1b_tar(&out.join("input-sa1b").join("sa_demo.tar"))?;
    std::fs::create_dir_all(out.join("reference"))?;
    for (name, bytes) in REFERENCE_CAPTIONS {
        let p = out.join("reference").join(name);
        if std::fs::read(&p).ok().as_deref() != Some(*bytes) {
            crate::shards::write_atomic(&p, bytes)?;
        }
    }
    let prompts: Vec<&str> = CAPTIONS.lines().filter_map(|l| l.split_once('\t').map(|(_, c)| c)).take(2).collect();
    crate::shards::write_atomic(&out.join("prompts.txt"), prompts.join("\n").as_bytes())?;
    let out = std::path::absolute(out)?;
    let pipeline = crate::pipeline::Pipeline::parse(PIPELINE, &out.join("demo.toml"), Some(&out))?;
    let report = crate::pipeline::run(&pipeline, false, crate::shards::Worker::default())?;
    let first_caption = crate::shards::captions::read_captions(&out.join("photos/captions/00000.captions.parquet"))?
        .into_iter()
        .next()
        .map(|e| (e.key, e.caption.unwrap_or_default()))
        .unwrap_or_default();
    let log = std::fs::read_to_string(out.join("train/log.jsonl")).unwrap_or_default();
    let first: Vec<f64> = log
        .lines()
        .take(10)
        .filter_map(|l| serde_json::from_str::<crate::train::observe::LogLine>(l).ok())
        .map(|l| l.loss)
        .collect();
    let first_loss = first.iter().sum::<f64>() / first.len().max(1) as f64;
    Ok(DemoReport { pipeline: report, shards: out.join("photos/shards"), first_caption, first_loss })
}

/// A human summary of a shard directory: one line per shard, then one per sample.
pub fn summarize(dir: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    for shard in crate::shards::done_shards(dir)? {
        let name = crate::shards::shard_name(shard);
        let recs = read_records(&dir.join(format!("{name}.parquet")))?;
        let tar = std::fs::metadata(dir.join(format!("{name}.tar"))).map(|m| m.len()).unwrap_or(0);
        s.push_str(&format!("  {name}.tar  {tar:>9} bytes  {} rows\n", recs.len()));
        for r in recs {
            let detail = match r.status() {
                Status::Success => format!(
                    "{}x{} from {}x{}",
                    r.width.unwrap_or(0),
                    r.height.unwrap_or(0),
                    r.original_width.unwrap_or(0),
                    r.original_height.unwrap_or(0)
                ),
                _ => r.error_message.clone().unwrap_or_default(),
            };
            s.push_str(&format!("    {}  {:<18} {:<24} {}\n", r.key, r.status().as_str(), r.source, detail));
        }
    }
    Ok(s)
}
