//! The Predict tab's layout: model, inputs and export rows (with the progress + Cancel rows of
//! [`crate::gui::progress`]), the score and mask sliders, then the results: a virtualised file
//! list, the overlay re-rendered from the soft masks when a slider moves, and the instance
//! table ([`super::table`]).

use std::path::PathBuf;

use eframe::egui;

use super::PredictPanel;
use super::inputs::file_label;
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::PanelCtx;
use crate::infer::{Detection, overlay, threshold};

/// `done` of `total` images, as a progress row counts them.
fn images(done: usize, total: usize) -> Progress {
    Progress::Count {
        done: done as u64,
        total: total as u64,
    }
}

impl PredictPanel {
    /// Draws the tab.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx, cx);
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.predict(&ctx, dropped, cx);
        }
        let hovering = ui.input(|i| !i.raw.hovered_files.is_empty());

        ui.horizontal_wrapped(|ui| {
            let picked = self.picker.ui(ui, cx, &mut self.model_path);
            if let Some(path) = picked.chosen
                && !self.model_loading
            {
                // Choosing a model (from the list or Browse…) loads it.
                self.load_model(&ctx, path, cx);
            }
            let can_load = !self.model_loading && !self.model_path.trim().is_empty();
            if ui
                .add_enabled(can_load, egui::Button::new("Load model"))
                .clicked()
            {
                let path = PathBuf::from(self.model_path.trim());
                self.load_model(&ctx, path, cx);
            }
            if self.model_loading {
                ui.spinner();
            }
            match &self.model {
                Some((_, labels)) => ui.label(format!("Classes: {}", labels.join(", "))),
                None => ui.label("No model loaded"),
            };
        });
        ui.horizontal(|ui| {
            let label = ui.label("Images");
            ui.add(egui::TextEdit::singleline(&mut self.input_path).desired_width(320.0))
                .labelled_by(label.id);
            if ui
                .add_enabled(
                    !self.input_path.trim().is_empty(),
                    egui::Button::new("Predict"),
                )
                .clicked()
            {
                let p = PathBuf::from(self.input_path.trim());
                self.predict(&ctx, vec![p], cx);
            }
            if ui.button("Open images...").clicked() {
                self.pick(&ctx, cx);
            }
            if let Some(b) = &self.batch {
                let cancel = Some((&b.cancel, "Cancel prediction"));
                progress_row(ui, images(b.done, b.total), None, 160.0, cancel);
            }
            if !self.pending.is_empty() {
                ui.label(format!("{} inputs waiting for a model", self.pending.len()));
            }
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut cx.settings.score_threshold, 0.0..=1.0)
                    .text("Score threshold"),
            );
            ui.add(
                egui::Slider::new(&mut cx.settings.mask_threshold, 0.01..=0.99)
                    .text("Mask threshold"),
            );
        });
        ui.horizontal(|ui| {
            let label = ui.label("Export folder");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(320.0))
                .labelled_by(label.id);
            let can = self.exporting.is_none() && !self.results.is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Export results"))
                .clicked()
            {
                self.start_export(&ctx, cx);
            }
            if let Some((done, total, cancel)) = &self.exporting {
                let cancel = Some((cancel, "Cancel export"));
                progress_row(ui, images(*done, *total), None, 160.0, cancel);
            }
        });
        if !self.failures.is_empty() {
            egui::CollapsingHeader::new(format!("Problems ({})", self.failures.len()))
                .default_open(true)
                .show(ui, |ui| {
                    for f in &self.failures {
                        ui.colored_label(ui.visuals().error_fg_color, f);
                    }
                });
        }
        ui.separator();
        if self.results.is_empty() {
            let text = if hovering {
                "Release to predict these files"
            } else {
                "Drop image files or folders here, or use Open images"
            };
            ui.centered_and_justified(|ui| ui.heading(text));
            return;
        }
        self.results_ui(ui, cx);
    }

    /// The results: the file list, the overlay with labels and the instance table.
    fn results_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let (score, mask_thr) = (cx.settings.score_threshold, cx.settings.mask_threshold);
        self.selected = self.selected.min(self.results.len() - 1);
        let mut picked = None;
        egui::Panel::left("predict_files")
            .resizable(true)
            .default_size(180.0)
            .show(ui, |ui| {
                // Virtualised: a folder of thousands of results lays out only the visible rows.
                let row_h = ui.spacing().interact_size.y;
                egui::ScrollArea::vertical().show_rows(
                    ui,
                    row_h,
                    self.results.len(),
                    |ui, rows| {
                        for i in rows {
                            let r = &self.results[i];
                            let n = threshold::above(&r.detections, score).count();
                            let text = format!("{} ({n})", file_label(&r.path));
                            if ui.selectable_label(i == self.selected, text).clicked() {
                                picked = Some(i);
                            }
                        }
                    },
                );
            });
        if let Some(i) = picked
            && i != self.selected
        {
            self.select(i);
        }
        self.ensure_pixels(ui.ctx(), cx);
        let item = &self.results[self.selected];
        let Some(pixels) = item.image.clone() else {
            egui::CentralPanel::default().show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Reading {} ...", file_label(&item.path)));
                });
            });
            return;
        };
        let shown: Vec<&Detection> = threshold::above(&item.detections, score).collect();
        let stale = !matches!(&self.overlay, Some((i, s, m, _))
            if *i == self.selected && *s == score && *m == mask_thr);
        if stale {
            // Only the soft masks' rectangles are visited: cheap enough for slider drags.
            let img = overlay::draw_thresholded_scaled(
                &pixels,
                item.scale,
                &item.detections,
                score,
                mask_thr,
            );
            let size = [img.width() as usize, img.height() as usize];
            let color = egui::ColorImage::from_rgb(size, img.as_raw());
            let tex = ui
                .ctx()
                .load_texture("predict_overlay", color, egui::TextureOptions::LINEAR);
            self.overlay = Some((self.selected, score, mask_thr, tex));
            self.overlay_pixels = Some(img);
        }
        egui::Panel::right("predict_instances")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                ui.strong(format!("Instances shown: {}", shown.len()));
                self.sort.table_ui(ui, &shown, mask_thr);
            });
        egui::CentralPanel::default().show(ui, |ui| {
            let Some((_, _, _, tex)) = &self.overlay else {
                return;
            };
            let w = item.size[0];
            let response = ui.add(
                egui::Image::new(tex)
                    .max_size(ui.available_size())
                    .shrink_to_fit(),
            );
            let rect = response.rect;
            let scale = rect.width() / w.max(1) as f32;
            let painter = ui.painter_at(rect);
            for d in &shown {
                let [r, g, b] = overlay::label_color(d.label);
                let pos = rect.min + egui::vec2(d.box_xyxy[0] * scale, d.box_xyxy[1] * scale);
                let text = format!("{} {:.2}", d.class_name, d.score);
                let galley = painter.layout_no_wrap(
                    text,
                    egui::FontId::proportional(12.0),
                    egui::Color32::WHITE,
                );
                let bg = egui::Rect::from_min_size(
                    pos - egui::vec2(0.0, galley.size().y),
                    galley.size() + egui::vec2(4.0, 0.0),
                );
                painter.rect_filled(
                    bg,
                    2.0,
                    egui::Color32::from_rgb(r, g, b).gamma_multiply(0.8),
                );
                painter.galley(bg.min + egui::vec2(2.0, 0.0), galley, egui::Color32::WHITE);
            }
        });
    }
}
