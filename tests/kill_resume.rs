//! A run killed with SIGKILL part-way and then rerun produces exactly the shards of an uninterrupted
//! run: same keys, same tar bytes, same parquet rows, and no temporary files left.

mod common;

use pixforge::shards::{done_shards, read_records, TEMP_MARKER};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SHARDS: usize = 24;

fn make_input(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let names = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg"];
    for i in 0..SHARDS * 4 {
        let n = names[i % names.len()];
        let ext = n.rsplit('.').next().unwrap();
        std::fs::copy(common::data_image(n), dir.join(format!("img_{i:03}.{ext}"))).unwrap();
        std::fs::write(dir.join(format!("img_{i:03}.txt")), format!("caption {i}")).unwrap();
    }
}

fn ingest(input: &Path, out: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["ingest", "folder"]).arg(input).arg("--out").arg(out).args([
        "--samples-per-shard",
        "4",
        "--image-size",
        "256",
        "--encode-format",
        "png",
        "--no-progress",
    ]);
    c.stdout(std::process::Stdio::null());
    c
}

fn snapshot(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn temp_files(out: &Path) -> usize {
    std::fs::read_dir(out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(TEMP_MARKER))
        .count()
}

#[test]
fn killed_run_resumes_to_identical_shards() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    make_input(&input);

    let reference = dir.path().join("reference");
    assert!(ingest(&input, &reference).status().unwrap().success());
    assert_eq!(done_shards(&reference).unwrap().len(), SHARDS);

    // Kill part-way: after at least one shard is done and before the last one.
    let out = dir.path().join("killed");
    let mut killed_mid_run = false;
    for _attempt in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = ingest(&input, &out).spawn().unwrap();
        let start = Instant::now();
        loop {
            let done = done_shards(&out).map(|d| d.len()).unwrap_or(0);
            if done >= 2 || start.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done = done_shards(&out).unwrap().len();
        if still_running && done < SHARDS {
            killed_mid_run = true;
            break;
        }
    }
    assert!(killed_mid_run, "the run finished before it could be killed; make the input larger");

    assert!(ingest(&input, &out).status().unwrap().success());
    assert_eq!(temp_files(&out), 0, "the rerun removed the killed run's temporary files");
    assert_eq!(snapshot(&out), snapshot(&reference), "tar bytes identical");
    for s in 0..SHARDS {
        let name = format!("{}.parquet", pixforge::shards::shard_name(s));
        assert_eq!(
            read_records(&out.join(&name)).unwrap(),
            read_records(&reference.join(&name)).unwrap(),
            "{name} rows"
        );
    }
}

/// A shard that cannot be written (here: a folder stands where its parquet goes) is recorded with
/// its reason and the run goes on to the other shards, as every shard stage does; the command fails
/// naming it, and a rerun writes just that shard, giving the shards of an uninterrupted run.
#[test]
fn a_shard_that_cannot_be_written_is_recorded_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    make_input(&input);
    let (clean, out) = (dir.path().join("clean"), dir.path().join("out"));
    assert!(ingest(&input, &clean).status().unwrap().success());
    std::fs::create_dir_all(out.join("00003.parquet/blocked")).unwrap();
    let o = ingest(&input, &out).stdout(std::process::Stdio::piped()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{stdout}");
    assert!(stderr.contains("1 shard(s) could not be written"), "{stderr}");
    assert!(stdout.contains("shards not written") && stdout.contains("00003: "), "{stdout}");
    let done = done_shards(&out).unwrap();
    assert_eq!(done.len(), SHARDS - 1, "every other shard is written");
    assert!(!done.contains(&3));
    std::fs::remove_dir_all(out.join("00003.parquet")).unwrap();
    let o = ingest(&input, &out).stdout(std::process::Stdio::piped()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("shards: 1 written, {} already done", SHARDS - 1)), "{stdout}");
    assert_eq!(snapshot(&out), snapshot(&clean), "the same shards as an uninterrupted run");
    assert_eq!(temp_files(&out), 0);
}
