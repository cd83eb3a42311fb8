//! Compressed text bombs: gzipped metadata and caption lists with one row inflating to 256 MiB cost
//! what the same files without that row cost; the row is refused (ingest) or skipped and counted
//! (density) with its file and line, and the other rows are read.

mod common;

use pixforge::bench::bombs::{text_kinds, PER_KIND};
use pixforge::shards::read_records;
use std::path::Path;
use std::process::Command;

fn pixforge(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let mut c = Command::new(common::bin());
    c.args(args);
    for p in paths {
        c.arg(p);
    }
    c.output().unwrap()
}

/// Runs every file of `dir` through the stage that reads it; returns each run's output.
fn read_all(dir: &Path, out: &Path) -> Vec<(String, std::process::Output)> {
    let mut runs = Vec::new();
    for (name, _, _) in text_kinds(1 << 20) {
        let input = dir.join(name);
        let target = out.join(name);
        let o = if name.starts_with("captions") {
            pixforge(&["density", "--no-progress", "--out"], &[&target, &input])
        } else {
            // Every row filtered before download: only the metadata is read.
            let mut args = vec!["ingest", "laion", "--no-progress", "--min-caption-chars", "100000"];
            if name.starts_with("urls") {
                args.extend(["--caption-col", ""]);
            }
            args.push("--out");
            pixforge(&args, &[&target, &input])
        };
        runs.push((name.to_string(), o));
    }
    runs
}

#[test]
fn a_gzipped_row_inflating_to_256_mib_costs_what_the_file_without_it_costs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, normal, bomb) in text_kinds(1 << 28) {
        assert!(bomb.len() < 8 << 20, "{name}: the bomb is small on disk: {} bytes", bomb.len());
        for (which, bytes) in [("normal", normal), ("bomb", bomb)] {
            std::fs::create_dir_all(dir.path().join(which)).unwrap();
            std::fs::write(dir.path().join(which).join(name), bytes).unwrap();
        }
    }
    // The children's peak only grows: the normal files first, then the bombs.
    let normal = read_all(&dir.path().join("normal"), &dir.path().join("out-normal"));
    for (name, o) in &normal {
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let normal_peak = common::children_peak_rss();
    let bombs = read_all(&dir.path().join("bomb"), &dir.path().join("out-bomb"));
    let bomb_peak = common::children_peak_rss();
    assert!(
        (bomb_peak as f64) <= 1.5 * normal_peak as f64,
        "peak RSS {} MiB with the bombs, {} MiB without",
        bomb_peak >> 20,
        normal_peak >> 20
    );

    for (name, o) in &bombs {
        let stderr = String::from_utf8_lossy(&o.stderr);
        let input = dir.path().join("bomb").join(name);
        match name.as_str() {
            "captions.json.gz" => {
                // One JSON document: refused whole, naming the item, at the cost of one item.
                assert!(!o.status.success());
                let at = PER_KIND / 2;
                assert!(stderr.contains(&format!("{}: item {at} is longer than", input.display())), "{stderr}");
            }
            "captions.txt.gz" => {
                assert!(o.status.success(), "{stderr}");
                assert!(stderr.contains("skipped 1 unreadable line"), "{stderr}");
                let report =
                    std::fs::read_to_string(dir.path().join("out-bomb").join(name).join("report.json")).unwrap();
                let report: serde_json::Value = serde_json::from_str(&report).unwrap();
                let input_report = &report["inputs"][0];
                assert_eq!(input_report["captions"], PER_KIND as u64);
                assert_eq!(input_report["unreadable"]["unreadable"], 1);
                let example = input_report["unreadable"]["unreadable_examples"][0].as_str().unwrap();
                assert!(example.starts_with(&format!("{}:{}: line", input.display(), PER_KIND / 2 + 1)), "{example}");
            }
            _ => {
                assert!(o.status.success(), "{name}: {stderr}");
                let recs = read_records(&dir.path().join("out-bomb").join(name).join("00000.parquet")).unwrap();
                assert_eq!(recs.len(), PER_KIND + 1, "{name}: every row kept");
                let refused: Vec<_> = recs
                    .iter()
                    .filter(|r| r.error_message.as_deref().unwrap_or("").contains("unreadable metadata row"))
                    .collect();
                assert_eq!(refused.len(), 1, "{name}: {recs:?}");
                let reason = refused[0].error_message.as_deref().unwrap();
                let line = PER_KIND / 2 + 1 + usize::from(name.ends_with(".csv.gz"));
                let path = input.display().to_string();
                let at_line =
                    reason.contains(&format!("{path}:{line}:")) || reason.contains(&format!("{path}: line {line} "));
                assert!(at_line, "{name}: {reason}");
                assert!(reason.contains("longer than"), "{name}: {reason}");
            }
        }
    }
}
