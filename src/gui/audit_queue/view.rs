//! Drawing and keys of the Likely errors queue: the list (kind filter with counts, the latest
//! audit, the virtualised cards), the selected finding's actions above the [`ImageView`], the
//! suspect instance framed and the suggested fix drawn dashed over the view's canvas, and the
//! queue's shortcuts ([`super::shortcuts`]), read before the view sees the keys.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui;
use egui::{Color32, FontId, Key, Modifiers, Pos2, Sense, Stroke, Vec2};

use super::{AuditQueue, ClassInfo, DASH, GAP, KINDS, LIST_WIDTH, SUSPECT, TO_DELETE};
use crate::dataset::store::{FindingRow, Resolution};
use crate::gui::editor::ImageViewAction;
use crate::gui::shared::PanelCtx;

impl AuditQueue {
    /// The queue's keys (before the view sees them; unless a text field has the keyboard).
    fn keys(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        if ui.ctx().egui_wants_keyboard_input() {
            return;
        }
        let mut space_dragged = self.space_dragged;
        let (next, previous, accept, keep, delete, undo) = ui.input_mut(|i| {
            let mut hit = |keys: &[Key]| {
                keys.iter()
                    .fold(false, |any, &k| i.consume_key(Modifiers::NONE, k) | any)
            };
            let next = hit(&[Key::J, Key::ArrowDown]);
            let previous = hit(&[Key::K, Key::ArrowUp]);
            let accept = hit(&[Key::A]);
            let keep_key = hit(&[Key::S]);
            let delete = hit(&[Key::Delete]);
            // Ctrl+Shift+Z (redo) stays with the editor.
            let undo = !i.modifiers.shift && i.consume_key(Modifiers::COMMAND, Key::Z);
            // Space keeps on release, unless it was held to pan (Space + drag).
            if i.key_down(Key::Space) && i.pointer.is_decidedly_dragging() {
                space_dragged = true;
            }
            let mut space_up = false;
            i.events.retain(|e| match e {
                egui::Event::Key {
                    key: Key::Space,
                    pressed,
                    ..
                } => {
                    space_up |= !pressed;
                    false
                }
                _ => true,
            });
            let keep_space = space_up && !space_dragged;
            if space_up {
                space_dragged = false;
            }
            (next, previous, accept, keep_key || keep_space, delete, undo)
        });
        self.space_dragged = space_dragged;
        if next {
            self.step(1);
        }
        if previous {
            self.step(-1);
        }
        if accept {
            self.request(Resolution::AcceptFix, cx);
        } else if keep {
            self.request(Resolution::Keep, cx);
        } else if delete {
            self.request(Resolution::Delete, cx);
        }
        if undo {
            self.undo(cx);
        }
    }

    /// Draws the queue (list on the left, the selected finding's image on the right).
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        let ctx = ui.ctx().clone();
        if self.select_first && self.read_once {
            self.select_first = false;
            if self.selected_index().is_none() {
                self.step(1);
            }
        }
        let before = (self.selected, self.pending);
        self.keys(ui, cx);
        self.sync_view(cx);
        self.run_pending(cx);
        self.update_focus(&ctx, cx);
        egui::Panel::left("audit_queue_list")
            .resizable(true)
            .default_size(LIST_WIDTH)
            .show(ui, |ui| self.list_ui(ui));
        egui::CentralPanel::default().show(ui, |ui| self.detail_ui(ui, cx));
        if (self.selected, self.pending) != before {
            ctx.request_repaint(); // open the newly selected image, run what was asked
        }
        if self.pending.is_some() || self.reader.is_some() {
            ctx.request_repaint_after(std::time::Duration::from_millis(30));
        }
    }

    fn list_ui(&mut self, ui: &mut egui::Ui) {
        ui.strong("Likely errors");
        let mut kind = None;
        ui.horizontal_wrapped(|ui| {
            let all = format!("All ({})", self.rows.len());
            if ui.selectable_label(self.kind.is_none(), all).clicked() {
                kind = Some(None);
            }
            for (k, (name, shown)) in KINDS.iter().enumerate() {
                let text = format!("{shown} ({})", self.counts[k]);
                if ui
                    .selectable_label(self.kind == Some(*name), text)
                    .clicked()
                {
                    kind = Some(Some(*name));
                }
            }
        });
        if let Some(kind) = kind {
            self.set_kind_filter(kind);
        }
        if let Some(a) = &self.latest {
            ui.add(
                egui::Label::new(
                    egui::RichText::new(format!(
                        "Latest audit: {} · {} · {} images",
                        a.model,
                        short_date(&a.created_at),
                        a.images
                    ))
                    .small()
                    .weak(),
                )
                .truncate(),
            )
            .on_hover_text(&a.model);
        }
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        ui.separator();
        if !self.read_once {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Reading the audit findings…");
            });
            return;
        }
        if self.shown.is_empty() {
            ui.label(if self.latest.is_none() {
                "No audit yet. Run one with \"Audit with this run\" in Train, or `maskstudio audit --project <folder> --model <bundle>`."
            } else if self.rows.is_empty() {
                "No open findings: every one is resolved."
            } else {
                "No open finding of this kind."
            });
            return;
        }
        self.cards_ui(ui);
    }

    /// The virtualised list of cards (only the visible ones are laid out).
    fn cards_ui(&mut self, ui: &mut egui::Ui) {
        let line = ui.text_style_height(&egui::TextStyle::Body);
        let card_h = 4.0 * line + 14.0;
        let spacing = ui.spacing().item_spacing.y;
        let mut area = egui::ScrollArea::vertical()
            .id_salt("audit_queue_cards")
            .auto_shrink([false, false]);
        if std::mem::take(&mut self.scroll_to_selected)
            && let Some(at) = self.selected_index()
        {
            // Two cards of context above the selected one.
            let offset = (at as f32 - 2.0).max(0.0) * (card_h + spacing);
            area = area.vertical_scroll_offset(offset);
        }
        let mut clicked = None;
        area.show_rows(ui, card_h, self.shown.len(), |ui, range| {
            for at in range {
                let row = &self.rows[self.shown[at]];
                let selected = self.selected == Some(row.id);
                if card_ui(ui, row, &self.classes, selected, card_h).clicked() {
                    clicked = Some(row.id);
                }
            }
        });
        if let Some(id) = clicked {
            self.selected = Some(id);
        }
    }

    /// The selected finding's actions above its image in the view.
    fn detail_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        if let Some(row) = self.selected_row().cloned() {
            self.actions_ui(ui, &row, cx);
        } else if self.view.is_none() {
            ui.label(if self.rows.is_empty() {
                "Nothing to review here."
            } else {
                "Select a finding (J / K or click a card)."
            });
            return;
        }
        let Some(view) = self.view.as_mut() else {
            return;
        };
        let action = view.ui(ui, cx);
        if view.is_idle() {
            if std::mem::take(&mut self.view_busy) {
                self.dirty = true; // its writes are saved: the queue may have changed
            }
        } else {
            self.view_busy = true;
        }
        self.draw_focus(ui);
        match action {
            ImageViewAction::None => {}
            ImageViewAction::Next => self.step(1),
            ImageViewAction::Previous => self.step(-1),
            ImageViewAction::Close => {
                self.selected = None;
                self.close_view();
            }
        }
    }

    fn actions_ui(&mut self, ui: &mut egui::Ui, row: &FindingRow, cx: &mut PanelCtx<'_>) {
        let class = |id: Option<i64>| class_name(&self.classes, id);
        let accept_hover = match row.kind.as_str() {
            "missing" => format!(
                "Add the suggested {} instance (A)",
                class(row.suggested_class_id)
            ),
            "loose" => "Replace the outline with the suggested mask (A)".to_owned(),
            "swap" => format!(
                "Change the class from {} to {} (A)",
                class(row.instance_class_id),
                class(row.suggested_class_id)
            ),
            _ => "Delete the instance (A)".to_owned(),
        };
        let mut asked = None;
        ui.horizontal_wrapped(|ui| {
            ui.strong(format!("{}: {}", kind_title(&row.kind), row.reason));
            if row.stale {
                ui.colored_label(ui.visuals().warn_fg_color, "stale")
                    .on_hover_text("The labels changed since this audit: check the fix still fits");
            }
        });
        ui.horizontal_wrapped(|ui| {
            let idle = self.pending.is_none() && self.reselect.is_none();
            let buttons = [
                ("Accept fix", Resolution::AcceptFix, true, accept_hover),
                (
                    "Keep as is",
                    Resolution::Keep,
                    true,
                    "The label is right: the finding leaves the queue (S or Space)".to_owned(),
                ),
                (
                    "Delete instance",
                    Resolution::Delete,
                    row.instance_id.is_some(),
                    "Delete the suspect instance (Delete)".to_owned(),
                ),
            ];
            for (label, how, enabled, hover) in buttons {
                let response = ui
                    .add_enabled(idle && enabled, egui::Button::new(label))
                    .on_hover_text(hover);
                if response.clicked() {
                    response.surrender_focus(); // Space keeps; it must not click this again
                    asked = Some(how);
                }
            }
            ui.separator();
            if ui.button("Previous (K)").clicked() {
                self.step(-1);
            }
            if ui.button("Next (J)").clicked() {
                self.step(1);
            }
            if ui
                .add_enabled(idle, egui::Button::new("Undo (Ctrl+Z)"))
                .clicked()
            {
                self.undo(cx);
            }
            ui.separator();
            ui.weak(format!("{} · {}", row.model, short_date(&row.audited_at)));
        });
        if let Some(how) = asked {
            self.request(how, cx);
        }
    }

    /// Frames the suspect instance and draws the suggested fix dashed over the view's canvas.
    fn draw_focus(&mut self, ui: &egui::Ui) {
        let (Some(view), Some(focus)) = (self.view.as_ref(), self.focus.as_mut()) else {
            return;
        };
        let Some(row) = self.rows.iter().find(|r| r.id == focus.finding) else {
            return;
        };
        if !view.is_loaded() || view.image_id() != row.image_id {
            return;
        }
        let painter = ui.painter().with_clip_rect(view.canvas_rect());
        let color_of = |id: Option<i64>| {
            id.and_then(|id| self.classes.get(&id))
                .map_or(Color32::WHITE, |c| {
                    Color32::from_rgb(c.color[0], c.color[1], c.color[2])
                })
        };
        let bbox = row
            .instance_id
            .and_then(|id| view.instance_mask(id))
            .map(|mask| match &focus.bbox {
                Some((seen, b)) if Arc::ptr_eq(seen, &mask) => *b,
                _ => {
                    let b = mask.bbox();
                    focus.bbox = Some((mask, b));
                    b
                }
            });
        let screen_rect = |[x, y, w, h]: [f64; 4]| {
            egui::Rect::from_min_max(
                view.image_to_screen([x, y]),
                view.image_to_screen([x + w, y + h]),
            )
        };
        let mut label_at = None;
        if let Some(b) = bbox {
            let rect = screen_rect(b).expand(2.0);
            painter.rect_stroke(
                rect,
                2.0,
                Stroke::new(2.0, SUSPECT),
                egui::StrokeKind::Outside,
            );
            label_at = Some(rect.left_top());
        }
        let class = |id| class_name(&self.classes, id);
        let (text, color) = match row.kind.as_str() {
            "missing" => (
                format!("missing {}", class(row.suggested_class_id)),
                color_of(row.suggested_class_id),
            ),
            "loose" => (
                "suggested outline".to_owned(),
                color_of(row.instance_class_id),
            ),
            "swap" => (
                format!("class: {}?", class(row.suggested_class_id)),
                color_of(row.suggested_class_id),
            ),
            _ => ("delete?".to_owned(), TO_DELETE),
        };
        let stroke = Stroke::new(2.0, color);
        for ring in &focus.rings {
            let mut pts: Vec<Pos2> = ring.iter().map(|&p| view.image_to_screen(p)).collect();
            if let Some(&first) = pts.first() {
                pts.push(first);
                label_at = Some(label_at.map_or(first, |l: Pos2| l.min(first)));
            }
            dashed(&painter, &pts, stroke);
        }
        if matches!(row.kind.as_str(), "swap" | "spurious")
            && let Some(b) = bbox
        {
            let r = screen_rect(b).expand(9.0);
            let corners = [
                r.left_top(),
                r.right_top(),
                r.right_bottom(),
                r.left_bottom(),
                r.left_top(),
            ];
            dashed(&painter, &corners, stroke);
            label_at = Some(r.left_top());
        }
        if let Some(at) = label_at {
            let galley = painter.layout_no_wrap(text, FontId::proportional(13.0), color);
            let at = at - Vec2::new(0.0, galley.size().y + 6.0);
            let rect = egui::Rect::from_min_size(at, galley.size()).expand(3.0);
            painter.rect_filled(rect, 3.0, Color32::from_black_alpha(190));
            painter.galley(at, galley, color);
        }
    }
}

/// A dashed outline through `points` over a dark band, so it shows on any image and over an
/// instance of its own colour.
fn dashed(painter: &egui::Painter, points: &[Pos2], stroke: Stroke) {
    let band = Stroke::new(stroke.width + 2.0, Color32::from_black_alpha(150));
    painter.add(egui::Shape::line(points.to_vec(), band));
    painter.extend(egui::Shape::dashed_line(points, stroke, DASH, GAP));
}

/// One card: kind and score, class (suggested class of a swap), image, reason, audit.
fn card_ui(
    ui: &mut egui::Ui,
    row: &FindingRow,
    classes: &HashMap<i64, ClassInfo>,
    selected: bool,
    height: f32,
) -> egui::Response {
    let (rect, response) =
        ui.allocate_exact_size(Vec2::new(ui.available_width(), height), Sense::click());
    let image = row.image_path.rsplit('/').next().unwrap_or(&row.image_path);
    response.widget_info(|| {
        egui::WidgetInfo::labeled(
            egui::Role::Button,
            true,
            format!("Finding {}: {} on {image}", row.id, row.kind),
        )
    });
    if !ui.is_rect_visible(rect) {
        return response;
    }
    let visuals = ui.visuals();
    let painter = ui.painter().with_clip_rect(rect);
    let fill = if selected {
        visuals.selection.bg_fill
    } else if response.hovered() {
        visuals.widgets.hovered.weak_bg_fill
    } else {
        visuals.faint_bg_color
    };
    painter.rect_filled(rect, 4.0, fill);
    let text = visuals.text_color();
    let weak = visuals.weak_text_color();
    let width = rect.width() - 12.0;
    let mut at = rect.left_top() + Vec2::new(6.0, 5.0);
    let mut line = |s: String, font: FontId, color: Color32| {
        let mut job = egui::text::LayoutJob::simple_singleline(s, font, color);
        job.wrap = egui::text::TextWrapping::truncate_at_width(width);
        let galley = painter.layout_job(job);
        let h = galley.size().y;
        painter.galley(at, galley, color);
        at.y += h + 1.0;
    };
    let class = |id| class_name(classes, id);
    let mut head = format!(
        "{}  {:.2}   image {:.2}",
        kind_title(&row.kind),
        row.score,
        row.image_score
    );
    if row.stale {
        head.push_str("   stale");
    }
    let head_color = if row.stale {
        visuals.warn_fg_color
    } else {
        text
    };
    line(head, FontId::proportional(14.0), head_color);
    let what = match row.kind.as_str() {
        "missing" => format!("unlabelled {}", class(row.suggested_class_id)),
        "swap" => format!(
            "{}, model says {}",
            class(row.instance_class_id),
            class(row.suggested_class_id)
        ),
        _ => class(row.instance_class_id),
    };
    line(
        format!("{what} · {image}"),
        FontId::proportional(13.0),
        text,
    );
    line(row.reason.clone(), FontId::proportional(12.0), text);
    line(
        format!("{} · {}", row.model, short_date(&row.audited_at)),
        FontId::proportional(11.0),
        weak,
    );
    response
}

/// A kind's name as shown ("Loose"); an unknown one as stored.
fn kind_title(kind: &str) -> &str {
    KINDS
        .iter()
        .find(|(s, _)| *s == kind)
        .map_or(kind, |(_, shown)| shown)
}

/// A class's name, or what is known of it.
fn class_name(classes: &HashMap<i64, ClassInfo>, id: Option<i64>) -> String {
    match id {
        Some(id) => classes
            .get(&id)
            .map_or_else(|| format!("class {id}"), |c| c.name.clone()),
        None => "deleted instance".to_owned(),
    }
}

/// `2026-12-05T21:40:12.345Z` as `2026-12-05 21:40 UTC` (other text as it is).
fn short_date(iso: &str) -> String {
    match (iso.get(..10), iso.get(11..16)) {
        (Some(day), Some(time)) if iso.as_bytes().get(10) == Some(&b'T') => {
            format!("{day} {time} UTC")
        }
        _ => iso.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_kinds_read_as_shown() {
        assert_eq!(
            short_date("2026-12-05T21:40:12.345Z"),
            "2026-12-05 21:40 UTC"
        );
        assert_eq!(short_date("yesterday"), "yesterday");
        assert_eq!(kind_title("swap"), "Swap");
        assert_eq!(kind_title("other"), "other");
    }
}
