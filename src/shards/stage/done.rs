//! Done-checks of the whole-dataset stages (density, selections, exports, training, sampling): a
//! digest of everything a stage's output was made from ([`InputsDigest`]: the `_stats.json` of
//! every done shard of its input folders, files, configuration values), kept beside the output in
//! a marker file ([`DoneMarker`]) written after the output; the stage is current when the marker
//! holds the digest of its inputs now. Folders, files and markers may be in a store.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A digest of a stage's inputs, built up piece by piece.
pub struct InputsDigest(Sha256);

impl Default for InputsDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl InputsDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self(Sha256::new())
    }

    /// Adds the name and content of the `_stats.json` of every done shard of `dir` (a shard
    /// redone, added or removed there changes the digest).
    pub fn shards(&mut self, dir: &Path) -> anyhow::Result<&mut Self> {
        let ids = crate::shards::done_shards(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        for s in ids {
            let name = format!("{}_stats.json", crate::shards::shard_name(s));
            let bytes = crate::store::read_in(dir, &name)?
                .ok_or_else(|| anyhow::anyhow!("{}: no such file", dir.join(&name).display()))?;
            self.0.update(name.as_bytes());
            self.0.update(bytes);
        }
        Ok(self)
    }

    /// Adds the content of the file (or store object) `path`.
    pub fn file(&mut self, path: &Path) -> anyhow::Result<&mut Self> {
        if crate::store::is_remote(path) {
            self.0.update(Sha256::digest(crate::store::read_file(path)?));
        } else {
            self.0.update(super::sha256_file(path)?);
        }
        Ok(self)
    }

    /// Adds a configuration value (its JSON form).
    pub fn value<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> anyhow::Result<&mut Self> {
        self.0.update(serde_json::to_vec(v)?);
        Ok(self)
    }

    /// Adds raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(b);
        self
    }

    /// The digest (hex, 128 bits).
    pub fn finish(self) -> String {
        hex::encode(&self.0.finalize()[..16])
    }
}

/// The marker file holding the digest of the inputs a stage's output was made from.
#[derive(Debug, Clone)]
pub struct DoneMarker {
    /// The marker file.
    pub path: PathBuf,
    /// The digest of the inputs now.
    pub digest: String,
}

impl DoneMarker {
    /// The marker at `path` for inputs of digest `digest`.
    pub fn new(path: impl Into<PathBuf>, digest: String) -> Self {
        Self { path: path.into(), digest }
    }

    /// Whether the output was made from these inputs (the marker holds this digest).
    pub fn is_current(&self) -> bool {
        crate::store::read_file(&self.path).ok().as_deref() == Some(self.digest.as_bytes())
    }

    /// Records that the output is made from these inputs; call it after the output is written.
    pub fn write(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent().filter(|_| !crate::store::is_remote(&self.path)) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        }
        crate::store::write_file(&self.path, self.digest.as_bytes().to_vec())
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", self.path.display()))
    }
}
