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

/// The bytes of a parquet file, inflated when its name ends in `.gz` (parquet is read whole).
fn read_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    crate::text::open(path)?
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    Ok(out)
}

/// The format of a metadata file from its name: `parquet`, `csv`, `tsv`, `json`, `jsonl` or `txt`.
pub fn format_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    ["parquet", "csv", "tsv", "jsonl", "json", "txt"].into_iter().find(|f| name.ends_with(&format!(".{f}")))
}

/// The rows of a metadata file that could not be read, by row index, with the reason (naming the
/// file and line). Such a row is kept, refused before any download, and the rest of the file read.
pub type BadRows = std::collections::HashMap<usize, String>;

/// Reads one metadata file into a DataFrame (`txt`: one URL per line, in column `url_col`), with
/// the rows that could not be read: a JSONL line that is not a JSON object, a CSV row or a line
/// that is not UTF-8, a line longer than [`crate::text::MAX_LINE_BYTES`].
pub fn read_table(path: &Path, url_col: &str) -> anyhow::Result<(DataFrame, BadRows)> {
    let fmt = format_of(path).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: unknown metadata format (expected .parquet, .csv, .tsv, .json, .jsonl or .txt, optionally .gz)",
            path.display()
        )
    })?;
    let ctx = |e: PolarsError| anyhow::anyhow!("{}: cannot read as {fmt}: {e}", path.display());
    let mut bad = BadRows::new();
    let df = match fmt {
        "parquet" => ParquetReader::new(Cursor::new(read_bytes(path)?)).finish().map_err(ctx)?,
        "csv" | "tsv" => {
            let sep = if fmt == "tsv" { b'\t' } else { b',' };
            let bytes = csv_rows(crate::text::open(path)?, sep, path, &mut bad)?;
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(10_000))
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(Cursor::new(bytes))
                .finish()
                .map_err(ctx)?
        }
        "jsonl" => {
            let lines = json_object_lines(crate::text::open(path)?, path, &mut bad)?;
            JsonReader::new(Cursor::new(lines)).with_json_format(JsonFormat::JsonLines).finish().map_err(ctx)?
        }
        "json" => {
            let lines = json_array_lines(crate::text::open(path)?, path, &mut bad)?;
            JsonReader::new(Cursor::new(lines)).with_json_format(JsonFormat::JsonLines).finish().map_err(ctx)?
        }
        _ => {
            let mut urls: Vec<String> = Vec::new();
            for line in crate::text::BoundedLines::new(crate::text::open(path)?) {
                let line = line.map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
                match line.text {
                    Ok(t) if t.trim().is_empty() => {}
                    Ok(t) => urls.push(t.trim().to_string()),
                    Err(e) => {
                        bad.insert(
                            urls.len(),
                            format!("unreadable metadata row: {}:{}: {e}", path.display(), line.number),
                        );
                        urls.push(String::new());
                    }
                }
            }
            DataFrame::new(urls.len(), vec![Column::new(url_col.into(), urls)]).map_err(ctx)?
        }
    };
    Ok((df, bad))
}

/// The JSONL text of `bytes` with each line that is not a JSON object replaced by `{}` (a row of
/// nulls, so rows keep their places) and recorded in `bad`; blank lines dropped, as the reader does.
fn json_object_lines(reader: impl std::io::BufRead, path: &Path, bad: &mut BadRows) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut row = 0;
    for line in crate::text::BoundedLines::new(reader) {
        let line = line.map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let problem = match &line.text {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => match serde_json::from_str::<serde_json::Value>(t) {
                Ok(serde_json::Value::Object(_)) => None,
                Ok(other) => Some(format!("line {}: expected a JSON object, found {}", line.number, json_kind(&other))),
                Err(e) => Some(format!("line {}: not valid JSON: {e}", line.number)),
            },
            Err(e) => Some(e.clone()),
        };
        match problem {
            None => out.extend_from_slice(line.text.as_deref().unwrap_or("{}").as_bytes()),
            Some(p) => {
                bad.insert(row, format!("unreadable metadata row: {}: {p}", path.display()));
                out.extend_from_slice(b"{}");
            }
        }
        out.push(b'\n');
        row += 1;
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The JSONL text of a JSON array of row objects, read one item at a time
/// ([`crate::text::json_items`]); an item that is not an object becomes `{}` and is recorded in `bad`.
fn json_array_lines(reader: impl Read, path: &Path, bad: &mut BadRows) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    crate::text::json_items(reader, path, None, crate::text::MAX_LINE_BYTES, &mut |i, item| {
        match item {
            serde_json::Value::Object(_) => serde_json::to_writer(&mut out, &item)?,
            other => {
                let kind = json_kind(&other);
                bad.insert(
                    i,
                    format!(
                        "unreadable metadata row: {}: item {i}: expected a JSON object, found {kind}",
                        path.display()
                    ),
                );
                out.extend_from_slice(b"{}");
            }
        }
        out.push(b'\n');
        Ok(())
    })?;
    Ok(out)
}

/// The CSV text of `reader` with each record that cannot be read replaced by a row of empty fields
/// (so rows keep their places) and recorded in `bad` by row index (the header is not a row): a
/// record that is not UTF-8, longer than [`crate::text::MAX_LINE_BYTES`] (never held), or with
/// another number of fields than the header. Blank records are dropped, as CSV readers do.
fn csv_rows(reader: impl std::io::BufRead, sep: u8, path: &Path, bad: &mut BadRows) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut fields = None;
    let mut row = 0;
    for record in crate::text::CsvRecords::new(reader) {
        let record = record.map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let Some(n) = fields else {
            let header = match record.bytes {
                Ok(b) => b,
                Err(len) => {
                    anyhow::bail!("{}: the header line is {len} bytes long; expected column names", path.display())
                }
            };
            // The header's names are kept readable.
            out.extend_from_slice(String::from_utf8_lossy(&header).as_bytes());
            out.push(b'\n');
            fields = Some(crate::text::csv_field_count(&header, sep));
            continue;
        };
        let problem = match &record.bytes {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => continue,
            Err(len) => Some(format!("longer than {} bytes ({len} bytes); skipped", crate::text::MAX_LINE_BYTES)),
            Ok(b) => match std::str::from_utf8(b) {
                Err(e) => Some(format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1)),
                Ok(_) if crate::text::csv_field_count(b, sep) != n => Some(format!(
                    "expected {n} fields as in the header, found {}",
                    crate::text::csv_field_count(b, sep)
                )),
                Ok(_) => None,
            },
        };
        match problem {
            None => out.extend_from_slice(record.bytes.as_deref().unwrap_or_default()),
            Some(p) => {
                bad.insert(row, format!("unreadable metadata row: {}:{}: {p}", path.display(), record.line));
                if n == 1 {
                    out.extend_from_slice(b"\"\"");
                } else {
                    out.extend(std::iter::repeat_n(sep, n - 1));
                }
            }
        }
        out.push(b'\n');
        row += 1;
    }
    Ok(out)
}

fn columns_list(df: &DataFrame) -> String {
    df.get_column_names().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

fn float_col(df: &DataFrame, name: &str, flag: &str, path: &Path) -> anyhow::Result<Vec<Option<f64>>> {
    let c = df.column(name).map_err(|_| {
        anyhow::anyhow!(
            "{}: {flag} needs column `{name}`, which is missing (columns: {})",
            path.display(),
            columns_list(df)
        )
    })?;
    let c = c
        .cast(&DataType::Float64)
        .map_err(|e| anyhow::anyhow!("{}: column `{name}` is not numeric: {e}", path.display()))?;
    Ok(c.f64()?.iter().collect())
}

/// A threshold on one numeric column.
enum Bound {
    /// Keep values >= t.
    AtLeast(f64),
    /// Keep values < t.
    Below(f64),
    /// Keep values <= t.
    AtMost(f64),
}

/// One metadata filter: a column's values and the bound its flag sets.
struct Check {
    col: String,
    flag: &'static str,
    bound: Bound,
    values: Vec<Option<f64>>,
}

impl Check {
    fn new(df: &DataFrame, col: &str, flag: &'static str, bound: Bound, path: &Path) -> anyhow::Result<Self> {
        Ok(Self { col: col.to_string(), flag, values: float_col(df, col, flag, path)?, bound })
    }

    fn reason(&self, i: usize) -> Option<String> {
        let (ok, op, t) = match (self.values[i], &self.bound) {
            (None, _) => return Some(format!("missing value for {}: {}", self.flag, self.col)),
            (Some(v), Bound::AtLeast(t)) => (v >= *t, "<", *t),
            (Some(v), Bound::Below(t)) => (v < *t, ">=", *t),
            (Some(v), Bound::AtMost(t)) => (v <= *t, ">", *t),
        };
        (!ok).then(|| format!("{} {op} {} {t}: {}", self.col, self.flag, self.values[i].unwrap_or_default()))
    }
}

/// The numeric filters the options ask for, with their columns read from `df`.
fn build_checks(df: &DataFrame, o: &LaionOptions, path: &Path) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    if let Some(t) = o.min_similarity {
        checks.push(Check::new(df, &o.similarity_col, "--min-similarity", Bound::AtLeast(t), path)?);
    }
    if let Some(t) = o.max_punsafe {
        checks.push(Check::new(df, &o.punsafe_col, "--max-punsafe", Bound::Below(t), path)?);
    }
    if let Some(t) = o.max_pwatermark {
        checks.push(Check::new(df, &o.pwatermark_col, "--max-pwatermark", Bound::Below(t), path)?);
    }
    if let Some(t) = o.min_aesthetic {
        let col = if !o.aesthetic_col.is_empty() {
            o.aesthetic_col.as_str()
        } else if df.column("AESTHETIC_SCORE").is_ok() {
            "AESTHETIC_SCORE"
        } else {
            "aesthetic"
        };
        checks.push(Check::new(df, col, "--min-aesthetic", Bound::AtLeast(t), path)?);
    }
    if let Some(t) = o.min_width {
        checks.push(Check::new(df, &o.width_col, "--min-width", Bound::AtLeast(t), path)?);
    }
    if let Some(t) = o.min_height {
        checks.push(Check::new(df, &o.height_col, "--min-height", Bound::AtLeast(t), path)?);
    }
    if let Some(t) = o.max_declared_aspect_ratio {
        let w = float_col(df, &o.width_col, "--max-declared-aspect-ratio", path)?;
        let h = float_col(df, &o.height_col, "--max-declared-aspect-ratio", path)?;
        let ratios = w
            .iter()
            .zip(&h)
            .map(|(w, h)| match (w, h) {
                (Some(w), Some(h)) => Some(w.max(*h) / w.min(*h).max(1e-9)),
                _ => None,
            })
            .collect();
        checks.push(Check {
            col: format!("{}/{}", o.width_col, o.height_col),
            flag: "--max-declared-aspect-ratio",
            bound: Bound::AtMost(t),
            values: ratios,
        });
    }
    Ok(checks)
}

/// Why row `i` is refused before download, if it is.
fn filter_reason(i: usize, checks: &[Check], caption: Option<&str>, o: &LaionOptions) -> Option<String> {
    if let Some(r) = checks.iter().find_map(|c| c.reason(i)) {
        return Some(r);
    }
    let len = caption.map(|c| c.chars().count()).unwrap_or(0);
    let words = caption.map(|c| c.split_whitespace().count()).unwrap_or(0);
    if len < o.min_caption_chars {
        Some(format!("caption shorter than --min-caption-chars {}: {len} characters", o.min_caption_chars))
    } else if o.max_caption_chars > 0 && len > o.max_caption_chars {
        Some(format!("caption longer than --max-caption-chars {}: {len} characters", o.max_caption_chars))
    } else if words < o.min_caption_words {
        Some(format!("caption has fewer words than --min-caption-words {}: {words}", o.min_caption_words))
    } else {
        None
    }
}

/// The metadata files of `inputs` (files, or directories whose metadata files are taken in name
/// order).
fn metadata_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
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
    Ok(files)
}

/// Hands the rows of one metadata file to `sink` in chunks of at most
/// [`super::rows::CHUNK_ROWS`]: a parquet file read a row group at a time (one in memory), any other
/// format read whole first.
fn for_chunks(
    path: &Path,
    url_col: &str,
    sink: &mut dyn FnMut(DataFrame, &BadRows, usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let chunk = super::rows::CHUNK_ROWS;
    let plain_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if plain_parquet {
        let ctx = |e: PolarsError| anyhow::anyhow!("{}: cannot read as parquet: {e}", path.display());
        let open = || std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()));
        let mut reader = ParquetReader::new(open()?);
        let metadata = reader.get_metadata().map_err(ctx)?.clone();
        let none = BadRows::new();
        let mut start = 0;
        for group in &metadata.row_groups {
            let rows = group.num_rows();
            let mut reader = ParquetReader::new(open()?);
            reader.set_metadata(metadata.clone());
            let df = reader.with_slice(Some((start, rows))).finish().map_err(ctx)?;
            for at in (0..df.height()).step_by(chunk) {
                sink(df.slice(at as i64, chunk), &none, start + at)?;
            }
            start += rows;
        }
        return Ok(());
    }
    let (df, bad) = read_table(path, url_col)?;
    for start in (0..df.height()).step_by(chunk) {
        sink(df.slice(start as i64, chunk), &bad, start)?;
    }
    Ok(())
}

/// Lists the rows of every metadata file in `inputs` (files, or directories whose metadata files
/// are taken in name order) with the filters applied (filtered rows are kept with their reason),
/// handing them to `sink` a chunk at a time with the files' other columns; returns the input
/// descriptions for the fingerprint.
pub fn list_laion(
    inputs: &[PathBuf],
    o: &LaionOptions,
    sink: &mut dyn FnMut(&[InputRow], &DataFrame) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<String>> {
    let files = metadata_files(inputs)?;
    let mut descs = Vec::new();
    for path in &files {
        descs.push(describe_input(path));
        for_chunks(path, &o.url_col, &mut |df, bad, first| {
            let (rows, pass) = chunk_rows(&df, bad, first, o, path)?;
            sink(&rows, &pass)
        })?;
    }
    Ok(descs)
}

/// The rows of `df` (rows `first..` of metadata file `path`), and its other columns.
fn chunk_rows(
    df: &DataFrame,
    bad: &BadRows,
    first: usize,
    o: &LaionOptions,
    path: &Path,
) -> anyhow::Result<(Vec<InputRow>, DataFrame)> {
    let urls = df.column(&o.url_col).map_err(|_| {
        anyhow::anyhow!("{}: --url-col `{}` not found (columns: {})", path.display(), o.url_col, columns_list(df))
    })?;
    let urls = urls.cast(&DataType::String)?;
    let urls = urls.str()?;
    let captions: Option<StringChunked> = if o.caption_col.is_empty() {
        None
    } else {
        let c = df.column(&o.caption_col).map_err(|_| {
            anyhow::anyhow!(
                "{}: --caption-col `{}` not found (columns: {}); pass --caption-col '' for none",
                path.display(),
                o.caption_col,
                columns_list(df)
            )
        })?;
        Some(c.cast(&DataType::String)?.str()?.clone())
    };
    let checks = build_checks(df, o, path)?;
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let url = urls.get(i).unwrap_or("").trim().to_string();
        let caption = captions.as_ref().and_then(|c| c.get(i).map(str::to_owned));
        let mut row = InputRow::new(url.clone(), Payload::Url(url));
        row.filtered = bad.get(&(first + i)).cloned().or_else(|| filter_reason(i, &checks, caption.as_deref(), o));
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
    Ok((rows, DataFrame::new(df.height(), keep)?))
}

/// [`list_laion`] into memory: every row, and the files' other columns.
pub fn read_laion(inputs: &[PathBuf], o: &LaionOptions) -> anyhow::Result<SourceRows> {
    let mut rows = Vec::new();
    let mut passthrough: Option<DataFrame> = None;
    let descs = list_laion(inputs, o, &mut |chunk, pass| {
        rows.extend_from_slice(chunk);
        match &mut passthrough {
            None => passthrough = Some(pass.clone()),
            Some(all) => {
                all.vstack_mut(pass).map_err(|e| {
                    anyhow::anyhow!(
                        "metadata files have different extra columns; cannot carry them into one dataset: {e}"
                    )
                })?;
            }
        }
        Ok(())
    })?;
    Ok(SourceRows { rows, source_col: "url", passthrough, inputs: descs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_gz(path: &Path, text: &str) {
        let mut e = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    }

    #[test]
    fn a_parquet_file_is_listed_a_row_group_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.parquet");
        let n = 10usize;
        let mut df = DataFrame::new(
            n,
            vec![
                Column::new("URL".into(), (0..n).map(|i| format!("https://example.com/{i}.jpg")).collect::<Vec<_>>()),
                Column::new("TEXT".into(), (0..n).map(|i| format!("photo {i}")).collect::<Vec<_>>()),
                Column::new("similarity".into(), (0..n).map(|i| i as f64 / 10.0).collect::<Vec<_>>()),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(&path).unwrap();
        ParquetWriter::new(file).with_row_group_size(Some(3)).finish(&mut df).unwrap();
        let o = LaionOptions { min_similarity: Some(0.45), ..Default::default() };
        let mut chunks = Vec::new();
        let mut rows = Vec::new();
        list_laion(std::slice::from_ref(&path), &o, &mut |chunk, pass| {
            chunks.push(chunk.len());
            assert_eq!(pass.height(), chunk.len());
            rows.extend_from_slice(chunk);
            Ok(())
        })
        .unwrap();
        let groups: Vec<usize> = ParquetReader::new(std::fs::File::open(&path).unwrap())
            .get_metadata()
            .unwrap()
            .row_groups
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert!(groups.len() > 2, "{groups:?}");
        assert_eq!(chunks, groups, "one chunk a row group");
        let urls: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(urls, (0..n).map(|i| format!("https://example.com/{i}.jpg")).collect::<Vec<_>>());
        let kept: Vec<bool> = rows.iter().map(|r| r.filtered.is_none()).collect();
        assert_eq!(kept, (0..n).map(|i| i >= 5).collect::<Vec<_>>(), "the filter sees each row's own value");
    }

    #[test]
    fn filters_before_download_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "URL,TEXT,similarity,punsafe,pwatermark,AESTHETIC_SCORE,WIDTH,HEIGHT,extra\n\
                   http://a/1.jpg,a red bicycle,0.35,0.01,0.1,6.1,1024,768,x\n\
                   http://a/2.jpg,low sim,0.20,0.01,0.1,6.1,1024,768,y\n\
                   http://a/3.jpg,nsfw,0.35,0.90,0.1,6.1,1024,768,z\n\
                   http://a/4.jpg,wide banner,0.35,0.01,0.1,6.1,3000,300,w\n\
                   http://a/5.jpg,ugly,0.35,0.01,0.1,4.0,1024,768,v\n\
                   http://a/6.jpg,,0.35,0.01,0.1,6.1,1024,768,u\n\
                   http://a/7.jpg,no score,,0.01,0.1,6.1,1024,768,t\n";
        let p = dir.path().join("meta.csv.gz");
        write_gz(&p, csv);
        let o = LaionOptions {
            min_similarity: Some(0.28),
            max_punsafe: Some(0.5),
            min_aesthetic: Some(5.0),
            max_declared_aspect_ratio: Some(3.0),
            min_caption_chars: 1,
            ..Default::default()
        };
        let rows = read_laion(&[p], &o).unwrap();
        let reasons: Vec<Option<&str>> = rows.rows.iter().map(|r| r.filtered.as_deref()).collect();
        assert_eq!(reasons[0], None);
        assert_eq!(reasons[1], Some("similarity < --min-similarity 0.28: 0.2"));
        assert_eq!(reasons[2], Some("punsafe >= --max-punsafe 0.5: 0.9"));
        assert_eq!(reasons[3], Some("WIDTH/HEIGHT > --max-declared-aspect-ratio 3: 10"));
        assert_eq!(reasons[4], Some("AESTHETIC_SCORE < --min-aesthetic 5: 4"));
        assert_eq!(reasons[5], Some("caption shorter than --min-caption-chars 1: 0 characters"));
        assert_eq!(reasons[6], Some("missing value for --min-similarity: similarity"));
        assert_eq!(rows.rows[0].caption.as_deref(), Some("a red bicycle"));
        let pass = rows.passthrough.unwrap();
        assert!(pass.column("extra").is_ok() && pass.column("URL").is_err());
    }

    #[test]
    fn missing_columns_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.tsv");
        std::fs::write(&p, "url\tcaption\nhttp://a/1.jpg\tx\n").unwrap();
        let err = read_laion(std::slice::from_ref(&p), &LaionOptions::default()).unwrap_err().to_string();
        assert!(err.contains("--url-col `URL` not found (columns: url, caption)"), "{err}");
        let o = LaionOptions {
            url_col: "url".into(),
            caption_col: "caption".into(),
            min_similarity: Some(0.3),
            ..Default::default()
        };
        let err = read_laion(&[p], &o).unwrap_err().to_string();
        assert!(err.contains("--min-similarity needs column `similarity`"), "{err}");
    }

    #[test]
    fn jsonl_and_txt_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.jsonl");
        std::fs::write(&j, "{\"URL\":\"http://a/1.jpg\",\"TEXT\":\"one\",\"WIDTH\":640}\n").unwrap();
        let rows = read_laion(&[j], &LaionOptions { min_width: Some(512.0), ..Default::default() }).unwrap();
        assert_eq!(rows.rows[0].filtered, None);
        let t = dir.path().join("urls.txt");
        std::fs::write(&t, "http://a/1.jpg\n\nhttp://a/2.jpg\n").unwrap();
        let rows = read_laion(&[t], &LaionOptions { caption_col: String::new(), ..Default::default() }).unwrap();
        assert_eq!(rows.rows.len(), 2);
    }
}
