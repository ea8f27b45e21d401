//! Model assist: the bundle picker in the toolbar, "Propose masks" and **Box to mask** on the
//! view's `model-assist` thread, the answers shown as dashed proposals accepted with a click.
//!
//! The thread lives as long as the view and keeps what is expensive between requests: the
//! loaded bundle (reloaded when the bundle or device changes) and this image's backbone + FPN
//! maps ([`FeatureCache`], keyed by image and bundle), so after the first box each further box
//! costs only the RoI heads. A box is dragged with the Box tool (X); its mask comes from the
//! mask head for exactly that box, with the box head's class or, when asked, the side panel's.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use eframe::egui;
use egui::{Color32, Pos2, Stroke};

use super::{ImageView, Tool};
use crate::dataset::Origin;
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::shared::PanelCtx;
use crate::gui::worker::{Polled, Worker, WorkerTx};
use crate::host::DeviceChoice;
use crate::infer::Detection;
use crate::infer::box_prompt::{FeatureCache, MIN_BOX_SIDE};

/// Requests queued for the model-assist thread before the GUI says "busy" (it never blocks).
const COMMAND_QUEUE: usize = 8;
/// Answers the thread may have in flight before it waits for the GUI to read them.
const EVENT_QUEUE: usize = 8;
/// A new box's proposal replaces earlier proposals whose boxes overlap it at least this much
/// (box IoU): drawing again over the same object is a retry, not a second object.
const REPLACE_IOU: f32 = 0.5;

/// What the view asks the model-assist thread.
pub(super) enum AssistCommand {
    /// Detect every instance ("Propose masks"), keeping those scoring at least `score`.
    Propose {
        bundle: PathBuf,
        device: DeviceChoice,
        score: f32,
    },
    /// The mask of exactly `rect` (`[x1, y1, x2, y2]` image pixels), of class `class` when
    /// named (a project class; used when the model knows it), binarised at `mask_threshold`.
    Box {
        bundle: PathBuf,
        device: DeviceChoice,
        rect: [f32; 4],
        class: Option<String>,
        mask_threshold: f32,
    },
}

/// Which request an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    Propose,
    Box,
}

/// What the model-assist thread answers, one per command, in order.
pub(super) enum AssistEvent {
    Proposed(Vec<Detection>),
    BoxMask(Detection),
    Failed(Job, String),
}

/// The view's model-assist state: the thread (started at the first request) and what it has
/// not answered yet.
#[derive(Default)]
pub(super) struct Assist {
    /// The `model-assist` worker and the sending half of its command channel.
    worker: Option<(Worker<AssistEvent>, Sender<AssistCommand>)>,
    /// "Propose masks" was asked and not answered.
    proposing: bool,
    /// Boxes sent and not answered, oldest first (drawn dashed until their mask arrives).
    pending_boxes: VecDeque<[f64; 4]>,
    /// The box being dragged: (press point, current point) in image pixels.
    drag: Option<([f64; 2], [f64; 2])>,
    /// Box prompts take the side panel's class instead of the box head's best class.
    panel_class: bool,
}

/// The model the thread holds: which bundle on which device.
struct Loaded {
    bundle: PathBuf,
    device: DeviceChoice,
    predictor: crate::infer::Predictor,
}

/// The `model-assist` thread: one answer per command until the view drops its sender.
fn assist_loop(
    rx: &Receiver<AssistCommand>,
    tx: &WorkerTx<AssistEvent>,
    rgb: &image::RgbImage,
    image_id: i64,
) {
    let mut loaded: Option<Loaded> = None;
    // This image's maps under (image, bundle); a bundle change drops them with the model.
    let mut cache: FeatureCache<(i64, PathBuf)> = FeatureCache::default();
    while let Ok(cmd) = rx.recv() {
        let event = match cmd {
            AssistCommand::Propose {
                bundle,
                device,
                score,
            } => match load(&mut loaded, &mut cache, &bundle, device)
                .and_then(|p| p.predict_above(rgb, score))
            {
                Ok(d) => AssistEvent::Proposed(d),
                Err(e) => AssistEvent::Failed(Job::Propose, format!("{}: {e:#}", bundle.display())),
            },
            AssistCommand::Box {
                bundle,
                device,
                rect,
                class,
                mask_threshold,
            } => {
                let run = || -> anyhow::Result<Detection> {
                    let predictor = load(&mut loaded, &mut cache, &bundle, device)?;
                    let features = cache.get_or_compute((image_id, bundle.clone()), || {
                        predictor.image_features(rgb)
                    })?;
                    let label = class.as_deref().and_then(|c| predictor.label_of(c));
                    let mut d = predictor
                        .masks_for_boxes(features, &[rect], label, mask_threshold)?
                        .pop()
                        .ok_or_else(|| anyhow::anyhow!("the model answered no mask"))?;
                    if let (Some(c), None) = (class, label) {
                        // A class the model does not know: its best class's mask, stored
                        // under the class the user chose.
                        d.class_name = c;
                    }
                    Ok(d)
                };
                match run() {
                    Ok(d) => AssistEvent::BoxMask(d),
                    Err(e) => AssistEvent::Failed(Job::Box, format!("{}: {e:#}", bundle.display())),
                }
            }
        };
        if !tx.send(event) {
            return;
        }
    }
}

/// The predictor for `bundle` on `device`, loaded now unless it is the one held (a new one
/// drops the old one and its kept features first).
fn load<'a>(
    loaded: &'a mut Option<Loaded>,
    cache: &mut FeatureCache<(i64, PathBuf)>,
    bundle: &Path,
    device: DeviceChoice,
) -> anyhow::Result<&'a crate::infer::Predictor> {
    if loaded
        .as_ref()
        .is_none_or(|l| l.bundle != bundle || l.device != device)
    {
        *loaded = None;
        cache.clear();
        let predictor =
            crate::infer::Predictor::load_for_threshold(bundle, crate::host::device(device)?)?;
        *loaded = Some(Loaded {
            bundle: bundle.to_path_buf(),
            device,
            predictor,
        });
    }
    match loaded {
        Some(l) => Ok(&l.predictor),
        None => anyhow::bail!("no model loaded"),
    }
}

/// Box IoU of two `[x1, y1, x2, y2]` boxes.
fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The outer outlines of a detection's mask, drawn dashed.
fn outline(d: &Detection) -> Vec<Vec<[f64; 2]>> {
    crate::dataset::contour::outer_contours(&d.mask)
        .into_iter()
        .map(|flat| flat.chunks(2).map(|p| [p[0], p[1]]).collect())
        .collect()
}

/// `[x1, y1, x2, y2]` of two corner points.
fn rect_of(a: [f64; 2], b: [f64; 2]) -> [f64; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[0].max(b[0]),
        a[1].max(b[1]),
    ]
}

impl ImageView {
    /// The toolbar's model row: the bundle picker, "Propose masks" (a spinner while it or a
    /// box runs), "Clear proposals", and with the Box tool whether boxes take the panel's class.
    pub(super) fn assist_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        // The project's models, "Browse…" and the typed "Model bundle" field: one picker
        // for every image's view (kept in the context's memory, listed once per project).
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
        let proposing = self.assist.proposing;
        if ui
            .add_enabled(!proposing, egui::Button::new("Propose masks"))
            .clicked()
        {
            self.remember_bundle(cx);
            self.propose(ui.ctx(), cx);
        }
        if proposing || !self.assist.pending_boxes.is_empty() {
            ui.spinner();
        }
        if !self.proposals.is_empty() && ui.button("Clear proposals").clicked() {
            self.proposals.clear();
        }
        if self.tool == Tool::Box {
            ui.checkbox(&mut self.assist.panel_class, "Box uses the panel's class")
                .on_hover_text(
                    "on: a box's mask is for the class chosen in the side panel; \
                     off: for the class the model scores highest in the box",
                );
        }
    }

    /// Records the chosen bundle as this project's last assist model.
    fn remember_bundle(&self, cx: &mut PanelCtx<'_>) {
        let chosen = self.model_path.trim();
        if !chosen.is_empty() {
            model_picker::remember(cx, Purpose::Assist, Path::new(chosen));
        }
    }

    /// The bundle to run, or `None` after saying why there is none.
    fn assist_bundle(&self, cx: &mut PanelCtx<'_>) -> Option<PathBuf> {
        let path = self.model_path.trim();
        if path.is_empty() {
            cx.notices
                .warn("choose a model bundle first (Model bundle in the toolbar)");
            return None;
        }
        cx.settings.assist_bundle = path.to_owned();
        Some(PathBuf::from(path))
    }

    /// Queues `cmd` for the model-assist thread, starting it first when needed; `false` (and a
    /// notice) when it cannot take it now.
    fn send_assist(
        &mut self,
        ctx: &egui::Context,
        cmd: AssistCommand,
        cx: &mut PanelCtx<'_>,
    ) -> bool {
        if self.assist.worker.is_none() {
            let Some(data) = self.data.as_ref() else {
                return false;
            };
            let (tx, rx) = bounded(COMMAND_QUEUE);
            let rgb = Arc::clone(&data.rgb);
            let image_id = self.image_id;
            match Worker::spawn(
                "model-assist",
                ctx,
                EVENT_QUEUE,
                |_| false,
                move |out| {
                    assist_loop(&rx, &out, &rgb, image_id);
                },
            ) {
                Ok(worker) => self.assist.worker = Some((worker, tx)),
                Err(e) => {
                    cx.notices.error(format!("cannot start model assist: {e}"));
                    return false;
                }
            }
        }
        let Some((_, tx)) = &self.assist.worker else {
            return false;
        };
        match tx.try_send(cmd) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                cx.notices.info(
                    "model assist is still busy with earlier requests; try again in a moment",
                );
                false
            }
            // The thread is gone; the next poll reports why.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// "Propose masks": every detection of the bundle on this image, on the model thread.
    fn propose(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        if self.data.is_none() {
            return;
        }
        let Some(bundle) = self.assist_bundle(cx) else {
            return;
        };
        let cmd = AssistCommand::Propose {
            bundle,
            device: cx.settings.device,
            score: cx.settings.score_threshold,
        };
        if self.send_assist(ctx, cmd, cx) {
            self.assist.proposing = true;
        }
    }

    /// Asks the model for the mask of exactly `rect` (image pixels) on the model thread; the
    /// answer becomes a proposal.
    pub(super) fn request_box_mask(
        &mut self,
        ctx: &egui::Context,
        rect: [f64; 4],
        cx: &mut PanelCtx<'_>,
    ) {
        if self.data.is_none() {
            return;
        }
        let Some(bundle) = self.assist_bundle(cx) else {
            return;
        };
        self.remember_bundle(cx);
        let class = if self.assist.panel_class {
            let data = self.data.as_ref();
            self.new_instance_class().and_then(|id| {
                data?
                    .classes
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| c.name.clone())
            })
        } else {
            None
        };
        let cmd = AssistCommand::Box {
            bundle,
            device: cx.settings.device,
            rect: rect.map(|v| v as f32),
            class,
            mask_threshold: cx.settings.mask_threshold,
        };
        if self.send_assist(ctx, cmd, cx) {
            self.assist.pending_boxes.push_back(rect);
        }
    }

    /// The Box tool's pointer: press starts a box, moves stretch it, release sends it (a
    /// release without a box's size is a click: it accepts the proposal under it).
    pub(super) fn box_input(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        cx: &mut PanelCtx<'_>,
    ) {
        let (pressed, released, origin, latest) = ui.input(|i| {
            (
                i.pointer.primary_pressed(),
                i.pointer.primary_released(),
                i.pointer.press_origin(),
                i.pointer.latest_pos(),
            )
        });
        if pressed
            && self.assist.drag.is_none()
            && let Some(origin) = origin
            && response.rect.contains(origin)
        {
            let p = self.screen_to_image(origin);
            self.assist.drag = Some((p, p));
        }
        if self.assist.drag.is_some()
            && let Some(latest) = latest
        {
            let p = self.screen_to_image(latest);
            if let Some(drag) = self.assist.drag.as_mut() {
                drag.1 = p;
            }
        }
        if released && let Some((a, b)) = self.assist.drag.take() {
            let r = rect_of(a, b);
            let side = f64::from(MIN_BOX_SIDE);
            if r[2] - r[0] < side || r[3] - r[1] < side {
                self.accept_proposal_at(a, cx);
            } else {
                self.request_box_mask(ui.ctx(), r, cx);
            }
        }
    }

    /// Draws the box being dragged (solid) and the boxes waiting for their mask (dashed).
    pub(super) fn paint_box_prompts(&self, painter: &egui::Painter) {
        let corners = |r: [f64; 4]| -> Vec<Pos2> {
            [
                [r[0], r[1]],
                [r[2], r[1]],
                [r[2], r[3]],
                [r[0], r[3]],
                [r[0], r[1]],
            ]
            .into_iter()
            .map(|p| self.image_to_screen(p))
            .collect()
        };
        let color = Color32::from_rgb(255, 220, 60);
        if let Some((a, b)) = self.assist.drag {
            painter.add(egui::Shape::line(
                corners(rect_of(a, b)),
                Stroke::new(1.5, color),
            ));
        }
        for &r in &self.assist.pending_boxes {
            painter.extend(egui::Shape::dashed_line(
                &corners(r),
                Stroke::new(1.5, color),
                5.0,
                4.0,
            ));
        }
    }

    /// Applies the model thread's answers (all that arrived since the last frame).
    pub(super) fn poll_assist(&mut self, cx: &mut PanelCtx<'_>) {
        while let Some(polled) = self
            .assist
            .worker
            .as_mut()
            .and_then(|(worker, _)| worker.try_next())
        {
            match polled {
                Polled::Event(AssistEvent::Proposed(detections)) => {
                    self.assist.proposing = false;
                    cx.notices
                        .info(format!("model proposed {} masks", detections.len()));
                    self.set_proposals(detections);
                }
                Polled::Event(AssistEvent::BoxMask(d)) => {
                    self.assist.pending_boxes.pop_front();
                    if d.mask.area() == 0 {
                        cx.notices.info(format!(
                            "the model found no {} mask in that box (score {:.2})",
                            d.class_name, d.score
                        ));
                    } else {
                        self.proposals
                            .retain(|(p, _)| box_iou(p.box_xyxy, d.box_xyxy) < REPLACE_IOU);
                        let rings = outline(&d);
                        // First: a click on overlapping proposals accepts the newest box's.
                        self.proposals.insert(0, (d, rings));
                    }
                }
                Polled::Event(AssistEvent::Failed(job, e)) => match job {
                    Job::Propose => {
                        self.assist.proposing = false;
                        cx.notices.error(format!("propose masks: {e}"));
                    }
                    Job::Box => {
                        self.assist.pending_boxes.pop_front();
                        cx.notices.error(format!("box to mask: {e}"));
                    }
                },
                Polled::Died(why) => {
                    // It ended without being asked to: it panicked. The next request starts a
                    // new one.
                    log::error!("model assist: {why}");
                    cx.notices
                        .error("model assist: the model-assist thread stopped unexpectedly");
                    self.assist = Assist {
                        panel_class: self.assist.panel_class,
                        ..Assist::default()
                    };
                }
            }
        }
    }

    /// Whether "Propose masks" is running.
    pub fn is_proposing(&self) -> bool {
        self.assist.proposing
    }

    /// Boxes sent to the model whose mask has not arrived yet.
    pub fn pending_box_prompts(&self) -> usize {
        self.assist.pending_boxes.len()
    }

    /// Whether box prompts take the side panel's class (else the box head's best class).
    pub fn set_box_uses_panel_class(&mut self, on: bool) {
        self.assist.panel_class = on;
    }

    /// Shows detections as dashed proposals (what "Propose masks" does with the model's output).
    pub fn set_proposals(&mut self, detections: Vec<Detection>) {
        self.proposals = detections
            .into_iter()
            .map(|d| {
                let rings = outline(&d);
                (d, rings)
            })
            .collect();
    }

    pub(super) fn accept_proposal_at(&mut self, p: [f64; 2], cx: &mut PanelCtx<'_>) -> bool {
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
}
