//! Box utilities: IoU, clipping, small-box removal, `BoxCoder`, NMS
//! (`torchvision/ops/boxes.py`, `torchvision/models/detection/_utils.py`, `csrc/ops/cpu/nms_kernel.cpp`).

use tch::{Device, Kind, Tensor};

use crate::model::error::Result;

/// Smooth-L1 beta of the RPN and box losses (`rpn.py:322`, `roi_heads.py:48`).
pub const SMOOTH_L1_BETA: f64 = 1.0 / 9.0;

/// `log(1000 / 16)`: clamp of `dw`/`dh` before `exp` in `BoxCoder.decode` (`_utils.py:129`).
pub const BBOX_XFORM_CLIP: f64 = 4.135_166_556_742_356; // = (1000.0f64 / 16.0).ln()

/// torchvision `box_area` for xyxy boxes: `[N, 4] -> [N]`.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    let w = boxes.f_select(1, 2)? - boxes.f_select(1, 0)?;
    let h = boxes.f_select(1, 3)? - boxes.f_select(1, 1)?;
    Ok(w.f_mul(&h)?)
}

/// torchvision `box_iou`: `[N, 4] x [M, 4] -> [N, M]`, no "+1" in widths.
pub fn box_iou(boxes1: &Tensor, boxes2: &Tensor) -> Result<Tensor> {
    let area1 = box_area(boxes1)?; // [N]
    let area2 = box_area(boxes2)?; // [M]
    let lt = boxes1
        .f_slice(1, 0, 2, 1)?
        .f_unsqueeze(1)?
        .f_maximum(&boxes2.f_slice(1, 0, 2, 1)?)?; // [N, M, 2]
    let rb = boxes1
        .f_slice(1, 2, 4, 1)?
        .f_unsqueeze(1)?
        .f_minimum(&boxes2.f_slice(1, 2, 4, 1)?)?; // [N, M, 2]
    let wh = rb.f_sub(&lt)?.f_clamp_min(0.0)?;
    let inter = wh.f_select(2, 0)?.f_mul(&wh.f_select(2, 1)?)?; // [N, M]
    let union = area1.f_unsqueeze(1)?.f_add(&area2)?.f_sub(&inter)?;
    Ok(inter.f_div(&union)?)
}

/// torchvision `clip_boxes_to_image`: clamps x to `[0, width]` and y to `[0, height]`.
/// `boxes` is `[..., 4k]` (any leading shape, last dim a multiple of 4).
pub fn clip_boxes_to_image(boxes: &Tensor, image_size: (i64, i64)) -> Result<Tensor> {
    let (height, width) = image_size;
    let shape = boxes.size();
    let flat = boxes.f_reshape([-1, 2])?; // (x, y) pairs
    let x = flat.f_select(1, 0)?.f_clamp(0.0, width as f64)?;
    let y = flat.f_select(1, 1)?.f_clamp(0.0, height as f64)?;
    Ok(Tensor::f_stack(&[x, y], 1)?.f_reshape(shape)?)
}

/// torchvision `remove_small_boxes`: indices (int64, ascending) of boxes with `w >= min_size && h >= min_size`.
pub fn remove_small_boxes(boxes: &Tensor, min_size: f64) -> Result<Tensor> {
    let ws = boxes.f_select(1, 2)? - boxes.f_select(1, 0)?;
    let hs = boxes.f_select(1, 3)? - boxes.f_select(1, 1)?;
    let keep = ws.f_ge(min_size)?.f_logical_and(&hs.f_ge(min_size)?)?;
    true_indices(&keep)
}

/// Indices (int64 `[K]`, ascending) of the true elements of a 1-D bool `mask [N]`.
pub fn true_indices(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.f_nonzero()?.f_select(1, 0)?)
}

/// Rows `idx` (int64 `[K]`) of three tensors with the same first dimension `[N, ...]`, as
/// `(a[idx], b[idx], c[idx])`: boxes, scores and labels (or levels) filtered together.
pub fn select_rows3(
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    idx: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        a.f_index_select(0, idx)?,
        b.f_index_select(0, idx)?,
        c.f_index_select(0, idx)?,
    ))
}

/// torchvision `BoxCoder`: encodes/decodes `(dx, dy, dw, dh)` deltas with per-coordinate weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    /// Weights `(wx, wy, ww, wh)`: (1,1,1,1) in the RPN (`rpn.py:164`), (10,10,5,5) in the RoI heads.
    pub weights: [f64; 4],
    /// Upper clamp of `dw`/`dh` before `exp` ([`BBOX_XFORM_CLIP`]).
    pub bbox_xform_clip: f64,
}

impl BoxCoder {
    /// Box coder with the default clip `log(1000/16)`.
    pub fn new(weights: [f64; 4]) -> Self {
        Self {
            weights,
            bbox_xform_clip: BBOX_XFORM_CLIP,
        }
    }

    /// `encode_single`: regression targets `[N, 4]` of `reference_boxes` (GT) w.r.t. `proposals`.
    pub fn encode(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        let [wx, wy, ww, wh] = self.weights;
        let col = |t: &Tensor, i: i64| t.f_select(1, i).and_then(|c| c.f_unsqueeze(1)); // [N, 1]
        let (px1, py1, px2, py2) = (
            col(proposals, 0)?,
            col(proposals, 1)?,
            col(proposals, 2)?,
            col(proposals, 3)?,
        );
        let (gx1, gy1, gx2, gy2) = (
            col(reference_boxes, 0)?,
            col(reference_boxes, 1)?,
            col(reference_boxes, 2)?,
            col(reference_boxes, 3)?,
        );
        // Same op order as `encode_boxes` (_utils.py:75-116).
        let ex_w = px2.f_sub(&px1)?;
        let ex_h = py2.f_sub(&py1)?;
        let ex_cx = px1.f_add(&(&ex_w * 0.5))?;
        let ex_cy = py1.f_add(&(&ex_h * 0.5))?;
        let gt_w = gx2.f_sub(&gx1)?;
        let gt_h = gy2.f_sub(&gy1)?;
        let gt_cx = gx1.f_add(&(&gt_w * 0.5))?;
        let gt_cy = gy1.f_add(&(&gt_h * 0.5))?;
        let dx = (gt_cx.f_sub(&ex_cx)? * wx).f_div(&ex_w)?;
        let dy = (gt_cy.f_sub(&ex_cy)? * wy).f_div(&ex_h)?;
        let dw = gt_w.f_div(&ex_w)?.f_log()? * ww;
        let dh = gt_h.f_div(&ex_h)?.f_log()? * wh;
        Ok(Tensor::f_cat(&[dx, dy, dw, dh], 1)?)
    }

    /// `decode_single`: `rel_codes [N, 4k]` applied to `boxes [N, 4]` gives boxes `[N, 4k]`.
    pub fn decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        let boxes = boxes.f_to_kind(rel_codes.kind())?;
        let [wx, wy, ww, wh] = self.weights;
        let widths = boxes.f_select(1, 2)? - boxes.f_select(1, 0)?;
        let heights = boxes.f_select(1, 3)? - boxes.f_select(1, 1)?;
        let ctr_x = boxes.f_select(1, 0)? + &widths * 0.5;
        let ctr_y = boxes.f_select(1, 1)? + &heights * 0.5;
        let ncol = rel_codes.size().last().copied().unwrap_or(0);
        let every4 = |start: i64| rel_codes.f_slice(1, start, ncol, 4);
        let dx = every4(0)? / wx;
        let dy = every4(1)? / wy;
        let dw = (every4(2)? / ww).f_clamp_max(self.bbox_xform_clip)?;
        let dh = (every4(3)? / wh).f_clamp_max(self.bbox_xform_clip)?;
        let widths = widths.f_unsqueeze(1)?;
        let heights = heights.f_unsqueeze(1)?;
        let pred_ctr_x = dx.f_mul(&widths)?.f_add(&ctr_x.f_unsqueeze(1)?)?;
        let pred_ctr_y = dy.f_mul(&heights)?.f_add(&ctr_y.f_unsqueeze(1)?)?;
        let pred_w = dw.f_exp()?.f_mul(&widths)?;
        let pred_h = dh.f_exp()?.f_mul(&heights)?;
        let c_to_c_h = pred_h * 0.5;
        let c_to_c_w = pred_w * 0.5;
        let stacked = Tensor::f_stack(
            &[
                pred_ctr_x.f_sub(&c_to_c_w)?,
                pred_ctr_y.f_sub(&c_to_c_h)?,
                pred_ctr_x.f_add(&c_to_c_w)?,
                pred_ctr_y.f_add(&c_to_c_h)?,
            ],
            2,
        )?; // [N, k, 4]
        Ok(stacked.f_flatten(1, 2)?)
    }
}

/// Every element of `t` (any shape and kind), converted to `T`, on the host in row-major order.
fn host_vec<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<T>> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(T::KIND)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<T>::try_from(&t)?)
}

/// Every element of `t` as f32 on the host, row-major.
pub(crate) fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    host_vec(t)
}

/// Every element of `t` as i64 on the host, row-major.
pub(crate) fn to_vec_i64(t: &Tensor) -> Result<Vec<i64>> {
    host_vec(t)
}

/// Greedy NMS exactly like torchvision's CPU kernel (IoU in f32, suppress when `IoU > thr`),
/// run independently per category `cats` (all boxes one category when `None`) and visited in
/// one global order: descending score, ties by index (the order torchvision sorts the kept
/// boxes into at the end). Within a category that order is the category's own, so every
/// box gets the same keep/suppress decision as per-category NMS; kept boxes come out in the
/// final order, which lets the search stop after `max_keep` of them (callers truncate to that
/// many: `post_nms_top_n`, `detections_per_img`), skipping the quadratic work on the rest.
fn greedy_nms(
    b: &[f32],
    scores: &[f32],
    cats: Option<&[i64]>,
    iou_threshold: f64,
    max_keep: usize,
) -> Vec<usize> {
    let n = scores.len();
    let order = order_by_score(scores, 0..n);
    // Each category's boxes in the global order, and each box's place in its category's list.
    let mut lists: Vec<Vec<usize>> = Vec::new();
    let mut list_of = vec![0usize; n];
    let mut place = vec![0usize; n];
    match cats {
        None => {
            for (k, &i) in order.iter().enumerate() {
                place[i] = k;
            }
            lists.push(order.clone());
        }
        Some(c) => {
            let mut ids: Vec<i64> = c.to_vec();
            ids.sort_unstable();
            ids.dedup();
            lists.resize(ids.len(), Vec::new());
            for &i in &order {
                // `ids` holds every category of `c`, so the search always succeeds.
                let l = ids.binary_search(&c[i]).unwrap_or(0);
                list_of[i] = l;
                place[i] = lists[l].len();
                lists[l].push(i);
            }
        }
    }
    let area: Vec<f32> = (0..n)
        .map(|i| (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]))
        .collect();
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for &i in &order {
        if keep.len() >= max_keep {
            break;
        }
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let (ix1, iy1, ix2, iy2) = (b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]);
        for &j in &lists[list_of[i]][place[i] + 1..] {
            if suppressed[j] {
                continue;
            }
            let xx1 = ix1.max(b[4 * j]);
            let yy1 = iy1.max(b[4 * j + 1]);
            let xx2 = ix2.min(b[4 * j + 2]);
            let yy2 = iy2.min(b[4 * j + 3]);
            let w = (xx2 - xx1).max(0.0);
            let h = (yy2 - yy1).max(0.0);
            let inter = w * h;
            let ovr = inter / (area[i] + area[j] - inter);
            if f64::from(ovr) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Indices sorted by descending score; ties keep index order (stable sort, like torch's CPU sort).
fn order_by_score(scores: &[f32], subset: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut order: Vec<usize> = subset.collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    order
}

fn keep_tensor(keep: Vec<usize>, device: Device) -> Result<Tensor> {
    let keep: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
    Ok(Tensor::f_from_slice(&keep)?.f_to_device(device)?)
}

/// torchvision `ops.nms`: indices (int64, on `boxes`' device) of kept boxes, by descending score.
/// Runs on the CPU (boxes are copied there).
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Tensor> {
    nms_top(boxes, scores, iou_threshold, usize::MAX)
}

/// [`nms`] truncated to its first `max_keep` indices (computed without the rest).
pub fn nms_top(
    boxes: &Tensor,
    scores: &Tensor,
    iou_threshold: f64,
    max_keep: usize,
) -> Result<Tensor> {
    let device = boxes.device();
    let b = to_vec_f32(boxes)?;
    let s = to_vec_f32(scores)?;
    keep_tensor(greedy_nms(&b, &s, None, iou_threshold, max_keep), device)
}

/// Boxes up to this many elements use torchvision's coordinate-offset trick on CPU (`boxes.py:86`).
const COORDINATE_TRICK_MAX_NUMEL: i64 = 4000;

/// torchvision `ops.batched_nms`: NMS independently per category `idxs`; kept indices by descending
/// score. Follows torchvision's CPU dispatch: the coordinate-offset trick for `boxes.numel() <= 4000`,
/// otherwise NMS per category.
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &Tensor,
    iou_threshold: f64,
) -> Result<Tensor> {
    batched_nms_top(boxes, scores, idxs, iou_threshold, usize::MAX)
}

/// [`batched_nms`] truncated to its first `max_keep` indices, computed without the rest (see
/// `greedy_nms`): `batched_nms(..)[:max_keep]` exactly.
pub fn batched_nms_top(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &Tensor,
    iou_threshold: f64,
    max_keep: usize,
) -> Result<Tensor> {
    let device = boxes.device();
    if boxes.numel() == 0 || max_keep == 0 {
        return Ok(Tensor::f_zeros([0], (Kind::Int64, device))?);
    }
    if boxes.numel() as i64 <= COORDINATE_TRICK_MAX_NUMEL {
        // `_batched_nms_coordinate_trick` (boxes.py:93-110), same f32 tensor ops.
        let boxes = boxes.f_to_device(Device::Cpu)?;
        let max_coordinate = boxes.f_max()?;
        let one = Tensor::f_from_slice(&[1i64])?
            .f_to_kind(boxes.kind())?
            .f_squeeze()?;
        let offsets = idxs
            .f_to_device(Device::Cpu)?
            .f_to_kind(boxes.kind())?
            .f_mul(&max_coordinate.f_add(&one)?)?;
        let boxes_for_nms = boxes.f_add(&offsets.f_unsqueeze(1)?)?;
        return nms_top(&boxes_for_nms, scores, iou_threshold, max_keep)?
            .f_to_device(device)
            .map_err(Into::into);
    }
    // `_batched_nms_vanilla` (boxes.py:113-126): NMS per category, kept boxes sorted by score.
    let b = to_vec_f32(boxes)?;
    let s = to_vec_f32(scores)?;
    let c = to_vec_i64(idxs)?;
    keep_tensor(
        greedy_nms(&b, &s, Some(&c), iou_threshold, max_keep),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_xform_clip_is_log_1000_over_16() {
        assert_eq!(BBOX_XFORM_CLIP, (1000.0f64 / 16.0).ln());
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let props =
            Tensor::from_slice(&[0.0f32, 0.0, 10.0, 20.0, 5.0, 5.0, 30.0, 15.0]).view([2, 4]);
        let gt = Tensor::from_slice(&[1.0f32, 2.0, 12.0, 18.0, 4.0, 6.0, 28.0, 17.0]).view([2, 4]);
        let codes = coder.encode(&gt, &props).unwrap();
        let back = coder.decode(&codes, &props).unwrap();
        let diff = (back - gt).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn nms_suppresses_overlaps_strictly_above_threshold() {
        let boxes = Tensor::from_slice(&[
            0.0f32, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 5.0, 20.0, 20.0, 30.0, 30.0,
        ])
        .view([3, 4]);
        let scores = Tensor::from_slice(&[0.9f32, 0.8, 0.7]);
        // IoU(0, 1) = 0.5: kept at threshold 0.5 (strict `>`), suppressed at 0.4.
        let keep = nms(&boxes, &scores, 0.5).unwrap();
        assert_eq!(Vec::<i64>::try_from(&keep).unwrap(), vec![0, 1, 2]);
        let keep = nms(&boxes, &scores, 0.4).unwrap();
        assert_eq!(Vec::<i64>::try_from(&keep).unwrap(), vec![0, 2]);
    }

    /// Per-category greedy NMS written the plain way (torchvision's `_batched_nms_vanilla`).
    fn reference_batched(b: &[f32], s: &[f32], c: &[i64], thr: f64) -> Vec<i64> {
        let mut cats = c.to_vec();
        cats.sort_unstable();
        cats.dedup();
        let mut keep = Vec::new();
        for cat in cats {
            let order = order_by_score(s, (0..s.len()).filter(|&i| c[i] == cat));
            let mut dead = vec![false; s.len()];
            for (k, &i) in order.iter().enumerate() {
                if dead[i] {
                    continue;
                }
                keep.push(i);
                for &j in &order[k + 1..] {
                    let inter = (b[4 * i + 2].min(b[4 * j + 2]) - b[4 * i].max(b[4 * j])).max(0.0)
                        * (b[4 * i + 3].min(b[4 * j + 3]) - b[4 * i + 1].max(b[4 * j + 1]))
                            .max(0.0);
                    let area = |k: usize| (b[4 * k + 2] - b[4 * k]) * (b[4 * k + 3] - b[4 * k + 1]);
                    if f64::from(inter / (area(i) + area(j) - inter)) > thr {
                        dead[j] = true;
                    }
                }
            }
        }
        keep.sort_unstable();
        order_by_score(s, keep.into_iter())
            .into_iter()
            .map(|i| i as i64)
            .collect()
    }

    #[test]
    fn early_stopped_batched_nms_is_the_prefix_of_per_category_nms() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let mut unit = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        // 3000 boxes (vanilla path) and 600 (coordinate trick), 9 categories, clustered boxes
        // so that many overlap, scores on a coarse grid so that ties occur.
        for n in [3000usize, 600] {
            let mut b = Vec::with_capacity(4 * n);
            let (mut s, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                let (x, y) = (unit() * 200.0, unit() * 200.0);
                let (w, h) = (5.0 + unit() * 60.0, 5.0 + unit() * 60.0);
                b.extend_from_slice(&[x, y, x + w, y + h]);
                s.push((unit() * 50.0).floor() / 50.0);
                c.push((unit() * 9.0) as i64);
            }
            let expected = reference_batched(&b, &s, &c, 0.5);
            assert!(
                expected.len() > 100 && expected.len() < n,
                "{}",
                expected.len()
            );
            let boxes = Tensor::from_slice(&b).view([n as i64, 4]);
            let (scores, cats) = (Tensor::from_slice(&s), Tensor::from_slice(&c));
            let all =
                Vec::<i64>::try_from(&batched_nms(&boxes, &scores, &cats, 0.5).unwrap()).unwrap();
            if n > 1000 {
                assert_eq!(all, expected);
            }
            for k in [1usize, 37, 100, all.len(), all.len() + 5] {
                let top = batched_nms_top(&boxes, &scores, &cats, 0.5, k).unwrap();
                let top = Vec::<i64>::try_from(&top).unwrap();
                assert_eq!(top, all[..k.min(all.len())], "n {n}, k {k}");
            }
        }
    }
}
