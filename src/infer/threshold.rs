//! The user's score threshold (`Settings.score_threshold`), applied one way in every tab: the
//! model keeps every detection down to [`SCORE_FLOOR`] ([`Predictor::load_for_threshold`]) and
//! [`passes`] applies the threshold to what it returns. So a threshold below a bundle's own
//! `box_score_thresh` (torchvision's 0.05) shows the same detections in Review's model assist,
//! Predict, Train's watch images and Evaluate's worst-images list, and a slider change needs no
//! second model run.

use crate::infer::{Detection, Predictor};

/// The lowest score the model is asked to keep for a user's threshold: the score slider can go
/// this low (a threshold under it shows the same detections as the floor itself).
pub const SCORE_FLOOR: f64 = 0.01;

/// Whether `d` is shown at the user's score `threshold` (`score >= threshold`).
pub fn passes(d: &Detection, threshold: f32) -> bool {
    d.score >= threshold
}

/// The detections of `all` shown at `threshold`, in order.
pub fn above(all: &[Detection], threshold: f32) -> impl Iterator<Item = &Detection> {
    all.iter().filter(move |d| passes(d, threshold))
}

/// Detections passing `score` with masks binarised at `mask_threshold` (no soft masks kept):
/// what an export writes for the sliders' current values.
pub fn visible(all: &[Detection], score: f32, mask_threshold: f32) -> Vec<Detection> {
    above(all, score)
        .map(|d| Detection {
            label: d.label,
            class_name: d.class_name.clone(),
            score: d.score,
            box_xyxy: d.box_xyxy,
            mask: d.mask_at(mask_threshold),
            soft_mask: None,
        })
        .collect()
}

/// Whether the model loaded with its bundle's own `box_score_thresh` would have kept a
/// detection scoring `score` (the model keeps `score > thresh`, compared in f32 as libtorch
/// compares an f32 tensor with a scalar). COCO AP is computed on these: the standard number
/// does not move with the user's slider.
pub fn kept_by_bundle(score: f32, bundle_thresh: f64) -> bool {
    score > bundle_thresh as f32
}

impl Predictor {
    /// Loads a bundle for use with a user's score threshold: detections down to
    /// [`SCORE_FLOOR`] are kept, whatever the bundle's own `box_score_thresh`; apply the
    /// threshold with [`passes`] (or use [`Predictor::predict_above`]).
    pub fn load_for_threshold(
        bundle_dir: &std::path::Path,
        device: tch::Device,
    ) -> anyhow::Result<Self> {
        Self::load(bundle_dir, device, Some(SCORE_FLOOR))
    }

    /// [`Predictor::predict`] keeping the detections that pass `threshold` (a predictor from
    /// [`Predictor::load_for_threshold`] then gives the same detections as every other tab).
    pub fn predict_above(
        &self,
        image: &image::RgbImage,
        threshold: f32,
    ) -> anyhow::Result<Vec<Detection>> {
        let mut detections = self.predict(image)?;
        detections.retain(|d| passes(d, threshold));
        Ok(detections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Mask;

    fn det(score: f32) -> Detection {
        Detection {
            label: 1,
            class_name: "cat".into(),
            score,
            box_xyxy: [0.0, 0.0, 1.0, 1.0],
            mask: Mask::new(2, 2),
            soft_mask: None,
        }
    }

    #[test]
    fn the_threshold_keeps_scores_at_or_above_it_and_the_bundle_keeps_strictly_above() {
        let all = [det(0.02), det(0.05), det(0.3)];
        let scores = |t| above(&all, t).map(|d| d.score).collect::<Vec<_>>();
        assert_eq!(scores(0.0), [0.02, 0.05, 0.3]);
        assert_eq!(scores(0.03), [0.05, 0.3]);
        assert_eq!(scores(0.05), [0.05, 0.3]);
        assert_eq!(visible(&all, 0.3, 0.5).len(), 1);
        assert!(!kept_by_bundle(0.05, 0.05));
        assert!(kept_by_bundle(0.050_001, 0.05));
        assert!(!kept_by_bundle(0.02, 0.05));
    }
}
