//! Selections: the parquet files `pixforge filter`, `dedup` and `balance` write (one `key` column,
//! plus the columns each writer adds), which the caches and the trainer take to keep only those
//! samples.

use polars::prelude::{ParquetReader, SerReader};
use std::collections::HashSet;
use std::path::Path;

/// The column a selection file names its samples in.
pub const KEY_COLUMN: &str = "key";

/// The keys of a selection file (or store object); a missing file, a file that is not parquet or one without a `key`
/// column of strings is an error naming the file.
pub fn read_selection(path: &Path) -> anyhow::Result<HashSet<String>> {
    let bytes = crate::store::read_file(path)?;
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a parquet file: {e}", path.display()))?;
    let keys = df
        .column(KEY_COLUMN)
        .map_err(|_| anyhow::anyhow!("{}: no `{KEY_COLUMN}` column", path.display()))?
        .str()
        .map_err(|e| anyhow::anyhow!("{}: `{KEY_COLUMN}` column: expected strings: {e}", path.display()))?
        .clone();
    Ok((0..keys.len()).filter_map(|i| keys.get(i).map(str::to_string)).collect())
}
