//! The Train tab's run list: the project's runs with their final metrics (scanned on
//! `train-runs-scan`), a selected run's plots read back on `train-replay`, the export row
//! ([`crate::train::export::export_run`] into `<folder>/<run id>` on `train-export`) and resume / continue.

use std::path::{Path, PathBuf};

use eframe::egui;
use egui_extras::{Column, TableBuilder};

use super::form::labelled_drag;
use super::{Background, RunJob, TrainPanel};
use crate::gui::shared::PanelCtx;
use crate::train::export::export_run;
use crate::train::history::{History, read_history};
use crate::train::runs::{runs_dir, scan_runs};

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
            Background::Runs(scan_runs(&runs))
        });
        if spawned.is_err() {
            self.scanning = false;
        }
    }

    pub(super) fn runs_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
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
            .columns(Column::auto().at_least(48.0), 4)
            .column(Column::auto().at_least(80.0).clip(true))
            .column(Column::remainder().at_least(48.0))
            .header(row_h, |mut header| {
                for h in [
                    "Run",
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
                    let cells = [
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
            self.audit.run_button_ui(ui, cx, selected.as_ref());
        });
    }
}
