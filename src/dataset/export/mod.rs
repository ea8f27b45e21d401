//! Exporters: COCO (RLE or polygons), PASCAL VOC, YOLO-seg and per-instance PNG masks.
//!
//! Every file is written to a temporary file in its destination folder and then renamed, so a
//! crashed export never leaves half-written files under their final names. Every output path is
//! `out` joined with a name checked by [`crate::dataset::paths::safe_relative_path`]; exporters
//! never write outside `out`.

pub mod coco;
pub mod png_masks;
pub mod voc;
pub mod yolo_seg;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::dataset::mask::MaskError;
use crate::dataset::paths::{PathError, safe_relative_path};
use crate::dataset::{ExportImage, ExportInstance, ExportSet, Mask};

/// Output layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// COCO instances JSON; `polygons: false` writes compressed RLE (lossless), `true` traces
    /// outlines (holes are lost; crowd instances stay RLE).
    Coco {
        /// Write polygons instead of RLE.
        polygons: bool,
    },
    /// PASCAL VOC (XML boxes, palette PNG instance/class masks).
    Voc,
    /// Ultralytics YOLO segmentation.
    YoloSeg,
    /// One 0/255 PNG per instance plus `index.csv`.
    PngMasks,
}

impl ExportFormat {
    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coco { polygons: false } => "coco",
            Self::Coco { polygons: true } => "coco-polygons",
            Self::Voc => "voc",
            Self::YoloSeg => "yolo-seg",
            Self::PngMasks => "png-masks",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "coco" => Self::Coco { polygons: false },
            "coco-polygons" => Self::Coco { polygons: true },
            "voc" => Self::Voc,
            "yolo-seg" => Self::YoloSeg,
            "png-masks" => Self::PngMasks,
            other => {
                return Err(format!(
                    "unknown export format {other:?} (expected coco, coco-polygons, voc, yolo-seg or png-masks)"
                ));
            }
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Images written.
    pub images: usize,
    /// Instances written.
    pub instances: usize,
    /// Instances left out (empty masks, too many for a palette PNG, ...), each logged.
    pub skipped: usize,
    /// Files written (images, annotations, masks, index files).
    pub files: usize,
}

impl ExportSummary {
    /// Logs why an instance is left out and counts it in [`Self::skipped`].
    pub(crate) fn skip(&mut self, why: fmt::Arguments<'_>) {
        log::warn!("{why}");
        self.skipped += 1;
    }

    /// Leaves out `inst` of `img` because its mask is empty.
    pub(crate) fn skip_empty(&mut self, img: &ExportImage, inst: &ExportInstance) {
        self.skip(format_args!(
            "{}: instance {} has an empty mask, skipped",
            img.file_name, inst.id
        ));
    }
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exported {} images, {} instances ({} skipped), {} files written",
            self.images, self.instances, self.skipped, self.files
        )
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An image name would lead outside the output folder.
    #[error("unsafe output name {name:?}: {source}")]
    UnsafeName {
        /// The name.
        name: String,
        /// Why.
        source: PathError,
    },
    /// An instance cannot be written (size mismatch, unknown class, bad RLE, ...).
    #[error("image {image:?}, instance {instance}: {message}")]
    Instance {
        /// The image's file name.
        image: String,
        /// The instance id.
        instance: i64,
        /// What is wrong.
        message: String,
    },
    /// A mask could not be decoded from its RLE.
    #[error("image {image:?}, instance {instance}: {source}")]
    Mask {
        /// The image's file name.
        image: String,
        /// The instance id.
        instance: i64,
        /// The mask error.
        source: MaskError,
    },
    /// The set cannot be expressed in this format (e.g. more than 254 classes for VOC).
    #[error("{0}")]
    Unsupported(String),
    /// Encoding an image or JSON failed.
    #[error("encoding {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        message: String,
    },
}

impl ExportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `set` to the folder `out` (created if missing) in `format`.
pub fn write(
    set: &ExportSet,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    // Every image name must be a plain relative path before anything is written.
    for img in &set.images {
        safe_relative_path(&img.file_name).map_err(|source| ExportError::UnsafeName {
            name: img.file_name.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(out).map_err(|e| ExportError::io(out, e))?;
    match format {
        ExportFormat::Coco { polygons } => coco::write(set, polygons, out),
        ExportFormat::Voc => voc::write(set, out),
        ExportFormat::YoloSeg => yolo_seg::write(set, out),
        ExportFormat::PngMasks => png_masks::write(set, out),
    }
}

/// `out` joined with a checked relative name.
pub(crate) fn out_path(out: &Path, rel: &str) -> Result<PathBuf, ExportError> {
    let rel_path = safe_relative_path(rel).map_err(|source| ExportError::UnsafeName {
        name: rel.to_string(),
        source,
    })?;
    Ok(out.join(rel_path))
}

/// Writes `bytes` to `out/rel` (a checked relative name) with [`crate::fsutil::write_atomic`].
pub(crate) fn write_atomic(out: &Path, rel: &str, bytes: &[u8]) -> Result<PathBuf, ExportError> {
    let path = out_path(out, rel)?;
    crate::fsutil::write_atomic(&path, bytes).map_err(|e| ExportError::io(&e.path, e.source))?;
    Ok(path)
}

/// Copies `src` to `out/rel` through a temporary file in the same folder and a rename.
pub(crate) fn copy_atomic(out: &Path, rel: &str, src: &Path) -> Result<PathBuf, ExportError> {
    let path = out_path(out, rel)?;
    let dir = path.parent().unwrap_or(out);
    std::fs::create_dir_all(dir).map_err(|e| ExportError::io(dir, e))?;
    let mut input = std::fs::File::open(src).map_err(|e| ExportError::io(src, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ExportError::io(dir, e))?;
    std::io::copy(&mut input, &mut tmp).map_err(|e| ExportError::io(src, e))?;
    tmp.persist(&path)
        .map_err(|e| ExportError::io(&path, e.error))?;
    Ok(path)
}

/// Class id → 0-based position in the set's class order.
pub(crate) fn class_positions(set: &ExportSet) -> HashMap<i64, usize> {
    set.classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, i))
        .collect()
}

/// The class position of an instance, or an error naming it.
pub(crate) fn class_of(
    classes: &HashMap<i64, usize>,
    img: &ExportImage,
    inst: &ExportInstance,
) -> Result<usize, ExportError> {
    classes
        .get(&inst.class_id)
        .copied()
        .ok_or_else(|| ExportError::Instance {
            image: img.file_name.clone(),
            instance: inst.id,
            message: format!("class id {} is not in the class list", inst.class_id),
        })
}

/// Decodes an instance's RLE after checking it matches the image size.
pub(crate) fn instance_mask(img: &ExportImage, inst: &ExportInstance) -> Result<Mask, ExportError> {
    if inst.rle.width != img.width || inst.rle.height != img.height {
        return Err(ExportError::Instance {
            image: img.file_name.clone(),
            instance: inst.id,
            message: format!(
                "mask is {}x{}, image is {}x{}",
                inst.rle.width, inst.rle.height, img.width, img.height
            ),
        });
    }
    Mask::from_rle(&inst.rle).map_err(|source| ExportError::Mask {
        image: img.file_name.clone(),
        instance: inst.id,
        source,
    })
}

/// PNG bytes of a gray image.
pub(crate) fn png_bytes(img: &image::GrayImage) -> Result<Vec<u8>, ExportError> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| ExportError::Encode {
            what: "PNG".into(),
            message: e.to_string(),
        })?;
    Ok(buf.into_inner())
}

/// A class name made safe for a file name (anything but `[A-Za-z0-9._-]` becomes `_`).
pub(crate) fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() { "_".into() } else { s }
}

/// One flat, unique stem per image (`a/b.jpg` → `a_b`; clashes get `_<image id>`), in image order.
pub(crate) fn unique_stems(set: &ExportSet) -> Vec<String> {
    let mut seen = HashSet::new();
    set.images
        .iter()
        .map(|img| {
            let mut stem = file_safe(&without_extension(&img.file_name).replace('/', "_"));
            if !seen.insert(stem.clone()) {
                stem = format!("{stem}_{}", img.id);
                seen.insert(stem.clone());
            }
            stem
        })
        .collect()
}

/// A relative file name without the extension of its last component (`a/b.jpg` → `a/b`).
pub(crate) fn without_extension(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The extension of a file name (lower case, without dot), `jpg` when there is none.
pub(crate) fn extension(name: &str) -> String {
    Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_else(|| "jpg".into())
}

/// Output split folder for a stored split: `validation`/`val` → `val`, `test` → `test`,
/// anything else (including none) → `train`.
pub(crate) fn split_dir(split: Option<&str>) -> &'static str {
    match split {
        Some("validation" | "val") => "val",
        Some("test") => "test",
        _ => "train",
    }
}

/// Quotes a CSV field when needed.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! A small synthetic export set.

    use std::path::Path;

    use tempfile::TempDir;

    use super::{ExportFormat, ExportSummary};
    use crate::dataset::formats::Format;
    use crate::dataset::{
        Attribution, ExportClass, ExportImage, ExportInstance, ExportSet, ImportSet, Mask,
    };

    /// An export in `out` read back as `format`.
    pub fn read_back(out: &TempDir, format: Format) -> ImportSet {
        crate::dataset::formats::read(out.path(), format).unwrap()
    }

    /// The class names of a read set, in order.
    pub fn class_names(set: &ImportSet) -> Vec<&str> {
        set.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// [`sample_set`] written under a new folder and exported as `format` into another:
    /// `(source folder, set, output folder, summary)`.
    pub fn export_sample(format: ExportFormat) -> (TempDir, ExportSet, TempDir, ExportSummary) {
        let src = tempfile::tempdir().unwrap();
        let set = sample_set(src.path());
        let out = tempfile::tempdir().unwrap();
        let summary = super::write(&set, format, out.path()).unwrap();
        (src, set, out, summary)
    }

    /// Two images (one in a subfolder, one validation) with three instances, one with a hole
    /// and one crowd, written under `dir`.
    pub fn sample_set(dir: &Path) -> ExportSet {
        let mut images = Vec::new();
        for (i, (name, w, h, split)) in [
            ("a.png", 30u32, 20u32, None),
            ("sub/b.png", 16, 12, Some("validation")),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::GrayImage::from_pixel(w, h, image::Luma([100]))
                .save(&path)
                .unwrap();
            images.push(ExportImage {
                id: i as i64 + 1,
                path,
                file_name: name.into(),
                width: w,
                height: h,
                split: split.map(str::to_string),
                attribution: if i == 0 {
                    Attribution {
                        author: Some("Ann, \"A\"".into()),
                        ..Attribution::default()
                    }
                } else {
                    Attribution::default()
                },
                instances: Vec::new(),
            });
        }
        let mut ring = Mask::new(30, 20);
        for y in 2..12 {
            for x in 3..15 {
                ring.set(x, y, !(5..8).contains(&y) || !(6..10).contains(&x));
            }
        }
        let mut blob = Mask::new(30, 20);
        for y in 14..19 {
            for x in 20..28 {
                blob.set(x, y, (x + y) % 7 != 0);
            }
        }
        let mut small = Mask::new(16, 12);
        for y in 1..5 {
            for x in 1..4 {
                small.set(x, y, true);
            }
        }
        images[0].instances.push(ExportInstance {
            id: 10,
            class_id: 5,
            rle: ring.to_rle(),
            iscrowd: false,
        });
        images[0].instances.push(ExportInstance {
            id: 11,
            class_id: 9,
            rle: blob.to_rle(),
            iscrowd: true,
        });
        images[1].instances.push(ExportInstance {
            id: 12,
            class_id: 9,
            rle: small.to_rle(),
            iscrowd: false,
        });
        ExportSet {
            classes: vec![
                ExportClass {
                    id: 5,
                    name: "cat".into(),
                    mid: None,
                },
                ExportClass {
                    id: 9,
                    name: "big dog/x".into(),
                    mid: Some("/m/0bt9lr".into()),
                },
            ],
            images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in [
            ExportFormat::Coco { polygons: false },
            ExportFormat::Coco { polygons: true },
            ExportFormat::Voc,
            ExportFormat::YoloSeg,
            ExportFormat::PngMasks,
        ] {
            assert_eq!(f.as_str().parse::<ExportFormat>().unwrap(), f);
        }
        assert!("pascal".parse::<ExportFormat>().is_err());
        let s = ExportSummary {
            images: 2,
            instances: 3,
            skipped: 1,
            files: 9,
        };
        assert_eq!(
            s.to_string(),
            "exported 2 images, 3 instances (1 skipped), 9 files written"
        );
    }

    #[test]
    fn never_writes_outside_out() {
        let src = tempfile::tempdir().unwrap();
        let mut set = test_util::sample_set(src.path());
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        for bad in ["../evil.png", "/tmp/evil.png"] {
            set.images[0].file_name = bad.into();
            for f in [
                ExportFormat::Coco { polygons: false },
                ExportFormat::Voc,
                ExportFormat::YoloSeg,
                ExportFormat::PngMasks,
            ] {
                let r = write(&set, f, &out);
                assert!(
                    matches!(r, Err(ExportError::UnsafeName { .. })),
                    "{f}: {r:?}"
                );
            }
        }
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing written at all"
        );
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "x/y.txt", b"hello").unwrap();
        write_atomic(dir.path(), "x/y.txt", b"again").unwrap();
        assert_eq!(std::fs::read(dir.path().join("x/y.txt")).unwrap(), b"again");
        assert_eq!(std::fs::read_dir(dir.path().join("x")).unwrap().count(), 1);
        assert!(write_atomic(dir.path(), "../z.txt", b"no").is_err());
    }

    #[test]
    fn stems_are_unique_and_flat() {
        let src = tempfile::tempdir().unwrap();
        let mut set = test_util::sample_set(src.path());
        set.images[1].file_name = "a.jpg".into();
        assert_eq!(unique_stems(&set), ["a", "a_2"]);
        assert_eq!(file_safe("big dog/x"), "big_dog_x");
        assert_eq!(file_safe(".."), "_");
    }
}
