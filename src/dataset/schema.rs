//! SQLite schema of a project and its migrations (`PRAGMA user_version` = number applied).

use rusqlite::Connection;

/// Each entry upgrades the schema by one version; never edit an entry once released, append.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE classes (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        mid         TEXT,                          -- Open Images MID, e.g. /m/01b9xk
        color       TEXT NOT NULL                  -- '#rrggbb'
    );
    CREATE TABLE images (
        id            INTEGER PRIMARY KEY,
        path          TEXT NOT NULL UNIQUE,        -- relative to images/, forward slashes
        width         INTEGER NOT NULL CHECK (width > 0),
        height        INTEGER NOT NULL CHECK (height > 0),
        sha256        TEXT NOT NULL,
        split         TEXT CHECK (split IN ('train', 'validation', 'test')),
        source        TEXT NOT NULL,               -- format and dataset file, e.g. coco:annotations.json
        source_file   TEXT,                        -- absolute path of the file it was imported from
        author        TEXT,
        license       TEXT,
        original_url  TEXT,
        title         TEXT,
        review_status TEXT NOT NULL DEFAULT 'unreviewed'
                      CHECK (review_status IN ('unreviewed', 'accepted', 'fixed', 'rejected')),
        created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX images_sha256 ON images(sha256, source_file);
    CREATE TABLE instances (
        id                INTEGER PRIMARY KEY,
        image_id          INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        class_id          INTEGER NOT NULL REFERENCES classes(id),
        bbox_x            REAL NOT NULL,
        bbox_y            REAL NOT NULL,
        bbox_w            REAL NOT NULL,
        bbox_h            REAL NOT NULL,
        area              INTEGER NOT NULL,
        rle               TEXT NOT NULL,           -- COCO compressed RLE counts at image size
        iscrowd           INTEGER NOT NULL DEFAULT 0,
        origin            TEXT NOT NULL CHECK (origin IN ('openimages', 'import', 'model', 'manual')),
        provenance        TEXT,                    -- JSON (MID, BoxID, PredictedIoU, source file, ...)
        original_rle      TEXT,                    -- the mask before the first edit
        original_class_id INTEGER REFERENCES classes(id),
        edited            INTEGER NOT NULL DEFAULT 0,
        created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE INDEX instances_image ON instances(image_id);
    CREATE INDEX instances_class ON instances(class_id);
    CREATE TABLE edit_log (
        id          INTEGER PRIMARY KEY,
        image_id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        instance_id INTEGER,                       -- no FK: the instance may be deleted
        kind        TEXT NOT NULL,                 -- create | update | delete | status
        before      TEXT,                          -- JSON state before (NULL for create)
        after       TEXT,                          -- JSON state after (NULL for delete)
        undone      INTEGER NOT NULL DEFAULT 0,    -- undone entries form the redo stack
        created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE imports (
        id          INTEGER PRIMARY KEY,
        format      TEXT NOT NULL,
        source_path TEXT NOT NULL,
        images      INTEGER NOT NULL,
        instances   INTEGER NOT NULL,
        finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    "#,
    // 2: label-error audits (issue 18) and their findings, keyed by instance.
    r#"
    CREATE TABLE audits (
        id          INTEGER PRIMARY KEY,
        model       TEXT NOT NULL,                 -- the bundle path, or 'k-fold K× preset'
        mode        TEXT NOT NULL CHECK (mode IN ('model', 'kfold')),
        split       TEXT,
        params      TEXT NOT NULL,                 -- JSON: thresholds, folds, seed, ...
        images      INTEGER NOT NULL,              -- images audited
        created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
    CREATE TABLE audit_findings (
        id                 INTEGER PRIMARY KEY,
        audit_id           INTEGER NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
        image_id           INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        instance_id        INTEGER,                -- no FK: the instance may be deleted; NULL for missing
        kind               TEXT NOT NULL CHECK (kind IN ('missing', 'spurious', 'loose', 'swap')),
        score              REAL NOT NULL,
        image_score        REAL NOT NULL,
        reason             TEXT NOT NULL,
        suggested_class_id INTEGER REFERENCES classes(id),
        suggested_rle      TEXT,                   -- compressed RLE at image size
        audited_class_id   INTEGER,                -- the instance as audited: stale when it differs
        audited_rle        TEXT,                   -- (missing: a digest of the image's labels)
        status             TEXT NOT NULL DEFAULT 'open'
                           CHECK (status IN ('open', 'accepted', 'kept', 'deleted')),
        resolved_at        TEXT
    );
    CREATE INDEX audit_findings_image ON audit_findings(image_id);
    CREATE INDEX audit_findings_status ON audit_findings(status, image_score);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why a schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file was written by a newer Mask Studio.
    #[error(
        "project schema version {found} is newer than this Mask Studio understands ({SCHEMA_VERSION}); update Mask Studio"
    )]
    TooNew {
        /// The version in the file.
        found: i64,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies the missing migrations, all in one transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        log::info!("project schema migrated to version {}", index + 1);
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
