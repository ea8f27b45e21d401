//! Indexing one split: the segmentation CSV is parsed on its own thread into batches of rows
//! and lookup arrays; the SQLite writer stores them in one transaction.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{OptionalExtension as _, params};

use crate::cancel::CancelToken;
use crate::openimages::{Error, Split, parse_hex, parse_image_id};

use super::parse::{SegmentationRow, is_canonical_mask_path, parse_f64, parse_segmentation_csv};
use super::{Index, LoadStats, dir_key};

/// Most masks one split may hold (the train file has 2.7 M): the in-memory lookup arrays cost
/// 24 bytes per mask, so a hostile file cannot grow them past ~400 MB.
pub const MAX_INDEX_ROWS: u64 = 16_000_000;
/// Rows per batch sent from the parser thread to the SQLite writer.
const BATCH_ROWS: usize = 16_384;
/// Mask rows per multi-row INSERT (11 parameters each).
const INSERT_ROWS: usize = 32;
/// Entries (16 bytes each) per `image_dir` block, at least; a block ends at an ImageID change.
const DIR_BLOCK: usize = 4096;

impl Index {
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
        Ok(p) => crate::openimages::check_mask_name(p).err(),
        Err(_) => Some(format!(
            "MaskPath \"{}\" is not UTF-8",
            crate::openimages::shown_mask_path(row.mask_path)
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
            mask_path: Some(crate::openimages::shown_mask_path(row.mask_path)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openimages::index::SEGMENTATION_HEADER;

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
                Some(crate::openimages::check_mask_name(&path).is_ok()),
                "{path}"
            );
        }
    }
}
