//! A run's plot data ([`History`]): the live [`TrainEvent`]s folded into loss, learning-rate
//! and validation-AP series, and the same series read back from a run folder's `metrics.csv`
//! and `epochs.csv` ([`read_history`]) for a run opened after it ran. The Train tab draws them;
//! nothing here draws.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::train::TrainEvent;
use crate::train::csv;
use crate::train::state::{LAST_CHECKPOINT, STATE_FILE};

/// Truncates a series sorted by x to the points before `x`.
fn cut_at(points: &mut Vec<[f64; 2]>, x: f64) {
    points.truncate(points.partition_point(|p| p[0] < x));
}

/// Puts the points of `older` before `x` (the first point of `points`) in front of `points`.
fn prepend_older(points: &mut Vec<[f64; 2]>, mut older: Vec<[f64; 2]>) {
    cut_at(&mut older, points.first().map_or(f64::INFINITY, |p| p[0]));
    if !older.is_empty() {
        older.append(points);
        *points = older;
    }
}

/// What the plots show of the current (or last) run.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Run id.
    pub run_id: String,
    /// Planned steps.
    pub total_iters: usize,
    /// `(step, value)` per loss component.
    pub losses: BTreeMap<String, Vec<[f64; 2]>>,
    /// `(step, total loss)`.
    pub total: Vec<[f64; 2]>,
    /// `(step, learning rate)`.
    pub lr: Vec<[f64; 2]>,
    /// `(epoch, mean loss)`.
    pub epoch_loss: Vec<[f64; 2]>,
    /// `(epoch, validation mask AP)`.
    pub val_segm_ap: Vec<[f64; 2]>,
    /// `(epoch, validation box AP)`.
    pub val_bbox_ap: Vec<[f64; 2]>,
    /// Throughput of the last step.
    pub images_per_sec: Option<f64>,
    /// Memory after the last step, when the trainer reports it.
    pub memory_bytes: Option<u64>,
    /// Steps seen.
    pub steps: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// When the first step of this session (fresh or resumed) arrived (for the ETA).
    pub first_step_at: Option<Instant>,
    /// That step's index.
    pub first_step: usize,
    /// The last line of status (finished, failed, ...).
    pub status: String,
}

impl History {
    /// Folds one event in.
    pub fn apply(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Started {
                run_id,
                total_iters,
                train_images,
                val_images,
                ..
            } => {
                let status = format!(
                    "run {run_id}: {train_images} training / {val_images} validation images"
                );
                if *run_id == self.run_id {
                    // A resumed or continued run streams into the same plots.
                    self.total_iters = *total_iters;
                    self.first_step_at = None;
                    self.status = status;
                } else {
                    *self = Self {
                        run_id: run_id.clone(),
                        total_iters: *total_iters,
                        status,
                        ..Self::default()
                    };
                }
            }
            TrainEvent::Step {
                epoch,
                iter,
                losses,
                total,
                lr,
                images_per_sec,
                memory_bytes,
            } => {
                let x = *iter as f64;
                if self.total.last().is_some_and(|p| p[0] >= x) {
                    // A resumed run restarts at its last checkpoint: later points are redone.
                    cut_at(&mut self.total, x);
                    cut_at(&mut self.lr, x);
                    for pts in self.losses.values_mut() {
                        cut_at(pts, x);
                    }
                }
                for (name, v) in losses {
                    self.losses.entry(name.clone()).or_default().push([x, *v]);
                }
                self.total.push([x, *total]);
                self.lr.push([x, *lr]);
                self.images_per_sec = Some(*images_per_sec);
                self.memory_bytes = memory_bytes.or(self.memory_bytes);
                self.steps = iter + 1;
                self.epoch = *epoch;
                if self.first_step_at.is_none() {
                    self.first_step_at = Some(Instant::now());
                    self.first_step = *iter;
                }
            }
            TrainEvent::EpochEnd {
                epoch,
                mean_loss,
                val_segm_ap,
                val_bbox_ap,
                ..
            } => {
                let x = *epoch as f64 + 1.0;
                for pts in [
                    &mut self.epoch_loss,
                    &mut self.val_segm_ap,
                    &mut self.val_bbox_ap,
                ] {
                    cut_at(pts, x);
                }
                self.epoch_loss.push([x, *mean_loss]);
                if let Some(ap) = val_segm_ap {
                    self.val_segm_ap.push([x, *ap]);
                }
                if let Some(ap) = val_bbox_ap {
                    self.val_bbox_ap.push([x, *ap]);
                }
            }
            TrainEvent::Refit {
                epochs,
                images,
                total_iters,
            } => {
                self.total_iters = *total_iters;
                self.status =
                    format!("refit on {images} train + validation images for {epochs} epochs");
            }
            TrainEvent::CheckpointSaved { .. } => {}
            TrainEvent::Finished {
                iterations,
                cancelled,
                final_loss,
            } => {
                let verb = if *cancelled { "stopped" } else { "finished" };
                let loss = final_loss.map_or_else(|| "-".to_owned(), |l| format!("{l:.4}"));
                self.status = format!("{verb} after {iterations} steps; final loss {loss}");
            }
            TrainEvent::Failed { error } => self.status = format!("failed: {error}"),
        }
    }

    /// Puts the points of `older` (this run read back from its files, [`read_history`]) in front
    /// of the points this history received live; where both have a step, the live one stays.
    pub fn merge_older(&mut self, older: History) {
        let live = !self.total.is_empty();
        prepend_older(&mut self.total, older.total);
        prepend_older(&mut self.lr, older.lr);
        for (name, pts) in older.losses {
            prepend_older(self.losses.entry(name).or_default(), pts);
        }
        prepend_older(&mut self.epoch_loss, older.epoch_loss);
        prepend_older(&mut self.val_segm_ap, older.val_segm_ap);
        prepend_older(&mut self.val_bbox_ap, older.val_bbox_ap);
        self.steps = self.steps.max(older.steps);
        if self.total_iters == 0 {
            self.total_iters = older.total_iters;
        }
        if !live {
            self.epoch = older.epoch;
            self.images_per_sec = older.images_per_sec;
            self.memory_bytes = older.memory_bytes;
        }
    }

    /// Seconds left at the mean pace since the first step.
    pub fn eta_secs(&self) -> Option<f64> {
        let started = self.first_step_at?;
        // The first step's own time is not in `elapsed`, so pace over steps - 1.
        let done = self
            .steps
            .checked_sub(self.first_step + 1)
            .filter(|&d| d > 0)?;
        let per_step = started.elapsed().as_secs_f64() / done as f64;
        Some(per_step * self.total_iters.saturating_sub(self.steps) as f64)
    }
}

/// Reads a run's plots back from its folder: every step of `metrics.csv` (losses, learning
/// rate) and every epoch of `epochs.csv` (mean loss, validation AP), for a run opened after
/// it ran. Rows that do not parse (a crash mid-write) are left out with one warning.
pub fn read_history(run_dir: &Path) -> anyhow::Result<History> {
    let path = run_dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the run's steps: {e}", path.display()))?;
    let (header, lines) = csv::header(&text);
    let col = |name: &str| csv::col(&header, name);
    let (Some(iter_col), Some(total_col)) = (col("iter"), col("total")) else {
        anyhow::bail!(
            "{}: the header has no iter and total columns: {:?}",
            path.display(),
            header.join(",")
        );
    };
    let (epoch_col, lr_col) = (col("epoch"), col("lr"));
    let (speed_col, memory_col) = (col("images_per_sec"), col("memory_bytes"));
    let loss_cols: Vec<(String, usize)> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.starts_with("loss_"))
        .map(|(i, h)| ((*h).to_owned(), i))
        .collect();
    let mut h = History {
        run_id: run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..History::default()
    };
    let mut skipped = 0usize;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let v = csv::cells(line);
        let num = |c: Option<usize>| csv::num(&v, c);
        let iter = v.get(iter_col).and_then(|s| s.parse::<usize>().ok());
        let (Some(iter), Some(total)) = (iter, num(Some(total_col))) else {
            skipped += 1;
            continue;
        };
        let x = iter as f64;
        if v.len() != header.len() || h.total.last().is_some_and(|p| p[0] >= x) {
            skipped += 1; // cut short, or out of order
            continue;
        }
        h.total.push([x, total]);
        for (name, c) in &loss_cols {
            let y = num(Some(*c)).unwrap_or(f64::NAN);
            h.losses.entry(name.clone()).or_default().push([x, y]);
        }
        if let Some(lr) = num(lr_col) {
            h.lr.push([x, lr]);
        }
        h.images_per_sec = num(speed_col).or(h.images_per_sec);
        h.memory_bytes = memory_col
            .and_then(|c| v.get(c))
            .and_then(|s| s.parse::<u64>().ok())
            .or(h.memory_bytes);
        if let Some(e) = epoch_col
            .and_then(|c| v.get(c))
            .and_then(|s| s.parse().ok())
        {
            h.epoch = e;
        }
        h.steps = iter + 1;
    }
    if skipped > 0 {
        log::warn!(
            "{}: {skipped} rows could not be read; the plots leave them out",
            path.display()
        );
    }
    let epochs_path = run_dir.join("epochs.csv");
    match std::fs::read_to_string(&epochs_path) {
        Ok(text) => {
            let (header, lines) = csv::header(&text);
            let col = |name: &str| csv::col(&header, name);
            let (epoch_col, loss_col) = (col("epoch"), col("mean_loss"));
            let (segm_col, bbox_col) = (col("val_segm_ap"), col("val_bbox_ap"));
            for line in lines.filter(|l| !l.trim().is_empty()) {
                let v = csv::cells(line);
                let num = |c: Option<usize>| csv::num(&v, c);
                let Some(epoch) = num(epoch_col) else {
                    continue;
                };
                let x = epoch + 1.0;
                if h.epoch_loss.last().is_some_and(|p| p[0] >= x) {
                    continue;
                }
                if let Some(l) = num(loss_col) {
                    h.epoch_loss.push([x, l]);
                }
                if let Some(ap) = num(segm_col) {
                    h.val_segm_ap.push([x, ap]);
                }
                if let Some(ap) = num(bbox_col) {
                    h.val_bbox_ap.push([x, ap]);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("{}: {e}", epochs_path.display()),
    }
    let state_path = run_dir.join(LAST_CHECKPOINT).join(STATE_FILE);
    h.total_iters = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("total_iters").and_then(serde_json::Value::as_u64))
        .map_or(h.steps, |t| t as usize);
    h.status = format!("run {}: {} steps recorded", h.run_id, h.steps);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainConfig;
    use std::path::PathBuf;

    #[test]
    fn resumed_steps_replace_later_points_and_older_points_merge_in_front() {
        let step = |iter: usize, total: f64| TrainEvent::Step {
            epoch: 0,
            iter,
            losses: [("loss_mask".to_owned(), total / 2.0)].into(),
            total,
            lr: 0.1,
            images_per_sec: 1.0,
            memory_bytes: None,
        };
        let mut live = History {
            run_id: "r".into(),
            ..History::default()
        };
        for i in 5..8 {
            live.apply(&step(i, i as f64));
        }
        // Resuming from a checkpoint at step 6 redoes steps 6 and 7.
        live.apply(&step(6, 60.0));
        assert_eq!(live.total, vec![[5.0, 5.0], [6.0, 60.0]]);
        assert_eq!(live.losses["loss_mask"], vec![[5.0, 2.5], [6.0, 30.0]]);
        let mut older = History::default();
        for i in 0..7 {
            older.apply(&step(i, 100.0 + i as f64));
        }
        older.total_iters = 20;
        live.merge_older(older);
        let xs: Vec<f64> = live.total.iter().map(|p| p[0]).collect();
        assert_eq!(xs, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            live.total[4],
            [4.0, 104.0],
            "older points before the live ones"
        );
        assert_eq!(live.total[5], [5.0, 5.0], "the live point wins");
        assert_eq!(live.losses["loss_mask"].len(), 7);
        assert_eq!((live.steps, live.total_iters), (7, 20));
    }

    #[test]
    fn run_files_replay_into_a_history() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("20260101-000000");
        std::fs::create_dir_all(&run).unwrap();
        let mut csv = String::from(
            "epoch,iter,loss_box_reg,loss_classifier,loss_mask,loss_objectness,loss_rpn_box_reg,total,lr,images_per_sec,memory_bytes\n",
        );
        for i in 0..30_000 {
            csv.push_str(&format!(
                "{},{i},0.1,0.2,0.3,0.4,0.5,{},0.01,2.5,{}\n",
                i / 10_000,
                1.5 + (i % 3) as f64,
                1000 + i
            ));
        }
        csv.push_str("2,30000,0.1,0.2"); // cut short by a crash
        std::fs::write(run.join("metrics.csv"), csv).unwrap();
        std::fs::write(
            run.join("epochs.csv"),
            "epoch,steps,mean_loss,loss_box_reg,loss_classifier,loss_mask,loss_objectness,loss_rpn_box_reg,lr,val_segm_ap,val_bbox_ap,seconds\n\
             0,10000,2.5,0.1,0.2,0.3,0.4,0.5,0.01,0.25,0.5,12\n\
             1,10000,2.4,0.1,0.2,0.3,0.4,0.5,0.01,,,12\n",
        )
        .unwrap();
        let start = Instant::now();
        let h = read_history(&run).unwrap();
        assert!(start.elapsed().as_secs_f64() < 5.0, "{:?}", start.elapsed());
        assert_eq!(h.run_id, "20260101-000000");
        assert_eq!((h.total.len(), h.steps, h.epoch), (30_000, 30_000, 2));
        assert_eq!(h.total[4], [4.0, 2.5]);
        assert_eq!(h.losses.len(), 5);
        assert_eq!(h.losses["loss_mask"][29_999], [29_999.0, 0.3]);
        assert_eq!(h.lr.len(), 30_000);
        assert_eq!(h.memory_bytes, Some(30_999));
        assert_eq!(h.epoch_loss, vec![[1.0, 2.5], [2.0, 2.4]]);
        assert_eq!(h.val_segm_ap, vec![[1.0, 0.25]]);
        assert_eq!(h.val_bbox_ap, vec![[1.0, 0.5]]);
        assert_eq!(h.total_iters, 30_000, "no state.json: the recorded steps");

        std::fs::write(run.join("metrics.csv"), "epoch,step\n0,0\n").unwrap();
        let err = read_history(&run).unwrap_err().to_string();
        assert!(
            err.contains("metrics.csv") && err.contains("no iter and total"),
            "{err}"
        );
        let err = read_history(&dir.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone") && err.contains("metrics.csv"), "{err}");
    }

    #[test]
    fn history_folds_events() {
        let mut h = History::default();
        h.apply(&TrainEvent::Started {
            run_id: "r1".into(),
            run_dir: PathBuf::from("/tmp/r1"),
            config: TrainConfig::default(),
            train_images: 8,
            val_images: 2,
            class_counts: vec![],
            total_iters: 10,
        });
        let losses: BTreeMap<String, f64> = [("loss_mask".to_owned(), 0.7)].into();
        h.apply(&TrainEvent::Step {
            epoch: 0,
            iter: 0,
            losses,
            total: 2.5,
            lr: 0.001,
            images_per_sec: 3.0,
            memory_bytes: Some(1 << 20),
        });
        h.apply(&TrainEvent::EpochEnd {
            epoch: 0,
            mean_loss: 2.5,
            steps: 1,
            val_segm_ap: Some(0.25),
            val_bbox_ap: None,
        });
        assert_eq!(h.total, vec![[0.0, 2.5]]);
        assert_eq!(h.losses["loss_mask"], vec![[0.0, 0.7]]);
        assert_eq!(h.val_segm_ap, vec![[1.0, 0.25]]);
        assert!(h.val_bbox_ap.is_empty());
        assert_eq!((h.steps, h.total_iters), (1, 10));
        assert_eq!(h.memory_bytes, Some(1 << 20));
        h.apply(&TrainEvent::Finished {
            iterations: 1,
            cancelled: true,
            final_loss: Some(2.5),
        });
        assert_eq!(h.status, "stopped after 1 steps; final loss 2.5000");
    }
}
