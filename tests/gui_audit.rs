//! The Review tab's Likely errors queue driven through the whole studio (egui_kittest, no
//! window, no GPU): the sample project with an audit stored directly (one finding of each
//! kind), the mode selector, keys and buttons. Accept fix on a loose outline stores the
//! suggested mask, on a missing instance adds it (provenance naming the model), Keep leaves
//! the labels alone and the finding leaves the queue, Delete removes the instance; Ctrl+Z
//! undoes each on its image and the finding comes back. Counts per kind follow.
//!
//! Resolutions are saved on the image view's `edit-writer` thread and the queue is re-read on
//! a worker: after each action the tests run frames until the queue says it is idle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui::{Key, Modifiers};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::dataset::store::{
    AuditMode, FindingStatus, InstanceRow, NewAudit, NewFinding, Project,
};
use maskstudio::dataset::{Mask, Origin, maskops};
use maskstudio::gui::review_grid::ReviewMode;
use maskstudio::gui::shared::{NoticeLevel, Tab};
use maskstudio::gui::{StudioApp, StudioOptions};

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

/// What the audit says produced its predictions (shown on the cards, named in provenance).
const MODEL: &str = "runs/audit-test/best";

/// The images the four findings are on (sample images are 1..=24, each with 1–4 instances).
const LOOSE_IMAGE: i64 = 1;
const MISSING_IMAGE: i64 = 2;
const SWAP_IMAGE: i64 = 3;
const SPURIOUS_IMAGE: i64 = 4;

/// The stored audit: finding ids and what they suggest.
struct Planted {
    loose: i64,
    missing: i64,
    swap: i64,
    spurious: i64,
    /// The loose instance, its mask as labelled and the suggested (dilated) one.
    loose_instance: i64,
    loose_before: Mask,
    loose_suggested: Mask,
    /// The suggested new instance's mask and class.
    missing_mask: Mask,
    missing_class: i64,
    /// The swap's instance, its class and the suggested one.
    swap_instance: i64,
    swap_class: i64,
    swap_suggested: i64,
    /// The spurious instance and its row as labelled.
    spurious_row: InstanceRow,
}

fn first_instance(project: &Project, image: i64) -> InstanceRow {
    project.instances(image).unwrap().remove(0)
}

/// The sample project with one audit holding one finding of each kind, image scores
/// descending loose > missing > swap > spurious (the queue's order).
fn sample_with_audit(dir: &Path) -> (PathBuf, Planted) {
    let root = dir.join("sample");
    maskstudio::sample_project::create_sample_project(&root, &mut |_| {}).unwrap();
    let mut project = Project::open(&root).unwrap();
    let classes: Vec<i64> = project.classes().unwrap().iter().map(|c| c.id).collect();
    assert!(classes.len() >= 2, "the sample has several classes");

    let loose = first_instance(&project, LOOSE_IMAGE);
    let loose_before = Mask::from_rle(&loose.rle).unwrap();
    let loose_suggested = maskops::dilate(&maskops::dilate(&loose_before));
    assert!(loose_suggested.area() > loose_before.area());

    let meta = project.image(MISSING_IMAGE).unwrap();
    let mut missing_mask = Mask::new(meta.width, meta.height);
    for y in 10..30 {
        for x in 12..40 {
            missing_mask.set(x, y, true);
        }
    }
    let missing_class = classes[1];

    let swap = first_instance(&project, SWAP_IMAGE);
    let swap_suggested = *classes.iter().find(|&&c| c != swap.class_id).unwrap();
    let spurious_row = first_instance(&project, SPURIOUS_IMAGE);

    let finding =
        |image_id, instance_id, kind: &str, image_score, suggested_class_id, mask| NewFinding {
            image_id,
            instance_id,
            kind: kind.to_owned(),
            score: image_score - 0.05,
            image_score,
            reason: format!("planted {kind} finding"),
            suggested_class_id,
            suggested_mask: mask,
        };
    let findings = [
        finding(
            LOOSE_IMAGE,
            Some(loose.id),
            "loose",
            0.9,
            Some(loose.class_id),
            Some(loose_suggested.to_rle()),
        ),
        finding(
            MISSING_IMAGE,
            None,
            "missing",
            0.8,
            Some(missing_class),
            Some(missing_mask.to_rle()),
        ),
        finding(
            SWAP_IMAGE,
            Some(swap.id),
            "swap",
            0.7,
            Some(swap_suggested),
            None,
        ),
        finding(
            SPURIOUS_IMAGE,
            Some(spurious_row.id),
            "spurious",
            0.6,
            None,
            None,
        ),
    ];
    let audit = NewAudit {
        model: MODEL.to_owned(),
        mode: AuditMode::Model,
        split: Some("validation".to_owned()),
        params: serde_json::json!({"planted": true}),
        images: vec![LOOSE_IMAGE, MISSING_IMAGE, SWAP_IMAGE, SPURIOUS_IMAGE],
    };
    project.save_audit(&audit, &findings).unwrap();
    let queue = project.audit_queue(None).unwrap();
    let id_of = |kind: &str| queue.iter().find(|r| r.kind == kind).unwrap().id;
    let planted = Planted {
        loose: id_of("loose"),
        missing: id_of("missing"),
        swap: id_of("swap"),
        spurious: id_of("spurious"),
        loose_instance: loose.id,
        loose_before,
        loose_suggested,
        missing_mask,
        missing_class,
        swap_instance: swap.id,
        swap_class: swap.class_id,
        swap_suggested,
        spurious_row,
    };
    (root, planted)
}

fn studio(dir: &Path, project: PathBuf) -> Harness<'static, StudioApp> {
    let app = StudioApp::with_options(StudioOptions {
        project: Some(project),
        settings_path: dir.join("config/settings.json"),
        oi_cache_dir: dir.join("oi-cache"),
        start_tab: Some(Tab::Review),
        log_toasts: None,
    });
    Harness::builder()
        .with_size([1400.0, 860.0])
        .build_ui_state(
            |ui, app: &mut StudioApp| {
                app.logic(ui.ctx());
                app.ui(ui);
            },
            app,
        )
}

/// Steps frames (workers report in real time) until `done` holds.
fn wait_until(h: &mut Harness<'_, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs frames until the queue is idle (writes saved, view re-read, queue re-read) for a few
/// frames in a row.
fn settle(h: &mut Harness<'_, StudioApp>) {
    let start = Instant::now();
    let mut calm = 0;
    while calm < 3 {
        assert!(start.elapsed() < HANG_GUARD, "the queue never settled");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
        let q = h.state().review.audit_queue();
        let view_ready = q.selected().is_none() || q.image_view().is_some_and(|v| v.is_loaded());
        calm = if q.is_idle() && view_ready {
            calm + 1
        } else {
            0
        };
    }
    let errors: Vec<String> = h
        .state()
        .notices()
        .items
        .iter()
        .filter(|n| n.level == NoticeLevel::Error)
        .map(|n| n.text.clone())
        .collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
}

fn counts(h: &Harness<'_, StudioApp>) -> [usize; 4] {
    h.state().review.audit_queue().counts().map(|(_, n)| n)
}

fn selected(h: &Harness<'_, StudioApp>) -> Option<i64> {
    h.state().review.audit_queue().selected().map(|r| r.id)
}

fn status(root: &Path, finding: i64) -> FindingStatus {
    Project::open(root)
        .unwrap()
        .finding(finding)
        .unwrap()
        .status
}

fn instance(root: &Path, image: i64, id: i64) -> Option<InstanceRow> {
    Project::open(root)
        .unwrap()
        .instances(image)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
}

/// Opens the studio on the Review tab and switches to Likely errors (its label counts 4).
fn open_queue(dir: &Path, root: PathBuf) -> Harness<'static, StudioApp> {
    let mut h = studio(dir, root);
    // The queue is read whatever the mode: the selector shows its count from the gallery.
    wait_until(&mut h, "the queue's count", |a| {
        a.review.audit_queue().open_count() == Some(4)
    });
    h.run_steps(2);
    h.get_by_label("Likely errors (4)").click();
    h.run_steps(2);
    assert_eq!(h.state().review.mode(), ReviewMode::LikelyErrors);
    settle(&mut h);
    h
}

// Kinds in `KINDS` order: missing, spurious, loose, swap.

#[test]
fn accept_keep_and_delete_change_the_store_and_undo_restores_each() {
    let dir = tempfile::tempdir().unwrap();
    let (root, p) = sample_with_audit(dir.path());
    let mut h = open_queue(dir.path(), root.clone());
    assert_eq!(counts(&h), [1, 1, 1, 1]);
    h.get_by_label("Loose (1)");
    h.get_by_label("All (4)");
    // Highest image score first: the loose finding, its image open, its instance selected.
    assert_eq!(selected(&h), Some(p.loose));
    let view = h.state().review.audit_queue().image_view().unwrap();
    assert_eq!(view.image_id(), LOOSE_IMAGE);
    assert_eq!(view.selected(), Some(p.loose_instance));
    let shown: Vec<i64> = h
        .state()
        .review
        .audit_queue()
        .shown()
        .map(|r| r.id)
        .collect();
    assert_eq!(shown, vec![p.loose, p.missing, p.swap, p.spurious]);

    // A: accept the loose fix → the stored mask is the suggested one.
    h.key_press(Key::A);
    settle(&mut h);
    let row = instance(&root, LOOSE_IMAGE, p.loose_instance).unwrap();
    assert_eq!(Mask::from_rle(&row.rle).unwrap(), p.loose_suggested);
    assert!(row.edited);
    let provenance = row
        .provenance
        .expect("an accepted fix stamps the provenance");
    assert_eq!(
        provenance["audit"]["model"], MODEL,
        "provenance: {provenance}"
    );
    assert_eq!(
        provenance["audit"]["finding"], p.loose,
        "provenance: {provenance}"
    );
    assert_eq!(status(&root, p.loose), FindingStatus::Accepted);
    assert_eq!(counts(&h), [1, 1, 0, 1]);
    h.get_by_label("Likely errors (3)");
    h.get_by_label("Loose (0)");
    // The next finding is selected and its image open; nothing is selected on it (missing).
    assert_eq!(selected(&h), Some(p.missing));
    let view = h.state().review.audit_queue().image_view().unwrap();
    assert_eq!(view.image_id(), MISSING_IMAGE);
    assert_eq!(view.selected(), None);

    // Accept fix (the button) on missing → a new instance with the suggested mask and class,
    // its origin the model and its provenance naming it.
    let before: Vec<i64> = Project::open(&root)
        .unwrap()
        .instances(MISSING_IMAGE)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    h.get_by_label("Accept fix").click();
    settle(&mut h);
    let after = Project::open(&root)
        .unwrap()
        .instances(MISSING_IMAGE)
        .unwrap();
    assert_eq!(after.len(), before.len() + 1);
    let added = after.iter().find(|r| !before.contains(&r.id)).unwrap();
    assert_eq!(Mask::from_rle(&added.rle).unwrap(), p.missing_mask);
    assert_eq!(added.class_id, p.missing_class);
    assert_eq!(added.origin, Origin::Model);
    let provenance = added
        .provenance
        .clone()
        .expect("provenance of an accepted fix");
    assert_eq!(provenance["source"], "audit", "provenance: {provenance}");
    assert_eq!(provenance["model"], MODEL, "provenance: {provenance}");
    assert_eq!(provenance["finding"], p.missing, "provenance: {provenance}");
    let added_id = added.id;
    assert_eq!(status(&root, p.missing), FindingStatus::Accepted);
    assert_eq!(counts(&h), [0, 1, 0, 1]);

    // S: keep the swap → status kept, the class unchanged, gone from the queue.
    assert_eq!(selected(&h), Some(p.swap));
    h.key_press(Key::S);
    settle(&mut h);
    assert_eq!(status(&root, p.swap), FindingStatus::Kept);
    let swap = instance(&root, SWAP_IMAGE, p.swap_instance).unwrap();
    assert_eq!(swap.class_id, p.swap_class);
    assert!(!swap.edited);
    assert!(
        h.state()
            .review
            .audit_queue()
            .shown()
            .all(|r| r.id != p.swap)
    );
    assert_eq!(counts(&h), [0, 1, 0, 0]);

    // Delete: the spurious instance is gone.
    assert_eq!(selected(&h), Some(p.spurious));
    h.key_press(Key::Delete);
    settle(&mut h);
    assert!(instance(&root, SPURIOUS_IMAGE, p.spurious_row.id).is_none());
    assert_eq!(status(&root, p.spurious), FindingStatus::Deleted);
    assert_eq!(counts(&h), [0, 0, 0, 0]);
    assert_eq!(h.state().review.audit_queue().open_count(), Some(0));
    h.get_by_label("Likely errors (0)");

    // Ctrl+Z undoes them newest first, each on its image; the finding comes back selected.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    let back = instance(&root, SPURIOUS_IMAGE, p.spurious_row.id).expect("instance restored");
    assert_eq!(back.rle, p.spurious_row.rle);
    assert_eq!(back.class_id, p.spurious_row.class_id);
    assert_eq!(status(&root, p.spurious), FindingStatus::Open);
    assert_eq!(selected(&h), Some(p.spurious));
    assert_eq!(counts(&h), [0, 1, 0, 0]);

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert_eq!(status(&root, p.swap), FindingStatus::Open);
    assert_eq!(selected(&h), Some(p.swap));
    assert_eq!(counts(&h), [0, 1, 0, 1]);

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert!(instance(&root, MISSING_IMAGE, added_id).is_none());
    assert_eq!(status(&root, p.missing), FindingStatus::Open);
    assert_eq!(selected(&h), Some(p.missing));

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    let row = instance(&root, LOOSE_IMAGE, p.loose_instance).unwrap();
    assert_eq!(Mask::from_rle(&row.rle).unwrap(), p.loose_before);
    assert!(!row.edited);
    assert_eq!(status(&root, p.loose), FindingStatus::Open);
    assert_eq!(selected(&h), Some(p.loose));
    assert_eq!(counts(&h), [1, 1, 1, 1]);
    h.get_by_label("Likely errors (4)");
}

#[test]
fn filter_navigate_accept_a_swap_and_see_stale_findings() {
    let dir = tempfile::tempdir().unwrap();
    let (root, p) = sample_with_audit(dir.path());
    // The spurious instance is edited after the audit: its finding is stale.
    {
        let mut project = Project::open(&root).unwrap();
        let mask = Mask::from_rle(&p.spurious_row.rle).unwrap();
        project
            .update_instance_mask(p.spurious_row.id, &maskops::erode(&mask))
            .unwrap();
    }
    let mut h = open_queue(dir.path(), root.clone());

    // J / K move along the queue (clamped at its ends).
    h.key_press(Key::J);
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.missing));
    h.key_press(Key::ArrowDown);
    h.key_press(Key::ArrowDown);
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.spurious));
    assert!(h.state().review.audit_queue().selected().unwrap().stale);
    h.get_by_label("stale");
    h.key_press(Key::J);
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.spurious), "clamped at the end");
    h.key_press(Key::K);
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.swap));
    assert!(!h.state().review.audit_queue().selected().unwrap().stale);

    // The Swap filter shows only the swap; its card is clickable.
    h.get_by_label("Swap (1)").click();
    settle(&mut h);
    let shown: Vec<i64> = h
        .state()
        .review
        .audit_queue()
        .shown()
        .map(|r| r.id)
        .collect();
    assert_eq!(shown, vec![p.swap]);
    let file = Project::open(&root)
        .unwrap()
        .image(SWAP_IMAGE)
        .unwrap()
        .file_name;
    h.get_by_label(&format!("Finding {}: swap on {file}", p.swap))
        .click();
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.swap));
    // Accepting a swap changes the class to the suggested one.
    h.key_press(Key::A);
    settle(&mut h);
    let swap = instance(&root, SWAP_IMAGE, p.swap_instance).unwrap();
    assert_eq!(swap.class_id, p.swap_suggested);
    assert_eq!(status(&root, p.swap), FindingStatus::Accepted);
    assert_eq!(h.state().review.audit_queue().shown().count(), 0);
    h.get_by_label("No open finding of this kind.");

    // Back to all kinds: Space keeps the selected one.
    h.get_by_label("All (3)").click();
    settle(&mut h);
    assert_eq!(selected(&h), Some(p.loose));
    h.key_press(Key::Space);
    settle(&mut h);
    assert_eq!(status(&root, p.loose), FindingStatus::Kept);
    let loose = instance(&root, LOOSE_IMAGE, p.loose_instance).unwrap();
    assert_eq!(Mask::from_rle(&loose.rle).unwrap(), p.loose_before);
    assert_eq!(counts(&h), [1, 1, 0, 0]);
    // The missing finding has no instance: Delete does nothing to the store.
    assert_eq!(selected(&h), Some(p.missing));
    h.key_press(Key::Delete);
    settle(&mut h);
    assert_eq!(status(&root, p.missing), FindingStatus::Open);
    assert_eq!(counts(&h), [1, 1, 0, 0]);

    // Leaving the mode closes its image; the gallery shows again.
    h.get_by_label("Grid").click();
    h.run_steps(3);
    assert_eq!(h.state().review.mode(), ReviewMode::Grid);
    assert!(h.state().review.audit_queue().image_view().is_none());
}

#[test]
fn a_new_audit_shows_when_the_tab_comes_back_or_on_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = sample_with_audit(dir.path());
    let mut h = open_queue(dir.path(), root.clone());
    let spurious = |project: &Project, image: i64| NewFinding {
        image_id: image,
        instance_id: Some(first_instance(project, image).id),
        kind: "spurious".to_owned(),
        score: 0.95,
        image_score: 0.95,
        reason: "a later audit".to_owned(),
        suggested_class_id: None,
        suggested_mask: None,
    };
    let audit = |images: Vec<i64>| NewAudit {
        model: "runs/second/best".to_owned(),
        mode: AuditMode::Model,
        split: None,
        params: serde_json::json!({}),
        images,
    };
    // An audit stored while another tab shows (as Train's "Audit with this run" does).
    h.state_mut().set_tab(Tab::Train);
    h.run_steps(2);
    {
        let mut project = Project::open(&root).unwrap();
        let findings = [spurious(&project, 5), spurious(&project, 6)];
        project.save_audit(&audit(vec![5, 6]), &findings).unwrap();
    }
    h.state_mut().set_tab(Tab::Review);
    settle(&mut h);
    assert_eq!(h.state().review.audit_queue().open_count(), Some(6));
    assert_eq!(counts(&h), [1, 3, 1, 1]);
    h.get_by_label("Likely errors (6)");
    // The new findings score highest: they lead the queue.
    let first = h.state().review.audit_queue().shown().next().unwrap();
    assert_eq!(
        (first.image_id, first.model.as_str()),
        (5, "runs/second/best")
    );

    // Stored with the tab showing: `refresh` (the hook an audit's end calls) reads it.
    {
        let mut project = Project::open(&root).unwrap();
        let findings = [spurious(&project, 7)];
        project.save_audit(&audit(vec![7]), &findings).unwrap();
    }
    h.state_mut().review.refresh();
    settle(&mut h);
    assert_eq!(h.state().review.audit_queue().open_count(), Some(7));
    assert_eq!(counts(&h), [1, 4, 1, 1]);
}
