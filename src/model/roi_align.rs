//! RoIAlign with libtorch ops only (`torchvision/csrc/ops/cpu/roi_align_kernel.cpp` semantics),
//! `MultiScaleRoIAlign` with its `LevelMapper` (`torchvision/ops/poolers.py`), and the
//! mask-target projection `project_masks_on_boxes` (`roi_heads.py:85-97`).
//!
//! The pooled value of a bin is `sum(samples) / count`; each sample is a bilinear combination of 4
//! feature pixels. All bins are computed by one `embedding_bag(mode = sum, per_sample_weights)` over the
//! channels-last feature table, so the forward is a fused gather and the backward a scatter-add into
//! the features (RoIs receive no gradient, as in torchvision).

use tch::{Device, Kind, Tensor};

use crate::model::box_ops::{box_area, to_vec_f32, to_vec_i64, true_indices};
use crate::model::error::{ModelError, Result};

/// `embedding_bag` mode "sum".
const EMBEDDING_BAG_SUM: i64 = 0;

/// Bilinear sample at `(y, x)` of an `h x w` map, exactly like `bilinear_interpolate` /
/// `pre_calc_for_bilinear_interpolate` of the C++ kernel: `None` outside `[-1, h] x [-1, w]`,
/// else `[(y, x, weight); 4]` in kernel order (low-low, low-high, high-low, high-high).
#[inline]
fn bilinear_taps(y: f32, x: f32, h: i64, w: i64) -> Option<[(i64, i64, f32); 4]> {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return None;
    }
    let (y_low, y_high, ly) = neighbours(y, h);
    let (x_low, x_high, lx) = neighbours(x, w);
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    Some([
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ])
}

/// The two grid indices around coordinate `v` (already inside `[-1, size]`) of an axis of
/// `size` cells and the weight of the upper one, as the C++ kernel clamps them: `v` below 0
/// counts as 0, at or past the last cell both indices are the last cell (weight 0).
#[inline]
fn neighbours(v: f32, size: i64) -> (i64, i64, f32) {
    let v = if v <= 0.0 { 0.0 } else { v };
    let low = v as i64;
    if low >= size - 1 {
        (size - 1, size - 1, 0.0)
    } else {
        (low, low + 1, v - low as f32)
    }
}

/// Per-RoI geometry of the C++ kernel, all in f32 as there.
#[derive(Debug, Clone, Copy)]
struct RoiGeometry {
    start_h: f32,
    start_w: f32,
    bin_h: f32,
    bin_w: f32,
    grid_h: i64,
    grid_w: i64,
    count: f32,
}

impl RoiGeometry {
    fn new(roi: &[f32], out: (i64, i64), scale: f64, sampling_ratio: i64, aligned: bool) -> Self {
        let off = if aligned { 0.5 } else { 0.0 };
        // `offset_rois[1] * spatial_scale - offset` is evaluated in double and stored as float.
        let start_w = (f64::from(roi[1]) * scale - off) as f32;
        let start_h = (f64::from(roi[2]) * scale - off) as f32;
        let end_w = (f64::from(roi[3]) * scale - off) as f32;
        let end_h = (f64::from(roi[4]) * scale - off) as f32;
        let mut roi_w = end_w - start_w;
        let mut roi_h = end_h - start_h;
        if !aligned {
            roi_w = roi_w.max(1.0);
            roi_h = roi_h.max(1.0);
        }
        let bin_h = roi_h / out.0 as f32;
        let bin_w = roi_w / out.1 as f32;
        let (grid_h, grid_w) = if sampling_ratio > 0 {
            (sampling_ratio, sampling_ratio)
        } else {
            (
                (roi_h / out.0 as f32).ceil() as i64,
                (roi_w / out.1 as f32).ceil() as i64,
            )
        };
        let count = (grid_h * grid_w).max(1) as f32;
        Self {
            start_h,
            start_w,
            bin_h,
            bin_w,
            grid_h: grid_h.max(0),
            grid_w: grid_w.max(0),
            count,
        }
    }

    #[inline]
    fn y(&self, ph: i64, iy: i64) -> f32 {
        self.start_h + ph as f32 * self.bin_h + (iy as f32 + 0.5) * self.bin_h / self.grid_h as f32
    }

    #[inline]
    fn x(&self, pw: i64, ix: i64) -> f32 {
        self.start_w + pw as f32 * self.bin_w + (ix as f32 + 0.5) * self.bin_w / self.grid_w as f32
    }
}

/// Tensor-op construction of bag indices/weights for a fixed `sampling_ratio > 0`
/// (same f32 op order as the kernel; runs on the features' device).
fn fixed_grid_bags(
    rois: &Tensor,
    (n, h, w): (i64, i64, i64),
    (out_h, out_w): (i64, i64),
    scale: f64,
    sr: i64,
    aligned: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let k = rois.size()[0];
    let device = rois.device();
    let opt = (Kind::Float, device);
    let off = if aligned { 0.5 } else { 0.0 };
    let rois64 = rois.f_to_kind(Kind::Double)?;
    let coord = |i: i64| -> Result<Tensor> {
        Ok((rois64.f_select(1, i)? * scale - off).f_to_kind(Kind::Float)?)
    };
    let (x1, y1, x2, y2) = (coord(1)?, coord(2)?, coord(3)?, coord(4)?);
    let (mut rw, mut rh) = (x2.f_sub(&x1)?, y2.f_sub(&y1)?);
    if !aligned {
        rw = rw.f_clamp_min(1.0)?;
        rh = rh.f_clamp_min(1.0)?;
    }
    let (bh, bw) = (rh / out_h as f64, rw / out_w as f64);
    let i = Tensor::f_arange(sr, opt)? + 0.5; // [sr]
    let coords = |start: &Tensor, bin: &Tensor, nout: i64| -> Result<Tensor> {
        // [K, nout, sr]: start + p*bin + ((i + .5)*bin)/grid
        let p = Tensor::f_arange(nout, opt)?.f_view([1, nout, 1])?;
        let bin = bin.f_view([k, 1, 1])?;
        Ok(start
            .f_view([k, 1, 1])?
            .f_add(&p.f_mul(&bin)?)?
            .f_add(&(i.f_view([1, 1, sr])?.f_mul(&bin)? / sr as f64))?)
    };
    // -> (low, high, l * valid, (1 - l) * valid)
    let prep = |t: &Tensor, size: i64| -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let valid = t
            .f_ge(-1.0)?
            .f_logical_and(&t.f_le(size as f64)?)?
            .f_to_kind(Kind::Float)?;
        let t = t.f_clamp_min(0.0)?;
        let low = t.f_floor()?.f_to_kind(Kind::Int64)?;
        let at_end = low.f_ge(size - 1)?;
        let low = low.f_masked_fill(&at_end, size - 1)?;
        let high = low.f_where_self(&at_end, &(&low + 1))?;
        let t = low.f_to_kind(Kind::Float)?.f_where_self(&at_end, &t)?;
        let l = t.f_sub(&low.f_to_kind(Kind::Float)?)?;
        let hgt = l.f_neg()?.f_add_scalar(1.0)?.f_mul(&valid)?;
        Ok((low, high, l.f_mul(&valid)?, hgt))
    };
    let (yl, yh, ly, hy) = prep(&coords(&y1, &bh, out_h)?, h)?;
    let (xl, xh, lx, hx) = prep(&coords(&x1, &bw, out_w)?, w)?;
    let batch = rois.f_select(1, 0)?.f_to_kind(Kind::Int64)?;
    if k > 0 {
        let (bmin, bmax) = (
            batch.f_min()?.int64_value(&[]),
            batch.f_max()?.int64_value(&[]),
        );
        if bmin < 0 || bmax >= n {
            return Err(ModelError::InvalidInput(format!(
                "RoI batch index out of range 0..{n}: {bmin}..={bmax}"
            )));
        }
    }
    let base = (batch * (h * w)).f_view([k, 1, 1, 1, 1])?;
    let idx = |yi: &Tensor, xi: &Tensor| -> Result<Tensor> {
        Ok(base
            .f_add(&(yi.f_view([k, out_h, 1, sr, 1])? * w))?
            .f_add(&xi.f_view([k, 1, out_w, 1, sr])?)?)
    };
    let wt = |wy: &Tensor, wx: &Tensor| -> Result<Tensor> {
        Ok(wy
            .f_view([k, out_h, 1, sr, 1])?
            .f_mul(&wx.f_view([k, 1, out_w, 1, sr])?)?)
    };
    let (bag, nb) = (4 * sr * sr, k * out_h * out_w);
    let ind = Tensor::f_stack(
        &[
            idx(&yl, &xl)?,
            idx(&yl, &xh)?,
            idx(&yh, &xl)?,
            idx(&yh, &xh)?,
        ],
        -1,
    )?
    .f_reshape([nb * bag])?;
    let psw = Tensor::f_stack(
        &[wt(&hy, &hx)?, wt(&hy, &lx)?, wt(&ly, &hx)?, wt(&ly, &lx)?],
        -1,
    )?
    .f_reshape([nb * bag])?;
    let offsets = Tensor::f_arange_start_step(0, nb * bag, bag, (Kind::Int64, device))?;
    let count = Tensor::f_full([nb, 1], (sr * sr) as f64, opt)?;
    Ok((ind, psw, offsets, count))
}

/// Rust-loop construction of bags for adaptive sampling (`sampling_ratio <= 0`), where the sample
/// grid differs per RoI. Invalid samples are simply left out of the bag (they add 0 in the kernel).
fn adaptive_grid_bags(
    rois: &Tensor,
    (n, h, w): (i64, i64, i64),
    out: (i64, i64),
    scale: f64,
    aligned: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let device = rois.device();
    let r = to_vec_f32(rois)?;
    let k = r.len() / 5;
    let mut ind: Vec<i64> = Vec::new();
    let mut psw: Vec<f32> = Vec::new();
    let mut offsets: Vec<i64> = Vec::with_capacity(k * (out.0 * out.1) as usize);
    let mut count: Vec<f32> = Vec::with_capacity(offsets.capacity());
    for roi in r.chunks_exact(5) {
        let b = roi[0] as i64;
        if b < 0 || b >= n {
            return Err(ModelError::InvalidInput(format!(
                "RoI batch index {b} out of range 0..{n}"
            )));
        }
        let g = RoiGeometry::new(roi, out, scale, 0, aligned);
        for ph in 0..out.0 {
            for pw in 0..out.1 {
                offsets.push(ind.len() as i64);
                count.push(g.count);
                for iy in 0..g.grid_h {
                    let y = g.y(ph, iy);
                    for ix in 0..g.grid_w {
                        if let Some(taps) = bilinear_taps(y, g.x(pw, ix), h, w) {
                            for (ty, tx, wt) in taps {
                                ind.push(b * h * w + ty * w + tx);
                                psw.push(wt);
                            }
                        }
                    }
                }
            }
        }
    }
    let nb = offsets.len() as i64;
    Ok((
        Tensor::f_from_slice(&ind)?.f_to_device(device)?,
        Tensor::f_from_slice(&psw)?.f_to_device(device)?,
        Tensor::f_from_slice(&offsets)?.f_to_device(device)?,
        Tensor::f_from_slice(&count)?
            .f_view([nb, 1])?
            .f_to_device(device)?,
    ))
}

/// `torchvision.ops.roi_align`: `input [N, C, H, W]` f32, `rois [K, 5]` = `(batch_idx, x1, y1, x2, y2)`
/// -> `[K, C, out_h, out_w]`. Differentiable w.r.t. `input`.
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output_size: (i64, i64),
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = input.size4()?;
    let k = rois.size()[0];
    let (out_h, out_w) = output_size;
    if k == 0 {
        return Ok(Tensor::f_zeros(
            [0, c, out_h, out_w],
            (input.kind(), input.device()),
        )?);
    }
    // Also counted inside `roi.box_pool` / `roi.mask_pool`; listed on its own by the profile.
    let _all = crate::profile::scope("roi_align");
    let rois = rois.f_to_device(input.device())?;
    let bags_scope = crate::profile::scope("roi_align.bags");
    let (ind, psw, offsets, count) = tch::no_grad(|| {
        if sampling_ratio > 0 {
            fixed_grid_bags(
                &rois,
                (n, h, w),
                output_size,
                spatial_scale,
                sampling_ratio,
                aligned,
            )
        } else {
            adaptive_grid_bags(&rois, (n, h, w), output_size, spatial_scale, aligned)
        }
    })?;
    drop(bags_scope);
    let table_scope = crate::profile::scope("roi_align.table");
    // [N*H*W, C] with unit channel stride: for N = 1 `reshape` of the permuted NCHW map is a
    // view with channel stride H*W, which sends `embedding_bag` down its scalar per-element
    // path (20x slower than its fbgemm kernel); a channels-last map needs no copy here.
    let table = input
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_view([n * h * w, c])?;
    drop(table_scope);
    let _bag_scope = crate::profile::scope("roi_align.embedding_bag");
    let psw = psw.f_to_kind(input.kind())?;
    let (bags, _, _, _) = Tensor::f_embedding_bag(
        &table,
        &ind,
        &offsets,
        false,
        EMBEDDING_BAG_SUM,
        false,
        Some(&psw),
        false,
    )?; // [K*out_h*out_w, C]
    Ok(bags
        .f_div(&count.f_to_kind(input.kind())?)?
        .f_view([k, out_h, out_w, c])?
        .f_permute([0, 3, 1, 2])?)
}

/// Pixels of the GT masks, read without widening u8 masks to f32.
enum MaskPixels {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
}

impl MaskPixels {
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            MaskPixels::Bytes(v) => f32::from(v[i]),
            MaskPixels::Floats(v) => v[i],
        }
    }
}

/// torchvision `project_masks_on_boxes`: `roi_align(gt_masks[:, None].float(), (matched_idx, box), (M, M),
/// 1.0)` with the default adaptive sampling and `aligned=False`, as a plain CPU loop (no gradient).
/// `gt_masks [G, H, W]` (any kind), `boxes [P, 4]`, `matched_idxs [P]` -> `[P, M, M]` f32 on `boxes`' device.
pub fn project_masks_on_boxes(
    gt_masks: &Tensor,
    boxes: &Tensor,
    matched_idxs: &Tensor,
    m: i64,
) -> Result<Tensor> {
    let device = boxes.device();
    let p = boxes.size()[0];
    if p == 0 {
        return Ok(Tensor::f_zeros([0, m, m], (Kind::Float, device))?);
    }
    let (g, h, w) = gt_masks.size3()?;
    let cpu = gt_masks
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    // u8/bool masks stay one byte per pixel; other kinds are read as f32
    let masks = if matches!(gt_masks.kind(), Kind::Uint8 | Kind::Bool) {
        MaskPixels::Bytes(Vec::<u8>::try_from(&cpu.f_to_kind(Kind::Uint8)?)?)
    } else {
        MaskPixels::Floats(Vec::<f32>::try_from(&cpu.f_to_kind(Kind::Float)?)?)
    };
    let bx = to_vec_f32(boxes)?; // [P * 4]
    let idx = to_vec_i64(matched_idxs)?; // [P]
    let mut out = vec![0f32; (p * m * m) as usize];
    for (r, (bb, &gi)) in bx.chunks_exact(4).zip(&idx).enumerate() {
        if gi < 0 || gi >= g {
            return Err(ModelError::InvalidInput(format!(
                "matched GT index {gi} out of range 0..{g}"
            )));
        }
        // rois use `matched_idxs.to(boxes)` (f32) as batch index, as torchvision does.
        let roi = [gi as f32, bb[0], bb[1], bb[2], bb[3]];
        let geo = RoiGeometry::new(&roi, (m, m), 1.0, 0, false);
        let plane_start = (gi * h * w) as usize;
        for ph in 0..m {
            for pw in 0..m {
                let mut val = 0f32;
                for iy in 0..geo.grid_h {
                    let y = geo.y(ph, iy);
                    for ix in 0..geo.grid_w {
                        if let Some(t) = bilinear_taps(y, geo.x(pw, ix), h, w) {
                            let v =
                                |j: usize| masks.get(plane_start + (t[j].0 * w + t[j].1) as usize);
                            val += t[0].2 * v(0) + t[1].2 * v(1) + t[2].2 * v(2) + t[3].2 * v(3);
                        }
                    }
                }
                out[(r as i64 * m * m + ph * m + pw) as usize] = val / geo.count;
            }
        }
    }
    Ok(Tensor::f_from_slice(&out)?
        .f_view([p, m, m])?
        .f_to_device(device)?)
}

/// Scale `2^round(log2(feature_h / max_image_h))` (`poolers.py:_infer_scale`, f32 log2 as there).
fn infer_scale(feature_h: i64, max_image_h: i64) -> Result<f64> {
    let approx = feature_h as f64 / max_image_h as f64;
    let lg = Tensor::f_from_slice(&[approx as f32])?
        .f_log2()?
        .f_round()?
        .double_value(&[0]);
    Ok(2f64.powf(lg))
}

/// torchvision `MultiScaleRoIAlign` over the FPN maps `'0'..'3'` (whichever exist) with the FPN
/// level mapper (`k0 = 4`, canonical size 224, eps 1e-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiScaleRoiAlign {
    /// Output height = width (7 for boxes, 14 for masks).
    pub output_size: i64,
    /// Samples per bin side (2 in Mask R-CNN).
    pub sampling_ratio: i64,
}

impl MultiScaleRoiAlign {
    /// Level index (0 = finest map) of each box (`LevelMapper.__call__`, poolers.py:67-84).
    pub fn map_levels(boxes: &Tensor, k_min: i64, k_max: i64) -> Result<Tensor> {
        let s = box_area(boxes)?.f_sqrt()?;
        let lvl = ((s / 224.0).f_log2()? + 4.0 + 1e-6).f_floor()?;
        let lvl = lvl.f_clamp(k_min as f64, k_max as f64)?;
        Ok(lvl.f_to_kind(Kind::Int64)? - k_min)
    }

    /// `features`: the pooled maps `[N, C, H_l, W_l]` (finest first); `boxes`: one `[K_i, 4]` per image
    /// in resized-image coordinates; `image_shapes`: un-padded resized sizes -> `[sum K_i, C, S, S]`.
    pub fn forward(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Tensor> {
        let first = features
            .first()
            .ok_or_else(|| ModelError::InvalidInput("no feature maps to pool from".to_owned()))?;
        let max_h = image_shapes.iter().map(|s| s.0).max().ok_or_else(|| {
            ModelError::InvalidInput("MultiScaleRoIAlign needs at least one image shape".to_owned())
        })?;
        let scales = features
            .iter()
            .map(|f| infer_scale(f.size()[2], max_h))
            .collect::<Result<Vec<f64>>>()?;
        let device = first.device();
        let ids: Vec<Tensor> = boxes
            .iter()
            .enumerate()
            .map(|(i, b)| Tensor::f_full([b.size()[0], 1], i as f64, (Kind::Float, device)))
            .collect::<std::result::Result<_, _>>()?;
        let concat = Tensor::f_cat(
            &boxes
                .iter()
                .map(|b| b.f_to_device(device))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            0,
        )?;
        let rois = Tensor::f_cat(
            &[Tensor::f_cat(&ids, 0)?, concat.f_to_kind(Kind::Float)?],
            1,
        )?; // [K, 5]
        let out = (self.output_size, self.output_size);
        if features.len() == 1 {
            return roi_align(first, &rois, out, scales[0], self.sampling_ratio, false);
        }
        let k_min = (-(scales[0] as f32).log2()) as i64;
        let k_max = (-(scales[scales.len() - 1] as f32).log2()) as i64;
        let levels = Self::map_levels(&concat, k_min, k_max)?;
        let num_rois = rois.size()[0];
        let c = first.size()[1];
        let mut result = Tensor::f_zeros([num_rois, c, out.0, out.1], (first.kind(), device))?;
        for (level, (feat, &scale)) in features.iter().zip(&scales).enumerate() {
            let idx = true_indices(&levels.f_eq(level as i64)?)?;
            if idx.size()[0] == 0 {
                continue;
            }
            let pooled = roi_align(
                feat,
                &rois.f_index_select(0, &idx)?,
                out,
                scale,
                self.sampling_ratio,
                false,
            )?;
            result = result.f_index_copy(0, &idx, &pooled)?;
        }
        Ok(result)
    }
}
