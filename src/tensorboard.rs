//! TensorBoard event files (`events.out.tfevents.*`): TFRecord framing (length, masked CRC-32C of
//! the length, the record, masked CRC-32C of the record) around `tensorflow.Event` protocol
//! buffers, encoded here field by field: the file version, scalars (`Summary.Value.simple_value`),
//! PNG images (`Summary.Image`) and the session start that tells TensorBoard a resumed run replaces
//! the steps after it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An event file being appended to.
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// A new event file in `dir` (`events.out.tfevents.{seconds}.{host}.{pid}`), starting with the
    /// file version and a session start at `step` (TensorBoard then drops the events of earlier
    /// files from `step` on: what a resumed run redoes).
    pub fn create(dir: &Path, step: u64) -> anyhow::Result<Self> {
        let now = crate::shards::now();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
        let name = format!("events.out.tfevents.{}.{}.{}", now as u64, host.trim(), std::process::id());
        // Two writers of one process in the same second get files of their own.
        let (path, file) = (0..)
            .map(|n| dir.join(if n == 0 { name.clone() } else { format!("{name}.{n}") }))
            .map(|path| (std::fs::File::create_new(&path), path))
            .find(|(f, _)| !matches!(f, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists))
            .map(|(f, path)| (path, f))
            .expect("an unused name");
        let file = file.map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
        let mut w = Self { path, file: std::io::BufWriter::new(file) };
        let mut version = Vec::new();
        put_double(&mut version, 1, now);
        put_bytes(&mut version, 3, b"brain.Event:2");
        w.record(&version)?;
        let mut start = Vec::new();
        put_varint_field(&mut start, 1, 1); // SessionLog.status = START
        let mut event = event_head(now, step);
        put_bytes(&mut event, 7, &start);
        w.record(&event)?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars at `step`, one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> anyhow::Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_float(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        self.summary(step, &summary)
    }

    /// A PNG image (`width` × `height`, RGB) at `step`.
    pub fn png(&mut self, tag: &str, step: u64, png: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
        let mut image = Vec::new();
        put_varint_field(&mut image, 1, u64::from(height));
        put_varint_field(&mut image, 2, u64::from(width));
        put_varint_field(&mut image, 3, 3);
        put_bytes(&mut image, 4, png);
        let mut value = Vec::new();
        put_bytes(&mut value, 1, tag.as_bytes());
        put_bytes(&mut value, 4, &image);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value);
        self.summary(step, &summary)
    }

    fn summary(&mut self, step: u64, summary: &[u8]) -> anyhow::Result<()> {
        let mut event = event_head(crate::shards::now(), step);
        put_bytes(&mut event, 5, summary);
        self.record(&event)
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.file.flush().map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }

    fn record(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&out).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

/// The variable naming the folder the data stages write their event files into (none when unset).
pub const EVENTS_DIR_VAR: &str = "PIXFORGE_TENSORBOARD";

/// The event file of a data stage's run: per-shard figures as scalars `{stage}/{name}` at step = the
/// shard's number, so TensorBoard plots a stage's success rate and throughput shard by shard. Only
/// when [`EVENTS_DIR_VAR`] names a folder: the file goes into its `{stage}-{output folder name}/`
/// (never into the dataset, whose files stay the same from run to run). Opened at the first shard
/// done; a file that cannot be written is warned about once and the stage goes on without it.
pub struct ShardRates {
    dir: Option<PathBuf>,
    stage: String,
    writer: Option<EventWriter>,
}

impl ShardRates {
    /// The rates of stage `stage` writing the dataset `out`.
    pub fn new(out: &Path, stage: &str) -> Self {
        let dir = std::env::var_os(EVENTS_DIR_VAR).filter(|v| !v.is_empty()).map(|root| {
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
            PathBuf::from(root).join(format!("{stage}-{name}"))
        });
        Self { dir, stage: stage.to_string(), writer: None }
    }

    /// Records the figures of shard `shard`.
    pub fn shard(&mut self, shard: usize, figures: &[(&str, f64)]) {
        if self.writer.is_none() {
            let Some(dir) = self.dir.take() else { return };
            let created = std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()));
            match created.and_then(|()| EventWriter::create(&dir, 0)) {
                Ok(w) => self.writer = Some(w),
                Err(e) => {
                    tracing::warn!("no TensorBoard events for {}: {e:#}", self.stage);
                    return;
                }
            }
        }
        let Some(w) = &mut self.writer else { return };
        let tags: Vec<String> = figures.iter().map(|(name, _)| format!("{}/{name}", self.stage)).collect();
        let values: Vec<(&str, f64)> = tags.iter().map(String::as_str).zip(figures.iter().map(|f| f.1)).collect();
        if let Err(e) = w.scalars(shard as u64, &values).and_then(|()| w.flush()) {
            tracing::warn!("TensorBoard events of {} stopped: {e:#}", self.stage);
            self.writer = None;
        }
    }
}

/// The success rate and samples per second of a shard of `count` samples, `successes` of them
/// good, done in `seconds`.
pub fn shard_figures(count: usize, successes: usize, seconds: f64) -> [(&'static str, f64); 2] {
    [("success_rate", successes as f64 / count.max(1) as f64), ("samples_per_s", count as f64 / seconds.max(1e-9))]
}

/// An event's wall time and step.
fn event_head(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    put_varint_field(&mut e, 2, step);
    e
}

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_of_the_format_examples() {
        // CRC-32C check value of "123456789" is 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let crc: u32 = 0xE306_9283;
        assert_eq!(masked_crc(b"123456789"), crc.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn writers_in_one_second_do_not_share_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (EventWriter::create(dir.path(), 0).unwrap(), EventWriter::create(dir.path(), 5).unwrap());
        assert_ne!(a.path(), b.path());
        assert!(b.path().file_name().unwrap().to_str().unwrap().contains("tfevents"));
        drop(b);
        assert!(std::fs::metadata(a.path()).unwrap().len() > 0, "the first file is kept");
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
    }
}
