//! The side panel's instance list ([`egui_extras::TableBuilder`]): one virtual row per
//! instance (show / hide, #, class with its colour, area, status), sorted by the column whose
//! header was clicked; clicking a row selects its instance (again: deselects).

use eframe::egui;
use egui::{Color32, Sense, Vec2};
use egui_extras::{Column, TableBuilder};

use super::{ImageView, Inst};
use crate::dataset::ExportClass;

/// The column the instance list is sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum InstanceColumn {
    /// Store id (new instances, negative until saved, first).
    #[default]
    Id,
    /// Class name.
    Class,
    /// Mask pixels.
    Area,
    /// Edited first or last, then origin (`manual`, `model`, …).
    Status,
}

/// How the instance list is sorted: a column and a direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct InstanceSort {
    by: InstanceColumn,
    descending: bool,
}

impl InstanceSort {
    /// Indices into `instances` in this order (stable: equal keys keep the store's order).
    fn order(self, instances: &[Inst], classes: &[ExportClass]) -> Vec<usize> {
        let name = |i: &Inst| class_name(classes, i.row.class_id);
        let mut order: Vec<usize> = (0..instances.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&instances[a], &instances[b]);
            let o = match self.by {
                InstanceColumn::Id => a.row.id.cmp(&b.row.id),
                InstanceColumn::Class => name(a).cmp(name(b)),
                InstanceColumn::Area => a.row.area.cmp(&b.row.area),
                InstanceColumn::Status => (a.row.edited, a.row.origin.as_str())
                    .cmp(&(b.row.edited, b.row.origin.as_str())),
            };
            if self.descending { o.reverse() } else { o }
        });
        order
    }

    /// A header cell that sorts by `by` when clicked; a second click flips the direction.
    fn header(&mut self, ui: &mut egui::Ui, title: &str, by: InstanceColumn) {
        let active = self.by == by;
        let arrow = match (active, self.descending) {
            (false, _) => "",
            (true, false) => " ^",
            (true, true) => " v",
        };
        let text = egui::RichText::new(format!("{title}{arrow}")).strong();
        if ui.selectable_label(active, text).clicked() {
            *self = Self {
                by,
                descending: active && !self.descending,
            };
        }
    }
}

fn class_name(classes: &[ExportClass], id: i64) -> &str {
    classes
        .iter()
        .find(|c| c.id == id)
        .map_or("?", |c| c.name.as_str())
}

impl ImageView {
    /// The instance table; returns the clicked instance and whether a visibility box changed.
    pub(super) fn instance_table_ui(&mut self, ui: &mut egui::Ui) -> (Option<i64>, bool) {
        let (mut select, mut visibility_changed) = (None, false);
        let Some(data) = self.data.as_deref_mut() else {
            return (select, visibility_changed);
        };
        let order = self.instance_sort.order(&data.instances, &data.classes);
        let sort = &mut self.instance_sort;
        let (row_h, max_h) = (ui.spacing().interact_size.y, ui.available_height() * 0.5);
        TableBuilder::new(ui)
            .id_salt("image_view_instances")
            .striped(true)
            .sense(Sense::click())
            .max_scroll_height(max_h)
            .column(Column::auto())
            .column(Column::auto().at_least(36.0))
            .column(Column::auto().at_least(60.0).clip(true))
            .column(Column::auto().at_least(48.0))
            .column(Column::remainder().at_least(60.0))
            .header(row_h, |mut header| {
                header.col(|_| {});
                header.col(|ui| sort.header(ui, "#", InstanceColumn::Id));
                header.col(|ui| sort.header(ui, "Class name", InstanceColumn::Class));
                header.col(|ui| sort.header(ui, "Area", InstanceColumn::Area));
                header.col(|ui| sort.header(ui, "Status", InstanceColumn::Status));
            })
            .body(|body| {
                // Virtual rows: only the visible ones are laid out.
                body.rows(row_h, order.len(), |mut row| {
                    let inst = &mut data.instances[order[row.index()]];
                    let id = inst.row.id;
                    row.set_selected(self.selected == Some(id));
                    row.col(|ui| {
                        let shown = ui.checkbox(&mut inst.visible, "");
                        if shown.on_hover_text("show / hide").changed() {
                            visibility_changed = true;
                        }
                    });
                    row.col(|ui| {
                        ui.label(format!("#{id}"));
                    });
                    row.col(|ui| {
                        let class_id = inst.row.class_id;
                        let [r, g, b] = data.colors.get(&class_id).copied().unwrap_or([200; 3]);
                        let (swatch, _) = ui.allocate_exact_size(Vec2::splat(10.0), Sense::hover());
                        ui.painter()
                            .rect_filled(swatch, 2.0, Color32::from_rgb(r, g, b));
                        let name = class_name(&data.classes, class_id);
                        // Read out as "class <name>": the bare name is the class menu's item.
                        ui.label(name).widget_info(|| {
                            let what = format!("class {name}");
                            egui::WidgetInfo::labeled(egui::Role::Label, true, what)
                        });
                    });
                    row.col(|ui| {
                        ui.label(format!("{} px", inst.row.area));
                    });
                    row.col(|ui| {
                        let edited = if inst.row.edited { " · edited" } else { "" };
                        ui.label(format!("{}{edited}", inst.row.origin.as_str()));
                    });
                    if row.response().clicked() {
                        select = Some(id);
                    }
                });
            });
        (select, visibility_changed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dataset::rle::Rle;
    use crate::dataset::store::InstanceRow;
    use crate::dataset::{Mask, Origin};

    fn inst(id: i64, class_id: i64, area: u64, edited: bool, origin: Origin) -> Inst {
        Inst {
            row: InstanceRow {
                id,
                image_id: 1,
                class_id,
                rle: Rle::from_uncompressed(1, 1, vec![1]).unwrap(),
                bbox: [0.0; 4],
                area,
                iscrowd: false,
                origin,
                provenance: None,
                edited,
            },
            mask: Arc::new(Mask::new(1, 1)),
            original: None,
            visible: true,
        }
    }

    fn class(id: i64, name: &str) -> ExportClass {
        ExportClass {
            id,
            name: name.into(),
            mid: None,
        }
    }

    #[test]
    fn sorting_by_each_column_in_both_directions() {
        let classes = vec![class(1, "dog"), class(2, "cat")];
        let list = vec![
            inst(7, 1, 50, false, Origin::Manual),
            inst(-1, 2, 10, true, Origin::Manual),
            inst(3, 2, 90, false, Origin::Model),
        ];
        let order = |by, descending| InstanceSort { by, descending }.order(&list, &classes);
        assert_eq!(order(InstanceColumn::Id, false), [1, 2, 0]);
        assert_eq!(order(InstanceColumn::Id, true), [0, 2, 1]);
        assert_eq!(order(InstanceColumn::Class, false), [1, 2, 0]);
        assert_eq!(order(InstanceColumn::Class, true), [0, 1, 2]);
        assert_eq!(order(InstanceColumn::Area, false), [1, 0, 2]);
        assert_eq!(order(InstanceColumn::Area, true), [2, 0, 1]);
        assert_eq!(order(InstanceColumn::Status, false), [0, 2, 1]);
        assert_eq!(order(InstanceColumn::Status, true), [1, 2, 0]);
    }
}
