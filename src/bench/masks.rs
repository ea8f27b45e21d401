//! Benchmark (not a test): our RLE encode / decode and polygon rasterisation against
//! pycocotools on the same seeded workload, side by side in one run.
//!
//! Run with `maskstudio bench masks` (or `cargo bench --bench masks`). Python comes from
//! [`crate::host::python`] (`MASKSTUDIO_PYTHON`, else the torch venv, else `python3`); it needs
//! `pycocotools` and `numpy`. Without them only our numbers are printed. The run aborts
//! if the two sides disagree on any RLE string of the workload.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::dataset::{Mask, Rle, polygon};
use crate::rng::SplitMix64;
use serde_json::{Value, json};

/// Masks in the workload.
const MASKS: usize = 200;
/// Image size of every mask (COCO's most common size).
const WIDTH: u32 = 640;
/// Image height of every mask.
const HEIGHT: u32 = 480;
/// Workload seed.
const SEED: u64 = 0x6d61_736b_7374_7564;
/// Timed repetitions per op; the best one is reported.
const REPEATS: usize = 7;

/// Times pycocotools on the workload the Rust side writes; prints one JSON object.
const PY_SCRIPT: &str = r#"
import json, sys, time
try:
    import numpy as np
    import pycocotools.mask as mu
except Exception as e:  # reported by the Rust side
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
with open(sys.argv[1]) as f:
    work = json.load(f)
repeats = int(sys.argv[2])
h, w = work["height"], work["width"]
items = work["masks"]

def best(fn):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return min(times), out

def polys():
    return [mu.merge(mu.frPyObjects(p, h, w)) for p in items]
t_poly, rles = best(polys)
def decode():
    return [mu.decode(r) for r in rles]
t_dec, masks = best(decode)
rows = [np.ascontiguousarray(m) for m in masks]  # row-major, like our Mask
def encode():
    return [mu.encode(np.asfortranarray(m)) for m in rows]
t_enc, enc = best(encode)
print(json.dumps({
    "polygon": t_poly, "decode": t_dec, "encode": t_enc,
    "polygon_rles": [r["counts"].decode() for r in rles],
    "encode_rles": [r["counts"].decode() for r in enc],
}))
"#;

/// Star-shaped random polygons, 1 to 3 parts per mask, coordinates rounded to 0.01.
fn workload() -> Vec<Vec<Vec<f64>>> {
    let mut rng = SplitMix64::new(SEED);
    (0..MASKS)
        .map(|_| {
            let parts = 1 + rng.below(3);
            (0..parts)
                .map(|_| {
                    let n = 8 + rng.below(41);
                    let centre = (
                        rng.uniform(0.0, f64::from(WIDTH)),
                        rng.uniform(0.0, f64::from(HEIGHT)),
                    );
                    let radius = rng.uniform(20.0, 200.0);
                    super::star_polygon(&mut rng, n, centre, radius, 0.4)
                })
                .collect()
        })
        .collect()
}

/// Best wall time of `REPEATS` runs of `f`, and the last output.
fn best<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..REPEATS {
        let t = Instant::now();
        let o = black_box(f()?);
        best = best.min(t.elapsed());
        out = Some(o);
    }
    out.map(|o| (best, o)).context("REPEATS is zero")
}

/// Runs the pycocotools side; `Err` says why there are no Python numbers.
fn run_python(work: &Value) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let data = dir.path().join("workload.json");
    std::fs::write(&data, work.to_string()).map_err(|e| format!("write workload: {e}"))?;
    let repeats = REPEATS.to_string();
    super::run_reference_script(dir.path(), PY_SCRIPT, &[data.as_os_str(), repeats.as_ref()])
}

fn check_same(what: &str, ours: &[String], theirs: &Value) -> anyhow::Result<()> {
    let theirs: Vec<&str> = theirs
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        ours.len() == theirs.len(),
        "{what}: pycocotools returned {} RLEs, we have {}",
        theirs.len(),
        ours.len()
    );
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if a != b {
            bail!(
                "MISMATCH: {what} of workload mask {i} differs from pycocotools:\n ours: {a}\n them: {b}"
            );
        }
    }
    Ok(())
}

/// Runs the benchmark and prints the table.
pub fn run() -> anyhow::Result<()> {
    let polys = workload();
    let n = polys.len() as f64;

    let (t_poly, rles) = best(|| {
        polys
            .iter()
            .map(|p| {
                polygon::polygons_to_rle(p, WIDTH, HEIGHT)
                    .map(|r| r.to_compressed())
                    .context("workload polygon")
            })
            .collect::<anyhow::Result<Vec<String>>>()
    })?;
    let (t_dec, masks) = best(|| {
        rles.iter()
            .map(|s| {
                Rle::from_compressed(HEIGHT, WIDTH, s)
                    .and_then(|r| Mask::from_rle(&r))
                    .context("workload RLE")
            })
            .collect::<anyhow::Result<Vec<Mask>>>()
    })?;
    let (t_enc, encoded) = best(|| {
        Ok(masks
            .iter()
            .map(|m| m.to_rle().to_compressed())
            .collect::<Vec<String>>())
    })?;
    ensure!(encoded == rles, "our encode(decode(rle)) differs from rle");
    let area: u64 = masks.iter().map(Mask::area).sum();
    println!(
        "workload: {MASKS} masks of {WIDTH}x{HEIGHT} from seeded random polygons \
         (mean area {:.0} px), best of {REPEATS}",
        area as f64 / n
    );

    let work = json!({ "height": HEIGHT, "width": WIDTH, "masks": polys });
    let py = run_python(&work);
    if let Ok(v) = &py {
        check_same("polygon rasterisation", &rles, &v["polygon_rles"])?;
        check_same("RLE encode", &encoded, &v["encode_rles"])?;
        println!("check: all {MASKS} polygon and encode RLE strings identical to pycocotools");
    }
    let rate = |t: Duration| n / t.as_secs_f64();
    println!();
    println!(
        "{:<34} {:>14} {:>18} {:>8}",
        "op", "ours (masks/s)", "pycocotools (m/s)", "ratio"
    );
    let rows = [
        ("RLE encode (mask -> string)", t_enc, "encode"),
        ("RLE decode (string -> mask)", t_dec, "decode"),
        ("polygon -> RLE (frPyObjects+merge)", t_poly, "polygon"),
    ];
    for (op, ours, key) in rows {
        match py.as_ref().ok().and_then(|v| v[key].as_f64()) {
            Some(secs) => println!(
                "{:<34} {:>14.0} {:>18.0} {:>7.2}x",
                op,
                rate(ours),
                n / secs,
                rate(ours) / (n / secs)
            ),
            None => println!("{:<34} {:>14.0} {:>18} {:>8}", op, rate(ours), "-", "-"),
        }
    }
    match py {
        Ok(_) => println!(
            "\nratio = ours / pycocotools (higher is faster); pycocotools encode includes \
             np.asfortranarray of the row-major mask, as our Mask is row-major"
        ),
        Err(why) => println!("\npycocotools numbers missing: {why}"),
    }
    Ok(())
}
