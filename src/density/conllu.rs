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
pub fn read_conllu(path: &Path) -> anyhow::Result<Vec<Vec<Token>>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
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
