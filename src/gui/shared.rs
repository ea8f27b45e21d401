//! What every studio panel shares: persisted settings, notices (toasts), running-job summaries
//! for the status bar, and the per-frame context handed to each panel.
//!
//! Panels are plain structs with `fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx)`; they
//! start their work on named threads and drain bounded channels at the start of `ui`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
use crate::host::DeviceChoice;

/// Colour theme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    /// Follow the system.
    #[default]
    System,
    /// Dark.
    Dark,
    /// Light.
    Light,
}

/// Settings kept between sessions in `settings.json` (missing keys take their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where new projects are created by default.
    pub data_dir: PathBuf,
    /// Open Images image mirror base URL (`openimages` default when empty).
    pub images_base_url: String,
    /// Open Images annotation/mask base URL (`openimages` default when empty).
    pub annotations_base_url: String,
    /// Torch device for training and prediction: the CLI's and the recipe's [`DeviceChoice`]
    /// (JSON `"auto"`, `"cpu"`, `"cuda"`, as the GUI's own enum spelled it before).
    pub device: DeviceChoice,
    /// Detections below this score are hidden (Predict, model assist).
    pub score_threshold: f32,
    /// Mask probability threshold when binarising predicted masks.
    pub mask_threshold: f32,
    /// Colour theme.
    pub theme: Theme,
    /// Most recent first, at most [`Settings::MAX_RECENT`].
    pub recent_projects: Vec<PathBuf>,
    /// The editor's model-assist bundle folder (kept across images and restarts).
    pub assist_bundle: String,
    /// The model bundle last chosen per project and use: project folder → `"predict"`,
    /// `"eval"` or `"assist"` → bundle folder ([`crate::gui::model_picker`]).
    pub last_bundle: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            images_base_url: String::new(),
            annotations_base_url: String::new(),
            device: DeviceChoice::Auto,
            score_threshold: 0.5,
            mask_threshold: 0.5,
            theme: Theme::System,
            recent_projects: Vec::new(),
            assist_bundle: String::new(),
            last_bundle: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// How many recent projects are remembered.
    pub const MAX_RECENT: usize = 10;

    /// `$MASKSTUDIO_CONFIG` or `$XDG_CONFIG_HOME/maskstudio` or `~/.config/maskstudio`, + `settings.json`.
    pub fn default_path() -> PathBuf {
        config_dir().join("settings.json")
    }

    /// Reads settings; a missing file gives the defaults, an unreadable one an error naming it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not valid settings JSON: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Writes settings atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        crate::fsutil::write_atomic(path, &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// The Open Images downloader configuration: `cache` plus the mirror base URLs from the
    /// settings (empty settings keep the defaults, which honour `MASKSTUDIO_OI_GCS_BASE` /
    /// `_IMAGES_BASE`).
    pub fn oi_config(&self, cache: &Path) -> crate::openimages::Config {
        let mut cfg = crate::openimages::Config::new(cache.to_path_buf());
        if !self.annotations_base_url.trim().is_empty() {
            cfg.gcs_base = self.annotations_base_url.trim().to_owned();
        }
        if !self.images_base_url.trim().is_empty() {
            cfg.images_base = self.images_base_url.trim().to_owned();
        }
        cfg
    }

    /// Puts `project` first in the recent list.
    pub fn touch_recent(&mut self, project: &Path) {
        self.recent_projects.retain(|p| p != project);
        self.recent_projects.insert(0, project.to_path_buf());
        self.recent_projects.truncate(Self::MAX_RECENT);
    }
}

fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MASKSTUDIO_CONFIG") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("maskstudio");
    }
    home_dir().join(".config").join("maskstudio")
}

fn default_data_dir() -> PathBuf {
    home_dir().join("MaskStudio")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// Log target of the lines [`Notices::push`] writes: the terminal shows them, the
/// log-to-toast path ([`crate::gui::log_toasts`]) skips them (the toast exists already).
/// It starts with the crate name so `RUST_LOG=maskstudio=…` filters cover it.
pub const NOTICE_LOG_TARGET: &str = "maskstudio::gui::notice";

/// How serious a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    /// Something finished.
    Info,
    /// Something was skipped or degraded.
    Warning,
    /// Something failed.
    Error,
}

/// One toast.
#[derive(Debug, Clone)]
pub struct Notice {
    /// Severity.
    pub level: NoticeLevel,
    /// Text shown (name the file and the problem).
    pub text: String,
    /// When it was posted.
    pub at: Instant,
}

/// Toasts shown in a corner for a few seconds; errors stay until dismissed.
#[derive(Debug, Default)]
pub struct Notices {
    /// Newest last.
    pub items: Vec<Notice>,
}

impl Notices {
    /// How long info and warning toasts stay.
    pub const TTL: Duration = Duration::from_secs(6);

    /// Posts a notice (also logged, under [`NOTICE_LOG_TARGET`] so the log-to-toast path
    /// does not show it a second time).
    pub fn push(&mut self, level: NoticeLevel, text: impl Into<String>) {
        let text = text.into();
        match level {
            NoticeLevel::Info => log::info!(target: NOTICE_LOG_TARGET, "{text}"),
            NoticeLevel::Warning => log::warn!(target: NOTICE_LOG_TARGET, "{text}"),
            NoticeLevel::Error => log::error!(target: NOTICE_LOG_TARGET, "{text}"),
        }
        self.post_logged(level, text);
    }

    /// Posts a notice whose text was already logged (the log-to-toast path).
    pub fn post_logged(&mut self, level: NoticeLevel, text: impl Into<String>) {
        self.items.push(Notice {
            level,
            text: text.into(),
            at: Instant::now(),
        });
    }

    /// Posts an info notice.
    pub fn info(&mut self, text: impl Into<String>) {
        self.push(NoticeLevel::Info, text);
    }

    /// Posts a warning.
    pub fn warn(&mut self, text: impl Into<String>) {
        self.push(NoticeLevel::Warning, text);
    }

    /// Posts an error.
    pub fn error(&mut self, text: impl Into<String>) {
        self.push(NoticeLevel::Error, text);
    }
}

/// A running job as the status bar shows it.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Short name ("Download", "Training run 20261125-…").
    pub name: String,
    /// Progress 0..=1 when known.
    pub fraction: Option<f32>,
    /// One line of detail (bytes, ETA, step).
    pub text: String,
    /// Cancels the job.
    pub cancel: Option<CancelToken>,
}

/// Which stage tab is showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tab {
    /// Open Images class browser.
    #[default]
    Classes,
    /// Download request and progress.
    Download,
    /// Gallery, image view and mask editor.
    Review,
    /// Training runs, live plots, evaluation.
    Train,
    /// Drag-and-drop predictions.
    Predict,
}

/// A request from one panel to the shell (switch tab, open an image in Review, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum ShellRequest {
    /// Show this tab.
    ShowTab(Tab),
    /// Open this project image (by store id) in the Review image view.
    OpenImage {
        /// `images.id` in the project store.
        image_id: i64,
    },
    /// Open (or reopen after a change) this project folder.
    OpenProject(PathBuf),
    /// Open the settings window (e.g. to set an Open Images mirror).
    ShowSettings,
    /// The open project's store now counts this many edited instances (after an edit, undo or
    /// redo was saved): the status bar shows it without re-reading the project.
    EditedInstances(u64),
}

/// Classes picked for download: MID → display name.
pub type Picked = BTreeMap<String, String>;

/// One small "<name> (remove)" button per picked class (hover: "<mid>: `hover`"); a click
/// drops that class from `picked`.
pub fn picked_remove_buttons(ui: &mut egui::Ui, picked: &mut Picked, hover: &str) {
    let mut remove = None;
    for (mid, name) in picked.iter() {
        if ui
            .small_button(format!("{name} (remove)"))
            .on_hover_text(format!("{mid}: {hover}"))
            .clicked()
        {
            remove = Some(mid.clone());
        }
    }
    if let Some(mid) = remove {
        picked.remove(&mid);
    }
}

/// What a panel gets each frame.
pub struct PanelCtx<'a> {
    /// The open project folder, if any.
    pub project: Option<&'a Path>,
    /// Settings (changes are saved by the shell at the end of the frame).
    pub settings: &'a mut Settings,
    /// Toasts.
    pub notices: &'a mut Notices,
    /// Requests for the shell, applied after the panel returns.
    pub requests: &'a mut Vec<ShellRequest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `settings.json` written when the device had its own GUI enum still loads, value for
    /// value, and saves back with the same spelling.
    #[test]
    fn settings_written_with_the_old_device_enum_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let old = r#"{
  "data_dir": "/data/ms",
  "images_base_url": "",
  "annotations_base_url": "http://mirror",
  "device": "cuda",
  "score_threshold": 0.25,
  "mask_threshold": 0.5,
  "theme": "dark",
  "recent_projects": ["/p/a"],
  "assist_bundle": "",
  "last_bundle": {}
}"#;
        std::fs::write(&path, old).unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.device, DeviceChoice::Cuda);
        assert_eq!(s.theme, Theme::Dark);
        assert_eq!(s.score_threshold, 0.25);
        assert_eq!(s.annotations_base_url, "http://mirror");
        for (json, want) in [("auto", DeviceChoice::Auto), ("cpu", DeviceChoice::Cpu)] {
            std::fs::write(&path, format!(r#"{{"device": "{json}"}}"#)).unwrap();
            assert_eq!(Settings::load(&path).unwrap().device, want);
            assert_eq!(want.as_str(), json);
        }
        std::fs::write(&path, r#"{"device": "gpu"}"#).unwrap();
        assert!(
            Settings::load(&path).is_err(),
            "an unknown device is not silently Auto"
        );
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""device": "cuda""#), "{text}");
    }
}
