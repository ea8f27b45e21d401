//! The Download tab: the request (classes picked in Classes, splits, max samples, seed, only
//! matching instances), start/cancel, one progress bar per phase with bytes and ETA, the list
//! of what was left out, and the Open Images attribution and licence notice.
//!
//! The download runs [`crate::openimages::download`] on a named thread into the open project;
//! its progress events come back over a bounded channel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui;

use crate::cancel::CancelToken;
use crate::dataset::store::Project;
use crate::openimages::cli::human_bytes;
use crate::openimages::{DownloadEvent, DownloadRequest, DownloadSummary, Phase, Split, download};

use super::progress::{Progress, cancel_button, progress_bar};
use super::shared::{
    JobView, PanelCtx, Picked, Settings, ShellRequest, Tab, picked_remove_buttons,
};
use super::worker::Worker;

/// The phases shown, in order.
const PHASES: [Phase; 5] = [
    Phase::Catalogue,
    Phase::Index,
    Phase::Metadata,
    Phase::Masks,
    Phase::Images,
];

/// Progress of one phase.
#[derive(Debug, Clone)]
pub struct PhaseProgress {
    /// What the phase does.
    pub message: String,
    /// Done (bytes for index/metadata, items for masks/images).
    pub done: u64,
    /// Total (0 = unknown).
    pub total: u64,
    /// Bytes transferred in the phase.
    pub bytes: u64,
    /// When the phase started.
    pub started: Instant,
    /// When the last event came.
    pub updated: Instant,
}

impl PhaseProgress {
    fn new(message: String) -> Self {
        let now = Instant::now();
        Self {
            message,
            done: 0,
            total: 0,
            bytes: 0,
            started: now,
            updated: now,
        }
    }

    /// 0..=1 when the total is known.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f64 / self.total as f64).min(1.0) as f32)
    }

    /// Remaining time from the rate so far.
    pub fn eta(&self) -> Option<Duration> {
        if self.done == 0 || self.total <= self.done {
            return None;
        }
        let spent = self.updated.duration_since(self.started).as_secs_f64();
        let left = spent / self.done as f64 * (self.total - self.done) as f64;
        left.is_finite().then(|| Duration::from_secs_f64(left))
    }
}

enum Msg {
    Event(DownloadEvent),
    Done(Result<DownloadSummary, String>),
}

struct Running {
    cancel: CancelToken,
    started: Instant,
    project: PathBuf,
}

/// The Download panel.
pub struct DownloadPanel {
    /// Classes to download (filled from the Classes tab).
    pub picked: Picked,
    oi_cache: PathBuf,
    splits: [bool; 3],
    limit: bool,
    max_samples: u32,
    seed: u64,
    only_matching: bool,
    running: Option<Running>,
    /// Progress per phase of the current or last run.
    pub phases: BTreeMap<Phase, PhaseProgress>,
    current: Option<Phase>,
    warnings: Vec<String>,
    summary: Option<DownloadSummary>,
    error: Option<String>,
    /// The `oi-download` thread (it owns the only sender; `Done` ends it).
    worker: Option<Worker<Msg>>,
}

impl DownloadPanel {
    /// A panel downloading through the Open Images cache at `oi_cache`.
    pub fn new(oi_cache: PathBuf) -> Self {
        Self {
            picked: Picked::new(),
            oi_cache,
            splits: [true, false, false],
            limit: true,
            max_samples: 100,
            seed: 0,
            only_matching: true,
            running: None,
            phases: BTreeMap::new(),
            current: None,
            warnings: Vec::new(),
            summary: None,
            error: None,
            worker: None,
        }
    }

    /// Whether a download runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The summary of the last finished run.
    pub fn summary(&self) -> Option<&DownloadSummary> {
        self.summary.as_ref()
    }

    /// The error of the last run, if it failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The request the form describes.
    pub fn request(&self) -> DownloadRequest {
        DownloadRequest {
            classes: self.picked.keys().cloned().collect(),
            splits: Split::ALL
                .iter()
                .zip(self.splits)
                .filter(|(_, on)| *on)
                .map(|(s, _)| *s)
                .collect(),
            max_samples: self.limit.then_some(self.max_samples.max(1) as usize),
            seed: self.seed,
            only_matching: self.only_matching,
            ..Default::default()
        }
    }

    /// The status-bar entry while running.
    pub fn job_view(&self) -> Option<JobView> {
        let run = self.running.as_ref()?;
        let phase = self
            .current
            .and_then(|p| self.phases.get(&p).map(|pp| (p, pp)));
        Some(JobView {
            name: "Download".into(),
            fraction: phase.and_then(|(_, p)| p.fraction()),
            text: match phase {
                Some((p, pp)) => format!("{}: {}", p.as_str(), progress_text(p, pp)),
                None => format!("starting ({:.0} s)", run.started.elapsed().as_secs_f32()),
            },
            cancel: Some(run.cancel.clone()),
        })
    }

    fn start(&mut self, project: &Path, settings: &Settings, ctx: &egui::Context) {
        let req = self.request();
        let mut cfg = settings.oi_config(&self.oi_cache);
        cfg.workers = 8;
        let cancel = CancelToken::default();
        let (token, root) = (cancel.clone(), project.to_path_buf());
        let terminal = |m: &Msg| matches!(m, Msg::Done(_));
        let spawned = Worker::spawn("oi-download", ctx, 256, terminal, move |tx| {
            let events = |e: DownloadEvent| {
                // Progress can be dropped when the GUI lags (the next one supersedes it);
                // phase changes and warnings are always delivered.
                match e {
                    DownloadEvent::Progress { .. } => {
                        tx.try_send(Msg::Event(e));
                    }
                    _ => {
                        if matches!(e, DownloadEvent::Phase { .. }) {
                            crate::fault::hit("download");
                        }
                        if !tx.send(Msg::Event(e)) {
                            token.cancel();
                        }
                    }
                }
            };
            let result = Project::create_or_open(&root)
                .map_err(|e| format!("{}: {e}", root.display()))
                .and_then(|mut project| {
                    download(&req, &mut project, &cfg, &token, &events).map_err(|e| format!("{e}"))
                });
            tx.send(Msg::Done(result));
        });
        match spawned {
            Ok(worker) => {
                self.worker = Some(worker);
                self.running = Some(Running {
                    cancel,
                    started: Instant::now(),
                    project: project.to_path_buf(),
                });
                self.phases.clear();
                self.current = None;
                self.warnings.clear();
                self.summary = None;
                self.error = None;
            }
            Err(e) => self.error = Some(format!("cannot start the download: {e}")),
        }
    }

    fn drain(&mut self, cx: &mut PanelCtx) {
        // A dead thread: the run failed; what it imported stays in the project.
        for msg in Worker::drain(&mut self.worker, |why| Msg::Done(Err(why))) {
            match msg {
                Msg::Event(DownloadEvent::Phase { phase, message }) => {
                    self.current = Some(phase);
                    self.phases.insert(phase, PhaseProgress::new(message));
                }
                Msg::Event(DownloadEvent::Progress {
                    phase,
                    done,
                    total,
                    bytes,
                }) => {
                    self.current = Some(phase);
                    let p = self
                        .phases
                        .entry(phase)
                        .or_insert_with(|| PhaseProgress::new(String::new()));
                    p.done = done;
                    p.total = total;
                    p.bytes = bytes;
                    p.updated = Instant::now();
                }
                Msg::Event(DownloadEvent::Warning(w)) => {
                    cx.notices.warn(format!("Download: {w}"));
                    self.warnings.push(w);
                }
                Msg::Done(result) => {
                    let run = self.running.take();
                    match result {
                        Ok(s) => {
                            let text = format!(
                                "Download {}: {} images and {} instances added ({} already present, {} left out)",
                                if s.cancelled { "cancelled" } else { "finished" },
                                s.images_added,
                                s.instances_added,
                                s.already_present,
                                s.failures.len()
                            );
                            if s.failures.is_empty() {
                                cx.notices.info(text);
                            } else {
                                cx.notices.warn(text);
                            }
                            self.summary = Some(s);
                        }
                        Err(e) => {
                            cx.notices.error(format!("Download failed: {e}"));
                            self.error = Some(e);
                        }
                    }
                    // Reload the project so counts and the gallery show what arrived.
                    if let Some(run) = run {
                        cx.requests.push(ShellRequest::OpenProject(run.project));
                    }
                }
            }
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        self.drain(cx);
        let running = self.running.is_some();
        egui::ScrollArea::vertical()
            .id_salt("download_panel")
            .auto_shrink([false, false])
            .show(ui, |ui| {
                ui.heading("Download from Open Images");
                self.request_ui(ui, cx, running);
                ui.separator();
                self.progress_ui(ui, cx);
                ui.separator();
                attribution_ui(ui);
            });
    }

    fn request_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, running: bool) {
        ui.add_enabled_ui(!running, |ui| {
            egui::Grid::new("download_request")
                .num_columns(2)
                .spacing([12.0, 6.0])
                .show(ui, |ui| {
                    ui.label("Classes");
                    ui.horizontal_wrapped(|ui| {
                        if self.picked.is_empty() {
                            ui.weak("none yet");
                        }
                        picked_remove_buttons(ui, &mut self.picked, "remove");
                        if ui.button("Pick classes…").clicked() {
                            cx.requests.push(ShellRequest::ShowTab(Tab::Classes));
                        }
                    });
                    ui.end_row();

                    ui.label("Splits");
                    ui.horizontal(|ui| {
                        for (i, split) in Split::ALL.iter().enumerate() {
                            ui.checkbox(&mut self.splits[i], split.as_str());
                        }
                    });
                    ui.end_row();

                    let label = ui.label("Max images per class and split");
                    ui.horizontal(|ui| {
                        ui.checkbox(&mut self.limit, "Limit");
                        ui.add_enabled(
                            self.limit,
                            egui::DragValue::new(&mut self.max_samples).range(1..=100_000),
                        )
                        .labelled_by(label.id);
                    });
                    ui.end_row();

                    let label = ui.label("Seed");
                    ui.add(egui::DragValue::new(&mut self.seed))
                        .labelled_by(label.id);
                    ui.end_row();

                    ui.label("Instances");
                    ui.checkbox(
                        &mut self.only_matching,
                        "Only the requested classes (otherwise every mask of each image)",
                    );
                    ui.end_row();
                });
        });
        ui.horizontal(|ui| {
            let ready =
                cx.project.is_some() && !self.picked.is_empty() && self.splits.iter().any(|s| *s);
            if let Some(run) = &self.running {
                ui.spinner();
                ui.label(format!(
                    "downloading ({:.0} s)",
                    run.started.elapsed().as_secs_f32()
                ));
                cancel_button(ui, &run.cancel, "Cancel download");
            } else {
                let start = ui.add_enabled(ready, egui::Button::new("Start download"));
                if start.clicked()
                    && let Some(project) = cx.project
                {
                    self.start(project, cx.settings, ui.ctx());
                }
                if cx.project.is_none() {
                    ui.weak("open or create a project first");
                } else if self.picked.is_empty() {
                    ui.weak("pick classes in the Classes tab");
                }
            }
        });
    }

    fn progress_ui(&mut self, ui: &mut egui::Ui, _cx: &mut PanelCtx) {
        if self.phases.is_empty() && self.summary.is_none() && self.error.is_none() {
            ui.weak("Progress appears here when a download starts.");
            return;
        }
        egui::Grid::new("download_phases")
            .num_columns(3)
            .spacing([12.0, 4.0])
            .show(ui, |ui| {
                for phase in PHASES {
                    let Some(p) = self.phases.get(&phase) else {
                        continue;
                    };
                    ui.label(phase.as_str());
                    let finished = self.current.is_some_and(|c| c > phase)
                        || (self.running.is_none() && self.error.is_none());
                    let fraction = if finished {
                        1.0
                    } else {
                        p.fraction().unwrap_or(0.0)
                    };
                    let text = Some(progress_text(phase, p));
                    progress_bar(ui, Progress::Fraction(Some(fraction)), text, Some(320.0));
                    ui.weak(&p.message);
                    ui.end_row();
                }
            });
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, format!("Failed: {e}"));
        }
        if let Some(s) = &self.summary {
            ui.label(format!(
                "{}: {} selected, {} already in the project, {} images and {} instances added; {} transferred",
                if s.cancelled { "Cancelled" } else { "Finished" },
                s.selected,
                s.already_present,
                s.images_added,
                s.instances_added,
                human_bytes(s.bytes.total())
            ));
            if s.cancelled {
                ui.weak("What was committed stays; start the same request again to resume.");
            }
            if !s.failures.is_empty() {
                egui::CollapsingHeader::new(format!("Left out ({})", s.failures.len()))
                    .default_open(true)
                    .show(ui, |ui| {
                        egui::ScrollArea::vertical()
                            .id_salt("download_failures")
                            .max_height(200.0)
                            .show(ui, |ui| {
                                for f in &s.failures {
                                    ui.label(format!(
                                        "{} — {}: {}",
                                        f.id,
                                        f.kind.as_str(),
                                        f.message
                                    ));
                                }
                            });
                    });
            }
        }
        if !self.warnings.is_empty() {
            egui::CollapsingHeader::new(format!("Warnings ({})", self.warnings.len())).show(
                ui,
                |ui| {
                    for w in &self.warnings {
                        ui.label(w);
                    }
                },
            );
        }
    }
}

fn progress_text(phase: Phase, p: &PhaseProgress) -> String {
    let eta = p
        .eta()
        .map(|d| format!(", ETA {}", fmt_duration(d)))
        .unwrap_or_default();
    match phase {
        Phase::Masks | Phase::Images => {
            if p.total > 0 {
                format!("{}/{} · {}{eta}", p.done, p.total, human_bytes(p.bytes))
            } else {
                format!("{} · {}", p.done, human_bytes(p.bytes))
            }
        }
        _ => {
            if p.total > 0 {
                format!("{} of {}{eta}", human_bytes(p.done), human_bytes(p.total))
            } else {
                human_bytes(p.done)
            }
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn attribution_ui(ui: &mut egui::Ui) {
    ui.strong("Attribution and licences");
    ui.label(
        "Open Images annotations (class lists, hierarchy, segmentation masks) are © Google LLC \
         and licensed under CC BY 4.0. The images are listed as licensed under CC BY 2.0 by \
         their Flickr authors; no representation is made that they are, so check each image's \
         licence before you use it. Each downloaded image keeps its author, title, licence and \
         original URL (shown in Review and written by the exporters).",
    );
    ui.hyperlink_to(
        "Open Images dataset and licence",
        "https://storage.googleapis.com/openimages/web/factsfigures_v7.html",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_and_text() {
        let mut p = PhaseProgress::new("images".into());
        assert_eq!(p.eta(), None);
        p.done = 25;
        p.total = 100;
        p.started = p.updated - Duration::from_secs(10);
        let eta = p.eta().unwrap().as_secs_f64();
        assert!((eta - 30.0).abs() < 1e-6, "{eta}");
        assert_eq!(p.fraction(), Some(0.25));
        p.bytes = 3 * 1024 * 1024;
        assert_eq!(
            progress_text(Phase::Images, &p),
            "25/100 · 3.0 MiB, ETA 30s"
        );
        assert_eq!(fmt_duration(Duration::from_secs(3725)), "1h02m");
        let mut s = Settings::default();
        let cfg = s.oi_config(Path::new("/tmp/c"));
        assert!(cfg.images_base.starts_with("http"));
        s.images_base_url = " http://127.0.0.1:9/s3 ".into();
        s.annotations_base_url = "http://127.0.0.1:9/gcs".into();
        let cfg = s.oi_config(Path::new("/tmp/c"));
        assert_eq!(cfg.images_base, "http://127.0.0.1:9/s3");
        assert_eq!(cfg.gcs_base, "http://127.0.0.1:9/gcs");
    }
}
