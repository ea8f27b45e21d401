//! Train tab: the recipe form (preset, image size, epochs, batch, learning rate, warm-up,
//! augmentation, device), start/stop of a run on the `train-run` thread, live plots of the
//! losses (EMA smoothing), learning rate and validation AP, throughput/ETA/memory, a watch
//! panel of validation images re-predicted at each checkpoint, the project's run list with
//! final metrics, bundle export, and the Evaluate section ([`crate::gui::eval_panel`]).
//!
//! Runs go to `<project>/runs/<id>/` (the trainer's layout: `config.json`, `metrics.csv`,
//! `train.log`, `checkpoints/last/` = a model bundle).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eframe::egui;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::gui::eval_panel::EvalPanel;
use crate::gui::predict_panel::device_choice;
use crate::gui::shared::{DeviceSetting, JobView, PanelCtx};
use crate::gui::train_autoconfig::AutoConfigForm;
use crate::gui::worker::{Polled, Worker};
use crate::infer::overlay;
use crate::train::augment::PreviewSample;
use crate::train::config::{OptimizerKind, ScheduleKind};
use crate::train::export::export_run_bundle;
use crate::train::watch::predict_watch_images;
use crate::train::{
    AugmentConfig, ChannelObserver, Preset, TrainConfig, TrainControl, TrainEvent, TrainObserver,
};

/// The run list's and the plots' data, and the watch size, where they were before moving to
/// [`crate::train`] (tests and benches name them here).
pub use crate::train::history::{History, read_history};
pub use crate::train::runs::{RunInfo, read_run, runs_dir, scan_runs};
pub use crate::train::watch::WATCH_IMAGES;

/// Exponential moving average of the y values (`s = a * s + (1 - a) * y`, starting at the
/// first value); `alpha = 0` returns the points unchanged.
pub fn ema(points: &[[f64; 2]], alpha: f64) -> Vec<[f64; 2]> {
    let mut out = Vec::with_capacity(points.len());
    ema_extend(points, alpha, &mut out);
    out
}

/// Continues [`ema`]: `out` holds the smoothed first `out.len()` points of `points`; the
/// rest are smoothed and appended (same values as `ema(points, alpha)`).
pub fn ema_extend(points: &[[f64; 2]], alpha: f64, out: &mut Vec<[f64; 2]>) {
    let alpha = alpha.clamp(0.0, 0.999);
    let mut s = out.last().map(|p| p[1]);
    for &[x, y] in points.iter().skip(out.len()) {
        let v = match s {
            Some(prev) if y.is_finite() => alpha * prev + (1.0 - alpha) * y,
            Some(prev) => prev,
            None => y,
        };
        s = Some(v);
        out.push([x, v]);
    }
}

/// The points a plot `pixels` wide needs to draw `points` (sorted by x) between `x_range`
/// (all of them when `None`): each of about `pixels` buckets keeps its lowest and highest point
/// in x order, so spikes survive; the ends and one point beyond each side of the range are
/// kept. A series with at most two points per pixel is returned as it is.
pub fn decimate(points: &[[f64; 2]], x_range: Option<(f64, f64)>, pixels: usize) -> Vec<[f64; 2]> {
    let (lo, hi) = match x_range {
        Some((a, b)) => (
            points.partition_point(|p| p[0] < a).saturating_sub(1),
            (points.partition_point(|p| p[0] <= b) + 1).min(points.len()),
        ),
        None => (0, points.len()),
    };
    let slice = &points[lo..hi.max(lo)];
    let buckets = pixels.max(1);
    if slice.len() <= 2 * buckets {
        return slice.to_vec();
    }
    let per = slice.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets + 2);
    out.push(slice[0]);
    for chunk in slice.chunks(per) {
        let (mut lowest, mut highest) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p[1] < chunk[lowest][1] {
                lowest = i;
            }
            if p[1] > chunk[highest][1] {
                highest = i;
            }
        }
        for i in [lowest.min(highest), lowest.max(highest)] {
            if out.last() != Some(&chunk[i]) {
                out.push(chunk[i]);
            }
        }
    }
    let last = slice[slice.len() - 1];
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Same point, NaN included (a NaN loss must not look like a changed series every frame).
fn same_point(a: Option<&[f64; 2]>, b: Option<&[f64; 2]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a[0].to_bits() == b[0].to_bits() && a[1].to_bits() == b[1].to_bits(),
        (None, None) => true,
        _ => false,
    }
}

/// A series smoothed by [`ema`], extended as points arrive instead of recomputed per frame;
/// recomputed when the smoothing changes or the series was replaced, rewound or prepended.
#[derive(Debug, Default, Clone)]
pub struct SmoothedSeries {
    alpha: f64,
    /// The raw first point and the raw point at `out.len() - 1` when `out` was made.
    first: Option<[f64; 2]>,
    last: Option<[f64; 2]>,
    out: Vec<[f64; 2]>,
}

impl SmoothedSeries {
    /// `ema(raw, alpha)`, reusing the previous call's work when `raw` only grew.
    pub fn update(&mut self, raw: &[[f64; 2]], alpha: f64) -> &[[f64; 2]] {
        let n = self.out.len();
        let grew = self.alpha.to_bits() == alpha.to_bits()
            && n <= raw.len()
            && same_point(raw.first(), self.first.as_ref())
            && same_point(
                n.checked_sub(1).and_then(|i| raw.get(i)),
                self.last.as_ref(),
            );
        if !grew {
            self.out.clear();
            self.alpha = alpha;
        }
        ema_extend(raw, alpha, &mut self.out);
        self.first = raw.first().copied();
        self.last = raw.last().copied();
        &self.out
    }
}

/// Smoothed loss series of the plots, by name (`total` and the components).
#[derive(Debug, Default)]
struct PlotCache {
    smoothed: BTreeMap<String, SmoothedSeries>,
}

/// Forwards events to the channel and wakes the GUI.
struct RepaintObserver {
    inner: ChannelObserver,
    ctx: egui::Context,
}

impl TrainObserver for RepaintObserver {
    fn on_event(&mut self, e: &TrainEvent) {
        self.inner.on_event(e);
        self.ctx.request_repaint();
    }
}

struct ActiveRun {
    /// The `train-run` thread; `Finished`/`Failed` end it, a panic or a closed channel is a
    /// failure.
    worker: Worker<TrainEvent>,
    control: TrainControl,
    project: PathBuf,
    device: DeviceSetting,
}

enum WatchEvent {
    Images(Vec<(String, image::RgbImage)>),
    Failed(String),
}

enum Background {
    Runs(Vec<RunInfo>),
    Exported(Result<PathBuf, String>),
    Preview(Result<Vec<PreviewSample>, String>),
    /// A run's plots read back from its folder.
    Replay {
        run_id: String,
        history: Result<Box<History>, String>,
    },
}

/// What the `train-run` thread does.
enum RunJob {
    /// A new run with this recipe.
    Fresh(Box<TrainConfig>),
    /// [`crate::train::resume`] of a run folder (`Some(n)`: continue by `n` epochs).
    Resume(PathBuf, Option<usize>),
}

/// How many augmented samples the preview shows (fewer when the training split is smaller).
pub const PREVIEW_SAMPLES: usize = 8;

/// Draws the instance masks over the image, half-transparent in their class colours
/// (`overlay::label_color` of the class's index among `classes` + 1).
pub fn draw_preview(sample: &PreviewSample, classes: &[String]) -> image::RgbImage {
    let mut img = sample.image.clone();
    for (mask, name) in &sample.instances {
        let label = classes.iter().position(|c| c == name).unwrap_or(0) as i64 + 1;
        let color = overlay::label_color(label);
        let (w, h) = (
            mask.width().min(img.width()),
            mask.height().min(img.height()),
        );
        for y in 0..h {
            for x in 0..w {
                if mask.get(x, y) {
                    let p = img.get_pixel_mut(x, y);
                    for (v, c) in p.0.iter_mut().zip(color) {
                        *v = ((u16::from(*v) + u16::from(c)) / 2) as u8;
                    }
                }
            }
        }
    }
    img
}

/// The Train tab.
pub struct TrainPanel {
    cfg: TrainConfig,
    /// Max steps in the form; 0 = all epochs.
    max_steps: usize,
    run: Option<ActiveRun>,
    history: History,
    smoothing: f32,
    runs: Vec<RunInfo>,
    runs_for: Option<PathBuf>,
    scanning: bool,
    selected_run: Option<String>,
    export_dir: String,
    exporting: bool,
    /// One-shot background threads (run scan, export, preview, replay); each sends one event.
    bg: Vec<Worker<Background>>,
    watch_enabled: bool,
    watch: Vec<(String, egui::TextureHandle)>,
    watch_busy: bool,
    watch_next: Option<PathBuf>,
    /// Project, run folder and device of the run the watch panel follows.
    watch_for: Option<(PathBuf, PathBuf, DeviceSetting)>,
    watch_worker: Option<Worker<WatchEvent>>,
    /// The Evaluate section.
    pub eval: EvalPanel,
    /// The form's augmentation pipeline (follows the preset until edited).
    aug: AugmentConfig,
    /// Multistep milestones as typed (comma-separated epochs).
    milestones_text: String,
    /// Whether gradient clipping is on, and its max norm.
    clip_enabled: bool,
    clip_value: f64,
    /// Whether early stopping is on, and its patience in evaluations.
    patience_enabled: bool,
    patience_value: usize,
    /// Epochs for "Continue N epochs".
    continue_epochs: usize,
    previewing: bool,
    /// Bumped at each preview so a new click shows new draws.
    preview_epoch: usize,
    preview: Vec<(String, egui::TextureHandle)>,
    /// The run whose files are being read back into the plots.
    replaying: Option<String>,
    /// Smoothed loss series, extended per step rather than recomputed per frame.
    plot_cache: PlotCache,
    /// The dataset-derived model configuration shown before Start.
    autocfg: AutoConfigForm,
    /// Whether the form holds the sample's quick recipe ([`crate::sample::train_config`]).
    sample_recipe: bool,
}

impl Default for TrainPanel {
    /// The studio's form: auto-configuration on, refit off (offered in the form).
    fn default() -> Self {
        Self::new(Self::studio_recipe(TrainConfig::default()))
    }
}

impl TrainPanel {
    /// A panel whose form starts at `cfg`.
    pub fn new(cfg: TrainConfig) -> Self {
        Self {
            max_steps: cfg.max_iters.unwrap_or(0),
            run: None,
            history: History::default(),
            smoothing: 0.6,
            runs: Vec::new(),
            runs_for: None,
            scanning: false,
            selected_run: None,
            export_dir: String::new(),
            exporting: false,
            bg: Vec::new(),
            watch_enabled: true,
            watch: Vec::new(),
            watch_busy: false,
            watch_next: None,
            watch_for: None,
            watch_worker: None,
            eval: EvalPanel::default(),
            aug: AugmentConfig::resolve(&cfg),
            milestones_text: cfg
                .lr_milestones
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            clip_enabled: cfg.clip_grad_norm.is_some(),
            clip_value: cfg.clip_grad_norm.unwrap_or(10.0),
            patience_enabled: cfg.patience.is_some(),
            patience_value: cfg.patience.unwrap_or(3),
            continue_epochs: 5,
            previewing: false,
            preview_epoch: 0,
            preview: Vec::new(),
            replaying: None,
            plot_cache: PlotCache::default(),
            autocfg: AutoConfigForm::default(),
            sample_recipe: false,
            cfg,
        }
    }

    /// The studio form's recipe on `base`: auto-configuration on, refit off.
    fn studio_recipe(base: TrainConfig) -> TrainConfig {
        TrainConfig {
            auto_config: true,
            // Off like the CLI: measured no better than the validation-selected checkpoint at
            // 1.7x the time (see `train::cli`).
            refit: crate::train::config::RefitMode::Off,
            ..base
        }
    }

    /// A project opened: the sample gets its quick recipe, anything else the standard one, but
    /// only while the form still shows the other untouched (an edited form is the user's).
    pub fn project_opened(&mut self, is_sample: bool) {
        let (from, to) = if is_sample {
            (TrainConfig::default(), crate::sample::train_config())
        } else {
            (crate::sample::train_config(), TrainConfig::default())
        };
        if is_sample != self.sample_recipe && self.cfg == Self::studio_recipe(from) {
            self.use_recipe(Self::studio_recipe(to), is_sample);
        }
    }

    /// Whether the form holds the sample's quick recipe.
    pub fn has_sample_recipe(&self) -> bool {
        self.sample_recipe
    }

    fn use_recipe(&mut self, cfg: TrainConfig, sample: bool) {
        self.aug = AugmentConfig::resolve(&cfg);
        self.max_steps = cfg.max_iters.unwrap_or(0);
        self.cfg = cfg;
        self.sample_recipe = sample;
    }

    /// The form's recipe.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// What the plots show.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Whether a run is going.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// The run list.
    pub fn runs(&self) -> &[RunInfo] {
        &self.runs
    }

    /// Whether nothing runs in the background (run, watch prediction, run scan, export,
    /// evaluation).
    pub fn idle(&self) -> bool {
        self.run.is_none()
            && !self.watch_busy
            && self.watch_next.is_none()
            && !self.scanning
            && !self.exporting
            && !self.eval.running()
            && !self.previewing
            && self.replaying.is_none()
            && !self.autocfg.busy()
    }

    /// Augmented samples shown by the preview.
    pub fn preview_count(&self) -> usize {
        self.preview.len()
    }

    /// Whether the live run is paused.
    pub fn paused(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.control.is_paused())
    }

    /// Validation images shown in the watch panel.
    pub fn watch_count(&self) -> usize {
        self.watch.len()
    }

    /// Running jobs for the status bar.
    pub fn jobs(&self) -> Vec<JobView> {
        let mut jobs = self.eval.jobs();
        if let Some(run) = &self.run {
            let h = &self.history;
            let eta = h
                .eta_secs()
                .map_or_else(String::new, |s| format!(", ETA {}", fmt_secs(s)));
            jobs.push(JobView {
                name: format!("Training {}", h.run_id),
                fraction: (h.total_iters > 0).then(|| h.steps as f32 / h.total_iters as f32),
                text: format!("step {} / {}{eta}", h.steps, h.total_iters),
                cancel: Some(run.control.cancel_token().clone()),
            });
        }
        jobs
    }

    /// The form's recipe as the trainer takes it (device from the settings), or what is wrong.
    pub fn recipe(&self, device: DeviceSetting) -> anyhow::Result<TrainConfig> {
        let mut cfg = self.cfg.clone();
        cfg.max_iters = (self.max_steps > 0).then_some(self.max_steps);
        cfg.device = device_choice(device);
        cfg.clip_grad_norm = self.clip_enabled.then_some(self.clip_value);
        cfg.patience = self.patience_enabled.then_some(self.patience_value);
        cfg.lr_milestones = self
            .milestones_text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("milestone {t:?} is not a whole number of epochs"))
            })
            .collect::<anyhow::Result<_>>()?;
        cfg.augment = Some(Box::new(self.aug.clone()));
        self.autocfg.apply(&mut cfg);
        // Recipe fields the form changed from its defaults are the user's: the trainer's
        // auto-configuration (warm-up inside epoch 1) leaves them.
        let d = TrainConfig::default();
        for (key, changed) in [
            ("lr", cfg.lr.to_bits() != d.lr.to_bits()),
            ("warmup_iters", cfg.warmup_iters != d.warmup_iters),
            (
                "warmup_factor",
                cfg.warmup_factor.to_bits() != d.warmup_factor.to_bits(),
            ),
        ] {
            if changed && !cfg.is_user_set(key) {
                cfg.user_set.push(key.to_owned());
            }
        }
        cfg.validate()?;
        self.aug.validate()?;
        Ok(cfg)
    }

    /// Starts a run with the form's recipe on the `train-run` thread.
    pub fn start(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        match self.recipe(cx.settings.device) {
            Ok(cfg) => self.spawn_run(ctx, cx, RunJob::Fresh(Box::new(cfg))),
            Err(e) => cx.notices.error(format!("training settings: {e:#}")),
        }
    }

    /// Resumes the run in `run_dir` where it stopped (`None`) or extends it by `n` epochs.
    pub fn resume_run(
        &mut self,
        ctx: &egui::Context,
        cx: &mut PanelCtx,
        run_dir: PathBuf,
        continue_epochs: Option<usize>,
    ) {
        if self.run.is_some() {
            cx.notices.warn("a training run is already going");
            return;
        }
        let run_id = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.history.run_id != run_id {
            // A fresh panel: the plots start with the run's recorded steps.
            self.history = History {
                run_id,
                ..History::default()
            };
            self.watch.clear();
        }
        let recorded = self.runs.iter().find(|r| r.dir == run_dir).map(|r| r.steps);
        if recorded.is_none_or(|n| self.history.total.len() < n) {
            self.replay(ctx, &run_dir);
        }
        self.spawn_run(ctx, cx, RunJob::Resume(run_dir, continue_epochs));
    }

    /// Shows a listed run in the plots (read back from its files on a worker thread); a live
    /// run keeps the plots.
    pub fn select_run(&mut self, ctx: &egui::Context, run_id: &str) {
        self.selected_run = Some(run_id.to_owned());
        if self.run.is_some() || self.history.run_id == run_id {
            return;
        }
        let Some(dir) = self
            .runs
            .iter()
            .find(|r| r.id == run_id)
            .map(|r| r.dir.clone())
        else {
            return;
        };
        self.history = History {
            run_id: run_id.to_owned(),
            status: format!("reading run {run_id}"),
            ..History::default()
        };
        self.watch.clear();
        self.replay(ctx, &dir);
    }

    /// Reads `run_dir`'s recorded steps and epochs on the `train-replay` thread (a long run's
    /// `metrics.csv` has tens of thousands of rows); [`Self::drain`] merges them in.
    fn replay(&mut self, ctx: &egui::Context, run_dir: &Path) {
        let run_id = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.replaying.as_deref() == Some(run_id.as_str()) {
            return;
        }
        let dir = run_dir.to_path_buf();
        let id = run_id.clone();
        let spawned = self.spawn_bg("train-replay", ctx, move || {
            crate::fault::hit("train-replay");
            let history = read_history(&dir)
                .map(Box::new)
                .map_err(|e| format!("{e:#}"));
            Background::Replay {
                run_id: id,
                history,
            }
        });
        match spawned {
            Ok(()) => self.replaying = Some(run_id),
            Err(e) => log::error!("cannot start reading run {run_id}: {e}"),
        }
    }

    /// Starts a one-shot background thread whose closure's value is its only event.
    fn spawn_bg(
        &mut self,
        name: &str,
        ctx: &egui::Context,
        f: impl FnOnce() -> Background + Send + 'static,
    ) -> std::io::Result<()> {
        self.bg.push(Worker::once(name, ctx, f)?);
        Ok(())
    }

    fn spawn_run(&mut self, ctx: &egui::Context, cx: &mut PanelCtx, job: RunJob) {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project before training");
            return;
        };
        if self.run.is_some() {
            cx.notices.warn("a training run is already going");
            return;
        }
        let control = TrainControl::default();
        let resuming = matches!(job, RunJob::Resume(..));
        let (p, control2) = (project.clone(), control.clone());
        let terminal =
            |e: &TrainEvent| matches!(e, TrainEvent::Finished { .. } | TrainEvent::Failed { .. });
        // Steps are frequent; a large bound keeps them all at GUI frame rates. The trainer
        // sends `Finished` or `Failed` last (its result is also in them).
        let spawned = Worker::spawn("train-run", ctx, 4096, terminal, move |tx| {
            let mut observer = RepaintObserver {
                inner: ChannelObserver::new(tx.sender()),
                ctx: tx.ctx().clone(),
            };
            let _summary = match job {
                RunJob::Fresh(cfg) => {
                    crate::train::train_with(&p, &runs_dir(&p), &cfg, &control2, &mut observer)
                }
                RunJob::Resume(dir, extra) => {
                    crate::train::resume(&dir, extra, &control2, &mut observer)
                }
            };
        });
        match spawned {
            Ok(worker) => {
                if resuming {
                    self.history.status = "resuming".to_owned();
                } else {
                    self.history = History {
                        status: "starting".to_owned(),
                        ..History::default()
                    };
                    self.watch.clear();
                }
                self.run = Some(ActiveRun {
                    worker,
                    control,
                    project,
                    device: cx.settings.device,
                });
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start the training thread: {e}")),
        }
    }

    /// Pauses the live run before its next step, or lets a paused one go on.
    pub fn toggle_pause(&mut self) {
        if let Some(run) = &self.run {
            if run.control.is_paused() {
                run.control.resume();
                self.history.status = "resumed".to_owned();
            } else {
                run.control.pause();
                self.history.status = "paused".to_owned();
            }
        }
    }

    /// Augments the first [`PREVIEW_SAMPLES`] training images with the form's recipe on the
    /// `train-aug-preview` thread; each call draws a new epoch's random parameters.
    pub fn start_preview(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project to preview augmentations");
            return;
        };
        if self.previewing {
            return;
        }
        let cfg = match self.recipe(cx.settings.device) {
            Ok(c) => c,
            Err(e) => {
                cx.notices.error(format!("training settings: {e:#}"));
                return;
            }
        };
        let epoch = self.preview_epoch;
        self.preview_epoch += 1;
        let spawned = self.spawn_bg("train-aug-preview", ctx, move || {
            let r = crate::train::augment::preview(&project, &cfg, epoch, PREVIEW_SAMPLES)
                .map_err(|e| format!("{e:#}"));
            Background::Preview(r)
        });
        match spawned {
            Ok(()) => self.previewing = true,
            Err(e) => cx.notices.error(format!("cannot start the preview: {e}")),
        }
    }

    /// Asks the run to stop after the current step (it saves a checkpoint first).
    pub fn stop(&mut self) {
        if let Some(run) = &self.run {
            run.control.cancel();
            self.history.status = "stopping after this step".to_owned();
        }
    }

    fn scan(&mut self, ctx: &egui::Context, project: &Path) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        if self.runs_for.as_deref() != Some(project) {
            // Exports land where the model pickers list them (`train::runs::EXPORTS_DIR`).
            let exports = project.join(crate::train::runs::EXPORTS_DIR);
            self.export_dir = exports.display().to_string();
        }
        self.runs_for = Some(project.to_path_buf());
        let runs = runs_dir(project);
        let spawned = self.spawn_bg("train-runs-scan", ctx, move || {
            Background::Runs(scan_runs(&runs))
        });
        if spawned.is_err() {
            self.scanning = false;
        }
    }

    fn start_watch(&mut self, ctx: &egui::Context, bundle: PathBuf, score: f32) {
        let Some((project, run_dir, device)) = self.watch_for.clone() else {
            return;
        };
        if self.watch_busy {
            self.watch_next = Some(bundle);
            return;
        }
        let spawned = Worker::once("train-watch", ctx, move || {
            match predict_watch_images(&project, &run_dir, &bundle, device_choice(device), score) {
                Ok(images) => WatchEvent::Images(images),
                Err(e) => WatchEvent::Failed(format!("{e:#}")),
            }
        });
        self.watch_busy = spawned.is_ok();
        self.watch_worker = spawned.ok();
    }

    /// Applies what the run and the panel's workers reported; the shell calls it every frame
    /// the tab is hidden, so a run's progress (status bar, notices) keeps up.
    pub fn poll(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        self.drain(ctx, cx);
    }

    fn drain(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        self.autocfg.poll();
        let mut checkpoints = Vec::new();
        let mut finished: Option<Result<(bool, usize), String>> = None;
        if let Some(run) = &mut self.run {
            for polled in run.worker.poll() {
                let e = match polled {
                    Polled::Event(e) => e,
                    Polled::Died(why) => {
                        finished = Some(Err(why));
                        continue;
                    }
                };
                match &e {
                    TrainEvent::Started { run_dir, .. } => {
                        self.watch_for = Some((run.project.clone(), run_dir.clone(), run.device));
                    }
                    TrainEvent::CheckpointSaved { path } => checkpoints.push(path.clone()),
                    TrainEvent::Finished {
                        iterations,
                        cancelled,
                        ..
                    } => finished = Some(Ok((*cancelled, *iterations))),
                    TrainEvent::Failed { error } => finished = Some(Err(error.clone())),
                    _ => {}
                }
                self.history.apply(&e);
            }
        }
        let ended = finished.is_some();
        if let Some(result) = finished {
            match result {
                Ok((cancelled, iterations)) => {
                    let verb = if cancelled { "stopped" } else { "finished" };
                    cx.notices.info(format!(
                        "training run {} {verb} after {iterations} steps",
                        self.history.run_id
                    ));
                }
                Err(e) => {
                    self.history.status = format!("failed: {e}");
                    cx.notices.error(format!("training failed: {e}"));
                }
            }
            self.runs_for = None; // rescan: a new run folder exists
        }
        if self.watch_enabled
            && let Some(path) = checkpoints.pop()
        {
            self.start_watch(ctx, path, cx.settings.score_threshold);
        }
        if ended && let Some(run) = self.run.take() {
            // Its clean-up (the model, the loader) finishes before the run counts as over.
            run.worker.join();
        }
        let watched = self
            .watch_worker
            .as_mut()
            .map(Worker::poll)
            .unwrap_or_default();
        for polled in watched {
            self.watch_busy = false;
            if let Some(w) = self.watch_worker.take() {
                w.join(); // only freeing its model is left
            }
            let e = match polled {
                Polled::Event(e) => e,
                Polled::Died(why) => WatchEvent::Failed(why),
            };
            match e {
                WatchEvent::Images(images) => {
                    self.watch = images
                        .into_iter()
                        .enumerate()
                        .map(|(k, (name, img))| {
                            let size = [img.width() as usize, img.height() as usize];
                            let color = egui::ColorImage::from_rgb(size, img.as_raw());
                            let tex = ctx.load_texture(
                                format!("train_watch_{k}"),
                                color,
                                egui::TextureOptions::LINEAR,
                            );
                            (name, tex)
                        })
                        .collect();
                }
                WatchEvent::Failed(e) => cx.notices.warn(format!("watch images: {e}")),
            }
            if let Some(next) = self.watch_next.take() {
                self.start_watch(ctx, next, cx.settings.score_threshold);
            }
        }
        let mut events = Vec::new();
        for w in &mut self.bg {
            for polled in w.poll() {
                match polled {
                    Polled::Event(e) => events.push(e),
                    Polled::Died(why) => {
                        match w.name() {
                            "train-runs-scan" => self.scanning = false,
                            "train-export" => self.exporting = false,
                            "train-aug-preview" => self.previewing = false,
                            _ => self.replaying = None,
                        }
                        cx.notices.error(why);
                    }
                }
            }
        }
        self.bg.retain(Worker::running);
        for e in events {
            match e {
                Background::Runs(runs) => {
                    self.scanning = false;
                    self.runs = runs;
                }
                Background::Replay { run_id, history } => {
                    if self.replaying.as_deref() == Some(run_id.as_str()) {
                        self.replaying = None;
                    }
                    if run_id != self.history.run_id {
                        continue; // another run was chosen since
                    }
                    match history {
                        Ok(older) => {
                            let status = older.status.clone();
                            self.history.merge_older(*older);
                            if self.run.is_none() {
                                self.history.status = status;
                            }
                        }
                        Err(e) => cx.notices.warn(format!("the plots of run {run_id}: {e}")),
                    }
                }
                Background::Exported(r) => {
                    self.exporting = false;
                    match r {
                        Ok(dest) => cx
                            .notices
                            .info(format!("model bundle exported to {}", dest.display())),
                        Err(e) => cx.notices.error(format!("export failed: {e}")),
                    }
                }
                Background::Preview(r) => {
                    self.previewing = false;
                    match r {
                        Ok(samples) => {
                            let mut classes: Vec<String> = samples
                                .iter()
                                .flat_map(|s| s.instances.iter().map(|(_, c)| c.clone()))
                                .collect();
                            classes.sort();
                            classes.dedup();
                            self.preview = samples
                                .iter()
                                .enumerate()
                                .map(|(k, sample)| {
                                    let img = draw_preview(sample, &classes);
                                    let size = [img.width() as usize, img.height() as usize];
                                    let color = egui::ColorImage::from_rgb(size, img.as_raw());
                                    let tex = ctx.load_texture(
                                        format!("train_aug_preview_{k}"),
                                        color,
                                        egui::TextureOptions::LINEAR,
                                    );
                                    let names: Vec<&str> =
                                        sample.instances.iter().map(|(_, c)| c.as_str()).collect();
                                    let caption = format!(
                                        "image {}: {}",
                                        sample.image_id,
                                        if names.is_empty() {
                                            "no instances".to_owned()
                                        } else {
                                            names.join(", ")
                                        }
                                    );
                                    (caption, tex)
                                })
                                .collect();
                        }
                        Err(e) => cx.notices.error(format!("augmentation preview: {e}")),
                    }
                }
            }
        }
    }

    /// Draws the tab.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let ctx = ui.ctx().clone();
        self.drain(&ctx, cx);
        if let Some(project) = cx.project
            && self.runs_for.as_deref() != Some(project)
        {
            self.scan(&ctx, project);
        }
        egui::ScrollArea::vertical()
            .id_salt("train_scroll")
            .show(ui, |ui| {
                self.form_ui(ui, cx);
                ui.separator();
                self.progress_ui(ui);
                self.plots_ui(ui);
                self.watch_ui(ui);
                ui.separator();
                self.runs_ui(ui, cx);
                ui.separator();
                egui::CollapsingHeader::new("Evaluate")
                    .default_open(false)
                    .show(ui, |ui| self.eval.ui(ui, cx, &self.runs));
            });
    }

    fn form_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let running = self.run.is_some();
        if self.sample_recipe && !running {
            ui.horizontal_wrapped(|ui| {
                ui.label(
                    "Sample recipe: 224 px, 6 epochs, learning rate 0.02 — about 3 minutes on a \
                     2-core CPU, to show the loop. Real data takes longer (the standard recipe: \
                     12 epochs at 320 px, ~0.3–1 image/s on such a CPU).",
                );
                if ui.button("Use the standard recipe").clicked() {
                    self.use_recipe(Self::studio_recipe(TrainConfig::default()), false);
                }
            });
        }
        ui.add_enabled_ui(!running, |ui| {
            egui::Grid::new("train_form")
                .num_columns(4)
                .spacing([12.0, 4.0])
                .show(ui, |ui| {
                    let cfg = &mut self.cfg;
                    let preset_before = cfg.preset;
                    let label = ui.label("Preset");
                    egui::ComboBox::from_id_salt("train_preset")
                        .selected_text(match cfg.preset {
                            Preset::CpuFast => "cpu-fast",
                            Preset::Quality => "quality",
                        })
                        .show_ui(ui, |ui| {
                            ui.selectable_value(&mut cfg.preset, Preset::CpuFast, "cpu-fast");
                            ui.selectable_value(&mut cfg.preset, Preset::Quality, "quality");
                        })
                        .response
                        .labelled_by(label.id);
                    if cfg.preset != preset_before {
                        self.aug = AugmentConfig::for_preset(cfg.preset);
                    }
                    ui.label("Backbone");
                    ui.label(match cfg.preset {
                        Preset::CpuFast => "MobileNetV2-FPN (ImageNet)",
                        Preset::Quality => crate::train::init::quality_backbone_label(),
                    });
                    ui.end_row();

                    let mut size = cfg.resolved_image_size();
                    labelled_drag(ui, "Image size", &mut size, 32..=2048, 1.0);
                    if size != cfg.resolved_image_size() {
                        cfg.image_size = Some(size);
                    }
                    labelled_drag(ui, "Epochs", &mut cfg.epochs, 1..=1000, 0.1);
                    ui.end_row();

                    labelled_drag(ui, "Batch size", &mut cfg.batch_size, 1..=64, 0.1);
                    let label = ui.label("Learning rate");
                    ui.add(
                        egui::DragValue::new(&mut cfg.lr)
                            .range(1e-6..=1.0)
                            .speed(0.0005)
                            .max_decimals(6),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    labelled_drag(ui, "Warm-up steps", &mut cfg.warmup_iters, 0..=100_000, 1.0);
                    labelled_drag(
                        ui,
                        "Max steps (0 = all)",
                        &mut self.max_steps,
                        0..=10_000_000,
                        1.0,
                    );
                    ui.end_row();

                    let cfg = &mut self.cfg;
                    let label = ui.label("Optimizer");
                    egui::ComboBox::from_id_salt("train_optimizer")
                        .selected_text(match cfg.optimizer {
                            OptimizerKind::Sgd => "SGD",
                            OptimizerKind::Adamw => "AdamW",
                        })
                        .show_ui(ui, |ui| {
                            ui.selectable_value(&mut cfg.optimizer, OptimizerKind::Sgd, "SGD");
                            ui.selectable_value(&mut cfg.optimizer, OptimizerKind::Adamw, "AdamW");
                        })
                        .response
                        .labelled_by(label.id);
                    labelled_drag(ui, "Seed", &mut cfg.seed, 0..=u64::MAX, 1.0);
                    ui.end_row();

                    let label = ui.label("Schedule");
                    egui::ComboBox::from_id_salt("train_schedule")
                        .selected_text(match cfg.schedule {
                            ScheduleKind::Cosine => "cosine",
                            ScheduleKind::Multistep => "multistep",
                            ScheduleKind::OneCycle => "one-cycle",
                        })
                        .show_ui(ui, |ui| {
                            for (k, name) in [
                                (ScheduleKind::Cosine, "cosine"),
                                (ScheduleKind::Multistep, "multistep"),
                                (ScheduleKind::OneCycle, "one-cycle"),
                            ] {
                                ui.selectable_value(&mut cfg.schedule, k, name);
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    labelled_drag(ui, "Freeze epochs", &mut cfg.freeze_epochs, 0..=1000, 0.1);
                    ui.end_row();

                    if cfg.schedule == ScheduleKind::Multistep {
                        let label = ui.label("Milestones (epochs, comma-separated)");
                        ui.add(
                            egui::TextEdit::singleline(&mut self.milestones_text)
                                .desired_width(140.0),
                        )
                        .labelled_by(label.id);
                        let label = ui.label("LR gamma");
                        ui.add(
                            egui::DragValue::new(&mut cfg.lr_gamma)
                                .range(0.0..=1.0)
                                .speed(0.01),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                    }

                    ui.checkbox(&mut self.clip_enabled, "Clip gradients");
                    ui.add_enabled_ui(self.clip_enabled, |ui| {
                        labelled_drag(
                            ui,
                            "Max gradient norm",
                            &mut self.clip_value,
                            0.01..=1e6,
                            0.1,
                        );
                    });
                    labelled_drag(
                        ui,
                        "Evaluate every N epochs",
                        &mut cfg.eval_every,
                        0..=1000,
                        0.1,
                    );
                    ui.end_row();

                    ui.checkbox(&mut self.patience_enabled, "Early stopping");
                    ui.add_enabled_ui(self.patience_enabled, |ui| {
                        labelled_drag(
                            ui,
                            "Patience (evaluations)",
                            &mut self.patience_value,
                            1..=1000,
                            0.1,
                        );
                    });
                    ui.checkbox(&mut cfg.amp, "Mixed precision (AMP, CUDA only)");
                    ui.end_row();

                    let label = ui.label("Validation fraction");
                    ui.add(
                        egui::DragValue::new(&mut cfg.val_fraction)
                            .range(0.0..=0.9)
                            .speed(0.01),
                    )
                    .labelled_by(label.id);
                    let label = ui.label("Flip probability");
                    ui.add(
                        egui::DragValue::new(&mut cfg.hflip_prob)
                            .range(0.0..=1.0)
                            .speed(0.01),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    let label = ui.label("Device");
                    egui::ComboBox::from_id_salt("train_device")
                        .selected_text(cx.settings.device.as_str())
                        .show_ui(ui, |ui| {
                            for d in [DeviceSetting::Auto, DeviceSetting::Cpu, DeviceSetting::Cuda]
                            {
                                ui.selectable_value(&mut cx.settings.device, d, d.as_str());
                            }
                        })
                        .response
                        .labelled_by(label.id);
                    ui.checkbox(&mut cfg.pretrained_backbone, "ImageNet backbone");
                    ui.end_row();
                });
            egui::CollapsingHeader::new("Augmentation")
                .default_open(false)
                .show(ui, |ui| {
                    let aug = &mut self.aug;
                    ui.checkbox(&mut aug.enabled, "Augment training images");
                    ui.add_enabled_ui(aug.enabled, |ui| {
                        egui::Grid::new("train_aug_form")
                            .num_columns(4)
                            .spacing([12.0, 4.0])
                            .show(ui, |ui| {
                                labelled_drag(
                                    ui,
                                    "Shift-scale-rotate probability",
                                    &mut aug.ssr_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Rotate limit (degrees)",
                                    &mut aug.rotate_limit,
                                    0.0..=180.0,
                                    0.5,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "Crop probability",
                                    &mut aug.crop_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Scale jitter min",
                                    &mut aug.scale_min,
                                    0.1..=1.0,
                                    0.01,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "Colour probability",
                                    &mut aug.color_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Scale jitter max",
                                    &mut aug.scale_max,
                                    1.0..=4.0,
                                    0.01,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "RGB shift probability",
                                    &mut aug.rgb_shift_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                ui.checkbox(&mut aug.pad_to_square, "Pad to square");
                                ui.end_row();
                            });
                    });
                    ui.label("The horizontal flip probability is in the form above.");
                });
            self.autocfg.ui(ui, cx.project, &mut self.cfg);
        });
        ui.horizontal(|ui| {
            let can_start = !running && cx.project.is_some();
            if ui
                .add_enabled(can_start, egui::Button::new("Start training"))
                .clicked()
            {
                self.start(ui.ctx(), cx);
            }
            let stopping = self.run.as_ref().is_some_and(|r| r.control.is_cancelled());
            if ui
                .add_enabled(running && !stopping, egui::Button::new("Stop training"))
                .clicked()
            {
                self.stop();
            }
            if cx.project.is_none() {
                ui.label("Open a project to train on it.");
            }
            let pause_text = if self.paused() {
                "Resume training"
            } else {
                "Pause training"
            };
            if ui
                .add_enabled(running && !stopping, egui::Button::new(pause_text))
                .clicked()
            {
                self.toggle_pause();
            }
            ui.checkbox(&mut self.watch_enabled, "Watch validation images");
        });
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    !self.previewing && cx.project.is_some(),
                    egui::Button::new("Preview augmentations"),
                )
                .clicked()
            {
                self.start_preview(ui.ctx(), cx);
            }
            if self.previewing {
                ui.spinner();
            }
            if !self.preview.is_empty() {
                ui.label(format!("Augmented samples: {}", self.preview.len()));
            }
        });
        if !self.preview.is_empty() {
            ui.horizontal_wrapped(|ui| {
                for (caption, tex) in &self.preview {
                    ui.vertical(|ui| {
                        ui.add(egui::Image::new(tex).max_size(egui::vec2(160.0, 160.0)));
                        ui.small(caption);
                    });
                }
            });
        }
    }

    fn progress_ui(&self, ui: &mut egui::Ui) {
        let h = &self.history;
        if h.status.is_empty() && h.steps == 0 {
            return;
        }
        if h.total_iters > 0 {
            ui.add(
                egui::ProgressBar::new(h.steps as f32 / h.total_iters as f32)
                    .text(format!("Step {} / {}", h.steps, h.total_iters)),
            );
        }
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("Epoch {}", h.epoch + 1));
            ui.label(match h.images_per_sec {
                Some(v) => format!("{v:.2} images/s"),
                None => "- images/s".to_owned(),
            });
            ui.label(match (self.run.is_some(), h.eta_secs()) {
                (true, Some(s)) => format!("ETA {}", fmt_secs(s)),
                _ => "ETA -".to_owned(),
            });
            ui.label(match h.memory_bytes {
                Some(b) => format!("memory {:.0} MiB", b as f64 / (1024.0 * 1024.0)),
                None => "memory -".to_owned(),
            });
            ui.label(&h.status);
        });
    }

    /// The live plots. Per frame they cost about the plot's pixel width, not the run's length:
    /// smoothing is extended per new step ([`SmoothedSeries`]) and each series is decimated
    /// to the visible x range at two points per pixel ([`decimate`]).
    fn plots_ui(&mut self, ui: &mut egui::Ui) {
        let (h, cache) = (&self.history, &mut self.plot_cache);
        if h.total.is_empty() {
            return;
        }
        ui.add(egui::Slider::new(&mut self.smoothing, 0.0..=0.99).text("Loss smoothing"));
        let alpha = f64::from(self.smoothing);
        ui.label(format!("Loss points: {}", h.total.len()));
        let ppp = ui.ctx().pixels_per_point();
        let pixels = (ui.available_width() * ppp) as usize;
        cache
            .smoothed
            .retain(|name, _| name == "total" || h.losses.contains_key(name));
        Plot::new("train_losses")
            .height(220.0)
            .legend(Legend::default())
            .x_axis_label("step")
            .allow_scroll(false)
            .show(ui, |p| {
                let range = visible_x(p);
                let series = std::iter::once(("total", &h.total))
                    .chain(h.losses.iter().map(|(n, pts)| (n.as_str(), pts)));
                for (name, raw) in series {
                    let smooth = cache
                        .smoothed
                        .entry(name.to_owned())
                        .or_default()
                        .update(raw, alpha);
                    let line = Line::new(name, PlotPoints::from(decimate(smooth, range, pixels)));
                    p.line(if name == "total" {
                        line.width(2.5)
                    } else {
                        line
                    });
                }
            });
        ui.columns(2, |cols| {
            let pixels = (cols[0].available_width() * ppp) as usize;
            Plot::new("train_lr")
                .height(140.0)
                .legend(Legend::default())
                .x_axis_label("step")
                .allow_scroll(false)
                .show(&mut cols[0], |p| {
                    let lr = decimate(&h.lr, visible_x(p), pixels);
                    p.line(Line::new("learning rate", PlotPoints::from(lr)));
                });
            if h.val_segm_ap.is_empty() && h.val_bbox_ap.is_empty() {
                cols[1].label("Validation AP appears here after each epoch the trainer evaluates.");
            } else {
                Plot::new("train_val_ap")
                    .height(140.0)
                    .legend(Legend::default())
                    .x_axis_label("epoch")
                    .include_y(0.0)
                    .allow_scroll(false)
                    .show(&mut cols[1], |p| {
                        p.line(Line::new(
                            "mask AP",
                            PlotPoints::from(h.val_segm_ap.clone()),
                        ));
                        p.line(Line::new("box AP", PlotPoints::from(h.val_bbox_ap.clone())));
                    });
            }
        });
    }

    fn watch_ui(&self, ui: &mut egui::Ui) {
        if self.watch.is_empty() && !self.watch_busy {
            return;
        }
        ui.horizontal(|ui| {
            ui.strong("Validation images at the latest checkpoint");
            if self.watch_busy {
                ui.spinner();
            }
        });
        ui.horizontal_wrapped(|ui| {
            for (name, tex) in &self.watch {
                ui.vertical(|ui| {
                    ui.add(egui::Image::new(tex).max_size(egui::vec2(192.0, 192.0)));
                    ui.small(name);
                });
            }
        });
    }

    fn runs_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        ui.horizontal(|ui| {
            ui.strong(format!("Runs ({})", self.runs.len()));
            if ui.button("Refresh runs").clicked()
                && let Some(p) = cx.project
            {
                let p = p.to_path_buf();
                self.scan(ui.ctx(), &p);
            }
            if self.scanning {
                ui.spinner();
            }
        });
        let mut clicked = None;
        egui::Grid::new("train_runs").striped(true).show(ui, |ui| {
            for h in [
                "Run",
                "Preset",
                "Epochs",
                "Steps",
                "Final loss",
                "Validation",
                "Bundle",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for r in &self.runs {
                let selected = self.selected_run.as_deref() == Some(r.id.as_str());
                if ui.selectable_label(selected, &r.id).clicked() {
                    clicked = Some(r.id.clone());
                }
                ui.label(&r.preset);
                ui.label(r.epochs.map_or_else(|| "-".to_owned(), |e| e.to_string()));
                ui.label(r.steps.to_string());
                ui.label(
                    r.final_loss
                        .map_or_else(|| "-".to_owned(), |l| format!("{l:.4}")),
                );
                let val: Vec<String> = r
                    .val_metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.3}"))
                    .collect();
                ui.label(if val.is_empty() {
                    "-".to_owned()
                } else {
                    val.join(", ")
                });
                ui.label(if r.has_bundle { "yes" } else { "no" });
                ui.end_row();
            }
        });
        if let Some(id) = clicked {
            self.select_run(ui.ctx(), &id);
        }
        let selected = self
            .selected_run
            .as_ref()
            .and_then(|id| self.runs.iter().find(|r| &r.id == id))
            .cloned();
        ui.horizontal(|ui| {
            let label = ui.label("Export to folder");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(280.0))
                .labelled_by(label.id);
            let can = !self.exporting
                && selected.as_ref().is_some_and(|r| r.has_bundle)
                && !self.export_dir.trim().is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Export model bundle"))
                .clicked()
                && let Some(run) = selected.clone()
            {
                let dest = PathBuf::from(self.export_dir.trim());
                let spawned = self.spawn_bg("train-export", ui.ctx(), move || {
                    let r = export_run_bundle(&run, &dest).map_err(|e| format!("{e:#}"));
                    Background::Exported(r)
                });
                match spawned {
                    Ok(()) => self.exporting = true,
                    Err(e) => cx.notices.error(format!("cannot start the export: {e}")),
                }
            }
            if selected.is_none() {
                ui.label("Select a run to export its bundle.");
            }
        });
        ui.horizontal(|ui| {
            let can = self.run.is_none() && selected.as_ref().is_some_and(|r| r.has_bundle);
            if ui
                .add_enabled(can, egui::Button::new("Resume run"))
                .on_hover_text("Continue a stopped run exactly where it stopped")
                .clicked()
                && let Some(run) = &selected
            {
                self.resume_run(ui.ctx(), cx, run.dir.clone(), None);
            }
            labelled_drag(ui, "Extra epochs", &mut self.continue_epochs, 1..=1000, 0.1);
            if ui
                .add_enabled(
                    can,
                    egui::Button::new(format!("Continue {} epochs", self.continue_epochs)),
                )
                .on_hover_text("Extend a run by more epochs with a new schedule over them")
                .clicked()
                && let Some(run) = &selected
            {
                self.resume_run(ui.ctx(), cx, run.dir.clone(), Some(self.continue_epochs));
            }
        });
    }
}

/// The x range the plot showed last frame when the user zoomed or panned it (`None` while it
/// fits the data: every point then takes part in the automatic bounds).
fn visible_x(p: &egui_plot::PlotUi<'_>) -> Option<(f64, f64)> {
    if p.auto_bounds().x {
        return None;
    }
    let b = p.plot_bounds();
    Some((b.min()[0], b.max()[0]))
}

/// A label and a drag value labelled by it (kittest and screen readers find it by name).
fn labelled_drag<T: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    text: &str,
    value: &mut T,
    range: std::ops::RangeInclusive<T>,
    speed: f64,
) {
    let label = ui.label(text);
    ui.add(egui::DragValue::new(value).range(range).speed(speed))
        .labelled_by(label.id);
}

/// `1h 02m`, `3m 05s` or `12s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_smooths_and_zero_alpha_is_identity() {
        let pts = [[0.0, 4.0], [1.0, 0.0], [2.0, 0.0]];
        assert_eq!(ema(&pts, 0.0), pts.to_vec());
        let s = ema(&pts, 0.5);
        assert_eq!(s, vec![[0.0, 4.0], [1.0, 2.0], [2.0, 1.0]]);
        // A NaN step keeps the previous smoothed value.
        let s = ema(&[[0.0, 1.0], [1.0, f64::NAN]], 0.5);
        assert_eq!(s[1], [1.0, 1.0]);
    }

    #[test]
    fn smoothing_extends_and_decimation_keeps_spikes() {
        let raw: Vec<[f64; 2]> = (0..1000)
            .map(|i| [i as f64, if i == 613 { 50.0 } else { (i % 7) as f64 }])
            .collect();
        let mut s = SmoothedSeries::default();
        assert_eq!(s.update(&raw[..400], 0.6), ema(&raw[..400], 0.6).as_slice());
        // Grown: extended, identical to a full recompute.
        assert_eq!(s.update(&raw, 0.6), ema(&raw, 0.6).as_slice());
        // Other smoothing, or a replaced series: recomputed.
        assert_eq!(s.update(&raw, 0.3), ema(&raw, 0.3).as_slice());
        let shifted: Vec<[f64; 2]> = raw.iter().map(|p| [p[0], p[1] + 1.0]).collect();
        assert_eq!(s.update(&shifted, 0.3), ema(&shifted, 0.3).as_slice());
        let mut rewound = shifted[..500].to_vec();
        rewound.push([500.0, -3.0]);
        assert_eq!(s.update(&rewound, 0.3), ema(&rewound, 0.3).as_slice());

        let d = decimate(&raw, None, 100);
        assert!(d.len() <= 202, "{}", d.len());
        assert_eq!((d[0], *d.last().unwrap()), (raw[0], raw[999]));
        assert!(d.contains(&[613.0, 50.0]), "the spike survives");
        assert!(d.windows(2).all(|w| w[0][0] < w[1][0]), "x order");
        // Few points per pixel: unchanged. A zoomed range: that slice plus one each side.
        assert_eq!(decimate(&raw[..150], None, 100), raw[..150].to_vec());
        assert_eq!(
            decimate(&raw, Some((10.5, 20.5)), 100),
            raw[10..=21].to_vec()
        );
        assert!(decimate(&raw, Some((2000.0, 3000.0)), 100).len() <= 1);
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        // The export's refusal of a run without a bundle is tested in `train::export`.
        assert_eq!(fmt_secs(3725.0), "1h 02m");
        assert_eq!(fmt_secs(65.0), "1m 05s");
    }
}
