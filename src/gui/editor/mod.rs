//! The Review image view and mask editor: one project image with zoom/pan, mask overlays in
//! class colours, the original outline of edited instances, a per-instance list, review
//! status, and editing tools (brush, eraser, polygon, flood fill, select, merge, split, fill
//! holes, morphology, undo/redo, revert) plus model-assisted proposals.
//!
//! Loading (SQLite rows, image decode, mask decode) and model inference run on named threads.
//! Edits are saved at once, one store transaction per stroke (on mouse release), polygon,
//! click or button, so nothing needs saving and undo/redo (kept in the project's edit log)
//! survive a restart. The writes run on the view's `edit-writer` thread ([`writer`]) in the
//! order they were made; the view shows its own result at once (a stroke's pixels stay where
//! they were painted) and applies what only the store knows (new instance ids, undo, split,
//! merge) when the writer answers (`sync.rs`), re-reading the image from the store after a
//! failure so the screen never lies. A stroke in progress is painted into a local copy of the
//! mask and only the stroke's dirty rectangle of the overlay texture is re-uploaded.
//!
//! One [`ImageView`], its `impl` blocks spread by concern: this file holds the state, loading
//! and the public API; `input.rs` turns keys and the pointer into tool actions, `edits.rs`
//! builds the edit operations, `sync.rs` talks to the [`writer`], `ui.rs` draws the toolbar,
//! side list and canvas, and `assist.rs` runs model proposals.

mod assist;
mod edits;
mod input;
mod instances;
mod sync;
mod ui;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eframe::egui;
use egui::{Pos2, TextureHandle, Vec2};

use self::writer::EditWriter;
use crate::dataset::maskops::Rect;
use crate::dataset::store::{ClassProgress, ImageMeta, InstanceRow, Project, ReviewStatus};
use crate::dataset::{ExportClass, Mask};
use crate::gui::shared::PanelCtx;
use crate::gui::worker::{Polled, Worker};
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
    /// Drag a box: the model's mask for exactly that box becomes a dashed proposal (click it
    /// to accept).
    Box,
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
        (
            "X",
            "box to mask: drag a box, the model's mask for it becomes a proposal (click to accept)",
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
    /// The `image-view-loader` worker until the image (or its error) arrives.
    loader: Option<Worker<Result<Box<Loaded>, String>>>,
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
    /// The `model-assist` thread (model and image features kept between requests) and what
    /// it has not answered yet.
    assist: assist::Assist,
    proposals: Vec<(Detection, Vec<Vec<[f64; 2]>>)>,
    class_filter: Option<i64>,
    /// How the side panel's instance list is sorted.
    instance_sort: instances::InstanceSort,
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
    Ok(writer::read_instances(project, image_id)?
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
        let root = project_root.to_path_buf();
        let thread_root = root.clone();
        // No window context yet: the view polls the loader in `ui` every frame.
        let loader = Worker::once("image-view-loader", &egui::Context::default(), move || {
            load(&thread_root, image_id).map_err(|e| format!("{e:#}"))
        })?;
        Ok(Self {
            root,
            image_id,
            loader: Some(loader),
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
            assist: assist::Assist::default(),
            proposals: Vec::new(),
            class_filter: None,
            instance_sort: instances::InstanceSort::default(),
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
        if let Some(mut loader) = self.loader.take() {
            match loader.recv_timeout(timeout) {
                Some(Polled::Event(Ok(data))) => self.data = Some(data),
                Some(Polled::Event(Err(e))) => self.error = Some(e),
                Some(Polled::Died(why)) => {
                    anyhow::bail!("image {} did not load: {why}", self.image_id)
                }
                None => anyhow::bail!("image {} did not load in {timeout:?}", self.image_id),
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

    /// The canvas's screen rectangle in the last frame drawn (a host draws over it).
    pub fn canvas_rect(&self) -> egui::Rect {
        self.canvas
    }

    /// Instance `id`'s mask as shown (once loaded).
    pub fn instance_mask(&self, id: i64) -> Option<Arc<Mask>> {
        let data = self.data.as_ref()?;
        let inst = data.instances.iter().find(|i| i.row.id == id)?;
        Some(Arc::clone(&inst.mask))
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
        if let Some(loader) = &mut self.loader
            && let Some(polled) = loader.try_next()
        {
            self.loader = None;
            match polled {
                Polled::Event(Ok(data)) => self.data = Some(data),
                Polled::Event(Err(e)) => {
                    cx.notices.error(format!("image {}: {e}", self.image_id));
                    self.error = Some(e);
                }
                Polled::Died(why) => {
                    log::error!("image {}: {why}", self.image_id);
                    self.error = Some("the image loader stopped".to_owned());
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
}

/// Why an eraser stroke with nothing selected does nothing.
const NOTHING_TO_ERASE: &str = "select an instance to erase from (V, then click it)";

/// Why a brush stroke with nothing selected cannot start a new instance.
const NO_CLASS: &str = "the project has no class for a new instance; import a dataset first";
