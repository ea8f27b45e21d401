//! The Train tab's label audit driven through its widgets (egui_kittest, by accessible label):
//! on the sample project with a tiny run trained in the test, the K-fold form shows its time
//! estimate before anything starts, and **Audit with this run** stores an audit of the run's
//! validation images (mode `model`) with the notice pointing to Review › Likely errors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::{AuditMode, Project};
use maskstudio::gui::shared::{Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::gui::train::{TrainPanel, runs_dir};
use maskstudio::host::DeviceChoice;
use maskstudio::train::config::RefitMode;
use maskstudio::train::{NullObserver, TrainConfig};

struct State {
    panel: TrainPanel,
    project: PathBuf,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

fn panel_harness(state: State) -> Harness<'static, State> {
    Harness::builder()
        .with_size([1280.0, 2200.0])
        .build_ui_state(
            |ui, s: &mut State| {
                let mut cx = PanelCtx {
                    project: Some(&s.project),
                    settings: &mut s.settings,
                    notices: &mut s.notices,
                    requests: &mut s.requests,
                };
                s.panel.ui(ui, &mut cx);
            },
            state,
        )
}

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

fn wait_for(h: &mut Harness<'_, State>, what: &str, done: impl Fn(&State) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < HANG_GUARD,
            "timed out waiting for {what}; notices: {:?}",
            h.state()
                .notices
                .items
                .iter()
                .map(|n| &n.text)
                .collect::<Vec<_>>()
        );
        h.step();
        std::thread::sleep(Duration::from_millis(25));
    }
    h.step();
}

#[test]
fn the_kfold_form_estimates_before_starting_and_audit_with_this_run_stores_an_audit() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    // A tiny run: one epoch of the 18 training images at 96 px, no validation pass (its last
    // checkpoint is the model), so the test trains in seconds. Its config.json records the
    // sample's 6 validation images: those are what the audit may score.
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 2,
        image_size: Some(96),
        eval_every: 0,
        device: DeviceChoice::Cpu,
        refit: RefitMode::Off,
        ..maskstudio::sample_project::train_config()
    };
    let summary = maskstudio::train::train(
        &project,
        &runs_dir(&project),
        &cfg,
        &CancelToken::default(),
        &mut NullObserver,
    )
    .unwrap();
    assert!(!summary.cancelled);

    let state = State {
        panel: TrainPanel::new(cfg),
        project: project.clone(),
        settings: Settings {
            device: DeviceChoice::Cpu,
            ..Settings::default()
        },
        notices: Notices::default(),
        requests: Vec::new(),
    };
    let mut h = panel_harness(state);
    h.run();

    // The K-fold form: its estimate is shown before anything starts (2 folds of the sample's 24
    // images by default; the speed comes from the run just trained).
    wait_for(&mut h, "the k-fold estimate", |s| s.panel.idle());
    h.run();
    let text = h
        .get_by_label_contains("Estimated time:")
        .accesskit_node()
        .value() // a label's text is its value in AccessKit
        .unwrap_or_default();
    assert!(text.contains("24 images"), "{text}");
    assert!(text.contains(" ≈ "), "{text}");
    // Nothing was started by showing it.
    assert!(
        Project::open(&project)
            .unwrap()
            .audits()
            .unwrap()
            .is_empty()
    );

    // Audit with the listed run: its validation images are scored and the audit is stored.
    wait_for(&mut h, "the run list", |s| s.panel.runs().len() == 1);
    let run_id = h.state().panel.runs()[0].id.clone();
    assert_eq!(run_id, summary.run_id);
    h.get_by_label(&run_id).click_accesskit();
    // Selecting the run replays its history on a worker; wait until it answered, then give
    // the plots that arrive with it frames to lay out (they may take more than the harness's
    // `run()` budget of 4 to settle, which made `run()` fail under load).
    wait_for(&mut h, "the selected run's history", |s| s.panel.idle());
    h.run_steps(12);
    h.get_by_label("Audit with this run").click_accesskit();
    h.step();
    wait_for(&mut h, "the audit", |s| {
        s.panel.idle()
            && s.notices
                .items
                .iter()
                .any(|n| n.text.contains("findings stored") || n.text.contains("audit failed"))
    });
    let notices: Vec<String> = h
        .state()
        .notices
        .items
        .iter()
        .map(|n| n.text.clone())
        .collect();
    let stored = notices
        .iter()
        .find(|n| n.contains("findings stored — Review › Likely errors"))
        .unwrap_or_else(|| panic!("no stored notice: {notices:?}"));
    let audits = Project::open(&project).unwrap().audits().unwrap();
    assert_eq!(audits.len(), 1, "{audits:?}");
    let audit = &audits[0];
    assert_eq!(audit.mode, AuditMode::Model);
    // The run's validation split of the sample: every fourth scene, 6 images.
    assert_eq!(audit.images, 6, "{audit:?}");
    assert!(audit.model.contains(&run_id), "{}", audit.model);
    assert!(
        stored.starts_with(&format!("{} findings stored", audit.findings)),
        "{stored} vs {audit:?}"
    );
    h.get_by_label_contains("findings stored — Review › Likely errors");
}
