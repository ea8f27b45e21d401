//! A run's session, fresh ([`start_fresh`]: split, auto-configuration, `config.json`, initial
//! weights) or resumed ([`start_resumed`]: the run's files and `checkpoints/last`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tch::{Device, nn};

use super::report::Reporter;
use super::{AUTOCONFIG_FILE, LOSS_NAMES};
use crate::dataset::stats::DatasetStats;
use crate::dataset::{ExportImage, ExportSet};
use crate::model::bundle::{Bundle, ModelSpec};
use crate::model::weights::{self, PartialLoad};
use crate::model::{Backbone, MaskRcnn, MaskRcnnConfig};
use crate::train::autoconfig;
use crate::train::config::{Preset, TrainConfig};
use crate::train::data;
use crate::train::loader::TrainLoader;
use crate::train::optim::{LossScaler, Optimizer, Schedule};
use crate::train::runs::{CONFIG_FILE, RunConfig, RunSplit};
use crate::train::state::{self as run_state, TrainState};
use crate::train::torchrun::options::{Engine, TorchrunOptions};

/// Everything a run needs, fresh or resumed.
pub(super) struct Session {
    pub(super) run_id: String,
    pub(super) run_dir: PathBuf,
    pub(super) cfg: TrainConfig,
    pub(super) class_names: Vec<String>,
    pub(super) label_of: HashMap<i64, i64>,
    pub(super) train_images: Vec<ExportImage>,
    /// Batches of the training images (plan, augmentation, prefetching).
    pub(super) loader: TrainLoader,
    pub(super) val_set: ExportSet,
    pub(super) spec: ModelSpec,
    pub(super) device: Device,
    pub(super) vs: nn::VarStore,
    pub(super) model: MaskRcnn,
    pub(super) opt: Optimizer,
    pub(super) state: TrainState,
    pub(super) metrics: BufWriter<File>,
    /// The step the session started at (for the log).
    pub(super) resumed_at: Option<usize>,
}

/// Images of `ids` (all must exist).
fn pick_images(set: &ExportSet, ids: &[i64]) -> anyhow::Result<Vec<ExportImage>> {
    let by_id: HashMap<i64, &ExportImage> = set.images.iter().map(|i| (i.id, i)).collect();
    ids.iter()
        .map(|id| {
            by_id.get(id).map(|i| (*i).clone()).with_context(|| {
                format!("image {id} of the run's split is no longer in the project")
            })
        })
        .collect()
}

/// The training images and the validation set of a split.
fn split_set(
    set: &ExportSet,
    train: &[i64],
    val: &[i64],
) -> anyhow::Result<(Vec<ExportImage>, ExportSet)> {
    let train_images = pick_images(set, train)?;
    let val_set = ExportSet {
        classes: set.classes.clone(),
        images: pick_images(set, val)?,
    };
    Ok((train_images, val_set))
}

fn build_model(
    cfg: &TrainConfig,
    model_cfg: &MaskRcnnConfig,
    device: Device,
) -> anyhow::Result<(nn::VarStore, MaskRcnn)> {
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = MaskRcnn::new(&vs.root(), model_cfg)?;
    Ok((vs, model))
}

const METRICS_HEADER_TAIL: &str = "total,lr,images_per_sec,memory_bytes";

/// What a fresh run starts from, for either engine: the project's images, classes and split,
/// the resolved recipe, and the model with its initial weights (`config.json` and, with
/// auto-configuration, `autoconfig.json` are written).
pub(crate) struct FreshStart {
    /// The project's images and classes.
    pub(crate) set: ExportSet,
    /// Class names in label order (label = index + 1).
    pub(crate) class_names: Vec<String>,
    /// Project class id → label.
    pub(crate) label_of: HashMap<i64, i64>,
    /// The run's train/validation image ids.
    pub(crate) split: data::Split,
    /// The recipe with the auto-configuration applied.
    pub(crate) cfg: TrainConfig,
    /// The model the recipe builds.
    pub(crate) model_cfg: MaskRcnnConfig,
    /// The device the model is on.
    pub(crate) device: Device,
    /// The model's variables with their initial values.
    pub(crate) vs: nn::VarStore,
    /// The model.
    pub(crate) model: MaskRcnn,
}

/// The engine recorded in `config.json` and where a torchrun run's weights start.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineChoice {
    /// `config.json`'s `engine` (`None` for the in-process trainer, as before torchrun).
    pub(crate) engine: Option<Engine>,
    /// `config.json`'s `torchrun` options.
    pub(crate) torchrun: Option<TorchrunOptions>,
    /// A bundle whose weights replace the preset's start.
    pub(crate) init: Option<PathBuf>,
}

/// The start of a fresh run: the seeded split (or `split` as given), the auto-configuration
/// when `cfg.auto_config` (its reasons in `autoconfig.json` and `notes`), `config.json`, and the
/// model with its initial weights (the preset's: ImageNet body for cpu-fast, COCO weights for
/// quality; or `engine.init`'s bundle), seeded with `cfg.seed`.
pub(crate) fn prepare_fresh(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    split: Option<data::Split>,
    engine: EngineChoice,
    notes: &mut Vec<String>,
) -> anyhow::Result<FreshStart> {
    let set = data::read_project(project_dir)?;
    let (_, class_names, label_of) = data::label_map(&set);
    anyhow::ensure!(
        !class_names.is_empty(),
        "the project has no classes to train on"
    );
    let split =
        split.unwrap_or_else(|| data::split_images(&set.images, cfg.val_fraction, cfg.seed));
    anyhow::ensure!(
        !split.train.is_empty(),
        "the project has no training images"
    );
    let num_classes = class_names.len() as i64 + 1;
    let mut cfg = cfg.clone();
    if cfg.auto_config {
        let stats = DatasetStats::from_images(&pick_images(&set, &split.train)?);
        let resolved = autoconfig::resolve(&cfg, &stats, num_classes)?;
        crate::fsutil::write_atomic(
            &run_dir.join(AUTOCONFIG_FILE),
            (serde_json::to_string_pretty(&resolved.to_json(&stats))? + "\n").as_bytes(),
        )?;
        notes.extend(resolved.lines());
        cfg = resolved.config;
    }
    let model_cfg = cfg.model_config(num_classes)?;
    let device = crate::host::device(cfg.device)?;
    let project_abs = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
    RunConfig {
        run_id: Some(run_id.to_owned()),
        project: Some(project_abs),
        train: Some(cfg.clone()),
        model: Some(model_cfg.clone()),
        device: Some(format!("{device:?}")),
        classes: class_names.clone(),
        split: RunSplit {
            train: split.train.clone(),
            val: split.val.clone(),
        },
        engine: engine.engine,
        torchrun: engine.torchrun,
    }
    .write(run_dir)?;

    let (mut vs, mut model) = build_model(&cfg, &model_cfg, device)?;
    model.seed(cfg.seed);
    if let Some(bundle) = &engine.init {
        notes.push(load_init_bundle(&mut vs, bundle)?);
    } else {
        if cfg.pretrained_backbone && cfg.preset == Preset::CpuFast {
            load_imagenet_backbone(&mut vs, model_cfg.backbone)?;
        }
        if cfg.pretrained_backbone && cfg.preset == Preset::Quality {
            let init = crate::train::init::init_quality(&mut vs, &model_cfg)?;
            notes.push(init.note());
        }
    }
    Ok(FreshStart {
        set,
        class_names,
        label_of,
        split,
        cfg,
        model_cfg,
        device,
        vs,
        model,
    })
}

/// Loads a bundle's weights as a run's start: every variable when the bundle is this model
/// (same classes and configuration), else all but the class predictors where names and shapes
/// match. Returns the line for `train.log`.
fn load_init_bundle(vs: &mut nn::VarStore, dir: &Path) -> anyhow::Result<String> {
    let bundle = Bundle::read(dir).with_context(|| format!("reading the --init bundle {dir:?}"))?;
    let tensors = crate::model::checkpoint::read_safetensors(&bundle.weights_path())
        .with_context(|| format!("reading the weights of the --init bundle {dir:?}"))?;
    if weights::load_strict(vs, &tensors).is_ok() {
        return Ok(format!("initial weights: every variable from {dir:?}"));
    }
    let report = weights::load_partial(vs, &tensors, PartialLoad::ExceptPredictorsMatching)
        .with_context(|| format!("loading the --init bundle {dir:?}"))?;
    Ok(format!(
        "initial weights from {dir:?} except the class predictors: {report}"
    ))
}

/// Builds a fresh session: the seeded split (or `split` as given, for a refit), the
/// auto-configuration when `cfg.auto_config` (its reasons in `autoconfig.json` and `notes`),
/// `config.json`, the model and the loader.
pub(super) fn start_fresh(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    split: Option<data::Split>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Session> {
    let FreshStart {
        set,
        class_names,
        label_of,
        split,
        cfg,
        model_cfg,
        device,
        vs,
        model,
    } = prepare_fresh(
        project_dir,
        run_id,
        run_dir,
        cfg,
        split,
        EngineChoice::default(),
        notes,
    )?;
    let cfg = &cfg;
    let opt = Optimizer::new(&vs, cfg);
    let (train_images, val_set) = split_set(&set, &split.train, &split.val)?;
    let loader = new_loader(&train_images, &label_of, cfg)?;
    let epoch_steps: Vec<usize> = (0..cfg.epochs).map(|e| loader.steps_in_epoch(e)).collect();
    let planned: usize = epoch_steps.iter().sum();
    let total_iters = cfg.max_iters.map_or(planned, |m| m.min(planned));
    let mut state = TrainState::new(
        cfg.epochs,
        total_iters,
        Schedule {
            start: 0,
            total: total_iters,
            steps_per_epoch: epoch_steps.first().copied().unwrap_or(0),
            epoch_steps,
        },
        cfg.batch_size,
    );
    if cfg.amp && device.is_cuda() {
        state.loss_scaler = Some(LossScaler::default());
    }
    let metrics_path = run_dir.join("metrics.csv");
    let mut metrics = BufWriter::new(
        File::create(&metrics_path).with_context(|| format!("creating {metrics_path:?}"))?,
    );
    writeln!(
        metrics,
        "epoch,iter,{},{METRICS_HEADER_TAIL}",
        LOSS_NAMES.join(",")
    )?;
    metrics.flush()?;
    Ok(Session {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        cfg: cfg.clone(),
        class_names,
        label_of,
        train_images,
        loader,
        val_set,
        spec: ModelSpec::from_config(&model_cfg),
        device,
        vs,
        model,
        opt,
        state,
        metrics,
        resumed_at: None,
    })
}

pub(super) fn start_resumed(
    run_dir: &Path,
    continue_epochs: Option<usize>,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<Session> {
    let mut config = RunConfig::read(run_dir)?;
    let mut cfg = RunConfig::required(run_dir, "train", config.train.as_ref())?.clone();
    let run_id = RunConfig::required(run_dir, "run_id", config.run_id.as_ref())?.clone();
    let project_dir = RunConfig::required(run_dir, "project", config.project.as_ref())?.clone();
    let saved_classes = config.classes.clone();
    anyhow::ensure!(
        !config.split.train.is_empty(),
        "{:?}: the split has no training images",
        run_dir.join(CONFIG_FILE)
    );

    let (mut state, checkpoint) = run_state::read_state(run_dir)?;
    match continue_epochs {
        None => anyhow::ensure!(
            !state.finished,
            "the run in {run_dir:?} has finished; use --continue-epochs N to extend it"
        ),
        Some(n) => {
            anyhow::ensure!(n >= 1, "--continue-epochs must be at least 1");
            anyhow::ensure!(
                state.finished,
                "the run in {run_dir:?} has not finished (step {} of {}); resume it without --continue-epochs first",
                state.iter,
                state.total_iters
            );
        }
    }

    let set = data::read_project(&project_dir)?;
    let (_, class_names, label_of) = data::label_map(&set);
    anyhow::ensure!(
        class_names == saved_classes,
        "the project's classes changed since the run started ({saved_classes:?} → {class_names:?}); start a new run"
    );
    let (train_images, val_set) = split_set(&set, &config.split.train, &config.split.val)?;
    let model_cfg = cfg.model_config(class_names.len() as i64 + 1)?;
    let device = crate::host::device(cfg.device)?;
    let (mut vs, model) = build_model(&cfg, &model_cfg, device)?;
    let mut opt = Optimizer::new(&vs, &cfg);
    Bundle::read(&checkpoint)
        .and_then(|b| b.load_weights(&mut vs))
        .with_context(|| format!("loading the weights of {checkpoint:?}"))?;
    opt.load(&checkpoint.join(run_state::OPTIMIZER_FILE))?;

    let loader = new_loader(&train_images, &label_of, &cfg)?;
    if let Some(n) = continue_epochs {
        // The added epochs keep their numbers (and so their batch plans and augmentations).
        let epoch_steps: Vec<usize> = (state.epochs..state.epochs + n)
            .map(|e| loader.steps_in_epoch(e))
            .collect();
        let steps: usize = epoch_steps.iter().sum();
        cfg.epochs = state.epochs + n;
        cfg.max_iters = None;
        state.epochs = cfg.epochs;
        state.schedule = Schedule {
            start: state.iter,
            total: steps,
            steps_per_epoch: epoch_steps.first().copied().unwrap_or(0),
            epoch_steps,
        };
        state.total_iters = state.iter + steps;
        state.finished = false;
        state.stopped_early = false;
        state.evals_since_best = 0;
        config.train = Some(cfg.clone());
        config.write(run_dir)?;
        reporter.note(&format!(
            "continuing for {n} more epochs ({steps} steps) with a new schedule"
        ));
    }
    if cfg.amp && device.is_cuda() && state.loss_scaler.is_none() {
        state.loss_scaler = Some(LossScaler::default());
    }
    let metrics = reopen_metrics(&run_dir.join("metrics.csv"), state.iter)?;
    Ok(Session {
        run_id,
        run_dir: run_dir.to_path_buf(),
        cfg,
        class_names,
        label_of,
        train_images,
        loader,
        val_set,
        spec: ModelSpec::from_config(&model_cfg),
        device,
        vs,
        model,
        opt,
        resumed_at: Some(state.iter),
        state,
        metrics,
    })
}

/// Keeps the header and the rows of steps before `iter` (a crash may have logged steps after
/// the last checkpoint), then opens the file for appending.
fn reopen_metrics(path: &Path, iter: usize) -> anyhow::Result<BufWriter<File>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate() {
        let step: Option<usize> = line.split(',').nth(1).and_then(|v| v.parse().ok());
        if i == 0 || step.is_some_and(|s| s < iter) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_atomic(path, kept.as_bytes())?;
    let f = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {path:?}"))?;
    Ok(BufWriter::new(f))
}

/// The loader over the training images (`cfg`'s batch size, seed and augmentation).
fn new_loader(
    train_images: &[ExportImage],
    label_of: &HashMap<i64, i64>,
    cfg: &TrainConfig,
) -> anyhow::Result<TrainLoader> {
    let refs: Vec<&ExportImage> = train_images.iter().collect();
    TrainLoader::new(&refs, label_of, cfg)
}

/// Loads the ImageNet weights of the backbone (`BackboneOnly`) from the verified catalogue file.
fn load_imagenet_backbone(vs: &mut nn::VarStore, backbone: Backbone) -> anyhow::Result<()> {
    let name = match backbone {
        Backbone::MobilenetV2 => "mobilenet_v2_imagenet",
        Backbone::Resnet50 => anyhow::bail!("no ImageNet ResNet-50 weights in the catalogue"),
    };
    let entry = crate::host::pretrained(name)
        .with_context(|| format!("{name} is not in the weights catalogue"))?;
    let (path, source) = crate::host::fetch_pretrained(entry)?;
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
