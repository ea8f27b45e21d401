//! The training loop: project → split → model (preset, ImageNet backbone) → SGD/AdamW with a
//! warm-up + cosine / multistep / one-cycle schedule → run folder with `config.json`,
//! `metrics.csv` (every step), `epochs.csv` (every epoch, with validation AP), `train.log`,
//! `loss.png`, and checkpoints under `checkpoints/last/` (bundle + optimiser state +
//! `state.json`, for an exact `--resume`) and `checkpoints/best/` (best validation mask AP).
//!
//! Split by phase: [`setup`] builds a session (fresh or resumed), [`step`] takes one optimiser
//! step, [`epoch`] runs the loop and closes epochs (checkpoints, validation), [`refit`] retrains
//! on train + validation after a run, [`report`] writes `train.log` and relays events.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::train::config::TrainConfig;
use crate::train::observer::{TrainEvent, TrainObserver};
use crate::train::optim::Schedule;
pub use crate::train::state::{BEST_CHECKPOINT, LAST_CHECKPOINT};

mod epoch;
mod refit;
mod report;
mod setup;
mod step;

use refit::{refit_plan, run_refit};
use report::Relay;
pub(crate) use report::{Reporter, fail_early, finish, guarded};
pub(crate) use setup::{EngineChoice, prepare_fresh};
use setup::{start_fresh, start_resumed};

pub use crate::model::LOSS_NAMES;

/// The auto-configuration of a run (proposed keys with reasons, kept rules, coverage, statistics).
pub const AUTOCONFIG_FILE: &str = "autoconfig.json";
pub use crate::train::state::{REFIT_CHECKPOINT, REFIT_DIR, REFIT_FILE};

/// Prefix of the variables `freeze_epochs` freezes (the backbone body; FPN and heads train).
pub const FROZEN_PREFIX: &str = "backbone.body.";

/// What a finished (or cancelled) run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Run id (folder name).
    pub run_id: String,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Optimiser steps taken (counting those of earlier sessions of a resumed run).
    pub iterations: usize,
    /// Epochs completed in full.
    pub epochs_completed: usize,
    /// Whether a cancel request stopped the run.
    pub cancelled: bool,
    /// Whether early stopping (`patience`) ended the run.
    pub stopped_early: bool,
    /// Mean total loss of the last epoch (or of the partial epoch when cancelled).
    pub final_loss: Option<f64>,
    /// The latest model bundle, if one was written.
    pub checkpoint: Option<PathBuf>,
    /// The bundle with the best validation mask AP, if validation ran.
    pub best_checkpoint: Option<PathBuf>,
    /// That AP.
    pub best_segm_ap: Option<f64>,
    /// The bundle of the refit on train + validation, when one ran to the end.
    pub refit_checkpoint: Option<PathBuf>,
}

/// Cancel and pause of a live run, shared with the thread (GUI, CLI) that controls it.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    cancel: CancelToken,
    paused: Arc<AtomicBool>,
}

impl TrainControl {
    /// A control around an existing cancel token.
    pub fn from_cancel(cancel: CancelToken) -> Self {
        Self {
            cancel,
            paused: Arc::default(),
        }
    }

    /// Asks the run to stop before its next step (it saves `checkpoints/last` first).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The cancel token inside.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Holds the run before its next step until [`Self::resume`] (cancel still works).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    /// Lets a paused run continue.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Whether the run is asked to pause.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
}

/// Learning rate at step `iter` of a schedule of `total` steps starting at 0, with one step
/// per epoch for `multistep` milestones (see [`Schedule::lr`]).
pub fn learning_rate(cfg: &TrainConfig, iter: usize, total: usize) -> f64 {
    Schedule {
        start: 0,
        total,
        steps_per_epoch: 1,
        epoch_steps: Vec::new(),
    }
    .lr(cfg, iter)
}

/// Creates a fresh `runs/<YYYYmmdd-HHMMSS[-n]>` folder (UTC).
fn create_run_dir(runs_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    crate::train::runs::create_dated_dir(runs_dir, "")
}

/// Trains a Mask R-CNN on the project at `project_dir` into a new run folder under `runs_dir`.
///
/// Emits [`TrainEvent`]s to `observer` (and `train.log`). `cancel` is checked before every step;
/// a cancelled run writes its state to `checkpoints/last/` and returns `Ok` with
/// `cancelled = true` ([`resume`] continues it). A NaN/inf loss stops the run with an error
/// naming the step; the checkpoint of the last finished epoch (if any) is left untouched.
pub fn train(
    project_dir: &Path,
    runs_dir: &Path,
    cfg: &TrainConfig,
    cancel: &CancelToken,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    train_with(
        project_dir,
        runs_dir,
        cfg,
        &TrainControl::from_cancel(cancel.clone()),
        observer,
    )
}

/// [`train`] with pause as well as cancel.
pub fn train_with(
    project_dir: &Path,
    runs_dir: &Path,
    cfg: &TrainConfig,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    if let Err(e) = cfg.validate() {
        return fail_early(observer, e);
    }
    let (run_id, run_dir) = match create_run_dir(runs_dir) {
        Ok(v) => v,
        Err(e) => return fail_early(observer, e),
    };
    train_in(project_dir, &run_id, &run_dir, cfg, None, control, observer)
}

/// [`train_with`] into the new folder `run_dir` (created; it must not exist) on exactly the
/// images of `split` (its `val` images validate, none when empty) instead of the seeded split;
/// the run id is the folder's name. The k-fold audit trains each fold with it.
pub fn train_split(
    project_dir: &Path,
    run_dir: &Path,
    cfg: &TrainConfig,
    split: crate::train::data::Split,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    if let Err(e) = cfg.validate() {
        return fail_early(observer, e);
    }
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Err(e) = std::fs::create_dir(run_dir).with_context(|| format!("creating {run_dir:?}")) {
        return fail_early(observer, e);
    }
    train_in(
        project_dir,
        &run_id,
        run_dir,
        cfg,
        Some(split),
        control,
        observer,
    )
}

/// A run in the existing folder `run_dir`: the session (on `split`, else the seeded split), the
/// loop, then the refit when its mode applies.
fn train_in(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    split: Option<crate::train::data::Split>,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    let (run_id, run_dir) = (run_id.to_owned(), run_dir.to_path_buf());
    let log_path = run_dir.join("train.log");
    let log = match File::create(&log_path) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!("creating {log_path:?}"));
            return fail_early(observer, e);
        }
    };
    let mut relay = Relay::holding_finished(observer);
    let result = {
        let mut reporter = Reporter {
            log,
            observer: &mut relay,
        };
        let result = guarded("training", || {
            let mut notes = Vec::new();
            let session = start_fresh(project_dir, &run_id, &run_dir, cfg, split, &mut notes)?;
            for n in &notes {
                reporter.note(n);
            }
            session.run(control, &mut reporter)
        });
        finish(&run_dir, result, &mut reporter)
    };
    let mut summary = result?;
    let mut finished = relay.held.take();
    if !summary.cancelled
        && let Some(plan) = refit_plan(&run_dir, cfg, &summary)
    {
        match run_refit(project_dir, &run_dir, &plan, &summary, control, relay.inner) {
            Ok(refit) => {
                if let Some(TrainEvent::Finished {
                    iterations,
                    cancelled,
                    ..
                }) = &mut finished
                {
                    *iterations += refit.iterations;
                    *cancelled = refit.cancelled;
                }
                summary.cancelled = refit.cancelled;
                summary.refit_checkpoint = refit.checkpoint;
            }
            Err(e) => log::warn!(
                "the refit on train + validation of {run_dir:?} failed (the run's own checkpoints stand): {e:#}"
            ),
        }
    }
    if let Some(e) = finished {
        relay.inner.on_event(&e);
    }
    Ok(summary)
}

/// Continues the run in `run_dir` from `checkpoints/last` exactly where it stopped (weights,
/// optimiser state, schedule position, data order, random streams): the next step's loss
/// equals the uninterrupted run's. With `continue_epochs = Some(n)` a finished run is
/// extended by `n` epochs with a new schedule over them.
pub fn resume(
    run_dir: &Path,
    continue_epochs: Option<usize>,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    let log_path = run_dir.join("train.log");
    let log = match OpenOptions::new().append(true).create(true).open(&log_path) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!("opening {log_path:?}"));
            return fail_early(observer, e);
        }
    };
    let mut reporter = Reporter { log, observer };
    let result = guarded("training", || {
        start_resumed(run_dir, continue_epochs, &mut reporter)
            .and_then(|session| session.run(control, &mut reporter))
    });
    finish(run_dir, result, &mut reporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            lr: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.0,
            ..TrainConfig::default()
        };
        assert_eq!(learning_rate(&cfg, 0, 100), 0.0);
        assert!((learning_rate(&cfg, 5, 100) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10, 100) - 0.1).abs() < 1e-12);
        assert!(learning_rate(&cfg, 55, 100) < 0.1);
        assert!(learning_rate(&cfg, 99, 100) < 0.001);
    }
}
