//! The Predict tab's pixels: a display copy of each predicted image (at most [`MAX_DISPLAY`] on
//! its longer side), kept only for the images shown last ([`PIXEL_BUDGET`]); an evicted image
//! is decoded again on a `predict-reload` thread when it is selected.

use std::sync::Arc;

use eframe::egui;

use super::events::Event;
use super::{PredictPanel, PredictedImage};
use crate::gui::shared::PanelCtx;
use crate::gui::worker::Worker;
use crate::infer::read_image;

/// Decoded display pixels kept in memory across results (bytes, RGB): about 80 display copies
/// of big photos. The selected image is always kept.
pub const PIXEL_BUDGET: usize = 768 << 20;

/// Longer side of the display copy kept of each predicted image: bigger photos are shown (and
/// re-rendered on slider changes) at this size, their masks sampled at full resolution.
pub const MAX_DISPLAY: u32 = 2048;

/// The display copy of `image` and its scale (display / full size, 1 when already small).
pub fn display_copy(image: image::RgbImage) -> (image::RgbImage, f32) {
    let (w, h) = image.dimensions();
    let long = w.max(h);
    if long <= MAX_DISPLAY {
        return (image, 1.0);
    }
    let scale = MAX_DISPLAY as f32 / long as f32;
    let size = |v: u32| ((v as f32 * scale).round() as u32).clamp(1, MAX_DISPLAY);
    let small = image::imageops::resize(
        &image,
        size(w),
        size(h),
        image::imageops::FilterType::Triangle,
    );
    (small, scale)
}

impl PredictedImage {
    pub(super) fn pixel_bytes(&self) -> usize {
        self.image.as_ref().map_or(0, |i| i.as_raw().len())
    }
}

impl PredictPanel {
    /// Bytes of decoded pixels held in memory now.
    pub fn pixel_bytes(&self) -> usize {
        self.results.iter().map(PredictedImage::pixel_bytes).sum()
    }

    /// The selected result (index into [`Self::results`]).
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Selects result `index` (clamped); its pixels are decoded again if they were evicted.
    pub fn select(&mut self, index: usize) {
        self.selected = index.min(self.results.len().saturating_sub(1));
        self.touch(self.selected);
    }

    /// Sets the bytes of decoded pixels kept across results (low-memory machines, tests).
    pub fn set_pixel_budget(&mut self, bytes: usize) {
        self.pixel_budget = bytes;
        self.touch(self.selected);
    }

    /// Marks `index` as just shown and drops the pixels of the least recently shown results
    /// until the rest fit in the pixel budget (the selected one stays).
    pub(super) fn touch(&mut self, index: usize) {
        self.kept.retain(|&i| i != index);
        if self.results.get(index).is_some_and(|r| r.image.is_some()) {
            self.kept.push_back(index);
        }
        let mut total = self.pixel_bytes();
        while total > self.pixel_budget {
            let Some(pos) = self.kept.iter().position(|&i| i != self.selected) else {
                break;
            };
            if let Some(old) = self.kept.remove(pos)
                && let Some(r) = self.results.get_mut(old)
            {
                total -= r.pixel_bytes();
                r.image = None;
            }
        }
    }

    /// Decodes the selected image again on a thread when its pixels were evicted.
    pub(super) fn ensure_pixels(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let Some(item) = self.results.get(self.selected) else {
            return;
        };
        if item.image.is_some() || self.reloading.as_ref() == Some(&item.path) {
            return;
        }
        let path = item.path.clone();
        let path2 = path.clone();
        let spawned = Worker::once("predict-reload", ctx, move || match read_image(&path2) {
            Ok(img) => Event::Reloaded {
                path: path2,
                image: Arc::new(display_copy(img).0),
            },
            Err(e) => Event::ReloadFailed {
                path: path2,
                error: format!("{e:#}"),
            },
        });
        match spawned {
            Ok(w) => {
                self.helpers.push(w);
                self.reloading = Some(path);
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start reading the image: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_photos_get_a_display_copy_small_ones_stay() {
        let (small, scale) = display_copy(image::RgbImage::new(640, 480));
        assert_eq!((small.dimensions(), scale), ((640, 480), 1.0));
        let (copy, scale) = display_copy(image::RgbImage::new(4000, 3000));
        assert_eq!(copy.dimensions(), (2048, 1536));
        assert!((scale - 0.512).abs() < 1e-6, "{scale}");
        let (tall, _) = display_copy(image::RgbImage::new(1000, 5000));
        assert_eq!(tall.dimensions(), (410, 2048));
    }
}
