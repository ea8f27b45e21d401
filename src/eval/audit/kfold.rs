//! The k-fold audit ([`audit_kfold`]): the audited images are dealt into K folds by a seeded
//! shuffle; fold i trains a model with the `train` recipe on the other K − 1 folds in
//! `<project>/audits/kfold-<id>/fold-<i>/` (an ordinary run folder: `config.json` records the
//! held-out fold as its validation split, never evaluated, so nothing is chosen on it), then
//! that model's last checkpoint predicts fold i. The findings of every fold are stored as one
//! audit.
//!
//! Resumable: `kfold.json` (the [`KFoldPlan`]: seed, K, fold membership, recipe) is written
//! before the first fold; a later call with the same request (or `resume`) finds it, skips the
//! folds whose training finished and continues an interrupted one with [`crate::train::resume`].
//! Cancellable before any training step and before each predicted image ([`AuditCancelled`]).
//! [`estimate_kfold`] gives the time it will take before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::AuditParams;
use super::run::{
    AuditCancelled, AuditOutcome, AuditProgress, Audited, FoldState, StoreRequest, audit_images,
    load_predictor, params_json, store,
};
use crate::cancel::CancelToken;
use crate::dataset::ExportImage;
use crate::dataset::store::{AuditMode, Project};
use crate::rng::SplitMix64;
use crate::train::config::{Preset, RefitMode, TrainConfig};
use crate::train::data::Split;
use crate::train::observer::{TrainEvent, TrainObserver};
use crate::train::runs::{CONFIG_FILE, RUNS_DIR, RunConfig};
use crate::train::state::{self as run_state, LAST_CHECKPOINT};
use crate::train::trainer::{TrainControl, train_split};

/// Folder of a project's audit work (`<project>/audits`): k-fold folders live in it.
pub const AUDITS_DIR: &str = "audits";
/// A k-fold folder's plan file ([`KFoldPlan`]).
pub const PLAN_FILE: &str = "kfold.json";
/// The plan file's format name and version.
pub const PLAN_FORMAT: &str = "maskstudio-kfold/1";
/// Mixed into the recipe's seed for the fold shuffle ("KFOLDS" in ASCII), so the folds do not
/// repeat the trainer's own seeded streams.
const FOLD_SALT: u64 = 0x0000_4b46_4f4c_4453;

/// Training speed when no earlier run of the project is comparable, in training images per
/// second at an input size (scaled by pixel count to the recipe's). Measured on the sample
/// project on this development machine (2-core x86-64 CPU, libtorch 2.13, other builds sharing
/// the CPU: load 5): `maskstudio train --preset cpu-fast --max-iters 8 --batch-size 2
/// --no-auto-config` ran 0.59–0.86 images/s (median 0.75) at 320 px; `--preset quality
/// --max-iters 3 --batch-size 1` 0.065–0.072 at 1333 px.
const DEFAULT_IMAGES_PER_SEC: [(Preset, f64, u32); 2] =
    [(Preset::CpuFast, 0.75, 320), (Preset::Quality, 0.07, 1333)];
/// Seconds to predict one held-out image, by preset: cpu-fast measured with `maskstudio
/// predict` on the 24 sample images (85 s, an untrained model's 64 detections per image, same
/// machine and load); quality scaled from it by the presets' training-speed ratio (≈ 10×).
const DEFAULT_PREDICT_SECONDS: [(Preset, f64); 2] =
    [(Preset::CpuFast, 3.5), (Preset::Quality, 35.0)];

/// A k-fold audit's plan, saved as `kfold.json` in its folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KFoldPlan {
    /// [`PLAN_FORMAT`].
    pub format: String,
    /// The folder's id (`kfold-<id>`, a UTC time).
    pub id: String,
    /// The project folder (absolute).
    pub project: PathBuf,
    /// Number of folds.
    pub k: usize,
    /// Seed of the fold shuffle (the recipe's seed).
    pub seed: u64,
    /// The audited split (`None`: train + validation).
    pub split: Option<String>,
    /// The recipe every fold trains with (as `train` builds it from the preset and flags).
    pub recipe: TrainConfig,
    /// Image ids of each fold, ascending.
    pub folds: Vec<Vec<i64>>,
    /// The stored audit, once every fold is done (a finished plan is not resumed by itself).
    pub audit_id: Option<i64>,
}

/// Largest `kfold.json` read (`--resume DIR` may point anywhere): a plan lists image ids, ~10
/// bytes each, so 64 MiB holds millions of images.
const MAX_PLAN_BYTES: u64 = 64 << 20;

impl KFoldPlan {
    /// Reads `<dir>/kfold.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(PLAN_FILE);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("reading {path:?}"))?
            .len();
        anyhow::ensure!(
            size <= MAX_PLAN_BYTES,
            "{path:?}: {size} bytes is not a k-fold audit plan (at most {MAX_PLAN_BYTES})"
        );
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
        let plan: Self = serde_json::from_str(&text)
            .with_context(|| format!("{path:?}: not a k-fold audit plan"))?;
        anyhow::ensure!(
            plan.format == PLAN_FORMAT,
            "{path:?}: unknown format {:?}",
            plan.format
        );
        anyhow::ensure!(
            plan.k >= 2 && plan.folds.len() == plan.k,
            "{path:?}: {} folds listed for k = {}",
            plan.folds.len(),
            plan.k
        );
        Ok(plan)
    }

    /// Writes `<dir>/kfold.json` atomically.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)? + "\n";
        crate::fsutil::write_atomic(&dir.join(PLAN_FILE), json.as_bytes())?;
        Ok(())
    }

    /// The run folder of fold `i` (0-based) inside the plan's folder `dir`: `fold-<i + 1>`.
    pub fn fold_dir(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("fold-{}", i + 1))
    }

    /// Every image of the plan, ascending.
    fn images(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.folds.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

/// What a k-fold audit should do.
#[derive(Debug, Clone, PartialEq)]
pub struct KFoldRequest {
    /// Number of folds (at least 2).
    pub folds: usize,
    /// The training recipe of every fold (`train`'s, from the preset and the recipe flags); its
    /// seed also deals the folds. Refit, validation and early stopping are turned off per fold.
    pub recipe: TrainConfig,
    /// The split to audit (`None`: train + validation, test images left out; `all`: every
    /// image).
    pub split: Option<String>,
    /// A k-fold folder to continue; `None` continues the newest unfinished one of the same
    /// request, else starts a new one.
    pub resume: Option<PathBuf>,
    /// Audit thresholds.
    pub params: AuditParams,
}

/// How long a k-fold audit will take, before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct KFoldEstimate {
    /// Folds.
    pub folds: usize,
    /// Images audited.
    pub images: usize,
    /// Training steps of the largest fold.
    pub steps_per_fold: usize,
    /// Seconds per training step.
    pub seconds_per_step: f64,
    /// Seconds to predict one image.
    pub seconds_per_image: f64,
    /// The whole audit: K × steps × seconds per step + images × seconds per image.
    pub seconds: f64,
    /// Where the seconds per step come from (an earlier run, or the stated default).
    pub source: String,
}

impl KFoldEstimate {
    /// `3 × 40 steps × 2.67 s/step + 24 images × 3.50 s ≈ 7 min (source)`.
    pub fn describe(&self) -> String {
        let minutes = self.seconds / 60.0;
        let total = if minutes >= 90.0 {
            format!("{:.1} h", minutes / 60.0)
        } else if minutes >= 1.0 {
            format!("{minutes:.0} min")
        } else {
            format!("{:.0} s", self.seconds)
        };
        format!(
            "{} × {} steps × {:.2} s/step + {} images × {:.2} s ≈ {total} ({})",
            self.folds,
            self.steps_per_fold,
            self.seconds_per_step,
            self.images,
            self.seconds_per_image,
            self.source
        )
    }
}

/// The images a k-fold audit of `split` covers: `None` every image not in `test` (train +
/// validation), `all` every image, else the images of that split.
fn audited_images(project: &Project, split: Option<&str>) -> anyhow::Result<Vec<ExportImage>> {
    let set = project.export_set(split.filter(|s| *s != "all"))?;
    Ok(set
        .images
        .into_iter()
        .filter(|m| split.is_some() || m.split.as_deref() != Some("test"))
        .collect())
}

/// Deals `ids` into `k` folds: sorted, shuffled with `seed`, image j of the shuffle into fold
/// j mod k; each fold ascending. Fold sizes differ by at most one.
pub fn deal_folds(ids: &[i64], k: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    SplitMix64::new(seed ^ FOLD_SALT).shuffle(&mut ids);
    let mut folds = vec![Vec::new(); k.max(1)];
    for (j, id) in ids.into_iter().enumerate() {
        folds[j % k.max(1)].push(id);
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    folds
}

/// The recipe of one fold: `recipe` without refit, validation or early stopping (the held-out
/// fold must not choose anything), predicting with its last checkpoint.
fn fold_recipe(recipe: &TrainConfig) -> TrainConfig {
    TrainConfig {
        refit: RefitMode::Off,
        eval_every: 0,
        patience: None,
        ..recipe.clone()
    }
}

/// The preset's name as written in configs (`cpu-fast`, `quality`).
fn preset_name(preset: Preset) -> String {
    serde_json::to_value(preset)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{preset:?}"))
}

/// The model text of a k-fold audit: `k-fold 5× cpu-fast`.
pub fn kfold_model_text(k: usize, preset: Preset) -> String {
    format!("k-fold {k}× {}", preset_name(preset))
}

/// Estimates a k-fold audit of `split` with `recipe` before it starts. Seconds per step come
/// from the project's newest run with the same preset, input size and device (its
/// `metrics.csv` images/s, median over the steps), else from a run of the same preset scaled
/// by pixel count, else from the preset's measured default ([`DEFAULT_IMAGES_PER_SEC`]);
/// [`KFoldEstimate::source`] says which.
pub fn estimate_kfold(
    project_dir: &Path,
    recipe: &TrainConfig,
    folds: usize,
    split: Option<&str>,
) -> anyhow::Result<KFoldEstimate> {
    anyhow::ensure!(folds >= 2, "k-fold needs at least 2 folds, not {folds}");
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let images = audited_images(&project, split)?.len();
    let smallest_fold = images / folds;
    let train_images = images - smallest_fold;
    let batch = recipe.batch_size.max(1);
    let per_epoch = train_images.div_ceil(batch);
    let planned = per_epoch * recipe.epochs;
    let steps_per_fold = recipe.max_iters.map_or(planned, |m| m.min(planned));
    let size = recipe.resolved_image_size();
    let (images_per_sec, source) = measured_speed(project_dir, recipe).unwrap_or_else(|| {
        let (ips, at) = DEFAULT_IMAGES_PER_SEC
            .iter()
            .find(|d| d.0 == recipe.preset)
            .map_or((1.0, size), |d| (d.1, d.2));
        let scaled = ips * pixel_ratio(at, size);
        (
            scaled,
            format!(
                "no earlier run of this preset in the project: the {} default of {ips} images/s \
                 at {at} px on a 2-core CPU, scaled to {size} px",
                preset_name(recipe.preset)
            ),
        )
    });
    let seconds_per_step = batch as f64 / images_per_sec.max(1e-6);
    let seconds_per_image = DEFAULT_PREDICT_SECONDS
        .iter()
        .find(|d| d.0 == recipe.preset)
        .map_or(1.0, |d| d.1);
    let seconds =
        folds as f64 * steps_per_fold as f64 * seconds_per_step + images as f64 * seconds_per_image;
    Ok(KFoldEstimate {
        folds,
        images,
        steps_per_fold,
        seconds_per_step,
        seconds_per_image,
        seconds,
        source,
    })
}

/// `(at / size)²`: how many times more images per second at `size` than at `at`.
fn pixel_ratio(at: u32, size: u32) -> f64 {
    (f64::from(at) / f64::from(size.max(1))).powi(2)
}

/// Images per second from the project's runs: the newest with the same preset, input size and
/// device, else the newest of the same preset scaled by pixel count; with where it came from.
fn measured_speed(project_dir: &Path, recipe: &TrainConfig) -> Option<(f64, String)> {
    let device = crate::host::device(recipe.device)
        .ok()
        .map(|d| format!("{d:?}"));
    let size = recipe.resolved_image_size();
    let runs = crate::train::runs::scan_runs(&project_dir.join(RUNS_DIR));
    let mut fallback = None;
    for run in &runs {
        let Ok(config) = RunConfig::read(&run.dir) else {
            continue;
        };
        let Some(train) = &config.train else {
            continue;
        };
        if train.preset != recipe.preset {
            continue;
        }
        let Some(ips) = median_images_per_sec(&run.dir) else {
            continue;
        };
        let run_size = train.resolved_image_size();
        if run_size == size && config.device == device {
            return Some((
                ips,
                format!(
                    "measured in run {}: median {ips:.2} images/s at {size} px",
                    run.id
                ),
            ));
        }
        if fallback.is_none() {
            let scaled = ips * pixel_ratio(run_size, size);
            fallback = Some((
                scaled,
                format!(
                    "run {} measured {ips:.2} images/s at {run_size} px on {}; scaled to {size} px",
                    run.id,
                    config.device.as_deref().unwrap_or("?")
                ),
            ));
        }
    }
    fallback
}

/// Median of `metrics.csv`'s `images_per_sec` column (the first two steps, warm-up, left out
/// when there are more than four).
fn median_images_per_sec(run_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.csv")).ok()?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    let col = header.iter().position(|h| *h == "images_per_sec")?;
    let mut v: Vec<f64> = lines
        .filter_map(|l| l.split(',').nth(col)?.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if v.len() > 4 {
        v.drain(..2);
    }
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Forwards a fold's training events as [`AuditProgress::Training`].
struct FoldObserver<'a> {
    fold: usize,
    folds: usize,
    progress: &'a mut dyn FnMut(AuditProgress),
}

impl TrainObserver for FoldObserver<'_> {
    fn on_event(&mut self, e: &TrainEvent) {
        (self.progress)(AuditProgress::Training {
            fold: self.fold,
            folds: self.folds,
            event: e.clone(),
        });
    }
}

/// A new `audits/kfold-<YYYYmmdd-HHMMSS[-n]>` folder (UTC).
fn new_plan_dir(audits: &Path) -> anyhow::Result<(String, PathBuf)> {
    crate::train::runs::create_dated_dir(audits, "kfold-")
}

/// The newest unfinished plan under `audits` made for the same request (folds, seed, split,
/// recipe and the same images).
fn unfinished_plan(
    audits: &Path,
    req: &KFoldRequest,
    images: &[i64],
) -> Option<(KFoldPlan, PathBuf)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(audits)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kfold-"))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|dir| {
        let plan = KFoldPlan::read(&dir).ok()?;
        let same = plan.audit_id.is_none()
            && plan.k == req.folds
            && plan.seed == req.recipe.seed
            && plan.split == req.split
            && plan.recipe == req.recipe
            && plan.images() == images;
        same.then_some((plan, dir))
    })
}

/// Runs a k-fold audit of the project at `project_dir` (see the module docs) and stores its
/// findings as one audit. `cancel` stops it before the next training step or predicted image
/// with an [`AuditCancelled`] error naming the folder to resume; `progress` hears notes, each
/// fold's start and training events, and its predictions.
pub fn audit_kfold(
    project_dir: &Path,
    req: &KFoldRequest,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(AuditProgress),
) -> anyhow::Result<AuditOutcome> {
    let mut project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let project_abs = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
    let audits = project_dir.join(AUDITS_DIR);
    let (plan, dir) = match &req.resume {
        Some(dir) => {
            let plan = KFoldPlan::read(dir)?;
            let planned = std::fs::canonicalize(&plan.project).unwrap_or(plan.project.clone());
            anyhow::ensure!(
                planned == project_abs,
                "{:?} is a k-fold audit of {:?}, not of {project_dir:?}",
                dir.join(PLAN_FILE),
                plan.project
            );
            progress(AuditProgress::Note(format!(
                "continuing the k-fold audit in {}",
                dir.display()
            )));
            (plan, dir.clone())
        }
        None => {
            anyhow::ensure!(
                req.folds >= 2,
                "k-fold needs at least 2 folds, not {}",
                req.folds
            );
            req.recipe.validate()?;
            let images = audited_images(&project, req.split.as_deref())?;
            let in_split = req.split.as_deref().map_or_else(
                || " (train + validation)".to_owned(),
                |s| format!(" of split {s}"),
            );
            anyhow::ensure!(
                images.len() >= req.folds,
                "{} images{in_split} cannot fill {} folds",
                images.len(),
                req.folds
            );
            let mut ids: Vec<i64> = images.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            match unfinished_plan(&audits, req, &ids) {
                Some((plan, dir)) => {
                    progress(AuditProgress::Note(format!(
                        "continuing the unfinished k-fold audit in {} (same folds, seed, split and \
                         recipe)",
                        dir.display()
                    )));
                    (plan, dir)
                }
                None => {
                    let (id, dir) = new_plan_dir(&audits)?;
                    let plan = KFoldPlan {
                        format: PLAN_FORMAT.to_owned(),
                        id,
                        project: project_abs.clone(),
                        k: req.folds,
                        seed: req.recipe.seed,
                        split: req.split.clone(),
                        recipe: req.recipe.clone(),
                        folds: deal_folds(&ids, req.folds, req.recipe.seed),
                        audit_id: None,
                    };
                    plan.write(&dir)?;
                    progress(AuditProgress::Note(format!(
                        "k-fold audit: {} images{in_split} in {} folds (seed {}), runs in {}",
                        ids.len(),
                        req.folds,
                        req.recipe.seed,
                        dir.display()
                    )));
                    (plan, dir)
                }
            }
        }
    };
    run_plan(
        &mut project,
        project_dir,
        plan,
        &dir,
        &req.params,
        cancel,
        progress,
    )
}

/// Trains (or resumes, or skips) each fold of `plan` in `dir`, predicts its held-out images and
/// stores the findings of all folds as one audit.
fn run_plan(
    project: &mut Project,
    project_dir: &Path,
    mut plan: KFoldPlan,
    dir: &Path,
    params: &AuditParams,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(AuditProgress),
) -> anyhow::Result<AuditOutcome> {
    let set = project.export_set(None)?;
    let by_id: BTreeMap<i64, &ExportImage> = set.images.iter().map(|m| (m.id, m)).collect();
    let missing: Vec<i64> = plan
        .images()
        .into_iter()
        .filter(|id| !by_id.contains_key(id))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{:?}: images {missing:?} of the plan are no longer in the project (deleted or rejected); \
         start a new k-fold audit",
        dir.join(PLAN_FILE)
    );
    let names: BTreeMap<i64, String> = set.classes.iter().map(|c| (c.id, c.name.clone())).collect();
    let recipe = fold_recipe(&plan.recipe);
    let control = TrainControl::from_cancel(cancel.clone());
    let cancelled = || AuditCancelled {
        resume: Some(dir.to_path_buf()),
    };
    let k = plan.k;
    let mut all = Audited::default();
    let mut audited_images: Vec<ExportImage> = Vec::new();
    for (i, held) in plan.folds.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(cancelled().into());
        }
        let fold_dir = KFoldPlan::fold_dir(dir, i);
        let held_set: BTreeSet<i64> = held.iter().copied().collect();
        let train: Vec<i64> = plan
            .images()
            .into_iter()
            .filter(|id| !held_set.contains(id))
            .collect();
        let state = fold_state(&fold_dir, progress)?;
        progress(AuditProgress::Fold {
            fold: i + 1,
            folds: k,
            state,
            train_images: train.len(),
            held_out: held.len(),
        });
        let mut observer = FoldObserver {
            fold: i + 1,
            folds: k,
            progress: &mut *progress,
        };
        let summary = match state {
            FoldState::Fresh => Some(train_split(
                project_dir,
                &fold_dir,
                &recipe,
                Split {
                    train,
                    val: held.clone(),
                },
                &control,
                &mut observer,
            )?),
            FoldState::Resumed { .. } => Some(crate::train::resume(
                &fold_dir,
                None,
                &control,
                &mut observer,
            )?),
            FoldState::Trained => None,
        };
        if summary.as_ref().is_some_and(|s| s.cancelled) {
            return Err(cancelled().into());
        }
        let bundle = run_state::checkpoint_dir(&fold_dir, LAST_CHECKPOINT).with_context(|| {
            format!(
                "fold {} in {fold_dir:?} finished without a checkpoint",
                i + 1
            )
        })?;
        let images: Vec<ExportImage> = held.iter().map(|id| by_id[id].clone()).collect();
        let model = load_predictor(&bundle, recipe.device, &set.classes, params)?;
        let Some(audited) = audit_images(
            &images,
            &model,
            &names,
            params,
            cancel,
            Some((i + 1, k)),
            progress,
        )?
        else {
            return Err(cancelled().into());
        };
        drop(model);
        all.findings.extend(audited.findings);
        all.unknown_instances += audited.unknown_instances;
        all.ignored_predictions += audited.ignored_predictions;
        audited_images.extend(images);
    }
    audited_images.sort_by_key(|m| m.id);
    let statement = format!(
        "k-fold: each of the {} images was predicted by the model of its fold, trained on the \
         other {} without it ({k} folds dealt with seed {}; runs in {})",
        audited_images.len(),
        if k == 2 {
            "fold".to_owned()
        } else {
            format!("{} folds", k - 1)
        },
        plan.seed,
        dir.display()
    );
    let mut params_value = params_json(params);
    if let Some(map) = params_value.as_object_mut() {
        map.insert("folds".into(), serde_json::json!(k));
        map.insert("seed".into(), serde_json::json!(plan.seed));
        map.insert("folder".into(), serde_json::json!(dir));
        map.insert("recipe".into(), serde_json::to_value(&plan.recipe)?);
    }
    let request = StoreRequest {
        model: kfold_model_text(k, plan.recipe.preset),
        mode: AuditMode::KFold,
        split: plan.split.clone(),
        params: params_value,
        out_of_sample: statement,
    };
    let outcome = store(project, request, &audited_images, &names, all)?;
    plan.audit_id = Some(outcome.audit_id);
    plan.write(dir)?;
    Ok(outcome)
}

/// Where fold's run folder stands: none yet (fresh), an interrupted run (resumed), a finished
/// one (trained). A folder left without a checkpoint (cancelled or killed before its first) is
/// removed and trained afresh.
fn fold_state(
    fold_dir: &Path,
    progress: &mut dyn FnMut(AuditProgress),
) -> anyhow::Result<FoldState> {
    if !fold_dir.exists() {
        return Ok(FoldState::Fresh);
    }
    match run_state::read_state(fold_dir) {
        Ok((state, _)) if state.finished => Ok(FoldState::Trained),
        Ok((state, _)) if fold_dir.join(CONFIG_FILE).is_file() => Ok(FoldState::Resumed {
            step: state.iter,
            total: state.total_iters,
        }),
        _ => {
            progress(AuditProgress::Note(format!(
                "{} has no checkpoint to resume from: training the fold again",
                fold_dir.display()
            )));
            std::fs::remove_dir_all(fold_dir)
                .with_context(|| format!("removing the unfinished fold {fold_dir:?}"))?;
            Ok(FoldState::Fresh)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_seeded_disjoint_balanced_and_cover_every_image() {
        let ids: Vec<i64> = (1..=23).rev().collect();
        let folds = deal_folds(&ids, 5, 7);
        assert_eq!(folds.len(), 5);
        let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![5, 5, 5, 4, 4]);
        let mut all: Vec<i64> = folds.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=23).collect::<Vec<_>>());
        // The input order does not matter, the seed does.
        let sorted: Vec<i64> = (1..=23).collect();
        assert_eq!(deal_folds(&sorted, 5, 7), folds);
        assert_ne!(deal_folds(&sorted, 5, 8), folds);
        assert!(folds.iter().all(|f| f.windows(2).all(|w| w[0] < w[1])));
    }

    #[test]
    fn a_fold_never_validates_chooses_or_refits_on_its_held_out_images() {
        let recipe = TrainConfig {
            eval_every: 1,
            patience: Some(3),
            refit: RefitMode::On,
            epochs: 4,
            ..TrainConfig::default()
        };
        let fold = fold_recipe(&recipe);
        assert_eq!(
            (fold.eval_every, fold.patience, fold.refit, fold.epochs),
            (0, None, RefitMode::Off, 4)
        );
        assert_eq!(kfold_model_text(3, Preset::CpuFast), "k-fold 3× cpu-fast");
    }

    #[test]
    fn the_speed_of_an_earlier_run_is_its_median_images_per_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            "epoch,iter,total,lr,images_per_sec,memory_bytes\n\
             0,0,2.0,0.1,0.5,1\n0,1,2.0,0.1,0.6,1\n0,2,2.0,0.1,3.0,1\n\
             0,3,2.0,0.1,2.0,1\n0,4,2.0,0.1,4.0,1\n0,5,2.0,0.1,2.5,1\n",
        )
        .unwrap();
        // Warm-up rows 0.5 and 0.6 left out: median of 2.0, 2.5, 3.0, 4.0 (upper middle) = 3.0.
        assert_eq!(median_images_per_sec(dir.path()), Some(3.0));
        assert!((pixel_ratio(320, 160) - 4.0).abs() < 1e-12);
    }
}
