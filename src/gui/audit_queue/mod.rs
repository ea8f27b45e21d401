//! The Review tab's **Likely errors** queue: the open findings of the project's label-error
//! audits (`maskstudio audit`, Train's "Audit with this run"), highest image score first, then
//! finding score, filtered by kind with a count per kind. Each card shows the kind, score,
//! reason, class (and the suggested class of a swap), the image, "stale" when the labels
//! changed since the audit, and the audit's model and date.
//!
//! Selecting a finding opens its image in the [`ImageView`] with the suspect instance selected
//! and framed, and the suggested fix drawn dashed over the canvas (the editor's proposal
//! style): the suggested mask (missing, loose), the class change (swap) or the instance to
//! delete (spurious). **Accept fix**, **Keep as is** and **Delete instance** go through the
//! view's `edit-writer` ([`ImageView::resolve_finding`]): one store transaction and one
//! undoable step of the image, in order with its other edits. Ctrl+Z undoes the last
//! resolution on its image (`undo_image`) and the finding comes back.
//!
//! The queue is read on a one-shot `audit-queue` worker whenever the Review tab shows again,
//! after [`AuditQueue::refresh`] (an audit finished), and once the open view has saved its
//! writes; a read starts only when the view has nothing left to save, so it sees them. The
//! suggested mask's outline is traced on an `audit-focus` worker. This file holds the state,
//! the reads and what the keys and buttons ask; `view.rs` draws and reads the keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui;
use egui::Color32;

use crate::dataset::store::{AuditRow, FindingRow, Project, Resolution};
use crate::dataset::{Mask, Rle};
use crate::gui::editor::ImageView;
use crate::gui::shared::PanelCtx;
use crate::gui::worker::{Polled, Worker};

mod view;

/// The finding kinds in filter order: stored name, name shown.
pub const KINDS: [(&str, &str); 4] = [
    ("missing", "Missing"),
    ("spurious", "Spurious"),
    ("loose", "Loose"),
    ("swap", "Swap"),
];

/// Default width of the list of findings, in points (the panel is resizable).
const LIST_WIDTH: f32 = 380.0;
/// The frame around the suspect instance.
const SUSPECT: Color32 = Color32::from_rgb(255, 210, 0);
/// The outline of an instance a spurious finding proposes to delete.
const TO_DELETE: Color32 = Color32::from_rgb(255, 70, 70);
/// Dash and gap of a proposal's outline, in points: the editor's model proposals' (`editor::ui`).
const DASH: f32 = 6.0;
/// See [`DASH`].
const GAP: f32 = 4.0;

/// Keyboard shortcuts of the queue, for the shell's help overlay: (keys, action).
pub fn shortcuts() -> &'static [(&'static str, &'static str)] {
    &[
        ("J / Down arrow", "next finding"),
        ("K / Up arrow", "previous finding"),
        ("A", "accept the suggested fix"),
        ("S / Space", "keep as is (the finding leaves the queue)"),
        ("Delete", "delete the suspect instance"),
        (
            "Ctrl+Z",
            "undo the last resolution (on its image); the finding comes back",
        ),
        ("Esc", "close the image"),
    ]
}

/// A class as the cards name and colour it.
#[derive(Debug, Clone)]
struct ClassInfo {
    name: String,
    color: [u8; 3],
}

/// What the `audit-queue` worker reads.
struct QueueRead {
    rows: Vec<FindingRow>,
    classes: HashMap<i64, ClassInfo>,
    latest: Option<AuditRow>,
}

enum Msg {
    Read {
        root: PathBuf,
        /// [`AuditQueue::generation`] when the read started.
        generation: u64,
        result: Result<QueueRead, String>,
    },
    /// The reader died (the text says why).
    Died(String),
}

/// Outer rings of a mask, in image pixels.
type Rings = Vec<Vec<[f64; 2]>>;

/// A resolution or undo waiting for the view of its image to load (the view must hold the
/// image before the writer changes it, or its first read could show the state before).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    Resolve {
        finding: i64,
        image: i64,
        how: Resolution,
    },
    Undo {
        finding: i64,
        image: i64,
    },
}

/// What is drawn over the canvas for the selected finding.
struct Focus {
    finding: i64,
    /// The suggested mask's outline (missing, loose), once traced.
    rings: Rings,
    /// The `audit-focus` worker while it traces.
    tracer: Option<Worker<Result<Rings, String>>>,
    /// Whether the view's selection was set to the suspect instance.
    selected: bool,
    /// The suspect instance's mask as last measured, and its COCO box `[x, y, w, h]`.
    bbox: Option<(Arc<Mask>, [f64; 4])>,
}

/// The Likely errors queue and the image view of the selected finding.
pub struct AuditQueue {
    root: Option<PathBuf>,
    /// Open findings in queue order (those resolved here and not yet re-read left out).
    rows: Vec<FindingRow>,
    classes: HashMap<i64, ClassInfo>,
    latest: Option<AuditRow>,
    /// Whether a read arrived since the project opened.
    read_once: bool,
    error: Option<String>,
    reader: Option<Worker<Msg>>,
    /// Read again as soon as the view has nothing left to save.
    dirty: bool,
    /// Counts resolutions and undos sent; a read that started at generation `g` has seen
    /// every one numbered below `g`.
    generation: u64,
    /// (finding, generation) resolved here: hidden until a read has seen it.
    hidden: Vec<(i64, u64)>,
    /// Kind shown (`None`: all).
    kind: Option<&'static str>,
    /// Indices into `rows` passing the kind filter.
    shown: Vec<usize>,
    /// Open findings per kind, in [`KINDS`] order.
    counts: [usize; 4],
    selected: Option<i64>,
    scroll_to_selected: bool,
    /// Select the first finding once the queue is read (the mode was just entered).
    select_first: bool,
    view: Option<ImageView>,
    /// The view had unsaved writes at the end of the last frame.
    view_busy: bool,
    focus: Option<Focus>,
    pending: Option<Pending>,
    /// (finding, image) resolved here, newest last: what Ctrl+Z undoes.
    resolved: Vec<(i64, i64)>,
    /// (finding, image, generation) undone: selected again once a read sees it open.
    reselect: Option<(i64, i64, u64)>,
    /// The egui pass this queue last polled (a gap: the tab was hidden).
    last_pass: Option<u64>,
    /// Space went down and the pointer dragged (a pan): its release does not keep.
    space_dragged: bool,
}

impl Default for AuditQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditQueue")
            .field("root", &self.root)
            .field("rows", &self.rows.len())
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl AuditQueue {
    /// An empty queue (read when the Review tab first shows a project).
    pub fn new() -> Self {
        Self {
            root: None,
            rows: Vec::new(),
            classes: HashMap::new(),
            latest: None,
            read_once: false,
            error: None,
            reader: None,
            dirty: true,
            generation: 0,
            hidden: Vec::new(),
            kind: None,
            shown: Vec::new(),
            counts: [0; 4],
            selected: None,
            scroll_to_selected: false,
            select_first: false,
            view: None,
            view_busy: false,
            focus: None,
            pending: None,
            resolved: Vec::new(),
            reselect: None,
            last_pass: None,
            space_dragged: false,
        }
    }

    /// Reads the queue again (an audit finished, or the project changed behind the tab).
    pub fn refresh(&mut self) {
        self.dirty = true;
    }

    /// Open findings (all kinds), once read.
    pub fn open_count(&self) -> Option<usize> {
        self.read_once.then_some(self.rows.len())
    }

    /// Open findings per kind, in [`KINDS`] order.
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        std::array::from_fn(|k| (KINDS[k].0, self.counts[k]))
    }

    /// The kind shown (`None`: all).
    pub fn kind_filter(&self) -> Option<&'static str> {
        self.kind
    }

    /// Shows only findings of `kind` (one of [`KINDS`]; anything else shows all).
    pub fn set_kind_filter(&mut self, kind: Option<&str>) {
        self.kind = kind.and_then(|k| KINDS.iter().find(|(s, _)| *s == k).map(|(s, _)| *s));
        self.reshow();
        if self.selected_index().is_none() {
            self.selected = self.shown.first().map(|&i| self.rows[i].id);
            self.scroll_to_selected = true;
        }
    }

    /// The findings shown, in queue order.
    pub fn shown(&self) -> impl Iterator<Item = &FindingRow> {
        self.shown.iter().map(|&i| &self.rows[i])
    }

    /// The selected finding.
    pub fn selected(&self) -> Option<&FindingRow> {
        let id = self.selected?;
        self.rows.iter().find(|r| r.id == id)
    }

    /// Selects a finding by id (its image opens at the next frame).
    pub fn select(&mut self, finding: Option<i64>) {
        self.selected = finding;
        self.scroll_to_selected = true;
    }

    /// The image view of the selected finding, once opened.
    pub fn image_view(&self) -> Option<&ImageView> {
        self.view.as_ref()
    }

    /// Whether everything asked is done: no read running or due, nothing waiting for the
    /// view, every write of the view saved and the view showing the store. Tests run frames
    /// until it holds.
    pub fn is_idle(&self) -> bool {
        !self.dirty
            && self.reader.is_none()
            && self.pending.is_none()
            && self.reselect.is_none()
            && !self.view_busy
            && self
                .view
                .as_ref()
                .is_none_or(|v| v.is_loaded() && v.is_idle())
            && self.focus.as_ref().is_none_or(|f| f.tracer.is_none())
    }

    /// The mode was entered: read again and select the first finding if none is.
    pub fn on_show(&mut self) {
        self.dirty = true;
        self.select_first = true;
    }

    /// Closes the image view (the mode was left); its queued writes are saved first.
    pub fn close_view(&mut self) {
        if self.view.take().is_some() {
            self.dirty = true;
        }
        self.view_busy = false;
        self.focus = None;
        self.pending = None;
    }

    /// Per frame while the Review tab shows (whatever its mode): follows the open project,
    /// applies the reader's answer, and starts a read when one is due.
    pub fn poll(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>, root: Option<&Path>) {
        if self.root.as_deref() != root {
            *self = Self {
                root: root.map(Path::to_path_buf),
                ..Self::new()
            };
        }
        let pass = ctx.cumulative_pass_nr();
        if self.last_pass.is_some_and(|p| pass > p + 1) {
            self.dirty = true; // the tab was hidden: the store may have changed meanwhile
        }
        self.last_pass = Some(pass);
        for msg in Worker::drain(&mut self.reader, Msg::Died) {
            match msg {
                Msg::Died(why) => {
                    self.error = Some(format!("reading the queue stopped: {why}"));
                    cx.notices
                        .error(format!("Reading the likely errors failed: {why}"));
                }
                Msg::Read {
                    root,
                    generation,
                    result,
                } => {
                    if self.root.as_ref() != Some(&root) {
                        continue; // a project closed since
                    }
                    match result {
                        Ok(read) => self.apply_read(read, generation),
                        Err(e) => {
                            cx.notices
                                .error(format!("Reading the likely errors failed: {e}"));
                            self.error = Some(e);
                        }
                    }
                }
            }
        }
        self.start_read(ctx, cx);
    }

    fn start_read(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        let view_saving = self.view_busy || self.view.as_ref().is_some_and(|v| !v.is_idle());
        if !self.dirty || self.reader.is_some() || self.pending.is_some() || view_saving {
            return;
        }
        let Some(root) = self.root.clone() else {
            return;
        };
        self.dirty = false;
        let generation = self.generation;
        let spawned = Worker::once("audit-queue", ctx, move || {
            let result = read_queue(&root);
            Msg::Read {
                root,
                generation,
                result,
            }
        });
        match spawned {
            Ok(worker) => self.reader = Some(worker),
            Err(e) => cx
                .notices
                .error(format!("cannot start reading the likely errors: {e}")),
        }
    }

    /// Takes a read that started at generation `started`.
    fn apply_read(&mut self, read: QueueRead, started: u64) {
        // Resolutions sent before the read started are in it; later ones stay hidden.
        self.hidden.retain(|&(_, g)| g >= started);
        if !self.hidden.is_empty() {
            self.dirty = true;
        }
        let old_index = self.selected_index();
        let hidden = &self.hidden;
        self.rows = read.rows;
        self.rows
            .retain(|r| !hidden.iter().any(|&(f, _)| f == r.id));
        self.classes = read.classes;
        self.latest = read.latest;
        self.read_once = true;
        self.error = None;
        self.reshow();
        if let Some((finding, _, g)) = self.reselect
            && started > g
        {
            self.reselect = None;
            if self.rows.iter().any(|r| r.id == finding) {
                if self.kind.is_some() && self.selected_index_of(finding).is_none() {
                    self.kind = None;
                    self.reshow();
                }
                self.select(Some(finding));
                return;
            }
        }
        if self.selected.is_some() && self.selected_index().is_none() {
            // Resolved elsewhere or replaced by a newer audit: the one now at its place.
            let at = old_index
                .unwrap_or(0)
                .min(self.shown.len().saturating_sub(1));
            self.selected = self.shown.get(at).map(|&i| self.rows[i].id);
            self.scroll_to_selected = true;
        }
    }

    /// Recomputes the kind filter's rows and the counts per kind.
    fn reshow(&mut self) {
        self.counts = [0; 4];
        for r in &self.rows {
            if let Some(k) = KINDS.iter().position(|(s, _)| *s == r.kind) {
                self.counts[k] += 1;
            }
        }
        let kind = self.kind;
        self.shown = (0..self.rows.len())
            .filter(|&i| kind.is_none_or(|k| self.rows[i].kind == k))
            .collect();
    }

    fn selected_index(&self) -> Option<usize> {
        self.selected_index_of(self.selected?)
    }

    fn selected_index_of(&self, finding: i64) -> Option<usize> {
        self.shown.iter().position(|&i| self.rows[i].id == finding)
    }

    fn selected_row(&self) -> Option<&FindingRow> {
        self.selected_index().map(|at| &self.rows[self.shown[at]])
    }

    /// Moves the selection `delta` findings along the shown list (clamped at its ends).
    fn step(&mut self, delta: isize) {
        let Some(last) = self.shown.len().checked_sub(1) else {
            return;
        };
        let at = match self.selected_index() {
            Some(i) => i.saturating_add_signed(delta).min(last),
            None if delta > 0 => 0,
            None => last,
        };
        self.select(Some(self.rows[self.shown[at]].id));
    }

    /// Takes `finding` out of the list (resolved) and selects the one after it (else before).
    fn advance_past(&mut self, finding: i64) {
        let at = self.selected_index_of(finding);
        self.rows.retain(|r| r.id != finding);
        self.reshow();
        if self.selected == Some(finding) || self.selected.is_none() {
            let next = at.map(|i| i.min(self.shown.len().saturating_sub(1)));
            self.selected = next
                .and_then(|i| self.shown.get(i))
                .map(|&i| self.rows[i].id);
            self.scroll_to_selected = true;
        }
    }

    /// Asks for `how` on the selected finding; it runs once the view holds its image.
    fn request(&mut self, how: Resolution, cx: &mut PanelCtx<'_>) {
        if self.pending.is_some() || self.reselect.is_some() {
            return; // the previous one is still on its way
        }
        let Some(row) = self.selected_row() else {
            return;
        };
        if how == Resolution::Delete && row.instance_id.is_none() {
            cx.notices.info(
                "a missing-instance finding has no instance to delete: Accept fix adds it, Keep as is dismisses it",
            );
            return;
        }
        self.pending = Some(Pending::Resolve {
            finding: row.id,
            image: row.image_id,
            how,
        });
    }

    /// Ctrl+Z: undoes the last resolution made here on its image (else the open image's
    /// latest edit).
    fn undo(&mut self, cx: &mut PanelCtx<'_>) {
        if self.pending.is_some() || self.reselect.is_some() {
            return;
        }
        match self.resolved.pop() {
            Some((finding, image)) => self.pending = Some(Pending::Undo { finding, image }),
            None => match self.view.as_mut() {
                Some(view) => {
                    view.undo(cx);
                    self.view_busy = true;
                    self.dirty = true;
                }
                None => cx.notices.info("nothing to undo"),
            },
        }
    }

    /// The image the view should hold: an undo's, else the selected finding's.
    fn wanted_image(&self) -> Option<i64> {
        match (self.pending, self.reselect) {
            (Some(Pending::Undo { image, .. }), _) | (_, Some((_, image, _))) => Some(image),
            _ => self.selected_row().map(|r| r.image_id),
        }
    }

    /// Opens the wanted image in the view (the previous view saves its queue as it goes).
    fn sync_view(&mut self, cx: &mut PanelCtx<'_>) {
        let want = self.wanted_image();
        if self.view.as_ref().map(ImageView::image_id) == want {
            return;
        }
        self.close_view_keeping_pending();
        let (Some(image), Some(root)) = (want, self.root.as_deref()) else {
            return;
        };
        match ImageView::open(root, image) {
            Ok(view) => self.view = Some(view),
            Err(e) => {
                cx.notices
                    .error(format!("Opening image {image} failed: {e:#}"));
                self.selected = None;
                self.pending = None;
                self.reselect = None;
            }
        }
    }

    fn close_view_keeping_pending(&mut self) {
        let pending = self.pending.take();
        self.close_view();
        self.pending = pending;
    }

    /// Runs the waiting resolution or undo once the view holds its image.
    fn run_pending(&mut self, cx: &mut PanelCtx<'_>) {
        let Some(pending) = self.pending else {
            return;
        };
        let (Pending::Resolve { image, .. } | Pending::Undo { image, .. }) = pending;
        let Some(view) = self.view.as_mut() else {
            return;
        };
        if view.image_id() != image {
            if matches!(pending, Pending::Resolve { .. }) {
                self.pending = None; // the selection moved on before the image loaded
            }
            return;
        }
        if view.error().is_some() {
            self.pending = None;
            return;
        }
        if !view.is_loaded() {
            return;
        }
        self.pending = None;
        match pending {
            Pending::Resolve { finding, how, .. } => {
                if view.resolve_finding(finding, how, cx) {
                    self.view_busy = true;
                    self.dirty = true;
                    self.resolved.push((finding, image));
                    self.hidden.push((finding, self.generation));
                    self.generation += 1;
                    self.advance_past(finding);
                }
            }
            Pending::Undo { finding, .. } => {
                view.undo(cx);
                self.view_busy = true;
                self.dirty = true;
                self.hidden.retain(|&(f, _)| f != finding);
                self.reselect = Some((finding, image, self.generation));
                self.generation += 1;
            }
        }
    }

    /// The selected finding's highlight: its suggested mask traced on a worker, the view's
    /// selection set to the suspect instance once the image is loaded.
    fn update_focus(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        let Some(row) = self.selected_row() else {
            self.focus = None;
            return;
        };
        let (finding, image, instance) = (row.id, row.image_id, row.instance_id);
        if self.focus.as_ref().is_none_or(|f| f.finding != finding) {
            let suggested = row.suggested_mask.clone();
            let tracer = suggested.and_then(|rle| {
                Worker::once("audit-focus", ctx, move || trace(&rle))
                    .map_err(|e| {
                        cx.notices
                            .error(format!("cannot trace the suggested mask: {e}"))
                    })
                    .ok()
            });
            self.focus = Some(Focus {
                finding,
                rings: Vec::new(),
                tracer,
                selected: false,
                bbox: None,
            });
        }
        let Some(focus) = self.focus.as_mut() else {
            return;
        };
        if let Some(polled) = focus.tracer.as_mut().and_then(Worker::try_next) {
            focus.tracer = None;
            match polled {
                Polled::Event(Ok(rings)) => focus.rings = rings,
                Polled::Event(Err(e)) => cx.notices.error(format!("finding {finding}: {e}")),
                Polled::Died(why) => cx.notices.error(format!(
                    "finding {finding}: tracing its mask stopped: {why}"
                )),
            }
        }
        if !focus.selected
            && let Some(view) = self.view.as_mut()
            && view.image_id() == image
            && view.is_loaded()
        {
            view.select(instance);
            focus.selected = true;
        }
    }
}

/// `#rrggbb` as RGB (grey for anything else).
fn parse_hex(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let byte = |i: usize| {
        h.get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(200)
    };
    [byte(0), byte(2), byte(4)]
}

/// The `audit-queue` worker: open findings, class names and colours, the latest audit.
fn read_queue(root: &Path) -> Result<QueueRead, String> {
    let read = || -> Result<QueueRead, crate::dataset::store::StoreError> {
        let project = Project::open(root)?;
        let rows = project.audit_queue(None)?;
        let colors = project.class_colors()?;
        let classes = project
            .classes()?
            .into_iter()
            .map(|c| {
                let color = colors.get(&c.id).map_or([200; 3], |h| parse_hex(h));
                (
                    c.id,
                    ClassInfo {
                        name: c.name,
                        color,
                    },
                )
            })
            .collect();
        let latest = project.audits()?.into_iter().next();
        Ok(QueueRead {
            rows,
            classes,
            latest,
        })
    };
    read().map_err(|e| format!("{}: {e}", root.display()))
}

/// The `audit-focus` worker: the suggested mask's outer rings.
fn trace(rle: &Rle) -> Result<Rings, String> {
    let mask = Mask::from_rle(rle).map_err(|e| format!("the suggested mask is corrupt: {e}"))?;
    Ok(crate::dataset::contour::outer_contours(&mask)
        .into_iter()
        .map(|flat| flat.chunks(2).map(|p| [p[0], p[1]]).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_colours_read_from_hex() {
        assert_eq!(parse_hex("#ff8000"), [255, 128, 0]);
        // What is not hex stays grey, byte by byte.
        assert_eq!(parse_hex("zz"), [200, 200, 200]);
        assert_eq!(parse_hex("#12"), [0x12, 200, 200]);
    }

    #[test]
    fn the_traced_outline_surrounds_the_mask() {
        let mut m = Mask::new(12, 10);
        for y in 2..6 {
            for x in 3..8 {
                m.set(x, y, true);
            }
        }
        let rings = trace(&m.to_rle()).unwrap();
        assert_eq!(rings.len(), 1);
        let xs: Vec<f64> = rings[0].iter().map(|p| p[0]).collect();
        let ys: Vec<f64> = rings[0].iter().map(|p| p[1]).collect();
        let (x0, x1) = (
            xs.iter().copied().fold(f64::MAX, f64::min),
            xs.iter().copied().fold(f64::MIN, f64::max),
        );
        let (y0, y1) = (
            ys.iter().copied().fold(f64::MAX, f64::min),
            ys.iter().copied().fold(f64::MIN, f64::max),
        );
        // The 5×4 block spans x 3..8, y 2..6: its outline lies on or just inside that box.
        assert!(
            (3.0..=3.5).contains(&x0) && (7.0..=8.0).contains(&x1),
            "{x0} {x1}"
        );
        assert!(
            (2.0..=2.5).contains(&y0) && (5.0..=6.0).contains(&y1),
            "{y0} {y1}"
        );
    }
}
