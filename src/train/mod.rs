//! Training PixArt-α (work in progress): the model, the diffusion objective and the samplers so far.

pub mod diffusion;
pub mod generate;
pub mod init;
pub mod keys;
pub mod model;
mod ops;
pub mod sampler;

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
