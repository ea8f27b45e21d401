//! The DDP script's `metrics.csv` (one row per step, appended) and `epochs.csv` (rewritten
//! whole after each epoch) turned into `Step` and `EpochEnd` events as rows appear. Only
//! complete lines are parsed: rank 0 may be writing the last one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::LOSS_NAMES;
use crate::train::csv;
use crate::train::observer::TrainEvent;

/// The complete lines of `path` (up to its last `\n`) after the header, with the header;
/// `None` when the file is missing or has no complete header yet.
fn complete_lines(path: &Path) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let end = text.rfind('\n')?;
    let mut lines = text[..end].lines();
    let header = lines.next()?.to_owned();
    Some((
        header,
        lines
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// One `epochs.csv` row as our trainer's `EpochEnd` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    /// 0-based epoch.
    pub epoch: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// Mean total loss.
    pub mean_loss: f64,
    /// Validation mask AP, when evaluated.
    pub val_segm_ap: Option<f64>,
    /// Validation box AP, when evaluated.
    pub val_bbox_ap: Option<f64>,
}

/// The rows of `epochs.csv` (complete lines with an epoch and a step count).
pub fn read_epochs(run_dir: &Path) -> Vec<EpochRow> {
    let Some((header, rows)) = complete_lines(&run_dir.join("epochs.csv")) else {
        return Vec::new();
    };
    let header = csv::cells(&header);
    let col = |name| csv::col(&header, name);
    rows.iter()
        .filter_map(|l| {
            let cells = csv::cells(l);
            let num = |name| csv::num(&cells, col(name));
            Some(EpochRow {
                epoch: num("epoch")? as usize,
                steps: num("steps")? as usize,
                mean_loss: num("mean_loss").unwrap_or(f64::NAN),
                val_segm_ap: num("val_segm_ap").filter(|v| v.is_finite()),
                val_bbox_ap: num("val_bbox_ap").filter(|v| v.is_finite()),
            })
        })
        .collect()
}

/// A `Step` event from one `metrics.csv` row (`None` when `epoch` or `iter` is missing).
fn step_event(header: &[&str], line: &str) -> Option<TrainEvent> {
    let cells = csv::cells(line);
    let num = |name| csv::num(&cells, csv::col(header, name));
    let losses: BTreeMap<String, f64> = LOSS_NAMES
        .iter()
        .filter_map(|n| Some(((*n).to_owned(), num(n)?)))
        .collect();
    Some(TrainEvent::Step {
        epoch: num("epoch")? as usize,
        iter: num("iter")? as usize,
        total: num("total").unwrap_or_else(|| losses.values().sum()),
        losses,
        lr: num("lr").unwrap_or(f64::NAN),
        images_per_sec: num("images_per_sec").unwrap_or(0.0),
        memory_bytes: num("memory_bytes")
            .filter(|m| m.is_finite() && *m >= 0.0)
            .map(|m| m as u64),
    })
}

/// Follows a run folder's CSV files, emitting each step and epoch once.
#[derive(Debug)]
pub struct Tail {
    run_dir: PathBuf,
    /// The next step to emit (rows of earlier steps are old: a resumed run keeps them).
    pub next_iter: usize,
    /// Epochs emitted.
    pub epochs: usize,
    /// Total losses of the steps since the last finished epoch (a cancel's final loss).
    pub partial: Vec<f64>,
    /// The last finished epoch's mean loss.
    pub last_epoch_loss: Option<f64>,
}

impl Tail {
    /// A tail that emits steps from `next_iter` and epochs after the first `epochs`.
    pub fn new(run_dir: &Path, next_iter: usize, epochs: usize) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            next_iter,
            epochs,
            partial: Vec::new(),
            last_epoch_loss: None,
        }
    }

    /// The events of rows that appeared since the last call, steps before epochs.
    pub fn poll(&mut self) -> Vec<TrainEvent> {
        let mut out = Vec::new();
        if let Some((header, rows)) = complete_lines(&self.run_dir.join("metrics.csv")) {
            let header = csv::cells(&header);
            for line in &rows {
                if let Some(e) = step_event(&header, line)
                    && let TrainEvent::Step { iter, total, .. } = &e
                    && *iter >= self.next_iter
                {
                    self.next_iter = iter + 1;
                    self.partial.push(*total);
                    out.push(e);
                }
            }
        }
        for row in read_epochs(&self.run_dir).into_iter().skip(self.epochs) {
            self.epochs += 1;
            self.partial.clear();
            self.last_epoch_loss = Some(row.mean_loss);
            out.push(TrainEvent::EpochEnd {
                epoch: row.epoch,
                mean_loss: row.mean_loss,
                steps: row.steps,
                val_segm_ap: row.val_segm_ap,
                val_bbox_ap: row.val_bbox_ap,
            });
        }
        out
    }

    /// The final loss to report: the last epoch's mean, or the mean of the steps after it when
    /// the run stopped mid-epoch.
    pub fn final_loss(&self, mid_epoch: bool) -> Option<f64> {
        if mid_epoch && !self.partial.is_empty() {
            return Some(self.partial.iter().sum::<f64>() / self.partial.len() as f64);
        }
        self.last_epoch_loss
    }
}

/// Keeps the header and the rows of steps before `iter` of `metrics.csv` (a cancelled
/// session logged steps of an epoch it did not finish; the resumed one repeats them).
pub fn truncate_metrics(run_dir: &Path, iter: usize) -> anyhow::Result<()> {
    let path = run_dir.join("metrics.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let (header, _) = csv::header(&text);
    let col = csv::col(&header, "iter");
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate() {
        let step = csv::num(&csv::cells(line), col);
        if i == 0 || step.is_some_and(|s| (s as usize) < iter) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_atomic(&path, kept.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "epoch,iter,loss_box_reg,loss_classifier,loss_mask,loss_objectness,\
                           loss_rpn_box_reg,total,lr,images_per_sec,memory_bytes\n";
    const EPOCHS: &str = "epoch,steps,mean_loss,loss_box_reg,loss_classifier,loss_mask,\
                          loss_objectness,loss_rpn_box_reg,lr,val_segm_ap,val_bbox_ap,seconds\n";

    #[test]
    fn rows_are_emitted_once_and_a_partial_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let mut tail = Tail::new(run, 0, 0);
        assert!(tail.poll().is_empty(), "no files yet");
        std::fs::write(
            run.join("metrics.csv"),
            format!("{METRICS}0,0,0.1,0.2,0.3,0.4,0.5,1.5,0.01,3.5,1000\n0,1,0.1,0.2"),
        )
        .unwrap();
        let got = tail.poll();
        assert_eq!(got.len(), 1);
        let TrainEvent::Step {
            iter,
            total,
            losses,
            memory_bytes,
            images_per_sec,
            ..
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!((*iter, *total, *memory_bytes), (0, 1.5, Some(1000)));
        assert_eq!(*images_per_sec, 3.5);
        assert_eq!(losses["loss_mask"], 0.3);
        assert_eq!(losses.len(), 5);
        assert!(tail.poll().is_empty(), "the partial row waits");
        std::fs::write(
            run.join("metrics.csv"),
            format!(
                "{METRICS}0,0,0.1,0.2,0.3,0.4,0.5,1.5,0.01,3.5,1000\n\
                 0,1,0.1,0.2,0.3,0.4,0.5,0.5,0.01,3.5,1000\n"
            ),
        )
        .unwrap();
        std::fs::write(
            run.join("epochs.csv"),
            format!("{EPOCHS}0,2,1.0,0.1,0.2,0.3,0.4,0.5,0.01,,,2.0\n"),
        )
        .unwrap();
        let got = tail.poll();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], TrainEvent::Step { iter: 1, .. }));
        assert_eq!(
            got[1],
            TrainEvent::EpochEnd {
                epoch: 0,
                mean_loss: 1.0,
                steps: 2,
                val_segm_ap: None,
                val_bbox_ap: None
            }
        );
        assert_eq!(tail.final_loss(false), Some(1.0));
        assert!(tail.poll().is_empty());

        // A resume keeps the steps of finished epochs and emits only later ones.
        std::fs::write(
            run.join("metrics.csv"),
            format!(
                "{METRICS}0,0,0.1,0.2,0.3,0.4,0.5,1.5,0.01,3.5,1000\n\
                 0,1,0.1,0.2,0.3,0.4,0.5,0.5,0.01,3.5,1000\n\
                 1,2,0.1,0.2,0.3,0.4,0.5,0.75,0.01,3.5,1000\n"
            ),
        )
        .unwrap();
        truncate_metrics(run, 2).unwrap();
        let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let mut resumed = Tail::new(run, 2, 1);
        assert!(resumed.poll().is_empty());
        std::fs::write(
            run.join("metrics.csv"),
            format!("{text}1,2,0.1,0.2,0.3,0.4,0.5,0.25,0.01,3.5,\n"),
        )
        .unwrap();
        let got = resumed.poll();
        assert!(
            matches!(
                got[..],
                [TrainEvent::Step {
                    iter: 2,
                    memory_bytes: None,
                    ..
                }]
            ),
            "{got:?}"
        );
        assert_eq!(resumed.final_loss(true), Some(0.25));
    }
}
