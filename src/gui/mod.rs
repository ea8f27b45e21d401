//! The studio window (eframe/egui). Only this module imports egui.
//!
//! The shell: new/open/recent projects (rfd dialogs on a thread, a path field as fallback), the
//! project name and state in the title, persisted settings with a Settings window, the stage
//! tabs (Classes, Download, Review, Train, Predict), a status bar with running jobs, toasts,
//! a keyboard-shortcut overlay and a first-run screen. Panels are structs with
//! `fn ui(&mut self, ui, cx: &mut PanelCtx)` ([`shared`]); they run their work on named threads
//! and drain bounded channels, so the GUI thread never waits on I/O.

mod app;
pub mod audit_queue;
pub mod classes_panel;
pub mod download_panel;
pub mod editor;
pub mod label_next;
pub mod log_toasts;
pub mod model_picker;
pub mod predict;
pub mod progress;
pub mod review_grid;
pub mod shared;
pub mod thumbs;
pub mod train;
pub mod worker;

use std::path::PathBuf;

use eframe::egui;

pub use app::StudioApp;
use log_toasts::LogToasts;
use shared::{Settings, Tab};

/// Set to a number of frames to close the window after that many (smoke tests under Xvfb).
pub const EXIT_AFTER_FRAMES_ENV: &str = "MASKSTUDIO_EXIT_AFTER_FRAMES";
/// Set to a tab name (`classes`, `download`, `review`, `train`, `predict`) to start on it.
pub const TAB_ENV: &str = "MASKSTUDIO_TAB";

/// The tabs in bar order, with their names.
pub const TABS: [(Tab, &str); 5] = [
    (Tab::Classes, "Classes"),
    (Tab::Download, "Download"),
    (Tab::Review, "Review"),
    (Tab::Train, "Train"),
    (Tab::Predict, "Predict"),
];

/// Parses a tab name (case-insensitive).
pub fn parse_tab(name: &str) -> Option<Tab> {
    let name = name.trim();
    TABS.iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(t, _)| *t)
}

/// The keyboard shortcuts (shown by the help overlay).
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("F1 or ?", "show or hide this help"),
    ("Ctrl+O", "open a project (folder dialog)"),
    ("Ctrl+N", "new project (folder dialog)"),
    (
        "Ctrl+1 … Ctrl+5",
        "Classes, Download, Review, Train, Predict",
    ),
    ("Ctrl+,", "settings"),
    ("Esc", "close the image view, help or settings"),
];

/// How the studio starts.
#[derive(Debug, Clone)]
pub struct StudioOptions {
    /// A project folder to open at start.
    pub project: Option<PathBuf>,
    /// Where settings are read and saved.
    pub settings_path: PathBuf,
    /// The Open Images cache folder.
    pub oi_cache_dir: PathBuf,
    /// The tab to start on (default: Review, which shows the Welcome while no project is open).
    pub start_tab: Option<Tab>,
    /// Warnings and errors logged anywhere, shown as toasts ([`log_toasts::install`]).
    pub log_toasts: Option<LogToasts>,
}

impl StudioOptions {
    /// Defaults from the environment: [`Settings::default_path`] (`MASKSTUDIO_CONFIG`), the
    /// per-user cache's `openimages/`, [`TAB_ENV`], and the log feed when
    /// [`log_toasts::install`] ran.
    pub fn from_env(project: Option<PathBuf>) -> Self {
        Self {
            project,
            settings_path: Settings::default_path(),
            oi_cache_dir: crate::host::cache_dir().join("openimages"),
            start_tab: std::env::var(TAB_ENV).ok().and_then(|t| parse_tab(&t)),
            log_toasts: log_toasts::installed(),
        }
    }
}

/// Opens the studio window and blocks until it is closed.
pub fn run(project: Option<PathBuf>) -> anyhow::Result<()> {
    run_with(StudioOptions::from_env(project))
}

/// Opens the studio window with explicit options and blocks until it is closed.
pub fn run_with(options: StudioOptions) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default();
    // The app icon (assets/maskstudio.svg rendered at 256 px); a bad PNG only loses the icon.
    match eframe::icon_data::from_png_bytes(include_bytes!("../../assets/maskstudio-256.png")) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(e) => log::warn!("the window icon: {e}"),
    }
    let native = eframe::NativeOptions {
        viewport: viewport
            .with_title("Mask Studio")
            .with_app_id("maskstudio")
            .with_inner_size([1200.0, 800.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Mask Studio",
        native,
        Box::new(|_cc| Ok(Box::new(StudioApp::with_options(options)))),
    )
    .map_err(|e| anyhow::anyhow!("the studio window failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_names() {
        assert_eq!(parse_tab("review"), Some(Tab::Review));
        assert_eq!(parse_tab(" Predict "), Some(Tab::Predict));
        assert_eq!(parse_tab("gallery"), None);
    }
}
