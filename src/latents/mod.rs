//! The frozen encoders PixArt-α trains and samples with: the T5 v1.1 text encoder ([`t5`]) and the
//! SD VAE ([`vae`]), loaded from Hugging Face / diffusers folders; PixArt-α's caption cleaning
//! ([`clean`]); and the per-shard feature caches built with them ([`cache`]).

pub mod buckets;
pub mod cache;
pub mod clean;
pub mod export;
pub mod t5;
pub mod t5_packed;
pub mod vae;
pub mod vae_encoder;
