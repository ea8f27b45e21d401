//! The index's tables, and the migration from an index written under another schema version.

use rusqlite::Connection;

use crate::openimages::{Error, Split};

/// `PRAGMA user_version` of the index. 1 (stored as 0: never set) had SQL indexes on `masks`;
/// 2 has `image_dir` / `class_images` / `mask_ranges`. Any other value is rebuilt: the
/// per-split mask data is dropped and the splits re-indexed from their cached CSVs.
pub const INDEX_SCHEMA_VERSION: i64 = 2;

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

/// Creates the tables of [`INDEX_SCHEMA_VERSION`], first migrating an index of another
/// version (under an immediate transaction: another process may be migrating it too).
pub(super) fn prepare(conn: &mut Connection) -> Result<(), Error> {
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
    Ok(())
}
