//! The LAION aesthetic predictors over CLIP ViT-L/14 image embeddings, as their reference code runs
//! them: the embedding is L2-normalised, then
//! - V1 (`LAION-AI/aesthetic-predictor`, `sa_0_4_vit_l_14_linear.pth`): one `Linear(768, 1)`;
//! - V2 (`christophschuhmann/improved-aesthetic-predictor`, `sac+logos+ava1-l14-linearMSE.pth`): the
//!   MLP 768→1024→128→64→16→1 with no activations (its Dropout layers are identity at inference).
//!
//! Weights load from the released PyTorch checkpoints (candle's pickle reader) or from safetensors
//! with the same keys.

use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;
use std::path::Path;

/// The keys of V2's linear layers inside its `nn.Sequential` (Dropouts between them hold no weights).
const V2_LAYERS: [&str; 5] = ["layers.0", "layers.2", "layers.4", "layers.6", "layers.7"];

/// A loaded aesthetic head: its affine layers, applied in order.
#[derive(Debug)]
pub struct AestheticHead {
    /// `v1` or `v2`.
    pub version: &'static str,
    layers: Vec<(Tensor, Tensor)>,
}

impl AestheticHead {
    /// Loads a head from a `.pth` checkpoint or a `.safetensors` file; the version is recognised by
    /// its keys (`weight`/`bias`: V1; `layers.{0,2,4,6,7}.*`: V2).
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let named: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "safetensors") {
            crate::hub::Weights::open(&[path.to_path_buf()])?.load_all(device)?.into_iter().collect()
        } else {
            candle_core::pickle::read_all(path)
                .map_err(|e| anyhow::anyhow!("{}: not a PyTorch checkpoint: {e}", path.display()))?
        };
        let w: HashMap<String, Tensor> = named
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?.to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()?;
        let pair = |prefix: &str| -> Option<(Tensor, Tensor)> {
            let key = |kind: &str| if prefix.is_empty() { kind.to_string() } else { format!("{prefix}.{kind}") };
            Some((w.get(&key("weight"))?.clone(), w.get(&key("bias"))?.clone()))
        };
        let (version, layers) = if let Some(l) = pair("").filter(|_| w.len() == 2) {
            ("v1", vec![l])
        } else if let Some(ls) = V2_LAYERS.iter().map(|p| pair(p)).collect::<Option<Vec<_>>>() {
            ("v2", ls)
        } else {
            let mut keys: Vec<&String> = w.keys().collect();
            keys.sort();
            anyhow::bail!(
                "{}: not a LAION aesthetic head: expected keys `weight`, `bias` (V1) or `layers.{{0,2,4,6,7}}.weight/bias` \
                 (V2), found {keys:?}",
                path.display()
            );
        };
        for pair in layers.windows(2) {
            let (out, inp) = (pair[0].0.dim(0)?, pair[1].0.dim(1)?);
            if out != inp {
                anyhow::bail!("{}: layer widths do not chain ({out} outputs into {inp} inputs)", path.display());
            }
        }
        Ok(Self { version, layers })
    }

    /// The embedding width the head takes (768 for ViT-L/14).
    pub fn input_dim(&self) -> usize {
        self.layers[0].0.dims()[1]
    }

    /// Scores of embeddings `[N, D]` (normalised here, as the reference does).
    pub fn score(&self, embeddings: &Tensor) -> anyhow::Result<Vec<f32>> {
        let x = embeddings.to_dtype(DType::F32)?;
        let d = x.dim(D::Minus1)?;
        if d != self.input_dim() {
            anyhow::bail!("aesthetic head {}: expected {}-wide embeddings, found {d}", self.version, self.input_dim());
        }
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let mut h = x.broadcast_div(&norm)?;
        for (w, b) in &self.layers {
            h = h.matmul(&w.t()?)?.broadcast_add(b)?;
        }
        Ok(h.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// A score head over embeddings: native (a released `.pth` / `.safetensors`) or any ONNX model with
/// one `[N, D]` input and an `[N, 1]` (or `[N]`) output, run by ONNX Runtime.
pub enum Head {
    /// Computed with candle.
    Native(AestheticHead),
    /// Run by ONNX Runtime.
    Onnx(Box<super::onnx::OnnxModel>),
}

impl Head {
    /// Loads `path`: `.onnx` through ONNX Runtime, anything else as a LAION aesthetic checkpoint.
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<Self> {
        if path.extension().is_some_and(|e| e == "onnx") {
            Ok(Head::Onnx(Box::new(super::onnx::OnnxModel::load(path, 0)?)))
        } else {
            Ok(Head::Native(AestheticHead::load(path, device)?))
        }
    }

    /// One score per row of `embeddings` `[N, D]`.
    pub fn score(&mut self, embeddings: &Tensor) -> anyhow::Result<Vec<f32>> {
        match self {
            Head::Native(h) => h.score(embeddings),
            Head::Onnx(m) => {
                let (n, d) = embeddings.dims2()?;
                let data: Vec<f32> = embeddings.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let x = ndarray::ArrayD::from_shape_vec(vec![n, d], data)?;
                let input = m.inputs().first().cloned().unwrap_or_default();
                let output = m.outputs().first().cloned().unwrap_or_default();
                let out = m.run(&[(input.as_str(), x.view())])?;
                let y = &out[&output];
                if y.len() != n {
                    anyhow::bail!("ONNX head output `{output}` has {} values for {n} embeddings", y.len());
                }
                Ok(y.iter().copied().collect())
            }
        }
    }
}

/// `pixforge score aesthetic`: the head's scores of each `.npy` file of embeddings (`[D]` or
/// `[N, D]`), by file, on the CPU.
pub fn score_npy_files(head: &Path, files: &[std::path::PathBuf]) -> anyhow::Result<serde_json::Value> {
    let mut h = Head::load(head, &Device::Cpu).map_err(|e| anyhow::anyhow!("--head {}: {e:#}", head.display()))?;
    let mut out = serde_json::Map::new();
    for f in files {
        let t = Tensor::read_npy(f).map_err(|e| anyhow::anyhow!("{}: not a .npy array: {e}", f.display()))?;
        let t = if t.rank() == 1 { t.unsqueeze(0)? } else { t };
        let scores = h.score(&t).map_err(|e| anyhow::anyhow!("{}: {e:#}", f.display()))?;
        out.insert(f.display().to_string(), serde_json::json!(scores));
    }
    Ok(serde_json::Value::Object(out))
}
