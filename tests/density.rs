//! `pixforge density` end to end on the bundled caption sets (COCO captions, LLaVA detail answers,
//! LAION alt text), checked against counts computed independently here: nouns labelled by hand for a
//! subset, and the report's arithmetic redone from the per-caption nouns. Also the T5 token counts
//! against the Python `tokenizers` reference, input errors, and the streaming inputs.

mod common;

use pixforge::density::counts::{CountOptions, Counter, NounCounter, Work};
use pixforge::density::input::{read_batches, Selection};
use pixforge::density::Tagger;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn run_density(args: &[&str], out: &Path) -> Value {
    let o = Command::new(common::bin())
        .arg("density")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--no-progress")
        .output()
        .unwrap();
    assert!(o.status.success(), "pixforge density {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn input<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["inputs"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()
}

#[test]
fn report_on_coco_llava_and_laion() {
    let data = common::data();
    let dir = tempfile::tempdir().unwrap();
    let coco = format!("coco={}", common::caption_set("coco_val2014_captions_1000.json").display());
    let laion = format!("laion={}", data.join("laion/img2dataset_test_1000.parquet").display());
    let r = run_density(&["--input", &coco, "--input", &laion], dir.path());
    let llava_dir = tempfile::tempdir().unwrap();
    let llava_path = common::caption_set("llava_qa90_gpt4_answer.jsonl");
    let llava = run_density(
        &["--input", &format!("llava={}", llava_path.display()), "--column", "text", "--filter", "category=detail"],
        llava_dir.path(),
    );
    let (coco, laion, llava) = (input(&r, "coco"), input(&r, "laion"), input(&llava, "llava"));
    assert_eq!(coco["captions"], 1000);
    assert_eq!(laion["captions"], 1000);
    assert_eq!(llava["captions"], 30, "the 30 detail answers");
    let mean = |m: &Value| m["nouns_per_caption"]["mean"].as_f64().unwrap();
    // The paper's point: dense descriptions carry several times the nouns of alt text.
    assert!(mean(llava) > 3.0 * mean(laion), "llava {} vs laion {}", mean(llava), mean(laion));
    assert!(mean(coco) > 2.0 && mean(coco) < 6.0, "COCO captions have a few nouns each: {}", mean(coco));
    for m in [coco, laion, llava] {
        let (dn, vn) = (m["distinct_nouns"].as_u64().unwrap(), m["valid_nouns"].as_u64().unwrap());
        assert!(vn <= dn && dn <= m["total_nouns"].as_u64().unwrap());
        assert!((m["vn_dn"].as_f64().unwrap() - vn as f64 / dn as f64).abs() < 1e-12);
    }
    // The three files, with the Table 1 layout and inline charts.
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| Dataset | VN/DN | Total Noun | Average |"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| coco |") && l.ends_with("/Img |")), "{md}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3, "rank–frequency, nouns per caption, VN/DN");
    assert!(!html.contains("src=\"http") && !html.contains("<script"), "self-contained");
}

/// The hand-checked subset: nouns read by a person, not the tagger.
fn hand_checked() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/density/hand_checked.jsonl"),
    )
    .unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let nouns = v["nouns"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
            (v["caption"].as_str().unwrap().to_string(), nouns)
        })
        .collect()
}

#[test]
fn hand_checked_subset_matches_the_report() {
    let rows = hand_checked();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/density/hand_checked.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let r = run_density(&[fixture.to_str().unwrap(), "--valid-threshold", "1"], dir.path());
    let m = input(&r, "hand_checked");

    // 1. The tagger against the hand labels (multisets of lemmas per caption).
    let options = CountOptions { valid_threshold: 1, ..Default::default() };
    let nc = NounCounter { tagger: Tagger::embedded(), options: &options, t5: None };
    let mut work = Work::default();
    let (mut tp, mut predicted, mut gold) = (0usize, 0usize, 0usize);
    let mut ours: Vec<Vec<String>> = Vec::new();
    for (caption, nouns) in &rows {
        let found: Vec<String> = nc.caption_nouns(caption, &mut work).0.into_iter().map(|n| n.0).collect();
        let mut left = nouns.clone();
        for n in &found {
            if let Some(i) = left.iter().position(|x| x == n) {
                left.remove(i);
                tp += 1;
            }
        }
        predicted += found.len();
        gold += nouns.len();
        ours.push(found);
    }
    let (p, rc) = (tp as f64 / predicted as f64, tp as f64 / gold as f64);
    assert!(p >= 0.85 && rc >= 0.9, "noun precision {p:.3}, recall {rc:.3} against the hand labels");
    // The report's totals are close to the hand counts.
    let total = m["total_nouns"].as_u64().unwrap() as f64;
    assert!((total - gold as f64).abs() <= 0.1 * gold as f64, "report {total} nouns, hand count {gold}");

    // 2. The report's arithmetic, redone here from the per-caption nouns.
    let mut freq: HashMap<&str, u64> = HashMap::new();
    for n in ours.iter().flatten() {
        *freq.entry(n).or_default() += 1;
    }
    let total: usize = ours.iter().map(Vec::len).sum();
    assert_eq!(m["captions"], rows.len());
    assert_eq!(m["total_nouns"], total);
    assert_eq!(m["distinct_nouns"], freq.len());
    assert_eq!(m["valid_nouns"], freq.values().filter(|&&c| c > 1).count());
    assert!((m["nouns_per_caption"]["mean"].as_f64().unwrap() - total as f64 / rows.len() as f64).abs() < 1e-9);
    let mut lens: Vec<usize> = ours.iter().map(Vec::len).collect();
    lens.sort();
    assert_eq!(m["nouns_per_caption"]["median"], lens[lens.len().div_ceil(2) - 1]);
    assert_eq!(m["nouns_per_caption"]["max"], *lens.last().unwrap());
    let top = &m["top_nouns"][0];
    let best = freq.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).unwrap();
    assert_eq!((top[0].as_str().unwrap(), top[1].as_u64().unwrap()), (*best.0, *best.1));
}

#[test]
fn counting_choices_change_the_keys() {
    let tagger = Tagger::embedded();
    let mut work = Work::default();
    let nouns = |o: &CountOptions, text: &str, work: &mut Work| -> Vec<String> {
        NounCounter { tagger, options: o, t5: None }.caption_nouns(text, work).0.into_iter().map(|n| n.0).collect()
    };
    let text = "Two dogs and three mice near the Eiffel Tower in Paris.";
    let lemma = CountOptions::default();
    assert_eq!(nouns(&lemma, text, &mut work), ["dog", "mouse", "eiffel", "tower", "paris"]);
    let surface = CountOptions { form: pixforge::density::counts::NounForm::Surface, ..Default::default() };
    assert_eq!(nouns(&surface, text, &mut work), ["dogs", "mice", "eiffel", "tower", "paris"]);
    let cased = CountOptions { case_sensitive: true, ..Default::default() };
    assert_eq!(nouns(&cased, text, &mut work), ["dog", "mouse", "Eiffel", "Tower", "Paris"]);
    let common = CountOptions { no_proper_nouns: true, ..Default::default() };
    assert_eq!(nouns(&common, text, &mut work), ["dog", "mouse"]);
    // URLs, e-mail addresses and numbers are not concepts.
    assert_eq!(nouns(&lemma, "Photo 2 of 10 at http://example.com/cats by me@example.org", &mut work), ["photo"]);
}

#[test]
fn t5_token_counts_match_the_python_reference() {
    let t5 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5");
    let tok = tokenizers::Tokenizer::from_file(t5.join("tokenizer.json")).unwrap();
    let golden: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(t5.join("golden_counts.json")).unwrap()).unwrap();
    let options = CountOptions::default();
    let nc = NounCounter { tagger: Tagger::embedded(), options: &options, t5: Some(&tok) };
    let (mut counter, mut work) = (Counter::default(), Work::default());
    for g in &golden {
        let mut one = Counter::default();
        nc.add(g["text"].as_str().unwrap(), &mut one, &mut work).unwrap();
        assert_eq!(one.t5_tokens.as_ref().unwrap().sum, g["tokens"].as_u64().unwrap(), "{:?}", g["text"]);
        counter.merge(one);
    }
    let over = golden.iter().filter(|g| g["tokens"].as_u64().unwrap() > 120).count() as u64;
    assert!(over >= 1, "the fixture has a caption past the limit");
    assert_eq!(counter.t5_tokens.as_ref().unwrap().above(120), over);

    // Through the command: the truncated share and the fourth chart.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("captions.json");
    let texts: Vec<&Value> = golden.iter().map(|g| &g["text"]).collect();
    std::fs::write(&list, serde_json::to_string(&texts).unwrap()).unwrap();
    let r = run_density(
        &[list.to_str().unwrap(), "--t5-tokenizer", t5.join("tokenizer.json").to_str().unwrap()],
        dir.path(),
    );
    let t = &input(&r, "captions")["t5"];
    assert!((t["truncated_share"].as_f64().unwrap() - over as f64 / golden.len() as f64).abs() < 1e-12);
    assert_eq!(std::fs::read_to_string(dir.path().join("report.html")).unwrap().matches("<svg").count(), 4);
}

#[test]
fn inputs_stream_in_batches_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("alt.txt.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&txt).unwrap(), flate2::Compression::fast());
    for i in 0..2500 {
        std::io::Write::write_all(&mut gz, format!("Red Chair Number {i}\n\n").as_bytes()).unwrap();
    }
    gz.finish().unwrap();
    let mut sizes = Vec::new();
    let n = read_batches(&txt, &Selection::default(), 1000, &mut |b| {
        sizes.push(b.len());
        Ok(())
    })
    .unwrap();
    assert_eq!((n.captions, sizes), (2500, vec![1000, 1000, 500]), "blank lines skipped, batches bounded");
    let limited = Selection { limit: Some(7), ..Default::default() };
    assert_eq!(read_batches(&txt, &limited, 1000, &mut |_| Ok(())).unwrap().captions, 7);

    // A folder of WebDataset shards: the `.txt` members are the captions.
    let shards = dir.path().join("wds");
    std::fs::create_dir(&shards).unwrap();
    for (shard, names) in [("00000.tar", ["a", "b"]), ("00001.tar", ["c", "d"])] {
        let mut b = tar::Builder::new(std::fs::File::create(shards.join(shard)).unwrap());
        for n in names {
            for (ext, body) in [("txt", format!("caption {n}")), ("json", "{}".to_string())] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, format!("{n}.{ext}"), body.as_bytes()).unwrap();
            }
        }
        b.finish().unwrap();
    }
    let mut got = Vec::new();
    read_batches(&shards, &Selection::default(), 3, &mut |b| {
        got.extend(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, ["caption a", "caption b", "caption c", "caption d"]);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"caption\": \"ok\"}\n{\"title\": \"no caption\"}\n").unwrap();
    let e = read_batches(&bad, &Selection::default(), 10, &mut |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 2") && e.contains("--column"), "{e}");
    let parquet = common::data().join("laion/img2dataset_test_1000.parquet");
    let sel = Selection { column: Some("caption_text".into()), ..Default::default() };
    let e = read_batches(&parquet, &sel, 10, &mut |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("caption_text") && e.contains("TEXT"), "names the missing column and the ones there: {e}");
    let o = Command::new(common::bin()).args(["density", "nothing.csv", "--no-progress"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing.csv"));
}
