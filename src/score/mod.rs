//! Model-based curation: CLIP image embeddings from an ONNX vision tower over the shards, score heads
//! on them (the LAION aesthetic predictors V1 and V2 natively, any ONNX head on embeddings or pixels),
//! threshold / top-fraction filters, semantic de-duplication, repeats across a whole dataset by pHash
//! and concept-balanced selection.

pub mod aesthetic;
pub mod balance;
pub mod clip;
pub mod clip_text;
pub mod dedup;
pub mod filter;
pub mod onnx;
pub mod repeats;
pub mod stage;
