//! RoI heads: box branch (`TwoMLPHead`, `FastRCNNPredictor`) and mask branch (`MaskRCNNHeads`,
//! `MaskRCNNPredictor`), training-sample selection, losses and post-processing
//! (`torchvision/models/detection/roi_heads.py`, `faster_rcnn.py`, `mask_rcnn.py`).

use tch::{Kind, Reduction, Tensor, nn};

use crate::model::box_ops::SMOOTH_L1_BETA;
use crate::model::box_ops::{
    BoxCoder, batched_nms_top, box_iou, clip_boxes_to_image, remove_small_boxes, select_rows3,
    true_indices,
};
use crate::model::error::{ModelError, Result};
use crate::model::layers::{Conv2d, ConvSpec, WeightInit, bias, weight};
use crate::model::matcher::{
    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedPositiveNegativeSampler, Matcher,
};
use crate::model::roi_align::{MultiScaleRoiAlign, project_masks_on_boxes};
use crate::model::transform::Target;
use crate::profile;

/// Minimum detection side kept by `postprocess_detections` (`roi_heads.py:722`).
const DETECTION_MIN_BOX_SIZE: f64 = 1e-2;
/// Side of the predicted masks and mask targets (2 x the 14x14 mask RoIAlign output).
const MASK_SIZE: i64 = 28;

/// `nn.Linear` with PyTorch's default init; keys `weight [out, in]`, `bias [out]`.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(p: &nn::Path, c_in: i64, c_out: i64) -> Result<Self> {
        Ok(Self {
            weight: weight(
                p,
                "weight",
                &[c_out, c_in],
                WeightInit::PytorchDefault,
                true,
            )?,
            bias: bias(p, c_out, c_in, true, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// torchvision `TwoMLPHead`: `fc6`, `fc7` with ReLU.
#[derive(Debug)]
pub struct TwoMlpHead {
    fc6: Linear,
    fc7: Linear,
}

impl TwoMlpHead {
    /// `in_channels` = 256 * 7 * 7, `representation_size` = 1024 (faster_rcnn.py:258-260).
    pub fn new(p: &nn::Path, in_channels: i64, representation_size: i64) -> Result<Self> {
        Ok(Self {
            fc6: Linear::new(&(p / "fc6"), in_channels, representation_size)?,
            fc7: Linear::new(&(p / "fc7"), representation_size, representation_size)?,
        })
    }

    /// `[K, 256, 7, 7] -> [K, 1024]`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs.f_flatten(1, -1)?;
        let x = self.fc6.forward(&x)?.f_relu_()?;
        self.fc7.forward(&x)?.f_relu_().map_err(Into::into)
    }
}

/// torchvision `FastRCNNPredictor`: `cls_score`, `bbox_pred`.
#[derive(Debug)]
pub struct FastRcnnPredictor {
    cls_score: Linear,
    bbox_pred: Linear,
}

impl FastRcnnPredictor {
    /// Class logits and per-class box deltas.
    pub fn new(p: &nn::Path, in_channels: i64, num_classes: i64) -> Result<Self> {
        Ok(Self {
            cls_score: Linear::new(&(p / "cls_score"), in_channels, num_classes)?,
            bbox_pred: Linear::new(&(p / "bbox_pred"), in_channels, num_classes * 4)?,
        })
    }

    /// `[K, 1024] -> ([K, C], [K, 4C])`
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = xs.f_flatten(1, -1)?;
        Ok((self.cls_score.forward(&x)?, self.bbox_pred.forward(&x)?))
    }
}

/// torchvision `MaskRCNNHeads((256, 256, 256, 256), dilation=1)`: keys `{i}.0.{weight,bias}`.
#[derive(Debug)]
pub struct MaskRcnnHeads {
    convs: Vec<Conv2d>,
}

impl MaskRcnnHeads {
    /// Four 3x3 conv + ReLU (kaiming normal fan_out, bias 0: mask_rcnn.py:303-307).
    pub fn new(p: &nn::Path, in_channels: i64, layers: &[i64]) -> Result<Self> {
        let mut convs = Vec::new();
        let mut c = in_channels;
        for (i, &out) in layers.iter().enumerate() {
            let spec = ConvSpec::new(c, out, 3).with_bias();
            convs.push(Conv2d::new(
                &(p / i / 0),
                spec,
                WeightInit::KaimingNormalFanOut,
                true,
            )?);
            c = out;
        }
        Ok(Self { convs })
    }

    /// `[R, 256, 14, 14] -> [R, 256, 14, 14]`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.shallow_clone();
        for conv in &self.convs {
            x = conv.forward(&x)?.f_relu_()?;
        }
        Ok(x)
    }
}

/// torchvision `MaskRCNNPredictor`: `conv5_mask` (ConvTranspose 2x2 s2) + ReLU, `mask_fcn_logits` 1x1.
#[derive(Debug)]
pub struct MaskRcnnPredictor {
    conv5_weight: Tensor, // [in, dim_reduced, 2, 2]
    conv5_bias: Tensor,
    logits: Conv2d,
}

impl MaskRcnnPredictor {
    /// Weights kaiming normal fan_out, biases PyTorch default (mask_rcnn.py:344-348).
    pub fn new(p: &nn::Path, in_channels: i64, dim_reduced: i64, num_classes: i64) -> Result<Self> {
        let c5 = p / "conv5_mask";
        let conv5_weight = weight(
            &c5,
            "weight",
            &[in_channels, dim_reduced, 2, 2],
            WeightInit::KaimingNormalFanOut,
            true,
        )?;
        let conv5_bias = bias(&c5, dim_reduced, dim_reduced * 4, true, true)?;
        let spec = ConvSpec::new(dim_reduced, num_classes, 1).with_bias();
        let logits = Conv2d::new(
            &(p / "mask_fcn_logits"),
            spec,
            WeightInit::KaimingNormalFanOut,
            true,
        )?;
        Ok(Self {
            conv5_weight,
            conv5_bias,
            logits,
        })
    }

    /// `[R, 256, 14, 14] -> [R, C, 28, 28]` logits.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = xs
            .f_conv_transpose2d(
                &self.conv5_weight,
                Some(&self.conv5_bias),
                [2, 2],
                [0, 0],
                [0, 0],
                1,
                [1, 1],
            )?
            .f_relu_()?;
        self.logits.forward(&x)
    }
}

/// Options of [`RoiHeads`] (torchvision `RoIHeads.__init__` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiHeadsParams {
    /// Number of classes incl. background.
    pub num_classes: i64,
    /// Matcher fg threshold.
    pub fg_iou_thresh: f64,
    /// Matcher bg threshold.
    pub bg_iou_thresh: f64,
    /// Sampler batch size per image.
    pub batch_size_per_image: i64,
    /// Sampler positive fraction.
    pub positive_fraction: f64,
    /// Box coder weights.
    pub bbox_reg_weights: [f64; 4],
    /// Detection score threshold (strict `>`).
    pub score_thresh: f64,
    /// Detection NMS threshold.
    pub nms_thresh: f64,
    /// Detections per image.
    pub detections_per_img: i64,
}

/// Per-image detections in resized-image coordinates, before `transform.postprocess`.
#[derive(Debug)]
pub struct RawDetections {
    /// `[D, 4]`
    pub boxes: Tensor,
    /// `[D]`
    pub scores: Tensor,
    /// `[D]` int64
    pub labels: Tensor,
    /// `[D, 1, 28, 28]` probabilities of the predicted class.
    pub masks: Tensor,
}

/// The three RoI-head losses.
#[derive(Debug)]
pub struct RoiHeadsLosses {
    /// Cross-entropy over sampled RoIs.
    pub loss_classifier: Tensor,
    /// Smooth-L1 of positive RoIs / sampled RoIs.
    pub loss_box_reg: Tensor,
    /// Mask BCE over positive RoIs.
    pub loss_mask: Tensor,
}

/// torchvision `RoIHeads` with a mask branch.
#[derive(Debug)]
pub struct RoiHeads {
    box_roi_pool: MultiScaleRoiAlign,
    /// `roi_heads.box_head`
    pub box_head: TwoMlpHead,
    /// `roi_heads.box_predictor`
    pub box_predictor: FastRcnnPredictor,
    mask_roi_pool: MultiScaleRoiAlign,
    /// `roi_heads.mask_head`
    pub mask_head: MaskRcnnHeads,
    /// `roi_heads.mask_predictor`
    pub mask_predictor: MaskRcnnPredictor,
    box_coder: BoxCoder,
    matcher: Matcher,
    /// Proposal sampler for the losses.
    pub fg_bg_sampler: BalancedPositiveNegativeSampler,
    params: RoiHeadsParams,
}

impl RoiHeads {
    /// Builds the heads under `p` (= `roi_heads`) for FPN maps of `out_channels` channels.
    pub fn new(p: &nn::Path, out_channels: i64, params: RoiHeadsParams, seed: u64) -> Result<Self> {
        // faster_rcnn.py:251-262, mask_rcnn.py:218-229
        let box_roi_pool = MultiScaleRoiAlign {
            output_size: 7,
            sampling_ratio: 2,
        };
        let mask_roi_pool = MultiScaleRoiAlign {
            output_size: 14,
            sampling_ratio: 2,
        };
        let representation_size = 1024;
        Ok(Self {
            box_roi_pool,
            box_head: TwoMlpHead::new(
                &(p / "box_head"),
                out_channels * 7 * 7,
                representation_size,
            )?,
            box_predictor: FastRcnnPredictor::new(
                &(p / "box_predictor"),
                representation_size,
                params.num_classes,
            )?,
            mask_roi_pool,
            mask_head: MaskRcnnHeads::new(&(p / "mask_head"), out_channels, &[256, 256, 256, 256])?,
            mask_predictor: MaskRcnnPredictor::new(
                &(p / "mask_predictor"),
                256,
                256,
                params.num_classes,
            )?,
            box_coder: BoxCoder::new(params.bbox_reg_weights),
            matcher: Matcher::new(params.fg_iou_thresh, params.bg_iou_thresh, false),
            fg_bg_sampler: BalancedPositiveNegativeSampler::new(
                params.batch_size_per_image,
                params.positive_fraction,
                seed,
            ),
            params,
        })
    }

    /// Box RoIAlign + `box_head` + `box_predictor`: one `[K_i, 4]` box list per image ->
    /// (`[K, C]` class logits, `[K, 4C]` box deltas).
    fn box_branch(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<(Tensor, Tensor)> {
        let pooled = profile::timed("roi.box_pool", || {
            self.box_roi_pool.forward(features, boxes, image_shapes)
        })?;
        let _s = profile::scope("roi.box_head");
        self.box_predictor.forward(&self.box_head.forward(&pooled)?)
    }

    /// Mask RoIAlign + `mask_head` + `mask_predictor`: one `[K_i, 4]` box list per image ->
    /// `[K, C, 28, 28]` mask logits.
    fn mask_branch(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Tensor> {
        let pooled = profile::timed("roi.mask_pool", || {
            self.mask_roi_pool.forward(features, boxes, image_shapes)
        })?;
        let _s = profile::scope("roi.mask_head");
        self.mask_predictor
            .forward(&self.mask_head.forward(&pooled)?)
    }

    /// Training: `select_training_samples`, box and mask losses (roi_heads.py:642-678, 745-830).
    /// `features`: the pooled FPN maps; `targets`: resized targets.
    pub fn forward_train(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_shapes: &[(i64, i64)],
        targets: &[Target],
    ) -> Result<RoiHeadsLosses> {
        let mut sampled_props = Vec::with_capacity(proposals.len());
        let mut sampled_labels = Vec::with_capacity(proposals.len());
        let mut sampled_matched = Vec::with_capacity(proposals.len());
        let mut regression_targets = Vec::with_capacity(proposals.len());
        let sample_scope = profile::scope("roi.sample");
        for (props, target) in proposals.iter().zip(targets) {
            let device = props.device();
            let gt = target.boxes.f_to_device(device)?.f_to_kind(props.kind())?;
            let gt_labels = target.labels.f_to_device(device)?;
            let props = Tensor::f_cat(&[props.shallow_clone(), gt.shallow_clone()], 0)?; // add_gt_proposals
            let n = props.size()[0];
            let (matched, labels) = if gt.size()[0] == 0 {
                (
                    Tensor::f_zeros([n], (Kind::Int64, device))?,
                    Tensor::f_zeros([n], (Kind::Int64, device))?,
                )
            } else {
                let m = self.matcher.call(&box_iou(&gt, &props)?)?;
                let clamped = m.f_clamp_min(0)?;
                let labels = gt_labels
                    .f_index_select(0, &clamped)?
                    .f_to_kind(Kind::Int64)?
                    .f_masked_fill(&m.f_eq(BELOW_LOW_THRESHOLD)?, 0)?
                    .f_masked_fill(&m.f_eq(BETWEEN_THRESHOLDS)?, -1)?;
                (clamped, labels)
            };
            let (pos, neg) = self.fg_bg_sampler.sample(&labels)?;
            let (sampled, _) = Tensor::f_cat(&[pos, neg], 0)?.f_sort(0, false)?; // where(pos | neg)
            let props = props.f_index_select(0, &sampled)?;
            let labels = labels.f_index_select(0, &sampled)?;
            let matched = matched.f_index_select(0, &sampled)?;
            let gt_for_match = if gt.size()[0] == 0 {
                Tensor::f_zeros([1, 4], (props.kind(), device))?
            } else {
                gt
            };
            let matched_gt = gt_for_match.f_index_select(0, &matched)?;
            regression_targets.push(self.box_coder.encode(&matched_gt, &props)?);
            sampled_props.push(props);
            sampled_labels.push(labels);
            sampled_matched.push(matched);
        }
        drop(sample_scope);

        let (class_logits, box_regression) =
            self.box_branch(features, &sampled_props, image_shapes)?;

        // fastrcnn_loss (roi_heads.py:12-53)
        let box_loss_scope = profile::scope("roi.box_loss");
        let labels = Tensor::f_cat(&sampled_labels, 0)?;
        let targets_all = Tensor::f_cat(&regression_targets, 0)?;
        let loss_classifier = class_logits.f_cross_entropy_loss::<Tensor>(
            &labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )?;
        let pos = true_indices(&labels.f_gt(0)?)?;
        let labels_pos = labels.f_index_select(0, &pos)?;
        let (k, num_classes) = (class_logits.size()[0], class_logits.size()[1]);
        let box_regression = box_regression.f_reshape([k, num_classes, 4])?; // K may be 0
        let pred = box_regression.f_index_select(0, &pos)?.f_gather(
            1,
            &labels_pos.f_view([-1, 1, 1])?.f_expand([-1, 1, 4], false)?,
            false,
        )?; // [P, 1, 4]
        let loss_box_reg = pred.f_squeeze_dim(1)?.f_smooth_l1_loss(
            &targets_all.f_index_select(0, &pos)?,
            Reduction::Sum,
            SMOOTH_L1_BETA,
        )? / labels.numel() as f64;
        drop(box_loss_scope);

        // mask branch on positives (roi_heads.py:800-830)
        let targets_scope = profile::scope("roi.mask_targets");
        let mut mask_props = Vec::with_capacity(proposals.len());
        let mut mask_targets = Vec::with_capacity(proposals.len());
        let mut mask_labels = Vec::with_capacity(proposals.len());
        for (((props, labels), matched), target) in sampled_props
            .iter()
            .zip(&sampled_labels)
            .zip(&sampled_matched)
            .zip(targets)
        {
            let pos = true_indices(&labels.f_gt(0)?)?;
            let p = props.f_index_select(0, &pos)?;
            let m = matched.f_index_select(0, &pos)?;
            let gt_labels = target.labels.f_to_device(p.device())?;
            mask_labels.push(if m.size()[0] == 0 {
                Tensor::f_zeros([0], (Kind::Int64, p.device()))?
            } else {
                gt_labels.f_index_select(0, &m)?
            });
            mask_targets.push(project_masks_on_boxes(&target.masks, &p, &m, MASK_SIZE)?);
            mask_props.push(p);
        }
        drop(targets_scope);
        let mask_logits = self.mask_branch(features, &mask_props, image_shapes)?;
        let _mask_loss_scope = profile::scope("roi.mask_loss");
        let mask_targets = Tensor::f_cat(&mask_targets, 0)?;
        let loss_mask = if mask_targets.numel() == 0 {
            mask_logits.f_sum(mask_logits.kind())? * 0.0
        } else {
            let labels = Tensor::f_cat(&mask_labels, 0)?;
            let r = labels.size()[0];
            let picked = mask_logits
                .f_gather(
                    1,
                    &labels
                        .f_view([r, 1, 1, 1])?
                        .f_expand([r, 1, MASK_SIZE, MASK_SIZE], false)?,
                    false,
                )?
                .f_squeeze_dim(1)?; // [R, 28, 28]
            picked.f_binary_cross_entropy_with_logits::<Tensor>(
                &mask_targets,
                None,
                None,
                Reduction::Mean,
            )?
        };
        Ok(RoiHeadsLosses {
            loss_classifier,
            loss_box_reg,
            loss_mask,
        })
    }

    /// Box prompts: each of `boxes [N, 4]` (resized-image coordinates, one image of size
    /// `image_shape`) is its own RoI, not regressed, not suppressed. The class is `labels [N]`
    /// (int64, `1..C`) when given, else the box head's best foreground class for that box; the
    /// score is the box head's softmax probability of that class; the mask is the mask head's
    /// sigmoid for it, exactly as [`Self::forward_eval`] computes it for a detection's box.
    /// Returns boxes as given, `[N]` scores, `[N]` labels, `[N, 1, 28, 28]` probabilities.
    pub fn masks_for_boxes(
        &self,
        features: &[Tensor],
        boxes: &Tensor,
        image_shape: (i64, i64),
        labels: Option<&Tensor>,
    ) -> Result<RawDetections> {
        let n = boxes.size().first().copied().unwrap_or(0);
        if boxes.size() != [n, 4] {
            return Err(ModelError::InvalidInput(format!(
                "box prompts must be [N, 4], got {:?}",
                boxes.size()
            )));
        }
        let boxes = boxes.f_to_kind(Kind::Float)?;
        let rois = [boxes.shallow_clone()];
        let (class_logits, _) = self.box_branch(features, &rois, &[image_shape])?; // [N, C]
        let num_classes = class_logits.size()[1];
        let device = class_logits.device();
        let probs = class_logits.f_softmax(-1, class_logits.kind())?;
        let labels = match labels {
            Some(l) => {
                let l = l.f_to_device(device)?.f_to_kind(Kind::Int64)?;
                let bad = l.f_lt(1)?.f_logical_or(&l.f_ge(num_classes)?)?;
                if l.size() != [n] || bad.f_any()?.int64_value(&[]) != 0 {
                    return Err(ModelError::InvalidInput(format!(
                        "box prompt labels must be [{n}] in 1..{}",
                        num_classes - 1
                    )));
                }
                l
            }
            // Background (column 0) is never a prompt's class.
            None => probs.f_narrow(1, 1, num_classes - 1)?.f_argmax(1, false)? + 1,
        };
        let scores = probs
            .f_gather(1, &labels.f_view([n, 1])?, false)?
            .f_view([n])?;
        let mask_logits = self.mask_branch(features, &rois, &[image_shape])?; // [N, C, 28, 28]
        let (h, w) = (mask_logits.size()[2], mask_logits.size()[3]);
        let masks = mask_logits
            .f_gather(
                1,
                &labels.f_view([n, 1, 1, 1])?.f_expand([n, 1, h, w], false)?,
                false,
            )?
            .f_sigmoid()?; // [N, 1, 28, 28]
        Ok(RawDetections {
            boxes,
            scores,
            labels,
            masks,
        })
    }

    /// Eval: `postprocess_detections` + `maskrcnn_inference` (roi_heads.py:680-737, 56-82).
    pub fn forward_eval(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Vec<RawDetections>> {
        let (class_logits, box_regression) = self.box_branch(features, proposals, image_shapes)?;
        let post_scope = profile::scope("roi.postprocess");
        let num_classes = class_logits.size()[1];
        let k = class_logits.size()[0];
        let device = class_logits.device();
        let concat = Tensor::f_cat(proposals, 0)?;
        let pred_boxes = self
            .box_coder
            .decode(&box_regression.f_reshape([k, num_classes * 4])?, &concat)? // [K, C*4]; K may be 0
            .f_reshape([k, num_classes, 4])?;
        let pred_scores = class_logits.f_softmax(-1, class_logits.kind())?;

        let mut dets = Vec::with_capacity(proposals.len());
        let mut offset = 0;
        for (props, &shape) in proposals.iter().zip(image_shapes) {
            let n = props.size()[0];
            let boxes = clip_boxes_to_image(&pred_boxes.f_narrow(0, offset, n)?, shape)?; // [n, C, 4]
            let scores = pred_scores.f_narrow(0, offset, n)?;
            offset += n;
            let labels = Tensor::f_arange(num_classes, (Kind::Int64, device))?
                .f_view([1, -1])?
                .f_expand([n, num_classes], false)?;
            let boxes = boxes.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1, 4])?;
            let scores = scores.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1])?;
            let labels = labels.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1])?;
            let inds = true_indices(&scores.f_gt(self.params.score_thresh)?)?;
            let (boxes, scores, labels) = select_rows3((&boxes, &scores, &labels), &inds)?;
            let keep = remove_small_boxes(&boxes, DETECTION_MIN_BOX_SIZE)?;
            let (boxes, scores, labels) = select_rows3((&boxes, &scores, &labels), &keep)?;
            // `keep[:detections_per_img]`, without suppressing below the last kept box.
            let max_keep =
                usize::try_from(self.params.detections_per_img.max(0)).unwrap_or(usize::MAX);
            let keep = profile::timed("roi.postprocess.nms", || {
                batched_nms_top(&boxes, &scores, &labels, self.params.nms_thresh, max_keep)
            })?;
            let (boxes, scores, labels) = select_rows3((&boxes, &scores, &labels), &keep)?;
            dets.push(RawDetections {
                boxes,
                scores,
                labels,
                masks: Tensor::f_zeros([0], (Kind::Float, device))?,
            });
        }

        drop(post_scope);
        let det_boxes: Vec<Tensor> = dets.iter().map(|d| d.boxes.shallow_clone()).collect();
        let mask_logits = self.mask_branch(features, &det_boxes, image_shapes)?;
        let mask_prob = mask_logits.f_sigmoid()?; // [R, C, 28, 28]
        let mut offset = 0;
        for d in &mut dets {
            let n = d.labels.size()[0];
            let probs = mask_prob.f_narrow(0, offset, n)?;
            offset += n;
            let (h, w) = (probs.size()[2], probs.size()[3]);
            d.masks = probs.f_gather(
                1,
                &d.labels
                    .f_view([n, 1, 1, 1])?
                    .f_expand([n, 1, h, w], false)?,
                false,
            )?; // [D, 1, 28, 28]
        }
        Ok(dets)
    }
}
