//! Caption sets, read in batches so memory stays bounded: our shard or caption parquet (a folder of
//! them), img2dataset / LAION parquet, JSON Lines, JSON (an array, or COCO's `annotations`), plain text
//! (one caption per line), and WebDataset tars (`.txt` members). `.gz` text files are read through gzip.

use polars::prelude::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Columns tried, in order, when `--column` is not given.
pub const DEFAULT_COLUMNS: [&str; 4] = ["caption", "TEXT", "text", "alt_text"];

/// One named input (`--input NAME=PATH`, or a bare path named after its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedInput {
    /// Name shown in the report.
    pub name: String,
    /// File or folder.
    pub path: PathBuf,
    /// Which captions of it are read (the run's `--column` / `--filter` when `None`).
    pub selection: Option<Selection>,
}

impl std::str::FromStr for NamedInput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                Ok(NamedInput { name: name.to_string(), path: PathBuf::from(path), selection: None })
            }
            _ => {
                let path = PathBuf::from(s);
                let stem = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| s.to_string());
                let name = stem.split('.').next().unwrap_or(&stem).to_string();
                Ok(NamedInput { name, path, selection: None })
            }
        }
    }
}

/// Which captions of an input are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selection {
    /// Caption column (parquet) or field (JSON); default: the first of caption, TEXT, text, alt_text.
    #[arg(long)]
    pub column: Option<String>,
    /// Keep only rows whose FIELD equals VALUE (e.g. `category=detail`). Shard parquet keeps status=success rows.
    #[arg(long, value_name = "FIELD=VALUE")]
    pub filter: Option<crate::config::FieldFilter>,
    /// Read at most this many captions per input.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// What one input gave: captions, and the lines that could not be read (not UTF-8, or longer than
/// [`crate::text::MAX_LINE_BYTES`]), which are skipped and counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadSummary {
    /// Captions read.
    pub captions: u64,
    /// Lines skipped as unreadable.
    pub unreadable: u64,
    /// The first few of them, each naming the file and line.
    pub unreadable_examples: Vec<String>,
}

/// Unreadable lines quoted in a [`ReadSummary`].
const EXAMPLES: usize = 3;

/// Calls `f` with batches of at most `batch` captions; says how many were read and skipped.
pub fn read_batches(
    path: &Path,
    sel: &Selection,
    batch: usize,
    f: &mut dyn FnMut(Vec<String>) -> anyhow::Result<()>,
) -> anyhow::Result<ReadSummary> {
    let mut sink = Sink {
        batch,
        buf: Vec::new(),
        seen: 0,
        limit: sel.limit.unwrap_or(u64::MAX),
        f,
        skipped: ReadSummary::default(),
    };
    // In a store: the caption parquet of a folder (or its tars when it has none), or the object.
    let copy = if crate::store::is_remote(path) {
        let has_parquet = crate::store::names_in(path)?.iter().any(|n| n.ends_with(".parquet"));
        crate::store::local_copy(path, |n| if has_parquet { n.ends_with(".parquet") } else { n.ends_with(".tar") })?
    } else {
        path.to_path_buf()
    };
    let path = copy.as_path();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        if files.is_empty() {
            files = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect();
        }
        files.sort();
        if files.is_empty() {
            anyhow::bail!(
                "{}: expected .parquet files or WebDataset .tar shards in the folder, found neither",
                path.display()
            );
        }
        for file in files {
            read_file(&file, sel, &mut sink)?;
            if sink.full() {
                break;
            }
        }
    } else {
        read_file(path, sel, &mut sink)?;
    }
    sink.flush()?;
    Ok(ReadSummary { captions: sink.seen, ..sink.skipped })
}

struct Sink<'a> {
    batch: usize,
    buf: Vec<String>,
    seen: u64,
    limit: u64,
    f: &'a mut dyn FnMut(Vec<String>) -> anyhow::Result<()>,
    skipped: ReadSummary,
}

impl Sink<'_> {
    fn full(&self) -> bool {
        self.seen >= self.limit
    }
    fn push(&mut self, caption: String) -> anyhow::Result<()> {
        if self.full() {
            return Ok(());
        }
        self.seen += 1;
        self.buf.push(caption);
        if self.buf.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }
    /// Records a line that could not be read.
    fn skip(&mut self, reason: String) {
        self.skipped.unreadable += 1;
        if self.skipped.unreadable_examples.len() < EXAMPLES {
            self.skipped.unreadable_examples.push(reason);
        }
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            (self.f)(std::mem::take(&mut self.buf))?;
        }
        Ok(())
    }
}

fn lower_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.strip_suffix(".gz").unwrap_or(&name).to_string()
}

fn open_text(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    crate::text::open(path)
}

/// The text of one line of `path`; `None` for an unreadable line, recorded in `sink`.
fn text_line(path: &Path, line: crate::text::Line, sink: &mut Sink) -> Option<String> {
    match line.text {
        Ok(t) => Some(t),
        Err(e) => {
            sink.skip(format!("{}:{}: {e}", path.display(), line.number));
            None
        }
    }
}

fn read_file(path: &Path, sel: &Selection, sink: &mut Sink) -> anyhow::Result<()> {
    let name = lower_name(path);
    if name.ends_with(".parquet") {
        read_parquet(path, sel, sink)
    } else if name.ends_with(".jsonl") {
        read_jsonl(path, sel, sink)
    } else if name.ends_with(".json") {
        read_json(path, sel, sink)
    } else if name.ends_with(".txt") {
        for line in crate::text::BoundedLines::new(open_text(path)?) {
            let line = line.map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
            let Some(line) = text_line(path, line, sink) else { continue };
            if !line.trim().is_empty() {
                sink.push(line)?;
            }
            if sink.full() {
                break;
            }
        }
        Ok(())
    } else if name.ends_with(".tar") {
        read_tar(path, sink)
    } else {
        anyhow::bail!(
            "{}: unknown caption file type (expected a folder of shards, .parquet, .jsonl, .json, .txt (optionally .gz) or .tar)",
            path.display()
        )
    }
}

/// The caption field of a JSON object (`--column`, or the first default present).
fn json_caption(obj: &serde_json::Map<String, serde_json::Value>, sel: &Selection) -> Option<String> {
    let field = match &sel.column {
        Some(c) => obj.get(c),
        None => DEFAULT_COLUMNS.iter().find_map(|c| obj.get(*c)),
    };
    field.and_then(|v| v.as_str()).map(str::to_string)
}

fn json_keep(obj: &serde_json::Map<String, serde_json::Value>, sel: &Selection) -> bool {
    match &sel.filter {
        None => true,
        Some(f) => obj.get(&f.field).is_some_and(|x| match x.as_str() {
            Some(s) => s == f.value,
            None => serde_json::from_str::<serde_json::Value>(&f.value).is_ok_and(|p| p == *x),
        }),
    }
}

fn missing_field(path: &Path, where_: &str, sel: &Selection) -> anyhow::Error {
    match &sel.column {
        Some(c) => anyhow::anyhow!("{}: {where_}: expected a string field {c:?} (--column), not found", path.display()),
        None => anyhow::anyhow!(
            "{}: {where_}: expected a caption field (one of {DEFAULT_COLUMNS:?}; name it with --column), found none",
            path.display()
        ),
    }
}

fn read_jsonl(path: &Path, sel: &Selection, sink: &mut Sink) -> anyhow::Result<()> {
    for line in crate::text::BoundedLines::new(open_text(path)?) {
        let (n, line) = match line {
            Ok(l) => (l.number - 1, l),
            Err(e) => anyhow::bail!("{}: cannot read: {e}", path.display()),
        };
        let Some(line) = text_line(path, line, sink) else { continue };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: expected a JSON object per line: {e}", path.display(), n + 1))?;
        match v {
            serde_json::Value::String(s) if sel.filter.is_none() => sink.push(s)?,
            serde_json::Value::Object(obj) => {
                if json_keep(&obj, sel) {
                    let c =
                        json_caption(&obj, sel).ok_or_else(|| missing_field(path, &format!("line {}", n + 1), sel))?;
                    sink.push(c)?;
                }
            }
            _ => anyhow::bail!("{}:{}: expected a JSON object (or string) per line", path.display(), n + 1),
        }
        if sink.full() {
            break;
        }
    }
    Ok(())
}

fn read_json(path: &Path, sel: &Selection, sink: &mut Sink) -> anyhow::Result<()> {
    let mut f = |i: usize, item: serde_json::Value| -> anyhow::Result<()> {
        if sink.full() {
            return Err(anyhow::Error::new(Enough));
        }
        match item {
            serde_json::Value::String(s) if sel.filter.is_none() => sink.push(s),
            serde_json::Value::Object(obj) => {
                if json_keep(&obj, sel) {
                    let c = json_caption(&obj, sel).ok_or_else(|| missing_field(path, &format!("item {i}"), sel))?;
                    sink.push(c)?;
                }
                Ok(())
            }
            _ => anyhow::bail!("{}: item {i}: expected a JSON object or string", path.display()),
        }
    };
    let reader = open_text(path)?;
    match crate::text::json_items(reader, path, Some("annotations"), crate::text::MAX_LINE_BYTES, &mut f) {
        Err(e) if e.is::<Enough>() => Ok(()),
        r => r,
    }
}

/// A JSON read stopped because enough captions were read.
#[derive(Debug)]
struct Enough;

impl std::fmt::Display for Enough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("enough captions read")
    }
}

impl std::error::Error for Enough {}

/// Rows read from a parquet file at a time.
const PARQUET_SLICE: usize = 65_536;

/// The filter field naming where a caption came from.
pub const SOURCE: &str = "source";
/// The caption folder's columns a caption's source is made of.
const SOURCE_COLUMNS: [&str; 2] = ["prompt_id", "caption_index"];

fn has_source_columns(names: &[String]) -> bool {
    SOURCE_COLUMNS.iter().all(|c| names.iter().any(|n| n == c))
}

/// `dense:{prompt_id}:{caption_index}` of each row of a caption folder's frame.
fn source_column(df: &DataFrame) -> PolarsResult<Column> {
    let prompt = df.column("prompt_id")?.cast(&DataType::String)?;
    let index = df.column("caption_index")?.cast(&DataType::String)?;
    let (prompt, index) = (prompt.str()?, index.str()?);
    let sources: Vec<String> = (0..df.height())
        .map(|i| format!("dense:{}:{}", prompt.get(i).unwrap_or_default(), index.get(i).unwrap_or_default()))
        .collect();
    Ok(Column::new(SOURCE.into(), sources))
}

/// The caption sources of a caption folder (`dense:{prompt_id}:{caption_index}`, sorted by prompt
/// and index) among its successful rows; empty for any other input.
pub fn sources(path: &Path) -> anyhow::Result<Vec<String>> {
    if crate::store::is_remote(path) || !path.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut found = std::collections::BTreeSet::new();
    for file in files {
        let ctx = |e: PolarsError| anyhow::anyhow!("{}: cannot read parquet: {e}", file.display());
        let open = std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", file.display()))?;
        let mut reader = ParquetReader::new(open);
        let names: Vec<String> = reader.schema().map_err(ctx)?.iter_names().map(|n| n.to_string()).collect();
        if !has_source_columns(&names) {
            return Ok(Vec::new());
        }
        let mut columns: Vec<String> = SOURCE_COLUMNS.map(String::from).to_vec();
        if names.iter().any(|n| n == "status") {
            columns.push("status".into());
        }
        let open = std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", file.display()))?;
        let df = ParquetReader::new(open).with_columns(Some(columns)).finish().map_err(ctx)?;
        let status = df.column("status").ok().map(|c| c.cast(&DataType::String)).transpose().map_err(ctx)?;
        let status = status.as_ref().map(|c| c.str()).transpose().map_err(ctx)?;
        let prompt = df.column("prompt_id").map_err(ctx)?.cast(&DataType::String).map_err(ctx)?;
        let index = df.column("caption_index").map_err(ctx)?.cast(&DataType::Int64).map_err(ctx)?;
        let (prompt, index) = (prompt.str().map_err(ctx)?, index.i64().map_err(ctx)?);
        for i in 0..df.height() {
            if status.is_some_and(|s| s.get(i) != Some("success")) {
                continue;
            }
            found.insert((prompt.get(i).unwrap_or_default().to_string(), index.get(i).unwrap_or_default()));
        }
    }
    Ok(found.into_iter().map(|(p, i)| format!("dense:{p}:{i}")).collect())
}

fn read_parquet(path: &Path, sel: &Selection, sink: &mut Sink) -> anyhow::Result<()> {
    let open = || std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()));
    let ctx = |e: PolarsError| anyhow::anyhow!("{}: cannot read parquet: {e}", path.display());
    let mut reader = ParquetReader::new(open()?);
    let schema = reader.schema().map_err(ctx)?;
    let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    let column = match &sel.column {
        Some(c) if names.contains(c) => c.clone(),
        Some(c) => anyhow::bail!("{}: no column {c:?} (--column); columns: {}", path.display(), names.join(", ")),
        None => {
            DEFAULT_COLUMNS.iter().find(|c| names.iter().any(|n| n == *c)).map(|c| c.to_string()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: expected a caption column (one of {DEFAULT_COLUMNS:?}; name it with --column); columns: {}",
                    path.display(),
                    names.join(", ")
                )
            })?
        }
    };
    // Our shard parquet has one row per input row: only successful samples have an image.
    let filter = match &sel.filter {
        Some(f) => Some(f.clone()),
        None if names.iter().any(|n| n == "status") && names.iter().any(|n| n == "key") => {
            Some(crate::config::FieldFilter { field: "status".into(), value: "success".into() })
        }
        None => None,
    };
    // A caption folder's `source` is `dense:{prompt_id}:{caption_index}` (as the T5 cache names it).
    let derived_source = !names.iter().any(|n| n == SOURCE) && has_source_columns(&names);
    if let Some(crate::config::FieldFilter { field: k, .. }) = &filter {
        if !(names.contains(k) || (k == SOURCE && derived_source)) {
            anyhow::bail!("{}: no column {k:?} to filter on (--filter); columns: {}", path.display(), names.join(", "));
        }
    }
    let rows = reader.num_rows().map_err(ctx)?;
    let mut columns = vec![column.clone()];
    // A source's captions, like the whole folder's, are its successful rows.
    let by_source = filter.as_ref().is_some_and(|f| f.field == SOURCE && derived_source);
    let success_only = by_source && names.iter().any(|n| n == "status");
    if success_only {
        columns.push("status".into());
    }
    match &filter {
        Some(_) if by_source => columns.extend(SOURCE_COLUMNS.map(String::from)),
        Some(f) if f.field != column => columns.push(f.field.clone()),
        _ => {}
    }
    let mut offset = 0;
    while offset < rows && !sink.full() {
        let df = ParquetReader::new(open()?)
            .with_columns(Some(columns.clone()))
            .with_slice(Some((offset, PARQUET_SLICE)))
            .finish()
            .map_err(ctx)?;
        let caps = df.column(&column).map_err(ctx)?.cast(&DataType::String).map_err(ctx)?;
        let caps = caps.str().map_err(ctx)?;
        let keep = match &filter {
            Some(_) if by_source => Some(source_column(&df).map_err(ctx)?),
            Some(f) => Some(df.column(&f.field).map_err(ctx)?.cast(&DataType::String).map_err(ctx)?),
            None => None,
        };
        let keep = keep.as_ref().map(|c| c.str()).transpose().map_err(ctx)?;
        let status = if success_only {
            Some(df.column("status").map_err(ctx)?.cast(&DataType::String).map_err(ctx)?)
        } else {
            None
        };
        let status = status.as_ref().map(|c| c.str()).transpose().map_err(ctx)?;
        for i in 0..df.height() {
            if status.is_some_and(|s| s.get(i) != Some("success")) {
                continue;
            }
            if let (Some(keep), Some(f)) = (&keep, &filter) {
                if keep.get(i) != Some(f.value.as_str()) {
                    continue;
                }
            }
            sink.push(caps.get(i).unwrap_or_default().to_string())?;
        }
        offset += df.height().max(1);
    }
    Ok(())
}

fn read_tar(path: &Path, sink: &mut Sink) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let bad = |e: std::io::Error| anyhow::anyhow!("{}: not a readable tar: {e}", path.display());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().to_string();
        if name.ends_with(".txt") {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("{}: {name}: not UTF-8 text: {e}", path.display()))?;
            sink.push(text)?;
            if sink.full() {
                break;
            }
        }
    }
    Ok(())
}
