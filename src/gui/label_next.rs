//! The Review tab's "Label next" queue: the images still needing a person (no masks, or not
//! reviewed) ranked by the model's uncertainty ([`crate::eval::label_next`]: horizontal-flip
//! disagreement, entropy breaking ties). Pick a bundle (the editor's model-assist picker, so the
//! model that ranked is the one proposing masks in the opened image), press Rank: the ranking
//! runs on the `label-next` thread with the progress row and Cancel; the queue is an
//! [`egui_extras::TableBuilder`] with virtual rows, and a click opens the image in the editor.
//! The last ranking stays while the project is open.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use eframe::egui;
use egui_extras::{Column, TableBuilder};

use crate::cancel::CancelToken;
use crate::eval::label_next::{self, Candidates, Ranking};
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::{JobView, PanelCtx};
use crate::gui::worker::{Polled, Worker};

enum Msg {
    Progress(usize, usize),
    Done(Result<Ranking, String>),
}

struct Job {
    /// The `label-next` thread; `Done` ends it, a panic or a closed channel fails it.
    worker: Worker<Msg>,
    cancel: CancelToken,
    done: usize,
    total: usize,
    /// The project ranked: a ranking for another project than the open one is dropped.
    project: PathBuf,
    bundle: PathBuf,
    candidates: Candidates,
}

/// A finished ranking and what made it.
struct Shown {
    ranking: Ranking,
    project: PathBuf,
    bundle: PathBuf,
    candidates: Candidates,
    /// Images opened from the queue since (marked in the list).
    opened: HashSet<i64>,
}

/// The "Label next" section of the Review tab.
#[derive(Default)]
pub struct LabelNextPanel {
    /// The bundle folder in the picker's path field.
    bundle_path: String,
    /// The path field was filled (from the picker's choice or by the user): the preselection
    /// leaves it.
    bundle_set: bool,
    candidates: Candidates,
    job: Option<Job>,
    shown: Option<Shown>,
}

/// The menu text of a candidates choice.
fn candidates_text(c: Candidates) -> &'static str {
    match c {
        Candidates::Both => "Without masks or unreviewed",
        Candidates::Unlabelled => "Without masks",
        Candidates::Unreviewed => "Unreviewed",
    }
}

impl LabelNextPanel {
    /// An empty panel.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last ranking of the open project, if any.
    pub fn ranking(&self) -> Option<&Ranking> {
        self.shown.as_ref().map(|s| &s.ranking)
    }

    /// Whether a ranking is running.
    pub fn running(&self) -> bool {
        self.job.is_some()
    }

    /// The bundle folder in the model field.
    pub fn bundle_path(&self) -> &str {
        &self.bundle_path
    }

    /// Sets the bundle folder (as typing it would).
    pub fn set_bundle_path(&mut self, path: &str) {
        path.clone_into(&mut self.bundle_path);
        self.bundle_set = true;
    }

    /// Which images are ranked.
    pub fn set_candidates(&mut self, candidates: Candidates) {
        self.candidates = candidates;
    }

    /// The running ranking for the status bar.
    pub fn jobs(&self) -> Vec<JobView> {
        self.job
            .iter()
            .map(|j| JobView {
                name: "Label next".to_owned(),
                fraction: (j.total > 0).then(|| j.done as f32 / j.total as f32),
                text: format!("{} / {} images", j.done, j.total),
                cancel: Some(j.cancel.clone()),
            })
            .collect()
    }

    /// Starts ranking the open project's candidates with `bundle` on the `label-next` thread.
    pub fn start(&mut self, ctx: &egui::Context, bundle: PathBuf, cx: &mut PanelCtx) {
        let Some(project) = cx.project.map(Path::to_path_buf) else {
            cx.notices.warn("open a project to rank its images");
            return;
        };
        if self.job.is_some() {
            return;
        }
        let cancel = CancelToken::default();
        let (token, job_project, job_bundle) = (cancel.clone(), project.clone(), bundle.clone());
        let candidates = self.candidates;
        let device = cx.settings.device;
        let terminal = |m: &Msg| matches!(m, Msg::Done(_));
        let spawned = Worker::spawn("label-next", ctx, 64, terminal, move |tx| {
            let result = crate::host::device(device).and_then(|device| {
                label_next::run(
                    &bundle,
                    &project,
                    candidates,
                    device,
                    &token,
                    &mut |done, total| {
                        // Progress is advisory: a full channel skips an update.
                        tx.try_send(Msg::Progress(done, total));
                    },
                )
            });
            tx.send(Msg::Done(result.map_err(|e| format!("{e:#}"))));
        });
        match spawned {
            Ok(worker) => {
                self.job = Some(Job {
                    worker,
                    cancel,
                    done: 0,
                    total: 0,
                    project: job_project,
                    bundle: job_bundle,
                    candidates,
                });
            }
            Err(e) => cx
                .notices
                .error(format!("cannot start the label-next thread: {e}")),
        }
    }

    /// Drops the ranking (and cancels a running one) of a project that is no longer open.
    fn forget_other_projects(&mut self, cx: &PanelCtx) {
        if self
            .shown
            .as_ref()
            .is_some_and(|s| cx.project != Some(s.project.as_path()))
        {
            self.shown = None;
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
                // The thread is gone: the job ends as failed (the last ranking stays shown).
                Polled::Died(why) => finished = Some(Err(why)),
            }
        }
        let Some(result) = finished else {
            return;
        };
        let Some(job) = self.job.take() else {
            return;
        };
        let cancelled = job.cancel.is_cancelled();
        job.worker.join(); // only its clean-up is left
        match result {
            Ok(_) if cx.project != Some(job.project.as_path()) => cx
                .notices
                .info("the ranking finished for a project that is no longer open; it was dropped"),
            Ok(ranking) => {
                let skipped = ranking.skipped.len();
                cx.notices.info(format!(
                    "ranked {} images{}",
                    ranking.images.len(),
                    if skipped > 0 {
                        format!(" ({skipped} could not be read: see the log)")
                    } else {
                        String::new()
                    }
                ));
                self.shown = Some(Shown {
                    ranking,
                    project: job.project,
                    bundle: job.bundle,
                    candidates: job.candidates,
                    opened: HashSet::new(),
                });
            }
            Err(_) if cancelled => cx.notices.info("ranking cancelled"),
            Err(e) => cx.notices.error(format!("ranking failed: {e}")),
        }
    }

    /// Draws the section; returns the image to open in the editor (a row was clicked).
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) -> Option<i64> {
        self.forget_other_projects(cx);
        self.drain(cx);
        ui.label(
            "Ranks the images still to label by how unsure the model is: it predicts each image \
             and its mirror; where the two disagree, a label teaches it most.",
        );
        ui.horizontal_wrapped(|ui| {
            // The editor's model-assist picker: the model that ranks is the one proposing masks
            // in the opened image.
            let picker = ModelPicker::shared(ui.ctx(), Purpose::Assist, "Model bundle");
            let mut picker = picker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !self.bundle_set && self.bundle_path.trim().is_empty() {
                self.bundle_path = picker.initial_choice(cx).unwrap_or_default();
            }
            let resp = picker.ui(ui, cx, &mut self.bundle_path);
            if resp.edited || resp.chosen.is_some() {
                self.bundle_set = true;
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Images");
            egui::ComboBox::from_id_salt("label_next_candidates")
                .selected_text(candidates_text(self.candidates))
                .show_ui(ui, |ui| {
                    for c in Candidates::ALL {
                        ui.selectable_value(&mut self.candidates, c, candidates_text(c));
                    }
                })
                .response
                .labelled_by(label.id);
            let can = self.job.is_none() && !self.bundle_path.trim().is_empty();
            if ui
                .add_enabled(can, egui::Button::new("Rank images"))
                .on_disabled_hover_text("choose a model bundle first")
                .clicked()
            {
                let bundle = PathBuf::from(self.bundle_path.trim());
                model_picker::remember(cx, Purpose::Assist, &bundle);
                self.start(ui.ctx(), bundle, cx);
            }
            if let Some(job) = &self.job {
                let progress = Progress::Count {
                    done: job.done as u64,
                    total: job.total as u64,
                };
                progress_row(
                    ui,
                    progress,
                    None,
                    160.0,
                    Some((&job.cancel, "Cancel ranking")),
                );
            }
        });
        let shown = self.shown.as_mut()?;
        ui.separator();
        let bundle_name = shown.bundle.file_name().map_or_else(
            || shown.bundle.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        ui.label(format!(
            "{} images ({}) ranked with {}{}; click one to open it",
            shown.ranking.images.len(),
            candidates_text(shown.candidates).to_lowercase(),
            bundle_name,
            if shown.ranking.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable left out", shown.ranking.skipped.len())
            }
        ));
        if shown.ranking.images.is_empty() {
            ui.label("No image matches: every image has masks and was reviewed.");
            return None;
        }
        let clicked = queue_table(ui, shown);
        if let Some(id) = clicked {
            shown.opened.insert(id);
        }
        clicked
    }
}

/// The ranked list: rank, score, entropy, detections, instances, image (virtual rows); returns
/// the clicked image.
fn queue_table(ui: &mut egui::Ui, shown: &Shown) -> Option<i64> {
    let mut clicked = None;
    let rows = &shown.ranking.images;
    let row_h = ui.spacing().interact_size.y;
    TableBuilder::new(ui)
        .id_salt("label_next_queue")
        .striped(true)
        .sense(egui::Sense::click())
        .column(Column::auto().at_least(40.0))
        .column(Column::auto().at_least(52.0))
        .column(Column::auto().at_least(52.0))
        .column(Column::auto().at_least(64.0))
        .column(Column::auto().at_least(56.0))
        .column(Column::remainder().at_least(120.0).clip(true))
        .header(row_h, |mut header| {
            for h in ["Rank", "Score", "Entropy", "Detections", "Labels", "Image"] {
                header.col(|ui| {
                    ui.strong(h);
                });
            }
        })
        .body(|body| {
            body.rows(row_h, rows.len(), |mut row| {
                let k = row.index();
                let r = &rows[k];
                let opened = shown.opened.contains(&r.image_id);
                for text in [
                    format!("{}", k + 1),
                    format!("{:.3}", r.score),
                    format!("{:.3}", r.entropy),
                    format!("{} / {}", r.detections, r.mirrored_detections),
                    r.instances.to_string(),
                ] {
                    row.col(|ui| {
                        ui.label(text);
                    });
                }
                let mut link_clicked = false;
                row.col(|ui| {
                    let name = if opened {
                        format!("{} (opened)", r.rel_path)
                    } else {
                        r.rel_path.clone()
                    };
                    let link = ui.link(name).on_hover_text(&r.reason);
                    link_clicked = link.clicked();
                });
                if link_clicked || row.response().clicked() {
                    clicked = Some(r.image_id);
                }
            });
        });
    clicked
}
