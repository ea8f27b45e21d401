//! The window's chrome around the tab: the title, keyboard shortcuts, the top bar (project
//! buttons, path field, tabs), the status bar (project summary, running jobs), the help
//! window and the toasts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eframe::egui;

use super::StudioApp;
use super::project::DialogPurpose;
use crate::gui::progress::{Progress, progress_row};
use crate::gui::shared::{JobView, NoticeLevel, Notices};
use crate::gui::{SHORTCUTS, TABS, audit_queue, editor};

impl StudioApp {
    /// Every panel's running jobs, in status-bar order.
    fn jobs(&self) -> Vec<JobView> {
        let mut jobs: Vec<JobView> = [self.classes.job_view(), self.download.job_view()]
            .into_iter()
            .flatten()
            .collect();
        jobs.extend(self.train.jobs());
        jobs.extend(self.predict.jobs());
        jobs
    }

    pub(super) fn update_title(&mut self, ctx: &egui::Context) {
        let mut title = String::from("Mask Studio");
        if let Some((root, info)) = &self.project {
            let name = root.file_name().map_or_else(
                || root.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let images: u64 = info.splits.values().map(|s| s.images).sum();
            title.push_str(&format!(
                " — {name} ({images} images, {} unreviewed)",
                info.unreviewed_images
            ));
        } else if let Some(root) = &self.loading {
            title.push_str(&format!(" — opening {}", root.display()));
        }
        if let Some(job) = self.jobs().first() {
            match job.fraction {
                Some(f) => title.push_str(&format!(" — {} {:.0} %", job.name, f * 100.0)),
                None => title.push_str(&format!(" — {}…", job.name)),
            }
        }
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    pub(super) fn shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, Modifiers};
        let typing = ctx.egui_wants_keyboard_input();
        let (help, open, new, settings, escape, tab) = ctx.input_mut(|i| {
            let question = !typing
                && (i.consume_key(Modifiers::NONE, Key::Questionmark)
                    || i.consume_key(Modifiers::SHIFT, Key::Questionmark)
                    || i.events
                        .iter()
                        .any(|e| matches!(e, egui::Event::Text(t) if t == "?")));
            let help = i.consume_key(Modifiers::NONE, Key::F1) || question;
            let open = i.consume_key(Modifiers::COMMAND, Key::O);
            let new = i.consume_key(Modifiers::COMMAND, Key::N);
            let settings = i.consume_key(Modifiers::COMMAND, Key::Comma);
            let escape = (self.show_help || self.show_settings)
                && i.consume_key(Modifiers::NONE, Key::Escape);
            let keys = [Key::Num1, Key::Num2, Key::Num3, Key::Num4, Key::Num5];
            let tab = keys
                .iter()
                .position(|k| i.consume_key(Modifiers::COMMAND, *k))
                .map(|n| TABS[n].0);
            (help, open, new, settings, escape, tab)
        });
        if help {
            self.show_help = !self.show_help;
        }
        if open {
            self.pick_folder(DialogPurpose::Open, ctx);
        }
        if new {
            self.pick_folder(DialogPurpose::New, ctx);
        }
        if settings {
            self.show_settings = !self.show_settings;
        }
        if escape {
            self.show_help = false;
            self.show_settings = false;
        }
        if let Some(tab) = tab {
            self.tab = tab;
        }
    }

    pub(super) fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.heading("Mask Studio");
            ui.separator();
            if ui.button("New project…").on_hover_text("Ctrl+N").clicked() {
                self.pick_folder(DialogPurpose::New, ui.ctx());
            }
            if ui.button("Open project…").on_hover_text("Ctrl+O").clicked() {
                self.pick_folder(DialogPurpose::Open, ui.ctx());
            }
            ui.menu_button("Recent", |ui| {
                if self.settings.recent_projects.is_empty() {
                    ui.weak("no recent projects");
                }
                if self.open_recent_ui(ui, egui::Button::new) {
                    ui.close();
                }
            });
            ui.separator();
            self.path_field_ui(ui);
            ui.separator();
            if ui.button("Settings").on_hover_text("Ctrl+,").clicked() {
                self.show_settings = !self.show_settings;
            }
            if ui.button("Help").on_hover_text("F1").clicked() {
                self.show_help = !self.show_help;
            }
        });
        ui.horizontal(|ui| {
            for (tab, name) in TABS {
                if ui.selectable_label(self.tab == tab, name).clicked() {
                    self.tab = tab;
                }
            }
        });
    }

    /// One `widget` (a menu button, a link) per recent project; opens the one clicked and
    /// says whether one was.
    pub(super) fn open_recent_ui<W: egui::Widget>(
        &mut self,
        ui: &mut egui::Ui,
        widget: fn(String) -> W,
    ) -> bool {
        let mut chosen = None;
        for p in &self.settings.recent_projects {
            if ui.add(widget(p.display().to_string())).clicked() {
                chosen = Some(p.clone());
            }
        }
        let Some(p) = chosen else {
            return false;
        };
        self.open_project(p, false, Some(ui.ctx()));
        true
    }

    /// The "Project folder" field with its Open and Create buttons (the fallback when no
    /// folder dialog is available).
    fn path_field_ui(&mut self, ui: &mut egui::Ui) {
        let label = ui.label("Project folder");
        let field = ui
            .add(egui::TextEdit::singleline(&mut self.project_path).desired_width(300.0))
            .labelled_by(label.id);
        let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let path = self.project_path.trim().to_owned();
        let busy = self.loading.is_some();
        if (ui
            .add_enabled(!busy && !path.is_empty(), egui::Button::new("Open"))
            .on_hover_text("Open the project in this folder")
            .clicked()
            || (enter && !path.is_empty()))
            && !busy
        {
            self.open_project(PathBuf::from(&path), false, Some(ui.ctx()));
        }
        if ui
            .add_enabled(!busy && !path.is_empty(), egui::Button::new("Create"))
            .on_hover_text("Create a new project in this folder (or open it if it is one)")
            .clicked()
        {
            self.open_project(PathBuf::from(&path), true, Some(ui.ctx()));
        }
        if busy {
            ui.spinner();
        }
    }

    pub(super) fn status_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            match &self.project {
                Some((root, info)) => {
                    let images: u64 = info.splits.values().map(|s| s.images).sum();
                    let instances: u64 = info.splits.values().map(|s| s.instances).sum();
                    ui.label(format!(
                        "{} · {images} images · {instances} instances · {} classes · {} edited",
                        root.display(),
                        info.classes.len(),
                        info.edited_instances
                    ));
                }
                None => {
                    ui.weak("No project open");
                }
            }
            for job in self.jobs() {
                ui.separator();
                ui.label(&job.name);
                let progress = Progress::Fraction(job.fraction);
                progress_row(ui, progress, Some(job.text.clone()), 160.0, None);
                // The bar is narrow here: a small "Cancel" whose hover names the job.
                if let Some(cancel) = &job.cancel
                    && ui
                        .small_button("Cancel")
                        .on_hover_text(format!("Cancel {}", job.name))
                        .clicked()
                {
                    cancel.cancel();
                }
            }
        });
    }

    pub(super) fn help_window(&mut self, ctx: &egui::Context) {
        let mut open = self.show_help;
        egui::Window::new("Keyboard shortcuts")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                    for (keys, what) in SHORTCUTS {
                        ui.strong(*keys);
                        ui.label(*what);
                        ui.end_row();
                    }
                    ui.end_row();
                    ui.strong("Review image view");
                    ui.end_row();
                    for (keys, what) in editor::shortcuts() {
                        ui.strong(*keys);
                        ui.label(*what);
                        ui.end_row();
                    }
                    ui.end_row();
                    ui.strong("Review: Likely errors");
                    ui.end_row();
                    for (keys, what) in audit_queue::shortcuts() {
                        ui.strong(*keys);
                        ui.label(*what);
                        ui.end_row();
                    }
                });
            });
        self.show_help &= open;
    }

    pub(super) fn toasts_ui(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        self.notices
            .items
            .retain(|n| n.level == NoticeLevel::Error || now.duration_since(n.at) < Notices::TTL);
        if self.notices.items.is_empty() {
            return;
        }
        if self
            .notices
            .items
            .iter()
            .any(|n| n.level != NoticeLevel::Error)
        {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                ui.set_max_width(420.0);
                for (i, n) in self.notices.items.iter().enumerate().rev().take(5) {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.horizontal(|ui| {
                            let (icon, color) = match n.level {
                                NoticeLevel::Info => ("Info", ui.visuals().text_color()),
                                NoticeLevel::Warning => ("Warning", ui.visuals().warn_fg_color),
                                NoticeLevel::Error => ("Error", ui.visuals().error_fg_color),
                            };
                            ui.colored_label(color, icon);
                            ui.add(egui::Label::new(&n.text).wrap());
                            if ui.small_button("Dismiss").clicked() {
                                dismiss = Some(i);
                            }
                        });
                    });
                }
            });
        if let Some(i) = dismiss {
            self.notices.items.remove(i);
        }
    }
}
