//! [`Project::import`]: images validated, rasterised, hashed and copied into `images/` first,
//! then every row in one transaction; re-running an import skips what is already there.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::cancel::CancelToken;
use crate::dataset::paths::{lossy, safe_relative_path};
use crate::dataset::{Attribution, ImportSet, Mask, Origin, Rle, Segmentation};
use crate::fsutil::write_atomic;

use super::files::{check_image_bytes, hex, remove_partial_files, sha256_of_file};
use super::{ImportProgress, ImportSummary, Project, StoreError, io_err};

impl Project {
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
        let stem = lossy(rel.file_stem());
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
