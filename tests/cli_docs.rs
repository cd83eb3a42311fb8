//! docs/ingest.md, density.md, train.md and latents.md list every flag with its default: they must match what the binary
//! prints (regenerate with tools/gen-cli-docs.sh).

mod common;

#[test]
fn ingest_reference_matches_help() {
    let out = std::process::Command::new(common::bin()).args(["ingest", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ingest.md")).unwrap();
    let block = doc.split("```text\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    assert!(block == help, "docs/ingest.md is out of date: run tools/gen-cli-docs.sh");
    for flag in ["--url-col", "--image-size", "--resize-mode", "--max-image-pixels", "--dedup", "--retries", "--worker"]
    {
        assert!(names_flag(&help, flag), "{flag} is documented");
    }
}

/// Whether a `--help` text lists `flag` by its full name (`--min` is not found in `--min-masks`).
fn names_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let next = help[i + flag.len()..].chars().next();
        let before = help[..i].chars().next_back();
        !matches!(next, Some(c) if c.is_alphanumeric() || c == '-' || c == '_') && before != Some('-')
    })
}

/// `pixforge ARGS --help`.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(common::bin()).args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The `--help` blocks of a page, below its `<!-- help -->` line, in order.
fn help_blocks(page: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
    let tail = doc.split("<!-- help -->\n").nth(1).unwrap_or_else(|| panic!("{page}: no <!-- help --> line"));
    tail.split("```text\n").skip(1).map(|b| b.split("```").next().unwrap().to_string()).collect()
}

/// A guide page, the commands whose `--help` it shows, and flags it must mention.
type Page<'a> = (&'a str, &'a [&'a [&'a str]], &'a [&'a str]);

/// Each page documents its commands' flags exactly as the binary prints them.
#[test]
fn guide_pages_match_help() {
    let pages: [Page; 7] = [
        ("docs/pipelines.md", &[&["run"], &["demo"]], &["--out", "--worker", "--no-progress"]),
        (
            "docs/caption.md",
            &[&["caption"]],
            &[
                "--backend",
                "--endpoint",
                "--prompt",
                "--captions-per-image",
                "--qc-retries",
                "--concurrency",
                "--worker",
            ],
        ),
        (
            "docs/density.md",
            &[&["density"]],
            &["--input", "--column", "--valid-threshold", "--form", "--no-proper-nouns", "--t5-tokenizer"],
        ),
        (
            "docs/train.md",
            &[&["sample"], &["train"]],
            &["--pipeline", "--sampler", "--cfg", "--null", "--noise", "--seed", "--cleaning", "--config", "--resume"],
        ),
        (
            "docs/score.md",
            &[
                &["score", "clip"],
                &["score", "laion-emb"],
                &["score", "aesthetic"],
                &["filter"],
                &["dedup"],
                &["balance"],
            ],
            &[
                "--tower",
                "--head",
                "--mean",
                "--worker",
                "--min",
                "--top",
                "--threshold",
                "--prefer",
                "--cap",
                "--key-col",
            ],
        ),
        (
            "docs/browse.md",
            &[&["browse"], &["status"]],
            &["--host", "--port", "--captions", "--scores", "--static", "--limit", "--sort", "--top", "--examples"],
        ),
        (
            "docs/latents.md",
            &[&["cache", "t5"], &["cache", "vae"], &["export", "pixart-official"]],
            &["--model", "--max-tokens", "--dtype", "--resolution", "--multiscale", "--worker", "--overwrite"],
        ),
    ];
    for (page, commands, flags) in pages {
        let helps: Vec<String> = commands.iter().map(|c| help(c)).collect();
        assert!(help_blocks(page) == helps, "{page} is out of date: run tools/gen-cli-docs.sh");
        for flag in flags {
            assert!(helps.iter().any(|h| names_flag(h, flag)), "{page}: {flag} is documented");
        }
    }
}
