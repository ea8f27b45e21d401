//! Train tab: the recipe form ([`form`], its auto-configuration section [`autoconfig`]),
//! start/pause/stop of a run on the `train-run` thread, live plots of the losses (EMA
//! smoothing), learning rate and validation AP, throughput/ETA/memory, augmentation preview and
//! a watch panel of validation images re-predicted at each checkpoint ([`live`]), the project's
//! run list with final metrics, bundle export and resume/continue ([`runs`]), and the Evaluate
//! section ([`eval`]). This file holds the panel's state, starts its workers and drains them.
//!
//! Runs go to `<project>/runs/<id>/` (the trainer's layout: `config.json`, `metrics.csv`,
//! `train.log`, `checkpoints/last/` = a model bundle).

mod audit;
pub mod autoconfig;
pub mod eval;
mod form;
mod live;
mod runs;
mod tools;

use std::path::{Path, PathBuf};

use eframe::egui;

use crate::cancel::CancelToken;
use crate::gui::shared::{JobView, PanelCtx};
use crate::gui::worker::{Polled, Worker};
use crate::host::DeviceChoice;
use crate::train::deploy::{DeployFormat, DeployReport};
use crate::train::preview::PreviewSample;
use crate::train::torchrun::{Engine, TorchrunOptions};
use crate::train::{
    AugmentConfig, ChannelObserver, TrainConfig, TrainControl, TrainEvent, TrainObserver,
};
use autoconfig::AutoConfigForm;
use eval::EvalPanel;
use live::PlotCache;

/// The run list's and the plots' data, and the watch size, where they were before moving to
/// [`crate::train`] (tests and benches name them here).
pub use crate::train::history::{History, read_history};
pub use crate::train::runs::{RunInfo, read_run, runs_dir, scan_runs};
pub use crate::train::watch::WATCH_IMAGES;
pub use live::{
    PREVIEW_SAMPLES, SmoothedSeries, decimate, draw_preview, ema, ema_extend, fmt_secs,
};
pub use tools::engine_label;

/// Forwards events to the channel and wakes the GUI.
struct RepaintObserver {
    inner: ChannelObserver,
    ctx: egui::Context,
    /// `Finished` or `Failed` went through (else the thread sends `Failed` for an error the
    /// engine returned without reporting it).
    ended: bool,
}

impl TrainObserver for RepaintObserver {
    fn on_event(&mut self, e: &TrainEvent) {
        self.ended |= matches!(e, TrainEvent::Finished { .. } | TrainEvent::Failed { .. });
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
    device: DeviceChoice,
    /// The engine training it (torchrun cannot pause).
    engine: Engine,
}

enum WatchEvent {
    Images(Vec<(String, image::RgbImage)>),
    Failed(String),
}

enum Background {
    /// The scanned runs and each one's engine label ([`engine_label`]).
    Runs(Vec<RunInfo>, Vec<String>),
    Exported(Result<PathBuf, String>),
    /// A deployment file written by [`crate::train::deploy::export_bundle`].
    Deployed(Result<DeployReport, String>),
    /// The reference venv's answer ([`tools::probe`]).
    Tools(tools::ToolsAnswer),
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
    /// A new run with this recipe in torchrun processes
    /// ([`crate::train::torchrun::train_torchrun`]).
    Torchrun(Box<TrainConfig>, TorchrunOptions),
    /// [`crate::train::resume`] of a run folder (`Some(n)`: continue by `n` epochs).
    Resume(PathBuf, Option<usize>),
    /// [`crate::train::torchrun::resume_torchrun`] of a torchrun run's folder.
    ResumeTorchrun(PathBuf),
}

/// The Train tab.
pub struct TrainPanel {
    cfg: TrainConfig,
    /// `TrainConfig::max_iters` in the form; 0 = all epochs.
    max_iters: usize,
    run: Option<ActiveRun>,
    history: History,
    smoothing: f32,
    runs: Vec<RunInfo>,
    /// Each listed run's engine as the list shows it (`torchrun × 2`).
    run_engines: Vec<String>,
    runs_for: Option<PathBuf>,
    scanning: bool,
    selected_run: Option<String>,
    export_dir: String,
    exporting: bool,
    /// The export row's format: `None` = bundle folder, else a deployment file.
    export_format: Option<DeployFormat>,
    /// The deployment file's path as typed (follows the run and format until edited).
    export_file: String,
    export_file_edited: bool,
    /// Cancels the running deployment export.
    deploy_cancel: Option<CancelToken>,
    /// The form's engine, and torchrun's process count on this machine.
    engine: Engine,
    processes: usize,
    /// The engine label of the run the live view shows.
    live_engine: String,
    /// What the reference Python venv offers (torchrun, deployment formats).
    tools: tools::PythonTools,
    /// One-shot background threads (run scan, export, preview, replay); each sends one event.
    bg: Vec<Worker<Background>>,
    watch_enabled: bool,
    watch: Vec<(String, egui::TextureHandle)>,
    watch_busy: bool,
    watch_next: Option<PathBuf>,
    /// Project, run folder and device of the run the watch panel follows.
    watch_for: Option<(PathBuf, PathBuf, DeviceChoice)>,
    watch_worker: Option<Worker<WatchEvent>>,
    /// The Evaluate section.
    pub eval: EvalPanel,
    /// The label audit: "Audit with this run" and the K-fold form.
    audit: audit::AuditPanel,
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
    /// Whether the form holds the sample's quick recipe ([`crate::sample_project::train_config`]).
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
            max_iters: cfg.max_iters.unwrap_or(0),
            run: None,
            history: History::default(),
            smoothing: 0.6,
            runs: Vec::new(),
            run_engines: Vec::new(),
            runs_for: None,
            scanning: false,
            selected_run: None,
            export_dir: String::new(),
            exporting: false,
            export_format: None,
            export_file: String::new(),
            export_file_edited: false,
            deploy_cancel: None,
            engine: Engine::InProcess,
            processes: TorchrunOptions::default().nproc_per_node,
            live_engine: String::new(),
            tools: tools::PythonTools::Unknown,
            bg: Vec::new(),
            watch_enabled: true,
            watch: Vec::new(),
            watch_busy: false,
            watch_next: None,
            watch_for: None,
            watch_worker: None,
            eval: EvalPanel::default(),
            audit: audit::AuditPanel::default(),
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
            && !self.audit.busy()
            && !self.previewing
            && self.replaying.is_none()
            && !self.autocfg.busy()
            && !self.tools.probing()
    }

    /// The form's engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Each listed run's engine label ([`engine_label`]), in the order of [`Self::runs`].
    pub fn run_engines(&self) -> &[String] {
        &self.run_engines
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
        jobs.extend(self.audit.jobs());
        if let Some(run) = &self.run {
            let h = &self.history;
            let eta = h
                .eta_secs()
                .map_or_else(String::new, |s| format!(", ETA {}", fmt_secs(s)));
            jobs.push(JobView {
                name: match run.engine {
                    Engine::InProcess => format!("Training {}", h.run_id),
                    Engine::Torchrun => format!("Training {} ({})", h.run_id, self.live_engine),
                },
                fraction: (h.total_iters > 0).then(|| h.steps as f32 / h.total_iters as f32),
                text: format!("step {} / {}{eta}", h.steps, h.total_iters),
                cancel: Some(run.control.cancel_token().clone()),
            });
        }
        if let (true, Some(cancel), Some(format)) =
            (self.exporting, &self.deploy_cancel, self.export_format)
        {
            jobs.push(JobView {
                name: format!("Exporting {}", tools::format_name(format)),
                fraction: None,
                text: String::new(),
                cancel: Some(cancel.clone()),
            });
        }
        jobs
    }

    /// Starts a run with the form's recipe and engine on the `train-run` thread.
    pub fn start(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let cfg = match self.recipe(cx.settings.device) {
            Ok(cfg) => Box::new(cfg),
            Err(e) => return cx.notices.error(format!("training settings: {e:#}")),
        };
        let job = match self.engine {
            Engine::InProcess => RunJob::Fresh(cfg),
            Engine::Torchrun => {
                if let Err(why) = self.tools.torchrun() {
                    return cx
                        .notices
                        .error(format!("cannot train with torchrun: {why}"));
                }
                let opts = TorchrunOptions {
                    nproc_per_node: self.processes,
                    ..TorchrunOptions::default()
                };
                RunJob::Torchrun(cfg, opts)
            }
        };
        self.spawn_run(ctx, cx, job);
    }

    /// Asks the reference venv what it offers on the `python-tools` worker (once per panel).
    fn probe_tools(&mut self, ctx: &egui::Context) {
        let spawned = self.spawn_bg("python-tools", ctx, || Background::Tools(tools::probe()));
        self.tools = match spawned {
            Ok(()) => tools::PythonTools::Probing,
            Err(e) => tools::PythonTools::Known(tools::failed(&e.to_string())),
        };
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
        let resuming = matches!(job, RunJob::Resume(..) | RunJob::ResumeTorchrun(..));
        let engine = match &job {
            RunJob::Fresh(_) | RunJob::Resume(..) => Engine::InProcess,
            RunJob::Torchrun(..) | RunJob::ResumeTorchrun(_) => Engine::Torchrun,
        };
        let engine_text = match &job {
            RunJob::Fresh(_) => engine_label(Engine::InProcess, None),
            RunJob::Torchrun(_, opts) => engine_label(Engine::Torchrun, Some(opts)),
            RunJob::Resume(dir, _) | RunJob::ResumeTorchrun(dir) => self
                .runs
                .iter()
                .position(|r| &r.dir == dir)
                .and_then(|i| self.run_engines.get(i).cloned())
                .unwrap_or_else(|| engine_label(engine, None)),
        };
        let (p, control2) = (project.clone(), control.clone());
        let terminal =
            |e: &TrainEvent| matches!(e, TrainEvent::Finished { .. } | TrainEvent::Failed { .. });
        // Steps are frequent; a large bound keeps them all at GUI frame rates. The trainer
        // sends `Finished` or `Failed` last (its result is also in them).
        let spawned = Worker::spawn("train-run", ctx, 4096, terminal, move |tx| {
            let mut observer = RepaintObserver {
                inner: ChannelObserver::new(tx.sender()),
                ctx: tx.ctx().clone(),
                ended: false,
            };
            let runs = runs_dir(&p);
            let summary = match job {
                RunJob::Fresh(cfg) => {
                    crate::train::train_with(&p, &runs, &cfg, &control2, &mut observer)
                }
                RunJob::Torchrun(cfg, opts) => crate::train::torchrun::train_torchrun(
                    &p,
                    &runs,
                    &cfg,
                    &opts,
                    &control2,
                    &mut observer,
                ),
                RunJob::Resume(dir, extra) => {
                    crate::train::resume(&dir, extra, &control2, &mut observer)
                }
                RunJob::ResumeTorchrun(dir) => {
                    crate::train::torchrun::resume_torchrun(&dir, &control2, &mut observer)
                }
            };
            if let Err(e) = summary
                && !observer.ended
            {
                observer.on_event(&TrainEvent::Failed {
                    error: format!("{e:#}"),
                });
            }
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
                self.live_engine = engine_text;
                self.run = Some(ActiveRun {
                    worker,
                    control,
                    project,
                    device: cx.settings.device,
                    engine,
                });
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start the training thread: {e}")),
        }
    }

    /// Pauses the live run before its next step, or lets a paused one go on (in-process runs:
    /// torchrun's processes cannot pause).
    pub fn toggle_pause(&mut self) {
        if let Some(run) = &self.run
            && run.engine == Engine::InProcess
        {
            if run.control.is_paused() {
                run.control.resume();
                self.history.status = "resumed".to_owned();
            } else {
                run.control.pause();
                self.history.status = "paused".to_owned();
            }
        }
    }

    /// Asks the run to stop after the current step (it saves a checkpoint first).
    pub fn stop(&mut self) {
        if let Some(run) = &self.run {
            run.control.cancel();
            self.history.status = "stopping after this step".to_owned();
        }
    }

    /// Applies what the run and the panel's workers reported; the shell calls it every frame
    /// the tab is hidden, so a run's progress (status bar, notices) keeps up.
    pub fn poll(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        self.drain(ctx, cx);
    }

    fn drain(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        self.autocfg.poll();
        self.audit.poll(cx);
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
                    self.watch = live::textures(ctx, "train_watch", images);
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
                            "python-tools" => {
                                self.tools = tools::PythonTools::Known(tools::failed(&why));
                            }
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
                Background::Runs(runs, engines) => {
                    self.scanning = false;
                    self.runs = runs;
                    self.run_engines = engines;
                }
                Background::Tools(answer) => {
                    if answer.torchrun.is_err() {
                        self.engine = Engine::InProcess;
                    }
                    self.tools = tools::PythonTools::Known(answer);
                }
                Background::Deployed(r) => {
                    self.exporting = false;
                    let cancelled = self.deploy_cancel.take().is_some_and(|c| c.is_cancelled());
                    match r {
                        Ok(done) => cx.notices.info(format!(
                            "{} written to {} ({})",
                            tools::format_name(done.format),
                            done.out.display(),
                            crate::openimages::cli::human_bytes(done.bytes)
                        )),
                        Err(_) if cancelled => cx.notices.info("export cancelled"),
                        Err(e) => cx.notices.error(format!("export failed: {e}")),
                    }
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
                        Ok(samples) => self.preview = live::preview_textures(ctx, &samples),
                        Err(e) => cx.notices.error(format!("augmentation preview: {e}")),
                    }
                }
            }
        }
    }

    /// Draws the tab.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let ctx = ui.ctx().clone();
        if self.tools == tools::PythonTools::Unknown {
            self.probe_tools(&ctx);
        }
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
                self.audit.ui(ui, cx, &self.cfg);
                ui.separator();
                egui::CollapsingHeader::new("Evaluate")
                    .default_open(false)
                    .show(ui, |ui| self.eval.ui(ui, cx, &self.runs));
            });
    }
}
