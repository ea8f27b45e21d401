//! Flag parsing and the reference script's JSON answer, shared by the benches
//! (`mod common;` in each; every bench uses a subset).
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use anyhow::Context as _;

fn env_name(name: &str) -> String {
    format!("BENCH_{}", name.to_uppercase().replace('-', "_"))
}

/// Command-line flag `--name value`, else `BENCH_NAME`, else `default`.
pub fn opt(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    let flag = format!("--{name}");
    if let Some(i) = args.iter().position(|a| *a == flag)
        && let Some(v) = args.get(i + 1)
    {
        return v.clone();
    }
    std::env::var(env_name(name)).unwrap_or_else(|_| default.to_owned())
}

/// Switch `--name`, or `BENCH_NAME=1`.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == format!("--{name}"))
        || std::env::var(env_name(name)).is_ok_and(|v| v == "1")
}

/// [`opt`] parsed as `T`.
pub fn num<T: std::str::FromStr>(name: &str, default: &str) -> anyhow::Result<T> {
    let v = opt(name, default);
    v.parse()
        .map_err(|_| anyhow::anyhow!("--{name}: cannot parse {v:?}"))
}

/// The JSON object a `tools/ref_*.py` script printed on stdout; an error when it failed or
/// answered `{"error": ...}` (torch, torchvision or pycocotools missing).
pub fn reference_json(script: &Path, out: &Output) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bad output: {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("reference unavailable: {e}");
    }
    Ok(v)
}
