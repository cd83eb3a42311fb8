//! Shard parquet files: one row per input row, written atomically.

use super::atomic::temp_path;
use super::record::{Record, Status, Value};
use polars::prelude::*;
use std::fs::File;
use std::path::Path;

/// Column names reserved by the shard format; a source column with one of these names is refused.
pub const RESERVED: &[&str] = &[
    "key",
    "status",
    "error_message",
    "url",
    "source",
    "caption",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "phash",
    "exif",
    "md5",
    "sha512",
];

fn extra_column(name: &str, values: Vec<Option<&Value>>) -> Column {
    let first = values.iter().flatten().find(|v| !matches!(v, Value::Null));
    match first {
        Some(Value::Int(_)) => Column::new(
            name.into(),
            values
                .iter()
                .map(|v| match v {
                    Some(Value::Int(i)) => Some(*i),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Value::Float(_)) => Column::new(
            name.into(),
            values
                .iter()
                .map(|v| match v {
                    Some(Value::Float(f)) => Some(*f),
                    Some(Value::Int(i)) => Some(*i as f64),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        _ => Column::new(
            name.into(),
            values
                .iter()
                .map(|v| match v {
                    Some(Value::Str(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    }
}

/// Builds the shard table: `source_col` (`url` or `source`), `caption`, the source's own columns
/// (`passthrough`, one row per record), then `key, status, error_message, width, height,
/// original_width, original_height, sha256, phash` and the records' extra columns.
pub fn records_to_frame(
    records: &[Record],
    source_col: &str,
    passthrough: Option<&DataFrame>,
) -> PolarsResult<DataFrame> {
    let n = records.len();
    let u32col = |name: &str, f: &dyn Fn(&Record) -> Option<u32>| {
        Column::new(name.into(), records.iter().map(|r| f(r).map(|v| v as i32)).collect::<Vec<_>>())
    };
    let mut cols = vec![
        Column::new(source_col.into(), records.iter().map(|r| r.source.as_str()).collect::<Vec<_>>()),
        Column::new("caption".into(), records.iter().map(|r| r.caption.as_deref()).collect::<Vec<_>>()),
    ];
    if let Some(df) = passthrough {
        for c in df.columns() {
            cols.push(c.clone());
        }
    }
    cols.push(Column::new("key".into(), records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>()));
    cols.push(Column::new("status".into(), records.iter().map(|r| r.status().as_str()).collect::<Vec<_>>()));
    cols.push(Column::new(
        "error_message".into(),
        records.iter().map(|r| r.error_message.as_deref()).collect::<Vec<_>>(),
    ));
    cols.push(u32col("width", &|r| r.width));
    cols.push(u32col("height", &|r| r.height));
    cols.push(u32col("original_width", &|r| r.original_width));
    cols.push(u32col("original_height", &|r| r.original_height));
    cols.push(Column::new("sha256".into(), records.iter().map(|r| r.sha256.as_deref()).collect::<Vec<_>>()));
    cols.push(Column::new("phash".into(), records.iter().map(|r| r.phash.as_deref()).collect::<Vec<_>>()));
    let mut extra_names: Vec<&str> = Vec::new();
    for r in records {
        for (k, _) in &r.extra {
            if !extra_names.contains(&k.as_str()) {
                extra_names.push(k);
            }
        }
    }
    for name in extra_names {
        let values = records.iter().map(|r| r.extra.iter().find(|(k, _)| k == name).map(|(_, v)| v)).collect();
        cols.push(extra_column(name, values));
    }
    DataFrame::new(n, cols)
}

/// Writes `df` to `path`, zstd-compressed: a file atomically (temp file + rename), a store object
/// whole.
pub fn write_parquet_atomic(df: &mut DataFrame, path: &Path) -> PolarsResult<()> {
    if crate::store::is_remote(path) {
        let mut bytes = Vec::new();
        ParquetWriter::new(&mut bytes).with_compression(ParquetCompression::Zstd(None)).finish(df)?;
        return crate::store::write_file(path, bytes)
            .map_err(|e| polars::prelude::PolarsError::ComputeError(format!("{e:#}").into()));
    }
    let tmp = temp_path(path);
    let file = File::create(&tmp)?;
    ParquetWriter::new(file).with_compression(ParquetCompression::Zstd(None)).finish(df)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn opt_str(df: &DataFrame, name: &str, i: usize) -> Option<String> {
    let c = df.column(name).ok()?;
    let s = c.str().ok()?;
    s.get(i).map(str::to_owned)
}

fn opt_u32(df: &DataFrame, name: &str, i: usize) -> Option<u32> {
    let c = df.column(name).ok()?.cast(&DataType::Int64).ok()?;
    c.i64().ok()?.get(i).map(|v| v as u32)
}

/// Reads the records of a shard parquet (the format's own columns; extras are not read back).
pub fn read_records(path: &Path) -> PolarsResult<Vec<Record>> {
    let df = ParquetReader::new(File::open(path)?).finish()?;
    let source_col = if df.column("url").is_ok() { "url" } else { "source" };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        out.push(Record {
            key: opt_str(&df, "key", i).unwrap_or_default(),
            status: opt_str(&df, "status", i).and_then(|s| Status::parse(&s)),
            error_message: opt_str(&df, "error_message", i),
            source: opt_str(&df, source_col, i).unwrap_or_default(),
            caption: opt_str(&df, "caption", i),
            width: opt_u32(&df, "width", i),
            height: opt_u32(&df, "height", i),
            original_width: opt_u32(&df, "original_width", i),
            original_height: opt_u32(&df, "original_height", i),
            sha256: opt_str(&df, "sha256", i),
            phash: opt_str(&df, "phash", i),
            ext: None,
            extra: Vec::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Record::new("000000000".into(), "http://x/a.jpg".into(), Some("a cat".into()));
        a.status = Some(Status::Success);
        a.width = Some(10);
        a.extra.push(("mask_count".into(), Value::Int(3)));
        let mut b = Record::new("000000001".into(), "http://x/b.jpg".into(), None);
        b.fail(Status::FailedToDownload, "HTTP 404 Not Found");
        let mut df = records_to_frame(&[a.clone(), b.clone()], "url", None).unwrap();
        let p = dir.path().join("00000.parquet");
        write_parquet_atomic(&mut df, &p).unwrap();
        let back = read_records(&p).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].caption.as_deref(), Some("a cat"));
        assert_eq!(back[0].width, Some(10));
        assert_eq!(back[1].status, Some(Status::FailedToDownload));
        assert_eq!(back[1].error_message.as_deref(), Some("HTTP 404 Not Found"));
    }
}
