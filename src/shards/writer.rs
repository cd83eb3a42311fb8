//! Writing one shard: tar members to a temporary file, then parquet, then stats (the done marker).

use super::atomic::{temp_path, write_atomic};
use super::keys::ShardLayout;
use super::parquet::{records_to_frame, write_parquet_atomic};
use super::record::Record;
use super::stats::ShardStats;
use polars::prelude::DataFrame;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Writes the tar of one shard; [`ShardWriter::finish`] completes the shard.
pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    tar: tar::Builder<BufWriter<File>>,
    bytes: u64,
}

impl ShardWriter {
    /// Starts shard `shard` in `dir`; nothing is visible under the final names until `finish`.
    pub fn create(dir: &Path, layout: &ShardLayout, shard: usize) -> io::Result<Self> {
        let name = layout.name(shard);
        let tmp = temp_path(&dir.join(format!("{name}.tar")));
        let file = File::create(&tmp).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        let tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        Ok(Self { dir: dir.to_path_buf(), name, tmp, tar, bytes: 0 })
    }

    /// Appends member `{key}.{ext}` with `data` (mode 0644, mtime 0: byte-identical reruns).
    pub fn add(&mut self, key: &str, ext: &str, data: &[u8]) -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(&mut h, format!("{key}.{ext}"), data)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Appends the members of a successful record: image, caption `.txt` and metadata `.json`.
    pub fn add_sample(&mut self, record: &Record, image: &[u8], source_col: &str) -> io::Result<()> {
        let ext = record.ext.as_deref().unwrap_or("jpg");
        self.add(&record.key, ext, image)?;
        if let Some(c) = &record.caption {
            self.add(&record.key, "txt", c.as_bytes())?;
        }
        let json = serde_json::to_vec_pretty(&record.to_json(source_col))?;
        self.add(&record.key, "json", &json)
    }

    /// Completes the shard: renames the tar into place, writes the parquet (one row per record), and
    /// finally `_stats.json`. Returns the stats written.
    pub fn finish(
        self,
        records: &[Record],
        source_col: &str,
        passthrough: Option<&DataFrame>,
        start_time: f64,
    ) -> anyhow::Result<ShardStats> {
        let mut w = self.tar.into_inner()?;
        io::Write::flush(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_data()?;
        drop(f);
        let tar_path = self.dir.join(format!("{}.tar", self.name));
        std::fs::rename(&self.tmp, &tar_path)
            .map_err(|e| anyhow::anyhow!("{} → {}: {e}", self.tmp.display(), tar_path.display()))?;
        let mut df = records_to_frame(records, source_col, passthrough)?;
        write_parquet_atomic(&mut df, &self.dir.join(format!("{}.parquet", self.name)))?;
        let mut stats = ShardStats::from_records(records);
        stats.bytes_written = self.bytes;
        let end = now();
        stats.start_time = start_time;
        stats.end_time = end;
        stats.duration = end - start_time;
        write_atomic(&self.dir.join(format!("{}_stats.json", self.name)), &serde_json::to_vec_pretty(&stats)?)?;
        Ok(stats)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
