//! The Predict tab's instance table ([`egui_extras::TableBuilder`]): one virtual row per shown
//! detection (#, class, score, box, pixels at the mask threshold), sortable by class, score or
//! area by clicking the column's header.

use eframe::egui;
use egui_extras::{Column, TableBuilder};

use crate::infer::{Detection, overlay};

/// The column the instance table is sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortBy {
    /// The model's order (best score first; `#` counts in it).
    #[default]
    Score,
    /// Class name, then score.
    Class,
    /// Mask pixels at the mask threshold.
    Area,
}

/// How the instance table is sorted: a column and a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSort {
    /// The sort column.
    pub by: SortBy,
    /// Largest (or last in the alphabet) first.
    pub descending: bool,
}

impl Default for TableSort {
    /// Best score first, as the model returns them.
    fn default() -> Self {
        Self {
            by: SortBy::Score,
            descending: true,
        }
    }
}

/// One table row: the detection's rank by score (`#`, as the export numbers its masks), the
/// detection and its mask area.
type Row<'a> = (usize, &'a Detection, u64);

impl TableSort {
    /// Sorts `rows` in place (stable: equal keys keep the model's order).
    pub fn sort(self, rows: &mut [Row<'_>]) {
        rows.sort_by(|a, b| {
            let order = match self.by {
                SortBy::Score => a.1.score.total_cmp(&b.1.score),
                SortBy::Class => a.1.class_name.cmp(&b.1.class_name),
                SortBy::Area => a.2.cmp(&b.2),
            };
            if self.descending {
                order.reverse()
            } else {
                order
            }
        });
    }

    /// A header that sorts by `by` when clicked (a second click flips the direction); the sort
    /// column shows a small triangle pointing the way it runs (painted: the default font has
    /// no arrow glyphs).
    fn header(&mut self, ui: &mut egui::Ui, title: &str, by: SortBy) {
        let active = self.by == by;
        let text = egui::RichText::new(title).strong();
        if ui.selectable_label(active, text).clicked() {
            if active {
                self.descending = !self.descending;
            } else {
                // Scores and areas read best-first; classes read A to Z.
                *self = Self {
                    by,
                    descending: by != SortBy::Class,
                };
            }
        }
        if self.by == by {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(8.0, 8.0), egui::Sense::hover());
            let (top, bottom) = (rect.top(), rect.bottom());
            let (tip, base) = if self.descending {
                (bottom, top)
            } else {
                (top, bottom)
            };
            let points = vec![
                egui::pos2(rect.left(), base),
                egui::pos2(rect.right(), base),
                egui::pos2(rect.center().x, tip),
            ];
            let color = ui.visuals().strong_text_color();
            ui.painter().add(egui::Shape::convex_polygon(
                points,
                color,
                egui::Stroke::NONE,
            ));
        }
    }

    /// Draws the table of `shown` (best score first) with areas at `mask_threshold`.
    pub fn table_ui(&mut self, ui: &mut egui::Ui, shown: &[&Detection], mask_threshold: f32) {
        let mut rows: Vec<Row<'_>> = shown
            .iter()
            .enumerate()
            .map(|(k, d)| (k, *d, d.area_at(mask_threshold)))
            .collect();
        self.sort(&mut rows);
        let row_h = ui.spacing().interact_size.y;
        TableBuilder::new(ui)
            .id_salt("predict_instance_table")
            .striped(true)
            .column(Column::auto().at_least(24.0))
            .column(Column::auto().at_least(60.0).clip(true))
            .column(Column::auto().at_least(48.0))
            .column(Column::auto().at_least(90.0))
            .column(Column::remainder().at_least(48.0))
            .header(row_h, |mut header| {
                header.col(|ui| {
                    ui.strong("#");
                });
                header.col(|ui| self.header(ui, "Class", SortBy::Class));
                header.col(|ui| self.header(ui, "Score", SortBy::Score));
                header.col(|ui| {
                    ui.strong("Box");
                });
                header.col(|ui| self.header(ui, "Pixels", SortBy::Area));
            })
            .body(|body| {
                // Virtual rows: only the visible ones are laid out.
                body.rows(row_h, rows.len(), |mut row| {
                    let (k, d, area) = rows[row.index()];
                    let [r, g, b] = overlay::label_color(d.label);
                    row.col(|ui| {
                        ui.label(k.to_string());
                    });
                    row.col(|ui| {
                        ui.colored_label(egui::Color32::from_rgb(r, g, b), &d.class_name);
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.3}", d.score));
                    });
                    row.col(|ui| {
                        let [x1, y1, x2, y2] = d.box_xyxy;
                        ui.label(format!("{x1:.0},{y1:.0},{x2:.0},{y2:.0}"));
                    });
                    row.col(|ui| {
                        ui.label(area.to_string());
                    });
                });
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Mask;

    fn det(class: &str, score: f32) -> Detection {
        Detection {
            label: 1,
            class_name: class.into(),
            score,
            box_xyxy: [0.0, 0.0, 1.0, 1.0],
            mask: Mask::new(1, 1),
            soft_mask: None,
        }
    }

    #[test]
    fn sorting_by_each_column_in_both_directions() {
        let (a, b, c) = (det("dog", 0.9), det("cat", 0.6), det("dog", 0.3));
        let base: Vec<Row<'_>> = vec![(0, &a, 5), (1, &b, 50), (2, &c, 20)];
        let order = |by, descending| {
            let mut rows = base.clone();
            TableSort { by, descending }.sort(&mut rows);
            rows.iter().map(|r| r.0).collect::<Vec<_>>()
        };
        let expected = [
            (SortBy::Score, true, [0, 1, 2]),
            (SortBy::Score, false, [2, 1, 0]),
            (SortBy::Class, false, [1, 0, 2]),
            (SortBy::Class, true, [0, 2, 1]),
            (SortBy::Area, true, [1, 2, 0]),
            (SortBy::Area, false, [0, 2, 1]),
        ];
        for (by, descending, want) in expected {
            assert_eq!(
                order(by, descending),
                want,
                "{by:?} descending {descending}"
            );
        }
    }
}
