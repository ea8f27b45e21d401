//! The project store: a folder with `project.sqlite` (WAL, foreign keys on) and `images/`.
//!
//! Every write is one SQLite transaction. Image files are copied in first (temp file + rename)
//! and the rows that reference them are committed afterwards in one transaction, so a crash
//! leaves at worst an unreferenced file behind, never a row without its file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::cancel::CancelToken;
use crate::dataset::mask::MaskError;
use crate::dataset::paths::{PathError, safe_relative_path};
use crate::dataset::schema::{self, SchemaError};
use crate::dataset::{
    Attribution, ExportClass, ExportImage, ExportInstance, ExportSet, ImportSet, Mask, Origin, Rle,
    Segmentation,
};
use crate::fsutil::{WriteError, write_atomic};

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

impl ProjectInfo {
    /// Whether every image came from the generated sample ([`crate::sample`]).
    pub fn is_sample(&self) -> bool {
        !self.sources.is_empty() && self.sources.keys().all(|s| s == crate::sample::SOURCE)
    }
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
pub struct Project {
    root: PathBuf,
    conn: Connection,
}

impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Snapshot of an instance stored in the edit log (enough to recreate the row).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct InstanceState {
    class_id: i64,
    rle: String,
    height: u32,
    width: u32,
    iscrowd: bool,
    origin: String,
    provenance: Option<String>,
    original_rle: Option<String>,
    original_class_id: Option<i64>,
    edited: bool,
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

    /// Imports a set: images are validated and copied in first, then every row is written in
    /// one transaction. Images already present (same path and content) are skipped, so an
    /// interrupted or repeated import can simply be run again.
    pub fn import(
        &mut self,
        set: &ImportSet,
        source_path: &Path,
        cancel: &CancelToken,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImportSummary, StoreError> {
        let total = set.images.len();
        let known_classes: HashMap<&str, usize> = set
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let images_dir = self.images_dir();
        std::fs::create_dir_all(&images_dir).map_err(io_err(&images_dir))?;
        remove_partial_files(&images_dir);

        // Phase 1 (no database writes): validate, rasterise, hash and copy files in.
        let mut prepared = Vec::with_capacity(total);
        let mut claimed = HashSet::new();
        for (done, image) in set.images.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            prepared.push(self.prepare_image(image, &known_classes, &mut claimed)?);
            progress(ImportProgress {
                done: done + 1,
                total,
            });
        }
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }

        // Phase 2: one transaction for every row.
        let tx = self.conn.transaction()?;
        let mut summary = ImportSummary::default();
        let mut class_ids = Vec::with_capacity(set.classes.len());
        for class in &set.classes {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM classes WHERE name = ?1",
                    [&class.name],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match existing {
                Some(id) => {
                    if let Some(mid) = &class.mid {
                        tx.execute(
                            "UPDATE classes SET mid = ?1 WHERE id = ?2 AND mid IS NULL",
                            params![mid, id],
                        )?;
                    }
                    id
                }
                None => {
                    let count: i64 =
                        tx.query_row("SELECT COUNT(*) FROM classes", [], |r| r.get(0))?;
                    tx.execute(
                        "INSERT INTO classes (name, mid, color) VALUES (?1, ?2, ?3)",
                        params![class.name, class.mid, class_color(count as usize)],
                    )?;
                    summary.classes_added += 1;
                    tx.last_insert_rowid()
                }
            };
            class_ids.push(id);
        }
        for image in &prepared {
            let Some(rel_path) = &image.rel_path else {
                summary.images_skipped += 1;
                continue;
            };
            let a = &image.attribution;
            tx.execute(
                "INSERT INTO images (path, width, height, sha256, split, source, source_file,
                                     author, license, original_url, title)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    rel_path,
                    image.width,
                    image.height,
                    image.sha256,
                    image.split,
                    image.source,
                    image.source_file,
                    a.author,
                    a.license,
                    a.original_url,
                    a.title
                ],
            )?;
            let image_id = tx.last_insert_rowid();
            summary.images_added += 1;
            let mut insert = tx.prepare_cached(
                "INSERT INTO instances (image_id, class_id, bbox_x, bbox_y, bbox_w, bbox_h, area,
                                        rle, iscrowd, origin, provenance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for instance in &image.instances {
                let b = instance.rle.to_bbox();
                insert.execute(params![
                    image_id,
                    class_ids[instance.class_index],
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    instance.rle.area() as i64,
                    instance.rle.to_compressed(),
                    instance.iscrowd,
                    instance.origin.as_str(),
                    instance.provenance.as_ref().map(|v| v.to_string()),
                ])?;
                summary.instances_added += 1;
            }
        }
        tx.execute(
            "INSERT INTO imports (format, source_path, images, instances) VALUES (?1, ?2, ?3, ?4)",
            params![
                set.format,
                source_path.display().to_string(),
                summary.images_added as i64,
                summary.instances_added as i64
            ],
        )?;
        tx.commit()?;
        Ok(summary)
    }

    /// Validates one image and its instances and copies the file into `images/`.
    fn prepare_image(
        &self,
        image: &crate::dataset::ImportImage,
        classes: &HashMap<&str, usize>,
        claimed: &mut HashSet<String>,
    ) -> Result<PreparedImage, StoreError> {
        let rel =
            safe_relative_path(&image.file_name).map_err(|source| StoreError::UnsafePath {
                name: image.file_name.clone(),
                source,
            })?;
        let bytes = std::fs::read(&image.src_path).map_err(io_err(&image.src_path))?;
        let (width, height) = check_image_bytes(&image.src_path, &bytes)?;
        if image.width != 0 && (image.width, image.height) != (width, height) {
            return Err(StoreError::BadImage {
                path: image.src_path.clone(),
                reason: format!(
                    "the dataset says {}×{} but the file is {width}×{height}",
                    image.width, image.height
                ),
            });
        }
        let sha256 = hex(&Sha256::digest(&bytes));

        // The same file imported from the same place before: skip it (re-runs are no-ops).
        let source_file = std::path::absolute(&image.src_path)
            .unwrap_or_else(|_| image.src_path.clone())
            .display()
            .to_string();
        let already: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM images WHERE sha256 = ?1 AND source_file = ?2",
                params![sha256, source_file],
                |r| r.get(0),
            )
            .optional()?;
        let rel_path = if already.is_some() {
            None
        } else {
            let rel_path = self.free_image_path(&rel, &sha256, claimed)?;
            let dest = self.images_dir().join(&rel_path);
            if !dest.exists() {
                write_atomic(&dest, &bytes)?;
            }
            claimed.insert(rel_path.clone());
            Some(rel_path)
        };

        let mut instances = Vec::with_capacity(image.instances.len());
        for (index, instance) in image.instances.iter().enumerate() {
            let bad = |reason: String| StoreError::BadInstance {
                image: image.file_name.clone(),
                index,
                reason,
            };
            let class_index = *classes
                .get(instance.class.as_str())
                .ok_or_else(|| bad(format!("class {:?} is not declared", instance.class)))?;
            let rle = match &instance.segmentation {
                Segmentation::Polygons(polygons) => Mask::from_polygons(polygons, width, height)
                    .map_err(|e| bad(e.to_string()))?
                    .to_rle(),
                Segmentation::Rle(rle) => rle.clone(),
                Segmentation::Bitmap(mask) => mask.to_rle(),
            };
            if (rle.width, rle.height) != (width, height) {
                return Err(bad(format!(
                    "mask is {}×{} but the image is {width}×{height}",
                    rle.width, rle.height
                )));
            }
            instances.push(PreparedInstance {
                class_index,
                rle,
                iscrowd: instance.iscrowd,
                origin: instance.origin,
                provenance: instance.provenance.clone(),
            });
        }
        Ok(PreparedImage {
            rel_path,
            source_file,
            width,
            height,
            sha256,
            split: image.split.clone(),
            source: image.source.clone(),
            attribution: image.attribution.clone(),
            instances,
        })
    }

    /// The first of `name`, `stem-2.ext`, `stem-3.ext`, … not used by another image (in the
    /// database, in this import, or on disk with other content).
    fn free_image_path(
        &self,
        rel: &Path,
        sha256: &str,
        claimed: &HashSet<String>,
    ) -> Result<String, StoreError> {
        let stem = rel
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = rel
            .extension()
            .map(|s| format!(".{}", s.to_string_lossy()))
            .unwrap_or_default();
        for n in 1..=u32::MAX {
            let candidate = if n == 1 {
                rel.to_path_buf()
            } else {
                rel.with_file_name(format!("{stem}-{n}{ext}"))
            };
            let name = candidate.to_string_lossy().replace('\\', "/");
            let in_db: bool = self.conn.query_row(
                "SELECT COUNT(*) > 0 FROM images WHERE path = ?1",
                [&name],
                |r| r.get(0),
            )?;
            let dest = self.images_dir().join(&candidate);
            // A file left by an interrupted import with the same content can be reused.
            let on_disk_differs = dest.exists() && sha256_of_file(&dest)? != sha256;
            if !in_db && !claimed.contains(&name) && !on_disk_differs {
                return Ok(name);
            }
        }
        Err(StoreError::BadImage {
            path: rel.to_path_buf(),
            reason: "no free file name left for it in the project".into(),
        })
    }

    /// Classes ordered by id.
    pub fn classes(&self) -> Result<Vec<ExportClass>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, mid FROM classes ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(ExportClass {
                id: r.get(0)?,
                name: r.get(1)?,
                mid: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts for `maskstudio info`.
    pub fn info(&self) -> Result<ProjectInfo, StoreError> {
        let mut info = ProjectInfo::default();
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, c.mid, COUNT(i.id) FROM classes c
             LEFT JOIN instances i ON i.class_id = c.id GROUP BY c.id ORDER BY c.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                ExportClass {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    mid: r.get(2)?,
                },
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (class, count) = row?;
            info.classes.push((class, count as u64));
        }
        let mut stmt = self.conn.prepare(
            "SELECT COALESCE(m.split, 'unassigned'), COUNT(*),
                    COALESCE(SUM((SELECT COUNT(*) FROM instances i WHERE i.image_id = m.id)), 0)
             FROM images m GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (split, images, instances) = row?;
            info.splits.insert(
                split,
                SplitCounts {
                    images: images as u64,
                    instances: instances as u64,
                },
            );
        }
        info.edited_instances =
            self.conn
                .query_row("SELECT COUNT(*) FROM instances WHERE edited = 1", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
        let mut stmt = self
            .conn
            .prepare("SELECT review_status, COUNT(*) FROM images GROUP BY 1 ORDER BY 1")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, count) = row?;
            info.review.insert(status, count as u64);
        }
        info.unreviewed_images = info.review.get("unreviewed").copied().unwrap_or(0);
        let mut stmt = self
            .conn
            .prepare("SELECT source, COUNT(*) FROM images GROUP BY 1 ORDER BY 1")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (source, count) = row?;
            info.sources.insert(source, count as u64);
        }
        Ok(info)
    }

    /// A snapshot of the project for exporters and training; `split` limits it to one split.
    /// Images reviewed as `rejected` are left out (they leave training and exports).
    pub fn export_set(&self, split: Option<&str>) -> Result<ExportSet, StoreError> {
        let classes = self.classes()?;
        let mut stmt = self.conn.prepare(
            "SELECT id, path, width, height, split, author, license, original_url, title
             FROM images WHERE (?1 IS NULL OR split = ?1) AND review_status != 'rejected' ORDER BY id",
        )?;
        let images_dir = self.images_dir();
        let rows = stmt.query_map([split], |r| {
            let file_name: String = r.get(1)?;
            Ok(ExportImage {
                id: r.get(0)?,
                path: images_dir.join(&file_name),
                file_name,
                width: r.get(2)?,
                height: r.get(3)?,
                split: r.get(4)?,
                attribution: Attribution {
                    author: r.get(5)?,
                    license: r.get(6)?,
                    original_url: r.get(7)?,
                    title: r.get(8)?,
                },
                instances: Vec::new(),
            })
        })?;
        let mut images: Vec<ExportImage> = rows.collect::<Result<_, _>>()?;
        let index: HashMap<i64, usize> =
            images.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        let mut stmt = self.conn.prepare(
            "SELECT i.id, i.image_id, i.class_id, i.rle, i.iscrowd, m.height, m.width
             FROM instances i JOIN images m ON m.id = i.image_id
             WHERE (?1 IS NULL OR m.split = ?1) ORDER BY i.id",
        )?;
        let mut rows = stmt.query([split])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let image_id: i64 = r.get(1)?;
            let counts: String = r.get(3)?;
            let rle = Rle::from_compressed(r.get(5)?, r.get(6)?, &counts)
                .map_err(|source| StoreError::CorruptMask { id, source })?;
            if let Some(&at) = index.get(&image_id) {
                images[at].instances.push(ExportInstance {
                    id,
                    class_id: r.get(2)?,
                    rle,
                    iscrowd: r.get(4)?,
                });
            }
        }
        Ok(ExportSet { classes, images })
    }

    /// The instances of one image, ordered by id.
    pub fn instances(&self, image_id: i64) -> Result<Vec<InstanceRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT i.id, i.image_id, i.class_id, i.rle, i.bbox_x, i.bbox_y, i.bbox_w, i.bbox_h,
                    i.area, i.iscrowd, i.origin, i.provenance, i.edited, m.height, m.width
             FROM instances i JOIN images m ON m.id = i.image_id
             WHERE i.image_id = ?1 ORDER BY i.id",
        )?;
        let mut rows = stmt.query([image_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let counts: String = r.get(3)?;
            let rle = Rle::from_compressed(r.get(13)?, r.get(14)?, &counts)
                .map_err(|source| StoreError::CorruptMask { id, source })?;
            let origin: String = r.get(10)?;
            let provenance: Option<String> = r.get(11)?;
            out.push(InstanceRow {
                id,
                image_id: r.get(1)?,
                class_id: r.get(2)?,
                rle,
                bbox: [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                area: r.get::<_, i64>(8)? as u64,
                iscrowd: r.get(9)?,
                origin: Origin::parse(&origin).unwrap_or(Origin::Import),
                provenance: provenance.and_then(|p| serde_json::from_str(&p).ok()),
                edited: r.get(12)?,
            });
        }
        Ok(out)
    }

    /// Replaces an instance's mask (keeping the original on the first edit); one undoable step.
    pub fn update_instance_mask(
        &mut self,
        instance_id: i64,
        mask: &Mask,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        let mut after = before.clone();
        after.rle = mask.to_rle().to_compressed();
        after.height = mask.height();
        after.width = mask.width();
        if !after.edited {
            after.original_rle = Some(before.rle.clone());
            after.original_class_id = Some(before.class_id);
            after.edited = true;
        }
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            "update",
            Some(&before),
            Some(&after),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Changes an instance's class; one undoable step.
    pub fn set_instance_class(
        &mut self,
        instance_id: i64,
        class_id: i64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        let mut after = before.clone();
        after.class_id = class_id;
        if !after.edited {
            after.original_rle = Some(before.rle.clone());
            after.original_class_id = Some(before.class_id);
            after.edited = true;
        }
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            "update",
            Some(&before),
            Some(&after),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adds a hand-drawn (or model-proposed) instance; one undoable step. Returns its id.
    pub fn add_instance(
        &mut self,
        image_id: i64,
        class_id: i64,
        mask: &Mask,
        origin: Origin,
    ) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let state = InstanceState {
            class_id,
            rle: mask.to_rle().to_compressed(),
            height: mask.height(),
            width: mask.width(),
            iscrowd: false,
            origin: origin.as_str().to_owned(),
            provenance: None,
            original_rle: None,
            original_class_id: None,
            edited: false,
        };
        let id = put_state(&tx, None, image_id, &state)?;
        log_edit(&tx, image_id, id, "create", None, Some(&state))?;
        tx.commit()?;
        Ok(id)
    }

    /// Deletes an instance; one undoable step.
    pub fn delete_instance(&mut self, instance_id: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        tx.execute("DELETE FROM instances WHERE id = ?1", [instance_id])?;
        log_edit(&tx, image_id, instance_id, "delete", Some(&before), None)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets an image's review status.
    pub fn set_review_status(
        &mut self,
        image_id: i64,
        status: ReviewStatus,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE images SET review_status = ?1 WHERE id = ?2",
            params![status.as_str(), image_id],
        )?;
        if changed == 0 {
            return Err(StoreError::Missing {
                what: "image",
                id: image_id,
            });
        }
        Ok(())
    }

    /// Undoes the latest edit step (of any image); returns the instance it touched, or
    /// `None` when nothing is left.
    pub fn undo(&mut self) -> Result<Option<i64>, StoreError> {
        self.replay(History::Undo, None)
    }

    /// Redoes the oldest undone edit step (of any image); returns the instance it touched, or `None`.
    pub fn redo(&mut self) -> Result<Option<i64>, StoreError> {
        self.replay(History::Redo, None)
    }

    /// Undoes the latest edit step of one image (the image view's Ctrl+Z).
    pub fn undo_image(&mut self, image_id: i64) -> Result<Option<i64>, StoreError> {
        self.replay(History::Undo, Some(image_id))
    }

    /// Redoes the oldest undone edit step of one image.
    pub fn redo_image(&mut self, image_id: i64) -> Result<Option<i64>, StoreError> {
        self.replay(History::Redo, Some(image_id))
    }

    /// Moves one step through the edit log, in one transaction: undo restores an entry's
    /// `before` state and marks it undone; redo restores the oldest undone entry's `after`
    /// state. A step may span several entries: an entry whose kind ends in
    /// [`CHAIN_SUFFIX`] is undone and redone together with the entry after it (merge, split).
    fn replay(
        &mut self,
        direction: History,
        image: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let (state_column, undone, order, undone_after) = match direction {
            History::Undo => ("before", 0, "DESC", 1),
            History::Redo => ("after", 1, "ASC", 0),
        };
        let tx = self.conn.transaction()?;
        let mut first_instance = None;
        loop {
            let entry = tx
                .query_row(
                    &format!(
                        "SELECT id, image_id, instance_id, {state_column}, kind FROM edit_log
                         WHERE undone = ?1 AND (?2 IS NULL OR image_id = ?2)
                         ORDER BY id {order} LIMIT 1"
                    ),
                    params![undone, image],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((log_id, image_id, instance_id, state, kind)) = entry else {
                break;
            };
            let chained = kind.ends_with(CHAIN_SUFFIX);
            // Undo walks backwards: after the first entry, continue only into chained ones.
            if first_instance.is_some() && matches!(direction, History::Undo) && !chained {
                break;
            }
            apply_state(&tx, instance_id, image_id, state.as_deref())?;
            tx.execute(
                "UPDATE edit_log SET undone = ?1 WHERE id = ?2",
                params![undone_after, log_id],
            )?;
            first_instance.get_or_insert(instance_id);
            // Redo walks forwards: a chained entry pulls in the next one.
            if matches!(direction, History::Redo) && !chained {
                break;
            }
        }
        tx.commit()?;
        Ok(first_instance)
    }

    /// Whether [`Self::undo_image`] / [`Self::redo_image`] have something to do.
    pub fn history_of(&self, image_id: i64) -> Result<(bool, bool), StoreError> {
        let count = |undone: i64| -> Result<bool, StoreError> {
            Ok(self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM edit_log WHERE image_id = ?1 AND undone = ?2)",
                params![image_id, undone],
                |r| r.get(0),
            )?)
        };
        Ok((count(0)?, count(1)?))
    }

    /// Restores an instance's original mask and class (from before its first edit); one
    /// undoable step. Returns `false` (nothing written) when it was never edited.
    pub fn revert_instance(&mut self, instance_id: i64) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        if !before.edited {
            return Ok(false);
        }
        let mut after = before.clone();
        if let Some(rle) = before.original_rle.clone() {
            after.rle = rle;
        }
        if let Some(class_id) = before.original_class_id {
            after.class_id = class_id;
        }
        after.original_rle = None;
        after.original_class_id = None;
        after.edited = false;
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            "revert",
            Some(&before),
            Some(&after),
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Merges `other` into `keep` (mask union; `other` is deleted) in one transaction and one
    /// undoable step. Both must belong to the same image.
    pub fn merge_instances(&mut self, keep: i64, other: i64) -> Result<(), StoreError> {
        if keep == other {
            return Err(StoreError::Invalid(format!(
                "cannot merge instance {keep} with itself"
            )));
        }
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, keep)?;
        let (other_image, other_state) = load_state(&tx, other)?;
        if other_image != image_id {
            return Err(StoreError::Invalid(format!(
                "instances {keep} (image {image_id}) and {other} (image {other_image}) are on different images"
            )));
        }
        let mut mask = Mask::from_rle(&state_rle(&before)?)
            .map_err(|source| StoreError::CorruptMask { id: keep, source })?;
        let second = Mask::from_rle(&state_rle(&other_state)?)
            .map_err(|source| StoreError::CorruptMask { id: other, source })?;
        mask.union_with(&second);
        let after = edited_state(&before, &mask);
        put_state(&tx, Some(keep), image_id, &after)?;
        log_edit(&tx, image_id, keep, "merge+", Some(&before), Some(&after))?;
        tx.execute("DELETE FROM instances WHERE id = ?1", [other])?;
        log_edit(&tx, image_id, other, "delete", Some(&other_state), None)?;
        tx.commit()?;
        Ok(())
    }

    /// Splits an instance into its 8-connected components: the first (in raster order) stays
    /// in the instance, each other becomes a new instance of the same class (origin `manual`,
    /// provenance `{"split_from": id}`). One transaction, one undoable step. Returns the ids,
    /// the kept one first; a single component changes nothing.
    pub fn split_instance(&mut self, instance_id: i64) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        let mask =
            Mask::from_rle(&state_rle(&before)?).map_err(|source| StoreError::CorruptMask {
                id: instance_id,
                source,
            })?;
        let parts = crate::dataset::maskops::split_components(&mask);
        if parts.len() <= 1 {
            return Ok(vec![instance_id]);
        }
        let after = edited_state(&before, &parts[0]);
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            "split+",
            Some(&before),
            Some(&after),
        )?;
        let mut ids = vec![instance_id];
        for (k, part) in parts.iter().enumerate().skip(1) {
            let state = InstanceState {
                class_id: before.class_id,
                rle: part.to_rle().to_compressed(),
                height: part.height(),
                width: part.width(),
                iscrowd: before.iscrowd,
                origin: Origin::Manual.as_str().to_owned(),
                provenance: Some(serde_json::json!({ "split_from": instance_id }).to_string()),
                original_rle: None,
                original_class_id: None,
                edited: false,
            };
            let id = put_state(&tx, None, image_id, &state)?;
            let kind = if k + 1 < parts.len() {
                "create+"
            } else {
                "create"
            };
            log_edit(&tx, image_id, id, kind, None, Some(&state))?;
            ids.push(id);
        }
        tx.commit()?;
        Ok(ids)
    }

    /// One image's row.
    pub fn image(&self, image_id: i64) -> Result<ImageMeta, StoreError> {
        let images_dir = self.images_dir();
        self.conn
            .query_row(
                "SELECT id, path, width, height, split, review_status, author, license,
                        original_url, title FROM images WHERE id = ?1",
                [image_id],
                |r| {
                    let file_name: String = r.get(1)?;
                    let status: String = r.get(5)?;
                    Ok(ImageMeta {
                        id: r.get(0)?,
                        path: images_dir.join(&file_name),
                        file_name,
                        width: r.get(2)?,
                        height: r.get(3)?,
                        split: r.get(4)?,
                        review_status: ReviewStatus::parse(&status)
                            .unwrap_or(ReviewStatus::Unreviewed),
                        attribution: Attribution {
                            author: r.get(6)?,
                            license: r.get(7)?,
                            original_url: r.get(8)?,
                            title: r.get(9)?,
                        },
                    })
                },
            )
            .optional()?
            .ok_or(StoreError::Missing {
                what: "image",
                id: image_id,
            })
    }

    /// The original masks (before the first edit) of the edited instances of one image.
    pub fn original_masks(&self, image_id: i64) -> Result<HashMap<i64, Rle>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT i.id, i.original_rle, m.height, m.width
             FROM instances i JOIN images m ON m.id = i.image_id
             WHERE i.image_id = ?1 AND i.edited = 1 AND i.original_rle IS NOT NULL",
        )?;
        let mut rows = stmt.query([image_id])?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let counts: String = r.get(1)?;
            let rle = Rle::from_compressed(r.get(2)?, r.get(3)?, &counts)
                .map_err(|source| StoreError::CorruptMask { id, source })?;
            out.insert(id, rle);
        }
        Ok(out)
    }

    /// Class colours (`#rrggbb`) by class id.
    pub fn class_colors(&self) -> Result<HashMap<i64, String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, color FROM classes")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Edited instances of one image.
    pub fn edited_count(&self, image_id: i64) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM instances WHERE image_id = ?1 AND edited = 1",
            [image_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Edited instances per image (images without edits are absent).
    pub fn edited_per_image(&self) -> Result<HashMap<i64, u64>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT image_id, COUNT(*) FROM instances WHERE edited = 1 GROUP BY image_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per class (ordered by id): images, reviewed images, instances and edited instances.
    pub fn class_progress(&self) -> Result<Vec<ClassProgress>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, COUNT(DISTINCT i.image_id),
                    COUNT(DISTINCT CASE WHEN m.review_status != 'unreviewed' THEN i.image_id END),
                    COUNT(i.id), COALESCE(SUM(i.edited), 0)
             FROM classes c
             LEFT JOIN instances i ON i.class_id = c.id
             LEFT JOIN images m ON m.id = i.image_id
             GROUP BY c.id ORDER BY c.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ClassProgress {
                class_id: r.get(0)?,
                name: r.get(1)?,
                images: r.get::<_, i64>(2)? as u64,
                reviewed: r.get::<_, i64>(3)? as u64,
                instances: r.get::<_, i64>(4)? as u64,
                edited: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The next (`forward`) or previous unreviewed image after `from` in id order, wrapping
    /// around at the ends; with `class_id`, only images with an instance of that class.
    /// `None` when no other image is unreviewed.
    pub fn neighbour_unreviewed(
        &self,
        from: i64,
        forward: bool,
        class_id: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let (cmp, order, wrap) = if forward {
            (">", "ASC", i64::MIN)
        } else {
            ("<", "DESC", i64::MAX)
        };
        let sql = format!(
            "SELECT id FROM images m WHERE review_status = 'unreviewed' AND id {cmp} ?1 AND id != ?3
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM instances i
                                          WHERE i.image_id = m.id AND i.class_id = ?2))
             ORDER BY id {order} LIMIT 1"
        );
        for start in [from, wrap] {
            let found: Option<i64> = self
                .conn
                .query_row(&sql, params![start, class_id, from], |r| r.get(0))
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// Suffix of an edit-log kind that joins the entry to the next one in one undo step.
pub const CHAIN_SUFFIX: &str = "+";

/// `before` with a new mask, marked edited (keeping the original on the first edit).
fn edited_state(before: &InstanceState, mask: &Mask) -> InstanceState {
    let mut after = before.clone();
    after.rle = mask.to_rle().to_compressed();
    after.height = mask.height();
    after.width = mask.width();
    if !after.edited {
        after.original_rle = Some(before.rle.clone());
        after.original_class_id = Some(before.class_id);
        after.edited = true;
    }
    after
}

/// Direction of [`Project::replay`].
enum History {
    Undo,
    Redo,
}

struct PreparedInstance {
    class_index: usize,
    rle: Rle,
    iscrowd: bool,
    origin: Origin,
    provenance: Option<serde_json::Value>,
}

struct PreparedImage {
    /// Where the file goes under `images/`; `None` = already imported, skip.
    rel_path: Option<String>,
    source_file: String,
    width: u32,
    height: u32,
    sha256: String,
    split: Option<String>,
    source: String,
    attribution: Attribution,
    instances: Vec<PreparedInstance>,
}

fn load_state(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<(i64, InstanceState), StoreError> {
    tx.query_row(
        "SELECT i.image_id, i.class_id, i.rle, m.height, m.width, i.iscrowd, i.origin, i.provenance,
                i.original_rle, i.original_class_id, i.edited
         FROM instances i JOIN images m ON m.id = i.image_id WHERE i.id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                InstanceState {
                    class_id: r.get(1)?,
                    rle: r.get(2)?,
                    height: r.get(3)?,
                    width: r.get(4)?,
                    iscrowd: r.get(5)?,
                    origin: r.get(6)?,
                    provenance: r.get(7)?,
                    original_rle: r.get(8)?,
                    original_class_id: r.get(9)?,
                    edited: r.get(10)?,
                },
            ))
        },
    )
    .optional()?
    .ok_or(StoreError::Missing { what: "instance", id })
}

fn state_rle(state: &InstanceState) -> Result<Rle, StoreError> {
    Rle::from_compressed(state.height, state.width, &state.rle)
        .map_err(|source| StoreError::CorruptMask { id: -1, source })
}

/// Writes an instance row from `state`: inserts it (with `id`, or a new id when `None`) or,
/// when the id exists, updates it in place. Returns the row id.
fn put_state(
    tx: &rusqlite::Transaction<'_>,
    id: Option<i64>,
    image_id: i64,
    state: &InstanceState,
) -> Result<i64, StoreError> {
    let rle = state_rle(state)?;
    let b = rle.to_bbox();
    tx.execute(
        "INSERT INTO instances (id, image_id, class_id, bbox_x, bbox_y, bbox_w, bbox_h, area, rle,
                                iscrowd, origin, provenance, original_rle, original_class_id, edited)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT(id) DO UPDATE SET
             image_id = excluded.image_id, class_id = excluded.class_id,
             bbox_x = excluded.bbox_x, bbox_y = excluded.bbox_y, bbox_w = excluded.bbox_w,
             bbox_h = excluded.bbox_h, area = excluded.area, rle = excluded.rle,
             iscrowd = excluded.iscrowd, origin = excluded.origin, provenance = excluded.provenance,
             original_rle = excluded.original_rle, original_class_id = excluded.original_class_id,
             edited = excluded.edited, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![
            id,
            image_id,
            state.class_id,
            b[0],
            b[1],
            b[2],
            b[3],
            rle.area() as i64,
            state.rle,
            state.iscrowd,
            state.origin,
            state.provenance,
            state.original_rle,
            state.original_class_id,
            state.edited
        ],
    )?;
    Ok(id.unwrap_or_else(|| tx.last_insert_rowid()))
}

/// Makes the instance row match `state` (JSON of [`InstanceState`]); `None` deletes it.
fn apply_state(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    image_id: i64,
    state: Option<&str>,
) -> Result<(), StoreError> {
    match state {
        None => {
            tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
        }
        Some(json) => {
            let state: InstanceState = serde_json::from_str(json).map_err(|e| {
                StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                ))
            })?;
            put_state(tx, Some(id), image_id, &state)?;
        }
    }
    Ok(())
}

fn log_edit(
    tx: &rusqlite::Transaction<'_>,
    image_id: i64,
    instance_id: i64,
    kind: &str,
    before: Option<&InstanceState>,
    after: Option<&InstanceState>,
) -> Result<(), StoreError> {
    // A new edit ends the redo stack.
    tx.execute("DELETE FROM edit_log WHERE undone = 1", [])?;
    let json = |s: Option<&InstanceState>| s.map(|s| serde_json::to_string(s).unwrap_or_default());
    tx.execute(
        "INSERT INTO edit_log (image_id, instance_id, kind, before, after) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![image_id, instance_id, kind, json(before), json(after)],
    )?;
    Ok(())
}

/// A distinct, readable colour per class index (golden-angle hue steps).
pub fn class_color(index: usize) -> String {
    let hue = (index as f64 * 137.507_764) % 360.0; // golden angle in degrees
    let (s, v) = (0.65, 0.95);
    let c = v * s;
    let x = c * (1.0 - ((hue / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (hue / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let byte = |f: f64| ((f + m) * 255.0).round() as u8;
    format!("#{:02x}{:02x}{:02x}", byte(r), byte(g), byte(b))
}

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
fn remove_partial_files(dir: &Path) {
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

/// Prefix of temp files written by [`write_atomic`].
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
