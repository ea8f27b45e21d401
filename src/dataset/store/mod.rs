//! The project store: a folder with `project.sqlite` (WAL, foreign keys on) and `images/`.
//!
//! Every write is one SQLite transaction. Image files are copied in first (temp file + rename)
//! and the rows that reference them are committed afterwards in one transaction, so a crash
//! leaves at worst an unreferenced file behind, never a row without its file.
//!
//! `impl Project` is split by concern: [`import`](Project::import) (validate, copy files in,
//! one transaction), queries (read-only views), edits (instance edits, the undo log, review
//! status) and files (image files on disk: hashing, checks, temp-file sweep).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::dataset::mask::MaskError;
use crate::dataset::paths::PathError;
use crate::dataset::schema::{self, SchemaError};
use crate::dataset::{Attribution, ExportClass, Origin, Rle};
use crate::fsutil::WriteError;

mod audit;
mod edits;
mod files;
mod import;
mod queries;

pub use audit::{AuditMode, AuditRow, FindingRow, FindingStatus, NewAudit, NewFinding, Resolution};
pub use edits::CHAIN_SUFFIX;
pub use files::{
    PARTIAL_PREFIX, check_dimensions, check_image_bytes, decode_limits, hex, sha256_of_file,
};
pub use import::class_color;

/// File name of the database inside a project folder.
pub const DB_FILE: &str = "project.sqlite";

/// Folder of the image files inside a project folder.
pub const IMAGES_DIR: &str = "images";

/// Largest image accepted, in pixels (decompression-bomb guard; 100 MP is far above any camera
/// image a Mask R-CNN would be trained on).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Largest image side accepted, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 30_000;

/// Errors of the project store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("project database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be migrated.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// File system error on a named path.
    #[error("{path:?}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No project at that path.
    #[error(
        "{0:?} is not a Mask Studio project (no {DB_FILE}); create it with `maskstudio import`"
    )]
    NotAProject(PathBuf),
    /// A file name that would escape the project.
    #[error("image {name:?}: {source}")]
    UnsafePath {
        /// The offending name.
        name: String,
        /// Why.
        source: PathError,
    },
    /// An image could not be read or decoded.
    #[error("image {path:?}: {reason}")]
    BadImage {
        /// The source file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An instance could not be turned into a mask.
    #[error("image {image:?}, instance {index}: {reason}")]
    BadInstance {
        /// Image file name.
        image: String,
        /// Index of the instance within the image.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A stored mask could not be decoded (corrupt row).
    #[error("instance {id}: stored mask is corrupt: {source}")]
    CorruptMask {
        /// Instance id.
        id: i64,
        /// Decoder error.
        source: MaskError,
    },
    /// A row that should exist does not.
    #[error("{what} {id} does not exist")]
    Missing {
        /// Table, in words.
        what: &'static str,
        /// Row id.
        id: i64,
    },
    /// An edit that makes no sense (instances of different images, ...).
    #[error("{0}")]
    Invalid(String),
    /// Cancelled by the user; nothing was committed.
    #[error("cancelled; nothing was written to the project")]
    Cancelled,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<WriteError> for StoreError {
    fn from(WriteError { path, source }: WriteError) -> Self {
        Self::Io { path, source }
    }
}

/// Review status of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    /// Not looked at yet.
    Unreviewed,
    /// Masks are good as they are.
    Accepted,
    /// Masks were fixed.
    Fixed,
    /// Image leaves training.
    Rejected,
}

impl ReviewStatus {
    /// The string stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreviewed => "unreviewed",
            Self::Accepted => "accepted",
            Self::Fixed => "fixed",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unreviewed" => Self::Unreviewed,
            "accepted" => Self::Accepted,
            "fixed" => Self::Fixed,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// Progress of an import, reported once per image.
#[derive(Debug, Clone, Copy)]
pub struct ImportProgress {
    /// Images handled so far.
    pub done: usize,
    /// Images in the import.
    pub total: usize,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Images added.
    pub images_added: usize,
    /// Images already in the project (same path and content), left as they were.
    pub images_skipped: usize,
    /// Instances added.
    pub instances_added: usize,
    /// Classes created.
    pub classes_added: usize,
}

/// One stored instance with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Row id.
    pub id: i64,
    /// Image row id.
    pub image_id: i64,
    /// Class row id.
    pub class_id: i64,
    /// The current mask.
    pub rle: Rle,
    /// COCO bbox `[x, y, w, h]` of the mask.
    pub bbox: [f64; 4],
    /// Mask area in pixels.
    pub area: u64,
    /// COCO iscrowd.
    pub iscrowd: bool,
    /// Where it came from.
    pub origin: Origin,
    /// Free-form provenance JSON.
    pub provenance: Option<serde_json::Value>,
    /// Whether it was edited since import.
    pub edited: bool,
}

/// Image/instance counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitCounts {
    /// Images.
    pub images: u64,
    /// Instances.
    pub instances: u64,
}

/// A summary of a project for `maskstudio info` and the GUI title bar.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectInfo {
    /// Classes with their instance counts, ordered by id.
    pub classes: Vec<(ExportClass, u64)>,
    /// Counts per split name (`unassigned` for images without a split), sorted by name.
    pub splits: BTreeMap<String, SplitCounts>,
    /// Edited instances.
    pub edited_instances: u64,
    /// Images still unreviewed.
    pub unreviewed_images: u64,
    /// Images per review status, sorted by status name.
    pub review: BTreeMap<String, u64>,
    /// Images per `source` (`sample`, `openimages`, an import format…), sorted by source.
    pub sources: BTreeMap<String, u64>,
}

/// One image's row, for the image view.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMeta {
    /// Row id.
    pub id: i64,
    /// Path relative to `images/`.
    pub file_name: String,
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `train` / `validation` / `test`, or none.
    pub split: Option<String>,
    /// Review status.
    pub review_status: ReviewStatus,
    /// Author, licence, URL, title.
    pub attribution: Attribution,
}

/// Review progress and edits of one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassProgress {
    /// Class row id.
    pub class_id: i64,
    /// Class name.
    pub name: String,
    /// Images with at least one instance of the class.
    pub images: u64,
    /// Of those, images whose status is not `unreviewed`.
    pub reviewed: u64,
    /// Instances of the class.
    pub instances: u64,
    /// Of those, edited instances.
    pub edited: u64,
}

/// An open project.
#[derive(Debug)]
pub struct Project {
    root: PathBuf,
    conn: Connection,
}

impl Project {
    /// Creates the project folder if needed and opens it.
    pub fn create_or_open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join(IMAGES_DIR)).map_err(io_err(root))?;
        Self::open_db(root)
    }

    /// Opens an existing project.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        if !root.join(DB_FILE).is_file() {
            return Err(StoreError::NotAProject(root.to_path_buf()));
        }
        Self::open_db(root)
    }

    fn open_db(root: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(root.join(DB_FILE))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("{root:?}: SQLite refused WAL mode (journal_mode={mode})");
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        // WAL + NORMAL: a killed process loses nothing committed (only power loss could).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            root: root.to_path_buf(),
            conn,
        })
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder holding the image files.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join(IMAGES_DIR)
    }

    /// The raw connection (read-only queries in tests and tools).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs `PRAGMA integrity_check` and returns its verdict (`"ok"` when healthy).
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))?)
    }
}
