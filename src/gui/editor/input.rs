//! Input to tool actions: the keyboard shortcuts ([`super::shortcuts`]), zoom/pan, brush and
//! eraser strokes from raw pointer events (painted into a local copy of the mask, committed on
//! release), clicks of the select, polygon, fill and merge tools, and closing a polygon.

use eframe::egui;
use egui::{Key, Modifiers, Pos2};

use super::edits::MorphOp;
use super::writer::EditCommand;
use super::{ImageView, ImageViewAction, NO_CLASS, NOTHING_TO_ERASE, StrokeState, Tool};
use crate::dataset::maskops::{self, Rect};
use crate::dataset::store::ReviewStatus;
use crate::dataset::{Mask, Origin};
use crate::gui::shared::PanelCtx;

impl ImageView {
    /// The shortcuts of [`super::shortcuts`] (unless a text field has the keyboard); returns
    /// the navigation they ask for.
    pub(super) fn keyboard(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) -> ImageViewAction {
        if ui.ctx().egui_wants_keyboard_input() {
            return ImageViewAction::None;
        }
        let mut action = ImageViewAction::None;
        let cmd_shift = Modifiers::COMMAND | Modifiers::SHIFT;
        let (redo, undo, enter, shift) = ui.input_mut(|i| {
            // Shift as carried by the Enter event itself (Shift+Enter closes as subtract).
            let shift = i.modifiers.shift
                || i.events.iter().any(|e| {
                    matches!(e, egui::Event::Key { key: Key::Enter, pressed: true, modifiers, .. } if modifiers.shift)
                });
            let redo = i.consume_key(cmd_shift, Key::Z) || i.consume_key(Modifiers::COMMAND, Key::Y);
            let undo = i.consume_key(Modifiers::COMMAND, Key::Z);
            (redo, undo, i.consume_key(Modifiers::NONE, Key::Enter), shift)
        });
        if redo {
            self.history(false, cx);
        } else if undo {
            self.history(true, cx);
        }
        if enter {
            self.close_polygon(shift, cx);
        }
        let keys: Vec<Key> = ui.input_mut(|i| {
            [
                Key::B,
                Key::E,
                Key::P,
                Key::F,
                Key::V,
                Key::M,
                Key::X,
                Key::N,
                Key::S,
                Key::H,
                Key::R,
                Key::Delete,
                Key::OpenBracket,
                Key::CloseBracket,
                Key::Num1,
                Key::Num2,
                Key::Num3,
                Key::D,
                Key::ArrowRight,
                Key::A,
                Key::ArrowLeft,
                Key::Num0,
                Key::Escape,
            ]
            .into_iter()
            .filter(|&k| i.consume_key(Modifiers::NONE, k))
            .collect()
        });
        for key in keys {
            match key {
                Key::B => self.set_tool(Tool::Brush),
                Key::E => self.set_tool(Tool::Eraser),
                Key::P => self.set_tool(Tool::Polygon),
                Key::F => self.set_tool(Tool::Fill),
                Key::V => self.set_tool(Tool::Select),
                Key::M => self.set_tool(Tool::Merge),
                Key::X => self.set_tool(Tool::Box),
                Key::N => self.new_instance(),
                Key::S => self.split(cx),
                Key::H => self.morph(MorphOp::FillHoles, cx),
                Key::R => self.revert(cx),
                Key::Delete => self.delete(cx),
                Key::OpenBracket => self.set_brush_size(self.brush_size / 1.25),
                Key::CloseBracket => self.set_brush_size(self.brush_size * 1.25),
                Key::Num1 => self.status(ReviewStatus::Accepted, cx),
                Key::Num2 => self.status(ReviewStatus::Fixed, cx),
                Key::Num3 => self.status(ReviewStatus::Rejected, cx),
                Key::D | Key::ArrowRight => action = ImageViewAction::Next,
                Key::A | Key::ArrowLeft => action = ImageViewAction::Previous,
                Key::Num0 => self.fitted = false,
                Key::Escape => {
                    if self.polygon.is_empty() {
                        action = ImageViewAction::Close;
                    } else {
                        self.polygon.clear();
                    }
                }
                _ => {}
            }
        }
        action
    }

    /// The canvas's pointer: zoom at the cursor, pan (middle button or Space + drag), brush and
    /// eraser strokes, clicks of the other tools.
    pub(super) fn pointer_input(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        cx: &mut PanelCtx<'_>,
    ) {
        // Zoom at the cursor, pan with the middle button or Space + drag.
        let space = ui.input(|i| i.key_down(Key::Space));
        if let Some(hover) = response.hover_pos() {
            let (scroll, zoom) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
            let factor = zoom * (scroll * 0.002).exp();
            if (factor - 1.0).abs() > 1e-4 {
                let anchor = self.screen_to_image(hover);
                self.scale = (self.scale * factor).clamp(0.01, 64.0);
                let now = self.image_to_screen(anchor);
                self.offset += hover - now;
            }
        }
        if response.dragged_by(egui::PointerButton::Middle)
            || (space && response.dragged_by(egui::PointerButton::Primary))
        {
            self.offset += response.drag_delta();
        }

        // Brush / eraser strokes from raw pointer events (every move is painted).
        if matches!(self.tool, Tool::Brush | Tool::Eraser) && !space {
            self.stroke_input(ui, response, cx);
        } else if self.tool == Tool::Box && !space {
            self.box_input(ui, response, cx);
        } else if (response.clicked() || response.double_clicked())
            && let Some(pos) = response.interact_pointer_pos()
        {
            let p = self.screen_to_image(pos);
            let shift = ui.input(|i| i.modifiers.shift);
            self.click(p, response.double_clicked(), shift, cx);
        }
    }

    fn stroke_input(&mut self, ui: &egui::Ui, response: &egui::Response, cx: &mut PanelCtx<'_>) {
        let (pressed, released, origin, moves, latest) = ui.input(|i| {
            let moves: Vec<Pos2> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PointerMoved(p) => Some(*p),
                    _ => None,
                })
                .collect();
            (
                i.pointer.primary_pressed(),
                i.pointer.primary_released(),
                i.pointer.press_origin(),
                moves,
                i.pointer.latest_pos(),
            )
        });
        if pressed
            && self.stroke.is_none()
            && let Some(origin) = origin
            && response.rect.contains(origin)
        {
            self.begin_stroke(self.screen_to_image(origin));
        }
        if self.stroke.is_none() {
            return;
        }
        let mut dirty = Rect::EMPTY;
        let points: Vec<[f64; 2]> = moves
            .into_iter()
            .chain(latest)
            .map(|p| self.screen_to_image(p))
            .collect();
        for p in points {
            dirty = dirty.union(self.extend_stroke(p));
        }
        self.refresh_overlay(dirty);
        if released {
            self.commit_stroke(cx);
        }
    }

    /// Starts a stroke at image point `p` (brush paints, eraser erases). With nothing selected
    /// the brush starts a new instance of [`Self::new_instance_class`]; a stroke that cannot
    /// start says why in [`Self::hint`] (at the cursor and in the toolbar), never silently.
    fn begin_stroke(&mut self, p: [f64; 2]) {
        let Some(data) = self.data.as_ref() else {
            return;
        };
        let value = self.tool != Tool::Eraser;
        let target = self
            .selected
            .and_then(|id| data.instances.iter().find(|i| i.row.id == id));
        let refused = match target {
            None if !value => Some(NOTHING_TO_ERASE),
            None if self.new_instance_class().is_none() => Some(NO_CLASS),
            // The selected instance's mask (or id) on screen is about to be replaced by the
            // store's. A new instance depends on neither, so it may start meanwhile.
            Some(_) if self.stale => Some("saving the previous edit; paint again in a moment"),
            _ => None,
        };
        if let Some(why) = refused {
            self.hint = Some(why.to_owned());
            return;
        }
        self.hint = None;
        let Some(data) = self.data.as_ref() else {
            return;
        };
        let target = self
            .selected
            .and_then(|id| data.instances.iter().find(|i| i.row.id == id));
        let mask = target.map_or_else(
            || Mask::new(data.meta.width, data.meta.height),
            |i| Mask::clone(&i.mask),
        );
        self.stroke = Some(StrokeState {
            target: target.map(|i| i.row.id),
            mask,
            last: p,
            value,
            touched: Rect::EMPTY,
        });
        let dirty = self.extend_stroke(p);
        self.pending_dirty = self.pending_dirty.union(dirty);
    }

    /// Paints the segment from the last point to `p`; returns the dirty rectangle.
    fn extend_stroke(&mut self, p: [f64; 2]) -> Rect {
        let radius = f64::from(self.brush_size) * 0.5;
        let Some(stroke) = self.stroke.as_mut() else {
            return Rect::EMPTY;
        };
        let dirty = maskops::paint_segment(&mut stroke.mask, stroke.last, p, radius, stroke.value);
        stroke.last = p;
        stroke.touched = stroke.touched.union(dirty);
        dirty
    }

    /// Shows the finished stroke as the instance's mask and queues it for the store (one
    /// transaction on the writer); a stroke on empty ground becomes a new instance.
    fn commit_stroke(&mut self, cx: &mut PanelCtx<'_>) {
        let Some(stroke) = self.stroke.take() else {
            return;
        };
        match stroke.target {
            Some(id) => {
                // The overlay already shows the stroke; only a first edit adds the original's
                // outline, drawn over the next frames.
                let outline = self.set_mask(id, stroke.mask, cx);
                self.deferred = self.deferred.union(outline);
            }
            None => {
                if !stroke.mask.data().contains(&1) {
                    self.hint = Some("the stroke missed the image".to_owned());
                    return;
                }
                // The overlay already shows the stroke in the new instance's colour.
                self.add_instance(stroke.mask, Origin::Manual, None, cx);
            }
        }
    }

    fn instance_at(&self, p: [f64; 2]) -> Option<i64> {
        let data = self.data.as_ref()?;
        if p[0] < 0.0 || p[1] < 0.0 {
            return None;
        }
        let (x, y) = (p[0] as u32, p[1] as u32);
        if x >= data.meta.width || y >= data.meta.height {
            return None;
        }
        // The selected instance is drawn on top, then later ones over earlier ones.
        if let Some((id, mask)) = self.selected_mask()
            && mask.get(x, y)
        {
            return Some(id);
        }
        data.instances
            .iter()
            .rev()
            .find(|i| i.visible && i.mask.get(x, y))
            .map(|i| i.row.id)
    }

    fn click(&mut self, p: [f64; 2], double: bool, shift: bool, cx: &mut PanelCtx<'_>) {
        match self.tool {
            Tool::Select => {
                if self.accept_proposal_at(p, cx) {
                    return;
                }
                let hit = self.instance_at(p);
                self.select(hit);
            }
            Tool::Polygon => {
                if self.polygon.last() != Some(&p) && !double {
                    self.polygon.push(p);
                }
                if double {
                    self.close_polygon(shift, cx);
                }
            }
            Tool::Fill => {
                if self.selected.is_some() && !self.ready(cx) {
                    return;
                }
                let Some((id, mask)) = self.selected_mask() else {
                    cx.notices
                        .info("select an instance first (V, then click it)");
                    return;
                };
                let mut m = mask.clone();
                if p[0] < 0.0 || p[1] < 0.0 {
                    return;
                }
                match maskops::flood_fill(&mut m, p[0] as u32, p[1] as u32) {
                    Some(_) => self.write_mask(id, m, cx),
                    None => cx
                        .notices
                        .warn("flood fill: click inside a closed outline of the selected instance"),
                }
            }
            Tool::Merge => {
                let (Some(keep), Some(other)) = (self.selected, self.instance_at(p)) else {
                    cx.notices
                        .info("merge: select an instance, then click the one to merge into it");
                    return;
                };
                if keep == other || !self.ready(cx) {
                    return;
                }
                self.send(EditCommand::Merge { keep, other }, cx);
                self.set_tool(Tool::Select);
            }
            Tool::Brush | Tool::Eraser | Tool::Box => {}
        }
    }

    /// Closes the polygon in progress and adds it to (or, with `subtract` xor `invert`,
    /// cuts it out of) the selected instance; adding with no selection makes a new instance.
    fn close_polygon(&mut self, invert: bool, cx: &mut PanelCtx<'_>) {
        if self.polygon.len() < 3 {
            if !self.polygon.is_empty() {
                cx.notices.info("a polygon needs at least 3 points");
            }
            return;
        }
        if !self.ready(cx) {
            return; // the points stay; Enter again closes it
        }
        let ring = std::mem::take(&mut self.polygon);
        let add = self.subtract == invert;
        let Some(data) = self.data.as_ref() else {
            return;
        };
        match self
            .selected
            .and_then(|id| data.instances.iter().find(|i| i.row.id == id))
        {
            Some(inst) => {
                let id = inst.row.id;
                let mut m = Mask::clone(&inst.mask);
                maskops::fill_polygons(&mut m, &[ring], add);
                self.write_mask(id, m, cx);
            }
            None if add => {
                let mut m = Mask::new(data.meta.width, data.meta.height);
                maskops::fill_polygons(&mut m, &[ring], true);
                self.add_instance(m, Origin::Manual, None, cx);
                self.overlay_stale = true;
            }
            None => cx.notices.info("subtract: select an instance first"),
        }
    }
}
