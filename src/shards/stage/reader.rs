//! Reading a stage's output folder: refused when its fingerprint does not match what the consumer
//! expects.

use super::fingerprint::StageFingerprint;
use super::store::SampleEntry;
use crate::shards::{done_shards, shard_name, Manifest, MANIFEST_FILE};
use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// An opened cache directory.
pub struct StageReader {
    dir: PathBuf,
    /// For a cache in a store: its shards' tensors, downloaded in order ahead of the reader.
    ahead: Option<crate::store::ReadAhead>,
    /// What the cache was made from.
    pub fingerprint: StageFingerprint,
    /// Its finished shards, by name.
    pub shards: Vec<String>,
}

/// One cache shard: its index and its memory-mapped tensors.
pub struct StageShard {
    /// One entry per source sample.
    pub entries: Vec<SampleEntry>,
    by_key: std::collections::HashMap<String, usize>,
    tensors: MmapedSafetensors,
}

impl StageReader {
    /// Opens the cache in `dir`, refusing it when it was made from inputs other than `expected`
    /// (the error lists every difference: model config, weight files, preprocessing, source shards).
    pub fn open(dir: &Path, expected: &StageFingerprint) -> anyhow::Result<Self> {
        let r = Self::open_unchecked(dir)?;
        let changes = r.fingerprint.changes(expected);
        if !changes.is_empty() {
            anyhow::bail!(
                "{}: stale {} cache, made from other inputs than these:\n  - {}\nRebuild it with `pixforge cache {}` (--overwrite replaces it).",
                dir.display(),
                r.fingerprint.kind,
                changes.join("\n  - "),
                r.fingerprint.kind
            );
        }
        Ok(r)
    }

    /// Opens the cache in `dir` without comparing its fingerprint.
    pub fn open_unchecked(dir: &Path) -> anyhow::Result<Self> {
        let manifest = Manifest::read(dir)?
            .ok_or_else(|| anyhow::anyhow!("{}: not a pixforge cache (expected {MANIFEST_FILE})", dir.display()))?;
        let fingerprint: StageFingerprint = serde_json::from_value(manifest.config)
            .map_err(|e| anyhow::anyhow!("{}: not a cache manifest ({e})", dir.join(MANIFEST_FILE).display()))?;
        let shards: Vec<String> = done_shards(dir)?.into_iter().map(shard_name).collect();
        let ahead = if crate::store::is_remote(dir) {
            let staging = std::sync::Arc::new(crate::store::Staging::open_to_read(dir)?);
            Some(crate::store::ReadAhead::start(staging, shards.iter().map(|n| format!("{n}.safetensors")).collect()))
        } else {
            None
        };
        Ok(Self { dir: dir.to_path_buf(), ahead, fingerprint, shards })
    }

    /// The cache directory (or store prefix).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens shard `name`. From a store, its tensors file is downloaded (ahead of time, in shard
    /// order), mapped, and its local name removed: the mapping keeps the data until the shard is
    /// dropped, and nothing is left behind.
    pub fn shard(&self, name: &str) -> anyhow::Result<StageShard> {
        let index = self.dir.join(format!("{name}.index.json"));
        let text = crate::store::read_in(&self.dir, &format!("{name}.index.json"))?
            .ok_or_else(|| anyhow::anyhow!("{}: no such file", index.display()))?;
        let entries: Vec<SampleEntry> =
            serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: {e}", index.display()))?;
        let by_key = entries.iter().enumerate().map(|(i, e)| (e.key.clone(), i)).collect();
        let file = match &self.ahead {
            Some(ahead) => ahead.take(&format!("{name}.safetensors"))?,
            None => self.dir.join(format!("{name}.safetensors")),
        };
        // SAFETY: the file is mapped read-only; finished cache files are never rewritten in place
        // (a rerun renames a new file over the name, which leaves this mapping intact).
        let tensors =
            unsafe { MmapedSafetensors::new(&file) }.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if self.ahead.is_some() {
            let _ = std::fs::remove_file(&file);
        }
        Ok(StageShard { entries, by_key, tensors })
    }
}

impl StageShard {
    /// Tensor `name` as f32 on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> anyhow::Result<Tensor> {
        Ok(self.tensors.load(name, device)?.to_dtype(DType::F32)?)
    }

    /// Rows `start .. start + n` of tensor `name` as f32, read from the mapping without loading the rest.
    pub fn rows(&self, name: &str, start: usize, n: usize, device: &Device) -> anyhow::Result<Tensor> {
        let view = self.tensors.get(name)?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => anyhow::bail!("tensor {name}: expected f32, f16 or bf16 features, found {other:?}"),
        };
        let shape = view.shape();
        if shape.is_empty() || start + n > shape[0] {
            anyhow::bail!("tensor {name} {shape:?}: rows {start}..{} out of range", start + n);
        }
        let row_bytes = shape[1..].iter().product::<usize>() * dtype.size_in_bytes();
        let bytes = &view.data()[start * row_bytes..(start + n) * row_bytes];
        let mut dims = shape.to_vec();
        dims[0] = n;
        Ok(Tensor::from_raw_buffer(bytes, dtype, &dims, device)?.to_dtype(DType::F32)?)
    }

    /// The position of `key`'s entry in [`StageShard::entries`], if the shard has it.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The entry of `key`, if the shard has it.
    pub fn entry(&self, key: &str) -> Option<&SampleEntry> {
        self.by_key.get(key).map(|&i| &self.entries[i])
    }
}
