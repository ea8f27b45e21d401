//! Deployment export: a model bundle turned into an ONNX or TorchScript file by torchvision in
//! the reference venv (`tools/export_model.py`, embedded with `tools/ref_train.py`, whose
//! `bundle_config` / `build_model` build torchvision's Mask R-CNN from a bundle), so a model runs
//! where Mask Studio does not: onnxruntime, OpenVINO, TensorRT, libtorch. Python runs only here,
//! from the venv ([`crate::host::python_tools`]); the packaged app has no repository, so the
//! scripts are written to a temporary folder before each export.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::model::bundle::Bundle;

/// The export script (see its docstring for the file layout, opset and run mode).
pub const EXPORT_SCRIPT: &str = include_str!("../../tools/export_model.py");
/// The reference training script the export imports `bundle_config` / `build_model` from.
pub const REF_TRAIN_SCRIPT: &str = include_str!("../../tools/ref_train.py");
/// How often a running export is checked for cancel and exit.
const POLL: Duration = Duration::from_millis(100);
/// How much older than the export's start a partial file may look and still be removed.
const PARTIAL_MARGIN: Duration = Duration::from_secs(2);
/// Lines of the script's stderr an error quotes.
const STDERR_LINES: usize = 12;

/// A deployment file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployFormat {
    /// ONNX (`torch.onnx.export`), run by onnxruntime and other ONNX runtimes.
    Onnx,
    /// TorchScript (`torch.jit.script`), run by `torch.jit.load` / libtorch.
    TorchScript,
}

impl DeployFormat {
    /// Every format, in the order menus list them.
    pub const ALL: [DeployFormat; 2] = [Self::Onnx, Self::TorchScript];

    /// The spelling `--format` uses (`onnx`, `torchscript`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::TorchScript => "torchscript",
        }
    }

    /// The file extension of an exported file (`onnx`, `pt`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::TorchScript => "pt",
        }
    }

    /// Ok, or the reason this format cannot be exported here (venv / onnx / onnxruntime missing).
    /// TorchScript needs torch + torchvision; ONNX also the `onnx` package (the exporter writes
    /// the graph through it; onnxruntime is needed only to run the file).
    pub fn available(self) -> Result<(), String> {
        let tools = crate::host::python_tools()?;
        match self {
            Self::TorchScript => Ok(()),
            Self::Onnx => tools.onnx_missing().map_or(Ok(()), Err),
        }
    }
}

impl std::str::FromStr for DeployFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.label() == s)
            .ok_or_else(|| format!("unknown deployment format {s:?}; use onnx or torchscript"))
    }
}

/// What [`export_bundle`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployReport {
    /// The file written.
    pub out: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The format written.
    pub format: DeployFormat,
    /// The ONNX opset (ONNX only).
    pub opset: Option<u32>,
    /// Wall time of the export, seconds.
    pub seconds: f64,
}

/// Exports the bundle in `bundle_dir` to `out` (written to a temp file beside it and renamed).
///
/// Runs `tools/export_model.py` with the venv's Python; the bundle is read here first, so a
/// broken bundle is named before Python starts. Cancel kills the script (its partial file is
/// removed); errors name the bundle and quote the script's last stderr lines.
pub fn export_bundle(
    bundle_dir: &Path,
    format: DeployFormat,
    out: &Path,
    cancel: &CancelToken,
) -> anyhow::Result<DeployReport> {
    format.available().map_err(|why| {
        anyhow::anyhow!("cannot export {bundle_dir:?} as {}: {why}", format.label())
    })?;
    Bundle::read(bundle_dir).with_context(|| format!("reading the model bundle {bundle_dir:?}"))?;
    let tools = crate::host::python_tools().map_err(|why| anyhow::anyhow!(why))?;
    let bundle_abs =
        std::path::absolute(bundle_dir).with_context(|| format!("resolving {bundle_dir:?}"))?;
    let out_abs = std::path::absolute(out).with_context(|| format!("resolving {out:?}"))?;
    anyhow::ensure!(
        !out_abs.is_dir(),
        "{out:?} is a folder; --out names the {} file to write",
        format.label()
    );
    let folder = out_abs
        .parent()
        .with_context(|| format!("{out:?} has no parent folder"))?;
    std::fs::create_dir_all(folder).with_context(|| format!("creating {folder:?}"))?;

    let scripts = tempfile::Builder::new()
        .prefix("maskstudio-export-")
        .tempdir()
        .context("creating a temporary folder for the export script")?;
    let script = scripts.path().join("export_model.py");
    std::fs::write(&script, EXPORT_SCRIPT).with_context(|| format!("writing {script:?}"))?;
    let ref_train = scripts.path().join("ref_train.py");
    std::fs::write(&ref_train, REF_TRAIN_SCRIPT)
        .with_context(|| format!("writing {ref_train:?}"))?;
    let stdout_path = scripts.path().join("stdout.txt");
    let stderr_path = scripts.path().join("stderr.txt");
    let stdout_file =
        std::fs::File::create(&stdout_path).with_context(|| format!("creating {stdout_path:?}"))?;
    let stderr_file =
        std::fs::File::create(&stderr_path).with_context(|| format!("creating {stderr_path:?}"))?;

    let started = Instant::now();
    let mut child = Command::new(&tools.python)
        .arg(&script)
        .arg("--bundle")
        .arg(&bundle_abs)
        .arg("--format")
        .arg(format.label())
        .arg("--out")
        .arg(&out_abs)
        .stdin(Stdio::null())
        .stdout(stdout_file)
        .stderr(stderr_file)
        .spawn()
        .with_context(|| format!("starting {}", tools.python.display()))?;
    let status = loop {
        if cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            remove_partials(&out_abs, started);
            anyhow::bail!(
                "the {} export of {bundle_dir:?} was cancelled",
                format.label()
            );
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                remove_partials(&out_abs, started);
                return Err(e).context("waiting for the export script");
            }
        }
    };
    if !status.success() {
        remove_partials(&out_abs, started);
        anyhow::bail!(
            "exporting {bundle_dir:?} as {} failed ({status}):\n{}",
            format.label(),
            last_lines(&stderr_path, STDERR_LINES)
        );
    }
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    parse_report(&stdout, format).with_context(|| {
        format!(
            "exporting {bundle_dir:?} as {}: the script's report was not understood\n{}",
            format.label(),
            last_lines(&stderr_path, STDERR_LINES)
        )
    })
}

/// The script's JSON line `{out, bytes, format, opset, seconds}` as a [`DeployReport`].
fn parse_report(stdout: &str, format: DeployFormat) -> anyhow::Result<DeployReport> {
    #[derive(serde::Deserialize)]
    struct Line {
        out: PathBuf,
        bytes: u64,
        format: String,
        opset: Option<u32>,
        seconds: f64,
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line on stdout")?;
    let r: Line = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
    anyhow::ensure!(
        r.format == format.label(),
        "the script wrote {:?}, not {}",
        r.format,
        format.label()
    );
    Ok(DeployReport {
        out: r.out,
        bytes: r.bytes,
        format,
        opset: r.opset,
        seconds: r.seconds,
    })
}

/// The last `n` lines of a file (the script's stderr), or a note that there were none.
fn last_lines(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(the script printed nothing on stderr)".to_owned();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes the temporary files a killed script left beside `out` (named
/// `.partial-<random>.<out's name>` by `tools/export_model.py`, as `fsutil::TEMP_PREFIX`),
/// only those modified since this export started (less [`PARTIAL_MARGIN`]).
fn remove_partials(out: &Path, started: Instant) {
    let (Some(folder), Some(name)) = (out.parent(), out.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    // File times come from the kernel's coarse clock (a few ms behind): a margin keeps a file
    // made right at the start in.
    let since = std::time::SystemTime::now()
        .checked_sub(started.elapsed() + PARTIAL_MARGIN)
        .unwrap_or(std::time::UNIX_EPOCH);
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let suffix = format!(".{name}");
    for entry in entries.filter_map(Result::ok) {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if file.starts_with(crate::fsutil::TEMP_PREFIX) && file.ends_with(&suffix) && fresh {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The bundle `export --run` takes from a run (refit, else best, else last): the choice
/// [`crate::train::export::export_run`] makes.
pub fn run_bundle(run_dir: &Path) -> anyhow::Result<PathBuf> {
    crate::train::export::chosen_checkpoint(run_dir).map(|(dir, _)| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_back_and_unknown_ones_are_named() {
        for f in DeployFormat::ALL {
            assert_eq!(f.label().parse::<DeployFormat>(), Ok(f));
        }
        assert_eq!(
            DeployFormat::ALL.map(DeployFormat::extension),
            ["onnx", "pt"]
        );
        let err = "tflite".parse::<DeployFormat>().unwrap_err();
        assert!(err.contains("\"tflite\"") && err.contains("onnx"), "{err}");
    }

    #[test]
    fn the_report_is_the_last_json_line_and_must_name_the_format() {
        let stdout = "noise\n{\"out\": \"/x/m.onnx\", \"bytes\": 12, \"format\": \"onnx\", \
                      \"opset\": 17, \"seconds\": 1.5}\n";
        let r = parse_report(stdout, DeployFormat::Onnx).unwrap();
        assert_eq!(
            r,
            DeployReport {
                out: PathBuf::from("/x/m.onnx"),
                bytes: 12,
                format: DeployFormat::Onnx,
                opset: Some(17),
                seconds: 1.5,
            }
        );
        let err = parse_report(stdout, DeployFormat::TorchScript).unwrap_err();
        assert!(format!("{err:#}").contains("not torchscript"), "{err:#}");
        assert!(parse_report("", DeployFormat::Onnx).is_err());
    }

    #[test]
    fn errors_quote_the_last_stderr_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.txt");
        let text: String = (1..=20).map(|i| format!("line {i}\n\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = last_lines(&path, 3);
        assert_eq!(tail, "line 18\nline 19\nline 20");
        std::fs::write(&path, "").unwrap();
        assert!(last_lines(&path, 3).contains("nothing on stderr"));
    }

    #[test]
    fn only_this_exports_fresh_partial_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.onnx");
        let keep_other = dir.path().join(".partial-abc.model.pt");
        let keep_plain = dir.path().join("model.onnx.bak");
        for p in [&keep_other, &keep_plain] {
            std::fs::write(p, "x").unwrap();
        }
        // Written after the export "started": a partial of this output.
        let started = Instant::now();
        let partial = dir.path().join(".partial-x1y2.model.onnx");
        std::fs::write(&partial, "half").unwrap();
        remove_partials(&out, started);
        assert!(!partial.exists());
        assert!(keep_other.exists() && keep_plain.exists());
    }
}
