//! The studio's application state ([`StudioApp`]): fields, construction, the per-frame
//! `logic` (worker events, log, theme, settings save, title) and `ui` (bars, tab, windows,
//! panel requests), and the eframe glue. Each concern's `impl StudioApp` block sits in its own
//! child module: [`project`] (open / create / sample on workers), [`settings`] (window and
//! saving), [`chrome`] (top and status bars, title, shortcuts, help, toasts), [`welcome`].

mod chrome;
mod project;
mod settings;
mod welcome;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;

use super::classes_panel::ClassesPanel;
use super::download_panel::DownloadPanel;
use super::log_toasts::LogFeed;
use super::predict::PredictPanel;
use super::review_grid::ReviewPanel;
use super::shared::{Notices, PanelCtx, Settings, ShellRequest, Tab, Theme};
use super::train::TrainPanel;
use super::worker::{Polled, Worker};
use super::{EXIT_AFTER_FRAMES_ENV, StudioOptions};
use crate::dataset::store::ProjectInfo;

use project::{Event, ShellJob};

/// The application state.
pub struct StudioApp {
    settings: Settings,
    settings_path: PathBuf,
    saved_settings: Settings,
    settings_writable: bool,
    settings_changed_at: Option<Instant>,
    /// Generation of the settings last handed to a writer, and (behind the lock) the last
    /// written: writes happen in generation order, so a slow background save never overwrites
    /// the flush on close.
    settings_generation: u64,
    settings_written: Arc<Mutex<u64>>,
    notices: Notices,
    /// Logged warnings and errors on their way to `notices`.
    log_feed: Option<LogFeed>,
    /// Whether the log feed wakes this window yet.
    log_waker_set: bool,
    tab: Tab,
    /// Text of the project path field.
    project_path: String,
    /// The open project and its summary.
    project: Option<(PathBuf, ProjectInfo)>,
    loading: Option<PathBuf>,
    dialog_open: bool,
    sample_running: bool,
    show_help: bool,
    show_settings: bool,
    applied_theme: Option<Theme>,
    title: String,
    /// The shell's running workers (project loads, folder dialog, sample, settings saves).
    workers: Vec<(ShellJob, Worker<Event>)>,
    frames: u64,
    exit_after_frames: Option<u64>,
    /// The Classes tab.
    pub classes: ClassesPanel,
    /// The Download tab.
    pub download: DownloadPanel,
    /// The Review tab.
    pub review: ReviewPanel,
    /// The Train tab (with Evaluate).
    pub train: TrainPanel,
    /// The Predict tab.
    pub predict: PredictPanel,
}

impl StudioApp {
    /// A studio with no project open; `project` is opened at the first frame if given.
    pub fn new(project: Option<PathBuf>) -> Self {
        Self::with_options(StudioOptions::from_env(project))
    }

    /// A studio started with explicit options (tests, benchmarks, screenshots).
    pub fn with_options(options: StudioOptions) -> Self {
        let mut notices = Notices::default();
        // A small file read once before the first frame.
        let (settings, settings_writable) = match Settings::load(&options.settings_path) {
            Ok(s) => (s, true),
            Err(e) => {
                notices.error(format!("{e:#} (using defaults; not saving over it)"));
                (Settings::default(), false)
            }
        };
        // Review, which shows the Welcome (New / Open / Try the sample) until a project opens.
        let tab = options.start_tab.unwrap_or(Tab::Review);
        let mut app = Self {
            saved_settings: settings.clone(),
            settings,
            settings_path: options.settings_path,
            settings_writable,
            settings_changed_at: None,
            settings_generation: 0,
            settings_written: Arc::new(Mutex::new(0)),
            notices,
            log_feed: options.log_toasts.map(LogFeed::new),
            log_waker_set: false,
            tab,
            project_path: options
                .project
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            project: None,
            loading: None,
            dialog_open: false,
            sample_running: false,
            show_help: false,
            show_settings: false,
            applied_theme: None,
            title: String::new(),
            workers: Vec::new(),
            frames: 0,
            exit_after_frames: std::env::var(EXIT_AFTER_FRAMES_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
            classes: ClassesPanel::new(options.oi_cache_dir.clone()),
            download: DownloadPanel::new(options.oi_cache_dir),
            review: ReviewPanel::new(),
            train: TrainPanel::default(),
            predict: PredictPanel::default(),
        };
        if let Some(project) = options.project {
            app.open_project(project, false, None);
        }
        app
    }

    /// The open project's folder and summary.
    pub fn project(&self) -> Option<&(PathBuf, ProjectInfo)> {
        self.project.as_ref()
    }

    /// The tab showing.
    pub fn tab(&self) -> Tab {
        self.tab
    }

    /// Shows a tab.
    pub fn set_tab(&mut self, tab: Tab) {
        self.tab = tab;
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the settings (saved like an edit in the Settings window).
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// The toasts.
    pub fn notices(&self) -> &Notices {
        &self.notices
    }

    /// Whether a project is being opened.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Applies worker events and runs per-frame housekeeping (called before drawing, and by
    /// eframe also while the window is hidden).
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.poll_workers(ctx);
        self.drain_log(ctx);
        self.apply_theme(ctx);
        self.save_settings_when_idle(ctx);
        self.update_title(ctx);
        if self.loading.is_some() {
            ctx.request_repaint_after(Duration::from_millis(50));
        }
        self.frames += 1;
        if self.exit_after_frames.is_some_and(|n| self.frames >= n) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if self.exit_after_frames.is_some() {
            ctx.request_repaint();
        }
    }

    /// Applies what the shell's workers sent; a worker that died becomes its job's failure.
    fn poll_workers(&mut self, ctx: &egui::Context) {
        let mut polled = Vec::new();
        for (job, worker) in &mut self.workers {
            for p in worker.poll() {
                polled.push(match p {
                    Polled::Event(event) => event,
                    Polled::Died(reason) => job.died(reason),
                });
            }
        }
        self.workers.retain(|(_, w)| w.running());
        for event in polled {
            self.handle_event(event, ctx);
        }
    }

    /// Starts `f` on a one-shot worker named `name` for `job`; `false` (with an error toast
    /// naming `what`) when the thread could not start.
    fn start_job(
        &mut self,
        job: ShellJob,
        what: &str,
        ctx: &egui::Context,
        f: impl FnOnce() -> Event + Send + 'static,
    ) -> bool {
        match Worker::once(job.thread_name(), ctx, f) {
            Ok(worker) => {
                self.workers.push((job, worker));
                true
            }
            Err(e) => {
                self.notices.error(format!("cannot start {what}: {e}"));
                false
            }
        }
    }

    /// Moves logged warnings and errors into the toasts (repeats folded).
    fn drain_log(&mut self, ctx: &egui::Context) {
        let Some(feed) = &mut self.log_feed else {
            return;
        };
        if !self.log_waker_set {
            // Only other threads wake the window: a record logged on this thread may be
            // inside an egui closure that holds the context lock; `ui` checks the queue at
            // the end of the frame instead.
            let (ctx, gui_thread) = (ctx.clone(), std::thread::current().id());
            feed.set_waker(move || {
                if std::thread::current().id() != gui_thread {
                    ctx.request_repaint();
                }
            });
            self.log_waker_set = true;
        }
        if feed.drain_into(&mut self.notices, Instant::now()) {
            ctx.request_repaint();
        }
    }

    /// Draws the window content.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.shortcuts(&ctx);
        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar_ui(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar_ui(ui));
        let mut requests = Vec::new();
        egui::CentralPanel::default().show(ui, |ui| self.central_ui(ui, &mut requests));
        self.help_window(&ctx);
        self.settings_window(&ctx);
        self.toasts_ui(&ctx);
        if self.log_feed.as_ref().is_some_and(LogFeed::pending) {
            ctx.request_repaint(); // logged on this thread during the frame
        }
        for request in requests {
            match request {
                ShellRequest::ShowTab(tab) => self.tab = tab,
                ShellRequest::OpenImage { image_id } => {
                    self.tab = Tab::Review;
                    self.review.open_image(image_id);
                }
                ShellRequest::OpenProject(root) => self.open_project(root, false, Some(&ctx)),
                ShellRequest::ShowSettings => self.show_settings = true,
                ShellRequest::EditedInstances(n) => {
                    if let Some((_, info)) = &mut self.project {
                        info.edited_instances = n;
                    }
                }
            }
        }
    }

    fn central_ui(&mut self, ui: &mut egui::Ui, requests: &mut Vec<ShellRequest>) {
        if self.project.is_none() && self.tab != Tab::Classes {
            self.welcome_ui(ui);
            return;
        }
        let root = self.project.as_ref().map(|(r, _)| r.clone());
        let mut cx = PanelCtx {
            project: root.as_deref(),
            settings: &mut self.settings,
            notices: &mut self.notices,
            requests,
        };
        match self.tab {
            Tab::Classes => self.classes.ui(ui, &mut cx, &mut self.download.picked),
            Tab::Download => self.download.ui(ui, &mut cx),
            Tab::Review => self.review.ui(ui, &mut cx),
            Tab::Train => self.train.ui(ui, &mut cx),
            Tab::Predict => self.predict.ui(ui, &mut cx),
        }
        if self.tab != Tab::Train {
            // A run goes on behind other tabs: keep its events flowing.
            self.train.poll(ui.ctx(), &mut cx);
        }
    }
}

impl Drop for StudioApp {
    fn drop(&mut self) {
        self.flush_settings();
    }
}

impl eframe::App for StudioApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        StudioApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        StudioApp::ui(self, ui);
    }
}
