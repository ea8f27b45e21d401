//! Predict tab: drop images or folders (or open them), pick one of the project's models (or any
//! bundle folder: [`crate::gui::model_picker`]), and see the detections over each image. The model runs once per image on the `predict-worker` thread
//! while a `predict-decode` thread reads and prepares the next images
//! ([`crate::infer::pipeline`]); the worker keeps each mask's probabilities, and the score and
//! mask-threshold sliders re-render the overlay from them without running the model again.
//! Results export as overlay PNGs, per-instance PNG masks and a COCO results JSON.
//!
//! Dropped folders are searched recursively ([`collect_inputs`]); files in them that are not
//! images are skipped and named in the Problems list.
//!
//! Memory stays bounded on large folders: each result keeps its detections (soft masks cropped
//! to their boxes, no full-size binary masks: [`Predictor::predict_soft`]) but pixels only for the few images shown last
//! ([`PIXEL_BUDGET`]); an evicted image is decoded again on a `predict-reload` thread when it is
//! selected, and the export reads evicted images from disk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use eframe::egui;

use crate::cancel::CancelToken;
use crate::fsutil::write_atomic;
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::shared::{DeviceSetting, JobView, PanelCtx};
use crate::gui::worker::{Polled, Worker, WorkerTx};
use crate::infer::pipeline::DecodeAhead;
use crate::infer::{Detection, Predictor, overlay, read_image};
use crate::runtime::DeviceChoice;

/// The model keeps detections down to this score, so the score slider can go as low.
pub const LOAD_SCORE_FLOOR: f64 = 0.01;

/// Decoded display pixels kept in memory across results (bytes, RGB): about 80 display copies
/// of big photos. The selected image is always kept.
pub const PIXEL_BUDGET: usize = 768 << 20;

/// Longer side of the display copy kept of each predicted image: bigger photos are shown (and
/// re-rendered on slider changes) at this size, their masks sampled at full resolution.
pub const MAX_DISPLAY: u32 = 2048;

/// The display copy of `image` and its scale (display / full size, 1 when already small).
pub fn display_copy(image: image::RgbImage) -> (image::RgbImage, f32) {
    let (w, h) = image.dimensions();
    let long = w.max(h);
    if long <= MAX_DISPLAY {
        return (image, 1.0);
    }
    let scale = MAX_DISPLAY as f32 / long as f32;
    let size = |v: u32| ((v as f32 * scale).round() as u32).clamp(1, MAX_DISPLAY);
    let small = image::imageops::resize(
        &image,
        size(w),
        size(h),
        image::imageops::FilterType::Triangle,
    );
    (small, scale)
}

/// The torch device choice of a settings value.
pub fn device_choice(d: DeviceSetting) -> DeviceChoice {
    match d {
        DeviceSetting::Auto => DeviceChoice::Auto,
        DeviceSetting::Cpu => DeviceChoice::Cpu,
        DeviceSetting::Cuda => DeviceChoice::Cuda,
    }
}

/// Work for the prediction thread.
enum Command {
    Load {
        path: PathBuf,
        device: DeviceChoice,
    },
    Predict {
        inputs: Vec<PathBuf>,
        cancel: CancelToken,
    },
}

/// What the prediction thread reports.
enum Event {
    Loaded {
        path: PathBuf,
        labels: Vec<String>,
    },
    LoadFailed {
        path: PathBuf,
        error: String,
    },
    Started {
        total: usize,
    },
    /// Files inside the dropped folders that are not images (or could not be listed), with why.
    Skipped(Vec<(PathBuf, String)>),
    Image(Box<PredictedImage>),
    ImageFailed {
        path: PathBuf,
        error: String,
    },
    Done {
        cancelled: bool,
    },
    /// The batch ended early: its decoder thread died (the model stays loaded).
    BatchFailed {
        error: String,
    },
    Reloaded {
        path: PathBuf,
        image: Arc<image::RgbImage>,
    },
    ReloadFailed {
        path: PathBuf,
        error: String,
    },
    ExportProgress {
        done: usize,
        total: usize,
    },
    Exported {
        dir: PathBuf,
        detections: usize,
        cancelled: bool,
    },
    ExportFailed {
        error: String,
    },
    Picked {
        paths: Vec<PathBuf>,
    },
}

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
    /// Detections down to [`LOAD_SCORE_FLOOR`], best first, with soft masks (box-sized) and
    /// no full-size binary masks.
    pub detections: Arc<Vec<Detection>>,
}

impl PredictedImage {
    fn pixel_bytes(&self) -> usize {
        self.image.as_ref().map_or(0, |i| i.as_raw().len())
    }
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
        }
    }
}

/// Detections passing `score` with masks binarised at `mask_threshold` (no soft masks kept).
pub fn visible_detections(all: &[Detection], score: f32, mask_threshold: f32) -> Vec<Detection> {
    all.iter()
        .filter(|d| d.score >= score)
        .map(|d| Detection {
            label: d.label,
            class_name: d.class_name.clone(),
            score: d.score,
            box_xyxy: d.box_xyxy,
            mask: d.mask_at(mask_threshold),
            soft_mask: None,
        })
        .collect()
}

/// Whether `path` has an image extension the predictor reads (jpg, jpeg, png).
fn is_image_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().to_str(),
            Some("jpg" | "jpeg" | "png")
        )
    })
}

/// The images to predict for dropped or opened `inputs`: files as given (a file that is no
/// image fails when decoded, naming it), folders searched recursively (sorted by path within
/// each folder; links to folders are not followed, so a link loop cannot recurse forever).
/// Files inside folders that are not images, and entries that cannot be listed, are returned
/// apart with the reason; hidden files (`.DS_Store`, ...) are left out silently.
pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let (mut images, mut skipped) = (Vec::new(), Vec::new());
    for input in inputs {
        if !input.is_dir() {
            images.push(input.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(input).follow_links(false) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    skipped.push((path, format!("cannot be listed: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.file_type().is_dir() || hidden || !path.is_file() {
                continue;
            }
            if is_image_name(path) {
                found.push(path.to_path_buf());
            } else {
                skipped.push((
                    path.to_path_buf(),
                    "not an image (jpg, jpeg or png); skipped".to_owned(),
                ));
            }
        }
        found.sort();
        images.extend(found);
    }
    (images, skipped)
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn worker_loop(rx: Receiver<Command>, tx: WorkerTx<Event>) {
    let mut predictor: Option<Predictor> = None;
    let send = |e: Event| tx.send(e);
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Load { path, device } => {
                let loaded = crate::runtime::device(device)
                    .and_then(|d| Predictor::load(&path, d, Some(LOAD_SCORE_FLOOR)));
                let event = match loaded {
                    Ok(p) => {
                        let labels = p.labels().to_vec();
                        predictor = Some(p);
                        Event::Loaded { path, labels }
                    }
                    Err(e) => Event::LoadFailed {
                        path,
                        error: format!("{e:#}"),
                    },
                };
                if !send(event) {
                    return;
                }
            }
            Command::Predict { inputs, cancel } => {
                let Some(p) = &predictor else {
                    continue;
                };
                let (files, skipped) = collect_inputs(&inputs);
                if !send(Event::Started { total: files.len() }) {
                    return;
                }
                if !skipped.is_empty() && !send(Event::Skipped(skipped)) {
                    return;
                }
                // The next images are read and prepared on `predict-decode` while the model
                // runs here; dropping `decoder` (cancel, end) stops that thread.
                let mut decoder = match DecodeAhead::spawn(
                    "predict-decode",
                    files,
                    p.prepare_params().clone(),
                    true,
                ) {
                    Ok(d) => d,
                    Err(e) => {
                        if !send(Event::BatchFailed {
                            error: format!("{e:#}"),
                        }) {
                            return;
                        }
                        continue;
                    }
                };
                let mut cancelled = false;
                // The batch's terminal event: `Done`, or `BatchFailed` when the decoder died.
                let mut failed = None;
                loop {
                    if cancel.is_cancelled() {
                        cancelled = true;
                        break;
                    }
                    let (path, decoded) = match decoder.next_item() {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("{e:#}"));
                            break;
                        }
                    };
                    crate::fault::hit("predict");
                    // A panic on one image (a bad file deep in a decoder, caught there, or in
                    // the model) fails that image; the model stays loaded for the rest.
                    let predicted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::fault::hit("predict-image");
                        decoded.and_then(|d| {
                            let detections = p.predict_soft_prepared(&d.prepared)?;
                            let image = d.image.context("the decoder kept no pixels")?;
                            Ok((image, detections))
                        })
                    }))
                    .unwrap_or_else(|e| {
                        Err(anyhow::anyhow!(
                            "panicked: {}",
                            crate::infer::panic_text(&*e)
                        ))
                    });
                    let event = match predicted {
                        Ok((image, detections)) => {
                            let size = [image.width(), image.height()];
                            let (display, scale) = display_copy(image);
                            Event::Image(Box::new(PredictedImage {
                                path,
                                size,
                                scale,
                                image: Some(Arc::new(display)),
                                detections: Arc::new(detections),
                            }))
                        }
                        Err(e) => Event::ImageFailed {
                            path,
                            error: format!("{e:#}"),
                        },
                    };
                    if !send(event) {
                        return;
                    }
                }
                drop(decoder);
                let end = match failed {
                    Some(error) => Event::BatchFailed { error },
                    None => Event::Done { cancelled },
                };
                if !send(end) {
                    return;
                }
            }
        }
    }
}

/// One image to export: file, full-size pixels if in memory (else read again), detections.
type ExportItem = (PathBuf, Option<Arc<image::RgbImage>>, Arc<Vec<Detection>>);

/// Writes `<name>.overlay.png`, `<name>_mask<k>_<class>.png`, `results.json` and
/// `results.images.json` into `dir` (names from [`crate::infer::export::output_names`]: the
/// path relative to the images' common folder, so same-named files never overwrite each
/// other), calling `progress(done)` after each image; stops early (keeping what is written,
/// with results files of those images) when `cancel` is set. Returns the detections written
/// and whether it was cancelled.
fn export(
    dir: &Path,
    items: &[ExportItem],
    score: f32,
    mask_threshold: f32,
    cancel: &CancelToken,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<(usize, bool)> {
    use crate::infer::export::{CocoResults, output_names, output_path};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let paths: Vec<PathBuf> = items.iter().map(|(p, _, _)| p.clone()).collect();
    let names = output_names(&paths);
    let mut results = CocoResults::default();
    let mut cancelled = false;
    for (done, ((path, pixels, detections), name)) in items.iter().zip(&names).enumerate() {
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        let image = match pixels {
            Some(p) => p.clone(),
            None => Arc::new(read_image(path)?),
        };
        let image = &*image;
        let shown = visible_detections(detections, score, mask_threshold);
        let png = |img: image::DynamicImage| -> anyhow::Result<Vec<u8>> {
            let mut bytes = Vec::new();
            img.write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )?;
            Ok(bytes)
        };
        let mut over = overlay::draw(image, &shown);
        overlay::draw_labels(&mut over, &shown);
        write_atomic(
            &output_path(dir, &name.stem, ".overlay.png"),
            &png(image::DynamicImage::ImageRgb8(over))?,
        )?;
        for (k, d) in shown.iter().enumerate() {
            let class: String = d
                .class_name
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { '_' })
                .collect();
            write_atomic(
                &output_path(dir, &name.stem, &format!("_mask{k}_{class}.png")),
                &png(image::DynamicImage::ImageLuma8(d.mask.to_gray()))?,
            )?;
        }
        results.add(&name.file_name, image.width(), image.height(), &shown);
        progress(done + 1);
    }
    results.write(&dir.join("results.json"))?;
    Ok((results.len(), cancelled))
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

    /// Bytes of decoded pixels held in memory now.
    pub fn pixel_bytes(&self) -> usize {
        self.results.iter().map(PredictedImage::pixel_bytes).sum()
    }

    /// The selected result (index into [`Self::results`]).
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Selects result `index` (clamped); its pixels are decoded again if they were evicted.
    pub fn select(&mut self, index: usize) {
        self.selected = index.min(self.results.len().saturating_sub(1));
        self.touch(self.selected);
    }

    /// Sets the bytes of decoded pixels kept across results (low-memory machines, tests).
    pub fn set_pixel_budget(&mut self, bytes: usize) {
        self.pixel_budget = bytes;
        self.touch(self.selected);
    }

    /// Marks `index` as just shown and drops the pixels of the least recently shown results
    /// until the rest fit in the pixel budget (the selected one stays).
    fn touch(&mut self, index: usize) {
        self.kept.retain(|&i| i != index);
        if self.results.get(index).is_some_and(|r| r.image.is_some()) {
            self.kept.push_back(index);
        }
        let mut total = self.pixel_bytes();
        while total > self.pixel_budget {
            let Some(pos) = self.kept.iter().position(|&i| i != self.selected) else {
                break;
            };
            if let Some(old) = self.kept.remove(pos)
                && let Some(r) = self.results.get_mut(old)
            {
                total -= r.pixel_bytes();
                r.image = None;
            }
        }
    }

    /// Decodes the selected image again on a thread when its pixels were evicted.
    fn ensure_pixels(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let Some(item) = self.results.get(self.selected) else {
            return;
        };
        if item.image.is_some() || self.reloading.as_ref() == Some(&item.path) {
            return;
        }
        let path = item.path.clone();
        let path2 = path.clone();
        let spawned = Worker::once("predict-reload", ctx, move || match read_image(&path2) {
            Ok(img) => Event::Reloaded {
                path: path2,
                image: Arc::new(display_copy(img).0),
            },
            Err(e) => Event::ReloadFailed {
                path: path2,
                error: format!("{e:#}"),
            },
        });
        match spawned {
            Ok(w) => {
                self.helpers.push(w);
                self.reloading = Some(path);
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start reading the image: {e}")),
        }
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
        let device = device_choice(cx.settings.device);
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

    /// Ends what a dead thread was doing: the job shows as failed, results so far stay.
    fn worker_died(&mut self, name: &str, why: String, cx: &mut PanelCtx) {
        match name {
            "predict-worker" => {
                // The model lived on that thread: it must be loaded again.
                self.worker = None;
                self.model = None;
                self.model_loading = false;
                let kept = self.results.len();
                if let Some(b) = self.batch.take() {
                    cx.notices.error(format!(
                        "prediction failed after {} of {} images ({kept} results kept): {why}; load the model again",
                        b.done, b.total
                    ));
                } else {
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
                    let kept = self.results.len();
                    if let Some(b) = self.batch.take() {
                        cx.notices.error(format!(
                            "prediction failed after {} of {} images ({kept} results kept): {error}",
                            b.done, b.total
                        ));
                    } else {
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

    /// Opens an image file dialog on a thread (never on the UI thread: it blocks until closed).
    fn pick(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let spawned = Worker::once("predict-dialog", ctx, move || {
            let paths = rfd::FileDialog::new()
                .add_filter("Images", &["jpg", "jpeg", "png"])
                .pick_files();
            // A cancelled dialog picks nothing.
            Event::Picked {
                paths: paths.unwrap_or_default(),
            }
        });
        match spawned {
            Ok(w) => self.helpers.push(w),
            Err(e) => cx.notices.error(format!("cannot open a file dialog: {e}")),
        }
    }

    fn start_export(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let dir = PathBuf::from(self.export_dir.trim());
        if self.export_dir.trim().is_empty() {
            cx.notices.warn("type an export folder first");
            return;
        }
        let items: Vec<_> = self
            .results
            .iter()
            .map(|r| {
                // A display copy is smaller than the file: the export reads the file again.
                let full = r.image.clone().filter(|_| r.scale >= 1.0);
                (r.path.clone(), full, r.detections.clone())
            })
            .collect();
        let (score, mask) = (cx.settings.score_threshold, cx.settings.mask_threshold);
        let cancel = CancelToken::default();
        let (cancel2, total) = (cancel.clone(), items.len());
        let terminal = |e: &Event| matches!(e, Event::Exported { .. } | Event::ExportFailed { .. });
        let spawned = Worker::spawn("predict-export", ctx, 8, terminal, move |tx| {
            let progress = |done| {
                // Progress is advisory: a full channel skips an update, never blocks.
                tx.try_send(Event::ExportProgress { done, total });
            };
            let event = match export(&dir, &items, score, mask, &cancel2, progress) {
                Ok((detections, cancelled)) => Event::Exported {
                    dir,
                    detections,
                    cancelled,
                },
                Err(e) => Event::ExportFailed {
                    error: format!("{e:#}"),
                },
            };
            tx.send(event);
        });
        match spawned {
            Ok(w) => {
                self.helpers.push(w);
                self.exporting = Some((0, total, cancel));
            }
            Err(e) => cx.notices.error(format!("cannot start the export: {e}")),
        }
    }

    /// Draws the tab.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx, cx);
        let dropped: Vec<PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.predict(&ctx, dropped, cx);
        }
        let hovering = ui.input(|i| !i.raw.hovered_files.is_empty());

        ui.horizontal_wrapped(|ui| {
            let picked = self.picker.ui(ui, cx, &mut self.model_path);
            if let Some(path) = picked.chosen
                && !self.model_loading
            {
                // Choosing a model (from the list or Browse…) loads it.
                self.load_model(&ctx, path, cx);
            }
            let can_load = !self.model_loading && !self.model_path.trim().is_empty();
            if ui
                .add_enabled(can_load, egui::Button::new("Load model"))
                .clicked()
            {
                let path = PathBuf::from(self.model_path.trim());
                self.load_model(&ctx, path, cx);
            }
            if self.model_loading {
                ui.spinner();
            }
            match &self.model {
                Some((_, labels)) => ui.label(format!("Classes: {}", labels.join(", "))),
                None => ui.label("No model loaded"),
            };
        });
        ui.horizontal(|ui| {
            let label = ui.label("Images");
            ui.add(egui::TextEdit::singleline(&mut self.input_path).desired_width(320.0))
                .labelled_by(label.id);
            if ui
                .add_enabled(
                    !self.input_path.trim().is_empty(),
                    egui::Button::new("Predict"),
                )
                .clicked()
            {
                let p = PathBuf::from(self.input_path.trim());
                self.predict(&ctx, vec![p], cx);
            }
            if ui.button("Open images...").clicked() {
                self.pick(&ctx, cx);
            }
            if let Some(b) = &self.batch {
                let frac = if b.total > 0 {
                    b.done as f32 / b.total as f32
                } else {
                    0.0
                };
                ui.add(
                    egui::ProgressBar::new(frac)
                        .desired_width(160.0)
                        .text(format!("{} / {}", b.done, b.total)),
                );
                if ui.button("Cancel prediction").clicked() {
                    b.cancel.cancel();
                }
            }
            if !self.pending.is_empty() {
                ui.label(format!("{} inputs waiting for a model", self.pending.len()));
            }
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut cx.settings.score_threshold, 0.0..=1.0)
                    .text("Score threshold"),
            );
            ui.add(
                egui::Slider::new(&mut cx.settings.mask_threshold, 0.01..=0.99)
                    .text("Mask threshold"),
            );
        });
        ui.horizontal(|ui| {
            let label = ui.label("Export folder");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(320.0))
                .labelled_by(label.id);
            let can = self.exporting.is_none() && !self.results.is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Export results"))
                .clicked()
            {
                self.start_export(&ctx, cx);
            }
            if let Some((done, total, cancel)) = &self.exporting {
                ui.add(
                    egui::ProgressBar::new(*done as f32 / (*total).max(1) as f32)
                        .desired_width(160.0)
                        .text(format!("{done} / {total}")),
                );
                if ui.button("Cancel export").clicked() {
                    cancel.cancel();
                }
            }
        });
        if !self.failures.is_empty() {
            egui::CollapsingHeader::new(format!("Problems ({})", self.failures.len()))
                .default_open(true)
                .show(ui, |ui| {
                    for f in &self.failures {
                        ui.colored_label(ui.visuals().error_fg_color, f);
                    }
                });
        }
        ui.separator();
        if self.results.is_empty() {
            let text = if hovering {
                "Release to predict these files"
            } else {
                "Drop image files or folders here, or use Open images"
            };
            ui.centered_and_justified(|ui| ui.heading(text));
            return;
        }
        self.results_ui(ui, cx);
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let (score, mask_thr) = (cx.settings.score_threshold, cx.settings.mask_threshold);
        self.selected = self.selected.min(self.results.len() - 1);
        let mut picked = None;
        egui::Panel::left("predict_files")
            .resizable(true)
            .default_size(180.0)
            .show(ui, |ui| {
                // Virtualised: a folder of thousands of results lays out only the visible rows.
                let row_h = ui.spacing().interact_size.y;
                egui::ScrollArea::vertical().show_rows(
                    ui,
                    row_h,
                    self.results.len(),
                    |ui, rows| {
                        for i in rows {
                            let r = &self.results[i];
                            let n = r.detections.iter().filter(|d| d.score >= score).count();
                            let text = format!("{} ({n})", file_label(&r.path));
                            if ui.selectable_label(i == self.selected, text).clicked() {
                                picked = Some(i);
                            }
                        }
                    },
                );
            });
        if let Some(i) = picked
            && i != self.selected
        {
            self.select(i);
        }
        self.ensure_pixels(ui.ctx(), cx);
        let item = &self.results[self.selected];
        let Some(pixels) = item.image.clone() else {
            egui::CentralPanel::default().show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Reading {} ...", file_label(&item.path)));
                });
            });
            return;
        };
        let shown: Vec<&Detection> = item
            .detections
            .iter()
            .filter(|d| d.score >= score)
            .collect();
        let stale = !matches!(&self.overlay, Some((i, s, m, _))
            if *i == self.selected && *s == score && *m == mask_thr);
        if stale {
            // Only the soft masks' rectangles are visited: cheap enough for slider drags.
            let img = overlay::draw_thresholded_scaled(
                &pixels,
                item.scale,
                &item.detections,
                score,
                mask_thr,
            );
            let size = [img.width() as usize, img.height() as usize];
            let color = egui::ColorImage::from_rgb(size, img.as_raw());
            let tex = ui
                .ctx()
                .load_texture("predict_overlay", color, egui::TextureOptions::LINEAR);
            self.overlay = Some((self.selected, score, mask_thr, tex));
            self.overlay_pixels = Some(img);
        }
        egui::Panel::right("predict_instances")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                ui.strong(format!("Instances shown: {}", shown.len()));
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::Grid::new("predict_instance_grid")
                        .striped(true)
                        .show(ui, |ui| {
                            for h in ["#", "Class", "Score", "Box", "Pixels"] {
                                ui.strong(h);
                            }
                            ui.end_row();
                            for (k, d) in shown.iter().enumerate() {
                                let [r, g, b] = overlay::label_color(d.label);
                                ui.label(k.to_string());
                                ui.colored_label(egui::Color32::from_rgb(r, g, b), &d.class_name);
                                ui.label(format!("{:.3}", d.score));
                                let [x1, y1, x2, y2] = d.box_xyxy;
                                ui.label(format!("{x1:.0},{y1:.0},{x2:.0},{y2:.0}"));
                                ui.label(d.area_at(mask_thr).to_string());
                                ui.end_row();
                            }
                        });
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            let Some((_, _, _, tex)) = &self.overlay else {
                return;
            };
            let w = item.size[0];
            let response = ui.add(
                egui::Image::new(tex)
                    .max_size(ui.available_size())
                    .shrink_to_fit(),
            );
            let rect = response.rect;
            let scale = rect.width() / w.max(1) as f32;
            let painter = ui.painter_at(rect);
            for d in &shown {
                let [r, g, b] = overlay::label_color(d.label);
                let pos = rect.min + egui::vec2(d.box_xyxy[0] * scale, d.box_xyxy[1] * scale);
                let text = format!("{} {:.2}", d.class_name, d.score);
                let galley = painter.layout_no_wrap(
                    text,
                    egui::FontId::proportional(12.0),
                    egui::Color32::WHITE,
                );
                let bg = egui::Rect::from_min_size(
                    pos - egui::vec2(0.0, galley.size().y),
                    galley.size() + egui::vec2(4.0, 0.0),
                );
                painter.rect_filled(
                    bg,
                    2.0,
                    egui::Color32::from_rgb(r, g, b).gamma_multiply(0.8),
                );
                painter.galley(bg.min + egui::vec2(2.0, 0.0), galley, egui::Color32::WHITE);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_photos_get_a_display_copy_small_ones_stay() {
        let (small, scale) = display_copy(image::RgbImage::new(640, 480));
        assert_eq!((small.dimensions(), scale), ((640, 480), 1.0));
        let (copy, scale) = display_copy(image::RgbImage::new(4000, 3000));
        assert_eq!(copy.dimensions(), (2048, 1536));
        assert!((scale - 0.512).abs() < 1e-6, "{scale}");
        let (tall, _) = display_copy(image::RgbImage::new(1000, 5000));
        assert_eq!(tall.dimensions(), (410, 2048));
    }
}
