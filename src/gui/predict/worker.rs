//! The `predict-worker` thread: it owns the loaded model, takes [`Command`]s and reports
//! [`Event`]s ([`super::events`]).
//! Each batch reads and prepares its images on a `predict-decode` thread
//! ([`crate::infer::pipeline`]) while the model runs here, keeping every detection down to
//! [`crate::infer::threshold::SCORE_FLOOR`] with soft masks.

use std::sync::Arc;

use anyhow::Context as _;
use crossbeam_channel::Receiver;

use super::PredictedImage;
use super::events::{Command, Event};
use super::inputs::collect_inputs;
use super::pixels::display_copy;
use crate::gui::worker::WorkerTx;
use crate::infer::Predictor;
use crate::infer::pipeline::DecodeAhead;

pub(super) fn worker_loop(rx: Receiver<Command>, tx: WorkerTx<Event>) {
    let mut predictor: Option<Predictor> = None;
    let send = |e: Event| tx.send(e);
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Load { path, device } => {
                let loaded = crate::host::device(device)
                    .and_then(|d| Predictor::load_for_threshold(&path, d));
                let event = match loaded {
                    Ok(p) => {
                        let labels = p.labels().to_vec();
                        predictor = Some(p);
                        Event::Loaded { path, labels }
                    }
                    Err(e) => Event::LoadFailed {
                        path,
                        error: format!("{e:#}"),
                    },
                };
                if !send(event) {
                    return;
                }
            }
            Command::Predict { inputs, cancel } => {
                let Some(p) = &predictor else {
                    continue;
                };
                let (files, skipped) = collect_inputs(&inputs);
                if !send(Event::Started { total: files.len() }) {
                    return;
                }
                if !skipped.is_empty() && !send(Event::Skipped(skipped)) {
                    return;
                }
                // The next images are read and prepared on `predict-decode` while the model
                // runs here; dropping `decoder` (cancel, end) stops that thread.
                let mut decoder = match DecodeAhead::spawn(
                    "predict-decode",
                    files,
                    p.prepare_params().clone(),
                    true,
                ) {
                    Ok(d) => d,
                    Err(e) => {
                        if !send(Event::BatchFailed {
                            error: format!("{e:#}"),
                        }) {
                            return;
                        }
                        continue;
                    }
                };
                let mut cancelled = false;
                // The batch's terminal event: `Done`, or `BatchFailed` when the decoder died.
                let mut failed = None;
                loop {
                    if cancel.is_cancelled() {
                        cancelled = true;
                        break;
                    }
                    let (path, decoded) = match decoder.next_item() {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("{e:#}"));
                            break;
                        }
                    };
                    crate::fault::hit("predict");
                    // A panic on one image (a bad file deep in a decoder, caught there, or in
                    // the model) fails that image; the model stays loaded for the rest.
                    let predicted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::fault::hit("predict-image");
                        decoded.and_then(|d| {
                            let detections = p.predict_soft_prepared(&d.prepared)?;
                            let image = d.image.context("the decoder kept no pixels")?;
                            Ok((image, detections))
                        })
                    }))
                    .unwrap_or_else(|e| {
                        Err(anyhow::anyhow!(
                            "panicked: {}",
                            crate::infer::panic_text(&*e)
                        ))
                    });
                    let event = match predicted {
                        Ok((image, detections)) => {
                            let size = [image.width(), image.height()];
                            let (display, scale) = display_copy(image);
                            Event::Image(Box::new(PredictedImage {
                                path,
                                size,
                                scale,
                                image: Some(Arc::new(display)),
                                detections: Arc::new(detections),
                            }))
                        }
                        Err(e) => Event::ImageFailed {
                            path,
                            error: format!("{e:#}"),
                        },
                    };
                    if !send(event) {
                        return;
                    }
                }
                drop(decoder);
                let end = match failed {
                    Some(error) => Event::BatchFailed { error },
                    None => Event::Done { cancelled },
                };
                if !send(end) {
                    return;
                }
            }
        }
    }
}
