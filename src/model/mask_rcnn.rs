//! `MaskRcnn`: transform -> backbone + FPN -> RPN -> RoI heads -> postprocess
//! (`torchvision/models/detection/generalized_rcnn.py`, `mask_rcnn.py`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Kind, Tensor, nn};

use crate::model::anchors::AnchorGenerator;
use crate::model::backbone::BackboneBody;
use crate::model::config::MaskRcnnConfig;
use crate::model::error::{ModelError, Result};
use crate::model::fpn::FeaturePyramidNetwork;
use crate::model::layers::to_channels_last;
use crate::model::roi_heads::{RoiHeads, RoiHeadsParams};
use crate::model::rpn::{RegionProposalNetwork, RpnParams};
pub use crate::model::transform::Target;
use crate::model::transform::{
    GeneralizedRcnnTransform, ImageList, PastedMask, masks_on_canvas, paste_masks_cropped,
    resize_boxes,
};
use crate::profile;

/// FPN width (`backbone_utils.py:144` `out_channels = 256`).
const FPN_OUT_CHANNELS: i64 = 256;
/// Maps pooled by the RoI heads (`MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"])`).
const MAX_POOLED_LEVELS: usize = 4;

/// Detections of one image, in original pixel coordinates.
#[derive(Debug)]
pub struct Detections {
    /// `[D, 4]` f32 xyxy boxes.
    pub boxes: Tensor,
    /// `[D]` int64 labels.
    pub labels: Tensor,
    /// `[D]` f32 scores, descending.
    pub scores: Tensor,
    /// `[D, 1, H, W]` f32 mask probabilities (threshold at 0.5 for binary masks).
    pub masks: Tensor,
}

/// Detections of one image with each mask kept over its pasted rectangle only (see
/// [`MaskRcnn::forward_eval_cropped`]).
#[derive(Debug)]
pub struct CroppedDetections {
    /// `[D, 4]` f32 xyxy boxes.
    pub boxes: Tensor,
    /// `[D]` int64 labels.
    pub labels: Tensor,
    /// `[D]` f32 scores, descending.
    pub scores: Tensor,
    /// One per detection: its probabilities over the rectangle torchvision pastes into (0
    /// elsewhere); `None` when the box lies outside the image.
    pub masks: Vec<Option<PastedMask>>,
    /// `(H, W)` of the original image.
    pub image_size: (i64, i64),
}

impl CroppedDetections {
    /// The same detections with full `[D, 1, H, W]` masks (torchvision's output).
    pub fn into_full(self) -> Result<Detections> {
        let kind = self
            .masks
            .iter()
            .flatten()
            .next()
            .map_or(Kind::Float, |c| c.probs.kind());
        let options = (kind, self.boxes.device());
        Ok(Detections {
            masks: masks_on_canvas(&self.masks, self.image_size, options)?,
            boxes: self.boxes,
            labels: self.labels,
            scores: self.scores,
        })
    }
}

/// The FPN maps of one image, computed once and kept for box prompts
/// ([`MaskRcnn::masks_for_boxes`]).
#[derive(Debug)]
pub struct ImageFeatures {
    /// The maps the RoI heads pool from (`'0'..'3'`), `[1, 256, H_l, W_l]` each, finest first.
    pub maps: Vec<Tensor>,
    /// `(h, w)` of the resized image before padding: the model-input coordinates of boxes.
    pub resized: (i64, i64),
    /// `(H, W)` of the original image.
    pub original: (i64, i64),
}

/// Loss names in the order of `metrics.csv` (sorted, as [`Losses::to_map`] returns them).
pub const LOSS_NAMES: [&str; 5] = [
    "loss_box_reg",
    "loss_classifier",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
];

/// The five training losses under torchvision's names.
#[derive(Debug)]
pub struct Losses {
    /// RPN objectness BCE.
    pub loss_objectness: Tensor,
    /// RPN box smooth-L1.
    pub loss_rpn_box_reg: Tensor,
    /// RoI classification cross-entropy.
    pub loss_classifier: Tensor,
    /// RoI box smooth-L1.
    pub loss_box_reg: Tensor,
    /// Mask BCE.
    pub loss_mask: Tensor,
}

impl Losses {
    /// Sum of the five losses (weights 1, as in torchvision's reference `engine.py`).
    pub fn total(&self) -> Tensor {
        &self.loss_objectness
            + &self.loss_rpn_box_reg
            + &self.loss_classifier
            + &self.loss_box_reg
            + &self.loss_mask
    }

    /// Scalar values by torchvision name, sorted by name.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        [
            ("loss_box_reg", &self.loss_box_reg),
            ("loss_classifier", &self.loss_classifier),
            ("loss_mask", &self.loss_mask),
            ("loss_objectness", &self.loss_objectness),
            ("loss_rpn_box_reg", &self.loss_rpn_box_reg),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.double_value(&[])))
        .collect()
    }
}

/// torchvision `MaskRCNN` (v1: frozen-BN backbone, FPN without norm, `TwoMLPHead`).
/// Var-store paths equal torchvision's `state_dict` keys.
#[derive(Debug)]
pub struct MaskRcnn {
    /// `transform` (no parameters).
    pub transform: GeneralizedRcnnTransform,
    /// `backbone.body`
    pub body: BackboneBody,
    /// `backbone.fpn`
    pub fpn: FeaturePyramidNetwork,
    /// `rpn`
    pub rpn: RegionProposalNetwork,
    /// `roi_heads`
    pub roi_heads: RoiHeads,
    config: MaskRcnnConfig,
    rng: AtomicU64,
}

impl MaskRcnn {
    /// Builds the model's variables under `p` (normally the var-store root).
    pub fn new(p: &nn::Path, cfg: &MaskRcnnConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = p / "backbone";
        let body = BackboneBody::new(
            &(&backbone / "body"),
            cfg.backbone,
            &cfg.returned_layers,
            cfg.trainable_backbone_layers,
            cfg.frozen_bn_eps,
        )?;
        let fpn =
            FeaturePyramidNetwork::new(&(&backbone / "fpn"), &body.out_channels, FPN_OUT_CHANNELS)?;
        let anchor_generator = AnchorGenerator::new(&cfg.anchor_sizes, &cfg.aspect_ratios)?;
        let rpn = RegionProposalNetwork::new(
            &(p / "rpn"),
            anchor_generator,
            FPN_OUT_CHANNELS,
            RpnParams {
                pre_nms_top_n: (cfg.rpn_pre_nms_top_n_train, cfg.rpn_pre_nms_top_n_test),
                post_nms_top_n: (cfg.rpn_post_nms_top_n_train, cfg.rpn_post_nms_top_n_test),
                nms_thresh: cfg.rpn_nms_thresh,
                score_thresh: cfg.rpn_score_thresh,
                fg_iou_thresh: cfg.rpn_fg_iou_thresh,
                bg_iou_thresh: cfg.rpn_bg_iou_thresh,
                batch_size_per_image: cfg.rpn_batch_size_per_image,
                positive_fraction: cfg.rpn_positive_fraction,
            },
            0x5eed_0001,
        )?;
        let roi_heads = RoiHeads::new(
            &(p / "roi_heads"),
            FPN_OUT_CHANNELS,
            RoiHeadsParams {
                num_classes: cfg.num_classes,
                fg_iou_thresh: cfg.box_fg_iou_thresh,
                bg_iou_thresh: cfg.box_bg_iou_thresh,
                batch_size_per_image: cfg.box_batch_size_per_image,
                positive_fraction: cfg.box_positive_fraction,
                bbox_reg_weights: cfg.bbox_reg_weights,
                score_thresh: cfg.box_score_thresh,
                nms_thresh: cfg.box_nms_thresh,
                detections_per_img: cfg.box_detections_per_img,
            },
            0x5eed_0002,
        )?;
        let transform = GeneralizedRcnnTransform {
            min_size: cfg.min_size.clone(),
            max_size: cfg.max_size,
            image_mean: cfg.image_mean.clone(),
            image_std: cfg.image_std.clone(),
            size_divisible: cfg.size_divisible,
        };
        Ok(Self {
            transform,
            body,
            fpn,
            rpn,
            roi_heads,
            config: cfg.clone(),
            rng: AtomicU64::new(0x5eed_0003),
        })
    }

    /// The config the model was built with.
    pub fn config(&self) -> &MaskRcnnConfig {
        &self.config
    }

    /// Re-seeds the random samplers and the training `min_size` choice.
    pub fn seed(&mut self, seed: u64) {
        self.set_sampling(false, seed);
    }

    /// `deterministic = true`: both samplers take the first k positives/negatives by index
    /// (for golden tests); `false`: random sampling seeded with `seed`.
    pub fn set_sampling(&mut self, deterministic: bool, seed: u64) {
        self.rpn
            .fg_bg_sampler
            .set_deterministic(deterministic, seed.wrapping_mul(3).wrapping_add(1));
        self.roi_heads
            .fg_bg_sampler
            .set_deterministic(deterministic, seed.wrapping_mul(5).wrapping_add(2));
        self.rng = AtomicU64::new(seed);
    }

    /// Backbone + FPN maps of a `[N, 3, H, W]` batch. `training` runs the statically frozen
    /// start of the body channels-last (see [`BackboneBody::forward`]); inference runs all of
    /// it channels-last, where libtorch's oneDNN convolutions are faster without a backward.
    fn features(&self, batch: &Tensor, training: bool) -> Result<Vec<Tensor>> {
        let c = if training {
            self.body.forward(batch, false)?
        } else {
            self.body.forward(&to_channels_last(batch)?, true)?
        };
        self.fpn.forward(&c)
    }

    fn check_images(images: &[Tensor]) -> Result<()> {
        if images.is_empty() {
            return Err(ModelError::InvalidInput("no images given".to_owned()));
        }
        for (i, img) in images.iter().enumerate() {
            let s = img.size();
            if s.len() != 3 || s[0] != 3 || s[1] == 0 || s[2] == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "image {i} must be a non-empty [3, H, W] float tensor, got {s:?}"
                )));
            }
        }
        Ok(())
    }

    fn check_targets(images: &[Tensor], targets: &[Target]) -> Result<()> {
        if images.len() != targets.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} images but {} targets",
                images.len(),
                targets.len()
            )));
        }
        for (i, (img, t)) in images.iter().zip(targets).enumerate() {
            let (bs, ls, ms) = (t.boxes.size(), t.labels.size(), t.masks.size());
            let g = bs.first().copied().unwrap_or(-1);
            let size = img.size();
            if bs.len() != 2
                || bs[1] != 4
                || ls != [g]
                || ms.len() != 3
                || ms[0] != g
                || ms[1..] != size[1..]
            {
                return Err(ModelError::InvalidInput(format!(
                    "target {i}: expected boxes [G, 4], labels [G], masks [G, {}, {}], got {bs:?}, {ls:?}, {ms:?}",
                    size[1], size[2]
                )));
            }
            if t.labels.kind() != Kind::Int64 {
                return Err(ModelError::InvalidInput(format!(
                    "target {i}: labels must be int64, got {:?}",
                    t.labels.kind()
                )));
            }
        }
        Ok(())
    }

    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Training forward: images `[3, H_i, W_i]` float 0..1 (any sizes) and their targets -> losses.
    pub fn forward_train(&self, images: &[Tensor], targets: &[Target]) -> Result<Losses> {
        Self::check_images(images)?;
        Self::check_targets(images, targets)?;
        let transform_scope = profile::scope("transform");
        let (image_list, targets) = self.transform.forward(images, Some(targets), |n| {
            (self.next_random() % n as u64) as usize
        })?;
        let targets = targets.unwrap_or_default();
        // generalized_rcnn.py:97-110: degenerate boxes are an error
        for (i, t) in targets.iter().enumerate() {
            if t.boxes.size()[0] > 0 {
                let bad = t
                    .boxes
                    .f_slice(1, 2, 4, 1)?
                    .f_le_tensor(&t.boxes.f_slice(1, 0, 2, 1)?)?
                    .f_any()?
                    .int64_value(&[]);
                if bad != 0 {
                    return Err(ModelError::InvalidInput(format!(
                        "target {i} has a box with non-positive width or height"
                    )));
                }
            }
        }
        drop(transform_scope);
        let features = profile::timed("backbone", || self.features(&image_list.tensors, true))?;
        let rpn = profile::timed("rpn", || {
            self.rpn
                .forward(&image_list, &features, Some(&targets), true)
        })?;
        let (loss_objectness, loss_rpn_box_reg) = rpn
            .losses
            .ok_or_else(|| ModelError::InvalidInput("RPN produced no losses".to_owned()))?;
        let pooled = &features[..features.len().saturating_sub(1).min(MAX_POOLED_LEVELS)];
        let heads = profile::timed("roi", || {
            self.roi_heads
                .forward_train(pooled, &rpn.boxes, &image_list.image_sizes, &targets)
        })?;
        Ok(Losses {
            loss_objectness,
            loss_rpn_box_reg,
            loss_classifier: heads.loss_classifier,
            loss_box_reg: heads.loss_box_reg,
            loss_mask: heads.loss_mask,
        })
    }

    /// Eval forward (runs under `tch::no_grad`): images `[3, H_i, W_i]` float 0..1 (any sizes) ->
    /// detections in original pixels, masks pasted to the image size.
    pub fn forward_eval(&self, images: &[Tensor]) -> Result<Vec<Detections>> {
        Self::check_images(images)?;
        tch::no_grad(|| {
            self.forward_eval_inner(images)?
                .into_iter()
                .map(CroppedDetections::into_full)
                .collect()
        })
    }

    /// Like [`Self::forward_eval`], but each mask stays a box-sized crop instead of a full
    /// `[H, W]` map (memory grows with the boxes, not with detections x image size).
    pub fn forward_eval_cropped(&self, images: &[Tensor]) -> Result<Vec<CroppedDetections>> {
        Self::check_images(images)?;
        tch::no_grad(|| self.forward_eval_inner(images))
    }

    /// Like [`Self::forward_eval_cropped`] for images the caller already normalised and resized
    /// (`[3, h'_i, w'_i]` f32, e.g. `infer::prepare`); boxes and masks are mapped back to
    /// `original_sizes[i]` (`(H, W)` before resizing) exactly as there.
    pub fn forward_eval_cropped_prepared(
        &self,
        images: &[Tensor],
        original_sizes: &[(i64, i64)],
    ) -> Result<Vec<CroppedDetections>> {
        Self::check_images(images)?;
        if images.len() != original_sizes.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} images but {} original sizes",
                images.len(),
                original_sizes.len()
            )));
        }
        tch::no_grad(|| {
            let image_list = self.transform.batch_prepared(images)?;
            self.eval_image_list(&image_list, original_sizes)
        })
    }

    /// Backbone + FPN of one image already normalised and resized by the caller (`[3, h', w']`
    /// f32, e.g. `infer::prepare`), kept for [`Self::masks_for_boxes`]; `original` is `(H, W)`
    /// before resizing. Runs under `tch::no_grad`, padded and channels-last as in
    /// [`Self::forward_eval_cropped_prepared`], so the maps are the ones its RoI heads pool.
    pub fn image_features_prepared(
        &self,
        image: &Tensor,
        original: (i64, i64),
    ) -> Result<ImageFeatures> {
        Self::check_images(std::slice::from_ref(image))?;
        tch::no_grad(|| {
            let image_list = self.transform.batch_prepared(std::slice::from_ref(image))?;
            let mut maps =
                profile::timed("backbone", || self.features(&image_list.tensors, false))?;
            maps.truncate(maps.len().saturating_sub(1).min(MAX_POOLED_LEVELS));
            Ok(ImageFeatures {
                maps,
                resized: image_list.image_sizes[0],
                original,
            })
        })
    }

    /// Box prompts on an image's kept features: `boxes [N, 4]` f32 xyxy in original pixels,
    /// each pooled as its own RoI (mapped to the model's input with the transform's
    /// `resize_boxes` ratios, as detections are mapped back), class from `labels [N]` (int64)
    /// or the box head's best foreground class, the mask head's probabilities of that class
    /// pasted at the box as [`Self::forward_eval_cropped`] pastes a detection's.
    pub fn masks_for_boxes(
        &self,
        features: &ImageFeatures,
        boxes: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<CroppedDetections> {
        tch::no_grad(|| {
            let device = features
                .maps
                .first()
                .ok_or_else(|| ModelError::InvalidInput("no feature maps kept".to_owned()))?
                .device();
            let boxes = boxes.f_to_device(device)?.f_to_kind(Kind::Float)?;
            let resized = resize_boxes(&boxes, features.original, features.resized)?;
            let raw = profile::timed("roi", || {
                self.roi_heads
                    .masks_for_boxes(&features.maps, &resized, features.resized, labels)
            })?;
            let _paste = profile::scope("paste");
            Ok(CroppedDetections {
                masks: paste_masks_cropped(&raw.masks, &boxes, features.original, 1)?,
                boxes,
                labels: raw.labels,
                scores: raw.scores,
                image_size: features.original,
            })
        })
    }

    /// The eval forward after the transform: batched `[N, 3, Hp, Wp]` images -> detections
    /// mapped back to `original_sizes` (the part of `forward_eval_inner` after `transform`).
    fn eval_image_list(
        &self,
        image_list: &ImageList,
        original_sizes: &[(i64, i64)],
    ) -> Result<Vec<CroppedDetections>> {
        let features = profile::timed("backbone", || self.features(&image_list.tensors, false))?;
        let rpn = profile::timed("rpn", || {
            self.rpn.forward(image_list, &features, None, false)
        })?;
        let pooled = &features[..features.len().saturating_sub(1).min(MAX_POOLED_LEVELS)];
        let raw = profile::timed("roi", || {
            self.roi_heads
                .forward_eval(pooled, &rpn.boxes, &image_list.image_sizes)
        })?;
        let _paste = profile::scope("paste");
        raw.into_iter()
            .zip(image_list.image_sizes.iter().zip(original_sizes))
            .map(|(d, (&resized, &original))| {
                let boxes = resize_boxes(&d.boxes, resized, original)?;
                Ok(CroppedDetections {
                    masks: paste_masks_cropped(&d.masks, &boxes, original, 1)?,
                    boxes,
                    labels: d.labels,
                    scores: d.scores,
                    image_size: original,
                })
            })
            .collect()
    }

    fn forward_eval_inner(&self, images: &[Tensor]) -> Result<Vec<CroppedDetections>> {
        let original_sizes: Vec<(i64, i64)> =
            images.iter().map(|t| (t.size()[1], t.size()[2])).collect();
        let (image_list, _) = profile::timed("transform", || {
            self.transform.forward(images, None, |n| n - 1)
        })?;
        self.eval_image_list(&image_list, &original_sizes)
    }
}
