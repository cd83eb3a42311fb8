//! `pixforge demo` (= `pipelines/demo.toml`) end to end with every artifact checked; a rerun does no
//! work and says so; deleting one caption shard redoes only that shard and what depends on it; and
//! errors in a pipeline file name the file, the stage and the field.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn demo(out: &Path) -> String {
    let o = Command::new(common::bin()).args(["demo", "--out"]).arg(out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn line<'a>(stdout: &'a str, stage: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(&format!("{stage} "))).unwrap_or_else(|| panic!("no {stage} line: {stdout}"))
}

fn metrics<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["inputs"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()
}

#[test]
fn demo_runs_every_stage_then_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let stdout = demo(out);
    let n = pixforge::demo::IMAGES.len();
    let sets = ["photos", "sa1b"];

    // Ingest: the bundled photos as a folder and as an SA-1B tar, each its own dataset of shards,
    // one row per photo; the SA-1B shards carry the mask statistics.
    for set in sets {
        let shards: Vec<usize> = pixforge::shards::done_shards(&out.join(set).join("shards")).unwrap();
        assert_eq!(shards, [0, 1], "{set}");
    }
    use polars::prelude::SerReader;
    let f = std::fs::File::open(out.join("sa1b/shards/00000.parquet")).unwrap();
    let df = polars::prelude::ParquetReader::new(f).finish().unwrap();
    let masks = df.column("mask_count").unwrap().cast(&polars::prelude::DataType::Int64).unwrap();
    let masks = masks.i64().unwrap();
    assert!((0..df.height()).all(|i| masks.get(i) == Some(2)), "{df}");
    // Captions by the untrained tiny LLaVA, clearly labelled, one per sample of each dataset.
    assert!(
        stdout.contains(&format!("{} of {} images re-captioned", 2 * n, 2 * n)) && stdout.contains("UNTRAINED"),
        "{stdout}"
    );
    let mut caps = 0;
    for set in sets {
        for s in ["00000", "00001"] {
            caps +=
                pixforge::shards::captions::read_captions(&out.join(format!("{set}/captions/{s}.captions.parquet")))
                    .unwrap()
                    .iter()
                    .filter(|r| r.status == "success" && r.caption.is_some())
                    .count();
        }
    }
    assert_eq!(caps, 2 * n);
    // Density: the alt-text, the captions and the two bundled real sets; LLaVA's dense descriptions
    // have several times the nouns per caption of COCO's human captions (PixArt-α's Table 1 point).
    assert!(stdout.contains("| Dataset | VN/DN | Total Noun | Average |"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("density/report.json")).unwrap()).unwrap();
    assert_eq!(metrics(&r, "alt-text (photos)")["captions"], n);
    assert_eq!(metrics(&r, "captions (photos)")["captions"], n);
    assert_eq!(metrics(&r, "captions (sa1b)")["captions"], n);
    assert_eq!(metrics(&r, "COCO (human)")["captions"], 1000);
    assert_eq!(metrics(&r, "LLaVA detail")["captions"], 30);
    let nouns = |name: &str| metrics(&r, name)["nouns_per_caption"]["mean"].as_f64().unwrap();
    assert!(
        nouns("LLaVA detail") > 4.0 * nouns("COCO (human)"),
        "{} vs {}",
        nouns("LLaVA detail"),
        nouns("COCO (human)")
    );
    // Caches: one entry per sample, every sample cached; the T5 caches embed the captions.
    let m = 2 * n;
    assert!(stdout.contains(&format!("t5: {m} of {m} captions")), "{stdout}");
    assert!(stdout.contains(&format!("vae: {m} of {m} images")), "{stdout}");
    for set in sets {
        for cache in ["t5", "vae"] {
            let dir = out.join(set).join("latents").join(cache);
            let c = pixforge::shards::stage::StageReader::open_unchecked(&dir).unwrap();
            let entries: usize = c.shards.iter().map(|s| c.shard(s).unwrap().entries.len()).sum();
            assert_eq!(entries, n, "{set} {cache}");
        }
        let t5 = pixforge::shards::stage::StageReader::open_unchecked(&out.join(set).join("latents/t5")).unwrap();
        assert!(t5.fingerprint.preprocessing["caption"].as_str().unwrap().contains("caption folder"));
    }
    // The official code's layout of each dataset, its T5 features those of the re-captions: every
    // sample exported with its caption folder's caption as the prompt.
    for set in sets {
        let dir = out.join(set).join("export/pixart-official/InternData");
        let info: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("partition_filter/data_info.json")).unwrap())
                .unwrap();
        assert_eq!(info.len(), n, "{set}");
        let mut captions = std::collections::HashMap::new();
        for s in ["00000", "00001"] {
            captions.extend(
                pixforge::shards::captions::first_captions(&out.join(format!("{set}/captions/{s}.captions.parquet")))
                    .unwrap(),
            );
        }
        for row in &info {
            assert_eq!(row["prompt"].as_str(), captions.get(row["key"].as_str().unwrap()).map(String::as_str), "{row}");
        }
        assert_eq!(std::fs::read_dir(dir.join("caption_feature_wmask")).unwrap().count(), n, "{set}");
    }
    // Training on both datasets' caches: its log, curve, checkpoint and validation grid.
    assert!(stdout.contains(&format!("60 steps on {m} samples")), "{stdout}");
    let run = out.join("train");
    assert_eq!(std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count(), 60);
    for f in ["loss.svg", "checkpoints/step_0000060/state.json", "samples/step_0000060.png"] {
        assert!(run.join(f).exists(), "{f}");
    }
    // Sample images from the trained model's EMA weights.
    for f in ["samples/0000.png", "samples/0001.png", "samples/0000.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // What is shown says what it is: the toy T5 tokenizer's token counts are labelled as not T5's,
    // the validation grid and the samples carry their prompts and seeds and a note that the models
    // are made up, the summary says so too.
    let md = std::fs::read_to_string(out.join("density/report.md")).unwrap();
    assert!(md.contains("a toy tokenizer") && md.contains("not T5's"), "{md}");
    let text = |path: &Path| -> std::collections::HashMap<String, String> {
        pixforge::image::label::png_text(&std::fs::read(path).unwrap()).unwrap().into_iter().collect()
    };
    let prompts: Vec<&str> =
        pixforge::demo::CAPTIONS.lines().filter_map(|l| l.split_once('\t').map(|(_, c)| c)).take(2).collect();
    let grid = text(&run.join("samples/step_0000060.png"));
    assert_eq!(grid["Description"], prompts.join("\n"), "{grid:?}");
    assert!(grid["Comment"].contains("random tiny models: the T5 and VAE made up"), "{grid:?}");
    let sample = text(&out.join("samples/0000.png"));
    assert!(sample["parameters"].contains("Seed: "), "{sample:?}");
    assert!(sample["Comment"].starts_with("random tiny models"), "{sample:?}");
    assert!(out.join("samples/grid.png").is_file());
    assert!(stdout.contains("random-weight models") && stdout.contains("labelled"), "{stdout}");
    // The summary names every artifact.
    let artifacts = [
        "photos/shards",
        "sa1b/shards",
        "sa1b/captions",
        "density/report.html",
        "sa1b/latents/t5",
        "photos/latents/vae",
        "train/checkpoints",
        "samples",
    ];
    for a in artifacts {
        assert!(stdout.contains(&out.join(a).display().to_string()), "{a}: {stdout}");
    }

    // `pixforge browse` on the demo's folder: both datasets' samples in the grid, the density
    // report linked, and the summary says how to open it.
    assert!(stdout.contains(&format!("pixforge browse {}", out.display())), "{stdout}");
    let browse = common::Browse::start(out, |_| {});
    assert!(browse.first_line.contains(&format!("{m} rows in 4 shards of 2 shard folders")), "{}", browse.first_line);
    let (status, grid) = common::http_get(&browse.base, "/");
    assert_eq!(status, 200);
    assert_eq!(grid.matches("class=\"tile\"").count(), m, "{grid}");
    assert!(grid.contains("href=\"/files/density/report.html\""), "{grid}");
    drop(browse);

    // A rerun does no work and says so.
    let again = demo(out);
    assert!(again.contains("nothing to do: every stage's outputs are current"), "{again}");
    assert_eq!(std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count(), 60);

    // One caption shard deleted: that shard is captioned again, its T5 shard re-encoded, the density
    // report and the training run redone; the VAE cache and the other shards are left alone.
    let t5_kept = std::fs::read(out.join("photos/latents/t5/00000_stats.json")).unwrap();
    let vae_kept = std::fs::read(out.join("photos/latents/vae/00001_stats.json")).unwrap();
    std::fs::remove_file(out.join("photos/captions/00001.captions.parquet")).unwrap();
    let third = demo(out);
    let redone = "1 shard(s) done: 2 of 2 samples (1 shard(s) already current)";
    assert!(line(&third, "ingest[photos]").contains("nothing to do"), "{third}");
    assert!(line(&third, "caption[photos]").contains(redone), "{third}");
    assert!(line(&third, "caption[sa1b]").contains("nothing to do"), "{third}");
    assert!(line(&third, "density").contains("written"), "{third}");
    assert!(line(&third, "cache.t5[photos]").contains(redone), "{third}");
    assert!(line(&third, "cache.t5[sa1b]").contains("nothing to do"), "{third}");
    assert!(line(&third, "cache.vae[photos]").contains("nothing to do"), "{third}");
    assert!(line(&third, "train").contains("steps 0 → 60"), "{third}");
    assert!(out.join("photos/captions/00001.captions.parquet").is_file());
    assert_eq!(std::fs::read(out.join("photos/latents/t5/00000_stats.json")).unwrap(), t5_kept);
    assert_eq!(std::fs::read(out.join("photos/latents/vae/00001_stats.json")).unwrap(), vae_kept);
}

fn run_pipeline(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let o = Command::new(common::bin()).arg("run").arg(&file).arg("--no-progress").output().unwrap();
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn pipeline_errors_name_the_file_the_stage_and_the_field() {
    let e = run_pipeline("out = \"o\"\n[caption]\nmodel = \"nowhere\"\n");
    assert!(
        e.contains("bad.toml: stage `caption`, field `model`") && e.contains("nowhere: no such model folder"),
        "{e}"
    );
    let e = run_pipeline("out = \"o\"\n[cache.t5]\nmodel = \"m\"\nbatch = 4\n");
    assert!(e.contains("bad.toml: stage `cache.t5`, field `batch`: unknown field `batch`"), "{e}");
    let e = run_pipeline("out = \"o\"\n[caption]\nmodel = \"m\"\ntemperature = \"warm\"\n");
    assert!(e.contains("stage `caption`, field `temperature`: invalid type: string \"warm\""), "{e}");
    let e = run_pipeline("out = \"o\"\n[train]\nmax_steps = 5\n[train.optimizer]\nlearning_rate = 1\n");
    assert!(e.contains("stage `train`, field `optimizer.learning_rate`: unknown field"), "{e}");
    let e = run_pipeline("[ingest]\nsource = \"folder\"\ninputs = []\n");
    assert!(e.contains("bad.toml: field `out`: missing"), "{e}");
    let e = run_pipeline("out = \"o\"\n[ingest]\nsource = \"folder\"\ninputs = [\"photos\"]\n");
    assert!(e.contains("stage `ingest`, field `inputs`") && e.contains("photos: no such file or folder"), "{e}");
    assert!(!e.contains("inside the output folder"), "{e}");
    // Inputs inside the output folder (the demo's pipeline, run before `pixforge demo`): what writes them.
    let e = run_pipeline("out = \"o\"\n[ingest]\nsource = \"folder\"\ninputs = [\"{out}/input\"]\n");
    assert!(e.contains("(1 of them inside the output folder") && e.contains("pixforge demo --out"), "{e}");
}

/// Values that cannot run are refused before any stage runs: an empty pipeline, zero samples per
/// shard, a zero batch size.
#[test]
fn pipelines_that_cannot_run_are_refused_before_any_stage() {
    let e = run_pipeline("out = \"o\"\n");
    assert!(e.contains("bad.toml: no stage to run"), "{e}");
    let e = run_pipeline(
        "out = \"o\"\n[ingest]\nsource = \"folder\"\ninputs = []\n[ingest.curation]\nsamples_per_shard = 0\n",
    );
    assert!(e.contains("stage `ingest`, field `curation.samples_per_shard`: expected at least 1, found 0"), "{e}");
    let e = run_pipeline("out = \"o\"\n[train]\nmax_steps = 5\n[train.data]\nbatch_size = 0\n");
    assert!(e.contains("stage `train`, field `data.batch_size` must be at least 1, found 0"), "{e}");
    // Every problem at once, paths included: a missing input, T5 folder and prompts file, a zero.
    let e = run_pipeline(
        "out = \"o\"\n[ingest]\nsource = \"folder\"\ninputs = [\"nowhere\"]\n[ingest.curation]\nsamples_per_shard = 0\n\
         [cache.t5]\nmodel = \"no-t5\"\n[train]\nmax_steps = 5\n[sample]\nprompts = \"no-prompts.txt\"\nt5 = \"no-t5\"\nvae = \"no-vae\"\n",
    );
    for part in [
        "problems:",
        "field `curation.samples_per_shard`",
        "stage `ingest`, field `inputs`",
        "stage `cache.t5`, field `model`",
        "stage `sample`, field `prompts`",
        "stage `sample`, field `vae`",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
}

/// The example pipelines parse (their model folders are not here, so they are not checked).
#[test]
fn example_pipelines_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        if p.extension().is_some_and(|e| e == "toml") && text.lines().any(|l| l.starts_with("out = ")) {
            let pipeline =
                pixforge::pipeline::Pipeline::load(&p, None).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            pipeline.check().unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        }
    }
}

/// Workers of a SLURM array / indexed job each do their shards of the shard stages and leave the
/// whole-dataset stages to a final run with one worker, which finds every shard done.
#[test]
fn workers_split_the_shard_stages() {
    let dir = tempfile::tempdir().unwrap();
    pixforge::demo::write_inputs(&dir.path().join("input")).unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "out = \"run\"\n[models]\ntiny = [\"llava\", \"vae\"]\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n\
         [ingest.curation]\nsamples_per_shard = 2\n[caption]\nmodel = \"{out}/models/llava\"\nmax_tokens = 4\n\
         [density]\n[cache.vae]\nmodel = \"{out}/models\"\nresolution = 64\n",
    )
    .unwrap();
    let run = |worker: &str| {
        let o =
            Command::new(common::bin()).args(["run", "--no-progress", "--worker", worker]).arg(&file).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let w0 = run("0/2");
    assert!(line(&w0, "caption").contains("2 shard(s) done"), "{w0}");
    assert!(line(&w0, "density").contains("left for the final run (this is worker 0 of 2"), "{w0}");
    let captions = dir.path().join("run/captions");
    assert_eq!(pixforge::shards::done_shards(&captions).unwrap(), [0, 2], "worker 0 owns shards 0 and 2");
    let w1 = run("1/2");
    assert!(line(&w1, "caption").contains("1 shard(s) done"), "{w1}");
    assert_eq!(pixforge::shards::done_shards(&captions).unwrap(), [0, 1, 2]);
    let last = run("0/1");
    for stage in ["ingest", "caption", "cache.vae"] {
        assert!(line(&last, stage).contains("nothing to do"), "{stage}: {last}");
    }
    assert!(line(&last, "density").contains("written"), "{last}");
}

/// A cache section takes what its command takes as flags: `selection` (only those keys are encoded,
/// the others indexed "not in the selection"), `device` and `overwrite`; a bad device or a missing
/// selection file is an error naming the stage and the field.
#[test]
fn cache_sections_take_device_selection_and_overwrite() {
    use polars::prelude::{df, ParquetWriter};
    let dir = tempfile::tempdir().unwrap();
    pixforge::demo::write_inputs(&dir.path().join("input")).unwrap();
    let keys = ["000000000", "000000002"];
    let mut sel = df!("key" => keys).unwrap();
    ParquetWriter::new(std::fs::File::create(dir.path().join("keep.parquet")).unwrap()).finish(&mut sel).unwrap();
    let write = |extra: &str| {
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            format!(
                "out = \"run\"\n[models]\ntiny = [\"vae\"]\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n\
                 [cache.vae]\nmodel = \"{{out}}/models\"\nresolution = 64\n{extra}"
            ),
        )
        .unwrap();
        Command::new(common::bin()).args(["run", "--no-progress"]).arg(&file).output().unwrap()
    };
    let o = write("device = \"tpu:0\"\n");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("cache.vae") && e.contains("expected cpu or cuda:N"), "{e}");
    let o = write("selection = \"missing.parquet\"\n");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("`cache.vae`, field `selection`"), "{e}");
    let o = write("device = \"cpu\"\nselection = \"keep.parquet\"\noverwrite = true\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/latents/vae/00000.index.json")).unwrap()).unwrap();
    let cached: Vec<&str> =
        index.iter().filter(|e| e["status"] == "success").map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(cached, keys, "only the selected keys are encoded");
    assert!(index.iter().filter(|e| e["status"] != "success").all(|e| e["reason"] == "not in the selection"));
    assert_eq!(index.len(), 6, "every source sample is indexed");
}

/// A pipeline with the curation stages: CLIP scores of the ingested photos, a filter on a head's
/// score, de-duplication and concept balance, each choosing among what the one before kept, and a
/// VAE cache that takes the last selection; a rerun does nothing, and a changed rule redoes the
/// selections and the cache (its section says `overwrite`) after it.
#[test]
fn score_filter_dedup_and_balance_sections_run_in_a_pipeline() {
    let ort = common::onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    pixforge::demo::write_inputs(&dir.path().join("input")).unwrap();
    let golden = common::fixtures().join("golden");
    let file = dir.path().join("p.toml");
    let write = |top: &str| {
        std::fs::write(
            &file,
            format!(
                "out = \"run\"\n[models]\ntiny = [\"vae\"]\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n\
                 [ingest.curation]\nsamples_per_shard = 4\n\
                 [score.clip]\ntower = \"{}\"\nheads = [\"{}\"]\nsize = 32\ncrop = 32\nbatch_size = 4\n\
                 [filter]\ntop = [\"clip_tiny_head={top}\"]\n\
                 [dedup]\nclusters = 1\nthreshold = 0.9999\n\
                 [balance]\nsize = 3\n\
                 [cache.vae]\nmodel = \"{{out}}/models\"\nresolution = 64\noverwrite = true\n",
                golden.join("clip_tiny.onnx").display(),
                golden.join("clip_tiny_head.onnx").display()
            ),
        )
        .unwrap();
    };
    let run = || {
        let o = Command::new(common::bin())
            .env("ORT_DYLIB_PATH", &ort)
            .args(["run", "--no-progress"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    write("0.8");
    let first = run();
    assert!(line(&first, "score.clip").contains("2 shard(s) done: 6 of 6 samples"), "{first}");
    assert!(line(&first, "filter").contains("kept 5 of 6 scored samples"), "{first}");
    assert!(line(&first, "dedup").contains("kept 5 of 5"), "{first}");
    assert!(line(&first, "balance").contains("kept 3 of 5 captioned samples"), "{first}");
    let sel = |stage: &str| {
        pixforge::shards::selection::read_selection(&dir.path().join(format!("run/selection/{stage}.parquet"))).unwrap()
    };
    let (filtered, deduped, balanced) = (sel("filter"), sel("dedup"), sel("balance"));
    assert!(deduped.is_subset(&filtered) && balanced.is_subset(&deduped), "each chooses among the last one's keys");
    assert_eq!(balanced.len(), 3);
    let mut cached = Vec::new();
    for shard in ["00000", "00001"] {
        let index: Vec<serde_json::Value> = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("run/latents/vae/{shard}.index.json"))).unwrap(),
        )
        .unwrap();
        cached
            .extend(index.iter().filter(|e| e["status"] == "success").map(|e| e["key"].as_str().unwrap().to_string()));
    }
    let mut want: Vec<String> = balanced.iter().cloned().collect();
    want.sort();
    assert_eq!(cached, want, "the cache takes the last selection");

    let again = run();
    for stage in ["score.clip", "filter", "dedup", "balance", "cache.vae"] {
        assert!(line(&again, stage).contains("nothing to do"), "{stage}: {again}");
    }
    write("0.5");
    let changed = run();
    assert!(line(&changed, "score.clip").contains("nothing to do"), "{changed}");
    assert!(line(&changed, "filter").contains("kept 3 of 6"), "{changed}");
    assert!(line(&changed, "dedup").contains("kept 3 of 3"), "{changed}");
    assert!(sel("balance").is_subset(&sel("filter")), "{changed}");
    assert!(line(&changed, "cache.vae").contains("shard(s) done"), "the cache follows the new selection: {changed}");
}

/// A `[repeats]` section: repeats across the ingested shards by pHash become a selection that the
/// caches take; a rerun does nothing.
#[test]
fn a_repeats_section_keeps_repeats_out_of_the_caches() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    pixforge::demo::write_inputs(&input).unwrap();
    let mut images: Vec<_> = std::fs::read_dir(&input)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "txt"))
        .collect();
    images.sort();
    let original = images[0].clone();
    let ext = original.extension().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&original, input.join(format!("zz_copy.{ext}"))).unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "out = \"run\"\n[models]\ntiny = [\"vae\"]\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n\
         [ingest.curation]\nsamples_per_shard = 4\ndedup = \"none\"\n[repeats]\nphash_distance = 2\n\
         [cache.vae]\nmodel = \"{out}/models\"\nresolution = 64\n",
    )
    .unwrap();
    let run = || {
        let o = Command::new(common::bin()).args(["run", "--no-progress"]).arg(&file).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = run();
    let total = images.len() + 1;
    let counts = format!("kept {} of {total}: 1 exact and 0 near repeats removed", total - 1);
    assert!(line(&first, "repeats").contains(&counts), "{first}");
    let recs: Vec<pixforge::shards::Record> = (0..2)
        .flat_map(|s| pixforge::shards::read_records(&dir.path().join(format!("run/shards/{s:05}.parquet"))).unwrap())
        .collect();
    let copy_key = recs.iter().find(|r| r.source.starts_with("zz_copy")).unwrap().key.clone();
    let mut reasons = std::collections::BTreeMap::new();
    for shard in ["00000", "00001"] {
        let index: Vec<serde_json::Value> = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("run/latents/vae/{shard}.index.json"))).unwrap(),
        )
        .unwrap();
        for e in index {
            reasons.insert(e["key"].as_str().unwrap().to_string(), e["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(reasons.len(), total);
    assert!(reasons[&copy_key] != "success", "the repeat is not encoded: {reasons:?}");
    assert_eq!(reasons.values().filter(|s| *s == "success").count(), total - 1, "{reasons:?}");
    let again = run();
    assert!(line(&again, "repeats").contains("nothing to do"), "{again}");
}

/// `pixforge run --overwrite`: a run whose ingest settings changed is refused (the message says
/// how to replace it), and with `--overwrite` the shards are rewritten with the new settings.
#[test]
fn run_overwrite_replaces_what_other_settings_made() {
    let dir = tempfile::tempdir().unwrap();
    pixforge::demo::write_inputs(&dir.path().join("input")).unwrap();
    let file = dir.path().join("p.toml");
    let write = |size: u32| {
        let text = format!(
            "out = \"run\"\n[ingest]\nsource = \"folder\"\ninputs = [\"input\"]\n[ingest.curation]\nsamples_per_shard = 4\n\
             [ingest.image]\nimage_size = {size}\n"
        );
        std::fs::write(&file, text).unwrap();
    };
    let run = |extra: &[&str]| {
        Command::new(common::bin()).args(["run", "--no-progress"]).args(extra).arg(&file).output().unwrap()
    };
    write(64);
    assert!(run(&[]).status.success());
    write(32);
    let refused = run(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--overwrite"), "{err}");
    let o = run(&["--overwrite"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = pixforge::shards::read_records(&dir.path().join("run/shards/00000.parquet")).unwrap();
    assert!(!recs.is_empty() && recs.iter().all(|r| r.width.unwrap().min(r.height.unwrap()) == 32), "{recs:?}");
}
