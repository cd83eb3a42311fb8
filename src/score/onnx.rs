//! ONNX models through ONNX Runtime (`ort` with `load-dynamic`): the runtime's shared library is
//! loaded at run time, never downloaded at build time, and never looked for at a path compiled into
//! the binary. [`dylib_path`] gives the search order; a missing library is an error that says how to
//! get it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release ort 2.0.0-rc.15 is built against (the `onnxruntime` wheel's version).
pub const ORT_VERSION: &str = "1.31.1";

/// The library file name inside the wheel.
fn lib_name() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// The user's cache folder for ONNX Runtime, where `tools/install-onnxruntime.sh` puts the library:
/// `$XDG_CACHE_HOME/pixforge/onnxruntime`, else `$HOME/.cache/pixforge/onnxruntime`.
pub fn user_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("pixforge").join("onnxruntime"))
}

/// The places searched for the library, in order (after `ORT_DYLIB_PATH`): beside the running binary
/// (its own folder, then `onnxruntime/` beside its build folder, as `target/onnxruntime` is for
/// `target/release/pixforge`), then the user's cache ([`user_cache_dir`]).
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join("../onnxruntime"));
    }
    dirs.extend(user_cache_dir());
    dirs.into_iter().map(|d| d.join(lib_name())).collect()
}

/// Where ONNX Runtime is: `ORT_DYLIB_PATH` if set (a missing file there is an error), else the first
/// of [`search_path`] that exists.
pub fn dylib_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        anyhow::bail!("ORT_DYLIB_PATH={}: no such file (expected ONNX Runtime's {})", p.display(), lib_name());
    }
    let candidates = search_path();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        anyhow::anyhow!(
            "ONNX Runtime {ORT_VERSION} not found (looked for {}): run tools/install-onnxruntime.sh (it unpacks \
             {} from the onnxruntime=={ORT_VERSION} wheel into the user's cache), or set ORT_DYLIB_PATH to that \
             file (e.g. from `pip install onnxruntime=={ORT_VERSION}`: site-packages/onnxruntime/capi/)",
            looked.join(", "),
            lib_name()
        )
    })
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> anyhow::Result<&'static ort::environment::Environment> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = dylib_path().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("{}: cannot load ONNX Runtime: {e}", path.display()))?;
        builder.with_name("pixforge").build().map_err(|e| format!("{}: {e}", path.display()))
    });
    env.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// An ONNX model with f32 (or token-id) inputs and f32 outputs.
pub struct OnnxModel {
    path: PathBuf,
    session: ort::session::Session,
}

impl OnnxModel {
    /// Loads `path` on CPU with `threads` intra-op threads (0: ONNX Runtime's default).
    pub fn load(path: &Path, threads: usize) -> anyhow::Result<Self> {
        Self::load_on(path, threads, None)
    }

    /// Loads `path`, on CUDA device `cuda` when given: the CUDA execution provider is registered
    /// first and ONNX Runtime falls back to the CPU when its library has no CUDA support (the CPU
    /// wheel) — use the `onnxruntime-gpu` wheel's library for GPUs. (Not exercised here: no GPU.)
    pub fn load_on(path: &Path, threads: usize, cuda: Option<i32>) -> anyhow::Result<Self> {
        let env = environment()?;
        let err = |e: ort::Error| anyhow::anyhow!("{}: {e}", path.display());
        let mut builder = ort::session::Session::builder(env).map_err(err)?;
        if let Some(id) = cuda {
            #[cfg(feature = "cuda")]
            {
                builder = builder
                    .with_execution_providers([ort::ep::CUDA::default().with_device_id(id).build()])
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            #[cfg(not(feature = "cuda"))]
            anyhow::bail!("--device cuda:{id}: this build has no CUDA support (build with --features cuda)");
        }
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let session = builder.commit_from_file(path).map_err(err)?;
        Ok(Self { path: path.to_path_buf(), session })
    }

    /// The model's input names, in order.
    pub fn inputs(&self) -> Vec<String> {
        self.session.inputs().iter().map(|o| o.name().to_string()).collect()
    }

    /// The model's output names, in order.
    pub fn outputs(&self) -> Vec<String> {
        self.session.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    /// Runs the model on named i64 inputs (token ids, masks); returns every output as an f32 array by name.
    pub fn run_ids(
        &mut self,
        inputs: &[(&str, ndarray::ArrayViewD<'_, i64>)],
    ) -> anyhow::Result<HashMap<String, ndarray::ArrayD<f32>>> {
        self.run_typed(inputs)
    }

    /// Runs the model on named f32 inputs; returns every output as an f32 array by name.
    pub fn run(
        &mut self,
        inputs: &[(&str, ndarray::ArrayViewD<'_, f32>)],
    ) -> anyhow::Result<HashMap<String, ndarray::ArrayD<f32>>> {
        self.run_typed(inputs)
    }

    /// Runs the model on named inputs of one element type; every output as an f32 array by name.
    fn run_typed<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        inputs: &[(&str, ndarray::ArrayViewD<'_, T>)],
    ) -> anyhow::Result<HashMap<String, ndarray::ArrayD<f32>>> {
        let path = self.path.display().to_string();
        let values = inputs
            .iter()
            .map(|(name, a)| {
                let v = ort::value::TensorRef::from_array_view(a.view())
                    .map_err(|e| anyhow::anyhow!("{path}: input `{name}`: {e}"))?;
                Ok((name.to_string(), v.into_dyn()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let names = self.outputs();
        let out = self.session.run(values).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let mut res = HashMap::new();
        for name in names {
            let a = out[name.as_str()]
                .try_extract_array::<f32>()
                .map_err(|e| anyhow::anyhow!("{path}: output `{name}`: {e}"))?;
            res.insert(name, a.to_owned());
        }
        Ok(res)
    }
}
