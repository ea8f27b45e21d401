//! Model bundles: a directory holding everything needed to run a trained model.
//!
//! ```text
//! my-model/
//!   model.safetensors   weights, torchvision state_dict names (see `weights::save_safetensors`)
//!   labels.txt          class names, one per line, for class indices 1..N (background not listed)
//!   model.json          architecture and inference settings (`ModelSpec`)
//! ```
//!
//! `model.json`:
//!
//! ```json
//! {"format": "maskstudio-model/1", "architecture": "maskrcnn", "backbone": "resnet50",
//!  "num_classes": 3, "min_size": 800, "max_size": 1333}
//! ```
//!
//! Only `format`, `architecture`, `backbone` and `num_classes` are required; every other key
//! falls back to torchvision's default (see [`ModelSpec::resolved`]); unknown keys are errors.
//! `num_classes` counts the background class and must equal the number of labels + 1.
//!
//! Over 800 lines only with its unit tests (616 lines of code before them).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::checkpoint;
use super::config::MaskRcnnConfig;
use super::weights::{self, LoadReport, WeightsError};

/// The `format` value of the current bundle layout.
pub const BUNDLE_FORMAT: &str = "maskstudio-model/1";
/// The only architecture so far.
pub const ARCHITECTURE_MASKRCNN: &str = "maskrcnn";
/// File name of the weights inside a bundle.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the class names inside a bundle.
pub const LABELS_FILE: &str = "labels.txt";
/// File name of the model description inside a bundle.
pub const SPEC_FILE: &str = "model.json";

/// Errors reading or writing a bundle; messages name the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `model.json` is not valid JSON or does not follow the schema (unknown key, wrong type…).
    #[error("{}: {source}", path.display())]
    Json {
        /// The `model.json` file.
        path: PathBuf,
        /// What serde found (includes the key name and line/column).
        #[source]
        source: serde_json::Error,
    },
    /// The content is well-formed but not acceptable.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Saving or loading the weights failed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::model::config::Backbone;

/// The contents of `model.json`. `None` fields take the defaults listed on
/// [`ModelSpec::resolved`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Always [`ARCHITECTURE_MASKRCNN`].
    pub architecture: String,
    /// The backbone.
    pub backbone: Backbone,
    /// Number of classes including background (labels + 1).
    pub num_classes: i64,
    /// Backbone stages fed to the FPN, each in 1..=4, increasing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_layers: Option<Vec<i64>>,
    /// Shorter image side after resizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<i64>,
    /// Upper bound for the longer side after resizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<i64>,
    /// Per-channel normalisation mean (RGB, images in 0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_mean: Option<[f64; 3]>,
    /// Per-channel normalisation standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_std: Option<[f64; 3]>,
    /// Anchor sizes per feature level (one list per FPN level incl. `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_sizes: Option<Vec<Vec<f64>>>,
    /// Anchor aspect ratios (h/w) per feature level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratios: Option<Vec<Vec<f64>>>,
    /// Proposals kept per level before NMS at inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpn_pre_nms_top_n_test: Option<i64>,
    /// Proposals kept per image after NMS at inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpn_post_nms_top_n_test: Option<i64>,
    /// IoU threshold of the RPN NMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpn_nms_thresh: Option<f64>,
    /// Minimum class score of a detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_score_thresh: Option<f64>,
    /// IoU threshold of the per-class detection NMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_nms_thresh: Option<f64>,
    /// Maximum detections per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_detections_per_img: Option<i64>,
    /// `eps` of the backbone's FrozenBatchNorm2d layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_bn_eps: Option<f64>,
}

/// A [`ModelSpec`] with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSpec {
    /// The backbone.
    pub backbone: Backbone,
    /// Number of classes including background.
    pub num_classes: i64,
    /// Backbone stages fed to the FPN.
    pub returned_layers: Vec<i64>,
    /// Shorter image side after resizing.
    pub min_size: i64,
    /// Upper bound of the longer side.
    pub max_size: i64,
    /// Normalisation mean.
    pub image_mean: [f64; 3],
    /// Normalisation standard deviation.
    pub image_std: [f64; 3],
    /// Anchor sizes per level (`returned_layers.len() + 1` levels).
    pub anchor_sizes: Vec<Vec<f64>>,
    /// Aspect ratios per level.
    pub aspect_ratios: Vec<Vec<f64>>,
    /// RPN pre-NMS top-n per level at inference.
    pub rpn_pre_nms_top_n_test: i64,
    /// RPN post-NMS top-n per image at inference.
    pub rpn_post_nms_top_n_test: i64,
    /// RPN NMS IoU threshold.
    pub rpn_nms_thresh: f64,
    /// Detection score threshold.
    pub box_score_thresh: f64,
    /// Detection NMS IoU threshold.
    pub box_nms_thresh: f64,
    /// Maximum detections per image.
    pub box_detections_per_img: i64,
    /// FrozenBatchNorm2d eps.
    pub frozen_bn_eps: f64,
}

/// `[f64; 3]` of a 3-value list (`image_mean`, `image_std`), `None` for another length.
fn three(v: &[f64]) -> Option<[f64; 3]> {
    v.try_into().ok()
}

impl ModelSpec {
    /// A spec with the required fields set and everything else at its default.
    pub fn new(backbone: Backbone, num_classes: i64) -> Self {
        Self {
            format: BUNDLE_FORMAT.to_string(),
            architecture: ARCHITECTURE_MASKRCNN.to_string(),
            backbone,
            num_classes,
            returned_layers: None,
            min_size: None,
            max_size: None,
            image_mean: None,
            image_std: None,
            anchor_sizes: None,
            aspect_ratios: None,
            rpn_pre_nms_top_n_test: None,
            rpn_post_nms_top_n_test: None,
            rpn_nms_thresh: None,
            box_score_thresh: None,
            box_nms_thresh: None,
            box_detections_per_img: None,
            frozen_bn_eps: None,
        }
    }

    /// All settings with defaults filled in: torchvision's, as [`MaskRcnnConfig::default`]
    /// lists them (`min_size` its last entry).
    ///
    /// Default anchors depend on `returned_layers`: one level per returned layer k with size
    /// 32·2^(k−1), plus the `pool` level at twice the last size, each with aspect ratios
    /// `[0.5, 1.0, 2.0]`; for `[1, 2, 3, 4]` this is torchvision's `_default_anchorgen`
    /// (the sizes and ratios of its first level generalised).
    pub fn resolved(&self) -> ResolvedSpec {
        let d = MaskRcnnConfig::default();
        let returned_layers = self
            .returned_layers
            .clone()
            .unwrap_or_else(|| d.returned_layers.clone());
        let layer1 = d
            .anchor_sizes
            .first()
            .and_then(|l| l.first())
            .map_or(32.0, |&s| s as f64);
        let default_sizes = || {
            let mut sizes: Vec<Vec<f64>> = returned_layers
                .iter()
                .map(|&k| vec![layer1 * 2f64.powi((k.clamp(1, 30) - 1) as i32)])
                .collect();
            let pool = sizes.last().map_or(layer1, |s| s[0] * 2.0);
            sizes.push(vec![pool]);
            sizes
        };
        let anchor_sizes = self.anchor_sizes.clone().unwrap_or_else(default_sizes);
        let ratios = d.aspect_ratios.first().cloned().unwrap_or_default();
        let aspect_ratios = self
            .aspect_ratios
            .clone()
            .unwrap_or_else(|| vec![ratios; anchor_sizes.len()]);
        ResolvedSpec {
            backbone: self.backbone,
            num_classes: self.num_classes,
            min_size: self
                .min_size
                .or(d.min_size.last().copied())
                .unwrap_or_default(),
            max_size: self.max_size.unwrap_or(d.max_size),
            image_mean: self.image_mean.or(three(&d.image_mean)).unwrap_or_default(),
            image_std: self.image_std.or(three(&d.image_std)).unwrap_or_default(),
            anchor_sizes,
            aspect_ratios,
            rpn_pre_nms_top_n_test: self
                .rpn_pre_nms_top_n_test
                .unwrap_or(d.rpn_pre_nms_top_n_test),
            rpn_post_nms_top_n_test: self
                .rpn_post_nms_top_n_test
                .unwrap_or(d.rpn_post_nms_top_n_test),
            rpn_nms_thresh: self.rpn_nms_thresh.unwrap_or(d.rpn_nms_thresh),
            box_score_thresh: self.box_score_thresh.unwrap_or(d.box_score_thresh),
            box_nms_thresh: self.box_nms_thresh.unwrap_or(d.box_nms_thresh),
            box_detections_per_img: self
                .box_detections_per_img
                .unwrap_or(d.box_detections_per_img),
            frozen_bn_eps: self.frozen_bn_eps.unwrap_or(d.frozen_bn_eps),
            returned_layers,
        }
    }

    /// Checks values serde cannot: format and architecture strings, `returned_layers` in
    /// 1..=4 and increasing, anchor lists matching the number of levels, positive sizes,
    /// thresholds in [0, 1], `num_classes >= 2`. Returns a message for the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != BUNDLE_FORMAT {
            return Err(format!(
                "\"format\" is \"{}\"; this version of the program reads \"{BUNDLE_FORMAT}\"",
                self.format
            ));
        }
        if self.architecture != ARCHITECTURE_MASKRCNN {
            return Err(format!(
                "\"architecture\" is \"{}\"; only \"{ARCHITECTURE_MASKRCNN}\" is supported",
                self.architecture
            ));
        }
        if self.num_classes < 2 {
            return Err(format!(
                "\"num_classes\" is {}; it counts the background, so it must be at least 2",
                self.num_classes
            ));
        }
        let r = self.resolved();
        if r.returned_layers.is_empty()
            || r.returned_layers.iter().any(|&k| !(1..=4).contains(&k))
            || r.returned_layers.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!(
                "\"returned_layers\" is {:?}; it needs increasing values in 1..=4",
                r.returned_layers
            ));
        }
        let levels = r.returned_layers.len() + 1;
        if r.anchor_sizes.len() != levels {
            return Err(format!(
                "\"anchor_sizes\" has {} levels but the FPN has {levels} (returned_layers + pool)",
                r.anchor_sizes.len()
            ));
        }
        if r.aspect_ratios.len() != levels {
            return Err(format!(
                "\"aspect_ratios\" has {} levels but the FPN has {levels} (returned_layers + pool)",
                r.aspect_ratios.len()
            ));
        }
        let positive = |v: &[Vec<f64>]| {
            v.iter()
                .all(|l| !l.is_empty() && l.iter().all(|&x| x > 0.0))
        };
        if !positive(&r.anchor_sizes) || !positive(&r.aspect_ratios) {
            return Err(
                "anchor sizes and aspect ratios must be non-empty lists of positive numbers"
                    .to_string(),
            );
        }
        let per_level = r.anchor_sizes[0].len() * r.aspect_ratios[0].len();
        if r.anchor_sizes
            .iter()
            .zip(&r.aspect_ratios)
            .any(|(s, a)| s.len() * a.len() != per_level)
        {
            return Err(
                "every level needs the same number of anchors (sizes × aspect ratios), since the \
                 RPN head is shared"
                    .to_string(),
            );
        }
        for (name, v) in [
            ("min_size", r.min_size),
            ("max_size", r.max_size),
            ("rpn_pre_nms_top_n_test", r.rpn_pre_nms_top_n_test),
            ("rpn_post_nms_top_n_test", r.rpn_post_nms_top_n_test),
            ("box_detections_per_img", r.box_detections_per_img),
        ] {
            if v <= 0 {
                return Err(format!("\"{name}\" must be positive, not {v}"));
            }
        }
        if r.min_size > r.max_size {
            return Err(format!(
                "\"min_size\" ({}) is larger than \"max_size\" ({})",
                r.min_size, r.max_size
            ));
        }
        for (name, v) in [
            ("rpn_nms_thresh", r.rpn_nms_thresh),
            ("box_score_thresh", r.box_score_thresh),
            ("box_nms_thresh", r.box_nms_thresh),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("\"{name}\" must be between 0 and 1, not {v}"));
            }
        }
        if r.image_std.iter().any(|&s| s <= 0.0) {
            return Err("\"image_std\" values must be positive".to_string());
        }
        if !(r.frozen_bn_eps >= 0.0 && r.frozen_bn_eps.is_finite()) {
            return Err(format!(
                "\"frozen_bn_eps\" must be >= 0, not {}",
                r.frozen_bn_eps
            ));
        }
        Ok(())
    }
}

/// A model bundle on disk (weights are read separately, see [`Bundle::load_weights`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// `model.json`.
    pub spec: ModelSpec,
    /// `labels.txt`: names of classes 1..N.
    pub labels: Vec<String>,
}

fn check_labels(path: &Path, labels: &[String], num_classes: i64) -> Result<(), BundleError> {
    for (i, l) in labels.iter().enumerate() {
        if l.trim().is_empty() {
            return Err(invalid(
                path,
                format!("label {} (line {}) is empty", i + 1, i + 1),
            ));
        }
        if l.contains(['\n', '\r']) {
            return Err(invalid(
                path,
                format!("label {} contains a line break", i + 1),
            ));
        }
    }
    if labels.len() as i64 + 1 != num_classes {
        return Err(invalid(
            path,
            format!(
                "{} class names, but model.json says num_classes = {num_classes} (names + \
                 background); it should be {}",
                labels.len(),
                labels.len() + 1
            ),
        ));
    }
    Ok(())
}

impl Bundle {
    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Reads `model.json` and `labels.txt` of the bundle in `dir` and checks that
    /// `model.safetensors` exists. Errors name the file at fault.
    pub fn read(dir: &Path) -> Result<Bundle, BundleError> {
        let spec_path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&spec_path).map_err(io_err(&spec_path))?;
        let spec: ModelSpec = serde_json::from_str(&text).map_err(|source| BundleError::Json {
            path: spec_path.clone(),
            source,
        })?;
        spec.validate().map_err(|m| invalid(&spec_path, m))?;
        let labels_path = dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&labels_path).map_err(io_err(&labels_path))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let labels: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        check_labels(&labels_path, &labels, spec.num_classes)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(invalid(&weights_path, "the weights file is missing"));
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            spec,
            labels,
        })
    }

    /// Loads `model.safetensors` into `vs` with [`weights::load_strict`]. The file is read as
    /// safetensors only ([`checkpoint::read_safetensors`]): a bundle is ours, so a pickle
    /// checkpoint renamed `model.safetensors` is an error naming the file, never unpickled.
    pub fn load_weights(&self, vs: &mut VarStore) -> Result<LoadReport, BundleError> {
        let tensors =
            checkpoint::read_safetensors(&self.weights_path()).map_err(WeightsError::from)?;
        Ok(weights::load_strict(vs, &tensors)?)
    }

    /// Writes a bundle to `dir`: `model.json`, `labels.txt` and `model.safetensors` from `vs`.
    ///
    /// Everything is written into a temporary sibling directory which is then renamed to `dir`,
    /// so a half-written bundle never appears under `dir`. An existing bundle at `dir` is
    /// replaced (moved aside first, removed after the rename).
    pub fn write(
        dir: &Path,
        spec: &ModelSpec,
        labels: &[String],
        vs: &VarStore,
    ) -> Result<Bundle, BundleError> {
        let spec_path = dir.join(SPEC_FILE);
        spec.validate().map_err(|m| invalid(&spec_path, m))?;
        check_labels(&dir.join(LABELS_FILE), labels, spec.num_classes)?;
        let name = dir
            .file_name()
            .ok_or_else(|| invalid(dir, "the bundle path has no directory name"))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{tag}"));
        let tmp = parent.join(&tmp_name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        let result = Self::write_into(&tmp, spec, labels, vs).and_then(|()| {
            let mut old_name = std::ffi::OsString::from(".");
            old_name.push(name);
            old_name.push(format!(".old-{tag}"));
            let old = parent.join(old_name);
            let had_old = dir.exists();
            if had_old {
                std::fs::rename(dir, &old).map_err(io_err(dir))?;
            }
            if let Err(e) = std::fs::rename(&tmp, dir) {
                if had_old {
                    let _ = std::fs::rename(&old, dir);
                }
                return Err(io_err(dir)(e));
            }
            if had_old && let Err(e) = std::fs::remove_dir_all(&old) {
                log::warn!(
                    "could not remove the previous bundle {}: {e}",
                    old.display()
                );
            }
            Ok(())
        });
        if result.is_err() && tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            spec: spec.clone(),
            labels: labels.to_vec(),
        })
    }

    fn write_into(
        tmp: &Path,
        spec: &ModelSpec,
        labels: &[String],
        vs: &VarStore,
    ) -> Result<(), BundleError> {
        std::fs::create_dir(tmp).map_err(io_err(tmp))?;
        let spec_path = tmp.join(SPEC_FILE);
        let mut json = serde_json::to_string_pretty(spec).map_err(|source| BundleError::Json {
            path: spec_path.clone(),
            source,
        })?;
        json.push('\n');
        std::fs::write(&spec_path, json).map_err(io_err(&spec_path))?;
        let labels_path = tmp.join(LABELS_FILE);
        let mut text = labels.join("\n");
        text.push('\n');
        std::fs::write(&labels_path, text).map_err(io_err(&labels_path))?;
        weights::save_safetensors(vs, &tmp.join(WEIGHTS_FILE))?;
        Ok(())
    }
}

impl ModelSpec {
    /// The bundle description of a model config, every inference-relevant value written out
    /// (the inverse of [`ResolvedSpec::to_config`]; `min_size` is the last, the eval size).
    pub fn from_config(cfg: &MaskRcnnConfig) -> Self {
        Self {
            returned_layers: Some(cfg.returned_layers.clone()),
            min_size: cfg.min_size.last().copied(),
            max_size: Some(cfg.max_size),
            image_mean: three(&cfg.image_mean),
            image_std: three(&cfg.image_std),
            anchor_sizes: Some(
                cfg.anchor_sizes
                    .iter()
                    .map(|l| l.iter().map(|&s| s as f64).collect())
                    .collect(),
            ),
            aspect_ratios: Some(cfg.aspect_ratios.clone()),
            rpn_pre_nms_top_n_test: Some(cfg.rpn_pre_nms_top_n_test),
            rpn_post_nms_top_n_test: Some(cfg.rpn_post_nms_top_n_test),
            rpn_nms_thresh: Some(cfg.rpn_nms_thresh),
            box_score_thresh: Some(cfg.box_score_thresh),
            box_nms_thresh: Some(cfg.box_nms_thresh),
            box_detections_per_img: Some(cfg.box_detections_per_img),
            frozen_bn_eps: Some(cfg.frozen_bn_eps),
            ..Self::new(cfg.backbone, cfg.num_classes)
        }
    }
}

impl ResolvedSpec {
    /// The model configuration this bundle describes (training-only fields keep torchvision's
    /// defaults). Anchor sizes are rounded to whole pixels, as torchvision's are integers.
    pub fn to_config(&self) -> MaskRcnnConfig {
        MaskRcnnConfig {
            backbone: self.backbone,
            num_classes: self.num_classes,
            returned_layers: self.returned_layers.clone(),
            frozen_bn_eps: self.frozen_bn_eps,
            min_size: vec![self.min_size],
            max_size: self.max_size,
            image_mean: self.image_mean.to_vec(),
            image_std: self.image_std.to_vec(),
            anchor_sizes: self
                .anchor_sizes
                .iter()
                .map(|level| level.iter().map(|s| s.round() as i64).collect())
                .collect(),
            aspect_ratios: self.aspect_ratios.clone(),
            rpn_pre_nms_top_n_test: self.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test: self.rpn_post_nms_top_n_test,
            rpn_nms_thresh: self.rpn_nms_thresh,
            box_score_thresh: self.box_score_thresh,
            box_nms_thresh: self.box_nms_thresh,
            box_detections_per_img: self.box_detections_per_img,
            ..MaskRcnnConfig::for_backbone(self.backbone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Init;
    use tch::{Device, Kind, Tensor};

    fn tiny_vs() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "backbone" / "body" / "conv1").var("weight", &[2, 3], Init::Const(1.5));
        let _ = (&root / "roi_heads" / "box_predictor" / "cls_score").var(
            "bias",
            &[3],
            Init::Const(-0.5),
        );
        vs
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn write_raw(dir: &Path, json: &str, labels: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(SPEC_FILE), json).unwrap();
        std::fs::write(dir.join(LABELS_FILE), labels).unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), b"").unwrap();
    }

    const MINIMAL: &str = r#"{"format": "maskstudio-model/1", "architecture": "maskrcnn",
        "backbone": "resnet50", "num_classes": 3}"#;

    #[test]
    fn write_then_read_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundles").join("cats");
        let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
        spec.min_size = Some(512);
        spec.frozen_bn_eps = Some(0.0);
        let vs = tiny_vs();
        Bundle::write(&dir, &spec, &labels(&["cat", "dog"]), &vs).unwrap();
        let b = Bundle::read(&dir).unwrap();
        assert_eq!(b.spec, spec);
        assert_eq!(b.labels, labels(&["cat", "dog"]));
        let text = std::fs::read_to_string(dir.join(SPEC_FILE)).unwrap();
        assert!(
            text.contains("\"mobilenet_v2\"") && !text.contains("max_size"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(LABELS_FILE)).unwrap(),
            "cat\ndog\n"
        );

        let mut fresh = VarStore::new(Device::Cpu);
        let root = fresh.root();
        let _ = (&root / "backbone" / "body" / "conv1").var("weight", &[2, 3], Init::Const(0.0));
        let _ = (&root / "roi_heads" / "box_predictor" / "cls_score").var(
            "bias",
            &[3],
            Init::Const(0.0),
        );
        let report = b.load_weights(&mut fresh).unwrap();
        assert_eq!(report.loaded.len(), 2);
        let w = fresh.variables()["backbone.body.conv1.weight"].shallow_clone();
        assert!(w.equal(&Tensor::full([2, 3], 1.5, (Kind::Float, Device::Cpu))));

        // Overwriting replaces the bundle and leaves no temporary directories behind.
        Bundle::write(
            &dir,
            &ModelSpec::new(Backbone::Resnet50, 2),
            &labels(&["cat"]),
            &vs,
        )
        .unwrap();
        let b = Bundle::read(&dir).unwrap();
        assert_eq!(b.labels, labels(&["cat"]));
        let entries: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, vec!["cats".to_string()]);
    }

    #[test]
    fn write_refuses_bad_labels_without_touching_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("b");
        let err = Bundle::write(
            &dir,
            &ModelSpec::new(Backbone::Resnet50, 3),
            &labels(&["a"]),
            &tiny_vs(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_classes = 3"), "{err}");
        let err = Bundle::write(
            &dir,
            &ModelSpec::new(Backbone::Resnet50, 3),
            &labels(&["a", " "]),
            &tiny_vs(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("label 2 (line 2) is empty"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn read_errors_name_file_and_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();

        write_raw(dir, MINIMAL, "cat\ndog\n");
        assert!(Bundle::read(dir).is_ok());
        write_raw(dir, MINIMAL, "cat\r\ndog");
        assert_eq!(Bundle::read(dir).unwrap().labels, labels(&["cat", "dog"]));

        write_raw(dir, MINIMAL, "cat\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(
            err.contains("labels.txt") && err.contains("1 class names"),
            "{err}"
        );
        assert!(
            err.contains("num_classes = 3") && err.contains("should be 2"),
            "{err}"
        );

        let json = MINIMAL.replace(
            "\"num_classes\": 3",
            "\"num_classes\": 3, \"min_szie\": 640",
        );
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("unknown field `min_szie`"),
            "{err}"
        );

        let json = MINIMAL.replace("\"num_classes\": 3", "\"numclasses\": 3");
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(err.contains("numclasses"), "{err}");

        let json = MINIMAL.replace(", \"num_classes\": 3", "");
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(err.contains("missing field `num_classes`"), "{err}");

        let json = MINIMAL.replace("resnet50", "resnet18");
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(err.contains("resnet18"), "{err}");

        let json = MINIMAL.replace("maskstudio-model/1", "maskstudio-model/2");
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(
            err.contains("\"format\" is \"maskstudio-model/2\""),
            "{err}"
        );

        let json = MINIMAL.replace(
            "\"num_classes\": 3",
            r#""num_classes": 3, "returned_layers": [2, 3, 4],
               "anchor_sizes": [[32], [64], [128], [256], [512]]"#,
        );
        write_raw(dir, &json, "cat\ndog\n");
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(
            err.contains("\"anchor_sizes\" has 5 levels but the FPN has 4"),
            "{err}"
        );

        write_raw(dir, MINIMAL, "cat\ndog\n");
        std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
        let err = Bundle::read(dir).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");

        let err = Bundle::read(&dir.join("nope")).unwrap_err().to_string();
        assert!(err.contains("model.json"), "{err}");
    }

    #[test]
    fn resolved_defaults() {
        let spec: ModelSpec = serde_json::from_str(MINIMAL).unwrap();
        let r = spec.resolved();
        assert_eq!(r.returned_layers, vec![1, 2, 3, 4]);
        assert_eq!((r.min_size, r.max_size), (800, 1333));
        assert_eq!(r.image_mean, [0.485, 0.456, 0.406]);
        assert_eq!(r.image_std, [0.229, 0.224, 0.225]);
        assert_eq!(
            r.anchor_sizes,
            vec![
                vec![32.0],
                vec![64.0],
                vec![128.0],
                vec![256.0],
                vec![512.0]
            ]
        );
        assert_eq!(r.aspect_ratios, vec![vec![0.5, 1.0, 2.0]; 5]);
        assert_eq!(
            (r.rpn_pre_nms_top_n_test, r.rpn_post_nms_top_n_test),
            (1000, 1000)
        );
        assert_eq!(r.rpn_nms_thresh, 0.7);
        assert_eq!((r.box_score_thresh, r.box_nms_thresh), (0.05, 0.5));
        assert_eq!(r.box_detections_per_img, 100);
        assert_eq!(r.frozen_bn_eps, 1e-5);

        let json = MINIMAL.replace("resnet50", "mobilenet_v2").replace(
            "\"num_classes\": 3",
            "\"num_classes\": 3, \"returned_layers\": [3, 4]",
        );
        let spec: ModelSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(spec.backbone, Backbone::MobilenetV2);
        spec.validate().unwrap();
        let r = spec.resolved();
        assert_eq!(r.anchor_sizes, vec![vec![128.0], vec![256.0], vec![512.0]]);
        assert_eq!(r.aspect_ratios.len(), 3);

        // The full schema from the design note parses.
        let full = r#"{"format": "maskstudio-model/1", "architecture": "maskrcnn",
            "backbone": "resnet50", "returned_layers": [1,2,3,4], "num_classes": 2,
            "min_size": 800, "max_size": 1333,
            "image_mean": [0.485,0.456,0.406], "image_std": [0.229,0.224,0.225],
            "anchor_sizes": [[32],[64],[128],[256],[512]],
            "aspect_ratios": [[0.5,1.0,2.0],[0.5,1.0,2.0],[0.5,1.0,2.0],[0.5,1.0,2.0],
                              [0.5,1.0,2.0]],
            "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
            "rpn_nms_thresh": 0.7,
            "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_detections_per_img": 100,
            "frozen_bn_eps": 1e-5}"#;
        let spec: ModelSpec = serde_json::from_str(full).unwrap();
        spec.validate().unwrap();
        let minimal: ModelSpec = serde_json::from_str(&MINIMAL.replace('3', "2")).unwrap();
        assert_eq!(spec.resolved(), minimal.resolved());
    }
}
