//! The cache index (`<cache>/index.sqlite`): the class catalogue and hierarchy, and one row per
//! mask of each indexed split, built by stream-parsing the segmentation CSV (never held in
//! memory: the train file is 770 MiB / 2.7 M rows). Image metadata (attribution, Rotation) is
//! added only for the ImageIDs a request selects.
//!
//! The Clicks column is not copied into SQLite (it is most of the CSV's bytes); the index keeps
//! its byte offset in the cached CSV and reads it back for the few masks that get imported.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::dataset::store::CancelToken;

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
/// Rows per batch sent from the parser thread to the SQLite writer.
const BATCH_ROWS: usize = 16_384;
/// Files larger than this drop and rebuild the mask indexes around the bulk insert.
const REBUILD_INDEX_BYTES: u64 = 32 << 20;

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
CREATE TABLE IF NOT EXISTS masks (
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
CREATE INDEX IF NOT EXISTS masks_class ON masks(split, class, image);
CREATE INDEX IF NOT EXISTS masks_image ON masks(split, image);
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
    /// Opens (creating) `<cache_dir>/index.sqlite`.
    pub fn open(cache_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(cache_dir).map_err(Error::io(cache_dir))?;
        let path = cache_dir.join(INDEX_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -32_768)?; // 32 MiB
        conn.execute_batch(SCHEMA)?;
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
    /// channel; everything is committed in one transaction, so an interrupted load leaves the
    /// previous state. `progress` gets (bytes parsed, rows).
    pub fn load_segmentations(
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
        let (tx, rx) = crossbeam_channel::bounded::<Batch>(4);
        let parse_cancel = cancel.clone();
        let file_name = csv.display().to_string();
        let parser = std::thread::Builder::new()
            .name("oi-csv-parse".into())
            .spawn(move || parse_to_batches(file, &file_name, &parse_cancel, &tx))
            .map_err(Error::io(csv))?;

        let code = split.code();
        let rebuild = size > REBUILD_INDEX_BYTES;
        let result = (|| -> Result<LoadStats, Error> {
            let tx = self.conn.transaction()?;
            tx.execute("DELETE FROM masks WHERE split = ?1", [code])?;
            tx.execute("DELETE FROM counts WHERE split = ?1", [code])?;
            tx.execute("DELETE FROM rejected_masks WHERE split = ?1", [code])?;
            tx.execute(
                "DELETE FROM files WHERE key = ?1",
                [split.segmentation_csv()],
            )?;
            if rebuild {
                tx.execute_batch(
                    "DROP INDEX IF EXISTS masks_class; DROP INDEX IF EXISTS masks_image;",
                )?;
            }
            let mut class_map: Vec<i64> = Vec::new();
            let mut rows = 0u64;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO masks (split, image, class, box, xmin, xmax, ymin, ymax, iou,
                                        clicks_at, clicks_len, mask_path)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
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
                    for r in &batch.rows {
                        if let Some(reason) = &r.rejected {
                            reject.execute(params![
                                code,
                                r.image as i64,
                                class_map[r.class as usize],
                                r.mask_path.as_deref().unwrap_or(""),
                                reason,
                            ])?;
                            continue;
                        }
                        insert.execute(params![
                            code,
                            r.image as i64,
                            class_map[r.class as usize],
                            i64::from(r.box_id),
                            r.bbox[0],
                            r.bbox[1],
                            r.bbox[2],
                            r.bbox[3],
                            r.iou,
                            r.clicks_at.map(|v| v as i64),
                            r.clicks_len.map(i64::from),
                            r.mask_path,
                        ])?;
                    }
                    rows += batch.rows.len() as u64;
                    progress(batch.bytes, rows);
                }
            }
            let stats = match parser.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Format {
                        file: url.into(),
                        message: "CSV parser thread panicked".into(),
                    });
                }
            };
            if rebuild {
                tx.execute_batch(
                    "CREATE INDEX IF NOT EXISTS masks_class ON masks(split, class, image);
                     CREATE INDEX IF NOT EXISTS masks_image ON masks(split, image);",
                )?;
            }
            tx.execute(
                "INSERT INTO counts (split, class, images, masks)
                 SELECT split, class, COUNT(DISTINCT image), COUNT(*) FROM masks
                 WHERE split = ?1 GROUP BY class",
                [code],
            )?;
            Index::set_file_record(&tx, &split.segmentation_csv(), url, size, etag)?;
            tx.commit()?;
            Ok(stats)
        })();
        if result.is_err() {
            // Unblock and stop the parser before returning.
            cancel_drain(rx);
        }
        result
    }

    /// Distinct images of a class in a split.
    pub(crate) fn class_images(&self, split: Split, class: i64) -> Result<Vec<u64>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT image FROM masks WHERE split = ?1 AND class = ?2")?;
        let rows = stmt.query_map(params![split.code(), class], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r? as u64);
        }
        Ok(out)
    }

    /// All masks of one image in a split, ordered by class then BoxID.
    pub(crate) fn image_masks(&self, split: Split, image: u64) -> Result<Vec<MaskRow>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.class, m.box, m.xmin, m.xmax, m.ymin, m.ymax, m.iou, m.clicks_at,
                    m.clicks_len, m.mask_path, c.mid
             FROM masks m JOIN classes c ON c.id = m.class
             WHERE m.split = ?1 AND m.image = ?2 ORDER BY m.class, m.box",
        )?;
        let rows = stmt.query_map(params![split.code(), image as i64], |r| {
            let box_id = format!("{:08x}", r.get::<_, i64>(1)?);
            let mid: String = r.get(10)?;
            let mask_path: Option<String> = r.get(9)?;
            let at: Option<i64> = r.get(7)?;
            let len: Option<i64> = r.get(8)?;
            Ok(MaskRow {
                image,
                class: r.get(0)?,
                mask_path: mask_path.unwrap_or_else(|| super::mask_file_name(image, &mid, &box_id)),
                box_id,
                bbox: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                predicted_iou: r.get(6)?,
                clicks: at.zip(len).map(|(a, l)| (a as u64, l as u64)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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

fn parse_to_batches(
    file: std::fs::File,
    name: &str,
    cancel: &CancelToken,
    tx: &crossbeam_channel::Sender<Batch>,
) -> Result<LoadStats, Error> {
    let mut mids: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut batch = Batch {
        rows: Vec::with_capacity(BATCH_ROWS),
        new_mids: Vec::new(),
        bytes: 0,
    };
    let mut bad = 0u64;
    let mut refused = 0u64;
    let mut stopped = false;
    let mut stats = parse_segmentation_csv(file, name, cancel, &mut |row| {
        let Some(rec) = to_rec(row, &mut mids, &mut batch.new_mids) else {
            bad += 1;
            return Ok(());
        };
        if rec.rejected.is_some() {
            refused += 1;
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
    stats.bad_rows += bad;
    stats.rows -= bad.min(stats.rows);
    stats.unsafe_mask_paths = refused;
    stats.rows -= refused.min(stats.rows);
    Ok(stats)
}

/// A finite number (NaN and infinities would reach SQLite as NULL and break later reads).
fn parse_f64(b: &[u8]) -> Option<f64> {
    std::str::from_utf8(b)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
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
    let rejected = match std::str::from_utf8(row.mask_path) {
        Ok(p) => super::check_mask_name(p).err(),
        Err(_) => Some(format!(
            "MaskPath \"{}\" is not UTF-8",
            super::shown_mask_path(row.mask_path)
        )),
    };
    if let Some(reason) = rejected {
        return Some(Rec {
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
    let canonical = is_canonical_mask_path(row);
    Some(Rec {
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
    let mut start = 0;
    for (i, &b) in line.iter().enumerate() {
        if b == b',' {
            out.push(&line[start..i]);
            start = i + 1;
        }
    }
    out.push(&line[start..]);
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
    while !eof {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if filled == buf.len() {
            // The buffer holds no newline at all: one line longer than the cap.
            return Err(Error::Format {
                file: name.to_owned(),
                message: format!(
                    "line at byte {base} is longer than {} MiB; not a segmentation CSV",
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
        while let Some(rel) = data[start..].iter().position(|&b| b == b'\n') {
            let end = start + rel;
            let mut line = &data[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line_off = base + start as u64;
            let next = end + 1;
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
                        if line.contains(&b'"') {
                            stats.quoted_rows += 1;
                            let owned = split_quoted(line);
                            let get = |i: usize| owned.get(c.0[i]).map(|v| v.as_slice());
                            match row_from(get, 0, line_end) {
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
                            match row_from(get, offset, line_end) {
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
}
