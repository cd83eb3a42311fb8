//! `folder` source: a directory tree of images with optional same-stem `.txt` captions (kohya layout).

use super::source::{describe_input, ext_of, is_image_ext, walk_sorted, InputRow, Payload, SourceRows};
use std::path::Path;

/// A caption file's text, trimmed; one that cannot be read, is not UTF-8 or is longer than
/// [`crate::text::MAX_LINE_BYTES`] is that image's refusal (the reason names the file).
fn read_caption(txt: &Path) -> Result<String, String> {
    let refused = |why: String| format!("unreadable caption: {}: {why}", txt.display());
    let len = std::fs::metadata(txt).map_err(|e| refused(e.to_string()))?.len();
    if len > crate::text::MAX_LINE_BYTES as u64 {
        return Err(refused(format!("{len} bytes, more than {} bytes", crate::text::MAX_LINE_BYTES)));
    }
    let bytes = std::fs::read(txt).map_err(|e| refused(e.to_string()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| refused(format!("not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
    Ok(text.trim().to_string())
}

/// Lists the images under `dir` in path order; `a/b.jpg` takes its caption from `a/b.txt` if present
/// (an image whose caption file cannot be read is kept as a refused row, with the reason).
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
        let (caption, refused) = if txt.is_file() {
            match read_caption(&txt) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let rel = f.strip_prefix(dir).unwrap_or(f).to_string_lossy().into_owned();
        inputs.push(describe_input(f));
        let mut row = InputRow::new(rel, Payload::File(f.clone()));
        row.caption = caption;
        row.filtered = refused;
        rows.push(row);
    }
    Ok(SourceRows { rows, source_col: "source", passthrough: None, inputs })
}
