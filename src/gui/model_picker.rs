//! The model picker used by Predict, Evaluate and the editor's model assist: a list of the open
//! project's bundles ([`crate::train::runs::list_bundles`]: each run's best / last / refit
//! checkpoint with its date and validation AP, and the exported bundles), "Browse…" (a folder
//! dialog on a thread) and a typed path field as fallback.
//!
//! The listing runs on a `model-list` worker when the project changes or on "Refresh list",
//! never on the GUI thread. The last choice is remembered per project and use in
//! [`Settings::last_bundle`](crate::gui::shared::Settings::last_bundle): it is preselected when
//! the project is listed and it still holds a bundle, else the newest run's best checkpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use eframe::egui;

use crate::gui::shared::{PanelCtx, Settings};
use crate::gui::worker::{Polled, Worker};
use crate::train::runs::{self, BundleEntry, BundleKind};

/// What a picker's choice is used for: the key under a project in
/// [`Settings::last_bundle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The Predict tab.
    Predict,
    /// The Evaluate section of the Train tab.
    Eval,
    /// The editor's model assist ("Propose masks").
    Assist,
}

impl Purpose {
    /// The settings key (`predict`, `eval`, `assist`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Eval => "eval",
            Self::Assist => "assist",
        }
    }
}

/// The bundle remembered for `project` and `purpose`, if any.
pub fn remembered(settings: &Settings, project: &Path, purpose: Purpose) -> Option<String> {
    settings
        .last_bundle
        .get(&project_key(project))
        .and_then(|m| m.get(purpose.as_str()))
        .filter(|p| !p.trim().is_empty())
        .cloned()
}

/// Remembers `bundle` as the last choice for the open project and `purpose` (nothing without a
/// project). The model assist also keeps it in [`Settings::assist_bundle`].
pub fn remember(cx: &mut PanelCtx<'_>, purpose: Purpose, bundle: &Path) {
    let text = bundle.display().to_string();
    if purpose == Purpose::Assist {
        cx.settings.assist_bundle.clone_from(&text);
    }
    let Some(project) = cx.project else {
        return;
    };
    cx.settings
        .last_bundle
        .entry(project_key(project))
        .or_default()
        .insert(purpose.as_str().to_owned(), text);
}

fn project_key(project: &Path) -> String {
    project.display().to_string()
}

enum Msg {
    Listed {
        project: PathBuf,
        entries: Vec<BundleEntry>,
        /// The remembered bundle asked about, and whether it still holds a bundle.
        remembered: Option<(String, bool)>,
    },
    Picked(Option<PathBuf>),
}

/// What happened in the picker this frame.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PickerResponse {
    /// A bundle was chosen from the list or with "Browse…" (it is in the path now).
    pub chosen: Option<PathBuf>,
    /// The path was typed in.
    pub edited: bool,
    /// The remembered (or newest best) bundle was put in the path after listing the project.
    pub preselected: bool,
}

/// A model bundle picker (one per panel; [`ModelPicker::shared`] for views rebuilt per image).
pub struct ModelPicker {
    purpose: Purpose,
    /// Accessible label of the typed path field.
    field_label: &'static str,
    field_width: f32,
    /// The listed bundles of `listed_for`.
    entries: Vec<BundleEntry>,
    /// The project `entries` (or the listing in flight) belong to.
    listed_for: Option<PathBuf>,
    /// Whether `listed_for` was decided at all (`None` is "no project").
    listed_once: bool,
    /// The `model-list` worker.
    listing: Option<Worker<Msg>>,
    /// The `model-dialog` worker.
    dialog: Option<Worker<Msg>>,
    /// The remembered bundle of `listed_for` as checked by the listing, and whether it exists.
    remembered_check: Option<(String, bool)>,
    /// The user chose or typed a path since `listed_for` became current: the preselection
    /// leaves it.
    touched: bool,
    /// The typed field had the keyboard focus last frame: a listing that arrives then waits
    /// (`pending_preselect`) instead of writing under the user's cursor.
    field_focused: bool,
    /// A preselection to apply once the field loses the focus (untouched).
    pending_preselect: bool,
    /// The path shown last frame while `listed_for` was current (views rebuilt per image start
    /// from it).
    last_path: Option<String>,
}

impl ModelPicker {
    /// A picker for `purpose` whose typed field is labelled `field_label`.
    pub fn new(purpose: Purpose, field_label: &'static str) -> Self {
        Self {
            purpose,
            field_label,
            field_width: 260.0,
            entries: Vec::new(),
            listed_for: None,
            listed_once: false,
            listing: None,
            dialog: None,
            remembered_check: None,
            touched: false,
            field_focused: false,
            pending_preselect: false,
            last_path: None,
        }
    }

    /// Sets the typed field's width.
    #[must_use]
    pub fn with_field_width(mut self, width: f32) -> Self {
        self.field_width = width;
        self
    }

    /// The picker for `purpose` kept in the context's memory, so views that are rebuilt (the
    /// editor's image view, once per image) share one listing and their last path.
    pub fn shared(
        ctx: &egui::Context,
        purpose: Purpose,
        field_label: &'static str,
    ) -> Arc<Mutex<Self>> {
        let id = egui::Id::unique(("model_picker", purpose.as_str()));
        ctx.data_mut(|d| {
            d.get_temp_mut_or_insert_with(id, || {
                Arc::new(Mutex::new(
                    Self::new(purpose, field_label).with_field_width(180.0),
                ))
            })
            .clone()
        })
    }

    /// The listed bundles (of the open project, once listed).
    pub fn entries(&self) -> &[BundleEntry] {
        &self.entries
    }

    /// Whether a listing is running.
    pub fn listing(&self) -> bool {
        self.listing.is_some()
    }

    /// Lists the project again at the next frame (a run finished, an export was written).
    pub fn refresh(&mut self) {
        self.listed_once = false;
    }

    /// The bundle a new view should start from: this picker's last path for the open project,
    /// else the remembered one (unless the listing found it gone), else the newest best
    /// checkpoint once listed. `None` without a project.
    pub fn initial_choice(&self, cx: &PanelCtx<'_>) -> Option<String> {
        let project = cx.project?;
        let listed = self.listed_once && self.listed_for.as_deref() == Some(project);
        if listed && let Some(p) = self.last_path.as_ref().filter(|p| !p.is_empty()) {
            return Some(p.clone());
        }
        if let Some(r) = remembered(cx.settings, project, self.purpose) {
            let gone = listed
                && self
                    .remembered_check
                    .as_ref()
                    .is_some_and(|(p, exists)| *p == r && !exists);
            if !gone {
                return Some(r);
            }
        }
        if listed && self.listing.is_none() {
            return self.default_entry().map(|e| e.dir.display().to_string());
        }
        None
    }

    /// The newest run's best checkpoint, else the first bundle listed.
    fn default_entry(&self) -> Option<&BundleEntry> {
        self.entries
            .iter()
            .find(|e| e.kind == BundleKind::Best)
            .or_else(|| self.entries.first())
    }

    fn start_listing(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        let project = cx.project.map(Path::to_path_buf);
        self.listed_once = true;
        if project != self.listed_for {
            self.touched = false;
            self.last_path = None;
            self.entries.clear();
        }
        self.listed_for.clone_from(&project);
        self.remembered_check = None;
        self.listing = None;
        let Some(project) = project else {
            return;
        };
        let asked = remembered(cx.settings, &project, self.purpose);
        let spawned = Worker::once("model-list", ctx, move || {
            let entries = runs::list_bundles(&project);
            let remembered = asked.map(|r| {
                let exists = runs::is_bundle(Path::new(&r));
                (r, exists)
            });
            Msg::Listed {
                project,
                entries,
                remembered,
            }
        });
        match spawned {
            Ok(w) => self.listing = Some(w),
            Err(e) => cx
                .notices
                .error(format!("cannot start listing the project's models: {e}")),
        }
    }

    fn open_dialog(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        if self.dialog.is_some() {
            return;
        }
        let start = cx.project.map(Path::to_path_buf);
        let spawned = Worker::once("model-dialog", ctx, move || {
            let mut dialog = rfd::FileDialog::new().set_title("Model bundle folder");
            if let Some(dir) = start.filter(|d| d.is_dir()) {
                dialog = dialog.set_directory(dir);
            }
            // A cancelled dialog (or no dialog backend) picks nothing.
            Msg::Picked(dialog.pick_folder())
        });
        match spawned {
            Ok(w) => self.dialog = Some(w),
            Err(e) => cx
                .notices
                .error(format!("cannot open a folder dialog: {e}")),
        }
    }

    fn drain(&mut self, cx: &mut PanelCtx<'_>, path: &mut String, resp: &mut PickerResponse) {
        let mut events = Vec::new();
        for w in self.listing.iter_mut().chain(self.dialog.iter_mut()) {
            for polled in w.poll() {
                match polled {
                    Polled::Event(e) => events.push(e),
                    Polled::Died(why) => cx.notices.error(why),
                }
            }
        }
        if self.listing.as_ref().is_some_and(|w| !w.running()) {
            self.listing = None;
        }
        if self.dialog.as_ref().is_some_and(|w| !w.running()) {
            self.dialog = None;
        }
        for e in events {
            match e {
                Msg::Listed {
                    project,
                    entries,
                    remembered,
                } => {
                    if self.listed_for.as_ref() != Some(&project) {
                        continue; // the project changed meanwhile
                    }
                    self.entries = entries;
                    self.remembered_check = remembered;
                    if self.touched {
                    } else if self.field_focused {
                        self.pending_preselect = true;
                    } else {
                        self.preselect(path, resp);
                    }
                }
                Msg::Picked(Some(dir)) => {
                    *path = dir.display().to_string();
                    self.touched = true;
                    remember(cx, self.purpose, &dir);
                    resp.chosen = Some(dir);
                }
                Msg::Picked(None) => {}
            }
        }
    }

    /// Puts the remembered bundle (when it still exists), else the newest best checkpoint, in
    /// the path.
    fn preselect(&mut self, path: &mut String, resp: &mut PickerResponse) {
        let choice = match &self.remembered_check {
            Some((r, true)) => Some(r.clone()),
            _ => self.default_entry().map(|e| e.dir.display().to_string()),
        };
        if let Some(choice) = choice
            && *path != choice
        {
            *path = choice;
            resp.preselected = true;
        }
    }

    /// The text the list shows for `path`.
    fn selected_text(&self, path: &str, has_project: bool) -> String {
        if !has_project {
            return "no project open".to_owned();
        }
        if let Some(e) = self.entry_of(path) {
            return e.title();
        }
        if self.listing.is_some() {
            return "listing…".to_owned();
        }
        match (self.entries.is_empty(), path.trim().is_empty()) {
            (true, _) => "no trained models yet".to_owned(),
            (false, true) => "choose a model".to_owned(),
            (false, false) => "another folder".to_owned(),
        }
    }

    fn entry_of(&self, path: &str) -> Option<&BundleEntry> {
        let path = Path::new(path.trim());
        self.entries.iter().find(|e| e.dir == path)
    }

    /// Draws the list ("Project models"), the typed field and "Browse…" in the current layout
    /// (callers put them in a row); `path` is the bundle folder the caller uses.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        cx: &mut PanelCtx<'_>,
        path: &mut String,
    ) -> PickerResponse {
        let mut resp = PickerResponse::default();
        self.drain(cx, path, &mut resp);
        let project = cx.project.map(Path::to_path_buf);
        if !self.listed_once || project != self.listed_for {
            // A choice inside the project left behind means nothing in the next one.
            if let Some(old) = &self.listed_for
                && project.as_ref() != Some(old)
                && Path::new(path.trim()).starts_with(old)
            {
                path.clear();
            }
            self.start_listing(ui.ctx(), cx);
        }
        let has_project = project.is_some();
        let label = ui.label("Project models");
        let mut picked = None;
        let mut refresh = false;
        let text = self.selected_text(path, has_project);
        let combo = egui::ComboBox::from_id_salt(("model_picker_list", self.purpose.as_str()))
            .selected_text(text)
            .width(320.0)
            .show_ui(ui, |ui| {
                if !has_project {
                    ui.label("Open a project to list its runs");
                    return;
                }
                let mut heading = None;
                for e in &self.entries {
                    let group = if e.kind == BundleKind::Export {
                        "Exported bundles"
                    } else {
                        "Runs"
                    };
                    if heading != Some(group) {
                        ui.strong(group);
                        heading = Some(group);
                    }
                    let selected = Path::new(path.trim()) == e.dir;
                    let r = ui
                        .selectable_label(selected, e.title())
                        .on_hover_text(format!(
                            "{}\nclasses: {}",
                            e.dir.display(),
                            e.classes.join(", ")
                        ));
                    if r.clicked() {
                        picked = Some(e.dir.clone());
                    }
                }
                if self.entries.is_empty() && self.listing.is_none() {
                    ui.label("No trained models in this project yet");
                }
                if ui.button("Refresh list").clicked() {
                    refresh = true;
                }
            });
        // No spinner: the list says "listing…", and a listing takes milliseconds.
        combo.response.labelled_by(label.id);
        let label = ui.label(self.field_label);
        let mut field = egui::TextEdit::singleline(path)
            .desired_width(self.field_width)
            .show(ui);
        let response = field.response.response.clone().labelled_by(label.id);
        if response.gained_focus() && !path.is_empty() {
            // The whole path is selected: typing replaces a chosen or preselected path.
            let all = egui::text::CCursorRange::select_all_str(path);
            field.state.cursor.set_char_range(Some(all));
            field.state.store(ui.ctx(), response.id);
        }
        if response.changed() {
            self.touched = true;
            resp.edited = true;
        }
        self.field_focused = response.has_focus();
        if self.pending_preselect && !self.field_focused {
            self.pending_preselect = false;
            if !self.touched {
                self.preselect(path, &mut resp);
            }
        }
        let browse = ui
            .add_enabled(self.dialog.is_none(), egui::Button::new("Browse…"))
            .on_hover_text("Choose a model bundle folder");
        if browse.clicked() {
            self.open_dialog(ui.ctx(), cx);
        }
        if let Some(dir) = picked {
            *path = dir.display().to_string();
            self.touched = true;
            remember(cx, self.purpose, &dir);
            resp.chosen = Some(dir);
        }
        if refresh {
            self.refresh();
        }
        if self.listed_for.as_deref() == cx.project {
            self.last_path = Some(path.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_remembered_per_project_and_use() {
        let mut settings = Settings::default();
        let (mut notices, mut requests) = (Default::default(), Vec::new());
        let a = Path::new("/data/a");
        let mut cx = PanelCtx {
            project: Some(a),
            settings: &mut settings,
            notices: &mut notices,
            requests: &mut requests,
        };
        remember(
            &mut cx,
            Purpose::Predict,
            Path::new("/data/a/runs/1/checkpoints/best"),
        );
        remember(&mut cx, Purpose::Assist, Path::new("/m/cells"));
        cx.project = None;
        remember(&mut cx, Purpose::Eval, Path::new("/m/other"));
        assert_eq!(
            remembered(&settings, a, Purpose::Predict).as_deref(),
            Some("/data/a/runs/1/checkpoints/best")
        );
        assert_eq!(
            remembered(&settings, a, Purpose::Assist).as_deref(),
            Some("/m/cells")
        );
        assert_eq!(settings.assist_bundle, "/m/cells");
        assert_eq!(remembered(&settings, a, Purpose::Eval), None);
        assert_eq!(
            remembered(&settings, Path::new("/data/b"), Purpose::Predict),
            None
        );
        let json = serde_json::to_string(&settings).unwrap();
        assert!(
            json.contains(r#""last_bundle":{"/data/a":{"assist":"/m/cells","predict":"#),
            "{json}"
        );
        let back: Settings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, settings);
        let old: Settings = serde_json::from_str(r#"{"assist_bundle": "/x"}"#).unwrap();
        assert!(old.last_bundle.is_empty());
    }
}
