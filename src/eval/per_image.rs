//! Which images a model gets most wrong: true/false positives and false negatives per image at
//! one IoU threshold (COCOeval's greedy matching, cocoeval.py `evaluateImg`), next to the COCO
//! evaluation of the same predictions, for the Evaluate panel. The per-image counts follow the
//! user's score threshold the way every tab applies it ([`crate::infer::threshold`]); the COCO
//! AP is computed on what the bundle's own threshold keeps, as `maskstudio eval` computes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::dataset::Rle;
use crate::dataset::rle::bbox_iou;
use crate::dataset::store::Project;
use crate::eval::coco_eval::{DtAnn, EvalParams, GtAnn, IouType, evaluate};
use crate::eval::project::{Annotations, ProjectEval, predict_annotations};
use crate::infer::{Predictor, threshold};

/// Match counts of one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Detections matched to a ground-truth instance of their class.
    pub true_positives: usize,
    /// Detections matched to nothing.
    pub false_positives: usize,
    /// Ground-truth instances (not crowd) no detection matched.
    pub false_negatives: usize,
}

/// One image's errors, for the "worst images" list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageErrors {
    /// `images.id` in the project store.
    pub image_id: i64,
    /// File name relative to the project's `images/` folder.
    pub file_name: String,
    /// The counts.
    pub counts: ErrorCounts,
}

/// The COCO evaluation, per-class instance counts and per-image errors of one run over a split.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// bbox and segm COCO results and the class names.
    pub eval: ProjectEval,
    /// Category id → ground-truth instances (not crowd) in the split.
    pub gt_counts: BTreeMap<i64, u64>,
    /// Every image with at least one error, most errors (FP + FN) first.
    pub errors: Vec<ImageErrors>,
    /// The IoU threshold of `errors`.
    pub iou_threshold: f64,
    /// Detections below this score were left out of `errors` (`eval` holds those the
    /// bundle's own `box_score_thresh` keeps).
    pub min_score: f64,
}

/// Mask IoU; against a crowd mask it is intersection / area(dt).
fn mask_iou(d: &Rle, g: &Rle, crowd: bool) -> f64 {
    if !crowd {
        return d.iou(g).max(0.0);
    }
    let area = d.area();
    if area == 0 || d.height != g.height || d.width != g.width {
        return 0.0;
    }
    Rle::merge_intersection(&[d.clone(), g.clone()]).area() as f64 / area as f64
}

fn iou(dt: &DtAnn, gt: &GtAnn, iou_type: IouType) -> f64 {
    match iou_type {
        IouType::Bbox => bbox_iou(&dt.bbox, &gt.bbox, gt.iscrowd),
        IouType::Segm => match (&dt.rle, &gt.rle) {
            (Some(d), Some(g)) => mask_iou(d, g, gt.iscrowd),
            _ => 0.0,
        },
    }
}

/// Ground truths and detections of one (image, category).
type Cell<'a> = (Vec<&'a GtAnn>, Vec<&'a DtAnn>);

/// Greedy COCO matching per (image, category) at `iou_threshold`, keeping the detections with
/// `score >= min_score` (at most 100 per image and category, best first). A detection matched
/// to a crowd region counts as neither a true nor a false positive.
pub fn count_errors(
    gts: &[GtAnn],
    dts: &[DtAnn],
    iou_type: IouType,
    iou_threshold: f64,
    min_score: f64,
) -> BTreeMap<i64, ErrorCounts> {
    let mut cells: HashMap<(i64, i64), Cell<'_>> = HashMap::new();
    for g in gts {
        cells
            .entry((g.image_id, g.category_id))
            .or_default()
            .0
            .push(g);
    }
    for d in dts.iter().filter(|d| d.score >= min_score) {
        cells
            .entry((d.image_id, d.category_id))
            .or_default()
            .1
            .push(d);
    }
    let mut out: BTreeMap<i64, ErrorCounts> = BTreeMap::new();
    for ((image_id, _), (mut g, mut d)) in cells {
        // Not-crowd first (cocoeval.py sorts by gtIgnore), detections by score, stable.
        g.sort_by_key(|a| a.iscrowd);
        d.sort_by(|a, b| b.score.total_cmp(&a.score));
        d.truncate(100);
        let mut gt_matched = vec![false; g.len()];
        let counts = out.entry(image_id).or_default();
        for dt in &d {
            let mut best = iou_threshold.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (k, gt) in g.iter().enumerate() {
                if gt_matched[k] && !gt.iscrowd {
                    continue;
                }
                // Once matched to a real instance, never move on to a crowd region.
                if m.is_some_and(|j| !g[j].iscrowd) && gt.iscrowd {
                    break;
                }
                let v = iou(dt, gt, iou_type);
                if v < best {
                    continue;
                }
                best = v;
                m = Some(k);
            }
            match m {
                Some(k) if g[k].iscrowd => {}
                Some(k) => {
                    gt_matched[k] = true;
                    counts.true_positives += 1;
                }
                None => counts.false_positives += 1,
            }
        }
        counts.false_negatives += g
            .iter()
            .zip(&gt_matched)
            .filter(|(gt, matched)| !gt.iscrowd && !**matched)
            .count();
    }
    out
}

/// Predicts every image of `split` (`None` = all) with the bundle, evaluates bbox and segm like
/// [`crate::eval::project::evaluate_project`], and counts per-image mask errors at IoU
/// `iou_threshold` for detections scoring at least `min_score`. `progress(done, total)` runs
/// after each image; `cancel` is checked before each image.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with_errors(
    project_dir: &Path,
    bundle: &Path,
    split: Option<&str>,
    device: tch::Device,
    iou_threshold: f64,
    min_score: f64,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<EvalReport> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    // Detections down to the floor, so a `min_score` below the bundle's own threshold counts
    // the same detections as Predict shows at it.
    let predictor = Predictor::load_for_threshold(bundle, device)?;
    let set = project.export_set(split)?;
    anyhow::ensure!(!set.images.is_empty(), "no images in split {split:?}");
    let Annotations { gts, dts, .. } =
        predict_annotations(&set, &predictor, Some(cancel), progress)?;
    // Non-crowd ground-truth instances per label (every label listed, zeros included).
    let mut gt_counts: BTreeMap<i64, u64> = (1..=predictor.labels().len() as i64)
        .map(|k| (k, 0))
        .collect();
    for g in gts.iter().filter(|g| !g.iscrowd) {
        *gt_counts.entry(g.category_id).or_default() += 1;
    }
    let image_ids: Vec<i64> = set.images.iter().map(|m| m.id).collect();
    let category_ids: Vec<i64> = (1..=predictor.labels().len() as i64).collect();
    let params = EvalParams::default();
    // COCO AP on the detections a bundle loaded with its own threshold returns (the standard
    // number, as `maskstudio eval` gives it, whatever the slider says).
    let bundle_thresh = predictor.bundle_score_thresh();
    let ap_dts: Vec<DtAnn> = dts
        .iter()
        .filter(|d| threshold::kept_by_bundle(d.score as f32, bundle_thresh))
        .cloned()
        .collect();
    let run = |t| evaluate(&gts, &ap_dts, &image_ids, &category_ids, t, &params);
    let eval = ProjectEval {
        segm: run(IouType::Segm)?,
        bbox: run(IouType::Bbox)?,
        class_names: predictor
            .labels()
            .iter()
            .enumerate()
            .map(|(i, n)| (i as i64 + 1, n.clone()))
            .collect(),
    };
    let names: HashMap<i64, &str> = set
        .images
        .iter()
        .map(|m| (m.id, m.file_name.as_str()))
        .collect();
    let mut errors: Vec<ImageErrors> =
        count_errors(&gts, &dts, IouType::Segm, iou_threshold, min_score)
            .into_iter()
            .filter(|(_, c)| c.false_positives + c.false_negatives > 0)
            .map(|(image_id, counts)| ImageErrors {
                image_id,
                file_name: names.get(&image_id).copied().unwrap_or_default().to_owned(),
                counts,
            })
            .collect();
    errors.sort_by_key(|e| {
        (
            std::cmp::Reverse(e.counts.false_positives + e.counts.false_negatives),
            e.image_id,
        )
    });
    Ok(EvalReport {
        eval,
        gt_counts,
        errors,
        iou_threshold,
        min_score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image_id: i64, category_id: i64, bbox: [f64; 4], iscrowd: bool) -> GtAnn {
        GtAnn {
            image_id,
            category_id,
            iscrowd,
            area: bbox[2] * bbox[3],
            bbox,
            rle: None,
        }
    }

    fn dt(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> DtAnn {
        DtAnn::with_box(image_id, category_id, score, bbox, None)
    }

    #[test]
    fn greedy_matching_counts_tp_fp_fn_per_image() {
        let gts = vec![
            gt(1, 1, [0.0, 0.0, 10.0, 10.0], false),
            gt(1, 1, [50.0, 50.0, 10.0, 10.0], false),
            gt(2, 2, [0.0, 0.0, 20.0, 20.0], false),
            gt(3, 1, [0.0, 0.0, 100.0, 100.0], true),
        ];
        let dts = vec![
            // image 1: one hit, a duplicate of it (FP), the second GT missed (FN)
            dt(1, 1, [0.0, 0.0, 10.0, 9.0], 0.9),
            dt(1, 1, [0.0, 0.0, 10.0, 10.0], 0.8),
            // image 2: right place, wrong class → FP and FN
            dt(2, 1, [0.0, 0.0, 20.0, 20.0], 0.9),
            // image 2: below the score floor, ignored
            dt(2, 2, [0.0, 0.0, 20.0, 20.0], 0.01),
            // image 3: inside a crowd region → ignored
            dt(3, 1, [10.0, 10.0, 5.0, 5.0], 0.7),
        ];
        let c = count_errors(&gts, &dts, IouType::Bbox, 0.5, 0.05);
        assert_eq!(
            c[&1],
            ErrorCounts {
                true_positives: 1,
                false_positives: 1,
                false_negatives: 1
            }
        );
        assert_eq!(
            c[&2],
            ErrorCounts {
                true_positives: 0,
                false_positives: 1,
                false_negatives: 1
            }
        );
        assert_eq!(c[&3], ErrorCounts::default());
        // The higher-scoring box wins the GT: at a 0.95 IoU threshold the 10x9 box misses,
        // and the exact box takes it.
        let strict = count_errors(&gts, &dts, IouType::Bbox, 0.95, 0.05);
        assert_eq!(strict[&1].true_positives, 1);
        assert_eq!(strict[&1].false_positives, 1);
    }

    #[test]
    fn mask_iou_against_crowd_is_intersection_over_detection() {
        let mut a = crate::dataset::Mask::new(4, 4);
        let mut b = crate::dataset::Mask::new(4, 4);
        for x in 0..2 {
            for y in 0..4 {
                a.set(x, y, true);
            }
        }
        for x in 0..4 {
            for y in 0..4 {
                b.set(x, y, true);
            }
        }
        let (ra, rb) = (a.to_rle(), b.to_rle());
        assert!((mask_iou(&ra, &rb, false) - 0.5).abs() < 1e-12);
        assert!((mask_iou(&ra, &rb, true) - 1.0).abs() < 1e-12);
    }
}
