//! Dataset statistics → proposed `MaskRcnnConfig` overrides, each with its reason.
//!
//! Rules (all on boxes as the model sees them, after torchvision's resize
//! [`crate::model::transform::resized_size`] with the config's last `min_size` — the eval size —
//! and `max_size`):
//! - **input size**: when the 5th-percentile object is under [`MIN_OBJECT_PX`] at the input,
//!   `min_size` (and `max_size` in proportion) grow until it is not, at most ×[`MAX_UPSCALE`] and
//!   [`MAX_MIN_SIZE`];
//! - **anchors**: one size per FPN level, a factor-2 geometric series whose smallest size is a
//!   power of two (≥ [`SMALLEST_ANCHOR`]) chosen to maximise the anchor coverage, which is
//!   reported before and after and never lowered;
//! - **per-image budgets**: detections and test-time RPN proposals follow the 99th percentile
//!   of instances per image; the training budgets stay (measured: see `budgets`).
//!
//! Anchor coverage is the standard autoanchor "best possible recall": the fraction of
//! ground-truth boxes whose shape (w, h) has IoU ≥ [`ANCHOR_IOU`] with some anchor shape, both
//! centred at the same point (positions ignored, so it is an upper bound on what the RPN matcher
//! can find).

use serde_json::{Map, Value, json};

use crate::dataset::stats::{DatasetStats, quantile, sort};
use crate::model::MaskRcnnConfig;
use crate::model::transform::resized_size;
use crate::train::config::TrainConfig;

/// Objects under 16 px at the input are upscaled: the finest FPN level (P2) has stride 4, so a
/// 16 px object covers 4 × 4 feature cells, the least for RoIAlign's 7 × 7 box / 14 × 14 mask
/// bins to sample distinct features (COCO calls objects under 32 px "small").
pub const MIN_OBJECT_PX: f64 = 16.0;
/// Upscaling is bounded to twice the base `min_size` (4× the pixels, so about 4× the compute).
pub const MAX_UPSCALE: f64 = 2.0;
/// Upscaling never makes `min_size` larger than 1024 (memory on CPU and small GPUs).
pub const MAX_MIN_SIZE: i64 = 1024;
/// Smallest anchor size: 2 × the P2 stride of 4, below which anchors tile the image too sparsely.
pub const SMALLEST_ANCHOR: i64 = 8;
/// Largest smallest-anchor tried (then the five levels end at 4096).
pub const LARGEST_SMALLEST_ANCHOR: i64 = 256;
/// IoU of the anchor coverage measure (autoanchor best possible recall; also torchvision's
/// `box_fg_iou_thresh`, and the RPN matcher keeps low-quality best matches under its 0.7).
pub const ANCHOR_IOU: f64 = 0.5;
/// torchvision `box_detections_per_img=100` (faster_rcnn.py:195): never proposed lower.
pub const MIN_DETECTIONS: i64 = 100;
/// Cap on `box_detections_per_img` (per-class NMS and mask pasting grow with it).
pub const MAX_DETECTIONS: i64 = 1000;
/// Cap on `rpn_post_nms_top_n_*` (twice torchvision's training default of 2000).
pub const MAX_RPN_POST_NMS: i64 = 4000;

pub use crate::train::config::REFIT_MAX_IMAGES;

/// Parts of the base configuration the user set, which auto-configuration leaves alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins {
    /// The input size (`image_size`, `min_size` or `max_size` given).
    pub input: bool,
    /// `anchor_sizes` given.
    pub anchor_sizes: bool,
    /// `aspect_ratios` given.
    pub aspect_ratios: bool,
}

/// A training config with the dataset-derived keys merged in.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The input config with the proposed keys added to `model_overrides` and `image_size`
    /// raised to an upscaled input's `max_size`.
    pub config: TrainConfig,
    /// What was proposed, kept and why.
    pub auto: AutoConfig,
    /// Keys the user set (left alone).
    pub pinned: Vec<String>,
    /// Recipe fields (`TrainConfig` keys) changed for the dataset, with reasons.
    pub recipe: Vec<Override>,
}

/// Auto-configuration of `cfg` for a dataset with `stats`: every `MaskRcnnConfig` key the user
/// did not set (in `model_overrides`; the input size also when `image_size` is given) takes
/// the value [`AutoConfig::from_stats_with`] proposes for the preset's model.
pub fn resolve(
    cfg: &TrainConfig,
    stats: &DatasetStats,
    num_classes: i64,
) -> anyhow::Result<Resolved> {
    let base = cfg.model_config(num_classes)?;
    let user = &cfg.model_overrides;
    let pins = Pins {
        input: cfg.image_size.is_some()
            || user.contains_key("min_size")
            || user.contains_key("max_size"),
        anchor_sizes: user.contains_key("anchor_sizes"),
        aspect_ratios: user.contains_key("aspect_ratios"),
    };
    let mut auto = AutoConfig::from_stats_with(stats, &base, pins);
    let mut pinned: Vec<String> = user.keys().cloned().collect();
    if cfg.image_size.is_some() {
        pinned.push("image_size".to_owned());
    }
    let mut set_by_user = Vec::new();
    auto.overrides.retain(|o| {
        let keep = !user.contains_key(o.key);
        if !keep {
            set_by_user.push(format!("{} set by you", o.key));
        }
        keep
    });
    auto.kept.extend(set_by_user);
    let mut config = cfg.clone();
    for o in &auto.overrides {
        config
            .model_overrides
            .insert(o.key.to_owned(), o.value.clone());
    }
    if let Some(max) = auto
        .overrides
        .iter()
        .find(|o| o.key == "max_size")
        .and_then(|o| o.value.as_i64())
        && max > i64::from(config.resolved_image_size())
    {
        // The loader resizes to the longer side first; it must not shrink below the model input.
        config.image_size = Some(u32::try_from(max)?);
    }
    let recipe = recipe_rules(&mut config, stats);
    pinned.extend(cfg.user_set.iter().cloned());
    config.validate()?;
    Ok(Resolved {
        config,
        auto,
        pinned,
        recipe,
    })
}

/// The recipe rules: a warm-up that ends inside the first epoch. Fields in `cfg.user_set` are
/// left alone. Returns what changed.
///
/// The learning rate is not scaled with the batch: measured on the droplets (16 training images,
/// 384 px, 4 epochs, batch 2; `cargo bench --bench recipe`), the linear scaling rule's 0.005
/// gave held-out mask AP 0.000, the preset's 0.01 gave 0.182 and 0.02 diverged at step 13.
fn recipe_rules(cfg: &mut TrainConfig, stats: &DatasetStats) -> Vec<Override> {
    let mut out = Vec::new();
    let steps = stats.images.div_ceil(cfg.batch_size.max(1)).max(1);
    if !cfg.is_user_set("warmup_iters") && cfg.warmup_iters > steps {
        out.push(Override {
            key: "warmup_iters",
            value: json!(steps),
            base: json!(cfg.warmup_iters),
            reason: format!(
                "warm-up within the first epoch ({} images / batch {} = {steps} steps), like the \
                 tutorial's min(1000, len(loader) - 1): a longer one spends short runs at a low rate",
                stats.images, cfg.batch_size
            ),
        });
        cfg.warmup_iters = steps;
    }
    out
}

impl Resolved {
    /// `autoconfig.json` of a run: statistics, proposed keys with base values and reasons,
    /// kept rules, pinned keys and the anchor coverage before and after.
    pub fn to_json(&self, stats: &DatasetStats) -> Value {
        json!({
            "statistics": {
                "images": stats.images,
                "instances": stats.instances,
                "instances_per_image": stats.per_image.map(|p| json!({"mean": p.mean, "p50": p.p50, "p99": p.p99, "max": p.max})),
                "object_size_px": stats.object_size.map(|q| json!({"p1": q.p1, "p5": q.p5, "p50": q.p50, "p95": q.p95, "p99": q.p99})),
                "aspect_h_over_w": stats.aspect.map(|a| json!({"p5": a.p5, "p50": a.p50, "p95": a.p95})),
            },
            "overrides": self.auto.overrides.iter().map(|o| json!({
                "key": o.key, "value": o.value, "base": o.base, "reason": o.reason,
            })).collect::<Vec<_>>(),
            "kept": self.auto.kept,
            "pinned": self.pinned,
            "anchor_coverage_iou": ANCHOR_IOU,
            "anchor_coverage_before": self.auto.coverage_before,
            "anchor_coverage_after": self.auto.coverage_after,
            "image_size": self.config.image_size,
            "recipe": self.recipe.iter().map(|o| json!({
                "key": o.key, "value": o.value, "base": o.base, "reason": o.reason,
            })).collect::<Vec<_>>(),
        })
    }

    /// One line per decision, for `train.log`.
    pub fn lines(&self) -> Vec<String> {
        let pct =
            |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", 100.0 * c));
        let mut out = vec![format!(
            "auto-config: anchor coverage (IoU >= {ANCHOR_IOU}) {} -> {}",
            pct(self.auto.coverage_before),
            pct(self.auto.coverage_after)
        )];
        for o in &self.auto.overrides {
            out.push(format!(
                "auto-config: {} {} -> {}: {}",
                o.key, o.base, o.value, o.reason
            ));
        }
        out.extend(
            self.auto
                .kept
                .iter()
                .map(|k| format!("auto-config kept: {k}")),
        );
        out
    }
}

/// One proposed change of a `MaskRcnnConfig` key.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// `MaskRcnnConfig` field name (a `model.json` key).
    pub key: &'static str,
    /// Proposed value.
    pub value: Value,
    /// The base config's value.
    pub base: Value,
    /// Why, with the numbers that decided it.
    pub reason: String,
}

/// Proposed overrides for a dataset, with the anchor coverage before and after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoConfig {
    /// Keys to change, in rule order.
    pub overrides: Vec<Override>,
    /// Rules that kept the base value, and why.
    pub kept: Vec<String>,
    /// Anchor coverage of the base config; `None` without measurable boxes.
    pub coverage_before: Option<f64>,
    /// Anchor coverage with the overrides applied; `None` without measurable boxes.
    pub coverage_after: Option<f64>,
}

impl AutoConfig {
    /// Proposes overrides of `base` for a dataset with `stats`.
    pub fn from_stats(stats: &DatasetStats, base: &MaskRcnnConfig) -> Self {
        Self::from_stats_with(stats, base, Pins::default())
    }

    /// [`Self::from_stats`] leaving the parts in `pins` at the base's values.
    pub fn from_stats_with(stats: &DatasetStats, base: &MaskRcnnConfig, pins: Pins) -> Self {
        let mut out = Self::default();
        let base_min = base.min_size.last().copied().unwrap_or(800);
        let base_max = base.max_size;
        if stats.boxes.is_empty() {
            out.kept.push(format!(
                "no boxes of positive area in {} images: base config kept",
                stats.images
            ));
        } else {
            out.input_and_anchors(stats, base, base_min, base_max, pins);
        }
        out.budgets(stats, base);
        out
    }

    /// The overrides as a partial `model.json` object.
    pub fn to_json(&self) -> Map<String, Value> {
        self.overrides
            .iter()
            .map(|o| (o.key.to_owned(), o.value.clone()))
            .collect()
    }

    /// `base` with the overrides applied (checked like a `--model-config` file).
    pub fn apply(&self, base: &MaskRcnnConfig) -> anyhow::Result<MaskRcnnConfig> {
        crate::train::config::apply_model_overrides(base, &self.to_json(), "autoconfig")
    }

    fn push(&mut self, key: &'static str, value: Value, base: Value, reason: String) {
        self.overrides.push(Override {
            key,
            value,
            base,
            reason,
        });
    }

    fn input_and_anchors(
        &mut self,
        stats: &DatasetStats,
        base: &MaskRcnnConfig,
        base_min: i64,
        base_max: i64,
        pins: Pins,
    ) {
        let before_shapes = input_shapes(stats, base_min, base_max);
        let before = anchor_coverage(&before_shapes, &base.anchor_sizes, &base.aspect_ratios);
        if before_shapes.is_empty() {
            self.kept
                .push("no boxes in images of known size: input size and anchors kept".to_owned());
            return;
        }
        self.coverage_before = before;
        let p5 = size_quantile(&before_shapes, 0.05);

        // Input size.
        let mut input = (base_min, base_max);
        let mut input_reason = None;
        if pins.input {
            self.kept.push(format!(
                "input size {base_min}/{base_max} set by you (p5 object is {p5:.1} px at the input)"
            ));
        } else if p5 < MIN_OBJECT_PX && p5 > 0.0 {
            let bound = ((base_min as f64 * MAX_UPSCALE) as i64).min(MAX_MIN_SIZE);
            let step = base.size_divisible.max(1);
            let wanted = (base_min as f64 * MIN_OBJECT_PX / p5).ceil() as i64;
            let new_min = round_up(wanted, step).min(bound);
            if new_min > base_min {
                let new_max = base_max
                    .max((base_max as f64 * new_min as f64 / base_min as f64).ceil() as i64);
                input = (new_min, new_max);
                let after_p5 = size_quantile(&input_shapes(stats, new_min, new_max), 0.05);
                input_reason = Some(format!(
                    "p5 object is {p5:.1} px at input size {base_min}/{base_max} (< {MIN_OBJECT_PX} px, \
                     4x4 cells of the stride-4 level): upscaled to {after_p5:.1} px (bounded by \
                     {MAX_UPSCALE}x the base min_size and {MAX_MIN_SIZE})"
                ));
            } else {
                self.kept.push(format!(
                    "min_size kept at {base_min}: p5 object is {p5:.1} px but the upscale bound is reached"
                ));
            }
        } else {
            self.kept.push(format!(
                "min_size kept at {base_min}: p5 object is {p5:.1} px at the input (>= {MIN_OBJECT_PX} px)"
            ));
        }

        let mut shapes = input_shapes(stats, input.0, input.1);
        let mut choice = choose_anchors(stats, &shapes, base, pins);
        let floor = before.unwrap_or(0.0);
        let base_at_input =
            anchor_coverage(&shapes, &base.anchor_sizes, &base.aspect_ratios).unwrap_or(0.0);
        if input_reason.is_some() && choice.coverage.max(base_at_input) < floor {
            // Upscaling cannot lower coverage below the base: fall back to the base input size.
            self.kept.push(format!(
                "min_size kept at {base_min}: at the larger input the anchor coverage would drop to {:.3}",
                choice.coverage
            ));
            input = (base_min, base_max);
            input_reason = None;
            shapes = before_shapes;
            choice = choose_anchors(stats, &shapes, base, pins);
        }
        if let Some(reason) = input_reason {
            self.push(
                "min_size",
                json!([input.0]),
                json!(base.min_size),
                reason.clone(),
            );
            if input.1 != base_max {
                self.push(
                    "max_size",
                    json!(input.1),
                    json!(base_max),
                    format!(
                        "kept in proportion to min_size ({base_max} x {}/{base_min})",
                        input.0
                    ),
                );
            }
        }
        let (p1, p99) = (size_quantile(&shapes, 0.01), size_quantile(&shapes, 0.99));
        let base_here =
            anchor_coverage(&shapes, &base.anchor_sizes, &base.aspect_ratios).unwrap_or(0.0);
        if choice.coverage > base_here && choice.coverage >= floor {
            let sizes_changed = choice.sizes != base.anchor_sizes;
            if sizes_changed {
                self.push(
                    "anchor_sizes",
                    json!(choice.sizes),
                    json!(base.anchor_sizes),
                    format!(
                        "objects span {p1:.1}..{p99:.1} px (p1..p99) at the input: anchors {} \
                         (factor 2 per level) cover {:.1}% of boxes at IoU >= {ANCHOR_IOU}, \
                         the base anchors {:.1}%",
                        first_sizes(&choice.sizes),
                        100.0 * choice.coverage,
                        100.0 * base_here
                    ),
                );
            }
            if choice.ratios != base.aspect_ratios {
                let a = stats.aspect.unwrap_or_default();
                self.push(
                    "aspect_ratios",
                    json!(choice.ratios),
                    json!(base.aspect_ratios),
                    format!(
                        "box h/w p5..p95 is {:.2}..{:.2}, outside the base ratios; more anchors per \
                         location, so the RPN head's last layers start untrained",
                        a.p5, a.p95
                    ),
                );
            }
            self.coverage_after = Some(choice.coverage);
        } else {
            self.kept.push(format!(
                "anchors kept at {}: no power-of-two series covers more boxes ({:.1}% at the input)",
                first_sizes(&base.anchor_sizes),
                100.0 * base_here
            ));
            self.coverage_after = Some(base_here);
        }
    }

    fn budgets(&mut self, stats: &DatasetStats, base: &MaskRcnnConfig) {
        let Some(per) = stats.per_image else {
            self.kept
                .push("no images: detection and proposal budgets kept".to_owned());
            return;
        };
        let p99 = per.p99.ceil().max(0.0) as i64;
        let det = MIN_DETECTIONS
            .max((1.5 * per.p99).ceil() as i64)
            .min(MAX_DETECTIONS);
        if det > base.box_detections_per_img {
            self.push(
                "box_detections_per_img",
                json!(det),
                json!(base.box_detections_per_img),
                format!(
                    "p99 of {:.1} instances per image: room for 1.5x that (cap {MAX_DETECTIONS})",
                    per.p99
                ),
            );
        } else {
            self.kept.push(format!(
                "box_detections_per_img kept at {}: >= max({MIN_DETECTIONS}, 1.5 x p99 {:.1})",
                base.box_detections_per_img, per.p99
            ));
        }
        let post = p99.saturating_mul(10).min(MAX_RPN_POST_NMS);
        // Test-time proposals only: the training budgets (rpn_*_train, box_batch_size_per_image)
        // keep the preset's. Measured on crowded scenes (16 training images of 30-80 instances,
        // 384 px, 4 epochs; `cargo bench --bench recipe`): raising them to 800 proposals and
        // 320 RoIs per image trained at 0.177 img/s to held-out mask AP 0.181, the preset's 300
        // and 128 at 0.296 img/s to 0.189. The RoI sampler draws a different subset of
        // instances each step, so every instance is still seen; the time goes to more epochs.
        let (value, pre) = (base.rpn_post_nms_top_n_test, base.rpn_pre_nms_top_n_test);
        let key = "rpn_post_nms_top_n_test";
        let pre_key = "rpn_pre_nms_top_n_test";
        if post > value {
            self.push(
                key,
                json!(post),
                json!(value),
                format!(
                    "10 proposals per instance at p99 {p99} instances per image (cap {MAX_RPN_POST_NMS})"
                ),
            );
            if pre < post {
                self.push(
                    pre_key,
                    json!(post),
                    json!(pre),
                    format!(
                        "at least {key} (torchvision keeps pre >= post), so NMS has enough to choose from"
                    ),
                );
            }
        } else {
            self.kept.push(format!(
                "{key} kept at {value}: >= 10 x p99 ({p99} instances per image)"
            ));
        }
        self.kept.push(format!(
            "training budgets kept (rpn_post_nms_top_n_train {}, box_batch_size_per_image {}): \
             measured faster at equal held-out AP on crowded scenes; the sampler covers the \
             instances over the steps",
            base.rpn_post_nms_top_n_train, base.box_batch_size_per_image
        ));
    }
}

/// Box shapes (w, h) at the model input: each box scaled per axis like torchvision's
/// `resize_boxes` after `resized_size`. Images with a zero side are left out.
pub fn input_shapes(stats: &DatasetStats, min_size: i64, max_size: i64) -> Vec<(f64, f64)> {
    stats
        .boxes
        .iter()
        .filter(|b| b.image_width > 0 && b.image_height > 0 && min_size > 0 && max_size > 0)
        .map(|b| {
            let (h, w) = (i64::from(b.image_height), i64::from(b.image_width));
            let (nh, nw) = resized_size((h, w), min_size, max_size);
            (b.w * nw as f64 / w as f64, b.h * nh as f64 / h as f64)
        })
        .collect()
}

/// Anchor shapes (w, h) of all levels, rounded like `AnchorGenerator.generate_anchors`
/// (`round(±size·ratio^∓½ / 2)`, half to even), so a shape is `2·round(ws / 2)`.
pub fn anchor_shapes(sizes: &[Vec<i64>], ratios: &[Vec<f64>]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (level_sizes, level_ratios) in sizes.iter().zip(ratios) {
        for &r in level_ratios {
            if r <= 0.0 || !r.is_finite() {
                continue;
            }
            let hr = r.sqrt();
            for &s in level_sizes {
                let (ws, hs) = (s as f64 / hr, s as f64 * hr);
                out.push((
                    2.0 * (ws / 2.0).round_ties_even(),
                    2.0 * (hs / 2.0).round_ties_even(),
                ));
            }
        }
    }
    out
}

/// IoU of two shapes centred at the same point.
pub fn centred_iou(a: (f64, f64), b: (f64, f64)) -> f64 {
    let inter = a.0.min(b.0) * a.1.min(b.1);
    let union = a.0 * a.1 + b.0 * b.1 - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Fraction of `shapes` with a centred IoU ≥ [`ANCHOR_IOU`] against some anchor; `None` without
/// shapes.
pub fn anchor_coverage(
    shapes: &[(f64, f64)],
    sizes: &[Vec<i64>],
    ratios: &[Vec<f64>],
) -> Option<f64> {
    if shapes.is_empty() {
        return None;
    }
    let anchors = anchor_shapes(sizes, ratios);
    let hit = shapes
        .iter()
        .filter(|&&g| anchors.iter().any(|&a| centred_iou(g, a) >= ANCHOR_IOU))
        .count();
    Some(hit as f64 / shapes.len() as f64)
}

struct AnchorChoice {
    sizes: Vec<Vec<i64>>,
    ratios: Vec<Vec<f64>>,
    coverage: f64,
}

/// The best factor-2 series (one size per level) and ratio set for `shapes`: highest coverage;
/// ties go to the base ratios, then to the smallest size nearest the p1 object size (in log2).
fn choose_anchors(
    stats: &DatasetStats,
    shapes: &[(f64, f64)],
    base: &MaskRcnnConfig,
    pins: Pins,
) -> AnchorChoice {
    let levels = base.anchor_sizes.len().max(1);
    let p1 = size_quantile(shapes, 0.01).max(1.0);
    if pins.anchor_sizes && pins.aspect_ratios {
        return AnchorChoice {
            sizes: base.anchor_sizes.clone(),
            ratios: base.aspect_ratios.clone(),
            coverage: anchor_coverage(shapes, &base.anchor_sizes, &base.aspect_ratios)
                .unwrap_or(0.0),
        };
    }
    let mut ratio_sets = vec![base.aspect_ratios.clone()];
    if !pins.aspect_ratios
        && let (Some(a), Some(first)) = (stats.aspect, base.aspect_ratios.first())
    {
        let lo = first.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = first.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut extended = first.clone();
        // Powers of two, like torchvision's 0.5 / 1 / 2.
        if a.p5 < lo && a.p5 > 0.0 {
            extended.insert(0, 2f64.powf(a.p5.log2().round()).min(lo / 2.0));
        }
        if a.p95 > hi {
            extended.push(2f64.powf(a.p95.log2().round()).max(hi * 2.0));
        }
        if extended.len() > first.len() {
            ratio_sets.push(vec![extended; levels]);
        }
    }
    let mut best: Option<(AnchorChoice, f64)> = None;
    for (set_index, ratios) in ratio_sets.iter().enumerate() {
        let mut smallest = SMALLEST_ANCHOR;
        while smallest <= LARGEST_SMALLEST_ANCHOR {
            let sizes: Vec<Vec<i64>> = if pins.anchor_sizes {
                base.anchor_sizes.clone()
            } else {
                (0..levels).map(|l| vec![smallest << l.min(20)]).collect()
            };
            let coverage = anchor_coverage(shapes, &sizes, ratios).unwrap_or(0.0);
            // Tie-break: base ratios first (100 per extra ratio set), then closeness to p1.
            let penalty = set_index as f64 * 100.0 + ((smallest as f64).log2() - p1.log2()).abs();
            let better = best.as_ref().is_none_or(|(b, bp)| {
                coverage > b.coverage + 1e-12
                    || ((coverage - b.coverage).abs() <= 1e-12 && penalty < *bp)
            });
            if better {
                best = Some((
                    AnchorChoice {
                        sizes,
                        ratios: ratios.clone(),
                        coverage,
                    },
                    penalty,
                ));
            }
            if pins.anchor_sizes {
                break;
            }
            smallest *= 2;
        }
    }
    best.map(|(c, _)| c).unwrap_or(AnchorChoice {
        sizes: base.anchor_sizes.clone(),
        ratios: base.aspect_ratios.clone(),
        coverage: 0.0,
    })
}

/// The `q` quantile of sqrt(w·h) over `shapes`; 0 without shapes.
fn size_quantile(shapes: &[(f64, f64)], q: f64) -> f64 {
    let mut sizes: Vec<f64> = shapes.iter().map(|(w, h)| (w * h).sqrt()).collect();
    sort(&mut sizes);
    quantile(&sizes, q)
}

/// `value` rounded up to a multiple of `step` (> 0).
fn round_up(value: i64, step: i64) -> i64 {
    value
        .checked_add(step - 1)
        .map_or(i64::MAX / step * step, |v| v / step * step)
}

/// `[32, 64, …]`: the first size of each level.
fn first_sizes(sizes: &[Vec<i64>]) -> String {
    let first: Vec<String> = sizes
        .iter()
        .filter_map(|s| s.first().map(i64::to_string))
        .collect();
    format!("[{}]", first.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_shapes_round_like_torchvision() {
        // anchor_utils.generate_anchors(32, 0.5): ws = 32 / sqrt(0.5) = 45.25 -> ±22.63 -> ±23;
        // hs = 22.63 -> ±11.31 -> ±11: a 46 x 22 anchor.
        let shapes = anchor_shapes(&[vec![32]], &[vec![0.5, 1.0]]);
        assert_eq!(shapes, vec![(46.0, 22.0), (32.0, 32.0)]);
    }

    #[test]
    fn centred_iou_and_coverage() {
        assert!((centred_iou((16.0, 16.0), (32.0, 32.0)) - 0.25).abs() < 1e-12);
        assert!((centred_iou((10.0, 20.0), (20.0, 10.0)) - 100.0 / 300.0).abs() < 1e-12);
        let sizes = vec![vec![32]];
        let ratios = vec![vec![1.0]];
        // 24 px: IoU 576/1024 = 0.5625 (hit); 20 px: 400/1024 = 0.39 (miss).
        let cov = anchor_coverage(&[(24.0, 24.0), (20.0, 20.0)], &sizes, &ratios).unwrap();
        assert!((cov - 0.5).abs() < 1e-12);
        assert_eq!(anchor_coverage(&[], &sizes, &ratios), None);
    }

    #[test]
    fn boxes_in_images_without_a_size_keep_the_base() {
        let stats = DatasetStats::from_boxes(&[(0, 0, vec![[0.0, 0.0, 5.0, 5.0]])]);
        let auto = AutoConfig::from_stats(&stats, &MaskRcnnConfig::default());
        assert!(auto.overrides.is_empty(), "{:?}", auto.overrides);
        assert!(auto.coverage_before.is_none() && auto.coverage_after.is_none());
    }

    #[test]
    fn round_up_is_checked() {
        assert_eq!(round_up(600, 32), 608);
        assert_eq!(round_up(640, 32), 640);
        assert_eq!(round_up(i64::MAX, 32) % 32, 0);
    }
}
