//! Training PixArt-α: the model, the diffusion objective, the samplers, and the trainer (`pixforge train`).

pub mod buckets;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod diffusion;
pub mod distributed;
pub mod dit;
pub mod generate;
pub mod init;
pub mod keys;
pub mod model;
pub mod observe;
pub(crate) mod ops;
pub mod optim;
mod optim_cpu;
pub mod precision;
pub mod run;
pub mod sampler;
pub mod schedule;
pub mod step;
mod tape;
pub mod validation;

/// The device named by `--device`: `cpu` or `cuda:N` (with the `cuda` feature).
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        other => {
            let n = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("--device {other:?}: expected cpu or cuda:N"))?;
            candle_core::Device::new_cuda(n)
                .map_err(|e| anyhow::anyhow!("--device {other}: {e} (build with --features cuda for GPUs)"))
        }
    }
}

/// Keeps candle's own elementwise thread pool to one thread unless `CANDLE_NUM_THREADS` is set: the
/// heavy work (matrix products, attention, fused kernels) runs on rayon's threads, and candle's pool
/// otherwise spins next to them and slows a CPU training step by about a tenth. Call before the first
/// candle op (it takes effect when candle's pool starts).
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
