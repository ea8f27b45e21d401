//! Drawing: the toolbar (tools, brush size, edit buttons, review status, navigation), the side
//! panel (class, instance list, review progress, attribution) and the canvas (image, overlay
//! texture updated by dirty rectangles, proposals, polygon in progress, brush cursor).

use eframe::egui;
use egui::{Color32, ColorImage, Pos2, Sense, Stroke, Vec2};

use super::edits::MorphOp;
use super::{ImageView, ImageViewAction, NO_CLASS, NOTHING_TO_ERASE, Tool};
use crate::dataset::Mask;
use crate::dataset::maskops::Rect;
use crate::dataset::store::ReviewStatus;
use crate::gui::progress::{Progress, progress_bar};
use crate::gui::shared::PanelCtx;

impl ImageView {
    pub(super) fn toolbar(
        &mut self,
        ui: &mut egui::Ui,
        cx: &mut PanelCtx<'_>,
    ) -> Option<ImageViewAction> {
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            for (tool, name) in [
                (Tool::Select, "Select"),
                (Tool::Brush, "Brush"),
                (Tool::Eraser, "Eraser"),
                (Tool::Polygon, "Polygon"),
                (Tool::Fill, "Fill"),
                (Tool::Merge, "Merge"),
                (Tool::Box, "Box"),
            ] {
                if ui.selectable_label(self.tool == tool, name).clicked() {
                    self.set_tool(tool);
                }
            }
            ui.separator();
            let label = ui.label("Size");
            let mut size = self.brush_size;
            if ui
                .add(egui::Slider::new(&mut size, 1.0..=200.0).logarithmic(true))
                .labelled_by(label.id)
                .changed()
            {
                self.set_brush_size(size);
            }
            ui.checkbox(&mut self.subtract, "Subtract");
            ui.separator();
            if ui.button("New instance").clicked() {
                self.new_instance();
            }
            if ui.button("Delete").clicked() {
                self.delete(cx);
            }
            if ui.button("Split").clicked() {
                self.split(cx);
            }
            if ui.button("Fill holes").clicked() {
                self.morph(MorphOp::FillHoles, cx);
            }
            if ui.button("Dilate").clicked() {
                self.morph(MorphOp::Dilate, cx);
            }
            if ui.button("Erode").clicked() {
                self.morph(MorphOp::Erode, cx);
            }
            if ui.button("Smooth").clicked() {
                self.morph(MorphOp::Smooth, cx);
            }
            if ui.button("Revert").clicked() {
                self.revert(cx);
            }
            let (can_undo, can_redo) = self.data.as_ref().map_or((false, false), |d| d.history);
            if ui
                .add_enabled(can_undo, egui::Button::new("Undo"))
                .clicked()
            {
                self.history(true, cx);
            }
            if ui
                .add_enabled(can_redo, egui::Button::new("Redo"))
                .clicked()
            {
                self.history(false, cx);
            }
            if let Some(hint) = &self.hint {
                ui.separator();
                ui.colored_label(ui.visuals().warn_fg_color, hint);
            }
        });
        ui.horizontal_wrapped(|ui| {
            let status = self.review_status().unwrap_or(ReviewStatus::Unreviewed);
            ui.label(format!("Status: {}", status.as_str()));
            for (s, name) in [
                (ReviewStatus::Accepted, "Accepted"),
                (ReviewStatus::Fixed, "Fixed"),
                (ReviewStatus::Rejected, "Rejected"),
            ] {
                if ui.selectable_label(status == s, name).clicked() {
                    self.status(s, cx);
                }
            }
            ui.separator();
            if ui.button("Previous unreviewed").clicked() {
                action = Some(ImageViewAction::Previous);
            }
            if ui.button("Next unreviewed").clicked() {
                action = Some(ImageViewAction::Next);
            }
            if ui.button("Close").clicked() {
                action = Some(ImageViewAction::Close);
            }
            ui.separator();
            self.assist_ui(ui, cx);
        });
        action
    }

    pub(super) fn side_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        let Some(data) = self.data.as_mut() else {
            return;
        };
        // Class of the selection (or of the next new instance).
        let selected_class = self
            .selected
            .and_then(|id| data.instances.iter().find(|i| i.row.id == id))
            .map(|i| i.row.class_id);
        let current = selected_class
            .or(self.new_class)
            .or(data.classes.first().map(|c| c.id));
        let name_of = |id: Option<i64>| {
            id.and_then(|id| data.classes.iter().find(|c| c.id == id))
                .map_or_else(|| "-".to_owned(), |c| c.name.clone())
        };
        let mut chosen = current;
        let label = ui.label("Class");
        egui::ComboBox::from_id_salt("image_view_class")
            .selected_text(name_of(current))
            .show_ui(ui, |ui| {
                for c in &data.classes {
                    ui.selectable_value(&mut chosen, Some(c.id), &c.name);
                }
            })
            .response
            .labelled_by(label.id);
        if chosen != current {
            self.new_class = chosen;
            if let (Some(id), Some(class_id)) = (self.selected, chosen)
                && selected_class.is_some()
            {
                self.set_class(id, class_id, cx);
            }
        }
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let edited = data.instances.iter().filter(|i| i.row.edited).count();
        ui.label(format!(
            "{} instances, {edited} edited",
            data.instances.len()
        ));
        let (select, visibility_changed) = self.instance_table_ui(ui);
        if visibility_changed {
            self.overlay_stale = true;
        }
        if let Some(id) = select {
            self.select(if self.selected == Some(id) {
                None
            } else {
                Some(id)
            });
        }
        let Some(data) = self.data.as_ref() else {
            return;
        };
        ui.separator();
        ui.strong("Review progress");
        let present: Vec<i64> = data.instances.iter().map(|i| i.row.class_id).collect();
        for p in data
            .progress
            .iter()
            .filter(|p| present.contains(&p.class_id) || data.progress.len() <= 8)
        {
            let text = format!(
                "{}: {}/{} images reviewed, {} edited",
                p.name, p.reviewed, p.images, p.edited
            );
            let (done, total) = (p.reviewed, p.images);
            progress_bar(ui, Progress::Count { done, total }, Some(text), None);
        }
        ui.separator();
        let a = &data.meta.attribution;
        let mut line = format!(
            "{} ({}×{})",
            data.meta.file_name, data.meta.width, data.meta.height
        );
        if let Some(t) = &a.title {
            line.push_str(&format!(" - \"{t}\""));
        }
        if let Some(au) = &a.author {
            line.push_str(&format!(" by {au}"));
        }
        if let Some(l) = &a.license {
            line.push_str(&format!(", licence {l}"));
        }
        ui.small(line);
        if let Some(url) = &a.original_url {
            ui.hyperlink_to("original", url);
        }
    }

    pub(super) fn canvas_ui(&mut self, ui: &mut egui::Ui, size: Vec2, cx: &mut PanelCtx<'_>) {
        let (response, painter) = ui.allocate_painter(size, Sense::click_and_drag());
        self.canvas = response.rect;
        let Some(data) = self.data.as_ref() else {
            return;
        };
        let (w, h) = (data.meta.width, data.meta.height);
        let max_side = ui.ctx().input(|i| i.max_texture_side);
        if w as usize > max_side || h as usize > max_side {
            painter.text(
                response.rect.center(),
                egui::Align2::CENTER_CENTER,
                format!("{w}×{h} is larger than this GPU's textures ({max_side} px a side)"),
                egui::FontId::proportional(14.0),
                ui.visuals().error_fg_color,
            );
            return;
        }
        if !self.fitted {
            let s = (size.x / w as f32).min(size.y / h as f32);
            self.scale = if s.is_finite() && s > 0.0 { s } else { 1.0 };
            self.offset = (size - Vec2::new(w as f32, h as f32) * self.scale) / 2.0;
            self.fitted = true;
        }
        if self.image_tex.is_none() {
            let img = ColorImage::from_rgb([w as usize, h as usize], data.rgb.as_raw());
            self.image_tex = Some(ui.ctx().load_texture(
                format!("review-image-{}", self.image_id),
                img,
                egui::TextureOptions::NEAREST,
            ));
        }
        if self.overlay_stale || self.overlay_tex.is_none() {
            let img = self.compose(Rect::full(w, h));
            match &mut self.overlay_tex {
                Some(tex) => tex.set(img, egui::TextureOptions::NEAREST),
                None => {
                    self.overlay_tex = Some(ui.ctx().load_texture(
                        format!("review-overlay-{}", self.image_id),
                        img,
                        egui::TextureOptions::NEAREST,
                    ));
                }
            }
            self.overlay_stale = false;
            self.deferred = Rect::EMPTY;
        } else if !self.deferred.is_empty() {
            let rows = (DEFERRED_BAND_PIXELS / self.deferred.width().max(1)).max(1);
            let band = Rect {
                y1: (self.deferred.y0 + rows).min(self.deferred.y1),
                ..self.deferred
            };
            self.deferred.y0 = band.y1;
            if self.deferred.is_empty() {
                self.deferred = Rect::EMPTY;
            }
            self.refresh_overlay(band);
            ui.ctx().request_repaint();
        }

        self.pointer_input(ui, &response, cx);

        let Some(data) = self.data.as_ref() else {
            return;
        };
        let img_rect = egui::Rect::from_min_size(
            self.image_to_screen([0.0, 0.0]),
            Vec2::new(w as f32, h as f32) * self.scale,
        );
        let uv = egui::Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        let painter = painter.with_clip_rect(response.rect);
        painter.rect_filled(response.rect, 0.0, Color32::from_gray(30));
        if let Some(tex) = &self.image_tex {
            painter.image(tex.id(), img_rect, uv, Color32::WHITE);
        }
        if let Some(tex) = &self.overlay_tex {
            painter.image(tex.id(), img_rect, uv, Color32::WHITE);
        }
        // Model proposals: dashed outlines.
        for (det, rings) in &self.proposals {
            let [r, g, b] = data
                .classes
                .iter()
                .find(|c| c.name == det.class_name)
                .and_then(|c| data.colors.get(&c.id))
                .copied()
                .unwrap_or([255, 255, 255]);
            for ring in rings {
                let mut pts: Vec<Pos2> = ring.iter().map(|&p| self.image_to_screen(p)).collect();
                if let Some(&first) = pts.first() {
                    pts.push(first);
                }
                painter.extend(egui::Shape::dashed_line(
                    &pts,
                    Stroke::new(2.0, Color32::from_rgb(r, g, b)),
                    6.0,
                    4.0,
                ));
            }
        }
        self.paint_box_prompts(&painter);
        // Polygon in progress.
        if !self.polygon.is_empty() {
            let pts: Vec<Pos2> = self
                .polygon
                .iter()
                .map(|&p| self.image_to_screen(p))
                .collect();
            let color = if self.subtract {
                Color32::from_rgb(255, 80, 80)
            } else {
                Color32::from_rgb(80, 255, 120)
            };
            painter.add(egui::Shape::line(pts.clone(), Stroke::new(1.5, color)));
            for p in pts {
                painter.circle_filled(p, 3.0, color);
            }
        }
        // Brush outline under the cursor, and what a stroke does when nothing is selected.
        if matches!(self.tool, Tool::Brush | Tool::Eraser)
            && let Some(hover) = response.hover_pos()
        {
            let radius = self.brush_size * 0.5 * self.scale;
            painter.circle_stroke(hover, radius, Stroke::new(1.0, Color32::WHITE));
            if let Some((text, warn)) = self.cursor_text() {
                let color = if warn {
                    ui.visuals().warn_fg_color
                } else {
                    Color32::WHITE
                };
                let at = hover + Vec2::new(radius + 6.0, radius + 6.0);
                let galley = painter.layout_no_wrap(text, egui::FontId::proportional(13.0), color);
                let rect = egui::Rect::from_min_size(at, galley.size()).expand(3.0);
                painter.rect_filled(rect, 3.0, Color32::from_black_alpha(180));
                painter.galley(at, galley, color);
            }
        }
    }

    /// The label next to the brush: why the last stroke did nothing (`warn`), else, with
    /// nothing selected, what a stroke will do.
    fn cursor_text(&self) -> Option<(String, bool)> {
        if let Some(hint) = &self.hint {
            return Some((hint.clone(), true));
        }
        if self.stroke.is_some() || self.selected_mask().is_some() {
            return None;
        }
        let data = self.data.as_ref()?;
        if self.tool == Tool::Eraser {
            return Some((NOTHING_TO_ERASE.to_owned(), true));
        }
        Some(match self.new_instance_class() {
            Some(id) => {
                let name = data.classes.iter().find(|c| c.id == id).map(|c| &c.name);
                (
                    format!("new {}", name.map_or("instance", |n| n.as_str())),
                    false,
                )
            }
            None => (NO_CLASS.to_owned(), true),
        })
    }

    /// Re-composes and uploads the overlay pixels of `dirty` only.
    pub(super) fn refresh_overlay(&mut self, dirty: Rect) {
        let dirty = dirty.union(std::mem::take(&mut self.pending_dirty));
        if dirty.is_empty() || self.overlay_stale {
            return;
        }
        let img = self.compose(dirty);
        if let Some(tex) = &mut self.overlay_tex {
            tex.set_partial(
                [dirty.x0 as usize, dirty.y0 as usize],
                img,
                egui::TextureOptions::NEAREST,
            );
        }
    }

    /// RGBA overlay pixels of `rect`: visible instances in class colours (later over earlier,
    /// the selected one on top and stronger), the original outline of edited ones in white.
    fn compose(&self, rect: Rect) -> ColorImage {
        let (rw, rh) = (rect.width() as usize, rect.height() as usize);
        let mut pixels = vec![Color32::TRANSPARENT; rw * rh];
        let Some(data) = self.data.as_ref() else {
            return ColorImage::new([rw, rh], pixels);
        };
        let w = data.meta.width as usize;
        let h = data.meta.height as usize;
        let stroke_target = self.stroke.as_ref().map(|s| s.target);
        let mut layers: Vec<(&Mask, Color32)> = Vec::new();
        let mut outlines: Vec<&Mask> = Vec::new();
        let mut selected_layer = None;
        for inst in &data.instances {
            if !inst.visible {
                continue;
            }
            let [r, g, b] = data
                .colors
                .get(&inst.row.class_id)
                .copied()
                .unwrap_or([200; 3]);
            let is_selected = self.selected == Some(inst.row.id);
            let mask: &Mask = match (&self.stroke, stroke_target) {
                (Some(s), Some(Some(t))) if t == inst.row.id => &s.mask,
                _ => &inst.mask,
            };
            let color =
                Color32::from_rgba_unmultiplied(r, g, b, if is_selected { 150 } else { 100 });
            if is_selected {
                selected_layer = Some((mask, color));
            } else {
                layers.push((mask, color));
            }
            if let Some(original) = &inst.original {
                outlines.push(original);
            }
        }
        if let Some(s) = &self.stroke
            && s.target.is_none()
        {
            let [r, g, b] = self
                .new_instance_class()
                .and_then(|c| data.colors.get(&c))
                .copied()
                .unwrap_or([255; 3]);
            selected_layer = Some((&s.mask, Color32::from_rgba_unmultiplied(r, g, b, 150)));
        }
        layers.extend(selected_layer);
        let outline_color = Color32::from_rgba_unmultiplied(255, 255, 255, 220);
        for (ry, y) in (rect.y0 as usize..rect.y1 as usize).enumerate() {
            let out = &mut pixels[ry * rw..(ry + 1) * rw];
            for (mask, color) in &layers {
                let row = &mask.data()[y * w + rect.x0 as usize..y * w + rect.x1 as usize];
                for (o, &v) in out.iter_mut().zip(row) {
                    if v != 0 {
                        *o = *color;
                    }
                }
            }
            for original in &outlines {
                let d = original.data();
                for (rx, x) in (rect.x0 as usize..rect.x1 as usize).enumerate() {
                    let p = y * w + x;
                    if d[p] == 0 {
                        continue;
                    }
                    let edge = x == 0
                        || y == 0
                        || x + 1 == w
                        || y + 1 == h
                        || d[p - 1] == 0
                        || d[p + 1] == 0
                        || d[p - w] == 0
                        || d[p + w] == 0;
                    if edge {
                        out[rx] = outline_color;
                    }
                }
            }
        }
        ColorImage::new([rw, rh], pixels)
    }
}

/// Overlay pixels recomposed per frame from [`ImageView`]'s deferred region (a 2000-pixel-wide
/// region: 131 rows, a few milliseconds).
const DEFERRED_BAND_PIXELS: u32 = 1 << 18;
