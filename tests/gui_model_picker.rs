//! The model picker in the Evaluate section and in the editor's model assist (egui_kittest, by
//! accessible label): the open project's runs and exports are listed with their AP (the same
//! list Predict shows), the newest best checkpoint or the remembered choice is preselected, and
//! a choice is remembered per project and use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{AccessKitNode, Queryable as _};
use maskstudio::gui::model_picker::{ModelPicker, Purpose};
use maskstudio::gui::shared::{Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::gui::train::eval::EvalPanel;
use maskstudio::model::Backbone;
use maskstudio::model::bundle::ModelSpec;
use maskstudio::train::runs::{BundleKind, list_bundles};

/// Waiting for a worker: a hang guard, not a speed check.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A bundle's files (the listing never reads the weights).
fn fake_bundle(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("labels.txt"), "cat\ndog\n").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
}

/// A project folder with two runs (best AP 0.41 / last 0.38 each) and one export.
fn project_with_runs(dir: &Path) -> PathBuf {
    let project = dir.join("cells");
    for id in ["20261204-101500", "20261205-140200"] {
        let run = project.join("runs").join(id);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("config.json"),
            r#"{"train": {"preset": "cpu-fast"}}"#,
        )
        .unwrap();
        std::fs::write(
            run.join("epochs.csv"),
            "epoch,val_segm_ap\n0,0.125\n1,0.41\n2,0.38\n",
        )
        .unwrap();
        fake_bundle(&run.join("checkpoints/best"));
        fake_bundle(&run.join("checkpoints/last"));
    }
    let export = project.join("exports/cells-v1");
    fake_bundle(&export);
    std::fs::write(export.join(".maskstudio-export"), "maskstudio-export/1\n").unwrap();
    std::fs::write(
        export.join("metrics.json"),
        r#"{"run_id": "20261204-101500", "checkpoint": "best", "best": {"val_segm_ap": 0.41}}"#,
    )
    .unwrap();
    project
}

fn item(prefix: &'static str) -> impl Fn(&AccessKitNode<'_>) -> bool {
    move |n| n.role() == Role::Button && n.label().is_some_and(|l| l.starts_with(prefix))
}

struct EvalState {
    panel: EvalPanel,
    project: PathBuf,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

fn eval_harness(project: &Path, settings: Settings) -> Harness<'static, EvalState> {
    let state = EvalState {
        panel: EvalPanel::default(),
        project: project.to_path_buf(),
        settings,
        notices: Notices::default(),
        requests: Vec::new(),
    };
    Harness::builder()
        .with_size([1280.0, 600.0])
        .build_ui_state(
            |ui, s: &mut EvalState| {
                let mut cx = PanelCtx {
                    project: Some(&s.project),
                    settings: &mut s.settings,
                    notices: &mut s.notices,
                    requests: &mut s.requests,
                };
                s.panel.ui(ui, &mut cx, &[]);
            },
            state,
        )
}

fn wait_eval_listed(h: &mut Harness<'_, EvalState>) {
    let start = Instant::now();
    while h.state().panel.picker().listing() || h.state().panel.picker().entries().is_empty() {
        assert!(start.elapsed() < HANG_GUARD, "the listing hung");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.run();
}

#[test]
fn evaluate_lists_the_projects_runs_and_exports_and_remembers_its_choice() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_with_runs(dir.path());
    let mut h = eval_harness(&project, Settings::default());
    h.run();
    wait_eval_listed(&mut h);

    // The same list as Predict's (train::runs::list_bundles): newest run first, then exports.
    let listed = h.state().panel.picker().entries().to_vec();
    assert_eq!(listed, list_bundles(&project));
    let kinds: Vec<BundleKind> = listed.iter().map(|e| e.kind).collect();
    use BundleKind::{Best, Export, Last};
    assert_eq!(kinds, [Best, Last, Best, Last, Export]);
    let newest_best = project.join("runs/20261205-140200/checkpoints/best");
    assert_eq!(
        h.state().panel.bundle_path(),
        newest_best.display().to_string()
    );
    h.get_by_role_and_label(Role::ComboBox, "Project models")
        .click();
    h.run();
    h.get_by(item("run 20261205-140200 · best · AP 0.410 · "));
    h.get_by(item("run 20261204-101500 · last · AP 0.380 · "));
    h.get_by(item(
        "export cells-v1 · from run 20261204-101500 · AP 0.410 · ",
    ))
    .click();
    h.run();
    let export = project.join("exports/cells-v1");
    assert_eq!(h.state().panel.bundle_path(), export.display().to_string());
    let key = project.display().to_string();
    assert_eq!(
        h.state().settings.last_bundle[&key]["eval"],
        export.display().to_string()
    );
    // The typed field is still there (and names the choice).
    h.get_by_label("Bundle to evaluate");
    let settings = h.state().settings.clone();
    drop(h);

    // Next time the remembered export is preselected, not the newest best.
    let mut h = eval_harness(&project, settings);
    h.run();
    wait_eval_listed(&mut h);
    assert_eq!(h.state().panel.bundle_path(), export.display().to_string());
}

struct AssistState {
    /// The path of the current "image view" (rebuilt per image, as the editor's view is).
    path: String,
    initialised: bool,
    project: PathBuf,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

/// What the editor's view does around its "Model bundle" field, on a shared picker.
fn assist_harness(project: &Path, settings: Settings) -> Harness<'static, AssistState> {
    let state = AssistState {
        path: String::new(),
        initialised: false,
        project: project.to_path_buf(),
        settings,
        notices: Notices::default(),
        requests: Vec::new(),
    };
    Harness::builder()
        .with_size([1280.0, 600.0])
        .build_ui_state(
            |ui, s: &mut AssistState| {
                let mut cx = PanelCtx {
                    project: Some(&s.project),
                    settings: &mut s.settings,
                    notices: &mut s.notices,
                    requests: &mut s.requests,
                };
                let picker = ModelPicker::shared(ui.ctx(), Purpose::Assist, "Model bundle");
                let mut picker = picker.lock().unwrap();
                if !s.initialised {
                    s.path = picker
                        .initial_choice(&cx)
                        .unwrap_or_else(|| cx.settings.assist_bundle.clone());
                    s.initialised = true;
                }
                ui.horizontal_wrapped(|ui| picker.ui(ui, &mut cx, &mut s.path));
            },
            state,
        )
}

#[test]
fn the_assist_picker_is_shared_by_the_views_of_each_image_and_preselects_the_newest_best() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_with_runs(dir.path());
    let settings = Settings {
        assist_bundle: "/elsewhere/model".to_owned(),
        ..Settings::default()
    };
    let mut h = assist_harness(&project, settings);
    h.run();
    // The first view starts from the last bundle used anywhere until the project is listed,
    // then shows the project's newest best checkpoint.
    let newest_best = project.join("runs/20261205-140200/checkpoints/best");
    let start = Instant::now();
    while h.state().path != newest_best.display().to_string() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "never preselected: {}",
            h.state().path
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Choosing another one from the list keeps it for the next image's view.
    h.get_by_role_and_label(Role::ComboBox, "Project models")
        .click();
    h.run();
    h.get_by(item("run 20261204-101500 · best · AP 0.410 · "))
        .click();
    h.run();
    let chosen = project.join("runs/20261204-101500/checkpoints/best");
    assert_eq!(h.state().path, chosen.display().to_string());
    assert_eq!(
        h.state().settings.assist_bundle,
        chosen.display().to_string()
    );
    let key = project.display().to_string();
    assert_eq!(
        h.state().settings.last_bundle[&key]["assist"],
        chosen.display().to_string()
    );
    // The next image's view (same context): starts from the choice at once.
    h.state_mut().initialised = false;
    h.state_mut().path.clear();
    h.run();
    assert_eq!(h.state().path, chosen.display().to_string());
}
