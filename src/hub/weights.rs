//! Safetensors weights checked as they are taken: each tensor a model asks for must be stored, with
//! the shape asked for and a floating-point dtype, or the load fails naming the file, the tensor, what
//! was expected and what was found. A truncated or damaged file is refused when it is opened, named.

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Shape, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The weight files of one model, memory-mapped, with the file each tensor is stored in.
pub struct Weights {
    files: Vec<PathBuf>,
    maps: Vec<MmapedSafetensors>,
    at: HashMap<String, usize>,
}

/// Whether a stored dtype can hold weights (integer and boolean tensors cannot).
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// The refusal of tensor `name` of `source` stored as `found`, which cannot hold weights.
pub fn not_float(source: &str, name: &str, found: impl std::fmt::Debug) -> String {
    format!("{source}: tensor `{name}` is stored as {found:?}, expected a floating-point dtype (F32, F16 or BF16)")
}

fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

impl Weights {
    /// Opens `files` (one model's safetensors, single or sharded), refusing one that cannot be read
    /// or whose header or data is incomplete, by name.
    pub fn open(files: &[PathBuf]) -> anyhow::Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut at = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            if !file.is_file() {
                anyhow::bail!("{}: weight file not found", file.display());
            }
            // SAFETY: the files are memory-mapped read-only and not modified while the model loads.
            let map = unsafe { MmapedSafetensors::new(file) }
                .map_err(|e| anyhow::anyhow!("{}: not a complete safetensors file: {e}", file.display()))?;
            for (name, _) in map.tensors() {
                at.entry(name).or_insert(i);
            }
            maps.push(map);
        }
        Ok(Self { files: files.to_vec(), maps, at })
    }

    /// The stored tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.at.keys().map(String::as_str)
    }

    /// Whether tensor `name` is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.at.contains_key(name)
    }

    /// The file tensor `name` is stored in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.at.get(name).map(|&i| self.files[i].as_path())
    }

    /// The stored shape and dtype of tensor `name`.
    pub fn info(&self, name: &str) -> Option<(Vec<usize>, DType)> {
        let view = self.maps[*self.at.get(name)?].get(name).ok()?;
        let dtype = DType::try_from(view.dtype()).ok()?;
        Some((view.shape().to_vec(), dtype))
    }

    fn named_files(&self) -> String {
        self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Checks tensor `name` without loading it: stored, a floating-point dtype, and of `shape` when
    /// one is given. Returns its stored dtype.
    pub fn check(&self, name: &str, shape: Option<&[usize]>) -> candle_core::Result<DType> {
        let Some(&i) = self.at.get(name) else {
            let expected = shape.map(|s| format!(" (expected shape {s:?})")).unwrap_or_default();
            return Err(msg(format!("{}: tensor `{name}` is missing{expected}", self.named_files())));
        };
        let file = self.files[i].display();
        let view = self.maps[i].get(name)?;
        let stored = match DType::try_from(view.dtype()) {
            Ok(d) if is_float(d) => d,
            _ => return Err(msg(not_float(&file.to_string(), name, view.dtype()))),
        };
        if let Some(s) = shape {
            if view.shape() != s {
                return Err(msg(format!("{file}: tensor `{name}` has shape {:?}, expected {s:?}", view.shape())));
            }
        }
        Ok(stored)
    }

    /// Tensor `name` as `dtype` on `device`, checked as [`Weights::check`] does.
    pub fn get(
        &self,
        name: &str,
        shape: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = self.check(name, shape)?;
        let i = self.at[name];
        let file = self.files[i].display();
        let t = self.maps[i].load(name, device).map_err(|e| msg(format!("{file}: tensor `{name}`: {e}")))?;
        if stored == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    /// Every stored tensor on `device`, each checked to hold floating-point values, by name.
    pub fn load_all(&self, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(self.at.len());
        for name in self.at.keys() {
            let dtype = self.info(name).map(|(_, d)| d).unwrap_or(DType::F32);
            let t = self.get(name, None, dtype, device).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// A `VarBuilder` over these weights whose every `get` is checked as [`Weights::get`] is.
    pub fn var_builder(self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for Weights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Weights::get(self, name, Some(s.dims()), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Weights::get(self, name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join("model.safetensors");
        let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    #[test]
    fn each_fault_names_the_file_the_tensor_and_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let ids = Tensor::zeros((2, 3), DType::I64, &dev).unwrap();
        let path = write(dir.path(), &[("a.weight", w), ("b.weight", ids)]);
        let weights = Weights::open(std::slice::from_ref(&path)).unwrap();
        let file = path.display().to_string();
        assert!(weights.get("a.weight", Some(&[2, 3]), DType::F32, &dev).is_ok());
        let e = weights.get("a.weight", Some(&[3, 2]), DType::F32, &dev).unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains("`a.weight` has shape [2, 3], expected [3, 2]"), "{e}");
        let e = weights.get("b.weight", Some(&[2, 3]), DType::F32, &dev).unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains("`b.weight` is stored as I64"), "{e}");
        let e = weights.get("c.weight", Some(&[4]), DType::F32, &dev).unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains("`c.weight` is missing (expected shape [4])"), "{e}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let e = Weights::open(std::slice::from_ref(&path)).err().unwrap().to_string();
        assert!(e.contains(&file) && e.contains("not a complete safetensors file"), "{e}");
    }
}
