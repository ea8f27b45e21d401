//! Evaluate section (inside the Train tab): a bundle (one of the project's runs or exports from
//! the [`crate::gui::model_picker`], or any folder) on a project split, evaluated on the `eval-run` thread with [`crate::eval::per_image::evaluate_with_errors`]:
//! per-class AP next to instance counts, precision-recall curves, and the images with the most
//! false positives / negatives, each opening in Review.

use std::path::{Path, PathBuf};

use eframe::egui;
use egui_extras::{Column, TableBuilder};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::cancel::CancelToken;
use crate::eval::coco_eval::{EvalResult, IouType};
use crate::eval::per_image::{EvalReport, evaluate_with_errors};
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::{JobView, PanelCtx, ShellRequest};
use crate::gui::worker::{Polled, Worker};
use crate::train::runs::RunInfo;

/// Errors are counted at this mask IoU.
pub const ERROR_IOU: f64 = 0.5;
/// How many of the worst images are listed.
pub const WORST_IMAGES: usize = 30;

enum Msg {
    Progress(usize, usize),
    Done(Result<Box<EvalReport>, String>),
}

struct Job {
    /// The `eval-run` thread; `Done` ends it, a panic or a closed channel fails it.
    worker: Worker<Msg>,
    cancel: CancelToken,
    done: usize,
    total: usize,
    /// The project evaluated: a report for another project than the open one is dropped.
    project: PathBuf,
}

/// The Evaluate section.
pub struct EvalPanel {
    /// The bundle folder in the picker's path field.
    bundle_path: String,
    /// The project's models, "Browse…" and the path field ("Bundle to evaluate").
    picker: ModelPicker,
    /// The Train tab's run list as last seen (id, has a bundle, steps): when it changes, the
    /// picker lists the project again.
    runs_seen: Vec<(String, bool, usize)>,
    split: Option<String>,
    job: Option<Job>,
    report: Option<EvalReport>,
    /// The project `report` belongs to (its worst-image links name that project's images).
    report_project: Option<PathBuf>,
    curve_iou: IouType,
    curve_at_75: bool,
}

impl Default for EvalPanel {
    fn default() -> Self {
        Self {
            bundle_path: String::new(),
            picker: ModelPicker::new(Purpose::Eval, "Bundle to evaluate").with_field_width(260.0),
            runs_seen: Vec::new(),
            split: None,
            job: None,
            report: None,
            report_project: None,
            curve_iou: IouType::Segm,
            curve_at_75: false,
        }
    }
}

/// The mean of the non-negative values (COCO's "absent" is -1); `None` when there are none.
fn mean_present(v: &[f32]) -> Option<f64> {
    let present: Vec<f64> = v
        .iter()
        .filter(|&&p| p >= 0.0)
        .map(|&p| f64::from(p))
        .collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

fn fmt_ap(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("{v:.3}"),
        _ => "-".to_owned(),
    }
}

fn class_ap(r: &EvalResult, category_id: i64) -> Option<f64> {
    r.per_class_ap
        .iter()
        .find(|(k, _)| *k == category_id)
        .map(|(_, ap)| *ap)
}

/// Per-class AP next to instance counts ([`TableBuilder`], one virtual row per class).
fn class_table(ui: &mut egui::Ui, report: &EvalReport) {
    let (segm, bbox) = (&report.eval.segm, &report.eval.bbox);
    let classes: Vec<(&i64, &String)> = report.eval.class_names.iter().collect();
    let row_h = ui.spacing().interact_size.y;
    TableBuilder::new(ui)
        .id_salt("eval_classes")
        .striped(true)
        .max_scroll_height(320.0)
        .column(Column::auto().at_least(80.0).clip(true))
        .columns(Column::auto().at_least(56.0), 4)
        .header(row_h, |mut header| {
            for h in ["Class", "Instances", "Mask AP", "Mask AP50", "Box AP"] {
                header.col(|ui| {
                    ui.strong(h);
                });
            }
        })
        .body(|body| {
            body.rows(row_h, classes.len(), |mut row| {
                let (k, name) = classes[row.index()];
                let ap50 = segm
                    .pr_curves
                    .iter()
                    .find(|c| c.category_id == *k)
                    .and_then(|c| mean_present(&c.precision_50));
                let cells = [
                    name.clone(),
                    report.gt_counts.get(k).copied().unwrap_or(0).to_string(),
                    fmt_ap(class_ap(segm, *k)),
                    fmt_ap(ap50),
                    fmt_ap(class_ap(bbox, *k)),
                ];
                for text in cells {
                    row.col(|ui| {
                        ui.label(text);
                    });
                }
            });
        });
}

impl EvalPanel {
    /// The last finished evaluation.
    pub fn report(&self) -> Option<&EvalReport> {
        self.report.as_ref()
    }

    /// The bundle folder in the model field (chosen, preselected or typed).
    pub fn bundle_path(&self) -> &str {
        &self.bundle_path
    }

    /// The model picker (its listing of the project's bundles).
    pub fn picker(&self) -> &ModelPicker {
        &self.picker
    }

    /// Whether an evaluation is running.
    pub fn running(&self) -> bool {
        self.job.is_some()
    }

    /// Running jobs for the status bar.
    pub fn jobs(&self) -> Vec<JobView> {
        self.job
            .iter()
            .map(|j| JobView {
                name: "Evaluate".to_owned(),
                fraction: (j.total > 0).then(|| j.done as f32 / j.total as f32),
                text: format!("{} / {} images", j.done, j.total),
                cancel: Some(j.cancel.clone()),
            })
            .collect()
    }

    /// Starts evaluating `bundle` on the project's split on the `eval-run` thread.
    pub fn start(&mut self, ctx: &egui::Context, bundle: PathBuf, cx: &mut PanelCtx) {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project to evaluate on");
            return;
        };
        let cancel = CancelToken::default();
        let (split, token, job_project) = (self.split.clone(), cancel.clone(), project.clone());
        let device = cx.settings.device;
        let min_score = f64::from(cx.settings.score_threshold);
        let terminal = |m: &Msg| matches!(m, Msg::Done(_));
        let spawned = Worker::spawn("eval-run", ctx, 64, terminal, move |tx| {
            let result = crate::host::device(device).and_then(|device| {
                evaluate_with_errors(
                    &project,
                    &bundle,
                    split.as_deref(),
                    device,
                    ERROR_IOU,
                    min_score,
                    &token,
                    &mut |done, total| {
                        crate::fault::hit("eval");
                        // Progress is advisory: a full channel skips an update.
                        tx.try_send(Msg::Progress(done, total));
                    },
                )
            });
            tx.send(Msg::Done(
                result.map(Box::new).map_err(|e| format!("{e:#}")),
            ));
        });
        match spawned {
            Ok(worker) => {
                self.job = Some(Job {
                    worker,
                    cancel,
                    done: 0,
                    total: 0,
                    project: job_project,
                });
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start the evaluation thread: {e}")),
        }
    }

    /// Clears the report (and cancels a running evaluation) when another project is open than
    /// the one it belongs to: its worst-image links would open the wrong images.
    fn forget_other_projects(&mut self, cx: &mut PanelCtx) {
        if self
            .report_project
            .as_deref()
            .is_some_and(|p| cx.project != Some(p))
        {
            self.report = None;
            self.report_project = None;
        }
        if let Some(job) = &self.job
            && cx.project != Some(job.project.as_path())
        {
            job.cancel.cancel();
        }
    }

    fn drain(&mut self, cx: &mut PanelCtx) {
        let Some(job) = &mut self.job else {
            return;
        };
        let mut finished = None;
        for polled in job.worker.poll() {
            match polled {
                Polled::Event(Msg::Progress(done, total)) => (job.done, job.total) = (done, total),
                Polled::Event(Msg::Done(r)) => finished = Some(r),
                // The thread is gone: the job ends as failed (the last report stays shown).
                Polled::Died(why) => finished = Some(Err(why)),
            }
        }
        if let Some(r) = finished {
            let Some(job) = self.job.take() else {
                return;
            };
            job.worker.join(); // only its clean-up is left
            match r {
                // The project changed while it ran: its links would open the wrong images.
                Ok(_) if cx.project != Some(job.project.as_path()) => cx.notices.info(
                    "evaluation finished for a project that is no longer open; its report was dropped",
                ),
                Ok(report) => {
                    cx.notices.info(format!(
                        "evaluation done: mask AP {:.3}, box AP {:.3}",
                        report.eval.segm.stats[0], report.eval.bbox.stats[0]
                    ));
                    self.report = Some(*report);
                    self.report_project = Some(job.project);
                }
                Err(e) => cx.notices.error(format!("evaluation failed: {e}")),
            }
        }
    }

    /// Draws the section; `runs` is the Train tab's run list (when it changes, a run finished
    /// or was rescanned, the picker lists the project's models again).
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, runs: &[RunInfo]) {
        self.forget_other_projects(cx);
        self.drain(cx);
        let seen: Vec<(String, bool, usize)> = runs
            .iter()
            .map(|r| (r.id.clone(), r.has_bundle, r.steps))
            .collect();
        if seen != self.runs_seen {
            self.runs_seen = seen;
            self.picker.refresh();
        }
        ui.horizontal_wrapped(|ui| {
            self.picker.ui(ui, cx, &mut self.bundle_path);
        });
        ui.horizontal(|ui| {
            let label = ui.label("Split");
            egui::ComboBox::from_id_salt("eval_split")
                .selected_text(self.split.as_deref().unwrap_or("all"))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.split, None, "all");
                    for s in ["train", "validation", "test"] {
                        ui.selectable_value(&mut self.split, Some(s.to_owned()), s);
                    }
                })
                .response
                .labelled_by(label.id);
            let can = self.job.is_none() && !self.bundle_path.trim().is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Run evaluation"))
                .clicked()
            {
                let bundle = PathBuf::from(self.bundle_path.trim());
                model_picker::remember(cx, Purpose::Eval, &bundle);
                self.start(ui.ctx(), bundle, cx);
            }
            if let Some(job) = &self.job {
                let progress = Progress::Count {
                    done: job.done as u64,
                    total: job.total as u64,
                };
                let cancel = Some((&job.cancel, "Cancel evaluation"));
                progress_row(ui, progress, None, 140.0, cancel);
            }
        });
        let Some(report) = &self.report else {
            return;
        };
        let (segm, bbox) = (&report.eval.segm, &report.eval.bbox);
        ui.label(format!(
            "Mask AP {} (AP50 {}), box AP {} (AP50 {})",
            fmt_ap(Some(segm.stats[0])),
            fmt_ap(Some(segm.stats[1])),
            fmt_ap(Some(bbox.stats[0])),
            fmt_ap(Some(bbox.stats[1])),
        ));
        ui.columns(2, |cols| {
            class_table(&mut cols[0], report);
            let ui = &mut cols[1];
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.curve_iou, IouType::Segm, "masks");
                ui.selectable_value(&mut self.curve_iou, IouType::Bbox, "boxes");
                ui.checkbox(&mut self.curve_at_75, "IoU 0.75 (else 0.50)");
            });
            let r = if self.curve_iou == IouType::Segm {
                segm
            } else {
                bbox
            };
            Plot::new("eval_pr")
                .height(220.0)
                .legend(Legend::default())
                .x_axis_label("recall")
                .y_axis_label("precision")
                .include_x(0.0)
                .include_x(1.0)
                .include_y(0.0)
                .include_y(1.0)
                .allow_scroll(false)
                .show(ui, |p| {
                    for c in &r.pr_curves {
                        let prec = if self.curve_at_75 {
                            &c.precision_75
                        } else {
                            &c.precision_50
                        };
                        let pts: Vec<[f64; 2]> = r
                            .rec_thrs
                            .iter()
                            .zip(prec)
                            .filter(|(_, p)| **p >= 0.0)
                            .map(|(x, p)| [*x, f64::from(*p)])
                            .collect();
                        if pts.is_empty() {
                            continue;
                        }
                        let name = report
                            .eval
                            .class_names
                            .get(&c.category_id)
                            .cloned()
                            .unwrap_or_else(|| c.category_id.to_string());
                        p.line(Line::new(name, PlotPoints::from(pts)));
                    }
                });
        });
        ui.strong(format!(
            "Images with the most errors (mask IoU {:.2}, score >= {:.2}); click to open in Review",
            report.iou_threshold, report.min_score
        ));
        if report.errors.is_empty() {
            ui.label("No false positives or false negatives.");
        }
        for e in report.errors.iter().take(WORST_IMAGES) {
            let text = format!(
                "{}: {} false positives, {} missed, {} correct",
                e.file_name,
                e.counts.false_positives,
                e.counts.false_negatives,
                e.counts.true_positives
            );
            if ui.link(text).clicked() {
                cx.requests.push(ShellRequest::OpenImage {
                    image_id: e.image_id,
                });
            }
        }
    }
}
