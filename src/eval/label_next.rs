//! "Label next" (issue 18): the images that still need a person (no masks yet, or not reviewed)
//! ranked by how unsure the model is about them, so labelling starts where a label teaches the
//! model most and where its proposals are least to be trusted.
//!
//! **Primary score: horizontal-flip disagreement.** Each image is predicted twice, as it is
//! (pass A) and mirrored left to right (pass B, whose detections are mirrored back onto the
//! image, [`flip_back`]). A model that is sure of an image gives the same masks on its mirror
//! (training flips images half the time, so the mirror is no new data to it); where it guesses,
//! the two passes disagree in what they find and where the outlines run. [`flip_disagreement`]
//! measures that on the masks themselves, the thing the person will label. Score entropy alone
//! (the secondary column, [`mean_entropy`]) ignores the masks: a detection scored 0.95 twice
//! with two different outlines looks certain to it.
//!
//! With `A` and `B` the detections of the two passes scoring at least [`MIN_SCORE`], pairs of the
//! same class are matched greedily by `w = min(s_a, s_b) · IoU(mask_a, mask_b)` (highest first,
//! each detection in at most one pair; ties by index), and
//!
//! ```text
//! disagreement = 1 − Σ_matched min(s_a, s_b) · IoU  /  ((Σ_A s + Σ_B s) / 2)
//! ```
//!
//! It lies in `[0, 1]`: a pair's `min(s_a, s_b) · IoU ≤ (s_a + s_b) / 2`, so the sum over
//! matched pairs is at most the denominator. Identical passes give 0 (every detection matches
//! its twin at IoU 1); passes with no overlapping same-class masks give 1. Weighting by score
//! keeps the long tail of near-zero detections from moving it, and one confident detection the
//! other pass lacks weighs as much as it is confident. Images where neither pass has a detection
//! score [`NOTHING_SCORE`] = 1 ("the model sees nothing here"): on an image without labels that
//! is the least the model knows, and on a labelled one it misses every object, so neither is
//! buried at the bottom of the queue.
//!
//! Ties (every "sees nothing" image, say) are broken by the mean binary score entropy of both
//! passes' detections, higher first, then by image id.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::dataset::Mask;
use crate::dataset::gallery::{GalleryItem, listing};
use crate::dataset::store::{Project, ReviewStatus};
use crate::infer::{Detection, MASK_THRESHOLD, Predictor, SoftMask, read_image};

/// Detections scoring below this take no part in either score: torchvision's default
/// `box_score_thresh` (0.05), the floor `eval::audit` uses too.
pub const MIN_SCORE: f32 = 0.05;

/// The score of an image on which neither pass finds anything (see the module docs).
pub const NOTHING_SCORE: f64 = 1.0;

/// Which images are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Candidates {
    /// Images without any instance (imported raw, newly downloaded without masks).
    Unlabelled,
    /// Images whose review status is `unreviewed`.
    Unreviewed,
    /// Either of the two.
    #[default]
    Both,
}

impl Candidates {
    /// Every choice, in the order menus list them.
    pub const ALL: [Candidates; 3] = [Self::Both, Self::Unlabelled, Self::Unreviewed];

    /// The spelling of `--only` (`unlabelled`, `unreviewed`, `both`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unlabelled => "unlabelled",
            Self::Unreviewed => "unreviewed",
            Self::Both => "both",
        }
    }

    /// Whether a gallery row is a candidate. Rejected images never are: they leave training and
    /// exports, so labelling them is wasted.
    pub fn includes(self, item: &GalleryItem) -> bool {
        if item.status == ReviewStatus::Rejected {
            return false;
        }
        let unlabelled = item.instances == 0;
        let unreviewed = item.status == ReviewStatus::Unreviewed;
        match self {
            Self::Unlabelled => unlabelled,
            Self::Unreviewed => unreviewed,
            Self::Both => unlabelled || unreviewed,
        }
    }
}

impl std::str::FromStr for Candidates {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unlabelled" | "unlabeled" => Ok(Self::Unlabelled),
            "unreviewed" => Ok(Self::Unreviewed),
            "both" => Ok(Self::Both),
            _ => Err(format!(
                "unknown candidates {s:?}; use unlabelled, unreviewed or both"
            )),
        }
    }
}

/// One image of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedImage {
    /// `images.id`.
    pub image_id: i64,
    /// The image file.
    pub path: PathBuf,
    /// Path relative to the project's `images/` folder.
    pub rel_path: String,
    /// Flip disagreement in `[0, 1]`, higher = label it sooner.
    pub score: f64,
    /// Mean binary score entropy (bits) of both passes' detections, in `[0, 1]`; 0 without any.
    pub entropy: f64,
    /// Detections of the image as it is (score ≥ [`MIN_SCORE`]).
    pub detections: usize,
    /// Detections of its mirror (score ≥ [`MIN_SCORE`]).
    pub mirrored_detections: usize,
    /// Labelled instances of the image.
    pub instances: u32,
    /// Its review status.
    pub status: ReviewStatus,
    /// Why it ranks where it does, in a few words.
    pub reason: String,
}

impl RankedImage {
    /// The JSON of one row of `maskstudio label-next --json` (`rank` counts from 1).
    pub fn to_json(&self, rank: usize) -> serde_json::Value {
        serde_json::json!({
            "rank": rank,
            "image_id": self.image_id,
            "path": self.path,
            "file_name": self.rel_path,
            "score": self.score,
            "entropy": self.entropy,
            "detections": self.detections,
            "mirrored_detections": self.mirrored_detections,
            "instances": self.instances,
            "status": self.status.as_str(),
            "reason": self.reason,
        })
    }
}

/// A ranking: the queue, highest score first, and the candidates that could not be scored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    /// Ranked images (see [`sort_ranked`] for the order).
    pub images: Vec<RankedImage>,
    /// Candidates left out (unreadable image, failed prediction): image id, file and why.
    pub skipped: Vec<(i64, String, String)>,
}

/// The scores of one image (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScore {
    /// Flip disagreement in `[0, 1]`.
    pub score: f64,
    /// Mean binary score entropy in `[0, 1]`.
    pub entropy: f64,
    /// Detections of pass A (the image as it is).
    pub detections: usize,
    /// Detections of pass B (its mirror).
    pub mirrored_detections: usize,
    /// Why, in a few words.
    pub reason: String,
}

/// A binary mask as the bits of a rectangle (the rest of the image is unset): IoU and mirroring
/// touch only the box, not the whole image.
#[derive(Debug, Clone, PartialEq)]
struct Crop {
    x0: u32,
    y0: u32,
    width: u32,
    height: u32,
    /// Row-major `[height, width]` 0/1.
    bits: Vec<u8>,
    area: u64,
}

impl Crop {
    /// A detection's mask: its soft mask thresholded at [`MASK_THRESHOLD`] (on the quantised
    /// value, within 1/510 of the float comparison `predict` makes), else its binary mask.
    fn of(d: &Detection) -> Self {
        match &d.soft_mask {
            Some(s) => {
                let level = SoftMask::level(MASK_THRESHOLD as f32);
                let bits: Vec<u8> = s
                    .data
                    .iter()
                    .map(|&q| u8::from(f32::from(q) >= level))
                    .collect();
                Self::new(s.x0, s.y0, s.width, s.height, bits)
            }
            None => Self::of_mask(&d.mask),
        }
    }

    fn of_mask(mask: &Mask) -> Self {
        let r = crate::dataset::maskops::bounds(mask);
        let (w, h) = (r.x1.saturating_sub(r.x0), r.y1.saturating_sub(r.y0));
        let mut bits = Vec::with_capacity(w as usize * h as usize);
        let stride = mask.width() as usize;
        for y in r.y0..r.y0 + h {
            let start = y as usize * stride + r.x0 as usize;
            bits.extend(
                mask.data()[start..start + w as usize]
                    .iter()
                    .map(|&b| u8::from(b != 0)),
            );
        }
        Self::new(r.x0, r.y0, w, h, bits)
    }

    fn new(x0: u32, y0: u32, width: u32, height: u32, bits: Vec<u8>) -> Self {
        let area = bits.iter().map(|&b| u64::from(b)).sum();
        Self {
            x0,
            y0,
            width,
            height,
            bits,
            area,
        }
    }

    /// Intersection over union of the two masks (0 when both are empty).
    fn iou(&self, other: &Crop) -> f64 {
        let x0 = self.x0.max(other.x0);
        let y0 = self.y0.max(other.y0);
        let x1 = (self.x0 + self.width).min(other.x0 + other.width);
        let y1 = (self.y0 + self.height).min(other.y0 + other.height);
        if x0 >= x1 || y0 >= y1 {
            return 0.0;
        }
        let n = (x1 - x0) as usize;
        let (ax, bx) = ((x0 - self.x0) as usize, (x0 - other.x0) as usize);
        let mut inter = 0u64;
        for y in y0..y1 {
            let row_a = ((y - self.y0) * self.width) as usize + ax;
            let row_b = ((y - other.y0) * other.width) as usize + bx;
            let (ra, rb) = (&self.bits[row_a..row_a + n], &other.bits[row_b..row_b + n]);
            inter += ra
                .iter()
                .zip(rb)
                .map(|(&p, &q)| u64::from(p & q))
                .sum::<u64>();
        }
        let union = self.area + other.area - inter;
        if union == 0 {
            0.0
        } else {
            inter as f64 / union as f64
        }
    }
}

/// A detection of the mirrored image mapped back onto the image (`width` pixels wide): box
/// `[x1, y1, x2, y2]` → `[width − x2, y1, width − x1, y2]`, mask (and soft mask) mirrored.
pub fn flip_back(d: &Detection, width: u32) -> Detection {
    let w = width as f32;
    let [x1, y1, x2, y2] = d.box_xyxy;
    let mask = if d.mask.width() == width && d.mask.height() > 0 {
        let mut data = d.mask.data().to_vec();
        for row in data.chunks_exact_mut(width.max(1) as usize) {
            row.reverse();
        }
        Mask::from_vec(width, d.mask.height(), data).unwrap_or_else(|_| d.mask.clone())
    } else {
        d.mask.clone()
    };
    let soft_mask = d.soft_mask.as_ref().map(|s| {
        let mut data = s.data.clone();
        for row in data.chunks_exact_mut(s.width.max(1) as usize) {
            row.reverse();
        }
        SoftMask {
            x0: if s.width > 0 {
                s.image_width - s.x0 - s.width
            } else {
                0
            },
            data,
            ..s.clone()
        }
    });
    Detection {
        label: d.label,
        class_name: d.class_name.clone(),
        score: d.score,
        box_xyxy: [w - x2, y1, w - x1, y2],
        mask,
        soft_mask,
    }
}

/// One pair of the greedy matching: detection `a` of pass A with `b` of pass B.
#[derive(Debug, Clone, Copy)]
struct Match {
    a: usize,
    b: usize,
    iou: f64,
    /// `min(s_a, s_b) · IoU`.
    weight: f64,
}

/// The greedy same-class matching of the module docs.
fn greedy_matches(a: &[Detection], b: &[Detection]) -> Vec<Match> {
    let (ca, cb): (Vec<Crop>, Vec<Crop>) = (
        a.iter().map(Crop::of).collect(),
        b.iter().map(Crop::of).collect(),
    );
    let mut pairs = Vec::new();
    for (i, da) in a.iter().enumerate() {
        for (j, db) in b.iter().enumerate() {
            if da.label != db.label {
                continue;
            }
            let iou = ca[i].iou(&cb[j]);
            if iou > 0.0 {
                let weight = f64::from(da.score.min(db.score)) * iou;
                pairs.push(Match {
                    a: i,
                    b: j,
                    iou,
                    weight,
                });
            }
        }
    }
    // Highest weight first; equal weights by index, so the result does not depend on sorting.
    pairs.sort_by(|p, q| {
        q.weight
            .total_cmp(&p.weight)
            .then((p.a, p.b).cmp(&(q.a, q.b)))
    });
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    pairs.retain(|m| {
        let free = !used_a[m.a] && !used_b[m.b];
        if free {
            used_a[m.a] = true;
            used_b[m.b] = true;
        }
        free
    });
    pairs
}

/// Flip disagreement of pass `a` (the image) and pass `b_flipped_back` (its mirror's
/// detections mapped back with [`flip_back`]) in `[0, 1]`, by the formula of the module docs;
/// [`NOTHING_SCORE`] when neither pass has a detection. Every detection given counts (filter by
/// [`MIN_SCORE`] first).
pub fn flip_disagreement(a: &[Detection], b_flipped_back: &[Detection]) -> f64 {
    score_passes(a, b_flipped_back).score
}

/// Binary entropy of a score in bits, `−s log₂ s − (1 − s) log₂(1 − s)`: 1 at 0.5, 0 at 0 and 1.
pub fn binary_entropy(s: f64) -> f64 {
    let h = |p: f64| if p <= 0.0 { 0.0 } else { -p * p.log2() };
    let s = s.clamp(0.0, 1.0);
    h(s) + h(1.0 - s)
}

/// Mean [`binary_entropy`] of the scores of both passes' detections; 0 when there are none.
pub fn mean_entropy(a: &[Detection], b: &[Detection]) -> f64 {
    let n = a.len() + b.len();
    if n == 0 {
        return 0.0;
    }
    a.iter()
        .chain(b)
        .map(|d| binary_entropy(f64::from(d.score)))
        .sum::<f64>()
        / n as f64
}

/// Both scores of two passes (`b` already flipped back), with the reason shown in the queue.
pub fn score_passes(a: &[Detection], b: &[Detection]) -> ImageScore {
    let entropy = mean_entropy(a, b);
    let total = (a.iter().map(|d| f64::from(d.score)).sum::<f64>()
        + b.iter().map(|d| f64::from(d.score)).sum::<f64>())
        / 2.0;
    let (score, reason) = if total <= 0.0 {
        (
            NOTHING_SCORE,
            "the model sees nothing here, on the image or its mirror".to_owned(),
        )
    } else {
        let matches = greedy_matches(a, b);
        let agreement: f64 = matches.iter().map(|m| m.weight).sum();
        let mean_iou = if matches.is_empty() {
            0.0
        } else {
            matches.iter().map(|m| m.iou).sum::<f64>() / matches.len() as f64
        };
        (
            (1.0 - agreement / total).clamp(0.0, 1.0),
            format!(
                "{} vs {} detections on the mirror, {} agree (mean mask IoU {mean_iou:.2})",
                a.len(),
                b.len(),
                matches.len()
            ),
        )
    };
    ImageScore {
        score,
        entropy,
        detections: a.len(),
        mirrored_detections: b.len(),
        reason,
    }
}

/// Predicts `image` and its mirror with `predictor` and scores them (detections below
/// [`MIN_SCORE`] dropped).
pub fn score_image(predictor: &Predictor, image: &image::RgbImage) -> anyhow::Result<ImageScore> {
    let keep = |mut v: Vec<Detection>| {
        v.retain(|d| d.score >= MIN_SCORE);
        v
    };
    // Soft masks keep box-sized crops only (no full-size mask per detection).
    let a = keep(predictor.predict_soft(image)?);
    let mirrored = image::imageops::flip_horizontal(image);
    let b: Vec<Detection> = keep(predictor.predict_soft(&mirrored)?)
        .iter()
        .map(|d| flip_back(d, image.width()))
        .collect();
    Ok(score_passes(&a, &b))
}

/// Sorts a queue: score, highest first; then entropy, highest first; then image id.
pub fn sort_ranked(images: &mut [RankedImage]) {
    images.sort_by(|p, q| {
        q.score
            .total_cmp(&p.score)
            .then(q.entropy.total_cmp(&p.entropy))
            .then(p.image_id.cmp(&q.image_id))
    });
}

/// The project's `images/` folder and its images that `candidates` includes, in id order.
pub fn candidate_images(
    project: &Project,
    candidates: Candidates,
) -> anyhow::Result<(PathBuf, Vec<GalleryItem>)> {
    let list = listing(project).context("listing the project's images")?;
    let items = list
        .items
        .into_iter()
        .filter(|m| candidates.includes(m))
        .collect();
    Ok((list.images_dir, items))
}

/// Ranks the project's `candidates` by the model's uncertainty (module docs). `cancel` is
/// checked before each image (a cancelled ranking is an error); `progress(done, total)` runs
/// after each. An image that cannot be read or predicted is listed in [`Ranking::skipped`].
pub fn rank_images(
    project: &Project,
    predictor: &Predictor,
    candidates: Candidates,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Ranking> {
    let (images_dir, items) = candidate_images(project, candidates)?;
    let total = items.len();
    progress(0, total);
    let mut ranking = Ranking::default();
    for (done, item) in items.into_iter().enumerate() {
        anyhow::ensure!(!cancel.is_cancelled(), "ranking cancelled");
        let path = images_dir.join(&item.rel_path);
        let scored = read_image(&path).and_then(|pixels| {
            score_image(predictor, &pixels).with_context(|| format!("predicting {path:?}"))
        });
        match scored {
            Ok(s) => ranking.images.push(RankedImage {
                image_id: item.id,
                path,
                rel_path: item.rel_path.clone(),
                score: s.score,
                entropy: s.entropy,
                detections: s.detections,
                mirrored_detections: s.mirrored_detections,
                instances: item.instances,
                status: item.status,
                reason: s.reason,
            }),
            Err(e) => {
                log::warn!("label next: {e:#}");
                ranking
                    .skipped
                    .push((item.id, item.rel_path.clone(), format!("{e:#}")));
            }
        }
        progress(done + 1, total);
    }
    sort_ranked(&mut ranking.images);
    Ok(ranking)
}

/// Loads `bundle` on `device` (keeping detections down to [`MIN_SCORE`]) and ranks the
/// candidates of the project at `project_dir`: the `maskstudio label-next` job and the Review
/// tab's "Label next" worker.
pub fn run(
    bundle: &Path,
    project_dir: &Path,
    candidates: Candidates,
    device: tch::Device,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Ranking> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let predictor = Predictor::load(bundle, device, Some(f64::from(MIN_SCORE)))?;
    rank_images(&project, &predictor, candidates, cancel, progress)
}

/// The JSON `maskstudio label-next --json` writes: the bundle, the candidates, how many were
/// ranked, the first `limit` rows and the skipped images.
pub fn ranking_json(
    ranking: &Ranking,
    bundle: &Path,
    candidates: Candidates,
    limit: Option<usize>,
) -> serde_json::Value {
    let shown = limit.unwrap_or(usize::MAX).min(ranking.images.len());
    let rows: Vec<serde_json::Value> = ranking.images[..shown]
        .iter()
        .enumerate()
        .map(|(k, r)| r.to_json(k + 1))
        .collect();
    let skipped: Vec<serde_json::Value> = ranking
        .skipped
        .iter()
        .map(|(id, file, why)| serde_json::json!({"image_id": id, "file_name": file, "error": why}))
        .collect();
    serde_json::json!({
        "model": bundle,
        "candidates": candidates.as_str(),
        "method": "horizontal-flip disagreement (entropy breaks ties)",
        "min_score": MIN_SCORE,
        "ranked": ranking.images.len(),
        "images": rows,
        "skipped": skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floats computed from a handful of sums: agreement to 1e-12.
    const TOL: f64 = 1e-12;

    /// A detection of class `label` scoring `score` whose mask is the rectangle
    /// `[x0, y0, x1, y1)` on a `w × h` image.
    fn det(label: i64, score: f32, rect: [u32; 4], w: u32, h: u32) -> Detection {
        let [x0, y0, x1, y1] = rect;
        let mut mask = Mask::new(w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                mask.set(x, y, true);
            }
        }
        Detection {
            label,
            class_name: format!("class_{label}"),
            score,
            box_xyxy: [x0 as f32, y0 as f32, x1 as f32, y1 as f32],
            mask,
            soft_mask: None,
        }
    }

    #[test]
    fn identical_passes_agree_fully() {
        let a = vec![
            det(1, 0.9, [0, 0, 4, 4], 10, 8),
            det(2, 0.3, [5, 2, 9, 7], 10, 8),
        ];
        assert!(flip_disagreement(&a, &a).abs() < TOL);
    }

    #[test]
    fn disjoint_passes_disagree_fully() {
        let a = vec![det(1, 0.9, [0, 0, 4, 4], 10, 8)];
        let b = vec![det(1, 0.7, [5, 4, 9, 8], 10, 8)];
        assert!((flip_disagreement(&a, &b) - 1.0).abs() < TOL);
        // Same pixels, another class: no match either.
        let c = vec![det(2, 0.9, [0, 0, 4, 4], 10, 8)];
        assert!((flip_disagreement(&a, &c) - 1.0).abs() < TOL);
        // One pass empty.
        assert!((flip_disagreement(&a, &[]) - 1.0).abs() < TOL);
    }

    #[test]
    fn nothing_in_either_pass_scores_the_stated_value() {
        assert_eq!(flip_disagreement(&[], &[]), NOTHING_SCORE);
        let s = score_passes(&[], &[]);
        assert_eq!((s.score, s.entropy), (NOTHING_SCORE, 0.0));
        assert!(s.reason.contains("sees nothing"), "{}", s.reason);
    }

    #[test]
    fn a_partial_overlap_gives_the_hand_computed_value() {
        // A: class 1 at 0.8, 4x4 at x 0..4; class 2 at 0.5, only in A.
        // B: class 1 at 0.6, 4x4 at x 2..6 (overlap 2x4 = 8 px, union 24: IoU 1/3).
        // agreement = min(0.8, 0.6) * 1/3 = 0.2; total = (0.8 + 0.5 + 0.6) / 2 = 0.95;
        // disagreement = 1 - 0.2 / 0.95 = 0.789473684...
        let a = vec![
            det(1, 0.8, [0, 0, 4, 4], 12, 8),
            det(2, 0.5, [8, 4, 12, 8], 12, 8),
        ];
        let b = vec![det(1, 0.6, [2, 0, 6, 4], 12, 8)];
        let expected = 1.0 - 0.2 / 0.95;
        // f32 scores (0.8, 0.6 are not exact in f32): 1e-7.
        assert!((flip_disagreement(&a, &b) - expected).abs() < 1e-7);
        // Symmetric in its two passes.
        assert!((flip_disagreement(&b, &a) - expected).abs() < 1e-7);
    }

    #[test]
    fn greedy_matching_takes_the_heaviest_pair_first_and_uses_each_detection_once() {
        // A0 overlaps both B0 (IoU 1) and B1 (IoU 1/3); B1 has nobody else: one pair only.
        let a = vec![det(1, 1.0, [0, 0, 4, 4], 10, 4)];
        let b = vec![
            det(1, 1.0, [0, 0, 4, 4], 10, 4),
            det(1, 1.0, [2, 0, 6, 4], 10, 4),
        ];
        // agreement 1 (A0-B0), total (1 + 2) / 2 = 1.5: 1 - 1/1.5 = 1/3.
        assert!((flip_disagreement(&a, &b) - 1.0 / 3.0).abs() < TOL);
    }

    #[test]
    fn scores_stay_in_the_unit_interval() {
        let a = vec![
            det(1, 1.0, [0, 0, 10, 8], 10, 8),
            det(1, 1.0, [0, 0, 10, 8], 10, 8),
        ];
        let b = vec![det(1, 1.0, [0, 0, 10, 8], 10, 8)];
        let d = flip_disagreement(&a, &b);
        assert!((d - (1.0 - 1.0 / 1.5)).abs() < TOL && (0.0..=1.0).contains(&d));
    }

    #[test]
    fn flip_back_mirrors_box_mask_and_soft_mask() {
        let d = det(1, 0.7, [1, 2, 4, 5], 10, 6);
        let f = flip_back(&d, 10);
        assert_eq!(f.box_xyxy, [6.0, 2.0, 9.0, 5.0]);
        assert_eq!(f.mask.bbox(), [6.0, 2.0, 3.0, 3.0]);
        assert_eq!(f.mask.area(), 9);
        assert_eq!(flip_back(&f, 10), d, "mirroring twice is the identity");

        // A soft mask over columns 1..4 of row 0 in a 6-wide image: [10, 200, 130].
        let full = [0, 10, 200, 130, 0, 0];
        let soft = SoftMask::from_quantised(6, 1, &full);
        let s = Detection {
            soft_mask: Some(soft.clone()),
            mask: Mask::new(0, 0),
            ..det(1, 0.5, [1, 0, 4, 1], 6, 1)
        };
        let fs = flip_back(&s, 6).soft_mask.unwrap();
        assert_eq!(
            (fs.x0, fs.width, fs.data.clone()),
            (2, 3, vec![130, 200, 10])
        );
        assert_eq!(
            fs.threshold(0.5).data(),
            &[0, 0, 1, 1, 0, 0],
            "p = 130/255 and 200/255 pass 0.5; mirrored they sit at columns 2 and 3"
        );
    }

    #[test]
    fn soft_and_binary_masks_give_the_same_iou() {
        let a = det(1, 0.9, [0, 0, 4, 4], 8, 4);
        let b = det(1, 0.9, [2, 0, 6, 4], 8, 4);
        let soften = |d: &Detection| {
            let q: Vec<u8> = d.mask.data().iter().map(|&v| v * 255).collect();
            Detection {
                soft_mask: Some(SoftMask::from_quantised(8, 4, &q)),
                mask: Mask::new(0, 0),
                ..d.clone()
            }
        };
        let binary = Crop::of(&a).iou(&Crop::of(&b));
        assert!((binary - 1.0 / 3.0).abs() < TOL);
        assert!((Crop::of(&soften(&a)).iou(&Crop::of(&soften(&b))) - binary).abs() < TOL);
        assert!(
            (a.mask.iou(&b.mask) - binary).abs() < TOL,
            "same as Mask::iou"
        );
    }

    #[test]
    fn entropy_is_one_bit_at_half_and_zero_at_the_ends() {
        assert!((binary_entropy(0.5) - 1.0).abs() < TOL);
        assert_eq!(binary_entropy(1.0), 0.0);
        assert_eq!(binary_entropy(0.0), 0.0);
        // H(0.25) = 0.811278124459...
        assert!((binary_entropy(0.25) - 0.811_278_124_459_132_9).abs() < 1e-12);
        let a = vec![det(1, 0.5, [0, 0, 1, 1], 2, 2)];
        let b = vec![det(1, 1.0, [0, 0, 1, 1], 2, 2)];
        assert!((mean_entropy(&a, &b) - 0.5).abs() < TOL);
        assert_eq!(mean_entropy(&[], &[]), 0.0);
    }

    #[test]
    fn candidates_follow_the_flag_and_leave_rejected_images_out() {
        let item = |instances: u32, status: ReviewStatus| GalleryItem {
            id: 1,
            rel_path: "a.png".into(),
            width: 1,
            height: 1,
            split: None,
            status,
            instances,
            class_ids: Vec::new(),
            edited: false,
        };
        let raw = item(0, ReviewStatus::Unreviewed);
        let labelled = item(3, ReviewStatus::Unreviewed);
        let empty_accepted = item(0, ReviewStatus::Accepted);
        let done = item(2, ReviewStatus::Accepted);
        let rejected = item(0, ReviewStatus::Rejected);
        let pick = |c: Candidates| {
            [&raw, &labelled, &empty_accepted, &done, &rejected].map(|m| c.includes(m))
        };
        assert_eq!(
            pick(Candidates::Unlabelled),
            [true, false, true, false, false]
        );
        assert_eq!(
            pick(Candidates::Unreviewed),
            [true, true, false, false, false]
        );
        assert_eq!(pick(Candidates::Both), [true, true, true, false, false]);
        for c in Candidates::ALL {
            assert_eq!(c.as_str().parse::<Candidates>(), Ok(c));
        }
    }

    #[test]
    fn the_queue_sorts_by_score_then_entropy_then_id() {
        let row = |id: i64, score: f64, entropy: f64| RankedImage {
            image_id: id,
            path: PathBuf::new(),
            rel_path: String::new(),
            score,
            entropy,
            detections: 0,
            mirrored_detections: 0,
            instances: 0,
            status: ReviewStatus::Unreviewed,
            reason: String::new(),
        };
        let mut v = vec![
            row(1, 0.2, 0.9),
            row(2, 1.0, 0.0),
            row(3, 0.2, 0.95),
            row(4, 1.0, 0.0),
        ];
        sort_ranked(&mut v);
        let ids: Vec<i64> = v.iter().map(|r| r.image_id).collect();
        assert_eq!(ids, [2, 4, 3, 1]);
    }
}
