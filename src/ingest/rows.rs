//! A source's rows kept on disk, so that an ingest's memory does not grow with its input: the rows
//! are spilled, chunk by chunk as a source lists them, into a temporary parquet file (one row group
//! a chunk) with the columns the shard parquet carries from the source, and each shard reads back
//! only its own row range.

use super::source::{InputRow, Payload};
use polars::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Rows a source hands over at a time (and a row group of the spill).
pub const CHUNK_ROWS: usize = 8192;

/// The spill's own columns, named apart from any column a source carries through.
const SOURCE: &str = "__pixforge_source";
const CAPTION: &str = "__pixforge_caption";
const PAYLOAD: &str = "__pixforge_payload";
const SIDECAR: &str = "__pixforge_sidecar";
const FILTERED: &str = "__pixforge_filtered";
const OWN: [&str; 5] = [SOURCE, CAPTION, PAYLOAD, SIDECAR, FILTERED];

/// Rows being written to the spill.
pub struct RowSpill {
    path: PathBuf,
    writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>>,
    schema: Option<Schema>,
    passthrough: Option<bool>,
    len: usize,
}

impl Default for RowSpill {
    fn default() -> Self {
        Self::new()
    }
}

impl RowSpill {
    /// A spill under the temporary directory (removed with the [`RowStore`] it becomes; spills of
    /// processes that are gone are removed here).
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join("pixforge-rows");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix("rows-").and_then(|r| r.split('-').next()?.parse::<u32>().ok());
                if pid.is_some_and(|p| p != std::process::id() && !crate::shards::process_alive(p)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = dir.join(format!("rows-{}-{n}.parquet", std::process::id()));
        Self { path, writer: None, schema: None, passthrough: None, len: 0 }
    }

    /// Rows spilled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row was spilled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `rows`, with `passthrough` (the source's own columns, one row per row) when the
    /// source has any; every call of one source carries the same columns.
    pub fn push(&mut self, rows: &[InputRow], passthrough: Option<&DataFrame>) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if *self.passthrough.get_or_insert(passthrough.is_some()) != passthrough.is_some() {
            anyhow::bail!("a source gave its own columns for some rows only");
        }
        let mut df = own_columns(rows)?;
        if let Some(pass) = passthrough {
            if pass.height() != rows.len() {
                anyhow::bail!("{} rows with {} rows of their own columns", rows.len(), pass.height());
            }
            df.hstack_mut(pass.columns())?;
            // Written as one record batch: every column in one chunk.
            df.rechunk_mut_par();
        }
        let schema = df.schema().as_ref().clone();
        match &self.schema {
            None => {
                let dir = self.path.parent().expect("the spill is in a folder");
                std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
                let file = std::fs::File::create(&self.path)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", self.path.display()))?;
                let writer = ParquetWriter::new(file)
                    .with_compression(ParquetCompression::Lz4Raw)
                    .with_row_group_size(Some(CHUNK_ROWS))
                    .batched(&schema)?;
                self.writer = Some(writer);
                self.schema = Some(schema);
            }
            Some(first) if *first != schema => anyhow::bail!(
                "metadata files have different extra columns; cannot carry them into one dataset ({} against {})",
                columns_of(&schema),
                columns_of(first)
            ),
            Some(_) => {}
        }
        self.writer.as_mut().expect("made with the schema").write_batch(&df)?;
        self.len += rows.len();
        Ok(())
    }

    /// The spilled rows, ready to be read back by range.
    pub fn finish(mut self) -> anyhow::Result<RowStore> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        let path = std::mem::take(&mut self.path);
        Ok(RowStore { path, len: self.len, passthrough: self.passthrough.unwrap_or(false) })
    }
}

impl Drop for RowSpill {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            drop(self.writer.take());
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn columns_of(schema: &Schema) -> String {
    schema.iter_names().filter(|n| !OWN.contains(&n.as_str())).map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// The spill's own columns of `rows`. A URL payload equal to the row's source is left out (null).
fn own_columns(rows: &[InputRow]) -> anyhow::Result<DataFrame> {
    let payload = |p: &Payload, source: &str| -> anyhow::Result<Option<String>> {
        match p {
            Payload::Url(u) if u == source => Ok(None),
            other => Ok(Some(serde_json::to_string(other)?)),
        }
    };
    let mut payloads = Vec::with_capacity(rows.len());
    let mut sidecars = Vec::with_capacity(rows.len());
    for r in rows {
        payloads.push(payload(&r.payload, &r.source)?);
        sidecars.push(r.sidecar.as_ref().map(serde_json::to_string).transpose()?);
    }
    let text = |f: &dyn Fn(&InputRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
    Ok(DataFrame::new(
        rows.len(),
        vec![
            Column::new(SOURCE.into(), rows.iter().map(|r| r.source.as_str()).collect::<Vec<_>>()),
            Column::new(CAPTION.into(), text(&|r| r.caption.as_deref())),
            Column::new(PAYLOAD.into(), payloads),
            Column::new(SIDECAR.into(), sidecars),
            Column::new(FILTERED.into(), text(&|r| r.filtered.as_deref())),
        ],
    )?)
}

/// A source's rows on disk (the file is removed when this is dropped).
#[derive(Debug)]
pub struct RowStore {
    path: PathBuf,
    len: usize,
    passthrough: bool,
}

impl RowStore {
    /// The rows given, spilled (for sources that list their rows in memory).
    pub fn from_rows(rows: Vec<InputRow>, passthrough: Option<DataFrame>) -> anyhow::Result<Self> {
        let mut spill = RowSpill::new();
        for (i, chunk) in rows.chunks(CHUNK_ROWS).enumerate() {
            let pass = passthrough.as_ref().map(|df| df.slice((i * CHUNK_ROWS) as i64, chunk.len()));
            spill.push(chunk, pass.as_ref())?;
        }
        spill.finish()
    }

    /// Rows in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows `range`, and their own columns when the source has any.
    pub fn slice(&self, range: Range<usize>) -> anyhow::Result<(Vec<InputRow>, Option<DataFrame>)> {
        let n = range.end.min(self.len).saturating_sub(range.start);
        if n == 0 {
            return Ok((Vec::new(), None));
        }
        let named = |e: PolarsError| anyhow::anyhow!("{}: {e}", self.path.display());
        let file = std::fs::File::open(&self.path).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        let df = ParquetReader::new(file).with_slice(Some((range.start, n))).finish().map_err(named)?;
        let rows = read_rows(&df).map_err(|e| anyhow::anyhow!("{}: {e:#}", self.path.display()))?;
        let pass = self.passthrough.then(|| df.drop_many(OWN));
        Ok((rows, pass))
    }

    /// The spill's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RowStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The rows of a slice of the spill.
fn read_rows(df: &DataFrame) -> anyhow::Result<Vec<InputRow>> {
    let col = |name: &str| -> anyhow::Result<StringChunked> { Ok(df.column(name)?.str()?.clone()) };
    let (source, caption, payload, sidecar, filtered) =
        (col(SOURCE)?, col(CAPTION)?, col(PAYLOAD)?, col(SIDECAR)?, col(FILTERED)?);
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let src = source.get(i).unwrap_or_default().to_string();
        let payload = match payload.get(i) {
            None => Payload::Url(src.clone()),
            Some(json) => serde_json::from_str(json)?,
        };
        rows.push(InputRow {
            source: src,
            caption: caption.get(i).map(str::to_string),
            payload,
            sidecar: sidecar.get(i).map(serde_json::from_str).transpose()?,
            filtered: filtered.get(i).map(str::to_string),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize) -> InputRow {
        let mut r =
            InputRow::new(format!("https://example.com/{i}.jpg"), Payload::Url(format!("https://example.com/{i}.jpg")));
        if i % 3 == 0 {
            r.caption = Some(format!("caption {i}"));
        }
        if i % 5 == 0 {
            r.filtered = Some("too small".into());
        }
        if i % 7 == 0 {
            r.payload = Payload::File(PathBuf::from(format!("/data/{i}.png")));
            r.sidecar = Some(Payload::File(PathBuf::from(format!("/data/{i}.json"))));
        }
        r
    }

    #[test]
    fn rows_read_back_by_range_as_they_were_spilled() {
        let rows: Vec<InputRow> = (0..CHUNK_ROWS + 500).map(row).collect();
        let pass = DataFrame::new(
            rows.len(),
            vec![Column::new("similarity".into(), (0..rows.len()).map(|i| i as f64 / 10.0).collect::<Vec<_>>())],
        )
        .unwrap();
        let store = RowStore::from_rows(rows.clone(), Some(pass.clone())).unwrap();
        assert_eq!(store.len(), rows.len());
        for range in [0..10, CHUNK_ROWS - 3..CHUNK_ROWS + 4, CHUNK_ROWS + 490..CHUNK_ROWS + 600] {
            let (got, p) = store.slice(range.clone()).unwrap();
            let end = range.end.min(rows.len());
            assert_eq!(got, rows[range.start..end], "{range:?}");
            assert!(p.unwrap().equals(&pass.slice(range.start as i64, end - range.start)));
        }
        let path = store.path().to_path_buf();
        assert!(path.is_file());
        drop(store);
        assert!(!path.exists(), "the spill goes with its store");
    }

    #[test]
    fn different_extra_columns_are_refused_naming_both() {
        let mut spill = RowSpill::new();
        let a = DataFrame::new(1, vec![Column::new("width".into(), [1i64])]).unwrap();
        let b = DataFrame::new(1, vec![Column::new("height".into(), [1i64])]).unwrap();
        spill.push(&[row(1)], Some(&a)).unwrap();
        let err = spill.push(&[row(2)], Some(&b)).unwrap_err().to_string();
        assert!(err.contains("different extra columns") && err.contains("height against width"), "{err}");
    }
}
