//! Reading CoNLL-U treebanks (UD English-EWT): words with their UPOS and XPOS tags, per sentence.

use std::path::Path;

/// One token of a treebank sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The word form.
    pub form: String,
    /// Universal POS tag.
    pub upos: String,
    /// Penn Treebank (language-specific) tag.
    pub xpos: String,
}

/// Reads the syntactic words of every sentence (multi-word token lines and empty nodes are skipped).
/// A file whose name ends in `.zst` is zstd-decompressed first.
pub fn read_conllu(path: &Path) -> anyhow::Result<Vec<Vec<Token>>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let bytes = if path.extension().is_some_and(|e| e == "zst") {
        zstd::decode_all(bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("{}: not a readable zstd file: {e}", path.display()))?
    } else {
        bytes
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: expected UTF-8 CoNLL-U text, found invalid UTF-8: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut sent = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            if !sent.is_empty() {
                out.push(std::mem::take(&mut sent));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 10 {
            anyhow::bail!("{}:{}: expected 10 tab-separated columns, found {}", path.display(), n + 1, cols.len());
        }
        if cols[0].contains('-') || cols[0].contains('.') {
            continue;
        }
        sent.push(Token { form: cols[1].to_string(), upos: cols[3].to_string(), xpos: cols[4].to_string() });
    }
    if !sent.is_empty() {
        out.push(sent);
    }
    Ok(out)
}
