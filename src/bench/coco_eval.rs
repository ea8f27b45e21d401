//! Benchmark (not a test): our COCO evaluation ([`crate::eval::coco_eval`]) against
//! pycocotools `COCOeval` on the same seeded synthetic files, side by side in one run.
//!
//! Run with `maskstudio bench coco-eval`. Python comes from [`crate::host::python`]
//! (`MASKSTUDIO_PYTHON`, else the torch venv, else `python3`); it needs `pycocotools` and
//! `numpy`. Without them only our numbers are printed. The run aborts if the 12 summary
//! numbers of the two sides differ by more than 1e-4 for either IoU type.
//!
//! Both sides are timed end to end from the files: JSON load, results load (`loadRes`),
//! `evaluate`, `accumulate` and `summarize`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::dataset::polygon;
use crate::eval::coco_eval::{EvalResult, IouType, STAT_NAMES, from_coco_json};
use crate::rng::SplitMix64;

/// Images in the workload.
const IMAGES: usize = 5_000;
/// Categories in the workload.
const CLASSES: i64 = 20;
/// Mean ground-truth objects per image (uniform in `0..=2*GT_PER_IMAGE`).
const GT_PER_IMAGE: usize = 10;
/// Mean detections per image (about two per object, plus false positives).
const DT_PER_IMAGE: usize = 30;
/// Image width.
const WIDTH: u32 = 640;
/// Image height.
const HEIGHT: u32 = 480;
/// Workload seed.
const SEED: u64 = 0x636f_636f_6576_616c;
/// Largest allowed difference of a summary number between the two sides.
const TOL: f64 = 1e-4;

/// Loads the files and evaluates bbox and segm with pycocotools; prints one JSON object.
const PY_SCRIPT: &str = r#"
import contextlib, io, json, sys, time
try:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except Exception as e:  # reported by the Rust side
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
out = {}
for iou_type in ("bbox", "segm"):
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(sys.argv[1])
        dt = gt.loadRes(sys.argv[2])
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out[iou_type] = {"seconds": time.perf_counter() - t, "stats": [float(s) for s in ev.stats]}
print(json.dumps(out))
"#;

/// Star-shaped polygon around `(cx, cy)`, coordinates rounded to 0.01.
fn star(rng: &mut SplitMix64, cx: f64, cy: f64, radius: f64) -> Vec<f64> {
    let n = 6 + rng.below(10);
    super::star_polygon(rng, n, (cx, cy), radius, 0.55)
}

/// Object radius: small, medium or large COCO objects in about 4:4:2.
fn radius(rng: &mut SplitMix64) -> f64 {
    match rng.below(10) {
        0..=3 => rng.uniform(3.0, 18.0),
        4..=7 => rng.uniform(18.0, 55.0),
        _ => rng.uniform(55.0, 160.0),
    }
}

/// COCO segmentation JSON of a polygon, rasterised like pycocotools.
fn segm(poly: &[f64]) -> (Value, u64, [f64; 4]) {
    let rle = polygon::polygon_to_rle(poly, HEIGHT, WIDTH);
    let value = json!({ "size": [HEIGHT, WIDTH], "counts": rle.to_compressed() });
    (value, rle.area(), rle.to_bbox())
}

/// The seeded ground truth and results (bbox + RLE segmentation, like a Mask R-CNN).
fn workload() -> (Value, Value) {
    let mut rng = SplitMix64::new(SEED);
    let mut images = Vec::with_capacity(IMAGES);
    let mut anns = Vec::new();
    let mut results = Vec::new();
    let (w, h) = (f64::from(WIDTH), f64::from(HEIGHT));
    for img in 0..IMAGES {
        let image_id = img as i64 + 1;
        images.push(json!({ "id": image_id, "height": HEIGHT, "width": WIDTH }));
        let n_gt = rng.below(2 * GT_PER_IMAGE + 1);
        let mut n_dt = 0usize;
        for _ in 0..n_gt {
            let cat = 1 + rng.below(CLASSES as usize) as i64;
            let (cx, cy, r) = (rng.uniform(0.0, w), rng.uniform(0.0, h), radius(&mut rng));
            let poly = star(&mut rng, cx, cy, r);
            let (seg, area, bbox) = segm(&poly);
            if area == 0 {
                continue;
            }
            let iscrowd = rng.below(50) == 0;
            anns.push(json!({
                "id": anns.len() + 1, "image_id": image_id, "category_id": cat,
                "iscrowd": i32::from(iscrowd), "area": area as f64, "bbox": bbox, "segmentation": seg,
            }));
            for _ in 0..rng.below(4) {
                let sd = r * [0.03, 0.08, 0.2][rng.below(3)];
                let (dx, dy) = (rng.uniform(-sd, sd), rng.uniform(-sd, sd));
                let scale = rng.uniform(0.85, 1.15);
                let moved = star(&mut rng, cx + dx, cy + dy, r * scale);
                let c = if rng.below(10) == 0 {
                    1 + rng.below(CLASSES as usize) as i64
                } else {
                    cat
                };
                push_det(&mut rng, &mut results, (image_id, c), &moved, (0.3, 1.0));
                n_dt += 1;
            }
        }
        while n_dt < DT_PER_IMAGE + rng.below(5) {
            let cat = 1 + rng.below(CLASSES as usize) as i64;
            let (cx, cy, r) = (rng.uniform(0.0, w), rng.uniform(0.0, h), radius(&mut rng));
            let poly = star(&mut rng, cx, cy, r);
            push_det(&mut rng, &mut results, (image_id, cat), &poly, (0.05, 0.7));
            n_dt += 1;
        }
    }
    let categories: Vec<Value> = (1..=CLASSES)
        .map(|c| json!({ "id": c, "name": format!("class{c}") }))
        .collect();
    let gt = json!({ "images": images, "annotations": anns, "categories": categories });
    (gt, Value::Array(results))
}

/// One detection with its mask, a box close to the mask's box and a score in `scores`.
fn push_det(
    rng: &mut SplitMix64,
    out: &mut Vec<Value>,
    (image_id, cat): (i64, i64),
    poly: &[f64],
    scores: (f64, f64),
) {
    let (seg, area, b) = segm(poly);
    if area == 0 {
        return;
    }
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let bbox = [
        round(b[0] + rng.uniform(-1.0, 1.0)),
        round(b[1] + rng.uniform(-1.0, 1.0)),
        round((b[2] + rng.uniform(-1.5, 1.5)).max(1.0)),
        round((b[3] + rng.uniform(-1.5, 1.5)).max(1.0)),
    ];
    // Three decimals: ties happen, as with real detectors' rounded scores.
    let score = (rng.uniform(scores.0, scores.1) * 1000.0).round() / 1000.0;
    out.push(json!({
        "image_id": image_id, "category_id": cat, "score": score, "bbox": bbox, "segmentation": seg,
    }));
}

/// Our side, end to end from the files; also the time without reading and parsing JSON.
fn run_ours(
    gt_path: &std::path::Path,
    dt_path: &std::path::Path,
    iou: IouType,
) -> anyhow::Result<(Duration, Duration, EvalResult)> {
    let t = Instant::now();
    let gt: Value =
        serde_json::from_slice(&std::fs::read(gt_path)?).context("ground truth JSON")?;
    let dt: Value = serde_json::from_slice(&std::fs::read(dt_path)?).context("results JSON")?;
    let t_eval = Instant::now();
    let r = from_coco_json(&gt, &dt, iou)?;
    Ok((t.elapsed(), t_eval.elapsed(), r))
}

/// Runs the pycocotools side; `Err` says why there are no Python numbers.
fn run_python(
    gt_path: &std::path::Path,
    dt_path: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Value, String> {
    super::run_reference_script(dir, PY_SCRIPT, &[gt_path.as_os_str(), dt_path.as_os_str()])
}

/// Runs the benchmark and prints the table.
pub fn run() -> anyhow::Result<()> {
    let t = Instant::now();
    let (gt, results) = workload();
    let n_gt = gt["annotations"].as_array().map_or(0, Vec::len);
    let n_dt = results.as_array().map_or(0, Vec::len);
    let dir = tempfile::tempdir().context("temp dir")?;
    let gt_path = dir.path().join("gt.json");
    let dt_path = dir.path().join("results.json");
    std::fs::write(&gt_path, gt.to_string()).context("write ground truth")?;
    std::fs::write(&dt_path, results.to_string()).context("write results")?;
    drop((gt, results));
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / 1e6;
    println!(
        "workload: {IMAGES} images {WIDTH}x{HEIGHT}, {CLASSES} classes, {n_gt} ground truths, \
         {n_dt} detections (bbox + RLE mask), files {:.0} + {:.0} MB, generated in {:.1} s",
        size(&gt_path),
        size(&dt_path),
        t.elapsed().as_secs_f64()
    );

    let mut ours = Vec::new();
    for iou in [IouType::Bbox, IouType::Segm] {
        ours.push((iou, run_ours(&gt_path, &dt_path, iou)?));
    }
    println!("running pycocotools (this takes a while) ...");
    let py = run_python(&gt_path, &dt_path, dir.path());

    println!();
    println!(
        "{:<6} {:>10} {:>16} {:>16} {:>8}   {:>8} {:>8}",
        "iou", "ours (s)", "ours w/o JSON (s)", "pycocotools (s)", "ratio", "AP", "AR100"
    );
    for (iou, (secs, eval_secs, r)) in &ours {
        let theirs = py.as_ref().ok().map(|v| &v[iou.name()]);
        if let Some(theirs) = theirs {
            let stats: Vec<f64> = theirs["stats"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            if stats.len() != 12 {
                bail!(
                    "pycocotools returned {} {} stats, not 12",
                    stats.len(),
                    iou.name()
                );
            }
            for (i, (a, b)) in r.stats.iter().zip(&stats).enumerate() {
                if (a - b).abs() > TOL {
                    bail!(
                        "MISMATCH: {} {}: ours {a} pycocotools {b}",
                        iou.name(),
                        STAT_NAMES[i]
                    );
                }
            }
        }
        match theirs.and_then(|v| v["seconds"].as_f64()) {
            Some(py_secs) => println!(
                "{:<6} {:>10.2} {:>16.2} {:>16.2} {:>7.1}x   {:>8.4} {:>8.4}",
                iou.name(),
                secs.as_secs_f64(),
                eval_secs.as_secs_f64(),
                py_secs,
                py_secs / secs.as_secs_f64(),
                r.stats[0],
                r.stats[8]
            ),
            None => println!(
                "{:<6} {:>10.2} {:>16.2} {:>16} {:>8}   {:>8.4} {:>8.4}",
                iou.name(),
                secs.as_secs_f64(),
                eval_secs.as_secs_f64(),
                "-",
                "-",
                r.stats[0],
                r.stats[8]
            ),
        }
    }
    match py {
        Ok(_) => println!(
            "\ncheck: all 12 summary numbers within {TOL:e} of pycocotools for bbox and segm\n\
             ratio = pycocotools time / ours (higher is faster); both sides timed from the \
             files (JSON load, loadRes, evaluate, accumulate, summarize); \
             \"w/o JSON\" is ours after reading and parsing the files"
        ),
        Err(why) => println!("\npycocotools numbers missing: {why}"),
    }
    Ok(())
}
