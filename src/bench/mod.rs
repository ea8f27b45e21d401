//! Benchmarks that run our code and the reference implementation side by side in one run and
//! print ratios (`maskstudio bench NAME`, or `cargo bench`).

pub mod coco_eval;
pub mod masks;
