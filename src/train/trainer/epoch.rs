//! The loop of a session: steps with pause and cancel, `metrics.csv` rows, and the end of each
//! epoch (record, `checkpoints/last`, validation, `checkpoints/best`, early stopping).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::report::{Reporter, guarded};
use super::setup::Session;
use super::{
    BEST_CHECKPOINT, FROZEN_PREFIX, LAST_CHECKPOINT, LOSS_NAMES, RunSummary, TrainControl,
};
use crate::train::observer::TrainEvent;
use crate::train::state::{self as run_state, EpochRecord};

impl Session {
    fn last_dir(&self) -> PathBuf {
        self.run_dir.join(LAST_CHECKPOINT)
    }

    fn save_last(&self, reporter: &mut Reporter<'_>) -> anyhow::Result<PathBuf> {
        let dir = self.last_dir();
        run_state::write_checkpoint(
            &dir,
            &self.spec,
            &self.class_names,
            &self.vs,
            Some((&self.opt, &self.state)),
        )
        .with_context(|| format!("writing the checkpoint {dir:?}"))?;
        reporter.emit(&TrainEvent::CheckpointSaved { path: dir.clone() });
        Ok(dir)
    }

    /// Whether every trainable weight is finite (checked before a checkpoint replaces the last).
    fn weights_finite(&self) -> bool {
        tch::no_grad(|| {
            self.vs
                .trainable_variables()
                .iter()
                .all(|t| t.isfinite().all().int64_value(&[]) != 0)
        })
    }

    /// Mask and box AP of `checkpoint` on the validation images.
    /// A panic in libtorch (second model on a full GPU, a bad tensor) is an error here, like
    /// one in a step.
    fn validate(&self, checkpoint: &Path) -> anyhow::Result<(f64, f64)> {
        guarded("validation", || {
            let predictor = crate::infer::Predictor::load(checkpoint, self.device, None)?;
            let r = crate::eval::project::evaluate_set(&self.val_set, &predictor, &mut |_, _| {
                crate::fault::hit("train-validation");
            })
            .context("validation")?;
            Ok((r.segm.stats[0], r.bbox.stats[0]))
        })
    }

    fn nan_error(
        &self,
        what: &str,
        value: f64,
        epoch: usize,
        parts: &BTreeMap<String, f64>,
    ) -> anyhow::Error {
        let detail: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let kept = match run_state::checkpoint_dir(&self.run_dir, LAST_CHECKPOINT) {
            Some(dir) => format!("the last good checkpoint {} is kept", dir.display()),
            None => "no checkpoint had been written yet".to_owned(),
        };
        anyhow::anyhow!(
            "the {what} became {value} at step {} (epoch {epoch}; {}); training stopped, {kept}. \
             Lower the learning rate or set clip_grad_norm.",
            self.state.iter,
            detail.join(", ")
        )
    }

    pub(super) fn run(
        mut self,
        control: &TrainControl,
        reporter: &mut Reporter<'_>,
    ) -> anyhow::Result<RunSummary> {
        let mut counts = vec![0u64; self.class_names.len()];
        for image in &self.train_images {
            for inst in image.instances.iter().filter(|i| !i.iscrowd) {
                if let Some(&l) = self.label_of.get(&inst.class_id) {
                    counts[(l - 1) as usize] += 1;
                }
            }
        }
        reporter.emit(&TrainEvent::Started {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            config: self.cfg.clone(),
            train_images: self.train_images.len(),
            val_images: self.val_set.images.len(),
            class_counts: self.class_names.iter().cloned().zip(counts).collect(),
            total_iters: self.state.total_iters,
        });
        if let Some(at) = self.resumed_at {
            reporter.note(&format!(
                "resumed at step {at} (epoch {}, {} steps into it)",
                self.state.epoch, self.state.partial.steps
            ));
        }
        let mut cancelled = false;
        let mut checkpoint = None;
        let mut best = run_state::checkpoint_dir(&self.run_dir, BEST_CHECKPOINT);
        while !self.state.finished {
            if self.state.iter >= self.state.total_iters || self.state.epoch >= self.state.epochs {
                self.state.finished = true;
                break;
            }
            let epoch = self.state.epoch;
            self.opt
                .set_trainable(FROZEN_PREFIX, epoch >= self.cfg.freeze_epochs);
            if epoch < self.cfg.freeze_epochs && self.state.partial.steps == 0 {
                reporter.note(&format!("epoch {epoch}: backbone body frozen"));
            }
            // A resumed epoch restarts at the batch after the last one taken; breaking out
            // (cancel, step limit) drops the iterator, which stops its worker threads.
            let first = self.state.partial.steps;
            let mut batches = self.loader.epoch_from(epoch, first);
            loop {
                let waiting = crate::profile::scope("data_wait");
                let Some(batch) = batches.next() else { break };
                drop(waiting);
                if self.state.iter >= self.state.total_iters {
                    break;
                }
                if control.is_paused() {
                    reporter.note(&format!("paused before step {}", self.state.iter));
                    while control.is_paused() && !control.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    reporter.note("resumed");
                }
                if control.is_cancelled() {
                    cancelled = true;
                    break;
                }
                let started = Instant::now();
                let iter = self.state.iter;
                let lr = self.state.schedule.lr(&self.cfg, iter);
                let batch = batch.with_context(|| format!("loading the batch of step {iter}"))?;
                let losses = self.step(&batch, lr)?;
                if let Some((what, value)) = losses.non_finite {
                    return Err(self.nan_error(what, value, epoch, &losses.parts));
                }
                let seconds = started.elapsed().as_secs_f64();
                let images_per_sec = batch.len() as f64 / seconds.max(1e-9);
                let memory_bytes = run_state::process_rss();
                let cols: Vec<String> = LOSS_NAMES
                    .iter()
                    .map(|k| {
                        losses
                            .parts
                            .get(*k)
                            .copied()
                            .unwrap_or(f64::NAN)
                            .to_string()
                    })
                    .collect();
                writeln!(
                    self.metrics,
                    "{epoch},{iter},{},{},{lr},{images_per_sec},{}",
                    cols.join(","),
                    losses.total,
                    memory_bytes.map_or_else(String::new, |m| m.to_string())
                )?;
                self.metrics.flush()?;
                let p = &mut self.state.partial;
                p.steps += 1;
                p.loss_sum += losses.total;
                for (k, v) in &losses.parts {
                    *p.loss_sums.entry(k.clone()).or_default() += v;
                }
                p.seconds += seconds;
                p.lr = lr;
                self.state.iter += 1;
                reporter.emit(&TrainEvent::Step {
                    epoch,
                    iter,
                    losses: losses.parts,
                    total: losses.total,
                    lr,
                    images_per_sec,
                    memory_bytes,
                });
            }
            if cancelled {
                break;
            }
            self.end_epoch(epoch, reporter, &mut checkpoint, &mut best)?;
        }
        if cancelled {
            if self.weights_finite() {
                checkpoint = Some(self.save_last(reporter)?);
            } else {
                reporter.note("cancelled with non-finite weights: the last checkpoint is kept");
            }
        }
        let final_loss = if self.state.partial.steps > 0 {
            Some(self.state.partial.loss_sum / self.state.partial.steps as f64)
        } else {
            self.state.history.last().map(|r| r.mean_loss)
        };
        if self.state.stopped_early {
            reporter.note(&format!(
                "early stopping: validation mask AP did not improve for {} evaluations (best {:.4} at epoch {})",
                self.state.evals_since_best,
                self.state.best_segm_ap.unwrap_or(f64::NAN),
                self.state.best_epoch.map_or_else(|| "-".to_owned(), |e| e.to_string())
            ));
        }
        reporter.emit(&TrainEvent::Finished {
            iterations: self.state.iter,
            cancelled,
            final_loss,
        });
        Ok(RunSummary {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            iterations: self.state.iter,
            epochs_completed: self
                .state
                .history
                .iter()
                .filter(|r| r.steps == self.loader.steps_in_epoch(r.epoch))
                .count(),
            cancelled,
            stopped_early: self.state.stopped_early,
            final_loss,
            checkpoint: checkpoint
                .or_else(|| run_state::checkpoint_dir(&self.run_dir, LAST_CHECKPOINT)),
            best_checkpoint: best,
            best_segm_ap: self.state.best_segm_ap,
            refit_checkpoint: None,
        })
    }

    /// Closes the epoch: record, checkpoint, validation, best checkpoint, early stopping.
    fn end_epoch(
        &mut self,
        epoch: usize,
        reporter: &mut Reporter<'_>,
        checkpoint: &mut Option<PathBuf>,
        best: &mut Option<PathBuf>,
    ) -> anyhow::Result<()> {
        let p = std::mem::take(&mut self.state.partial);
        if p.steps == 0 {
            self.state.finished = true;
            return Ok(());
        }
        let steps = p.steps as f64;
        self.state.history.push(EpochRecord {
            epoch,
            steps: p.steps,
            mean_loss: p.loss_sum / steps,
            mean_losses: p
                .loss_sums
                .iter()
                .map(|(k, v)| (k.clone(), v / steps))
                .collect(),
            lr: p.lr,
            val_segm_ap: None,
            val_bbox_ap: None,
            seconds: p.seconds,
        });
        self.state.epoch = epoch + 1;
        let last_epoch =
            self.state.epoch >= self.state.epochs || self.state.iter >= self.state.total_iters;
        if last_epoch {
            self.state.finished = true;
        }
        if !self.weights_finite() {
            return Err(self.nan_error("weights", f64::NAN, epoch, &BTreeMap::new()));
        }
        let dir = self.save_last(reporter)?;
        *checkpoint = Some(dir.clone());
        let every = self.cfg.eval_every;
        let due = every > 0
            && !self.val_set.images.is_empty()
            && ((epoch + 1).is_multiple_of(every) || last_epoch);
        if due {
            let (segm, bbox) = match self.validate(&dir) {
                Ok(v) => v,
                Err(e) => {
                    // The epoch's record stays with the run (its checkpoint is written).
                    if let Err(w) = run_state::write_epochs_csv(&self.run_dir, &self.state.history)
                    {
                        reporter.note(&format!("could not write epochs.csv: {w:#}"));
                    }
                    return Err(e);
                }
            };
            if let Some(r) = self.state.history.last_mut() {
                r.val_segm_ap = Some(segm);
                r.val_bbox_ap = Some(bbox);
            }
            if self.state.record_validation(epoch, segm, self.cfg.patience) {
                let best_dir = self.run_dir.join(BEST_CHECKPOINT);
                run_state::write_checkpoint(
                    &best_dir,
                    &self.spec,
                    &self.class_names,
                    &self.vs,
                    None,
                )
                .with_context(|| format!("writing the checkpoint {best_dir:?}"))?;
                reporter.emit(&TrainEvent::CheckpointSaved {
                    path: best_dir.clone(),
                });
                *best = Some(best_dir);
            }
            // The checkpoint's state now records the evaluation (one atomic file).
            crate::fsutil::write_atomic(
                &dir.join(run_state::STATE_FILE),
                (serde_json::to_string_pretty(&self.state)? + "\n").as_bytes(),
            )?;
        }
        run_state::write_epochs_csv(&self.run_dir, &self.state.history)?;
        if let Some(r) = self.state.history.last() {
            reporter.emit(&TrainEvent::EpochEnd {
                epoch,
                mean_loss: r.mean_loss,
                steps: r.steps,
                val_segm_ap: r.val_segm_ap,
                val_bbox_ap: r.val_bbox_ap,
            });
        }
        Ok(())
    }
}
