//! `hub` source: parquet files with the images inside, as Hugging Face `datasets` writes them (an
//! `Image` column, a struct of `bytes` and `path`, or a plain binary column) with a caption column.
//! Listing reads only the footers and the caption column; the image bytes are read row group by
//! row group when their shard is processed, each row group decoded once (a small cache shared by the
//! worker threads holds the latest ones), so memory follows the row groups, not the files.

use super::source::{describe_input, ext_of, walk_sorted, InputRow, Payload, SourceRows};
use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Column mapping of the `hub` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Parser)]
#[serde(deny_unknown_fields, default)]
pub struct HubOptions {
    /// Column holding the image: a `datasets` Image struct (`bytes`, `path`) or binary; empty picks
    /// the first such column.
    #[arg(long, default_value = "")]
    pub image_col: String,
    /// Column holding the caption; empty picks `text`, `caption` or `prompt`, whichever exists
    /// first (none: no captions).
    #[arg(long, default_value = "")]
    pub text_col: String,
}

impl Default for HubOptions {
    fn default() -> Self {
        clap::Parser::parse_from(["hub"])
    }
}

/// Caption columns tried, in order, when `--text-col` is empty.
pub const TEXT_COLUMNS: &[&str] = &["text", "caption", "prompt"];

/// Where one row's image is: its file, column, row group (first row and length) and row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CellRef {
    /// The parquet file.
    pub file: PathBuf,
    /// The image column.
    pub column: String,
    /// First row of the row group holding the row.
    pub group_start: usize,
    /// Rows in that row group.
    pub group_rows: usize,
    /// The row, counted from the file's start.
    pub row: usize,
}

/// Whether `dtype` holds images: binary, or a struct with a binary `bytes` field.
fn is_image_type(dtype: &DataType) -> bool {
    match dtype {
        DataType::Binary | DataType::BinaryOffset => true,
        DataType::Struct(fields) => fields.iter().any(|f| f.name() == "bytes" && is_image_type(f.dtype())),
        _ => false,
    }
}

/// The parquet files of `inputs` (files, or folders searched for `*.parquet`), in order.
fn parquet_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            files.extend(walk_sorted(input)?.into_iter().filter(|p| ext_of(p) == "parquet"));
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        anyhow::bail!("{inputs:?}: no parquet files (the hub source reads *.parquet files or folders of them)");
    }
    Ok(files)
}

fn open(file: &Path) -> anyhow::Result<ParquetReader<std::fs::File>> {
    let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    Ok(ParquetReader::new(f))
}

/// Lists the rows of Hub-style parquet files: one row per parquet row, the caption read, the image
/// left in the file.
pub fn read_hub(inputs: &[PathBuf], opts: &HubOptions) -> anyhow::Result<SourceRows> {
    let mut rows = Vec::new();
    let mut described = Vec::new();
    for file in parquet_files(inputs)? {
        let not_parquet =
            |e: polars::error::PolarsError| anyhow::anyhow!("{}: not a parquet file: {e}", file.display());
        let mut reader = open(&file)?;
        let groups: Vec<usize> =
            reader.get_metadata().map_err(not_parquet)?.row_groups.iter().map(|g| g.num_rows()).collect();
        let schema = open(&file)?.with_slice(Some((0, 0))).finish().map_err(not_parquet)?.schema().clone();
        let columns = || schema.iter().map(|(n, t)| format!("{n} ({t})")).collect::<Vec<_>>().join(", ");
        let image = if opts.image_col.is_empty() {
            schema.iter().find(|(_, t)| is_image_type(t)).map(|(n, _)| n.to_string()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no image column (expected a struct with binary `bytes`, or binary); found {}",
                    file.display(),
                    columns()
                )
            })?
        } else {
            match schema.get(opts.image_col.as_str()) {
                Some(t) if is_image_type(t) => opts.image_col.clone(),
                Some(t) => anyhow::bail!(
                    "{}: --image-col {}: expected a struct with binary `bytes`, or binary; found {t}",
                    file.display(),
                    opts.image_col
                ),
                None => anyhow::bail!(
                    "{}: --image-col {}: no such column; found {}",
                    file.display(),
                    opts.image_col,
                    columns()
                ),
            }
        };
        let text = if opts.text_col.is_empty() {
            TEXT_COLUMNS.iter().find(|c| schema.get(c).is_some()).map(|c| c.to_string())
        } else if schema.get(opts.text_col.as_str()).is_some() {
            Some(opts.text_col.clone())
        } else {
            anyhow::bail!("{}: --text-col {}: no such column; found {}", file.display(), opts.text_col, columns());
        };
        let captions: Option<DataFrame> = match &text {
            Some(c) => Some(open(&file)?.with_columns(Some(vec![c.clone()])).finish().map_err(not_parquet)?),
            None => None,
        };
        let captions = match (&captions, &text) {
            (Some(df), Some(c)) => Some(
                df.column(c)?
                    .cast(&DataType::String)
                    .map_err(|e| anyhow::anyhow!("{}: column `{c}`: expected text: {e}", file.display()))?,
            ),
            _ => None,
        };
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut group_start = 0;
        for group_rows in groups {
            for row in group_start..group_start + group_rows {
                let cell = CellRef { file: file.clone(), column: image.clone(), group_start, group_rows, row };
                let mut r = InputRow::new(format!("{name}#{row}"), Payload::Parquet(Box::new(cell)));
                r.caption = captions.as_ref().and_then(|c| c.str().ok()?.get(row).map(|s| s.trim().to_string()));
                rows.push(r);
            }
            group_start += group_rows;
        }
        described.push(describe_input(&file));
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs: described })
}

/// One row group's images: each row's bytes, or why it has none.
type Block = Result<Vec<Result<Vec<u8>, String>>, String>;

/// A row group: its file, image column and first row.
type BlockKey = (PathBuf, String, usize);

/// Row groups decoded recently, shared by the threads processing a shard.
struct BlockCache {
    blocks: VecDeque<(BlockKey, Arc<OnceLock<Block>>)>,
}

/// How many decoded row groups the cache keeps: enough for every thread to work in its own and
/// the next.
fn cache_capacity() -> usize {
    2 * rayon::current_num_threads() + 2
}

fn cache() -> &'static Mutex<BlockCache> {
    static CACHE: OnceLock<Mutex<BlockCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(BlockCache { blocks: VecDeque::new() }))
}

/// Decodes the image column of one row group.
fn decode_block(cell: &CellRef) -> Block {
    let file = cell.file.display();
    let df = open(&cell.file)
        .map_err(|e| e.to_string())?
        .with_columns(Some(vec![cell.column.clone()]))
        .with_slice(Some((cell.group_start, cell.group_rows)))
        .finish()
        .map_err(|e| format!("{file}: row group at row {}: {e}", cell.group_start))?;
    let column = df.column(&cell.column).map_err(|e| format!("{file}: {e}"))?.as_materialized_series().clone();
    let (bytes, paths) = match column.dtype() {
        DataType::Struct(_) => {
            let s = column.struct_().map_err(|e| e.to_string())?;
            let bytes = s.field_by_name("bytes").map_err(|e| e.to_string())?;
            (bytes, s.field_by_name("path").ok())
        }
        _ => (column, None),
    };
    let bytes = bytes.cast(&DataType::Binary).map_err(|e| e.to_string())?;
    let bytes = bytes.binary().map_err(|e| e.to_string())?;
    let paths = paths.and_then(|p| p.cast(&DataType::String).ok());
    Ok((0..bytes.len())
        .map(|i| match bytes.get(i) {
            Some(b) => Ok(b.to_vec()),
            None => {
                let path = paths.as_ref().and_then(|p| p.str().ok()?.get(i).map(str::to_string));
                let at = format!("{file}: row {}, column `{}`", cell.group_start + i, cell.column);
                Err(match path {
                    Some(p) => format!(
                        "{at}: no image bytes (only the path {p:?}; images stored outside the parquet are not read)"
                    ),
                    None => format!("{at}: no image (null)"),
                })
            }
        })
        .collect())
}

/// The image bytes of one row, decoding its row group unless a thread already did.
pub fn read_cell(cell: &CellRef) -> Result<Vec<u8>, String> {
    let key: BlockKey = (cell.file.clone(), cell.column.clone(), cell.group_start);
    let slot = {
        let mut c = cache().lock().map_err(|_| "row-group cache poisoned".to_string())?;
        match c.blocks.iter().find(|(k, _)| *k == key) {
            Some((_, slot)) => slot.clone(),
            None => {
                let slot = Arc::new(OnceLock::new());
                c.blocks.push_back((key, slot.clone()));
                while c.blocks.len() > cache_capacity() {
                    c.blocks.pop_front();
                }
                slot
            }
        }
    };
    // Decoded on a thread of its own: polars runs on its own pool, and a rayon worker waiting for
    // another pool takes other rows' jobs meanwhile, which could wait on this very slot.
    let block = slot.get_or_init(|| {
        std::thread::scope(|s| s.spawn(|| decode_block(cell)).join())
            .unwrap_or_else(|_| Err(format!("{}: decoding a row group panicked", cell.file.display())))
    });
    match block {
        Ok(rows) => rows.get(cell.row - cell.group_start).cloned().unwrap_or_else(|| {
            Err(format!("{}: row {}: past the row group's {} rows", cell.file.display(), cell.row, rows.len()))
        }),
        Err(e) => Err(e.clone()),
    }
}
