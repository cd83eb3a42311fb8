//! A llava-hf checkpoint's `config.json` (`LlavaForConditionalGeneration`: a CLIP vision tower, a
//! two-layer projector and a Llama language model), with transformers' defaults for the fields the
//! published configs leave out.

use serde::Deserialize;

/// The top level of a llava-hf `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    /// `llava` (LLaVA-1.5); other types are refused by name.
    #[serde(default)]
    pub model_type: Option<String>,
    /// The language model (required: its absent fields take transformers' defaults).
    pub text_config: TextConfig,
    /// The CLIP vision tower (required: its absent fields take transformers' defaults).
    pub vision_config: VisionConfig,
    /// The token id that stands for one image feature in `input_ids`.
    #[serde(default = "d_image_token", alias = "image_token_id")]
    pub image_token_index: u32,
    /// The projector's activation (`gelu`, `gelu_pytorch_tanh`, `quick_gelu`, `silu`).
    #[serde(default = "d_gelu")]
    pub projector_hidden_act: String,
    /// Which hidden state of the tower feeds the projector (−2: the second-to-last layer).
    #[serde(default = "d_layer")]
    pub vision_feature_layer: serde_json::Value,
    /// `default` drops the CLS feature, `full` keeps it.
    #[serde(default = "d_strategy")]
    pub vision_feature_select_strategy: String,
    /// Whether the projector's linear layers have biases.
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    /// LLaVA-1.6: the (height, width) resolutions an image is tiled at.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
}

/// The Llama part (`text_config`), with `LlamaConfig`'s defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    /// `llama` (Vicuna and Llama LLaVAs); others are refused by name.
    #[serde(default = "d_llama")]
    pub model_type: String,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_rms")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5 writes `rope_theta` here (`{"rope_theta": …, "rope_type": "default"}`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
}

/// The CLIP vision part (`vision_config`), with `CLIPVisionConfig`'s defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_v_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_v_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_v_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_v_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_v_image")]
    pub image_size: usize,
    #[serde(default = "d_v_patch")]
    pub patch_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_v_proj")]
    pub projection_dim: usize,
}

impl VisionConfig {
    /// candle's configuration of this tower with its first `layers` layers.
    pub fn clip(&self, layers: usize) -> candle_transformers::models::clip::vision_model::ClipVisionConfig {
        candle_transformers::models::clip::vision_model::ClipVisionConfig {
            embed_dim: self.hidden_size,
            activation: candle_transformers::models::clip::text_model::Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}
impl Default for VisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

fn d_image_token() -> u32 {
    32000
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_layer() -> serde_json::Value {
    serde_json::json!(-2)
}
fn d_strategy() -> String {
    "default".into()
}
fn d_true() -> bool {
    true
}
fn d_llama() -> String {
    "llama".into()
}
fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_rms() -> f64 {
    1e-6
}
fn d_positions() -> usize {
    2048
}
fn d_silu() -> String {
    "silu".into()
}
fn d_v_hidden() -> usize {
    768
}
fn d_v_inter() -> usize {
    3072
}
fn d_v_layers() -> usize {
    12
}
fn d_v_heads() -> usize {
    12
}
fn d_v_image() -> usize {
    224
}
fn d_v_patch() -> usize {
    32
}
fn d_channels() -> usize {
    3
}
fn d_quick_gelu() -> String {
    "quick_gelu".into()
}
fn d_v_proj() -> usize {
    512
}

impl LlavaConfig {
    /// Checks what this implementation supports, naming the field of `file` that it does not.
    pub fn check(&self, file: &std::path::Path) -> anyhow::Result<()> {
        let f = file.display();
        match self.model_type.as_deref() {
            None | Some("llava") | Some("llava_next") => {}
            Some(other) => anyhow::bail!(
                "{f}: model_type is \"{other}\"; the candle backend runs LLaVA-1.5 and LLaVA-1.6 checkpoints in the \
                 llava-hf layout (model_type \"llava\" or \"llava_next\"). Serve other VLMs with an OpenAI-compatible \
                 server (--backend openai)"
            ),
        }
        if self.is_next() && self.vision_feature_select_strategy != "default" {
            anyhow::bail!(
                "{f}: vision_feature_select_strategy is \"{}\"; LLaVA-1.6 tiling needs \"default\"",
                self.vision_feature_select_strategy
            );
        }
        if self.text_config.model_type != "llama" {
            anyhow::bail!(
                "{f}: text_config.model_type is \"{}\"; expected \"llama\" (Vicuna / Llama LLaVAs)",
                self.text_config.model_type
            );
        }
        if self.text_config.hidden_act != "silu" {
            anyhow::bail!("{f}: text_config.hidden_act is \"{}\"; expected \"silu\"", self.text_config.hidden_act);
        }
        if self.text_config.attention_bias {
            anyhow::bail!("{f}: text_config.attention_bias is true; expected false (Llama)");
        }
        let t = &self.text_config;
        if let Some(hd) = t.head_dim {
            if hd * t.num_attention_heads != t.hidden_size {
                anyhow::bail!(
                    "{f}: text_config.head_dim {hd} × num_attention_heads {} ≠ hidden_size {}",
                    t.num_attention_heads,
                    t.hidden_size
                );
            }
        }
        let rope_type = [&t.rope_parameters, &t.rope_scaling]
            .into_iter()
            .flatten()
            .find_map(|v| v.get("rope_type").or_else(|| v.get("type")).and_then(|r| r.as_str()))
            .unwrap_or("default");
        if rope_type != "default" {
            anyhow::bail!("{f}: text_config rope_type is \"{rope_type}\"; only \"default\" RoPE is supported");
        }
        if self.vision_config.hidden_act != "quick_gelu" {
            anyhow::bail!(
                "{f}: vision_config.hidden_act is \"{}\"; expected \"quick_gelu\" (CLIP)",
                self.vision_config.hidden_act
            );
        }
        let layer = self.feature_layer(file)?;
        if layer >= 0 || (-layer) as usize > self.vision_config.num_hidden_layers {
            anyhow::bail!(
                "{f}: vision_feature_layer is {layer}; expected −1 … −{}",
                self.vision_config.num_hidden_layers
            );
        }
        if !matches!(self.vision_feature_select_strategy.as_str(), "default" | "full") {
            anyhow::bail!(
                "{f}: vision_feature_select_strategy is \"{}\"; expected \"default\" or \"full\"",
                self.vision_feature_select_strategy
            );
        }
        if !matches!(self.projector_hidden_act.as_str(), "gelu" | "gelu_pytorch_tanh" | "quick_gelu" | "silu") {
            anyhow::bail!("{f}: projector_hidden_act \"{}\" is not supported", self.projector_hidden_act);
        }
        Ok(())
    }

    /// `vision_feature_layer` as one (negative) index.
    pub fn feature_layer(&self, file: &std::path::Path) -> anyhow::Result<i64> {
        self.vision_feature_layer.as_i64().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: vision_feature_layer is {}; expected one layer index (a list of layers is not supported)",
                file.display(),
                self.vision_feature_layer
            )
        })
    }

    /// Whether this is a LLaVA-1.6 (LLaVA-NeXT) checkpoint: any-resolution tiling and `image_newline`.
    pub fn is_next(&self) -> bool {
        self.model_type.as_deref() == Some("llava_next")
    }

    /// LLaVA-1.6's tiling resolutions (transformers' default when the config has none).
    pub fn pinpoints(&self) -> Vec<[usize; 2]> {
        self.image_grid_pinpoints
            .clone()
            .unwrap_or_else(|| vec![[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    }

    /// LLaVA-1.5's image tokens per image: one per patch, plus the CLS feature with strategy `full`.
    pub fn image_tokens(&self) -> usize {
        let side = self.vision_config.image_size / self.vision_config.patch_size;
        side * side + usize::from(self.vision_feature_select_strategy == "full")
    }

    /// The end-of-sequence token ids (`eos_token_id` may be one id or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.text_config.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|n| n.as_u64().map(|n| n as u32)).collect(),
            _ => vec![2],
        }
    }

    /// candle's Llama configuration.
    pub fn llama(&self) -> candle_transformers::models::llama::Config {
        let t = &self.text_config;
        let theta = t
            .rope_theta
            .or_else(|| t.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or(10000.0);
        candle_transformers::models::llama::Config {
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            vocab_size: t.vocab_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            num_key_value_heads: t.num_key_value_heads.unwrap_or(t.num_attention_heads),
            use_flash_attn: false,
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: theta as f32,
            bos_token_id: t.bos_token_id,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: t.max_position_embeddings,
            tie_word_embeddings: t.tie_word_embeddings,
        }
    }
}
