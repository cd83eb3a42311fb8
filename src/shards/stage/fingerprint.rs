//! What a cache was made from: the model (config and weight files), the preprocessing and the source
//! shards. A cache whose fingerprint differs from what a consumer expects is stale; [`changes`]
//! says what differs.
//!
//! [`changes`]: StageFingerprint::changes

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One file a cache depends on (weights, tokenizer): its name, size and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// File name inside the model folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// The inputs that determine a cache's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageFingerprint {
    /// The cache kind: `t5` or `vae`.
    pub kind: String,
    /// The model's `config.json`, parsed.
    pub model_config: serde_json::Value,
    /// The model's weight files (and the tokenizer for T5).
    pub files: Vec<FileHash>,
    /// The preprocessing parameters (text cleaning and length; image size, buckets and filter; dtype).
    pub preprocessing: serde_json::Value,
    /// Each source shard's name and the sha256 of its `_stats.json`, empty when not checked.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// The configurations of the stage folders the output was made from, under the name of the
    /// `preprocessing` field that records their digest (`caption`: the caption folder's). Not part of
    /// the digest — that field stands for them — but kept so that a refusal says what in them changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub made_from: BTreeMap<String, serde_json::Value>,
}

impl FileHash {
    /// The name, size and sha256 of the file at `path`.
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.len();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(FileHash { name, bytes, sha256: sha256_file(path)? })
    }
}

/// Hex sha256 of a file's content, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl StageFingerprint {
    /// The fingerprint of model folder `model_dir` (its `config.json` and `files`) with `preprocessing`.
    pub fn of_model(
        kind: &str,
        model_dir: &Path,
        files: &[std::path::PathBuf],
        preprocessing: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let model_config: serde_json::Value = crate::hub::read_config(&model_dir.join("config.json"))?;
        let files = files.iter().map(|p| FileHash::of(p)).collect::<anyhow::Result<_>>()?;
        Ok(Self {
            kind: kind.into(),
            model_config,
            files,
            preprocessing,
            sources: BTreeMap::new(),
            made_from: BTreeMap::new(),
        })
    }

    /// Adds the source shards `names` of `input` (each by the hash of its `_stats.json`).
    pub fn with_sources(self, input: &Path, names: &[String]) -> anyhow::Result<Self> {
        self.with_sources_in(&[input.to_path_buf()], names)
    }

    /// Adds the source shards `names`, each by the hash of its `_stats.json` in every folder of
    /// `inputs` (the source dataset, then the stage folders the shard also depends on).
    pub fn with_sources_in(mut self, inputs: &[std::path::PathBuf], names: &[String]) -> anyhow::Result<Self> {
        for name in names {
            let mut h = Sha256::new();
            for input in inputs {
                let file = format!("{name}_stats.json");
                let bytes = crate::store::read_in(input, &file)?
                    .ok_or_else(|| anyhow::anyhow!("{}: cannot read: no such file", input.join(&file).display()))?;
                if inputs.len() == 1 {
                    h = Sha256::new();
                    h.update(&bytes);
                } else {
                    h.update(Sha256::digest(&bytes));
                }
            }
            self.sources.insert(name.clone(), hex::encode(&h.finalize()[..16]));
        }
        Ok(self)
    }

    /// The digest of everything but the sources: whether a folder holds the same kind of cache.
    pub fn digest_without_sources(&self) -> String {
        let mut f = self.clone();
        f.sources.clear();
        f.digest()
    }

    /// A short hash of the whole fingerprint (`made_from` aside: `preprocessing` holds its digests).
    pub fn digest(&self) -> String {
        let mut f = self.clone();
        f.made_from.clear();
        let text = serde_json::to_string(&f).expect("a fingerprint serialises");
        hex::encode(&Sha256::digest(text.as_bytes())[..16])
    }

    /// What differs between this (the cache's) fingerprint and `expected` (the consumer's), one line
    /// per difference; empty when they agree. Sources are compared only when `expected` lists some.
    pub fn changes(&self, expected: &StageFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != expected.kind {
            out.push(format!("kind: the cache holds `{}` features, expected `{}`", self.kind, expected.kind));
        }
        diff_json("model config", &self.model_config, &expected.model_config, &mut out);
        diff_files(&self.files, &expected.files, &mut out);
        let mut preprocessing = Vec::new();
        diff_json("preprocessing", &self.preprocessing, &expected.preprocessing, &mut preprocessing);
        // A field standing for a folder's digest is explained by what changed in that folder.
        for (field, line) in json_fields(&self.preprocessing, &expected.preprocessing).into_iter().zip(preprocessing) {
            match self.made_from_changes(expected, &field) {
                Some(why) if !why.is_empty() => {
                    out.extend(why.into_iter().map(|w| format!("preprocessing: `{field}` — its folder's {w}")))
                }
                _ => out.push(line),
            }
        }
        if !expected.sources.is_empty() {
            for (name, hash) in &expected.sources {
                match self.sources.get(name) {
                    None => out.push(format!("source shard {name}: not in the cache")),
                    Some(h) if h != hash => out.push(format!("source shard {name}: its _stats.json changed")),
                    _ => {}
                }
            }
        }
        out
    }
}

impl StageFingerprint {
    /// What differs between the configurations of the folder recorded under `field` in both
    /// fingerprints; `None` when either does not record it.
    fn made_from_changes(&self, expected: &StageFingerprint, field: &str) -> Option<Vec<String>> {
        let parse = |f: &StageFingerprint| {
            f.made_from.get(field).and_then(|v| serde_json::from_value::<StageFingerprint>(v.clone()).ok())
        };
        let (mut was, mut now) = (parse(self)?, parse(expected)?);
        was.sources.clear();
        now.sources.clear();
        Some(was.changes(&now))
    }
}

/// The top-level field of each difference [`diff_json`] reports, in its order.
fn json_fields(cached: &serde_json::Value, expected: &serde_json::Value) -> Vec<String> {
    crate::shards::manifest::json_changes(cached, expected)
        .into_iter()
        .map(|(field, ..)| field.split('.').next().unwrap_or_default().to_string())
        .collect()
}

fn diff_json(what: &str, cached: &serde_json::Value, expected: &serde_json::Value, out: &mut Vec<String>) {
    let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
    for (field, was, now) in crate::shards::manifest::json_changes(cached, expected) {
        if field.is_empty() {
            out.push(format!("{what}: was {cached}, is now {expected}"));
        } else {
            out.push(format!(
                "{what}: `{field}` was {} in the cache, is now {}",
                show(was.as_ref()),
                show(now.as_ref())
            ));
        }
    }
}

fn diff_files(cached: &[FileHash], expected: &[FileHash], out: &mut Vec<String>) {
    for e in expected {
        match cached.iter().find(|c| c.name == e.name) {
            None => out.push(format!("model file {}: not used by the cache", e.name)),
            Some(c) if c != e => out.push(format!(
                "model file {}: was {} bytes, sha256 {}…, is now {} bytes, sha256 {}…",
                e.name,
                c.bytes,
                &c.sha256[..12.min(c.sha256.len())],
                e.bytes,
                &e.sha256[..12.min(e.sha256.len())]
            )),
            _ => {}
        }
    }
    for c in cached {
        if !expected.iter().any(|e| e.name == c.name) {
            out.push(format!("model file {}: used by the cache, absent now", c.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_what_differs() {
        let a = StageFingerprint {
            kind: "vae".into(),
            model_config: serde_json::json!({"latent_channels": 4, "scaling_factor": 0.18215}),
            files: vec![FileHash { name: "w.safetensors".into(), bytes: 10, sha256: "ab".repeat(32) }],
            preprocessing: serde_json::json!({"resolution": 512}),
            sources: BTreeMap::new(),
            made_from: BTreeMap::new(),
        };
        assert!(a.changes(&a).is_empty());
        let mut b = a.clone();
        b.model_config["latent_channels"] = 8.into();
        b.preprocessing["resolution"] = 256.into();
        let c = a.changes(&b);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("`latent_channels` was 4 in the cache, is now 8"), "{c:?}");
        assert!(c[1].contains("`resolution` was 512"), "{c:?}");
        assert_ne!(a.digest(), b.digest());
    }
}
