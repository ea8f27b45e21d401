//! Benchmarks that run our code and the reference implementation side by side in one run and
//! print ratios (`maskstudio bench NAME`, or `cargo bench`).

pub mod audit;
pub mod coco_eval;
pub mod crowded;
pub mod masks;

use std::ffi::OsStr;
use std::path::Path;

/// Runs a reference script with the venv's Python ([`crate::host::python`]) and parses the
/// JSON object it prints. `Err` says why there are no reference numbers (Python or the package
/// missing: the script prints `{"error": ...}` when its imports fail).
pub(crate) fn run_reference_script(
    dir: &Path,
    script: &str,
    args: &[&OsStr],
) -> Result<serde_json::Value, String> {
    let script_path = dir.join("reference.py");
    std::fs::write(&script_path, script).map_err(|e| format!("write script: {e}"))?;
    let py = crate::host::python();
    let out = std::process::Command::new(&py)
        .arg(&script_path)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            py.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bad output from {}: {e}", py.display()))?;
    if let Some(err) = v.get("error") {
        return Err(format!("reference unavailable in {}: {err}", py.display()));
    }
    Ok(v)
}

/// A star-shaped polygon `[x1, y1, x2, y2, …]` around `(cx, cy)`: `n` vertices at sorted
/// random angles, each at `radius` times a factor uniform in `min_frac..1`, coordinates
/// rounded to 0.01. Draws `n` angles, then one factor per vertex.
pub(crate) fn star_polygon(
    rng: &mut crate::rng::SplitMix64,
    n: usize,
    (cx, cy): (f64, f64),
    radius: f64,
    min_frac: f64,
) -> Vec<f64> {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let mut angles: Vec<f64> = (0..n)
        .map(|_| rng.uniform(0.0, std::f64::consts::TAU))
        .collect();
    angles.sort_by(f64::total_cmp);
    angles
        .iter()
        .flat_map(|a| {
            let r = radius * rng.uniform(min_frac, 1.0);
            [round(cx + r * a.cos()), round(cy + r * a.sin())]
        })
        .collect()
}
