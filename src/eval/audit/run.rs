//! The audit with one model ([`audit_with_model`]): predict the images the model did not train
//! on, score each image with [`super::audit_image_named`] in project class ids, and store the
//! findings with [`Project::save_audit`].
//!
//! Out of sample, as issue 18 asks ([`bundle_origin`]): a checkpoint of one of this project's
//! runs (`<run>/checkpoints/best|last`, or an export whose `metrics.json` names the run) audits
//! only that run's validation images, as its `config.json` recorded them (or, in a file too old
//! to record them, as [`crate::train::data::split_images`] reproduces them from its seed and
//! validation fraction). A refit checkpoint trained on train + validation has no held-out image
//! and is refused. A bundle from elsewhere audits the chosen split, on the stated assumption
//! that it never saw this project.
//!
//! Classes are matched by name ([`ClassMatch`]): predictions of labels the project lacks are
//! ignored, instances of classes the model does not know are left out and counted, crowd
//! regions are no label to audit and predictions lying mostly inside one are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{AuditParams, ErrorKind, GtInstance, Prediction, audit_image_named, image_score};
use crate::cancel::CancelToken;
use crate::dataset::store::{AuditMode, NewAudit, NewFinding, Project};
use crate::dataset::{ExportImage, Rle};
use crate::eval::project::{ClassMatch, for_each_prediction};
use crate::host::DeviceChoice;
use crate::infer::{Detection, Predictor};
use crate::train::TrainEvent;
use crate::train::data::split_images;
use crate::train::runs::{CONFIG_FILE, RUNS_DIR, RunConfig};
use crate::train::state::{BEST_CHECKPOINT, LAST_CHECKPOINT, REFIT_CHECKPOINT};

/// A prediction lying at least this share of its area inside a crowd region is ignored (the
/// region stands for many unlabelled objects of its class; COCOeval ignores such matches too).
const CROWD_SHARE: f64 = 0.5;

/// Where an audit stands, for a progress bar or the GUI.
// `Training` carries the trainer's event as the trainer's observers get it (no box, so a
// caller matches it directly); one event per step is no allocation pressure.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AuditProgress {
    /// A line for the log: which images and why, a fold skipped or resumed.
    Note(String),
    /// Held-out images predicted and scored so far; `fold` is `(i, k)` (1-based) in a k-fold
    /// audit.
    Predicting {
        /// The fold, in a k-fold audit.
        fold: Option<(usize, usize)>,
        /// Images done.
        done: usize,
        /// Images to do.
        total: usize,
    },
    /// A fold of a k-fold audit starts (1-based `fold` of `folds`).
    Fold {
        /// Which fold.
        fold: usize,
        /// How many.
        folds: usize,
        /// Trained from scratch, resumed, or already trained.
        state: FoldState,
        /// Images it trains on.
        train_images: usize,
        /// Images it holds out (and predicts).
        held_out: usize,
    },
    /// A training event of fold `fold` (1-based) of `folds` (`Started` carries its planned steps,
    /// `Step` each step).
    Training {
        /// Which fold.
        fold: usize,
        /// How many.
        folds: usize,
        /// The trainer's event.
        event: TrainEvent,
    },
}

/// How a fold of a k-fold audit starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldState {
    /// Trained from the start.
    Fresh,
    /// An interrupted fold continued from its last checkpoint at `step` of `total`.
    Resumed {
        /// Steps already taken.
        step: usize,
        /// Steps planned.
        total: usize,
    },
    /// Trained in full by an earlier session: only its prediction runs.
    Trained,
}

/// The error a cancelled audit returns (`downcast_ref` tells it from a failure). Nothing is
/// stored; a k-fold audit keeps its trained folds in `resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCancelled {
    /// The k-fold folder to continue from (`--resume`), when there is one.
    pub resume: Option<PathBuf>,
}

impl std::fmt::Display for AuditCancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resume {
            Some(dir) => write!(
                f,
                "audit cancelled; nothing stored yet. Finished folds are kept in {}: run the same \
                 audit again (or with --resume {}) to continue",
                dir.display(),
                dir.display()
            ),
            None => write!(f, "audit cancelled; nothing stored"),
        }
    }
}

impl std::error::Error for AuditCancelled {}

/// One stored finding with what a listing shows beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedFinding {
    /// The image's path relative to the project's `images/`.
    pub image_path: String,
    /// The suggested class's name (missing, swap).
    pub suggested_class: Option<String>,
    /// The finding as stored.
    pub finding: NewFinding,
}

/// What an audit found and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditOutcome {
    /// Id of the stored audit.
    pub audit_id: i64,
    /// What predicted: the bundle path, or `k-fold K× <preset>`.
    pub model: String,
    /// One model or k-fold.
    pub mode: AuditMode,
    /// The split asked for (`None`: all images, or train + validation for k-fold).
    pub split: Option<String>,
    /// Ids of the images audited.
    pub images: Vec<i64>,
    /// Findings per kind (all four kinds, zero when none).
    pub counts: BTreeMap<String, usize>,
    /// Why the predictions are out of sample (which images, which model did not see them).
    pub out_of_sample: String,
    /// Instances left out because the model does not know their class.
    pub unknown_instances: usize,
    /// Predictions ignored: classes the project lacks, or inside crowd regions.
    pub ignored_predictions: usize,
    /// The findings, highest image score first, then highest score.
    pub findings: Vec<AuditedFinding>,
    /// The parameters stored with the audit (thresholds; folds, seed and recipe for k-fold).
    pub params: serde_json::Value,
}

/// The audit of one image in project terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageAudit {
    /// Its findings, ready to store (highest score first).
    pub findings: Vec<NewFinding>,
    /// Instances left out: the model does not know their class.
    pub unknown_instances: usize,
    /// Predictions ignored: classes the project lacks, or inside crowd regions.
    pub ignored_predictions: usize,
}

/// Scores one image's labels against the model's `detections` on it: bundle labels become
/// project classes through `classes`, and each [`super::Finding`] a [`NewFinding`] (image
/// score = noisy-OR of the image's findings; the suggested mask is the predicting mask for
/// missing and loose, the suggested class the predicting class for missing and swap). `name`
/// names a project class id in the reasons.
pub fn audit_detections(
    image: &ExportImage,
    detections: &[Detection],
    classes: &ClassMatch,
    params: &AuditParams,
    name: &dyn Fn(i64) -> String,
) -> ImageAudit {
    let mut out = ImageAudit::default();
    let mut gt = Vec::new();
    let mut crowd = Vec::new();
    for inst in &image.instances {
        if inst.iscrowd {
            crowd.push(&inst.rle);
        } else if classes.label_of(inst.class_id).is_some() {
            gt.push(GtInstance {
                id: inst.id,
                class: inst.class_id,
                rle: inst.rle.clone(),
            });
        } else {
            out.unknown_instances += 1;
        }
    }
    let mut preds = Vec::new();
    for d in detections {
        let Some(class) = classes.class_of(d.label) else {
            out.ignored_predictions += 1;
            continue;
        };
        let rle = d.mask.to_rle();
        if inside_crowd(&rle, &crowd) {
            out.ignored_predictions += 1;
            continue;
        }
        preds.push(Prediction {
            class,
            score: d.score,
            rle,
        });
    }
    let findings = audit_image_named(&gt, &preds, params, name);
    let pooled = image_score(&findings);
    out.findings = findings
        .into_iter()
        .map(|f| {
            let pred = f.prediction.and_then(|j| preds.get(j));
            let suggested_mask = match f.kind {
                ErrorKind::Missing | ErrorKind::Loose => pred.map(|p| p.rle.clone()),
                ErrorKind::Spurious | ErrorKind::Swap => None,
            };
            let suggested_class_id = match f.kind {
                ErrorKind::Missing | ErrorKind::Swap => pred.map(|p| p.class),
                ErrorKind::Spurious | ErrorKind::Loose => None,
            };
            NewFinding {
                image_id: image.id,
                instance_id: f.instance,
                kind: f.kind.as_str().to_owned(),
                score: f.score,
                image_score: pooled,
                reason: f.reason,
                suggested_class_id,
                suggested_mask,
            }
        })
        .collect();
    out
}

/// Whether at least [`CROWD_SHARE`] of `rle`'s area lies inside one of the crowd regions.
fn inside_crowd(rle: &Rle, crowd: &[&Rle]) -> bool {
    let area = rle.area() as f64;
    area > 0.0
        && crowd.iter().any(|c| {
            let inside = Rle::merge_intersection(&[rle.clone(), (*c).clone()]).area() as f64;
            inside >= CROWD_SHARE * area
        })
}

/// Findings of several images, before they are stored.
#[derive(Debug, Default)]
pub(super) struct Audited {
    pub(super) findings: Vec<NewFinding>,
    pub(super) unknown_instances: usize,
    pub(super) ignored_predictions: usize,
}

/// A loaded bundle and its labels matched to the project's classes.
pub(super) struct Model {
    pub(super) predictor: Predictor,
    pub(super) classes: ClassMatch,
}

/// Predicts `images` with `model` and audits each; `None` when `cancel` stopped it.
pub(super) fn audit_images(
    images: &[ExportImage],
    model: &Model,
    names: &BTreeMap<i64, String>,
    params: &AuditParams,
    cancel: &CancelToken,
    fold: Option<(usize, usize)>,
    progress: &mut dyn FnMut(AuditProgress),
) -> anyhow::Result<Option<Audited>> {
    let mut audited = Audited::default();
    let name = |id: i64| {
        names
            .get(&id)
            .map_or_else(|| format!("class {id}"), |n| format!("\"{n}\""))
    };
    progress(AuditProgress::Predicting {
        fold,
        done: 0,
        total: images.len(),
    });
    let completed = for_each_prediction(
        images,
        &model.predictor,
        Some(cancel),
        &mut |done, total| progress(AuditProgress::Predicting { fold, done, total }),
        &mut |image, detections| {
            let one = audit_detections(image, &detections, &model.classes, params, &name);
            audited.findings.extend(one.findings);
            audited.unknown_instances += one.unknown_instances;
            audited.ignored_predictions += one.ignored_predictions;
            Ok(())
        },
    )?;
    Ok(completed.then_some(audited))
}

/// Loads `bundle` to predict down to `params.min_score` and matches its labels to the
/// project's classes; an error when no class name is shared.
pub(super) fn load_predictor(
    bundle: &Path,
    device: DeviceChoice,
    project_classes: &[crate::dataset::ExportClass],
    params: &AuditParams,
) -> anyhow::Result<Model> {
    let device = crate::host::device(device)?;
    let predictor = Predictor::load(bundle, device, Some(f64::from(params.min_score)))?;
    let classes = ClassMatch::new(project_classes, predictor.labels());
    let shared = project_classes
        .iter()
        .filter(|c| classes.label_of(c.id).is_some())
        .count();
    anyhow::ensure!(
        shared > 0,
        "the model {bundle:?} knows none of the project's classes (model: {}; project: {})",
        predictor.labels().join(", "),
        project_classes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Model { predictor, classes })
}

/// Which images a bundle may audit without having trained on them.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleOrigin {
    /// A checkpoint (or an export) of a training run of this project.
    Run {
        /// The run folder.
        run_dir: PathBuf,
        /// Which checkpoint: `best`, `last`, or `export of best` / `export of last`.
        checkpoint: String,
        /// The run's validation image ids: the only ones it did not train on.
        validation: Vec<i64>,
        /// How `validation` was found: recorded in `config.json`, or reproduced from its seed.
        how: String,
    },
    /// Not trained in this project: assumed never to have seen its images.
    Elsewhere,
}

/// Finds out which run (if any) of the project at `project_dir` trained `bundle`, and so which
/// images it did not see. Errors for a bundle that trained on every image of its run (a refit
/// on train + validation, or a run without validation images), with the advice to use k-fold.
pub fn bundle_origin(project_dir: &Path, bundle: &Path) -> anyhow::Result<BundleOrigin> {
    let project = canonical(project_dir);
    let bundle_abs = canonical(bundle);
    let no_held_out = |what: &str| {
        anyhow::anyhow!(
            "{bundle:?} is {what}: it trained on the run's validation images too, so no image of \
             this project is out of sample for it. Audit with the run's best or last checkpoint, \
             or train fresh models per fold with --folds K"
        )
    };
    // A run's checkpoint: `<run>/checkpoints/<best|last|refit>`.
    let checkpoint = bundle_abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let parent_is_checkpoints = bundle_abs
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "checkpoints");
    if parent_is_checkpoints
        && let Some(run_dir) = bundle_abs.parent().and_then(Path::parent)
        && run_dir.join(CONFIG_FILE).is_file()
    {
        let name = checkpoint.unwrap_or_default();
        if Path::new("checkpoints").join(&name) == Path::new(REFIT_CHECKPOINT) {
            return Err(no_held_out("a refit checkpoint (checkpoints/refit)"));
        }
        let config = RunConfig::read(run_dir)?;
        if !belongs_to(run_dir, &config, &project) {
            return Ok(BundleOrigin::Elsewhere);
        }
        let known = [BEST_CHECKPOINT, LAST_CHECKPOINT]
            .iter()
            .any(|c| Path::new("checkpoints").join(&name) == Path::new(c));
        let checkpoint = if known {
            name
        } else {
            format!("{name} (a copy)")
        };
        return run_origin(project_dir, run_dir, &config, checkpoint, &no_held_out);
    }
    // An export: `metrics.json` names its run and checkpoint.
    let metrics = crate::train::runs::ExportMetrics::read(&bundle_abs);
    if let Some(run_id) = metrics.run_id {
        let run_dir = project.join(RUNS_DIR).join(&run_id);
        let which = metrics.checkpoint.unwrap_or_else(|| "?".to_owned());
        if run_dir.join(CONFIG_FILE).is_file() {
            if which == "refit" {
                return Err(no_held_out(&format!(
                    "an export of run {run_id}'s refit checkpoint"
                )));
            }
            let config = RunConfig::read(&run_dir)?;
            return run_origin(
                project_dir,
                &run_dir,
                &config,
                format!("export of {which}"),
                &no_held_out,
            );
        }
        anyhow::ensure!(
            !bundle_abs.starts_with(&project),
            "{bundle:?} was exported from run {run_id}, which is no longer in {:?}: which images \
             it trained on is unknown. Audit with a run's checkpoint, or with --folds K",
            project.join(RUNS_DIR)
        );
    }
    Ok(BundleOrigin::Elsewhere)
}

/// `path` made absolute and free of symlinks where it exists (as given otherwise).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether the run in `run_dir` trained on the project at (canonical) `project`: it lies inside
/// the project folder, or its `config.json` names the project.
fn belongs_to(run_dir: &Path, config: &RunConfig, project: &Path) -> bool {
    run_dir.starts_with(project)
        || config.project.as_deref().map(canonical).as_deref() == Some(project)
}

/// The validation images of a run of this project.
fn run_origin(
    project_dir: &Path,
    run_dir: &Path,
    config: &RunConfig,
    checkpoint: String,
    no_held_out: &dyn Fn(&str) -> anyhow::Error,
) -> anyhow::Result<BundleOrigin> {
    let split = &config.split;
    let (validation, how) = if !split.val.is_empty() {
        (
            split.val.clone(),
            format!("recorded in {}", run_dir.join(CONFIG_FILE).display()),
        )
    } else if !split.train.is_empty() {
        return Err(no_held_out(&format!(
            "a checkpoint of {}, which had no validation images",
            run_dir.display()
        )));
    } else {
        // A config.json from before splits were recorded: the same seed and fraction.
        let train = RunConfig::required(run_dir, "train", config.train.as_ref())?;
        let set = crate::train::data::read_project(project_dir)?;
        let split = split_images(&set.images, train.val_fraction, train.seed);
        anyhow::ensure!(
            !split.val.is_empty(),
            "{:?} records no split and its recipe gives no validation images",
            run_dir.join(CONFIG_FILE)
        );
        (
            split.val,
            format!(
                "reproduced from the run's seed {} and validation fraction {}",
                train.seed, train.val_fraction
            ),
        )
    };
    Ok(BundleOrigin::Run {
        run_dir: run_dir.to_path_buf(),
        checkpoint,
        validation,
        how,
    })
}

/// Audits the project at `project_dir` with one model bundle, out of sample (see the module
/// docs): predicts each image the model did not train on (within `split`, `None` = all),
/// scores it, stores the findings as one audit and returns what was found. `cancel` is checked
/// before each image ([`AuditCancelled`]); `progress` hears a [`AuditProgress::Note`] with the
/// out-of-sample statement, then each image.
pub fn audit_with_model(
    project_dir: &Path,
    bundle: &Path,
    split: Option<&str>,
    device: DeviceChoice,
    params: &AuditParams,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(AuditProgress),
) -> anyhow::Result<AuditOutcome> {
    let origin = bundle_origin(project_dir, bundle)?;
    let mut project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let set = project.export_set(split)?;
    let in_split = split.map_or_else(String::new, |s| format!(" of split {s}"));
    anyhow::ensure!(
        !set.images.is_empty(),
        "project {project_dir:?} has no images{in_split} to audit"
    );
    let (images, statement): (Vec<ExportImage>, String) = match &origin {
        BundleOrigin::Run {
            run_dir,
            checkpoint,
            validation,
            how,
        } => {
            let held_out: BTreeSet<i64> = validation.iter().copied().collect();
            let images: Vec<ExportImage> = set
                .images
                .into_iter()
                .filter(|m| held_out.contains(&m.id))
                .collect();
            let run = run_dir.file_name().map_or_else(
                || run_dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let gone = held_out.len().saturating_sub(images.len());
            let statement = format!(
                "{} is the {checkpoint} checkpoint of run {run}, which trained on this project: \
                 auditing only its {} validation images{in_split} ({how}){}",
                bundle.display(),
                images.len(),
                if gone > 0 {
                    format!("; {gone} of its validation images are not in the audited set")
                } else {
                    String::new()
                }
            );
            anyhow::ensure!(
                !images.is_empty(),
                "{statement}: none of them is in the project{in_split} any more"
            );
            (images, statement)
        }
        BundleOrigin::Elsewhere => {
            let statement = format!(
                "{} was not trained in this project: assuming it never saw these images, \
                 auditing all {} images{in_split}",
                bundle.display(),
                set.images.len()
            );
            (set.images, statement)
        }
    };
    progress(AuditProgress::Note(statement.clone()));
    let model = load_predictor(bundle, device, &set.classes, params)?;
    let names: BTreeMap<i64, String> = set.classes.iter().map(|c| (c.id, c.name.clone())).collect();
    let Some(audited) = audit_images(&images, &model, &names, params, cancel, None, progress)?
    else {
        return Err(AuditCancelled { resume: None }.into());
    };
    let stored = StoreRequest {
        model: canonical(bundle).display().to_string(),
        mode: AuditMode::Model,
        split: split.map(str::to_owned),
        params: params_json(params),
        out_of_sample: statement,
    };
    store(&mut project, stored, &images, &names, audited)
}

/// The audit's thresholds as stored with it.
pub(super) fn params_json(params: &AuditParams) -> serde_json::Value {
    serde_json::json!({"match_iou": params.match_iou, "min_score": params.min_score})
}

/// What [`store`] needs besides the findings.
pub(super) struct StoreRequest {
    pub(super) model: String,
    pub(super) mode: AuditMode,
    pub(super) split: Option<String>,
    pub(super) params: serde_json::Value,
    pub(super) out_of_sample: String,
}

/// Stores the audit of `images` (one transaction) and returns its outcome, findings sorted.
pub(super) fn store(
    project: &mut Project,
    request: StoreRequest,
    images: &[ExportImage],
    names: &BTreeMap<i64, String>,
    audited: Audited,
) -> anyhow::Result<AuditOutcome> {
    let ids: Vec<i64> = images.iter().map(|m| m.id).collect();
    let audit = NewAudit {
        model: request.model.clone(),
        mode: request.mode,
        split: request.split.clone(),
        params: request.params.clone(),
        images: ids.clone(),
    };
    let audit_id = project
        .save_audit(&audit, &audited.findings)
        .with_context(|| format!("storing the audit in {:?}", project.root()))?;
    let paths: HashMap<i64, &str> = images
        .iter()
        .map(|m| (m.id, m.file_name.as_str()))
        .collect();
    let mut counts: BTreeMap<String, usize> = [
        ErrorKind::Missing,
        ErrorKind::Spurious,
        ErrorKind::Loose,
        ErrorKind::Swap,
    ]
    .iter()
    .map(|k| (k.as_str().to_owned(), 0))
    .collect();
    let mut findings: Vec<AuditedFinding> = audited
        .findings
        .into_iter()
        .map(|f| {
            *counts.entry(f.kind.clone()).or_default() += 1;
            AuditedFinding {
                image_path: paths.get(&f.image_id).copied().unwrap_or("?").to_owned(),
                suggested_class: f.suggested_class_id.and_then(|c| names.get(&c).cloned()),
                finding: f,
            }
        })
        .collect();
    sort_findings(&mut findings);
    Ok(AuditOutcome {
        audit_id,
        model: request.model,
        mode: request.mode,
        split: request.split,
        images: ids,
        counts,
        out_of_sample: request.out_of_sample,
        unknown_instances: audited.unknown_instances,
        ignored_predictions: audited.ignored_predictions,
        findings,
        params: request.params,
    })
}

/// Highest image score first, then highest finding score, then image and instance ids (a
/// stable order for equal scores).
fn sort_findings(findings: &mut [AuditedFinding]) {
    findings.sort_by(|a, b| {
        let (a, b) = (&a.finding, &b.finding);
        b.image_score
            .total_cmp(&a.image_score)
            .then(b.score.total_cmp(&a.score))
            .then(a.image_id.cmp(&b.image_id))
            .then(a.instance_id.cmp(&b.instance_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Attribution, ExportClass, ExportInstance, Mask};

    const W: u32 = 64;
    const H: u32 = 48;

    fn rect(x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
        let mut m = Mask::new(W, H);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, true);
            }
        }
        m
    }

    fn instance(id: i64, class_id: i64, mask: &Mask, iscrowd: bool) -> ExportInstance {
        ExportInstance {
            id,
            class_id,
            rle: mask.to_rle(),
            iscrowd,
        }
    }

    fn detection(label: i64, score: f32, mask: Mask) -> Detection {
        Detection {
            label,
            class_name: String::new(),
            score,
            box_xyxy: [0.0; 4],
            mask,
            soft_mask: None,
        }
    }

    fn image(instances: Vec<ExportInstance>) -> ExportImage {
        ExportImage {
            id: 9,
            path: PathBuf::new(),
            file_name: "a.png".into(),
            width: W,
            height: H,
            split: None,
            attribution: Attribution::default(),
            instances,
        }
    }

    /// Project classes 10 "cat", 20 "dog", 30 "owl"; the bundle knows dog (label 1), cat
    /// (label 2) and bat (label 3).
    fn classes() -> ClassMatch {
        let project: Vec<ExportClass> = [(10, "cat"), (20, "dog"), (30, "owl")]
            .iter()
            .map(|&(id, name)| ExportClass {
                id,
                name: name.into(),
                mid: None,
            })
            .collect();
        ClassMatch::new(&project, &["dog".into(), "cat".into(), "bat".into()])
    }

    #[test]
    fn labels_map_to_project_classes_by_name_and_suggestions_follow_the_kind() {
        let name = |c: i64| format!("c{c}");
        let img = image(vec![
            // A cat labelled as a dog: the model says cat (label 2) at 0.9.
            instance(1, 20, &rect(0, 0, 20, 20), false),
            // An owl the model cannot know: left out, counted.
            instance(2, 30, &rect(40, 0, 60, 20), false),
        ]);
        let dets = [
            detection(2, 0.9, rect(0, 0, 20, 20)),
            // An unlabelled dog (label 1 → class 20) on empty ground.
            detection(1, 0.8, rect(30, 30, 50, 46)),
            // A bat: the project has no such class.
            detection(3, 0.99, rect(40, 0, 60, 20)),
        ];
        let audit = audit_detections(&img, &dets, &classes(), &AuditParams::default(), &name);
        assert_eq!(audit.unknown_instances, 1);
        assert_eq!(audit.ignored_predictions, 1);
        let kinds: Vec<(&str, Option<i64>, Option<i64>)> = audit
            .findings
            .iter()
            .map(|f| (f.kind.as_str(), f.instance_id, f.suggested_class_id))
            .collect();
        assert_eq!(
            kinds,
            vec![("swap", Some(1), Some(10)), ("missing", None, Some(20))],
            "{:?}",
            audit.findings
        );
        // Swap: 0.9 against no same-class prediction; missing: its own score (no overlap).
        assert!((audit.findings[0].score - 0.9).abs() < 1e-6);
        assert!((audit.findings[1].score - 0.8).abs() < 1e-6);
        // The missing object's fix is the predicted mask; a swap suggests no mask.
        assert_eq!(
            audit.findings[1].suggested_mask,
            Some(rect(30, 30, 50, 46).to_rle())
        );
        assert_eq!(audit.findings[0].suggested_mask, None);
        // Noisy-OR of 0.9 and 0.8 on both.
        for f in &audit.findings {
            assert!((f.image_score - 0.98).abs() < 1e-6, "{}", f.image_score);
            assert_eq!(f.image_id, 9);
        }
        assert!(
            audit.findings[0].reason.contains("c20") && audit.findings[0].reason.contains("c10")
        );
    }

    #[test]
    fn crowd_regions_are_no_label_and_hide_predictions_inside_them() {
        let name = |c: i64| c.to_string();
        let img = image(vec![instance(5, 10, &rect(0, 0, 40, 40), true)]);
        // Three quarters inside the crowd region: ignored. Outside: missing.
        let dets = [
            detection(2, 0.9, rect(10, 10, 50, 20)),
            detection(2, 0.7, rect(44, 30, 60, 46)),
        ];
        let audit = audit_detections(&img, &dets, &classes(), &AuditParams::default(), &name);
        assert_eq!(audit.ignored_predictions, 1);
        assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
        assert_eq!(audit.findings[0].kind, "missing");
        assert!((audit.findings[0].score - 0.7).abs() < 1e-6);
        // No finding on the crowd region itself (it is not a label to audit).
        assert!(audit.findings.iter().all(|f| f.instance_id.is_none()));
    }

    #[test]
    fn findings_sort_by_image_score_then_score() {
        let f = |image_id, score, image_score| AuditedFinding {
            image_path: String::new(),
            suggested_class: None,
            finding: NewFinding {
                image_id,
                instance_id: None,
                kind: "missing".into(),
                score,
                image_score,
                reason: String::new(),
                suggested_class_id: None,
                suggested_mask: None,
            },
        };
        let mut all = vec![
            f(1, 0.9, 0.9),
            f(2, 0.3, 0.95),
            f(2, 0.8, 0.95),
            f(3, 0.1, 0.1),
        ];
        sort_findings(&mut all);
        let order: Vec<(i64, f64)> = all
            .iter()
            .map(|a| (a.finding.image_id, a.finding.score))
            .collect();
        assert_eq!(order, vec![(2, 0.8), (2, 0.3), (1, 0.9), (3, 0.1)]);
    }
}
