//! `TrainConfig`: the training recipe (preset, schedule, optimiser, data) as saved in a run's
//! `config.json`; every field has a default so a partial JSON file is a valid config.

use serde::{Deserialize, Serialize};

use crate::model::{Backbone, MaskRcnnConfig};
use crate::runtime::DeviceChoice;
use crate::train::augment::AugmentConfig;

/// Model and size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// MobileNetV2-FPN from the ImageNet weights, 320 px images, fewer proposals.
    #[default]
    CpuFast,
    /// ResNet-50-FPN at torchvision's sizes (800/1333, 2000/2000 proposals, 512 RoIs).
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
    /// The longer image side the data loader resizes to when the config does not set one.
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
    /// Augmentation, sampling and loader options; `None` takes the preset's
    /// ([`AugmentConfig::for_preset`], resolved by [`AugmentConfig::resolve`]). Boxed to keep
    /// `TrainConfig` (carried by `TrainEvent::Started`) small.
    pub augment: Option<Box<AugmentConfig>>,
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
            augment: None,
        }
    }
}

impl TrainConfig {
    /// The longer image side used by the loader.
    pub fn resolved_image_size(&self) -> u32 {
        self.image_size
            .unwrap_or_else(|| self.preset.default_image_size())
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
        Ok(())
    }

    /// The model configuration of the preset for `num_classes` (background included).
    pub fn model_config(&self, num_classes: i64) -> MaskRcnnConfig {
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
            Preset::Quality => MaskRcnnConfig {
                num_classes,
                ..MaskRcnnConfig::for_backbone(Backbone::Resnet50)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cpu_fast_model_config_is_valid() {
        let cfg = TrainConfig::default();
        let m = cfg.model_config(3);
        assert_eq!(m.backbone, Backbone::MobilenetV2);
        assert_eq!(m.min_size, vec![320]);
        assert_eq!(m.box_batch_size_per_image, 128);
        m.validate().unwrap();
    }
}
