//! The training loop: project → split → model (preset, ImageNet backbone) → SGD with linear
//! warm-up and cosine decay → run folder with `config.json`, `metrics.csv`, `train.log` and a
//! model bundle under `checkpoints/last/`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use tch::nn::{self, OptimizerConfig as _};

use crate::dataset::ExportImage;
use crate::dataset::store::CancelToken;
use crate::model::bundle::{Bundle, ModelSpec};
use crate::model::weights::{self, PartialLoad};
use crate::model::{Backbone, MaskRcnn, MaskRcnnConfig};
use crate::train::config::{Preset, TrainConfig};
use crate::train::data;
use crate::train::loader::TrainLoader;
use crate::train::observer::{TrainEvent, TrainObserver, event_line};

/// Loss names in the order of `metrics.csv` (sorted, as `Losses::to_map` returns them).
pub const LOSS_NAMES: [&str; 5] = [
    "loss_box_reg",
    "loss_classifier",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
];

/// Folder of the latest model bundle inside a run.
pub const LAST_CHECKPOINT: &str = "checkpoints/last";

/// What a finished (or cancelled) run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Run id (folder name).
    pub run_id: String,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Optimiser steps taken.
    pub iterations: usize,
    /// Epochs completed in full.
    pub epochs_completed: usize,
    /// Whether a cancel request stopped the run.
    pub cancelled: bool,
    /// Mean total loss of the last epoch (or of the partial epoch when cancelled).
    pub final_loss: Option<f64>,
    /// The latest model bundle, if one was written.
    pub checkpoint: Option<PathBuf>,
}

/// Learning rate at step `iter` of `total`: linear warm-up from `lr * warmup_factor` over
/// `warmup_iters` steps, then a half cosine from `lr` down to 0 at `total`.
pub fn learning_rate(cfg: &TrainConfig, iter: usize, total: usize) -> f64 {
    let warmup = cfg.warmup_iters.min(total);
    if iter < warmup {
        let alpha = iter as f64 / warmup as f64;
        return cfg.lr * (cfg.warmup_factor * (1.0 - alpha) + alpha);
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((iter - warmup) as f64 / span).min(1.0);
    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The bundle description of a model config (every inference-relevant value written out).
pub fn model_spec(cfg: &MaskRcnnConfig) -> ModelSpec {
    let mut spec = ModelSpec::new(cfg.backbone, cfg.num_classes);
    let three = |v: &[f64]| -> Option<[f64; 3]> { v.try_into().ok() };
    spec.returned_layers = Some(cfg.returned_layers.clone());
    spec.min_size = cfg.min_size.last().copied();
    spec.max_size = Some(cfg.max_size);
    spec.image_mean = three(&cfg.image_mean);
    spec.image_std = three(&cfg.image_std);
    spec.anchor_sizes = Some(
        cfg.anchor_sizes
            .iter()
            .map(|l| l.iter().map(|&s| s as f64).collect())
            .collect(),
    );
    spec.aspect_ratios = Some(cfg.aspect_ratios.clone());
    spec.rpn_pre_nms_top_n_test = Some(cfg.rpn_pre_nms_top_n_test);
    spec.rpn_post_nms_top_n_test = Some(cfg.rpn_post_nms_top_n_test);
    spec.rpn_nms_thresh = Some(cfg.rpn_nms_thresh);
    spec.box_score_thresh = Some(cfg.box_score_thresh);
    spec.box_nms_thresh = Some(cfg.box_nms_thresh);
    spec.box_detections_per_img = Some(cfg.box_detections_per_img);
    spec.frozen_bn_eps = Some(cfg.frozen_bn_eps);
    spec
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Creates a fresh `runs/<YYYYmmdd-HHMMSS[-n]>` folder (UTC).
fn create_run_dir(runs_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    std::fs::create_dir_all(runs_dir).with_context(|| format!("creating {runs_dir:?}"))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let base = format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        s / 3600,
        (s / 60) % 60,
        s % 60
    );
    for n in 0..1000 {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = runs_dir.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {dir:?}")),
        }
    }
    anyhow::bail!("could not find a free run folder name under {runs_dir:?}")
}

/// Writes `train.log` and forwards events to the caller's observer.
struct Reporter<'a> {
    log: BufWriter<File>,
    observer: &'a mut dyn TrainObserver,
}

impl Reporter<'_> {
    fn emit(&mut self, e: &TrainEvent) {
        if let Err(err) = writeln!(self.log, "{}", event_line(e)).and_then(|()| self.log.flush()) {
            log::warn!("could not write train.log: {err}");
        }
        self.observer.on_event(e);
    }
}

/// Trains a Mask R-CNN on the project at `project_dir` into a new run folder under `runs_dir`.
///
/// Emits [`TrainEvent`]s to `observer` (and `train.log`). `cancel` is checked before every step;
/// a cancelled run writes its current weights to `checkpoints/last/` and returns `Ok` with
/// `cancelled = true`. A NaN/inf loss stops the run with an error naming the step; the bundle
/// from the last finished epoch (if any) is left untouched.
pub fn train(
    project_dir: &Path,
    runs_dir: &Path,
    cfg: &TrainConfig,
    cancel: &CancelToken,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    if let Err(e) = cfg.validate() {
        observer.on_event(&TrainEvent::Failed {
            error: format!("{e:#}"),
        });
        return Err(e);
    }
    let (run_id, run_dir) = match create_run_dir(runs_dir) {
        Ok(v) => v,
        Err(e) => {
            observer.on_event(&TrainEvent::Failed {
                error: format!("{e:#}"),
            });
            return Err(e);
        }
    };
    let log_path = run_dir.join("train.log");
    let log = match File::create(&log_path) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!("creating {log_path:?}"));
            observer.on_event(&TrainEvent::Failed {
                error: format!("{e:#}"),
            });
            return Err(e);
        }
    };
    let mut reporter = Reporter { log, observer };
    let result = run(project_dir, &run_id, &run_dir, cfg, cancel, &mut reporter);
    if let Err(e) = &result {
        reporter.emit(&TrainEvent::Failed {
            error: format!("{e:#}"),
        });
    }
    result
}

fn run(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    cancel: &CancelToken,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<RunSummary> {
    let set = data::read_project(project_dir)?;
    let (_, class_names, label_of) = data::label_map(&set);
    anyhow::ensure!(
        !class_names.is_empty(),
        "the project has no classes to train on"
    );
    let split = data::split_images(&set.images, cfg.val_fraction, cfg.seed);
    anyhow::ensure!(
        !split.train.is_empty(),
        "the project has no training images"
    );
    let by_id: HashMap<i64, &ExportImage> = set.images.iter().map(|i| (i.id, i)).collect();
    let train_images: Vec<&ExportImage> = split
        .train
        .iter()
        .filter_map(|id| by_id.get(id).copied())
        .collect();

    let num_classes = class_names.len() as i64 + 1;
    let model_cfg = cfg.model_config(num_classes);
    let device = crate::runtime::device(cfg.device)?;
    let config_path = run_dir.join("config.json");
    let config_json = serde_json::json!({
        "run_id": run_id,
        "project": project_dir,
        "train": cfg,
        "model": &model_cfg,
        "device": format!("{device:?}"),
        "classes": &class_names,
        "split": {"train": &split.train, "val": &split.val},
    });
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&config_json)? + "\n",
    )
    .with_context(|| format!("writing {config_path:?}"))?;

    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut model = MaskRcnn::new(&vs.root(), &model_cfg)?;
    model.seed(cfg.seed);
    if cfg.pretrained_backbone && cfg.preset == Preset::CpuFast {
        load_imagenet_backbone(&mut vs, model_cfg.backbone)?;
    }
    let mut opt = nn::Sgd {
        momentum: cfg.momentum,
        dampening: 0.0,
        wd: cfg.weight_decay,
        nesterov: false,
    }
    .build(&vs, cfg.lr)?;

    let loader = TrainLoader::new(&train_images, &label_of, cfg)?;
    let planned = loader.total_steps(cfg.epochs);
    let total_iters = cfg.max_iters.map_or(planned, |m| m.min(planned));
    let mut counts = vec![0u64; class_names.len()];
    for image in &train_images {
        for inst in image.instances.iter().filter(|i| !i.iscrowd) {
            if let Some(&l) = label_of.get(&inst.class_id) {
                counts[(l - 1) as usize] += 1;
            }
        }
    }
    reporter.emit(&TrainEvent::Started {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        config: cfg.clone(),
        train_images: split.train.len(),
        val_images: split.val.len(),
        class_counts: class_names.iter().cloned().zip(counts).collect(),
        total_iters,
    });

    let metrics_path = run_dir.join("metrics.csv");
    let mut metrics = BufWriter::new(
        File::create(&metrics_path).with_context(|| format!("creating {metrics_path:?}"))?,
    );
    writeln!(
        metrics,
        "epoch,iter,{},total,lr,images_per_sec",
        LOSS_NAMES.join(",")
    )?;
    metrics.flush()?;

    let spec = model_spec(&model_cfg);
    let checkpoint_dir = run_dir.join(LAST_CHECKPOINT);
    let save = |reporter: &mut Reporter<'_>, vs: &nn::VarStore| -> anyhow::Result<PathBuf> {
        Bundle::write(&checkpoint_dir, &spec, &class_names, vs)
            .with_context(|| format!("writing the checkpoint {checkpoint_dir:?}"))?;
        reporter.emit(&TrainEvent::CheckpointSaved {
            path: checkpoint_dir.clone(),
        });
        Ok(checkpoint_dir.clone())
    };

    let mut iter = 0usize;
    let mut epochs_completed = 0usize;
    let mut final_loss = None;
    let mut checkpoint = None;
    let mut cancelled = false;
    'epochs: for epoch in 0..cfg.epochs {
        if iter >= total_iters {
            break;
        }
        let (mut loss_sum, mut steps) = (0.0, 0usize);
        let steps_per_epoch = loader.steps_in_epoch(epoch);
        for batch in loader.epoch(epoch) {
            if iter >= total_iters {
                break;
            }
            if cancel.is_cancelled() {
                cancelled = true;
                if steps > 0 {
                    final_loss = Some(loss_sum / steps as f64);
                }
                break 'epochs;
            }
            let started = Instant::now();
            let lr = learning_rate(cfg, iter, total_iters);
            opt.set_lr(lr);
            let batch = batch?;
            let n_images = batch.len();
            let (images, targets) = batch.to_device(device);
            let losses = model
                .forward_train(&images, &targets)
                .with_context(|| format!("forward pass at step {iter}"))?;
            let total_t = losses.total();
            let total = total_t.double_value(&[]);
            let parts = losses.to_map();
            if !total.is_finite() {
                let detail: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                anyhow::bail!(
                    "the loss became {total} at step {iter} (epoch {epoch}; {}); training stopped, the last checkpoint is kept",
                    detail.join(", ")
                );
            }
            opt.backward_step(&total_t);
            let images_per_sec = n_images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let cols: Vec<String> = LOSS_NAMES
                .iter()
                .map(|n| parts.get(*n).copied().unwrap_or(f64::NAN).to_string())
                .collect();
            writeln!(
                metrics,
                "{epoch},{iter},{},{total},{lr},{images_per_sec}",
                cols.join(",")
            )?;
            metrics.flush()?;
            reporter.emit(&TrainEvent::Step {
                epoch,
                iter,
                losses: parts,
                total,
                lr,
                images_per_sec,
                memory_bytes: None,
            });
            loss_sum += total;
            steps += 1;
            iter += 1;
        }
        if steps > 0 {
            let mean_loss = loss_sum / steps as f64;
            final_loss = Some(mean_loss);
            epochs_completed += usize::from(steps == steps_per_epoch);
            reporter.emit(&TrainEvent::EpochEnd {
                epoch,
                mean_loss,
                steps,
                val_segm_ap: None,
                val_bbox_ap: None,
            });
            checkpoint = Some(save(reporter, &vs)?);
        }
    }
    if cancelled {
        checkpoint = Some(save(reporter, &vs)?);
    }
    reporter.emit(&TrainEvent::Finished {
        iterations: iter,
        cancelled,
        final_loss,
    });
    Ok(RunSummary {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        iterations: iter,
        epochs_completed,
        cancelled,
        final_loss,
        checkpoint,
    })
}

/// Loads the ImageNet weights of the backbone (`BackboneOnly`) from the verified catalogue file.
fn load_imagenet_backbone(vs: &mut nn::VarStore, backbone: Backbone) -> anyhow::Result<()> {
    let name = match backbone {
        Backbone::MobilenetV2 => "mobilenet_v2_imagenet",
        Backbone::Resnet50 => anyhow::bail!("no ImageNet ResNet-50 weights in the catalogue"),
    };
    let entry = crate::runtime::pretrained(name)
        .with_context(|| format!("{name} is not in the weights catalogue"))?;
    let (path, source) = crate::runtime::fetch_pretrained(entry)?;
    log::info!("backbone weights {path:?} ({source:?})");
    let tensors = crate::model::checkpoint::read_checkpoint(&path)?;
    let tensors = weights::remap_imagenet(tensors, "backbone.body.");
    let report = weights::load_partial(vs, &tensors, PartialLoad::BackboneOnly)?;
    anyhow::ensure!(
        report.missing.is_empty(),
        "the ImageNet file lacks backbone variables: {:?}",
        report.missing
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            lr: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.0,
            ..TrainConfig::default()
        };
        assert_eq!(learning_rate(&cfg, 0, 100), 0.0);
        assert!((learning_rate(&cfg, 5, 100) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10, 100) - 0.1).abs() < 1e-12);
        assert!(learning_rate(&cfg, 55, 100) < 0.1);
        assert!(learning_rate(&cfg, 99, 100) < 0.001);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
