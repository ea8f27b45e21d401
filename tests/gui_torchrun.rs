//! The Train panel's torchrun engine end to end (egui_kittest, by accessible label): on the
//! sample project, "torchrun" with 2 processes is chosen, its note states the per-process batch
//! and the linearly scaled learning rate, Start trains one short epoch in two gloo processes of
//! the reference venv, the loss plot receives the steps, and the run list shows the run with
//! "torchrun × 2" and its bundle; then the export row writes the run as an ONNX file (the
//! default path under the project's exports, the notice naming its size), and a TorchScript
//! export cancelled from its progress row leaves nothing. Skips with a message when the venv is
//! missing (outside CI).

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

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

fn wait_for(h: &mut Harness<'_, State>, what: &str, done: impl Fn(&State) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < HANG_GUARD,
            "timed out waiting for {what}; notices: {:?}",
            notice_texts(h.state())
        );
        h.step();
        std::thread::sleep(Duration::from_millis(25));
    }
    h.step();
}

fn notice_texts(s: &State) -> Vec<String> {
    s.notices.items.iter().map(|n| n.text.clone()).collect()
}

/// Whether the venv answers; outside CI a missing one skips (with a message).
fn have_venv() -> bool {
    match maskstudio::host::python_tools() {
        Ok(_) => true,
        Err(why) => {
            assert!(!common::running_in_ci(), "no venv under CI=true: {why}");
            eprintln!("SKIP: {why}");
            false
        }
    }
}

#[test]
fn torchrun_from_the_form_trains_lists_exports_onnx_and_cancels_torchscript() {
    if !have_venv() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    // The sample's 18 training images at 128 px, batch 3 per process: 9 per rank make 3
    // global steps in the one epoch.
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 3,
        image_size: Some(128),
        lr: 0.01,
        warmup_iters: 2,
        seed: 5,
        ..TrainConfig::default()
    };
    let mut h = Harness::builder()
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
            State {
                panel: TrainPanel::new(cfg),
                project: project.clone(),
                settings: Settings {
                    device: DeviceChoice::Cpu,
                    ..Settings::default()
                },
                notices: Notices::default(),
                requests: Vec::new(),
            },
        );
    h.step();
    h.get_by_label("Watch validation images").click_accesskit(); // off: keep the test short
    wait_for(&mut h, "the venv probe and the run scan", |s| {
        s.panel.idle()
    });
    h.run();

    // torchrun is offered once the venv answered; choosing it shows the recipe's meaning.
    assert!(!h.get_by_label("torchrun").accesskit_node().is_disabled());
    h.get_by_label("torchrun").click();
    h.run();
    assert_eq!(h.state().panel.engine(), Engine::Torchrun);
    h.get_by_label_contains("batch size 3 per process (6 per step), learning rate 0.01 × 2 = 0.02");
    // Pause is greyed while it runs (the processes cannot pause); checked below.

    h.get_by_label("Start training").click();
    h.step();
    assert!(h.state().panel.running(), "{:?}", notice_texts(h.state()));
    h.get_by_label("engine torchrun × 2");
    wait_for(&mut h, "the first loss point", |s| {
        !s.panel.history().total.is_empty() || !s.panel.running()
    });
    if h.state().panel.running() {
        assert!(
            h.get_by_label("Pause training")
                .accesskit_node()
                .is_disabled(),
            "a torchrun run cannot pause"
        );
    }
    wait_for(&mut h, "the run to finish", |s| !s.panel.running());
    let notices = notice_texts(h.state());
    assert!(
        notices.iter().any(|n| n.contains("finished after 3 steps")),
        "{notices:?}"
    );
    let hist = h.state().panel.history();
    assert_eq!(hist.total.len(), 3, "one loss point per global step");
    assert!(hist.total.iter().all(|p| p[1].is_finite() && p[1] > 0.0));
    assert_eq!(
        hist.total.iter().map(|p| p[0] as usize).collect::<Vec<_>>(),
        [0, 1, 2]
    );

    wait_for(&mut h, "the run list", |s| {
        s.panel.runs().len() == 1 && s.panel.idle()
    });
    h.run();
    let run = h.state().panel.runs()[0].clone();
    assert_eq!(run.engine, Engine::Torchrun);
    assert_eq!(run.steps, 3, "metrics.csv has a row per global step");
    assert!(
        run.has_bundle,
        "the torchrun run's checkpoint is our bundle"
    );
    assert_eq!(h.state().panel.run_engines(), ["torchrun × 2"]);
    h.get_by_label("torchrun × 2"); // the run list's Engine column

    // A torchrun run cannot continue by more epochs (greyed), and exports as an ONNX file.
    h.get_by_label(&run.id).click_accesskit();
    h.run();
    assert!(
        h.get_by_label("Continue 5 epochs")
            .accesskit_node()
            .is_disabled()
    );
    if let Err(why) = DeployFormat::Onnx.available() {
        eprintln!("SKIP the ONNX export: {why}");
        return;
    }
    h.get_by_label("ONNX (.onnx)").click();
    h.run();
    let out = project.join("exports").join(format!("{}.onnx", run.id));
    assert_eq!(
        h.get_by_label("Export to file")
            .accesskit_node()
            .value()
            .as_deref(),
        Some(out.display().to_string().as_str()),
        "the default file is <project>/exports/<run id>.onnx"
    );
    h.get_by_label("Export ONNX file").click();
    h.step();
    h.get_by_label("Cancel export"); // the progress row while it writes
    wait_for(&mut h, "the export", |s| s.panel.idle());
    let notices = notice_texts(h.state());
    let bytes = std::fs::metadata(&out)
        .unwrap_or_else(|e| panic!("{out:?}: {e}; {notices:?}"))
        .len();
    assert!(bytes > 1_000_000, "a Mask R-CNN ONNX file: {bytes} bytes");
    let size = maskstudio::openimages::cli::human_bytes(bytes);
    assert!(
        notices
            .iter()
            .any(|n| n.contains(&out.display().to_string()) && n.contains(&size)),
        "the notice names the file and its size {size}: {notices:?}"
    );

    // A TorchScript export cancelled from its progress row leaves no file.
    if let Err(why) = DeployFormat::TorchScript.available() {
        eprintln!("SKIP the TorchScript cancel: {why}");
        return;
    }
    h.get_by_label("TorchScript (.pt)").click();
    h.run();
    let pt = project.join("exports").join(format!("{}.pt", run.id));
    assert_eq!(
        h.get_by_label("Export to file")
            .accesskit_node()
            .value()
            .as_deref(),
        Some(pt.display().to_string().as_str())
    );
    h.get_by_label("Export TorchScript file").click();
    h.step();
    h.get_by_label("Cancel export").click();
    wait_for(&mut h, "the cancelled export", |s| s.panel.idle());
    let notices = notice_texts(h.state());
    assert!(
        notices.last().is_some_and(|n| n == "export cancelled"),
        "{notices:?}"
    );
    assert!(!pt.exists(), "a cancelled export leaves no {pt:?}");
    let left: Vec<_> = std::fs::read_dir(project.join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the ONNX file: {left:?}");
}
