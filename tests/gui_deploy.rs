//! The Train panel without the reference Python venv (egui_kittest, by accessible label): the
//! "torchrun" engine and the ONNX / TorchScript export formats are greyed, each with the
//! venv's reason as hover text, a click on them changes nothing, and the in-process engine and
//! the bundle folder export stay offered. The venv is hidden by running the checks in a child
//! process whose `MASKSTUDIO_PYTHON` and `MASKSTUDIO_CACHE` point at paths that hold no Python
//! (`host::python_tools` probes once per process and caches the answer).

mod common;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use maskstudio::gui::shared::{Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::gui::train::TrainPanel;
use maskstudio::host::DeviceChoice;
use maskstudio::train::TrainConfig;
use maskstudio::train::deploy::DeployFormat;
use maskstudio::train::torchrun::Engine;

struct State {
    panel: TrainPanel,
    project: PathBuf,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

/// Waiting for a worker: a hang guard, not a speed check.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Whether the widget labelled `label` is greyed (AccessKit's disabled flag).
fn disabled(h: &Harness<'_, State>, label: &str) -> bool {
    h.get_by_label(label).accesskit_node().is_disabled()
}

/// Hovers the widget labelled `label` long enough for its tooltip (egui waits
/// `tooltip_delay`, 0.5 s of frame time; kittest steps 1/60 s per frame) and returns whether a
/// label with exactly `tooltip` shows.
fn shows_tooltip(h: &mut Harness<'_, State>, label: &str, tooltip: &str) -> bool {
    h.get_by_label(label).hover();
    h.run_steps(60);
    let shown = h.query_by_label(tooltip).is_some();
    // Move away so the next hover starts afresh.
    h.hover_at(eframe::egui::pos2(1.0, 1.0));
    h.run_steps(2);
    shown
}

/// Set in the child process that runs the checks with the venv hidden.
const CHILD: &str = "MASKSTUDIO_TEST_NO_VENV";

/// Runs the checks in a child process of this test binary whose environment hides the venv
/// (the crate denies `unsafe`, so the test cannot `set_var` in its own process).
#[test]
fn without_the_venv_torchrun_and_deployment_formats_are_greyed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(root) = std::env::var_os(CHILD) {
        return greyed_checks(&PathBuf::from(root));
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_the_venv_torchrun_and_deployment_formats_are_greyed_with_the_reason",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .env("MASKSTUDIO_PYTHON", dir.path().join("no-python"))
        .env("MASKSTUDIO_CACHE", dir.path().join("empty-cache"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child test failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the child ran the checks:\n{text}"
    );
}

/// The checks, in a process where `host::python_tools` cannot find Python; `root` is a
/// scratch folder.
fn greyed_checks(root: &std::path::Path) {
    let project = common::square_project(root, "box", 2);
    let mut h = Harness::builder()
        .with_size([1280.0, 2000.0])
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
            State {
                panel: TrainPanel::new(TrainConfig::default()),
                project,
                settings: Settings {
                    device: DeviceChoice::Cpu,
                    ..Settings::default()
                },
                notices: Notices::default(),
                requests: Vec::new(),
            },
        );
    h.step(); // the first frame starts the venv probe
    let start = Instant::now();
    while !h.state().panel.idle() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "the venv probe never answered"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.run();

    // The answer the panel shows is the library's (same process, cached).
    let tools_err = maskstudio::host::python_tools().expect_err("the venv is hidden");
    assert!(!tools_err.is_empty());

    // Engine: in-process offered, torchrun greyed with the reason; a click changes nothing.
    assert!(!disabled(&h, "In-process"));
    assert!(
        disabled(&h, "torchrun"),
        "torchrun is greyed without the venv"
    );
    let reason = format!("torchrun runs in the reference Python venv: {tools_err}");
    assert!(
        shows_tooltip(&mut h, "torchrun", &reason),
        "hover shows: {reason}"
    );
    h.get_by_label("torchrun").click();
    h.run();
    assert_eq!(h.state().panel.engine(), Engine::InProcess);
    assert!(
        h.query_by_label_contains("per process").is_none(),
        "no torchrun note for the in-process engine"
    );

    // Export formats: the bundle folder offered, ONNX and TorchScript greyed with
    // `DeployFormat::available`'s reason.
    assert!(!disabled(&h, "Bundle folder"));
    for (label, format) in [
        ("ONNX (.onnx)", DeployFormat::Onnx),
        ("TorchScript (.pt)", DeployFormat::TorchScript),
    ] {
        assert!(disabled(&h, label), "{label} is greyed without the venv");
        let why = format
            .available()
            .expect_err("unavailable without the venv");
        assert!(
            shows_tooltip(&mut h, label, &why),
            "{label}: hover shows {why}"
        );
        h.get_by_label(label).click();
        h.run();
        // Still the folder export: its field and button are shown, no file field.
        h.get_by_label("Export to folder");
        assert!(h.query_by_label("Export to file").is_none(), "{label}");
    }
    assert!(
        h.state().notices.items.is_empty(),
        "{:?}",
        h.state().notices.items
    );
}
