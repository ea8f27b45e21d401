//! A run's model bundle exported ([`export_run`]), for `maskstudio export --run RUN_DIR --out
//! DIR` and the Train tab's "Export model bundle" alike: the bundle of the run's refit on train +
//! validation (else its best checkpoint, else its last) plus `metrics.json` (validation AP per
//! epoch, the best, classes, the training and model configs) and the export marker.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::model::bundle::Bundle;
use crate::train::runs::RunConfig;
use crate::train::state::{self, BEST_CHECKPOINT, LAST_CHECKPOINT, REFIT_CHECKPOINT, REFIT_FILE};

/// What [`export_run`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RunExport {
    /// The bundle folder written.
    pub out: PathBuf,
    /// `"refit"` (trained on train + validation), `"best"` or `"last"`.
    pub checkpoint: &'static str,
    /// Best validation mask AP, if the run evaluated.
    pub best_segm_ap: Option<f64>,
}

/// The files of a model bundle (weights, labels, model.json).
pub const BUNDLE_FILES: [&str; 3] = ["model.safetensors", "labels.txt", "model.json"];

/// Marker file an export folder holds: only such a folder may be replaced by a later export.
pub const EXPORT_MARKER: &str = ".maskstudio-export";
/// The marker's content (format name and version).
pub const EXPORT_FORMAT: &str = "maskstudio-export/1";

/// Whether `dir` holds the marker of an export this code wrote.
fn is_earlier_export(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(EXPORT_MARKER)).is_ok_and(|s| s.trim() == EXPORT_FORMAT)
}

/// The checkpoint a run is exported from: its refit on train + validation, else its best, else
/// its last (`"refit"` / `"best"` / `"last"` with the bundle folder). Shared with
/// `train::deploy::run_bundle` (`export --run --format onnx`).
pub fn chosen_checkpoint(run_dir: &Path) -> anyhow::Result<(PathBuf, &'static str)> {
    [
        (REFIT_CHECKPOINT, "refit"),
        (BEST_CHECKPOINT, "best"),
        (LAST_CHECKPOINT, "last"),
    ]
    .into_iter()
    .find_map(|(dir, which)| state::checkpoint_dir(run_dir, dir).map(|d| (d, which)))
    .with_context(|| {
        format!("{run_dir:?} has no usable bundle to export (no refit, best or last checkpoint)")
    })
}

/// Copies the refit's (else the best, else the last) checkpoint's bundle to `out` and writes `metrics.json` beside
/// it. `out` must not exist, be empty, or hold an earlier export (it is replaced as a whole;
/// an earlier export is recognised by its [`EXPORT_MARKER`] file, nothing else).
pub fn export_run(run_dir: &Path, out: &Path) -> anyhow::Result<RunExport> {
    let (source, which) = chosen_checkpoint(run_dir)?;
    // Refuse a broken bundle before writing anything.
    let bundle =
        Bundle::read(&source).with_context(|| format!("reading the checkpoint {source:?}"))?;
    let config = RunConfig::read(run_dir)?;
    let train_state = state::read_state(run_dir).ok().map(|(s, _)| s);

    if out.exists() {
        let is_dir = out.is_dir();
        let empty = is_dir
            && std::fs::read_dir(out)
                .with_context(|| format!("listing {out:?}"))?
                .next()
                .is_none();
        // Only a folder this code wrote (it holds our marker) may be replaced as a whole: a
        // `metrics.json` alone proves nothing, and replacing deletes the folder.
        anyhow::ensure!(
            is_dir && (empty || is_earlier_export(out)),
            "{out:?} exists and is not an earlier Mask Studio export (no {EXPORT_MARKER} file); \
             choose a new folder"
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {parent:?}"))?;
    // A fresh, uniquely named folder beside `out` (same file system, so the rename is atomic);
    // dropped (removed) if anything below fails.
    let tmp_dir = tempfile::Builder::new()
        .prefix(".maskstudio-export-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary folder in {parent:?}"))?;
    let tmp = tmp_dir.path().to_path_buf();
    {
        // tempfile makes the folder private (0700); an exported model is an ordinary folder.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting permissions of {tmp:?}"))?;
    }
    std::fs::write(tmp.join(EXPORT_MARKER), format!("{EXPORT_FORMAT}\n"))
        .with_context(|| format!("writing {:?}", tmp.join(EXPORT_MARKER)))?;
    for f in BUNDLE_FILES {
        std::fs::copy(source.join(f), tmp.join(f))
            .with_context(|| format!("copying {:?}", source.join(f)))?;
    }
    let epochs: Vec<serde_json::Value> = train_state
        .as_ref()
        .map(|s| {
            s.history
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "epoch": r.epoch,
                        "mean_loss": r.mean_loss,
                        "val_segm_ap": r.val_segm_ap,
                        "val_bbox_ap": r.val_bbox_ap,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let best_segm_ap = train_state.as_ref().and_then(|s| s.best_segm_ap);
    let best_bbox_ap = train_state.as_ref().and_then(|s| {
        s.best_epoch
            .and_then(|e| s.history.iter().find(|r| r.epoch == e))
            .and_then(|r| r.val_bbox_ap)
    });
    let metrics = serde_json::json!({
        "run_id": config.run_id,
        "checkpoint": which,
        "classes": bundle.labels,
        "best": {
            "epoch": train_state.as_ref().and_then(|s| s.best_epoch),
            "val_segm_ap": best_segm_ap,
            "val_bbox_ap": best_bbox_ap,
        },
        "epochs": epochs,
        "iterations": train_state.as_ref().map(|s| s.iter),
        "refit": std::fs::read_to_string(run_dir.join(REFIT_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
        "train_config": config.train,
        "model_config": config.model,
    });
    std::fs::write(
        tmp.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )
    .with_context(|| format!("writing {:?}", tmp.join("metrics.json")))?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {out:?}"))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {tmp:?} to {out:?}"))?;
    // Renamed away: nothing left for the guard to remove.
    let _ = tmp_dir.keep();
    Ok(RunExport {
        out: out.to_path_buf(),
        checkpoint: which,
        best_segm_ap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backbone;
    use crate::model::bundle::{LABELS_FILE, ModelSpec, SPEC_FILE, WEIGHTS_FILE};

    /// A checkpoint's bundle files whose weights file holds `tag` (the export copies bytes).
    fn fake_checkpoint(run: &Path, name: &str, tag: &str) {
        let dir = run.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ModelSpec::new(Backbone::MobilenetV2, 2);
        std::fs::write(dir.join(SPEC_FILE), serde_json::to_string(&spec).unwrap()).unwrap();
        std::fs::write(dir.join(LABELS_FILE), "cell\n").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), tag).unwrap();
    }

    fn exported_weights(out: &Path) -> String {
        std::fs::read_to_string(out.join(WEIGHTS_FILE)).unwrap()
    }

    #[test]
    fn a_run_without_a_bundle_is_not_exported() {
        // Reading run folders is tested in `train::runs`; here only the export's refusal.
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/20260101-000000");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.json"), r#"{"train": {"epochs": 3}}"#).unwrap();
        let r = crate::train::runs::read_run(&run);
        assert!(!r.has_bundle);
        let out = dir.path().join("out/20260101-000000");
        let err = export_run(&run, &out).unwrap_err();
        assert!(format!("{err:#}").contains("no usable bundle"), "{err:#}");
        assert!(!out.exists());
    }

    #[test]
    fn the_refit_else_the_best_else_the_last_is_exported_with_marker_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("20260101-000000");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("config.json"),
            r#"{"run_id": "20260101-000000", "train": {"epochs": 3}}"#,
        )
        .unwrap();
        let out = dir.path().join("exports/cells");

        fake_checkpoint(&run, LAST_CHECKPOINT, "last");
        let done = export_run(&run, &out).unwrap();
        assert_eq!(
            (done.checkpoint, done.out.as_path()),
            ("last", out.as_path())
        );
        assert_eq!(exported_weights(&out), "last");
        assert!(is_earlier_export(&out));
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["run_id"], "20260101-000000");
        assert_eq!(metrics["checkpoint"], "last");
        assert_eq!(metrics["classes"], serde_json::json!(["cell"]));
        assert_eq!(metrics["train_config"]["epochs"], 3);

        // An earlier export is replaced as a whole: the best, then the refit, win.
        fake_checkpoint(&run, BEST_CHECKPOINT, "best");
        assert_eq!(export_run(&run, &out).unwrap().checkpoint, "best");
        assert_eq!(exported_weights(&out), "best");
        fake_checkpoint(&run, REFIT_CHECKPOINT, "refit");
        assert_eq!(export_run(&run, &out).unwrap().checkpoint, "refit");
        assert_eq!(exported_weights(&out), "refit");

        // An empty folder is filled; a non-empty folder that is no export is refused, untouched.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        export_run(&run, &empty).unwrap();
        assert_eq!(exported_weights(&empty), "refit");
        let foreign = dir.path().join("thesis");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let err = export_run(&run, &foreign).unwrap_err();
        assert!(
            format!("{err:#}").contains("not an earlier Mask Studio export"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
        // Nothing temporary is left beside the exports.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("exports"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cells"]);
    }
}
