//! `laion` source: LAION-style metadata (parquet, csv, tsv, json, jsonl, txt; gzipped or not) read with
//! polars, with the metadata filters applied before any download.

use super::source::{describe_input, InputRow, Payload, SourceRows};
use crate::shards::TEMP_MARKER;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// Column mapping and metadata filters of the `laion` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Parser)]
#[serde(deny_unknown_fields, default)]
pub struct LaionOptions {
    /// Column holding the image URL.
    #[arg(long, default_value = "URL")]
    pub url_col: String,
    /// Column holding the caption (alt text); empty for none.
    #[arg(long, default_value = "TEXT")]
    pub caption_col: String,
    /// CLIP similarity column.
    #[arg(long, default_value = "similarity")]
    pub similarity_col: String,
    /// NSFW probability column.
    #[arg(long, default_value = "punsafe")]
    pub punsafe_col: String,
    /// Watermark probability column.
    #[arg(long, default_value = "pwatermark")]
    pub pwatermark_col: String,
    /// Aesthetic score column; empty picks `AESTHETIC_SCORE` or `aesthetic`, whichever exists.
    #[arg(long, default_value = "")]
    pub aesthetic_col: String,
    /// Width column (float or int).
    #[arg(long, default_value = "WIDTH")]
    pub width_col: String,
    /// Height column (float or int).
    #[arg(long, default_value = "HEIGHT")]
    pub height_col: String,
    /// Keep rows with similarity >= this (LAION-2B-en used 0.28).
    #[arg(long)]
    pub min_similarity: Option<f64>,
    /// Keep rows with punsafe < this (LAION-Aesthetics used 0.5).
    #[arg(long)]
    pub max_punsafe: Option<f64>,
    /// Keep rows with pwatermark < this (LAION-Aesthetics used 0.8, SD 0.5).
    #[arg(long)]
    pub max_pwatermark: Option<f64>,
    /// Keep rows with aesthetic score >= this.
    #[arg(long)]
    pub min_aesthetic: Option<f64>,
    /// Keep rows whose declared width >= this.
    #[arg(long)]
    pub min_width: Option<f64>,
    /// Keep rows whose declared height >= this.
    #[arg(long)]
    pub min_height: Option<f64>,
    /// Keep rows whose declared max(W,H)/min(W,H) <= this.
    #[arg(long)]
    pub max_declared_aspect_ratio: Option<f64>,
    /// Keep rows whose caption has at least this many characters.
    #[arg(long, default_value_t = 0)]
    pub min_caption_chars: usize,
    /// Keep rows whose caption has at most this many characters (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_caption_chars: usize,
    /// Keep rows whose caption has at least this many words.
    #[arg(long, default_value_t = 0)]
    pub min_caption_words: usize,
}

impl Default for LaionOptions {
    fn default() -> Self {
        clap::Parser::parse_from(["laion"])
    }
}

fn read_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("{}: not valid gzip: {e}", path.display()))?;
        return Ok(out);
    }
    Ok(raw)
}

/// The format of a metadata file from its name: `parquet`, `csv`, `tsv`, `json`, `jsonl` or `txt`.
pub fn format_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    ["parquet", "csv", "tsv", "jsonl", "json", "txt"].into_iter().find(|f| name.ends_with(&format!(".{f}")))
}

/// Reads one metadata file into a DataFrame (`txt`: one URL per line, in column `url_col`).
pub fn read_table(path: &Path, url_col: &str) -> anyhow::Result<DataFrame> {
    let fmt = format_of(path).ok_or_else(|| {
        anyhow::anyhow!("{}: unknown metadata format (expected .parquet, .csv, .tsv, .json, .jsonl or .txt, optionally .gz)", path.display())
    })?;
    let bytes = read_bytes(path)?;
    let ctx = |e: PolarsError| anyhow::anyhow!("{}: cannot read as {fmt}: {e}", path.display());
    let df = match fmt {
        "parquet" => ParquetReader::new(Cursor::new(bytes)).finish().map_err(ctx)?,
        "csv" | "tsv" => CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(10_000))
            .with_parse_options(CsvParseOptions::default().with_separator(if fmt == "tsv" { b'\t' } else { b',' }))
            .into_reader_with_file_handle(Cursor::new(bytes))
            .finish()
            .map_err(ctx)?,
        "jsonl" => JsonReader::new(Cursor::new(bytes)).with_json_format(JsonFormat::JsonLines).finish().map_err(ctx)?,
        "json" => JsonReader::new(Cursor::new(bytes)).with_json_format(JsonFormat::Json).finish().map_err(ctx)?,
        _ => {
            let text = String::from_utf8_lossy(&bytes);
            let urls: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            DataFrame::new(urls.len(), vec![Column::new(url_col.into(), urls)]).map_err(ctx)?
        }
    };
    Ok(df)
}

fn columns_list(df: &DataFrame) -> String {
    df.get_column_names().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

fn float_col(df: &DataFrame, name: &str, flag: &str, path: &Path) -> anyhow::Result<Vec<Option<f64>>> {
    let c = df.column(name).map_err(|_| {
        anyhow::anyhow!("{}: {flag} needs column `{name}`, which is missing (columns: {})", path.display(), columns_list(df))
    })?;
    let c = c.cast(&DataType::Float64).map_err(|e| anyhow::anyhow!("{}: column `{name}` is not numeric: {e}", path.display()))?;
    Ok(c.f64()?.iter().collect())
}

/// Reads every metadata file in `inputs` (files, or directories whose metadata files are taken in
/// name order) and applies the filters; filtered rows are kept with their reason.
pub fn read_laion(inputs: &[PathBuf], o: &LaionOptions) -> anyhow::Result<SourceRows> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut fs: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| format_of(f).is_some() && !f.to_string_lossy().contains(TEMP_MARKER))
                .collect();
            fs.sort();
            files.extend(fs);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        anyhow::bail!("no metadata files found in {:?}", inputs);
    }
    let mut rows = Vec::new();
    let mut frames: Vec<DataFrame> = Vec::new();
    let mut descs = Vec::new();
    for path in &files {
        descs.push(describe_input(path));
        let df = read_table(path, &o.url_col)?;
        let urls = df.column(&o.url_col).map_err(|_| {
            anyhow::anyhow!("{}: --url-col `{}` not found (columns: {})", path.display(), o.url_col, columns_list(&df))
        })?;
        let urls = urls.cast(&DataType::String)?;
        let urls = urls.str()?;
        let captions: Option<Vec<Option<String>>> = if o.caption_col.is_empty() {
            None
        } else {
            let c = df.column(&o.caption_col).map_err(|_| {
                anyhow::anyhow!(
                    "{}: --caption-col `{}` not found (columns: {}); pass --caption-col '' for none",
                    path.display(),
                    o.caption_col,
                    columns_list(&df)
                )
            })?;
            Some(c.cast(&DataType::String)?.str()?.iter().map(|s| s.map(str::to_owned)).collect())
        };
        let mut checks: Vec<(String, Vec<Option<f64>>, Box<dyn Fn(f64) -> bool>, String)> = Vec::new();
        if let Some(t) = o.min_similarity {
            checks.push((o.similarity_col.clone(), float_col(&df, &o.similarity_col, "--min-similarity", path)?, Box::new(move |v| v >= t), format!("< --min-similarity {t}")));
        }
        if let Some(t) = o.max_punsafe {
            checks.push((o.punsafe_col.clone(), float_col(&df, &o.punsafe_col, "--max-punsafe", path)?, Box::new(move |v| v < t), format!(">= --max-punsafe {t}")));
        }
        if let Some(t) = o.max_pwatermark {
            checks.push((o.pwatermark_col.clone(), float_col(&df, &o.pwatermark_col, "--max-pwatermark", path)?, Box::new(move |v| v < t), format!(">= --max-pwatermark {t}")));
        }
        if let Some(t) = o.min_aesthetic {
            let col = if !o.aesthetic_col.is_empty() {
                o.aesthetic_col.clone()
            } else if df.column("AESTHETIC_SCORE").is_ok() {
                "AESTHETIC_SCORE".into()
            } else {
                "aesthetic".into()
            };
            checks.push((col.clone(), float_col(&df, &col, "--min-aesthetic", path)?, Box::new(move |v| v >= t), format!("< --min-aesthetic {t}")));
        }
        if let Some(t) = o.min_width {
            checks.push((o.width_col.clone(), float_col(&df, &o.width_col, "--min-width", path)?, Box::new(move |v| v >= t), format!("< --min-width {t}")));
        }
        if let Some(t) = o.min_height {
            checks.push((o.height_col.clone(), float_col(&df, &o.height_col, "--min-height", path)?, Box::new(move |v| v >= t), format!("< --min-height {t}")));
        }
        let aspect = match o.max_declared_aspect_ratio {
            Some(t) => Some((
                t,
                float_col(&df, &o.width_col, "--max-declared-aspect-ratio", path)?,
                float_col(&df, &o.height_col, "--max-declared-aspect-ratio", path)?,
            )),
            None => None,
        };
        for i in 0..df.height() {
            let url = urls.get(i).unwrap_or("").trim().to_string();
            let caption = captions.as_ref().and_then(|c| c[i].clone());
            let mut row = InputRow::new(url.clone(), Payload::Url(url));
            for (col, vals, ok, why) in &checks {
                match vals[i] {
                    None => row.filtered = Some(format!("missing value: {col}")),
                    Some(v) if !ok(v) => row.filtered = Some(format!("{col} {why}: {v}")),
                    _ => {}
                }
                if row.filtered.is_some() {
                    break;
                }
            }
            if row.filtered.is_none() {
                if let Some((t, ws, hs)) = &aspect {
                    if let (Some(w), Some(h)) = (ws[i], hs[i]) {
                        let r = w.max(h) / w.min(h).max(1e-9);
                        if r > *t {
                            row.filtered = Some(format!("declared aspect ratio > --max-declared-aspect-ratio {t}: {r:.2}"));
                        }
                    }
                }
            }
            if row.filtered.is_none() {
                let len = caption.as_deref().map(|c| c.chars().count()).unwrap_or(0);
                let words = caption.as_deref().map(|c| c.split_whitespace().count()).unwrap_or(0);
                if len < o.min_caption_chars {
                    row.filtered = Some(format!("caption shorter than --min-caption-chars {}: {len} characters", o.min_caption_chars));
                } else if o.max_caption_chars > 0 && len > o.max_caption_chars {
                    row.filtered = Some(format!("caption longer than --max-caption-chars {}: {len} characters", o.max_caption_chars));
                } else if words < o.min_caption_words {
                    row.filtered = Some(format!("caption has fewer words than --min-caption-words {}: {words}", o.min_caption_words));
                }
            }
            row.caption = caption;
            rows.push(row);
        }
        let mut keep: Vec<Column> = Vec::new();
        for c in df.columns() {
            let name = c.name().as_str();
            if name == o.url_col || name == o.caption_col {
                continue;
            }
            let mut c = c.clone();
            if crate::shards::RESERVED.contains(&name) {
                c.rename(format!("source_{name}").into());
            }
            keep.push(c);
        }
        frames.push(DataFrame::new(df.height(), keep)?);
    }
    let mut passthrough = frames.remove(0);
    for f in frames {
        passthrough = passthrough.vstack(&f).map_err(|e| {
            anyhow::anyhow!("metadata files have different extra columns; cannot carry them into one dataset: {e}")
        })?;
    }
    Ok(SourceRows { rows, source_col: "url", passthrough: Some(passthrough), inputs: descs })
}
