//! The studio window (eframe/egui). Only this module imports egui.
//!
//! This first version opens a project and shows its classes and counts; the stage panels
//! (Classes, Download, Review, Train, Predict) plug in here. Project loading runs on a named
//! worker thread and reports over a bounded channel, so the GUI thread never waits on I/O.

pub mod eval_panel;
pub mod image_view;
pub mod predict_panel;
pub mod shared;
pub mod train_panel;

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui;

use crate::dataset::store::{Project, ProjectInfo};

/// Set to a number of frames to close the window after that many (smoke tests under Xvfb).
pub const EXIT_AFTER_FRAMES_ENV: &str = "MASKSTUDIO_EXIT_AFTER_FRAMES";

/// What the project loader reports.
enum Loaded {
    Info {
        root: PathBuf,
        info: Box<ProjectInfo>,
    },
    Failed {
        root: PathBuf,
        error: String,
    },
}

/// The application state.
pub struct StudioApp {
    /// Text of the project path field.
    project_path: String,
    /// The open project and its summary.
    project: Option<(PathBuf, ProjectInfo)>,
    /// Last error shown under the path field.
    error: Option<String>,
    /// Whether a load is running.
    loading: bool,
    events_tx: Sender<Loaded>,
    events_rx: Receiver<Loaded>,
    frames: u64,
    exit_after_frames: Option<u64>,
}

impl StudioApp {
    /// A studio with no project open; `project` is opened at the first frame if given.
    pub fn new(project: Option<PathBuf>) -> Self {
        let (events_tx, events_rx) = bounded(16);
        let mut app = Self {
            project_path: project
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            project: None,
            error: None,
            loading: false,
            events_tx,
            events_rx,
            frames: 0,
            exit_after_frames: std::env::var(EXIT_AFTER_FRAMES_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
        };
        if let Some(project) = project {
            app.open_project(project, None);
        }
        app
    }

    /// The open project's folder and summary.
    pub fn project(&self) -> Option<&(PathBuf, ProjectInfo)> {
        self.project.as_ref()
    }

    /// Starts loading a project on a worker thread.
    fn open_project(&mut self, root: PathBuf, ctx: Option<egui::Context>) {
        self.loading = true;
        self.error = None;
        let tx = self.events_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("project-loader".to_owned())
            .spawn(move || {
                let event = match Project::open(&root).and_then(|p| p.info()) {
                    Ok(info) => Loaded::Info {
                        root,
                        info: Box::new(info),
                    },
                    Err(e) => Loaded::Failed {
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
            self.loading = false;
            self.error = Some(format!("cannot start the project loader: {e}"));
        }
    }

    /// Applies worker events (called before drawing).
    pub fn logic(&mut self, ctx: &egui::Context) {
        while let Ok(event) = self.events_rx.try_recv() {
            self.loading = false;
            match event {
                Loaded::Info { root, info } => {
                    let name = root.file_name().map(|n| n.to_string_lossy().into_owned());
                    let title = format!("Mask Studio — {}", name.unwrap_or_default());
                    ctx.send_viewport_cmd(egui::ViewportCommand::Title(title));
                    self.project = Some((root, *info));
                }
                Loaded::Failed { root, error } => {
                    log::warn!("opening {root:?} failed: {error}");
                    self.error = Some(error);
                }
            }
        }
        if self.loading {
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

    /// Draws the window content.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Mask Studio");
                ui.separator();
                let label = ui.label("Project folder");
                ui.add(egui::TextEdit::singleline(&mut self.project_path).desired_width(360.0))
                    .labelled_by(label.id);
                let open = ui.add_enabled(!self.loading, egui::Button::new("Open project"));
                if open.clicked() && !self.project_path.trim().is_empty() {
                    let root = PathBuf::from(self.project_path.trim());
                    self.open_project(root, Some(ui.ctx().clone()));
                }
                if self.loading {
                    ui.spinner();
                }
            });
            if let Some(error) = &self.error {
                ui.colored_label(ui.visuals().error_fg_color, error);
            }
        });
        egui::CentralPanel::default().show(ui, |ui| match &self.project {
            None => {
                ui.label("Open a project folder, or create one with `maskstudio import --project DIR DATASET`");
            }
            Some((root, info)) => project_summary_ui(ui, root, info),
        });
    }
}

fn project_summary_ui(ui: &mut egui::Ui, root: &std::path::Path, info: &ProjectInfo) {
    ui.heading(root.display().to_string());
    egui::Grid::new("splits").striped(true).show(ui, |ui| {
        ui.strong("Split");
        ui.strong("Images");
        ui.strong("Instances");
        ui.end_row();
        for (split, counts) in &info.splits {
            ui.label(split);
            ui.label(counts.images.to_string());
            ui.label(counts.instances.to_string());
            ui.end_row();
        }
    });
    ui.label(format!(
        "{} edited instances, {} unreviewed images",
        info.edited_instances, info.unreviewed_images
    ));
    ui.separator();
    egui::ScrollArea::vertical().show(ui, |ui| {
        egui::Grid::new("classes").striped(true).show(ui, |ui| {
            ui.strong("Class");
            ui.strong("MID");
            ui.strong("Instances");
            ui.end_row();
            for (class, count) in &info.classes {
                ui.label(&class.name);
                ui.label(class.mid.as_deref().unwrap_or("–"));
                ui.label(count.to_string());
                ui.end_row();
            }
        });
    });
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
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Mask Studio")
            .with_inner_size([1200.0, 800.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Mask Studio",
        options,
        Box::new(|_cc| Ok(Box::new(StudioApp::new(project)))),
    )
    .map_err(|e| anyhow::anyhow!("the studio window failed: {e}"))
}
