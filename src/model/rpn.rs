//! Region proposal network (`torchvision/models/detection/rpn.py`).

use tch::{Kind, Reduction, Tensor, nn};

use crate::model::anchors::AnchorGenerator;
use crate::model::box_ops::{
    BoxCoder, SMOOTH_L1_BETA, batched_nms_top, box_iou, clip_boxes_to_image, remove_small_boxes,
    select_rows3, true_indices,
};
use crate::model::error::Result;
use crate::model::layers::{Conv2d, ConvSpec, WeightInit};
use crate::model::matcher::{
    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedPositiveNegativeSampler, Matcher,
};
use crate::model::transform::ImageList;
use crate::model::transform::Target;
use crate::profile;

/// Minimum proposal side kept by `filter_proposals` (`rpn.py:172` `self.min_size = 1e-3`).
const RPN_MIN_BOX_SIZE: f64 = 1e-3;

/// torchvision `RPNHead`: keys `conv.0.0.*`, `cls_logits.*`, `bbox_pred.*`.
#[derive(Debug)]
pub struct RpnHead {
    conv: Conv2d,
    cls_logits: Conv2d,
    bbox_pred: Conv2d,
}

impl RpnHead {
    /// 3x3 conv + ReLU shared over levels, then 1x1 convs to `A` logits and `4A` deltas
    /// (init normal std 0.01, bias 0: rpn.py:44-48).
    pub fn new(p: &nn::Path, in_channels: i64, num_anchors: i64) -> Result<Self> {
        let init = WeightInit::Normal(0.01);
        Ok(Self {
            conv: Conv2d::new(
                &(p / "conv" / 0 / 0),
                ConvSpec::new(in_channels, in_channels, 3).with_bias(),
                init,
                true,
            )?,
            cls_logits: Conv2d::new(
                &(p / "cls_logits"),
                ConvSpec::new(in_channels, num_anchors, 1).with_bias(),
                init,
                true,
            )?,
            bbox_pred: Conv2d::new(
                &(p / "bbox_pred"),
                ConvSpec::new(in_channels, num_anchors * 4, 1).with_bias(),
                init,
                true,
            )?,
        })
    }

    /// Per level: objectness `[N, A, H, W]` and deltas `[N, 4A, H, W]`.
    pub fn forward(&self, features: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut logits = Vec::with_capacity(features.len());
        let mut deltas = Vec::with_capacity(features.len());
        for f in features {
            let t = self.conv.forward(f)?.f_relu_()?;
            logits.push(self.cls_logits.forward(&t)?);
            deltas.push(self.bbox_pred.forward(&t)?);
        }
        Ok((logits, deltas))
    }
}

/// `permute_and_flatten`: `[N, A*C, H, W] -> [N, H*W*A, C]` (rpn.py:81-85).
fn permute_and_flatten(t: &Tensor, c: i64) -> Result<Tensor> {
    let (n, ac, h, w) = t.size4()?;
    let a = ac / c;
    Ok(t.f_view([n, a, c, h, w])?
        .f_permute([0, 3, 4, 1, 2])?
        .f_reshape([n, -1, c])?)
}

/// Options of [`RegionProposalNetwork`] (torchvision `RegionProposalNetwork.__init__` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RpnParams {
    /// Per-level top-k before NMS (train, test).
    pub pre_nms_top_n: (i64, i64),
    /// Per-image proposals after NMS (train, test).
    pub post_nms_top_n: (i64, i64),
    /// NMS IoU threshold.
    pub nms_thresh: f64,
    /// Objectness probability threshold (`>=`).
    pub score_thresh: f64,
    /// Matcher fg threshold.
    pub fg_iou_thresh: f64,
    /// Matcher bg threshold.
    pub bg_iou_thresh: f64,
    /// Sampler batch size per image.
    pub batch_size_per_image: i64,
    /// Sampler positive fraction.
    pub positive_fraction: f64,
}

/// Proposals and (in training) the two RPN losses.
#[derive(Debug)]
pub struct RpnOutput {
    /// Per image `[P_i, 4]` proposals (resized-image coordinates), by level then score.
    pub boxes: Vec<Tensor>,
    /// Per image `[P_i]` objectness probabilities.
    pub scores: Vec<Tensor>,
    /// `(loss_objectness, loss_rpn_box_reg)` in training.
    pub losses: Option<(Tensor, Tensor)>,
}

/// torchvision `RegionProposalNetwork`.
#[derive(Debug)]
pub struct RegionProposalNetwork {
    /// Anchor generator (no parameters).
    pub anchor_generator: AnchorGenerator,
    /// `rpn.head`
    pub head: RpnHead,
    box_coder: BoxCoder,
    matcher: Matcher,
    /// Anchor sampler for the losses.
    pub fg_bg_sampler: BalancedPositiveNegativeSampler,
    params: RpnParams,
}

impl RegionProposalNetwork {
    /// Builds the RPN under `p` (= `rpn`).
    pub fn new(
        p: &nn::Path,
        anchor_generator: AnchorGenerator,
        in_channels: i64,
        params: RpnParams,
        seed: u64,
    ) -> Result<Self> {
        let a = anchor_generator.num_anchors_per_location()[0];
        Ok(Self {
            head: RpnHead::new(&(p / "head"), in_channels, a)?,
            anchor_generator,
            box_coder: BoxCoder::new([1.0, 1.0, 1.0, 1.0]), // rpn.py:164
            matcher: Matcher::new(params.fg_iou_thresh, params.bg_iou_thresh, true),
            fg_bg_sampler: BalancedPositiveNegativeSampler::new(
                params.batch_size_per_image,
                params.positive_fraction,
                seed,
            ),
            params,
        })
    }

    /// `features`: all FPN maps incl. `'pool'`. `targets` (resized) are required when `training`.
    pub fn forward(
        &self,
        images: &ImageList,
        features: &[Tensor],
        targets: Option<&[Target]>,
        training: bool,
    ) -> Result<RpnOutput> {
        let (objectness, deltas) = {
            let _s = profile::scope("rpn.head");
            self.head.forward(features)?
        };
        let anchors_scope = profile::scope("rpn.anchors");
        let device = images.tensors.device();
        let padded = (images.tensors.size()[2], images.tensors.size()[3]);
        let feature_sizes: Vec<(i64, i64)> = features
            .iter()
            .map(|f| (f.size()[2], f.size()[3]))
            .collect();
        let anchors_per_level =
            self.anchor_generator
                .grid_anchors(padded, &feature_sizes, device)?;
        let num_anchors_per_level: Vec<i64> =
            anchors_per_level.iter().map(|a| a.size()[0]).collect();
        let anchors = Tensor::f_cat(&anchors_per_level, 0)?; // [T, 4], same for every image
        let num_images = images.tensors.size()[0];
        drop(anchors_scope);
        let decode_scope = profile::scope("rpn.decode");

        // concat_box_prediction_layers (rpn.py:88-112)
        let obj: Vec<Tensor> = objectness
            .iter()
            .map(|o| permute_and_flatten(o, 1))
            .collect::<Result<_>>()?;
        let del: Vec<Tensor> = deltas
            .iter()
            .map(|d| permute_and_flatten(d, 4))
            .collect::<Result<_>>()?;
        let objectness = Tensor::f_cat(&obj, 1)?.f_flatten(0, -2)?; // [N*T, 1]
        let pred_bbox_deltas = Tensor::f_cat(&del, 1)?.f_reshape([-1, 4])?; // [N*T, 4]

        let all_anchors = anchors.f_repeat([num_images, 1])?; // [N*T, 4]
        let proposals = self
            .box_coder
            .decode(&pred_bbox_deltas.f_detach()?, &all_anchors)?
            .f_view([num_images, -1, 4])?; // [N, T, 4]
        drop(decode_scope);
        let filter_scope = profile::scope("rpn.filter");
        let (boxes, scores) = self.filter_proposals(
            &proposals,
            &objectness,
            &images.image_sizes,
            &num_anchors_per_level,
            training,
        )?;
        drop(filter_scope);

        let losses = match (training, targets) {
            (true, Some(targets)) => {
                let _s = profile::scope("rpn.loss");
                Some(self.compute_loss(&anchors, &objectness, &pred_bbox_deltas, targets)?)
            }
            _ => None,
        };
        Ok(RpnOutput {
            boxes,
            scores,
            losses,
        })
    }

    /// `filter_proposals` (rpn.py:242-297).
    fn filter_proposals(
        &self,
        proposals: &Tensor,
        objectness: &Tensor,
        image_sizes: &[(i64, i64)],
        num_anchors_per_level: &[i64],
        training: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let num_images = proposals.size()[0];
        let device = proposals.device();
        let objectness = objectness.f_detach()?.f_reshape([num_images, -1])?; // [N, T]
        let pre_nms_top_n = if training {
            self.params.pre_nms_top_n.0
        } else {
            self.params.pre_nms_top_n.1
        };
        let post_nms_top_n = if training {
            self.params.post_nms_top_n.0
        } else {
            self.params.post_nms_top_n.1
        };
        // _get_top_n_idx: top-k logits per level
        let mut top_idx = Vec::new();
        let mut levels = Vec::new();
        let mut offset = 0;
        for (lvl, &n) in num_anchors_per_level.iter().enumerate() {
            let ob = objectness.f_narrow(1, offset, n)?;
            let k = pre_nms_top_n.min(n);
            let (_, idx) = ob.f_topk(k, 1, true, true)?;
            top_idx.push(idx + offset);
            levels.push(Tensor::f_full([k], lvl as i64, (Kind::Int64, device))?);
            offset += n;
        }
        let top_idx = Tensor::f_cat(&top_idx, 1)?; // [N, K]
        let levels = Tensor::f_cat(&levels, 0)?; // [K]
        let objectness = objectness.f_gather(1, &top_idx, false)?;
        let k = top_idx.size()[1];
        let proposals = proposals.f_gather(
            1,
            &top_idx
                .f_unsqueeze(2)?
                .f_expand([num_images, k, 4], false)?,
            false,
        )?;
        let prob = objectness.f_sigmoid()?;

        let mut final_boxes = Vec::with_capacity(num_images as usize);
        let mut final_scores = Vec::with_capacity(num_images as usize);
        for (i, &size) in image_sizes.iter().enumerate() {
            let boxes = clip_boxes_to_image(&proposals.f_get(i as i64)?, size)?;
            let scores = prob.f_get(i as i64)?;
            let keep = remove_small_boxes(&boxes, RPN_MIN_BOX_SIZE)?;
            let (boxes, scores, lvl) = select_rows3((&boxes, &scores, &levels), &keep)?;
            let keep = true_indices(&scores.f_ge(self.params.score_thresh)?)?;
            let (boxes, scores, lvl) = select_rows3((&boxes, &scores, &lvl), &keep)?;
            // `keep[:post_nms_top_n]`, without suppressing below the last kept box.
            let max_keep = usize::try_from(post_nms_top_n.max(0)).unwrap_or(usize::MAX);
            let keep = profile::timed("rpn.filter.nms", || {
                batched_nms_top(&boxes, &scores, &lvl, self.params.nms_thresh, max_keep)
            })?;
            final_boxes.push(boxes.f_index_select(0, &keep)?);
            final_scores.push(scores.f_index_select(0, &keep)?);
        }
        Ok((final_boxes, final_scores))
    }

    /// `assign_targets_to_anchors` + `compute_loss` (rpn.py:193-240, 299-334).
    fn compute_loss(
        &self,
        anchors: &Tensor,
        objectness: &Tensor,
        pred_bbox_deltas: &Tensor,
        targets: &[Target],
    ) -> Result<(Tensor, Tensor)> {
        let t = anchors.size()[0];
        let device = anchors.device();
        let mut labels = Vec::with_capacity(targets.len());
        let mut regression_targets = Vec::with_capacity(targets.len());
        let mut pos_inds = Vec::new();
        let mut neg_inds = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let gt = target.boxes.f_to_device(device)?.f_to_kind(Kind::Float)?;
            let (label, matched_gt) = if gt.size()[0] == 0 {
                (
                    Tensor::f_zeros([t], (Kind::Float, device))?,
                    Tensor::f_zeros([t, 4], (Kind::Float, device))?,
                )
            } else {
                let _s = profile::scope("rpn.loss.match");
                let matches = self.matcher.call(&box_iou(&gt, anchors)?)?;
                let matched_gt = gt.f_index_select(0, &matches.f_clamp_min(0)?)?;
                let label = matches
                    .f_ge(0)?
                    .f_to_kind(Kind::Float)?
                    .f_masked_fill(&matches.f_eq(BELOW_LOW_THRESHOLD)?, 0.0)?
                    .f_masked_fill(&matches.f_eq(BETWEEN_THRESHOLDS)?, -1.0)?;
                (label, matched_gt)
            };
            let (pos, neg) =
                profile::timed("rpn.loss.sample", || self.fg_bg_sampler.sample(&label))?;
            pos_inds.push(pos + i as i64 * t);
            neg_inds.push(neg + i as i64 * t);
            regression_targets.push(self.box_coder.encode(&matched_gt, anchors)?);
            labels.push(label);
        }
        let pos = Tensor::f_cat(&pos_inds, 0)?;
        let sampled = Tensor::f_cat(&[pos.shallow_clone(), Tensor::f_cat(&neg_inds, 0)?], 0)?;
        let labels = Tensor::f_cat(&labels, 0)?;
        let regression_targets = Tensor::f_cat(&regression_targets, 0)?;
        let box_loss = pred_bbox_deltas.f_index_select(0, &pos)?.f_smooth_l1_loss(
            &regression_targets.f_index_select(0, &pos)?,
            Reduction::Sum,
            SMOOTH_L1_BETA,
        )? / sampled.size()[0] as f64;
        let objectness_loss = objectness
            .f_flatten(0, -1)?
            .f_index_select(0, &sampled)?
            .f_binary_cross_entropy_with_logits::<Tensor>(
                &labels.f_index_select(0, &sampled)?,
                None,
                None,
                Reduction::Mean,
            )?;
        Ok((objectness_loss, box_loss))
    }
}
