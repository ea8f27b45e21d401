//! A worker thread that dies never leaves its job "running": for each panel's worker (predict,
//! evaluate, train validation, download, the editor's store writer, thumbnails) a test arms the
//! fault hook ([`maskstudio::fault`]) so the thread panics mid-job, starts the job through the
//! real widgets (egui_kittest), runs frames until the job ends, and checks that an error toast
//! names the panic, the job is gone from the panel's running jobs, and what was done before the
//! panic is kept.
//!
//! The fault hook is process-global and tests run on parallel threads: each test arms a point
//! name that only its own worker reaches, or holds a lock shared with the tests whose workers
//! reach it too.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::oi_server::{FxOptions, HOT_DOG, OiServer, build_fixture};
use eframe::egui::{self, Key};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::dataset::store::{Project, ReviewStatus};
use maskstudio::gui::download_panel::DownloadPanel;
use maskstudio::gui::editor::ImageView;
use maskstudio::gui::predict::PredictPanel;
use maskstudio::gui::shared::{NoticeLevel, Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::gui::thumbs::{Thumb, ThumbCache};
use maskstudio::gui::train::eval::EvalPanel;
use maskstudio::gui::train::{TrainPanel, runs_dir};
use maskstudio::host::DeviceChoice;
use maskstudio::train::TrainConfig;

/// Held by the tests whose workers pass the same fault points (both predict tests' workers
/// reach `predict` and `predict-image`): one of them arming a point must not fire in the other.
static PREDICT_POINTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

/// What every panel harness holds besides its panel.
struct Shell {
    project: Option<PathBuf>,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

impl Shell {
    fn new(project: Option<PathBuf>) -> Self {
        Self {
            project,
            settings: Settings {
                device: DeviceChoice::Cpu,
                score_threshold: 0.05,
                ..Settings::default()
            },
            notices: Notices::default(),
            requests: Vec::new(),
        }
    }

    /// Error toasts, oldest first.
    fn errors(&self) -> Vec<String> {
        self.notices
            .items
            .iter()
            .filter(|n| n.level == NoticeLevel::Error)
            .map(|n| n.text.clone())
            .collect()
    }
}

/// A harness drawing `panel` with `draw` (which builds the `PanelCtx` from the shell).
fn harness<P: 'static>(
    panel: P,
    shell: Shell,
    draw: fn(&mut P, &mut egui::Ui, &mut PanelCtx<'_>),
) -> Harness<'static, (P, Shell)> {
    Harness::builder()
        .with_size([1280.0, 1600.0])
        .build_ui_state(
            move |ui, (panel, shell): &mut (P, Shell)| {
                let mut cx = PanelCtx {
                    project: shell.project.as_deref(),
                    settings: &mut shell.settings,
                    notices: &mut shell.notices,
                    requests: &mut shell.requests,
                };
                draw(panel, ui, &mut cx);
            },
            (panel, shell),
        )
}

/// Steps frames (the workers run meanwhile) until `done` holds.
fn wait_for<S>(h: &mut Harness<'_, S>, what: &str, done: impl Fn(&S) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

/// Focuses the text field labelled `label` and types `text`.
fn type_into<S>(h: &mut Harness<'_, S>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// A random (cat, dog) bundle at `dir/bundle`; its detections do not matter here.
fn any_bundle(dir: &Path, image: &Path) -> PathBuf {
    common::scaled_random_bundle(dir, image, 5, &[1.0], 0.01, |_| true)
}

#[test]
fn a_panic_in_the_predict_worker_ends_the_batch_and_keeps_its_results() {
    let _points = PREDICT_POINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for k in 0..3u8 {
        common::write_png(&images.join(format!("p{k}.png")), 96, 72, 30 * k);
    }
    let bundle = any_bundle(dir.path(), &images.join("p0.png"));
    let mut h = harness(PredictPanel::default(), Shell::new(None), |p, ui, cx| {
        p.ui(ui, cx)
    });
    h.run();
    type_into(&mut h, "Model bundle", &bundle.display().to_string());
    h.get_by_label("Load model").click();
    wait_for(&mut h, "the model", |(p, _)| p.model_loaded());

    // The first image is predicted, the second one panics the worker.
    maskstudio::fault::arm("predict", 1);
    type_into(&mut h, "Images", &images.display().to_string());
    h.get_by_label("Predict").click();
    h.step();
    wait_for(&mut h, "the batch to end", |(p, _)| !p.busy());
    h.run();

    let (panel, shell) = h.state();
    let errors = shell.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("prediction failed after 1 of 3 images")
                && e.contains("the predict-worker thread panicked: injected fault at predict")),
        "{errors:?}"
    );
    assert_eq!(
        panel.results().len(),
        1,
        "the image predicted before the panic stays"
    );
    assert!(panel.results()[0].path.ends_with("p0.png"));
    assert!(panel.jobs().is_empty(), "no job left running");
    assert!(!panel.model_loaded(), "the model died with its thread");
    assert!(h.query_by_label("Cancel prediction").is_none());

    // Loading the model again starts a new worker that predicts the rest.
    h.get_by_label("Load model").click();
    wait_for(&mut h, "the model again", |(p, _)| p.model_loaded());
    h.get_by_label("Predict").click();
    wait_for(&mut h, "the second batch", |(p, _)| {
        !p.busy() && p.results().len() == 4
    });
}

#[test]
fn a_panic_in_the_evaluation_ends_the_job_and_a_new_one_can_start() {
    let dir = tempfile::tempdir().unwrap();
    let project = common::square_project(dir.path(), "cat", 3);
    let bundle = any_bundle(dir.path(), &dir.path().join("src/img0.png"));
    let mut h = harness(
        EvalPanel::default(),
        Shell::new(Some(project)),
        |p, ui, cx| p.ui(ui, cx, &[]),
    );
    h.run();
    type_into(&mut h, "Bundle to evaluate", &bundle.display().to_string());

    // Two images are evaluated, the progress after the second panics the thread.
    maskstudio::fault::arm("eval", 1);
    h.get_by_label("Run evaluation").click();
    h.step();
    wait_for(&mut h, "the evaluation to end", |(p, _)| !p.running());
    h.run();
    let errors = h.state().1.errors();
    assert_eq!(
        errors,
        ["evaluation failed: the eval-run thread panicked: injected fault at eval"]
    );
    assert!(h.state().0.jobs().is_empty());
    assert!(h.state().0.report().is_none());
    assert!(h.query_by_label("Cancel evaluation").is_none());

    // The button works again: an evaluation without the fault finishes with a report.
    h.get_by_label("Run evaluation").click();
    h.step();
    wait_for(&mut h, "the second evaluation", |(p, _)| {
        !p.running() && p.report().is_some()
    });
    assert_eq!(h.state().0.report().unwrap().gt_counts.get(&1), Some(&3));
}

#[test]
fn a_panic_in_validation_fails_the_run_and_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let project = common::square_project(dir.path(), "box", 6);
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 1,
        image_size: Some(96),
        warmup_iters: 1,
        val_fraction: 0.3,
        eval_every: 1,
        seed: 3,
        ..TrainConfig::default()
    };
    let mut h = harness(
        TrainPanel::new(cfg),
        Shell::new(Some(project.clone())),
        |p, ui, cx| p.ui(ui, cx),
    );
    h.run();
    h.get_by_label("Watch validation images").click_accesskit(); // off: keep it short
    h.run();

    maskstudio::fault::arm("train-validation", 0);
    h.get_by_label("Start training").click_accesskit();
    h.step();
    assert!(h.state().0.running());
    wait_for(&mut h, "the run to end", |(p, _)| !p.running());
    h.run();

    let (panel, shell) = h.state();
    let errors = shell.errors();
    assert!(
        errors.iter().any(|e| e.starts_with("training failed:")
            && e.contains("validation panicked: injected fault at train-validation")),
        "{errors:?}"
    );
    let status = &panel.history().status;
    assert!(status.starts_with("failed: "), "{status}");
    assert!(panel.jobs().is_empty(), "no job left running");
    let steps = panel.history().steps;
    assert!(steps >= 3, "the epoch's steps ran: {steps}");

    // The run folder keeps what the run did: every step's metrics, the plot, the epoch, the
    // checkpoint written before validation, and the failure in its log.
    let runs: Vec<PathBuf> = std::fs::read_dir(runs_dir(&project))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        steps + 1,
        "header + a row per step"
    );
    let png = image::open(run.join("loss.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().count(), 2, "header + the epoch: {epochs}");
    assert!(run.join("checkpoints/last/model.safetensors").is_file());
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("failed: ") && l.contains("injected fault")),
        "{log}"
    );
    wait_for(&mut h, "the background work", |(p, _)| p.idle());
}

#[test]
fn a_panic_in_the_download_ends_it_as_failed() {
    let fx = build_fixture(&FxOptions::default());
    let server = OiServer::start(fx.files);
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    Project::create_or_open(&project).unwrap();
    let mut panel = DownloadPanel::new(dir.path().join("oi-cache"));
    panel
        .picked
        .insert(HOT_DOG.to_owned(), "Hot dog".to_owned());
    let mut shell = Shell::new(Some(project.clone()));
    shell.settings.annotations_base_url = server.gcs_base.clone();
    shell.settings.images_base_url = server.images_base.clone();
    let mut h = harness(panel, shell, |p, ui, cx| p.ui(ui, cx));
    h.run();

    maskstudio::fault::arm("download", 0);
    h.get_by_label("Start download").click();
    h.step();
    wait_for(&mut h, "the download to end", |(p, _)| !p.is_running());
    h.run();

    let (panel, shell) = h.state();
    let reason = "the oi-download thread panicked: injected fault at download";
    assert_eq!(panel.error(), Some(reason));
    assert_eq!(shell.errors(), [format!("Download failed: {reason}")]);
    assert!(panel.job_view().is_none());
    assert!(panel.summary().is_none());
    // The shell reloads the project, so whatever was imported before the panic shows.
    assert_eq!(shell.requests, [ShellRequest::OpenProject(project)]);
    assert!(h.query_by_label("Cancel download").is_none());
    h.get_by_label("Start download");
}

#[test]
fn a_panic_in_the_store_writer_is_shown_and_its_edits_stop_pending() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::square_project(dir.path(), "cat", 2);
    let mut view = ImageView::open(&root, 1).unwrap();
    view.wait_until_loaded(HANG_GUARD).unwrap();
    let mut h = harness(view, Shell::new(None), |v, ui, cx| {
        v.ui(ui, cx);
    });
    wait_for(&mut h, "the view", |(v, _)| v.is_idle());

    // One edit is saved, the next one panics the writer.
    h.key_press(Key::Num1);
    h.step();
    let saved = |root: &Path| Project::open(root).unwrap().image(1).unwrap().review_status;
    wait_for(&mut h, "the first edit", |(v, _)| {
        v.is_idle() && saved(&root) == ReviewStatus::Accepted
    });
    maskstudio::fault::arm("edit-writer", 0);
    h.key_press(Key::Num2);
    wait_for(&mut h, "the writer's end", |(v, s)| {
        v.pending_edits() == 0 && !s.errors().is_empty()
    });
    h.run();

    let errors = h.state().1.errors();
    assert_eq!(errors.len(), 1, "said once: {errors:?}");
    assert!(
        errors[0].contains("the edit-writer thread panicked: injected fault at edit-writer")
            && errors[0].contains("edits were not saved")
            && !errors[0].contains("; 0 edits"),
        "{errors:?}"
    );
    assert_eq!(
        saved(&root),
        ReviewStatus::Accepted,
        "the edit saved before the panic stays"
    );
}

#[test]
fn a_panic_on_one_thumbnail_fails_that_thumbnail_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::square_project(dir.path(), "cat", 2);
    let files: Vec<PathBuf> = {
        let project = Project::open(&root).unwrap();
        (1..=2).map(|id| project.image(id).unwrap().path).collect()
    };
    let ctx = egui::Context::default();
    let mut cache = ThumbCache::new(&ctx, &root, HashMap::new(), 16);
    maskstudio::fault::arm("thumbs", 0);
    let start = Instant::now();
    let failed = loop {
        assert!(start.elapsed() < HANG_GUARD, "the thumbnail never ended");
        cache.begin_frame();
        match cache.get(1, &files[0]) {
            Thumb::Failed(e) => break e,
            Thumb::Ready(..) => panic!("the armed fault did not fire"),
            Thumb::Loading => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert!(
        failed.contains("the thumbnail worker panicked: injected fault at thumbs"),
        "{failed}"
    );
    assert_eq!(cache.pending(), 0);
    // The workers live on: the next image gets its thumbnail.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < HANG_GUARD,
            "the second thumbnail never came"
        );
        cache.begin_frame();
        match cache.get(2, &files[1]) {
            Thumb::Ready(_, size) => {
                assert!(size.x > 0.0 && size.y > 0.0);
                break;
            }
            Thumb::Failed(e) => panic!("{e}"),
            Thumb::Loading => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[test]
fn a_panic_reading_a_run_back_ends_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    Project::create_or_open(&project).unwrap();
    // A recorded run: its recipe and three steps.
    let run = runs_dir(&project).join("20261201-000000");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), "{}").unwrap();
    std::fs::write(
        run.join("metrics.csv"),
        "epoch,iter,lr,total\n0,0,0.01,2.5\n0,1,0.01,2.0\n0,2,0.01,1.5\n",
    )
    .unwrap();
    let mut h = harness(
        TrainPanel::new(TrainConfig::default()),
        Shell::new(Some(project)),
        |p, ui, cx| p.ui(ui, cx),
    );
    wait_for(&mut h, "the run list", |(p, _)| p.runs().len() == 1);

    maskstudio::fault::arm("train-replay", 0);
    h.get_by_label("20261201-000000").click_accesskit();
    h.step();
    wait_for(&mut h, "the replay to end", |(p, _)| p.idle());
    h.run();
    assert_eq!(
        h.state().1.errors(),
        ["the train-replay thread panicked: injected fault at train-replay"]
    );
    assert!(h.state().0.history().total.is_empty());
    assert!(h.state().0.jobs().is_empty());
}

#[test]
fn a_panic_on_one_image_fails_that_image_and_the_batch_goes_on() {
    let _points = PREDICT_POINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for k in 0..3u8 {
        common::write_png(&images.join(format!("q{k}.png")), 96, 72, 50 * k);
    }
    let bundle = any_bundle(dir.path(), &images.join("q0.png"));
    let mut h = harness(PredictPanel::default(), Shell::new(None), |p, ui, cx| {
        p.ui(ui, cx)
    });
    h.run();
    type_into(&mut h, "Model bundle", &bundle.display().to_string());
    h.get_by_label("Load model").click();
    wait_for(&mut h, "the model", |(p, _)| p.model_loaded());

    maskstudio::fault::arm("predict-image", 1);
    type_into(&mut h, "Images", &images.display().to_string());
    h.get_by_label("Predict").click();
    h.step();
    wait_for(&mut h, "the batch to end", |(p, _)| {
        !p.busy() && p.results().len() == 2
    });
    let (panel, shell) = h.state();
    assert_eq!(
        panel.failures(),
        ["q1.png: panicked: injected fault at predict-image"]
    );
    assert_eq!(
        shell.errors(),
        ["could not predict q1.png: panicked: injected fault at predict-image"]
    );
    assert!(panel.model_loaded(), "the model stays loaded");
    assert!(panel.jobs().is_empty());
}
