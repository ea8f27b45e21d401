//! What the Predict tab's threads are told and what they report: [`Command`]s for the
//! `predict-worker` thread and the [`Event`]s it and the one-shot export, reload and dialog
//! threads send back to the panel's drain.

use std::path::PathBuf;
use std::sync::Arc;

use super::PredictedImage;
use crate::cancel::CancelToken;
use crate::host::DeviceChoice;

/// Work for the prediction thread.
pub(super) enum Command {
    Load {
        path: PathBuf,
        device: DeviceChoice,
    },
    Predict {
        inputs: Vec<PathBuf>,
        cancel: CancelToken,
    },
}

/// What the prediction thread reports.
pub(super) enum Event {
    Loaded {
        path: PathBuf,
        labels: Vec<String>,
    },
    LoadFailed {
        path: PathBuf,
        error: String,
    },
    Started {
        total: usize,
    },
    /// Files inside the dropped folders that are not images (or could not be listed), with why.
    Skipped(Vec<(PathBuf, String)>),
    Image(Box<PredictedImage>),
    ImageFailed {
        path: PathBuf,
        error: String,
    },
    Done {
        cancelled: bool,
    },
    /// The batch ended early: its decoder thread died (the model stays loaded).
    BatchFailed {
        error: String,
    },
    Reloaded {
        path: PathBuf,
        image: Arc<image::RgbImage>,
    },
    ReloadFailed {
        path: PathBuf,
        error: String,
    },
    ExportProgress {
        done: usize,
        total: usize,
    },
    Exported {
        dir: PathBuf,
        detections: usize,
        cancelled: bool,
    },
    ExportFailed {
        error: String,
    },
    Picked {
        paths: Vec<PathBuf>,
    },
}
