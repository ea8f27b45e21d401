//! A project's trained models as lists, for the run list and the model pickers: the run folders
//! under `<project>/runs/` ([`RunInfo`], [`scan_runs`]) and every model bundle a picker offers
//! ([`list_bundles`]): each run's `checkpoints/best`, `checkpoints/last` and `checkpoints/refit`
//! with the run's validation mask AP from `epochs.csv`, and the exported bundles under
//! `<project>/exports/` (with `metrics.json`'s AP when [`crate::train::export`] wrote them).
//!
//! A run's `config.json` is read and written here, typed, once ([`RunConfig`]): the trainer
//! writes it, resume, the refit, the run list, watch images and export read it.
//!
//! Only small files are read (JSON, CSV, file metadata); the weights are never opened. Callers
//! in the GUI run these on a worker thread.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::model::MaskRcnnConfig;
use crate::model::bundle::{Bundle, SPEC_FILE};
use crate::train::TrainConfig;
use crate::train::csv;
use crate::train::state::REFIT_CHECKPOINT;
use crate::train::state::{self, BEST_CHECKPOINT, LAST_CHECKPOINT};
use crate::train::torchrun::options::{Engine, TorchrunOptions};

/// Folder of a project's training runs (`<project>/runs`).
pub const RUNS_DIR: &str = "runs";
/// Folder of a project's exported model bundles (`<project>/exports`): the pickers list each
/// bundle folder directly inside it (`maskstudio export --run RUN --out <project>/exports/NAME`).
pub const EXPORTS_DIR: &str = "exports";
/// A run folder's recipe file ([`RunConfig`]), written by the trainer when the run starts.
pub const CONFIG_FILE: &str = "config.json";

/// Folder of a project's training runs (`<project>/runs`).
pub fn runs_dir(project: &Path) -> PathBuf {
    project.join(RUNS_DIR)
}

/// A run's `config.json` ([`CONFIG_FILE`]) as the trainer writes it when the run starts: the
/// resolved recipe, the model it builds, the classes and the train/validation split. Missing
/// keys take their defaults (`None`, empty), so a partial file reads; the recipe inside is as
/// strict as [`TrainConfig`] (unknown keys are errors).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// The run folder's name (its UTC start time).
    pub run_id: Option<String>,
    /// The project folder (absolute).
    pub project: Option<PathBuf>,
    /// The resolved training recipe (auto-configuration applied).
    pub train: Option<TrainConfig>,
    /// The model configuration built from the recipe.
    pub model: Option<MaskRcnnConfig>,
    /// The device the run started on (tch's `Debug` form: `Cpu`, `Cuda(0)`).
    pub device: Option<String>,
    /// Class names in label order (label = index + 1).
    pub classes: Vec<String>,
    /// The image ids of each split.
    pub split: RunSplit,
    /// The engine that trains the run (absent: in-process, as every run before torchrun).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// torchrun's launch options (torchrun runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torchrun: Option<TorchrunOptions>,
}

/// The image ids a run trains and validates on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSplit {
    /// Training image ids.
    pub train: Vec<i64>,
    /// Validation image ids.
    pub val: Vec<i64>,
}

impl RunConfig {
    /// Reads `<run_dir>/config.json`.
    pub fn read(run_dir: &Path) -> anyhow::Result<Self> {
        let path = run_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
        serde_json::from_str(&text).with_context(|| format!("{path:?}: not a run configuration"))
    }

    /// Writes `<run_dir>/config.json` (pretty JSON, atomically).
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)? + "\n";
        crate::fsutil::write_atomic(&run_dir.join(CONFIG_FILE), json.as_bytes())?;
        Ok(())
    }

    /// `value`, or an error naming the run's file and the missing `key` (for a resume, which
    /// needs the whole file).
    pub fn required<'a, T>(
        run_dir: &Path,
        key: &str,
        value: Option<&'a T>,
    ) -> anyhow::Result<&'a T> {
        value.with_context(|| format!("{:?}: {key:?} is missing", run_dir.join(CONFIG_FILE)))
    }

    /// The recipe's preset by its name (`cpu-fast`, `quality`), when the file has a recipe.
    pub fn preset_name(&self) -> Option<String> {
        let preset = serde_json::to_value(self.train.as_ref()?.preset).ok()?;
        preset.as_str().map(str::to_owned)
    }
}

/// One run folder as the run list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Folder name.
    pub id: String,
    /// The folder.
    pub dir: PathBuf,
    /// Preset from `config.json`.
    pub preset: String,
    /// Planned epochs from `config.json`.
    pub epochs: Option<u64>,
    /// Rows in `metrics.csv`.
    pub steps: usize,
    /// The last row's `total` loss.
    pub final_loss: Option<f64>,
    /// Columns of the last row whose name starts with `val_` (validation metrics).
    pub val_metrics: Vec<(String, f64)>,
    /// `checkpoints/last` holds a bundle.
    pub has_bundle: bool,
    /// The engine that trained the run (`config.json`'s, in-process when absent).
    pub engine: Engine,
}

impl RunInfo {
    /// The run's model bundle folder.
    pub fn bundle_dir(&self) -> PathBuf {
        self.dir.join(LAST_CHECKPOINT)
    }
}

/// Reads one run folder (missing or unreadable files leave fields empty).
pub fn read_run(dir: &Path) -> RunInfo {
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = RunConfig::read(dir).unwrap_or_default();
    let preset = config.preset_name().unwrap_or_else(|| "-".to_owned());
    let epochs = config.train.as_ref().map(|t| t.epochs as u64);
    let (mut steps, mut final_loss, mut val_metrics) = (0, None, Vec::new());
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.csv")) {
        let (header, lines) = csv::header(&text);
        let rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        steps = rows.len();
        if let Some(last) = rows.last() {
            for (name, v) in header.iter().zip(csv::cells(last)) {
                let Ok(v) = v.parse::<f64>() else {
                    continue;
                };
                if *name == "total" {
                    final_loss = Some(v);
                } else if name.starts_with("val_") && v.is_finite() {
                    val_metrics.push(((*name).to_owned(), v));
                }
            }
        }
    }
    let has_bundle = Bundle::read(&dir.join(LAST_CHECKPOINT)).is_ok();
    let engine = config.engine.unwrap_or_default();
    RunInfo {
        id,
        dir: dir.to_path_buf(),
        preset,
        epochs,
        steps,
        final_loss,
        val_metrics,
        has_bundle,
        engine,
    }
}

/// Every run folder under `runs`, newest (largest id) first.
pub fn scan_runs(runs: &Path) -> Vec<RunInfo> {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return Vec::new();
    };
    let mut out: Vec<RunInfo> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join(CONFIG_FILE).is_file())
        .map(|p| read_run(&p))
        .collect();
    out.sort_by(|a, b| b.id.cmp(&a.id));
    out
}

/// Which checkpoint of a run a bundle is, or an exported bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BundleKind {
    /// `checkpoints/best`: the epoch with the best validation mask AP.
    Best,
    /// `checkpoints/last`: the latest checkpoint.
    Last,
    /// `checkpoints/refit`: retrained on train + validation (no validation AP of its own).
    Refit,
    /// A bundle folder under `<project>/exports/`.
    Export,
}

impl BundleKind {
    /// Short name (`best`, `last`, `refit`, `export`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Best => "best",
            Self::Last => "last",
            Self::Refit => "refit",
            Self::Export => "export",
        }
    }
}

/// One model bundle a picker offers.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleEntry {
    /// The bundle folder (`model.json`, `labels.txt`, `model.safetensors`).
    pub dir: PathBuf,
    /// Which checkpoint, or an export.
    pub kind: BundleKind,
    /// The run it comes from: the run folder's name, or an export's `metrics.json` `run_id`.
    pub run_id: Option<String>,
    /// The export folder's name (exports only).
    pub export_name: Option<String>,
    /// When `model.json` was written (a checkpoint is written whole, then renamed into place).
    pub modified: Option<SystemTime>,
    /// Validation mask AP: the run's best epoch for `best` and exports of a best checkpoint, the
    /// last evaluated epoch for `last`; `None` for a refit (it trained on the validation images)
    /// or when the run never evaluated.
    pub val_ap: Option<f64>,
    /// The class names (`labels.txt`).
    pub classes: Vec<String>,
}

impl BundleEntry {
    /// One line for a list: `run 20261205-140200 · best · AP 0.412 · 5 Dec 14:02 UTC`, or
    /// `export cells-v1 · best of 20261204-101500 · AP 0.398 · 4 Dec 10:40 UTC`.
    pub fn title(&self) -> String {
        let mut parts = Vec::new();
        match (self.kind, &self.export_name) {
            (BundleKind::Export, name) => {
                parts.push(format!("export {}", name.as_deref().unwrap_or("?")));
                if let Some(run) = &self.run_id {
                    parts.push(format!("from run {run}"));
                }
            }
            (kind, _) => {
                parts.push(format!("run {}", self.run_id.as_deref().unwrap_or("?")));
                parts.push(match kind {
                    BundleKind::Refit => "refit on train + validation".to_owned(),
                    k => k.as_str().to_owned(),
                });
            }
        }
        if let Some(ap) = self.val_ap {
            parts.push(format!("AP {ap:.3}"));
        }
        if let Some(t) = self.modified {
            parts.push(fmt_utc(t));
        }
        parts.join(" · ")
    }
}

/// Validation mask AP of every evaluated epoch in `epochs.csv`, in file order (empty when the
/// file is missing or has no `val_segm_ap` column).
pub fn epoch_aps(run_dir: &Path) -> Vec<f64> {
    let Ok(text) = std::fs::read_to_string(run_dir.join("epochs.csv")) else {
        return Vec::new();
    };
    let (header, lines) = csv::header(&text);
    let Some(col) = csv::col(&header, "val_segm_ap") else {
        return Vec::new();
    };
    lines
        .filter_map(|l| csv::num(&csv::cells(l), Some(col)))
        .filter(|v| v.is_finite())
        .collect()
}

fn modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(SPEC_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// The bundles of one run folder: best, last, refit (those that hold a readable bundle).
pub fn run_bundles(run_dir: &Path) -> Vec<BundleEntry> {
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let aps = epoch_aps(run_dir);
    let best_ap = aps.iter().copied().reduce(f64::max);
    [
        (BundleKind::Best, BEST_CHECKPOINT, best_ap),
        (BundleKind::Last, LAST_CHECKPOINT, aps.last().copied()),
        (BundleKind::Refit, REFIT_CHECKPOINT, None),
    ]
    .into_iter()
    .filter_map(|(kind, name, val_ap)| {
        let dir = state::checkpoint_dir(run_dir, name)?;
        let bundle = Bundle::read(&dir).ok()?;
        Some(BundleEntry {
            modified: modified(&dir),
            dir,
            kind,
            run_id: run_id.clone(),
            export_name: None,
            val_ap,
            classes: bundle.labels,
        })
    })
    .collect()
}

/// Largest `metrics.json` read beside an export (ours are under 1 KiB; a bundle may come from
/// anywhere).
const MAX_METRICS_BYTES: u64 = 1 << 20;

/// What an export's `metrics.json` says about where its bundle came from; every field `None`
/// when the file is absent, too large or not JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportMetrics {
    /// The run folder's id.
    pub run_id: Option<String>,
    /// Which checkpoint: `best`, `last` or `refit`.
    pub checkpoint: Option<String>,
    /// The best epoch's validation mask AP.
    pub best_val_segm_ap: Option<f64>,
}

impl ExportMetrics {
    /// Reads `<dir>/metrics.json` (bounded).
    pub fn read(dir: &Path) -> Self {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        let json: Option<serde_json::Value> = std::fs::File::open(dir.join("metrics.json"))
            .and_then(|f| f.take(MAX_METRICS_BYTES + 1).read_to_end(&mut bytes))
            .ok()
            .filter(|&n| n as u64 <= MAX_METRICS_BYTES)
            .and_then(|_| serde_json::from_slice(&bytes).ok());
        let Some(m) = json else {
            return Self::default();
        };
        let text = |key: &str| {
            m.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        Self {
            run_id: text("run_id"),
            checkpoint: text("checkpoint"),
            best_val_segm_ap: m
                .get("best")
                .and_then(|b| b.get("val_segm_ap"))
                .and_then(serde_json::Value::as_f64),
        }
    }
}

/// An exported bundle folder, or `None` when it holds no readable bundle.
pub fn export_bundle(dir: &Path) -> Option<BundleEntry> {
    let bundle = Bundle::read(dir).ok()?;
    let metrics = ExportMetrics::read(dir);
    // The best epoch's AP describes a best checkpoint only (a refit trained on those images).
    let val_ap = metrics
        .best_val_segm_ap
        .filter(|_| metrics.checkpoint.as_deref() == Some("best"));
    Some(BundleEntry {
        dir: dir.to_path_buf(),
        kind: BundleKind::Export,
        run_id: metrics.run_id,
        export_name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        modified: modified(dir),
        val_ap,
        classes: bundle.labels,
    })
}

/// Every model bundle of the project at `project`: the runs' bundles, newest run first (run ids
/// are their UTC start times) and best, last, refit within a run; then the bundles under
/// `<project>/exports/`, newest first. Unreadable or half-written folders are left out.
pub fn list_bundles(project: &Path) -> Vec<BundleEntry> {
    let mut out: Vec<BundleEntry> = scan_runs(&project.join(RUNS_DIR))
        .iter()
        .flat_map(|r| run_bundles(&r.dir))
        .collect();
    let mut exports: Vec<BundleEntry> = std::fs::read_dir(project.join(EXPORTS_DIR))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .filter_map(|p| export_bundle(&p))
                .collect()
        })
        .unwrap_or_default();
    exports.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.dir.cmp(&a.dir)));
    out.extend(exports);
    out
}

/// Whether `dir` holds a readable model bundle (`model.json`, `labels.txt`, weights file).
pub fn is_bundle(dir: &Path) -> bool {
    Bundle::read(dir).is_ok()
}

/// `5 Dec 14:02 UTC` (run ids are UTC too).
pub fn fmt_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (_, month, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let name = MONTHS
        .get(usize::try_from(month - 1).unwrap_or(0))
        .copied()
        .unwrap_or("?");
    format!("{day} {name} {:02}:{:02} UTC", s / 3600, (s / 60) % 60)
}

/// Creates a fresh `<parent>/<prefix><YYYYmmdd-HHMMSS[-n]>` folder (UTC) and returns its id
/// (the part after `prefix`): run folders, k-fold audit folders.
pub(crate) fn create_dated_dir(parent: &Path, prefix: &str) -> anyhow::Result<(String, PathBuf)> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent:?}"))?;
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
        let dir = parent.join(format!("{prefix}{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {dir:?}")),
        }
    }
    anyhow::bail!("could not find a free folder name under {parent:?}")
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's `civil_from_days`); the trainer
/// names run folders with it.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backbone;
    use crate::model::bundle::{LABELS_FILE, ModelSpec, WEIGHTS_FILE};
    use std::time::Duration;

    /// A bundle's files as a checkpoint holds them (the weights are never read by the listing).
    fn fake_bundle(dir: &Path, mtime: SystemTime) {
        std::fs::create_dir_all(dir).unwrap();
        let spec = ModelSpec::new(Backbone::MobilenetV2, 3);
        std::fs::write(dir.join(SPEC_FILE), serde_json::to_string(&spec).unwrap()).unwrap();
        std::fs::write(dir.join(LABELS_FILE), "cat\ndog\n").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), b"not read").unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.join(SPEC_FILE))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    fn run(project: &Path, id: &str, epochs_csv: &str) -> PathBuf {
        let dir = project.join(RUNS_DIR).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"run_id": "x", "train": {"preset": "cpu-fast", "epochs": 3}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("epochs.csv"), epochs_csv).unwrap();
        dir
    }

    const HEADER: &str = "epoch,steps,mean_loss,loss_classifier,loss_box_reg,loss_mask,\
                          loss_objectness,loss_rpn_box_reg,lr,val_segm_ap,val_bbox_ap,seconds\n";

    #[test]
    fn bundles_are_listed_newest_run_first_with_the_validation_ap_of_epochs_csv() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_943_320); // 5 Dec 2025 14:02
        let hour = Duration::from_secs(3600);

        // An older run: best (epoch 1, AP 0.41), last (epoch 2, AP 0.38) and a refit.
        let old = run(
            project,
            "20251205-140000",
            &format!(
                "{HEADER}0,4,2.0,1,1,1,1,1,0.01,0.125,0.2,3.5\n\
                 1,4,1.5,1,1,1,1,1,0.01,0.41,0.5,3.5\n\
                 2,4,1.2,1,1,1,1,1,0.01,0.38,0.45,3.5\n"
            ),
        );
        fake_bundle(&old.join(BEST_CHECKPOINT), t0);
        fake_bundle(&old.join(LAST_CHECKPOINT), t0 + hour);
        fake_bundle(&old.join(REFIT_CHECKPOINT), t0 + hour * 2);
        // A newer run that never evaluated and only has a last checkpoint; a half-written best
        // (no weights) is left out.
        let new = run(
            project,
            "20251206-090000",
            &format!("{HEADER}0,4,2.0,1,1,1,1,1,0.01,,,3.5\n"),
        );
        fake_bundle(&new.join(LAST_CHECKPOINT), t0 + hour * 20);
        std::fs::create_dir_all(new.join(BEST_CHECKPOINT)).unwrap();
        std::fs::write(new.join(BEST_CHECKPOINT).join(SPEC_FILE), "{}").unwrap();
        // A folder without config.json is no run.
        fake_bundle(&project.join(RUNS_DIR).join("stray/checkpoints/last"), t0);
        // Exports: one written by `export --run` (metrics.json), one plain copy, one not a bundle.
        let exports = project.join(EXPORTS_DIR);
        fake_bundle(&exports.join("cells-v1"), t0 + hour * 3);
        std::fs::write(
            exports.join("cells-v1/metrics.json"),
            r#"{"run_id": "20251205-140000", "checkpoint": "best", "best": {"val_segm_ap": 0.41}}"#,
        )
        .unwrap();
        fake_bundle(&exports.join("copy"), t0 + hour * 30);
        std::fs::create_dir_all(exports.join("notes")).unwrap();

        let listed = list_bundles(project);
        let summary: Vec<(BundleKind, Option<&str>, Option<f64>)> = listed
            .iter()
            .map(|b| (b.kind, b.run_id.as_deref(), b.val_ap))
            .collect();
        assert_eq!(
            summary,
            vec![
                (BundleKind::Last, Some("20251206-090000"), None),
                (BundleKind::Best, Some("20251205-140000"), Some(0.41)),
                (BundleKind::Last, Some("20251205-140000"), Some(0.38)),
                (BundleKind::Refit, Some("20251205-140000"), None),
                (BundleKind::Export, None, None),
                (BundleKind::Export, Some("20251205-140000"), Some(0.41)),
            ]
        );
        assert_eq!(listed[1].dir, old.join(BEST_CHECKPOINT));
        assert_eq!(listed[1].classes, ["cat", "dog"]);
        assert_eq!(listed[1].modified, Some(t0));
        assert_eq!(
            listed[1].title(),
            "run 20251205-140000 · best · AP 0.410 · 5 Dec 14:02 UTC"
        );
        assert_eq!(
            listed[5].title(),
            "export cells-v1 · from run 20251205-140000 · AP 0.410 · 5 Dec 17:02 UTC"
        );
        assert_eq!(listed[4].export_name.as_deref(), Some("copy"));
        assert_eq!(epoch_aps(&old), vec![0.125, 0.41, 0.38]);
        assert!(is_bundle(&old.join(BEST_CHECKPOINT)));
        assert!(!is_bundle(&new.join(BEST_CHECKPOINT)));
        assert!(list_bundles(&project.join("missing")).is_empty());
    }

    /// A `config.json` as the first trainer wrote it (`serde_json::json!`, keys sorted; the
    /// recipe before optimiser, schedule, augmentation, auto-configuration and refit keys).
    const FIRST_VERSION_CONFIG: &str = r#"{
  "classes": [
    "cat",
    "dog"
  ],
  "device": "Cpu",
  "model": {
    "anchor_sizes": [[32], [64], [128], [256], [512]],
    "aspect_ratios": [[0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0]],
    "backbone": "mobilenet_v2",
    "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
    "box_batch_size_per_image": 128,
    "box_bg_iou_thresh": 0.5,
    "box_detections_per_img": 100,
    "box_fg_iou_thresh": 0.5,
    "box_nms_thresh": 0.5,
    "box_positive_fraction": 0.25,
    "box_score_thresh": 0.05,
    "frozen_bn_eps": 1e-5,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "max_size": 320,
    "min_size": [320],
    "num_classes": 3,
    "returned_layers": [1, 2, 3, 4],
    "rpn_batch_size_per_image": 256,
    "rpn_bg_iou_thresh": 0.3,
    "rpn_fg_iou_thresh": 0.7,
    "rpn_nms_thresh": 0.7,
    "rpn_positive_fraction": 0.5,
    "rpn_post_nms_top_n_test": 300,
    "rpn_post_nms_top_n_train": 600,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_pre_nms_top_n_train": 600,
    "rpn_score_thresh": 0.0,
    "size_divisible": 32,
    "trainable_backbone_layers": 3
  },
  "project": "/home/user/cells",
  "run_id": "20251126-101500",
  "split": {
    "train": [1, 2, 4],
    "val": [3]
  },
  "train": {
    "batch_size": 4,
    "device": "auto",
    "epochs": 12,
    "hflip_prob": 0.5,
    "image_size": null,
    "lr": 0.01,
    "max_iters": null,
    "momentum": 0.9,
    "preset": "cpu-fast",
    "pretrained_backbone": true,
    "seed": 0,
    "val_fraction": 0.1,
    "warmup_factor": 0.001,
    "warmup_iters": 100,
    "weight_decay": 0.0001
  }
}
"#;

    #[test]
    fn a_config_of_the_first_version_still_reads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), FIRST_VERSION_CONFIG).unwrap();
        let config = RunConfig::read(dir.path()).unwrap();
        assert_eq!(config.run_id.as_deref(), Some("20251126-101500"));
        assert_eq!(config.project, Some(PathBuf::from("/home/user/cells")));
        assert_eq!(config.device.as_deref(), Some("Cpu"));
        assert_eq!(config.classes, ["cat", "dog"]);
        assert_eq!(
            (config.split.train.clone(), config.split.val.clone()),
            (vec![1, 2, 4], vec![3])
        );
        let train = config.train.clone().unwrap();
        assert_eq!((train.epochs, train.batch_size, train.lr), (12, 4, 0.01));
        // Keys the first version did not write take today's defaults.
        let defaults = TrainConfig::default();
        assert_eq!(
            (train.refit, train.auto_config),
            (defaults.refit, defaults.auto_config)
        );
        let model = config.model.clone().unwrap();
        assert_eq!(
            (model.min_size.clone(), model.rpn_pre_nms_top_n_test),
            (vec![320], 300)
        );
        assert_eq!(config.preset_name().as_deref(), Some("cpu-fast"));
        assert_eq!(read_run(dir.path()).epochs, Some(12));

        // What the trainer writes today reads back equal.
        let out = tempfile::tempdir().unwrap();
        config.write(out.path()).unwrap();
        assert_eq!(RunConfig::read(out.path()).unwrap(), config);
        let err = RunConfig::required::<String>(out.path(), "run_id", None).unwrap_err();
        assert!(
            format!("{err:#}").contains("\"run_id\" is missing"),
            "{err:#}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn run_folders_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/20260101-000000");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("config.json"),
            r#"{"train": {"preset": "cpu-fast", "epochs": 3}}"#,
        )
        .unwrap();
        std::fs::write(
            run.join("metrics.csv"),
            "epoch,iter,total,lr,val_segm_ap\n0,0,2.0,0.1,\n0,1,1.5,0.1,0.125\n",
        )
        .unwrap();
        let runs = scan_runs(&dir.path().join("runs"));
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert_eq!(r.id, "20260101-000000");
        assert_eq!(
            (r.preset.as_str(), r.epochs, r.steps),
            ("cpu-fast", Some(3), 2)
        );
        assert_eq!(r.final_loss, Some(1.5));
        assert_eq!(r.val_metrics, vec![("val_segm_ap".to_owned(), 0.125)]);
        assert!(!r.has_bundle);
        assert_eq!(r.bundle_dir(), run.join(LAST_CHECKPOINT));
    }
}
