//! A few CPU training steps on a class subset of `../shared/data/coco128-seg`: the loss falls,
//! `metrics.csv` has one row per step, and a cancelled run leaves a bundle `Predictor` opens.

mod common;

use maskstudio::cancel::CancelToken;
use maskstudio::host::DeviceChoice;
use maskstudio::train::{self, TrainConfig, TrainEvent, TrainObserver};

fn small_config() -> TrainConfig {
    TrainConfig {
        epochs: 5,
        batch_size: 2,
        image_size: Some(192),
        lr: 0.01,
        warmup_iters: 5,
        warmup_factor: 0.1,
        val_fraction: 0.0,
        device: DeviceChoice::Cpu,
        seed: 1,
        ..TrainConfig::default()
    }
}

#[derive(Default)]
struct Collect {
    totals: Vec<f64>,
    events: Vec<TrainEvent>,
    cancel_after: Option<(usize, CancelToken)>,
}

impl TrainObserver for Collect {
    fn on_event(&mut self, e: &TrainEvent) {
        if let TrainEvent::Step { total, .. } = e {
            self.totals.push(*total);
            if let Some((n, token)) = &self.cancel_after
                && self.totals.len() >= *n
            {
                token.cancel();
            }
        }
        self.events.push(e.clone());
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn losses_fall_and_every_step_is_logged() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let project = common::coco128_subset_project(&data, dir.path(), 8);
    let runs = dir.path().join("runs");
    let mut obs = Collect::default();
    let started = std::time::Instant::now();
    let summary = train::train(
        &project,
        &runs,
        &small_config(),
        &CancelToken::default(),
        &mut obs,
    )
    .unwrap();
    eprintln!(
        "20 steps in {:.1}s; totals {:?}",
        started.elapsed().as_secs_f64(),
        obs.totals
    );
    assert_eq!(summary.iterations, 20);
    assert_eq!(summary.epochs_completed, 5);
    assert!(!summary.cancelled);
    let (first, last) = (mean(&obs.totals[..5]), mean(&obs.totals[15..]));
    eprintln!("mean total loss: first 5 steps {first:.4}, last 5 steps {last:.4}");
    assert!(last < first, "loss did not fall: {first} -> {last}");

    let csv = std::fs::read_to_string(summary.run_dir.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for name in [
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
        "total",
        "lr",
    ] {
        assert!(header.contains(&name), "{name} missing from {header:?}");
    }
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 20);
    let total_col = header.iter().position(|h| *h == "total").unwrap();
    for (row, t) in rows.iter().zip(&obs.totals) {
        assert_eq!(row.len(), header.len());
        assert!((row[total_col] - t).abs() < 1e-9);
    }
    assert!(summary.run_dir.join("config.json").is_file());
    let log = std::fs::read_to_string(summary.run_dir.join("train.log")).unwrap();
    assert!(log.contains("finished after 20 steps"), "{log}");
    assert!(matches!(
        obs.events.first(),
        Some(TrainEvent::Started { .. })
    ));
    assert!(matches!(
        obs.events.last(),
        Some(TrainEvent::Finished { .. })
    ));
    let saved = obs
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::CheckpointSaved { .. }))
        .count();
    assert_eq!(saved, 5, "one checkpoint per epoch");
}

#[test]
fn cancel_stops_within_a_step_and_leaves_a_loadable_bundle() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let project = common::coco128_subset_project(&data, dir.path(), 8);
    let runs = dir.path().join("runs");
    let cancel = CancelToken::default();
    let mut obs = Collect {
        cancel_after: Some((3, cancel.clone())),
        ..Collect::default()
    };
    let summary = train::train(&project, &runs, &small_config(), &cancel, &mut obs).unwrap();
    assert!(summary.cancelled);
    assert_eq!(summary.iterations, 3);
    let bundle = summary.checkpoint.expect("a checkpoint after cancel");
    assert_eq!(bundle, summary.run_dir.join("checkpoints/last"));
    let predictor = maskstudio::infer::Predictor::load(&bundle, tch::Device::Cpu, None).unwrap();
    let mut labels = predictor.labels().to_vec();
    labels.sort();
    assert_eq!(labels, ["dog", "person"]);
    let csv = std::fs::read_to_string(summary.run_dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3);
}

/// The Train form's sample recipe (what "Try the sample" trains): every epoch runs, the loss
/// falls and validation finds the shapes (mask AP well above zero). The README quotes its time
/// on a 2-core CPU; here only the outcome is checked, never the speed.
#[test]
fn the_sample_recipe_converges_to_a_non_zero_validation_ap() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    let cfg = TrainConfig {
        device: DeviceChoice::Cpu,
        auto_config: true,
        ..maskstudio::sample_project::train_config()
    };
    let mut obs = Collect::default();
    let started = std::time::Instant::now();
    let summary = train::train(
        &project,
        &dir.path().join("runs"),
        &cfg,
        &CancelToken::default(),
        &mut obs,
    )
    .unwrap();
    let epochs: Vec<(f64, Option<f64>)> = obs
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::EpochEnd {
                mean_loss,
                val_segm_ap,
                ..
            } => Some((*mean_loss, *val_segm_ap)),
            _ => None,
        })
        .collect();
    eprintln!(
        "sample recipe: {} steps in {:.0} s; (mean loss, val mask AP) per epoch {epochs:?}",
        summary.iterations,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary.epochs_completed, cfg.epochs);
    assert_eq!(epochs.len(), cfg.epochs);
    let (first, last) = (epochs[0].0, epochs[cfg.epochs - 1].0);
    assert!(
        last < 0.75 * first,
        "loss did not converge: {first} -> {last}"
    );
    let ap = epochs[cfg.epochs - 1].1.expect("validation every epoch");
    assert!(ap > 0.1, "validation mask AP {ap} after the sample recipe");
}
