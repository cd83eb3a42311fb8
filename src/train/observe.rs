//! What a training run tells while it runs: one JSON line per optimizer step (`log.jsonl`), the same
//! scalars and the validation grids in a TensorBoard event file beside it, the loss curve
//! (`loss.svg`, redrawn at each log interval) and the process's memory.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Optimizer step (1 for the first).
    pub step: u64,
    /// Epoch of the step's last batch.
    pub epoch: u64,
    /// Mean hybrid loss (`mse + vb`).
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    /// Mean noise MSE.
    #[serde(deserialize_with = "null_as_nan")]
    pub mse: f64,
    /// Mean variational-bound term.
    #[serde(deserialize_with = "null_as_nan")]
    pub vb: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Images per second over the step (data, forward, backward, update).
    pub images_per_s: f64,
    /// Aspect-ratio bucket of the step's batches.
    pub bucket: String,
    /// Skipped for a non-finite loss or gradient.
    pub skipped: bool,
    /// Peak resident memory of the process, MiB (CPU; `null` where unknown).
    pub peak_rss_mib: Option<f64>,
    /// The held-out validation loss of the trained weights (at its steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_loss: Option<f64>,
    /// The held-out validation loss of the EMA weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_loss_ema: Option<f64>,
}

/// JSON has no NaN or infinity (serde_json writes them as `null`): a `null` reads back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The process's peak resident memory in MiB (`VmHWM` of `/proc/self/status`; Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `log.jsonl`, appended a line per step and flushed.
pub struct StepLog {
    path: PathBuf,
    /// `None` on the ranks other than 0, which keep their lines in memory alone.
    file: Option<std::fs::File>,
    /// Every line so far (for the curve).
    pub lines: Vec<LogLine>,
    /// This run's TensorBoard event file (rank 0).
    events: Option<crate::tensorboard::EventWriter>,
}

impl StepLog {
    /// Opens the run's log keeping only the lines of steps up to `upto` (the resumed checkpoint's
    /// step; 0 for a fresh run) byte for byte as they were written, the file rewritten atomically
    /// when anything is dropped (a torn last line of a killed run, steps past the checkpoint).
    /// Without `write` (a rank other than 0) the file is read, never written.
    pub fn open(run: &Path, upto: u64, write: bool) -> anyhow::Result<Self> {
        let path = run.join("log.jsonl");
        let mut lines = Vec::new();
        let mut kept = String::new();
        let mut dropped = false;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for raw in text.split_inclusive('\n') {
                match serde_json::from_str::<LogLine>(raw.trim_end()) {
                    Ok(l) if l.step <= upto && raw.ends_with('\n') => {
                        kept.push_str(raw);
                        lines.push(l);
                    }
                    _ => dropped = true,
                }
            }
        }
        if !write {
            return Ok(Self { path, file: None, lines, events: None });
        }
        if dropped || !path.is_file() {
            crate::shards::write_atomic(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot append: {e}", path.display()))?;
        // A new event file per run; its session start drops the earlier files' steps after `upto`.
        let events = crate::tensorboard::EventWriter::create(run, upto + 1)?;
        Ok(Self { path, file: Some(file), lines, events: Some(events) })
    }

    /// Appends one step.
    pub fn push(&mut self, line: LogLine) -> anyhow::Result<()> {
        if let Some(file) = &mut self.file {
            let mut text = serde_json::to_string(&line)?;
            text.push('\n');
            file.write_all(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
            file.flush()?;
        }
        if let Some(events) = &mut self.events {
            let mut scalars = vec![
                ("train/loss", line.loss),
                ("train/mse", line.mse),
                ("train/vb", line.vb),
                ("train/grad_norm", line.grad_norm),
                ("train/lr", line.lr),
                ("train/images_per_s", line.images_per_s),
                ("train/skipped", f64::from(u8::from(line.skipped))),
            ];
            if let Some(rss) = line.peak_rss_mib {
                scalars.push(("train/peak_rss_mib", rss));
            }
            if let (Some(raw), Some(ema)) = (line.holdout_loss, line.holdout_loss_ema) {
                scalars.push(("holdout/loss", raw));
                scalars.push(("holdout/loss_ema", ema));
            }
            events.scalars(line.step, &scalars)?;
            events.flush()?;
        }
        self.lines.push(line);
        Ok(())
    }

    /// Adds the PNG image `png` (a validation grid) to the event file as `tag` at `step`.
    pub fn image(&mut self, tag: &str, step: u64, png: &Path) -> anyhow::Result<()> {
        let Some(events) = &mut self.events else { return Ok(()) };
        let bytes = std::fs::read(png).map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
        let (w, h) = ::image::image_dimensions(png).map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
        events.png(tag, step, &bytes, w, h)?;
        events.flush()
    }

    /// Redraws `loss.svg` next to the log.
    pub fn draw_curve(&self) -> anyhow::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let svg = loss_curve(&self.lines).map_err(anyhow::Error::msg)?;
        crate::shards::write_atomic(&self.path.with_file_name("loss.svg"), svg.as_bytes())?;
        Ok(())
    }
}

/// The mean of each window of `n` consecutive values ending at each point (a trailing average).
fn smoothed(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= n {
            sum -= points[i - n].1;
        }
        out.push((x, sum / (i + 1).min(n) as f64));
    }
    out
}

/// At most `n` points of `points`, evenly spaced, the last one kept: the chart is a few hundred
/// pixels wide, and drawing every step of a long run each time the curve is redrawn would make
/// each redraw cost more than the steps between them.
fn thinned(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    let every = points.len().div_ceil(n).max(1);
    let last = points.len().saturating_sub(1);
    points.into_iter().enumerate().filter(|(i, _)| i % every == 0 || *i == last).map(|(_, p)| p).collect()
}

/// Points drawn per series of the loss curve.
const CURVE_POINTS: usize = 1500;

/// The loss curve as SVG: the per-step loss (faint), its trailing average and the MSE term.
pub fn loss_curve(lines: &[LogLine]) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("loss curve: {e}");
    let good: Vec<&LogLine> = lines.iter().filter(|l| !l.skipped && l.loss.is_finite()).collect();
    let loss: Vec<(f64, f64)> = good.iter().map(|l| (l.step as f64, l.loss)).collect();
    let mse: Vec<(f64, f64)> = good.iter().map(|l| (l.step as f64, l.mse)).collect();
    let window = (loss.len() / 20).clamp(1, 100);
    let held: Vec<(f64, f64)> = lines.iter().filter_map(|l| Some((l.step as f64, l.holdout_loss?))).collect();
    let held_ema: Vec<(f64, f64)> = lines.iter().filter_map(|l| Some((l.step as f64, l.holdout_loss_ema?))).collect();
    let x_max = loss.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max =
        loss.iter().chain(&held).chain(&held_ema).map(|p| p.1).filter(|v| v.is_finite()).fold(1e-6, f64::max) * 1.05;
    let avg = thinned(smoothed(&loss, window), CURVE_POINTS);
    let mse = thinned(smoothed(&mse, window), CURVE_POINTS);
    let loss = thinned(loss, CURVE_POINTS);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption("training loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
        let faint = RGBColor(31, 119, 180).mix(0.3);
        c.draw_series(LineSeries::new(loss.iter().copied(), faint.stroke_width(1)))
            .map_err(|e| err(&e))?
            .label("loss (mse + vb)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], faint.stroke_width(2)));
        let blue = RGBColor(31, 119, 180);
        c.draw_series(LineSeries::new(avg, blue.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("loss, mean of {window}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2)));
        let orange = RGBColor(255, 127, 14);
        c.draw_series(LineSeries::new(mse, orange.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("mse, mean of {window}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], orange.stroke_width(2)));
        for (points, color, name) in [
            (&held, RGBColor(44, 160, 44), "held-out loss"),
            (&held_ema, RGBColor(148, 103, 189), "held-out loss, EMA"),
        ] {
            if points.is_empty() {
                continue;
            }
            c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(3))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_average() {
        let p: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        let s: Vec<f64> = smoothed(&p, 2).iter().map(|p| p.1).collect();
        assert_eq!(s, [0.0, 0.5, 1.5, 2.5, 3.5]);
    }

    #[test]
    fn thinning_keeps_the_ends_and_spreads_the_rest() {
        let p: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 0.0)).collect();
        let x: Vec<f64> = thinned(p.clone(), 4).iter().map(|p| p.0).collect();
        assert_eq!(x, [0.0, 3.0, 6.0, 9.0]);
        assert_eq!(thinned(p.clone(), 20), p);
        assert!(thinned(Vec::new(), 4).is_empty());
    }
}
