//! Image files on disk: hashing, the decode check and pixel limits applied before a file
//! enters a project, and the sweep of temp files a killed writer left in `images/`.

use std::io::Read as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, StoreError, io_err};

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            write!(s, "{b:02x}").ok();
            s
        })
}

/// SHA-256 of a file, streamed.
pub fn sha256_of_file(path: &Path) -> Result<String, StoreError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Removes `.partial-*` temp files that a killed writer left behind (best effort).
pub(super) fn remove_partial_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_partial_files(&path);
        } else if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            std::fs::remove_file(&path).ok();
        }
    }
}

/// Prefix of temp files written by [`crate::fsutil::write_atomic`].
pub const PARTIAL_PREFIX: &str = crate::fsutil::TEMP_PREFIX;

/// Checks an image file's header against the pixel limits, then decodes it fully (so truncated
/// or corrupt files are refused before they enter a project). Returns (width, height).
pub fn check_image_bytes(path: &Path, bytes: &[u8]) -> Result<(u32, u32), StoreError> {
    let bad = |reason: String| StoreError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad(
            "not a recognised image format (expected JPEG or PNG)".into()
        ));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("unreadable header: {e}")))?;
    check_dimensions(width, height).map_err(bad)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    reader.limits(decode_limits());
    reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    Ok((width, height))
}

/// Refuses absurd dimensions (decompression bombs) before any pixel is decoded.
pub fn check_dimensions(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image is {width}×{height}"));
    }
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(format!(
            "header claims {width}×{height} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels \
             or {MAX_IMAGE_SIDE} px a side (decompression bomb?)"
        ));
    }
    Ok(())
}

/// Decoder limits matching [`check_dimensions`].
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4);
    limits
}
