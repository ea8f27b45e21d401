//! What a run folder holds besides the logs: checkpoints written atomically (model bundle +
//! `optimizer.safetensors` + `state.json` in one folder swapped into place), the training state
//! that makes `--resume` exact, and the per-epoch table `epochs.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::model::bundle::{Bundle, ModelSpec};
use crate::train::optim::{LossScaler, Optimizer, Schedule};

/// Folder of the latest checkpoint inside a run.
pub const LAST_CHECKPOINT: &str = "checkpoints/last";
/// Where a refit on train + validation trains (a run folder of its own inside the run).
pub const REFIT_DIR: &str = "refit";
/// The refit's final bundle, the run's result when present.
pub const REFIT_CHECKPOINT: &str = "checkpoints/refit";
/// What the refit did (`mode`, `epochs`, `images`, `steps`), beside `config.json`.
pub const REFIT_FILE: &str = "refit.json";
/// Folder of the checkpoint with the best validation mask AP inside a run.
pub const BEST_CHECKPOINT: &str = "checkpoints/best";
/// Optimiser state file inside `checkpoints/last`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Training state file inside a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// `state.json` format tag.
pub const STATE_FORMAT: &str = "maskstudio-train-state/1";

/// One finished epoch (a row of `epochs.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// Steps taken in the epoch.
    pub steps: usize,
    /// Mean total loss.
    pub mean_loss: f64,
    /// Mean of each loss component.
    pub mean_losses: BTreeMap<String, f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Validation mask AP, when evaluated.
    pub val_segm_ap: Option<f64>,
    /// Validation box AP, when evaluated.
    pub val_bbox_ap: Option<f64>,
    /// Wall-clock seconds of the epoch's steps (validation excluded).
    pub seconds: f64,
}

/// Sums of the epoch in progress (so a resumed epoch reports the same means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Steps done in the epoch.
    pub steps: usize,
    /// Sum of the total losses.
    pub loss_sum: f64,
    /// Sums of each component.
    pub loss_sums: BTreeMap<String, f64>,
    /// Seconds spent on the epoch's steps.
    pub seconds: f64,
    /// Learning rate of the last step.
    pub lr: f64,
}

/// Where a run stands: saved as `state.json` in each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// Steps taken (the index of the next step).
    pub iter: usize,
    /// Epoch of the next step.
    pub epoch: usize,
    /// The epoch in progress (`partial.steps` batches of `epoch` are done).
    pub partial: PartialEpoch,
    /// Epochs planned (the config's, plus any `--continue-epochs`).
    pub epochs: usize,
    /// The run stops at this step.
    pub total_iters: usize,
    /// Learning-rate schedule span.
    pub schedule: Schedule,
    /// Images per forward pass (smaller than the batch after a CUDA out-of-memory retry).
    pub micro_batch: usize,
    /// Loss scaler state (mixed precision only).
    pub loss_scaler: Option<LossScaler>,
    /// Best validation mask AP so far.
    pub best_segm_ap: Option<f64>,
    /// Epoch of `best_segm_ap`.
    pub best_epoch: Option<usize>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: usize,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
    /// All planned steps are done, or early stopping ended the run.
    pub finished: bool,
    /// Early stopping ended the run.
    pub stopped_early: bool,
}

impl TrainState {
    /// The state before the first step.
    pub fn new(epochs: usize, total_iters: usize, schedule: Schedule, batch_size: usize) -> Self {
        Self {
            format: STATE_FORMAT.to_owned(),
            iter: 0,
            epoch: 0,
            partial: PartialEpoch::default(),
            epochs,
            total_iters,
            schedule,
            micro_batch: batch_size,
            loss_scaler: None,
            best_segm_ap: None,
            best_epoch: None,
            evals_since_best: 0,
            history: Vec::new(),
            finished: false,
            stopped_early: false,
        }
    }
}

impl TrainState {
    /// Records the validation mask AP of `epoch`. Returns `true` when it beats the best so far
    /// (the caller writes `checkpoints/best`); otherwise counts towards early stopping, which
    /// ends the run once `patience` evaluations in a row brought no improvement.
    pub fn record_validation(
        &mut self,
        epoch: usize,
        segm_ap: f64,
        patience: Option<usize>,
    ) -> bool {
        if self.best_segm_ap.is_none_or(|b| segm_ap > b) {
            self.best_segm_ap = Some(segm_ap);
            self.best_epoch = Some(epoch);
            self.evals_since_best = 0;
            return true;
        }
        self.evals_since_best += 1;
        if patience.is_some_and(|p| self.evals_since_best >= p) {
            self.finished = true;
            self.stopped_early = true;
        }
        false
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dir.file_name().unwrap_or_default());
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes a checkpoint folder `run_dir/name`: the model bundle, and (for `last`) the optimiser
/// state and `state.json`. Everything goes into a staging folder first, which then replaces
/// the old folder by two renames, so a crash or cancel never leaves a half-written checkpoint.
pub fn write_checkpoint(
    dir: &Path,
    spec: &ModelSpec,
    labels: &[String],
    vs: &nn::VarStore,
    extra: Option<(&Optimizer, &TrainState)>,
) -> anyhow::Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent:?}"))?;
    let staging = sibling(dir, ".staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {staging:?}"))?;
    }
    Bundle::write(&staging, spec, labels, vs)
        .with_context(|| format!("writing the model bundle {staging:?}"))?;
    if let Some((opt, state)) = extra {
        opt.save(&staging.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_string_pretty(state)? + "\n";
        std::fs::write(staging.join(STATE_FILE), json)
            .with_context(|| format!("writing {:?}", staging.join(STATE_FILE)))?;
    }
    let old = sibling(dir, ".old");
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {old:?}"))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {dir:?} aside"))?;
    }
    std::fs::rename(&staging, dir).with_context(|| format!("renaming {staging:?} to {dir:?}"))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {old:?}"))?;
    }
    Ok(())
}

/// The checkpoint folder `run_dir/name`, or the previous one moved aside when a crash hit
/// between the two renames of [`write_checkpoint`].
pub fn checkpoint_dir(run_dir: &Path, name: &str) -> Option<PathBuf> {
    let dir = run_dir.join(name);
    if dir.join("model.json").is_file() {
        return Some(dir);
    }
    let old = sibling(&dir, ".old");
    old.join("model.json").is_file().then_some(old)
}

/// Reads `state.json` of the run's last checkpoint; returns it with the checkpoint folder.
pub fn read_state(run_dir: &Path) -> anyhow::Result<(TrainState, PathBuf)> {
    let dir = checkpoint_dir(run_dir, LAST_CHECKPOINT).with_context(|| {
        format!("{run_dir:?} has no checkpoint to resume from ({LAST_CHECKPOINT} is missing)")
    })?;
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| format!("{path:?}: not a training state"))?;
    anyhow::ensure!(
        state.format == STATE_FORMAT,
        "{path:?}: unknown format {:?}",
        state.format
    );
    Ok((state, dir))
}

/// Loss column names in `epochs.csv` / `metrics.csv` order.
pub fn loss_columns() -> [&'static str; 5] {
    crate::model::LOSS_NAMES
}

/// Rewrites `epochs.csv` from the history (a few rows; atomic).
pub fn write_epochs_csv(run_dir: &Path, history: &[EpochRecord]) -> anyhow::Result<()> {
    let cols = loss_columns();
    let mut text = format!(
        "epoch,steps,mean_loss,{},lr,val_segm_ap,val_bbox_ap,seconds\n",
        cols.join(",")
    );
    let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    for r in history {
        let parts: Vec<String> = cols
            .iter()
            .map(|c| {
                r.mean_losses
                    .get(*c)
                    .copied()
                    .unwrap_or(f64::NAN)
                    .to_string()
            })
            .collect();
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            r.epoch,
            r.steps,
            r.mean_loss,
            parts.join(","),
            r.lr,
            opt(r.val_segm_ap),
            opt(r.val_bbox_ap),
            r.seconds
        ));
    }
    Ok(crate::fsutil::write_atomic(
        &run_dir.join("epochs.csv"),
        text.as_bytes(),
    )?)
}

/// Resident memory of this process in bytes (`/proc/self/statm`), `None` where unavailable.
pub fn process_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // Linux page size on the x86_64/aarch64 machines we build for.
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_plausible() {
        let rss = process_rss().unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }

    #[test]
    fn best_and_early_stopping() {
        let sched = Schedule {
            start: 0,
            total: 10,
            steps_per_epoch: 1,
            epoch_steps: Vec::new(),
        };
        let mut s = TrainState::new(10, 10, sched.clone(), 1);
        assert!(s.record_validation(0, 0.1, Some(2)));
        assert!(s.record_validation(1, 0.2, Some(2)));
        assert!(
            !s.record_validation(2, 0.2, Some(2)),
            "equal is no improvement"
        );
        assert!(!s.finished);
        assert!(!s.record_validation(3, 0.15, Some(2)));
        assert!(s.finished && s.stopped_early);
        assert_eq!((s.best_segm_ap, s.best_epoch), (Some(0.2), Some(1)));
        let mut t = TrainState::new(10, 10, sched, 1);
        for e in 0..5 {
            t.record_validation(e, 0.0, None);
        }
        assert!(!t.finished, "no patience: never stops");
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = TrainState::new(
            3,
            30,
            Schedule {
                start: 0,
                total: 30,
                steps_per_epoch: 10,
                epoch_steps: vec![10, 9, 11],
            },
            4,
        );
        s.partial.loss_sums.insert("loss_mask".into(), 1.5);
        s.best_segm_ap = Some(0.25);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TrainState>(&json).unwrap(), s);
    }
}
