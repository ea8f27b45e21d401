//! The first-run screen: what every tab but Classes shows while no project is open (New, Open,
//! Try the sample, browse the classes, recent projects).

use eframe::egui;

use super::StudioApp;
use super::project::DialogPurpose;
use crate::gui::shared::Tab;

impl StudioApp {
    pub(super) fn welcome_ui(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(40.0);
            ui.heading("Welcome to Mask Studio");
            ui.label("Pick Open Images classes, review their masks, train a Mask R-CNN and try it on your images.");
            ui.add_space(16.0);
            if ui.button("New project").clicked() {
                self.pick_folder(DialogPurpose::New, ui.ctx());
            }
            if ui.button("Open project").clicked() {
                self.pick_folder(DialogPurpose::Open, ui.ctx());
            }
            let sample = ui.add_enabled(!self.sample_running, egui::Button::new("Try the sample"));
            if sample.clicked() {
                self.try_sample(ui.ctx());
            }
            if self.sample_running {
                ui.spinner();
            }
            if ui
                .button("Browse Open Images classes")
                .on_hover_text(
                    "Search and browse the Open Images classes (offline too); downloading needs \
                     a project and the network",
                )
                .clicked()
            {
                self.tab = Tab::Classes;
            }
            ui.add_space(8.0);
            ui.weak("No dialog? Type a folder in the Project folder field above and press Open or Create.");
            if !self.settings.recent_projects.is_empty() {
                ui.add_space(16.0);
                ui.strong("Recent projects");
                self.open_recent_ui(ui, egui::Link::new);
            }
        });
    }
}
