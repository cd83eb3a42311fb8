//! Training PixArt-α (work in progress): the diffusion objective so far.

pub mod diffusion;
