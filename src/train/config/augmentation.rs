//! [`AugmentConfig`]: the recipe's data-pipeline options (augmentations, sampling, loading),
//! part of [`TrainConfig`](super::TrainConfig); the augmenter that applies them is
//! [`crate::train::augment`].

use serde::{Deserialize, Serialize};

use super::{Preset, TrainConfig};

/// IceVision's pad colour `[124, 116, 104]` (the ImageNet mean in 0..255).
pub const PAD_FILL: [u8; 3] = [124, 116, 104];

/// Data-pipeline options: augmentations (toggles and magnitudes), sampling and loading.
///
/// Every key has a default, so `"augment": {"rotate_limit": 5}` in a config file is valid (the
/// other keys take [`AugmentConfig::default`], the `cpu-fast` values). Probabilities are in
/// `[0, 1]`; 0 turns a step off. The horizontal flip probability is `TrainConfig::hflip_prob`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Master switch; `false` keeps only the resize (and the flip, which has its own probability).
    pub enabled: bool,
    /// The decoded image is first resized so its longer side is `image_size * presize` (IceVision's
    /// `presize`: geometric steps then work on a bit more than the final resolution).
    pub presize: f64,
    /// Pad every training image to an `image_size` square (IceVision); `false` keeps the aspect
    /// ratio (less padding: faster, and batches of one aspect-ratio bin pad little).
    pub pad_to_square: bool,
    /// Scale jitter: the content is resized to `U(scale_min, scale_max)` times the fitted size,
    /// then padded (or cropped, keeping one instance whole) to the canvas. `1, 1` turns it off.
    pub scale_min: f64,
    /// Upper end of the scale jitter.
    pub scale_max: f64,
    /// Probability of shift-scale-rotate (albumentations `ShiftScaleRotate`).
    pub ssr_prob: f64,
    /// Shift as a fraction of the image side, drawn from `±shift_limit`.
    pub shift_limit: f64,
    /// Scale factor `1 + U(±scale_limit)`.
    pub scale_limit: f64,
    /// Rotation in degrees, drawn from `±rotate_limit`.
    pub rotate_limit: f64,
    /// Probability of the bbox-safe random crop (it replaces the scale jitter for that image).
    pub crop_prob: f64,
    /// The crop contains every instance's box (albumentations `RandomSizedBBoxSafeCrop`);
    /// `false`: only one random instance's box, so others may be cut or dropped.
    pub crop_keep_all: bool,
    /// Smallest crop side as a fraction of the image side.
    pub crop_min_fraction: f64,
    /// Probability of a brightness/contrast change (`RandomBrightnessContrast`).
    pub color_prob: f64,
    /// Brightness offset `U(±brightness_limit) * 255`.
    pub brightness_limit: f64,
    /// Contrast factor `1 + U(±contrast_limit)`.
    pub contrast_limit: f64,
    /// Probability of a per-channel shift (`RGBShift`).
    pub rgb_shift_prob: f64,
    /// Per-channel shift drawn from `±rgb_shift_limit` (0..255 units).
    pub rgb_shift_limit: f64,
    /// Instances with fewer mask pixels after augmentation are dropped.
    pub min_area: u64,
    /// Colour of padded and uncovered pixels.
    pub fill: [u8; 3],
    /// Batches hold images of one aspect-ratio bin (torchvision's `GroupedBatchSampler`, 3 bins
    /// per side of 1:1); the leftovers of all bins form the epoch's last batches.
    pub aspect_grouping: bool,
    /// Detectron2's repeat-factor sampling threshold `t` (e.g. 0.1 or 0.3); `None` is off.
    pub repeat_threshold: Option<f64>,
    /// Loader threads that decode and augment ahead of the training step.
    pub workers: usize,
    /// Batches prepared ahead (the bound of the loader's queue).
    pub prefetch_batches: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::for_preset(Preset::CpuFast)
    }
}

impl AugmentConfig {
    /// The preset's pipeline. `cpu-fast` is lighter (few epochs on small images learn less from
    /// heavy distortion) and keeps the aspect ratio; `quality` is IceVision's `aug_tfms`.
    pub fn for_preset(preset: Preset) -> Self {
        let base = Self {
            enabled: true,
            presize: 1.0,
            pad_to_square: false,
            scale_min: 0.8,
            scale_max: 1.2,
            ssr_prob: 0.3,
            shift_limit: 0.0625,
            scale_limit: 0.1,
            rotate_limit: 10.0,
            crop_prob: 0.25,
            crop_keep_all: true,
            crop_min_fraction: 0.3,
            color_prob: 0.5,
            brightness_limit: 0.2,
            contrast_limit: 0.2,
            rgb_shift_prob: 0.0,
            rgb_shift_limit: 10.0,
            min_area: 4,
            fill: PAD_FILL,
            aspect_grouping: true,
            repeat_threshold: None,
            workers: 1,
            prefetch_batches: 2,
        };
        match preset {
            Preset::CpuFast => base,
            Preset::Quality => Self {
                presize: 1.25,
                scale_min: 0.9,
                scale_max: 1.1,
                ssr_prob: 0.5,
                rotate_limit: 15.0,
                crop_prob: 0.5,
                rgb_shift_prob: 0.5,
                workers: 2,
                ..base
            },
        }
    }

    /// No augmentation: resize (and the config's flip) only.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The config's `augment`, or the preset's pipeline when it has none.
    pub fn resolve(cfg: &TrainConfig) -> Self {
        cfg.augment
            .as_deref()
            .cloned()
            .unwrap_or_else(|| Self::for_preset(cfg.preset))
    }

    /// Checks ranges before any work starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        let probs = [
            ("ssr_prob", self.ssr_prob),
            ("crop_prob", self.crop_prob),
            ("color_prob", self.color_prob),
            ("rgb_shift_prob", self.rgb_shift_prob),
        ];
        for (name, p) in probs {
            anyhow::ensure!((0.0..=1.0).contains(&p), "augment.{name} must be in [0, 1]");
        }
        anyhow::ensure!(
            self.presize.is_finite() && (1.0..=4.0).contains(&self.presize),
            "augment.presize must be in [1, 4]"
        );
        anyhow::ensure!(
            self.scale_min.is_finite()
                && self.scale_max.is_finite()
                && 0.1 <= self.scale_min
                && self.scale_min <= self.scale_max
                && self.scale_max <= 4.0,
            "augment.scale_min/scale_max must satisfy 0.1 <= scale_min <= scale_max <= 4"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.shift_limit),
            "augment.shift_limit must be in [0, 1)"
        );
        anyhow::ensure!(
            (0.0..0.9).contains(&self.scale_limit),
            "augment.scale_limit must be in [0, 0.9)"
        );
        anyhow::ensure!(
            (0.0..=180.0).contains(&self.rotate_limit),
            "augment.rotate_limit must be in [0, 180] degrees"
        );
        anyhow::ensure!(
            (0.05..=1.0).contains(&self.crop_min_fraction),
            "augment.crop_min_fraction must be in [0.05, 1]"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.brightness_limit)
                && (0.0..=1.0).contains(&self.contrast_limit),
            "augment.brightness_limit and contrast_limit must be in [0, 1]"
        );
        anyhow::ensure!(
            (0.0..=255.0).contains(&self.rgb_shift_limit),
            "augment.rgb_shift_limit must be in [0, 255]"
        );
        if let Some(t) = self.repeat_threshold {
            anyhow::ensure!(
                t.is_finite() && t > 0.0 && t <= 1.0,
                "augment.repeat_threshold must be in (0, 1]"
            );
        }
        anyhow::ensure!(
            (1..=64).contains(&self.workers),
            "augment.workers must be in 1..=64"
        );
        anyhow::ensure!(
            self.prefetch_batches >= 1,
            "augment.prefetch_batches must be at least 1"
        );
        Ok(())
    }
}
