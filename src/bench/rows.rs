//! Synthetic LAION metadata for the ingest memory benchmark (bench/rows.sh): a parquet file of `rows`
//! rows (URL, TEXT, similarity, WIDTH, HEIGHT, as LAION's parts have), written a row group at a time.

use polars::prelude::*;
use std::path::Path;

/// Rows written per row group.
const GROUP: usize = 100_000;

/// Writes `rows` LAION-style rows to `out`; every URL is under `base` (`http://host:port`).
pub fn write_laion(out: &Path, rows: usize, base: &str) -> anyhow::Result<()> {
    let schema = Schema::from_iter([
        ("URL".into(), DataType::String),
        ("TEXT".into(), DataType::String),
        ("similarity".into(), DataType::Float64),
        ("WIDTH".into(), DataType::Int64),
        ("HEIGHT".into(), DataType::Int64),
    ]);
    let tmp = crate::shards::temp_path(out);
    let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    let mut writer = ParquetWriter::new(file).with_row_group_size(Some(GROUP)).batched(&schema)?;
    for start in (0..rows).step_by(GROUP) {
        let ids: Vec<usize> = (start..(start + GROUP).min(rows)).collect();
        let n = ids.len();
        let df = DataFrame::new(
            n,
            vec![
                Column::new("URL".into(), ids.iter().map(|i| format!("{base}/images/{i:09}.jpg")).collect::<Vec<_>>()),
                Column::new(
                    "TEXT".into(),
                    ids.iter()
                        .map(|i| format!("a photo number {i} of a red bicycle leaning on a wall"))
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "similarity".into(),
                    ids.iter().map(|i| 0.25 + (i % 100) as f64 / 1000.0).collect::<Vec<_>>(),
                ),
                Column::new("WIDTH".into(), ids.iter().map(|i| 256 + (i % 7) as i64 * 64).collect::<Vec<_>>()),
                Column::new("HEIGHT".into(), ids.iter().map(|i| 256 + (i % 5) as i64 * 64).collect::<Vec<_>>()),
            ],
        )?;
        writer.write_batch(&df)?;
    }
    writer.finish()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
