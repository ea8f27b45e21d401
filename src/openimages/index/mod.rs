//! The cache index (`<cache>/index.sqlite`): the class catalogue and hierarchy, and one row per
//! mask of each indexed split, built by stream-parsing the segmentation CSV (never held in
//! memory: the train file is 770 MiB / 2.7 M rows). Image metadata (attribution, Rotation) is
//! added only for the ImageIDs a request selects.
//!
//! The Clicks column is not copied into SQLite (it is most of the CSV's bytes); the index keeps
//! its byte offset in the cached CSV and reads it back for the few masks that get imported.
//!
//! Layout (schema [`INDEX_SCHEMA_VERSION`]): `masks` holds the rows in file order (rowid
//! append, no SQL index: two B-tree indexes over 2.7 M rows cost more than parsing the whole
//! file). Its two lookups are compact sorted arrays built in memory during the same pass and
//! stored as BLOBs: `image_dir` (ImageID, masks rowid) pairs in blocks keyed by their first
//! ImageID, and `class_images` (the distinct ImageIDs of each class). Per-class counts come
//! from the same arrays. Everything of a split is written in one transaction together with its
//! `files` record, which is what marks the split indexed: an interrupted build rolls back.
//!
//! Files: `schema` (tables and the migration between schema versions), `build` (indexing a
//! split: the parser thread and the SQLite writer), `queries` (what the download asks of an
//! indexed split, image metadata and remembered failures), `parse` (the segmentation CSV parser).

mod build;
mod parse;
mod queries;
mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{Error, Split};

pub use build::MAX_INDEX_ROWS;
pub use parse::{MAX_LINE_BYTES, SEGMENTATION_HEADER, SegmentationRow, parse_segmentation_csv};
pub(crate) use queries::read_clicks;
pub use schema::INDEX_SCHEMA_VERSION;

/// File name of the index inside the cache folder.
pub const INDEX_FILE: &str = "index.sqlite";

/// `image_dir.first_key` of an ImageID: order-preserving map of u64 onto SQLite's i64.
fn dir_key(image: u64) -> i64 {
    (image ^ (1 << 63)) as i64
}

/// One mask of the index.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskRow {
    /// ImageID.
    pub image: u64,
    /// `classes.id` in the index.
    pub class: i64,
    /// BoxID (8 hex digits).
    pub box_id: String,
    /// Starting box `[xmin, xmax, ymin, ymax]`, normalised.
    pub bbox: [f64; 4],
    /// PredictedIoU (train only).
    pub predicted_iou: Option<f64>,
    /// Where Clicks lies in the cached CSV (offset, length).
    pub clicks: Option<(u64, u64)>,
    /// MaskPath (entry name in the shard).
    pub mask_path: String,
}

/// Attribution and Rotation of one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageMeta {
    /// Whether the image CSV has a row for it.
    pub found: bool,
    /// OriginalURL.
    pub original_url: Option<String>,
    /// License.
    pub license: Option<String>,
    /// Author.
    pub author: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Rotation in degrees counter-clockwise (`None` = empty = unknown).
    pub rotation: Option<f64>,
}

/// What a segmentation load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Bytes parsed.
    pub bytes: u64,
    /// Rows indexed.
    pub rows: u64,
    /// Rows skipped as malformed.
    pub bad_rows: u64,
    /// Rows that needed the quote-aware slow path.
    pub quoted_rows: u64,
    /// Rows refused because their MaskPath is not a plain Open Images mask name
    /// ([`super::check_mask_name`]); kept aside and reported as failures when their image is
    /// selected.
    pub unsafe_mask_paths: u64,
}

/// The cache index.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl Index {
    /// Opens (creating) `<cache_dir>/index.sqlite`. An index of another schema version keeps
    /// its catalogue but loses its split data, so the splits are indexed again.
    pub fn open(cache_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(cache_dir).map_err(Error::io(cache_dir))?;
        let path = cache_dir.join(INDEX_FILE);
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -32_768)?; // 32 MiB
        schema::prepare(&mut conn)?;
        Ok(Self { conn, path })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The recorded (size, etag) of an indexed file.
    pub(crate) fn file_record(&self, key: &str) -> Result<Option<(u64, Option<String>)>, Error> {
        Ok(self
            .conn
            .query_row("SELECT size, etag FROM files WHERE key = ?1", [key], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    pub(crate) fn set_file_record(
        conn: &Connection,
        key: &str,
        url: &str,
        size: u64,
        etag: Option<&str>,
    ) -> Result<(), Error> {
        conn.execute(
            "INSERT OR REPLACE INTO files (key, url, size, etag) VALUES (?1, ?2, ?3, ?4)",
            params![key, url, size as i64, etag],
        )?;
        Ok(())
    }

    /// Whether the split's segmentation CSV is indexed.
    pub fn is_indexed(&self, split: Split) -> Result<bool, Error> {
        Ok(self.file_record(&split.segmentation_csv())?.is_some())
    }

    /// `classes.id` of a MID, inserting it when new.
    pub(crate) fn class_id(conn: &Connection, mid: &str) -> Result<i64, Error> {
        conn.execute("INSERT OR IGNORE INTO classes (mid) VALUES (?1)", [mid])?;
        Ok(conn.query_row("SELECT id FROM classes WHERE mid = ?1", [mid], |r| r.get(0))?)
    }

    /// A metadata value.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }
}
