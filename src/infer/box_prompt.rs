//! Box to mask: a box drawn on an image → the model's mask head predicts the mask for exactly
//! that box (RoIAlign on the box, class from the box head's scores for it or the one asked
//! for), pasted back at the box as [`Predictor::predict`] pastes a detection's mask.
//!
//! The backbone + FPN run once per image ([`Predictor::image_features`]); each box then costs
//! only the RoI heads and the paste. [`FeatureCache`] keeps one image's features between boxes
//! and drops them when the image or the bundle changes.

use anyhow::Context as _;
use tch::{Device, Kind, Tensor};

use super::prepare::{self, Prepared};
use super::{Detection, Predictor, SoftMask, panic_text, place_region};
use crate::model::mask_rcnn::ImageFeatures;

/// Boxes narrower or lower than this (image pixels, after clipping to the image) are refused:
/// a click, not a box.
pub const MIN_BOX_SIDE: f32 = 2.0;

/// Runs `f` turning a libtorch panic (CUDA out of memory, a bad shape) into an error.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| anyhow::anyhow!("libtorch: {}", panic_text(&*p)))?
}

/// `[x1, y1, x2, y2]` clipped to a `width × height` image, or why it cannot be a prompt.
pub fn clip_box(b: [f32; 4], width: u32, height: u32) -> anyhow::Result<[f32; 4]> {
    let (w, h) = (width as f32, height as f32);
    let [x1, x2] = [b[0].min(b[2]), b[0].max(b[2])].map(|v| v.clamp(0.0, w));
    let [y1, y2] = [b[1].min(b[3]), b[1].max(b[3])].map(|v| v.clamp(0.0, h));
    anyhow::ensure!(
        b.iter().all(|v| v.is_finite()) && x2 - x1 >= MIN_BOX_SIDE && y2 - y1 >= MIN_BOX_SIDE,
        "the box {b:?} covers less than {MIN_BOX_SIDE}×{MIN_BOX_SIDE} pixels of the {width}×{height} image"
    );
    Ok([x1, y1, x2, y2])
}

impl Predictor {
    /// The label (1..N) of class `name` in this bundle's `labels.txt`.
    pub fn label_of(&self, name: &str) -> Option<i64> {
        self.labels
            .iter()
            .position(|l| l == name)
            .and_then(|k| i64::try_from(k + 1).ok())
    }

    /// The backbone + FPN maps of one RGB image (the expensive part of a prediction), kept for
    /// [`Predictor::masks_for_boxes`].
    pub fn image_features(&self, image: &image::RgbImage) -> anyhow::Result<ImageFeatures> {
        let prepared = prepare::prepare(image, &self.prepare)?;
        self.image_features_prepared(&prepared)
    }

    /// [`Predictor::image_features`] of an image already made by [`prepare::prepare`].
    pub fn image_features_prepared(&self, prepared: &Prepared) -> anyhow::Result<ImageFeatures> {
        // [3, h', w'] normalised, resized f32.
        let input = prepared
            .to_tensor(self.device)
            .context("moving the image to the model's device")?;
        guarded(|| {
            Ok(self
                .model
                .image_features_prepared(&input, prepared.original)?)
        })
    }

    /// One detection per box (`[x1, y1, x2, y2]` in image pixels, clipped to the image): the
    /// mask head's mask for exactly that box, binarised at `mask_threshold` (soft mask kept),
    /// for class `label` (1..N) or, with `None`, the box head's best class for the box; the
    /// score is the box head's probability of that class.
    pub fn masks_for_boxes(
        &self,
        features: &ImageFeatures,
        boxes: &[[f32; 4]],
        label: Option<i64>,
        mask_threshold: f32,
    ) -> anyhow::Result<Vec<Detection>> {
        let (h, w) = features.original;
        let (w, h) = (u32::try_from(w)?, u32::try_from(h)?);
        let clipped = boxes
            .iter()
            .map(|&b| clip_box(b, w, h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(l) = label {
            anyhow::ensure!(
                (1..=self.labels.len() as i64).contains(&l),
                "label {l} is not one of the model's {} classes",
                self.labels.len()
            );
        }
        let n = clipped.len() as i64;
        let flat: Vec<f32> = clipped.iter().flatten().copied().collect();
        let det = guarded(|| {
            // [N, 4] xyxy in original pixels; [N] int64 labels when one is asked for.
            let boxes = Tensor::f_from_slice(&flat)?.f_view([n, 4])?;
            let labels = label
                .map(|l| Tensor::f_full([n], l, (Kind::Int64, Device::Cpu)))
                .transpose()?;
            Ok(self
                .model
                .masks_for_boxes(features, &boxes, labels.as_ref())?)
        })?;
        let scores = Vec::<f32>::try_from(det.scores.f_to_device(Device::Cpu)?)?;
        let labels = Vec::<i64>::try_from(det.labels.f_to_device(Device::Cpu)?)?;
        anyhow::ensure!(
            scores.len() == clipped.len() && labels.len() == clipped.len(),
            "the model returned {} scores and {} labels for {} boxes",
            scores.len(),
            labels.len(),
            clipped.len()
        );
        let mut out = Vec::with_capacity(clipped.len());
        for (i, (b, (&score, &label))) in clipped.iter().zip(scores.iter().zip(&labels)).enumerate()
        {
            let (mask, soft) = match det.masks.get(i).and_then(Option::as_ref) {
                Some(c) => {
                    let (x0, y0) = (u32::try_from(c.x0)?, u32::try_from(c.y0)?);
                    let (ch, cw) = c.probs.size2()?;
                    let rect = [x0, y0, u32::try_from(cw)?, u32::try_from(ch)?];
                    // [h, w] probabilities -> u8 0/1 at the threshold, and round(p * 255).
                    let probs = c.probs.f_to_device(Device::Cpu)?;
                    let bits = probs.f_ge(f64::from(mask_threshold))?;
                    let bits = Vec::<u8>::try_from(bits.f_to_kind(Kind::Uint8)?.f_reshape([-1])?)?;
                    let q = probs
                        .f_multiply_scalar(255.0)?
                        .f_round()?
                        .f_clamp(0.0, 255.0)?
                        .f_to_kind(Kind::Uint8)?;
                    let q = Vec::<u8>::try_from(q.f_reshape([-1])?)?;
                    (
                        place_region(w, h, rect, &bits)?,
                        SoftMask::from_quantised_region(w, h, rect, &q),
                    )
                }
                // A clipped box of at least MIN_BOX_SIDE always pastes somewhere.
                None => (
                    crate::dataset::Mask::new(w, h),
                    SoftMask::from_quantised(w, h, &[]),
                ),
            };
            let class_name = usize::try_from(label - 1)
                .ok()
                .and_then(|k| self.labels.get(k))
                .cloned()
                .unwrap_or_else(|| format!("class_{label}"));
            out.push(Detection {
                label,
                class_name,
                score,
                box_xyxy: *b,
                mask,
                soft_mask: Some(soft),
            });
        }
        Ok(out)
    }
}

/// One image's features kept between box prompts under a key (image and bundle): reused while
/// the key stays, computed afresh (the old ones dropped first) when it changes.
#[derive(Debug)]
pub struct FeatureCache<K> {
    entry: Option<(K, ImageFeatures)>,
}

impl<K> Default for FeatureCache<K> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<K: PartialEq> FeatureCache<K> {
    /// The features kept under `key`, else `compute()`'s (kept from now on; a failure keeps
    /// nothing).
    pub fn get_or_compute(
        &mut self,
        key: K,
        compute: impl FnOnce() -> anyhow::Result<ImageFeatures>,
    ) -> anyhow::Result<&ImageFeatures> {
        if self.entry.as_ref().is_none_or(|(k, _)| *k != key) {
            // One image's maps at a time: the old ones go before the new ones are made.
            self.entry = None;
            self.entry = Some((key, compute()?));
        }
        match &self.entry {
            Some((_, features)) => Ok(features),
            None => anyhow::bail!("no features kept"),
        }
    }

    /// Whether features are kept under `key`.
    pub fn holds(&self, key: &K) -> bool {
        self.entry.as_ref().is_some_and(|(k, _)| k == key)
    }

    /// Drops the kept features.
    pub fn clear(&mut self) {
        self.entry = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bundle::{Bundle, ModelSpec};
    use crate::model::{Backbone, MaskRcnn};

    #[test]
    fn boxes_are_ordered_and_clipped_and_tiny_ones_refused() {
        assert_eq!(
            clip_box([50.0, 40.0, -5.0, 10.0], 30, 20).unwrap(),
            [0.0, 10.0, 30.0, 20.0]
        );
        assert!(clip_box([3.0, 3.0, 4.0, 9.0], 30, 20).is_err(), "1 px wide");
        assert!(clip_box([40.0, 3.0, 50.0, 9.0], 30, 20).is_err(), "outside");
        assert!(clip_box([f32::NAN, 3.0, 10.0, 9.0], 30, 20).is_err());
    }

    /// A 200×150 image with a few bright blobs on a gradient (the model resizes it, so the box
    /// mapping is not the identity).
    fn test_image() -> image::RgbImage {
        image::RgbImage::from_fn(200, 150, |x, y| {
            let blob = |cx: i64, cy: i64, r: i64| {
                (i64::from(x) - cx).pow(2) + (i64::from(y) - cy).pow(2) < r * r
            };
            if blob(60, 50, 25) || blob(140, 100, 30) {
                image::Rgb([250, 220, 40])
            } else {
                image::Rgb([(x / 2) as u8, (y + 40) as u8, 90])
            }
        })
    }

    /// A random MobileNetV2 bundle (min 96, max 128: the 200×150 image becomes 128×96). The
    /// weights are whatever torch's generator gives: the checks hold for any of them.
    fn random_predictor(dir: &std::path::Path) -> Predictor {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
        spec.min_size = Some(96);
        spec.max_size = Some(128);
        MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
        let labels = ["cat".to_owned(), "dog".to_owned()];
        Bundle::write(dir, &spec, &labels, &vs).unwrap();
        // Score threshold 0: every detection the random heads make is kept.
        Predictor::load(dir, Device::Cpu, Some(0.0)).unwrap()
    }

    #[test]
    fn a_detections_box_gives_back_its_mask_and_the_box_heads_best_class() {
        let dir = tempfile::tempdir().unwrap();
        let image = test_image();
        // The checks hold for any weights, but some draws detect too little to check (and other
        // tests share torch's generator, so a seed would not pin the draw): new weights then.
        let (p, detections) = (0..10)
            .find_map(|i| {
                let p = random_predictor(&dir.path().join(i.to_string()));
                let detections = p.predict_soft(&image).unwrap();
                let enough = detections.iter().filter(|d| d.area_at(0.5) >= 20).count() >= 3;
                enough.then_some((p, detections))
            })
            .expect("ten random models each found fewer than 3 objects");
        let with_pixels: Vec<&Detection> = detections
            .iter()
            .filter(|d| d.area_at(0.5) >= 20)
            .take(8)
            .collect();
        let features = p.image_features(&image).unwrap();
        for d in with_pixels {
            let got = p
                .masks_for_boxes(&features, &[d.box_xyxy], Some(d.label), 0.5)
                .unwrap()
                .remove(0);
            assert_eq!(got.label, d.label);
            assert_eq!(got.box_xyxy, d.box_xyxy);
            let (want, have) = (d.mask_at(0.5), got.mask.clone());
            assert!(
                want.iou(&have) >= 0.99,
                "mask IoU {} for box {:?}",
                want.iou(&have),
                d.box_xyxy
            );
            // Same probabilities, pixel for pixel, within one quantisation level (the box
            // makes a round trip through the model's input coordinates: ~1e-5 px).
            let (a, b) = (
                d.soft_mask.as_ref().unwrap(),
                got.soft_mask.as_ref().unwrap(),
            );
            assert_eq!(
                (a.x0, a.y0, a.width, a.height),
                (b.x0, b.y0, b.width, b.height)
            );
            let worst = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| x.abs_diff(*y))
                .max();
            assert!(worst <= Some(1), "probabilities differ by {worst:?} / 255");

            // Without a label: the box head's best foreground class, scored by its probability.
            let best = p
                .masks_for_boxes(&features, &[d.box_xyxy], None, 0.5)
                .unwrap();
            let per_class: Vec<f32> = (1..=2)
                .map(|l| {
                    p.masks_for_boxes(&features, &[d.box_xyxy], Some(l), 0.5)
                        .unwrap()[0]
                        .score
                })
                .collect();
            let expected = if per_class[0] >= per_class[1] { 1 } else { 2 };
            assert_eq!(best[0].label, expected, "scores per class {per_class:?}");
            assert!((best[0].score - per_class[(expected - 1) as usize]).abs() < 1e-6);
            assert_eq!(best[0].class_name, ["cat", "dog"][(expected - 1) as usize]);
        }
    }

    #[test]
    fn the_cache_computes_once_per_key_and_refuses_bad_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let p = random_predictor(dir.path());
        let image = test_image();
        let mut cache = FeatureCache::default();
        let mut computed = 0;
        for key in [1, 1, 2, 2, 1] {
            cache
                .get_or_compute(key, || {
                    computed += 1;
                    p.image_features(&image)
                })
                .unwrap();
        }
        assert_eq!(computed, 3, "image 1, image 2, image 1 again");
        assert!(cache.holds(&1) && !cache.holds(&2));
        let failed = cache.get_or_compute(3, || anyhow::bail!("unreadable"));
        assert!(failed.is_err());
        assert!(!cache.holds(&1), "a failure keeps nothing");
        let features = p.image_features(&image).unwrap();
        assert!(
            p.masks_for_boxes(&features, &[[10.0, 10.0, 40.0, 40.0]], Some(3), 0.5)
                .is_err()
        );
        assert!(
            p.masks_for_boxes(&features, &[[10.0, 10.0, 10.5, 40.0]], None, 0.5)
                .is_err()
        );
        let two = p
            .masks_for_boxes(
                &features,
                &[[10.0, 10.0, 80.0, 70.0], [-20.0, 90.0, 260.0, 160.0]],
                None,
                0.5,
            )
            .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(
            two[1].box_xyxy,
            [0.0, 90.0, 200.0, 150.0],
            "clipped to the image"
        );
        assert_eq!(p.label_of("dog"), Some(2));
        assert_eq!(p.label_of("bird"), None);
    }
}
