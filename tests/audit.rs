//! The label-error audit end to end on the sample project (issue 18): `--model` with a run's
//! checkpoint audits exactly that run's validation images and stores them; a refit (or its
//! export) is refused; a bundle from elsewhere audits the chosen split and says so; a
//! cancelled audit stores nothing; k-fold trains K runs on disjoint held-out folds covering
//! the images, continues after a cancel without retraining the finished fold, and stores one
//! k-fold audit; a planted missing instance is found with its mask as the fix.
//!
//! The models are tiny (a few steps at 96 px, 10 detections per image): these tests check
//! which images are audited and what is stored, not how good the findings are (the planted
//! error uses the labels themselves as a perfect model's predictions).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use clap::Parser as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::{AuditMode, Project, ReviewStatus};
use maskstudio::eval::audit::cli::AuditArgs;
use maskstudio::eval::audit::kfold::KFoldPlan;
use maskstudio::eval::audit::{
    AuditCancelled, AuditParams, AuditProgress, FoldState, KFoldRequest, audit_detections,
    audit_kfold, audit_with_model, estimate_kfold,
};
use maskstudio::eval::project::ClassMatch;
use maskstudio::host::DeviceChoice;
use maskstudio::infer::Detection;
use maskstudio::train::config::RefitMode;
use maskstudio::train::runs::RunConfig;
use maskstudio::train::{self, NullObserver, TrainConfig, TrainEvent};

static TORCH: Mutex<()> = Mutex::new(());

/// One torch job at a time (two cores): the tests' timings stay those of one job.
fn lock() -> MutexGuard<'static, ()> {
    TORCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sample project (24 scenes, 18 train / 6 validation) in a fresh folder.
fn sample(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    project
}

/// A few steps at 96 px with at most 10 detections per image: fast, not good.
fn tiny() -> TrainConfig {
    let mut overrides = serde_json::Map::new();
    overrides.insert("box_detections_per_img".into(), 10.into());
    TrainConfig {
        epochs: 1,
        max_iters: Some(3),
        batch_size: 2,
        image_size: Some(96),
        lr: 0.01,
        warmup_iters: 1,
        eval_every: 1,
        device: DeviceChoice::Cpu,
        seed: 3,
        model_overrides: overrides,
        ..TrainConfig::default()
    }
}

/// The sample project with one tiny run (validation every epoch, then a refit) and its export.
struct Trained {
    _tmp: tempfile::TempDir,
    project: PathBuf,
    run: PathBuf,
}

fn trained() -> &'static Trained {
    static ONCE: OnceLock<Trained> = OnceLock::new();
    ONCE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let project = sample(tmp.path());
        let cfg = TrainConfig {
            refit: RefitMode::On,
            ..tiny()
        };
        let summary = train::train(
            &project,
            &project.join("runs"),
            &cfg,
            &CancelToken::default(),
            &mut NullObserver,
        )
        .unwrap();
        assert!(summary.best_checkpoint.is_some() && summary.refit_checkpoint.is_some());
        Trained {
            _tmp: tmp,
            project,
            run: summary.run_dir,
        }
    })
}

fn cli_args(argv: &[&str]) -> AuditArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AuditArgs,
    }
    let mut all = vec!["audit"];
    all.extend_from_slice(argv);
    Cli::try_parse_from(all).unwrap().args
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_runs_checkpoint_audits_exactly_its_validation_images_and_stores_them() {
    let _g = lock();
    let t = trained();
    let val = RunConfig::read(&t.run).unwrap().split.val;
    assert_eq!(
        val.len(),
        6,
        "the sample marks every fourth image validation"
    );
    let out = t._tmp.path().join("audit.json");
    let best = t.run.join("checkpoints/best");
    let args = cli_args(&[
        "--project",
        t.project.to_str().unwrap(),
        "--model",
        best.to_str().unwrap(),
        "--device",
        "cpu",
        "--min-score",
        "0.01",
        "--out",
        out.to_str().unwrap(),
    ]);
    maskstudio::eval::audit::cli::run(&args).unwrap();
    let json = read_json(&out);
    assert_eq!(json["mode"], "model");
    assert_eq!(json["images"], 6);
    let statement = json["out_of_sample"].as_str().unwrap();
    assert!(
        statement.contains("only its 6 validation images") && statement.contains("best"),
        "{statement}"
    );
    // Every finding is on a validation image, sorted by image score, then score.
    let findings = json["findings"].as_array().unwrap();
    let keys: Vec<(f64, f64)> = findings
        .iter()
        .map(|f| {
            let image = f["image_id"].as_i64().unwrap();
            assert!(val.contains(&image), "image {image} is not held out");
            (
                f["image_score"].as_f64().unwrap(),
                f["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        keys.windows(2)
            .all(|w| w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1 >= w[1].1)),
        "{keys:?}"
    );
    let total: u64 = json["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, findings.len());
    // The store holds the audit with its six images and the same findings.
    let project = Project::open(&t.project).unwrap();
    let id = json["audit_id"].as_i64().unwrap();
    let row = project
        .audits()
        .unwrap()
        .into_iter()
        .find(|a| a.id == id)
        .unwrap();
    assert_eq!((row.mode, row.images), (AuditMode::Model, 6));
    assert_eq!(row.findings as usize, findings.len());
    let queued: Vec<_> = project
        .audit_queue(None)
        .unwrap()
        .into_iter()
        .filter(|f| f.audit_id == id)
        .collect();
    assert_eq!(queued.len(), findings.len());
    assert!(queued.iter().all(|f| val.contains(&f.image_id)));
}

#[test]
fn a_refit_and_its_export_are_refused_with_advice() {
    let _g = lock();
    let t = trained();
    let refit = t.run.join("checkpoints/refit");
    let export = t.project.join("exports/refit-export");
    let done = train::export::export_run(&t.run, &export).unwrap();
    assert_eq!(done.checkpoint, "refit");
    for bundle in [&refit, &export] {
        let err = audit_with_model(
            &t.project,
            bundle,
            None,
            DeviceChoice::Cpu,
            &AuditParams::default(),
            &CancelToken::default(),
            &mut |_| {},
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("refit") && text.contains("--folds"),
            "{bundle:?}: {text}"
        );
    }
}

#[test]
fn a_bundle_from_elsewhere_audits_the_split_and_a_cancel_stores_nothing() {
    let _g = lock();
    let t = trained();
    // The best checkpoint copied out of the project: nothing says where it trained.
    let elsewhere = t._tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for f in train::export::BUNDLE_FILES {
        std::fs::copy(t.run.join("checkpoints/best").join(f), elsewhere.join(f)).unwrap();
    }
    let mut notes = Vec::new();
    let outcome = audit_with_model(
        &t.project,
        &elsewhere,
        Some("validation"),
        DeviceChoice::Cpu,
        &AuditParams::default(),
        &CancelToken::default(),
        &mut |p| {
            if let AuditProgress::Note(n) = p {
                notes.push(n);
            }
        },
    )
    .unwrap();
    assert_eq!(outcome.images.len(), 6);
    assert!(
        outcome
            .out_of_sample
            .contains("not trained in this project")
            && outcome.out_of_sample.contains("split validation"),
        "{}",
        outcome.out_of_sample
    );
    assert_eq!(notes, vec![outcome.out_of_sample.clone()]);
    assert_eq!(outcome.counts.len(), 4);

    let project = Project::open(&t.project).unwrap();
    let before = project.audits().unwrap().len();
    let cancel = CancelToken::default();
    cancel.cancel();
    let err = audit_with_model(
        &t.project,
        &elsewhere,
        None,
        DeviceChoice::Cpu,
        &AuditParams::default(),
        &cancel,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.downcast_ref::<AuditCancelled>(),
        Some(&AuditCancelled { resume: None })
    );
    assert_eq!(project.audits().unwrap().len(), before);
}

#[test]
fn kfold_trains_disjoint_folds_continues_after_a_cancel_and_stores_one_audit() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let project = sample(tmp.path());
    // Rejected images leave training and audits: 12 of the 24 keep the test small.
    {
        let mut store = Project::open(&project).unwrap();
        let ids: Vec<i64> = store
            .export_set(None)
            .unwrap()
            .images
            .iter()
            .map(|m| m.id)
            .collect();
        for id in ids.iter().skip(12) {
            store
                .set_review_status(*id, ReviewStatus::Rejected)
                .unwrap();
        }
    }
    let config = tmp.path().join("recipe.json");
    std::fs::write(
        &config,
        r#"{"model_overrides": {"box_detections_per_img": 10}, "warmup_iters": 1}"#,
    )
    .unwrap();
    let args = cli_args(&[
        "--project",
        project.to_str().unwrap(),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--max-iters",
        "2",
        "--image-size",
        "96",
        "--seed",
        "4",
        "--config",
        config.to_str().unwrap(),
        "--no-auto-config",
        "--device",
        "cpu",
        "--out",
        "unused.json",
    ]);
    let recipe = args.recipe().unwrap();
    let estimate = estimate_kfold(&project, &recipe, 2, None).unwrap();
    // 12 images, 6 per fold: 3 steps of 2 images, capped at --max-iters 2.
    assert_eq!((estimate.images, estimate.steps_per_fold), (12, 2));
    assert!(estimate.source.contains("default"), "{}", estimate.source);
    let request = KFoldRequest {
        folds: 2,
        recipe,
        split: None,
        resume: None,
        params: AuditParams::default(),
    };

    // First session: cancelled at the first step of fold 2.
    let cancel = CancelToken::default();
    let err = audit_kfold(&project, &request, &cancel, &mut |p| {
        if let AuditProgress::Training {
            fold: 2,
            event: TrainEvent::Step { .. },
            ..
        } = p
        {
            cancel.cancel();
        }
    })
    .unwrap_err();
    let resume = err
        .downcast_ref::<AuditCancelled>()
        .and_then(|c| c.resume.clone())
        .unwrap_or_else(|| panic!("{err:#}"));
    let plan = KFoldPlan::read(&resume).unwrap();
    assert_eq!((plan.k, plan.seed, plan.audit_id), (2, 4, None));
    let fold1 = KFoldPlan::fold_dir(&resume, 0);
    let stamp = |dir: &Path| {
        std::fs::metadata(dir.join("checkpoints/last/model.safetensors"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let fold1_stamp = stamp(&fold1);
    let fold1_log = std::fs::read_to_string(fold1.join("train.log")).unwrap();
    assert!(
        Project::open(&project)
            .unwrap()
            .audits()
            .unwrap()
            .is_empty()
    );

    // Second session, same request: the unfinished plan continues by itself.
    let mut states = Vec::new();
    let outcome = audit_kfold(&project, &request, &CancelToken::default(), &mut |p| {
        if let AuditProgress::Fold { fold, state, .. } = p {
            states.push((fold, state));
        }
    })
    .unwrap();
    assert_eq!(states[0], (1, FoldState::Trained));
    assert!(
        matches!(states[1], (2, FoldState::Resumed { step: 1, total: 2 })),
        "{states:?}"
    );
    assert_eq!(stamp(&fold1), fold1_stamp, "fold 1 was trained again");
    assert_eq!(
        std::fs::read_to_string(fold1.join("train.log")).unwrap(),
        fold1_log
    );

    // Two runs whose held-out folds are disjoint, cover all 12 images and are their
    // validation split; each trained on the other fold.
    let mut covered = Vec::new();
    for (i, held) in plan.folds.iter().enumerate() {
        let config = RunConfig::read(&KFoldPlan::fold_dir(&resume, i)).unwrap();
        assert_eq!(&config.split.val, held);
        let other = &plan.folds[1 - i];
        assert_eq!(&config.split.train, other);
        covered.extend(held.iter().copied());
    }
    covered.sort_unstable();
    let mut all: Vec<i64> = Project::open(&project)
        .unwrap()
        .export_set(None)
        .unwrap()
        .images
        .iter()
        .map(|m| m.id)
        .collect();
    all.sort_unstable();
    assert_eq!(covered, all);
    assert_eq!(plan.folds[0].len(), 6);

    // One k-fold audit of the 12 images, recorded in the plan.
    assert_eq!(outcome.mode, AuditMode::KFold);
    assert_eq!(outcome.model, "k-fold 2× cpu-fast");
    assert_eq!(outcome.images, all);
    let stored = Project::open(&project).unwrap().audits().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].mode, stored[0].images), (AuditMode::KFold, 12));
    assert_eq!(
        KFoldPlan::read(&resume).unwrap().audit_id,
        Some(outcome.audit_id)
    );

    // `--resume` of the finished plan through the CLI: prediction only, audit.json written.
    let out = tmp.path().join("kfold.json");
    let args = cli_args(&[
        "--project",
        project.to_str().unwrap(),
        "--resume",
        resume.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    maskstudio::eval::audit::cli::run(&args).unwrap();
    let json = read_json(&out);
    assert_eq!(
        (json["mode"].as_str(), json["images"].as_u64()),
        (Some("kfold"), Some(12))
    );
    assert_eq!(stamp(&fold1), fold1_stamp);
    assert_eq!(Project::open(&project).unwrap().audits().unwrap().len(), 2);
}

#[test]
fn a_deleted_instance_comes_back_as_a_missing_finding_with_its_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let project_dir = sample(tmp.path());
    let mut project = Project::open(&project_dir).unwrap();
    let set = project.export_set(None).unwrap();
    // The biggest instance of the project, and a perfect model: the labels as predictions.
    let (image, gone) = set
        .images
        .iter()
        .flat_map(|m| m.instances.iter().map(move |i| (m, i)))
        .max_by_key(|(_, i)| i.rle.area())
        .unwrap();
    let labels: Vec<String> = set.classes.iter().map(|c| c.name.clone()).collect();
    let classes = ClassMatch::new(&set.classes, &labels);
    let detections: Vec<Detection> = image
        .instances
        .iter()
        .map(|i| Detection {
            label: classes.label_of(i.class_id).unwrap(),
            class_name: String::new(),
            score: 0.95,
            box_xyxy: [0.0; 4],
            mask: maskstudio::dataset::Mask::from_rle(&i.rle).unwrap(),
            soft_mask: None,
        })
        .collect();
    let name = |c: i64| c.to_string();
    let params = AuditParams::default();
    let clean = audit_detections(image, &detections, &classes, &params, &name);
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);

    project.delete_instance(gone.id).unwrap();
    let after = project.export_set(None).unwrap();
    let image = after.images.iter().find(|m| m.id == image.id).unwrap();
    let audit = audit_detections(image, &detections, &classes, &params, &name);
    assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
    let f = &audit.findings[0];
    assert_eq!((f.kind.as_str(), f.instance_id), ("missing", None));
    assert_eq!(f.suggested_class_id, Some(gone.class_id));
    assert_eq!(f.suggested_mask.as_ref(), Some(&gone.rle));
    assert!((f.score - 0.95).abs() < 1e-6, "{}", f.score);
}
