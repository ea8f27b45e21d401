//! The Classes tab: search the 350 segmentable Open Images classes (or all 601), browse the
//! hierarchy, see image/mask counts per indexed split with a download-size estimate, and pick
//! classes into the download request.
//!
//! The class list built into the binary shows at once ([`Catalogue::builtin`]), offline too;
//! then the cache index's catalogue with its counts replaces it, loaded exactly as
//! `maskstudio classes` loads it ([`Catalogue::load_with_counts`]) on a named worker thread.
//! Network trouble is a calm line in the panel (what failed, Retry, Use a mirror…), not an error
//! toast: the list works without the network, only counts and downloads need it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use eframe::egui;

use crate::cancel::CancelToken;
use crate::openimages::catalogue::{EdgeKind, ROOT_MID};
use crate::openimages::cli::human_bytes;
use crate::openimages::{Catalogue, CatalogueSource, ClassInfo, DownloadEvent, Split, builtin};

use super::progress::cancel_button;
use super::shared::{JobView, PanelCtx, Picked, ShellRequest, Tab, picked_remove_buttons};
use super::worker::Worker;

enum Msg {
    Progress(String),
    Loaded(Result<Box<Catalogue>, String>),
}

/// Attempts per class file when loading in the background: the built-in list already shows,
/// so a missing network is reported after two tries instead of the downloader's five.
const BACKGROUND_ATTEMPTS: u32 = 2;

/// What a load does besides reading the index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoadKind {
    /// The index's catalogue (seeded once: downloaded, or built in when offline).
    Cached,
    /// Index these splits for their counts (downloads their CSVs).
    Counts(Vec<Split>),
    /// Download the class files again.
    Refresh,
}

/// How the classes are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Search results, one row per class with counts.
    List,
    /// The hierarchy (is-a and part-of edges).
    Tree,
}

/// The Classes panel.
pub struct ClassesPanel {
    /// The Open Images cache folder (index, class files).
    oi_cache: PathBuf,
    catalogue: Option<Arc<Catalogue>>,
    loading: Option<(CancelToken, Instant)>,
    progress: String,
    /// The last load's network or disk trouble, shown calmly with Retry.
    error: Option<String>,
    /// Why the catalogue in use is the built-in copy (the network error of this session).
    offline: Option<String>,
    requested: bool,
    query: String,
    show_all: bool,
    view: View,
    index_splits: [bool; 3],
    /// The `oi-catalogue` thread (its only sender; `Loaded` ends it).
    loader: Option<Worker<Msg>>,
}

impl ClassesPanel {
    /// A panel reading the catalogue from `oi_cache` (loaded when first shown).
    pub fn new(oi_cache: PathBuf) -> Self {
        Self {
            oi_cache,
            catalogue: None,
            loading: None,
            progress: String::new(),
            error: None,
            offline: None,
            requested: false,
            query: String::new(),
            show_all: false,
            view: View::List,
            index_splits: [false, true, true],
            loader: None,
        }
    }

    /// The loaded catalogue.
    pub fn catalogue(&self) -> Option<&Catalogue> {
        self.catalogue.as_deref()
    }

    /// Whether the catalogue is loading.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// The status-bar entry while loading or indexing.
    pub fn job_view(&self) -> Option<JobView> {
        self.loading.as_ref().map(|(cancel, _)| JobView {
            name: "Class catalogue".into(),
            fraction: None,
            text: self.progress.clone(),
            cancel: Some(cancel.clone()),
        })
    }

    /// The load's trouble shown in the panel (network or disk), if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Why the built-in class list is in use this session (the network error), if it is.
    pub fn offline_reason(&self) -> Option<&str> {
        self.offline.as_deref()
    }

    /// Starts loading the catalogue (see [`LoadKind`]).
    fn load(&mut self, cx: &PanelCtx, kind: LoadKind, ctx: &egui::Context) {
        if self.loading.is_some() {
            return;
        }
        let mut cfg = cx.settings.oi_config(&self.oi_cache);
        if kind == LoadKind::Cached {
            cfg.attempts = cfg.attempts.min(BACKGROUND_ATTEMPTS);
        }
        let cancel = CancelToken::default();
        let token = cancel.clone();
        let terminal = |m: &Msg| matches!(m, Msg::Loaded(_));
        let spawned = Worker::spawn("oi-catalogue", ctx, 64, terminal, move |tx| {
            let events = |e: DownloadEvent| {
                let text = match e {
                    DownloadEvent::Phase { phase, message } => {
                        format!("{}: {message}", phase.as_str())
                    }
                    DownloadEvent::Progress {
                        phase, done, total, ..
                    } => format!(
                        "{}: {} of {}",
                        phase.as_str(),
                        human_bytes(done),
                        human_bytes(total)
                    ),
                    DownloadEvent::Warning(w) => w,
                };
                // Progress may be dropped when the GUI is behind; the next one replaces it.
                tx.try_send(Msg::Progress(text));
            };
            let result = match kind {
                LoadKind::Cached => Catalogue::load(&cfg, &token),
                LoadKind::Counts(splits) => {
                    Catalogue::load_with_counts(&cfg, &splits, &token, &events)
                }
                LoadKind::Refresh => Catalogue::refresh(&cfg, &token),
            }
            .map(Box::new)
            .map_err(|e| format!("{e}"));
            tx.send(Msg::Loaded(result));
        });
        match spawned {
            Ok(w) => {
                self.loader = Some(w);
                self.loading = Some((cancel, Instant::now()));
                self.progress = "reading the class lists".into();
                self.error = None;
            }
            Err(e) => self.error = Some(format!("cannot start the catalogue loader: {e}")),
        }
    }

    fn drain(&mut self) {
        // A dead thread: the load failed.
        for msg in Worker::drain(&mut self.loader, |why| Msg::Loaded(Err(why))) {
            match msg {
                Msg::Progress(text) => self.progress = text,
                Msg::Loaded(Ok(cat)) => {
                    self.loading = None;
                    self.error = None;
                    if let Some(reason) = cat.fallback_reason() {
                        self.offline = Some(reason.to_owned());
                    } else if cat.source() == CatalogueSource::Downloaded {
                        self.offline = None;
                    }
                    self.catalogue = Some(Arc::from(cat));
                }
                Msg::Loaded(Err(e)) => {
                    let cancelled = self.loading.take().is_some_and(|(c, _)| c.is_cancelled());
                    // Shown in the panel with Retry; the class list keeps working.
                    log::info!("Open Images classes: {e}");
                    self.error = Some(if cancelled { "cancelled".into() } else { e });
                }
            }
        }
    }

    /// Draws the panel; `picked` is the download request's class set.
    pub fn ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx, picked: &mut Picked) {
        self.drain();
        if !self.requested {
            self.requested = true;
            if self.catalogue.is_none() {
                // ~105 kB parsed once (a few ms): the list shows on the first frame, offline too.
                match Catalogue::builtin() {
                    Ok(cat) => self.catalogue = Some(Arc::new(cat)),
                    Err(e) => self.error = Some(format!("the built-in class list: {e}")),
                }
            }
            self.load(cx, LoadKind::Cached, ui.ctx());
        }
        ui.horizontal(|ui| {
            let label = ui.label("Search classes");
            ui.add(egui::TextEdit::singleline(&mut self.query).desired_width(220.0))
                .labelled_by(label.id);
            ui.separator();
            ui.selectable_value(&mut self.view, View::List, "List");
            ui.selectable_value(&mut self.view, View::Tree, "Hierarchy");
            ui.checkbox(&mut self.show_all, "Show classes without masks");
        });
        ui.horizontal(|ui| {
            ui.label("Counts for:");
            for (i, split) in Split::ALL.iter().enumerate() {
                ui.checkbox(&mut self.index_splits[i], format!("index {split}"));
            }
            let busy = self.loading.is_some();
            if ui
                .add_enabled(!busy, egui::Button::new("Index counts"))
                .on_hover_text("Downloads the segmentation CSVs of the ticked splits (validation 2.8 MiB, test 8.3 MiB, train 770 MiB) and indexes them")
                .clicked()
            {
                let splits = Split::ALL
                    .iter()
                    .zip(self.index_splits)
                    .filter(|(_, on)| *on)
                    .map(|(s, _)| *s)
                    .collect();
                self.load(cx, LoadKind::Counts(splits), ui.ctx());
            }
            if let Some((cancel, started)) = &self.loading {
                ui.spinner();
                ui.label(format!(
                    "{} ({:.0} s)",
                    self.progress,
                    started.elapsed().as_secs_f32()
                ));
                cancel_button(ui, cancel, "Cancel loading");
            }
        });
        self.source_ui(ui, cx);
        self.picked_ui(ui, cx, picked);
        ui.separator();
        let Some(cat) = self.catalogue.clone() else {
            if self.loading.is_some() {
                ui.label("Loading the Open Images class catalogue…");
            }
            return;
        };
        match self.view {
            View::List => self.list_ui(ui, &cat, picked),
            View::Tree => {
                egui::ScrollArea::vertical()
                    .id_salt("class_tree")
                    .auto_shrink([false, false])
                    .show(ui, |ui| {
                        let mut path = Vec::new();
                        let all = self.show_all || !cat.masks_known();
                        tree_ui(ui, &cat, ROOT_MID, picked, all, &mut path);
                    });
            }
        }
    }

    /// Where the list comes from and, calmly, what failed: Retry, Use a mirror…, Refresh.
    fn source_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let builtin = self
            .catalogue
            .as_ref()
            .is_some_and(|c| c.source() == CatalogueSource::BuiltIn);
        let trouble = self.error.clone().or_else(|| self.offline.clone());
        ui.horizontal_wrapped(|ui| {
            if let Some(why) = &trouble {
                ui.colored_label(ui.visuals().warn_fg_color, "Open Images is not reachable")
                    .on_hover_text(why);
                ui.weak(format!("({})", shorten(why, 120)));
            }
            if builtin {
                ui.label("Showing the class list built into Mask Studio")
                    .on_hover_text(builtin::VERSION);
                let masks_known = self.catalogue.as_ref().is_some_and(|c| c.masks_known());
                ui.weak(if masks_known {
                    "· counts and downloads need the network"
                } else {
                    "· which classes have masks (350 of 601), counts and downloads need the network"
                });
            }
            let idle = self.loading.is_none();
            if trouble.is_some() {
                if ui.add_enabled(idle, egui::Button::new("Retry")).clicked() {
                    self.load(cx, LoadKind::Cached, ui.ctx());
                }
                if ui
                    .button("Use a mirror…")
                    .on_hover_text("Settings: the Open Images annotations and images base URLs")
                    .clicked()
                {
                    cx.requests.push(ShellRequest::ShowSettings);
                }
            } else if builtin
                && ui
                    .add_enabled(idle, egui::Button::new("Refresh from Open Images"))
                    .on_hover_text("Download the three class files (about 105 kB)")
                    .clicked()
            {
                self.load(cx, LoadKind::Refresh, ui.ctx());
            }
        });
    }

    fn picked_ui(&self, ui: &mut egui::Ui, cx: &mut PanelCtx, picked: &mut Picked) {
        ui.horizontal_wrapped(|ui| {
            ui.strong(format!("Picked for download: {}", picked.len()));
            picked_remove_buttons(ui, picked, "remove from the request");
            if let Some(cat) = &self.catalogue
                && !picked.is_empty()
            {
                let mids: Vec<&str> = picked.keys().map(String::as_str).collect();
                let est = cat.estimate(&mids, cat.indexed_splits(), None);
                if !cat.indexed_splits().is_empty() {
                    ui.label(format!(
                        "~{} images, {} masks, {} (all images of the indexed splits)",
                        est.images,
                        est.masks,
                        human_bytes(est.total_bytes())
                    ));
                }
                if ui.button("Go to Download").clicked() {
                    cx.requests
                        .push(super::shared::ShellRequest::ShowTab(Tab::Download));
                }
            }
        });
    }

    fn list_ui(&self, ui: &mut egui::Ui, cat: &Catalogue, picked: &mut Picked) {
        // Without the mask list (built-in copy, offline) every class is listed and pickable.
        let masks_known = cat.masks_known();
        let hits: Vec<&ClassInfo> = cat
            .search(&self.query)
            .into_iter()
            .filter(|c| self.show_all || c.segmentable || !masks_known)
            .collect();
        let splits = cat.indexed_splits();
        ui.label(format!(
            "{} classes{}",
            hits.len(),
            if splits.is_empty() {
                " (no split indexed yet: tick splits and press Index counts to see counts)"
                    .to_owned()
            } else {
                format!(
                    "; counts are images/masks in {}",
                    splits
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
        let row_h = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        egui::ScrollArea::vertical()
            .id_salt("class_list")
            .auto_shrink([false, false])
            .show_rows(ui, row_h, hits.len(), |ui, range| {
                for c in &hits[range] {
                    ui.horizontal(|ui| {
                        ui.set_height(row_h);
                        let mut on = picked.contains_key(&c.mid);
                        let resp = ui.add_enabled(
                            c.segmentable || !masks_known,
                            egui::Checkbox::new(&mut on, c.name.as_str()),
                        );
                        if resp.changed() {
                            toggle(picked, c, on);
                        }
                        let x = ui.min_rect().left() + 260.0;
                        let cursor = ui.cursor().left();
                        if cursor < x {
                            ui.add_space(x - cursor);
                        }
                        ui.weak(&c.mid);
                        if splits.is_empty() && (c.segmentable || !masks_known) {
                            ui.weak("counts: needs download");
                        }
                        for s in splits {
                            let n = c.counts.get(s).copied().unwrap_or_default();
                            ui.label(format!("{s}: {}/{}", n.images, n.masks));
                        }
                        if !splits.is_empty() && c.segmentable {
                            let est = cat.estimate(&[c.mid.as_str()], splits, None);
                            ui.weak(format!("~{}", human_bytes(est.total_bytes())));
                        }
                        if !c.segmentable && masks_known {
                            let below = cat.segmentable_descendants(&c.mid);
                            if !below.is_empty()
                                && ui
                                    .small_button(format!("pick {} subclasses", below.len()))
                                    .clicked()
                            {
                                for d in below {
                                    picked.insert(d.mid.clone(), d.name.clone());
                                }
                            }
                        }
                    });
                }
            });
    }
}

/// `text` cut to `max` characters with an ellipsis (network errors can be long).
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn toggle(picked: &mut Picked, c: &ClassInfo, on: bool) {
    if on {
        picked.insert(c.mid.clone(), c.name.clone());
    } else {
        picked.remove(&c.mid);
    }
}

/// One hierarchy node and (when expanded) its children; `path` guards against cycles and makes
/// ids unique where the DAG repeats a class under several parents.
fn tree_ui(
    ui: &mut egui::Ui,
    cat: &Catalogue,
    mid: &str,
    picked: &mut Picked,
    show_all: bool,
    path: &mut Vec<String>,
) {
    if path.iter().any(|m| m == mid) || path.len() > 12 {
        return;
    }
    path.push(mid.to_owned());
    for (child, kind) in cat.children(mid) {
        let Some(info) = cat.get(child) else {
            continue;
        };
        let has_children = !cat.children(child).is_empty();
        if !show_all && !info.segmentable && cat.segmentable_descendants(child).is_empty() {
            continue;
        }
        let suffix = if *kind == EdgeKind::Part {
            " (part)"
        } else {
            ""
        };
        let pickable = info.segmentable || !cat.masks_known();
        if has_children {
            egui::CollapsingHeader::new(format!("{}{suffix}", info.name))
                .id_salt(("class_tree", path.as_slice(), child))
                .show(ui, |ui| {
                    if pickable {
                        let mut on = picked.contains_key(&info.mid);
                        if ui
                            .checkbox(&mut on, format!("{} itself", info.name))
                            .changed()
                        {
                            toggle(picked, info, on);
                        }
                    }
                    tree_ui(ui, cat, child, picked, show_all, path);
                });
        } else if pickable {
            let mut on = picked.contains_key(&info.mid);
            if ui
                .checkbox(&mut on, format!("{}{suffix}", info.name))
                .changed()
            {
                toggle(picked, info, on);
            }
        } else {
            ui.weak(format!("{}{suffix} (no masks)", info.name));
        }
    }
    path.pop();
}
