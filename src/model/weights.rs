//! Loading named tensors (from [`super::checkpoint`]) into a `tch::nn::VarStore`, and saving a
//! `VarStore` as safetensors.
//!
//! `VarStore` variable names are torchvision `state_dict` keys
//! (`backbone.body.layer1.0.conv1.weight`), so a torchvision checkpoint maps one-to-one.
//! `*.num_batches_tracked` entries are ignored in both directions: torchvision's
//! `FrozenBatchNorm2d` has none, trainable BatchNorm has one, and it is only a counter.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use tch::Tensor;
use tch::nn::VarStore;

use super::checkpoint::{self, CheckpointError};

/// Suffix of BatchNorm step counters, ignored when loading.
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// Prefix of the backbone body variables (ResNet / MobileNet features).
pub const BACKBONE_BODY_PREFIX: &str = "backbone.body.";

/// Variable prefixes that depend on the number of classes (skipped by
/// [`PartialLoad::ExceptPredictors`]).
pub const PREDICTOR_PREFIXES: [&str; 2] = [
    "roi_heads.box_predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
];

/// What a load did: which variables were filled, which had no tensor, which tensors had no
/// variable and which had the wrong shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables that received a tensor, in name order.
    pub loaded: Vec<String>,
    /// Variables (within the load's scope) for which the file has no tensor.
    pub missing: Vec<String>,
    /// File tensors that match no variable of the model (`*.num_batches_tracked` excluded).
    pub unexpected: Vec<String>,
    /// `(name, model shape, file shape)` for tensors whose shape differs from the variable's.
    pub shape_mismatch: Vec<(String, Vec<i64>, Vec<i64>)>,
}

/// How many names the `Display` implementations print per list.
const SHOWN: usize = 5;

fn name_list(names: &[String]) -> String {
    let mut s: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    if names.len() > SHOWN {
        s.push("…");
    }
    s.join(", ")
}

fn mismatch_list(items: &[(String, Vec<i64>, Vec<i64>)]) -> String {
    let mut s: Vec<String> = items
        .iter()
        .take(SHOWN)
        .map(|(n, model, file)| format!("{n}: model {model:?}, file {file:?}"))
        .collect();
    if items.len() > SHOWN {
        s.push("…".into());
    }
    s.join("; ")
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loaded {} tensors", self.loaded.len())?;
        let parts = [
            (self.missing.len(), "missing", name_list(&self.missing)),
            (
                self.shape_mismatch.len(),
                "with a different shape",
                mismatch_list(&self.shape_mismatch),
            ),
            (
                self.unexpected.len(),
                "unused from the file",
                name_list(&self.unexpected),
            ),
        ];
        for (n, what, names) in parts {
            if n > 0 {
                write!(f, "; {n} {what} ({names})")?;
            }
        }
        Ok(())
    }
}

fn strict_message(report: &LoadReport) -> String {
    let total = report.missing.len() + report.loaded.len() + report.shape_mismatch.len();
    let mut s = format!(
        "the weights do not fit the model: {} of {total} variables missing",
        report.missing.len()
    );
    if !report.missing.is_empty() {
        s.push_str(&format!(" ({})", name_list(&report.missing)));
    }
    if !report.shape_mismatch.is_empty() {
        s.push_str(&format!(
            ", {} with a different shape ({})",
            report.shape_mismatch.len(),
            mismatch_list(&report.shape_mismatch)
        ));
    }
    s
}

/// Errors from loading or saving weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// [`load_strict`]: the tensors do not cover the model exactly. Nothing was loaded.
    #[error("{}", strict_message(report))]
    Mismatch {
        /// What would have been loaded.
        report: LoadReport,
    },
    /// [`load_partial`] with `BackboneOnly` / `ExceptPredictors`: some tensors in scope have a
    /// different shape (a different architecture). Nothing was loaded.
    #[error(
        "the weights do not fit the model: {} tensors have a different shape ({})",
        report.shape_mismatch.len(),
        mismatch_list(&report.shape_mismatch)
    )]
    ShapeMismatch {
        /// What would have been loaded.
        report: LoadReport,
    },
    /// [`load_partial`]: no tensor matched any variable in scope (wrong file?).
    #[error(
        "none of the {} tensors in the file match the model ({} variables in scope; file names \
         look like: {})",
        file_count,
        report.missing.len(),
        name_list(&report.unexpected)
    )]
    NothingLoaded {
        /// Number of tensors offered.
        file_count: usize,
        /// The (empty) load.
        report: LoadReport,
    },
    /// The same tensor name appears twice in the input.
    #[error("the tensor name \"{0}\" appears twice")]
    DuplicateName(String),
    /// Copying into a variable failed.
    #[error("could not copy \"{name}\" into the model: {source}")]
    Copy {
        /// Variable name.
        name: String,
        /// libtorch error.
        #[source]
        source: tch::TchError,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Which variables [`load_partial`] fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialLoad {
    /// Only variables under `backbone.body.` (ImageNet-pretrained backbone, after
    /// [`remap_imagenet`]). A shape mismatch there is an error.
    BackboneOnly,
    /// Every variable except the class-count-dependent `roi_heads.box_predictor.*` and
    /// `roi_heads.mask_predictor.mask_fcn_logits.*` (fine-tuning COCO weights to new classes).
    /// A shape mismatch in scope is an error.
    ExceptPredictors,
    /// Any variable for which the file has a tensor of the same name and shape; everything else
    /// is reported and left as it is.
    Matching,
    /// Fine-tuning a COCO model to the project's classes, as torchvision's tutorial does by
    /// replacing `FastRCNNPredictor` / `MaskRCNNPredictor`: the predictors
    /// ([`PREDICTOR_PREFIXES`]) always keep their fresh initialisation, even when the class
    /// count happens to match; every other variable is loaded when the file has it with the same
    /// shape, and one whose shape differs (e.g. the RPN head after the anchors' aspect ratios
    /// changed) is reported in [`LoadReport::shape_mismatch`] and keeps its initial value.
    ExceptPredictorsMatching,
}

impl PartialLoad {
    fn in_scope(self, name: &str) -> bool {
        match self {
            PartialLoad::BackboneOnly => name.starts_with(BACKBONE_BODY_PREFIX),
            PartialLoad::ExceptPredictors | PartialLoad::ExceptPredictorsMatching => {
                !is_predictor(name)
            }
            PartialLoad::Matching => true,
        }
    }
}

/// Whether a variable is one of the class-count-dependent predictors ([`PREDICTOR_PREFIXES`]).
pub fn is_predictor(name: &str) -> bool {
    PREDICTOR_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn is_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some(NUM_BATCHES_TRACKED)
}

/// Plan of a load: pairs to copy and the report.
struct Plan<'a> {
    copies: Vec<(String, Tensor, &'a Tensor)>,
    report: LoadReport,
}

fn plan<'a>(
    vs: &VarStore,
    tensors: &'a [(String, Tensor)],
    in_scope: impl Fn(&str) -> bool,
) -> Result<Plan<'a>, WeightsError> {
    let mut by_name: HashMap<&str, &'a Tensor> = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        if by_name.insert(name.as_str(), t).is_some() {
            return Err(WeightsError::DuplicateName(name.clone()));
        }
    }
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let var_names: HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let mut report = LoadReport::default();
    let mut copies = Vec::new();
    for (name, var) in &vars {
        if is_counter(name) || !in_scope(name) {
            continue;
        }
        match by_name.get(name.as_str()) {
            None => report.missing.push(name.clone()),
            Some(src) => {
                let (want, got) = (var.size(), src.size());
                if want == got {
                    report.loaded.push(name.clone());
                    copies.push((name.clone(), var.shallow_clone(), *src));
                } else {
                    report.shape_mismatch.push((name.clone(), want, got));
                }
            }
        }
    }
    report.unexpected = tensors
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !is_counter(n) && !var_names.contains(n.as_str()))
        .cloned()
        .collect();
    Ok(Plan { copies, report })
}

fn execute(copies: Vec<(String, Tensor, &Tensor)>) -> Result<(), WeightsError> {
    tch::no_grad(|| {
        for (name, mut var, src) in copies {
            // `copy_` converts dtype and device.
            var.f_copy_(src)
                .map_err(|source| WeightsError::Copy { name, source })?;
        }
        Ok(())
    })
}

/// Loads every variable of `vs` from `tensors` (torchvision `state_dict` names).
///
/// Every variable must have a tensor of the same shape, otherwise nothing is loaded and
/// [`WeightsError::Mismatch`] lists what is missing or mis-shaped. Extra tensors are fine and
/// listed in [`LoadReport::unexpected`]. Values are converted to each variable's dtype and
/// device. `*.num_batches_tracked` is ignored on both sides.
pub fn load_strict(
    vs: &mut VarStore,
    tensors: &[(String, Tensor)],
) -> Result<LoadReport, WeightsError> {
    let Plan { copies, report } = plan(vs, tensors, |_| true)?;
    if !report.missing.is_empty() || !report.shape_mismatch.is_empty() {
        return Err(WeightsError::Mismatch { report });
    }
    execute(copies)?;
    log::info!("weights: {report}");
    Ok(report)
}

/// Loads the variables of `vs` selected by `filter` (see [`PartialLoad`]); variables out of
/// scope or without a tensor keep their current (initial) values.
///
/// [`LoadReport::missing`] lists in-scope variables without a tensor, `unexpected` tensors
/// whose name is no variable at all. Errors (nothing loaded): no in-scope variable received a
/// tensor, or — for `BackboneOnly` / `ExceptPredictors` — an in-scope tensor has the wrong
/// shape.
pub fn load_partial(
    vs: &mut VarStore,
    tensors: &[(String, Tensor)],
    filter: PartialLoad,
) -> Result<LoadReport, WeightsError> {
    let Plan { copies, report } = plan(vs, tensors, |n| filter.in_scope(n))?;
    let tolerant = matches!(
        filter,
        PartialLoad::Matching | PartialLoad::ExceptPredictorsMatching
    );
    if !tolerant && !report.shape_mismatch.is_empty() {
        return Err(WeightsError::ShapeMismatch { report });
    }
    if report.loaded.is_empty() {
        return Err(WeightsError::NothingLoaded {
            file_count: tensors.len(),
            report,
        });
    }
    execute(copies)?;
    log::info!("weights ({filter:?}): {report}");
    Ok(report)
}

/// Renames the tensors of an ImageNet classification checkpoint for the detection backbone.
///
/// A leading `module.` (DataParallel) and `features.` (torchvision MobileNet / EfficientNet
/// `features` Sequential) are removed, classifier heads (`fc.*`, `_fc.*`, `classifier.*`) are
/// dropped, and `model_prefix` is prepended with a `.` separator (e.g. `"backbone.body"`):
/// `features.3.conv.0.0.weight` → `backbone.body.3.conv.0.0.weight`,
/// `layer1.0.conv1.weight` → `backbone.body.layer1.0.conv1.weight`.
pub fn remap_imagenet(tensors: Vec<(String, Tensor)>, model_prefix: &str) -> Vec<(String, Tensor)> {
    let prefix = model_prefix.trim_end_matches('.');
    tensors
        .into_iter()
        .filter_map(|(name, t)| {
            let n = name.strip_prefix("module.").unwrap_or(&name);
            if ["fc.", "_fc.", "classifier."]
                .iter()
                .any(|p| n.starts_with(p))
            {
                return None;
            }
            let n = n.strip_prefix("features.").unwrap_or(n);
            let new = if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}.{n}")
            };
            Some((new, t))
        })
        .collect()
}

/// Saves every variable of `vs` to a safetensors file under its torchvision `state_dict` name
/// (in name order, each in its own dtype, moved to the CPU). The file is written to a temporary
/// name in the same directory and renamed, so `path` never holds a partial file.
pub fn save_safetensors(vs: &VarStore, path: &Path) -> Result<(), WeightsError> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<(String, Tensor)> = vars.into_iter().map(|(n, t)| (n, t.detach())).collect();
    checkpoint::write_safetensors(path, &vars)?;
    Ok(())
}

/// Reads a checkpoint file (any format [`checkpoint::read_state_dict`] accepts) and loads it
/// with [`load_strict`].
pub fn load_file_strict(vs: &mut VarStore, path: &Path) -> Result<LoadReport, WeightsError> {
    let tensors = checkpoint::read_state_dict(path)?;
    load_strict(vs, &tensors)
}
