//! Model assist: the bundle picker in the toolbar, "Propose masks" on the `model-assist`
//! thread, the proposals shown as dashed outlines and accepted with a click.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui;

use super::ImageView;
use crate::dataset::Origin;
use crate::gui::model_picker::{self, ModelPicker, Purpose};
use crate::gui::shared::PanelCtx;
use crate::gui::worker::{Polled, Worker};
use crate::infer::Detection;

/// What the model-assist thread answers.
pub(super) enum AssistEvent {
    Done(Vec<Detection>),
    Failed(String),
}

impl ImageView {
    /// The toolbar's model row: the bundle picker, "Propose masks" (a spinner while it runs)
    /// and "Clear proposals".
    pub(super) fn assist_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx<'_>) {
        // The project's models, "Browse…" and the typed "Model bundle" field: one picker
        // for every image's view (kept in the context's memory, listed once per project).
        let picker = ModelPicker::shared(ui.ctx(), Purpose::Assist, "Model bundle");
        let mut picker = picker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.model_path.is_empty() && !self.model_path_from_settings {
            // This project's last choice (else its newest best checkpoint), else the last
            // bundle used anywhere: it does not reset on every image.
            self.model_path = picker
                .initial_choice(cx)
                .unwrap_or_else(|| cx.settings.assist_bundle.clone());
        }
        self.model_path_from_settings = true;
        if picker.ui(ui, cx, &mut self.model_path).edited {
            cx.settings.assist_bundle = self.model_path.trim().to_owned();
        }
        drop(picker);
        let running = self.assist.is_some();
        if ui
            .add_enabled(!running, egui::Button::new("Propose masks"))
            .clicked()
        {
            let chosen = self.model_path.trim();
            if !chosen.is_empty() {
                model_picker::remember(cx, Purpose::Assist, Path::new(chosen));
            }
            self.propose(ui.ctx(), cx);
        }
        if running {
            ui.spinner();
        }
        if !self.proposals.is_empty() && ui.button("Clear proposals").clicked() {
            self.proposals.clear();
        }
    }

    /// Runs the model bundle on this image on a named thread.
    fn propose(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        let (Some(data), path) = (self.data.as_ref(), self.model_path.trim()) else {
            return;
        };
        if path.is_empty() {
            cx.notices.warn("enter a model bundle folder first");
            return;
        }
        let bundle = PathBuf::from(path);
        cx.settings.assist_bundle = path.to_owned();
        let rgb = Arc::clone(&data.rgb);
        let device = cx.settings.device;
        let score = cx.settings.score_threshold;
        let spawned = Worker::once("model-assist", ctx, move || {
            let run = || -> anyhow::Result<Vec<Detection>> {
                let device = crate::host::device(device)?;
                let predictor = crate::infer::Predictor::load_for_threshold(&bundle, device)?;
                predictor.predict_above(&rgb, score)
            };
            match run() {
                Ok(d) => AssistEvent::Done(d),
                Err(e) => AssistEvent::Failed(format!("{}: {e:#}", bundle.display())),
            }
        });
        match spawned {
            Ok(worker) => self.assist = Some(worker),
            Err(e) => cx.notices.error(format!("cannot start model assist: {e}")),
        }
    }

    pub(super) fn poll_assist(&mut self, cx: &mut PanelCtx<'_>) {
        let Some(polled) = self.assist.as_mut().and_then(Worker::try_next) else {
            return;
        };
        self.assist = None;
        match polled {
            Polled::Event(AssistEvent::Done(detections)) => {
                cx.notices
                    .info(format!("model proposed {} masks", detections.len()));
                self.set_proposals(detections);
            }
            Polled::Event(AssistEvent::Failed(e)) => {
                cx.notices.error(format!("propose masks: {e}"));
            }
            Polled::Died(why) => {
                // It ended without an answer: it panicked.
                log::error!("propose masks: {why}");
                cx.notices
                    .error("propose masks: the model-assist thread stopped unexpectedly");
            }
        }
    }

    /// Shows detections as dashed proposals (what "Propose masks" does with the model's output).
    pub fn set_proposals(&mut self, detections: Vec<Detection>) {
        self.proposals = detections
            .into_iter()
            .map(|d| {
                let rings = crate::dataset::contour::outer_contours(&d.mask)
                    .into_iter()
                    .map(|flat| flat.chunks(2).map(|p| [p[0], p[1]]).collect())
                    .collect();
                (d, rings)
            })
            .collect();
    }

    pub(super) fn accept_proposal_at(&mut self, p: [f64; 2], cx: &mut PanelCtx<'_>) -> bool {
        if p[0] < 0.0 || p[1] < 0.0 {
            return false;
        }
        let (x, y) = (p[0] as u32, p[1] as u32);
        let Some(k) = self
            .proposals
            .iter()
            .position(|(d, _)| x < d.mask.width() && y < d.mask.height() && d.mask.get(x, y))
        else {
            return false;
        };
        if !self.ready(cx) {
            return true; // the proposal stays; click it again
        }
        let Some(data) = self.data.as_ref() else {
            return false;
        };
        let (det, _) = self.proposals.remove(k);
        let class_id = data
            .classes
            .iter()
            .find(|c| c.name == det.class_name)
            .map(|c| c.id)
            .or(self.new_class)
            .or(data.classes.first().map(|c| c.id));
        let Some(class_id) = class_id else {
            return true;
        };
        if (det.mask.width(), det.mask.height()) != (data.meta.width, data.meta.height) {
            cx.notices
                .error("the proposal's mask size differs from the image");
            return true;
        }
        self.add_instance(det.mask, Origin::Model, Some(class_id), cx);
        self.overlay_stale = true;
        true
    }
}
