//! The Train form's "Auto-configure from the dataset" section: the model configuration the
//! training images' statistics propose ([`crate::train::autoconfig::resolve`]), shown before
//! Start as an editable table (key, base value, proposed value, use, reason), with the anchor
//! coverage before and after and the rules that kept the base value; plus the "Refit on
//! train + validation" choice.
//!
//! The statistics and the proposal are computed on the `train-autoconfig` thread whenever the
//! project or a recipe field they depend on (preset, image size, validation fraction, seed,
//! the user's model keys) changes. At Start, [`AutoConfigForm::apply`] writes exactly the
//! shown values of the ticked rows into `model_overrides` and the base values of the others,
//! so what the form shows is what trains (the trainer never changes a key the user set).

use std::path::{Path, PathBuf};

use eframe::egui;
use serde_json::{Map, Value};

use crate::dataset::stats::DatasetStats;
use crate::gui::worker::{Polled, Worker};
use crate::model::MaskRcnnConfig;
use crate::train::TrainConfig;
use crate::train::autoconfig::{self, AutoConfig};
use crate::train::config::{RefitMode, apply_model_overrides};

/// The dataset-derived proposal for one project and recipe.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// Training images the statistics were measured on (the run's seeded split).
    pub train_images: usize,
    /// What was proposed and kept, with the anchor coverage.
    pub auto: AutoConfig,
    /// Keys the user set elsewhere (left alone), with their values when they are model keys.
    pub pinned: Vec<(String, Option<Value>)>,
    /// The model configuration the proposal starts from (preset + the user's keys).
    pub base_model: MaskRcnnConfig,
    /// The loader's image size before auto-configuration.
    pub image_size: u32,
}

/// Measures the training images of `project` (the split `cfg` gives) and resolves `cfg`'s
/// auto-configuration; runs on a worker thread.
pub fn propose(project: &Path, cfg: &TrainConfig) -> anyhow::Result<Proposal> {
    let mut set = crate::train::data::read_project(project)?;
    let (_, classes, _) = crate::train::data::label_map(&set);
    anyhow::ensure!(
        !classes.is_empty(),
        "the project has no classes to train on"
    );
    let num_classes = classes.len() as i64 + 1;
    let split = crate::train::data::split_images(&set.images, cfg.val_fraction, cfg.seed);
    set.images
        .retain(|m| split.train.binary_search(&m.id).is_ok());
    anyhow::ensure!(!set.images.is_empty(), "the project has no training images");
    let stats = DatasetStats::from_images(&set.images);
    let mut cfg = cfg.clone();
    cfg.auto_config = true;
    let resolved = autoconfig::resolve(&cfg, &stats, num_classes)?;
    let pinned = resolved
        .pinned
        .iter()
        .map(|k| {
            let value = match k.as_str() {
                "image_size" => cfg.image_size.map(Value::from),
                _ => cfg.model_overrides.get(k).cloned(),
            };
            (k.clone(), value)
        })
        .collect();
    Ok(Proposal {
        train_images: set.images.len(),
        auto: resolved.auto,
        pinned,
        base_model: cfg.model_config(num_classes)?,
        image_size: cfg.resolved_image_size(),
    })
}

/// What a proposal depends on; a change computes a new one.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    project: PathBuf,
    preset: crate::train::Preset,
    image_size: Option<u32>,
    val_fraction: f64,
    seed: u64,
    model_overrides: Map<String, Value>,
}

impl Inputs {
    fn of(project: &Path, cfg: &TrainConfig) -> Self {
        Self {
            project: project.to_path_buf(),
            preset: cfg.preset,
            image_size: cfg.image_size,
            val_fraction: cfg.val_fraction,
            seed: cfg.seed,
            model_overrides: cfg.model_overrides.clone(),
        }
    }

    /// The same recipe fields (the project is whatever the form shows).
    fn same_recipe(&self, cfg: &TrainConfig) -> bool {
        *self == Self::of(&self.project, cfg)
    }
}

/// One proposed key in the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// `MaskRcnnConfig` key.
    pub key: String,
    /// The base config's value.
    pub base: Value,
    /// The value proposed from the statistics.
    pub proposed: Value,
    /// The value as shown and edited (JSON).
    pub text: String,
    /// Why the value was proposed.
    pub reason: String,
    /// Whether the row's value is used (unticked: the base value is used).
    pub use_it: bool,
    /// The edited value, parsed and checked; `Err` says what is wrong (shown in red, not used).
    pub value: Result<Value, String>,
}

impl Row {
    fn new(key: &str, base: Value, proposed: Value, reason: String) -> Self {
        Self {
            key: key.to_owned(),
            text: compact(&proposed),
            value: Ok(proposed.clone()),
            base,
            proposed,
            reason,
            use_it: true,
        }
    }

    /// Re-parses [`Self::text`] and checks it as this key's value on `base_model`.
    fn parse(&mut self, base_model: &MaskRcnnConfig) {
        self.value = serde_json::from_str::<Value>(&self.text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| {
                let one = Map::from_iter([(self.key.clone(), v.clone())]);
                apply_model_overrides(base_model, &one, &self.key)
                    .map(|_| v)
                    .map_err(|e| format!("{e:#}"))
            });
    }

    /// The value training gets: the shown value when ticked and valid, else the base value.
    pub fn effective(&self) -> &Value {
        match (&self.value, self.use_it) {
            (Ok(v), true) => v,
            _ => &self.base,
        }
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

type Outcome = (Inputs, Result<Box<Proposal>, String>);

/// The form section's state.
#[derive(Default)]
pub struct AutoConfigForm {
    /// Inputs of the last computation started.
    requested: Option<Inputs>,
    /// Inputs of the proposal shown.
    shown: Option<Inputs>,
    worker: Option<Worker<Outcome>>,
    proposal: Option<Box<Proposal>>,
    error: Option<String>,
    rows: Vec<Row>,
}

impl AutoConfigForm {
    /// Whether a proposal is being computed.
    pub fn busy(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::running)
    }

    /// The table's rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The proposal shown, if any.
    pub fn proposal(&self) -> Option<&Proposal> {
        self.proposal.as_deref()
    }

    /// Takes the computation's result when it has arrived.
    pub fn poll(&mut self) {
        let Some(worker) = &mut self.worker else {
            return;
        };
        for polled in worker.poll() {
            match polled {
                Polled::Event((inputs, result)) => self.receive(inputs, result),
                Polled::Died(reason) => {
                    self.error = Some(reason);
                    self.proposal = None;
                    self.rows.clear();
                    self.shown = self.requested.clone();
                }
            }
        }
        if !self.busy()
            && let Some(w) = self.worker.take()
        {
            w.join();
        }
    }

    fn receive(&mut self, inputs: Inputs, result: Result<Box<Proposal>, String>) {
        self.shown = Some(inputs);
        match result {
            Ok(p) => {
                // Rows whose proposal did not change keep the user's edits and ticks.
                let old = std::mem::take(&mut self.rows);
                self.rows = p
                    .auto
                    .overrides
                    .iter()
                    .map(|o| {
                        match old
                            .iter()
                            .find(|r| r.key == o.key && r.proposed == o.value && r.base == o.base)
                        {
                            Some(r) => Row {
                                reason: o.reason.clone(),
                                ..r.clone()
                            },
                            None => {
                                Row::new(o.key, o.base.clone(), o.value.clone(), o.reason.clone())
                            }
                        }
                    })
                    .collect();
                self.error = None;
                self.proposal = Some(p);
            }
            Err(e) => {
                self.error = Some(e);
                self.proposal = None;
                self.rows.clear();
            }
        }
    }

    /// Starts a computation when the project or the recipe changed since the last one.
    fn refresh(&mut self, ctx: &egui::Context, project: &Path, cfg: &TrainConfig) {
        let wanted = Inputs::of(project, cfg);
        if self.requested.as_ref() == Some(&wanted) || self.worker.is_some() {
            return;
        }
        let (inputs, p, c) = (wanted.clone(), project.to_path_buf(), cfg.clone());
        match Worker::once("train-autoconfig", ctx, move || {
            let result = propose(&p, &c).map(Box::new).map_err(|e| format!("{e:#}"));
            (inputs, result)
        }) {
            Ok(w) => self.worker = Some(w),
            Err(e) => self.error = Some(format!("cannot start the auto-configuration: {e}")),
        }
        self.requested = Some(wanted);
    }

    /// Whether the shown proposal is for `cfg` and nothing newer is being computed.
    fn current(&self, cfg: &TrainConfig) -> bool {
        !self.busy()
            && self.shown == self.requested
            && self.shown.as_ref().is_some_and(|s| s.same_recipe(cfg))
    }

    /// At Start: with auto-configuration on, the shown rows go into `cfg.model_overrides` (the
    /// ticked rows' shown values, the base value of the others) and `image_size` is raised to
    /// an upscaled `max_size` as the trainer would; off, nothing is added. The refit mode is
    /// already in `cfg`. A proposal not computed yet (or out of date) adds nothing: the trainer
    /// derives the keys itself.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        if !cfg.auto_config || !self.current(cfg) {
            return;
        }
        let Some(p) = &self.proposal else {
            return;
        };
        for row in &self.rows {
            cfg.model_overrides
                .insert(row.key.clone(), row.effective().clone());
        }
        let max = self
            .rows
            .iter()
            .find(|r| r.key == "max_size")
            .and_then(|r| r.effective().as_u64())
            .and_then(|m| u32::try_from(m).ok());
        if let Some(max) = max
            && max > p.image_size
        {
            cfg.image_size = Some(max);
        }
    }

    /// Draws the section: the checkbox, the refit choice and, when on, the proposal table.
    pub fn ui(&mut self, ui: &mut egui::Ui, project: Option<&Path>, cfg: &mut TrainConfig) {
        self.poll();
        ui.horizontal(|ui| {
            ui.checkbox(&mut cfg.auto_config, "Auto-configure from the dataset")
                .on_hover_text(
                    "Derive the input size, anchors and per-image budgets from the training \
                     images' boxes; keys you set are left alone",
                );
            let label = ui.label("Refit on train + validation");
            let auto = format!("Auto (up to {} images)", autoconfig::REFIT_MAX_IMAGES);
            egui::ComboBox::from_id_salt("train_refit")
                .selected_text(match cfg.refit {
                    RefitMode::Auto => auto.as_str(),
                    RefitMode::On => "On",
                    RefitMode::Off => "Off",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut cfg.refit, RefitMode::Auto, auto.as_str());
                    ui.selectable_value(&mut cfg.refit, RefitMode::On, "On");
                    ui.selectable_value(&mut cfg.refit, RefitMode::Off, "Off");
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "After the run, train again on train + validation for the epochs \
                     validation chose",
                );
        });
        if !cfg.auto_config {
            return;
        }
        let Some(project) = project else {
            return;
        };
        self.refresh(ui.ctx(), project, cfg);
        if self.busy() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Measuring the training images…");
            });
        }
        if let Some(e) = &self.error {
            ui.colored_label(
                ui.visuals().error_fg_color,
                format!("Auto-configuration: {e}"),
            );
            return;
        }
        let Some(p) = self.proposal.as_deref() else {
            return;
        };
        let summary = if self.rows.is_empty() {
            format!("Measured the boxes of {} training image(s)", p.train_images)
        } else {
            format!(
                "Proposed from the boxes of {} training image(s); untick a row to keep its base \
                 value",
                p.train_images
            )
        };
        let busy = self.busy();
        let again = ui
            .horizontal(|ui| {
                ui.label(summary);
                ui.add_enabled(!busy, egui::Button::new("Measure again").small())
                    .on_hover_text("Read the project's boxes again (after editing masks)")
                    .clicked()
            })
            .inner;
        if again {
            self.requested = None;
            self.refresh(ui.ctx(), project, cfg);
        }
        let Some(p) = self.proposal.as_deref() else {
            return;
        };
        let rows = &mut self.rows;
        if let (Some(before), Some(after)) = (p.auto.coverage_before, p.auto.coverage_after) {
            ui.label(format!(
                "Anchor coverage before -> after: {:.1} % -> {:.1} %",
                before * 100.0,
                after * 100.0
            ))
            .on_hover_text(format!(
                "Boxes with a centred anchor of IoU >= {}",
                autoconfig::ANCHOR_IOU
            ));
        }
        if rows.is_empty() && p.pinned.is_empty() {
            ui.weak("No change proposed: the base configuration fits these images.");
        }
        if rows.is_empty() && p.pinned.is_empty() {
            return self.kept_ui(ui);
        }
        egui::Grid::new("train_autoconfig_table")
            .num_columns(4)
            .striped(true)
            .spacing([12.0, 4.0])
            .show(ui, |ui| {
                if !rows.is_empty() || !p.pinned.is_empty() {
                    ui.strong("Use / key");
                    ui.strong("Base");
                    ui.strong("Proposed");
                    ui.strong("Reason");
                    ui.end_row();
                }
                for row in rows.iter_mut() {
                    ui.checkbox(&mut row.use_it, row.key.as_str());
                    ui.label(compact(&row.base));
                    let mut edit = egui::TextEdit::singleline(&mut row.text)
                        .desired_width(280.0)
                        .min_size(egui::vec2(280.0, 0.0))
                        .font(egui::TextStyle::Monospace);
                    if row.value.is_err() {
                        edit = edit.text_color(ui.visuals().error_fg_color);
                    }
                    let resp = ui.add_enabled(row.use_it, edit);
                    let name = format!("{} value", row.key);
                    ui.ctx()
                        .accesskit_node_builder(resp.id, |n| n.set_label(name.as_str()));
                    if resp.changed() {
                        row.parse(&p.base_model);
                    }
                    if let Err(e) = &row.value {
                        resp.on_hover_text(format!("not used: {e}"));
                    }
                    reason_ui(ui, &row.reason);
                    ui.end_row();
                }
                for (key, value) in &p.pinned {
                    ui.label(key.as_str());
                    ui.label("");
                    ui.label(value.as_ref().map(compact).unwrap_or_default());
                    reason_ui(ui, "set by you");
                    ui.end_row();
                }
            });
        self.kept_ui(ui);
    }

    /// The rules that kept the base value, collapsed under "Kept".
    fn kept_ui(&self, ui: &mut egui::Ui) {
        let Some(p) = self.proposal.as_deref() else {
            return;
        };
        if !p.auto.kept.is_empty() {
            egui::CollapsingHeader::new("Kept")
                .id_salt("train_autoconfig_kept")
                .default_open(false)
                .show(ui, |ui| {
                    for line in &p.auto.kept {
                        ui.add(egui::Label::new(egui::RichText::new(line).weak()).wrap());
                    }
                });
        }
    }
}

fn reason_ui(ui: &mut egui::Ui, reason: &str) {
    ui.scope(|ui| {
        ui.set_max_width(480.0);
        ui.add(egui::Label::new(egui::RichText::new(reason).weak()).wrap());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base_model() -> MaskRcnnConfig {
        TrainConfig::default().preset_model_config(2)
    }

    #[test]
    fn invalid_or_unticked_rows_use_the_base_value() {
        let mut row = Row::new(
            "anchor_sizes",
            json!([[32], [64], [128], [256], [512]]),
            json!([[16], [32], [64], [128], [256]]),
            "small objects".into(),
        );
        assert_eq!(row.effective(), &row.proposed);
        row.text = "[[8], [16]".into();
        row.parse(&base_model());
        assert!(row.value.as_ref().unwrap_err().starts_with("not JSON"));
        assert_eq!(row.effective(), &row.base);
        row.text = "\"big\"".into();
        row.parse(&base_model());
        assert!(row.value.is_err(), "a string is not a list of sizes");
        row.text = "[[8], [16], [32], [64], [128]]".into();
        row.parse(&base_model());
        assert_eq!(row.effective(), &json!([[8], [16], [32], [64], [128]]));
        row.use_it = false;
        assert_eq!(row.effective(), &row.base);
    }

    #[test]
    fn apply_writes_the_rows_and_raises_the_image_size_like_the_trainer() {
        let project = PathBuf::from("/p");
        let cfg = TrainConfig {
            auto_config: true,
            ..TrainConfig::default()
        };
        let inputs = Inputs::of(&project, &cfg);
        let mut form = AutoConfigForm {
            requested: Some(inputs.clone()),
            ..AutoConfigForm::default()
        };
        let proposal = Proposal {
            train_images: 3,
            auto: AutoConfig {
                overrides: vec![
                    autoconfig::Override {
                        key: "min_size",
                        value: json!([640]),
                        base: json!([320]),
                        reason: "tiny".into(),
                    },
                    autoconfig::Override {
                        key: "max_size",
                        value: json!(640),
                        base: json!(320),
                        reason: "in proportion".into(),
                    },
                ],
                ..AutoConfig::default()
            },
            pinned: Vec::new(),
            base_model: base_model(),
            image_size: 320,
        };
        form.receive(inputs, Ok(Box::new(proposal)));
        let mut on = cfg.clone();
        form.apply(&mut on);
        assert_eq!(on.model_overrides["min_size"], json!([640]));
        assert_eq!(on.image_size, Some(640));
        on.validate().unwrap();

        // Unticked: pinned to the base, and the loader keeps its size.
        form.rows[0].use_it = false;
        form.rows[1].use_it = false;
        let mut kept = cfg.clone();
        form.apply(&mut kept);
        assert_eq!(kept.model_overrides["min_size"], json!([320]));
        assert_eq!(kept.model_overrides["max_size"], json!(320));
        assert_eq!(kept.image_size, None);

        // Off, or for another recipe (a new proposal is due): nothing is added.
        let mut off = TrainConfig::default();
        form.apply(&mut off);
        assert!(off.model_overrides.is_empty());
        let mut other = TrainConfig {
            seed: 9,
            ..cfg.clone()
        };
        form.apply(&mut other);
        assert!(other.model_overrides.is_empty());
    }
}
