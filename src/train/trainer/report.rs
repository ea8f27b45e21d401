//! What a run tells: `train.log` lines and events ([`Reporter`]), events relayed around a refit
//! ([`Relay`]), and the end of every run ([`guarded`] panics, [`finish`] with `loss.png`).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use crate::infer::panic_text;
use crate::train::observer::{TrainEvent, TrainObserver, event_line};
use crate::train::trainer::RunSummary;

/// Writes `train.log` and forwards events to the caller's observer.
pub(crate) struct Reporter<'a> {
    pub(crate) log: BufWriter<File>,
    pub(crate) observer: &'a mut dyn TrainObserver,
}

impl Reporter<'_> {
    pub(crate) fn line(&mut self, text: &str) {
        if let Err(err) = writeln!(self.log, "{text}").and_then(|()| self.log.flush()) {
            log::warn!("could not write train.log: {err}");
        }
    }

    pub(crate) fn emit(&mut self, e: &TrainEvent) {
        self.line(&event_line(e));
        self.observer.on_event(e);
    }

    /// A line in `train.log` (and the log) that is not an event.
    pub(crate) fn note(&mut self, text: &str) {
        log::info!("{text}");
        self.line(text);
    }
}

/// Sends `Failed` for an error before a log file exists.
pub(crate) fn fail_early<T>(
    observer: &mut dyn TrainObserver,
    e: anyhow::Error,
) -> anyhow::Result<T> {
    observer.on_event(&TrainEvent::Failed {
        error: format!("{e:#}"),
    });
    Err(e)
}

/// `Started` and moving steps and epochs after an earlier phase's.
pub(super) struct Relay<'a> {
    pub(super) inner: &'a mut dyn TrainObserver,
    pub(super) held: Option<TrainEvent>,
    pub(super) drop_started: bool,
    pub(super) iter_offset: usize,
    pub(super) epoch_offset: usize,
}

impl<'a> Relay<'a> {
    pub(super) fn holding_finished(inner: &'a mut dyn TrainObserver) -> Self {
        Self {
            inner,
            held: None,
            drop_started: false,
            iter_offset: 0,
            epoch_offset: 0,
        }
    }
}

impl TrainObserver for Relay<'_> {
    fn on_event(&mut self, e: &TrainEvent) {
        let mut e = e.clone();
        match &mut e {
            TrainEvent::Finished { .. } => {
                self.held = Some(e);
                return;
            }
            TrainEvent::Started { .. } if self.drop_started => return,
            TrainEvent::Step { epoch, iter, .. } => {
                *epoch += self.epoch_offset;
                *iter += self.iter_offset;
            }
            TrainEvent::EpochEnd { epoch, .. } => *epoch += self.epoch_offset,
            _ => {}
        }
        self.inner.on_event(&e);
    }
}

/// Runs `f`, turning a panic (libtorch errors surface as panics: CUDA out of memory, a bad
/// tensor) into an error naming `what`, so a run always ends with `Failed` and its files.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    crate::alloc::keep_large_blocks();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(anyhow::anyhow!("{what} panicked: {}", panic_text(&*p))),
    }
}

/// Draws `loss.png` (also after a failure) and reports a failure.
pub(crate) fn finish(
    run_dir: &Path,
    result: anyhow::Result<RunSummary>,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<RunSummary> {
    crate::alloc::release_free_memory();
    if run_dir.join("metrics.csv").is_file()
        && let Err(e) = crate::train::plot::write_loss_png(run_dir)
    {
        reporter.note(&format!("could not draw loss.png: {e:#}"));
    }
    if let Err(e) = &result {
        reporter.emit(&TrainEvent::Failed {
            error: format!("{e:#}"),
        });
    }
    result
}
