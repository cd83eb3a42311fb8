//! docs/ingest.md, docs/density.md and docs/train.md list every flag with its default: they must match what the binary
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
        assert!(help.contains(flag), "{flag} is documented");
    }
}

#[test]
fn density_reference_matches_help() {
    let out = std::process::Command::new(common::bin()).args(["density", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/density.md")).unwrap();
    let block = doc.split("<!-- help -->\n```text\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    assert!(block == help, "docs/density.md is out of date: run tools/gen-cli-docs.sh");
    for flag in ["--input", "--column", "--valid-threshold", "--form", "--no-proper-nouns", "--t5-tokenizer"] {
        assert!(help.contains(flag), "{flag} is documented");
    }
}

#[test]
fn sample_reference_matches_help() {
    let out = std::process::Command::new(common::bin()).args(["sample", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/train.md")).unwrap();
    let block = doc.split("<!-- help -->\n```text\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    assert!(block == help, "docs/train.md is out of date: run tools/gen-cli-docs.sh");
    for flag in ["--pipeline", "--sampler", "--cfg", "--null", "--noise", "--seed"] {
        assert!(help.contains(flag), "{flag} is documented");
    }
}
