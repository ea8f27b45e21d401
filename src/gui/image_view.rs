//! The Review image view and mask editor: one project image with zoom/pan, mask overlays in
//! class colours, the original outline of edited instances, a per-instance list, review
//! status, and editing tools (brush, eraser, polygon, flood fill, select, merge, split, fill
//! holes, morphology, undo/redo, revert) plus model-assisted proposals.
//!
//! Loading (SQLite rows, image decode, mask decode) and model inference run on named threads.
//! Edits are saved at once, one store transaction per stroke (on mouse release), polygon,
//! click or button, so nothing needs saving and undo/redo (kept in the project's edit log)
//! survive a restart. The writes run on the view's `edit-writer` thread
//! ([`crate::gui::edit_writer`]) in the order they were made; the view shows its own result at
//! once (a stroke's pixels stay where they were painted) and applies what only the store knows
//! (new instance ids, undo, split, merge) when the writer answers, re-reading the image from
//! the store after a failure so the screen never lies. A stroke in progress is painted into a
//! local copy of the mask and only the stroke's dirty rectangle of the overlay texture is
//! re-uploaded.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use eframe::egui;
use egui::{Color32, ColorImage, Key, Modifiers, Pos2, Sense, Stroke, TextureHandle, Vec2};

use crate::dataset::maskops::{self, Rect};
use crate::dataset::store::{ClassProgress, ImageMeta, InstanceRow, Project, ReviewStatus};
use crate::dataset::{ExportClass, Mask, Origin, Rle};
use crate::gui::edit_writer::{EditCommand, EditOutcome, EditReply, EditWriter, Snapshot};
use crate::gui::shared::{PanelCtx, ShellRequest};
use crate::infer::Detection;

/// What the view asks its host (the Review tab) to do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageViewAction {
    /// Nothing.
    None,
    /// Go to the next unreviewed image (see [`ImageView::neighbour_unreviewed`]).
    Next,
    /// Go to the previous unreviewed image.
    Previous,
    /// Close the view (back to the gallery).
    Close,
}

/// The active editing tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Click an instance to select it (or a model proposal to accept it).
    Select,
    /// Paint into the selected instance; with none selected a stroke starts a new instance of
    /// the class chosen in the side panel (selected afterwards).
    Brush,
    /// Erase from the selected instance (with none selected the cursor says to select one).
    Eraser,
    /// Click points; Enter or double-click closes and fills (Shift or "Subtract": cuts out).
    Polygon,
    /// Click inside a closed outline of the selected instance to fill it.
    Fill,
    /// Click another instance to merge it into the selected one.
    Merge,
}

/// Keyboard shortcuts of the editor, for the shell's help overlay: (keys, action).
pub fn shortcuts() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "V",
            "select tool (click an instance; click a dashed proposal to accept it)",
        ),
        ("B", "brush"),
        ("E", "eraser"),
        ("[ / ]", "brush size smaller / larger"),
        (
            "P",
            "polygon (click points, Enter or double-click closes; Shift: subtract)",
        ),
        ("F", "flood fill inside a closed outline"),
        ("N", "new instance (the next stroke or polygon creates it)"),
        (
            "M",
            "merge: click another instance to merge into the selected one",
        ),
        ("S", "split the selected instance into connected components"),
        ("H", "fill holes of the selected instance"),
        ("Del", "delete the selected instance"),
        ("R", "revert the selected instance to its original"),
        ("Ctrl+Z", "undo (per image, unlimited, survives restart)"),
        ("Ctrl+Shift+Z / Ctrl+Y", "redo"),
        ("1 / 2 / 3", "mark image accepted / fixed / rejected"),
        ("D / Right arrow", "next unreviewed image"),
        ("A / Left arrow", "previous unreviewed image"),
        ("Wheel", "zoom at the cursor"),
        ("Middle drag / Space+drag", "pan"),
        ("0", "fit the image to the view"),
        ("Esc", "cancel the polygon, else close the view"),
    ]
}

/// One instance as the view holds it.
struct Inst {
    /// The row; `id` is negative for a new instance the writer has not answered for yet.
    row: InstanceRow,
    /// Shared with the writer's queue (no copy of a whole mask per edit).
    mask: Arc<Mask>,
    /// The mask before the first edit (edited instances only).
    original: Option<Arc<Mask>>,
    visible: bool,
}

/// Everything the loader thread produces.
struct Loaded {
    project: Project,
    meta: ImageMeta,
    rgb: Arc<image::RgbImage>,
    instances: Vec<Inst>,
    classes: Vec<ExportClass>,
    colors: HashMap<i64, [u8; 3]>,
    progress: Vec<ClassProgress>,
    history: (bool, bool),
}

enum AssistEvent {
    Done(Vec<Detection>),
    Failed(String),
}

/// A stroke in progress: painted into `mask`, committed on release.
struct StrokeState {
    /// Instance painted into; `None` = a new instance.
    target: Option<i64>,
    mask: Mask,
    last: [f64; 2],
    value: bool,
    /// Everything the stroke touched so far.
    touched: Rect,
}

/// The image view / mask editor of one project image.
pub struct ImageView {
    root: PathBuf,
    image_id: i64,
    load_rx: Option<Receiver<Result<Box<Loaded>, String>>>,
    data: Option<Box<Loaded>>,
    error: Option<String>,
    tool: Tool,
    brush_size: f32,
    selected: Option<i64>,
    new_class: Option<i64>,
    stroke: Option<StrokeState>,
    polygon: Vec<[f64; 2]>,
    subtract: bool,
    scale: f32,
    offset: Vec2,
    fitted: bool,
    canvas: egui::Rect,
    image_tex: Option<TextureHandle>,
    overlay_tex: Option<TextureHandle>,
    overlay_stale: bool,
    /// Overlay pixels changed since the last upload.
    pending_dirty: Rect,
    /// Overlay pixels still to recompose after a large change (the original's outline that
    /// appears on an instance's first edit): a band of rows per frame, so no frame pays for
    /// all of it.
    deferred: Rect,
    model_path: String,
    /// Whether `model_path` was filled from `Settings::assist_bundle` (once per view).
    model_path_from_settings: bool,
    assist_rx: Option<Receiver<AssistEvent>>,
    proposals: Vec<(Detection, Vec<Vec<[f64; 2]>>)>,
    class_filter: Option<i64>,
    /// The store writer (its drop waits for the queued edits).
    writer: EditWriter,
    /// The view's instances may differ from the store in ways only the store knows (new ids,
    /// undo, a failed write): a re-read is awaited, and edits that start from the view's own
    /// masks wait for it.
    stale: bool,
    /// Id of the next not-yet-saved new instance (negative, counting down).
    next_temp_id: i64,
    /// Wakes the GUI when the writer answers.
    ctx: Option<egui::Context>,
    /// The writer thread's end was reported.
    writer_stop_reported: bool,
    /// Why the last stroke did not start (no class, nothing to erase, ...): shown at the
    /// cursor and in the toolbar until the next stroke, tool or selection.
    hint: Option<String>,
    /// (sequence number, temporary id) of each queued new instance, in order: its answer
    /// gives the store's id.
    new_ids: VecDeque<(u64, i64)>,
}

impl std::fmt::Debug for ImageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageView")
            .field("root", &self.root)
            .field("image_id", &self.image_id)
            .field("tool", &self.tool)
            .finish_non_exhaustive()
    }
}

fn load(root: &Path, image_id: i64) -> anyhow::Result<Box<Loaded>> {
    use anyhow::Context as _;
    let project = Project::open(root)?;
    let meta = project.image(image_id)?;
    let bytes = std::fs::read(&meta.path).with_context(|| format!("{:?}", meta.path))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{:?}", meta.path))?;
    reader.limits(crate::dataset::store::decode_limits());
    let rgb = reader
        .decode()
        .with_context(|| format!("{:?}: cannot decode", meta.path))?
        .to_rgb8();
    if rgb.dimensions() != (meta.width, meta.height) {
        anyhow::bail!(
            "{:?} is {}×{} but the project says {}×{}",
            meta.path,
            rgb.width(),
            rgb.height(),
            meta.width,
            meta.height
        );
    }
    let instances = read_instances(&project, image_id)?;
    let classes = project.classes()?;
    let colors = project
        .class_colors()?
        .into_iter()
        .map(|(id, hex)| (id, parse_hex(&hex)))
        .collect();
    let progress = project.class_progress()?;
    let history = project.history_of(image_id)?;
    Ok(Box::new(Loaded {
        project,
        meta,
        rgb: Arc::new(rgb),
        instances,
        classes,
        colors,
        progress,
        history,
    }))
}

fn read_instances(project: &Project, image_id: i64) -> anyhow::Result<Vec<Inst>> {
    Ok(crate::gui::edit_writer::read_instances(project, image_id)?
        .into_iter()
        .map(|s| Inst {
            row: s.row,
            mask: s.mask,
            original: s.original,
            visible: true,
        })
        .collect())
}

fn parse_hex(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let byte = |i: usize| {
        h.get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(200)
    };
    [byte(0), byte(2), byte(4)]
}

impl ImageView {
    /// Starts loading image `image_id` of the project at `project_root` on a named thread and
    /// returns at once; the view shows a spinner until the image arrives.
    pub fn open(project_root: &Path, image_id: i64) -> anyhow::Result<Self> {
        let writer = EditWriter::spawn(project_root, image_id)?;
        let (tx, rx) = bounded(1);
        let root = project_root.to_path_buf();
        let thread_root = root.clone();
        std::thread::Builder::new()
            .name("image-view-loader".to_owned())
            .spawn(move || {
                let result = load(&thread_root, image_id).map_err(|e| format!("{e:#}"));
                tx.send(result).ok(); // view gone = nothing to do
            })?;
        Ok(Self {
            root,
            image_id,
            load_rx: Some(rx),
            data: None,
            error: None,
            tool: Tool::Select,
            brush_size: 15.0,
            selected: None,
            new_class: None,
            stroke: None,
            polygon: Vec::new(),
            subtract: false,
            scale: 1.0,
            offset: Vec2::ZERO,
            fitted: false,
            canvas: egui::Rect::NOTHING,
            image_tex: None,
            overlay_tex: None,
            overlay_stale: true,
            pending_dirty: Rect::EMPTY,
            deferred: Rect::EMPTY,
            model_path: String::new(),
            model_path_from_settings: false,
            assist_rx: None,
            proposals: Vec::new(),
            class_filter: None,
            writer,
            stale: false,
            next_temp_id: -1,
            ctx: None,
            writer_stop_reported: false,
            hint: None,
            new_ids: VecDeque::new(),
        })
    }

    /// The image shown (project store id).
    pub fn image_id(&self) -> i64 {
        self.image_id
    }

    /// The project folder.
    pub fn project_root(&self) -> &Path {
        &self.root
    }

    /// Whether the image has arrived from the loader.
    pub fn is_loaded(&self) -> bool {
        self.data.is_some()
    }

    /// The load error, if loading failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Blocks until the loader reports (tests, benchmarks; the GUI polls in [`Self::ui`]).
    pub fn wait_until_loaded(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(rx) = self.load_rx.take() {
            match rx.recv_timeout(timeout) {
                Ok(Ok(data)) => self.data = Some(data),
                Ok(Err(e)) => self.error = Some(e),
                Err(e) => anyhow::bail!("image {} did not load: {e}", self.image_id),
            }
        }
        match &self.error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }

    /// The active tool.
    pub fn tool(&self) -> Tool {
        self.tool
    }

    /// Switches tool (a polygon in progress is dropped).
    pub fn set_tool(&mut self, tool: Tool) {
        if tool != Tool::Polygon {
            self.polygon.clear();
        }
        self.tool = tool;
        self.hint = None;
    }

    /// Brush diameter in image pixels.
    pub fn brush_size(&self) -> f32 {
        self.brush_size
    }

    /// Sets the brush diameter (1..=500 image pixels).
    pub fn set_brush_size(&mut self, size: f32) {
        self.brush_size = size.clamp(1.0, 500.0);
    }

    /// The selected instance id.
    pub fn selected(&self) -> Option<i64> {
        self.selected
    }

    /// Selects an instance (or none: the next stroke creates a new instance).
    pub fn select(&mut self, id: Option<i64>) {
        self.selected = id;
        self.overlay_stale = true;
        self.hint = None;
    }

    /// Why the last stroke did nothing (shown at the cursor and in the toolbar), if it did.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The class a new instance gets: the one chosen in the side panel, else the first.
    fn new_instance_class(&self) -> Option<i64> {
        let data = self.data.as_ref()?;
        self.new_class
            .filter(|id| data.classes.iter().any(|c| c.id == *id))
            .or(data.classes.first().map(|c| c.id))
    }

    /// Limits next/previous unreviewed to images with this class.
    pub fn set_class_filter(&mut self, class_id: Option<i64>) {
        self.class_filter = class_id;
    }

    /// The model bundle folder used by "Propose masks".
    pub fn set_model_path(&mut self, path: &Path) {
        self.model_path = path.display().to_string();
    }

    /// The model bundle folder in the "Model bundle" field.
    pub fn model_path(&self) -> &str {
        &self.model_path
    }

    /// Screen position of an image point `[x, y]` in the last frame drawn.
    pub fn image_to_screen(&self, p: [f64; 2]) -> Pos2 {
        self.canvas.min + self.offset + Vec2::new(p[0] as f32, p[1] as f32) * self.scale
    }

    fn screen_to_image(&self, p: Pos2) -> [f64; 2] {
        let v = (p - self.canvas.min - self.offset) / self.scale;
        [f64::from(v.x), f64::from(v.y)]
    }

    /// The next (`forward`) or previous unreviewed image (class filter applied), wrapping.
    pub fn neighbour_unreviewed(&self, forward: bool) -> Option<i64> {
        let data = self.data.as_ref()?;
        data.project
            .neighbour_unreviewed(self.image_id, forward, self.class_filter)
            .ok()
            .flatten()
    }

    /// The image's review status (once loaded).
    pub fn review_status(&self) -> Option<ReviewStatus> {
        self.data.as_ref().map(|d| d.meta.review_status)
    }

    /// Model proposals currently shown.
    pub fn proposal_count(&self) -> usize {
        self.proposals.len()
    }

    /// The `index`-th model proposal shown (first = the one a click on overlapping proposals
    /// accepts).
    pub fn proposal(&self, index: usize) -> Option<&Detection> {
        self.proposals.get(index).map(|(d, _)| d)
    }

    /// Whether "Propose masks" is running.
    pub fn is_proposing(&self) -> bool {
        self.assist_rx.is_some()
    }

    /// Edits queued for the store writer and not answered yet.
    pub fn pending_edits(&self) -> usize {
        self.writer.pending()
    }

    /// Whether every edit is saved and the view shows what the store holds (nothing queued,
    /// no re-read from the store awaited). Tests and benchmarks run frames until it holds.
    pub fn is_idle(&self) -> bool {
        self.writer.pending() == 0 && !self.stale
    }

    /// Draws the view and handles input; returns what the host should do.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) -> ImageViewAction {
        if let Some(rx) = &self.load_rx {
            match rx.try_recv() {
                Ok(Ok(data)) => {
                    self.data = Some(data);
                    self.load_rx = None;
                }
                Ok(Err(e)) => {
                    cx.notices.error(format!("image {}: {e}", self.image_id));
                    self.error = Some(e);
                    self.load_rx = None;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.error = Some("the image loader stopped".to_owned());
                    self.load_rx = None;
                }
            }
        }
        if self.ctx.is_none() {
            self.ctx = Some(ui.ctx().clone());
        }
        self.poll_assist(cx);
        self.poll_writer(ui.ctx(), cx);
        if let Some(error) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, error);
            if ui.button("Close").clicked() {
                return ImageViewAction::Close;
            }
            return ImageViewAction::None;
        }
        if self.data.is_none() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("Loading image {}...", self.image_id));
            });
            ui.ctx().request_repaint_after(Duration::from_millis(30));
            return ImageViewAction::None;
        }
        let mut action = self.keyboard(ui, cx);
        if let Some(a) = self.toolbar(ui, cx) {
            action = a;
        }
        let side_width = 280.0;
        ui.horizontal_top(|ui| {
            let avail = ui.available_size();
            let size = Vec2::new((avail.x - side_width - 8.0).max(100.0), avail.y.max(100.0));
            self.canvas_ui(ui, size, cx);
            ui.vertical(|ui| {
                ui.set_width(side_width);
                self.side_ui(ui, cx);
            });
        });
        action
    }

    fn status(&mut self, status: ReviewStatus, cx: &mut PanelCtx<'_>) {
        let Some(data) = self.data.as_mut() else {
            return;
        };
        data.meta.review_status = status; // the progress follows with the writer's answer
        let image = self.image_id;
        self.send(EditCommand::Status { image, status }, cx);
    }

    fn keyboard(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) -> ImageViewAction {
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

    fn toolbar(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) -> Option<ImageViewAction> {
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            for (tool, name) in [
                (Tool::Select, "Select"),
                (Tool::Brush, "Brush"),
                (Tool::Eraser, "Eraser"),
                (Tool::Polygon, "Polygon"),
                (Tool::Fill, "Fill"),
                (Tool::Merge, "Merge"),
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
            // The project's models, "Browse…" and the typed "Model bundle" field: one picker
            // for every image's view (kept in the context's memory, listed once per project).
            use crate::gui::model_picker::{self, ModelPicker, Purpose};
            let picker = ModelPicker::shared(ui.ctx(), Purpose::Assist, "Model bundle");
            let mut picker = picker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.model_path.is_empty() && !self.model_path_from_settings {
                // This project's last choice (else its newest best checkpoint), else the last
                // bundle used anywhere: it does not reset on every image.
                self.model_path = picker
                    .initial_choice(cx)
                    .unwrap_or_else(|| cx.settings.assist_bundle.clone());
            }
            self.model_path_from_settings = true;
            if picker.ui(ui, cx, &mut self.model_path).edited {
                cx.settings.assist_bundle = self.model_path.trim().to_owned();
            }
            drop(picker);
            let running = self.assist_rx.is_some();
            if ui
                .add_enabled(!running, egui::Button::new("Propose masks"))
                .clicked()
            {
                let chosen = self.model_path.trim();
                if !chosen.is_empty() {
                    model_picker::remember(cx, Purpose::Assist, Path::new(chosen));
                }
                self.propose(ui.ctx(), cx);
            }
            if running {
                ui.spinner();
            }
            if !self.proposals.is_empty() && ui.button("Clear proposals").clicked() {
                self.proposals.clear();
            }
        });
        action
    }

    fn side_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
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
        let mut select = None;
        let mut visibility_changed = false;
        egui::ScrollArea::vertical()
            .id_salt("image_view_instances")
            .max_height(ui.available_height() * 0.5)
            .show(ui, |ui| {
                for inst in &mut data.instances {
                    ui.horizontal(|ui| {
                        if ui
                            .checkbox(&mut inst.visible, "")
                            .on_hover_text("show / hide")
                            .changed()
                        {
                            visibility_changed = true;
                        }
                        let class = data
                            .classes
                            .iter()
                            .find(|c| c.id == inst.row.class_id)
                            .map_or("?", |c| c.name.as_str());
                        let [r, g, b] = data
                            .colors
                            .get(&inst.row.class_id)
                            .copied()
                            .unwrap_or([200; 3]);
                        let (swatch, _) = ui.allocate_exact_size(Vec2::splat(10.0), Sense::hover());
                        ui.painter()
                            .rect_filled(swatch, 2.0, Color32::from_rgb(r, g, b));
                        let text = format!(
                            "#{} {class} · {} px · {}{}",
                            inst.row.id,
                            inst.row.area,
                            inst.row.origin.as_str(),
                            if inst.row.edited { " · edited" } else { "" }
                        );
                        if ui
                            .selectable_label(self.selected == Some(inst.row.id), text)
                            .clicked()
                        {
                            select = Some(inst.row.id);
                        }
                    });
                }
            });
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
            let fraction = if p.images == 0 {
                0.0
            } else {
                p.reviewed as f32 / p.images as f32
            };
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "{}: {}/{} images reviewed, {} edited",
                p.name, p.reviewed, p.images, p.edited
            )));
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

    fn canvas_ui(&mut self, ui: &mut egui::Ui, size: Vec2, cx: &mut PanelCtx<'_>) {
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
            self.stroke_input(ui, &response, cx);
        } else if (response.clicked() || response.double_clicked())
            && let Some(pos) = response.interact_pointer_pos()
        {
            let p = self.screen_to_image(pos);
            let shift = ui.input(|i| i.modifiers.shift);
            self.click(p, response.double_clicked(), shift, cx);
        }

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

    /// Re-composes and uploads the overlay pixels of `dirty` only.
    fn refresh_overlay(&mut self, dirty: Rect) {
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

    /// Makes `mask` instance `id`'s on screen at once and queues it for the store. Returns
    /// the overlay region that changed besides the mask itself (the original's outline
    /// appears on the first edit).
    fn set_mask(&mut self, id: i64, mask: Mask, cx: &mut PanelCtx<'_>) -> Rect {
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
    fn add_instance(
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
    fn set_class(&mut self, id: i64, class_id: i64, cx: &mut PanelCtx<'_>) {
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

    /// Whether an edit may start from the view's own masks and ids: not while a re-read from
    /// the store is awaited (they are about to be replaced). Says so when not.
    fn ready(&self, cx: &mut PanelCtx<'_>) -> bool {
        if self.stale {
            cx.notices
                .info("saving the previous edit; try again in a moment");
        }
        !self.stale
    }

    /// Queues a store mutation on the writer (never blocks); returns its sequence number. A
    /// refused one is reported and the view re-reads the store so it shows what was really
    /// saved.
    fn send(&mut self, command: EditCommand, cx: &mut PanelCtx<'_>) -> Option<u64> {
        let subject = command.subject(self.image_id);
        let reload = command.needs_reload();
        let history_unknown = matches!(
            command,
            EditCommand::Status { .. }
                | EditCommand::Undo { .. }
                | EditCommand::Redo { .. }
                | EditCommand::Reload
        );
        match self.writer.submit(command, reload, self.ctx.clone()) {
            Ok(seq) => {
                self.stale |= reload;
                if !history_unknown && let Some(data) = self.data.as_mut() {
                    data.history = (true, false); // the writer's answer confirms it
                }
                Some(seq)
            }
            Err(e) => {
                cx.notices.error(format!("{subject}: {e}"));
                self.stale = true;
                None
            }
        }
    }

    /// Applies the writer's answers (never blocks); asks for a re-read once the queue is
    /// empty when the view went out of date.
    fn poll_writer(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        while let Some(reply) = self.writer.try_recv() {
            self.apply_reply(reply, cx);
        }
        if !self.writer_stop_reported
            && let Some((why, lost)) = self.writer.take_stop()
        {
            // Only a panic ends it early; say so once (with why) rather than retrying.
            while let Some(reply) = self.writer.try_recv() {
                self.apply_reply(reply, cx);
            }
            cx.notices.error(format!(
                "image {}: the store writer stopped ({why}); {lost} edits were not saved (close and reopen the image)",
                self.image_id
            ));
            self.writer_stop_reported = true;
        }
        if self.writer.is_stopped() {
            return;
        }
        if self.writer.pending() == 0 && self.stale && self.data.is_some() {
            self.send(EditCommand::Reload, cx);
        }
        if self.writer.pending() > 0 {
            // The writer wakes the GUI when it answers; this is only a fallback.
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    fn apply_reply(&mut self, reply: EditReply, cx: &mut PanelCtx<'_>) {
        let new_instance = match self.new_ids.front() {
            Some(&(seq, temp)) if seq == reply.seq => {
                self.new_ids.pop_front();
                Some(temp)
            }
            _ => None,
        };
        if let Some(summary) = reply.summary {
            // The status bar's "N edited" (the shell loaded it with the project).
            cx.requests
                .push(ShellRequest::EditedInstances(summary.edited_instances));
            if let Some(data) = self.data.as_mut() {
                data.history = summary.history;
                data.progress = summary.progress;
            }
        }
        match reply.outcome {
            Err(e) => {
                cx.notices.error(format!("{}: {e}", reply.subject));
                self.stale = true;
            }
            Ok(EditOutcome::Updated { instance, area }) => {
                if let Some(inst) = self
                    .data
                    .as_mut()
                    .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == instance))
                {
                    inst.row.area = area;
                }
            }
            Ok(EditOutcome::Created { instance }) => {
                // The temporary id of this new instance becomes the store's, selection
                // included (the user may have selected another, or none, meanwhile).
                if let Some(temp) = new_instance
                    && let Some(inst) = self
                        .data
                        .as_mut()
                        .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == temp))
                {
                    inst.row.id = instance;
                }
                if new_instance.is_some() && self.selected == new_instance {
                    self.selected = Some(instance);
                }
            }
            Ok(EditOutcome::Split { instance, ids }) => {
                cx.notices.info(if ids.len() <= 1 {
                    format!("instance {instance} has one component")
                } else {
                    format!("instance {instance} split into {} instances", ids.len())
                });
            }
            Ok(EditOutcome::Reverted {
                instance,
                changed: false,
            }) => cx
                .notices
                .info(format!("instance {instance} was never edited")),
            Ok(EditOutcome::History {
                undo,
                touched: None,
            }) => cx.notices.info(if undo {
                "nothing to undo"
            } else {
                "nothing to redo"
            }),
            Ok(_) => {}
        }
        // A re-read is current only when nothing was queued after it.
        if let Some(snapshot) = reply.snapshot
            && self.writer.pending() == 0
        {
            match snapshot {
                Ok(s) => self.apply_snapshot(s),
                Err(e) => {
                    cx.notices.error(e);
                    self.stale = false; // no retry loop; the next edit tries again
                }
            }
        }
    }

    /// Replaces the view's instances with the store's (visibility kept). The overlay is
    /// recomposed only when something differs from what is on screen.
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.stale = false;
        self.new_ids.clear(); // every edit is answered (or lost with a stopped writer)
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let same = data.instances.len() == snapshot.instances.len()
            && data
                .instances
                .iter()
                .zip(&snapshot.instances)
                .all(|(a, b)| {
                    (a.row.id == b.row.id || a.row.id < 0)
                        && a.row.class_id == b.row.class_id
                        && a.original.is_some() == b.original.is_some()
                        && a.mask == b.mask
                });
        let fresh = snapshot
            .instances
            .into_iter()
            .map(|s| {
                let visible = data
                    .instances
                    .iter()
                    .find(|i| i.row.id == s.row.id)
                    .is_none_or(|i| i.visible);
                Inst {
                    row: s.row,
                    mask: s.mask,
                    original: s.original,
                    visible,
                }
            })
            .collect();
        data.instances = fresh;
        data.meta = snapshot.meta;
        if let Some(id) = self.selected
            && !data.instances.iter().any(|i| i.row.id == id)
        {
            self.selected = None;
        }
        if !same {
            self.overlay_stale = true;
        }
    }

    fn history(&mut self, undo: bool, cx: &mut PanelCtx<'_>) {
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

    fn new_instance(&mut self) {
        self.select(None);
        if !matches!(self.tool, Tool::Brush | Tool::Polygon) {
            self.set_tool(Tool::Brush);
        }
    }

    fn selected_mask(&self) -> Option<(i64, &Mask)> {
        let id = self.selected?;
        let data = self.data.as_ref()?;
        data.instances
            .iter()
            .find(|i| i.row.id == id)
            .map(|i| (id, &*i.mask))
    }

    fn delete(&mut self, cx: &mut PanelCtx<'_>) {
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

    fn revert(&mut self, cx: &mut PanelCtx<'_>) {
        let (Some(id), true) = (self.selected, self.data.is_some()) else {
            return;
        };
        if self.ready(cx) {
            self.send(EditCommand::Revert { instance: id }, cx);
        }
    }

    fn split(&mut self, cx: &mut PanelCtx<'_>) {
        let (Some(id), true) = (self.selected, self.data.is_some()) else {
            return;
        };
        if self.ready(cx) {
            self.send(EditCommand::Split { instance: id }, cx);
        }
    }

    fn morph(&mut self, op: MorphOp, cx: &mut PanelCtx<'_>) {
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
    fn write_mask(&mut self, id: i64, mask: Mask, cx: &mut PanelCtx<'_>) {
        self.set_mask(id, mask, cx);
        self.overlay_stale = true;
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
            Tool::Brush | Tool::Eraser => {}
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

    /// Runs the model bundle on this image on a named thread.
    fn propose(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        let (Some(data), path) = (self.data.as_ref(), self.model_path.trim()) else {
            return;
        };
        if path.is_empty() {
            cx.notices.warn("enter a model bundle folder first");
            return;
        }
        let bundle = PathBuf::from(path);
        cx.settings.assist_bundle = path.to_owned();
        let rgb = Arc::clone(&data.rgb);
        let device = cx.settings.device.as_str().to_owned();
        let score = f64::from(cx.settings.score_threshold);
        let (tx, rx) = bounded(1);
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("model-assist".to_owned())
            .spawn(move || {
                let run = || -> anyhow::Result<Vec<Detection>> {
                    let choice = device
                        .parse::<crate::runtime::DeviceChoice>()
                        .map_err(anyhow::Error::msg)?;
                    let device = crate::runtime::device(choice)?;
                    let predictor = crate::infer::Predictor::load(&bundle, device, Some(score))?;
                    predictor.predict(&rgb)
                };
                let event = match run() {
                    Ok(d) => AssistEvent::Done(d),
                    Err(e) => AssistEvent::Failed(format!("{}: {e:#}", bundle.display())),
                };
                tx.send(event).ok();
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.assist_rx = Some(rx),
            Err(e) => cx.notices.error(format!("cannot start model assist: {e}")),
        }
    }

    fn poll_assist(&mut self, cx: &mut PanelCtx<'_>) {
        let Some(rx) = &self.assist_rx else {
            return;
        };
        match rx.try_recv() {
            Ok(AssistEvent::Done(detections)) => {
                cx.notices
                    .info(format!("model proposed {} masks", detections.len()));
                self.set_proposals(detections);
                self.assist_rx = None;
            }
            Ok(AssistEvent::Failed(e)) => {
                cx.notices.error(format!("propose masks: {e}"));
                self.assist_rx = None;
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {}
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                // It ended without an answer: it panicked (the log has why).
                cx.notices
                    .error("propose masks: the model-assist thread stopped unexpectedly");
                self.assist_rx = None;
            }
        }
    }

    /// Shows detections as dashed proposals (what "Propose masks" does with the model's output).
    pub fn set_proposals(&mut self, detections: Vec<Detection>) {
        self.proposals = detections
            .into_iter()
            .map(|d| {
                let rings = crate::dataset::contour::outer_contours(&d.mask)
                    .into_iter()
                    .map(|flat| flat.chunks(2).map(|p| [p[0], p[1]]).collect())
                    .collect();
                (d, rings)
            })
            .collect();
    }

    fn accept_proposal_at(&mut self, p: [f64; 2], cx: &mut PanelCtx<'_>) -> bool {
        if p[0] < 0.0 || p[1] < 0.0 {
            return false;
        }
        let (x, y) = (p[0] as u32, p[1] as u32);
        let Some(k) = self
            .proposals
            .iter()
            .position(|(d, _)| x < d.mask.width() && y < d.mask.height() && d.mask.get(x, y))
        else {
            return false;
        };
        if !self.ready(cx) {
            return true; // the proposal stays; click it again
        }
        let Some(data) = self.data.as_ref() else {
            return false;
        };
        let (det, _) = self.proposals.remove(k);
        let class_id = data
            .classes
            .iter()
            .find(|c| c.name == det.class_name)
            .map(|c| c.id)
            .or(self.new_class)
            .or(data.classes.first().map(|c| c.id));
        let Some(class_id) = class_id else {
            return true;
        };
        if (det.mask.width(), det.mask.height()) != (data.meta.width, data.meta.height) {
            cx.notices
                .error("the proposal's mask size differs from the image");
            return true;
        }
        self.add_instance(det.mask, Origin::Model, Some(class_id), cx);
        self.overlay_stale = true;
        true
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

/// Why an eraser stroke with nothing selected does nothing.
const NOTHING_TO_ERASE: &str = "select an instance to erase from (V, then click it)";

/// Why a brush stroke with nothing selected cannot start a new instance.
const NO_CLASS: &str = "the project has no class for a new instance; import a dataset first";

/// Overlay pixels recomposed per frame from [`ImageView`]'s deferred region (a 2000-pixel-wide
/// region: 131 rows, a few milliseconds).
const DEFERRED_BAND_PIXELS: u32 = 1 << 18;

/// Whole-mask operations of the toolbar.
#[derive(Debug, Clone, Copy)]
enum MorphOp {
    FillHoles,
    Dilate,
    Erode,
    Smooth,
}
