//! `MaskRcnnConfig`: field names are torchvision's `MaskRCNN`/`FasterRCNN` constructor kwargs
//! (`torchvision/models/detection/faster_rcnn.py:167-200`, `mask_rcnn.py:165-204`, torchvision 0.28).

use serde::{Deserialize, Serialize};

/// Feature extractor under the FPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// torchvision `resnet50` (Bottleneck v1.5) with `FrozenBatchNorm2d`, as in `maskrcnn_resnet50_fpn`.
    Resnet50,
    /// torchvision `mobilenet_v2().features` with `FrozenBatchNorm2d`, as built by
    /// `backbone_utils.mobilenet_backbone("mobilenet_v2", fpn=True, ...)`.
    MobilenetV2,
}

/// Hyper-parameters of the Mask R-CNN model. Defaults are torchvision's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskRcnnConfig {
    /// Backbone architecture.
    pub backbone: Backbone,
    /// Number of classes **including** background (label 0).
    pub num_classes: i64,
    /// Backbone stages tapped for the FPN (1-based stage numbers, torchvision `returned_layers`).
    pub returned_layers: Vec<i64>,
    /// Number of trainable backbone stages counted from the top (torchvision `trainable_backbone_layers`).
    pub trainable_backbone_layers: i64,
    /// `FrozenBatchNorm2d` epsilon: 1e-5, but 0.0 for torchvision's `COCO_V1` Mask R-CNN weights.
    pub frozen_bn_eps: f64,
    /// Shorter image side after resizing; training picks one at random, eval uses the last.
    pub min_size: Vec<i64>,
    /// Upper bound for the longer image side after resizing.
    pub max_size: i64,
    /// Padded batch height/width are rounded up to a multiple of this.
    pub size_divisible: i64,
    /// Per-channel normalisation mean (RGB, images in 0..1).
    pub image_mean: Vec<f64>,
    /// Per-channel normalisation standard deviation.
    pub image_std: Vec<f64>,
    /// Anchor sizes per FPN level (`rpn_anchor_generator` sizes).
    pub anchor_sizes: Vec<Vec<i64>>,
    /// Anchor aspect ratios (height / width) per FPN level.
    pub aspect_ratios: Vec<Vec<f64>>,
    /// RPN: proposals kept per level before NMS, training.
    pub rpn_pre_nms_top_n_train: i64,
    /// RPN: proposals kept per level before NMS, eval.
    pub rpn_pre_nms_top_n_test: i64,
    /// RPN: proposals kept per image after NMS, training.
    pub rpn_post_nms_top_n_train: i64,
    /// RPN: proposals kept per image after NMS, eval.
    pub rpn_post_nms_top_n_test: i64,
    /// RPN NMS IoU threshold.
    pub rpn_nms_thresh: f64,
    /// RPN: minimum anchor IoU for a positive.
    pub rpn_fg_iou_thresh: f64,
    /// RPN: maximum anchor IoU for a negative.
    pub rpn_bg_iou_thresh: f64,
    /// RPN: anchors sampled per image for the loss.
    pub rpn_batch_size_per_image: i64,
    /// RPN: fraction of positives among sampled anchors.
    pub rpn_positive_fraction: f64,
    /// RPN: proposals with objectness probability below this are dropped (`>=` keeps).
    pub rpn_score_thresh: f64,
    /// Detections with a class score not above this are dropped (strict `>`).
    pub box_score_thresh: f64,
    /// Per-class NMS IoU threshold of the detections.
    pub box_nms_thresh: f64,
    /// Maximum number of detections per image.
    pub box_detections_per_img: i64,
    /// RoI heads: minimum proposal IoU for a positive.
    pub box_fg_iou_thresh: f64,
    /// RoI heads: maximum proposal IoU for a negative.
    pub box_bg_iou_thresh: f64,
    /// RoI heads: proposals sampled per image for the loss.
    pub box_batch_size_per_image: i64,
    /// RoI heads: fraction of positives among sampled proposals.
    pub box_positive_fraction: f64,
    /// RoI heads box-coder weights `(wx, wy, ww, wh)`.
    pub bbox_reg_weights: [f64; 4],
}

impl Default for MaskRcnnConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet50,
            // mask_rcnn.py:496 `num_classes = 91` (COCO incl. background) for maskrcnn_resnet50_fpn.
            num_classes: 91,
            // backbone_utils.py:140 `returned_layers = [1, 2, 3, 4]` (resnet); our spec for mobilenet_v2.
            returned_layers: vec![1, 2, 3, 4],
            // mask_rcnn.py:499 `_validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)`.
            trainable_backbone_layers: 3,
            // ops/misc.py:26 `FrozenBatchNorm2d(eps=1e-5)`; COCO_V1 weights need 0.0 (mask_rcnn.py:507-509).
            frozen_bn_eps: 1e-5,
            // faster_rcnn.py:172 `min_size=800`.
            min_size: vec![800],
            // faster_rcnn.py:173 `max_size=1333`.
            max_size: 1333,
            // transform.py:104 `size_divisible: int = 32`.
            size_divisible: 32,
            // faster_rcnn.py:278 `image_mean = [0.485, 0.456, 0.406]`.
            image_mean: vec![0.485, 0.456, 0.406],
            // faster_rcnn.py:280 `image_std = [0.229, 0.224, 0.225]`.
            image_std: vec![0.229, 0.224, 0.225],
            // faster_rcnn.py:38 `_default_anchorgen`: `anchor_sizes = ((32,), (64,), (128,), (256,), (512,))`.
            anchor_sizes: vec![vec![32], vec![64], vec![128], vec![256], vec![512]],
            // faster_rcnn.py:39 `aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)`.
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
            // faster_rcnn.py:179 `rpn_pre_nms_top_n_train=2000`.
            rpn_pre_nms_top_n_train: 2000,
            // faster_rcnn.py:180 `rpn_pre_nms_top_n_test=1000`.
            rpn_pre_nms_top_n_test: 1000,
            // faster_rcnn.py:181 `rpn_post_nms_top_n_train=2000`.
            rpn_post_nms_top_n_train: 2000,
            // faster_rcnn.py:182 `rpn_post_nms_top_n_test=1000`.
            rpn_post_nms_top_n_test: 1000,
            // faster_rcnn.py:183 `rpn_nms_thresh=0.7`.
            rpn_nms_thresh: 0.7,
            // faster_rcnn.py:184 `rpn_fg_iou_thresh=0.7`.
            rpn_fg_iou_thresh: 0.7,
            // faster_rcnn.py:185 `rpn_bg_iou_thresh=0.3`.
            rpn_bg_iou_thresh: 0.3,
            // faster_rcnn.py:186 `rpn_batch_size_per_image=256`.
            rpn_batch_size_per_image: 256,
            // faster_rcnn.py:187 `rpn_positive_fraction=0.5`.
            rpn_positive_fraction: 0.5,
            // faster_rcnn.py:188 `rpn_score_thresh=0.0`.
            rpn_score_thresh: 0.0,
            // faster_rcnn.py:193 `box_score_thresh=0.05`.
            box_score_thresh: 0.05,
            // faster_rcnn.py:194 `box_nms_thresh=0.5`.
            box_nms_thresh: 0.5,
            // faster_rcnn.py:195 `box_detections_per_img=100`.
            box_detections_per_img: 100,
            // faster_rcnn.py:196 `box_fg_iou_thresh=0.5`.
            box_fg_iou_thresh: 0.5,
            // faster_rcnn.py:197 `box_bg_iou_thresh=0.5`.
            box_bg_iou_thresh: 0.5,
            // faster_rcnn.py:198 `box_batch_size_per_image=512`.
            box_batch_size_per_image: 512,
            // faster_rcnn.py:199 `box_positive_fraction=0.25`.
            box_positive_fraction: 0.25,
            // roi_heads.py:543 `bbox_reg_weights = (10.0, 10.0, 5.0, 5.0)` when None (faster_rcnn.py:200).
            bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
        }
    }
}

impl MaskRcnnConfig {
    /// Default config for the given backbone (torchvision defaults; mobilenet taps stages 1-4).
    pub fn for_backbone(backbone: Backbone) -> Self {
        Self {
            backbone,
            ..Self::default()
        }
    }

    /// Checks value ranges that would otherwise fail deep inside the forward pass.
    pub fn validate(&self) -> crate::model::error::Result<()> {
        use crate::model::error::ModelError::InvalidConfig;
        if self.num_classes < 2 {
            return Err(InvalidConfig(format!(
                "num_classes must count background and at least one class, got {}",
                self.num_classes
            )));
        }
        // resnet: layer1..layer4; mobilenet_v2: stage starts [0, 2, 4, 7, 14, 18] (backbone_utils.py:209)
        let (min_stage, max_stage) = match self.backbone {
            Backbone::Resnet50 => (1, 4),
            Backbone::MobilenetV2 => (0, 5),
        };
        let (Some(&first), Some(&last)) =
            (self.returned_layers.first(), self.returned_layers.last())
        else {
            return Err(InvalidConfig(
                "returned_layers must not be empty".to_owned(),
            ));
        };
        if self.returned_layers.windows(2).any(|w| w[0] >= w[1])
            || first < min_stage
            || last > max_stage
        {
            return Err(InvalidConfig(format!(
                "returned_layers must be increasing stage numbers in {min_stage}..={max_stage}, got {:?}",
                self.returned_layers
            )));
        }
        let max_trainable = match self.backbone {
            Backbone::Resnet50 => 5,
            Backbone::MobilenetV2 => 6,
        };
        if !(0..=max_trainable).contains(&self.trainable_backbone_layers) {
            return Err(InvalidConfig(format!(
                "trainable_backbone_layers must be in 0..={max_trainable}, got {}",
                self.trainable_backbone_layers
            )));
        }
        let levels = self.returned_layers.len() + 1; // + LastLevelMaxPool 'pool'
        if self.anchor_sizes.len() != levels || self.aspect_ratios.len() != levels {
            return Err(InvalidConfig(format!(
                "anchor_sizes and aspect_ratios need one entry per FPN level ({levels}), got {} and {}",
                self.anchor_sizes.len(),
                self.aspect_ratios.len()
            )));
        }
        let per_location: Vec<usize> = self
            .anchor_sizes
            .iter()
            .zip(&self.aspect_ratios)
            .map(|(s, a)| s.len() * a.len())
            .collect();
        if per_location.iter().any(|&n| n == 0 || n != per_location[0]) {
            return Err(InvalidConfig(format!(
                "every FPN level needs the same non-zero number of anchors per location (shared RPN head), got {per_location:?}"
            )));
        }
        if self.min_size.is_empty() || self.min_size.iter().any(|&s| s <= 0) || self.max_size <= 0 {
            return Err(InvalidConfig(format!(
                "min_size/max_size must be positive, got {:?}/{}",
                self.min_size, self.max_size
            )));
        }
        if self.image_mean.len() != 3 || self.image_std.len() != 3 {
            return Err(InvalidConfig(
                "image_mean and image_std need 3 values (RGB)".to_owned(),
            ));
        }
        if self.size_divisible <= 0 {
            return Err(InvalidConfig(format!(
                "size_divisible must be positive, got {}",
                self.size_divisible
            )));
        }
        Ok(())
    }
}
