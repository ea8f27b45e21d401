//! The training loop: project → split → model (preset, ImageNet backbone) → SGD/AdamW with a
//! warm-up + cosine / multistep / one-cycle schedule → run folder with `config.json`,
//! `metrics.csv` (every step), `epochs.csv` (every epoch, with validation AP), `train.log`,
//! `loss.png`, and checkpoints under `checkpoints/last/` (bundle + optimiser state +
//! `state.json`, for an exact `--resume`) and `checkpoints/best/` (best validation mask AP).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tch::{Device, Tensor, nn};

use crate::cancel::CancelToken;
use crate::dataset::stats::DatasetStats;
use crate::dataset::{ExportImage, ExportSet};
use crate::infer::panic_text;
use crate::model::bundle::{Bundle, ModelSpec};
use crate::model::weights::{self, PartialLoad};
use crate::model::{Backbone, MaskRcnn, MaskRcnnConfig, Target};
use crate::rng::SplitMix64;
use crate::train::autoconfig;
use crate::train::config::{Preset, TrainConfig};
use crate::train::data;
use crate::train::loader::{Batch, TrainLoader};
use crate::train::observer::{TrainEvent, TrainObserver, event_line};
use crate::train::optim::{LossScaler, Optimizer, Schedule};
use crate::train::state::{self as run_state, EpochRecord, TrainState};
pub use crate::train::state::{BEST_CHECKPOINT, LAST_CHECKPOINT};

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

/// The bundle description of a model config (every inference-relevant value written out).
pub fn model_spec(cfg: &MaskRcnnConfig) -> ModelSpec {
    let mut spec = ModelSpec::new(cfg.backbone, cfg.num_classes);
    let three = |v: &[f64]| -> Option<[f64; 3]> { v.try_into().ok() };
    spec.returned_layers = Some(cfg.returned_layers.clone());
    spec.min_size = cfg.min_size.last().copied();
    spec.max_size = Some(cfg.max_size);
    spec.image_mean = three(&cfg.image_mean);
    spec.image_std = three(&cfg.image_std);
    spec.anchor_sizes = Some(
        cfg.anchor_sizes
            .iter()
            .map(|l| l.iter().map(|&s| s as f64).collect())
            .collect(),
    );
    spec.aspect_ratios = Some(cfg.aspect_ratios.clone());
    spec.rpn_pre_nms_top_n_test = Some(cfg.rpn_pre_nms_top_n_test);
    spec.rpn_post_nms_top_n_test = Some(cfg.rpn_post_nms_top_n_test);
    spec.rpn_nms_thresh = Some(cfg.rpn_nms_thresh);
    spec.box_score_thresh = Some(cfg.box_score_thresh);
    spec.box_nms_thresh = Some(cfg.box_nms_thresh);
    spec.box_detections_per_img = Some(cfg.box_detections_per_img);
    spec.frozen_bn_eps = Some(cfg.frozen_bn_eps);
    spec
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Creates a fresh `runs/<YYYYmmdd-HHMMSS[-n]>` folder (UTC).
fn create_run_dir(runs_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    std::fs::create_dir_all(runs_dir).with_context(|| format!("creating {runs_dir:?}"))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let base = format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        s / 3600,
        (s / 60) % 60,
        s % 60
    );
    for n in 0..1000 {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = runs_dir.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {dir:?}")),
        }
    }
    anyhow::bail!("could not find a free run folder name under {runs_dir:?}")
}

/// Writes `train.log` and forwards events to the caller's observer.
struct Reporter<'a> {
    log: BufWriter<File>,
    observer: &'a mut dyn TrainObserver,
}

impl Reporter<'_> {
    fn line(&mut self, text: &str) {
        if let Err(err) = writeln!(self.log, "{text}").and_then(|()| self.log.flush()) {
            log::warn!("could not write train.log: {err}");
        }
    }

    fn emit(&mut self, e: &TrainEvent) {
        self.line(&event_line(e));
        self.observer.on_event(e);
    }

    /// A line in `train.log` (and the log) that is not an event.
    fn note(&mut self, text: &str) {
        log::info!("{text}");
        self.line(text);
    }
}

/// Sends `Failed` for an error before a log file exists.
fn fail_early<T>(observer: &mut dyn TrainObserver, e: anyhow::Error) -> anyhow::Result<T> {
    observer.on_event(&TrainEvent::Failed {
        error: format!("{e:#}"),
    });
    Err(e)
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
            let session = start_fresh(project_dir, &run_id, &run_dir, cfg, None, &mut notes)?;
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

/// Forwards events, holding back `Finished` (a refit may follow), optionally dropping
/// `Started` and moving steps and epochs after an earlier phase's.
struct Relay<'a> {
    inner: &'a mut dyn TrainObserver,
    held: Option<TrainEvent>,
    drop_started: bool,
    iter_offset: usize,
    epoch_offset: usize,
}

impl<'a> Relay<'a> {
    fn holding_finished(inner: &'a mut dyn TrainObserver) -> Self {
        Self {
            inner,
            held: None,
            drop_started: false,
            iter_offset: 0,
            epoch_offset: 0,
        }
    }
}

impl TrainObserver for Relay<'_> {
    fn on_event(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Finished { .. } => self.held = Some(e.clone()),
            TrainEvent::Started { .. } if self.drop_started => {}
            TrainEvent::Step {
                epoch,
                iter,
                losses,
                total,
                lr,
                images_per_sec,
                memory_bytes,
            } => self.inner.on_event(&TrainEvent::Step {
                epoch: epoch + self.epoch_offset,
                iter: iter + self.iter_offset,
                losses: losses.clone(),
                total: *total,
                lr: *lr,
                images_per_sec: *images_per_sec,
                memory_bytes: *memory_bytes,
            }),
            TrainEvent::EpochEnd {
                epoch,
                mean_loss,
                steps,
                val_segm_ap,
                val_bbox_ap,
            } => self.inner.on_event(&TrainEvent::EpochEnd {
                epoch: epoch + self.epoch_offset,
                mean_loss: *mean_loss,
                steps: *steps,
                val_segm_ap: *val_segm_ap,
                val_bbox_ap: *val_bbox_ap,
            }),
            _ => self.inner.on_event(e),
        }
    }
}

/// A refit to run after a finished run.
#[derive(Debug, Clone)]
struct RefitPlan {
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
fn refit_plan(run_dir: &Path, cfg: &TrainConfig, summary: &RunSummary) -> Option<RefitPlan> {
    let config_path = run_dir.join("config.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config_path).ok()?).ok()?;
    let ids = |k: &str| -> Vec<i64> {
        serde_json::from_value(json["split"][k].clone()).unwrap_or_default()
    };
    let (train, val) = (ids("train"), ids("val"));
    if val.is_empty() || !cfg.refit.applies(train.len()) {
        return None;
    }
    let mut rcfg: TrainConfig = serde_json::from_value(json["train"].clone()).ok()?;
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
struct RefitOutcome {
    iterations: usize,
    cancelled: bool,
    checkpoint: Option<PathBuf>,
}

/// Trains `plan` in `<run>/refit/` (its own `config.json`, `metrics.csv`, `train.log`), its
/// steps and epochs shown after the run's, then copies its last bundle to
/// `<run>/checkpoints/refit` and records `refit.json`.
fn run_refit(
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

/// Runs `f`, turning a panic (libtorch errors surface as panics: CUDA out of memory, a bad
/// tensor) into an error naming `what`, so a run always ends with `Failed` and its files.
fn guarded<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    crate::alloc::keep_large_blocks();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(anyhow::anyhow!("{what} panicked: {}", panic_text(&*p))),
    }
}

/// Draws `loss.png` (also after a failure) and reports a failure.
fn finish(
    run_dir: &Path,
    result: anyhow::Result<RunSummary>,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<RunSummary> {
    crate::alloc::release_free_memory();
    if run_dir.join("metrics.csv").is_file()
        && let Err(e) = crate::train::plot::write_loss_png(run_dir)
    {
        reporter.note(&format!("could not draw loss.png: {e:#}"));
    }
    if let Err(e) = &result {
        reporter.emit(&TrainEvent::Failed {
            error: format!("{e:#}"),
        });
    }
    result
}

/// Everything a run needs, fresh or resumed.
struct Session {
    run_id: String,
    run_dir: PathBuf,
    cfg: TrainConfig,
    class_names: Vec<String>,
    label_of: HashMap<i64, i64>,
    train_images: Vec<ExportImage>,
    /// Batches of the training images (plan, augmentation, prefetching).
    loader: TrainLoader,
    val_set: ExportSet,
    spec: ModelSpec,
    device: Device,
    vs: nn::VarStore,
    model: MaskRcnn,
    opt: Optimizer,
    state: TrainState,
    metrics: BufWriter<File>,
    /// The step the session started at (for the log).
    resumed_at: Option<usize>,
}

/// Images of `ids` (all must exist).
fn pick_images(set: &ExportSet, ids: &[i64]) -> anyhow::Result<Vec<ExportImage>> {
    let by_id: HashMap<i64, &ExportImage> = set.images.iter().map(|i| (i.id, i)).collect();
    ids.iter()
        .map(|id| {
            by_id.get(id).map(|i| (*i).clone()).with_context(|| {
                format!("image {id} of the run's split is no longer in the project")
            })
        })
        .collect()
}

fn build_model(
    cfg: &TrainConfig,
    model_cfg: &MaskRcnnConfig,
    device: Device,
) -> anyhow::Result<(nn::VarStore, MaskRcnn)> {
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = MaskRcnn::new(&vs.root(), model_cfg)?;
    Ok((vs, model))
}

const METRICS_HEADER_TAIL: &str = "total,lr,images_per_sec,memory_bytes";

/// Builds a fresh session: the seeded split (or `split` as given, for a refit), the
/// auto-configuration when `cfg.auto_config` (its reasons in `autoconfig.json` and `notes`),
/// `config.json`, the model and the loader.
fn start_fresh(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    split: Option<data::Split>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Session> {
    let set = data::read_project(project_dir)?;
    let (_, class_names, label_of) = data::label_map(&set);
    anyhow::ensure!(
        !class_names.is_empty(),
        "the project has no classes to train on"
    );
    let split =
        split.unwrap_or_else(|| data::split_images(&set.images, cfg.val_fraction, cfg.seed));
    anyhow::ensure!(
        !split.train.is_empty(),
        "the project has no training images"
    );
    let num_classes = class_names.len() as i64 + 1;
    let mut cfg = cfg.clone();
    if cfg.auto_config {
        let stats = DatasetStats::from_images(&pick_images(&set, &split.train)?);
        let resolved = autoconfig::resolve(&cfg, &stats, num_classes)?;
        crate::fsutil::write_atomic(
            &run_dir.join(AUTOCONFIG_FILE),
            (serde_json::to_string_pretty(&resolved.to_json(&stats))? + "\n").as_bytes(),
        )?;
        notes.extend(resolved.lines());
        cfg = resolved.config;
    }
    let cfg = &cfg;
    let model_cfg = cfg.model_config(num_classes)?;
    let device = crate::runtime::device(cfg.device)?;
    let project_abs = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
    let config_json = serde_json::json!({
        "run_id": run_id,
        "project": project_abs,
        "train": cfg,
        "model": &model_cfg,
        "device": format!("{device:?}"),
        "classes": &class_names,
        "split": {"train": &split.train, "val": &split.val},
    });
    crate::fsutil::write_atomic(
        &run_dir.join("config.json"),
        (serde_json::to_string_pretty(&config_json)? + "\n").as_bytes(),
    )?;

    let (mut vs, mut model) = build_model(cfg, &model_cfg, device)?;
    model.seed(cfg.seed);
    if cfg.pretrained_backbone && cfg.preset == Preset::CpuFast {
        load_imagenet_backbone(&mut vs, model_cfg.backbone)?;
    }
    if cfg.pretrained_backbone && cfg.preset == Preset::Quality {
        let init = crate::train::init::init_quality(&mut vs, &model_cfg)?;
        notes.push(init.note());
    }
    let opt = Optimizer::new(&vs, cfg);
    let train_images = pick_images(&set, &split.train)?;
    let val_set = ExportSet {
        classes: set.classes.clone(),
        images: pick_images(&set, &split.val)?,
    };
    let loader = new_loader(&train_images, &label_of, cfg)?;
    let epoch_steps: Vec<usize> = (0..cfg.epochs).map(|e| loader.steps_in_epoch(e)).collect();
    let planned: usize = epoch_steps.iter().sum();
    let total_iters = cfg.max_iters.map_or(planned, |m| m.min(planned));
    let mut state = TrainState::new(
        cfg.epochs,
        total_iters,
        Schedule {
            start: 0,
            total: total_iters,
            steps_per_epoch: epoch_steps.first().copied().unwrap_or(0),
            epoch_steps,
        },
        cfg.batch_size,
    );
    if cfg.amp && device.is_cuda() {
        state.loss_scaler = Some(LossScaler::default());
    }
    let metrics_path = run_dir.join("metrics.csv");
    let mut metrics = BufWriter::new(
        File::create(&metrics_path).with_context(|| format!("creating {metrics_path:?}"))?,
    );
    writeln!(
        metrics,
        "epoch,iter,{},{METRICS_HEADER_TAIL}",
        LOSS_NAMES.join(",")
    )?;
    metrics.flush()?;
    Ok(Session {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        cfg: cfg.clone(),
        class_names,
        label_of,
        train_images,
        loader,
        val_set,
        spec: model_spec(&model_cfg),
        device,
        vs,
        model,
        opt,
        state,
        metrics,
        resumed_at: None,
    })
}

fn start_resumed(
    run_dir: &Path,
    continue_epochs: Option<usize>,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<Session> {
    let config_path = run_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {config_path:?}"))?;
    let mut config_json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{config_path:?}: not valid JSON"))?;
    let field = |k: &str| {
        config_json
            .get(k)
            .cloned()
            .with_context(|| format!("{config_path:?}: {k:?} is missing"))
    };
    let mut cfg: TrainConfig = serde_json::from_value(field("train")?)
        .with_context(|| format!("{config_path:?}: \"train\""))?;
    let run_id: String = serde_json::from_value(field("run_id")?)?;
    let project_dir: PathBuf = serde_json::from_value(field("project")?)?;
    let saved_classes: Vec<String> = serde_json::from_value(field("classes")?)?;
    let split = field("split")?;
    let ids = |k: &str| -> anyhow::Result<Vec<i64>> {
        serde_json::from_value(split.get(k).cloned().unwrap_or_default())
            .with_context(|| format!("{config_path:?}: split.{k}"))
    };
    let (train_ids, val_ids) = (ids("train")?, ids("val")?);

    let (mut state, checkpoint) = run_state::read_state(run_dir)?;
    match continue_epochs {
        None => anyhow::ensure!(
            !state.finished,
            "the run in {run_dir:?} has finished; use --continue-epochs N to extend it"
        ),
        Some(n) => {
            anyhow::ensure!(n >= 1, "--continue-epochs must be at least 1");
            anyhow::ensure!(
                state.finished,
                "the run in {run_dir:?} has not finished (step {} of {}); resume it without --continue-epochs first",
                state.iter,
                state.total_iters
            );
        }
    }

    let set = data::read_project(&project_dir)?;
    let (_, class_names, label_of) = data::label_map(&set);
    anyhow::ensure!(
        class_names == saved_classes,
        "the project's classes changed since the run started ({saved_classes:?} → {class_names:?}); start a new run"
    );
    let train_images = pick_images(&set, &train_ids)?;
    let val_set = ExportSet {
        classes: set.classes.clone(),
        images: pick_images(&set, &val_ids)?,
    };
    let model_cfg = cfg.model_config(class_names.len() as i64 + 1)?;
    let device = crate::runtime::device(cfg.device)?;
    let (mut vs, model) = build_model(&cfg, &model_cfg, device)?;
    let mut opt = Optimizer::new(&vs, &cfg);
    Bundle::read(&checkpoint)
        .and_then(|b| b.load_weights(&mut vs))
        .with_context(|| format!("loading the weights of {checkpoint:?}"))?;
    opt.load(&checkpoint.join(run_state::OPTIMIZER_FILE))?;

    let loader = new_loader(&train_images, &label_of, &cfg)?;
    if let Some(n) = continue_epochs {
        // The added epochs keep their numbers (and so their batch plans and augmentations).
        let epoch_steps: Vec<usize> = (state.epochs..state.epochs + n)
            .map(|e| loader.steps_in_epoch(e))
            .collect();
        let steps: usize = epoch_steps.iter().sum();
        cfg.epochs = state.epochs + n;
        cfg.max_iters = None;
        state.epochs = cfg.epochs;
        state.schedule = Schedule {
            start: state.iter,
            total: steps,
            steps_per_epoch: epoch_steps.first().copied().unwrap_or(0),
            epoch_steps,
        };
        state.total_iters = state.iter + steps;
        state.finished = false;
        state.stopped_early = false;
        state.evals_since_best = 0;
        config_json["train"] = serde_json::to_value(&cfg)?;
        crate::fsutil::write_atomic(
            &config_path,
            (serde_json::to_string_pretty(&config_json)? + "\n").as_bytes(),
        )?;
        reporter.note(&format!(
            "continuing for {n} more epochs ({steps} steps) with a new schedule"
        ));
    }
    if cfg.amp && device.is_cuda() && state.loss_scaler.is_none() {
        state.loss_scaler = Some(LossScaler::default());
    }
    let metrics = reopen_metrics(&run_dir.join("metrics.csv"), state.iter)?;
    Ok(Session {
        run_id,
        run_dir: run_dir.to_path_buf(),
        cfg,
        class_names,
        label_of,
        train_images,
        loader,
        val_set,
        spec: model_spec(&model_cfg),
        device,
        vs,
        model,
        opt,
        resumed_at: Some(state.iter),
        state,
        metrics,
    })
}

/// Keeps the header and the rows of steps before `iter` (a crash may have logged steps after
/// the last checkpoint), then opens the file for appending.
fn reopen_metrics(path: &Path, iter: usize) -> anyhow::Result<BufWriter<File>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate() {
        let step: Option<usize> = line.split(',').nth(1).and_then(|v| v.parse().ok());
        if i == 0 || step.is_some_and(|s| s < iter) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_atomic(path, kept.as_bytes())?;
    let f = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path:?}"))?;
    Ok(BufWriter::new(f))
}

/// The seed of the RoI samplers in step `iter`: a pure function of the run seed and the step,
/// so a resumed run draws the same numbers (augmentation is seeded by the loader).
fn step_seed(seed: u64, iter: usize) -> u64 {
    SplitMix64::new(seed ^ (iter as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// The loader over the training images (`cfg`'s batch size, seed and augmentation).
fn new_loader(
    train_images: &[ExportImage],
    label_of: &HashMap<i64, i64>,
    cfg: &TrainConfig,
) -> anyhow::Result<TrainLoader> {
    let refs: Vec<&ExportImage> = train_images.iter().collect();
    TrainLoader::new(&refs, label_of, cfg)
}

/// Losses of one step (weighted over micro-batches).
struct StepLosses {
    total: f64,
    parts: BTreeMap<String, f64>,
    /// What became NaN/inf (`"loss"`, `"gradient norm"`) and its value; the step was not applied.
    non_finite: Option<(&'static str, f64)>,
}

fn is_out_of_memory(e: &anyhow::Error) -> bool {
    format!("{e:#}")
        .to_ascii_lowercase()
        .contains("out of memory")
}

impl Session {
    /// Forward + backward over `batch` in micro-batches of `micro` images, the loss of each
    /// weighted by its share of the batch (gradients accumulate). Returns early, without a
    /// backward pass, when a loss is not finite. Libtorch errors that surface as panics (CUDA
    /// out of memory in `backward`) come back as errors.
    fn accumulate(
        &self,
        batch: &Batch,
        micro: usize,
        loss_scale: f64,
    ) -> anyhow::Result<StepLosses> {
        let amp = self.state.loss_scaler.is_some();
        let run = || -> anyhow::Result<StepLosses> {
            let n = batch.len() as f64;
            let mut out = StepLosses {
                total: 0.0,
                parts: BTreeMap::new(),
                non_finite: None,
            };
            let micro = micro.max(1);
            // The batch stays on the CPU so an out-of-memory retry can split it again.
            for (images, targets) in batch.images.chunks(micro).zip(batch.targets.chunks(micro)) {
                let images: Vec<Tensor> = images.iter().map(|t| t.to_device(self.device)).collect();
                let targets: Vec<Target> =
                    targets.iter().map(|t| to_device(t, self.device)).collect();
                // The panic is caught inside `autocast` so its nesting is always restored.
                let forward = crate::profile::scope("forward");
                let losses = tch::autocast(amp, || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.model.forward_train(&images, &targets)
                    }))
                })
                .map_err(|p| anyhow::anyhow!("libtorch: {}", panic_text(&*p)))??;
                let weight = images.len() as f64 / n;
                let total_t = losses.total();
                let total = total_t.double_value(&[]);
                drop(forward);
                out.total += weight * total;
                for (k, v) in losses.to_map() {
                    *out.parts.entry(k).or_default() += weight * v;
                }
                if !total.is_finite() {
                    out.non_finite = Some(("loss", total));
                    return Ok(out);
                }
                crate::profile::timed("backward", || {
                    (total_t * (weight * loss_scale)).f_backward()
                })?;
            }
            Ok(out)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(anyhow::anyhow!("libtorch: {}", panic_text(&*p))),
        }
    }

    /// One optimiser step on `batch` (not applied when a value is not finite, or when mixed
    /// precision overflowed). The RoI samplers are seeded from the step; the batch's
    /// augmentation was seeded by the loader from its epoch and position.
    fn step(&mut self, batch: &Batch, lr: f64) -> anyhow::Result<StepLosses> {
        let iter = self.state.iter;
        let seed = step_seed(self.cfg.seed, iter);
        let losses = loop {
            crate::profile::timed("zero_grad", || self.opt.zero_grad());
            self.model.seed(seed);
            let scale = self.state.loss_scaler.map_or(1.0, |s| s.scale);
            match self.accumulate(batch, self.state.micro_batch, scale) {
                Ok(l) => break l,
                Err(e)
                    if self.device.is_cuda()
                        && is_out_of_memory(&e)
                        && self.state.micro_batch > 1 =>
                {
                    // Retry the same step in smaller pieces (same effective batch).
                    self.opt.zero_grad();
                    self.state.micro_batch = self.state.micro_batch.div_ceil(2);
                    log::warn!(
                        "CUDA out of memory at step {iter}; retrying with {} images per forward pass",
                        self.state.micro_batch
                    );
                }
                Err(e) => return Err(e.context(format!("step {iter}"))),
            }
        };
        if losses.non_finite.is_some() {
            return Ok(losses);
        }
        let mut apply = true;
        if let Some(scaler) = &mut self.state.loss_scaler {
            apply = scaler.unscale_and_check(&mut self.opt);
            if !apply {
                log::warn!(
                    "mixed precision overflow at step {iter}: step skipped, loss scale now {}",
                    scaler.scale
                );
            }
        }
        if apply {
            if let Some(max) = self.cfg.clip_grad_norm {
                let norm = self.opt.clip_grad_norm(max);
                if !norm.is_finite() {
                    return Ok(StepLosses {
                        non_finite: Some(("gradient norm", norm)),
                        ..losses
                    });
                }
            }
            crate::profile::timed("optimizer", || self.opt.step(lr));
        }
        Ok(losses)
    }

    fn last_dir(&self) -> PathBuf {
        self.run_dir.join(LAST_CHECKPOINT)
    }

    fn save_last(&self, reporter: &mut Reporter<'_>) -> anyhow::Result<PathBuf> {
        let dir = self.last_dir();
        run_state::write_checkpoint(
            &dir,
            &self.spec,
            &self.class_names,
            &self.vs,
            Some((&self.opt, &self.state)),
        )
        .with_context(|| format!("writing the checkpoint {dir:?}"))?;
        reporter.emit(&TrainEvent::CheckpointSaved { path: dir.clone() });
        Ok(dir)
    }

    /// Whether every trainable weight is finite (checked before a checkpoint replaces the last).
    fn weights_finite(&self) -> bool {
        tch::no_grad(|| {
            self.vs
                .trainable_variables()
                .iter()
                .all(|t| t.isfinite().all().int64_value(&[]) != 0)
        })
    }

    /// Mask and box AP of `checkpoint` on the validation images.
    /// A panic in libtorch (second model on a full GPU, a bad tensor) is an error here, like
    /// one in a step.
    fn validate(&self, checkpoint: &Path) -> anyhow::Result<(f64, f64)> {
        guarded("validation", || {
            let predictor = crate::infer::Predictor::load(checkpoint, self.device, None)?;
            let r = crate::eval::project::evaluate_set(&self.val_set, &predictor, &mut |_, _| {
                crate::fault::hit("train-validation");
            })
            .context("validation")?;
            Ok((r.segm.stats[0], r.bbox.stats[0]))
        })
    }

    fn nan_error(
        &self,
        what: &str,
        value: f64,
        epoch: usize,
        parts: &BTreeMap<String, f64>,
    ) -> anyhow::Error {
        let detail: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let kept = match run_state::checkpoint_dir(&self.run_dir, LAST_CHECKPOINT) {
            Some(dir) => format!("the last good checkpoint {} is kept", dir.display()),
            None => "no checkpoint had been written yet".to_owned(),
        };
        anyhow::anyhow!(
            "the {what} became {value} at step {} (epoch {epoch}; {}); training stopped, {kept}. \
             Lower the learning rate or set clip_grad_norm.",
            self.state.iter,
            detail.join(", ")
        )
    }

    fn run(
        mut self,
        control: &TrainControl,
        reporter: &mut Reporter<'_>,
    ) -> anyhow::Result<RunSummary> {
        let mut counts = vec![0u64; self.class_names.len()];
        for image in &self.train_images {
            for inst in image.instances.iter().filter(|i| !i.iscrowd) {
                if let Some(&l) = self.label_of.get(&inst.class_id) {
                    counts[(l - 1) as usize] += 1;
                }
            }
        }
        reporter.emit(&TrainEvent::Started {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            config: self.cfg.clone(),
            train_images: self.train_images.len(),
            val_images: self.val_set.images.len(),
            class_counts: self.class_names.iter().cloned().zip(counts).collect(),
            total_iters: self.state.total_iters,
        });
        if let Some(at) = self.resumed_at {
            reporter.note(&format!(
                "resumed at step {at} (epoch {}, {} steps into it)",
                self.state.epoch, self.state.partial.steps
            ));
        }
        let mut cancelled = false;
        let mut checkpoint = None;
        let mut best = run_state::checkpoint_dir(&self.run_dir, BEST_CHECKPOINT);
        while !self.state.finished {
            if self.state.iter >= self.state.total_iters || self.state.epoch >= self.state.epochs {
                self.state.finished = true;
                break;
            }
            let epoch = self.state.epoch;
            self.opt
                .set_trainable(FROZEN_PREFIX, epoch >= self.cfg.freeze_epochs);
            if epoch < self.cfg.freeze_epochs && self.state.partial.steps == 0 {
                reporter.note(&format!("epoch {epoch}: backbone body frozen"));
            }
            // A resumed epoch restarts at the batch after the last one taken; breaking out
            // (cancel, step limit) drops the iterator, which stops its worker threads.
            let first = self.state.partial.steps;
            let mut batches = self.loader.epoch_from(epoch, first);
            loop {
                let waiting = crate::profile::scope("data_wait");
                let Some(batch) = batches.next() else { break };
                drop(waiting);
                if self.state.iter >= self.state.total_iters {
                    break;
                }
                if control.is_paused() {
                    reporter.note(&format!("paused before step {}", self.state.iter));
                    while control.is_paused() && !control.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    reporter.note("resumed");
                }
                if control.is_cancelled() {
                    cancelled = true;
                    break;
                }
                let started = Instant::now();
                let iter = self.state.iter;
                let lr = self.state.schedule.lr(&self.cfg, iter);
                let batch = batch.with_context(|| format!("loading the batch of step {iter}"))?;
                let losses = self.step(&batch, lr)?;
                if let Some((what, value)) = losses.non_finite {
                    return Err(self.nan_error(what, value, epoch, &losses.parts));
                }
                let seconds = started.elapsed().as_secs_f64();
                let images_per_sec = batch.len() as f64 / seconds.max(1e-9);
                let memory_bytes = run_state::process_rss();
                let cols: Vec<String> = LOSS_NAMES
                    .iter()
                    .map(|k| {
                        losses
                            .parts
                            .get(*k)
                            .copied()
                            .unwrap_or(f64::NAN)
                            .to_string()
                    })
                    .collect();
                writeln!(
                    self.metrics,
                    "{epoch},{iter},{},{},{lr},{images_per_sec},{}",
                    cols.join(","),
                    losses.total,
                    memory_bytes.map_or_else(String::new, |m| m.to_string())
                )?;
                self.metrics.flush()?;
                let p = &mut self.state.partial;
                p.steps += 1;
                p.loss_sum += losses.total;
                for (k, v) in &losses.parts {
                    *p.loss_sums.entry(k.clone()).or_default() += v;
                }
                p.seconds += seconds;
                p.lr = lr;
                self.state.iter += 1;
                reporter.emit(&TrainEvent::Step {
                    epoch,
                    iter,
                    losses: losses.parts,
                    total: losses.total,
                    lr,
                    images_per_sec,
                    memory_bytes,
                });
            }
            if cancelled {
                break;
            }
            self.end_epoch(epoch, reporter, &mut checkpoint, &mut best)?;
        }
        if cancelled {
            if self.weights_finite() {
                checkpoint = Some(self.save_last(reporter)?);
            } else {
                reporter.note("cancelled with non-finite weights: the last checkpoint is kept");
            }
        }
        let final_loss = if self.state.partial.steps > 0 {
            Some(self.state.partial.loss_sum / self.state.partial.steps as f64)
        } else {
            self.state.history.last().map(|r| r.mean_loss)
        };
        if self.state.stopped_early {
            reporter.note(&format!(
                "early stopping: validation mask AP did not improve for {} evaluations (best {:.4} at epoch {})",
                self.state.evals_since_best,
                self.state.best_segm_ap.unwrap_or(f64::NAN),
                self.state.best_epoch.map_or_else(|| "-".to_owned(), |e| e.to_string())
            ));
        }
        reporter.emit(&TrainEvent::Finished {
            iterations: self.state.iter,
            cancelled,
            final_loss,
        });
        Ok(RunSummary {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            iterations: self.state.iter,
            epochs_completed: self
                .state
                .history
                .iter()
                .filter(|r| r.steps == self.loader.steps_in_epoch(r.epoch))
                .count(),
            cancelled,
            stopped_early: self.state.stopped_early,
            final_loss,
            checkpoint: checkpoint
                .or_else(|| run_state::checkpoint_dir(&self.run_dir, LAST_CHECKPOINT)),
            best_checkpoint: best,
            best_segm_ap: self.state.best_segm_ap,
            refit_checkpoint: None,
        })
    }

    /// Closes the epoch: record, checkpoint, validation, best checkpoint, early stopping.
    fn end_epoch(
        &mut self,
        epoch: usize,
        reporter: &mut Reporter<'_>,
        checkpoint: &mut Option<PathBuf>,
        best: &mut Option<PathBuf>,
    ) -> anyhow::Result<()> {
        let p = std::mem::take(&mut self.state.partial);
        if p.steps == 0 {
            self.state.finished = true;
            return Ok(());
        }
        let steps = p.steps as f64;
        self.state.history.push(EpochRecord {
            epoch,
            steps: p.steps,
            mean_loss: p.loss_sum / steps,
            mean_losses: p
                .loss_sums
                .iter()
                .map(|(k, v)| (k.clone(), v / steps))
                .collect(),
            lr: p.lr,
            val_segm_ap: None,
            val_bbox_ap: None,
            seconds: p.seconds,
        });
        self.state.epoch = epoch + 1;
        let last_epoch =
            self.state.epoch >= self.state.epochs || self.state.iter >= self.state.total_iters;
        if last_epoch {
            self.state.finished = true;
        }
        if !self.weights_finite() {
            return Err(self.nan_error("weights", f64::NAN, epoch, &BTreeMap::new()));
        }
        let dir = self.save_last(reporter)?;
        *checkpoint = Some(dir.clone());
        let every = self.cfg.eval_every;
        let due = every > 0
            && !self.val_set.images.is_empty()
            && ((epoch + 1).is_multiple_of(every) || last_epoch);
        if due {
            let (segm, bbox) = match self.validate(&dir) {
                Ok(v) => v,
                Err(e) => {
                    // The epoch's record stays with the run (its checkpoint is written).
                    if let Err(w) = run_state::write_epochs_csv(&self.run_dir, &self.state.history)
                    {
                        reporter.note(&format!("could not write epochs.csv: {w:#}"));
                    }
                    return Err(e);
                }
            };
            if let Some(r) = self.state.history.last_mut() {
                r.val_segm_ap = Some(segm);
                r.val_bbox_ap = Some(bbox);
            }
            if self.state.record_validation(epoch, segm, self.cfg.patience) {
                let best_dir = self.run_dir.join(BEST_CHECKPOINT);
                run_state::write_checkpoint(
                    &best_dir,
                    &self.spec,
                    &self.class_names,
                    &self.vs,
                    None,
                )
                .with_context(|| format!("writing the checkpoint {best_dir:?}"))?;
                reporter.emit(&TrainEvent::CheckpointSaved {
                    path: best_dir.clone(),
                });
                *best = Some(best_dir);
            }
            // The checkpoint's state now records the evaluation (one atomic file).
            crate::fsutil::write_atomic(
                &dir.join(run_state::STATE_FILE),
                (serde_json::to_string_pretty(&self.state)? + "\n").as_bytes(),
            )?;
        }
        run_state::write_epochs_csv(&self.run_dir, &self.state.history)?;
        if let Some(r) = self.state.history.last() {
            reporter.emit(&TrainEvent::EpochEnd {
                epoch,
                mean_loss: r.mean_loss,
                steps: r.steps,
                val_segm_ap: r.val_segm_ap,
                val_bbox_ap: r.val_bbox_ap,
            });
        }
        Ok(())
    }
}

fn to_device(t: &Target, device: Device) -> Target {
    Target {
        boxes: t.boxes.to_device(device),
        labels: t.labels.to_device(device),
        masks: t.masks.to_device(device),
    }
}

/// Loads the ImageNet weights of the backbone (`BackboneOnly`) from the verified catalogue file.
fn load_imagenet_backbone(vs: &mut nn::VarStore, backbone: Backbone) -> anyhow::Result<()> {
    let name = match backbone {
        Backbone::MobilenetV2 => "mobilenet_v2_imagenet",
        Backbone::Resnet50 => anyhow::bail!("no ImageNet ResNet-50 weights in the catalogue"),
    };
    let entry = crate::runtime::pretrained(name)
        .with_context(|| format!("{name} is not in the weights catalogue"))?;
    let (path, source) = crate::runtime::fetch_pretrained(entry)?;
    log::info!("backbone weights {path:?} ({source:?})");
    let tensors = crate::model::checkpoint::read_checkpoint(&path)?;
    let tensors = weights::remap_imagenet(tensors, "backbone.body.");
    let report = weights::load_partial(vs, &tensors, PartialLoad::BackboneOnly)?;
    anyhow::ensure!(
        report.missing.is_empty(),
        "the ImageNet file lacks backbone variables: {:?}",
        report.missing
    );
    Ok(())
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn step_randomness_depends_only_on_seed_and_step() {
        assert_eq!(step_seed(3, 10), step_seed(3, 10));
        assert_ne!(step_seed(3, 10), step_seed(3, 11));
        assert_ne!(step_seed(3, 10), step_seed(4, 10));
    }
}
