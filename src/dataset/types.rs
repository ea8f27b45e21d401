//! Plain data exchanged between format readers, the store and exporters.

use std::path::PathBuf;

use crate::dataset::{Mask, Rle};

/// Where an instance came from (stored in `instances.origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Downloaded from Open Images.
    OpenImages,
    /// Imported from a dataset file (COCO, VIA, YOLO-seg, mask folders).
    Import,
    /// Predicted by a model and accepted by the user.
    Model,
    /// Drawn by the user.
    Manual,
}

impl Origin {
    /// The string stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenImages => "openimages",
            Self::Import => "import",
            Self::Model => "model",
            Self::Manual => "manual",
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openimages" => Self::OpenImages,
            "import" => Self::Import,
            "model" => Self::Model,
            "manual" => Self::Manual,
            _ => return None,
        })
    }
}

/// Per-image attribution (Open Images keeps Author, License, OriginalURL, Title).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attribution {
    /// Author name.
    pub author: Option<String>,
    /// Licence name or URL.
    pub license: Option<String>,
    /// URL of the original image.
    pub original_url: Option<String>,
    /// Title of the original image.
    pub title: Option<String>,
}

/// A class as read from a dataset file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDef {
    /// Display name, unique within a project.
    pub name: String,
    /// Open Images MID (`/m/01b9xk`), when known.
    pub mid: Option<String>,
}

/// The shape of one instance as the source file gave it, before rasterisation.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmentation {
    /// COCO-style polygons in image pixels: each `[x1, y1, x2, y2, ...]`.
    Polygons(Vec<Vec<f64>>),
    /// A run-length encoding at image size.
    Rle(Rle),
    /// A bitmap at image size.
    Bitmap(Mask),
}

/// One instance to import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportInstance {
    /// Class name; must be one of [`ImportSet::classes`].
    pub class: String,
    /// The shape.
    pub segmentation: Segmentation,
    /// COCO `iscrowd`.
    pub iscrowd: bool,
    /// Provenance.
    pub origin: Origin,
    /// Free-form provenance (e.g. Open Images MID/BoxID/PredictedIoU/Clicks, source file), JSON.
    pub provenance: Option<serde_json::Value>,
}

/// One image to import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportImage {
    /// Where the image file is now (already checked to lie inside the source dataset folder).
    pub src_path: PathBuf,
    /// Relative path to give it under the project's `images/` (validated by [`crate::dataset::paths`]).
    pub file_name: String,
    /// Pixel width as read from the image header (0 = read it on import).
    pub width: u32,
    /// Pixel height as read from the image header (0 = read it on import).
    pub height: u32,
    /// `train`, `validation`, `test` or `None` (unassigned).
    pub split: Option<String>,
    /// Where the image came from (`coco:annotations.json`, `openimages`, ...).
    pub source: String,
    /// Attribution columns.
    pub attribution: Attribution,
    /// Its instances (may be empty).
    pub instances: Vec<ImportInstance>,
}

/// Everything one import brings in; written by the store in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportSet {
    /// Format name (`coco`, `via`, `yolo-seg`, `oid-masks`, `mask-folders`).
    pub format: String,
    /// Classes in the source's order.
    pub classes: Vec<ClassDef>,
    /// Images with their instances.
    pub images: Vec<ImportImage>,
}

/// A class as stored in a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportClass {
    /// Row id in `classes` (stable; COCO exports use it as `category_id` order).
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Open Images MID, when known.
    pub mid: Option<String>,
}

/// One stored instance, ready to write out.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportInstance {
    /// Row id in `instances`.
    pub id: i64,
    /// `classes.id` of its class.
    pub class_id: i64,
    /// The mask at image size.
    pub rle: Rle,
    /// COCO `iscrowd`.
    pub iscrowd: bool,
}

/// One stored image with its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportImage {
    /// Row id in `images`.
    pub id: i64,
    /// Absolute path of the file inside the project.
    pub path: PathBuf,
    /// Path relative to the project's `images/` folder (forward slashes).
    pub file_name: String,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Split, if assigned.
    pub split: Option<String>,
    /// Attribution.
    pub attribution: Attribution,
    /// Instances, ordered by id.
    pub instances: Vec<ExportInstance>,
}

/// A snapshot of a project for exporters (classes ordered by id, images by id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportSet {
    /// Classes ordered by id.
    pub classes: Vec<ExportClass>,
    /// Images ordered by id.
    pub images: Vec<ExportImage>,
}
