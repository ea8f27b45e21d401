//! The Train tab's run list: the project's runs with their engine and final metrics (scanned on
//! `train-runs-scan`), a selected run's plots read back on `train-replay`, the export row on
//! `train-export` (a bundle folder: [`crate::train::export::export_run`] into
//! `<folder>/<run id>`; ONNX / TorchScript: [`crate::train::deploy::export_bundle`] into a file,
//! with the progress row and Cancel) and resume / continue.

use std::path::{Path, PathBuf};

use eframe::egui;
use egui_extras::{Column, TableBuilder};

use super::form::labelled_drag;
use super::tools::{engine_label, format_name};
use super::{Background, RunInfo, RunJob, TrainPanel};
use crate::cancel::CancelToken;
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::PanelCtx;
use crate::train::deploy::{self, DeployFormat};
use crate::train::export::export_run;
use crate::train::history::{History, read_history};
use crate::train::runs::{RunConfig, runs_dir, scan_runs};
use crate::train::torchrun::Engine;

impl TrainPanel {
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
        let torchrun = self
            .runs
            .iter()
            .find(|r| r.dir == run_dir)
            .is_some_and(|r| r.engine == Engine::Torchrun);
        let job = match (torchrun, continue_epochs) {
            (false, extra) => RunJob::Resume(run_dir, extra),
            (true, None) => RunJob::ResumeTorchrun(run_dir),
            (true, Some(_)) => {
                return cx.notices.warn(CONTINUE_TORCHRUN.to_owned());
            }
        };
        self.spawn_run(ctx, cx, job);
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
        self.live_engine = self
            .runs
            .iter()
            .position(|r| r.id == run_id)
            .and_then(|i| self.run_engines.get(i).cloned())
            .unwrap_or_default();
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
    pub(super) fn replay(&mut self, ctx: &egui::Context, run_dir: &Path) {
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

    pub(super) fn scan(&mut self, ctx: &egui::Context, project: &Path) {
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
            let runs = scan_runs(&runs);
            let engines = runs.iter().map(run_engine_label).collect();
            Background::Runs(runs, engines)
        });
        if spawned.is_err() {
            self.scanning = false;
        }
    }

    /// The run list, the export row and resume / continue / audit, under a fixed id: their
    /// widgets keep their ids when the plots above appear (a replay arriving) or go, so a click
    /// named by id (screen readers, kittest's AccessKit clicks) lands in the next frame.
    pub(super) fn runs_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let fixed = egui::UiBuilder::new().scope_id(ui.scope_id().with("train_runs_section"));
        ui.scope_builder(fixed, |ui| self.runs_section_ui(ui, cx));
    }

    fn runs_section_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
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
        let row_h = ui.spacing().interact_size.y;
        TableBuilder::new(ui)
            .id_salt("train_runs")
            .striped(true)
            .max_scroll_height(240.0)
            .column(Column::auto().at_least(120.0))
            .columns(Column::auto().at_least(48.0), 5)
            .column(Column::auto().at_least(80.0).clip(true))
            .column(Column::remainder().at_least(48.0))
            .header(row_h, |mut header| {
                for h in [
                    "Run",
                    "Engine",
                    "Preset",
                    "Epochs",
                    "Steps",
                    "Final loss",
                    "Validation",
                    "Bundle",
                ] {
                    header.col(|ui| {
                        ui.strong(h);
                    });
                }
            })
            .body(|body| {
                // Virtual rows: only the visible ones are laid out.
                body.rows(row_h, self.runs.len(), |mut row| {
                    let r = &self.runs[row.index()];
                    let selected = self.selected_run.as_deref() == Some(r.id.as_str());
                    row.col(|ui| {
                        if ui.selectable_label(selected, &r.id).clicked() {
                            clicked = Some(r.id.clone());
                        }
                    });
                    let val: Vec<String> = r
                        .val_metrics
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.3}"))
                        .collect();
                    let engine = self
                        .run_engines
                        .get(row.index())
                        .cloned()
                        .unwrap_or_else(|| r.engine.label().to_owned());
                    let cells = [
                        engine,
                        r.preset.clone(),
                        r.epochs.map_or_else(|| "-".to_owned(), |e| e.to_string()),
                        r.steps.to_string(),
                        r.final_loss
                            .map_or_else(|| "-".to_owned(), |l| format!("{l:.4}")),
                        if val.is_empty() {
                            "-".to_owned()
                        } else {
                            val.join(", ")
                        },
                        (if r.has_bundle { "yes" } else { "no" }).to_owned(),
                    ];
                    for text in cells {
                        row.col(|ui| {
                            ui.label(text);
                        });
                    }
                });
            });
        if let Some(id) = clicked {
            self.select_run(ui.ctx(), &id);
        }
        let selected = self
            .selected_run
            .as_ref()
            .and_then(|id| self.runs.iter().find(|r| &r.id == id))
            .cloned();
        self.export_ui(ui, cx, selected.as_ref());
        ui.horizontal(|ui| {
            let can = self.run.is_none() && selected.as_ref().is_some_and(|r| r.has_bundle);
            let torchrun = selected
                .as_ref()
                .is_some_and(|r| r.engine == Engine::Torchrun);
            // A torchrun run resumes in torchrun: it needs the venv.
            let venv = if torchrun {
                self.tools.torchrun()
            } else {
                Ok(())
            };
            let resume = ui
                .add_enabled(can && venv.is_ok(), egui::Button::new("Resume run"))
                .on_hover_text(if torchrun {
                    "Continue a stopped torchrun run from its last finished epoch"
                } else {
                    "Continue a stopped run exactly where it stopped"
                });
            let resume = match &venv {
                Err(why) if can => resume.on_disabled_hover_text(why),
                _ => resume,
            };
            if resume.clicked()
                && let Some(run) = &selected
            {
                self.resume_run(ui.ctx(), cx, run.dir.clone(), None);
            }
            labelled_drag(ui, "Extra epochs", &mut self.continue_epochs, 1..=1000, 0.1);
            if ui
                .add_enabled(
                    can && !torchrun,
                    egui::Button::new(format!("Continue {} epochs", self.continue_epochs)),
                )
                .on_hover_text("Extend a run by more epochs with a new schedule over them")
                .on_disabled_hover_text(if torchrun {
                    CONTINUE_TORCHRUN
                } else {
                    "Select a stopped or finished run with a bundle"
                })
                .clicked()
                && let Some(run) = &selected
            {
                self.resume_run(ui.ctx(), cx, run.dir.clone(), Some(self.continue_epochs));
            }
            self.audit.run_button_ui(ui, cx, selected.as_ref());
        });
    }

    /// The export row: the format (a bundle folder, or an ONNX / TorchScript file greyed with
    /// [`DeployFormat::available`]'s reason), the destination, the button, and for a file the
    /// progress row with Cancel while it is written.
    fn export_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, selected: Option<&RunInfo>) {
        ui.horizontal(|ui| {
            ui.label("Export format");
            ui.add_enabled_ui(!self.exporting, |ui| {
                ui.radio_value(&mut self.export_format, None, "Bundle folder")
                    .on_hover_text("The model bundle folder Mask Studio reads (Predict, assist)");
                for format in DeployFormat::ALL {
                    let available = self.tools.format(format);
                    let response = ui.add_enabled(
                        available.is_ok(),
                        egui::RadioButton::new(
                            self.export_format == Some(format),
                            format_name(format),
                        ),
                    );
                    let response = match &available {
                        Ok(()) => response.on_hover_text(
                            "A file for runtimes without Mask Studio, written by torchvision in \
                             the reference Python venv",
                        ),
                        Err(why) => response.on_disabled_hover_text(why),
                    };
                    if response.clicked() && available.is_ok() {
                        self.export_format = Some(format);
                    }
                }
            });
        });
        match self.export_format {
            None => self.export_folder_ui(ui, cx, selected),
            Some(format) => self.export_file_ui(ui, cx, selected, format),
        }
    }

    /// Today's bundle folder export: `<folder>/<run id>`.
    fn export_folder_ui(
        &mut self,
        ui: &mut egui::Ui,
        cx: &mut PanelCtx,
        selected: Option<&RunInfo>,
    ) {
        ui.horizontal(|ui| {
            let label = ui.label("Export to folder");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(280.0))
                .labelled_by(label.id);
            let can = !self.exporting
                && selected.is_some_and(|r| r.has_bundle)
                && !self.export_dir.trim().is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Export model bundle"))
                .clicked()
                && let Some(run) = selected.cloned()
            {
                let dest = PathBuf::from(self.export_dir.trim());
                let spawned = self.spawn_bg("train-export", ui.ctx(), move || {
                    let r = export_run(&run.dir, &dest.join(&run.id))
                        .map(|done| done.out)
                        .map_err(|e| format!("{e:#}"));
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
    }

    /// An ONNX / TorchScript file of the run's bundle ([`deploy::run_bundle`]: refit, else
    /// best, else last), by default `<project>/exports/<run id>.<ext>` until the path is edited.
    fn export_file_ui(
        &mut self,
        ui: &mut egui::Ui,
        cx: &mut PanelCtx,
        selected: Option<&RunInfo>,
        format: DeployFormat,
    ) {
        if !self.export_file_edited
            && !self.exporting
            && let (Some(project), Some(run)) = (cx.project, selected)
        {
            self.export_file = project
                .join(crate::train::runs::EXPORTS_DIR)
                .join(format!("{}.{}", run.id, format.extension()))
                .display()
                .to_string();
        }
        ui.horizontal(|ui| {
            let label = ui.label("Export to file");
            let edit = ui
                .add_enabled(
                    !self.exporting,
                    egui::TextEdit::singleline(&mut self.export_file).desired_width(280.0),
                )
                .labelled_by(label.id);
            if edit.changed() {
                self.export_file_edited = true;
            }
            let available = self.tools.format(format);
            let can = !self.exporting
                && selected.is_some_and(|r| r.has_bundle)
                && !self.export_file.trim().is_empty()
                && available.is_ok();
            let text = match format {
                DeployFormat::Onnx => "Export ONNX file",
                DeployFormat::TorchScript => "Export TorchScript file",
            };
            let button = ui.add_enabled(can, egui::Button::new(text));
            let button = match &available {
                Err(why) => button.on_disabled_hover_text(why),
                Ok(()) => button,
            };
            if button.clicked()
                && let Some(run) = selected.cloned()
            {
                self.start_deploy(ui.ctx(), cx, run, format);
            }
            if selected.is_none() {
                ui.label("Select a run to export its model.");
            }
        });
        if self.exporting
            && let Some(cancel) = &self.deploy_cancel
        {
            ui.horizontal(|ui| {
                progress_row(
                    ui,
                    Progress::Fraction(None),
                    Some(format!("Writing the {} file…", format_name(format))),
                    280.0,
                    Some((cancel, "Cancel export")),
                );
            });
        }
    }

    /// Writes `run`'s bundle as a `format` file to the typed path on `train-export`.
    fn start_deploy(
        &mut self,
        ctx: &egui::Context,
        cx: &mut PanelCtx,
        run: RunInfo,
        format: DeployFormat,
    ) {
        let out = PathBuf::from(self.export_file.trim());
        let cancel = CancelToken::default();
        let token = cancel.clone();
        let spawned = self.spawn_bg("train-export", ctx, move || {
            let r = deploy::run_bundle(&run.dir)
                .and_then(|bundle| {
                    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
                    }
                    deploy::export_bundle(&bundle, format, &out, &token)
                })
                .map_err(|e| format!("{e:#}"));
            Background::Deployed(r)
        });
        match spawned {
            Ok(()) => {
                self.exporting = true;
                self.deploy_cancel = Some(cancel);
            }
            Err(e) => cx.notices.error(format!("cannot start the export: {e}")),
        }
    }
}

/// Why "Continue N epochs" is not offered for a torchrun run.
const CONTINUE_TORCHRUN: &str = "Continuing a torchrun run by more epochs is not supported: \
    Resume run finishes its planned epochs; for more, start a new run (CLI: --init with its bundle)";

/// A scanned run's engine label: torchrun runs read their process count from `config.json`
/// (on the scan worker).
fn run_engine_label(run: &RunInfo) -> String {
    match run.engine {
        Engine::InProcess => engine_label(run.engine, None),
        Engine::Torchrun => {
            let opts = RunConfig::read(&run.dir).ok().and_then(|c| c.torchrun);
            engine_label(run.engine, opts.as_ref())
        }
    }
}
