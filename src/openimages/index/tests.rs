//! The index built from CSVs and queried back, against answers worked out without it.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::Connection;

use super::*;
use crate::cancel::CancelToken;

pub(super) const SAMPLE: &str = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n\
677c122b0eaa5d16_m04yx4_9a041d52.png,677c122b0eaa5d16,/m/04yx4,9a041d52,0.8875,0.960938,0.454167,0.720833,0.86864,0.95498 0.65197 1;0.89370 0.56579 1\n\
05529ae018130c68_m09j2d_b1115fd0.png,05529ae018130c68,/m/09j2d,b1115fd0,0.086875,0.254375,0.504708,0.79096,,\r\n\
\"05529ae018130c68_mx_00000001.png\",05529ae018130c68,/m/09j2d,00000001,0.1,0.2,0.3,0.4,,\n\
bad,zz,/m/1,1,1,1,1,1,,\n\
96e7ee70b428a54e_m04yx4_05580497.png,96e7ee70b428a54e,/m/04yx4,05580497,0.45625,0.603125,0.222013,0.903104,0.5585,0.52271 0.46625 0";

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
    let stats = load(&mut index, Split::Validation, &csv);
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
fn indexes_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("v.csv");
    std::fs::write(&csv, SAMPLE).unwrap();
    let mut index = Index::open(dir.path()).unwrap();
    let stats = load(&mut index, Split::Validation, &csv);
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
