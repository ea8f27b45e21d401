//! The edit operations the tools build: a new mask (stroke, polygon, fill, morphology), a new
//! instance, class change, delete, split, revert, undo/redo and review status. Each is shown at
//! once and queued for the writer ([`ImageView::send`]).

use std::sync::Arc;

use super::writer::EditCommand;
use super::{ImageView, Inst, NO_CLASS, Tool};
use crate::dataset::maskops::{self, Rect};
use crate::dataset::store::{InstanceRow, ReviewStatus};
use crate::dataset::{Mask, Origin, Rle};
use crate::gui::shared::PanelCtx;

impl ImageView {
    pub(super) fn status(&mut self, status: ReviewStatus, cx: &mut PanelCtx<'_>) {
        let Some(data) = self.data.as_mut() else {
            return;
        };
        data.meta.review_status = status; // the progress follows with the writer's answer
        let image = self.image_id;
        self.send(EditCommand::Status { image, status }, cx);
    }

    /// Makes `mask` instance `id`'s on screen at once and queues it for the store. Returns
    /// the overlay region that changed besides the mask itself (the original's outline
    /// appears on the first edit).
    pub(super) fn set_mask(&mut self, id: i64, mask: Mask, cx: &mut PanelCtx<'_>) -> Rect {
        let mask = Arc::new(mask);
        let Some(inst) = self
            .data
            .as_mut()
            .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == id))
        else {
            return Rect::EMPTY;
        };
        let old = std::mem::replace(&mut inst.mask, Arc::clone(&mask));
        let mut region = Rect::EMPTY;
        if !inst.row.edited {
            // The stored bbox of an unedited instance is its original's (no full-mask scan).
            let [x, y, w, h] = inst.row.bbox;
            if w > 0.0 && h > 0.0 {
                let (x0, y0) = (x.max(0.0) as u32, y.max(0.0) as u32);
                region = Rect {
                    x0,
                    y0,
                    x1: ((x + w).ceil() as u32).min(old.width()).max(x0),
                    y1: ((y + h).ceil() as u32).min(old.height()).max(y0),
                }
                .grow(1, old.width(), old.height());
            }
            inst.original = Some(old);
            inst.row.edited = true;
        }
        self.send(EditCommand::UpdateMask { instance: id, mask }, cx);
        region
    }

    /// Shows `mask` as a new instance (selected) at once and queues it for the store; the
    /// store's id replaces the temporary one when the writer answers. `class` defaults to the
    /// class chosen for new instances.
    pub(super) fn add_instance(
        &mut self,
        mask: Mask,
        origin: Origin,
        class: Option<i64>,
        cx: &mut PanelCtx<'_>,
    ) {
        let Some(class_id) = class.or(self.new_instance_class()) else {
            cx.notices.warn(NO_CLASS);
            return;
        };
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let id = self.next_temp_id;
        self.next_temp_id -= 1;
        let (width, height) = (mask.width(), mask.height());
        let mask = Arc::new(mask);
        data.instances.push(Inst {
            row: InstanceRow {
                id,
                image_id: self.image_id,
                class_id,
                // Not encoded here (that is the writer's work); the view never reads it.
                rle: Rle {
                    height,
                    width,
                    counts: vec![height * width],
                },
                bbox: [0.0; 4],
                area: mask.area(),
                iscrowd: false,
                origin,
                provenance: None,
                edited: false,
            },
            mask: Arc::clone(&mask),
            original: None,
            visible: true,
        });
        self.selected = Some(id);
        let image = self.image_id;
        let command = EditCommand::AddInstance {
            image,
            class: class_id,
            mask,
            origin,
        };
        if let Some(seq) = self.send(command, cx) {
            self.new_ids.push_back((seq, id));
        }
    }

    /// Changes an instance's class on screen and in the store.
    pub(super) fn set_class(&mut self, id: i64, class_id: i64, cx: &mut PanelCtx<'_>) {
        if !self.ready(cx) {
            return;
        }
        let Some(inst) = self
            .data
            .as_mut()
            .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == id))
        else {
            return;
        };
        inst.row.class_id = class_id;
        if !inst.row.edited {
            inst.original = Some(Arc::clone(&inst.mask));
            inst.row.edited = true;
        }
        self.overlay_stale = true;
        self.send(
            EditCommand::SetClass {
                instance: id,
                class: class_id,
            },
            cx,
        );
    }

    pub(super) fn history(&mut self, undo: bool, cx: &mut PanelCtx<'_>) {
        let image = self.image_id;
        self.send(
            if undo {
                EditCommand::Undo { image }
            } else {
                EditCommand::Redo { image }
            },
            cx,
        );
    }

    pub(super) fn new_instance(&mut self) {
        self.select(None);
        if !matches!(self.tool, Tool::Brush | Tool::Polygon) {
            self.set_tool(Tool::Brush);
        }
    }

    pub(super) fn selected_mask(&self) -> Option<(i64, &Mask)> {
        let id = self.selected?;
        let data = self.data.as_ref()?;
        data.instances
            .iter()
            .find(|i| i.row.id == id)
            .map(|i| (id, &*i.mask))
    }

    pub(super) fn delete(&mut self, cx: &mut PanelCtx<'_>) {
        let (Some(id), true) = (self.selected, self.data.is_some()) else {
            return;
        };
        if !self.ready(cx) {
            return;
        }
        if let Some(data) = self.data.as_mut() {
            data.instances.retain(|i| i.row.id != id);
        }
        self.selected = None;
        self.overlay_stale = true;
        self.send(EditCommand::Delete { instance: id }, cx);
    }

    pub(super) fn revert(&mut self, cx: &mut PanelCtx<'_>) {
        let (Some(id), true) = (self.selected, self.data.is_some()) else {
            return;
        };
        if self.ready(cx) {
            self.send(EditCommand::Revert { instance: id }, cx);
        }
    }

    pub(super) fn split(&mut self, cx: &mut PanelCtx<'_>) {
        let (Some(id), true) = (self.selected, self.data.is_some()) else {
            return;
        };
        if self.ready(cx) {
            self.send(EditCommand::Split { instance: id }, cx);
        }
    }

    pub(super) fn morph(&mut self, op: MorphOp, cx: &mut PanelCtx<'_>) {
        if self.selected.is_none() || !self.ready(cx) {
            return;
        }
        let Some((id, mask)) = self.selected_mask() else {
            return;
        };
        let out = match op {
            MorphOp::FillHoles => {
                let mut m = mask.clone();
                if maskops::fill_holes(&mut m).is_empty() {
                    cx.notices.info(format!("instance {id} has no hole"));
                    return;
                }
                m
            }
            MorphOp::Dilate => maskops::dilate(mask),
            MorphOp::Erode => maskops::erode(mask),
            MorphOp::Smooth => maskops::smooth(mask),
        };
        self.write_mask(id, out, cx);
    }

    /// A whole-mask edit (polygon, fill, morphology): shown at once, saved by the writer.
    pub(super) fn write_mask(&mut self, id: i64, mask: Mask, cx: &mut PanelCtx<'_>) {
        self.set_mask(id, mask, cx);
        self.overlay_stale = true;
    }
}

/// Whole-mask operations of the toolbar.
#[derive(Debug, Clone, Copy)]
pub(super) enum MorphOp {
    FillHoles,
    Dilate,
    Erode,
    Smooth,
}
