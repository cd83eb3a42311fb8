//! Model-based curation scores (issue 8, in progress): heads over CLIP image embeddings. So far the
//! LAION aesthetic predictors V1 and V2, computed natively.

pub mod aesthetic;
pub mod balance;
pub mod clip;
pub mod dedup;
pub mod filter;
pub mod onnx;
pub mod stage;
