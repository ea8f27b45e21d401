//! The Train tab's label audit (issue 18): **Audit with this run** scores the selected run's
//! validation images with its best checkpoint ([`crate::eval::audit::audit_with_model`]), and
//! the **K-fold audit** form (folds, preset, epochs, image size) trains K models that each
//! predict the images they did not see ([`crate::eval::audit::audit_kfold`]), with the estimate
//! of [`crate::eval::audit::estimate_kfold`] shown before it starts (worked out on the
//! `audit-estimate` thread). Either runs on the `audit-run` thread with the
//! [`crate::gui::progress`] row and Cancel; the findings land in the project's store and a
//! notice points to Review › Likely errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eframe::egui;

use super::form::{labelled_choice, labelled_drag};
use crate::cancel::CancelToken;
use crate::eval::audit::{
    AuditCancelled, AuditOutcome, AuditParams, AuditProgress, KFoldEstimate, KFoldRequest,
    audit_kfold, audit_with_model, estimate_kfold,
};
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::{JobView, PanelCtx};
use crate::gui::worker::{Polled, Worker};
use crate::host::DeviceChoice;
use crate::train::config::{Preset, TrainConfig};
use crate::train::runs::RunInfo;
use crate::train::state::{BEST_CHECKPOINT, LAST_CHECKPOINT};
use crate::train::{TrainEvent, runs};

/// Share of a fold's progress bar its training takes (the rest: predicting its held-out images).
const TRAIN_SHARE: f32 = 0.9;

/// What the `audit-run` thread reports.
enum Msg {
    /// The bar's fill (`None`: unknown) and its text.
    Progress(Option<f32>, String),
    /// The audit ended: stored, cancelled (`Ok(None)`: nothing stored), or failed.
    Done(Result<Option<Finished>, String>),
}

/// What a finished audit stored.
struct Finished {
    findings: usize,
    counts: BTreeMap<String, usize>,
    statement: String,
}

impl Finished {
    fn of(o: &AuditOutcome) -> Self {
        Self {
            findings: o.findings.len(),
            counts: o.counts.clone(),
            statement: o.out_of_sample.clone(),
        }
    }
}

/// A running audit.
struct Job {
    worker: Worker<Msg>,
    cancel: CancelToken,
    /// What is audited ("run <id>" or "k-fold K× preset").
    what: String,
    fraction: Option<f32>,
    text: String,
    /// The project audited: a change of project cancels it.
    project: PathBuf,
}

/// The inputs an estimate was (or is being) worked out for.
#[derive(Debug, Clone, PartialEq)]
struct EstimateKey {
    project: PathBuf,
    recipe: TrainConfig,
    folds: usize,
}

/// The audit section of the Train tab.
pub struct AuditPanel {
    folds: usize,
    preset: Preset,
    epochs: usize,
    image_size: u32,
    job: Option<Job>,
    /// The estimate shown, for the inputs in `estimate_for`.
    estimate: Option<Result<KFoldEstimate, String>>,
    estimate_for: Option<EstimateKey>,
    /// The `audit-estimate` thread and the inputs it works on.
    estimating: Option<(Worker<Result<KFoldEstimate, String>>, EstimateKey)>,
    /// The last finished audit's summary line.
    last: Option<String>,
}

impl Default for AuditPanel {
    fn default() -> Self {
        Self {
            folds: 2,
            preset: Preset::CpuFast,
            epochs: 4,
            image_size: 320,
            job: None,
            estimate: None,
            estimate_for: None,
            estimating: None,
            last: None,
        }
    }
}

/// The bundle "Audit with this run" uses: the run's best checkpoint, else its last.
pub fn run_bundle(run: &RunInfo) -> Option<PathBuf> {
    [BEST_CHECKPOINT, LAST_CHECKPOINT]
        .iter()
        .map(|c| run.dir.join(c))
        .find(|b| runs::is_bundle(b))
}

impl AuditPanel {
    /// Whether an audit (or an estimate) is being worked on.
    pub fn busy(&self) -> bool {
        self.job.is_some() || self.estimating.is_some()
    }

    /// The K-fold estimate shown, as text (`None` before it is known).
    pub fn estimate_text(&self) -> Option<String> {
        self.estimate.as_ref().map(|e| match e {
            Ok(e) => format!("Estimated time: {}", e.describe()),
            Err(e) => format!("No estimate: {e}"),
        })
    }

    /// The running audit for the status bar.
    pub fn jobs(&self) -> Vec<JobView> {
        self.job
            .iter()
            .map(|j| JobView {
                name: format!("Audit ({})", j.what),
                fraction: j.fraction,
                text: j.text.clone(),
                cancel: Some(j.cancel.clone()),
            })
            .collect()
    }

    /// The recipe every fold trains with: the form's recipe (learning rate, batch, schedule,
    /// augmentation) with the audit form's preset, epochs and image size, on the settings'
    /// device.
    fn kfold_recipe(&self, base: &TrainConfig, device: DeviceChoice) -> TrainConfig {
        let mut recipe = if base.preset == self.preset {
            base.clone()
        } else {
            // Another preset's augmentation and model overrides do not carry over.
            TrainConfig {
                preset: self.preset,
                lr: base.lr,
                batch_size: base.batch_size,
                seed: base.seed,
                ..TrainConfig::default()
            }
        };
        recipe.epochs = self.epochs;
        recipe.image_size = Some(self.image_size);
        recipe.device = device;
        recipe
    }

    /// Starts "Audit with this run" for `run` on the `audit-run` thread.
    pub fn audit_run(&mut self, ctx: &egui::Context, cx: &mut PanelCtx, run: &RunInfo) {
        let Some(bundle) = run_bundle(run) else {
            cx.notices
                .warn(format!("run {} has no checkpoint to audit with", run.id));
            return;
        };
        let device = cx.settings.device;
        self.spawn(
            ctx,
            cx,
            format!("run {}", run.id),
            move |project, cancel, report| {
                audit_with_model(
                    project,
                    &bundle,
                    None,
                    device,
                    &AuditParams::default(),
                    cancel,
                    &mut |p| {
                        if let AuditProgress::Predicting { done, total, .. } = p {
                            let fraction = (total > 0).then(|| done as f32 / total as f32);
                            report(fraction, format!("{done} / {total} images"));
                        } else if let AuditProgress::Note(n) = p {
                            log::info!("{n}");
                        }
                    },
                )
            },
        );
    }

    /// Starts the K-fold audit with the form's values on the `audit-run` thread.
    pub fn audit_kfold(&mut self, ctx: &egui::Context, cx: &mut PanelCtx, base: &TrainConfig) {
        let req = KFoldRequest {
            folds: self.folds,
            recipe: self.kfold_recipe(base, cx.settings.device),
            split: None,
            resume: None,
            params: AuditParams::default(),
        };
        let what = crate::eval::audit::kfold::kfold_model_text(self.folds, self.preset);
        self.spawn(ctx, cx, what, move |project, cancel, report| {
            let mut steps = 0usize;
            audit_kfold(project, &req, cancel, &mut |p| match p {
                AuditProgress::Note(n) => log::info!("{n}"),
                AuditProgress::Fold {
                    fold,
                    folds,
                    train_images,
                    held_out,
                    ..
                } => report(
                    Some((fold - 1) as f32 / folds.max(1) as f32),
                    format!("fold {fold}/{folds}: training on {train_images} images, {held_out} held out"),
                ),
                AuditProgress::Training { fold, folds, event } => match event {
                    TrainEvent::Started { total_iters, .. } => steps = total_iters,
                    TrainEvent::Step { iter, .. } if steps > 0 => {
                        let done = (iter + 1).min(steps) as f32 / steps as f32;
                        report(
                            Some(((fold - 1) as f32 + TRAIN_SHARE * done) / folds.max(1) as f32),
                            format!("fold {fold}/{folds}: step {} / {steps}", iter + 1),
                        );
                    }
                    _ => {}
                },
                AuditProgress::Predicting { fold, done, total } => {
                    let share = done as f32 / total.max(1) as f32;
                    let (f, k) = fold.unwrap_or((1, 1));
                    report(
                        Some(((f - 1) as f32 + TRAIN_SHARE + (1.0 - TRAIN_SHARE) * share) / k.max(1) as f32),
                        format!("fold {f}/{k}: predicting {done} / {total} images"),
                    );
                }
            })
        });
    }

    /// Runs `audit` on the `audit-run` thread: its progress goes to the row, its outcome to a
    /// notice.
    fn spawn<F>(&mut self, ctx: &egui::Context, cx: &mut PanelCtx, what: String, audit: F)
    where
        F: FnOnce(
                &Path,
                &CancelToken,
                &mut dyn FnMut(Option<f32>, String),
            ) -> anyhow::Result<AuditOutcome>
            + Send
            + 'static,
    {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project to audit");
            return;
        };
        if self.job.is_some() {
            cx.notices.warn("an audit is already running");
            return;
        }
        let cancel = CancelToken::default();
        let (token, p) = (cancel.clone(), project.clone());
        let terminal = |m: &Msg| matches!(m, Msg::Done(_));
        let spawned = Worker::spawn("audit-run", ctx, 64, terminal, move |tx| {
            let result = audit(&p, &token, &mut |fraction, text| {
                crate::fault::hit("audit-run");
                // Progress is advisory: a full channel skips an update.
                tx.try_send(Msg::Progress(fraction, text));
            });
            let done = match result {
                Ok(outcome) => Ok(Some(Finished::of(&outcome))),
                Err(e) if e.downcast_ref::<AuditCancelled>().is_some() => {
                    log::info!("{e}");
                    Ok(None)
                }
                Err(e) => Err(format!("{e:#}")),
            };
            tx.send(Msg::Done(done));
        });
        match spawned {
            Ok(worker) => {
                self.job = Some(Job {
                    worker,
                    cancel,
                    text: format!("starting the audit ({what})"),
                    what,
                    fraction: None,
                    project,
                });
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start the audit thread: {e}")),
        }
    }

    /// Applies what the audit and estimate threads reported; called every frame (also while the
    /// tab is hidden).
    pub fn poll(&mut self, cx: &mut PanelCtx) {
        if let Some(job) = &self.job
            && cx.project != Some(job.project.as_path())
        {
            job.cancel.cancel();
        }
        if let Some((worker, _)) = &mut self.estimating {
            let polled = worker.poll();
            if let Some(last) = polled.into_iter().last() {
                let result = match last {
                    Polled::Event(r) => r,
                    Polled::Died(why) => Err(why),
                };
                if let Some((worker, key)) = self.estimating.take() {
                    worker.join();
                    self.estimate = Some(result);
                    self.estimate_for = Some(key);
                }
            }
        }
        let Some(job) = &mut self.job else {
            return;
        };
        let mut finished = None;
        for polled in job.worker.poll() {
            match polled {
                Polled::Event(Msg::Progress(fraction, text)) => {
                    job.fraction = fraction;
                    job.text = text;
                }
                Polled::Event(Msg::Done(r)) => finished = Some(r),
                Polled::Died(why) => finished = Some(Err(why)),
            }
        }
        let Some(result) = finished else {
            return;
        };
        let Some(job) = self.job.take() else {
            return;
        };
        job.worker.join(); // only its clean-up (the model) is left
        match result {
            Ok(Some(done)) => {
                let counts: Vec<String> = done
                    .counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect();
                let line = format!("{} findings stored — Review › Likely errors", done.findings);
                cx.notices.info(line.clone());
                self.last = Some(format!(
                    "Audit ({}): {line}{}. {}",
                    job.what,
                    if counts.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", counts.join(", "))
                    },
                    done.statement
                ));
                // A finished k-fold audit measured its speed: the next estimate may differ.
                self.estimate_for = None;
            }
            Ok(None) => cx.notices.info("audit cancelled; nothing stored"),
            Err(e) => cx.notices.error(format!("audit failed: {e}")),
        }
    }

    /// Starts working out the estimate for `key` when it is not shown or being worked out.
    fn refresh_estimate(&mut self, ctx: &egui::Context, key: EstimateKey) {
        if self.estimate_for.as_ref() == Some(&key)
            || self.estimating.as_ref().is_some_and(|(_, k)| *k == key)
        {
            return;
        }
        if self.estimating.is_some() {
            return; // the next frame after it lands asks again with the new inputs
        }
        let (project, recipe, folds) = (key.project.clone(), key.recipe.clone(), key.folds);
        match Worker::once("audit-estimate", ctx, move || {
            estimate_kfold(&project, &recipe, folds, None).map_err(|e| format!("{e:#}"))
        }) {
            Ok(worker) => self.estimating = Some((worker, key)),
            Err(e) => {
                self.estimate = Some(Err(format!("cannot start the estimate thread: {e}")));
                self.estimate_for = Some(key);
            }
        }
    }

    /// The "Audit with this run" button for the run list's `selected` run.
    pub fn run_button_ui(
        &mut self,
        ui: &mut egui::Ui,
        cx: &mut PanelCtx,
        selected: Option<&RunInfo>,
    ) {
        let can = self.job.is_none() && selected.is_some_and(|r| r.has_bundle);
        if ui
            .add_enabled(can, egui::Button::new("Audit with this run"))
            .on_hover_text(
                "Score the run's validation images (the ones it did not train on) for missing, \
                 spurious, loose and swapped labels with its best checkpoint",
            )
            .clicked()
            && let Some(run) = selected
        {
            self.audit_run(ui.ctx(), cx, run);
        }
    }

    /// Draws the section: the K-fold form with its estimate, the running audit's progress row
    /// and the last audit's summary. `base` is the Train form's recipe.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, base: &TrainConfig) {
        ui.strong("Label audit");
        ui.horizontal_wrapped(|ui| {
            ui.label("K-fold audit:");
            labelled_drag(ui, "Folds", &mut self.folds, 2..=10, 0.05);
            labelled_choice(
                ui,
                "Audit preset",
                "audit_preset",
                &mut self.preset,
                &[(Preset::CpuFast, "cpu-fast"), (Preset::Quality, "quality")],
            );
            labelled_drag(ui, "Audit epochs", &mut self.epochs, 1..=100, 0.1);
            labelled_drag(ui, "Audit image size", &mut self.image_size, 64..=1333, 1.0);
            let can = self.job.is_none() && cx.project.is_some();
            if ui
                .add_enabled(can, egui::Button::new("Start K-fold audit"))
                .on_hover_text(
                    "Train one model per fold on the other folds and score the fold it did not see",
                )
                .clicked()
            {
                self.audit_kfold(ui.ctx(), cx, base);
            }
        });
        if let Some(project) = cx.project {
            let key = EstimateKey {
                project: project.to_path_buf(),
                recipe: self.kfold_recipe(base, cx.settings.device),
                folds: self.folds,
            };
            let shown = self.estimate_for.as_ref() == Some(&key);
            self.refresh_estimate(ui.ctx(), key);
            match self.estimate_text() {
                Some(text) if shown => {
                    ui.label(text);
                }
                // No spinner: it would repaint every frame while the worker (which wakes the
                // window when it answers) takes a moment on a large project.
                _ => {
                    ui.label("Estimating the time…");
                }
            }
        }
        if let Some(job) = &self.job {
            ui.horizontal(|ui| {
                let progress = Progress::Fraction(job.fraction);
                let cancel = Some((&job.cancel, "Cancel audit"));
                progress_row(ui, progress, Some(job.text.clone()), 320.0, cancel);
            });
        }
        if let Some(last) = &self.last {
            ui.label(last);
        }
    }
}
