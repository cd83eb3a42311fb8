//! The loopback S3-compatible server of the object-store tests, standing alone for the benchmarks
//! (bench/store.sh): `cargo run --release --example s3_server -- BUCKET` prints its endpoint on the
//! first line, serves a fresh temporary folder with one empty bucket, and runs until killed.
//! Credentials: `pixforge-test` / `pixforge-test-secret`.

#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

fn main() {
    let bucket = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    let server = s3::S3Server::start(&bucket);
    println!("{}", server.endpoint);
    eprintln!("serving bucket {bucket} from {}", server.root.display());
    loop {
        std::thread::park();
    }
}
