//! What the download asks of an indexed split (a class's images, an image's masks, per-class
//! counts), image metadata, and remembered per-image failures.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use rusqlite::{OptionalExtension as _, params};

use crate::cancel::CancelToken;
use crate::openimages::{Error, Split, parse_image_id};

use super::{ImageMeta, Index, MaskRow, dir_key};

impl Index {
    /// Distinct images of a class in a split, ascending.
    pub(crate) fn class_images(&self, split: Split, class: i64) -> Result<Vec<u64>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT images FROM class_images WHERE split = ?1 AND class = ?2")?;
        let blob: Option<Vec<u8>> = stmt
            .query_row(params![split.code(), class], |r| r.get(0))
            .optional()?;
        let blob = blob.unwrap_or_default();
        if !blob.len().is_multiple_of(8) {
            return Err(self.corrupt("class_images"));
        }
        Ok(blob
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }

    fn corrupt(&self, table: &str) -> Error {
        Error::Format {
            file: self.path.display().to_string(),
            message: format!("{table} is damaged; delete the file to rebuild the index"),
        }
    }

    /// `masks` rowids of one image in a split, ascending (file order).
    fn image_rows(&self, split: Split, image: u64) -> Result<Vec<i64>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT data FROM image_dir WHERE split = ?1 AND first_key <= ?2
             ORDER BY first_key DESC LIMIT 1",
        )?;
        let blob: Option<Vec<u8>> = stmt
            .query_row(params![split.code(), dir_key(image)], |r| r.get(0))
            .optional()?;
        let Some(blob) = blob else {
            return Ok(Vec::new());
        };
        if !blob.len().is_multiple_of(16) {
            return Err(self.corrupt("image_dir"));
        }
        let entry = |i: usize| {
            let e = &blob[i * 16..i * 16 + 16];
            let mut id = [0u8; 8];
            let mut row = [0u8; 8];
            id.copy_from_slice(&e[..8]);
            row.copy_from_slice(&e[8..]);
            (u64::from_le_bytes(id), i64::from_le_bytes(row))
        };
        let n = blob.len() / 16;
        // First entry of `image` (binary search over the sorted entries).
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid).0 < image {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok((lo..n)
            .map(entry)
            .take_while(|e| e.0 == image)
            .map(|e| e.1)
            .collect())
    }

    /// All masks of one image in a split, ordered by class then BoxID (then file order).
    pub(crate) fn image_masks(&self, split: Split, image: u64) -> Result<Vec<MaskRow>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.class, m.box, m.xmin, m.xmax, m.ymin, m.ymax, m.iou, m.clicks_at,
                    m.clicks_len, m.mask_path, c.mid
             FROM masks m JOIN classes c ON c.id = m.class
             WHERE m.rowid = ?1 AND m.split = ?2 AND m.image = ?3",
        )?;
        let mut out: Vec<(i64, MaskRow)> = Vec::new();
        for row in self.image_rows(split, image)? {
            let found = stmt
                .query_row(params![row, split.code(), image as i64], |r| {
                    let box_num: i64 = r.get(1)?;
                    let box_id = format!("{box_num:08x}");
                    let mid: String = r.get(10)?;
                    let mask_path: Option<String> = r.get(9)?;
                    let at: Option<i64> = r.get(7)?;
                    let len: Option<i64> = r.get(8)?;
                    Ok((
                        box_num,
                        MaskRow {
                            image,
                            class: r.get(0)?,
                            mask_path: mask_path.unwrap_or_else(|| {
                                crate::openimages::mask_file_name(image, &mid, &box_id)
                            }),
                            box_id,
                            bbox: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                            predicted_iou: r.get(6)?,
                            clicks: at.zip(len).map(|(a, l)| (a as u64, l as u64)),
                        },
                    ))
                })
                .optional()?;
            match found {
                Some(m) => out.push(m),
                None => return Err(self.corrupt("image_dir")),
            }
        }
        out.sort_by_key(|(box_num, m)| (m.class, *box_num)); // stable: ties in file order
        Ok(out.into_iter().map(|(_, m)| m).collect())
    }

    /// Masks of one image that the index refused (unsafe MaskPath): (class, MaskPath as shown,
    /// reason).
    pub(crate) fn rejected_masks(
        &self,
        split: Split,
        image: u64,
    ) -> Result<Vec<(i64, String, String)>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT class, mask_path, reason FROM rejected_masks
             WHERE split = ?1 AND image = ?2 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![split.code(), image as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per-class (images, masks) of a split.
    pub(crate) fn counts(&self, split: Split) -> Result<HashMap<i64, (u64, u64)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT class, images, masks FROM counts WHERE split = ?1")?;
        let rows = stmt.query_map([split.code()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Metadata of an image, if it was scanned.
    pub(crate) fn image_meta(&self, split: Split, image: u64) -> Result<Option<ImageMeta>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT found, original_url, license, author, title, rotation FROM image_meta
                 WHERE split = ?1 AND image = ?2",
                params![split.code(), image as i64],
                |r| {
                    Ok(ImageMeta {
                        found: r.get(0)?,
                        original_url: r.get(1)?,
                        license: r.get(2)?,
                        author: r.get(3)?,
                        title: r.get(4)?,
                        rotation: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// Streams an image metadata CSV and stores the rows of `wanted` (others are skipped);
    /// wanted IDs without a row are stored as not found. Returns how many were found.
    pub fn scan_image_metadata(
        &mut self,
        split: Split,
        csv: &Path,
        wanted: &HashSet<u64>,
        cancel: &CancelToken,
    ) -> Result<usize, Error> {
        let file = std::fs::File::open(csv).map_err(Error::io(csv))?;
        let name = csv.display().to_string();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
        let headers = reader
            .byte_headers()
            .map_err(|e| Error::Format {
                file: name.clone(),
                message: e.to_string(),
            })?
            .clone();
        let col = |n: &str| headers.iter().position(|h| h == n.as_bytes());
        let id_col = col("ImageID").ok_or_else(|| Error::Format {
            file: name.clone(),
            message: "no ImageID column".into(),
        })?;
        let cols = [
            col("OriginalURL"),
            col("License"),
            col("Author"),
            col("Title"),
        ];
        let rot_col = col("Rotation");
        let tx = self.conn.transaction()?;
        let mut found = HashSet::new();
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO image_meta
                 (split, image, found, original_url, license, author, title, rotation)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut record = csv::ByteRecord::new();
            let mut n = 0u64;
            loop {
                let more = reader
                    .read_byte_record(&mut record)
                    .map_err(|e| Error::Format {
                        file: name.clone(),
                        message: e.to_string(),
                    })?;
                if !more {
                    break;
                }
                n += 1;
                if n.is_multiple_of(65_536) && cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let Some(id) = record.get(id_col).and_then(parse_image_id) else {
                    continue;
                };
                if !wanted.contains(&id) {
                    continue;
                }
                let text = |c: Option<usize>| {
                    c.and_then(|c| record.get(c))
                        .filter(|v| !v.is_empty())
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let rotation = rot_col
                    .and_then(|c| record.get(c))
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite());
                insert.execute(params![
                    split.code(),
                    id as i64,
                    text(cols[0]),
                    text(cols[1]),
                    text(cols[2]),
                    text(cols[3]),
                    rotation
                ])?;
                found.insert(id);
            }
            let mut missing = tx.prepare(
                "INSERT OR IGNORE INTO image_meta (split, image, found) VALUES (?1, ?2, 0)",
            )?;
            for id in wanted.difference(&found) {
                missing.execute(params![split.code(), *id as i64])?;
            }
        }
        tx.commit()?;
        Ok(found.len())
    }

    /// Remembers that an image cannot be had (so later runs do not fetch it again).
    pub(crate) fn record_failure(
        &self,
        split: Split,
        image: u64,
        kind: &str,
        message: &str,
    ) -> Result<(), Error> {
        self.conn.execute(
            "INSERT OR REPLACE INTO image_failures (split, image, kind, message) VALUES (?1, ?2, ?3, ?4)",
            params![split.code(), image as i64, kind, message],
        )?;
        Ok(())
    }

    /// A remembered permanent failure: (kind, message).
    pub(crate) fn failure(
        &self,
        split: Split,
        image: u64,
    ) -> Result<Option<(String, String)>, Error> {
        Ok(self
            .conn
            .query_row(
                "SELECT kind, message FROM image_failures WHERE split = ?1 AND image = ?2",
                params![split.code(), image as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Forgets a remembered failure.
    pub(crate) fn clear_failure(&self, split: Split, image: u64) -> Result<(), Error> {
        self.conn.execute(
            "DELETE FROM image_failures WHERE split = ?1 AND image = ?2",
            params![split.code(), image as i64],
        )?;
        Ok(())
    }
}

/// Reads the Clicks text of a mask back from the cached CSV.
pub(crate) fn read_clicks(csv: &Path, at: u64, len: u64) -> Option<String> {
    if len == 0 || len > 1 << 20 {
        return None;
    }
    let mut f = std::fs::File::open(csv).ok()?;
    f.seek(SeekFrom::Start(at)).ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).ok()?;
    String::from_utf8(buf).ok()
}
