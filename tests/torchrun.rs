//! The torchrun engine end to end on the sample project (18 training images, so two gloo ranks
//! get 9 each with no DistributedSampler padding): a run of one epoch at 128 px in two
//! processes of the reference venv, its folder, events, converted bundles and the ranks' samples;
//! and a cancel after the first step that leaves no process behind.
//!
//! Every test holds [`TORCH`]: runs seed libtorch's global generator, and two torchrun jobs at
//! once would share the 2 cores.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use maskstudio::host::DeviceChoice;
use maskstudio::model::bundle::Bundle;
use maskstudio::model::{MaskRcnn, MaskRcnnConfig};
use maskstudio::train::runs::{self, BundleKind, RunConfig};
use maskstudio::train::state::{BEST_CHECKPOINT, LAST_CHECKPOINT};
use maskstudio::train::torchrun::{self, Engine, TorchrunOptions, convert, job};
use maskstudio::train::{TrainConfig, TrainControl, TrainEvent, TrainObserver};

static TORCH: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    TORCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the torch venv's Python is there; outside CI a missing venv skips (with a message).
fn have_venv_python() -> bool {
    let python = maskstudio::host::python();
    let found = python.is_absolute() && python.exists();
    if !found {
        assert!(
            !common::running_in_ci(),
            "the torch venv's python ({python:?}) is missing under CI=true"
        );
        eprintln!("SKIP: no torch venv python at {python:?} (scripts/setup-venv.sh installs it)");
    }
    found
}

/// The sample project in `dir`.
fn sample(dir: &Path) -> PathBuf {
    let project = dir.join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    project
}

/// 128 px, batch 3 per process: 9 images per rank make 3 global steps per epoch.
fn tiny(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 3,
        image_size: Some(128),
        lr: 0.01,
        warmup_iters: 2,
        warmup_factor: 0.1,
        device: DeviceChoice::Cpu,
        seed: 5,
        ..TrainConfig::default()
    }
}

/// Records events; cancels after the first step when asked.
#[derive(Default)]
struct Collect {
    events: Vec<TrainEvent>,
    cancel_on_step: Option<TrainControl>,
}

impl TrainObserver for Collect {
    fn on_event(&mut self, e: &TrainEvent) {
        if let (TrainEvent::Step { .. }, Some(c)) = (e, &self.cancel_on_step) {
            c.cancel();
        }
        self.events.push(e.clone());
    }
}

const METRICS_HEADER: &str = "epoch,iter,loss_box_reg,loss_classifier,loss_mask,loss_objectness,\
                              loss_rpn_box_reg,total,lr,images_per_sec,memory_bytes";
const EPOCHS_HEADER: &str = "epoch,steps,mean_loss,loss_box_reg,loss_classifier,loss_mask,\
                             loss_objectness,loss_rpn_box_reg,lr,val_segm_ap,val_bbox_ap,seconds";

/// `epoch image_id` lines of one rank's `seen-rank<R>.txt`.
fn seen(run_dir: &Path, rank: usize) -> Vec<(usize, i64)> {
    let path = run_dir.join(format!("torchrun/seen-rank{rank}.txt"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Processes whose command line names `needle` (the run folder's scripts).
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            (cmd.contains(needle) && state != 'Z').then_some((pid, cmd))
        })
        .collect()
}

fn model_config(run_dir: &Path) -> MaskRcnnConfig {
    RunConfig::read(run_dir).unwrap().model.unwrap()
}

#[test]
fn two_gloo_ranks_train_an_epoch_into_a_normal_run_folder() {
    let _g = lock();
    if !have_venv_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = sample(dir.path());
    let runs_dir = project.join(runs::RUNS_DIR);
    let opts = TorchrunOptions::default();
    assert_eq!(opts.nproc_per_node, 2);
    let mut events = Collect::default();
    let summary = torchrun::train_torchrun(
        &project,
        &runs_dir,
        &tiny(1),
        &opts,
        &TrainControl::default(),
        &mut events,
    )
    .unwrap();
    let run = summary.run_dir.clone();
    assert!(!summary.cancelled);
    assert_eq!((summary.iterations, summary.epochs_completed), (3, 1));

    // config.json: engine, options, the seeded split of the sample (18 train / 6 validation).
    let config = RunConfig::read(&run).unwrap();
    assert_eq!(config.engine, Some(Engine::Torchrun));
    assert_eq!(config.torchrun.as_ref(), Some(&opts));
    assert_eq!((config.split.train.len(), config.split.val.len()), (18, 6));
    let job = job::Job::read(&run).unwrap();
    assert_eq!(job.train_ids, config.split.train);
    assert_eq!(job.classes, config.classes);
    assert_eq!(job.threads, 1.max(num_cpus() / 2));

    // metrics.csv: the exact header and one row per global step with finite losses.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(lines.next(), Some(METRICS_HEADER));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse::<f64>().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!((r[0], r[1]), (0.0, i as f64), "epoch, iter of row {i}");
        assert!(r[2..8].iter().all(|v| v.is_finite() && *v >= 0.0), "{r:?}");
        let sum: f64 = r[2..7].iter().sum();
        assert!((sum - r[7]).abs() < 1e-4 * r[7].max(1.0), "total {r:?}");
    }
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().next(), Some(EPOCHS_HEADER));
    assert_eq!(epochs.lines().count(), 2, "{epochs}");

    // Events: Started, a Step per row with its loss, the EpochEnd, the bundles, Finished.
    let steps: Vec<(usize, f64)> = events
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { iter, total, .. } => Some((*iter, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        rows.iter()
            .map(|r| (r[1] as usize, r[7]))
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        events.events.first(),
        Some(TrainEvent::Started {
            total_iters: 3,
            train_images: 18,
            val_images: 6,
            ..
        })
    ));
    assert!(events.events.iter().any(|e| matches!(
        e,
        TrainEvent::EpochEnd {
            epoch: 0,
            steps: 3,
            val_segm_ap: Some(_),
            ..
        }
    )));
    let saved: BTreeSet<PathBuf> = events
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::CheckpointSaved { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        saved,
        [run.join(BEST_CHECKPOINT), run.join(LAST_CHECKPOINT)].into()
    );
    assert!(matches!(
        events.events.last(),
        Some(TrainEvent::Finished {
            iterations: 3,
            cancelled: false,
            ..
        })
    ));

    // The bundles load strictly and hold exactly the weights of the DDP script's checkpoint.
    let model_cfg = model_config(&run);
    for (name, pth) in [(LAST_CHECKPOINT, "last.pth"), (BEST_CHECKPOINT, "best.pth")] {
        let bundle = Bundle::read(&run.join(name)).unwrap();
        assert_eq!(bundle.labels, config.classes);
        let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
        MaskRcnn::new(&vs.root(), &model_cfg).unwrap();
        bundle.load_weights(&mut vs).unwrap();
        let theirs = convert::model_tensors(&run.join("torchrun").join(pth)).unwrap();
        let ours = vs.variables();
        let mut compared = 0;
        for (k, t) in &theirs {
            if let Some(v) = ours.get(k) {
                assert!(v.equal(t), "{name}: {k} differs from {pth}");
                compared += 1;
            }
        }
        assert_eq!(compared, ours.len(), "{name}: every variable compared");
    }
    // The initial weights were not the trained ones (training moved them).
    let init =
        maskstudio::model::checkpoint::read_safetensors(&run.join("torchrun/init.safetensors"))
            .unwrap();
    let last = convert::model_tensors(&run.join("torchrun/last.pth")).unwrap();
    let key = "roi_heads.mask_predictor.mask_fcn_logits.weight";
    let a = &init.iter().find(|(k, _)| k == key).unwrap().1;
    let b = &last.iter().find(|(k, _)| k == key).unwrap().1;
    assert!(!a.equal(b), "{key} did not train");

    // The best bundle predicts.
    let predictor =
        maskstudio::infer::Predictor::load(&run.join(BEST_CHECKPOINT), tch::Device::Cpu, Some(0.0))
            .unwrap();
    let image = image::open(
        project
            .join("images")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap()
    .to_rgb8();
    let dets = predictor.predict(&image).unwrap();
    assert!(dets.iter().all(|d| d.score.is_finite()));

    // The ranks trained on disjoint halves whose union is the training split.
    let (r0, r1) = (seen(&run, 0), seen(&run, 1));
    assert_eq!((r0.len(), r1.len()), (9, 9));
    let ids0: BTreeSet<i64> = r0.iter().map(|s| s.1).collect();
    let ids1: BTreeSet<i64> = r1.iter().map(|s| s.1).collect();
    assert!(ids0.is_disjoint(&ids1), "{ids0:?} ∩ {ids1:?}");
    let union: Vec<i64> = ids0.union(&ids1).copied().collect();
    assert_eq!(union, config.split.train);

    // The run list and the bundle pickers show it as any other run.
    let listed = runs::scan_runs(&runs_dir);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].engine, Engine::Torchrun);
    assert_eq!((listed[0].steps, listed[0].has_bundle), (3, true));
    let kinds: Vec<BundleKind> = runs::list_bundles(&project)
        .iter()
        .map(|b| b.kind)
        .collect();
    assert_eq!(kinds, [BundleKind::Best, BundleKind::Last]);
    assert!(processes_naming(&run.to_string_lossy()).is_empty());
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn cancel_after_the_first_step_stops_every_process() {
    let _g = lock();
    if !have_venv_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = sample(dir.path());
    let control = TrainControl::default();
    let mut events = Collect {
        cancel_on_step: Some(control.clone()),
        ..Collect::default()
    };
    let opts = TorchrunOptions::default();
    let summary = torchrun::train_torchrun(
        &project,
        &project.join(runs::RUNS_DIR),
        &tiny(20),
        &opts,
        &control,
        &mut events,
    )
    .unwrap();
    assert!(summary.cancelled);
    assert!(summary.iterations >= 1 && summary.iterations < 60);
    assert!(matches!(
        events.events.last(),
        Some(TrainEvent::Finished {
            cancelled: true,
            ..
        })
    ));
    let run = summary.run_dir.to_string_lossy().into_owned();
    let left = processes_naming(&run);
    assert!(left.is_empty(), "still running: {left:?}");
    let log = std::fs::read_to_string(summary.run_dir.join("train.log")).unwrap();
    assert!(
        log.contains("cancel: stopping every torchrun process"),
        "{log}"
    );
}

#[test]
fn a_refusing_worker_fails_the_run_with_its_message() {
    let _g = lock();
    if !have_venv_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = sample(dir.path());
    // ddp_train.py refuses repeat-factor sampling (not implemented there) on every rank.
    let cfg = TrainConfig {
        augment: Some(Box::new(maskstudio::train::AugmentConfig {
            repeat_threshold: Some(0.3),
            ..maskstudio::train::AugmentConfig::default()
        })),
        ..tiny(1)
    };
    let mut events = Collect::default();
    let err = torchrun::train_torchrun(
        &project,
        &project.join(runs::RUNS_DIR),
        &cfg,
        &TorchrunOptions::default(),
        &TrainControl::default(),
        &mut events,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    let runs = runs::scan_runs(&project.join(runs::RUNS_DIR));
    assert_eq!(runs.len(), 1);
    assert!(msg.contains(&*runs[0].dir.to_string_lossy()), "{msg}");
    assert!(msg.contains("repeat_threshold"), "{msg}");
    assert!(
        matches!(events.events.last(), Some(TrainEvent::Failed { error }) if error.contains("repeat_threshold")),
        "{:?}",
        events.events.last()
    );
    assert!(processes_naming(&runs[0].dir.to_string_lossy()).is_empty());
}
