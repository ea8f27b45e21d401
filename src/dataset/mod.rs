//! The project store and everything about masks and dataset files.
//!
//! A project is a folder with `project.sqlite` and `images/`. Instances are kept as COCO
//! compressed RLE (byte-identical to pycocotools). Format readers produce an [`ImportSet`]
//! that [`store::Project::import`] writes in one transaction; exporters read the store.

pub mod contour;
pub mod export;
pub mod formats;
pub mod gallery;
pub mod generated;
pub mod mask;
pub mod maskops;
pub mod paths;
pub mod polygon;
pub mod rle;
pub mod schema;
pub mod stats;
pub mod store;
mod types;

pub use mask::Mask;
pub use rle::Rle;
pub use types::*;
