//! `webdataset` source: existing tar shards (img2dataset's included), read member by member.

use super::source::{describe_input, ext_of, is_image_ext, InputRow, Payload, SourceRows};
use crate::shards::{read_member, WdsReader};
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
        let reader =
            WdsReader::open(&tar).map_err(|e| anyhow::anyhow!("{}: not a readable tar: {e}", tar.display()))?;
        for s in &reader.samples {
            let Some((_, member)) = s.members.iter().find(|(e, _)| is_image_ext(e)) else {
                continue;
            };
            let caption = match s.members.get("txt") {
                Some(m) => Some(String::from_utf8_lossy(&read_member(&tar, m)?).trim().to_string()),
                None => None,
            };
            let mut row = InputRow::new(
                format!("{}:{}", tar.display(), member.name),
                Payload::Tar { tar: tar.clone(), member: member.clone() },
            );
            row.caption = caption;
            rows.push(row);
        }
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs: descs })
}
