//! Image snapshots of every tab of the sample project (egui_kittest, wgpu on the software
//! renderer, no window): a layout change shows up in review as a changed PNG under
//! `tests/snapshots/`. After a deliberate change, `UPDATE_SNAPSHOTS=1 cargo test --test
//! gui_snapshots` rewrites them; look at each before committing.
//!
//! What a snapshot shows must not depend on the machine: the project lives at a fixed path
//! (the status bar and the path field print it), the Open Images catalogue comes from a
//! loopback fixture (its port is never drawn), and each picture is taken only once two renders
//! in a row are identical (workers have reported, nothing animates).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::oi_server::{FxOptions, OiServer, build_fixture};
use egui_kittest::{Harness, SnapshotOptions};
use maskstudio::dataset::Mask;
use maskstudio::dataset::maskops;
use maskstudio::dataset::store::{AuditMode, NewAudit, NewFinding, Project};
use maskstudio::gui::review_grid::ReviewMode;
use maskstudio::gui::shared::{Settings, Tab};
use maskstudio::gui::{StudioApp, StudioOptions};

/// Waiting for a quiet frame: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

/// Where the sample project is written: printed in the status bar, so it is the same on
/// every machine (a temp dir's random name would change the picture).
const PROJECT_DIR: &str = "/tmp/maskstudio-snapshots/sample-project";

/// The window size of every snapshot (the studio's default window is larger; this keeps the
/// PNGs small while every panel still lays out as on a laptop screen).
const SIZE: [f32; 2] = [1280.0, 800.0];

/// Creates the sample project afresh at [`PROJECT_DIR`] (one per test process).
fn sample_project() -> PathBuf {
    let dir = PathBuf::from(PROJECT_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("removing the last run's sample project");
    }
    std::fs::create_dir_all(&dir).unwrap();
    maskstudio::sample_project::create_sample_project(&dir, &mut |_| {})
        .expect("the sample project");
    dir
}

fn harness(config: &Path, project: PathBuf, server: &OiServer) -> Harness<'static, StudioApp> {
    let settings = Settings {
        data_dir: config.join("data"),
        annotations_base_url: server.gcs_base.clone(),
        images_base_url: server.images_base.clone(),
        ..Settings::default()
    };
    settings.save(&config.join("settings.json")).unwrap();
    let app = StudioApp::with_options(StudioOptions {
        project: Some(project),
        settings_path: config.join("settings.json"),
        oi_cache_dir: config.join("oi-cache"),
        start_tab: Some(Tab::Review),
        log_toasts: None,
    });
    Harness::builder().with_size(SIZE).build_ui_state(
        |ui, app: &mut StudioApp| {
            app.logic(ui.ctx());
            app.ui(ui);
        },
        app,
    )
}

/// Steps frames until two renders a fifth of a second apart are identical (a running job
/// draws its progress in the status bar, so it would show in the picture and fail it).
fn settle(h: &mut Harness<'_, StudioApp>, what: &str) {
    let start = Instant::now();
    let mut last = None;
    loop {
        assert!(start.elapsed() < HANG_GUARD, "{what} never settled");
        h.run_steps(4);
        std::thread::sleep(Duration::from_millis(200));
        h.run_steps(1);
        let image = h.render().expect("rendering with the software renderer");
        if last.as_ref() == Some(&image) {
            return;
        }
        last = Some(image);
    }
}

#[test]
fn every_tab_of_the_sample_project() {
    let config = tempfile::tempdir().unwrap();
    let server = OiServer::start(build_fixture(&FxOptions::default()).files);
    let project = sample_project();
    let mut h = harness(config.path(), project, &server);
    let options = SnapshotOptions::new();
    for (tab, name) in [
        (Tab::Review, "tab_review"),
        (Tab::Classes, "tab_classes"),
        (Tab::Download, "tab_download"),
        (Tab::Train, "tab_train"),
        (Tab::Predict, "tab_predict"),
    ] {
        h.state_mut().set_tab(tab);
        settle(&mut h, name);
        assert_eq!(h.state().tab(), tab);
        h.snapshot_options(name, &options);
    }
    // The Review tab's Likely errors queue with an audit of two findings on the first image:
    // the first card opens it, the suspect outline framed, the suggested fix dashed.
    store_audit(Path::new(PROJECT_DIR));
    h.state_mut().set_tab(Tab::Review);
    h.state_mut().review.refresh();
    h.state_mut().review.set_mode(ReviewMode::LikelyErrors);
    settle(&mut h, "the Likely errors queue");
    if h.state().review.audit_queue().image_view().is_none() {
        h.key_press(eframe::egui::Key::J);
    }
    settle(&mut h, "review_likely_errors");
    h.snapshot_options("review_likely_errors", &options);
}

/// A fixed audit of the sample's first image: its first instance loose (the suggested mask
/// two dilations wider), and a missing object of the second class.
fn store_audit(root: &Path) {
    let mut project = Project::open(root).unwrap();
    let image = project.export_set(None).unwrap().images[0].id;
    let first = project.instances(image).unwrap().remove(0);
    let classes = project.classes().unwrap();
    let wider = maskops::dilate(&maskops::dilate(&Mask::from_rle(&first.rle).unwrap()));
    let meta = project.image(image).unwrap();
    let mut missing = Mask::new(meta.width, meta.height);
    for y in 180..220 {
        for x in 20..70 {
            missing.set(x, y, true);
        }
    }
    let finding = |instance_id, kind: &str, score, class, mask: Mask, reason: &str| NewFinding {
        image_id: image,
        instance_id,
        kind: kind.to_owned(),
        score,
        image_score: 0.93,
        reason: reason.to_owned(),
        suggested_class_id: class,
        suggested_mask: Some(mask.to_rle()),
    };
    let findings = [
        finding(
            Some(first.id),
            "loose",
            0.71,
            None,
            wider,
            "mask IoU 0.29 with a 0.97 prediction of the same class",
        ),
        finding(
            None,
            "missing",
            0.76,
            Some(classes[1].id),
            missing,
            "unlabelled: a 0.81 prediction overlaps no label (best IoU 0.06)",
        ),
    ];
    let audit = NewAudit {
        model: "runs/sample/checkpoints/best".to_owned(),
        mode: AuditMode::Model,
        split: Some("validation".to_owned()),
        params: serde_json::json!({}),
        images: vec![image],
    };
    project.save_audit(&audit, &findings).unwrap();
    // The cards print the audit's date: a fixed one keeps the picture the same on every run.
    project
        .connection()
        .execute(
            "UPDATE audits SET created_at = '2026-12-05T12:00:00.000Z'",
            [],
        )
        .unwrap();
}
