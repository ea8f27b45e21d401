//! The Train tab's recipe form: preset, image size, epochs, batch, optimiser, schedule,
//! freezing, clipping, validation and early stopping, AMP, augmentation and device; the
//! sample's quick recipe; start/pause/stop. [`TrainPanel::recipe`] turns it into the
//! [`TrainConfig`] a run trains with.

use eframe::egui;

use super::TrainPanel;
use crate::gui::shared::PanelCtx;
use crate::host::DeviceChoice;
use crate::train::config::{OptimizerKind, ScheduleKind};
use crate::train::torchrun::Engine;
use crate::train::{AugmentConfig, Preset, TrainConfig};

/// Most torchrun processes the form offers on one machine.
const MAX_PROCESSES: usize = 64;

impl TrainPanel {
    /// The studio form's recipe on `base`: auto-configuration on, refit off.
    pub(super) fn studio_recipe(base: TrainConfig) -> TrainConfig {
        TrainConfig {
            auto_config: true,
            // Off like the CLI: measured no better than the validation-selected checkpoint at
            // 1.7x the time (see `train::cli`).
            refit: crate::train::config::RefitMode::Off,
            ..base
        }
    }

    /// A project opened: the sample gets its quick recipe, anything else the standard one, but
    /// only while the form still shows the other untouched (an edited form is the user's).
    pub fn project_opened(&mut self, is_sample: bool) {
        let (from, to) = if is_sample {
            (
                TrainConfig::default(),
                crate::sample_project::train_config(),
            )
        } else {
            (
                crate::sample_project::train_config(),
                TrainConfig::default(),
            )
        };
        if is_sample != self.sample_recipe && self.cfg == Self::studio_recipe(from) {
            self.use_recipe(Self::studio_recipe(to), is_sample);
        }
    }

    /// Whether the form holds the sample's quick recipe.
    pub fn has_sample_recipe(&self) -> bool {
        self.sample_recipe
    }

    pub(super) fn use_recipe(&mut self, cfg: TrainConfig, sample: bool) {
        self.aug = AugmentConfig::resolve(&cfg);
        self.max_iters = cfg.max_iters.unwrap_or(0);
        self.cfg = cfg;
        self.sample_recipe = sample;
    }

    /// The form's recipe as the trainer takes it (device from the settings), or what is wrong.
    pub fn recipe(&self, device: DeviceChoice) -> anyhow::Result<TrainConfig> {
        let mut cfg = self.cfg.clone();
        cfg.max_iters = (self.max_iters > 0).then_some(self.max_iters);
        cfg.device = device;
        cfg.clip_grad_norm = self.clip_enabled.then_some(self.clip_value);
        cfg.patience = self.patience_enabled.then_some(self.patience_value);
        cfg.lr_milestones = self
            .milestones_text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("milestone {t:?} is not a whole number of epochs"))
            })
            .collect::<anyhow::Result<_>>()?;
        cfg.augment = Some(Box::new(self.aug.clone()));
        self.autocfg.apply(&mut cfg);
        // Recipe fields the form changed from its defaults are the user's: the trainer's
        // auto-configuration (warm-up inside epoch 1) leaves them.
        let d = TrainConfig::default();
        for (key, changed) in [
            ("lr", cfg.lr.to_bits() != d.lr.to_bits()),
            ("warmup_iters", cfg.warmup_iters != d.warmup_iters),
            (
                "warmup_factor",
                cfg.warmup_factor.to_bits() != d.warmup_factor.to_bits(),
            ),
        ] {
            if changed && !cfg.is_user_set(key) {
                cfg.user_set.push(key.to_owned());
            }
        }
        cfg.validate()?;
        self.aug.validate()?;
        Ok(cfg)
    }

    pub(super) fn form_ui(&mut self, ui: &mut egui::Ui, cx: &mut PanelCtx) {
        let running = self.run.is_some();
        if self.sample_recipe && !running {
            ui.horizontal_wrapped(|ui| {
                ui.label(
                    "Sample recipe: 224 px, 6 epochs, learning rate 0.02 — about 3 minutes on a \
                     2-core CPU, to show the loop. Real data takes longer (the standard recipe: \
                     12 epochs at 320 px, ~0.3–1 image/s on such a CPU).",
                );
                if ui.button("Use the standard recipe").clicked() {
                    self.use_recipe(Self::studio_recipe(TrainConfig::default()), false);
                }
            });
        }
        ui.add_enabled_ui(!running, |ui| {
            egui::Grid::new("train_form")
                .num_columns(4)
                .spacing([12.0, 4.0])
                .show(ui, |ui| {
                    let cfg = &mut self.cfg;
                    let preset_before = cfg.preset;
                    labelled_choice(
                        ui,
                        "Preset",
                        "train_preset",
                        &mut cfg.preset,
                        &[(Preset::CpuFast, "cpu-fast"), (Preset::Quality, "quality")],
                    );
                    if cfg.preset != preset_before {
                        self.aug = AugmentConfig::for_preset(cfg.preset);
                    }
                    ui.label("Backbone");
                    ui.label(match cfg.preset {
                        Preset::CpuFast => "MobileNetV2-FPN (ImageNet)",
                        Preset::Quality => crate::train::init::quality_backbone_label(),
                    });
                    ui.end_row();

                    let mut size = cfg.resolved_image_size();
                    let input = model_input(cfg);
                    let label = ui.label("Image size");
                    ui.horizontal(|ui| {
                        ui.add(egui::DragValue::new(&mut size).range(32..=2048).speed(1.0))
                            .labelled_by(label.id);
                        ui.weak(input).on_hover_text(
                            "The size the model receives: each training image is resized to it \
                             once (the model's transform keeps it)",
                        );
                    });
                    if size != cfg.resolved_image_size() {
                        cfg.image_size = Some(size);
                    }
                    labelled_drag(ui, "Epochs", &mut cfg.epochs, 1..=1000, 0.1);
                    ui.end_row();

                    labelled_drag(ui, "Batch size", &mut cfg.batch_size, 1..=64, 0.1);
                    let label = ui.label("Learning rate");
                    ui.add(
                        egui::DragValue::new(&mut cfg.lr)
                            .range(1e-6..=1.0)
                            .speed(0.0005)
                            .max_decimals(6),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    labelled_drag(ui, "Warm-up steps", &mut cfg.warmup_iters, 0..=100_000, 1.0);
                    labelled_drag(
                        ui,
                        "Max iterations (0 = all)",
                        &mut self.max_iters,
                        0..=10_000_000,
                        1.0,
                    );
                    ui.end_row();

                    let cfg = &mut self.cfg;
                    labelled_choice(
                        ui,
                        "Optimizer",
                        "train_optimizer",
                        &mut cfg.optimizer,
                        &[(OptimizerKind::Sgd, "SGD"), (OptimizerKind::Adamw, "AdamW")],
                    );
                    labelled_drag(ui, "Seed", &mut cfg.seed, 0..=u64::MAX, 1.0);
                    ui.end_row();

                    labelled_choice(
                        ui,
                        "Schedule",
                        "train_schedule",
                        &mut cfg.schedule,
                        &[
                            (ScheduleKind::Cosine, "cosine"),
                            (ScheduleKind::Multistep, "multistep"),
                            (ScheduleKind::OneCycle, "one-cycle"),
                        ],
                    );
                    labelled_drag(ui, "Freeze epochs", &mut cfg.freeze_epochs, 0..=1000, 0.1);
                    ui.end_row();

                    if cfg.schedule == ScheduleKind::Multistep {
                        let label = ui.label("Milestones (epochs, comma-separated)");
                        ui.add(
                            egui::TextEdit::singleline(&mut self.milestones_text)
                                .desired_width(140.0),
                        )
                        .labelled_by(label.id);
                        let label = ui.label("LR gamma");
                        ui.add(
                            egui::DragValue::new(&mut cfg.lr_gamma)
                                .range(0.0..=1.0)
                                .speed(0.01),
                        )
                        .labelled_by(label.id);
                        ui.end_row();
                    }

                    ui.checkbox(&mut self.clip_enabled, "Clip gradients");
                    ui.add_enabled_ui(self.clip_enabled, |ui| {
                        labelled_drag(
                            ui,
                            "Max gradient norm",
                            &mut self.clip_value,
                            0.01..=1e6,
                            0.1,
                        );
                    });
                    labelled_drag(
                        ui,
                        "Evaluate every N epochs",
                        &mut cfg.eval_every,
                        0..=1000,
                        0.1,
                    );
                    ui.end_row();

                    ui.checkbox(&mut self.patience_enabled, "Early stopping");
                    ui.add_enabled_ui(self.patience_enabled, |ui| {
                        labelled_drag(
                            ui,
                            "Patience (evaluations)",
                            &mut self.patience_value,
                            1..=1000,
                            0.1,
                        );
                    });
                    ui.checkbox(&mut cfg.amp, "Mixed precision (AMP, CUDA only)");
                    ui.end_row();

                    let label = ui.label("Validation fraction");
                    ui.add(
                        egui::DragValue::new(&mut cfg.val_fraction)
                            .range(0.0..=0.9)
                            .speed(0.01),
                    )
                    .labelled_by(label.id);
                    let label = ui.label("Flip probability");
                    ui.add(
                        egui::DragValue::new(&mut cfg.hflip_prob)
                            .range(0.0..=1.0)
                            .speed(0.01),
                    )
                    .labelled_by(label.id);
                    ui.end_row();

                    labelled_choice(
                        ui,
                        "Device",
                        "train_device",
                        &mut cx.settings.device,
                        &DeviceChoice::ALL.map(|d| (d, d.as_str())),
                    );
                    ui.checkbox(&mut cfg.pretrained_backbone, "ImageNet backbone");
                    ui.end_row();

                    self.engine_row(ui);
                    ui.end_row();
                });
            if self.engine == Engine::Torchrun {
                ui.weak(torchrun_note(&self.cfg, self.processes));
            }
            egui::CollapsingHeader::new("Augmentation")
                .default_open(false)
                .show(ui, |ui| {
                    let aug = &mut self.aug;
                    ui.checkbox(&mut aug.enabled, "Augment training images");
                    ui.add_enabled_ui(aug.enabled, |ui| {
                        egui::Grid::new("train_aug_form")
                            .num_columns(4)
                            .spacing([12.0, 4.0])
                            .show(ui, |ui| {
                                labelled_drag(
                                    ui,
                                    "Shift-scale-rotate probability",
                                    &mut aug.ssr_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Rotate limit (degrees)",
                                    &mut aug.rotate_limit,
                                    0.0..=180.0,
                                    0.5,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "Crop probability",
                                    &mut aug.crop_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Scale jitter min",
                                    &mut aug.scale_min,
                                    0.1..=1.0,
                                    0.01,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "Colour probability",
                                    &mut aug.color_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                labelled_drag(
                                    ui,
                                    "Scale jitter max",
                                    &mut aug.scale_max,
                                    1.0..=4.0,
                                    0.01,
                                );
                                ui.end_row();
                                labelled_drag(
                                    ui,
                                    "RGB shift probability",
                                    &mut aug.rgb_shift_prob,
                                    0.0..=1.0,
                                    0.01,
                                );
                                ui.checkbox(&mut aug.pad_to_square, "Pad to square");
                                ui.end_row();
                            });
                    });
                    ui.label("The horizontal flip probability is in the form above.");
                });
            self.autocfg.ui(ui, cx.project, &mut self.cfg);
        });
        ui.horizontal(|ui| {
            let can_start = !running && cx.project.is_some();
            if ui
                .add_enabled(can_start, egui::Button::new("Start training"))
                .clicked()
            {
                self.start(ui.ctx(), cx);
            }
            let stopping = self.run.as_ref().is_some_and(|r| r.control.is_cancelled());
            if ui
                .add_enabled(running && !stopping, egui::Button::new("Stop training"))
                .clicked()
            {
                self.stop();
            }
            if cx.project.is_none() {
                ui.label("Open a project to train on it.");
            }
            let pause_text = if self.paused() {
                "Resume training"
            } else {
                "Pause training"
            };
            let torchrun = self
                .run
                .as_ref()
                .is_some_and(|r| r.engine == Engine::Torchrun);
            if ui
                .add_enabled(
                    running && !stopping && !torchrun,
                    egui::Button::new(pause_text),
                )
                .on_disabled_hover_text(if torchrun {
                    "A torchrun run cannot pause: Stop it, and Resume run continues it from its \
                     last finished epoch"
                } else {
                    "Pauses a running in-process run before its next step"
                })
                .clicked()
            {
                self.toggle_pause();
            }
            ui.checkbox(&mut self.watch_enabled, "Watch validation images");
        });
        self.preview_ui(ui, cx);
    }
}

impl TrainPanel {
    /// The form's "Engine" row: in-process or torchrun (greyed with the reason while the
    /// reference venv is missing or still being checked), and torchrun's process count.
    fn engine_row(&mut self, ui: &mut egui::Ui) {
        ui.label("Engine");
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.engine, Engine::InProcess, "In-process")
                .on_hover_text("Our trainer in the studio's process (pause, resume, continue)");
            let available = self.tools.torchrun();
            let chosen = self.engine == Engine::Torchrun;
            let response = ui.add_enabled(
                available.is_ok(),
                egui::RadioButton::new(chosen, Engine::Torchrun.label()),
            );
            let response = match &available {
                Ok(()) => response.on_hover_text(
                    "torchvision under torchrun (PyTorch DDP) in the reference Python venv: \
                     one process per CPU socket or GPU",
                ),
                Err(why) => response.on_disabled_hover_text(why),
            };
            if response.clicked() && available.is_ok() {
                self.engine = Engine::Torchrun;
            }
        });
        ui.add_enabled_ui(self.engine == Engine::Torchrun, |ui| {
            labelled_drag(ui, "Processes", &mut self.processes, 1..=MAX_PROCESSES, 0.1);
        });
    }
}

/// The line under the form for torchrun `processes`: the batch is per process and the
/// learning rate scales linearly with the process count (the DDP script's rule, Goyal et al.
/// 2017, as torchvision's detection reference); several machines are the CLI's.
fn torchrun_note(cfg: &TrainConfig, processes: usize) -> String {
    format!(
        "torchrun × {processes}: batch size {} per process ({} per step), learning rate {} × \
         {processes} = {} (linear scaling). Several machines: maskstudio train --engine torchrun \
         --nnodes … (README).",
        cfg.batch_size,
        cfg.batch_size * processes,
        cfg.lr,
        // Rounded to the form's 6 decimals: 0.1 × 3 reads 0.3, not 0.30000000000000004.
        (cfg.lr * processes as f64 * 1e6).round() / 1e6,
    )
}

/// The model's input size as the form shows it beside "Image size" (the model config's last
/// `min_size` and `max_size`): `longer side 320` or `shorter side 800, longer ≤ 1333`.
fn model_input(cfg: &TrainConfig) -> String {
    match cfg.model_config(2) {
        Ok(m) => match m.min_size.last() {
            Some(&min) if min < m.max_size => {
                format!("shorter side {min}, longer ≤ {}", m.max_size)
            }
            _ => format!("longer side {}", m.max_size),
        },
        Err(_) => String::new(),
    }
}

/// A label and a combo box setting `value` to one of `options` (value, shown name); the box is
/// labelled by the label, so screen readers and tests find it by that text.
pub(super) fn labelled_choice<T: Copy + PartialEq>(
    ui: &mut egui::Ui,
    text: &str,
    id: &str,
    value: &mut T,
    options: &[(T, &str)],
) {
    let label = ui.label(text);
    let shown = options
        .iter()
        .find(|(v, _)| v == value)
        .map_or("", |(_, name)| *name);
    egui::ComboBox::from_id_salt(id)
        .selected_text(shown)
        .show_ui(ui, |ui| {
            for &(v, name) in options {
                ui.selectable_value(value, v, name);
            }
        })
        .response
        .labelled_by(label.id);
}

/// A label and a drag value labelled by it (kittest and screen readers find it by name).
pub(super) fn labelled_drag<T: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    text: &str,
    value: &mut T,
    range: std::ops::RangeInclusive<T>,
    speed: f64,
) {
    let label = ui.label(text);
    ui.add(egui::DragValue::new(value).range(range).speed(speed))
        .labelled_by(label.id);
}
