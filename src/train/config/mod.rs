//! `TrainConfig`: the training recipe (preset, schedule, optimiser, data) as saved in a run's
//! `config.json`; every field has a default so a partial JSON file is a valid config.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::host::DeviceChoice;
use crate::model::{Backbone, MaskRcnnConfig};

mod augmentation;
pub use augmentation::{AugmentConfig, PAD_FILL};

/// Most training images for which [`RefitMode::Auto`](crate::train::config::RefitMode) refits
/// on train + validation: below it the validation share (10 % by default) is data the model
/// clearly misses (tens of images) and a refit costs at most minutes on a CPU; above it the
/// refit's extra run costs more than the few percent more data brings.
pub const REFIT_MAX_IMAGES: usize = 500;

/// Model and size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// MobileNetV2-FPN from the ImageNet weights, 320 px images, fewer proposals.
    #[default]
    CpuFast,
    /// ResNet-50-FPN at torchvision's sizes (800/1333, 2000/2000 proposals, 512 RoIs); an
    /// `image_size` bounds the longer side (1333) with the shorter (800) in proportion.
    Quality,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu-fast" => Ok(Self::CpuFast),
            "quality" => Ok(Self::Quality),
            _ => Err(format!("unknown preset {s:?}; use cpu-fast or quality")),
        }
    }
}

impl Preset {
    /// The longer image side the model receives when the config does not set one.
    pub fn default_image_size(self) -> u32 {
        match self {
            Preset::CpuFast => 320,
            Preset::Quality => 1333,
        }
    }
}

/// The training recipe. Unknown keys in a JSON file are errors; missing keys take defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset.
    pub preset: Preset,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Longer image side after resizing; `None` takes the preset's size.
    pub image_size: Option<u32>,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay (L2, applied to every trainable variable as torchvision's reference does).
    pub weight_decay: f64,
    /// Linear warm-up steps from `lr * warmup_factor` to `lr`; then a cosine decay to 0.
    pub warmup_iters: usize,
    /// Learning-rate factor at step 0 of the warm-up.
    pub warmup_factor: f64,
    /// Seed of the split, the sampling order, the flips, the RoI samplers and the initial weights.
    pub seed: u64,
    /// Fraction of the not-yet-assigned images that go to validation.
    pub val_fraction: f64,
    /// Probability of a horizontal flip per training image.
    pub hflip_prob: f64,
    /// Where to train.
    pub device: DeviceChoice,
    /// Stop after this many steps (the schedule is planned for this length); `None`: all epochs.
    pub max_iters: Option<usize>,
    /// Start the backbone from the preset's ImageNet weights (`cpu-fast` only).
    pub pretrained_backbone: bool,
    /// `sgd` (momentum, L2 weight decay) or `adamw` (decoupled weight decay).
    pub optimizer: OptimizerKind,
    /// AdamW `(beta1, beta2)`.
    pub adam_betas: [f64; 2],
    /// Learning-rate schedule after the warm-up: `cosine`, `multistep` or `one-cycle`.
    pub schedule: ScheduleKind,
    /// `multistep`: epochs (counted from the schedule's start) at which the rate is multiplied by
    /// `lr_gamma`; empty: at 2/3 and 8/9 of the epochs (torchvision's 16 and 22 of 26).
    pub lr_milestones: Vec<usize>,
    /// `multistep`: factor applied at each milestone.
    pub lr_gamma: f64,
    /// `one-cycle`: fraction of the steps spent rising from `lr / div_factor` to `lr`.
    pub one_cycle_pct_start: f64,
    /// `one-cycle`: the starting rate is `lr / one_cycle_div_factor`.
    pub one_cycle_div_factor: f64,
    /// `one-cycle`: the final rate is `lr / (one_cycle_div_factor * one_cycle_final_div_factor)`.
    pub one_cycle_final_div_factor: f64,
    /// Epochs with the whole backbone body frozen (only FPN and heads train); afterwards the
    /// model's `trainable_backbone_layers` train too (fastai `fine_tune(freeze_epochs)`).
    pub freeze_epochs: usize,
    /// Clip gradients to this global L2 norm; `None`: no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Mixed precision (autocast + dynamic loss scaling) on CUDA; ignored on the CPU.
    pub amp: bool,
    /// Evaluate bbox and mask AP on the validation images every this many epochs (0 = never);
    /// the last epoch is always evaluated when this is not 0.
    pub eval_every: usize,
    /// Stop when the validation mask AP has not improved for this many evaluations.
    pub patience: Option<usize>,
    /// `MaskRcnnConfig` keys overriding the preset (a partial `model.json`); `num_classes`
    /// comes from the project and cannot be set here.
    pub model_overrides: serde_json::Map<String, serde_json::Value>,
    /// Augmentation, sampling and loader options; `None` takes the preset's
    /// ([`AugmentConfig::for_preset`], resolved by [`AugmentConfig::resolve`]). Boxed to keep
    /// `TrainConfig` (carried by `TrainEvent::Started`) small.
    pub augment: Option<Box<AugmentConfig>>,
    /// Derive model keys the user did not set (input size, anchors, per-image budgets) from the
    /// training images' statistics at the start ([`crate::train::autoconfig::resolve`]); the
    /// run's `config.json` records the resolved keys, so a resume does not re-derive them. Off
    /// in the library's default (tests, configs written before it); the CLI and the Train form
    /// turn it on.
    pub auto_config: bool,
    /// Recipe fields (`TrainConfig` keys such as `lr`, `warmup_iters`) the user set explicitly:
    /// auto-configuration leaves them as they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_set: Vec<String>,
    /// Final refit on train + validation after the run ([`RefitMode`]); `off` in the library's
    /// default, `auto` from the CLI and the Train form.
    pub refit: RefitMode,
}

/// Whether a finished run is refitted on train + validation for the epochs validation chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefitMode {
    /// On when the training split has at most
    /// [`REFIT_MAX_IMAGES`] images.
    #[default]
    Auto,
    /// Always refit.
    On,
    /// Never refit: the validation-selected checkpoint is the result.
    Off,
}

impl std::str::FromStr for RefitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("unknown refit mode {s:?}; use auto, on or off")),
        }
    }
}

impl RefitMode {
    /// Whether a run with `train_images` training images refits.
    pub fn applies(self, train_images: usize) -> bool {
        match self {
            Self::Auto => train_images <= REFIT_MAX_IMAGES,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// Optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (momentum, weight decay added to the gradient).
    #[default]
    Sgd,
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sgd" => Ok(Self::Sgd),
            "adamw" => Ok(Self::Adamw),
            _ => Err(format!("unknown optimizer {s:?}; use sgd or adamw")),
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Linear warm-up, then a half cosine down to 0.
    #[default]
    Cosine,
    /// Linear warm-up, then `lr_gamma` at each milestone epoch (torchvision's reference recipe).
    Multistep,
    /// fastai's one-cycle: cosine up from `lr / div` to `lr`, cosine down to nearly 0 (no
    /// separate warm-up).
    OneCycle,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "multistep" => Ok(Self::Multistep),
            "one-cycle" => Ok(Self::OneCycle),
            _ => Err(format!(
                "unknown schedule {s:?}; use cosine, multistep or one-cycle"
            )),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: Preset::CpuFast,
            epochs: 12,
            batch_size: 4,
            image_size: None,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_iters: 100,
            warmup_factor: 0.001,
            seed: 0,
            val_fraction: 0.1,
            hflip_prob: 0.5,
            device: DeviceChoice::Auto,
            max_iters: None,
            pretrained_backbone: true,
            optimizer: OptimizerKind::Sgd,
            adam_betas: [0.9, 0.999],
            schedule: ScheduleKind::Cosine,
            lr_milestones: Vec::new(),
            lr_gamma: 0.1,
            one_cycle_pct_start: 0.25,
            one_cycle_div_factor: 25.0,
            one_cycle_final_div_factor: 1e4,
            freeze_epochs: 0,
            clip_grad_norm: None,
            amp: false,
            eval_every: 1,
            patience: None,
            model_overrides: serde_json::Map::new(),
            augment: None,
            auto_config: false,
            user_set: Vec::new(),
            refit: RefitMode::Off,
        }
    }
}

impl TrainConfig {
    /// The longer image side used by the loader.
    pub fn resolved_image_size(&self) -> u32 {
        self.image_size
            .unwrap_or_else(|| self.preset.default_image_size())
    }

    /// Whether the user set the recipe field `key` ([`Self::user_set`]).
    pub fn is_user_set(&self, key: &str) -> bool {
        self.user_set.iter().any(|k| k == key)
    }

    /// Checks ranges before any work starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "batch_size must be at least 1");
        anyhow::ensure!(
            self.resolved_image_size() >= 32,
            "image_size must be at least 32"
        );
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be a positive number"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.momentum),
            "momentum must be in [0, 1)"
        );
        anyhow::ensure!(
            self.weight_decay >= 0.0,
            "weight_decay must not be negative"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.val_fraction),
            "val_fraction must be in [0, 1)"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.hflip_prob),
            "hflip_prob must be in [0, 1]"
        );
        anyhow::ensure!(
            self.max_iters != Some(0),
            "max_iters must be at least 1 when given"
        );
        anyhow::ensure!(
            self.adam_betas.iter().all(|b| (0.0..1.0).contains(b)),
            "adam_betas must be in [0, 1)"
        );
        anyhow::ensure!(
            self.lr_gamma.is_finite() && self.lr_gamma > 0.0,
            "lr_gamma must be a positive number"
        );
        anyhow::ensure!(
            self.one_cycle_pct_start > 0.0 && self.one_cycle_pct_start < 1.0,
            "one_cycle_pct_start must be in (0, 1)"
        );
        anyhow::ensure!(
            self.one_cycle_div_factor >= 1.0 && self.one_cycle_final_div_factor >= 1.0,
            "one_cycle_div_factor and one_cycle_final_div_factor must be at least 1"
        );
        if let Some(c) = self.clip_grad_norm {
            anyhow::ensure!(
                c.is_finite() && c > 0.0,
                "clip_grad_norm must be a positive number"
            );
        }
        anyhow::ensure!(
            self.patience != Some(0),
            "patience must be at least 1 when given"
        );
        // A placeholder class count: only the keys and value types are checked here.
        self.model_config(2)?;
        Ok(())
    }

    /// The model configuration of the preset for `num_classes` (background included), with
    /// [`Self::model_overrides`] applied.
    pub fn model_config(&self, num_classes: i64) -> anyhow::Result<MaskRcnnConfig> {
        apply_model_overrides(
            &self.preset_model_config(num_classes),
            &self.model_overrides,
            "model_overrides",
        )
    }

    /// The preset's model configuration for `num_classes`, without overrides.
    pub fn preset_model_config(&self, num_classes: i64) -> MaskRcnnConfig {
        let size = i64::from(self.resolved_image_size());
        match self.preset {
            Preset::CpuFast => MaskRcnnConfig {
                num_classes,
                // Images arrive with the longer side at `size`; the transform keeps them there.
                min_size: vec![size],
                max_size: size,
                rpn_pre_nms_top_n_train: 600,
                rpn_post_nms_top_n_train: 300,
                rpn_pre_nms_top_n_test: 300,
                rpn_post_nms_top_n_test: 300,
                box_batch_size_per_image: 128,
                ..MaskRcnnConfig::for_backbone(Backbone::MobilenetV2)
            },
            Preset::Quality => {
                // torchvision's 800/1333 with the longer side bound at `size` (1333 unless set),
                // the shorter side in proportion; the augmenter already delivers this size.
                let base = MaskRcnnConfig::for_backbone(Backbone::Resnet50);
                let min = base.min_size.last().copied().unwrap_or(size);
                let min = (min as f64 * size as f64 / base.max_size as f64).round() as i64;
                MaskRcnnConfig {
                    num_classes,
                    min_size: vec![min.clamp(1, size)],
                    max_size: size,
                    ..base
                }
            }
        }
    }
}

/// Reads a partial `model.json` (a JSON object of `MaskRcnnConfig` keys) for
/// [`TrainConfig::model_overrides`]; errors name the file.
pub fn read_model_overrides(
    path: &std::path::Path,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{path:?}: not valid JSON"))?;
    let serde_json::Value::Object(map) = value else {
        anyhow::bail!("{path:?}: expected a JSON object of model keys");
    };
    // Checked now so the error names the file, not the config field.
    apply_model_overrides(
        &TrainConfig::default().preset_model_config(2),
        &map,
        &path.display().to_string(),
    )?;
    Ok(map)
}

/// `base` with the keys of `overrides` replaced. Unknown keys and `num_classes` are errors naming
/// `source` and the key; bundle-only keys (`format`, `architecture`) are ignored; a number for
/// `min_size` means `[number]`, and integral floats are accepted where integers are expected
/// (bundle `anchor_sizes` are floats).
pub fn apply_model_overrides(
    base: &MaskRcnnConfig,
    overrides: &serde_json::Map<String, serde_json::Value>,
    source: &str,
) -> anyhow::Result<MaskRcnnConfig> {
    use serde_json::Value;
    if overrides.is_empty() {
        return Ok(base.clone());
    }
    let Value::Object(mut merged) = serde_json::to_value(base)? else {
        anyhow::bail!("internal: the model config is not a JSON object");
    };
    for (key, value) in overrides {
        match key.as_str() {
            "format" | "architecture" => continue,
            "num_classes" => anyhow::bail!(
                "{source}: key \"num_classes\" cannot be set: it comes from the project's classes"
            ),
            _ => {}
        }
        let Some(slot) = merged.get_mut(key) else {
            anyhow::bail!("{source}: unknown model key {key:?}");
        };
        let mut value = value.clone();
        if key == "min_size" && value.is_number() {
            value = Value::Array(vec![value]);
        }
        *slot = coerce_integers(slot, value);
    }
    let cfg: MaskRcnnConfig = serde_json::from_value(Value::Object(merged))
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(cfg)
}

/// `value` with integral floats turned into integers wherever `like` holds an integer at the
/// same place.
fn coerce_integers(like: &serde_json::Value, value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (like, value) {
        (Value::Number(l), Value::Number(v)) if l.is_i64() && !v.is_i64() => match v.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(v),
        },
        (Value::Array(l), Value::Array(v)) => {
            let proto = l.first().cloned().unwrap_or(Value::Null);
            Value::Array(
                v.into_iter()
                    .enumerate()
                    .map(|(i, x)| coerce_integers(l.get(i).unwrap_or(&proto), x))
                    .collect(),
            )
        }
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_size_is_the_longer_side_the_model_receives() {
        let quality = |image_size| TrainConfig {
            preset: Preset::Quality,
            image_size,
            ..TrainConfig::default()
        };
        let sizes = |c: &TrainConfig| {
            let m = c.model_config(3).unwrap();
            (m.min_size, m.max_size)
        };
        // torchvision's 800/1333 unless set; a set size bounds the longer side, the shorter in
        // proportion.
        assert_eq!(sizes(&quality(None)), (vec![800], 1333));
        assert_eq!(sizes(&quality(Some(1000))), (vec![600], 1000));
        let fast = TrainConfig {
            image_size: Some(256),
            ..TrainConfig::default()
        };
        assert_eq!(sizes(&fast), (vec![256], 256));
    }

    #[test]
    fn partial_json_takes_defaults() {
        let cfg: TrainConfig =
            serde_json::from_str(r#"{"preset": "quality", "epochs": 3}"#).unwrap();
        assert_eq!(cfg.preset, Preset::Quality);
        assert_eq!(cfg.epochs, 3);
        assert_eq!(cfg.momentum, 0.9);
        assert_eq!(cfg.resolved_image_size(), 1333);
        cfg.validate().unwrap();
        let json = serde_json::to_string(&TrainConfig::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<TrainConfig>(&json).unwrap(),
            TrainConfig::default()
        );
    }

    #[test]
    fn model_overrides_replace_preset_keys_and_reject_unknown_ones() {
        let mut cfg = TrainConfig::default();
        let overrides: serde_json::Value = serde_json::json!({
            "anchor_sizes": [[16.0], [32], [64], [128], [256]],
            "box_detections_per_img": 7,
            "min_size": 200,
            "format": "maskstudio-model/1"
        });
        cfg.model_overrides = overrides.as_object().unwrap().clone();
        let m = cfg.model_config(4).unwrap();
        assert_eq!(m.anchor_sizes[0], vec![16]);
        assert_eq!(m.box_detections_per_img, 7);
        assert_eq!(m.min_size, vec![200]);
        assert_eq!(m.num_classes, 4);
        // Untouched keys keep the preset's values.
        assert_eq!(m.rpn_post_nms_top_n_train, 300);

        cfg.model_overrides = serde_json::json!({"anchor_size": [[8]]})
            .as_object()
            .unwrap()
            .clone();
        let err = cfg.model_config(4).unwrap_err().to_string();
        assert!(
            err.contains("anchor_size") && err.contains("unknown"),
            "{err}"
        );
        cfg.model_overrides = serde_json::json!({"num_classes": 9})
            .as_object()
            .unwrap()
            .clone();
        assert!(cfg.validate().is_err());
        cfg.model_overrides = serde_json::json!({"box_nms_thresh": "high"})
            .as_object()
            .unwrap()
            .clone();
        let err = cfg.model_config(4).unwrap_err().to_string();
        assert!(err.starts_with("model_overrides:"), "{err}");
    }

    #[test]
    fn cpu_fast_model_config_is_valid() {
        let cfg = TrainConfig::default();
        let m = cfg.model_config(3).unwrap();
        assert_eq!(m.backbone, Backbone::MobilenetV2);
        assert_eq!(m.min_size, vec![320]);
        assert_eq!(m.box_batch_size_per_image, 128);
        m.validate().unwrap();
    }
}
