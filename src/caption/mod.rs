//! Dense re-captioning (PixArt-α §2.2): every image described by a LLaVA-style vision-language model,
//! locally with candle ([`llava`]) or through an OpenAI-compatible server ([`openai`]), with the
//! paper's prompts ([`prompts`]), caption QC ([`qc`]) and one caption parquet per shard ([`stage`],
//! [`output`]), configured by [`CaptionConfig`].

pub mod bench;
pub mod config;
pub mod llava;
pub mod openai;
pub mod output;
pub mod prompts;
pub mod qc;
pub mod stage;

pub use config::{Backend, CaptionConfig};
pub use output::{summary, summary_text, CaptionRow};
pub use stage::{caption_seed, run};
