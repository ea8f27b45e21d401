//! Training: recipe ([`config`]), project data ([`data`]), progress events ([`observer`]),
//! optimisers and schedules ([`optim`]), run-folder state and checkpoints ([`state`]), the loop
//! that writes run folders ([`trainer`]), the loss chart ([`plot`]) and run export ([`export`]);
//! a project's runs and their typed `config.json` ([`runs`]), a run's plot series ([`history`])
//! and watch images ([`watch`]);
//! the `quality` preset's COCO Mask R-CNN start ([`init`]); augmentation ([`augment`]), batch
//! planning ([`sampler`]) and the prefetching loader ([`loader`]) supply the loop's batches.

pub mod augment;
pub mod autoconfig;
pub mod cli;
pub mod config;
mod csv;
pub mod data;
pub mod deploy;
pub mod export;
pub mod history;
pub mod init;
pub mod loader;
pub mod observer;
pub mod optim;
pub mod plot;
pub mod preview;
pub mod runs;
pub mod sampler;
pub mod state;
pub mod torchrun;
pub mod trainer;
pub mod watch;

pub use augment::AugmentConfig;
pub use config::{Preset, TrainConfig};
pub use observer::{ChannelObserver, NullObserver, PrintObserver, TrainEvent, TrainObserver};
pub use trainer::{RunSummary, TrainControl, resume, train, train_with};
