//! Training PixArt-α (work in progress): the diffusion objective and the DPM-Solver++ sampler so far.

pub mod diffusion;
pub mod init;
pub mod keys;
pub mod model;
pub mod sampler;
