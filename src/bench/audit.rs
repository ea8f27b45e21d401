//! Planted-error benchmark of the label-error audit (issue 18), for `cargo bench --bench audit`.
//!
//! A clean generated set (the sample's scenes, [`crate::sample_project::generate_scene`]: exact
//! masks, 1–4 objects of three classes on 320×240) is split in two: a training pool the model
//! learns from, and audited scenes whose labels get seeded errors at the rates —
//! [`DROP_FRACTION`] of the instances dropped, [`LOOSE_FRACTION`] eroded / dilated / shifted by
//! a few pixels, [`SWAP_FRACTION`] given another class, and [`SPURIOUS_FRACTION`] (of the
//! instance count) spurious blobs added on background. The model never sees the audited
//! scenes (they sit in split `test`, which training ignores), so its predictions are out of
//! sample as the audit requires.
//!
//! Each error type is then a ranking problem over candidates ([`candidates`]):
//! - **loose / swap / spurious**: every label of the audited scenes, scored by the audit's
//!   finding of that kind on it (0 when none); positive when that error was planted on it;
//! - **missing**: every "missing" finding, positive when its suggested mask overlaps a dropped
//!   instance's true mask with IoU ≥ [`MISSING_MATCH_IOU`] (each dropped instance matched once,
//!   surest finding first), plus each dropped instance no finding found, at score 0.
//!
//! Reported per type ([`rank_metrics`]): precision at the top N (N = number planted) and the
//! AUROC of the ranking, next to two baselines over the same candidates: a seeded random order
//! and "smallest area first" (the label's area; for missing candidates the suggested mask's,
//! or the dropped mask's when nothing was found — generous to the baselines, which cannot
//! propose an unlabelled object at all).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;

use crate::dataset::generated::Scene;
use crate::dataset::maskops::{dilate, erode};
use crate::dataset::{Mask, Rle};
use crate::eval::audit::ErrorKind;
use crate::rng::SplitMix64;

/// Fraction of the clean instances dropped from the labels (issue 18: 10 %).
pub const DROP_FRACTION: f64 = 0.10;
/// Fraction of the clean instances whose mask is eroded, dilated or shifted (issue 18: 10 %).
pub const LOOSE_FRACTION: f64 = 0.10;
/// Fraction of the clean instances given another class (issue 18: 5 %).
pub const SWAP_FRACTION: f64 = 0.05;
/// Spurious blobs added, as a fraction of the clean instance count (issue 18: 5 %).
pub const SPURIOUS_FRACTION: f64 = 0.05;
/// Pixels a loose mask is eroded, dilated or shifted by: uniform in this range ("a few").
pub const LOOSE_PIXELS: std::ops::RangeInclusive<u32> = 2..=4;
/// A missing finding names a dropped instance when its suggested mask overlaps the dropped
/// mask at least this much (COCO's AP50 match, the audit's own `match_iou`).
pub const MISSING_MATCH_IOU: f64 = 0.5;
/// Semi-axes of a spurious blob (an ellipse), in pixels: the sample's object scale.
const BLOB_RADII: (f64, f64) = (12.0, 30.0);
/// A spurious blob may cover at most this fraction of its area on labelled objects (it is
/// meant to label background).
const BLOB_MAX_OVERLAP: f64 = 0.1;
/// Placement attempts per spurious blob before any image is tried.
const BLOB_ATTEMPTS: usize = 200;

/// How a loose label was made from the true mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LooseEdit {
    /// Eroded this many times with the 3×3 square.
    Erode(u32),
    /// Dilated this many times with the 3×3 square.
    Dilate(u32),
    /// Moved by `(dx, dy)` pixels (cut at the image border).
    Shift(i32, i32),
}

/// The error planted on a label (or a dropped instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// The instance was removed from the labels (kept in [`PlantedImage::dropped`]).
    Dropped,
    /// The outline was changed.
    Loose(LooseEdit),
    /// The class was changed from this (true) class.
    Swapped {
        /// The true class index.
        from: usize,
    },
    /// A blob on background, labelled as an object.
    Spurious,
}

impl Planted {
    /// The audit's finding kind that should flag it.
    pub fn kind(self) -> ErrorKind {
        match self {
            Planted::Dropped => ErrorKind::Missing,
            Planted::Loose(_) => ErrorKind::Loose,
            Planted::Swapped { .. } => ErrorKind::Swap,
            Planted::Spurious => ErrorKind::Spurious,
        }
    }
}

/// One label of an audited scene as stored: class, mask, and what was planted on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlantedLabel {
    /// Class index as labelled (after a swap, the wrong one).
    pub class: usize,
    /// Mask as labelled (after a loose edit, the wrong one).
    pub mask: Mask,
    /// The planted error, `None` for a clean label.
    pub planted: Option<Planted>,
}

/// One audited scene: its image, its (partly wrong) labels and the instances dropped from them.
#[derive(Debug, Clone)]
pub struct PlantedImage {
    /// The image (unchanged).
    pub image: image::RgbImage,
    /// Labels in store order.
    pub labels: Vec<PlantedLabel>,
    /// `(true class, true mask)` of each dropped instance.
    pub dropped: Vec<(usize, Mask)>,
}

/// How many of `total` a fraction plants (rounded, at least one when `total > 0`).
pub fn planted_count(total: usize, fraction: f64) -> usize {
    if total == 0 {
        return 0;
    }
    ((total as f64 * fraction).round() as usize).max(1)
}

/// `mask` moved by `(dx, dy)`; pixels moved off the image are lost.
pub fn shift_mask(mask: &Mask, dx: i32, dy: i32) -> Mask {
    let (w, h) = (mask.width(), mask.height());
    let mut out = Mask::new(w, h);
    for y in 0..h {
        for x in 0..w {
            if !mask.get(x, y) {
                continue;
            }
            let (nx, ny) = (i64::from(x) + i64::from(dx), i64::from(y) + i64::from(dy));
            if (0..i64::from(w)).contains(&nx) && (0..i64::from(h)).contains(&ny) {
                out.set(nx as u32, ny as u32, true);
            }
        }
    }
    out
}

/// `mask` changed by `edit`.
pub fn apply_loose(mask: &Mask, edit: LooseEdit) -> Mask {
    match edit {
        LooseEdit::Erode(n) => (0..n).fold(mask.clone(), |m, _| erode(&m)),
        LooseEdit::Dilate(n) => (0..n).fold(mask.clone(), |m, _| dilate(&m)),
        LooseEdit::Shift(dx, dy) => shift_mask(mask, dx, dy),
    }
}

/// A filled ellipse (centre, semi-axes, angle in radians) on a `w`×`h` mask, pixel centres
/// tested.
fn ellipse(w: u32, h: u32, [cx, cy, rx, ry, angle]: [f64; 5]) -> Mask {
    let mut m = Mask::new(w, h);
    let (s, c) = angle.sin_cos();
    let r = rx.max(ry);
    let clip = |v: f64, max: u32| v.clamp(0.0, f64::from(max)) as u32;
    for y in clip(cy - r, h)..clip(cy + r + 1.0, h) {
        for x in clip(cx - r, w)..clip(cx + r + 1.0, w) {
            let (dx, dy) = (f64::from(x) + 0.5 - cx, f64::from(y) + 0.5 - cy);
            let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
            if (u / rx).powi(2) + (v / ry).powi(2) <= 1.0 {
                m.set(x, y, true);
            }
        }
    }
    m
}

/// Plants the errors in `scenes` (seeded, exact counts over the whole set): of the
/// clean instances, disjoint random subsets are dropped ([`DROP_FRACTION`]), made loose
/// ([`LOOSE_FRACTION`]: erode, dilate and shift in turn, by [`LOOSE_PIXELS`]) and swapped to
/// another of `classes` classes ([`SWAP_FRACTION`]); then [`SPURIOUS_FRACTION`] × the instance
/// count blobs of a random class go on background of random scenes.
pub fn plant_errors(scenes: &[Scene], classes: usize, seed: u64) -> Vec<PlantedImage> {
    let mut rng = SplitMix64::new(seed ^ 0x0070_6c61_6e74_6564);
    let all: Vec<(usize, usize)> = scenes
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.instances.len()).map(move |k| (i, k)))
        .collect();
    let mut order = all.clone();
    rng.shuffle(&mut order);
    let n = all.len();
    let (n_drop, n_loose, n_swap) = (
        planted_count(n, DROP_FRACTION),
        planted_count(n, LOOSE_FRACTION),
        planted_count(n, SWAP_FRACTION),
    );
    let mut plan: HashMap<(usize, usize), Planted> = HashMap::new();
    for (rank, &key) in order.iter().enumerate().take(n_drop + n_loose + n_swap) {
        let planted = if rank < n_drop {
            Planted::Dropped
        } else if rank < n_drop + n_loose {
            let k = LOOSE_PIXELS.start()
                + rng.below((LOOSE_PIXELS.end() - LOOSE_PIXELS.start() + 1) as usize) as u32;
            Planted::Loose(match (rank - n_drop) % 3 {
                0 => LooseEdit::Erode(k),
                1 => LooseEdit::Dilate(k),
                _ => {
                    let a = rng.uniform(0.0, std::f64::consts::TAU);
                    let (dx, dy) = (f64::from(k) * a.cos(), f64::from(k) * a.sin());
                    LooseEdit::Shift(dx.round() as i32, dy.round() as i32)
                }
            })
        } else {
            Planted::Swapped {
                from: scenes[key.0].instances[key.1].0,
            }
        };
        plan.insert(key, planted);
    }
    let mut out: Vec<PlantedImage> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut labels = Vec::new();
            let mut dropped = Vec::new();
            for (k, (class, mask)) in s.instances.iter().enumerate() {
                match plan.get(&(i, k)).copied() {
                    Some(Planted::Dropped) => dropped.push((*class, mask.clone())),
                    Some(Planted::Loose(edit)) => {
                        // A thin object eroded to (almost) nothing would be a dropped one:
                        // dilated instead.
                        let mut edit = edit;
                        let mut loose = apply_loose(mask, edit);
                        if let LooseEdit::Erode(k) = edit
                            && loose.area() * 4 < mask.area()
                        {
                            edit = LooseEdit::Dilate(k);
                            loose = apply_loose(mask, edit);
                        }
                        labels.push(PlantedLabel {
                            class: *class,
                            mask: loose,
                            planted: Some(Planted::Loose(edit)),
                        });
                    }
                    Some(p @ Planted::Swapped { from }) => labels.push(PlantedLabel {
                        class: (from + 1 + rng.below(classes.max(2) - 1)) % classes.max(2),
                        mask: mask.clone(),
                        planted: Some(p),
                    }),
                    _ => labels.push(PlantedLabel {
                        class: *class,
                        mask: mask.clone(),
                        planted: None,
                    }),
                }
            }
            PlantedImage {
                image: s.image.clone(),
                labels,
                dropped,
            }
        })
        .collect();
    let n_spurious = planted_count(n, SPURIOUS_FRACTION);
    for _ in 0..n_spurious {
        // True objects (dropped ones included: a blob on a dropped object would not be
        // spurious) are what a blob must avoid.
        for attempt in 0..BLOB_ATTEMPTS * 4 {
            let i = rng.below(out.len());
            let (w, h) = out[i].image.dimensions();
            let (rx, ry) = (
                rng.uniform(BLOB_RADII.0, BLOB_RADII.1),
                rng.uniform(BLOB_RADII.0, BLOB_RADII.1),
            );
            let geometry = [
                rng.uniform(rx, f64::from(w) - rx),
                rng.uniform(ry, f64::from(h) - ry),
                rx,
                ry,
                rng.uniform(0.0, std::f64::consts::PI),
            ];
            let blob = ellipse(w, h, geometry);
            let area = blob.area().max(1);
            let objects = &scenes[i].instances;
            let covered: u64 = objects
                .iter()
                .map(|(_, m)| {
                    blob.data()
                        .iter()
                        .zip(m.data())
                        .filter(|&(&a, &b)| a != 0 && b != 0)
                        .count() as u64
                })
                .sum();
            if (covered as f64) <= BLOB_MAX_OVERLAP * area as f64
                || attempt + 1 == BLOB_ATTEMPTS * 4
            {
                out[i].labels.push(PlantedLabel {
                    class: rng.below(classes.max(1)),
                    mask: blob,
                    planted: Some(Planted::Spurious),
                });
                break;
            }
        }
    }
    out
}

/// One audit finding, with the store's ids turned into indices of the audited scenes.
#[derive(Debug, Clone)]
pub struct BenchFinding {
    /// Index of the scene in the audited list.
    pub image: usize,
    /// Index of the label in [`PlantedImage::labels`] (`None` for missing).
    pub label: Option<usize>,
    /// What the audit suspects.
    pub kind: ErrorKind,
    /// Its score in `[0, 1]`.
    pub score: f64,
    /// The suggested mask (missing, loose), at image size.
    pub suggested: Option<Rle>,
}

/// One item of a ranking: its audit score, whether an error of the ranked type was planted
/// there, and the area the "smallest first" baseline sorts by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The audit's score for this kind (0 when it raised nothing).
    pub score: f64,
    /// Whether it is a planted error of the ranked kind.
    pub positive: bool,
    /// Pixels of the label (or of the suggested / dropped mask for missing candidates).
    pub area: u64,
}

/// The candidates of `kind` (see the module docs): labels scored by their finding of that
/// kind, or for [`ErrorKind::Missing`] the missing findings matched greedily (surest first) to
/// the dropped masks plus the dropped instances none matched.
pub fn candidates(
    images: &[PlantedImage],
    findings: &[BenchFinding],
    kind: ErrorKind,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    if kind == ErrorKind::Missing {
        for (i, img) in images.iter().enumerate() {
            let dropped: Vec<Rle> = img.dropped.iter().map(|(_, m)| m.to_rle()).collect();
            let mut matched = vec![false; dropped.len()];
            let mut found: Vec<&BenchFinding> = findings
                .iter()
                .filter(|f| f.image == i && f.kind == ErrorKind::Missing)
                .collect();
            found.sort_by(|a, b| b.score.total_cmp(&a.score));
            for f in found {
                let best = f.suggested.as_ref().and_then(|s| {
                    (0..dropped.len())
                        .filter(|&d| !matched[d])
                        .map(|d| (d, s.iou(&dropped[d])))
                        .filter(|&(_, iou)| iou >= MISSING_MATCH_IOU)
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                });
                if let Some((d, _)) = best {
                    matched[d] = true;
                }
                out.push(Candidate {
                    score: f.score,
                    positive: best.is_some(),
                    area: f.suggested.as_ref().map_or(0, Rle::area),
                });
            }
            for (d, rle) in dropped.iter().enumerate() {
                if !matched[d] {
                    out.push(Candidate {
                        score: 0.0,
                        positive: true,
                        area: rle.area(),
                    });
                }
            }
        }
        return out;
    }
    let mut best: HashMap<(usize, usize), f64> = HashMap::new();
    for f in findings.iter().filter(|f| f.kind == kind) {
        if let Some(label) = f.label {
            let e = best.entry((f.image, label)).or_insert(0.0);
            *e = e.max(f.score);
        }
    }
    for (i, img) in images.iter().enumerate() {
        for (k, label) in img.labels.iter().enumerate() {
            out.push(Candidate {
                score: best.get(&(i, k)).copied().unwrap_or(0.0),
                positive: label.planted.is_some_and(|p| p.kind() == kind),
                area: label.mask.area(),
            });
        }
    }
    out
}

/// Precision among the `n` highest scores: the fraction of positives in the top `n`. Ties are
/// resolved by expectation: when the cut falls inside a group of equal scores, that group
/// contributes its share of the remaining places times its fraction of positives (what a
/// random order among the tied would give on average). `n` larger than the list counts the
/// missing places as misses; `n == 0` gives 0.
pub fn precision_at_n(scores: &[f64], positive: &[bool], n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut taken, mut hits, mut start) = (0usize, 0.0f64, 0usize);
    while start < idx.len() && taken < n {
        let mut end = start + 1;
        while end < idx.len() && scores[idx[end]] == scores[idx[start]] {
            end += 1;
        }
        let group = end - start;
        let pos = idx[start..end].iter().filter(|&&i| positive[i]).count();
        let places = group.min(n - taken);
        hits += places as f64 * pos as f64 / group as f64;
        taken += places;
        start = end;
    }
    hits / n as f64
}

/// Area under the ROC curve of `scores` ranking the `positive` items first: the probability
/// that a random positive scores above a random negative, ties counting 0.5 (Mann–Whitney U).
/// `None` when there are no positives or no negatives.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let len = scores.len().min(positive.len());
    let mut idx: Vec<usize> = (0..len).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n_pos = idx.iter().filter(|&&i| positive[i]).count();
    let n_neg = len - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Walk groups of equal scores from the lowest: each positive beats the negatives below
    // its group and ties half of those in it.
    let (mut below_neg, mut u, mut start) = (0usize, 0.0f64, 0usize);
    while start < len {
        let mut end = start + 1;
        while end < len && scores[idx[end]] == scores[idx[start]] {
            end += 1;
        }
        let pos = idx[start..end].iter().filter(|&&i| positive[i]).count();
        let neg = (end - start) - pos;
        u += pos as f64 * (below_neg as f64 + 0.5 * neg as f64);
        below_neg += neg;
        start = end;
    }
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Precision at N and AUROC of one ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankScore {
    /// Precision among the top N (N = number planted).
    pub precision_at_n: f64,
    /// Area under the ROC curve (`None` without positives or negatives).
    pub auroc: Option<f64>,
}

impl RankScore {
    fn of(scores: &[f64], positive: &[bool], n: usize) -> Self {
        Self {
            precision_at_n: precision_at_n(scores, positive, n),
            auroc: auroc(scores, positive),
        }
    }
}

/// One row of the table: an error type's rankings by the audit and by both baselines.
#[derive(Debug, Clone, PartialEq)]
pub struct RankRow {
    /// The error type.
    pub kind: ErrorKind,
    /// How many were planted (N).
    pub planted: usize,
    /// How many the ranking holds.
    pub candidates: usize,
    /// Planted errors the audit raised a finding of this kind for (score > 0).
    pub found: usize,
    /// The audit's ranking.
    pub audit: RankScore,
    /// A seeded random order.
    pub random: RankScore,
    /// Smallest area first.
    pub smallest: RankScore,
}

/// Scores one kind's `candidates` against `planted` errors: the audit's order, a random order
/// drawn from `seed`, and smallest area first.
pub fn rank_metrics(kind: ErrorKind, cands: &[Candidate], planted: usize, seed: u64) -> RankRow {
    let positive: Vec<bool> = cands.iter().map(|c| c.positive).collect();
    let audit: Vec<f64> = cands.iter().map(|c| c.score).collect();
    let mut rng = SplitMix64::new(seed ^ (kind as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let random: Vec<f64> = cands.iter().map(|_| rng.next_f64()).collect();
    let smallest: Vec<f64> = cands.iter().map(|c| -(c.area as f64)).collect();
    RankRow {
        kind,
        planted,
        candidates: cands.len(),
        found: cands.iter().filter(|c| c.positive && c.score > 0.0).count(),
        audit: RankScore::of(&audit, &positive, planted),
        random: RankScore::of(&random, &positive, planted),
        smallest: RankScore::of(&smallest, &positive, planted),
    }
}

/// The four rows (missing, loose, swap, spurious) for the audited scenes and their findings.
pub fn score_table(images: &[PlantedImage], findings: &[BenchFinding], seed: u64) -> Vec<RankRow> {
    [
        ErrorKind::Missing,
        ErrorKind::Loose,
        ErrorKind::Swap,
        ErrorKind::Spurious,
    ]
    .into_iter()
    .map(|kind| {
        let planted = if kind == ErrorKind::Missing {
            images.iter().map(|i| i.dropped.len()).sum()
        } else {
            images
                .iter()
                .flat_map(|i| &i.labels)
                .filter(|l| l.planted.is_some_and(|p| p.kind() == kind))
                .count()
        };
        rank_metrics(kind, &candidates(images, findings, kind), planted, seed)
    })
    .collect()
}

/// The table as printed: one line per error type.
pub fn format_table(rows: &[RankRow]) -> String {
    let auc = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let mut s = format!(
        "{:<9} {:>7} {:>6} {:>6} | {:>9} {:>7} | {:>9} {:>7} | {:>9} {:>7}\n",
        "type",
        "planted",
        "cands",
        "found",
        "audit P@N",
        "AUROC",
        "rand P@N",
        "AUROC",
        "small P@N",
        "AUROC"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<9} {:>7} {:>6} {:>6} | {:>9.3} {:>7} | {:>9.3} {:>7} | {:>9.3} {:>7}\n",
            r.kind.as_str(),
            r.planted,
            r.candidates,
            r.found,
            r.audit.precision_at_n,
            auc(r.audit.auroc),
            r.random.precision_at_n,
            auc(r.random.auroc),
            r.smallest.precision_at_n,
            auc(r.smallest.auroc),
        ));
    }
    s
}

/// What `cargo bench --bench audit` runs (its flags).
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Clean scenes the model trains on (the trainer holds out its own validation share).
    pub train_images: usize,
    /// Scenes audited, with planted errors.
    pub audit_images: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Longer side the model receives, in pixels.
    pub image_size: u32,
    /// Seed of the scenes' offset, the planting, the training and the random baseline.
    pub seed: u64,
    /// Where the model trains and predicts.
    pub device: crate::host::DeviceChoice,
}

impl Default for BenchSettings {
    /// The CPU-sized default: 64 training scenes for 8 epochs at 224 px (about 8 minutes on 2
    /// cores), 96 audited scenes.
    fn default() -> Self {
        Self {
            train_images: 64,
            audit_images: 96,
            epochs: 8,
            image_size: 224,
            seed: 0,
            device: crate::host::DeviceChoice::Cpu,
        }
    }
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// One row per error type.
    pub rows: Vec<RankRow>,
    /// Instances of the audited scenes before planting.
    pub clean_instances: usize,
    /// Labels of the audited scenes after planting.
    pub labels: usize,
    /// Findings the audit stored, per kind.
    pub findings: std::collections::BTreeMap<String, usize>,
    /// Best validation mask AP of the training run (on its own clean validation images).
    pub val_mask_ap: Option<f64>,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Seconds spent auditing (prediction and scoring).
    pub audit_seconds: f64,
    /// The audit's out-of-sample statement.
    pub out_of_sample: String,
}

/// Scene index of the first scene a seed uses (seeds draw disjoint ranges of scenes).
fn scene_base(seed: u64) -> usize {
    (seed as usize % 1000) * 100_000
}

/// Writes `scenes` (class index, mask) as a project of the sample's classes in `dir`.
fn write_scenes(
    dir: &Path,
    scenes: Vec<Scene>,
    base: usize,
    split: Option<&str>,
) -> anyhow::Result<()> {
    use crate::dataset::generated::{GeneratedImage, GeneratedSet, write_generated_project};
    let set = GeneratedSet {
        source: "audit-bench",
        classes: &crate::sample_project::SAMPLE_CLASSES,
        author: "Mask Studio audit benchmark",
        what: "the audit benchmark's scenes",
    };
    let mut scenes = scenes.into_iter();
    write_generated_project(
        dir,
        set,
        scenes.len(),
        &mut |i| {
            Ok(GeneratedImage {
                scene: scenes.next().context("fewer scenes than counted")?,
                file_name: format!("scene-{:06}.png", base + i),
                split: split.map(str::to_owned),
                title: format!("Sample scene {}", base + i),
                provenance: serde_json::json!({"generator": "maskstudio bench audit", "scene": base + i}),
            })
        },
        &mut |_| {},
    )
}

/// Runs the benchmark in `work` (two projects and a run folder are made there): trains on
/// clean scenes, plants errors in other scenes, audits them with the trained model through
/// [`crate::eval::audit::audit_with_model`] and scores the rankings. `log` hears progress
/// lines.
pub fn run(
    s: &BenchSettings,
    work: &Path,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<BenchReport> {
    use crate::cancel::CancelToken;
    use crate::eval::audit::{AuditParams, AuditProgress, audit_with_model};
    use crate::sample_project::{SAMPLE_CLASSES, generate_scene, train_config};
    use crate::train::config::RefitMode;

    let base = scene_base(s.seed);
    let gen_scenes = |from: usize, n: usize| -> anyhow::Result<Vec<Scene>> {
        (from..from + n)
            .map(|i| generate_scene(i).with_context(|| format!("generating scene {i}")))
            .collect()
    };
    let (train_dir, audit_dir, runs_dir) =
        (work.join("train"), work.join("audited"), work.join("runs"));
    write_scenes(&train_dir, gen_scenes(base, s.train_images)?, base, None)?;
    let clean = gen_scenes(base + s.train_images, s.audit_images)?;
    let clean_instances = clean.iter().map(|c| c.instances.len()).sum();
    let planted = plant_errors(&clean, SAMPLE_CLASSES.len(), s.seed);
    let planted_scenes: Vec<Scene> = planted
        .iter()
        .map(|p| Scene {
            image: p.image.clone(),
            instances: p.labels.iter().map(|l| (l.class, l.mask.clone())).collect(),
        })
        .collect();
    write_scenes(
        &audit_dir,
        planted_scenes,
        base + s.train_images,
        Some("test"),
    )?;
    log(format!(
        "{} clean training scenes in {}, {} audited scenes ({clean_instances} instances) with planted errors in {}",
        s.train_images,
        train_dir.display(),
        s.audit_images,
        audit_dir.display()
    ));

    // The model: the sample's quick recipe at the asked size and length, no refit (the best
    // checkpoint on the run's own clean validation images is the auditor).
    let cfg = crate::train::TrainConfig {
        image_size: Some(s.image_size),
        epochs: s.epochs,
        seed: s.seed,
        device: s.device,
        refit: RefitMode::Off,
        ..train_config()
    };
    let started = std::time::Instant::now();
    let cancel = CancelToken::default();
    let summary = crate::train::train(
        &train_dir,
        &runs_dir,
        &cfg,
        &cancel,
        &mut crate::train::PrintObserver { every: 50 },
    )
    .context("training the benchmark's model")?;
    let train_seconds = started.elapsed().as_secs_f64();
    let bundle = [
        crate::train::trainer::BEST_CHECKPOINT,
        crate::train::trainer::LAST_CHECKPOINT,
    ]
    .iter()
    .map(|c| summary.run_dir.join(c))
    .find(|b| crate::train::runs::is_bundle(b))
    .with_context(|| format!("{}: the run left no checkpoint", summary.run_dir.display()))?;
    let val_mask_ap = crate::train::runs::epoch_aps(&summary.run_dir)
        .into_iter()
        .reduce(f64::max);

    let started = std::time::Instant::now();
    let outcome = audit_with_model(
        &audit_dir,
        &bundle,
        None,
        s.device,
        &AuditParams::default(),
        &cancel,
        &mut |p| {
            if let AuditProgress::Note(n) = p {
                log(n);
            }
        },
    )
    .context("auditing the planted scenes")?;
    let audit_seconds = started.elapsed().as_secs_f64();

    // Store ids → scene and label indices (images and instances come back in import order).
    let project = crate::dataset::store::Project::open(&audit_dir)?;
    let stored = project.export_set(None)?;
    anyhow::ensure!(
        stored.images.len() == planted.len(),
        "{}: {} images stored, {} planted",
        audit_dir.display(),
        stored.images.len(),
        planted.len()
    );
    let mut where_is: HashMap<i64, usize> = HashMap::new();
    let mut label_of: HashMap<i64, (usize, usize)> = HashMap::new();
    for (i, (img, p)) in stored.images.iter().zip(&planted).enumerate() {
        anyhow::ensure!(
            img.instances.len() == p.labels.len(),
            "{}: {} instances stored, {} planted",
            img.file_name,
            img.instances.len(),
            p.labels.len()
        );
        where_is.insert(img.id, i);
        for (k, inst) in img.instances.iter().enumerate() {
            label_of.insert(inst.id, (i, k));
        }
    }
    let kind_of = |k: &str| match k {
        "missing" => Some(ErrorKind::Missing),
        "spurious" => Some(ErrorKind::Spurious),
        "loose" => Some(ErrorKind::Loose),
        "swap" => Some(ErrorKind::Swap),
        _ => None,
    };
    let findings: Vec<BenchFinding> = outcome
        .findings
        .iter()
        .filter_map(|a| {
            let f = &a.finding;
            Some(BenchFinding {
                image: *where_is.get(&f.image_id)?,
                label: f
                    .instance_id
                    .and_then(|id| label_of.get(&id))
                    .map(|&(_, k)| k),
                kind: kind_of(&f.kind)?,
                score: f.score,
                suggested: f.suggested_mask.clone(),
            })
        })
        .collect();
    Ok(BenchReport {
        rows: score_table(&planted, &findings, s.seed),
        clean_instances,
        labels: planted.iter().map(|p| p.labels.len()).sum(),
        findings: outcome.counts.clone(),
        val_mask_ap,
        train_seconds,
        audit_seconds,
        out_of_sample: outcome.out_of_sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_at_n_counts_the_top_and_splits_ties_by_expectation() {
        let scores = [0.9, 0.8, 0.7, 0.1];
        let positive = [true, false, true, false];
        // Top 2: one positive of two.
        assert!((precision_at_n(&scores, &positive, 2) - 0.5).abs() < 1e-12);
        assert!((precision_at_n(&scores, &positive, 3) - 2.0 / 3.0).abs() < 1e-12);
        // N beyond the list: the missing place is a miss (2 of 5).
        assert!((precision_at_n(&scores, &positive, 5) - 0.4).abs() < 1e-12);
        // One sure positive, then four tied at 0 of which one is positive; top 3 takes the
        // sure one and 2 of the 4 tied places at 1/4 each: (1 + 0.5) / 3.
        let scores = [0.5, 0.0, 0.0, 0.0, 0.0];
        let positive = [true, false, true, false, false];
        assert!((precision_at_n(&scores, &positive, 3) - 0.5).abs() < 1e-12);
        assert_eq!(precision_at_n(&scores, &positive, 0), 0.0);
    }

    #[test]
    fn auroc_is_the_mann_whitney_probability_with_half_ties() {
        // Perfect, reversed.
        assert_eq!(auroc(&[0.9, 0.8, 0.1], &[true, true, false]), Some(1.0));
        assert_eq!(auroc(&[0.1, 0.8, 0.9], &[true, false, false]), Some(0.0));
        // Pairs (pos, neg): (0.9, 0.5) win, (0.9, 0.3) win, (0.4, 0.5) loss, (0.4, 0.3) win:
        // 3 / 4.
        let a = auroc(&[0.9, 0.5, 0.4, 0.3], &[true, false, true, false]).unwrap();
        assert!((a - 0.75).abs() < 1e-12, "{a}");
        // All tied: 0.5. Pos 0.5 against negs 0.5 (tie) and 0.2 (win): 0.75.
        assert_eq!(auroc(&[0.0, 0.0, 0.0], &[true, false, false]), Some(0.5));
        let a = auroc(&[0.5, 0.5, 0.2], &[true, false, false]).unwrap();
        assert!((a - 0.75).abs() < 1e-12, "{a}");
        assert_eq!(auroc(&[0.3, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[], &[]), None);
    }

    /// A `w`×`h` mask with the rectangle `[x0, x1) × [y0, y1)` set.
    fn rect(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Mask {
        let mut m = Mask::new(w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, true);
            }
        }
        m
    }

    #[test]
    fn loose_edits_move_the_outline_by_the_pixels_asked() {
        let m = rect(20, 20, (5, 5, 15, 15));
        assert_eq!(apply_loose(&m, LooseEdit::Erode(2)).area(), 36);
        assert_eq!(apply_loose(&m, LooseEdit::Dilate(2)).area(), 14 * 14);
        let s = apply_loose(&m, LooseEdit::Shift(3, -2));
        assert_eq!(s, rect(20, 20, (8, 3, 18, 13)));
        // Off the image: cut.
        assert_eq!(shift_mask(&m, 10, 0).area(), 50);
    }

    #[test]
    fn planting_is_seeded_and_counts_match_the_rates() {
        let scenes: Vec<Scene> = (0..12)
            .map(|i| crate::sample_project::generate_scene(i).unwrap())
            .collect();
        let total: usize = scenes.iter().map(|s| s.instances.len()).sum();
        let a = plant_errors(&scenes, 3, 4);
        let b = plant_errors(&scenes, 3, 4);
        let count = |imgs: &[PlantedImage], kind: ErrorKind| -> usize {
            if kind == ErrorKind::Missing {
                return imgs.iter().map(|i| i.dropped.len()).sum();
            }
            imgs.iter()
                .flat_map(|i| &i.labels)
                .filter(|l| l.planted.is_some_and(|p| p.kind() == kind))
                .count()
        };
        assert_eq!(
            count(&a, ErrorKind::Missing),
            planted_count(total, DROP_FRACTION)
        );
        assert_eq!(
            count(&a, ErrorKind::Loose),
            planted_count(total, LOOSE_FRACTION)
        );
        assert_eq!(
            count(&a, ErrorKind::Swap),
            planted_count(total, SWAP_FRACTION)
        );
        assert_eq!(
            count(&a, ErrorKind::Spurious),
            planted_count(total, SPURIOUS_FRACTION)
        );
        // Every true instance is a label or dropped; spurious ones come on top.
        let labels: usize = a.iter().map(|i| i.labels.len()).sum();
        assert_eq!(
            labels + count(&a, ErrorKind::Missing),
            total + count(&a, ErrorKind::Spurious)
        );
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.labels, y.labels);
        }
        for l in a.iter().flat_map(|i| &i.labels) {
            if let Some(Planted::Swapped { from }) = l.planted {
                assert_ne!(l.class, from);
            }
        }
    }

    #[test]
    fn missing_findings_match_dropped_masks_once_and_unfound_ones_score_zero() {
        let (w, h) = (40, 30);
        let image = PlantedImage {
            image: image::RgbImage::new(w, h),
            labels: vec![PlantedLabel {
                class: 0,
                mask: rect(w, h, (0, 0, 5, 5)),
                planted: None,
            }],
            dropped: vec![
                (1, rect(w, h, (10, 10, 20, 20))),
                (2, rect(w, h, (30, 0, 40, 10))),
            ],
        };
        let missing = |score, r| BenchFinding {
            image: 0,
            label: None,
            kind: ErrorKind::Missing,
            score,
            suggested: Some(rect(w, h, r).to_rle()),
        };
        let findings = [
            // IoU 80 / 100 with the first dropped mask: a hit.
            missing(0.9, (10, 10, 20, 18)),
            // The same object again: it is matched already, so a miss.
            missing(0.6, (10, 10, 20, 20)),
            // Background.
            missing(0.7, (0, 20, 10, 30)),
        ];
        let c = candidates(&[image], &findings, ErrorKind::Missing);
        let got: Vec<(f64, bool)> = c.iter().map(|c| (c.score, c.positive)).collect();
        assert_eq!(got, [(0.9, true), (0.7, false), (0.6, false), (0.0, true)]);
        let row = rank_metrics(ErrorKind::Missing, &c, 2, 0);
        // Top 2 = 0.9 (hit) and 0.7 (miss).
        assert!((row.audit.precision_at_n - 0.5).abs() < 1e-12);
        // Positives 0.9, 0.0 against negatives 0.7, 0.6: 2 + 0 wins of 4.
        assert!((row.audit.auroc.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(row.found, 1);
    }

    #[test]
    fn label_candidates_take_their_best_finding_of_the_kind() {
        let (w, h) = (20, 20);
        let label = |planted| PlantedLabel {
            class: 0,
            mask: rect(w, h, (0, 0, 4, 4)),
            planted,
        };
        let image = PlantedImage {
            image: image::RgbImage::new(w, h),
            labels: vec![
                label(None),
                label(Some(Planted::Swapped { from: 1 })),
                label(Some(Planted::Spurious)),
            ],
            dropped: Vec::new(),
        };
        let f = |label, kind, score| BenchFinding {
            image: 0,
            label: Some(label),
            kind,
            score,
            suggested: None,
        };
        let findings = [
            f(1, ErrorKind::Swap, 0.3),
            f(1, ErrorKind::Swap, 0.8),
            f(0, ErrorKind::Swap, 0.1),
            f(2, ErrorKind::Spurious, 1.0),
        ];
        let c = candidates(&[image], &findings, ErrorKind::Swap);
        let got: Vec<(f64, bool)> = c.iter().map(|c| (c.score, c.positive)).collect();
        assert_eq!(got, [(0.1, false), (0.8, true), (0.0, false)]);
    }
}
