//! The torchrun engine's choice and launch options, on their own so the run list
//! ([`crate::train::runs`]) and the in-process trainer's setup name them without depending on
//! the launcher.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
