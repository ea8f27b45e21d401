//! How a fresh run's weights start for the `quality` preset (ResNet-50-FPN): from torchvision's
//! COCO Mask R-CNN weights (`maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`) when the user has added
//! them to [`crate::host::weights_dir`], with the class-count-dependent predictors
//! re-initialised for the project's classes as torchvision's fine-tuning tutorial does; else from
//! random initialisation, said in the log (a warning, which the studio shows as a toast).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tch::nn::VarStore;

use crate::host::{self, COCO_MASKRCNN, PretrainedWeights};
use crate::model::weights::{self, LoadReport, PartialLoad};
use crate::model::{Backbone, MaskRcnnConfig, checkpoint};

/// How a `quality` run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QualityInit {
    /// From the COCO file: every tensor with the model's name and shape except the predictors.
    Coco {
        /// The verified file.
        path: PathBuf,
        /// What was loaded; `shape_mismatch` lists non-predictor variables left fresh.
        report: LoadReport,
        /// Predictor variables kept at their fresh initialisation.
        predictors_reset: Vec<String>,
    },
    /// Random initialisation (the reason is in the note).
    Random {
        /// Why the COCO file was not used.
        reason: String,
    },
}

impl QualityInit {
    /// One line for the log and `train.log`: which initialisation was used and why.
    pub fn note(&self) -> String {
        match self {
            QualityInit::Coco {
                path,
                report,
                predictors_reset,
            } => {
                let mut s = format!(
                    "COCO Mask R-CNN weights {} ({} tensors loaded; {} predictor \
                     tensors re-initialised for the project's classes",
                    path.display(),
                    report.loaded.len(),
                    predictors_reset.len()
                );
                if !report.shape_mismatch.is_empty() {
                    let names: Vec<String> = report
                        .shape_mismatch
                        .iter()
                        .map(|(n, model, file)| format!("{n} model {model:?} file {file:?}"))
                        .collect();
                    s.push_str(&format!(
                        "; {} with a different shape left fresh: {}",
                        names.len(),
                        names.join(", ")
                    ));
                }
                if !report.missing.is_empty() {
                    s.push_str(&format!(
                        "; {} not in the file left fresh: {}",
                        report.missing.len(),
                        report.missing.join(", ")
                    ));
                }
                s.push(')');
                s
            }
            QualityInit::Random { reason } => format!("random initialisation: {reason}"),
        }
    }
}

/// The catalogue entry of the COCO Mask R-CNN file.
pub fn coco_entry() -> &'static PretrainedWeights {
    host::pretrained(COCO_MASKRCNN).expect("the COCO Mask R-CNN entry is in the catalogue")
}

/// Whether the COCO file is in the weights folder (presence only: it was verified when added,
/// and is verified again when a run loads it).
pub fn coco_weights_present() -> bool {
    host::weights_path(coco_entry()).is_file()
}

/// The one line the studio shows next to the presets: COCO weights found / not found.
pub fn coco_status_line() -> String {
    let entry = coco_entry();
    if coco_weights_present() {
        format!(
            "COCO weights: found ({}) — quality starts from COCO Mask R-CNN, predictors \
             re-initialised for the project's classes",
            host::weights_path(entry).display()
        )
    } else {
        format!(
            "COCO weights: not found — quality starts from random initialisation; put {} in \
             the weights folder ({}) or run `maskstudio weights --add`",
            entry.file_name,
            host::weights_dir().display()
        )
    }
}

/// Short description of the `quality` backbone's start, for the Train form.
pub fn quality_backbone_label() -> &'static str {
    if coco_weights_present() {
        "ResNet-50-FPN (COCO weights)"
    } else {
        "ResNet-50-FPN (random init: no COCO weights)"
    }
}

/// Loads torchvision's COCO Mask R-CNN `state_dict` at `path` (zip or legacy `.pth`, no hash
/// check — callers verify) into `vs` with [`PartialLoad::ExceptPredictorsMatching`]: every
/// variable the file has with the same shape is copied exactly; the predictors
/// (`roi_heads.box_predictor.*`, `roi_heads.mask_predictor.mask_fcn_logits.*`) keep their fresh
/// initialisation; returns the report and the predictor names left fresh.
pub fn load_coco_file(vs: &mut VarStore, path: &Path) -> anyhow::Result<(LoadReport, Vec<String>)> {
    let tensors = checkpoint::read_state_dict(path)
        .with_context(|| format!("reading the COCO weights {}", path.display()))?;
    let report = weights::load_partial(vs, &tensors, PartialLoad::ExceptPredictorsMatching)
        .with_context(|| format!("loading the COCO weights {}", path.display()))?;
    let mut predictors: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|n| weights::is_predictor(n))
        .collect();
    predictors.sort();
    Ok((report, predictors))
}

/// [`init_quality`] with the COCO file looked up in `dir` instead of the weights folder.
///
/// Random initialisation (no error) when the model is not ResNet-50 (a `backbone` override) or
/// the file is absent; an error when the file is present but fails the sha256 check (torch.hub's
/// prefix rule) or cannot be read.
pub fn init_quality_from(
    vs: &mut VarStore,
    model_cfg: &MaskRcnnConfig,
    dir: &Path,
) -> anyhow::Result<QualityInit> {
    let entry = coco_entry();
    if model_cfg.backbone != Backbone::Resnet50 {
        return Ok(QualityInit::Random {
            reason: format!(
                "{} fits only the ResNet-50-FPN backbone (this model is {:?})",
                entry.file_name, model_cfg.backbone
            ),
        });
    }
    let path = dir.join(entry.file_name);
    if !path.is_file() {
        return Ok(QualityInit::Random {
            reason: format!(
                "{} not found in {}; add it with `maskstudio weights --add`",
                entry.file_name,
                dir.display()
            ),
        });
    }
    host::verify_file(entry, &path)?;
    let (report, predictors_reset) = load_coco_file(vs, &path)?;
    Ok(QualityInit::Coco {
        path,
        report,
        predictors_reset,
    })
}

/// The `quality` preset's start for a fresh run: the COCO Mask R-CNN weights from
/// [`host::weights_dir`] when present (see [`init_quality_from`]), else random
/// initialisation. The choice is logged: info for COCO, a warning for random initialisation.
pub fn init_quality(vs: &mut VarStore, model_cfg: &MaskRcnnConfig) -> anyhow::Result<QualityInit> {
    let init = init_quality_from(vs, model_cfg, &host::weights_dir())?;
    match &init {
        QualityInit::Coco { .. } => log::info!("{}", init.note()),
        QualityInit::Random { .. } => log::warn!("{}", init.note()),
    }
    Ok(init)
}
