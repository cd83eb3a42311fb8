//! One shard's rows as the browser filters and sorts them: the shard parquet's columns, the dense
//! captions' QC flags and text from the caption folder, and the score folder's scores, joined by key.

use super::dataset::Part;
use crate::density::counts::{CountOptions, NounCounter, Work};
use crate::shards::{index_tar, read_member, TarMember};
use polars::prelude::{Column, DataFrame, DataType, ParquetReader, SerReader};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A shard's rows, column by column.
pub struct ShardRows {
    /// Sample keys, in shard order.
    pub keys: Vec<String>,
    /// `status` column.
    pub status: Vec<String>,
    /// `error_message` column (empty on success).
    pub reason: Vec<String>,
    /// Where the image came from (the `url` or `source` column).
    pub source: Vec<String>,
    /// The source's caption (alt text).
    pub alt: Vec<Option<String>>,
    /// Written image size (width, height).
    pub size: Vec<Option<(u32, u32)>>,
    /// The dense captions' QC flags, sorted and comma-joined (empty when none or no captions).
    pub qc: Vec<String>,
    /// The successful dense captions, joined by newlines.
    pub dense: Vec<String>,
    /// Numeric columns: the shard parquet's and the score folder's, by name.
    pub numbers: Vec<(String, Vec<Option<f64>>)>,
    /// Whether the shard has its tar.
    pub has_tar: bool,
    mirror: Option<std::sync::Arc<super::mirror::Mirror>>,
    tar: PathBuf,
    members: OnceLock<Result<HashMap<String, TarMember>, String>>,
    nouns: OnceLock<NounIndex>,
}

/// The nouns of each row's alt-text and dense captions, as the density tagger counts them
/// (lower-case, singular), built on the first noun filter over the shard.
#[derive(Debug, Default)]
pub struct NounIndex {
    ids: HashMap<String, u32>,
    rows: Vec<Vec<u32>>,
}

impl NounIndex {
    /// The rows using `noun` (its counted form), as a predicate.
    pub fn has(&self, row: usize, noun: &str) -> bool {
        self.ids.get(noun).is_some_and(|id| self.rows[row].contains(id))
    }
}

/// The words of `text` the density tagger takes for concept nouns, each with the form it is
/// counted under (lower case, singular), as the density report counts them by default; `work` is
/// reused between calls.
pub fn noun_words(text: &str, work: &mut Work) -> Vec<(String, String)> {
    static OPTIONS: OnceLock<CountOptions> = OnceLock::new();
    let counter = NounCounter {
        tagger: crate::density::Tagger::embedded(),
        options: OPTIONS.get_or_init(CountOptions::default),
        t5: None,
    };
    counter.noun_words(text, work)
}

/// Image extensions looked for in the tar, in order.
pub const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "tiff"];

impl ShardRows {
    /// Rows in the shard.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the shard has no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The row of `key`.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    /// Row `row`'s error class, as the shard stats count it: the message up to its first `": "`
    /// or `" ("`, or the status where there is no message.
    pub fn class(&self, row: usize) -> String {
        match self.reason[row].as_str() {
            "" => self.status[row].clone(),
            msg => crate::shards::reason_class(msg),
        }
    }

    /// The numeric column `name`.
    pub fn number(&self, name: &str) -> Option<&[Option<f64>]> {
        self.numbers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// Reads shard `shard` of `part`: its parquet, and where present its caption and score shards.
    pub fn read(part: &Part, shard: &str) -> anyhow::Result<Self> {
        let path = part.shards_dir.join(format!("{shard}.parquet"));
        part.local(&path)?;
        let df = read_parquet(&path)?;
        let keys = strings(&df, &path, "key", true)?.into_iter().map(Option::unwrap_or_default).collect::<Vec<_>>();
        let n = keys.len();
        let or_empty = |v: Vec<Option<String>>| v.into_iter().map(Option::unwrap_or_default).collect::<Vec<_>>();
        let status = or_empty(strings(&df, &path, "status", true)?);
        let reason = or_empty(strings(&df, &path, "error_message", false)?);
        let alt = strings(&df, &path, "caption", false)?;
        let source = match df.column("url") {
            Ok(_) => or_empty(strings(&df, &path, "url", false)?),
            Err(_) => or_empty(strings(&df, &path, "source", false)?),
        };
        let (w, h) = (number(&df, "width"), number(&df, "height"));
        let size = (0..n)
            .map(|i| match (w.as_ref().and_then(|w| w[i]), h.as_ref().and_then(|h| h[i])) {
                (Some(w), Some(h)) => Some((w as u32, h as u32)),
                _ => None,
            })
            .collect();
        let mut numbers: Vec<(String, Vec<Option<f64>>)> = df
            .columns()
            .iter()
            .filter(|c| c.dtype().is_primitive_numeric())
            .filter_map(|c| Some((c.name().to_string(), number(&df, c.name())?)))
            .collect();
        let index: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let (mut qc, mut dense) = (vec![String::new(); n], vec![String::new(); n]);
        if let Some(dir) = &part.captions {
            let p = crate::shards::captions::captions_path(dir, shard);
            if part.local(&p)? {
                for c in read_dense(&p)? {
                    let Some(&i) = index.get(c.key.as_str()) else { continue };
                    let mut flags: Vec<&str> =
                        qc[i].split(',').chain(c.qc_flags.split(',')).filter(|f| !f.is_empty()).collect();
                    flags.sort_unstable();
                    flags.dedup();
                    qc[i] = flags.join(",");
                    if let Some(text) = c.caption.filter(|_| c.status == "success") {
                        if !dense[i].is_empty() {
                            dense[i].push('\n');
                        }
                        dense[i].push_str(&text);
                    }
                }
            }
        }
        if let Some(dir) = &part.scores {
            let p = dir.join(format!("{shard}.scores.parquet"));
            if part.local(&p)? {
                let sdf = read_parquet(&p)?;
                let skeys = strings(&sdf, &p, "key", true)?;
                for c in sdf.columns().iter().filter(|c| c.name() != "key") {
                    let Some(vals) = number(&sdf, c.name()) else { continue };
                    let mut col = vec![None; n];
                    for (k, v) in skeys.iter().zip(vals) {
                        if let Some(&i) = k.as_deref().and_then(|k| index.get(k)) {
                            col[i] = v;
                        }
                    }
                    numbers.retain(|(name, _)| name != c.name().as_str());
                    numbers.push((c.name().to_string(), col));
                }
            }
            let p = dir.join(format!("{shard}.caption_scores.parquet"));
            if part.local(&p)? {
                let cdf = read_parquet(&p)?;
                let ckeys = strings(&cdf, &p, "key", true)?;
                let mismatch = number(&cdf, "mismatch").unwrap_or_default();
                for (k, m) in ckeys.iter().zip(mismatch) {
                    if let (Some(&i), Some(m)) = (k.as_deref().and_then(|k| index.get(k)), m) {
                        if m != 0.0 && !qc[i].split(',').any(|f| f == "mismatch") {
                            let mut flags: Vec<&str> =
                                qc[i].split(',').filter(|f| !f.is_empty()).chain(["mismatch"]).collect();
                            flags.sort_unstable();
                            qc[i] = flags.join(",");
                        }
                    }
                }
            }
        }
        Ok(Self {
            keys,
            status,
            reason,
            source,
            alt,
            size,
            qc,
            dense,
            numbers,
            has_tar: part.has(&part.shards_dir.join(format!("{shard}.tar"))),
            mirror: part.mirror.clone(),
            tar: part.shards_dir.join(format!("{shard}.tar")),
            members: OnceLock::new(),
            nouns: OnceLock::new(),
        })
    }

    /// The shard's noun index (the tagger run over every row's captions on first use).
    pub fn nouns(&self) -> &NounIndex {
        self.nouns.get_or_init(|| {
            let mut index = NounIndex::default();
            let mut work = Work::default();
            for row in 0..self.len() {
                let mut ids = Vec::new();
                for text in [self.alt[row].as_deref().unwrap_or(""), self.dense[row].as_str()] {
                    for (_, key) in noun_words(text, &mut work) {
                        let next = index.ids.len() as u32;
                        let id = *index.ids.entry(key).or_insert(next);
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                index.rows.push(ids);
            }
            index
        })
    }

    fn members(&self) -> Result<&HashMap<String, TarMember>, String> {
        self.members
            .get_or_init(|| {
                if let Some(m) = &self.mirror {
                    m.fetch(&self.tar).map_err(|e| format!("{e:#}"))?;
                }
                let list = index_tar(&self.tar).map_err(|e| format!("{}: cannot be read: {e}", self.tar.display()))?;
                Ok(list.into_iter().map(|m| (m.name.clone(), m)).collect())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The extension of row `row`'s image in the shard tar, if it has one there.
    pub fn image_ext(&self, row: usize) -> Option<&'static str> {
        let members = self.members().ok()?;
        IMAGE_EXTS.iter().copied().find(|ext| members.contains_key(&format!("{}.{ext}", self.keys[row])))
    }

    /// The image bytes of row `row` and their extension, read from the shard tar (indexed on
    /// first use); `None` when the tar has no image for it.
    pub fn image(&self, row: usize) -> Result<Option<(Vec<u8>, &'static str)>, String> {
        let members = self.members()?;
        let key = &self.keys[row];
        for ext in IMAGE_EXTS {
            if let Some(m) = members.get(&format!("{key}.{ext}")) {
                let bytes = read_member(&self.tar, m).map_err(|e| e.to_string())?;
                return Ok(Some((bytes, ext)));
            }
        }
        Ok(None)
    }
}

/// One row of a caption shard, with what the sample page shows.
#[derive(Debug, Clone, Default)]
pub struct DenseCaption {
    /// Sample key.
    pub key: String,
    /// The caption (none where captioning failed).
    pub caption: Option<String>,
    /// `success` or why not.
    pub status: String,
    /// The error, where it failed.
    pub error: String,
    /// Prompt id and text.
    pub prompt_id: String,
    /// The prompt.
    pub prompt: String,
    /// Model name.
    pub model: String,
    /// Backend (`candle`, `openai`).
    pub backend: String,
    /// QC flags, comma-separated.
    pub qc_flags: String,
    /// Which caption of the prompt (0-based).
    pub caption_index: i64,
}

impl DenseCaption {
    /// Its source name, as the score stage's caption scores call it: `dense:{prompt_id}:{index}`.
    pub fn source(&self) -> String {
        format!("dense:{}:{}", self.prompt_id, self.caption_index)
    }
}

/// Every row of a caption shard (`{shard}.captions.parquet`), in file order.
pub fn read_dense(path: &Path) -> anyhow::Result<Vec<DenseCaption>> {
    let df = read_parquet(path)?;
    let text = |name: &str, required: bool| strings(&df, path, name, required);
    let (key, caption, status, error) =
        (text("key", true)?, text("caption", true)?, text("status", true)?, text("error", false)?);
    let (prompt_id, prompt, model, backend) =
        (text("prompt_id", false)?, text("prompt", false)?, text("model", false)?, text("backend", false)?);
    let qc = text("qc_flags", false)?;
    let index = number(&df, "caption_index").unwrap_or_else(|| vec![None; df.height()]);
    let s = |v: &[Option<String>], i: usize| v[i].clone().unwrap_or_default();
    Ok((0..df.height())
        .map(|i| DenseCaption {
            key: s(&key, i),
            caption: caption[i].clone(),
            status: s(&status, i),
            error: s(&error, i),
            prompt_id: s(&prompt_id, i),
            prompt: s(&prompt, i),
            model: s(&model, i),
            backend: s(&backend, i),
            qc_flags: s(&qc, i),
            caption_index: index[i].unwrap_or(0.0) as i64,
        })
        .collect())
}

/// The image–text similarities of `key` in a caption score shard (`{shard}.caption_scores.parquet`):
/// (caption source, similarity, mismatch).
pub fn caption_scores(path: &Path, key: &str) -> anyhow::Result<Vec<(String, f64, bool)>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let df = read_parquet(path)?;
    let (keys, sources) = (strings(&df, path, "key", true)?, strings(&df, path, "source", true)?);
    let sim = number(&df, "similarity")
        .ok_or_else(|| anyhow::anyhow!("{}: no numeric `similarity` column", path.display()))?;
    let mismatch = number(&df, "mismatch").unwrap_or_else(|| vec![None; df.height()]);
    Ok((0..df.height())
        .filter(|&i| keys[i].as_deref() == Some(key))
        .filter_map(|i| Some((sources[i].clone()?, sim[i]?, mismatch[i].unwrap_or(0.0) != 0.0)))
        .collect())
}

/// Reads a whole parquet file, naming it in the error.
pub fn read_parquet(path: &Path) -> anyhow::Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: cannot be read: {e}", path.display()))?;
    ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", path.display()))
}

/// A string column (all `None` when absent and not required).
pub fn strings(df: &DataFrame, path: &Path, name: &str, required: bool) -> anyhow::Result<Vec<Option<String>>> {
    let Ok(c) = df.column(name) else {
        if required {
            anyhow::bail!("{}: no `{name}` column", path.display());
        }
        return Ok(vec![None; df.height()]);
    };
    let c: Column =
        c.cast(&DataType::String).map_err(|e| anyhow::anyhow!("{}: `{name}` column: {e}", path.display()))?;
    let s = c.str().map_err(|e| anyhow::anyhow!("{}: `{name}` column: expected strings: {e}", path.display()))?;
    Ok((0..s.len()).map(|i| s.get(i).map(str::to_string)).collect())
}

/// A numeric column as f64, `None` when absent or not numeric.
pub fn number(df: &DataFrame, name: &str) -> Option<Vec<Option<f64>>> {
    let c = df.column(name).ok()?;
    if !(c.dtype().is_primitive_numeric() || c.dtype() == &DataType::Boolean) {
        return None;
    }
    let c = c.cast(&DataType::Float64).ok()?;
    let c = c.f64().ok()?;
    Some((0..c.len()).map(|i| c.get(i)).collect())
}
