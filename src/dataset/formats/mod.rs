//! Dataset readers: COCO, VIA, YOLO-seg, Open Images mask downloads and mask folders.
//!
//! Every reader returns an [`ImportSet`] or a [`FormatError`] that names the file, the record
//! (line number, annotation id, region index, ...) and what is wrong. Readers never panic on
//! bad input, never decode an image just to learn its size (the header is enough), refuse
//! images whose header claims more than [`MAX_PIXELS`] pixels or a side over [`MAX_SIDE`]
//! before decoding anything, and pass every file name through
//! [`crate::dataset::paths::safe_relative_path`] / [`crate::dataset::paths::resolve_inside`].
//!
//! Polygon coordinates are pixel-corner coordinates (pixel `(x, y)` covers `[x, x+1]`).
//! Points up to [`COORD_TOLERANCE`] pixels outside the image are clamped onto its border
//! (real COCO data has many points a hair outside); points further out are rejected with
//! [`FormatError::OutOfBounds`].
//!
//! Over 800 lines only with its unit tests (663 lines of code before them).

pub mod coco;
pub mod mask_folders;
pub mod oid_masks;
pub mod via;
pub mod yolo_seg;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::{GrayImage, ImageReader};

use crate::dataset::ImportSet;
use crate::dataset::Mask;
use crate::dataset::mask::MaskError;
use crate::dataset::paths::PathError;

/// Largest image (width × height) any reader accepts.
pub const MAX_PIXELS: u64 = 100_000_000;
/// Longest image side any reader accepts.
pub const MAX_SIDE: u32 = 30_000;
/// Most bytes a single image decode may allocate.
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;
/// How far (in pixels) a polygon point may lie outside the image before it is rejected;
/// points within the tolerance are clamped onto the border.
pub const COORD_TOLERANCE: f64 = 1.0;

/// The dataset layouts that can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// COCO instances JSON (polygons, RLE).
    Coco,
    /// VGG Image Annotator 1.x project / region-data JSON (also the VIA 2 project file).
    Via,
    /// Ultralytics YOLO segmentation: `labels/**/*.txt` next to `images/**`.
    YoloSeg,
    /// Open Images download: `<class>/images/*.jpg` + `<class>/segmentations/*.png`.
    OidMasks,
    /// One folder per image: `<id>/images/<id>.png` + `<id>/masks/*.png`.
    MaskFolders,
}

impl Format {
    /// The name used on the command line and in [`ImportSet::format`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coco => "coco",
            Self::Via => "via",
            Self::YoloSeg => "yolo-seg",
            Self::OidMasks => "oid-masks",
            Self::MaskFolders => "mask-folders",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "coco" => Self::Coco,
            "via" => Self::Via,
            "yolo-seg" => Self::YoloSeg,
            "oid-masks" => Self::OidMasks,
            "mask-folders" => Self::MaskFolders,
            other => {
                return Err(format!(
                    "unknown dataset format {other:?} (expected coco, via, yolo-seg, oid-masks or mask-folders)"
                ));
            }
        })
    }
}

/// Why a dataset could not be read. Every variant names the file; record-level variants also
/// name the record (`line 3`, `annotation id 42`, `region 5 of "a.jpg"`, ...).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading a file or folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON does not parse (or does not have the expected shape).
    #[error("{}: malformed JSON at line {line}, column {column}: {message}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// 1-based line reported by serde_json.
        line: usize,
        /// 1-based column reported by serde_json.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// A record is structurally wrong (missing field, odd number of coordinates, ...).
    #[error("{}: {record}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The record.
        record: String,
        /// What is wrong.
        message: String,
    },
    /// A polygon has fewer than three points.
    #[error("{}: {record}: polygon has {points} point(s); at least 3 are needed", path.display())]
    TooFewPoints {
        /// The file.
        path: PathBuf,
        /// The record.
        record: String,
        /// How many points it has.
        points: usize,
    },
    /// A point lies more than [`COORD_TOLERANCE`] pixels outside the image.
    #[error("{}: {record}: point ({x}, {y}) lies outside the {width}x{height} image", path.display())]
    OutOfBounds {
        /// The file.
        path: PathBuf,
        /// The record.
        record: String,
        /// X in pixels.
        x: f64,
        /// Y in pixels.
        y: f64,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
    /// A category / class id that the file does not define.
    #[error("{}: {record}: unknown category {category}", path.display())]
    UnknownCategory {
        /// The file.
        path: PathBuf,
        /// The record.
        record: String,
        /// The id as written.
        category: String,
    },
    /// An image the annotations refer to does not exist.
    #[error("{}: {record}: image file {} not found", path.display(), file.display())]
    MissingImage {
        /// The annotation file.
        path: PathBuf,
        /// The record.
        record: String,
        /// Where the image was looked for.
        file: PathBuf,
    },
    /// An image (or mask) file cannot be decoded.
    #[error("{}: cannot decode image: {message}", path.display())]
    UndecodableImage {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// An image header claims absurd dimensions (zero, over [`MAX_SIDE`] or [`MAX_PIXELS`]).
    #[error(
        "{}: image claims {width}x{height} pixels (limit {MAX_SIDE} px a side, {MAX_PIXELS} pixels); refusing to decode it",
        path.display()
    )]
    BadDimensions {
        /// The image file.
        path: PathBuf,
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
    },
    /// A file name in the dataset is unsafe (absolute, `..`, escaping symlink, ...).
    #[error("{}: {record}: unsafe file name: {source}", path.display())]
    UnsafeName {
        /// The file that holds the name.
        path: PathBuf,
        /// The record.
        record: String,
        /// Why it is unsafe.
        source: PathError,
    },
    /// A mask / RLE is invalid.
    #[error("{}: {record}: {source}", path.display())]
    Mask {
        /// The file.
        path: PathBuf,
        /// The record.
        record: String,
        /// The mask error.
        source: MaskError,
    },
    /// The path is not a dataset of the requested (or any known) format.
    #[error("{}: {message}", path.display())]
    Unrecognised {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl FormatError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(
        path: &Path,
        record: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Malformed {
            path: path.to_path_buf(),
            record: record.into(),
            message: message.into(),
        }
    }

    pub(crate) fn json(path: &Path, e: &serde_json::Error) -> Self {
        Self::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }
    }
}

/// Guesses the format of a file or folder (see the module docs of each reader for layouts).
///
/// * a `.json` file with `images` + `annotations` → [`Format::Coco`]; a VIA-shaped `.json` →
///   [`Format::Via`];
/// * a folder with `via_region_data.json` (itself or in its split subfolders) or a single VIA
///   JSON → [`Format::Via`];
/// * a folder with `labels/` and `images/` → [`Format::YoloSeg`];
/// * a folder whose subfolders hold `images/` + `segmentations/` → [`Format::OidMasks`];
/// * a folder whose subfolders hold `images/` + `masks/` → [`Format::MaskFolders`];
/// * a folder holding exactly one COCO JSON → [`Format::Coco`].
pub fn detect(path: &Path) -> Result<Format, FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_file() {
        return match json_kind(path)? {
            JsonKind::Coco => Ok(Format::Coco),
            JsonKind::Via => Ok(Format::Via),
            JsonKind::Other => Err(FormatError::Unrecognised {
                path: path.to_path_buf(),
                message: "neither a COCO instances file (images + annotations) nor a VIA project"
                    .into(),
            }),
        };
    }
    if !via::region_files(path)?.is_empty() {
        return Ok(Format::Via);
    }
    if path.join("labels").is_dir() && path.join("images").is_dir() {
        return Ok(Format::YoloSeg);
    }
    let subdirs = subfolders(path)?;
    if subdirs
        .iter()
        .any(|d| d.join("images").is_dir() && d.join("segmentations").is_dir())
    {
        return Ok(Format::OidMasks);
    }
    if subdirs
        .iter()
        .any(|d| d.join("images").is_dir() && d.join("masks").is_dir())
    {
        return Ok(Format::MaskFolders);
    }
    let mut cocos = Vec::new();
    let mut vias = Vec::new();
    let mut first_err = None;
    for f in json_files(path)? {
        match json_kind(&f) {
            Ok(JsonKind::Coco) => cocos.push(f),
            Ok(JsonKind::Via) => vias.push(f),
            Ok(JsonKind::Other) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (cocos.len(), vias.len()) {
        (1, 0) => Ok(Format::Coco),
        (0, 1) => Ok(Format::Via),
        (0, 0) => Err(first_err.unwrap_or_else(|| FormatError::Unrecognised {
            path: path.to_path_buf(),
            message:
                "no COCO/VIA JSON, YOLO labels/+images/, or per-class/per-image mask folders found"
                    .into(),
        })),
        _ => Err(FormatError::Unrecognised {
            path: path.to_path_buf(),
            message: "several annotation JSON files; pick one".into(),
        }),
    }
}

/// Reads a dataset in the given format from a file or folder.
pub fn read(path: &Path, format: Format) -> Result<ImportSet, FormatError> {
    match format {
        Format::Coco => {
            let file = if path.is_dir() {
                single_coco_json(path)?
            } else {
                path.to_path_buf()
            };
            coco::read(&file)
        }
        Format::Via => via::read(path),
        Format::YoloSeg => yolo_seg::read(path),
        Format::OidMasks => oid_masks::read(path),
        Format::MaskFolders => mask_folders::read(path),
    }
}

fn single_coco_json(dir: &Path) -> Result<PathBuf, FormatError> {
    let mut found = Vec::new();
    for f in json_files(dir)? {
        if let Ok(JsonKind::Coco) = json_kind(&f) {
            found.push(f);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FormatError::Unrecognised {
            path: dir.to_path_buf(),
            message: "no COCO instances JSON in this folder".into(),
        }),
        _ => Err(FormatError::Unrecognised {
            path: dir.to_path_buf(),
            message: "several COCO JSON files; pick one".into(),
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonKind {
    Coco,
    Via,
    Other,
}

/// Top-level keys only; `IgnoredAny` skips values without allocating them.
#[derive(serde::Deserialize)]
struct TopKeys {
    images: Option<serde::de::IgnoredAny>,
    annotations: Option<serde::de::IgnoredAny>,
}

fn json_kind(path: &Path) -> Result<JsonKind, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    if let Ok(top) = serde_json::from_slice::<TopKeys>(&bytes)
        && top.images.is_some()
        && top.annotations.is_some()
    {
        return Ok(JsonKind::Coco);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| FormatError::json(path, &e))?;
    Ok(if via::looks_like_via(&value) {
        JsonKind::Via
    } else {
        JsonKind::Other
    })
}

/// Reads and parses a JSON file, mapping parse errors to [`FormatError::Json`].
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| FormatError::json(path, &e))
}

/// The entries directly inside `dir` with their file types (of the entry itself: a symlink
/// is a symlink), in directory order.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>, FormatError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))? {
        let entry = entry.map_err(|e| FormatError::io(dir, e))?;
        let ft = entry
            .file_type()
            .map_err(|e| FormatError::io(&entry.path(), e))?;
        out.push((entry.path(), ft));
    }
    Ok(out)
}

/// The paths of the entries of `dir` whose type passes `keep`, sorted.
fn entries_where(
    dir: &Path,
    keep: impl Fn(std::fs::FileType) -> bool,
) -> Result<Vec<PathBuf>, FormatError> {
    let mut out: Vec<PathBuf> = entries(dir)?
        .into_iter()
        .filter(|(_, ft)| keep(*ft))
        .map(|(path, _)| path)
        .collect();
    out.sort();
    Ok(out)
}

/// Immediate subfolders, sorted (symlinked folders are skipped).
pub(crate) fn subfolders(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    entries_where(dir, |ft| ft.is_dir())
}

/// Plain files directly inside `dir`, sorted.
pub(crate) fn files_in(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    entries_where(dir, |ft| ft.is_file() || ft.is_symlink())
}

/// All files under `dir`, recursively, sorted; symlinked folders are not followed.
pub(crate) fn files_recursive(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for (path, ft) in entries(&d)? {
            if ft.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    Ok(files_in(dir)?
        .into_iter()
        .filter(|p| has_ext(p, &["json"]))
        .collect())
}

/// Case-insensitive extension test.
pub(crate) fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Extensions of image files the readers pick up.
pub(crate) const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png"];

/// `path` relative to `root` with forward slashes, checked by `safe_relative_path`.
pub(crate) fn relative_name(root: &Path, path: &Path, record: &str) -> Result<String, FormatError> {
    let rel = path.strip_prefix(root).map_err(|_| {
        FormatError::malformed(path, record, format!("not inside {}", root.display()))
    })?;
    let name = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    safe_name(path, record, &name)
}

/// Validates a name with `safe_relative_path` and returns it normalised (forward slashes).
pub(crate) fn safe_name(file: &Path, record: &str, name: &str) -> Result<String, FormatError> {
    let rel = crate::dataset::paths::safe_relative_path(name).map_err(|source| {
        FormatError::UnsafeName {
            path: file.to_path_buf(),
            record: record.to_string(),
            source,
        }
    })?;
    Ok(rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/"))
}

/// `resolve_inside(root, name)` with errors mapped to [`FormatError::UnsafeName`].
pub(crate) fn resolve(
    file: &Path,
    record: &str,
    root: &Path,
    name: &str,
) -> Result<PathBuf, FormatError> {
    crate::dataset::paths::resolve_inside(root, name).map_err(|source| FormatError::UnsafeName {
        path: file.to_path_buf(),
        record: record.to_string(),
        source,
    })
}

/// Split name from a folder / file name: `train*` → `train`, `val*` → `validation`,
/// `test*` → `test`, anything else → `None`.
pub(crate) fn split_from_name(name: &str) -> Option<String> {
    let n = name.to_ascii_lowercase();
    if n.starts_with("train") {
        Some("train".into())
    } else if n.starts_with("val") {
        Some("validation".into())
    } else if n.starts_with("test") {
        Some("test".into())
    } else {
        None
    }
}

fn check_dimensions(path: &Path, width: u32, height: u32) -> Result<(), FormatError> {
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || u64::from(width) * u64::from(height) > MAX_PIXELS
    {
        return Err(FormatError::BadDimensions {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    Ok(())
}

/// Width and height from the image header (nothing is decoded), refusing absurd sizes.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32), FormatError> {
    let reader = ImageReader::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| FormatError::io(path, e))?;
    if reader.format().is_none() {
        return Err(FormatError::UndecodableImage {
            path: path.to_path_buf(),
            message: "unknown image format".into(),
        });
    }
    // The header read allocates nothing sized by the claimed dimensions; the caller's size
    // check below is the real guard.
    reader.no_limits();
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| FormatError::UndecodableImage {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    check_dimensions(path, w, h)?;
    Ok((w, h))
}

/// Decodes a mask image with decoder limits; any non-zero pixel (of its luma) is foreground.
pub fn decode_mask(path: &Path, record: &str) -> Result<Mask, FormatError> {
    let (w, h) = image_dimensions(path)?;
    let mut reader = ImageReader::open(path)
        .map_err(|e| FormatError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| FormatError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| FormatError::UndecodableImage {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let gray: GrayImage = img.into_luma8();
    if gray.width() != w || gray.height() != h {
        return Err(FormatError::UndecodableImage {
            path: path.to_path_buf(),
            message: "decoded size differs from header".into(),
        });
    }
    let data = gray
        .into_raw()
        .into_iter()
        .map(|v| u8::from(v != 0))
        .collect();
    Mask::from_vec(w, h, data).map_err(|source| FormatError::Mask {
        path: path.to_path_buf(),
        record: record.to_string(),
        source,
    })
}

/// Validates a flat `[x1, y1, ...]` polygon in pixels for a `width`×`height` image: even
/// length, at least 3 points, finite, within [`COORD_TOLERANCE`] of the image (clamped).
pub(crate) fn check_polygon(
    path: &Path,
    record: &str,
    coords: &[f64],
    width: u32,
    height: u32,
) -> Result<Vec<f64>, FormatError> {
    if !coords.len().is_multiple_of(2) {
        return Err(FormatError::malformed(
            path,
            record,
            format!(
                "polygon has an odd number ({}) of coordinates",
                coords.len()
            ),
        ));
    }
    if coords.len() < 6 {
        return Err(FormatError::TooFewPoints {
            path: path.to_path_buf(),
            record: record.to_string(),
            points: coords.len() / 2,
        });
    }
    let (w, h) = (f64::from(width), f64::from(height));
    let mut out = Vec::with_capacity(coords.len());
    for p in coords.chunks_exact(2) {
        let (x, y) = (p[0], p[1]);
        if !x.is_finite() || !y.is_finite() {
            return Err(FormatError::malformed(
                path,
                record,
                "polygon has a non-finite coordinate",
            ));
        }
        if x < -COORD_TOLERANCE
            || y < -COORD_TOLERANCE
            || x > w + COORD_TOLERANCE
            || y > h + COORD_TOLERANCE
        {
            return Err(FormatError::OutOfBounds {
                path: path.to_path_buf(),
                record: record.to_string(),
                x,
                y,
                width,
                height,
            });
        }
        out.push(x.clamp(0.0, w));
        out.push(y.clamp(0.0, h));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the reader tests.

    use std::path::Path;

    /// A PNG whose IHDR claims `w`×`h` (8-bit gray) followed by a tiny IDAT and IEND.
    pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut c = kind.to_vec();
            c.extend_from_slice(data);
            out.extend_from_slice(&c);
            out.extend_from_slice(&crc32fast::hash(&c).to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        // zlib stream of a few zero bytes (stored block).
        chunk(
            &mut out,
            b"IDAT",
            &[
                0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0x00, 0x01, 0x00, 0x01,
            ],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// Writes a solid gray image of the given size.
    pub fn write_image(path: &Path, w: u32, h: u32) {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        image::GrayImage::from_pixel(w, h, image::Luma([128]))
            .save(path)
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in [
            Format::Coco,
            Format::Via,
            Format::YoloSeg,
            Format::OidMasks,
            Format::MaskFolders,
        ] {
            assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
        }
        assert!("yolo".parse::<Format>().is_err());
    }

    #[test]
    fn png_bomb_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.png");
        std::fs::write(&p, bomb_png(100_000, 100_000)).unwrap();
        match image_dimensions(&p) {
            Err(FormatError::BadDimensions {
                width: 100_000,
                height: 100_000,
                ..
            }) => {}
            other => panic!("expected BadDimensions, got {other:?}"),
        }
        assert!(matches!(
            decode_mask(&p, "mask"),
            Err(FormatError::BadDimensions { .. })
        ));
        // Just under the side limit but over the pixel limit.
        std::fs::write(&p, bomb_png(20_000, 20_000)).unwrap();
        assert!(matches!(
            image_dimensions(&p),
            Err(FormatError::BadDimensions { .. })
        ));
    }

    #[test]
    fn random_bytes_are_undecodable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jpg");
        std::fs::write(
            &p,
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let e = image_dimensions(&p).unwrap_err();
        assert!(matches!(e, FormatError::UndecodableImage { .. }), "{e}");
        assert!(e.to_string().contains("x.jpg"));
    }

    #[test]
    fn polygon_checks() {
        let p = Path::new("a.json");
        assert!(matches!(
            check_polygon(p, "r", &[0.0, 0.0, 1.0, 1.0], 10, 10),
            Err(FormatError::TooFewPoints { points: 2, .. })
        ));
        assert!(matches!(
            check_polygon(p, "r", &[0.0, 0.0, 1.0, 1.0, 2.0], 10, 10),
            Err(FormatError::Malformed { .. })
        ));
        assert!(matches!(
            check_polygon(p, "r", &[0.0, 0.0, 15.0, 1.0, 2.0, 2.0], 10, 10),
            Err(FormatError::OutOfBounds { .. })
        ));
        assert_eq!(
            check_polygon(p, "r", &[-0.5, 0.0, 10.5, 1.0, 2.0, 2.0], 10, 10).unwrap(),
            vec![0.0, 0.0, 10.0, 1.0, 2.0, 2.0]
        );
    }

    #[test]
    fn split_names() {
        assert_eq!(split_from_name("train2017").as_deref(), Some("train"));
        assert_eq!(split_from_name("val2017").as_deref(), Some("validation"));
        assert_eq!(split_from_name("stuff"), None);
    }
}
