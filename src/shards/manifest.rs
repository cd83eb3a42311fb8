//! The dataset `manifest.json`: which stage wrote a directory, with which configuration and inputs.

use super::atomic::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a stage records about the dataset it writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The stage that wrote the directory (`ingest`, `caption`, ...).
    pub stage: String,
    /// pixforge's version.
    pub version: String,
    /// The stage's full configuration.
    pub config: serde_json::Value,
    /// A fingerprint of the configuration and inputs: a rerun into the same directory must match it.
    pub fingerprint: String,
    /// Inputs added later with the same configuration (`ingest --append`), each with its shards;
    /// the first part is the dataset as it was before the first append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<InputsPart>,
}

/// One batch of inputs of a dataset and the range of shards it made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputsPart {
    /// The fingerprint of the configuration and these inputs.
    pub fingerprint: String,
    /// The inputs as given; empty for the dataset as it was before the first append.
    pub inputs: Vec<String>,
    /// Its first shard.
    pub first_shard: usize,
    /// Its number of shards.
    pub shards: usize,
}

impl Manifest {
    /// A manifest for `stage` with `config`; the fingerprint covers the config and `inputs`.
    pub fn new(stage: &str, config: serde_json::Value, inputs: &[String]) -> Self {
        let fingerprint = fingerprint_of(&config, inputs);
        Self { stage: stage.into(), version: env!("CARGO_PKG_VERSION").into(), config, fingerprint, parts: Vec::new() }
    }

    /// Reads `dir/manifest.json` (a folder or a store prefix), if present.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let p = dir.join(MANIFEST_FILE);
        let Some(bytes) = crate::store::read_in(dir, MANIFEST_FILE)? else {
            return Ok(None);
        };
        let m = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a pixforge manifest ({e})", p.display()))?;
        Ok(Some(m))
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        write_atomic(&dir.join(MANIFEST_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The first shard of the inputs this manifest's fingerprint stands for, when `existing` holds
    /// them: the dataset's own inputs (shard 0) or an appended part.
    pub fn first_shard_in(&self, existing: &Manifest) -> Option<usize> {
        if existing.stage != self.stage {
            return None;
        }
        if existing.fingerprint == self.fingerprint {
            return Some(0);
        }
        existing.parts.iter().find(|p| p.fingerprint == self.fingerprint).map(|p| p.first_shard)
    }

    /// Checks that this manifest's configuration is `existing`'s, apart from `inputs` and the
    /// `unfingerprinted` fields; the refusal names every field that differs.
    pub fn check_same_config(&self, existing: &Manifest, dir: &Path, unfingerprinted: &[&str]) -> anyhow::Result<()> {
        let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
        let mut changes = Vec::new();
        if existing.stage != self.stage {
            changes.push(format!("it was written by stage `{}`, this is `{}`", existing.stage, self.stage));
        }
        for (field, was, now) in json_changes(&existing.config, &self.config) {
            let top = field.split('.').next().unwrap_or_default();
            if top != "inputs" && !unfingerprinted.contains(&top) {
                changes.push(format!("`{field}` was {}, is now {}", show(was.as_ref()), show(now.as_ref())));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "{}: inputs are appended with the dataset's own configuration ({}). Use a new output directory.",
            dir.join(MANIFEST_FILE).display(),
            changes.join("; ")
        )
    }

    /// Checks that a directory written by an earlier run may be resumed with this manifest; a refusal
    /// names every configuration field that differs (`unfingerprinted`: top-level fields left out of
    /// the fingerprint, which may change freely), or says the inputs changed.
    pub fn check_resumable(&self, existing: &Manifest, dir: &Path, unfingerprinted: &[&str]) -> anyhow::Result<()> {
        if existing.stage == self.stage && existing.fingerprint == self.fingerprint {
            return Ok(());
        }
        let mut changes = Vec::new();
        if existing.stage != self.stage {
            changes.push(format!("it was written by stage `{}`, this is `{}`", existing.stage, self.stage));
        }
        let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
        for (field, was, now) in json_changes(&existing.config, &self.config) {
            if !unfingerprinted.contains(&field.split('.').next().unwrap_or_default()) {
                changes.push(format!("`{field}` was {}, is now {}", show(was.as_ref()), show(now.as_ref())));
            }
        }
        if changes.is_empty() {
            changes.push("its inputs changed (files added, removed, or of another size or time)".into());
        }
        anyhow::bail!(
            "{}: this output was made from other inputs ({}). Use a new output directory, or pass --overwrite to \
             replace it.",
            dir.join(MANIFEST_FILE).display(),
            changes.join("; ")
        )
    }
}

/// Every leaf where two JSON values differ, by dotted path (`image.image_size`), with the old and
/// the new value (`None`: absent).
pub fn json_changes(
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> {
    fn walk(
        path: &str,
        old: Option<&serde_json::Value>,
        new: Option<&serde_json::Value>,
        out: &mut Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)>,
    ) {
        match (old.and_then(|v| v.as_object()), new.and_then(|v| v.as_object())) {
            (Some(a), Some(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&p, a.get(k), b.get(k), out);
                }
            }
            _ if old != new => out.push((path.to_string(), old.cloned(), new.cloned())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out
}

/// Hex sha256 over a canonical JSON of `config` and the `inputs` descriptions.
pub fn fingerprint_of(config: &serde_json::Value, inputs: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(config.to_string().as_bytes());
    for i in inputs {
        h.update(b"\n");
        h.update(i.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}
