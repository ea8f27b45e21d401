//! Training: recipe ([`config`]), project data ([`data`]), progress events ([`observer`]) and the
//! loop that writes run folders ([`trainer`]).

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod loader;
pub mod observer;
pub mod sampler;
pub mod trainer;

pub use augment::AugmentConfig;
pub use config::{Preset, TrainConfig};
pub use observer::{ChannelObserver, NullObserver, PrintObserver, TrainEvent, TrainObserver};
pub use trainer::{RunSummary, train};
