//! Deployment export: a model bundle turned into an ONNX or TorchScript file by torchvision in
//! the reference venv (`tools/export_model.py`, embedded), for runtimes without Mask Studio.

use std::path::{Path, PathBuf};

use crate::cancel::CancelToken;

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
    pub fn available(self) -> Result<(), String> {
        Err(format!("{} export is not built yet", self.label()))
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
pub fn export_bundle(
    bundle_dir: &Path,
    format: DeployFormat,
    out: &Path,
    cancel: &CancelToken,
) -> anyhow::Result<DeployReport> {
    let _ = (bundle_dir, out, cancel);
    anyhow::bail!("{} export is not built yet", format.label())
}

/// The bundle `export --run` takes from a run (refit, else best, else last).
pub fn run_bundle(run_dir: &Path) -> anyhow::Result<PathBuf> {
    anyhow::bail!("{}: run_bundle is not built yet", run_dir.display())
}
