//! `pixforge density`: counts nouns in one or more caption sets and writes `report.json` (for
//! machines), `report.md` (the paper's Table 1 layout) and a self-contained `report.html` (charts
//! inline), each atomically.

use super::charts::charts;
use super::counts::{CountOptions, Counter, NounCounter, Work};
use super::input::{read_batches, NamedInput, ReadSummary, Selection};
use super::metrics::Metrics;
use super::tagger::Tagger;
use rayon::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The density stage's configuration (the `pixforge density` flags and a pipeline's `[density]`):
/// everything it needs besides its inputs.
#[derive(Debug, Clone, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DensityConfig {
    /// How nouns are counted.
    #[command(flatten)]
    pub count: CountOptions,
    /// Which captions of each input are read (an input's own selection takes precedence).
    #[command(flatten)]
    pub selection: Selection,
    /// A T5 tokenizer.json (e.g. t5-v1_1-xxl's): adds T5 token counts and the share truncated at --max-tokens.
    #[arg(long)]
    pub t5_tokenizer: Option<PathBuf>,
    /// The T5 token limit (PixArt-α embeds 120 tokens).
    #[arg(long, default_value_t = 120)]
    pub max_tokens: u64,
    /// Also count each caption source of a caption folder apart: after the folder's own row, one
    /// row per prompt and caption index (`NAME dense:{prompt_id}:{caption_index}`).
    #[arg(long)]
    pub by_source: bool,
}

impl Default for DensityConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// pixforge version.
    pub version: String,
    /// Counting choices.
    pub options: CountOptions,
    /// The T5 tokenizer used, if any.
    pub t5_tokenizer: Option<String>,
    /// What the T5 token columns are: the tokenizer's path and size, and a warning when it is far
    /// smaller than T5's 32,100 pieces (a toy tokenizer's lengths are not T5's).
    pub t5_note: Option<String>,
    /// One entry per input, in the order given.
    pub inputs: Vec<Metrics>,
    /// How the run went.
    pub run: RunInfo,
}

/// Time and memory of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Wall-clock seconds for counting all inputs.
    pub seconds: f64,
    /// Captions per second over all inputs.
    pub captions_per_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The process's peak resident memory in MiB, where the OS tells it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Captions per batch handed to the workers.
const BATCH: usize = 16_384;

/// Counts one input.
pub fn count_input(
    input: &NamedInput,
    nc: &NounCounter,
    sel: &Selection,
    progress: bool,
) -> anyhow::Result<(Counter, ReadSummary)> {
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {human_pos} captions, {per_sec} [{elapsed}]")
                .expect("valid template"),
        );
        b.set_prefix(input.name.clone());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut total = Counter::default();
    let mut on_batch = |batch: Vec<String>| -> anyhow::Result<()> {
        let part = batch
            .par_chunks(512)
            .map_init(Work::default, |work, chunk| {
                let mut c = Counter::default();
                for text in chunk {
                    nc.add(text, &mut c, work)?;
                }
                Ok::<Counter, anyhow::Error>(c)
            })
            .try_reduce(Counter::default, |mut a, b| {
                a.merge(b);
                Ok(a)
            })?;
        total.merge(part);
        bar.inc(batch.len() as u64);
        Ok(())
    };
    let read = read_batches(&input.path, sel, BATCH, &mut on_batch)
        .map_err(|e| e.context(format!("input {:?}", input.name)))?;
    bar.finish_and_clear();
    if read.unreadable > 0 {
        eprintln!(
            "{}: skipped {} unreadable line(s), e.g. {}",
            input.name,
            read.unreadable,
            read.unreadable_examples.join("; ")
        );
    }
    Ok((total, read))
}

/// Counts every input and writes the three report files into `out`.
pub fn run(inputs: &[NamedInput], o: &DensityConfig, progress: bool, out: &Path) -> anyhow::Result<Report> {
    if inputs.is_empty() {
        anyhow::bail!("no inputs: give caption files or folders, or --input NAME=PATH");
    }
    let t5 = match &o.t5_tokenizer {
        Some(p) => Some(
            tokenizers::Tokenizer::from_file(p)
                .map_err(|e| anyhow::anyhow!("{}: not a usable tokenizer.json (--t5-tokenizer): {e}", p.display()))?,
        ),
        None => None,
    };
    let nc = NounCounter { tagger: Tagger::embedded(), options: &o.count, t5: t5.as_ref() };
    let start = std::time::Instant::now();
    let mut metrics = Vec::new();
    let inputs = if o.by_source { by_source(inputs, &o.selection)? } else { inputs.to_vec() };
    for input in &inputs {
        let (counter, read) = count_input(input, &nc, input.selection.as_ref().unwrap_or(&o.selection), progress)?;
        let mut m = Metrics::new(&input.name, &input.path.display().to_string(), &counter, &o.count, o.max_tokens);
        m.unreadable = read;
        metrics.push(m);
    }
    let report = Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        options: o.count.clone(),
        t5_tokenizer: o.t5_tokenizer.as_ref().map(|p| p.display().to_string()),
        t5_note: o.t5_tokenizer.as_ref().zip(t5.as_ref()).map(|(p, t)| t5_note(p, t.get_vocab_size(true))),
        run: RunInfo {
            seconds: start.elapsed().as_secs_f64(),
            captions_per_s: metrics.iter().map(|m| m.captions).sum::<u64>() as f64 / start.elapsed().as_secs_f64(),
            peak_rss_mib: peak_rss_mib(),
        },
        inputs: metrics,
    };
    if !crate::store::is_remote(out) {
        std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    }
    // Each written whole (a file atomically, or a store object), the JSON report last.
    crate::store::write_file(&out.join("report.md"), markdown(&report).into_bytes())?;
    crate::store::write_file(&out.join("report.html"), html(&report).map_err(anyhow::Error::msg)?.into_bytes())?;
    crate::store::write_file(&out.join("report.json"), serde_json::to_string_pretty(&report)?.into_bytes())?;
    Ok(report)
}

/// Each input, followed by one input per caption source when it is a caption folder with more than
/// one (the same captions, filtered on their `source`).
fn by_source(inputs: &[NamedInput], selection: &Selection) -> anyhow::Result<Vec<NamedInput>> {
    let mut out = Vec::new();
    for input in inputs {
        out.push(input.clone());
        let sources = super::input::sources(&input.path).map_err(|e| e.context(format!("input {:?}", input.name)))?;
        if sources.len() < 2 {
            continue;
        }
        for source in sources {
            let mut sel = input.selection.clone().unwrap_or_else(|| selection.clone());
            let field = super::input::SOURCE.to_string();
            sel.filter = Some(crate::config::FieldFilter { field, value: source.clone() });
            let name = format!("{} {source}", input.name);
            out.push(NamedInput { name, path: input.path.clone(), selection: Some(sel) });
        }
    }
    Ok(out)
}

/// `12345678` → `12.3M`, as in the paper's table.
fn short(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// One sentence saying how nouns were counted.
/// The label of the T5 token columns.
fn t5_note(path: &Path, pieces: usize) -> String {
    let mut s = format!("T5 tokens counted with {} ({pieces} pieces)", path.display());
    if pieces < 30_000 {
        s.push_str(
            "; a toy tokenizer, far smaller than T5-v1.1's 32,100 pieces: these token counts and truncated shares are \
             not T5's",
        );
    }
    s.push('.');
    s
}

fn counting(o: &CountOptions) -> String {
    format!(
        "Nouns counted as {} forms, {}, proper nouns {}; valid = seen more than {} times.",
        match o.form {
            super::counts::NounForm::Lemma => "lemma",
            super::counts::NounForm::Surface => "surface",
        },
        if o.case_sensitive { "case-sensitive" } else { "lower-cased" },
        if o.no_proper_nouns { "left out" } else { "included" },
        o.valid_threshold
    )
}

/// The report in the layout of PixArt-α's Table 1, then the further statistics.
pub fn markdown(r: &Report) -> String {
    let mut s = String::from("# Concept density\n\n");
    let _ = writeln!(s, "{}\n", counting(&r.options));
    s.push_str("| Dataset | VN/DN | Total Noun | Average |\n|---|---|---:|---|\n");
    for m in &r.inputs {
        let _ = writeln!(
            s,
            "| {} | {}/{} = {} | {} | {:.1}/Img |",
            m.name,
            short(m.valid_nouns),
            short(m.distinct_nouns),
            pct(m.vn_dn),
            short(m.total_nouns),
            m.nouns_per_caption.mean
        );
    }
    s.push_str("\n| Dataset | captions | nouns/caption median (p10–p90) | proper nouns | words/caption | T5 tokens (mean, p90) | truncated |\n|---|---:|---|---:|---:|---|---:|\n");
    for m in &r.inputs {
        let n = &m.nouns_per_caption;
        let (t5, trunc) = match &m.t5 {
            Some(t) => (
                format!("{:.1}, {}", t.tokens.mean, t.tokens.p90),
                format!("{} > {}", pct(t.truncated_share), t.max_tokens),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}–{}) | {} | {:.1} | {} | {} |",
            m.name,
            m.captions,
            n.median,
            n.p10,
            n.p90,
            pct(m.proper_noun_share),
            m.words_per_caption.mean,
            t5,
            trunc
        );
    }
    if let Some(n) = &r.t5_note {
        let _ = writeln!(s, "\n{n}");
    }
    for m in r.inputs.iter().filter(|m| m.unreadable.unreadable > 0) {
        let _ = writeln!(
            s,
            "\n{}: {} unreadable line(s) skipped, e.g. {}",
            m.name,
            m.unreadable.unreadable,
            m.unreadable.unreadable_examples.join("; ")
        );
    }
    s.push_str("\n## Top nouns\n\n");
    for m in &r.inputs {
        let top: Vec<String> = m.top_nouns.iter().take(20).map(|(k, v)| format!("{k} ({v})")).collect();
        let _ = writeln!(s, "- **{}**: {}", m.name, top.join(", "));
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A self-contained HTML page: the tables, the charts as inline SVG, the top nouns as bars.
pub fn html(r: &Report) -> Result<String, String> {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pixforge concept density</title>\n<style>\
         body{font-family:sans-serif;margin:2em;max-width:1500px;color:#222}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}\
         .charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}.bars{display:flex;flex-wrap:wrap;gap:24px}\
         .bar{background:#1f77b4;height:12px;display:inline-block}.noun{display:inline-block;width:9em;text-align:right;padding-right:6px}\
         </style></head><body>\n<h1>Concept density</h1>\n",
    );
    let _ = writeln!(s, "<p>{}</p>", escape(&counting(&r.options)));
    s.push_str("<table><tr><th>Dataset</th><th>VN/DN</th><th>Total Noun</th><th>Average</th><th>captions</th><th>median nouns</th><th>proper nouns</th><th>words/caption</th><th>T5 tokens (mean)</th><th>truncated</th></tr>\n");
    for m in &r.inputs {
        let (t5, trunc) = match &m.t5 {
            Some(t) => (format!("{:.1}", t.tokens.mean), pct(t.truncated_share)),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}/{} = {}</td><td>{}</td><td>{:.1}/Img</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            short(m.valid_nouns),
            short(m.distinct_nouns),
            pct(m.vn_dn),
            short(m.total_nouns),
            m.nouns_per_caption.mean,
            m.captions,
            m.nouns_per_caption.median,
            pct(m.proper_noun_share),
            m.words_per_caption.mean,
            t5,
            trunc
        );
    }
    s.push_str("</table>\n");
    if let Some(n) = &r.t5_note {
        let _ = writeln!(s, "<p class=\"t5-note\"><b>{}</b></p>", escape(n));
    }
    for m in r.inputs.iter().filter(|m| m.unreadable.unreadable > 0) {
        let _ = writeln!(
            s,
            "<p>{}: {} unreadable line(s) skipped, e.g. {}</p>",
            escape(&m.name),
            m.unreadable.unreadable,
            escape(&m.unreadable.unreadable_examples.join("; "))
        );
    }
    s.push_str("<div class=\"charts\">\n");
    for (title, svg) in charts(&r.inputs)? {
        let _ = writeln!(s, "<figure title=\"{}\">{}</figure>", escape(&title), svg);
    }
    s.push_str("</div>\n<h2>Top nouns</h2>\n<div class=\"bars\">\n");
    for m in &r.inputs {
        let _ = writeln!(s, "<div><h3>{}</h3>", escape(&m.name));
        let max = m.top_nouns.first().map(|t| t.1).unwrap_or(1).max(1);
        for (noun, n) in m.top_nouns.iter().take(30) {
            let w = (300 * n / max).max(1);
            let _ = writeln!(
                s,
                "<div><span class=\"noun\">{}</span><span class=\"bar\" style=\"width:{w}px\"></span> {n}</div>",
                escape(noun)
            );
        }
        s.push_str("</div>\n");
    }
    s.push_str("</div>\n</body></html>\n");
    Ok(s)
}
