//! The studio window (eframe/egui). Only this module imports egui.
//!
//! The shell: new/open/recent projects (rfd dialogs on a thread, a path field as fallback), the
//! project name and state in the title, persisted settings with a Settings window, the stage
//! tabs (Classes, Download, Review, Train, Predict), a status bar with running jobs, toasts,
//! a keyboard-shortcut overlay and a first-run screen. Panels are structs with
//! `fn ui(&mut self, ui, cx: &mut PanelCtx)` ([`shared`]); they run their work on named threads
//! and drain bounded channels, so the GUI thread never waits on I/O.

pub mod classes_panel;
pub mod download_panel;
pub mod editor;
pub mod gallery;
pub mod log_toasts;
pub mod model_picker;
pub mod predict_panel;
pub mod progress;
pub mod shared;
pub mod thumbs;
pub mod train;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui;

use crate::dataset::store::{Project, ProjectInfo};

use classes_panel::ClassesPanel;
use download_panel::DownloadPanel;
use gallery::ReviewPanel;
use log_toasts::{LogFeed, LogToasts};
use predict_panel::PredictPanel;
use shared::{
    DeviceSetting, JobView, NoticeLevel, Notices, PanelCtx, Settings, ShellRequest, Tab, Theme,
};
use train::TrainPanel;

/// Set to a number of frames to close the window after that many (smoke tests under Xvfb).
pub const EXIT_AFTER_FRAMES_ENV: &str = "MASKSTUDIO_EXIT_AFTER_FRAMES";
/// Set to a tab name (`classes`, `download`, `review`, `train`, `predict`) to start on it.
pub const TAB_ENV: &str = "MASKSTUDIO_TAB";

/// The tabs in bar order, with their names.
pub const TABS: [(Tab, &str); 5] = [
    (Tab::Classes, "Classes"),
    (Tab::Download, "Download"),
    (Tab::Review, "Review"),
    (Tab::Train, "Train"),
    (Tab::Predict, "Predict"),
];

/// Parses a tab name (case-insensitive).
pub fn parse_tab(name: &str) -> Option<Tab> {
    let name = name.trim();
    TABS.iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(t, _)| *t)
}

/// The keyboard shortcuts (shown by the help overlay).
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("F1 or ?", "show or hide this help"),
    ("Ctrl+O", "open a project (folder dialog)"),
    ("Ctrl+N", "new project (folder dialog)"),
    (
        "Ctrl+1 … Ctrl+5",
        "Classes, Download, Review, Train, Predict",
    ),
    ("Ctrl+,", "settings"),
    ("Esc", "close the image view, help or settings"),
];

/// Creates the offline sample project in `dir` ([`crate::sample`]); reopens it when it exists.
fn create_sample(dir: &Path) -> anyhow::Result<()> {
    if dir.join("project.sqlite").is_file() {
        return Ok(());
    }
    crate::sample::create_sample_project(dir, &mut |_| {})
}

/// How the studio starts.
#[derive(Debug, Clone)]
pub struct StudioOptions {
    /// A project folder to open at start.
    pub project: Option<PathBuf>,
    /// Where settings are read and saved.
    pub settings_path: PathBuf,
    /// The Open Images cache folder.
    pub oi_cache_dir: PathBuf,
    /// The tab to start on (default: Review, which shows the Welcome while no project is open).
    pub start_tab: Option<Tab>,
    /// Warnings and errors logged anywhere, shown as toasts ([`log_toasts::install`]).
    pub log_toasts: Option<LogToasts>,
}

impl StudioOptions {
    /// Defaults from the environment: [`Settings::default_path`] (`MASKSTUDIO_CONFIG`), the
    /// per-user cache's `openimages/`, [`TAB_ENV`], and the log feed when
    /// [`log_toasts::install`] ran.
    pub fn from_env(project: Option<PathBuf>) -> Self {
        Self {
            project,
            settings_path: Settings::default_path(),
            oi_cache_dir: crate::runtime::cache_dir().join("openimages"),
            start_tab: std::env::var(TAB_ENV).ok().and_then(|t| parse_tab(&t)),
            log_toasts: log_toasts::installed(),
        }
    }
}

/// Which folder dialog is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogPurpose {
    Open,
    New,
}

/// What the shell's workers report.
enum Event {
    Loaded {
        root: PathBuf,
        info: Box<ProjectInfo>,
    },
    Failed {
        root: PathBuf,
        error: String,
    },
    Dialog {
        purpose: DialogPurpose,
        path: Option<PathBuf>,
        took: Duration,
    },
    Sample(Result<PathBuf, String>),
    SettingsSaved(Result<(), String>),
}

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
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
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
        let (events_tx, events_rx) = bounded(32);
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
            events_tx,
            events_rx,
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

    /// Starts opening (or with `create`, creating) a project on a worker thread.
    fn open_project(&mut self, root: PathBuf, create: bool, ctx: Option<egui::Context>) {
        self.loading = Some(root.clone());
        let tx = self.events_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("project-loader".to_owned())
            .spawn(move || {
                let opened = if create {
                    Project::create_or_open(&root)
                } else {
                    Project::open(&root)
                };
                let event = match opened.and_then(|p| p.info()) {
                    Ok(info) => Event::Loaded {
                        root,
                        info: Box::new(info),
                    },
                    Err(e) => Event::Failed {
                        root,
                        error: format!("{e:#}"),
                    },
                };
                tx.send(event).ok(); // receiver gone = app closing
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            });
        if let Err(e) = spawned {
            self.loading = None;
            self.notices
                .error(format!("cannot start the project loader: {e}"));
        }
    }

    /// Opens a folder dialog on a thread (rfd blocks until the user answers).
    fn pick_folder(&mut self, purpose: DialogPurpose, ctx: &egui::Context) {
        if self.dialog_open {
            return;
        }
        let (tx, ctx) = (self.events_tx.clone(), ctx.clone());
        let start_dir = self.settings.data_dir.clone();
        let spawned = std::thread::Builder::new()
            .name("folder-dialog".into())
            .spawn(move || {
                let started = Instant::now();
                let title = match purpose {
                    DialogPurpose::Open => "Open a Mask Studio project",
                    DialogPurpose::New => "Folder for the new project",
                };
                let mut dialog = rfd::FileDialog::new().set_title(title);
                if start_dir.is_dir() {
                    dialog = dialog.set_directory(&start_dir);
                }
                let path = dialog.pick_folder();
                tx.send(Event::Dialog {
                    purpose,
                    path,
                    took: started.elapsed(),
                })
                .ok();
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.dialog_open = true,
            Err(e) => self
                .notices
                .error(format!("cannot start the folder dialog: {e}")),
        }
    }

    fn try_sample(&mut self, ctx: &egui::Context) {
        if self.sample_running {
            return;
        }
        let dir = self.settings.data_dir.join("sample");
        let (tx, ctx) = (self.events_tx.clone(), ctx.clone());
        let spawned = std::thread::Builder::new()
            .name("sample-project".into())
            .spawn(move || {
                let result = create_sample(&dir)
                    .map(|()| dir.clone())
                    .map_err(|e| format!("{}: {e:#}", dir.display()));
                tx.send(Event::Sample(result)).ok();
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.sample_running = true,
            Err(e) => self
                .notices
                .error(format!("cannot start the sample project: {e}")),
        }
    }

    /// Applies worker events and runs per-frame housekeeping (called before drawing, and by
    /// eframe also while the window is hidden).
    pub fn logic(&mut self, ctx: &egui::Context) {
        while let Ok(event) = self.events_rx.try_recv() {
            self.handle_event(event, ctx);
        }
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

    fn handle_event(&mut self, event: Event, ctx: &egui::Context) {
        match event {
            Event::Loaded { root, info } => {
                if self.loading.as_ref() == Some(&root) {
                    self.loading = None;
                }
                let reopened = self.project.as_ref().is_some_and(|(r, _)| *r == root);
                if !reopened {
                    self.train.project_opened(crate::sample::is_sample(&info));
                }
                self.project_path = root.display().to_string();
                self.settings.touch_recent(&root);
                self.project = Some((root, *info));
                self.review.refresh();
                if !reopened {
                    self.review.selected_image = None;
                }
            }
            Event::Failed { root, error } => {
                if self.loading.as_ref() == Some(&root) {
                    self.loading = None;
                }
                self.notices
                    .error(format!("Opening {} failed: {error}", root.display()));
            }
            Event::Dialog {
                purpose,
                path,
                took,
            } => {
                self.dialog_open = false;
                match path {
                    Some(path) => self.open_project(path, purpose == DialogPurpose::New, Some(ctx.clone())),
                    None if took < Duration::from_millis(150) => self.notices.warn(
                        "No folder dialog is available here (no desktop portal or zenity): type the folder in the Project folder field, then press Open or Create",
                    ),
                    None => {}
                }
            }
            Event::Sample(result) => {
                self.sample_running = false;
                match result {
                    Ok(dir) => self.open_project(dir, false, Some(ctx.clone())),
                    Err(e) => self.notices.error(format!("The sample project: {e}")),
                }
            }
            Event::SettingsSaved(Err(e)) => {
                self.notices.error(format!("Saving settings failed: {e}"))
            }
            Event::SettingsSaved(Ok(())) => {}
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

    fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.applied_theme == Some(self.settings.theme) {
            return;
        }
        self.applied_theme = Some(self.settings.theme);
        ctx.set_theme(match self.settings.theme {
            Theme::System => egui::ThemePreference::System,
            Theme::Dark => egui::ThemePreference::Dark,
            Theme::Light => egui::ThemePreference::Light,
        });
    }

    /// Saves changed settings on a thread, once they have been still for half a second.
    fn save_settings_when_idle(&mut self, ctx: &egui::Context) {
        if self.settings == self.saved_settings {
            self.settings_changed_at = None;
            return;
        }
        let changed_at = *self.settings_changed_at.get_or_insert_with(Instant::now);
        let wait = Duration::from_millis(500).saturating_sub(changed_at.elapsed());
        if !wait.is_zero() {
            ctx.request_repaint_after(wait);
            return;
        }
        self.saved_settings = self.settings.clone();
        self.settings_changed_at = None;
        if !self.settings_writable {
            return;
        }
        self.settings_generation += 1;
        let (settings, path, tx, generation, written) = (
            self.settings.clone(),
            self.settings_path.clone(),
            self.events_tx.clone(),
            self.settings_generation,
            self.settings_written.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("settings-save".into())
            .spawn(move || {
                let result = save_settings_in_order(&settings, &path, generation, &written)
                    .map_err(|e| format!("{e:#}"));
                tx.send(Event::SettingsSaved(result)).ok();
            });
        if let Err(e) = spawned {
            self.notices.error(format!("cannot save settings: {e}"));
        }
    }

    /// Writes changed settings now, on this thread: closing the window right after a change
    /// (a project opened, a threshold moved) must not lose it to the half-second debounce.
    /// Called when the app is dropped (eframe drops it on exit).
    pub fn flush_settings(&mut self) {
        if self.settings == self.saved_settings || !self.settings_writable {
            return;
        }
        self.saved_settings = self.settings.clone();
        self.settings_changed_at = None;
        self.settings_generation += 1;
        if let Err(e) = save_settings_in_order(
            &self.settings,
            &self.settings_path,
            self.settings_generation,
            &self.settings_written,
        ) {
            log::error!("saving settings on exit: {e:#}");
        }
    }

    fn jobs(&self) -> Vec<JobView> {
        let mut jobs: Vec<JobView> = [self.classes.job_view(), self.download.job_view()]
            .into_iter()
            .flatten()
            .collect();
        jobs.extend(self.train.jobs());
        jobs.extend(self.predict.jobs());
        jobs
    }

    fn update_title(&mut self, ctx: &egui::Context) {
        let mut title = String::from("Mask Studio");
        if let Some((root, info)) = &self.project {
            let name = root.file_name().map_or_else(
                || root.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let images: u64 = info.splits.values().map(|s| s.images).sum();
            title.push_str(&format!(
                " — {name} ({images} images, {} unreviewed)",
                info.unreviewed_images
            ));
        } else if let Some(root) = &self.loading {
            title.push_str(&format!(" — opening {}", root.display()));
        }
        if let Some(job) = self.jobs().first() {
            match job.fraction {
                Some(f) => title.push_str(&format!(" — {} {:.0} %", job.name, f * 100.0)),
                None => title.push_str(&format!(" — {}…", job.name)),
            }
        }
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, Modifiers};
        let typing = ctx.egui_wants_keyboard_input();
        let (help, open, new, settings, escape, tab) = ctx.input_mut(|i| {
            let question = !typing
                && (i.consume_key(Modifiers::NONE, Key::Questionmark)
                    || i.consume_key(Modifiers::SHIFT, Key::Questionmark)
                    || i.events
                        .iter()
                        .any(|e| matches!(e, egui::Event::Text(t) if t == "?")));
            let help = i.consume_key(Modifiers::NONE, Key::F1) || question;
            let open = i.consume_key(Modifiers::COMMAND, Key::O);
            let new = i.consume_key(Modifiers::COMMAND, Key::N);
            let settings = i.consume_key(Modifiers::COMMAND, Key::Comma);
            let escape = (self.show_help || self.show_settings)
                && i.consume_key(Modifiers::NONE, Key::Escape);
            let keys = [Key::Num1, Key::Num2, Key::Num3, Key::Num4, Key::Num5];
            let tab = keys
                .iter()
                .position(|k| i.consume_key(Modifiers::COMMAND, *k))
                .map(|n| TABS[n].0);
            (help, open, new, settings, escape, tab)
        });
        if help {
            self.show_help = !self.show_help;
        }
        if open {
            self.pick_folder(DialogPurpose::Open, ctx);
        }
        if new {
            self.pick_folder(DialogPurpose::New, ctx);
        }
        if settings {
            self.show_settings = !self.show_settings;
        }
        if escape {
            self.show_help = false;
            self.show_settings = false;
        }
        if let Some(tab) = tab {
            self.tab = tab;
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
                ShellRequest::OpenProject(root) => {
                    self.open_project(root, false, Some(ctx.clone()))
                }
                ShellRequest::ShowSettings => self.show_settings = true,
                ShellRequest::EditedInstances(n) => {
                    if let Some((_, info)) = &mut self.project {
                        info.edited_instances = n;
                    }
                }
            }
        }
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.heading("Mask Studio");
            ui.separator();
            if ui.button("New project…").on_hover_text("Ctrl+N").clicked() {
                self.pick_folder(DialogPurpose::New, ui.ctx());
            }
            if ui.button("Open project…").on_hover_text("Ctrl+O").clicked() {
                self.pick_folder(DialogPurpose::Open, ui.ctx());
            }
            ui.menu_button("Recent", |ui| {
                if self.settings.recent_projects.is_empty() {
                    ui.weak("no recent projects");
                }
                let mut chosen = None;
                for p in &self.settings.recent_projects {
                    if ui.button(p.display().to_string()).clicked() {
                        chosen = Some(p.clone());
                    }
                }
                if let Some(p) = chosen {
                    self.open_project(p, false, Some(ui.ctx().clone()));
                    ui.close();
                }
            });
            ui.separator();
            let label = ui.label("Project folder");
            let field = ui
                .add(egui::TextEdit::singleline(&mut self.project_path).desired_width(300.0))
                .labelled_by(label.id);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let path = self.project_path.trim().to_owned();
            let busy = self.loading.is_some();
            if (ui
                .add_enabled(!busy && !path.is_empty(), egui::Button::new("Open"))
                .on_hover_text("Open the project in this folder")
                .clicked()
                || (enter && !path.is_empty()))
                && !busy
            {
                self.open_project(PathBuf::from(&path), false, Some(ui.ctx().clone()));
            }
            if ui
                .add_enabled(!busy && !path.is_empty(), egui::Button::new("Create"))
                .on_hover_text("Create a new project in this folder (or open it if it is one)")
                .clicked()
            {
                self.open_project(PathBuf::from(&path), true, Some(ui.ctx().clone()));
            }
            if busy {
                ui.spinner();
            }
            ui.separator();
            if ui.button("Settings").on_hover_text("Ctrl+,").clicked() {
                self.show_settings = !self.show_settings;
            }
            if ui.button("Help").on_hover_text("F1").clicked() {
                self.show_help = !self.show_help;
            }
        });
        ui.horizontal(|ui| {
            for (tab, name) in TABS {
                if ui.selectable_label(self.tab == tab, name).clicked() {
                    self.tab = tab;
                }
            }
        });
    }

    fn status_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            match &self.project {
                Some((root, info)) => {
                    let images: u64 = info.splits.values().map(|s| s.images).sum();
                    let instances: u64 = info.splits.values().map(|s| s.instances).sum();
                    ui.label(format!(
                        "{} · {images} images · {instances} instances · {} classes · {} edited",
                        root.display(),
                        info.classes.len(),
                        info.edited_instances
                    ));
                }
                None => {
                    ui.weak("No project open");
                }
            }
            for job in self.jobs() {
                ui.separator();
                ui.label(&job.name);
                let bar = egui::ProgressBar::new(job.fraction.unwrap_or(0.0))
                    .desired_width(160.0)
                    .text(job.text.clone())
                    .animate(job.fraction.is_none());
                ui.add(bar);
                if let Some(cancel) = &job.cancel
                    && ui
                        .small_button("Cancel")
                        .on_hover_text(format!("Cancel {}", job.name))
                        .clicked()
                {
                    cancel.cancel();
                }
            }
        });
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

    fn welcome_ui(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(40.0);
            ui.heading("Welcome to Mask Studio");
            ui.label("Pick Open Images classes, review their masks, train a Mask R-CNN and try it on your images.");
            ui.add_space(16.0);
            if ui.button("New project").clicked() {
                self.pick_folder(DialogPurpose::New, ui.ctx());
            }
            if ui.button("Open project").clicked() {
                self.pick_folder(DialogPurpose::Open, ui.ctx());
            }
            let sample = ui.add_enabled(!self.sample_running, egui::Button::new("Try the sample"));
            if sample.clicked() {
                self.try_sample(ui.ctx());
            }
            if self.sample_running {
                ui.spinner();
            }
            if ui
                .button("Browse Open Images classes")
                .on_hover_text(
                    "Search and browse the Open Images classes (offline too); downloading needs \
                     a project and the network",
                )
                .clicked()
            {
                self.tab = Tab::Classes;
            }
            ui.add_space(8.0);
            ui.weak("No dialog? Type a folder in the Project folder field above and press Open or Create.");
            if !self.settings.recent_projects.is_empty() {
                ui.add_space(16.0);
                ui.strong("Recent projects");
                let mut chosen = None;
                for p in &self.settings.recent_projects {
                    if ui.link(p.display().to_string()).clicked() {
                        chosen = Some(p.clone());
                    }
                }
                if let Some(p) = chosen {
                    self.open_project(p, false, Some(ui.ctx().clone()));
                }
            }
        });
    }

    fn help_window(&mut self, ctx: &egui::Context) {
        let mut open = self.show_help;
        egui::Window::new("Keyboard shortcuts")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                    for (keys, what) in SHORTCUTS {
                        ui.strong(*keys);
                        ui.label(*what);
                        ui.end_row();
                    }
                    ui.end_row();
                    ui.strong("Review image view");
                    ui.end_row();
                    for (keys, what) in editor::shortcuts() {
                        ui.strong(*keys);
                        ui.label(*what);
                        ui.end_row();
                    }
                });
            });
        self.show_help &= open;
    }

    fn settings_window(&mut self, ctx: &egui::Context) {
        let mut open = self.show_settings;
        let s = &mut self.settings;
        egui::Window::new("Settings")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                egui::Grid::new("settings_grid")
                    .num_columns(2)
                    .spacing([12.0, 6.0])
                    .show(ui, |ui| {
                        let mut data_dir = s.data_dir.display().to_string();
                        let label = ui.label("Data folder");
                        if ui
                            .add(egui::TextEdit::singleline(&mut data_dir).desired_width(320.0))
                            .labelled_by(label.id)
                            .changed()
                        {
                            s.data_dir = PathBuf::from(data_dir);
                        }
                        ui.end_row();
                        let label = ui.label("Images mirror URL");
                        ui.add(
                            egui::TextEdit::singleline(&mut s.images_base_url)
                                .hint_text("https://open-images-dataset.s3.amazonaws.com")
                                .desired_width(320.0),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                        let label = ui.label("Annotations mirror URL");
                        ui.add(
                            egui::TextEdit::singleline(&mut s.annotations_base_url)
                                .hint_text("https://storage.googleapis.com/openimages")
                                .desired_width(320.0),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                        ui.label("Device");
                        egui::ComboBox::from_id_salt("device")
                            .selected_text(s.device.as_str())
                            .show_ui(ui, |ui| {
                                for d in
                                    [DeviceSetting::Auto, DeviceSetting::Cpu, DeviceSetting::Cuda]
                                {
                                    ui.selectable_value(&mut s.device, d, d.as_str());
                                }
                            });
                        ui.end_row();
                        let label = ui.label("Score threshold");
                        ui.add(egui::Slider::new(&mut s.score_threshold, 0.0..=1.0))
                            .labelled_by(label.id);
                        ui.end_row();
                        let label = ui.label("Mask threshold");
                        ui.add(egui::Slider::new(&mut s.mask_threshold, 0.0..=1.0))
                            .labelled_by(label.id);
                        ui.end_row();
                        ui.label("Theme");
                        ui.horizontal(|ui| {
                            ui.selectable_value(&mut s.theme, Theme::System, "System");
                            ui.selectable_value(&mut s.theme, Theme::Dark, "Dark");
                            ui.selectable_value(&mut s.theme, Theme::Light, "Light");
                        });
                        ui.end_row();
                    });
                ui.label(format!(
                    "Weights folder: {}",
                    crate::runtime::weights_dir().display()
                ));
                ui.label(crate::train::init::coco_status_line());
                ui.weak(format!("Saved to {}", self.settings_path.display()));
            });
        self.show_settings &= open;
    }

    fn toasts_ui(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        self.notices
            .items
            .retain(|n| n.level == NoticeLevel::Error || now.duration_since(n.at) < Notices::TTL);
        if self.notices.items.is_empty() {
            return;
        }
        if self
            .notices
            .items
            .iter()
            .any(|n| n.level != NoticeLevel::Error)
        {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                ui.set_max_width(420.0);
                for (i, n) in self.notices.items.iter().enumerate().rev().take(5) {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.horizontal(|ui| {
                            let (icon, color) = match n.level {
                                NoticeLevel::Info => ("Info", ui.visuals().text_color()),
                                NoticeLevel::Warning => ("Warning", ui.visuals().warn_fg_color),
                                NoticeLevel::Error => ("Error", ui.visuals().error_fg_color),
                            };
                            ui.colored_label(color, icon);
                            ui.add(egui::Label::new(&n.text).wrap());
                            if ui.small_button("Dismiss").clicked() {
                                dismiss = Some(i);
                            }
                        });
                    });
                }
            });
        if let Some(i) = dismiss {
            self.notices.items.remove(i);
        }
    }
}

/// Saves `settings` unless a later generation was written already (background saves may
/// finish out of order; the flush on exit is always the latest).
fn save_settings_in_order(
    settings: &Settings,
    path: &Path,
    generation: u64,
    written: &Mutex<u64>,
) -> anyhow::Result<()> {
    let mut last = written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *last >= generation {
        return Ok(());
    }
    settings.save(path)?;
    *last = generation;
    Ok(())
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

/// Opens the studio window and blocks until it is closed.
pub fn run(project: Option<PathBuf>) -> anyhow::Result<()> {
    run_with(StudioOptions::from_env(project))
}

/// Opens the studio window with explicit options and blocks until it is closed.
pub fn run_with(options: StudioOptions) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default();
    // The app icon (assets/maskstudio.svg rendered at 256 px); a bad PNG only loses the icon.
    match eframe::icon_data::from_png_bytes(include_bytes!("../../assets/maskstudio-256.png")) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(e) => log::warn!("the window icon: {e}"),
    }
    let native = eframe::NativeOptions {
        viewport: viewport
            .with_title("Mask Studio")
            .with_app_id("maskstudio")
            .with_inner_size([1200.0, 800.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Mask Studio",
        native,
        Box::new(|_cc| Ok(Box::new(StudioApp::with_options(options)))),
    )
    .map_err(|e| anyhow::anyhow!("the studio window failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_names_and_sample_stub() {
        assert_eq!(parse_tab("review"), Some(Tab::Review));
        assert_eq!(parse_tab(" Predict "), Some(Tab::Predict));
        assert_eq!(parse_tab("gallery"), None);
        let err = create_sample(Path::new("/proc/maskstudio-sample")).unwrap_err();
        assert!(err.to_string().contains("maskstudio-sample"), "{err:#}");
    }
}
