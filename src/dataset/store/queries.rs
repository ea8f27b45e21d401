//! Read-only views of a project: classes, counts, export snapshots, one image's rows, review
//! progress and navigation.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{OptionalExtension as _, Row, params};

use crate::dataset::{
    Attribution, ExportClass, ExportImage, ExportInstance, ExportSet, Origin, Rle,
};

use super::{
    ClassProgress, ImageMeta, InstanceRow, Project, ProjectInfo, ReviewStatus, SplitCounts,
    StoreError,
};

impl Project {
    /// Classes ordered by id.
    pub fn classes(&self) -> Result<Vec<ExportClass>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, mid FROM classes ORDER BY id")?;
        let rows = stmt.query_map([], export_class)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts for `maskstudio info`.
    pub fn info(&self) -> Result<ProjectInfo, StoreError> {
        let mut info = ProjectInfo::default();
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, c.mid, COUNT(i.id) FROM classes c
             LEFT JOIN instances i ON i.class_id = c.id GROUP BY c.id ORDER BY c.id",
        )?;
        let rows = stmt.query_map([], |r| Ok((export_class(r)?, r.get::<_, i64>(3)?)))?;
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
        info.review = self.images_per("review_status")?;
        info.unreviewed_images = info.review.get("unreviewed").copied().unwrap_or(0);
        info.sources = self.images_per("source")?;
        Ok(info)
    }

    /// Images per value of one text column of `images`, sorted by value.
    fn images_per(&self, column: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {column}, COUNT(*) FROM images GROUP BY 1 ORDER BY 1"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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
                attribution: attribution(r, 5)?,
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
            let rle = row_rle(r, id, 3, 5)?;
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
            let rle = row_rle(r, id, 3, 13)?;
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
                        attribution: attribution(r, 6)?,
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
            out.insert(id, row_rle(r, id, 1, 2)?);
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

/// A class from columns `id, name, mid` (0–2).
fn export_class(r: &Row<'_>) -> rusqlite::Result<ExportClass> {
    Ok(ExportClass {
        id: r.get(0)?,
        name: r.get(1)?,
        mid: r.get(2)?,
    })
}

/// The attribution from columns `author, license, original_url, title` starting at `first`.
fn attribution(r: &Row<'_>, first: usize) -> rusqlite::Result<Attribution> {
    Ok(Attribution {
        author: r.get(first)?,
        license: r.get(first + 1)?,
        original_url: r.get(first + 2)?,
        title: r.get(first + 3)?,
    })
}

/// Instance `id`'s mask from its compressed counts at column `counts` and the image's
/// `height, width` at columns `size` and `size + 1`.
fn row_rle(r: &Row<'_>, id: i64, counts: usize, size: usize) -> Result<Rle, StoreError> {
    let text: String = r.get(counts)?;
    Rle::from_compressed(r.get(size)?, r.get(size + 1)?, &text)
        .map_err(|source| StoreError::CorruptMask { id, source })
}
