//! `folder` source: a directory tree of images with optional same-stem `.txt` captions (kohya layout).

use super::source::{describe_input, ext_of, is_image_ext, walk_sorted, InputRow, Payload, SourceRows};
use std::path::Path;

/// Lists the images under `dir` in path order; `a/b.jpg` takes its caption from `a/b.txt` if present.
pub fn read_folder(dir: &Path) -> anyhow::Result<SourceRows> {
    if !dir.is_dir() {
        anyhow::bail!("{}: not a directory (the folder source expects a directory of images)", dir.display());
    }
    let files = walk_sorted(dir)?;
    let mut rows = Vec::new();
    let mut inputs = Vec::new();
    for f in &files {
        if !is_image_ext(&ext_of(f)) {
            continue;
        }
        let txt = f.with_extension("txt");
        let caption = if txt.is_file() {
            let text = std::fs::read_to_string(&txt)
                .map_err(|e| anyhow::anyhow!("{}: cannot read caption: {e}", txt.display()))?;
            Some(text.trim().to_string())
        } else {
            None
        };
        let rel = f.strip_prefix(dir).unwrap_or(f).to_string_lossy().into_owned();
        inputs.push(describe_input(f));
        let mut row = InputRow::new(rel, Payload::File(f.clone()));
        row.caption = caption;
        rows.push(row);
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs })
}
