//! Training PixArt-α (work in progress): the model, the diffusion objective and the samplers so far.

pub mod diffusion;
pub mod init;
pub mod keys;
pub mod model;
mod ops;
pub mod sampler;
