//! The real studio window starts, renders frames with a project open and exits cleanly, under
//! Xvfb with the software renderer (./test-all installs xvfb; there is no GPU here).

mod common;

use std::process::Command;
use std::time::Instant;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::Project;

#[test]
fn the_window_opens_a_project_renders_and_closes() {
    assert!(
        Command::new("xvfb-run").arg("--help").output().is_ok(),
        "xvfb-run is missing: run scripts/setup-system.sh (./test-all does)"
    );
    let dir = tempfile::tempdir().unwrap();
    // A tiny project so the window has something to load.
    let src = tempfile::tempdir().unwrap();
    common::write_png(&src.path().join("a.png"), 32, 24, 1);
    let set = maskstudio::dataset::ImportSet {
        format: "test".into(),
        classes: vec![maskstudio::dataset::ClassDef {
            name: "thing".into(),
            mid: None,
        }],
        images: vec![maskstudio::dataset::ImportImage {
            src_path: src.path().join("a.png"),
            file_name: "a.png".into(),
            width: 0,
            height: 0,
            split: None,
            source: "test".into(),
            attribution: Default::default(),
            instances: vec![],
        }],
    };
    Project::create_or_open(dir.path())
        .unwrap()
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap();

    let runtime_dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let output = Command::new("timeout")
        .args(["600", "xvfb-run", "-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_maskstudio"))
        .args(["gui", "--project"])
        .arg(dir.path())
        .env(maskstudio::gui::EXIT_AFTER_FRAMES_ENV, "30")
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "window run failed ({:?}): {stderr}",
        output.status
    );
    eprintln!("window run: {:.1?}", start.elapsed());
}
