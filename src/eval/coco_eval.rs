//! COCO detection and instance-segmentation evaluation: a faithful port of pycocotools
//! `COCOeval` (`pycocotools/cocoeval.py`, with `maskUtils.iou` from `common/maskApi.c`).
//!
//! [`evaluate`] takes plain annotations and returns the 12 summary numbers pycocotools
//! prints, the full `precision` / `recall` / `scores` arrays of `accumulate`, per-class AP
//! and precision-recall curves for a GUI. [`from_coco_json`] reads a COCO ground-truth file
//! and a COCO results file the way `COCO()` + `COCO.loadRes` + `COCOeval` do.
//!
//! Work per (image, category) is independent (cocoeval.py `evaluateImg`) and runs on a few
//! scoped threads; `accumulate` runs in parallel over categories.
//!
//! Known deviations from pycocotools, all in inputs pycocotools mishandles or rejects:
//! a detection matched to a ground truth whose annotation `id` is 0 counts as matched here
//! (pycocotools stores the id and tests it for non-zero, cocoeval.py `dtm==0`), and an
//! empty results list evaluates to zeros (pycocotools `loadRes` raises `IndexError`).
//!
//! Why one file over 800 lines: it follows `cocoeval.py` function by function (`evaluate`,
//! `accumulate`, `summarize`), so reading it beside the reference stays a side-by-side diff.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::Value;

use crate::dataset::mask::MaskError;
use crate::dataset::rle::bbox_iou;
use crate::dataset::{Rle, polygon};

/// Number of area ranges (cocoeval.py `Params.areaRngLbl`: all, small, medium, large).
pub const NUM_AREAS: usize = 4;
/// Number of max-detection settings (cocoeval.py `Params.maxDets = [1, 10, 100]`).
pub const NUM_MAX_DETS: usize = 3;
/// Labels of the 12 summary numbers, in [`EvalResult::stats`] order (cocoeval.py `_summarizeDets`).
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// A ground-truth annotation (one entry of a COCO `annotations` list).
#[derive(Debug, Clone, PartialEq)]
pub struct GtAnn {
    /// Image the annotation belongs to.
    pub image_id: i64,
    /// Category of the annotation.
    pub category_id: i64,
    /// Crowd region: never a false negative; IoU against it is intersection / area(dt).
    pub iscrowd: bool,
    /// The annotation's `area` field, used for the area ranges (not recomputed).
    pub area: f64,
    /// Box `[x, y, w, h]`, used for [`IouType::Bbox`].
    pub bbox: [f64; 4],
    /// Mask, required for [`IouType::Segm`].
    pub rle: Option<Rle>,
}

/// A detection (one entry of a COCO results list).
#[derive(Debug, Clone, PartialEq)]
pub struct DtAnn {
    /// Image the detection belongs to.
    pub image_id: i64,
    /// Predicted category.
    pub category_id: i64,
    /// Confidence; higher first.
    pub score: f64,
    /// Area used for the area ranges. pycocotools `loadRes` sets it to `w * h` of the box when
    /// the results carry boxes, else to the mask area (see [`DtAnn::area_for`]).
    pub area: f64,
    /// Box `[x, y, w, h]`, used for [`IouType::Bbox`].
    pub bbox: [f64; 4],
    /// Mask, required for [`IouType::Segm`].
    pub rle: Option<Rle>,
}

impl DtAnn {
    /// The area pycocotools `loadRes` gives a detection: the box's `w * h` when results carry
    /// boxes (coco.py: `ann['area'] = bb[2]*bb[3]`), else the mask's pixel count
    /// (`ann['area'] = maskUtils.area(ann['segmentation'])`).
    pub fn area_for(bbox: Option<&[f64; 4]>, rle: Option<&Rle>) -> f64 {
        match (bbox, rle) {
            (Some(b), _) => b[2] * b[3],
            (None, Some(r)) => r.area() as f64,
            (None, None) => 0.0,
        }
    }

    /// A detection given with its box `[x, y, w, h]`: its area is the box's `w * h`, as
    /// `loadRes` sets it for results that carry boxes ([`DtAnn::area_for`]).
    pub fn with_box(
        image_id: i64,
        category_id: i64,
        score: f64,
        bbox: [f64; 4],
        rle: Option<Rle>,
    ) -> Self {
        Self {
            image_id,
            category_id,
            score,
            area: Self::area_for(Some(&bbox), rle.as_ref()),
            bbox,
            rle,
        }
    }
}

/// What the IoU is computed on (cocoeval.py `Params.iouType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IouType {
    /// Boxes (`maskUtils.iou` on `[x, y, w, h]`, no +1).
    Bbox,
    /// Masks (`maskUtils.iou` on RLEs).
    Segm,
}

impl IouType {
    /// pycocotools' name: `"bbox"` or `"segm"`.
    pub fn name(self) -> &'static str {
        match self {
            IouType::Bbox => "bbox",
            IouType::Segm => "segm",
        }
    }
}

/// Evaluation parameters; [`Default`] is pycocotools `Params.setDetParams`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalParams {
    /// Max detections per image and category, sorted ascending by [`evaluate`] (`[1, 10, 100]`).
    pub max_dets: [usize; NUM_MAX_DETS],
    /// IoU thresholds (`np.linspace(.5, 0.95, 10)`).
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds (`np.linspace(.0, 1.00, 101)`).
    pub rec_thrs: Vec<f64>,
    /// Inclusive area ranges for all, small, medium, large (`[0, 1e10], [0, 32²], [32², 96²], [96², 1e10]`).
    pub area_ranges: [[f64; 2]; NUM_AREAS],
}

/// `np.linspace(start, stop, num)` value for value (numpy: `i * step + start`, last = `stop`).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

impl Default for EvalParams {
    fn default() -> Self {
        // cocoeval.py Params.setDetParams.
        EvalParams {
            max_dets: [1, 10, 100],
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            area_ranges: [
                [0.0, 1e10],
                [0.0, 32.0 * 32.0],
                [32.0 * 32.0, 96.0 * 96.0],
                [96.0 * 96.0, 1e10],
            ],
        }
    }
}

/// Precision of one category over the recall thresholds, at IoU 0.5 and 0.75 (area all,
/// the largest max-detections), for plotting.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// The category.
    pub category_id: i64,
    /// Precision at each recall threshold for IoU 0.5; all -1 when the category has no GT.
    pub precision_50: Vec<f32>,
    /// Precision at each recall threshold for IoU 0.75; all -1 when the category has no GT.
    pub precision_75: Vec<f32>,
}

/// Everything `COCOeval.accumulate` + `summarize` produce.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// The IoU type evaluated.
    pub iou_type: IouType,
    /// AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl (`COCOeval.stats`);
    /// -1 where pycocotools gives -1 (no ground truth in that slice).
    pub stats: [f64; 12],
    /// Evaluated image ids, sorted (`Params.imgIds`).
    pub image_ids: Vec<i64>,
    /// Evaluated category ids, sorted: the `K` axis (`Params.catIds`).
    pub category_ids: Vec<i64>,
    /// AP per category (precision averaged over IoU and recall thresholds, area all, max
    /// detections 100); -1 for a category without ground truth.
    pub per_class_ap: Vec<(i64, f64)>,
    /// IoU thresholds used (the `T` axis).
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds used (the `R` axis).
    pub rec_thrs: Vec<f64>,
    /// Max detections used, sorted (the `M` axis).
    pub max_dets: [usize; NUM_MAX_DETS],
    /// `[T, R, K, A, M]`, the shape of `precision` and `scores`.
    pub dims: [usize; 5],
    /// `eval['precision']`, row-major `[T, R, K, A, M]`; -1 where absent.
    pub precision: Vec<f32>,
    /// `eval['recall']`, row-major `[T, K, A, M]`; -1 where absent.
    pub recall: Vec<f32>,
    /// `eval['scores']`, row-major `[T, R, K, A, M]`: detection score at each recall threshold.
    pub scores: Vec<f32>,
    /// Precision-recall curves per category, in `category_ids` order.
    pub pr_curves: Vec<PrCurve>,
}

impl EvalResult {
    /// Index into [`EvalResult::precision`] / [`EvalResult::scores`].
    pub fn precision_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        let [_, nr, nk, na, nm] = self.dims;
        (((t * nr + r) * nk + k) * na + a) * nm + m
    }

    /// Index into [`EvalResult::recall`].
    pub fn recall_index(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        let [_, _, nk, na, nm] = self.dims;
        ((t * nk + k) * na + a) * nm + m
    }

    /// The summary in pycocotools' `summarize()` layout, one line per number
    /// (cocoeval.py `_summarize` format string).
    pub fn summary_lines(&self) -> Vec<String> {
        let [m0, m1, m2] = self.max_dets;
        let rows: [(bool, &str, &str, usize); 12] = [
            (true, "0.50:0.95", "all", m2),
            (true, "0.50", "all", m2),
            (true, "0.75", "all", m2),
            (true, "0.50:0.95", "small", m2),
            (true, "0.50:0.95", "medium", m2),
            (true, "0.50:0.95", "large", m2),
            (false, "0.50:0.95", "all", m0),
            (false, "0.50:0.95", "all", m1),
            (false, "0.50:0.95", "all", m2),
            (false, "0.50:0.95", "small", m2),
            (false, "0.50:0.95", "medium", m2),
            (false, "0.50:0.95", "large", m2),
        ];
        rows.iter()
            .zip(self.stats)
            .map(|(&(ap, thr, area, md), v)| {
                let (title, short) = if ap {
                    ("Average Precision", "(AP)")
                } else {
                    ("Average Recall", "(AR)")
                };
                format!(
                    " {title:<18} {short} @[ IoU={thr:<9} | area={area:>6} | maxDets={md:>3} ] = {v:0.3}"
                )
            })
            .collect()
    }
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The JSON does not have the COCO shape.
    #[error("bad COCO JSON: {0}")]
    Format(String),
    /// A results entry names an image the ground truth does not have (coco.py loadRes assert).
    #[error("results do not correspond to the ground truth: unknown image id {0}")]
    UnknownImage(i64),
    /// A segmentation evaluation met an annotation without a mask.
    #[error("segm evaluation needs a mask on every {what} annotation (index {index})")]
    MissingMask {
        /// `"ground-truth"` or `"detection"`.
        what: &'static str,
        /// Index in the input slice.
        index: usize,
    },
    /// A mask could not be decoded or rasterised.
    #[error("bad mask: {0}")]
    Mask(#[from] MaskError),
}

/// numpy's sort order for `-score` (NaN last), i.e. highest score first; used with a stable
/// sort like `np.argsort(-scores, kind='mergesort')` (cocoeval.py evaluateImg / accumulate).
fn by_score_desc(a: f64, b: f64) -> Ordering {
    let (x, y) = (-a, -b);
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// A mask prepared for IoU: its `rleToBbox` box, area, size and foreground intervals in
/// column-major pixel order.
struct MaskInfo {
    bbox: [f64; 4],
    area: u64,
    height: u32,
    width: u32,
    /// Range into the shared interval buffer.
    start: usize,
    end: usize,
}

/// Appends the foreground runs of `rle` as `[begin, end)` pixel intervals.
fn push_mask(rle: &Rle, intervals: &mut Vec<(u64, u64)>, out: &mut Vec<MaskInfo>) {
    let start = intervals.len();
    let mut pos = 0u64;
    for (j, &c) in rle.counts.iter().enumerate() {
        let next = pos + u64::from(c);
        if j % 2 == 1 && c > 0 {
            intervals.push((pos, next));
        }
        pos = next;
    }
    out.push(MaskInfo {
        bbox: rle.to_bbox(),
        area: rle.area(),
        height: rle.height,
        width: rle.width,
        start,
        end: intervals.len(),
    });
}

/// Pixels in both interval lists.
fn intersection(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut s) = (0usize, 0usize, 0u64);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if hi > lo {
            s += hi - lo;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    s
}

/// maskApi.c `rleIou` for one pair: box prefilter, -1 on size mismatch, i/u with u = area(dt)
/// for a crowd ground truth, 0 without overlap.
fn mask_iou(d: &MaskInfo, g: &MaskInfo, iv: &[(u64, u64)], crowd: bool) -> f64 {
    if bbox_iou(&d.bbox, &g.bbox, crowd) <= 0.0 {
        return 0.0;
    }
    if d.height != g.height || d.width != g.width {
        return -1.0;
    }
    let i = intersection(&iv[d.start..d.end], &iv[g.start..g.end]);
    if i == 0 {
        return 0.0;
    }
    let u = if crowd { d.area } else { d.area + g.area - i };
    i as f64 / u as f64
}

/// Result of `evaluateImg` for one (image, category), for all area ranges at once.
struct CellEval {
    /// Scores of the kept detections, highest first (`dtScores`).
    scores: Vec<f64>,
    /// `[A][T][D]` flags: bit 0 matched (`dtMatches != 0`), bit 1 ignored (`dtIgnore`).
    flags: Vec<u8>,
    /// Non-ignored ground truths per area range (`count_nonzero(gtIg == 0)`).
    npig: [usize; NUM_AREAS],
}

const MATCHED: u8 = 1;
const IGNORED: u8 = 2;

/// Reusable buffers of one worker.
#[derive(Default)]
struct Scratch {
    dt_order: Vec<usize>,
    ious: Vec<f64>,
    intervals: Vec<(u64, u64)>,
    dt_masks: Vec<MaskInfo>,
    gt_masks: Vec<MaskInfo>,
    gt_ig: Vec<bool>,
    gt_order: Vec<usize>,
    gt_matched: Vec<bool>,
}

/// Shared, read-only inputs of the per-cell work.
struct Ctx<'a> {
    gts: &'a [GtAnn],
    dts: &'a [DtAnn],
    iou_type: IouType,
    params: &'a EvalParams,
    max_det: usize,
}

/// cocoeval.py `computeIoU` + `evaluateImg` (for every area range, with `maxDet = maxDets[-1]`)
/// of one (image, category); `None` when it has neither ground truth nor detections.
fn eval_cell(ctx: &Ctx, gt_idx: &[usize], dt_idx: &[usize], s: &mut Scratch) -> Option<CellEval> {
    if gt_idx.is_empty() && dt_idx.is_empty() {
        return None;
    }
    // cocoeval.py computeIoU: `np.argsort([-d['score'] for d in dt], kind='mergesort')`,
    // then `dt[0:p.maxDets[-1]]`.
    s.dt_order.clear();
    s.dt_order.extend_from_slice(dt_idx);
    s.dt_order
        .sort_by(|&a, &b| by_score_desc(ctx.dts[a].score, ctx.dts[b].score));
    s.dt_order.truncate(ctx.max_det);
    let nd = s.dt_order.len();
    let ng = gt_idx.len();

    // cocoeval.py computeIoU: `maskUtils.iou(d, g, iscrowd)`, rows dt, columns gt.
    s.ious.clear();
    if nd > 0 && ng > 0 {
        match ctx.iou_type {
            IouType::Bbox => {
                for &d in &s.dt_order {
                    let db = &ctx.dts[d].bbox;
                    for &g in gt_idx {
                        let gt = &ctx.gts[g];
                        s.ious.push(bbox_iou(db, &gt.bbox, gt.iscrowd));
                    }
                }
            }
            IouType::Segm => {
                s.intervals.clear();
                s.dt_masks.clear();
                s.gt_masks.clear();
                for &d in &s.dt_order {
                    // Checked non-empty in `evaluate`.
                    if let Some(r) = &ctx.dts[d].rle {
                        push_mask(r, &mut s.intervals, &mut s.dt_masks);
                    }
                }
                for &g in gt_idx {
                    if let Some(r) = &ctx.gts[g].rle {
                        push_mask(r, &mut s.intervals, &mut s.gt_masks);
                    }
                }
                for dm in &s.dt_masks {
                    for (gm, &g) in s.gt_masks.iter().zip(gt_idx) {
                        s.ious
                            .push(mask_iou(dm, gm, &s.intervals, ctx.gts[g].iscrowd));
                    }
                }
            }
        }
    }

    let nt = ctx.params.iou_thrs.len();
    let mut flags = vec![0u8; NUM_AREAS * nt * nd];
    let mut npig = [0usize; NUM_AREAS];
    for (a, rng) in ctx.params.area_ranges.iter().enumerate() {
        let out_of_range = |area: f64| area < rng[0] || area > rng[1];
        // cocoeval.py evaluateImg: `g['ignore'] or (g['area']<aRng[0] or g['area']>aRng[1])`,
        // with `gt['ignore'] = gt['iscrowd']` from `_prepare`.
        s.gt_ig.clear();
        s.gt_ig.extend(
            gt_idx
                .iter()
                .map(|&g| ctx.gts[g].iscrowd || out_of_range(ctx.gts[g].area)),
        );
        npig[a] = s.gt_ig.iter().filter(|&&ig| !ig).count();
        // `gtind = np.argsort([g['_ignore'] for g in gt], kind='mergesort')`.
        s.gt_order.clear();
        s.gt_order.extend(0..ng);
        let gt_ig = &s.gt_ig;
        s.gt_order.sort_by_key(|&j| gt_ig[j]);

        let block = &mut flags[a * nt * nd..(a + 1) * nt * nd];
        // `if not len(ious)==0:` the matching loop.
        if !s.ious.is_empty() {
            for (t, &thr) in ctx.params.iou_thrs.iter().enumerate() {
                s.gt_matched.clear();
                s.gt_matched.resize(ng, false);
                for d in 0..nd {
                    let row = &s.ious[d * ng..(d + 1) * ng];
                    // `iou = min([t,1-1e-10])`, `m = -1`.
                    let mut best = thr.min(1.0 - 1e-10);
                    let mut m: Option<usize> = None;
                    for (pos, &j) in s.gt_order.iter().enumerate() {
                        // `if gtm[tind,gind]>0 and not iscrowd[gind]: continue`
                        if s.gt_matched[pos] && !ctx.gts[gt_idx[j]].iscrowd {
                            continue;
                        }
                        // `if m>-1 and gtIg[m]==0 and gtIg[gind]==1: break`
                        if let Some(mp) = m
                            && !s.gt_ig[s.gt_order[mp]]
                            && s.gt_ig[j]
                        {
                            break;
                        }
                        // `if ious[dind,gind] < iou: continue`
                        if row[j] < best {
                            continue;
                        }
                        best = row[j];
                        m = Some(pos);
                    }
                    if let Some(mp) = m {
                        // `dtIg[tind,dind] = gtIg[m]`, `dtm[tind,dind] = gt[m]['id']`.
                        let mut f = MATCHED;
                        if s.gt_ig[s.gt_order[mp]] {
                            f |= IGNORED;
                        }
                        block[t * nd + d] = f;
                        s.gt_matched[mp] = true;
                    }
                }
            }
        }
        // `dtIg = np.logical_or(dtIg, np.logical_and(dtm==0, a))`: unmatched detections
        // outside the area range are ignored.
        for (d, &di) in s.dt_order.iter().enumerate() {
            if out_of_range(ctx.dts[di].area) {
                for t in 0..nt {
                    let f = &mut block[t * nd + d];
                    if *f & MATCHED == 0 {
                        *f |= IGNORED;
                    }
                }
            }
        }
    }
    Some(CellEval {
        scores: s.dt_order.iter().map(|&d| ctx.dts[d].score).collect(),
        flags,
        npig,
    })
}

/// `accumulate` output of one category: `[T][R][A][M]` precision and scores, `[T][A][M]` recall.
struct CatAcc {
    precision: Vec<f64>,
    scores: Vec<f64>,
    recall: Vec<f64>,
}

/// cocoeval.py `accumulate` for category `k`: `cells` holds its `evaluateImg` results in
/// image order.
fn accumulate_cat(cells: &[&CellEval], params: &EvalParams, max_dets: &[usize; 3]) -> CatAcc {
    let nt = params.iou_thrs.len();
    let nr = params.rec_thrs.len();
    let (na, nm) = (NUM_AREAS, NUM_MAX_DETS);
    let mut acc = CatAcc {
        precision: vec![-1.0; nt * nr * na * nm],
        scores: vec![-1.0; nt * nr * na * nm],
        recall: vec![-1.0; nt * na * nm],
    };
    // `E = [e for e in E if not e is None]; if len(E) == 0: continue`
    if cells.is_empty() {
        return acc;
    }
    // `dtScores = np.concatenate([e['dtScores'][0:maxDet] for e in E])`, then
    // `np.argsort(-dtScores, kind='mergesort')`. A stable sort commutes with dropping
    // entries, so one sort of all kept detections serves every maxDet.
    let mut entries: Vec<(f64, u32, u32)> = Vec::new();
    for (c, cell) in cells.iter().enumerate() {
        for (r, &sc) in cell.scores.iter().enumerate() {
            entries.push((sc, c as u32, r as u32));
        }
    }
    entries.sort_by(|a, b| by_score_desc(a.0, b.0));

    let mut rc: Vec<f64> = Vec::with_capacity(entries.len());
    let mut pr: Vec<f64> = Vec::with_capacity(entries.len());
    let mut ss: Vec<f64> = Vec::with_capacity(entries.len());
    let mut flag_idx: Vec<(usize, usize, usize)> = Vec::with_capacity(entries.len());
    for a in 0..na {
        // `npig = np.count_nonzero(gtIg==0); if npig == 0: continue`
        let npig: usize = cells.iter().map(|c| c.npig[a]).sum();
        if npig == 0 {
            continue;
        }
        for (m, &max_det) in max_dets.iter().enumerate() {
            flag_idx.clear();
            ss.clear();
            for &(sc, c, r) in &entries {
                let (c, r) = (c as usize, r as usize);
                if r < max_det {
                    flag_idx.push((c, r, cells[c].scores.len()));
                    ss.push(sc);
                }
            }
            let nd = flag_idx.len();
            for t in 0..nt {
                // `tps = dtm & ~dtIg`, `fps = ~dtm & ~dtIg`, cumulative sums.
                rc.clear();
                pr.clear();
                let (mut tp, mut fp) = (0.0f64, 0.0f64);
                for &(c, r, d) in &flag_idx {
                    let f = cells[c].flags[(a * nt + t) * d + r];
                    if f & IGNORED == 0 {
                        if f & MATCHED != 0 {
                            tp += 1.0;
                        } else {
                            fp += 1.0;
                        }
                    }
                    // `rc = tp / npig`, `pr = tp / (fp+tp+np.spacing(1))`.
                    rc.push(tp / npig as f64);
                    pr.push(tp / (fp + tp + f64::EPSILON));
                }
                // `recall[t,k,a,m] = rc[-1] if nd else 0`
                acc.recall[(t * na + a) * nm + m] = rc.last().copied().unwrap_or(0.0);
                // Precision made monotone from the right.
                for i in (1..nd).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                // `inds = np.searchsorted(rc, p.recThrs, side='left')`; the `try/except`
                // leaves zeros from the first index past the end on.
                let mut stopped = false;
                for (ri, &x) in params.rec_thrs.iter().enumerate() {
                    let o = ((t * nr + ri) * na + a) * nm + m;
                    let pi = rc.partition_point(|&v| v < x);
                    if stopped || pi >= nd {
                        stopped = true;
                        acc.precision[o] = 0.0;
                        acc.scores[o] = 0.0;
                    } else {
                        acc.precision[o] = pr[pi];
                        acc.scores[o] = ss[pi];
                    }
                }
            }
        }
    }
    acc
}

/// Worker threads: the machine's parallelism, at most 8, at least 1.
fn num_threads(work: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(work.max(1))
}

/// Runs `f` on contiguous chunks of `0..n` on scoped threads; results in order.
fn par_chunks<T: Send>(n: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    let threads = num_threads(n);
    if threads <= 1 {
        return f(0..n);
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let range = (i * chunk).min(n)..((i + 1) * chunk).min(n);
                let f = &f;
                scope.spawn(move || f(range))
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Sorted unique ids (`np.unique`).
fn unique_sorted(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Groups annotation indices by (image, category) cell, keeping input order inside a cell
/// (coco.py `imgToAnns` + `getAnnIds` order). Returns offsets (`cells + 1`) and indices.
fn group_cells(
    keys: impl Iterator<Item = Option<usize>>,
    cells: usize,
) -> (Vec<usize>, Vec<usize>) {
    let keys: Vec<Option<usize>> = keys.collect();
    let mut offsets = vec![0usize; cells + 1];
    for &c in keys.iter().flatten() {
        offsets[c + 1] += 1;
    }
    for i in 0..cells {
        offsets[i + 1] += offsets[i];
    }
    let mut fill = offsets.clone();
    let mut idx = vec![0usize; offsets[cells]];
    for (i, key) in keys.iter().enumerate() {
        if let Some(c) = *key {
            idx[fill[c]] = i;
            fill[c] += 1;
        }
    }
    (offsets, idx)
}

/// The accumulated arrays `summarize` reads (cocoeval.py `self.eval`).
struct Accumulated<'a> {
    precision: &'a [f64],
    recall: &'a [f64],
    dims: [usize; 5],
    iou_thrs: &'a [f64],
    max_dets: [usize; NUM_MAX_DETS],
}

impl Accumulated<'_> {
    /// cocoeval.py `summarize._summarize`: mean of the entries > -1 of the selected slice, or -1.
    fn summarize(&self, ap: bool, iou_thr: Option<f64>, area: usize, max_det: usize) -> f64 {
        let [nt, nr, nk, na, nm] = self.dims;
        // `t = np.where(iouThr == p.iouThrs)[0]` (exact float comparison, like numpy).
        let ts: Vec<usize> = (0..nt)
            .filter(|&t| iou_thr.is_none_or(|x| self.iou_thrs[t] == x))
            .collect();
        // `mind = [i for i, mDet in enumerate(p.maxDets) if mDet == maxDets]`
        let ms: Vec<usize> = (0..nm).filter(|&m| self.max_dets[m] == max_det).collect();
        let (mut sum, mut n) = (0.0f64, 0usize);
        let mut add = |v: f64| {
            // `s[s>-1]`
            if v > -1.0 {
                sum += v;
                n += 1;
            }
        };
        for &t in &ts {
            for k in 0..nk {
                for &m in &ms {
                    if ap {
                        for r in 0..nr {
                            add(self.precision[(((t * nr + r) * nk + k) * na + area) * nm + m]);
                        }
                    } else {
                        add(self.recall[((t * nk + k) * na + area) * nm + m]);
                    }
                }
            }
        }
        if n == 0 { -1.0 } else { sum / n as f64 }
    }
}

/// Evaluates detections against ground truth like pycocotools `COCOeval(gt, dt, iou_type)`
/// with `params.imgIds = image_ids`, `params.catIds = category_ids`, then `evaluate()`,
/// `accumulate()`, `summarize()`.
///
/// Annotations whose image or category is not listed are left out, as pycocotools'
/// `getAnnIds(imgIds=..., catIds=...)` does. Inside one (image, category) the input order
/// breaks ties (equal scores, equal IoUs), as it does in pycocotools. Errors only when a
/// [`IouType::Segm`] evaluation meets an annotation without a mask.
pub fn evaluate(
    gts: &[GtAnn],
    dts: &[DtAnn],
    image_ids: &[i64],
    category_ids: &[i64],
    iou_type: IouType,
    params: &EvalParams,
) -> Result<EvalResult, EvalError> {
    // cocoeval.py evaluate: `np.unique(p.imgIds)`, `np.unique(p.catIds)`, `sorted(p.maxDets)`.
    let img_ids = unique_sorted(image_ids);
    let cat_ids = unique_sorted(category_ids);
    let mut max_dets = params.max_dets;
    max_dets.sort_unstable();
    let img_of: HashMap<i64, usize> = img_ids.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let cat_of: HashMap<i64, usize> = cat_ids.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let (ni, nk) = (img_ids.len(), cat_ids.len());
    let cell_of =
        |img: i64, cat: i64| -> Option<usize> { Some(img_of.get(&img)? * nk + cat_of.get(&cat)?) };
    let (gt_off, gt_idx) = group_cells(
        gts.iter().map(|g| cell_of(g.image_id, g.category_id)),
        ni * nk,
    );
    let (dt_off, dt_idx) = group_cells(
        dts.iter().map(|d| cell_of(d.image_id, d.category_id)),
        ni * nk,
    );
    if iou_type == IouType::Segm {
        if let Some(&index) = gt_idx.iter().find(|&&g| gts[g].rle.is_none()) {
            return Err(EvalError::MissingMask {
                what: "ground-truth",
                index,
            });
        }
        if let Some(&index) = dt_idx.iter().find(|&&d| dts[d].rle.is_none()) {
            return Err(EvalError::MissingMask {
                what: "detection",
                index,
            });
        }
    }

    let ctx = Ctx {
        gts,
        dts,
        iou_type,
        params,
        max_det: max_dets[NUM_MAX_DETS - 1],
    };
    // cocoeval.py evaluate: `computeIoU` and `evaluateImg` for every image and category.
    let cells: Vec<Option<CellEval>> = par_chunks(ni, |images| {
        let mut scratch = Scratch::default();
        let mut out = Vec::with_capacity(images.len() * nk);
        for i in images {
            for k in 0..nk {
                let c = i * nk + k;
                out.push(eval_cell(
                    &ctx,
                    &gt_idx[gt_off[c]..gt_off[c + 1]],
                    &dt_idx[dt_off[c]..dt_off[c + 1]],
                    &mut scratch,
                ));
            }
        }
        out
    });

    // cocoeval.py accumulate, per category.
    let per_cat: Vec<CatAcc> = par_chunks(nk, |cats| {
        cats.map(|k| {
            let mine: Vec<&CellEval> = (0..ni).filter_map(|i| cells[i * nk + k].as_ref()).collect();
            accumulate_cat(&mine, params, &max_dets)
        })
        .collect()
    });

    let (nt, nr, na, nm) = (
        params.iou_thrs.len(),
        params.rec_thrs.len(),
        NUM_AREAS,
        NUM_MAX_DETS,
    );
    let dims = [nt, nr, nk, na, nm];
    let mut precision = vec![-1.0f64; nt * nr * nk * na * nm];
    let mut scores = vec![-1.0f64; precision.len()];
    let mut recall = vec![-1.0f64; nt * nk * na * nm];
    for (k, acc) in per_cat.iter().enumerate() {
        for t in 0..nt {
            for r in 0..nr {
                let src = (t * nr + r) * na * nm;
                let dst = ((t * nr + r) * nk + k) * na * nm;
                precision[dst..dst + na * nm].copy_from_slice(&acc.precision[src..src + na * nm]);
                scores[dst..dst + na * nm].copy_from_slice(&acc.scores[src..src + na * nm]);
            }
            let src = t * na * nm;
            let dst = (t * nk + k) * na * nm;
            recall[dst..dst + na * nm].copy_from_slice(&acc.recall[src..src + na * nm]);
        }
    }

    // cocoeval.py summarize._summarizeDets (stats[0] uses the literal maxDets=100).
    let accumulated = Accumulated {
        precision: &precision,
        recall: &recall,
        dims,
        iou_thrs: &params.iou_thrs,
        max_dets,
    };
    let sum = |ap, thr, area, md| accumulated.summarize(ap, thr, area, md);
    let [m0, m1, m2] = max_dets;
    let stats = [
        sum(true, None, 0, 100),
        sum(true, Some(0.5), 0, m2),
        sum(true, Some(0.75), 0, m2),
        sum(true, None, 1, m2),
        sum(true, None, 2, m2),
        sum(true, None, 3, m2),
        sum(false, None, 0, m0),
        sum(false, None, 0, m1),
        sum(false, None, 0, m2),
        sum(false, None, 1, m2),
        sum(false, None, 2, m2),
        sum(false, None, 3, m2),
    ];

    let per_class_ap = cat_ids
        .iter()
        .zip(&per_cat)
        .map(|(&id, acc)| {
            let (mut s, mut n) = (0.0, 0usize);
            for t in 0..nt {
                for r in 0..nr {
                    let v = acc.precision[((t * nr + r) * na) * nm + nm - 1];
                    if v > -1.0 {
                        s += v;
                        n += 1;
                    }
                }
            }
            (id, if n == 0 { -1.0 } else { s / n as f64 })
        })
        .collect();
    let curve = |acc: &CatAcc, thr: f64| -> Vec<f32> {
        match params.iou_thrs.iter().position(|&x| x == thr) {
            Some(t) => (0..nr)
                .map(|r| acc.precision[((t * nr + r) * na) * nm + nm - 1] as f32)
                .collect(),
            None => vec![-1.0; nr],
        }
    };
    let pr_curves = cat_ids
        .iter()
        .zip(&per_cat)
        .map(|(&category_id, acc)| PrCurve {
            category_id,
            precision_50: curve(acc, 0.5),
            precision_75: curve(acc, 0.75),
        })
        .collect();
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok(EvalResult {
        iou_type,
        stats,
        image_ids: img_ids,
        category_ids: cat_ids,
        per_class_ap,
        iou_thrs: params.iou_thrs.clone(),
        rec_thrs: params.rec_thrs.clone(),
        max_dets,
        dims,
        precision: to32(precision),
        recall: to32(recall),
        scores: to32(scores),
        pr_curves,
    })
}

// ---------------------------------------------------------------------------------------
// COCO JSON
// ---------------------------------------------------------------------------------------

/// A top-level list of the ground truth (absent means empty, as coco.py `createIndex`).
fn gt_list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], EvalError> {
    match v.get(key) {
        None => Ok(&[]),
        Some(x) => x
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| fmt_err(format!("ground truth \"{key}\" is not a list"))),
    }
}

fn fmt_err(msg: impl Into<String>) -> EvalError {
    EvalError::Format(msg.into())
}

/// An integer id as Python would hash it (ints, and floats with an integral value).
fn as_id(v: &Value, what: &str) -> Result<i64, EvalError> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(f as i64),
        _ => Err(fmt_err(format!("{what} is not an integer id: {v}"))),
    }
}

fn field<'a>(obj: &'a Value, key: &str, what: &str) -> Result<&'a Value, EvalError> {
    obj.get(key)
        .ok_or_else(|| fmt_err(format!("{what} has no \"{key}\"")))
}

fn as_num(v: &Value, what: &str) -> Result<f64, EvalError> {
    v.as_f64()
        .ok_or_else(|| fmt_err(format!("{what} is not a number: {v}")))
}

fn as_bbox(v: &Value, what: &str) -> Result<[f64; 4], EvalError> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b, c, d]) => Ok([
            as_num(a, what)?,
            as_num(b, what)?,
            as_num(c, what)?,
            as_num(d, what)?,
        ]),
        _ => Err(fmt_err(format!("{what} is not [x, y, w, h]: {v}"))),
    }
}

/// Python truthiness of a JSON value (`'iscrowd' in gt and gt['iscrowd']`).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn as_u32(v: &Value, what: &str) -> Result<u32, EvalError> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                .map(|f| f as u32)
        })
        .ok_or_else(|| fmt_err(format!("{what} is not a size: {v}")))
}

/// coco.py `annToRLE`: polygons (merged) and uncompressed RLE at the image size `(h, w)`,
/// compressed RLE as given (its own `size`).
fn segm_to_rle(segm: &Value, h: u32, w: u32, what: &str) -> Result<Rle, EvalError> {
    match segm {
        Value::Array(polys) => {
            // _mask.pyx frPyObjects: `len(pyobj[0]) == 4` means boxes, `> 4` polygons.
            let parsed: Vec<Vec<f64>> = polys
                .iter()
                .map(|p| {
                    p.as_array()
                        .ok_or_else(|| fmt_err(format!("{what}: polygon is not a list")))?
                        .iter()
                        .map(|x| as_num(x, what))
                        .collect()
                })
                .collect::<Result<_, _>>()?;
            let boxes = parsed.first().is_some_and(|p| p.len() == 4);
            let rles: Vec<Rle> = parsed
                .iter()
                .map(|p| {
                    if boxes {
                        // maskApi.c rleFrBbox: the box as a 4-point polygon.
                        let (xs, ys) = (p[0], p[1]);
                        let (xe, ye) = (
                            xs + p.get(2).copied().unwrap_or(0.0),
                            ys + p.get(3).copied().unwrap_or(0.0),
                        );
                        polygon::polygon_to_rle(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
                    } else {
                        polygon::polygon_to_rle(p, h, w)
                    }
                })
                .collect();
            crate::dataset::rle::check_size(h, w)?;
            let mut rles = rles;
            Ok(match rles.len() {
                // pycocotools raises on an empty polygon list; an empty mask is the kind reading.
                0 => Rle {
                    height: h,
                    width: w,
                    counts: vec![h * w],
                },
                1 => rles.swap_remove(0),
                _ => Rle::merge_union(&rles),
            })
        }
        Value::Object(_) => {
            let size = field(segm, "size", what)?;
            let (sh, sw) = match size.as_array().map(Vec::as_slice) {
                Some([a, b]) => (as_u32(a, what)?, as_u32(b, what)?),
                _ => return Err(fmt_err(format!("{what}: bad RLE size {size}"))),
            };
            match field(segm, "counts", what)? {
                Value::String(s) => Ok(Rle::from_compressed(sh, sw, s)?),
                Value::Array(c) => {
                    let counts = c
                        .iter()
                        .map(|x| as_u32(x, what))
                        .collect::<Result<Vec<u32>, _>>()?;
                    Ok(Rle::from_uncompressed(sh, sw, counts)?)
                }
                other => Err(fmt_err(format!("{what}: bad RLE counts {other}"))),
            }
        }
        other => Err(fmt_err(format!("{what}: bad segmentation {other}"))),
    }
}

/// Evaluates a COCO results file against a COCO ground-truth file, like
/// `COCOeval(COCO(gt), COCO(gt).loadRes(results), iou_type)` followed by `evaluate()`,
/// `accumulate()` and `summarize()` with the default [`EvalParams`].
///
/// Ground truth: `images` (`id`, `height`, `width`), `categories` (`id`) and `annotations`
/// (`image_id`, `category_id`, `area`, `bbox`, optional `iscrowd`, and for segm a polygon
/// list, an uncompressed RLE or a compressed RLE `segmentation`). Results: a list of
/// `image_id`, `category_id`, `score` with `bbox` and/or a compressed RLE `segmentation`;
/// as in coco.py `loadRes`, the first entry decides whether the detection area is the box's
/// `w * h` (it has a non-empty `bbox`) or the mask area, and box-only results get the box
/// as their mask.
pub fn from_coco_json(
    gt_json: &Value,
    results_json: &Value,
    iou_type: IouType,
) -> Result<EvalResult, EvalError> {
    let segm = iou_type == IouType::Segm;
    // coco.py createIndex: images and categories.
    let mut image_size: HashMap<i64, (Option<u32>, Option<u32>)> = HashMap::new();
    let mut image_ids = Vec::new();
    for img in gt_list(gt_json, "images")? {
        let id = as_id(field(img, "id", "image")?, "image id")?;
        let h = img
            .get("height")
            .and_then(|v| as_u32(v, "image height").ok());
        let w = img.get("width").and_then(|v| as_u32(v, "image width").ok());
        image_size.insert(id, (h, w));
        image_ids.push(id);
    }
    let category_ids = gt_list(gt_json, "categories")?
        .iter()
        .map(|c| as_id(field(c, "id", "category")?, "category id"))
        .collect::<Result<Vec<i64>, _>>()?;
    let dims_of = |image_id: i64, what: &str| -> Result<(u32, u32), EvalError> {
        match image_size.get(&image_id) {
            Some((Some(h), Some(w))) => Ok((*h, *w)),
            _ => Err(fmt_err(format!(
                "{what}: image {image_id} has no height/width"
            ))),
        }
    };

    let mut gts = Vec::new();
    for (n, ann) in gt_list(gt_json, "annotations")?.iter().enumerate() {
        let what = format!("ground-truth annotation {n}");
        let image_id = as_id(field(ann, "image_id", &what)?, &what)?;
        let category_id = as_id(field(ann, "category_id", &what)?, &what)?;
        // cocoeval.py _prepare only loads annotations of evaluated images (getAnnIds).
        if !image_size.contains_key(&image_id) {
            continue;
        }
        let rle = if segm {
            let (h, w) = dims_of(image_id, &what)?;
            Some(segm_to_rle(
                field(ann, "segmentation", &what)?,
                h,
                w,
                &what,
            )?)
        } else {
            None
        };
        let bbox = if segm {
            ann.get("bbox")
                .map(|b| as_bbox(b, &what))
                .transpose()?
                .unwrap_or([0.0; 4])
        } else {
            as_bbox(field(ann, "bbox", &what)?, &what)?
        };
        gts.push(GtAnn {
            image_id,
            category_id,
            iscrowd: truthy(ann.get("iscrowd")),
            area: as_num(field(ann, "area", &what)?, &what)?,
            bbox,
            rle,
        });
    }

    let results = results_json
        .as_array()
        .ok_or_else(|| fmt_err("results in not an array of objects"))?;
    // coco.py loadRes: `'bbox' in anns[0] and not anns[0]['bbox'] == []`.
    let box_results = results.first().is_some_and(|a| {
        a.get("bbox")
            .is_some_and(|b| b.as_array().is_none_or(|v| !v.is_empty()))
    });
    if let Some(first) = results.first()
        && !box_results
        && first.get("segmentation").is_none()
    {
        return Err(fmt_err(
            "results have neither bbox nor segmentation (only those are supported)",
        ));
    }
    let mut dts = Vec::with_capacity(results.len());
    for (n, ann) in results.iter().enumerate() {
        let what = format!("result {n}");
        let image_id = as_id(field(ann, "image_id", &what)?, &what)?;
        if !image_size.contains_key(&image_id) {
            return Err(EvalError::UnknownImage(image_id));
        }
        let category_id = as_id(field(ann, "category_id", &what)?, &what)?;
        let score = as_num(field(ann, "score", &what)?, &what)?;
        let seg_value = ann.get("segmentation");
        let dt = if box_results {
            let bbox = as_bbox(field(ann, "bbox", &what)?, &what)?;
            // coco.py loadRes: `ann['area'] = bb[2]*bb[3]`; a missing segmentation becomes
            // `[[x1, y1, x1, y2, x2, y2, x2, y1]]`.
            let rle = if segm {
                let (h, w) = dims_of(image_id, &what)?;
                Some(match seg_value {
                    Some(s) => segm_to_rle(s, h, w, &what)?,
                    None => {
                        let [x, y, bw, bh] = bbox;
                        let (x2, y2) = (x + bw, y + bh);
                        segm_to_rle(
                            &serde_json::json!([[x, y, x, y2, x2, y2, x2, y]]),
                            h,
                            w,
                            &what,
                        )?
                    }
                })
            } else {
                None
            };
            DtAnn::with_box(image_id, category_id, score, bbox, rle)
        } else {
            // coco.py loadRes: `ann['area'] = maskUtils.area(segm)`, bbox from `toBbox` if absent.
            let s = field(ann, "segmentation", &what)?;
            let (h, w) = match image_size.get(&image_id) {
                Some((Some(h), Some(w))) => (*h, *w),
                _ => (0, 0),
            };
            let rle = segm_to_rle(s, h, w, &what)?;
            let bbox = match ann.get("bbox") {
                Some(b) => as_bbox(b, &what)?,
                None => rle.to_bbox(),
            };
            DtAnn {
                image_id,
                category_id,
                score,
                area: rle.area() as f64,
                bbox,
                rle: segm.then_some(rle),
            }
        };
        dts.push(dt);
    }
    evaluate(
        &gts,
        &dts,
        &image_ids,
        &category_ids,
        iou_type,
        &EvalParams::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_match_numpy_linspace() {
        let p = EvalParams::default();
        assert_eq!(p.iou_thrs.len(), 10);
        assert_eq!(p.iou_thrs[8], 0.899_999_999_999_999_9);
        assert_eq!(p.iou_thrs[5], 0.75);
        assert_eq!(p.rec_thrs.len(), 101);
        assert_eq!(p.rec_thrs[7], 0.07);
        assert_eq!(p.rec_thrs[100], 1.0);
    }

    #[test]
    fn box_iou_crowd_divides_by_detection_area() {
        let d = [0.0, 0.0, 10.0, 10.0];
        let g = [5.0, 0.0, 10.0, 10.0];
        assert_eq!(bbox_iou(&d, &g, false), 50.0 / 150.0);
        assert_eq!(bbox_iou(&d, &g, true), 0.5);
        assert_eq!(bbox_iou(&d, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
    }
}
