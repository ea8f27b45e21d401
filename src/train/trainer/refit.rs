//! The refit after a finished run: the run's recipe for the epochs validation chose, on its
//! train + validation images, in `<run>/refit/`; its bundle becomes `checkpoints/refit`.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::report::{Relay, Reporter, finish, guarded};
use super::setup::start_fresh;
use super::{LAST_CHECKPOINT, RunSummary, TrainControl};
use crate::train::autoconfig;
use crate::train::config::TrainConfig;
use crate::train::data;
use crate::train::observer::{TrainEvent, TrainObserver};
use crate::train::runs::{RunConfig, RunSplit};
use crate::train::state::{self as run_state, REFIT_CHECKPOINT, REFIT_DIR, REFIT_FILE};

/// A refit to run after a finished run.
#[derive(Debug, Clone)]
pub(super) struct RefitPlan {
    /// The run's resolved recipe with the refit's epochs, no validation, no auto-configuration.
    cfg: TrainConfig,
    /// Train + validation images.
    split: data::Split,
    /// Why (mode and the numbers that decided it).
    reason: String,
    /// The run's refit mode.
    mode: crate::train::config::RefitMode,
}

/// The refit of a finished run, when its mode applies: the run's resolved recipe (from
/// `config.json`) for the epochs validation chose (the best epoch, else all epochs run) on its
/// train + validation images.
pub(super) fn refit_plan(
    run_dir: &Path,
    cfg: &TrainConfig,
    summary: &RunSummary,
) -> Option<RefitPlan> {
    let config = RunConfig::read(run_dir).ok()?;
    let RunSplit { train, val } = config.split;
    if val.is_empty() || !cfg.refit.applies(train.len()) {
        return None;
    }
    let mut rcfg = config.train?;
    let state = run_state::read_state(run_dir).ok().map(|(s, _)| s);
    let best = state.as_ref().and_then(|s| s.best_epoch);
    let epochs = best.map_or(summary.epochs_completed, |b| b + 1);
    if epochs == 0 {
        return None;
    }
    let mode = serde_json::to_value(cfg.refit)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let reason = format!(
        "refit ({mode}: {} training images, threshold {}) on {} train + validation images for {epochs} epochs ({})",
        train.len(),
        autoconfig::REFIT_MAX_IMAGES,
        train.len() + val.len(),
        best.map_or_else(
            || "all epochs run: no validation result".to_owned(),
            |b| format!("the best validation epoch {b} + 1")
        )
    );
    rcfg.epochs = epochs;
    rcfg.eval_every = 0;
    rcfg.patience = None;
    rcfg.auto_config = false;
    rcfg.refit = crate::train::config::RefitMode::Off;
    let mut all: Vec<i64> = train.into_iter().chain(val).collect();
    all.sort_unstable();
    Some(RefitPlan {
        cfg: rcfg,
        split: data::Split {
            train: all,
            val: Vec::new(),
        },
        reason,
        mode: cfg.refit,
    })
}

/// What a refit produced.
pub(super) struct RefitOutcome {
    pub(super) iterations: usize,
    pub(super) cancelled: bool,
    pub(super) checkpoint: Option<PathBuf>,
}

/// Trains `plan` in `<run>/refit/` (its own `config.json`, `metrics.csv`, `train.log`), its
/// steps and epochs shown after the run's, then copies its last bundle to
/// `<run>/checkpoints/refit` and records `refit.json`.
pub(super) fn run_refit(
    project_dir: &Path,
    run_dir: &Path,
    plan: &RefitPlan,
    summary: &RunSummary,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RefitOutcome> {
    let dir = run_dir.join(REFIT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let log_path = dir.join("train.log");
    let log =
        BufWriter::new(File::create(&log_path).with_context(|| format!("creating {log_path:?}"))?);
    let mut relay = Relay {
        inner: observer,
        held: None,
        drop_started: true,
        iter_offset: summary.iterations,
        epoch_offset: summary.epochs_completed,
    };
    let mut reporter = Reporter {
        log,
        observer: &mut relay,
    };
    reporter.note(&plan.reason);
    let run_id = format!("{}-refit", summary.run_id);
    let result = guarded("the refit", || {
        let mut notes = Vec::new();
        let session = start_fresh(
            project_dir,
            &run_id,
            &dir,
            &plan.cfg,
            Some(plan.split.clone()),
            &mut notes,
        )?;
        reporter.emit(&TrainEvent::Refit {
            epochs: plan.cfg.epochs,
            images: plan.split.train.len(),
            total_iters: summary.iterations + session.state.total_iters,
        });
        session.run(control, &mut reporter)
    });
    let result = finish(&dir, result, &mut reporter)?;
    let mut checkpoint = None;
    if !result.cancelled
        && let Some(last) = run_state::checkpoint_dir(&dir, LAST_CHECKPOINT)
    {
        let out = run_dir.join(REFIT_CHECKPOINT);
        copy_bundle(&last, &out)?;
        reporter.emit(&TrainEvent::CheckpointSaved { path: out.clone() });
        checkpoint = Some(out);
    }
    let record = serde_json::json!({
        "mode": plan.mode,
        "reason": plan.reason,
        "epochs": plan.cfg.epochs,
        "images": plan.split.train.len(),
        "steps": result.iterations,
        "cancelled": result.cancelled,
        "checkpoint": checkpoint.as_ref().map(|_| REFIT_CHECKPOINT),
    });
    crate::fsutil::write_atomic(
        &run_dir.join(REFIT_FILE),
        (serde_json::to_string_pretty(&record)? + "\n").as_bytes(),
    )?;
    Ok(RefitOutcome {
        iterations: result.iterations,
        cancelled: result.cancelled,
        checkpoint,
    })
}

/// Copies a bundle's files (weights, labels, model.json) from `from` to `to` (replaced whole:
/// written to a temporary sibling, then renamed).
fn copy_bundle(from: &Path, to: &Path) -> anyhow::Result<()> {
    let parent = to.parent().context("checkpoint folder without a parent")?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {tmp:?}"))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {tmp:?}"))?;
    for name in crate::train::export::BUNDLE_FILES {
        let bytes = std::fs::read(from.join(name))
            .with_context(|| format!("reading {:?}", from.join(name)))?;
        crate::fsutil::write_atomic(&tmp.join(name), &bytes)?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {to:?}"))?;
    }
    std::fs::rename(&tmp, to).with_context(|| format!("renaming {tmp:?} to {to:?}"))?;
    Ok(())
}
