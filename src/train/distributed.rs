//! Data-parallel training across processes, one per GPU, launched as torchrun launches PyTorch's
//! (the official PixArt code trains with accelerate's DDP this way): [`Place`] reads the rank, world
//! size and local rank from `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; rank 0 makes the NCCL unique id and
//! hands it to the other ranks over TCP at `MASTER_ADDR:MASTER_PORT` ([`serve_id`], [`fetch_id`]);
//! [`Reducer`] (feature `nccl`) then averages every gradient over the ranks before clipping, and
//! gathers each rank's generator states for the checkpoint that rank 0 writes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// This process's place in a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Its rank, 0 ≤ rank < world.
    pub rank: usize,
    /// How many processes train together.
    pub world: usize,
    /// Its rank on this machine: the GPU it uses (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// Whether a launcher set `WORLD_SIZE` (then the ranks talk over NCCL, even alone).
    pub launched: bool,
}

impl Place {
    /// The place the environment gives (see [`Place::from_vars`]).
    pub fn from_env() -> anyhow::Result<Place> {
        Place::from_vars(|name| std::env::var(name).ok())
    }

    /// The place from the variables `var` reads: `RANK` (default 0), `WORLD_SIZE` (default 1),
    /// `LOCAL_RANK` (default `RANK`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Place> {
        let read = |name: &str| -> anyhow::Result<Option<usize>> {
            var(name)
                .map(|v| v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v:?}: expected a whole number")))
                .transpose()
        };
        let launched = var("WORLD_SIZE").is_some();
        let (rank, world) = (read("RANK")?.unwrap_or(0), read("WORLD_SIZE")?.unwrap_or(1));
        let local_rank = read("LOCAL_RANK")?.unwrap_or(rank);
        if world == 0 || rank >= world {
            anyhow::bail!("RANK={rank} WORLD_SIZE={world}: expected 0 ≤ RANK < WORLD_SIZE");
        }
        Ok(Place { rank, world, local_rank, launched })
    }

    /// Rank 0 writes the checkpoints, the log, the loss curve and the validation grids.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The seed of this rank's generators from the run's `seed`: rank 0 keeps it, so a single-process
    /// run draws what it always drew; the others draw their own noise and posterior samples.
    pub fn seed(&self, seed: u64) -> u64 {
        seed ^ (self.rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// The rendezvous address `MASTER_ADDR:MASTER_PORT` of a launch.
pub fn master_addr() -> anyhow::Result<String> {
    let get = |name: &str| {
        std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set: a launch of several processes needs it"))
    };
    Ok(format!("{}:{}", get("MASTER_ADDR")?, get("MASTER_PORT")?))
}

/// Bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

/// Rank 0's side of the rendezvous: hands `id` to each of the `world − 1` other ranks that connect to
/// `listener` before `timeout`. Each says its rank first; a rank that is out of range or comes twice is
/// an error that names it.
pub fn serve_id(listener: &TcpListener, id: &[u8; ID_BYTES], world: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    let mut seen = vec![false; world];
    seen[0] = true;
    let mut waiting = world - 1;
    while waiting > 0 {
        let (mut peer, from) = match listener.accept() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = (0..world).filter(|&r| !seen[r]).collect();
                    anyhow::bail!("rendezvous: ranks {missing:?} did not connect within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        peer.set_nonblocking(false)?;
        peer.set_read_timeout(Some(timeout))?;
        let mut rank = [0u8; 8];
        peer.read_exact(&mut rank)?;
        let rank = u64::from_le_bytes(rank) as usize;
        if rank == 0 || rank >= world || seen[rank] {
            anyhow::bail!("rendezvous: {from} says it is rank {rank}, expected an unseen rank in 1..{world}");
        }
        seen[rank] = true;
        peer.write_all(id)?;
        waiting -= 1;
    }
    Ok(())
}

/// Another rank's side of the rendezvous: connects to rank 0 at `addr` (retrying until `timeout`, as
/// rank 0 may start later), says its `rank` and reads the id.
pub fn fetch_id(addr: &str, rank: usize, timeout: Duration) -> anyhow::Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("rendezvous: rank {rank} could not reach rank 0 at {addr} within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&(rank as u64).to_le_bytes())?;
    let mut id = [0u8; ID_BYTES];
    stream
        .read_exact(&mut id)
        .map_err(|e| anyhow::anyhow!("rendezvous: rank {rank} got no id from rank 0 at {addr}: {e}"))?;
    Ok(id)
}

#[cfg(feature = "nccl")]
pub use nccl::Reducer;

/// Without the `nccl` feature there is no reducer: a launch of several processes is refused.
#[cfg(not(feature = "nccl"))]
pub enum Reducer {}

#[cfg(not(feature = "nccl"))]
impl Reducer {
    /// Refuses: several processes need NCCL.
    pub fn connect(place: &Place, _device: &candle_core::Device) -> anyhow::Result<Option<Reducer>> {
        if place.world > 1 {
            anyhow::bail!(
                "RANK={} WORLD_SIZE={}: training across processes averages the gradients with NCCL; build with \
                 --features nccl (CUDA) or run one process",
                place.rank,
                place.world
            );
        }
        Ok(None)
    }

    /// (No reducer exists.)
    pub fn mean(&self, _t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match *self {}
    }

    /// (No reducer exists.)
    pub fn mean_all(&self, _ts: &[candle_core::Tensor]) -> candle_core::Result<Vec<candle_core::Tensor>> {
        match *self {}
    }

    /// (No reducer exists.)
    pub fn gather(&self, _values: &[u64]) -> anyhow::Result<Vec<u64>> {
        match *self {}
    }
}

#[cfg(feature = "nccl")]
mod nccl {
    use super::{fetch_id, master_addr, serve_id, Place, ID_BYTES};
    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use std::sync::Arc;
    use std::time::Duration;

    /// How long the ranks wait for each other at the rendezvous.
    const RENDEZVOUS: Duration = Duration::from_secs(600);

    /// An NCCL communicator over every rank, on this rank's GPU stream.
    pub struct Reducer {
        comm: Arc<Comm>,
        world: usize,
    }

    impl Reducer {
        /// Joins the other ranks (a launcher set `WORLD_SIZE`; `None` otherwise): rank 0 makes the id
        /// and serves it at `MASTER_ADDR:MASTER_PORT`, the others fetch it, then all make the
        /// communicator on `device`'s stream.
        pub fn connect(place: &Place, device: &Device) -> anyhow::Result<Option<Reducer>> {
            if !place.launched {
                return Ok(None);
            }
            let Device::Cuda(dev) = device else {
                anyhow::bail!(
                    "RANK={} WORLD_SIZE={}: NCCL needs a CUDA device, found {device:?}",
                    place.rank,
                    place.world
                );
            };
            let id = if place.rank == 0 {
                let id = Id::new().map_err(|e| anyhow::anyhow!("NCCL: cannot make a unique id: {e:?}"))?;
                if place.world > 1 {
                    let bytes: [u8; ID_BYTES] = id.internal().map(|c| c as u8);
                    let addr = master_addr()?;
                    let port = addr.rsplit(':').next().unwrap_or_default();
                    let listener = std::net::TcpListener::bind(format!("0.0.0.0:{port}"))
                        .map_err(|e| anyhow::anyhow!("rendezvous: rank 0 cannot listen on port {port}: {e}"))?;
                    serve_id(&listener, &bytes, place.world, RENDEZVOUS)?;
                }
                id
            } else {
                let bytes = fetch_id(&master_addr()?, place.rank, RENDEZVOUS)?;
                Id::uninit(bytes.map(|b| b as ::core::ffi::c_char))
            };
            let comm = Comm::from_rank(dev.cuda_stream(), place.rank, place.world, id)
                .map_err(|e| anyhow::anyhow!("NCCL: rank {} of {} cannot join: {e:?}", place.rank, place.world))?;
            Ok(Some(Reducer { comm: Arc::new(comm), world: place.world }))
        }

        /// The element-wise mean of `t` over every rank.
        pub fn mean(&self, t: &Tensor) -> Result<Tensor> {
            t.contiguous()?.apply_op1_no_bwd(&SumOver(self.comm.clone()))?.affine(1.0 / self.world as f64, 0.0)
        }

        /// [`Reducer::mean`] of each tensor, the transfers grouped into one NCCL call.
        pub fn mean_all(&self, ts: &[Tensor]) -> Result<Vec<Tensor>> {
            cudarc::nccl::result::group_start().map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))?;
            let sums: Result<Vec<Tensor>> =
                ts.iter().map(|t| t.contiguous()?.apply_op1_no_bwd(&SumOver(self.comm.clone()))).collect();
            cudarc::nccl::result::group_end().map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))?;
            sums?.iter().map(|s| s.affine(1.0 / self.world as f64, 0.0)).collect()
        }

        /// Every rank's `values` (the same count on each), in rank order.
        pub fn gather(&self, values: &[u64]) -> anyhow::Result<Vec<u64>> {
            let stream = self.comm.stream();
            let src = stream.clone_htod(values)?;
            let mut dst = stream.alloc_zeros::<u64>(values.len() * self.world)?;
            self.comm.all_gather(&src, &mut dst).map_err(|e| anyhow::anyhow!("NCCL all-gather: {e:?}"))?;
            Ok(stream.clone_dtoh(&dst)?)
        }
    }

    /// The sum over every rank of a contiguous tensor (a new buffer on the same stream).
    struct SumOver(Arc<Comm>);

    // SAFETY: the communicator is used from the training thread alone; candle asks ops to be Send +
    // Sync only to share them.
    unsafe impl Send for SumOver {}
    unsafe impl Sync for SumOver {}

    impl CustomOp1 for SumOver {
        fn name(&self) -> &'static str {
            "nccl-all-reduce-sum"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce: the tensor is on the CPU, expected a CUDA device")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let (start, end) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("NCCL all-reduce: expected a contiguous tensor".into()))?;
            let dev = s.device.clone();
            macro_rules! sum {
                ($t:ty) => {{
                    let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                    // SAFETY: the all-reduce writes every element.
                    let mut dst = unsafe { dev.alloc::<$t>(end - start)? };
                    self.0
                        .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                        .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
                    CudaStorage::wrap_cuda_slice(dst, dev)
                }};
            }
            let out = match s.dtype() {
                DType::F32 => sum!(f32),
                DType::F64 => sum!(f64),
                other => {
                    candle_core::bail!("NCCL all-reduce: {other:?} tensors are not reduced (the gradients are f32)")
                }
            };
            Ok((out, l.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn place_reads_torchrun_variables_and_names_bad_ones() {
        let alone = Place::from_vars(vars(&[])).unwrap();
        assert_eq!(alone, Place { rank: 0, world: 1, local_rank: 0, launched: false });
        let p = Place::from_vars(vars(&[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")])).unwrap();
        assert_eq!(p, Place { rank: 5, world: 8, local_rank: 1, launched: true });
        assert!(!p.is_main());
        assert_eq!(alone.seed(42), 42, "rank 0 keeps the run's seed");
        assert_ne!(p.seed(42), 42);
        let err = Place::from_vars(vars(&[("RANK", "8"), ("WORLD_SIZE", "8")])).unwrap_err().to_string();
        assert!(err.contains("RANK=8 WORLD_SIZE=8"), "{err}");
        let err = Place::from_vars(vars(&[("WORLD_SIZE", "two")])).unwrap_err().to_string();
        assert!(err.contains("WORLD_SIZE=\"two\""), "{err}");
    }

    #[test]
    fn every_rank_fetches_rank_zeros_id_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let id: [u8; ID_BYTES] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        let fetchers: Vec<_> = (1..4)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || fetch_id(&addr, rank, Duration::from_secs(20)).unwrap())
            })
            .collect();
        serve_id(&listener, &id, 4, Duration::from_secs(20)).unwrap();
        for f in fetchers {
            assert_eq!(f.join().unwrap(), id);
        }
    }

    #[test]
    fn rendezvous_names_missing_and_duplicate_ranks() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve_id(&listener, &[0; ID_BYTES], 3, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("ranks [1, 2] did not connect"), "{err}");

        let addr = listener.local_addr().unwrap().to_string();
        let twice: Vec<_> = (0..2)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || fetch_id(&addr, 1, Duration::from_secs(5)))
            })
            .collect();
        let err = serve_id(&listener, &[0; ID_BYTES], 3, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("says it is rank 1"), "{err}");
        drop(listener);
        let fetched: Vec<bool> = twice.into_iter().map(|t| t.join().unwrap().is_ok()).collect();
        assert_eq!(fetched.iter().filter(|ok| **ok).count(), 1, "one of the two got the id");
    }
}
