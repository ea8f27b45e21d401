//! The Review image view edits masks through the real store: paint a stroke and see the area
//! grow, undo/redo, polygon subtract makes a hole, revert to the original, review status and
//! next unreviewed image, undo after reopening the project, edits queued back to back written
//! in order and not lost when the view closes, and model assist (a real random bundle proposes
//! masks, a click accepts one). Driven with egui_kittest (pointer and key events, no
//! renderer).
//!
//! The view saves on its `edit-writer` thread: after an action the tests run frames until the
//! view says it is idle ([`settle`]) before reading the store.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

use eframe::egui::{self, Key, Modifiers, Pos2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::{Project, ReviewStatus};
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::editor::{ImageView, ImageViewAction, Tool};
use maskstudio::gui::shared::{NoticeLevel, Notices, PanelCtx, Settings, ShellRequest, Tab};
use maskstudio::gui::{StudioApp, StudioOptions};
use maskstudio::host::DeviceChoice;

/// Tests that seed torch hold this (the pattern of tests/model_golden.rs).
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const W: u32 = 64;
const H: u32 = 48;

fn square(x0: u32, y0: u32, side: u32) -> Mask {
    let mut m = Mask::new(W, H);
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            m.set(x, y, true);
        }
    }
    m
}

/// Three images, each with a 10×10 "cat" square at (10, 10) and an 8×8 "dog" at (40, 10).
fn make_project(dir: &Path) {
    let src = dir.join("src");
    let mut set = ImportSet {
        format: "test".into(),
        classes: vec![
            ClassDef {
                name: "cat".into(),
                mid: None,
            },
            ClassDef {
                name: "dog".into(),
                mid: None,
            },
        ],
        images: Vec::new(),
    };
    for i in 0..3u8 {
        let name = format!("img{i}.png");
        common::write_png(&src.join(&name), W, H, i * 40);
        set.images.push(ImportImage {
            src_path: src.join(&name),
            file_name: name,
            width: W,
            height: H,
            split: Some("train".into()),
            source: "test".into(),
            attribution: Attribution {
                author: Some("A. Photographer".into()),
                license: Some("CC BY 2.0".into()),
                ..Default::default()
            },
            instances: vec![
                ImportInstance {
                    class: "cat".into(),
                    segmentation: Segmentation::Bitmap(square(10, 10, 10)),
                    iscrowd: false,
                    origin: Origin::OpenImages,
                    provenance: None,
                },
                ImportInstance {
                    class: "dog".into(),
                    segmentation: Segmentation::Bitmap(square(40, 10, 8)),
                    iscrowd: false,
                    origin: Origin::Import,
                    provenance: None,
                },
            ],
        });
    }
    Project::create_or_open(&dir.join("p"))
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
}

struct State {
    view: ImageView,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
    last: ImageViewAction,
}

fn harness(root: &Path, image_id: i64) -> Harness<'static, State> {
    harness_with(root, image_id, Settings::default())
}

fn harness_with(root: &Path, image_id: i64, settings: Settings) -> Harness<'static, State> {
    let mut view = ImageView::open(root, image_id).unwrap();
    view.wait_until_loaded(HANG_GUARD).unwrap();
    let state = State {
        view,
        settings,
        notices: Notices::default(),
        requests: Vec::new(),
        last: ImageViewAction::None,
    };
    let mut h = Harness::builder()
        .with_size([1100.0, 700.0])
        .build_ui_state(
            |ui, s: &mut State| {
                let mut cx = PanelCtx {
                    project: None,
                    settings: &mut s.settings,
                    notices: &mut s.notices,
                    requests: &mut s.requests,
                };
                let action = s.view.ui(ui, &mut cx);
                if action != ImageViewAction::None {
                    s.last = action;
                }
            },
            state,
        );
    settle(&mut h);
    h
}

/// Runs frames until the view's writer has saved every edit and the view shows the store's
/// state (the writer thread works meanwhile). `run_ok`, not `run`: the writer's answers wake
/// the GUI from its thread, so a burst of them may take more than `run`'s four frames.
fn settle(h: &mut Harness<'_, State>) {
    let start = Instant::now();
    h.run_ok();
    while !h.state().view.is_idle() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "the edit writer still has {} edits after 30 s",
            h.state().view.pending_edits()
        );
        std::thread::sleep(Duration::from_millis(2));
        h.step();
    }
    h.run_ok();
}

fn errors(h: &Harness<'_, State>) -> Vec<String> {
    h.state()
        .notices
        .items
        .iter()
        .filter(|n| n.level == NoticeLevel::Error)
        .map(|n| n.text.clone())
        .collect()
}

/// (area, edited) of an instance, read from the store.
fn stored(root: &Path, id: i64) -> (u64, bool) {
    let project = Project::open(root).unwrap();
    let row = project
        .instances(1)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    (row.area, row.edited)
}

fn stored_mask(root: &Path, id: i64) -> Mask {
    let project = Project::open(root).unwrap();
    let row = project
        .instances(1)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    Mask::from_rle(&row.rle).unwrap()
}

fn screen(h: &Harness<'_, State>, p: [f64; 2]) -> Pos2 {
    h.state().view.image_to_screen(p)
}

fn press(h: &mut Harness<'_, State>, pos: Pos2, pressed: bool) {
    h.event(egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: Modifiers::NONE,
    });
}

/// A brush drag through image points (one frame per point), then the writer saves it.
fn drag(h: &mut Harness<'_, State>, points: &[[f64; 2]]) {
    drag_unsaved(h, points);
    settle(h);
}

/// A brush drag; returns right after the release frame (the edit may still be queued).
fn drag_unsaved(h: &mut Harness<'_, State>, points: &[[f64; 2]]) {
    let first = screen(h, points[0]);
    h.hover_at(first);
    h.run_ok();
    press(h, first, true);
    h.run_ok();
    for &p in &points[1..] {
        let s = screen(h, p);
        h.hover_at(s);
        h.run_ok();
    }
    let last = screen(h, *points.last().unwrap());
    press(h, last, false);
    h.step();
}

/// One click at an image point, then enough frames that the next is not a double click.
fn click(h: &mut Harness<'_, State>, p: [f64; 2]) {
    let s = screen(h, p);
    h.hover_at(s);
    h.run_ok();
    press(h, s, true);
    h.run_ok();
    press(h, s, false);
    h.run_ok();
    h.run_steps(30);
    settle(h);
}

const CAT: i64 = 1;

/// The cat square's 100 pixels plus a brush stroke to its right.
fn paint_right_of_cat(h: &mut Harness<'_, State>) {
    h.state_mut().view.select(Some(CAT));
    h.key_press(Key::B);
    settle(h);
    assert_eq!(h.state().view.tool(), Tool::Brush);
    h.state_mut().view.set_brush_size(3.0);
    drag(h, &[[22.0, 15.0], [26.0, 15.0], [30.0, 15.0], [35.0, 15.0]]);
}

#[test]
fn a_brush_stroke_grows_the_instance_and_undo_redo_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    assert_eq!(stored(&root, CAT), (100, false));

    paint_right_of_cat(&mut h);
    let (area, edited) = stored(&root, CAT);
    // Four rows (centres within 1.5 of y = 15) from x ≈ 21 to 35, plus round caps.
    assert!((150..=175).contains(&area), "area after the stroke: {area}");
    assert!(edited);
    let m = stored_mask(&root, CAT);
    assert!(m.get(30, 14) && m.get(30, 15) && m.get(22, 15) && m.get(34, 15));
    assert!(!m.get(30, 18) && !m.get(30, 11) && !m.get(38, 15));
    assert!(
        m.get(27, 13) && m.get(27, 16),
        "no gap between pointer events"
    );

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (100, false));
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (area, true));
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Y);
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (area, true));

    // The eraser takes part of it back; a second undo restores the stroke.
    h.key_press(Key::E);
    settle(&mut h);
    drag(&mut h, &[[30.0, 10.0], [30.0, 20.0]]);
    let (erased, _) = stored(&root, CAT);
    assert!(erased < area, "{erased} < {area}");
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert_eq!(stored(&root, CAT).0, area);
    // Undo touched only this image's history.
    assert!(
        h.state()
            .notices
            .items
            .iter()
            .all(|n| n.level != maskstudio::gui::shared::NoticeLevel::Error)
    );
}

#[test]
fn polygon_subtract_cuts_a_hole_and_revert_restores_the_original() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    h.state_mut().view.select(Some(CAT));
    h.key_press(Key::P);
    settle(&mut h);
    for p in [[13.0, 13.0], [17.0, 13.0], [17.0, 17.0], [13.0, 17.0]] {
        click(&mut h, p);
    }
    h.key_press_modifiers(Modifiers::SHIFT, Key::Enter);
    settle(&mut h);
    let m = stored_mask(&root, CAT);
    // pycocotools pixels of the 4×4 square at (13, 13): a hole of 16 pixels.
    assert_eq!(m.area(), 84);
    assert!(!m.get(13, 13) && !m.get(16, 16) && m.get(12, 12) && m.get(17, 17));
    let parts = maskstudio::dataset::maskops::split_components(&m);
    assert_eq!(parts.len(), 1, "a hole, not a cut");
    let mut filled = m.clone();
    assert!(!maskstudio::dataset::maskops::fill_holes(&mut filled).is_empty());
    assert_eq!(filled.area(), 100);

    // Revert (R) brings the original square back and clears the edited flag.
    h.key_press(Key::R);
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (100, false));
    assert_eq!(stored_mask(&root, CAT), square(10, 10, 10));
    // ... and revert is itself undoable.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (84, true));
}

#[test]
fn review_status_keys_and_next_unreviewed_image() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    h.key_press(Key::Num2);
    settle(&mut h);
    let project = Project::open(&root).unwrap();
    assert_eq!(project.image(1).unwrap().review_status, ReviewStatus::Fixed);
    h.key_press(Key::D);
    settle(&mut h);
    assert_eq!(h.state().last, ImageViewAction::Next);
    let next = h.state().view.neighbour_unreviewed(true).unwrap();
    assert_eq!(next, 2);
    assert_eq!(
        h.state().view.neighbour_unreviewed(false),
        Some(3),
        "wraps around"
    );
    // The host opens the next image; reject it with 3 and go on.
    let mut h2 = harness(&root, next);
    assert_eq!(h2.state().view.image_id(), 2);
    h2.key_press(Key::Num3);
    settle(&mut h2);
    h2.key_press(Key::ArrowRight);
    settle(&mut h2);
    assert_eq!(h2.state().last, ImageViewAction::Next);
    assert_eq!(h2.state().view.neighbour_unreviewed(true), Some(3));
    // Rejected images leave training: the training set no longer has image 2.
    let set = maskstudio::train::data::read_project(&root).unwrap();
    let ids: Vec<i64> = set.images.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![1, 3]);
    let progress = project.class_progress().unwrap();
    assert_eq!((progress[0].images, progress[0].reviewed), (3, 2));
}

#[test]
fn undo_still_works_after_reopening_the_project() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let area = {
        let mut h = harness(&root, 1);
        paint_right_of_cat(&mut h);
        stored(&root, CAT).0
    };
    assert!(area > 100);
    // A new view on the same folder (as after a restart).
    let mut h = harness(&root, 1);
    h.get_by_label("Undo").click();
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (100, false));
    h.get_by_label("Redo").click();
    settle(&mut h);
    assert_eq!(stored(&root, CAT), (area, true));
}

#[test]
fn new_instance_split_merge_and_delete_through_the_view() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    // N, then a stroke on empty ground: a new manual instance of the chosen class.
    h.key_press(Key::N);
    settle(&mut h);
    h.state_mut().view.set_brush_size(4.0);
    drag(&mut h, &[[5.0, 35.0], [25.0, 35.0]]);
    let project = Project::open(&root).unwrap();
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].origin, Origin::Manual);
    let new_id = rows[2].id;
    assert_eq!(h.state().view.selected(), Some(new_id));
    // Merge (M): the new stroke into the cat, then split (S) gives them back apart.
    h.state_mut().view.select(Some(CAT));
    h.key_press(Key::M);
    settle(&mut h);
    click(&mut h, [15.0, 35.5]);
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 2, "merged into one");
    assert!(rows[0].area > 100);
    h.key_press(Key::S);
    settle(&mut h);
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 3, "split into components");
    assert_eq!(rows[0].area, 100);
    // One undo takes the whole split back, one more the whole merge.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    assert_eq!(project.instances(1).unwrap().len(), 2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].area, 100);
    // Delete the dog.
    h.state_mut().view.select(Some(2));
    h.key_press(Key::Delete);
    settle(&mut h);
    assert_eq!(project.instances(1).unwrap().len(), 2);
    assert_eq!(project.edited_count(1).unwrap(), 0);
}

#[test]
fn store_counts_edits_per_image_and_class_and_refuses_cross_image_merges() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut project = Project::open(&root).unwrap();
    assert_eq!(project.history_of(1).unwrap(), (false, false));
    project
        .update_instance_mask(1, &square(10, 10, 12))
        .unwrap();
    project.set_instance_class(2, 1).unwrap(); // the dog becomes a cat
    project.update_instance_mask(4, &square(30, 30, 5)).unwrap(); // image 2's dog
    assert_eq!(project.edited_count(1).unwrap(), 2);
    let per_image = project.edited_per_image().unwrap();
    assert_eq!(
        (per_image[&1], per_image[&2], per_image.get(&3)),
        (2, 1, None)
    );
    let progress = project.class_progress().unwrap();
    assert_eq!(
        (
            progress[0].name.as_str(),
            progress[0].instances,
            progress[0].edited
        ),
        ("cat", 4, 2)
    );
    assert_eq!((progress[1].instances, progress[1].edited), (2, 1));
    assert_eq!(project.history_of(1).unwrap(), (true, false));
    let originals = project.original_masks(1).unwrap();
    assert_eq!(Mask::from_rle(&originals[&1]).unwrap(), square(10, 10, 10));
    assert!(matches!(
        project.merge_instances(1, 3),
        Err(maskstudio::dataset::store::StoreError::Invalid(_))
    ));
    // Per-image undo leaves the other image's edit alone; revert restores the class too.
    project.undo_image(1).unwrap();
    assert_eq!(project.edited_per_image().unwrap()[&2], 1);
    project.set_instance_class(2, 1).unwrap();
    assert!(project.revert_instance(2).unwrap());
    assert_eq!(project.instances(1).unwrap()[1].class_id, 2);
    assert!(
        !project.revert_instance(2).unwrap(),
        "nothing left to revert"
    );
    assert_eq!(project.history_of(1).unwrap(), (true, false));
}

#[test]
fn edits_queued_back_to_back_are_saved_in_order_and_survive_closing_the_view() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    h.state_mut().view.select(Some(CAT));
    h.key_press(Key::B);
    settle(&mut h);
    h.state_mut().view.set_brush_size(3.0);
    // A stroke, undo, redo and a review status, each in the frame after the previous one,
    // without waiting for the writer: the store must see them in this order.
    drag_unsaved(
        &mut h,
        &[[22.0, 15.0], [26.0, 15.0], [30.0, 15.0], [35.0, 15.0]],
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.step();
    h.key_press(Key::Num2);
    h.step();
    settle(&mut h);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    let (area, edited) = stored(&root, CAT);
    assert!(
        (150..=175).contains(&area),
        "area after stroke, undo, redo: {area}"
    );
    assert!(edited);
    let project = Project::open(&root).unwrap();
    assert_eq!(project.image(1).unwrap().review_status, ReviewStatus::Fixed);
    assert_eq!(
        project.history_of(1).unwrap(),
        (true, false),
        "redo was last"
    );

    // Closing the view right after a stroke (as navigating to another image does) still saves
    // it: the view's drop waits for its writer.
    drag_unsaved(&mut h, &[[12.0, 30.0], [18.0, 30.0]]);
    drop(h);
    let (after, _) = stored(&root, CAT);
    assert!(after > area, "the last stroke was lost: {after} <= {area}");
}

/// A random bundle that proposes at least one non-empty mask on `image` at `score`.
fn assist_bundle(dir: &Path, image: &Path, score: f32) -> PathBuf {
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    common::scaled_random_bundle(
        dir,
        image,
        5,
        &[2.0, 8.0, 32.0, 128.0],
        f64::from(score),
        |d| d.iter().any(|d| d.mask.area() > 0),
    )
}

#[test]
fn model_assist_proposes_masks_and_a_click_accepts_one_as_an_undoable_model_instance() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let image_path = Project::open(&root).unwrap().image(1).unwrap().path;
    let score = 0.05;
    let bundle = assist_bundle(dir.path(), &image_path, score);
    let settings = Settings {
        device: DeviceChoice::Cpu,
        score_threshold: score,
        ..Settings::default()
    };
    let mut h = harness_with(&root, 1, settings);
    h.state_mut().view.set_model_path(&bundle);
    h.get_by_label("Propose masks").click();
    let start = Instant::now();
    h.step(); // the click; the spinner repaints until the worker answers
    while h.state().view.is_proposing() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "model assist took over 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    settle(&mut h);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    let view = &h.state().view;
    assert!(view.proposal_count() > 0, "the bundle proposed nothing");
    // A pixel of the first proposal with pixels that no earlier proposal covers: a click
    // there accepts exactly that proposal.
    let (expected, class_name, pixel) = (0..view.proposal_count())
        .find_map(|k| {
            let d = view.proposal(k)?;
            let earlier: Vec<&Mask> = (0..k)
                .filter_map(|j| view.proposal(j))
                .map(|p| &p.mask)
                .collect();
            (0..H)
                .flat_map(|y| (0..W).map(move |x| (x, y)))
                .find(|&(x, y)| d.mask.get(x, y) && earlier.iter().all(|m| !m.get(x, y)))
                .map(|p| (d.mask.clone(), d.class_name.clone(), p))
        })
        .expect("a proposal with a pixel of its own");
    let before = Project::open(&root).unwrap().instances(1).unwrap();
    assert_eq!(before.len(), 2);
    assert_eq!(h.state().view.tool(), Tool::Select);
    click(&mut h, [f64::from(pixel.0) + 0.5, f64::from(pixel.1) + 0.5]);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));

    let project = Project::open(&root).unwrap();
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 3, "the accepted proposal is a new instance");
    let new = &rows[2];
    assert_eq!(new.origin, Origin::Model);
    assert!(!new.edited);
    let stored = Mask::from_rle(&new.rle).unwrap();
    assert_eq!(new.area, expected.area(), "exact pixel count");
    assert_eq!(stored, expected, "the stored mask is the proposal's");
    let class = project
        .classes()
        .unwrap()
        .into_iter()
        .find(|c| c.id == new.class_id)
        .unwrap();
    assert_eq!(class.name, class_name);
    assert_eq!(h.state().view.selected(), Some(new.id));

    // Undo removes it again.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    settle(&mut h);
    let rows = project.instances(1).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.origin != Origin::Model));
    assert_eq!(h.state().view.selected(), None);
}

#[test]
fn the_model_bundle_field_is_kept_across_images_in_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    h.get_by_label("Model bundle").focus();
    h.step();
    h.get_by_label("Model bundle").type_text("/models/cells");
    h.step();
    assert_eq!(h.state().settings.assist_bundle, "/models/cells");
    let settings = h.state().settings.clone();
    drop(h);
    // The next image's view (and a restarted studio, which loads the same settings).
    let mut h = harness_with(&root, 2, settings);
    h.step();
    assert_eq!(h.state().view.model_path(), "/models/cells");
}

/// Instances of image 1 in the store.
fn rows(root: &Path) -> Vec<maskstudio::dataset::store::InstanceRow> {
    Project::open(root).unwrap().instances(1).unwrap()
}

#[test]
fn a_brush_stroke_with_nothing_selected_starts_a_new_instance_of_the_chosen_class() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    // The class for new instances, chosen in the side panel.
    h.get_by_label("Class").click();
    h.run_ok();
    h.get_by_label("dog").click();
    h.run_ok();
    h.key_press(Key::B);
    settle(&mut h);
    assert_eq!(h.state().view.selected(), None);
    h.state_mut().view.set_brush_size(4.0);
    drag(&mut h, &[[5.0, 35.0], [25.0, 35.0]]);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    let after = rows(&root);
    assert_eq!(after.len(), 3, "the stroke made a new instance");
    let dog = after[2].clone();
    assert_eq!((dog.class_id, dog.origin), (2, Origin::Manual));
    assert!(dog.area > 0);
    assert_eq!(h.state().view.selected(), Some(dog.id), "and selected it");
    assert_eq!(h.state().view.hint(), None);

    // While the store is busy with one new instance (another connection holds the write
    // lock), the next stroke with nothing selected still starts a new one: it does not depend
    // on the answer. Before, every stroke waited for it and was dropped without a word.
    let lock = rusqlite::Connection::open(root.join("project.sqlite")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    h.key_press(Key::N);
    h.run_ok();
    drag_unsaved(&mut h, &[[5.0, 42.0], [15.0, 42.0]]);
    h.key_press(Key::N);
    h.run_ok();
    assert_eq!(h.state().view.selected(), None);
    drag_unsaved(&mut h, &[[40.0, 42.0], [55.0, 42.0]]);
    assert_eq!(h.state().view.hint(), None);
    assert!(
        h.state().view.pending_edits() > 0,
        "the lock did not hold the writer"
    );
    drop(lock);
    settle(&mut h);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    let after = rows(&root);
    assert_eq!(after.len(), 5, "both strokes made an instance");
    let last = after[4].clone();
    assert!(Mask::from_rle(&last.rle).unwrap().get(48, 42));
    assert_eq!(
        h.state().view.selected(),
        Some(last.id),
        "the last stroke's"
    );

    // Each is one edit: undo takes them back one by one, then the first.
    for left in [4, 3, 2] {
        h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
        settle(&mut h);
        assert_eq!(rows(&root).len(), left);
    }
    assert_eq!(h.state().view.selected(), None);
}

#[test]
fn a_stroke_that_cannot_start_says_why_at_the_cursor_and_in_the_toolbar() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = harness(&root, 1);
    // The eraser with nothing selected: nothing is erased, and the toolbar says why.
    h.key_press(Key::E);
    settle(&mut h);
    drag(&mut h, &[[12.0, 15.0], [18.0, 15.0]]);
    assert_eq!(stored(&root, CAT), (100, false));
    let hint = h.state().view.hint().expect("a hint").to_owned();
    assert!(hint.contains("select an instance"), "{hint}");
    h.get_by_label_contains("select an instance to erase from");
    // It goes away with the next tool.
    h.key_press(Key::B);
    settle(&mut h);
    assert_eq!(h.state().view.hint(), None);

    // A project without classes: a brush stroke with nothing selected cannot make an
    // instance; it says so instead of painting a stroke that then disappears.
    let empty = dir.path().join("empty");
    let src = dir.path().join("src-empty");
    common::write_png(&src.join("a.png"), W, H, 90);
    let set = ImportSet {
        format: "test".into(),
        classes: Vec::new(),
        images: vec![ImportImage {
            src_path: src.join("a.png"),
            file_name: "a.png".into(),
            width: W,
            height: H,
            split: Some("train".into()),
            source: "test".into(),
            attribution: Attribution::default(),
            instances: Vec::new(),
        }],
    };
    Project::create_or_open(&empty)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    let mut h = harness(&empty, 1);
    h.key_press(Key::B);
    settle(&mut h);
    drag(&mut h, &[[5.0, 35.0], [25.0, 35.0]]);
    assert!(rows(&empty).is_empty());
    let hint = h.state().view.hint().expect("a hint").to_owned();
    assert!(hint.contains("no class"), "{hint}");
    h.get_by_label_contains("has no class for a new instance");
}

/// The whole studio (shell, Review tab, status bar) on the project at `root`.
fn studio(dir: &Path, root: &Path) -> Harness<'static, StudioApp> {
    let mut options = StudioOptions::from_env(Some(root.to_path_buf()));
    options.settings_path = dir.join("config/settings.json");
    options.oi_cache_dir = dir.join("oi-cache");
    options.start_tab = Some(Tab::Review);
    options.log_toasts = None;
    let mut h = Harness::builder()
        .with_size([1280.0, 800.0])
        .build_ui_state(
            |ui, app: &mut StudioApp| {
                app.logic(ui.ctx());
                app.ui(ui);
            },
            StudioApp::with_options(options),
        );
    studio_wait(&mut h, "the project", |a| a.project().is_some());
    h
}

/// Runs the frames of what was queued (keys, clicks), then steps frames (workers report in
/// real time) until `done` holds.
fn studio_wait(h: &mut Harness<'_, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    h.run_ok();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
        h.step();
    }
    h.run_ok();
}

fn studio_view(app: &StudioApp) -> &ImageView {
    app.review.image_view().expect("an image is open")
}

/// Runs frames until the open image's edits are saved and shown (see [`settle`]).
fn studio_settle(h: &mut Harness<'_, StudioApp>) {
    studio_wait(h, "the edit writer", |a| studio_view(a).is_idle());
}

/// The "N edited" of the status bar.
fn edited_in_status_bar(h: &Harness<'_, StudioApp>) -> u64 {
    h.state().project().unwrap().1.edited_instances
}

#[test]
fn the_status_bar_edited_count_follows_a_stroke_undo_redo_and_revert() {
    let dir = tempfile::tempdir().unwrap();
    make_project(dir.path());
    let root = dir.path().join("p");
    let mut h = studio(dir.path(), &root);
    assert_eq!(edited_in_status_bar(&h), 0);
    h.state_mut().review.open_image(1);
    studio_wait(&mut h, "the image", |a| {
        a.review.image_view().is_some_and(ImageView::is_loaded)
    });
    h.state_mut()
        .review
        .image_view_mut()
        .unwrap()
        .select(Some(CAT));
    h.get_by_label("Brush").click();
    studio_settle(&mut h);
    assert_eq!(studio_view(h.state()).tool(), Tool::Brush);

    // A stroke into the cat, as in the editor tests.
    let at = |h: &Harness<'_, StudioApp>, p: [f64; 2]| studio_view(h.state()).image_to_screen(p);
    let button = |pos, pressed| egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: Modifiers::NONE,
    };
    let (from, to) = (at(&h, [22.0, 15.0]), at(&h, [30.0, 15.0]));
    h.hover_at(from);
    h.run_ok();
    h.event(button(from, true));
    h.run_ok();
    h.hover_at(to);
    h.run_ok();
    h.event(button(to, false));
    h.step();
    studio_settle(&mut h);
    assert!(stored(&root, CAT).1, "the stroke was saved");
    assert_eq!(edited_in_status_bar(&h), 1);
    h.get_by_label_contains("· 1 edited");

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    studio_settle(&mut h);
    assert_eq!(edited_in_status_bar(&h), 0, "after undo");
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    studio_settle(&mut h);
    assert_eq!(edited_in_status_bar(&h), 1, "after redo");
    h.key_press(Key::R);
    studio_settle(&mut h);
    assert_eq!(edited_in_status_bar(&h), 0, "after revert");
    h.get_by_label_contains("· 0 edited");
    // The count is the project's (Project::info), not the image's.
    assert_eq!(
        Project::open(&root)
            .unwrap()
            .info()
            .unwrap()
            .edited_instances,
        0
    );
}
