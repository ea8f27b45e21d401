//! Training in `torchrun` processes (PyTorch DDP): the recipe, the project's splits (COCO) and
//! our initial weights are handed to the reference venv's `tools/ddp_train.py`; the run folder's
//! `metrics.csv` / `epochs.csv` are tailed into [`TrainEvent`](crate::train::TrainEvent)s and its
//! torchvision checkpoints converted back into our bundles.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::config::TrainConfig;
use crate::train::observer::TrainObserver;
use crate::train::trainer::{RunSummary, TrainControl};

/// Which trainer runs a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// Our trainer, in this process.
    #[default]
    InProcess,
    /// torchvision under `torchrun` (DDP) in the reference venv.
    Torchrun,
}

impl Engine {
    /// `in-process` / `torchrun`.
    pub fn label(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::Torchrun => "torchrun",
        }
    }
}

/// torchrun's launch options (`torch.distributed.run` flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TorchrunOptions {
    /// Processes on this machine (`--nproc-per-node`).
    pub nproc_per_node: usize,
    /// Machines (`--nnodes`; 1 runs `--standalone`).
    pub nnodes: usize,
    /// This machine's rank among them (`--node-rank`).
    pub node_rank: usize,
    /// Address of the rank-0 machine (`--master-addr`).
    pub master_addr: String,
    /// Port of the rank-0 machine (`--master-port`).
    pub master_port: u16,
    /// Start from this bundle's weights instead of the preset's.
    pub init: Option<PathBuf>,
}

impl Default for TorchrunOptions {
    fn default() -> Self {
        Self {
            nproc_per_node: 2,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".to_owned(),
            master_port: 29500,
            init: None,
        }
    }
}

/// Like [`train_with`](crate::train::train_with), but the steps run in `torchrun` processes;
/// events come from tailing the run folder's `metrics.csv` / `epochs.csv`, so observers (CLI
/// bar, GUI plots) work unchanged. Cancel (`control.cancel()`) stops every rank; returns
/// `Ok` with `cancelled = true`.
pub fn train_torchrun(
    project_dir: &Path,
    runs_dir: &Path,
    cfg: &TrainConfig,
    opts: &TorchrunOptions,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    let _ = (project_dir, runs_dir, cfg, opts, control, observer);
    anyhow::bail!("the torchrun engine is not built yet")
}

/// Continues a torchrun run from its last finished epoch (`maskstudio train --resume RUN` calls
/// this when the run's `config.json` says engine = torchrun).
pub fn resume_torchrun(
    run_dir: &Path,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    let _ = (run_dir, control, observer);
    anyhow::bail!("the torchrun engine is not built yet")
}
