//! What a torchrun run hands to `tools/ddp_train.py`: `torchrun/job.json` (the contract's
//! `maskstudio-torchrun-job/1`), the train / validation splits as COCO exports, our initial
//! weights as `init.safetensors`, and the embedded scripts written beside them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::dataset::export::{self, ExportFormat};
use crate::dataset::{ExportImage, ExportSet};
use crate::model::MaskRcnnConfig;
use crate::train::config::TrainConfig;

/// Folder inside a run that holds everything of the torchrun engine.
pub const TORCHRUN_DIR: &str = "torchrun";
/// The job file inside [`TORCHRUN_DIR`].
pub const JOB_FILE: &str = "job.json";
/// `job.json`'s format tag.
pub const JOB_FORMAT: &str = "maskstudio-torchrun-job/1";
/// The initial weights (our model's full state dict, torchvision names).
pub const INIT_FILE: &str = "init.safetensors";
/// The DDP script's torchvision reference checkpoint of the last finished epoch.
pub const LAST_PTH: &str = "last.pth";
/// The DDP script's checkpoint of the best validation epoch.
pub const BEST_PTH: &str = "best.pth";
/// What the DDP script writes at a normal end.
pub const DONE_FILE: &str = "done.json";
/// torchrun's stdout and stderr.
pub const LOG_FILE: &str = "torchrun.log";
/// The DDP training script as written into the run (`tools/ddp_train.py`, embedded so the
/// packaged app runs it without the repository).
pub const DDP_SCRIPT: &str = "ddp_train.py";
const DDP_SCRIPT_TEXT: &str = include_str!("../../../tools/ddp_train.py");
/// The reference script the DDP script imports its model builder and helpers from.
pub const REF_SCRIPT: &str = "ref_train.py";
const REF_SCRIPT_TEXT: &str = include_str!("../../../tools/ref_train.py");

/// `<run>/torchrun/job.json`, read by `ddp_train.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// [`JOB_FORMAT`].
    pub format: String,
    /// The run folder (absolute); global rank 0 writes `metrics.csv`, `epochs.csv` there.
    pub run_dir: PathBuf,
    /// COCO export of the training images (`annotations.json` + `images/`).
    pub train: PathBuf,
    /// COCO export of the validation images, `None` without validation images.
    pub val: Option<PathBuf>,
    /// Class names; label `i + 1` is `classes[i]` (COCO categories are matched by name).
    pub classes: Vec<String>,
    /// Project image ids of the training images (= COCO image ids of the train export).
    pub train_ids: Vec<i64>,
    /// The model (`RunConfig.model`).
    pub model: MaskRcnnConfig,
    /// [`INIT_FILE`]: the initial weights, loaded strictly.
    pub init: PathBuf,
    /// `last.pth` to continue from, or `None` for a fresh start.
    pub resume: Option<PathBuf>,
    /// The resolved recipe.
    pub recipe: TrainConfig,
    /// `cpu` or `cuda` (gloo or NCCL).
    pub device: String,
    /// `torch.set_num_threads` per process.
    pub threads: usize,
}

impl Job {
    /// Reads `<run>/torchrun/job.json`.
    pub fn read(run_dir: &Path) -> anyhow::Result<Self> {
        let path = run_dir.join(TORCHRUN_DIR).join(JOB_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
        let job: Job =
            serde_json::from_str(&text).with_context(|| format!("{path:?}: not a torchrun job"))?;
        anyhow::ensure!(
            job.format == JOB_FORMAT,
            "{path:?}: unknown format {:?}",
            job.format
        );
        Ok(job)
    }

    /// Writes `<run>/torchrun/job.json` (pretty JSON, atomically).
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)? + "\n";
        crate::fsutil::write_atomic(&run_dir.join(TORCHRUN_DIR).join(JOB_FILE), json.as_bytes())?;
        Ok(())
    }
}

/// Exports the images of `ids` (in the order of `set`, which is the store's id order) as COCO
/// with RLE masks into `out`; COCO image ids are the project's.
pub fn export_split(set: &ExportSet, ids: &[i64], out: &Path) -> anyhow::Result<()> {
    let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
    let images: Vec<ExportImage> = set
        .images
        .iter()
        .filter(|i| wanted.contains(&i.id))
        .cloned()
        .collect();
    anyhow::ensure!(
        images.len() == wanted.len(),
        "{} of the split's images are no longer in the project",
        wanted.len() - images.len()
    );
    let part = ExportSet {
        classes: set.classes.clone(),
        images,
    };
    export::write(&part, ExportFormat::Coco { polygons: false }, out)
        .with_context(|| format!("exporting the images for torchrun into {out:?}"))?;
    Ok(())
}

/// Writes the embedded scripts into `dir` (the DDP script imports the reference script).
pub fn write_scripts(dir: &Path) -> anyhow::Result<PathBuf> {
    crate::fsutil::write_atomic(&dir.join(REF_SCRIPT), REF_SCRIPT_TEXT.as_bytes())?;
    let script = dir.join(DDP_SCRIPT);
    crate::fsutil::write_atomic(&script, DDP_SCRIPT_TEXT.as_bytes())?;
    Ok(script)
}
