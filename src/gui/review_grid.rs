//! The Review tab: a virtualised thumbnail gallery of the project's images with mask overlays
//! and filters (class, split, review status, edited, without masks). Clicking a thumbnail opens
//! the image in the [`ImageView`] (zoom/pan, instance list, mask editor, review status). A
//! selector row at the top switches to the Likely errors queue ([`AuditQueue`]).
//!
//! The listing is one query on a named thread ([`crate::dataset::gallery`]); only the visible
//! rows are laid out (`ScrollArea::show_rows`) and their thumbnails come from [`ThumbCache`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui;

use crate::dataset::gallery::{GalleryFilter, GalleryListing, listing};
use crate::dataset::store::{Project, ReviewStatus};

use super::audit_queue::AuditQueue;
use super::editor::{ImageView, ImageViewAction};
use super::label_next::LabelNextPanel;
use super::shared::PanelCtx;
use super::thumbs::{Thumb, ThumbCache};
use super::worker::Worker;

/// Side of a gallery cell, in points.
const CELL: f32 = 136.0;
/// Textures the gallery keeps at most.
const CACHE_TEXTURES: usize = 600;

const STATUSES: [ReviewStatus; 4] = [
    ReviewStatus::Unreviewed,
    ReviewStatus::Accepted,
    ReviewStatus::Fixed,
    ReviewStatus::Rejected,
];

enum Msg {
    Listing(PathBuf, Result<GalleryListing, String>),
    /// The listing thread died (the text says why).
    Died(String),
}

/// What the Review tab shows, picked in the selector row at its top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReviewMode {
    /// The thumbnail gallery (and the image opened from it).
    #[default]
    Grid,
    /// The Likely errors queue of the label-error audits ([`AuditQueue`]).
    LikelyErrors,
    /// The images still to label, ranked by the model's uncertainty ([`LabelNextPanel`]).
    LabelNext,
}

/// The modes in selector order.
const REVIEW_MODES: [ReviewMode; 3] = [
    ReviewMode::Grid,
    ReviewMode::LikelyErrors,
    ReviewMode::LabelNext,
];

/// The Review panel (gallery + image preview).
pub struct ReviewPanel {
    root: Option<PathBuf>,
    mode: ReviewMode,
    listing: Option<Arc<GalleryListing>>,
    loading: bool,
    stale: bool,
    filter: GalleryFilter,
    shown: Vec<usize>,
    shown_dirty: bool,
    overlays: bool,
    thumbs: Option<ThumbCache>,
    /// The image open in the image view (store id), if any.
    pub selected_image: Option<i64>,
    view: Option<ImageView>,
    scroll_to: Option<f32>,
    /// The `gallery-listing` thread (its only sender; the listing ends it).
    lister: Option<Worker<Msg>>,
    /// The Label next queue (its last ranking kept while the project is open).
    label_next: LabelNextPanel,
    /// The Likely errors queue (read whatever the mode, for its count in the selector).
    audit: AuditQueue,
}

impl Default for ReviewPanel {
    fn default() -> Self {
        Self::new()
    }
}

impl ReviewPanel {
    /// An empty panel (it lists the open project when first shown).
    pub fn new() -> Self {
        Self {
            root: None,
            mode: ReviewMode::Grid,
            listing: None,
            loading: false,
            stale: true,
            filter: GalleryFilter::default(),
            shown: Vec::new(),
            shown_dirty: true,
            overlays: true,
            thumbs: None,
            selected_image: None,
            view: None,
            scroll_to: None,
            lister: None,
            label_next: LabelNextPanel::new(),
            audit: AuditQueue::new(),
        }
    }

    /// Lists the project again at the next frame (after a download, import or edit).
    pub fn refresh(&mut self) {
        self.stale = true;
        self.audit.refresh();
        if let Some(t) = &mut self.thumbs {
            t.clear();
        }
    }

    /// Opens an image in the image view (in the gallery mode).
    pub fn open_image(&mut self, image_id: i64) {
        self.set_mode(ReviewMode::Grid);
        self.selected_image = Some(image_id);
    }

    /// The mode shown.
    pub fn mode(&self) -> ReviewMode {
        self.mode
    }

    /// Shows another mode. Leaving a mode closes the image it had open, so two views never
    /// hold diverging copies of one image.
    pub fn set_mode(&mut self, mode: ReviewMode) {
        if mode == self.mode {
            return;
        }
        if self.mode == ReviewMode::LikelyErrors {
            self.audit.close_view();
        }
        self.mode = mode;
        self.selected_image = None;
        self.view = None;
        if mode == ReviewMode::LikelyErrors {
            self.audit.on_show();
        }
    }

    /// The Likely errors queue.
    pub fn audit_queue(&self) -> &AuditQueue {
        &self.audit
    }

    /// The Likely errors queue, mutable (tests select findings and filters).
    pub fn audit_queue_mut(&mut self) -> &mut AuditQueue {
        &mut self.audit
    }

    /// Images in the project (once listed).
    pub fn total_count(&self) -> Option<usize> {
        self.listing.as_ref().map(|l| l.items.len())
    }

    /// Images passing the filters (once listed).
    pub fn shown_count(&self) -> Option<usize> {
        self.listing.as_ref().map(|_| self.shown.len())
    }

    /// Thumbnails held as textures, and queued.
    pub fn thumb_stats(&self) -> (usize, usize) {
        self.thumbs
            .as_ref()
            .map_or((0, 0), |t| (t.len(), t.pending()))
    }

    /// The image view of the open image, once the panel has shown it.
    pub fn image_view(&self) -> Option<&ImageView> {
        self.view.as_ref()
    }

    /// The image view of the open image, mutable (tests drive it: tools, selection).
    pub fn image_view_mut(&mut self) -> Option<&mut ImageView> {
        self.view.as_mut()
    }

    /// Scrolls the gallery to this offset (points from the top) at the next frame.
    pub fn scroll_to(&mut self, offset: f32) {
        self.scroll_to = Some(offset);
    }

    fn start_listing(&mut self, root: &Path, ctx: &egui::Context) {
        self.loading = true;
        self.stale = false;
        let root = root.to_path_buf();
        let spawned = Worker::once("gallery-listing", ctx, move || {
            let result = Project::open(&root)
                .and_then(|p| listing(&p))
                .map_err(|e| format!("{}: {e}", root.display()));
            Msg::Listing(root, result)
        });
        match spawned {
            Ok(w) => self.lister = Some(w),
            Err(e) => {
                self.loading = false;
                log::error!("cannot start the gallery listing: {e}");
            }
        }
    }

    fn drain(&mut self, cx: &mut PanelCtx, ctx: &egui::Context) {
        for msg in Worker::drain(&mut self.lister, Msg::Died) {
            match msg {
                Msg::Died(why) => {
                    self.loading = false;
                    cx.notices.error(format!("Listing images failed: {why}"));
                }
                Msg::Listing(root, result) => {
                    self.loading = false;
                    if self.root.as_deref() != Some(root.as_path()) {
                        continue; // a project closed since
                    }
                    match result {
                        Ok(list) => {
                            let colors: HashMap<i64, [u8; 3]> =
                                list.classes.iter().map(|c| (c.id, c.color)).collect();
                            let mut cache = ThumbCache::new(ctx, &root, colors, CACHE_TEXTURES);
                            cache.set_overlay(self.overlays);
                            self.thumbs = Some(cache);
                            if self
                                .filter
                                .class_id
                                .is_some_and(|c| !list.classes.iter().any(|k| k.id == c))
                            {
                                self.filter.class_id = None;
                            }
                            self.listing = Some(Arc::new(list));
                            self.shown_dirty = true;
                        }
                        Err(e) => cx.notices.error(format!("Listing images failed: {e}")),
                    }
                }
            }
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let ctx = ui.ctx().clone();
        if self.root.as_deref() != cx.project {
            self.root = cx.project.map(Path::to_path_buf);
            self.listing = None;
            self.thumbs = None;
            self.selected_image = None;
            self.view = None;
            self.stale = true;
        }
        self.drain(cx, &ctx);
        let Some(root) = self.root.clone() else {
            ui.label("Open a project to review its images.");
            return;
        };
        self.audit.poll(&ctx, cx, Some(&root));
        self.mode_bar_ui(ui);
        match self.mode {
            ReviewMode::Grid => self.gallery_ui(ui, cx, &root),
            ReviewMode::LabelNext => self.label_next_ui(ui, cx, &root),
            ReviewMode::LikelyErrors => self.audit.ui(ui, cx),
        }
    }

    /// The selector row: one selectable label per [`ReviewMode`].
    fn mode_bar_ui(&mut self, ui: &mut egui::Ui) {
        let mut chosen = self.mode;
        ui.horizontal(|ui| {
            for mode in REVIEW_MODES {
                let label = self.mode_label(mode);
                if ui.selectable_label(self.mode == mode, label).clicked() {
                    chosen = mode;
                }
            }
        });
        self.set_mode(chosen);
        ui.separator();
    }

    /// A mode's name in the selector (with its count where it has one).
    fn mode_label(&self, mode: ReviewMode) -> String {
        match mode {
            ReviewMode::Grid => "Grid".to_owned(),
            ReviewMode::LabelNext => "Label next".to_owned(),
            ReviewMode::LikelyErrors => match self.audit.open_count() {
                Some(n) => format!("Likely errors ({n})"),
                None => "Likely errors".to_owned(),
            },
        }
    }

    /// The Label next queue.
    pub fn label_next(&self) -> &LabelNextPanel {
        &self.label_next
    }

    /// The Label next queue, mutable (tests set its bundle and start it).
    pub fn label_next_mut(&mut self) -> &mut LabelNextPanel {
        &mut self.label_next
    }

    /// The Label next queue, or the image opened from it (closing the image returns to the
    /// queue).
    fn label_next_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, root: &Path) {
        if let Some(image_id) = self.selected_image {
            self.image_view_ui(ui, cx, root, image_id);
            return;
        }
        if let Some(image_id) = self.label_next.ui(ui, cx) {
            self.selected_image = Some(image_id);
        }
    }

    /// The gallery (listing, filters, thumbnails) or the image opened from it.
    fn gallery_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, root: &Path) {
        let ctx = ui.ctx().clone();
        if self.stale && !self.loading {
            self.start_listing(root, &ctx);
        }
        if let Some(t) = &mut self.thumbs {
            t.begin_frame();
        }
        if let Some(image_id) = self.selected_image {
            self.image_view_ui(ui, cx, root, image_id);
            return;
        }
        let Some(list) = self.listing.clone() else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Listing images…");
            });
            return;
        };
        if self.shown_dirty {
            self.shown = self.filter.apply(&list.items);
            self.shown_dirty = false;
        }
        self.filters_ui(ui, &list);
        ui.separator();
        self.grid_ui(ui, &list);
    }

    fn filters_ui(&mut self, ui: &mut egui::Ui, list: &GalleryListing) {
        let before = self.filter.clone();
        ui.horizontal_wrapped(|ui| {
            let class_text = self
                .filter
                .class_id
                .and_then(|id| list.classes.iter().find(|c| c.id == id))
                .map_or_else(|| "Any class".to_owned(), |c| c.name.clone());
            egui::ComboBox::from_label("Class")
                .selected_text(class_text)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.filter.class_id, None, "Any class");
                    for c in &list.classes {
                        ui.selectable_value(
                            &mut self.filter.class_id,
                            Some(c.id),
                            format!("{} ({})", c.name, c.instances),
                        );
                    }
                });
            let split_text = self
                .filter
                .split
                .clone()
                .unwrap_or_else(|| "Any split".into());
            egui::ComboBox::from_label("Split")
                .selected_text(split_text)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.filter.split, None, "Any split");
                    for s in ["train", "validation", "test"] {
                        ui.selectable_value(&mut self.filter.split, Some(s.to_owned()), s);
                    }
                });
            let status_text = self
                .filter
                .status
                .map_or("Any status", ReviewStatus::as_str);
            egui::ComboBox::from_label("Review status")
                .selected_text(status_text)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.filter.status, None, "Any status");
                    for s in STATUSES {
                        ui.selectable_value(&mut self.filter.status, Some(s), s.as_str());
                    }
                });
            ui.checkbox(&mut self.filter.edited_only, "Edited only");
            ui.checkbox(&mut self.filter.no_masks_only, "Without masks only");
            if ui.checkbox(&mut self.overlays, "Mask overlays").changed()
                && let Some(t) = &mut self.thumbs
            {
                t.set_overlay(self.overlays);
            }
            ui.separator();
            ui.label(format!(
                "Showing {} of {} images",
                self.shown.len(),
                list.items.len()
            ));
        });
        if self.filter != before {
            self.shown = self.filter.apply(&list.items);
            self.scroll_to = Some(0.0);
            ui.ctx().request_repaint(); // the count label shows the new number next frame
        }
    }

    fn grid_ui(&mut self, ui: &mut egui::Ui, list: &GalleryListing) {
        if self.shown.is_empty() {
            ui.label(if list.items.is_empty() {
                "This project has no images yet: download some (Download tab) or import a dataset."
            } else {
                "No image matches these filters."
            });
            return;
        }
        let spacing = ui.spacing().item_spacing.x;
        let cols = ((ui.available_width() + spacing) / (CELL + spacing))
            .floor()
            .max(1.0) as usize;
        let rows = self.shown.len().div_ceil(cols);
        let mut area = egui::ScrollArea::vertical()
            .id_salt("gallery")
            .auto_shrink([false, false]);
        if let Some(offset) = self.scroll_to.take() {
            area = area.vertical_scroll_offset(offset);
        }
        let mut clicked = None;
        let (shown, thumbs) = (&self.shown, &mut self.thumbs);
        area.show_rows(ui, CELL, rows, |ui, range| {
            for row in range {
                ui.horizontal(|ui| {
                    for col in 0..cols {
                        let Some(&at) = shown.get(row * cols + col) else {
                            break;
                        };
                        let item = &list.items[at];
                        let (rect, resp) =
                            ui.allocate_exact_size(egui::vec2(CELL, CELL), egui::Sense::click());
                        let name = item.rel_path.rsplit('/').next().unwrap_or(&item.rel_path);
                        resp.widget_info(|| {
                            egui::WidgetInfo::labeled(
                                egui::Role::Button,
                                true,
                                format!("Image {name}"),
                            )
                        });
                        if ui.is_rect_visible(rect) {
                            paint_cell(ui, rect, item, thumbs.as_mut(), &list.images_dir);
                        }
                        let resp = resp.on_hover_text(format!(
                            "{}\n{}×{} · {} · {} instance(s) · {}{}",
                            item.rel_path,
                            item.width,
                            item.height,
                            item.split.as_deref().unwrap_or("no split"),
                            item.instances,
                            item.status.as_str(),
                            if item.edited { " · edited" } else { "" }
                        ));
                        if resp.clicked() {
                            clicked = Some(item.id);
                        }
                    }
                });
            }
        });
        if let Some(id) = clicked {
            self.selected_image = Some(id);
        }
    }

    /// The open image in the [`ImageView`] (zoom/pan, instance list, mask editor); its actions
    /// close the view or move to the next/previous unreviewed image.
    fn image_view_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, root: &Path, image_id: i64) {
        if self.view.as_ref().is_none_or(|v| v.image_id() != image_id) {
            match ImageView::open(root, image_id) {
                Ok(view) => self.view = Some(view),
                Err(e) => {
                    cx.notices
                        .error(format!("Opening image {image_id} failed: {e:#}"));
                    self.selected_image = None;
                    return;
                }
            }
        }
        let Some(view) = &mut self.view else {
            return;
        };
        match view.ui(ui, cx) {
            ImageViewAction::None => {}
            ImageViewAction::Close => {
                self.selected_image = None;
                self.view = None;
                self.refresh(); // edits and review status show in the thumbnails and filters
            }
            action @ (ImageViewAction::Next | ImageViewAction::Previous) => {
                match view.neighbour_unreviewed(action == ImageViewAction::Next) {
                    Some(id) => self.selected_image = Some(id),
                    None => cx.notices.info("No other unreviewed image"),
                }
            }
        }
    }
}

fn paint_cell(
    ui: &egui::Ui,
    rect: egui::Rect,
    item: &crate::dataset::gallery::GalleryItem,
    thumbs: Option<&mut ThumbCache>,
    images_dir: &Path,
) {
    let painter = ui.painter();
    let visuals = ui.visuals();
    painter.rect_filled(rect, 4.0, visuals.extreme_bg_color);
    let inner = rect.shrink(4.0);
    match thumbs.map(|t| t.get(item.id, &images_dir.join(&item.rel_path))) {
        Some(Thumb::Ready(tex, size)) => {
            let scale = (inner.width() / size.x).min(inner.height() / size.y);
            let img_rect = egui::Rect::from_center_size(inner.center(), size * scale);
            painter.image(
                tex,
                img_rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                egui::Color32::WHITE,
            );
        }
        Some(Thumb::Failed(_)) => {
            painter.text(
                inner.center(),
                egui::Align2::CENTER_CENTER,
                "unreadable",
                egui::FontId::proportional(12.0),
                visuals.error_fg_color,
            );
        }
        _ => {
            painter.text(
                inner.center(),
                egui::Align2::CENTER_CENTER,
                "…",
                egui::FontId::proportional(16.0),
                visuals.weak_text_color(),
            );
        }
    }
    let status_color = match item.status {
        ReviewStatus::Unreviewed => None,
        ReviewStatus::Accepted => Some(egui::Color32::from_rgb(60, 170, 80)),
        ReviewStatus::Fixed => Some(egui::Color32::from_rgb(70, 130, 220)),
        ReviewStatus::Rejected => Some(egui::Color32::from_rgb(210, 60, 60)),
    };
    if let Some(c) = status_color {
        painter.rect_stroke(
            rect.shrink(1.0),
            4.0,
            egui::Stroke::new(2.0, c),
            egui::StrokeKind::Inside,
        );
    }
    let badge = if item.edited {
        format!("{} edited", item.instances)
    } else {
        item.instances.to_string()
    };
    painter.text(
        rect.right_bottom() - egui::vec2(6.0, 4.0),
        egui::Align2::RIGHT_BOTTOM,
        badge,
        egui::FontId::proportional(11.0),
        egui::Color32::WHITE,
    );
}
