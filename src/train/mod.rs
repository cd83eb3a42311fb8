//! Training PixArt-α: the model, the diffusion objective, the samplers, and the trainer (`pixforge train`).

pub mod came;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod diffusion;
pub mod distributed;
pub mod dit;
pub mod generate;
pub mod holdout;
pub mod init;
pub mod keys;
pub mod kv_compress;
pub mod lora;
pub mod lora_train;
pub mod model;
pub mod modules;
pub mod observe;
pub mod ops;
pub mod optim;
mod optim_cpu;
pub mod precision;
pub mod run;
pub mod run_folder;
pub mod sampler;
pub mod schedule;
pub mod step;
mod tape;

pub use tape::{autograd_loss_and_grads, checkpointed_loss_and_grads, loss_and_grads};
pub mod validation;
