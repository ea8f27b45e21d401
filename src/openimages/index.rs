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

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::cancel::CancelToken;

use super::{Error, Split, parse_hex, parse_image_id};

/// File name of the index inside the cache folder.
pub const INDEX_FILE: &str = "index.sqlite";
/// Exact header of the segmentation CSVs.
pub const SEGMENTATION_HEADER: &str =
    "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks";
/// Longest line accepted in a segmentation CSV (the parser's whole buffer). Real rows are about
/// 300 bytes (train, with Clicks); a longer "line" is a broken or hostile file and stops the
/// parse instead of growing the buffer without bound.
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Most masks one split may hold (the train file has 2.7 M): the in-memory lookup arrays cost
/// 24 bytes per mask, so a hostile file cannot grow them past ~400 MB.
pub const MAX_INDEX_ROWS: u64 = 16_000_000;
/// `PRAGMA user_version` of the index. 1 (stored as 0: never set) had SQL indexes on `masks`;
/// 2 has `image_dir` / `class_images` / `mask_ranges`. Any other value is rebuilt: the
/// per-split mask data is dropped and the splits re-indexed from their cached CSVs.
pub const INDEX_SCHEMA_VERSION: i64 = 2;
/// Rows per batch sent from the parser thread to the SQLite writer.
const BATCH_ROWS: usize = 16_384;
/// Mask rows per multi-row INSERT (11 parameters each).
const INSERT_ROWS: usize = 32;
/// Entries (16 bytes each) per `image_dir` block, at least; a block ends at an ImageID change.
const DIR_BLOCK: usize = 4096;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS files (
    key        TEXT PRIMARY KEY,      -- path below the GCS base
    url        TEXT NOT NULL,
    size       INTEGER NOT NULL,
    etag       TEXT,
    indexed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS classes (
    id          INTEGER PRIMARY KEY,
    mid         TEXT NOT NULL UNIQUE,
    name        TEXT,
    segmentable INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS edges (
    parent INTEGER NOT NULL,
    child  INTEGER NOT NULL,
    kind   TEXT NOT NULL,             -- 'subcategory' | 'part'
    PRIMARY KEY (parent, child, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS masks (    -- file order; looked up through image_dir
    split      INTEGER NOT NULL,      -- 0 train, 1 validation, 2 test
    image      INTEGER NOT NULL,      -- ImageID (64-bit, bit-cast)
    class      INTEGER NOT NULL,      -- classes.id
    box        INTEGER NOT NULL,      -- BoxID (32-bit)
    xmin REAL, xmax REAL, ymin REAL, ymax REAL,
    iou        REAL,                  -- PredictedIoU (NULL in validation/test)
    clicks_at  INTEGER,               -- byte offset of Clicks in the cached CSV
    clicks_len INTEGER,
    mask_path  TEXT                   -- only when it differs from {ImageID}_{mid}_{BoxID}.png
);
CREATE TABLE IF NOT EXISTS mask_ranges (
    split     INTEGER PRIMARY KEY,
    first_row INTEGER NOT NULL,       -- masks.rowid of the split's rows: [first_row, end_row)
    end_row   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_dir (
    split     INTEGER NOT NULL,
    first_key INTEGER NOT NULL,       -- first ImageID of the block, XOR 2^63 (sorts as unsigned)
    data      BLOB NOT NULL,          -- (ImageID u64 LE, masks.rowid i64 LE), sorted
    PRIMARY KEY (split, first_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS class_images (
    split  INTEGER NOT NULL,
    class  INTEGER NOT NULL,
    images BLOB NOT NULL,             -- distinct ImageIDs (u64 LE), ascending
    PRIMARY KEY (split, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    split  INTEGER NOT NULL,
    class  INTEGER NOT NULL,
    images INTEGER NOT NULL,
    masks  INTEGER NOT NULL,
    PRIMARY KEY (split, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS image_meta (
    split        INTEGER NOT NULL,
    image        INTEGER NOT NULL,
    found        INTEGER NOT NULL,    -- 0: not in the image CSV (no attribution, Rotation 0)
    original_url TEXT,
    license      TEXT,
    author       TEXT,
    title        TEXT,
    rotation     REAL,                -- NULL when empty (unknown)
    PRIMARY KEY (split, image)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS image_failures (
    split   INTEGER NOT NULL,
    image   INTEGER NOT NULL,
    kind    TEXT NOT NULL,            -- permanent failures only (not found, corrupt)
    message TEXT NOT NULL,
    PRIMARY KEY (split, image)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected_masks (
    split     INTEGER NOT NULL,
    image     INTEGER NOT NULL,
    class     INTEGER NOT NULL,
    mask_path TEXT NOT NULL,          -- escaped and cut (shown, never used as a path)
    reason    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_masks_image ON rejected_masks(split, image);
"#;

/// Drops the per-split mask data of an index written under another schema version (the
/// catalogue, image metadata and failures are kept) so every split is indexed again.
const MIGRATE: &str = r#"
DROP INDEX IF EXISTS masks_class;
DROP INDEX IF EXISTS masks_image;
DROP TABLE IF EXISTS masks;
DROP TABLE IF EXISTS mask_ranges;
DROP TABLE IF EXISTS image_dir;
DROP TABLE IF EXISTS class_images;
DROP TABLE IF EXISTS counts;
DROP TABLE IF EXISTS rejected_masks;
"#;

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
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
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
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == INDEX_SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)?;
        } else {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Another process may have migrated it meanwhile.
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version != INDEX_SCHEMA_VERSION {
                tx.execute_batch(MIGRATE)?;
                tx.execute_batch(SCHEMA)?;
                for split in Split::ALL {
                    tx.execute(
                        "DELETE FROM files WHERE key = ?1",
                        [split.segmentation_csv()],
                    )?;
                }
                tx.pragma_update(None, "user_version", INDEX_SCHEMA_VERSION)?;
            } else {
                tx.execute_batch(SCHEMA)?;
            }
            tx.commit()?;
        }
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

    /// Indexes a split's segmentation CSV (replacing what the index had for that split). The
    /// parser runs on its own thread and hands batches to the SQLite writer through a bounded
    /// channel; it also builds the split's lookup arrays (ImageID -> rows, class -> images),
    /// sorted at the end while the writer catches up. Everything is committed in one
    /// transaction (with `synchronous=OFF` for the build only: the rollback journal still undoes
    /// an interrupted load), so an interrupted load leaves the previous state. `progress` gets
    /// (bytes parsed, rows).
    pub fn load_segmentations(
        &mut self,
        split: Split,
        csv: &Path,
        url: &str,
        etag: Option<&str>,
        cancel: &CancelToken,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LoadStats, Error> {
        self.conn.pragma_update(None, "synchronous", "OFF")?;
        let result = self.load_segmentations_inner(split, csv, url, etag, cancel, progress);
        let restored = self.conn.pragma_update(None, "synchronous", "NORMAL");
        let stats = result?;
        restored?;
        Ok(stats)
    }

    fn load_segmentations_inner(
        &mut self,
        split: Split,
        csv: &Path,
        url: &str,
        etag: Option<&str>,
        cancel: &CancelToken,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LoadStats, Error> {
        let size = std::fs::metadata(csv).map_err(Error::io(csv))?.len();
        let file = std::fs::File::open(csv).map_err(Error::io(csv))?;
        let code = split.code();
        let file_name = csv.display().to_string();

        let tx = self.conn.transaction()?;
        let range: Option<(i64, i64)> = tx
            .query_row(
                "SELECT first_row, end_row FROM mask_ranges WHERE split = ?1",
                [code],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match range {
            Some((first, end)) => tx.execute(
                "DELETE FROM masks WHERE rowid >= ?1 AND rowid < ?2",
                [first, end],
            )?,
            // Not indexed under this schema: nothing of it is there (the full scan is cheap).
            None => tx.execute("DELETE FROM masks WHERE split = ?1", [code])?,
        };
        for sql in [
            "DELETE FROM mask_ranges WHERE split = ?1",
            "DELETE FROM image_dir WHERE split = ?1",
            "DELETE FROM class_images WHERE split = ?1",
            "DELETE FROM counts WHERE split = ?1",
            "DELETE FROM rejected_masks WHERE split = ?1",
        ] {
            tx.execute(sql, [code])?;
        }
        tx.execute(
            "DELETE FROM files WHERE key = ?1",
            [split.segmentation_csv()],
        )?;
        let first_row: i64 =
            tx.query_row("SELECT COALESCE(MAX(rowid), 0) + 1 FROM masks", [], |r| {
                r.get(0)
            })?;

        let (batches, rx) = crossbeam_channel::bounded::<Batch>(4);
        let parse_cancel = cancel.clone();
        let parser = std::thread::Builder::new()
            .name("oi-csv-parse".into())
            .spawn(move || parse_to_batches(file, &file_name, first_row, &parse_cancel, &batches))
            .map_err(Error::io(csv))?;

        let result = (|| -> Result<LoadStats, Error> {
            let mut class_map: Vec<i64> = Vec::new();
            let mut rows = 0u64;
            let mut next_row = first_row;
            {
                // Rows get automatic rowids (the B-tree's append path: MAX(rowid) + 1, so
                // first_row, first_row + 1, ... in file order, as the parser numbered them;
                // checked below). Several rows per statement save the per-statement work.
                let values = |n: usize| {
                    let one = format!("({code}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                    format!(
                        "INSERT INTO masks (split, image, class, box, xmin, xmax, ymin, ymax,
                                            iou, clicks_at, clicks_len, mask_path) VALUES {}",
                        vec![one; n].join(", ")
                    )
                };
                let mut insert_many = tx.prepare(&values(INSERT_ROWS))?;
                let mut insert_one = tx.prepare(&values(1))?;
                let mut reject = tx.prepare(
                    "INSERT INTO rejected_masks (split, image, class, mask_path, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for batch in rx.iter() {
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    for mid in &batch.new_mids {
                        class_map.push(Index::class_id(&tx, mid)?);
                    }
                    let mut accepted: Vec<&Rec> = Vec::with_capacity(batch.rows.len());
                    for r in &batch.rows {
                        if let Some(reason) = &r.rejected {
                            reject.execute(params![
                                code,
                                r.image as i64,
                                class_map[r.class as usize],
                                r.mask_path.as_deref().unwrap_or(""),
                                reason,
                            ])?;
                        } else {
                            debug_assert_eq!(r.row, next_row + accepted.len() as i64);
                            accepted.push(r);
                        }
                    }
                    let mut chunks = accepted.chunks_exact(INSERT_ROWS);
                    for chunk in &mut chunks {
                        for (i, r) in chunk.iter().enumerate() {
                            bind_mask(&mut insert_many, i * 11, r, &class_map)?;
                        }
                        insert_many.raw_execute()?;
                    }
                    for r in chunks.remainder() {
                        bind_mask(&mut insert_one, 0, r, &class_map)?;
                        insert_one.raw_execute()?;
                    }
                    next_row += accepted.len() as i64;
                    rows += batch.rows.len() as u64;
                    progress(batch.bytes, rows);
                }
            }
            if next_row > first_row && tx.last_insert_rowid() != next_row - 1 {
                return Err(Error::Format {
                    file: url.into(),
                    message: format!(
                        "index build out of step: last row {} where {} was expected",
                        tx.last_insert_rowid(),
                        next_row - 1
                    ),
                });
            }
            let (stats, lookup) = match parser.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Format {
                        file: url.into(),
                        message: "CSV parser thread panicked".into(),
                    });
                }
            };
            if lookup.dir.len() as i64 != next_row - first_row {
                return Err(Error::Format {
                    file: url.into(),
                    message: format!(
                        "index build out of step: {} rows stored, {} in the image directory",
                        next_row - first_row,
                        lookup.dir.len()
                    ),
                });
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            {
                let mut put = tx.prepare(
                    "INSERT INTO image_dir (split, first_key, data) VALUES (?1, ?2, ?3)",
                )?;
                let mut block: Vec<u8> = Vec::with_capacity(DIR_BLOCK * 16 + 64);
                let mut first = 0u64;
                let dir = &lookup.dir;
                for (i, &(image, row)) in dir.iter().enumerate() {
                    if block.is_empty() {
                        first = image;
                    }
                    block.extend_from_slice(&image.to_le_bytes());
                    block.extend_from_slice(&row.to_le_bytes());
                    let ends_image = dir.get(i + 1).is_none_or(|n| n.0 != image);
                    if block.len() >= DIR_BLOCK * 16 && ends_image {
                        put.execute(params![code, dir_key(first), block])?;
                        block.clear();
                    }
                }
                if !block.is_empty() {
                    put.execute(params![code, dir_key(first), block])?;
                }
            }
            {
                let mut put = tx.prepare(
                    "INSERT INTO class_images (split, class, images) VALUES (?1, ?2, ?3)",
                )?;
                let mut count = tx.prepare(
                    "INSERT INTO counts (split, class, images, masks) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut bytes = Vec::new();
                for (local, (images, masks)) in lookup.classes.iter().enumerate() {
                    if *masks == 0 {
                        continue;
                    }
                    let class = class_map[local];
                    bytes.clear();
                    bytes.extend(images.iter().flat_map(|v| v.to_le_bytes()));
                    put.execute(params![code, class, bytes])?;
                    count.execute(params![code, class, images.len() as i64, *masks as i64])?;
                }
            }
            tx.execute(
                "INSERT INTO mask_ranges (split, first_row, end_row) VALUES (?1, ?2, ?3)",
                params![code, first_row, next_row],
            )?;
            Index::set_file_record(&tx, &split.segmentation_csv(), url, size, etag)?;
            Ok(stats)
        })();
        match result {
            Ok(stats) => {
                tx.commit()?;
                Ok(stats)
            }
            Err(e) => {
                // Unblock and stop the parser before returning (the transaction rolls back).
                cancel_drain(rx);
                Err(e)
            }
        }
    }

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
                            mask_path: mask_path
                                .unwrap_or_else(|| super::mask_file_name(image, &mid, &box_id)),
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

    /// A metadata value.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
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

fn cancel_drain(rx: crossbeam_channel::Receiver<Batch>) {
    drop(rx); // the parser's next send fails and it stops
}

/// A parsed row, owned, ready for SQLite.
struct Rec {
    /// `masks.rowid` (accepted rows only; numbered by the parser in file order).
    row: i64,
    image: u64,
    class: u32,
    box_id: u32,
    bbox: [f64; 4],
    iou: Option<f64>,
    clicks_at: Option<u64>,
    clicks_len: Option<u32>,
    /// MaskPath when not canonical; for a refused row, the MaskPath as shown.
    mask_path: Option<String>,
    /// Why the row's MaskPath was refused (the row goes to `rejected_masks`).
    rejected: Option<String>,
}

struct Batch {
    rows: Vec<Rec>,
    new_mids: Vec<String>,
    /// Bytes parsed so far (for progress).
    bytes: u64,
}

/// Binds one accepted row to parameters `at + 1 ..= at + 11` of a masks INSERT.
fn bind_mask(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    r: &Rec,
    class_map: &[i64],
) -> Result<(), Error> {
    stmt.raw_bind_parameter(at + 1, r.image as i64)?;
    stmt.raw_bind_parameter(at + 2, class_map[r.class as usize])?;
    stmt.raw_bind_parameter(at + 3, i64::from(r.box_id))?;
    stmt.raw_bind_parameter(at + 4, r.bbox[0])?;
    stmt.raw_bind_parameter(at + 5, r.bbox[1])?;
    stmt.raw_bind_parameter(at + 6, r.bbox[2])?;
    stmt.raw_bind_parameter(at + 7, r.bbox[3])?;
    stmt.raw_bind_parameter(at + 8, r.iou)?;
    stmt.raw_bind_parameter(at + 9, r.clicks_at.map(|v| v as i64))?;
    stmt.raw_bind_parameter(at + 10, r.clicks_len.map(i64::from))?;
    stmt.raw_bind_parameter(at + 11, r.mask_path.as_deref())?;
    Ok(())
}

/// The lookup arrays of one split, built by the parser thread.
struct Lookup {
    /// (ImageID, masks.rowid) of every stored mask, sorted.
    dir: Vec<(u64, i64)>,
    /// Per parser-local class: distinct ImageIDs (ascending) and the number of masks.
    classes: Vec<(Vec<u64>, u64)>,
}

fn parse_to_batches(
    file: std::fs::File,
    name: &str,
    first_row: i64,
    cancel: &CancelToken,
    tx: &crossbeam_channel::Sender<Batch>,
) -> Result<(LoadStats, Lookup), Error> {
    let mut mids: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut batch = Batch {
        rows: Vec::with_capacity(BATCH_ROWS),
        new_mids: Vec::new(),
        bytes: 0,
    };
    // Reserved up front (a real row is over 100 bytes; untouched capacity costs no memory) so
    // the array is not copied while it grows.
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut lookup = Lookup {
        dir: Vec::with_capacity((size / 100).min(MAX_INDEX_ROWS) as usize),
        classes: Vec::new(),
    };
    let mut bad = 0u64;
    let mut refused = 0u64;
    let mut stopped = false;
    let mut stats = parse_segmentation_csv(file, name, cancel, &mut |row| {
        let Some(mut rec) = to_rec(row, &mut mids, &mut batch.new_mids) else {
            bad += 1;
            return Ok(());
        };
        if rec.rejected.is_some() {
            refused += 1;
        } else {
            if lookup.dir.len() as u64 >= MAX_INDEX_ROWS {
                return Err(Error::Format {
                    file: name.to_owned(),
                    message: format!(
                        "line {}: more than {MAX_INDEX_ROWS} masks; \
                         not an Open Images segmentation CSV",
                        row.line
                    ),
                });
            }
            rec.row = first_row + lookup.dir.len() as i64;
            lookup.dir.push((rec.image, rec.row));
            let class = rec.class as usize;
            if lookup.classes.len() <= class {
                lookup.classes.resize_with(class + 1, Default::default);
            }
            let (images, masks) = &mut lookup.classes[class];
            // Masks of one image are usually adjacent: skip the repeat here, dedup the rest
            // after sorting.
            if images.last() != Some(&rec.image) {
                images.push(rec.image);
            }
            *masks += 1;
        }
        batch.rows.push(rec);
        if batch.rows.len() >= BATCH_ROWS {
            let full = std::mem::replace(
                &mut batch,
                Batch {
                    rows: Vec::with_capacity(BATCH_ROWS),
                    new_mids: Vec::new(),
                    bytes: 0,
                },
            );
            let full = Batch {
                bytes: row.line_end,
                ..full
            };
            if tx.send(full).is_err() {
                stopped = true;
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    })?;
    if stopped {
        return Err(Error::Cancelled);
    }
    batch.bytes = stats.bytes;
    tx.send(batch).map_err(|_| Error::Cancelled)?;
    // Sorted here, while the writer is still storing the last batches.
    lookup.dir.sort_unstable();
    for (images, _) in &mut lookup.classes {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        images.sort_unstable();
        images.dedup();
    }
    stats.bad_rows += bad;
    stats.rows -= bad.min(stats.rows);
    stats.unsafe_mask_paths = refused;
    stats.rows -= refused.min(stats.rows);
    Ok((stats, lookup))
}

/// A finite number (NaN and infinities would reach SQLite as NULL and break later reads).
fn parse_f64(b: &[u8]) -> Option<f64> {
    if let Some(v) = parse_plain_decimal(b) {
        return Some(v);
    }
    std::str::from_utf8(b)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
}

/// `digits[.digits]` with at most 15 significant digits (every coordinate of the real files),
/// exactly as `str::parse` gives it: the digits as an integer and the power of ten are both
/// exact doubles, and one IEEE division rounds correctly (Clinger's fast path). `None` for
/// anything else, which takes the general parser.
fn parse_plain_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut mantissa = 0u64;
    let mut digits = 0usize;
    let mut point: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
            }
            b'.' if point.is_none() && i > 0 => point = Some(digits),
            _ => return None,
        }
    }
    let scale = digits - point.unwrap_or(digits);
    if digits > 15 || point == Some(digits) {
        return None; // too many digits for the fast path, or "1." (general parser decides)
    }
    Some(mantissa as f64 / POW10[scale])
}

fn to_rec(
    row: &SegmentationRow<'_>,
    mids: &mut HashMap<Vec<u8>, u32>,
    new: &mut Vec<String>,
) -> Option<Rec> {
    let image = parse_image_id(row.image_id)?;
    if row.label.is_empty() || row.box_id.len() > 8 {
        return None;
    }
    let box_id = parse_hex(row.box_id)? as u32;
    let class = match mids.get(row.label) {
        Some(&c) => c,
        None => {
            let c = mids.len() as u32;
            mids.insert(row.label.to_vec(), c);
            new.push(String::from_utf8_lossy(row.label).into_owned());
            c
        }
    };
    let mut bbox = [0f64; 4];
    for (o, f) in bbox.iter_mut().zip(row.bbox) {
        *o = parse_f64(f)?;
    }
    let iou = if row.predicted_iou.is_empty() {
        None
    } else {
        parse_f64(row.predicted_iou)
    };
    let canonical = is_canonical_mask_path(row);
    // A canonical name with a plain label passes check_mask_name by construction (16 + 8
    // lower-case hex digits parsed above, `[A-Za-z0-9_]+` label, `.png`, at most 255 bytes);
    // everything else gets the full check.
    let plain = canonical
        && row.mask_path.len() <= crate::dataset::paths::MAX_FILE_NAME_BYTES
        && row
            .label
            .iter()
            .all(|&b| b == b'/' || b == b'_' || b.is_ascii_alphanumeric())
        && row.label.iter().any(|&b| b != b'/');
    let rejected = match std::str::from_utf8(row.mask_path) {
        _ if plain => None, // ASCII by construction
        Ok(p) => super::check_mask_name(p).err(),
        Err(_) => Some(format!(
            "MaskPath \"{}\" is not UTF-8",
            super::shown_mask_path(row.mask_path)
        )),
    };
    if let Some(reason) = rejected {
        return Some(Rec {
            row: 0,
            image,
            class,
            box_id,
            bbox,
            iou,
            clicks_at: None,
            clicks_len: None,
            mask_path: Some(super::shown_mask_path(row.mask_path)),
            rejected: Some(reason),
        });
    }
    Some(Rec {
        row: 0,
        image,
        class,
        box_id,
        bbox,
        iou,
        clicks_at: (!row.clicks.is_empty() && row.clicks_offset > 0).then_some(row.clicks_offset),
        clicks_len: (!row.clicks.is_empty() && row.clicks_offset > 0)
            .then_some(row.clicks.len() as u32),
        mask_path: (!canonical).then(|| String::from_utf8_lossy(row.mask_path).into_owned()),
        rejected: None,
    })
}

/// Whether MaskPath is `{ImageID}_{label without '/'}_{BoxID}.png`, with the BoxID exactly as
/// the index will print it back (8 lower-case hex digits).
fn is_canonical_mask_path(row: &SegmentationRow<'_>) -> bool {
    let p = row.mask_path;
    let id = row.image_id;
    if row.box_id.len() != 8 || row.box_id.iter().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    if id.iter().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let label = row.label.iter().filter(|&&b| b != b'/');
    let expected_len = id.len() + 1 + label.clone().count() + 1 + row.box_id.len() + 4;
    if p.len() != expected_len {
        return false;
    }
    let mut it = p.iter();
    id.iter().all(|b| it.next() == Some(b))
        && it.next() == Some(&b'_')
        && label.clone().all(|b| it.next() == Some(b))
        && it.next() == Some(&b'_')
        && row.box_id.iter().all(|b| it.next() == Some(b))
        && it.as_slice() == b".png"
}

/// One row of a segmentation CSV, borrowed from the parser's buffer.
#[derive(Debug, Clone, Copy)]
pub struct SegmentationRow<'a> {
    /// MaskPath.
    pub mask_path: &'a [u8],
    /// ImageID.
    pub image_id: &'a [u8],
    /// LabelName (MID).
    pub label: &'a [u8],
    /// BoxID.
    pub box_id: &'a [u8],
    /// BoxXMin, BoxXMax, BoxYMin, BoxYMax as text.
    pub bbox: [&'a [u8]; 4],
    /// PredictedIoU as text (empty in validation/test).
    pub predicted_iou: &'a [u8],
    /// Clicks as text (empty in validation/test).
    pub clicks: &'a [u8],
    /// Byte offset of Clicks in the file (0 when it came through the quote-aware path).
    pub clicks_offset: u64,
    /// Byte offset just past this row's line.
    pub line_end: u64,
    /// 1-based line number (the header is line 1).
    pub line: u64,
}

/// Column positions, from the header.
struct Columns([usize; 10]);

impl Columns {
    fn from_header(fields: &[&[u8]], file: &str) -> Result<Self, Error> {
        let names = SEGMENTATION_HEADER.split(',').collect::<Vec<_>>();
        let mut cols = [0usize; 10];
        for (slot, want) in cols.iter_mut().zip(&names) {
            *slot = fields
                .iter()
                .position(|f| f == &want.as_bytes())
                .ok_or_else(|| Error::Format {
                    file: file.to_owned(),
                    message: format!(
                        "header lacks column {want:?} (expected {SEGMENTATION_HEADER:?}, got {:?})",
                        fields
                            .iter()
                            .map(|f| String::from_utf8_lossy(f))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                })?;
        }
        Ok(Self(cols))
    }
}

/// Splits one line on commas; quote-aware only when the line has a `"`. Returns false when it
/// has more than `out.len()` fields' worth of room.
fn split_fast<'a>(line: &'a [u8], out: &mut Vec<&'a [u8]>) {
    out.clear();
    let mut rest = line;
    while let Some(i) = find_byte(rest, b',') {
        out.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    out.push(rest);
}

/// First position of `needle` in `hay`, eight bytes at a time (the Clicks field and the
/// newline search are most of the file's bytes).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word) ^ pattern;
        // The lowest flagged byte is the first zero byte (borrows only flag bytes above it).
        let zero = v.wrapping_sub(LO) & !v & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|p| at + p)
}

/// RFC 4180 fields of one line (quotes removed, `""` unescaped).
fn split_quoted(line: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if in_quotes {
            if b == b'"' {
                if line.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            fields.push(std::mem::take(&mut cur));
        } else {
            cur.push(b);
        }
        i += 1;
    }
    fields.push(cur);
    fields
}

/// Stream-parses a segmentation CSV (header checked, columns found by name), calling `f` per
/// data row. Lines are split on raw bytes; only a line containing `"` goes through the
/// quote-aware path (quoted newlines are not supported; the real files have none). Memory is
/// one 4 MiB buffer.
pub fn parse_segmentation_csv<R: Read>(
    mut reader: R,
    name: &str,
    cancel: &CancelToken,
    f: &mut dyn FnMut(&SegmentationRow<'_>) -> Result<(), Error>,
) -> Result<LoadStats, Error> {
    let mut buf = vec![0u8; MAX_LINE_BYTES];
    let mut filled = 0usize;
    let mut base = 0u64; // file offset of buf[0]
    let mut stats = LoadStats::default();
    let mut cols: Option<Columns> = None;
    let mut eof = false;
    let mut line_no = 0u64; // lines before buf[0]
    while !eof {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if filled == buf.len() {
            // The buffer holds no newline at all: one line longer than the cap.
            return Err(Error::Format {
                file: name.to_owned(),
                message: format!(
                    "line {} (at byte {base}) is longer than {} MiB; not a segmentation CSV",
                    line_no + 1,
                    MAX_LINE_BYTES >> 20
                ),
            });
        }
        let n = loop {
            match reader.read(&mut buf[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(name)(e)),
            }
        };
        if n == 0 {
            eof = true;
            if filled > 0 && buf[filled - 1] != b'\n' {
                buf.truncate(filled);
                buf.push(b'\n'); // last line without newline
                filled += 1;
            }
        }
        filled += n;
        let data = &buf[..filled];
        let mut fields: Vec<&[u8]> = Vec::with_capacity(16);
        let mut start = 0usize;
        let mut consumed = 0usize;
        while let Some(rel) = find_byte(&data[start..], b'\n') {
            let end = start + rel;
            let mut line = &data[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line_off = base + start as u64;
            let next = end + 1;
            line_no += 1;
            if !line.is_empty() {
                match &cols {
                    None => {
                        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
                        split_fast(line, &mut fields);
                        cols = Some(Columns::from_header(&fields, name)?);
                    }
                    Some(c) => {
                        stats.rows += 1;
                        let line_end = base + next as u64;
                        if find_byte(line, b'"').is_some() {
                            stats.quoted_rows += 1;
                            let owned = split_quoted(line);
                            let get = |i: usize| owned.get(c.0[i]).map(|v| v.as_slice());
                            match row_from(get, 0, line_end, line_no) {
                                Some(row) => f(&row)?,
                                None => stats.bad_rows += 1,
                            }
                        } else {
                            split_fast(line, &mut fields);
                            let clicks_col = c.0[9];
                            let offset = if clicks_col < fields.len() {
                                line_off
                                    + (fields[clicks_col].as_ptr() as usize
                                        - line.as_ptr() as usize)
                                        as u64
                            } else {
                                0
                            };
                            let get = |i: usize| fields.get(c.0[i]).copied();
                            match row_from(get, offset, line_end, line_no) {
                                Some(row) => f(&row)?,
                                None => stats.bad_rows += 1,
                            }
                        }
                    }
                }
            }
            start = next;
            consumed = next;
        }
        buf.copy_within(consumed..filled, 0);
        base += consumed as u64;
        filled -= consumed;
    }
    stats.bytes = base + filled as u64;
    if cols.is_none() {
        return Err(Error::Format {
            file: name.to_owned(),
            message: "empty file (no header)".into(),
        });
    }
    stats.rows -= stats.bad_rows.min(stats.rows);
    Ok(stats)
}

fn row_from<'a>(
    get: impl Fn(usize) -> Option<&'a [u8]>,
    clicks_offset: u64,
    line_end: u64,
    line: u64,
) -> Option<SegmentationRow<'a>> {
    Some(SegmentationRow {
        mask_path: get(0)?,
        image_id: get(1)?,
        label: get(2)?,
        box_id: get(3)?,
        bbox: [get(4)?, get(5)?, get(6)?, get(7)?],
        predicted_iou: get(8).unwrap_or(b""),
        clicks: get(9).unwrap_or(b""),
        clicks_offset,
        line_end,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n\
677c122b0eaa5d16_m04yx4_9a041d52.png,677c122b0eaa5d16,/m/04yx4,9a041d52,0.8875,0.960938,0.454167,0.720833,0.86864,0.95498 0.65197 1;0.89370 0.56579 1\n\
05529ae018130c68_m09j2d_b1115fd0.png,05529ae018130c68,/m/09j2d,b1115fd0,0.086875,0.254375,0.504708,0.79096,,\r\n\
\"05529ae018130c68_mx_00000001.png\",05529ae018130c68,/m/09j2d,00000001,0.1,0.2,0.3,0.4,,\n\
bad,zz,/m/1,1,1,1,1,1,,\n\
96e7ee70b428a54e_m04yx4_05580497.png,96e7ee70b428a54e,/m/04yx4,05580497,0.45625,0.603125,0.222013,0.903104,0.5585,0.52271 0.46625 0";

    #[test]
    fn parses_rows_fast_and_quoted() {
        let mut rows = Vec::new();
        let stats = parse_segmentation_csv(
            SAMPLE.as_bytes(),
            "sample",
            &CancelToken::default(),
            &mut |r| {
                rows.push((
                    String::from_utf8_lossy(r.mask_path).into_owned(),
                    String::from_utf8_lossy(r.clicks).into_owned(),
                    r.clicks_offset,
                    is_canonical_mask_path(r),
                ));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(stats.rows, 5);
        assert_eq!(stats.quoted_rows, 1);
        assert_eq!(rows[0].1, "0.95498 0.65197 1;0.89370 0.56579 1");
        let off = rows[0].2 as usize;
        assert_eq!(&SAMPLE[off..off + rows[0].1.len()], rows[0].1);
        assert!(rows[0].3 && rows[1].3 && !rows[2].3);
        assert_eq!(rows[2].0, "05529ae018130c68_mx_00000001.png");
        assert_eq!(rows[4].1, "0.52271 0.46625 0");
    }

    #[test]
    fn small_reads_give_same_rows() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut offs = Vec::new();
        parse_segmentation_csv(
            Trickle(SAMPLE.as_bytes()),
            "s",
            &CancelToken::default(),
            &mut |r| {
                offs.push(r.clicks_offset);
                Ok(())
            },
        )
        .unwrap();
        let mut offs2 = Vec::new();
        parse_segmentation_csv(SAMPLE.as_bytes(), "s", &CancelToken::default(), &mut |r| {
            offs2.push(r.clicks_offset);
            Ok(())
        })
        .unwrap();
        assert_eq!(offs, offs2);
    }

    #[test]
    fn unsafe_mask_paths_are_refused_counted_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("v.csv");
        let rows = [
            "../../../../home/u/thesis.tex",
            "/home/u/abs.png",
            "05529ae018130c68_m09j2d_0000000a.png/../../x.png",
            ".05529ae018130c68_m09j2d_0000000b.png",
            "05529ae018130c68_m0..2d_0000000c.png",
            "\"05529ae018130c68_m09j2d_0000000d.png\0\"",
        ];
        let mut text = String::from(SEGMENTATION_HEADER);
        text.push('\n');
        text.push_str(
            "05529ae018130c68_m09j2d_b1115fd0.png,05529ae018130c68,/m/09j2d,b1115fd0,0.1,0.2,0.3,0.4,,\n",
        );
        for (i, p) in rows.iter().enumerate() {
            text.push_str(&format!(
                "{p},05529ae018130c68,/m/09j2d,0000000{i},0.1,0.2,0.3,0.4,,\n"
            ));
        }
        // Not finite: a malformed row, not a NULL in the index.
        text.push_str("05529ae018130c68_m09j2d_00000009.png,05529ae018130c68,/m/09j2d,00000009,NaN,0.2,0.3,inf,,\n");
        std::fs::write(&csv, text).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        let stats = index
            .load_segmentations(
                Split::Validation,
                &csv,
                "u",
                None,
                &CancelToken::default(),
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(stats.rows, 1);
        assert_eq!(stats.unsafe_mask_paths, rows.len() as u64);
        assert_eq!(stats.bad_rows, 1);
        let masks = index
            .image_masks(Split::Validation, 0x05529ae018130c68)
            .unwrap();
        assert_eq!(masks.len(), 1);
        assert_eq!(masks[0].mask_path, "05529ae018130c68_m09j2d_b1115fd0.png");
        let refused = index
            .rejected_masks(Split::Validation, 0x05529ae018130c68)
            .unwrap();
        assert_eq!(refused.len(), rows.len());
        assert_eq!(refused[0].1, "../../../../home/u/thesis.tex");
        assert_eq!(refused[5].1, "05529ae018130c68_m09j2d_0000000d.png\\0");
        assert!(refused.iter().all(|r| r.2.contains("MaskPath")));
    }

    #[test]
    fn a_line_longer_than_the_cap_is_an_error_not_a_bigger_buffer() {
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (buf.len() as u64).min(self.0) as usize;
                buf[..n].fill(b'a');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let mut data = SEGMENTATION_HEADER.as_bytes().to_vec();
        data.push(b'\n');
        let reader = data.as_slice().chain(Endless(3 * MAX_LINE_BYTES as u64));
        let err = parse_segmentation_csv(reader, "long", &CancelToken::default(), &mut |_| Ok(()));
        assert!(
            matches!(&err, Err(Error::Format { message, .. }) if message.contains("longer than")),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_wrong_header() {
        let err = parse_segmentation_csv(
            &b"a,b\n1,2\n"[..],
            "x",
            &CancelToken::default(),
            &mut |_| Ok(()),
        );
        assert!(matches!(err, Err(Error::Format { .. })));
    }

    #[test]
    fn indexes_and_queries() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("v.csv");
        std::fs::write(&csv, SAMPLE).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        let stats = index
            .load_segmentations(
                Split::Validation,
                &csv,
                "u",
                None,
                &CancelToken::default(),
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(stats.rows, 4);
        assert_eq!(stats.bad_rows, 1);
        let person = Index::class_id(index.conn(), "/m/04yx4").unwrap();
        let mut imgs = index.class_images(Split::Validation, person).unwrap();
        imgs.sort();
        assert_eq!(imgs, vec![0x677c122b0eaa5d16, 0x96e7ee70b428a54e]);
        let masks = index
            .image_masks(Split::Validation, 0x05529ae018130c68)
            .unwrap();
        assert_eq!(masks.len(), 2);
        assert_eq!(masks[0].mask_path, "05529ae018130c68_mx_00000001.png");
        assert_eq!(masks[1].mask_path, "05529ae018130c68_m09j2d_b1115fd0.png");
        let m = &index
            .image_masks(Split::Validation, 0x677c122b0eaa5d16)
            .unwrap()[0];
        let (at, len) = m.clicks.unwrap();
        assert_eq!(
            read_clicks(&csv, at, len).unwrap(),
            "0.95498 0.65197 1;0.89370 0.56579 1"
        );
        assert_eq!(index.counts(Split::Validation).unwrap()[&person], (2, 2));
        assert!(index.is_indexed(Split::Validation).unwrap());
    }

    #[test]
    fn find_byte_matches_position() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..70 {
            for _ in 0..20 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        [b',', b'a', b'\n', 0x80, 0xff, b'"', 0][(x % 7) as usize]
                    })
                    .collect();
                for needle in [b',', b'\n', b'"', 0x80, 0xff, 0] {
                    assert_eq!(
                        find_byte(&hay, needle),
                        hay.iter().position(|&b| b == needle),
                        "{hay:?} {needle}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_plain_fast_path_agrees_with_check_mask_name() {
        let id = "05529ae018130c68";
        for (label, path) in [
            ("/m/09j2d", format!("{id}_m09j2d_b1115fd0.png")),
            ("/m/0_9", format!("{id}_m0_9_b1115fd0.png")),
            ("/m/0.9", format!("{id}_m0.9_b1115fd0.png")),
            ("/m/0:9", format!("{id}_m0:9_b1115fd0.png")),
            ("///", format!("{id}__b1115fd0.png")),
            ("/m/é", format!("{id}_mé_b1115fd0.png")),
            (
                &"x".repeat(300),
                format!("{id}_{}_b1115fd0.png", "x".repeat(300)),
            ),
        ] {
            let line = format!("{path},{id},{label},b1115fd0,0.1,0.2,0.3,0.4,,\n");
            let text = format!("{SEGMENTATION_HEADER}\n{line}");
            let mut mids = HashMap::new();
            let mut got = None;
            parse_segmentation_csv(text.as_bytes(), "t", &CancelToken::default(), &mut |r| {
                got = to_rec(r, &mut mids, &mut Vec::new()).map(|r| r.rejected.is_none());
                Ok(())
            })
            .unwrap();
            assert_eq!(
                got,
                Some(super::super::check_mask_name(&path).is_ok()),
                "{path}"
            );
        }
    }

    /// (image, mid, BoxID, bbox, iou, mask path) of one accepted row.
    type Row = (u64, String, u32, [f64; 4], Option<f64>, String);

    /// A CSV and what each query must answer, worked out independently of the index.
    struct Expected {
        text: String,
        /// (image, mid, BoxID, bbox, iou, mask path) of accepted rows, in file order.
        rows: Vec<Row>,
        /// (image, shown MaskPath) of refused rows.
        refused: Vec<(u64, String)>,
        bad: u64,
    }

    fn generated(n: u64, images: u64, seed: u64) -> Expected {
        let mids = ["/m/04yx4", "/m/09j2d", "/m/0k4j", "/m/01g317", "/m/0cmf2"];
        let mut text = format!("{SEGMENTATION_HEADER}\n");
        let mut rows = Vec::new();
        let mut refused = Vec::new();
        let mut bad = 0;
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..n {
            let h = next();
            // Few distinct images, so one image's masks are spread over the file and over
            // several image_dir blocks; the top bit set on some to test the unsigned order.
            let image = (h % images).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((h >> 40) & 1) << 63;
            let mid = mids[(h >> 8) as usize % mids.len()];
            let box_id = (h >> 16) as u32 & 0xff; // repeats: ties in (class, box)
            let bbox = [0.125, 0.5 + (i % 7) as f64 / 100.0, 0.25, 0.875];
            let iou = (i % 3 != 0).then_some(0.75);
            let iou_text = iou.map_or(String::new(), |v| v.to_string());
            let canonical = format!("{image:016x}_{}_{box_id:08x}.png", mid.replace('/', ""));
            let (path, kind) = match i % 97 {
                5 => ("../evil.png".to_string(), 1),
                6 => (format!("{image:016x}_other_{box_id:08x}.png"), 0),
                7 => (canonical.clone(), 2),
                _ => (canonical.clone(), 0),
            };
            if kind == 2 {
                text.push_str(&format!(
                    "{path},{image:016x},{mid},{box_id:08x},x,1,1,1,,\n"
                ));
                bad += 1;
                continue;
            }
            text.push_str(&format!(
                "{path},{image:016x},{mid},{box_id:08x},{},{},{},{},{iou_text},0.1 0.2 1\n",
                bbox[0], bbox[1], bbox[2], bbox[3]
            ));
            if kind == 1 {
                refused.push((image, path));
            } else {
                rows.push((image, mid.to_string(), box_id, bbox, iou, path));
            }
        }
        Expected {
            text,
            rows,
            refused,
            bad,
        }
    }

    fn load(index: &mut Index, split: Split, csv: &Path) -> LoadStats {
        index
            .load_segmentations(
                split,
                csv,
                "u",
                None,
                &CancelToken::default(),
                &mut |_, _| {},
            )
            .unwrap()
    }

    fn check_answers(index: &Index, split: Split, e: &Expected) {
        let class = |mid: &str| Index::class_id(index.conn(), mid).unwrap();
        let mut per_class: HashMap<i64, (std::collections::BTreeSet<u64>, u64)> = HashMap::new();
        let mut per_image: HashMap<u64, Vec<(i64, u32, usize)>> = HashMap::new();
        for (i, (image, mid, box_id, ..)) in e.rows.iter().enumerate() {
            let c = class(mid);
            let entry = per_class.entry(c).or_default();
            entry.0.insert(*image);
            entry.1 += 1;
            per_image.entry(*image).or_default().push((c, *box_id, i));
        }
        let counts = index.counts(split).unwrap();
        assert_eq!(counts.len(), per_class.len());
        for (c, (images, masks)) in &per_class {
            assert_eq!(counts[c], (images.len() as u64, *masks), "class {c}");
            let got = index.class_images(split, *c).unwrap();
            assert_eq!(got, images.iter().copied().collect::<Vec<_>>(), "class {c}");
        }
        assert!(index.class_images(split, 999_999).unwrap().is_empty());
        for (image, mut want) in per_image {
            want.sort_by_key(|&(c, b, i)| (c, b, i));
            let got = index.image_masks(split, image).unwrap();
            assert_eq!(got.len(), want.len(), "image {image:016x}");
            for (m, &(c, b, i)) in got.iter().zip(&want) {
                let (_, _, _, bbox, iou, path) = &e.rows[i];
                assert_eq!((m.image, m.class), (image, c));
                assert_eq!(m.box_id, format!("{b:08x}"));
                assert_eq!((&m.bbox, &m.predicted_iou, &m.mask_path), (bbox, iou, path));
                assert!(m.clicks.is_some());
            }
            assert!(
                index
                    .image_masks(split, image ^ 1)
                    .unwrap()
                    .iter()
                    .all(|m| m.image == image ^ 1)
            );
        }
        let mut refused: HashMap<u64, Vec<String>> = HashMap::new();
        for (image, path) in &e.refused {
            refused.entry(*image).or_default().push(path.clone());
        }
        for (image, paths) in refused {
            let got = index.rejected_masks(split, image).unwrap();
            assert_eq!(got.iter().map(|r| r.1.clone()).collect::<Vec<_>>(), paths);
        }
    }

    #[test]
    fn answers_match_an_independent_model_across_blocks_splits_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let train = generated(30_000, 700, 7);
        let val = generated(3_000, 5_000, 11);
        let (train_csv, val_csv) = (dir.path().join("t.csv"), dir.path().join("v.csv"));
        std::fs::write(&train_csv, &train.text).unwrap();
        std::fs::write(&val_csv, &val.text).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        let stats = load(&mut index, Split::Validation, &val_csv);
        assert_eq!(stats.rows, val.rows.len() as u64);
        assert_eq!(stats.unsafe_mask_paths, val.refused.len() as u64);
        assert_eq!(stats.bad_rows, val.bad);
        let stats = load(&mut index, Split::Train, &train_csv);
        assert_eq!(stats.rows, train.rows.len() as u64);
        assert!(
            index
                .conn()
                .query_row("SELECT COUNT(*) FROM image_dir WHERE split = 0", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
                > 3,
            "several image_dir blocks"
        );
        check_answers(&index, Split::Train, &train);
        check_answers(&index, Split::Validation, &val);
        // Reloading one split replaces it and leaves the other alone (and survives reopening).
        load(&mut index, Split::Validation, &val_csv);
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        check_answers(&index, Split::Train, &train);
        check_answers(&index, Split::Validation, &val);
        let n: i64 = index
            .conn()
            .query_row("SELECT COUNT(*) FROM masks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, train.rows.len() + val.rows.len());
        assert!(
            index
                .image_masks(Split::Test, train.rows[0].0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_interrupted_build_leaves_the_previous_state_and_is_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let small = generated(500, 50, 3);
        let big = generated(60_000, 900, 5);
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&a, &small.text).unwrap();
        std::fs::write(&b, &big.text).unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        load(&mut index, Split::Train, &a);
        let cancel = CancelToken::default();
        let err = index.load_segmentations(Split::Train, &b, "u2", None, &cancel, &mut |_, _| {
            cancel.cancel()
        });
        assert!(matches!(err, Err(Error::Cancelled)), "{err:?}");
        check_answers(&index, Split::Train, &small);
        assert!(index.is_indexed(Split::Train).unwrap());
        // A fresh split cancelled: not indexed, nothing of it kept.
        let err = index.load_segmentations(Split::Test, &b, "u3", None, &cancel, &mut |_, _| {});
        assert!(matches!(err, Err(Error::Cancelled)), "{err:?}");
        assert!(!index.is_indexed(Split::Test).unwrap());
        assert!(index.counts(Split::Test).unwrap().is_empty());
    }

    #[test]
    fn an_index_of_the_old_schema_is_rebuilt_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        {
            // Version 1 (user_version 0): masks with SQL indexes, a split marked indexed.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE files (key TEXT PRIMARY KEY, url TEXT NOT NULL, size INTEGER NOT NULL,
                     etag TEXT, indexed_at TEXT NOT NULL DEFAULT 'x');
                 CREATE TABLE classes (id INTEGER PRIMARY KEY, mid TEXT NOT NULL UNIQUE, name TEXT,
                     segmentable INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE masks (split INTEGER NOT NULL, image INTEGER NOT NULL,
                     class INTEGER NOT NULL, box INTEGER NOT NULL, xmin REAL, xmax REAL, ymin REAL,
                     ymax REAL, iou REAL, clicks_at INTEGER, clicks_len INTEGER, mask_path TEXT);
                 CREATE INDEX masks_class ON masks(split, class, image);
                 CREATE INDEX masks_image ON masks(split, image);
                 CREATE TABLE counts (split INTEGER NOT NULL, class INTEGER NOT NULL,
                     images INTEGER NOT NULL, masks INTEGER NOT NULL, PRIMARY KEY (split, class))
                     WITHOUT ROWID;
                 INSERT INTO classes (id, mid, name) VALUES (7, '/m/04yx4', 'Person');
                 INSERT INTO masks VALUES (1, 5, 7, 1, 0, 1, 0, 1, NULL, NULL, NULL, NULL);
                 INSERT INTO counts VALUES (1, 7, 1, 1);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO files (key, url, size) VALUES (?1, 'u', 1)",
                [Split::Validation.segmentation_csv()],
            )
            .unwrap();
        }
        let mut index = Index::open(dir.path()).unwrap();
        assert!(!index.is_indexed(Split::Validation).unwrap());
        assert!(index.counts(Split::Validation).unwrap().is_empty());
        // The catalogue survives, with its ids.
        assert_eq!(Index::class_id(index.conn(), "/m/04yx4").unwrap(), 7);
        let version: i64 = index
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, INDEX_SCHEMA_VERSION);
        let csv = dir.path().join("v.csv");
        std::fs::write(&csv, SAMPLE).unwrap();
        load(&mut index, Split::Validation, &csv);
        assert_eq!(index.counts(Split::Validation).unwrap()[&7], (2, 2));
    }

    #[test]
    fn the_decimal_fast_path_gives_what_str_parse_gives() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases: Vec<String> = [
            "0",
            "1",
            "0.5",
            "0.8875",
            "0.960938",
            "1.0",
            "0.000001",
            "999999999999999",
            "0.123456789012345",
            "1.",
            ".5",
            "-0.5",
            "1e5",
            "0.1234567890123456",
            "00.10",
            "",
            " 0.5",
            "0.5 ",
            "1.2.3",
            "nan",
            "inf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..200_000 {
            let v = next();
            let int = v % 1000;
            let frac_digits = (v >> 10) as usize % 15;
            let frac = (v >> 20) % 10u64.pow(frac_digits as u32);
            cases.push(if frac_digits == 0 {
                format!("{int}")
            } else {
                format!("{int}.{frac:0frac_digits$}")
            });
        }
        for c in cases {
            let want = std::str::from_utf8(c.as_bytes())
                .ok()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite());
            if let Some(fast) = parse_plain_decimal(c.as_bytes()) {
                assert_eq!(Some(fast.to_bits()), want.map(f64::to_bits), "{c:?}");
            }
            assert_eq!(
                parse_f64(c.as_bytes()).map(f64::to_bits),
                want.map(f64::to_bits),
                "{c:?}"
            );
        }
    }
}
