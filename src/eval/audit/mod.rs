//! Label-error scores for one image, the core of issue 18's audit: the image's ground truth
//! against **out-of-sample** predictions (a model that did not train on the image) gives each
//! suspected error a score in `[0, 1]` and a short reason.
//!
//! Four kinds, as the issue defines them:
//! - **missing**: a confident prediction of class c that no ground truth of class c matches
//!   (mask IoU below [`AuditParams::match_iou`]) and that no other class's ground truth holds
//!   either (that would be a swap); score = prediction score × (1 − best IoU with any ground
//!   truth). Suggested fix: the predicted mask. Predictions overlapping one already reported
//!   (mask IoU ≥ `match_iou`, any class: a detector's duplicates on one object) add none.
//! - **spurious**: a ground-truth instance no prediction of any class covers;
//!   score = 1 − (best IoU with any prediction) / `match_iou`, clamped to `[0, 1]`.
//! - **loose**: a ground-truth instance whose box a same-class prediction matches (box IoU ≥
//!   `match_iou`) while the masks disagree; score = prediction score × (1 − mask IoU).
//!   Suggested fix: the predicted mask.
//! - **swap**: a prediction of another class on the same object (mask IoU ≥ `match_iou`) that
//!   the model is surer of than of any same-class prediction there; score = its score minus the
//!   best same-class score on the object.
//!
//! Only predictions scoring at least [`AuditParams::min_score`] count. The image's score pools
//! its findings by noisy-OR (`1 − Π(1 − s)`): many clean instances do not dilute one error (as
//! a mean would), and two errors rank above one (as a max would not).
//!
//! The runner that gets out-of-sample predictions and stores the findings is [`run`] (one
//! model that did not train on the images) and [`kfold`] (K models, each predicting the fold it
//! did not see); `maskstudio audit` is [`cli`].

pub mod cli;
pub mod kfold;
pub mod run;
pub mod sheet;

pub use kfold::{KFoldEstimate, KFoldPlan, KFoldRequest, audit_kfold, estimate_kfold};
pub use run::{
    AuditCancelled, AuditOutcome, AuditProgress, AuditedFinding, BundleOrigin, FoldState,
    ImageAudit, audit_detections, audit_with_model, bundle_origin,
};

use crate::dataset::rle::{Rle, bbox_iou};

/// One ground-truth instance of the audited image.
#[derive(Debug, Clone)]
pub struct GtInstance {
    /// Store id of the instance.
    pub id: i64,
    /// Class id.
    pub class: i64,
    /// Its mask.
    pub rle: Rle,
}

/// One prediction on the audited image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Class id.
    pub class: i64,
    /// Detection score in `[0, 1]`.
    pub score: f32,
    /// Its binary mask (same size as the image).
    pub rle: Rle,
}

/// What kind of label error a finding suspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// An object the labels lack.
    Missing,
    /// A label on no object.
    Spurious,
    /// A label whose outline is off.
    Loose,
    /// A label of the wrong class.
    Swap,
}

impl ErrorKind {
    /// The name the CLI and the queue show.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Missing => "missing",
            ErrorKind::Spurious => "spurious",
            ErrorKind::Loose => "loose",
            ErrorKind::Swap => "swap",
        }
    }
}

/// One suspected error.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What is suspected.
    pub kind: ErrorKind,
    /// The ground-truth instance concerned (`None` for [`ErrorKind::Missing`]).
    pub instance: Option<i64>,
    /// Index into the predictions of the one that suggests it (`None` for spurious).
    pub prediction: Option<usize>,
    /// How likely, in `[0, 1]`.
    pub score: f64,
    /// A short reason for the person reviewing it.
    pub reason: String,
}

/// Thresholds of the audit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditParams {
    /// Mask (or box, for loose) IoU from which a prediction and a label are the same object
    /// (0.5: COCO's AP50 match).
    pub match_iou: f64,
    /// Predictions scoring below this are ignored.
    pub min_score: f32,
}

impl Default for AuditParams {
    fn default() -> Self {
        Self {
            match_iou: 0.5,
            min_score: 0.05,
        }
    }
}

/// Scores the label errors of one image; findings come sorted by score, highest first. Reasons
/// name classes by id ([`audit_image_named`] names them).
pub fn audit_image(gt: &[GtInstance], preds: &[Prediction], p: &AuditParams) -> Vec<Finding> {
    audit_image_named(gt, preds, p, &|class| format!("class {class}"))
}

/// [`audit_image`] with reasons naming each class as `name(class id)` gives it.
pub fn audit_image_named(
    gt: &[GtInstance],
    preds: &[Prediction],
    p: &AuditParams,
    name: &dyn Fn(i64) -> String,
) -> Vec<Finding> {
    let kept: Vec<usize> = (0..preds.len())
        .filter(|&j| preds[j].score >= p.min_score)
        .collect();
    // iou[i][k]: mask IoU of ground truth i with kept prediction k (0 for mismatched sizes).
    let iou: Vec<Vec<f64>> = gt
        .iter()
        .map(|g| {
            kept.iter()
                .map(|&j| g.rle.iou(&preds[j].rle).max(0.0))
                .collect()
        })
        .collect();
    // Boxes of the kept predictions, once (the loose check compares each label with each).
    let boxes: Vec<[f64; 4]> = kept.iter().map(|&j| preds[j].rle.to_bbox()).collect();
    let mut out = Vec::new();
    // Unlabelled objects: surest prediction first, so that the duplicates a detector leaves on
    // one object (mask IoU ≥ match_iou with a prediction already reported) add no finding.
    let mut by_score: Vec<usize> = (0..kept.len()).collect();
    by_score.sort_by(|&a, &b| preds[kept[b]].score.total_cmp(&preds[kept[a]].score));
    let mut reported: Vec<usize> = Vec::new();
    for k in by_score {
        let j = kept[k];
        let d = &preds[j];
        let same = (0..gt.len())
            .filter(|&i| gt[i].class == d.class)
            .map(|i| iou[i][k])
            .fold(0.0, f64::max);
        let other = (0..gt.len())
            .filter(|&i| gt[i].class != d.class)
            .map(|i| iou[i][k])
            .fold(0.0, f64::max);
        let duplicate = reported
            .iter()
            .any(|&r| preds[r].rle.iou(&d.rle) >= p.match_iou);
        if same < p.match_iou && other < p.match_iou && !duplicate {
            reported.push(j);
            let best = same.max(other);
            out.push(Finding {
                kind: ErrorKind::Missing,
                instance: None,
                prediction: Some(j),
                score: (f64::from(d.score) * (1.0 - best)).clamp(0.0, 1.0),
                reason: format!(
                    "the model sees {} at score {:.2} where no label is (best overlap {best:.2})",
                    name(d.class),
                    d.score
                ),
            });
        }
    }
    for (i, g) in gt.iter().enumerate() {
        let cover = iou[i].iter().copied().fold(0.0, f64::max);
        let spurious = (1.0 - cover / p.match_iou).clamp(0.0, 1.0);
        if spurious > 0.0 {
            out.push(Finding {
                kind: ErrorKind::Spurious,
                instance: Some(g.id),
                prediction: None,
                score: spurious,
                reason: format!("no prediction covers it (best overlap {cover:.2})"),
            });
        }
        let g_box = g.rle.to_bbox();
        // The surest same-class prediction whose box matches: the outline check.
        let loose = kept
            .iter()
            .enumerate()
            .filter(|&(k, &j)| {
                preds[j].class == g.class && bbox_iou(&boxes[k], &g_box, false) >= p.match_iou
            })
            .max_by(|a, b| preds[*a.1].score.total_cmp(&preds[*b.1].score));
        if let Some((k, &j)) = loose {
            let score = f64::from(preds[j].score) * (1.0 - iou[i][k]);
            if score > 0.0 {
                out.push(Finding {
                    kind: ErrorKind::Loose,
                    instance: Some(g.id),
                    prediction: Some(j),
                    score: score.clamp(0.0, 1.0),
                    reason: format!(
                        "the box matches but the masks overlap only {:.2}",
                        iou[i][k]
                    ),
                });
            }
        }
        let on_object = |same_class: bool| {
            kept.iter()
                .enumerate()
                .filter(|&(k, &j)| {
                    (preds[j].class == g.class) == same_class && iou[i][k] >= p.match_iou
                })
                .max_by(|a, b| preds[*a.1].score.total_cmp(&preds[*b.1].score))
                .map(|(_, &j)| j)
        };
        let same_best = on_object(true).map_or(0.0, |j| preds[j].score);
        if let Some(j) = on_object(false) {
            let margin = f64::from(preds[j].score - same_best);
            if margin > 0.0 {
                out.push(Finding {
                    kind: ErrorKind::Swap,
                    instance: Some(g.id),
                    prediction: Some(j),
                    score: margin.clamp(0.0, 1.0),
                    reason: format!(
                        "labelled {} but the model says {} ({:.2} against {same_best:.2})",
                        name(g.class),
                        name(preds[j].class),
                        preds[j].score
                    ),
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The image's score: noisy-OR of its findings' scores (see the module docs).
pub fn image_score(findings: &[Finding]) -> f64 {
    1.0 - findings
        .iter()
        .map(|f| 1.0 - f.score.clamp(0.0, 1.0))
        .product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Mask;

    const W: u32 = 64;
    const H: u32 = 48;

    /// A filled rectangle `[x0, x1) × [y0, y1)` on the 64×48 image.
    fn rect(x0: u32, y0: u32, x1: u32, y1: u32) -> Rle {
        let mut m = Mask::new(W, H);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, true);
            }
        }
        m.to_rle()
    }

    fn gt(id: i64, class: i64, rle: Rle) -> GtInstance {
        GtInstance { id, class, rle }
    }

    fn pred(class: i64, score: f32, rle: Rle) -> Prediction {
        Prediction { class, score, rle }
    }

    fn only(findings: &[Finding], kind: ErrorKind) -> Vec<&Finding> {
        findings.iter().filter(|f| f.kind == kind).collect()
    }

    #[test]
    fn a_clean_label_raises_nothing() {
        let g = [gt(1, 0, rect(10, 10, 30, 30))];
        let d = [pred(0, 0.9, rect(10, 10, 30, 30))];
        let f = audit_image(&g, &d, &AuditParams::default());
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(image_score(&f), 0.0);
    }

    #[test]
    fn an_unlabelled_object_is_missing_with_the_prediction_as_the_fix() {
        let g = [gt(1, 0, rect(0, 0, 10, 10))];
        let d = [
            pred(0, 0.9, rect(0, 0, 10, 10)),
            pred(0, 0.8, rect(40, 20, 60, 40)),
        ];
        let f = audit_image(&g, &d, &AuditParams::default());
        let missing = only(&f, ErrorKind::Missing);
        assert_eq!(missing.len(), 1, "{f:?}");
        assert_eq!(missing[0].prediction, Some(1));
        // No overlap with any label: the score is the prediction's own.
        assert!(
            (missing[0].score - 0.8).abs() < 1e-6,
            "{}",
            missing[0].score
        );
    }

    #[test]
    fn duplicate_predictions_of_one_unlabelled_object_are_one_missing_finding() {
        let g = [gt(1, 0, rect(0, 0, 10, 10))];
        let d = [
            pred(0, 0.6, rect(41, 20, 60, 40)),
            pred(0, 0.8, rect(40, 20, 60, 40)),
            // The same object as another class, less sure: still the same object.
            pred(1, 0.5, rect(40, 21, 60, 40)),
            // A second object beside it.
            pred(0, 0.7, rect(40, 0, 60, 12)),
        ];
        let f = audit_image(&g, &d, &AuditParams::default());
        let missing: Vec<Option<usize>> = only(&f, ErrorKind::Missing)
            .iter()
            .map(|m| m.prediction)
            .collect();
        assert_eq!(missing, vec![Some(1), Some(3)], "{f:?}");
    }

    #[test]
    fn a_label_on_nothing_is_spurious_and_partial_cover_scores_lower() {
        let g = [gt(7, 0, rect(0, 0, 20, 20)), gt(8, 0, rect(40, 0, 60, 20))];
        // A 10×20 strip of label 8's 20×20 square.
        let d = [pred(0, 0.9, rect(40, 0, 50, 20))];
        let f = audit_image(&g, &d, &AuditParams::default());
        let sp = only(&f, ErrorKind::Spurious);
        let score_of = |id| sp.iter().find(|x| x.instance == Some(id)).unwrap().score;
        assert!((score_of(7) - 1.0).abs() < 1e-9);
        // IoU 200 / 400 = 0.5 → exactly matched: not spurious at all.
        assert!(sp.iter().all(|x| x.instance != Some(8)), "{sp:?}");
        let d = [pred(0, 0.9, rect(40, 0, 45, 20))];
        let f = audit_image(&g, &d, &AuditParams::default());
        let sp = only(&f, ErrorKind::Spurious);
        let s8 = sp.iter().find(|x| x.instance == Some(8)).unwrap().score;
        // IoU 100 / 400 = 0.25 → 1 − 0.25 / 0.5 = 0.5.
        assert!((s8 - 0.5).abs() < 1e-9, "{s8}");
    }

    #[test]
    fn a_loose_outline_scores_by_how_little_the_masks_overlap() {
        // Same box (the label is a frame, the prediction the filled square): box IoU 1.
        let mut frame = Mask::new(W, H);
        for y in 10..30 {
            for x in 10..30 {
                let edge = !(12..28).contains(&x) || !(12..28).contains(&y);
                frame.set(x, y, edge);
            }
        }
        let g = [gt(3, 2, frame.to_rle())];
        let d = [pred(2, 0.8, rect(10, 10, 30, 30))];
        let f = audit_image(&g, &d, &AuditParams::default());
        let loose = only(&f, ErrorKind::Loose);
        assert_eq!(loose.len(), 1, "{f:?}");
        // Frame area 400 − 256 = 144 inside the 400-pixel square: IoU 0.36.
        assert!(
            (loose[0].score - 0.8 * (1.0 - 0.36)).abs() < 1e-6,
            "{}",
            loose[0].score
        );
        assert_eq!(loose[0].prediction, Some(0));
    }

    #[test]
    fn a_surer_other_class_on_the_object_is_a_swap_not_a_missing_object() {
        let g = [gt(5, 0, rect(10, 10, 30, 30))];
        let d = [
            pred(1, 0.9, rect(10, 10, 30, 30)),
            pred(0, 0.3, rect(10, 10, 30, 30)),
        ];
        let f = audit_image(&g, &d, &AuditParams::default());
        let swap = only(&f, ErrorKind::Swap);
        assert_eq!(swap.len(), 1, "{f:?}");
        assert!((swap[0].score - 0.6).abs() < 1e-6, "{}", swap[0].score);
        assert_eq!(swap[0].prediction, Some(0));
        assert!(only(&f, ErrorKind::Missing).is_empty(), "{f:?}");
        // The other way round the label is what the model believes most: no swap.
        let d = [
            pred(1, 0.3, rect(10, 10, 30, 30)),
            pred(0, 0.9, rect(10, 10, 30, 30)),
        ];
        let f = audit_image(&g, &d, &AuditParams::default());
        assert!(only(&f, ErrorKind::Swap).is_empty(), "{f:?}");
    }

    #[test]
    fn low_scores_are_ignored_and_findings_come_sorted() {
        let g = [gt(1, 0, rect(0, 0, 10, 10))];
        let d = [pred(0, 0.01, rect(0, 0, 10, 10))];
        let f = audit_image(&g, &d, &AuditParams::default());
        // Under min_score the only prediction does not count: the label is uncovered.
        assert_eq!(only(&f, ErrorKind::Spurious).len(), 1);
        let d = [
            pred(0, 0.95, rect(40, 0, 60, 20)),
            pred(0, 0.4, rect(40, 25, 60, 45)),
        ];
        let f = audit_image(&g, &d, &AuditParams::default());
        assert!(f.windows(2).all(|w| w[0].score >= w[1].score), "{f:?}");
    }

    #[test]
    fn the_image_score_is_a_noisy_or() {
        let finding = |score| Finding {
            kind: ErrorKind::Missing,
            instance: None,
            prediction: None,
            score,
            reason: String::new(),
        };
        let one = image_score(&[finding(0.5)]);
        let two = image_score(&[finding(0.5), finding(0.5)]);
        assert!((one - 0.5).abs() < 1e-12);
        assert!((two - 0.75).abs() < 1e-12);
        assert_eq!(image_score(&[]), 0.0);
    }
}
