//! Benchmarks that run our code and the reference implementation side by side in one run and
//! print ratios (`maskstudio bench NAME`, or `cargo bench`).

pub mod coco_eval;
pub mod crowded;
pub mod masks;

use std::ffi::OsStr;
use std::path::Path;

/// Runs a reference script with the venv's Python ([`crate::runtime::python`]) and parses the
/// JSON object it prints. `Err` says why there are no reference numbers (Python or the package
/// missing: the script prints `{"error": ...}` when its imports fail).
pub(crate) fn run_reference_script(
    dir: &Path,
    script: &str,
    args: &[&OsStr],
) -> Result<serde_json::Value, String> {
    let script_path = dir.join("reference.py");
    std::fs::write(&script_path, script).map_err(|e| format!("write script: {e}"))?;
    let py = crate::runtime::python();
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
