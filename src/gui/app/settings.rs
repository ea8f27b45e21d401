//! The Settings window and how settings reach the disk: saved on a worker once they have been
//! still for half a second, flushed on this thread when the app closes, written in generation
//! order so a slow background save never overwrites a later one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eframe::egui;

use super::StudioApp;
use super::project::{Event, ShellJob};
use crate::gui::shared::{Settings, Theme};
use crate::host::DeviceChoice;

impl StudioApp {
    pub(super) fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.applied_theme == Some(self.settings.theme) {
            return;
        }
        self.applied_theme = Some(self.settings.theme);
        ctx.set_theme(match self.settings.theme {
            Theme::System => egui::ThemePreference::System,
            Theme::Dark => egui::ThemePreference::Dark,
            Theme::Light => egui::ThemePreference::Light,
        });
    }

    /// Saves changed settings on a thread, once they have been still for half a second.
    pub(super) fn save_settings_when_idle(&mut self, ctx: &egui::Context) {
        if self.settings == self.saved_settings {
            self.settings_changed_at = None;
            return;
        }
        let changed_at = *self.settings_changed_at.get_or_insert_with(Instant::now);
        let wait = Duration::from_millis(500).saturating_sub(changed_at.elapsed());
        if !wait.is_zero() {
            ctx.request_repaint_after(wait);
            return;
        }
        self.saved_settings = self.settings.clone();
        self.settings_changed_at = None;
        if !self.settings_writable {
            return;
        }
        self.settings_generation += 1;
        let (settings, path, generation, written) = (
            self.settings.clone(),
            self.settings_path.clone(),
            self.settings_generation,
            self.settings_written.clone(),
        );
        self.start_job(ShellJob::SaveSettings, "saving settings", ctx, move || {
            let result = save_settings_in_order(&settings, &path, generation, &written)
                .map_err(|e| format!("{e:#}"));
            Event::SettingsSaved(result)
        });
    }

    /// Writes changed settings now, on this thread: closing the window right after a change
    /// (a project opened, a threshold moved) must not lose it to the half-second debounce.
    /// Called when the app is dropped (eframe drops it on exit).
    pub fn flush_settings(&mut self) {
        if self.settings == self.saved_settings || !self.settings_writable {
            return;
        }
        self.saved_settings = self.settings.clone();
        self.settings_changed_at = None;
        self.settings_generation += 1;
        if let Err(e) = save_settings_in_order(
            &self.settings,
            &self.settings_path,
            self.settings_generation,
            &self.settings_written,
        ) {
            log::error!("saving settings on exit: {e:#}");
        }
    }

    pub(super) fn settings_window(&mut self, ctx: &egui::Context) {
        let mut open = self.show_settings;
        let s = &mut self.settings;
        egui::Window::new("Settings")
            .open(&mut open)
            .collapsible(false)
            .show(ctx, |ui| {
                egui::Grid::new("settings_grid")
                    .num_columns(2)
                    .spacing([12.0, 6.0])
                    .show(ui, |ui| settings_grid(ui, s));
                ui.label(format!(
                    "Weights folder: {}",
                    crate::host::weights_dir().display()
                ));
                ui.label(crate::train::init::coco_status_line());
                ui.weak(format!("Saved to {}", self.settings_path.display()));
            });
        self.show_settings &= open;
    }
}

/// The Settings window's rows: folders, mirrors, device, thresholds, theme.
fn settings_grid(ui: &mut egui::Ui, s: &mut Settings) {
    let mut data_dir = s.data_dir.display().to_string();
    let label = ui.label("Data folder");
    if ui
        .add(egui::TextEdit::singleline(&mut data_dir).desired_width(320.0))
        .labelled_by(label.id)
        .changed()
    {
        s.data_dir = PathBuf::from(data_dir);
    }
    ui.end_row();
    let images_hint = "https://open-images-dataset.s3.amazonaws.com";
    url_row(ui, "Images mirror URL", &mut s.images_base_url, images_hint);
    let annotations_hint = "https://storage.googleapis.com/openimages";
    url_row(
        ui,
        "Annotations mirror URL",
        &mut s.annotations_base_url,
        annotations_hint,
    );
    ui.label("Device");
    egui::ComboBox::from_id_salt("device")
        .selected_text(s.device.as_str())
        .show_ui(ui, |ui| {
            for d in DeviceChoice::ALL {
                ui.selectable_value(&mut s.device, d, d.as_str());
            }
        });
    ui.end_row();
    let label = ui.label("Score threshold");
    ui.add(egui::Slider::new(&mut s.score_threshold, 0.0..=1.0))
        .labelled_by(label.id);
    ui.end_row();
    let label = ui.label("Mask threshold");
    ui.add(egui::Slider::new(&mut s.mask_threshold, 0.0..=1.0))
        .labelled_by(label.id);
    ui.end_row();
    ui.label("Theme");
    ui.horizontal(|ui| {
        ui.selectable_value(&mut s.theme, Theme::System, "System");
        ui.selectable_value(&mut s.theme, Theme::Dark, "Dark");
        ui.selectable_value(&mut s.theme, Theme::Light, "Light");
    });
    ui.end_row();
}

/// A labelled URL field with `hint` (the default it falls back to when empty), then the row's
/// end.
fn url_row(ui: &mut egui::Ui, label: &str, url: &mut String, hint: &str) {
    let label = ui.label(label);
    ui.add(
        egui::TextEdit::singleline(url)
            .hint_text(hint)
            .desired_width(320.0),
    )
    .labelled_by(label.id);
    ui.end_row();
}

/// Saves `settings` unless a later generation was written already (background saves may
/// finish out of order; the flush on exit is always the latest).
fn save_settings_in_order(
    settings: &Settings,
    path: &Path,
    generation: u64,
    written: &Mutex<u64>,
) -> anyhow::Result<()> {
    let mut last = written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *last >= generation {
        return Ok(());
    }
    settings.save(path)?;
    *last = generation;
    Ok(())
}
