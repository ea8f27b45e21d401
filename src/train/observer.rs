//! Progress of a training run: events, the observer trait, and the two observers (CLI lines and a
//! bounded channel for the GUI that never blocks training).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crossbeam_channel::{Sender, TrySendError};

use crate::train::config::TrainConfig;

/// What happened in a run.
// `Started` carries the whole recipe; it is sent once per run, so boxing it would only make
// every consumer's pattern noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// The run folder exists and the model is built.
    Started {
        /// Run id (the folder name under the runs directory).
        run_id: String,
        /// The run folder.
        run_dir: PathBuf,
        /// The recipe.
        config: TrainConfig,
        /// Training images.
        train_images: usize,
        /// Validation images.
        val_images: usize,
        /// `(class name, training instances)` in label order.
        class_counts: Vec<(String, u64)>,
        /// Planned optimiser steps.
        total_iters: usize,
    },
    /// One optimiser step finished.
    Step {
        /// 0-based epoch.
        epoch: usize,
        /// 0-based global step.
        iter: usize,
        /// The five torchvision losses by name.
        losses: BTreeMap<String, f64>,
        /// Their sum.
        total: f64,
        /// Learning rate used for this step.
        lr: f64,
        /// Throughput of this step.
        images_per_sec: f64,
        /// Memory in use after the step (CUDA allocated bytes, or process RSS on CPU), if known.
        memory_bytes: Option<u64>,
    },
    /// An epoch finished.
    EpochEnd {
        /// 0-based epoch.
        epoch: usize,
        /// Mean total loss over the epoch's steps.
        mean_loss: f64,
        /// Steps in the epoch.
        steps: usize,
        /// Validation mask AP (COCO AP@[.5:.95], segm) after this epoch, when evaluated.
        val_segm_ap: Option<f64>,
        /// Validation box AP (COCO AP@[.5:.95], bbox) after this epoch, when evaluated.
        val_bbox_ap: Option<f64>,
    },
    /// The run finished and a refit on train + validation starts; its steps and epochs follow
    /// the run's.
    Refit {
        /// Epochs of the refit.
        epochs: usize,
        /// Train + validation images.
        images: usize,
        /// Planned steps of run and refit together.
        total_iters: usize,
    },
    /// A model bundle was written.
    CheckpointSaved {
        /// Bundle folder.
        path: PathBuf,
    },
    /// The run ended (all epochs, or cancelled).
    Finished {
        /// Steps taken.
        iterations: usize,
        /// Whether the run stopped on a cancel request.
        cancelled: bool,
        /// Mean total loss of the last epoch (or of the steps taken when cancelled).
        final_loss: Option<f64>,
    },
    /// The run stopped with an error.
    Failed {
        /// The error text.
        error: String,
    },
}

/// Receives the events of a run, on the training thread.
pub trait TrainObserver {
    /// Called once per event; must return quickly.
    fn on_event(&mut self, e: &TrainEvent);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullObserver;

impl TrainObserver for NullObserver {
    fn on_event(&mut self, _e: &TrainEvent) {}
}

/// Prints one line per event (steps every `every` iterations) for the CLI.
#[derive(Debug, Clone)]
pub struct PrintObserver {
    /// Print a step line every this many steps (1 = all).
    pub every: usize,
}

impl Default for PrintObserver {
    fn default() -> Self {
        Self { every: 10 }
    }
}

/// The one-line text of an event (also used for `train.log`).
pub fn event_line(e: &TrainEvent) -> String {
    match e {
        TrainEvent::Started {
            run_id,
            run_dir,
            train_images,
            val_images,
            class_counts,
            total_iters,
            ..
        } => {
            let classes: Vec<String> = class_counts
                .iter()
                .map(|(n, c)| format!("{n}: {c}"))
                .collect();
            format!(
                "run {run_id} started in {}: {train_images} train / {val_images} val images, {total_iters} steps; instances per class: {}",
                run_dir.display(),
                classes.join(", ")
            )
        }
        TrainEvent::Step {
            epoch,
            iter,
            losses,
            total,
            lr,
            images_per_sec,
            ..
        } => {
            let parts: Vec<String> = losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            format!(
                "epoch {epoch} step {iter}: loss {total:.4} ({}) lr {lr:.6} {images_per_sec:.2} img/s",
                parts.join(", ")
            )
        }
        TrainEvent::EpochEnd {
            epoch,
            mean_loss,
            steps,
            val_segm_ap,
            val_bbox_ap,
        } => {
            let mut line =
                format!("epoch {epoch} done: mean loss {mean_loss:.4} over {steps} steps");
            if let (Some(segm), Some(bbox)) = (val_segm_ap, val_bbox_ap) {
                line.push_str(&format!("; validation mask AP {segm:.4}, box AP {bbox:.4}"));
            }
            line
        }
        TrainEvent::Refit {
            epochs,
            images,
            total_iters,
        } => format!(
            "refit on {images} train + validation images for {epochs} epochs (steps up to {total_iters})"
        ),
        TrainEvent::CheckpointSaved { path } => format!("checkpoint saved: {}", path.display()),
        TrainEvent::Finished {
            iterations,
            cancelled,
            final_loss,
        } => format!(
            "{} after {iterations} steps; final loss {}",
            if *cancelled { "cancelled" } else { "finished" },
            final_loss.map_or_else(|| "-".to_owned(), |l| format!("{l:.4}"))
        ),
        TrainEvent::Failed { error } => format!("failed: {error}"),
    }
}

impl TrainObserver for PrintObserver {
    fn on_event(&mut self, e: &TrainEvent) {
        if let TrainEvent::Step { iter, .. } = e
            && iter % self.every.max(1) != 0
        {
            return;
        }
        println!("{}", event_line(e));
    }
}

/// Sends events over a bounded channel without ever blocking on `Step` events: when the
/// receiver lags, steps are dropped (and counted). Every other event is kept: it waits in a
/// small queue that is flushed on the next event, and `Finished`/`Failed` (after which nothing
/// flushes) block until the receiver takes them or is gone.
#[derive(Debug)]
pub struct ChannelObserver {
    tx: Sender<TrainEvent>,
    pending: std::collections::VecDeque<TrainEvent>,
    dropped: u64,
}

impl ChannelObserver {
    /// An observer feeding `tx` (make it with `crossbeam_channel::bounded`).
    pub fn new(tx: Sender<TrainEvent>) -> Self {
        Self {
            tx,
            pending: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    /// `Step` events dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Important events still waiting for room in the channel.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends queued events while the channel has room; `false` when some remain.
    fn flush(&mut self) -> bool {
        while let Some(e) = self.pending.pop_front() {
            match self.tx.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.pending.push_front(e);
                    return false;
                }
                // Nobody listens any more: nothing to keep.
                Err(TrySendError::Disconnected(_)) => self.pending.clear(),
            }
        }
        true
    }

    /// Blocks until every queued event is sent (or the receiver is gone).
    pub fn flush_blocking(&mut self) {
        while let Some(e) = self.pending.pop_front() {
            if self.tx.send(e).is_err() {
                self.pending.clear();
            }
        }
    }
}

impl TrainObserver for ChannelObserver {
    fn on_event(&mut self, e: &TrainEvent) {
        let flushed = self.flush();
        match e {
            TrainEvent::Step { .. } => {
                // A step may not overtake queued important events.
                if !flushed || self.tx.try_send(e.clone()).is_err() {
                    self.dropped += 1;
                }
            }
            TrainEvent::Finished { .. } | TrainEvent::Failed { .. } => {
                self.pending.push_back(e.clone());
                self.flush_blocking();
            }
            _ => {
                self.pending.push_back(e.clone());
                self.flush();
            }
        }
    }
}

impl Drop for ChannelObserver {
    fn drop(&mut self) {
        self.flush_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_observer_drops_only_steps() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let mut obs = ChannelObserver::new(tx);
        let step = |iter| TrainEvent::Step {
            epoch: 0,
            iter,
            losses: BTreeMap::new(),
            total: 1.0,
            lr: 0.1,
            images_per_sec: 1.0,
            memory_bytes: None,
        };
        let epoch_end = |epoch| TrainEvent::EpochEnd {
            epoch,
            mean_loss: 1.0,
            steps: 1,
            val_segm_ap: None,
            val_bbox_ap: None,
        };
        for i in 0..5 {
            obs.on_event(&step(i));
        }
        assert_eq!(obs.dropped(), 3);
        // The channel is full: epoch ends queue up instead of being lost, and steps after them
        // are dropped so they never overtake.
        obs.on_event(&epoch_end(0));
        obs.on_event(&step(5));
        obs.on_event(&epoch_end(1));
        assert_eq!(obs.pending(), 2);
        assert_eq!(obs.dropped(), 4);
        let got: Vec<TrainEvent> = rx.try_iter().collect();
        assert_eq!(got, vec![step(0), step(1)]);
        obs.on_event(&step(6));
        assert_eq!(obs.pending(), 0);
        let got: Vec<TrainEvent> = rx.try_iter().collect();
        assert_eq!(got, vec![epoch_end(0), epoch_end(1)]);
        // Finished blocks until the GUI takes it: a reader thread drains the channel.
        for i in 7..9 {
            obs.on_event(&step(i));
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            rx.iter().collect::<Vec<_>>()
        });
        obs.on_event(&TrainEvent::Finished {
            iterations: 9,
            cancelled: false,
            final_loss: None,
        });
        drop(obs);
        let rest = reader.join().unwrap();
        assert!(matches!(rest.last(), Some(TrainEvent::Finished { .. })));
    }
}
