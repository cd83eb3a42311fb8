//! Devices by name (`--device cpu|cuda:N`, a config's `device` field) and the CPU thread set-up.

/// A device as the user names it: `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceName {
    /// Parses `cpu` or `cuda:N`; anything else is an error that names the value.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "cpu" => Ok(Self::Cpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| anyhow::anyhow!("--device {other:?}: expected cpu or cuda:N")),
        }
    }

    /// The CUDA ordinal, `None` for the CPU.
    pub fn cuda_ordinal(self) -> Option<usize> {
        match self {
            Self::Cpu => None,
            Self::Cuda(n) => Some(n),
        }
    }
}

/// The candle device named by `--device`: `cpu` or `cuda:N` (with the `cuda` feature).
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    match DeviceName::parse(name)? {
        DeviceName::Cpu => Ok(candle_core::Device::Cpu),
        DeviceName::Cuda(n) => candle_core::Device::new_cuda(n)
            .map_err(|e| anyhow::anyhow!("--device {name}: {e} (build with --features cuda for GPUs)")),
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
