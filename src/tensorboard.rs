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
        let path = dir.join(name);
        let file =
            std::fs::File::create(&path).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
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
    fn varints_encode_as_protobuf_does() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
    }
}
