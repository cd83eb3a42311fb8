//! `pixforge filter`: a selection of sample keys from score columns, DataComp style — thresholds
//! (`--min COL=V`, `--max COL=V`) then top fractions (`--top COL=F`: the best F of what is left, by
//! that column) — written as a parquet of the kept keys with their scores. Images are not touched;
//! the trainer takes the selection (`data.selection`).

use polars::prelude::{Column, DataFrame, DataType, ParquetReader, SerReader};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Keep `column ≥ value`.
    Min(String, f64),
    /// Keep `column ≤ value`.
    Max(String, f64),
    /// Keep the highest `fraction` of the samples left, by `column`.
    Top(String, f64),
}

impl Rule {
    /// Parses `COL=VALUE` for the rule kind `kind` (`min`, `max`, `top`), naming the flag on error.
    pub fn parse(kind: &str, text: &str) -> anyhow::Result<Self> {
        let (col, v) =
            text.split_once('=').ok_or_else(|| anyhow::anyhow!("--{kind} {text:?}: expected COLUMN=VALUE"))?;
        let v: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("--{kind} {text:?}: {v:?} is not a number"))?;
        let col = col.trim().to_string();
        Ok(match kind {
            "min" => Rule::Min(col, v),
            "max" => Rule::Max(col, v),
            _ if (0.0..=1.0).contains(&v) => Rule::Top(col, v),
            _ => anyhow::bail!("--top {text:?}: the fraction must be in [0, 1]"),
        })
    }

    fn column(&self) -> &str {
        match self {
            Rule::Min(c, _) | Rule::Max(c, _) | Rule::Top(c, _) => c,
        }
    }
}

/// The filter stage's configuration (the `pixforge filter` flags and a pipeline's `[filter]`): the
/// rules, each `COLUMN=VALUE`, thresholds first, then top fractions in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Keep COLUMN ≥ VALUE (repeatable; applied first).
    #[arg(long, value_name = "COLUMN=VALUE")]
    pub min: Vec<String>,
    /// Keep COLUMN ≤ VALUE (repeatable; applied after --min).
    #[arg(long, value_name = "COLUMN=VALUE")]
    pub max: Vec<String>,
    /// Keep the highest FRACTION of what is left by COLUMN (repeatable; applied last, in order).
    #[arg(long, value_name = "COLUMN=FRACTION")]
    pub top: Vec<String>,
    /// Keep the samples whose caption from SOURCE agrees with the image at least this much (the
    /// image–text cosine `pixforge score clip --text-tower` measured): SOURCE is `alt` (the
    /// alt-text), `dense` (every dense caption), or one caption source `dense:PROMPT_ID:N` (repeatable;
    /// applied with --min).
    #[arg(long, value_name = "SOURCE=VALUE")]
    pub min_clip_similarity: Vec<String>,
}

/// The score column of a caption source's image–text similarity (`alt`, `dense`, `dense:PROMPT:N`).
pub fn similarity_column(source: &str) -> anyhow::Result<String> {
    Ok(match source {
        "alt" => crate::score::stage::ALT_SIMILARITY.to_string(),
        "dense" => crate::score::stage::DENSE_SIMILARITY_MIN.to_string(),
        s if s.starts_with("dense:") && s.split(':').count() == 3 => format!("{SOURCE_SIMILARITY_PREFIX}{s}"),
        s => anyhow::bail!(
            "--min-clip-similarity {s:?}: expected `alt`, `dense` or a caption source `dense:PROMPT_ID:N` (as in \
             {{shard}}.caption_scores.parquet's `source` column)"
        ),
    })
}

/// The prefix of the columns holding each caption source's similarity, read from
/// `{shard}.caption_scores.parquet` (`clip_sim:dense:paper:0`).
pub const SOURCE_SIMILARITY_PREFIX: &str = "clip_sim:";

impl FilterConfig {
    /// The rules in the order they apply, each checked (an error names the field and the rule).
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let mut rules = Vec::new();
        for (kind, list) in [("min", &self.min), ("max", &self.max), ("top", &self.top)] {
            for r in list {
                rules.push(Rule::parse(kind, r)?);
            }
            if kind == "min" {
                for r in &self.min_clip_similarity {
                    let (source, v) = r
                        .rsplit_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--min-clip-similarity {r:?}: expected SOURCE=VALUE"))?;
                    let v: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--min-clip-similarity {r:?}: {v:?} is not a number"))?;
                    rules.push(Rule::Min(similarity_column(source.trim())?, v));
                }
            }
        }
        Ok(rules)
    }
}

/// What the filter did.
#[derive(Debug, Clone, Serialize)]
pub struct FilterReport {
    /// Samples with scores.
    pub input: usize,
    /// Samples left after each rule, in order (`"min aesthetic=5"` → count).
    pub after: Vec<(String, usize)>,
    /// Samples kept.
    pub kept: usize,
    /// The selection file.
    pub out: PathBuf,
}

/// Scores by key, then by column (null scores left out).
pub(crate) type ScoresByKey = BTreeMap<String, HashMap<String, f64>>;

/// Every `*.scores.parquet` of `dirs`, joined by key, with each caption source's similarity from
/// the `*.caption_scores.parquet` beside them as a column `clip_sim:{source}`: the column names and
/// the scores.
pub(crate) fn read_scores(dirs: &[PathBuf]) -> anyhow::Result<(Vec<String>, ScoresByKey)> {
    let mut columns = Vec::new();
    let mut rows = ScoresByKey::new();
    for dir in dirs {
        let local =
            crate::store::local_copy(dir, |n| n.ends_with(".scores.parquet") || n.ends_with(CAPTION_SCORES_SUFFIX))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&local)
            .map_err(|e| anyhow::anyhow!("--scores {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".scores.parquet"))
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!("--scores {}: no *.scores.parquet (as `pixforge score clip` writes)", dir.display());
        }
        for f in files {
            let df = ParquetReader::new(std::fs::File::open(&f)?)
                .finish()
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            let keys =
                df.column("key").map_err(|_| anyhow::anyhow!("{}: no `key` column", f.display()))?.str()?.clone();
            let per_caption = f.with_file_name(
                f.file_name().unwrap_or_default().to_string_lossy().replace(".scores.parquet", CAPTION_SCORES_SUFFIX),
            );
            if per_caption.is_file() {
                read_caption_scores(&per_caption, &mut columns, &mut rows)?;
            }
            for c in df.columns() {
                let name = c.name().to_string();
                if name == "key" || !c.dtype().is_primitive_numeric() {
                    continue;
                }
                if !columns.contains(&name) {
                    columns.push(name.clone());
                }
                let v = c.cast(&DataType::Float64)?;
                let v = v.f64()?;
                for i in 0..df.height() {
                    if let (Some(k), Some(x)) = (keys.get(i), v.get(i)) {
                        rows.entry(k.to_string()).or_default().insert(name.clone(), x);
                    }
                }
            }
        }
    }
    Ok((columns, rows))
}

const CAPTION_SCORES_SUFFIX: &str = ".caption_scores.parquet";

/// Adds a caption score shard's similarities (`key`, `source`, `similarity`) as `clip_sim:{source}`.
fn read_caption_scores(path: &Path, columns: &mut Vec<String>, rows: &mut ScoresByKey) -> anyhow::Result<()> {
    let df = ParquetReader::new(std::fs::File::open(path)?)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let text = |name: &str| -> anyhow::Result<polars::prelude::StringChunked> {
        Ok(df.column(name).map_err(|_| anyhow::anyhow!("{}: no `{name}` column", path.display()))?.str()?.clone())
    };
    let (keys, sources) = (text("key")?, text("source")?);
    let sim = df
        .column("similarity")
        .map_err(|_| anyhow::anyhow!("{}: no `similarity` column", path.display()))?
        .cast(&DataType::Float64)?;
    let sim = sim.f64()?;
    for i in 0..df.height() {
        if let (Some(k), Some(s), Some(x)) = (keys.get(i), sources.get(i), sim.get(i)) {
            let name = format!("{SOURCE_SIMILARITY_PREFIX}{s}");
            if !columns.contains(&name) {
                columns.push(name.clone());
            }
            rows.entry(k.to_string()).or_default().insert(name, x);
        }
    }
    Ok(())
}

impl FilterReport {
    /// A few lines for the terminal: the samples left after each rule, and the selection written.
    pub fn text(&self) -> String {
        let mut s = format!("{} scored sample(s)\n", self.input);
        for (rule, left) in &self.after {
            s.push_str(&format!("  {rule:<40} {left:>10} left\n"));
        }
        s.push_str(&format!("kept {} of {}: {}\n", self.kept, self.input, self.out.display()));
        s
    }
}

/// Applies `rules` to the scores of `dirs` and writes the kept keys with their scores to `out`.
pub fn run(dirs: &[PathBuf], rules: &[Rule], out: &Path) -> anyhow::Result<FilterReport> {
    run_within(dirs, rules, None, out)
}

/// [`run`] over the scored samples whose keys are in `within` only (all of them when `None`): a
/// pipeline filters what an earlier selection kept.
pub fn run_within(
    dirs: &[PathBuf],
    rules: &[Rule],
    within: Option<&std::collections::HashSet<String>>,
    out: &Path,
) -> anyhow::Result<FilterReport> {
    let (columns, mut rows) = read_scores(dirs)?;
    if let Some(within) = within {
        rows.retain(|k, _| within.contains(k));
    }
    for r in rules {
        if !columns.iter().any(|c| c == r.column()) {
            anyhow::bail!("no score column `{}` in {:?} (columns: {columns:?})", r.column(), dirs);
        }
    }
    let mut kept: Vec<&String> = rows.keys().collect();
    let mut after = Vec::new();
    for r in rules {
        let get = |k: &String| rows[k].get(r.column()).copied();
        kept = match r {
            Rule::Min(_, v) => kept.into_iter().filter(|k| get(k).is_some_and(|x| x >= *v)).collect(),
            Rule::Max(_, v) => kept.into_iter().filter(|k| get(k).is_some_and(|x| x <= *v)).collect(),
            Rule::Top(_, f) => {
                let mut scored: Vec<(&String, f64)> = kept.iter().filter_map(|k| get(k).map(|x| (*k, x))).collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
                let n = (scored.len() as f64 * f).ceil() as usize;
                let mut top: Vec<&String> = scored.into_iter().take(n).map(|(k, _)| k).collect();
                top.sort();
                top
            }
        };
        let label = match r {
            Rule::Min(c, v) => format!("min {c}={v}"),
            Rule::Max(c, v) => format!("max {c}={v}"),
            Rule::Top(c, f) => format!("top {c}={f}"),
        };
        after.push((label, kept.len()));
    }
    let mut cols = vec![Column::new("key".into(), kept.iter().map(|k| k.as_str()).collect::<Vec<_>>())];
    for c in &columns {
        cols.push(Column::new(c.as_str().into(), kept.iter().map(|k| rows[*k].get(c).copied()).collect::<Vec<_>>()));
    }
    let mut df = DataFrame::new(kept.len(), cols)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    crate::shards::write_parquet_atomic(&mut df, out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(FilterReport { input: rows.len(), after, kept: kept.len(), out: out.to_path_buf() })
}
