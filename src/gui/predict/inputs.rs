//! What the Predict tab predicts: dropped or opened files and folders (folders searched
//! recursively, non-images named apart) and the "Open images" file dialog.

use std::path::{Path, PathBuf};

use eframe::egui;

use super::PredictPanel;
use super::events::Event;
use crate::gui::shared::PanelCtx;
use crate::gui::worker::Worker;

/// Whether `path` has an image extension the predictor reads (jpg, jpeg, png).
fn is_image_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().to_str(),
            Some("jpg" | "jpeg" | "png")
        )
    })
}

/// The images to predict for dropped or opened `inputs`: files as given (a file that is no
/// image fails when decoded, naming it), folders searched recursively (sorted by path within
/// each folder; links to folders are not followed, so a link loop cannot recurse forever).
/// Files inside folders that are not images, and entries that cannot be listed, are returned
/// apart with the reason; hidden files (`.DS_Store`, ...) are left out silently.
pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let (mut images, mut skipped) = (Vec::new(), Vec::new());
    for input in inputs {
        if !input.is_dir() {
            images.push(input.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(input).follow_links(false) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    skipped.push((path, format!("cannot be listed: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.file_type().is_dir() || hidden || !path.is_file() {
                continue;
            }
            if is_image_name(path) {
                found.push(path.to_path_buf());
            } else {
                skipped.push((
                    path.to_path_buf(),
                    "not an image (jpg, jpeg or png); skipped".to_owned(),
                ));
            }
        }
        found.sort();
        images.extend(found);
    }
    (images, skipped)
}

pub(super) fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl PredictPanel {
    /// Opens an image file dialog on a thread (never on the UI thread: it blocks until closed).
    pub(super) fn pick(&mut self, ctx: &egui::Context, cx: &mut PanelCtx) {
        let spawned = Worker::once("predict-dialog", ctx, move || {
            let paths = rfd::FileDialog::new()
                .add_filter("Images", &["jpg", "jpeg", "png"])
                .pick_files();
            // A cancelled dialog picks nothing.
            Event::Picked {
                paths: paths.unwrap_or_default(),
            }
        });
        match spawned {
            Ok(w) => self.helpers.push(w),
            Err(e) => cx.notices.error(format!("cannot open a file dialog: {e}")),
        }
    }
}
