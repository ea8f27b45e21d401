//! The Predict tab's export: the results at the sliders' current thresholds written on a
//! `predict-export` thread by [`crate::infer::export::export_predictions`] (overlay PNGs,
//! per-instance PNG masks and a COCO results JSON, named as `maskstudio predict` names them).

use std::path::PathBuf;

use eframe::egui;

use super::PredictPanel;
use super::events::Event;
use crate::cancel::CancelToken;
use crate::gui::shared::PanelCtx;
use crate::gui::worker::Worker;
use crate::infer::export::{SavedPrediction, export_predictions};

impl PredictPanel {
    /// Starts writing the results at the sliders' thresholds into the export folder on
    /// `predict-export` ([`export_predictions`], the writer `maskstudio predict` uses).
    pub(super) fn start_export(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let dir = PathBuf::from(self.export_dir.trim());
        if self.export_dir.trim().is_empty() {
            cx.notices.warn("type an export folder first");
            return;
        }
        let items: Vec<SavedPrediction> = self
            .results
            .iter()
            .map(|r| SavedPrediction {
                path: r.path.clone(),
                // A display copy is smaller than the file: the export reads the file again.
                image: r.image.clone().filter(|_| r.scale >= 1.0),
                detections: r.detections.clone(),
            })
            .collect();
        // The loaded model's classes are listed in results.images.json, as the CLI lists them.
        let labels = self
            .model
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        let (score, mask) = (cx.settings.score_threshold, cx.settings.mask_threshold);
        let cancel = CancelToken::default();
        let (cancel2, total) = (cancel.clone(), items.len());
        let terminal = |e: &Event| matches!(e, Event::Exported { .. } | Event::ExportFailed { .. });
        let spawned = Worker::spawn("predict-export", ctx, 8, terminal, move |tx| {
            let progress = |done| {
                // Progress is advisory: a full channel skips an update, never blocks.
                tx.try_send(Event::ExportProgress { done, total });
            };
            let exported =
                export_predictions(&dir, &items, &labels, score, mask, &cancel2, progress);
            let event = match exported {
                Ok((detections, cancelled)) => Event::Exported {
                    dir,
                    detections,
                    cancelled,
                },
                Err(e) => Event::ExportFailed {
                    error: format!("{e:#}"),
                },
            };
            tx.send(event);
        });
        match spawned {
            Ok(w) => {
                self.helpers.push(w);
                self.exporting = Some((0, total, cancel));
            }
            Err(e) => cx.notices.error(format!("cannot start the export: {e}")),
        }
    }
}
