//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data` beside the checkout, or `None` (the caller prints a skip message).
pub fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: {dir:?} is missing (CI always has it; a bare clone does not)");
        None
    }
}

/// Writes a small RGB PNG with a gradient so every file has distinct content.
pub fn write_png(path: &std::path::Path, width: u32, height: u32, seed: u8) {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x as u8).wrapping_add(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}
pub mod oi_server;
