//! pixforge: raw image collections to a PixArt-α training set.
//!
//! Stages read and write shards ([`shards`]); [`ingest`] turns LAION metadata, SA-1B tars, image
//! folders and WebDataset shards into curated WebDataset shards.

pub mod bench;
pub mod browse;
pub mod caption;
pub mod config;
pub mod demo;
pub mod density;
pub mod device;
pub mod hub;
pub mod image;
pub mod ingest;
pub mod latents;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod proxy;
pub mod rng;
pub mod score;
pub mod shards;
pub mod store;
pub mod tensorboard;
pub mod text;
pub mod train;
