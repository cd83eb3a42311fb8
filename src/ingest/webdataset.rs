//! `webdataset` source: existing tar shards (img2dataset's included), read member by member.

use super::source::{describe_input, ext_of, is_image_ext, InputRow, Payload, SourceRows};
use crate::shards::{group_samples, index_tar_partial, read_member, WdsReader};
use std::path::PathBuf;

/// Expands inputs to tar files: a `.tar` path, or a directory whose `*.tar` files are taken in name order.
pub fn tar_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut tars: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| ext_of(f) == "tar" && !f.to_string_lossy().contains(crate::shards::TEMP_MARKER))
                .collect();
            tars.sort();
            out.extend(tars);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{}: no such file or directory (expected .tar shards or a directory of them)", p.display());
        }
    }
    Ok(out)
}

/// Reads WebDataset samples: the first image member of each sample, its `.txt` as caption.
pub fn read_webdataset(inputs: &[PathBuf]) -> anyhow::Result<SourceRows> {
    let mut rows = Vec::new();
    let mut descs = Vec::new();
    for tar in tar_inputs(inputs)? {
        descs.push(describe_input(&tar));
        // A cut or damaged tar gives the samples before the damage (a member cut short fails as its
        // sample's status); the other tars are read.
        let (members, damage) =
            index_tar_partial(&tar).map_err(|e| anyhow::anyhow!("{}: not a readable tar: {e}", tar.display()))?;
        if let Some(e) = damage {
            tracing::warn!("{}: read up to a damaged entry ({e}); {} members before it", tar.display(), members.len());
        }
        let reader = WdsReader { path: tar.clone(), samples: group_samples(members) };
        for s in &reader.samples {
            let Some((_, member)) = s.members.iter().find(|(e, _)| is_image_ext(e)) else {
                continue;
            };
            let (caption, refused) = match s.members.get("txt").map(|m| read_member(&tar, m)) {
                Some(Ok(bytes)) => match String::from_utf8(bytes) {
                    Ok(t) => (Some(t.trim().to_string()), None),
                    Err(e) => (
                        None,
                        Some(format!(
                            "unreadable caption: {}:{}: not UTF-8 (invalid byte at offset {})",
                            tar.display(),
                            s.members["txt"].name,
                            e.utf8_error().valid_up_to()
                        )),
                    ),
                },
                Some(Err(e)) => (None, Some(format!("unreadable caption: {e}"))),
                None => (None, None),
            };
            let mut row = InputRow::new(
                format!("{}:{}", tar.display(), member.name),
                Payload::Tar { tar: tar.clone(), member: member.clone() },
            );
            row.caption = caption;
            row.filtered = refused;
            rows.push(row);
        }
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs: descs })
}
