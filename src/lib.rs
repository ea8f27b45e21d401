//! Mask Studio: pick Open Images classes, review and fix instance masks, train a Mask R-CNN,
//! predict — one native app. See ARCHITECTURE.md for the module map and dependency direction
//! (`gui` → workers → `dataset` → `model` → tch).

pub mod alloc;
pub mod bench;
pub mod cancel;
pub mod cli;
pub mod dataset;
pub mod eval;
#[doc(hidden)]
pub mod fault;
pub mod fsutil;
pub mod gui;
pub mod host;
pub mod infer;
pub mod model;
pub mod openimages;
pub mod profile;
pub mod rng;
pub mod sample_project;
pub mod train;
pub mod zip;
