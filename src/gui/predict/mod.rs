//! Predict tab: drop images or folders (or open them), pick one of the project's models (or any
//! bundle folder: [`crate::gui::model_picker`]), and see the detections over each image. This
//! module holds the panel's state, starts its jobs and drains their events; the parts:
//! [`events`] (what the threads are told and report), [`worker`] (the `predict-worker` thread,
//! which keeps each mask's probabilities so the score and mask sliders re-render without
//! running the model again), [`inputs`] (dropped or opened files and folders, searched
//! recursively: [`collect_inputs`]), [`pixels`] (display copies within [`PIXEL_BUDGET`],
//! evicted images read again on `predict-reload`), [`view`] (the layout), [`table`] (the
//! sortable instance table) and [`export`] (overlay PNGs, per-instance PNG masks and a COCO
//! results JSON, written as `maskstudio predict` writes them).
//!
//! The score slider applies the user's threshold one way for every tab
//! ([`crate::infer::threshold`]): the model keeps detections down to its floor.

mod events;
mod export;
mod inputs;
mod pixels;
mod table;
mod view;
mod worker;

pub use inputs::collect_inputs;
pub use pixels::{MAX_DISPLAY, PIXEL_BUDGET, display_copy};

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError, bounded};
use eframe::egui;

use crate::cancel::CancelToken;
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::shared::{JobView, PanelCtx};
use crate::gui::worker::{Polled, Worker};
use crate::infer::Detection;
use events::{Command, Event};
use inputs::file_label;
use table::TableSort;
use worker::worker_loop;

/// One predicted image: its file, its pixels while kept in memory, and every detection the model
/// kept (with soft masks).
pub struct PredictedImage {
    /// The file.
    pub path: PathBuf,
    /// Its display copy ([`display_copy`]); `None` once evicted to stay within
    /// [`PIXEL_BUDGET`] (decoded again on demand).
    pub image: Option<Arc<image::RgbImage>>,
    /// Width and height of the file's image in pixels.
    pub size: [u32; 2],
    /// Display copy size / full size (1 for images up to [`MAX_DISPLAY`]).
    pub scale: f32,
    /// Detections down to [`crate::infer::threshold::SCORE_FLOOR`], best first, with soft masks (box-sized) and
    /// no full-size binary masks.
    pub detections: Arc<Vec<Detection>>,
}

/// The Predict tab.
pub struct PredictPanel {
    /// The bundle folder in the picker's path field.
    model_path: String,
    /// The project's models, "Browse…" and the path field.
    picker: ModelPicker,
    input_path: String,
    export_dir: String,
    model: Option<(PathBuf, Vec<String>)>,
    model_loading: bool,
    results: Vec<PredictedImage>,
    selected: usize,
    /// Result indices with pixels in memory, least recently shown first.
    kept: VecDeque<usize>,
    /// The image being decoded again after eviction.
    reloading: Option<PathBuf>,
    /// Bytes of pixels kept across results ([`PIXEL_BUDGET`] unless set).
    pixel_budget: usize,
    failures: Vec<String>,
    /// Inputs dropped before a model was loaded.
    pending: Vec<PathBuf>,
    batch: Option<Batch>,
    /// The running export: images done, total, cancel.
    exporting: Option<(usize, usize, CancelToken)>,
    /// The `predict-worker` thread: its commands and its events (it owns the only sender, so
    /// a panic there ends the batch as failed).
    worker: Option<(Sender<Command>, Worker<Event>)>,
    /// One-shot threads (export, reload, file dialog), each the only sender of its events.
    helpers: Vec<Worker<Event>>,
    /// Rendered overlay and what it was rendered for (image index, score, mask threshold).
    overlay: Option<(usize, f32, f32, egui::TextureHandle)>,
    /// The pixels of that texture (what the window shows; tests count them).
    overlay_pixels: Option<image::RgbImage>,
    /// The instance table's sort column and direction.
    sort: TableSort,
}

struct Batch {
    done: usize,
    total: usize,
    cancel: CancelToken,
    started: Instant,
}

impl Default for PredictPanel {
    fn default() -> Self {
        Self {
            model_path: String::new(),
            picker: ModelPicker::new(Purpose::Predict, "Model bundle").with_field_width(260.0),
            input_path: String::new(),
            export_dir: String::new(),
            model: None,
            model_loading: false,
            results: Vec::new(),
            selected: 0,
            kept: VecDeque::new(),
            reloading: None,
            pixel_budget: PIXEL_BUDGET,
            failures: Vec::new(),
            pending: Vec::new(),
            batch: None,
            exporting: None,
            worker: None,
            helpers: Vec::new(),
            overlay: None,
            overlay_pixels: None,
            sort: TableSort::default(),
        }
    }
}

impl PredictPanel {
    /// The overlay the window shows for the selected image at the current thresholds, as
    /// rendered (display size); `None` before the first frame that showed an image.
    pub fn rendered_overlay(&self) -> Option<&image::RgbImage> {
        self.overlay_pixels.as_ref()
    }

    /// Whether a model is loaded.
    pub fn model_loaded(&self) -> bool {
        self.model.is_some()
    }

    /// The bundle folder of the loaded model.
    pub fn loaded_model(&self) -> Option<&Path> {
        self.model.as_ref().map(|(p, _)| p.as_path())
    }

    /// The bundle folder in the model field (chosen, preselected or typed).
    pub fn model_path(&self) -> &str {
        &self.model_path
    }

    /// The model picker (its listing of the project's bundles).
    pub fn picker(&self) -> &ModelPicker {
        &self.picker
    }

    /// Whether a prediction batch is running.
    pub fn busy(&self) -> bool {
        self.batch.is_some() || self.model_loading
    }

    /// The predicted images so far.
    pub fn results(&self) -> &[PredictedImage] {
        &self.results
    }

    /// Files that could not be predicted, with the reason.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Running jobs for the status bar.
    pub fn jobs(&self) -> Vec<JobView> {
        let mut jobs = Vec::new();
        if let Some(b) = &self.batch {
            jobs.push(JobView {
                name: "Predict".to_owned(),
                fraction: (b.total > 0).then(|| b.done as f32 / b.total as f32),
                text: format!("{} / {} images", b.done, b.total),
                cancel: Some(b.cancel.clone()),
            });
        }
        if let Some((done, total, cancel)) = &self.exporting {
            jobs.push(JobView {
                name: "Export predictions".to_owned(),
                fraction: (*total > 0).then(|| *done as f32 / *total as f32),
                text: format!("{done} / {total} images"),
                cancel: Some(cancel.clone()),
            });
        }
        if self.model_loading {
            jobs.push(JobView {
                name: "Loading model".to_owned(),
                fraction: None,
                text: self.model_path.clone(),
                cancel: None,
            });
        }
        jobs
    }

    fn send(&mut self, ctx: &egui::Context, cmd: Command, cx: &mut PanelCtx) -> bool {
        if self.worker.is_none() {
            let (tx, rx) = bounded(8);
            // A command loop never ends on its own while the panel lives: its end is a death.
            match Worker::spawn(
                "predict-worker",
                ctx,
                64,
                |_| false,
                move |events| {
                    worker_loop(rx, events);
                },
            ) {
                Ok(w) => self.worker = Some((tx, w)),
                Err(e) => {
                    cx.notices
                        .error(format!("cannot start the prediction thread: {e}"));
                    return false;
                }
            }
        }
        let Some((worker, _)) = &self.worker else {
            return false;
        };
        match worker.try_send(cmd) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                cx.notices
                    .warn("the prediction thread is busy; try again when it finishes");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                // Its death (with the reason) is reported by the next drain.
                cx.notices.error("the prediction thread stopped");
                false
            }
        }
    }

    /// Starts loading the bundle at `path` on the prediction thread.
    pub fn load_model(&mut self, ctx: &egui::Context, path: PathBuf, cx: &mut PanelCtx) {
        let device = cx.settings.device;
        self.model_path = path.display().to_string();
        if self.send(ctx, Command::Load { path, device }, cx) {
            self.model_loading = true;
        }
    }

    /// Predicts image files and folders (folders searched recursively), or queues them until
    /// a model is loaded.
    pub fn predict(&mut self, ctx: &egui::Context, inputs: Vec<PathBuf>, cx: &mut PanelCtx) {
        if inputs.is_empty() {
            return;
        }
        if self.model.is_none() || self.model_loading || self.batch.is_some() {
            if self.model.is_none() && !self.model_loading {
                let chosen = self.model_path.trim();
                if chosen.is_empty() {
                    cx.notices.warn(
                        "load a model bundle first; the dropped images will be predicted then",
                    );
                } else {
                    // The picker's choice (remembered or newest best) is loaded for them.
                    let path = PathBuf::from(chosen);
                    cx.notices.info(format!(
                        "loading the model {}; the dropped images are predicted then",
                        path.display()
                    ));
                    self.load_model(ctx, path, cx);
                }
            }
            self.pending.extend(inputs);
            return;
        }
        let cancel = CancelToken::default();
        let cmd = Command::Predict {
            inputs,
            cancel: cancel.clone(),
        };
        if self.send(ctx, cmd, cx) {
            self.batch = Some(Batch {
                done: 0,
                total: 0,
                cancel,
                started: Instant::now(),
            });
        }
    }

    /// Ends the running batch as failed with `why` (and `hint` after it in the notice); the
    /// results so far stay. False when no batch was running.
    fn fail_batch(&mut self, why: &str, hint: &str, cx: &mut PanelCtx) -> bool {
        let kept = self.results.len();
        let Some(b) = self.batch.take() else {
            return false;
        };
        cx.notices.error(format!(
            "prediction failed after {} of {} images ({kept} results kept): {why}{hint}",
            b.done, b.total
        ));
        true
    }

    /// Ends what a dead thread was doing: the job shows as failed, results so far stay.
    fn worker_died(&mut self, name: &str, why: String, cx: &mut PanelCtx) {
        match name {
            "predict-worker" => {
                // The model lived on that thread: it must be loaded again.
                self.worker = None;
                self.model = None;
                self.model_loading = false;
                if !self.fail_batch(&why, "; load the model again", cx) {
                    cx.notices
                        .error(format!("the model is unloaded: {why}; load it again"));
                }
                self.failures.push(why);
            }
            "predict-export" => {
                self.exporting = None;
                cx.notices.error(format!("export failed: {why}"));
            }
            "predict-reload" => {
                self.reloading = None;
                cx.notices
                    .error(format!("could not read the image again: {why}"));
            }
            _ => cx.notices.error(why),
        }
    }

    fn drain(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let mut events = Vec::new();
        let mut died = Vec::new();
        let workers = self.worker.iter_mut().map(|(_, w)| w);
        for w in workers.chain(self.helpers.iter_mut()) {
            for polled in w.poll() {
                match polled {
                    Polled::Event(e) => events.push(e),
                    Polled::Died(why) => died.push((w.name().to_owned(), why)),
                }
            }
        }
        self.helpers.retain(Worker::running);
        // Events first: a batch's images before the death that ends it.
        for event in events {
            match event {
                Event::Loaded { path, labels } => {
                    self.model_loading = false;
                    model_picker::remember(cx, Purpose::Predict, &path);
                    cx.notices.info(format!(
                        "model {} loaded: {}",
                        path.display(),
                        labels.join(", ")
                    ));
                    self.model = Some((path, labels));
                }
                Event::LoadFailed { path, error } => {
                    self.model_loading = false;
                    cx.notices.error(format!(
                        "could not load the model bundle {}: {error}",
                        path.display()
                    ));
                }
                Event::Started { total } => {
                    if let Some(b) = &mut self.batch {
                        b.total = total;
                    }
                }
                Event::Skipped(skipped) => {
                    let names: Vec<String> = skipped
                        .iter()
                        .take(3)
                        .map(|(p, _)| p.display().to_string())
                        .collect();
                    let more = skipped.len().saturating_sub(names.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    let what = if skipped.len() == 1 {
                        "file that is not an image"
                    } else {
                        "files that are not images"
                    };
                    cx.notices.warn(format!(
                        "skipped {} {what} in the dropped folders: {}{more}",
                        skipped.len(),
                        names.join(", ")
                    ));
                    for (path, why) in skipped {
                        self.failures.push(format!("{}: {why}", path.display()));
                    }
                }
                Event::Image(item) => {
                    if let Some(b) = &mut self.batch {
                        b.done += 1;
                    }
                    self.results.push(*item);
                    if self.results.len() == 1 {
                        self.selected = 0;
                    }
                    self.touch(self.results.len() - 1);
                }
                Event::Reloaded { path, image } => {
                    if self.reloading.as_ref() == Some(&path) {
                        self.reloading = None;
                    }
                    // Results only grow, so the index of a path is stable.
                    if let Some(i) = self.results.iter().position(|r| r.path == path) {
                        self.results[i].image = Some(image);
                        self.touch(i);
                    }
                }
                Event::ReloadFailed { path, error } => {
                    if self.reloading.as_ref() == Some(&path) {
                        self.reloading = None;
                    }
                    let text = format!("{}: {error}", file_label(&path));
                    cx.notices.error(format!("could not read {text} again"));
                    self.failures.push(text);
                }
                Event::ImageFailed { path, error } => {
                    if let Some(b) = &mut self.batch {
                        b.done += 1;
                    }
                    let text = format!("{}: {error}", file_label(&path));
                    cx.notices.error(format!("could not predict {text}"));
                    self.failures.push(text);
                }
                Event::Done { cancelled } => {
                    if let Some(b) = self.batch.take() {
                        let secs = b.started.elapsed().as_secs_f64();
                        let verb = if cancelled { "cancelled" } else { "done" };
                        cx.notices.info(format!(
                            "prediction {verb}: {} images in {secs:.1} s",
                            b.done
                        ));
                    }
                }
                Event::BatchFailed { error } => {
                    if !self.fail_batch(&error, "", cx) {
                        cx.notices.error(format!("prediction failed: {error}"));
                    }
                    self.failures.push(error);
                }
                Event::ExportProgress { done, total } => {
                    if let Some(e) = &mut self.exporting {
                        (e.0, e.1) = (done, total);
                    }
                }
                Event::Exported {
                    dir,
                    detections,
                    cancelled,
                } => {
                    self.exporting = None;
                    let verb = if cancelled {
                        "export cancelled after"
                    } else {
                        "exported"
                    };
                    cx.notices.info(format!(
                        "{verb} {detections} detections to {}",
                        dir.display()
                    ));
                }
                Event::ExportFailed { error } => {
                    self.exporting = None;
                    cx.notices.error(format!("export failed: {error}"));
                }
                Event::Picked { paths } => self.predict(ctx, paths, cx),
            }
        }
        for (name, why) in died {
            self.worker_died(&name, why, cx);
        }
        if self.model.is_some() && !self.model_loading && self.batch.is_none() {
            let pending = std::mem::take(&mut self.pending);
            self.predict(ctx, pending, cx);
        }
    }
}
