//! The Train tab's live view of a run: progress (step, epoch, images/s, ETA, memory), the loss
//! plot with EMA smoothing extended per step and decimated to about two points per pixel, the
//! learning-rate and validation-AP plots, the augmentation preview and the watch images
//! re-predicted at each checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eframe::egui;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::{Background, TrainPanel, WatchEvent};
use crate::gui::progress::{Progress, progress_bar};
use crate::gui::shared::PanelCtx;
use crate::gui::worker::Worker;
use crate::infer::overlay;
use crate::train::preview::PreviewSample;
use crate::train::watch::predict_watch_images;

/// Exponential moving average of the y values (`s = a * s + (1 - a) * y`, starting at the
/// first value); `alpha = 0` returns the points unchanged.
pub fn ema(points: &[[f64; 2]], alpha: f64) -> Vec<[f64; 2]> {
    let mut out = Vec::with_capacity(points.len());
    ema_extend(points, alpha, &mut out);
    out
}

/// Continues [`ema`]: `out` holds the smoothed first `out.len()` points of `points`; the
/// rest are smoothed and appended (same values as `ema(points, alpha)`).
pub fn ema_extend(points: &[[f64; 2]], alpha: f64, out: &mut Vec<[f64; 2]>) {
    let alpha = alpha.clamp(0.0, 0.999);
    let mut s = out.last().map(|p| p[1]);
    for &[x, y] in points.iter().skip(out.len()) {
        let v = match s {
            Some(prev) if y.is_finite() => alpha * prev + (1.0 - alpha) * y,
            Some(prev) => prev,
            None => y,
        };
        s = Some(v);
        out.push([x, v]);
    }
}

/// The points a plot `pixels` wide needs to draw `points` (sorted by x) between `x_range`
/// (all of them when `None`): each of about `pixels` buckets keeps its lowest and highest point
/// in x order, so spikes survive; the ends and one point beyond each side of the range are
/// kept. A series with at most two points per pixel is returned as it is.
pub fn decimate(points: &[[f64; 2]], x_range: Option<(f64, f64)>, pixels: usize) -> Vec<[f64; 2]> {
    let (lo, hi) = match x_range {
        Some((a, b)) => (
            points.partition_point(|p| p[0] < a).saturating_sub(1),
            (points.partition_point(|p| p[0] <= b) + 1).min(points.len()),
        ),
        None => (0, points.len()),
    };
    let slice = &points[lo..hi.max(lo)];
    let buckets = pixels.max(1);
    if slice.len() <= 2 * buckets {
        return slice.to_vec();
    }
    let per = slice.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets + 2);
    out.push(slice[0]);
    for chunk in slice.chunks(per) {
        let (mut lowest, mut highest) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p[1] < chunk[lowest][1] {
                lowest = i;
            }
            if p[1] > chunk[highest][1] {
                highest = i;
            }
        }
        for i in [lowest.min(highest), lowest.max(highest)] {
            if out.last() != Some(&chunk[i]) {
                out.push(chunk[i]);
            }
        }
    }
    let last = slice[slice.len() - 1];
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Same point, NaN included (a NaN loss must not look like a changed series every frame).
fn same_point(a: Option<&[f64; 2]>, b: Option<&[f64; 2]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a[0].to_bits() == b[0].to_bits() && a[1].to_bits() == b[1].to_bits(),
        (None, None) => true,
        _ => false,
    }
}

/// A series smoothed by [`ema`], extended as points arrive instead of recomputed per frame;
/// recomputed when the smoothing changes or the series was replaced, rewound or prepended.
#[derive(Debug, Default, Clone)]
pub struct SmoothedSeries {
    alpha: f64,
    /// The raw first point and the raw point at `out.len() - 1` when `out` was made.
    first: Option<[f64; 2]>,
    last: Option<[f64; 2]>,
    out: Vec<[f64; 2]>,
}

impl SmoothedSeries {
    /// `ema(raw, alpha)`, reusing the previous call's work when `raw` only grew.
    pub fn update(&mut self, raw: &[[f64; 2]], alpha: f64) -> &[[f64; 2]] {
        let n = self.out.len();
        let grew = self.alpha.to_bits() == alpha.to_bits()
            && n <= raw.len()
            && same_point(raw.first(), self.first.as_ref())
            && same_point(
                n.checked_sub(1).and_then(|i| raw.get(i)),
                self.last.as_ref(),
            );
        if !grew {
            self.out.clear();
            self.alpha = alpha;
        }
        ema_extend(raw, alpha, &mut self.out);
        self.first = raw.first().copied();
        self.last = raw.last().copied();
        &self.out
    }
}

/// Smoothed loss series of the plots, by name (`total` and the components).
#[derive(Debug, Default)]
pub(super) struct PlotCache {
    smoothed: BTreeMap<String, SmoothedSeries>,
}

/// How many augmented samples the preview shows (fewer when the training split is smaller).
pub const PREVIEW_SAMPLES: usize = 8;

/// Draws the instance masks over the image, half-transparent in their class colours
/// (`overlay::label_color` of the class's index among `classes` + 1).
pub fn draw_preview(sample: &PreviewSample, classes: &[String]) -> image::RgbImage {
    let mut img = sample.image.clone();
    for (mask, name) in &sample.instances {
        let label = classes.iter().position(|c| c == name).unwrap_or(0) as i64 + 1;
        let color = overlay::label_color(label);
        let (w, h) = (
            mask.width().min(img.width()),
            mask.height().min(img.height()),
        );
        for y in 0..h {
            for x in 0..w {
                if mask.get(x, y) {
                    let p = img.get_pixel_mut(x, y);
                    for (v, c) in p.0.iter_mut().zip(color) {
                        *v = ((u16::from(*v) + u16::from(c)) / 2) as u8;
                    }
                }
            }
        }
    }
    img
}

/// `(caption, image)` pairs as textures named `{prefix}_{k}`.
pub(super) fn textures(
    ctx: &egui::Context,
    prefix: &str,
    images: Vec<(String, image::RgbImage)>,
) -> Vec<(String, egui::TextureHandle)> {
    images
        .into_iter()
        .enumerate()
        .map(|(k, (caption, img))| {
            let size = [img.width() as usize, img.height() as usize];
            let color = egui::ColorImage::from_rgb(size, img.as_raw());
            let tex =
                ctx.load_texture(format!("{prefix}_{k}"), color, egui::TextureOptions::LINEAR);
            (caption, tex)
        })
        .collect()
}

/// The augmentation preview's samples drawn with their masks ([`draw_preview`], class colours
/// by the classes' sorted order) as textures, captioned with the image id and its classes.
pub(super) fn preview_textures(
    ctx: &egui::Context,
    samples: &[PreviewSample],
) -> Vec<(String, egui::TextureHandle)> {
    let mut classes: Vec<String> = samples
        .iter()
        .flat_map(|s| s.instances.iter().map(|(_, c)| c.clone()))
        .collect();
    classes.sort();
    classes.dedup();
    let drawn = samples
        .iter()
        .map(|sample| {
            let names: Vec<&str> = sample.instances.iter().map(|(_, c)| c.as_str()).collect();
            let caption = format!(
                "image {}: {}",
                sample.image_id,
                if names.is_empty() {
                    "no instances".to_owned()
                } else {
                    names.join(", ")
                }
            );
            (caption, draw_preview(sample, &classes))
        })
        .collect();
    textures(ctx, "train_aug_preview", drawn)
}

impl TrainPanel {
    /// Augments the first [`PREVIEW_SAMPLES`] training images with the form's recipe on the
    /// `train-aug-preview` thread; each call draws a new epoch's random parameters.
    pub fn start_preview(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project to preview augmentations");
            return;
        };
        if self.previewing {
            return;
        }
        let cfg = match self.recipe(cx.settings.device) {
            Ok(c) => c,
            Err(e) => {
                cx.notices.error(format!("training settings: {e:#}"));
                return;
            }
        };
        let epoch = self.preview_epoch;
        self.preview_epoch += 1;
        let spawned = self.spawn_bg("train-aug-preview", ctx, move || {
            let r = crate::train::preview::preview(&project, &cfg, epoch, PREVIEW_SAMPLES)
                .map_err(|e| format!("{e:#}"));
            Background::Preview(r)
        });
        match spawned {
            Ok(()) => self.previewing = true,
            Err(e) => cx.notices.error(format!("cannot start the preview: {e}")),
        }
    }

    pub(super) fn start_watch(&mut self, ctx: &egui::Context, bundle: PathBuf, score: f32) {
        let Some((project, run_dir, device)) = self.watch_for.clone() else {
            return;
        };
        if self.watch_busy {
            self.watch_next = Some(bundle);
            return;
        }
        let spawned = Worker::once("train-watch", ctx, move || {
            match predict_watch_images(&project, &run_dir, &bundle, device, score) {
                Ok(images) => WatchEvent::Images(images),
                Err(e) => WatchEvent::Failed(format!("{e:#}")),
            }
        });
        self.watch_busy = spawned.is_ok();
        self.watch_worker = spawned.ok();
    }

    /// The "Preview augmentations" row and the augmented samples (under the form).
    pub(super) fn preview_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    !self.previewing && cx.project.is_some(),
                    egui::Button::new("Preview augmentations"),
                )
                .clicked()
            {
                self.start_preview(ui.ctx(), cx);
            }
            if self.previewing {
                ui.spinner();
            }
            if !self.preview.is_empty() {
                ui.label(format!("Augmented samples: {}", self.preview.len()));
            }
        });
        if !self.preview.is_empty() {
            ui.horizontal_wrapped(|ui| {
                for (caption, tex) in &self.preview {
                    ui.vertical(|ui| {
                        ui.add(egui::Image::new(tex).max_size(egui::vec2(160.0, 160.0)));
                        ui.small(caption);
                    });
                }
            });
        }
    }

    pub(super) fn progress_ui(&self, ui: &mut egui::Ui) {
        let h = &self.history;
        if h.status.is_empty() && h.steps == 0 {
            return;
        }
        if h.total_iters > 0 {
            let progress = Progress::Count {
                done: h.steps as u64,
                total: h.total_iters as u64,
            };
            let text = format!("Step {} / {}", h.steps, h.total_iters);
            progress_bar(ui, progress, Some(text), None);
        }
        ui.horizontal_wrapped(|ui| {
            if !self.live_engine.is_empty() {
                ui.label(format!("engine {}", self.live_engine));
            }
            ui.label(format!("Epoch {}", h.epoch + 1));
            ui.label(match h.images_per_sec {
                Some(v) => format!("{v:.2} images/s"),
                None => "- images/s".to_owned(),
            });
            ui.label(match (self.run.is_some(), h.eta_secs()) {
                (true, Some(s)) => format!("ETA {}", fmt_secs(s)),
                _ => "ETA -".to_owned(),
            });
            ui.label(match h.memory_bytes {
                Some(b) => format!("memory {:.0} MiB", b as f64 / (1024.0 * 1024.0)),
                None => "memory -".to_owned(),
            });
            ui.label(&h.status);
        });
    }

    /// The live plots. Per frame they cost about the plot's pixel width, not the run's length:
    /// smoothing is extended per new step ([`SmoothedSeries`]) and each series is decimated
    /// to the visible x range at two points per pixel ([`decimate`]).
    pub(super) fn plots_ui(&mut self, ui: &mut egui::Ui) {
        let (h, cache) = (&self.history, &mut self.plot_cache);
        if h.total.is_empty() {
            return;
        }
        ui.add(egui::Slider::new(&mut self.smoothing, 0.0..=0.99).text("Loss smoothing"));
        let alpha = f64::from(self.smoothing);
        ui.label(format!("Loss points: {}", h.total.len()));
        let ppp = ui.ctx().pixels_per_point();
        let pixels = (ui.available_width() * ppp) as usize;
        cache
            .smoothed
            .retain(|name, _| name == "total" || h.losses.contains_key(name));
        Plot::new("train_losses")
            .height(220.0)
            .legend(Legend::default())
            .x_axis_label("step")
            .allow_scroll(false)
            .show(ui, |p| {
                let range = visible_x(p);
                let series = std::iter::once(("total", &h.total))
                    .chain(h.losses.iter().map(|(n, pts)| (n.as_str(), pts)));
                for (name, raw) in series {
                    let smooth = cache
                        .smoothed
                        .entry(name.to_owned())
                        .or_default()
                        .update(raw, alpha);
                    let line = Line::new(name, PlotPoints::from(decimate(smooth, range, pixels)));
                    p.line(if name == "total" {
                        line.width(2.5)
                    } else {
                        line
                    });
                }
            });
        ui.columns(2, |cols| {
            let pixels = (cols[0].available_width() * ppp) as usize;
            Plot::new("train_lr")
                .height(140.0)
                .legend(Legend::default())
                .x_axis_label("step")
                .allow_scroll(false)
                .show(&mut cols[0], |p| {
                    let lr = decimate(&h.lr, visible_x(p), pixels);
                    p.line(Line::new("learning rate", PlotPoints::from(lr)));
                });
            if h.val_segm_ap.is_empty() && h.val_bbox_ap.is_empty() {
                cols[1].label("Validation AP appears here after each epoch the trainer evaluates.");
            } else {
                Plot::new("train_val_ap")
                    .height(140.0)
                    .legend(Legend::default())
                    .x_axis_label("epoch")
                    .include_y(0.0)
                    .allow_scroll(false)
                    .show(&mut cols[1], |p| {
                        p.line(Line::new(
                            "mask AP",
                            PlotPoints::from(h.val_segm_ap.clone()),
                        ));
                        p.line(Line::new("box AP", PlotPoints::from(h.val_bbox_ap.clone())));
                    });
            }
        });
    }

    pub(super) fn watch_ui(&self, ui: &mut egui::Ui) {
        if self.watch.is_empty() && !self.watch_busy {
            return;
        }
        ui.horizontal(|ui| {
            ui.strong("Validation images at the latest checkpoint");
            if self.watch_busy {
                ui.spinner();
            }
        });
        ui.horizontal_wrapped(|ui| {
            for (name, tex) in &self.watch {
                ui.vertical(|ui| {
                    ui.add(egui::Image::new(tex).max_size(egui::vec2(192.0, 192.0)));
                    ui.small(name);
                });
            }
        });
    }
}

/// The x range the plot showed last frame when the user zoomed or panned it (`None` while it
/// fits the data: every point then takes part in the automatic bounds).
fn visible_x(p: &egui_plot::PlotUi<'_>) -> Option<(f64, f64)> {
    if p.auto_bounds().x {
        return None;
    }
    let b = p.plot_bounds();
    Some((b.min()[0], b.max()[0]))
}

/// `1h 02m`, `3m 05s` or `12s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_smooths_and_zero_alpha_is_identity() {
        let pts = [[0.0, 4.0], [1.0, 0.0], [2.0, 0.0]];
        assert_eq!(ema(&pts, 0.0), pts.to_vec());
        let s = ema(&pts, 0.5);
        assert_eq!(s, vec![[0.0, 4.0], [1.0, 2.0], [2.0, 1.0]]);
        // A NaN step keeps the previous smoothed value.
        let s = ema(&[[0.0, 1.0], [1.0, f64::NAN]], 0.5);
        assert_eq!(s[1], [1.0, 1.0]);
    }

    #[test]
    fn smoothing_extends_and_decimation_keeps_spikes() {
        let raw: Vec<[f64; 2]> = (0..1000)
            .map(|i| [i as f64, if i == 613 { 50.0 } else { (i % 7) as f64 }])
            .collect();
        let mut s = SmoothedSeries::default();
        assert_eq!(s.update(&raw[..400], 0.6), ema(&raw[..400], 0.6).as_slice());
        // Grown: extended, identical to a full recompute.
        assert_eq!(s.update(&raw, 0.6), ema(&raw, 0.6).as_slice());
        // Other smoothing, or a replaced series: recomputed.
        assert_eq!(s.update(&raw, 0.3), ema(&raw, 0.3).as_slice());
        let shifted: Vec<[f64; 2]> = raw.iter().map(|p| [p[0], p[1] + 1.0]).collect();
        assert_eq!(s.update(&shifted, 0.3), ema(&shifted, 0.3).as_slice());
        let mut rewound = shifted[..500].to_vec();
        rewound.push([500.0, -3.0]);
        assert_eq!(s.update(&rewound, 0.3), ema(&rewound, 0.3).as_slice());

        let d = decimate(&raw, None, 100);
        assert!(d.len() <= 202, "{}", d.len());
        assert_eq!((d[0], *d.last().unwrap()), (raw[0], raw[999]));
        assert!(d.contains(&[613.0, 50.0]), "the spike survives");
        assert!(d.windows(2).all(|w| w[0][0] < w[1][0]), "x order");
        // Few points per pixel: unchanged. A zoomed range: that slice plus one each side.
        assert_eq!(decimate(&raw[..150], None, 100), raw[..150].to_vec());
        assert_eq!(
            decimate(&raw, Some((10.5, 20.5)), 100),
            raw[10..=21].to_vec()
        );
        assert!(decimate(&raw, Some((2000.0, 3000.0)), 100).len() <= 1);
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        // The export's refusal of a run without a bundle is tested in `train::export`.
        assert_eq!(fmt_secs(3725.0), "1h 02m");
        assert_eq!(fmt_secs(65.0), "1m 05s");
    }
}
