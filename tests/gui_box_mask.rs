//! Box to mask in the editor, end to end: a model trained here (cpu-fast recipe at 128 px, 96
//! steps on one-object scenes: discs and triangles on textured backgrounds) is chosen in the
//! view, the Box tool (X) drags a box around the one object of a new image, the model thread
//! answers with a dashed proposal, a click accepts it, and the stored instance's mask matches
//! the object (IoU ≥ 0.8, class from the box head). A box filled solid would score π/4 ≈ 0.79
//! on the disc and 0.5 on the triangle, so only a mask head that learnt the shapes passes.
//! Driven with egui_kittest (pointer and key events, no renderer).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eframe::egui::{self, Key, Modifiers, Pos2};
use egui_kittest::Harness;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::editor::{ImageView, ImageViewAction, Tool};
use maskstudio::gui::shared::{NoticeLevel, Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::host::DeviceChoice;
use maskstudio::rng::SplitMix64;
use maskstudio::train::{self, TrainConfig, TrainEvent, TrainObserver};

/// Waiting for a worker: a hang guard, not a speed check.
const HANG_GUARD: Duration = Duration::from_secs(600);
/// Scene size (the model receives it as is: `image_size` is its longer side).
const W: u32 = 128;
const H: u32 = 96;
/// Training scenes (every one a single object).
const TRAIN_IMAGES: usize = 24;
/// The shapes, in class order.
const CLASSES: [&str; 2] = ["disc", "triangle"];
/// Mask IoU the accepted instance must reach with the drawn object (the bar).
const MIN_IOU: f64 = 0.8;

/// One object of class `class` (0 disc, 1 triangle) centred at `(cx, cy)` with radius `r`.
fn shape(class: usize, cx: f64, cy: f64, r: f64) -> Mask {
    let mut m = Mask::new(W, H);
    for y in 0..H {
        for x in 0..W {
            let (px, py) = (f64::from(x) + 0.5 - cx, f64::from(y) + 0.5 - cy);
            let inside = if class == 0 {
                px * px + py * py <= r * r
            } else {
                // Upright triangle: apex (0, -r), base corners (±r, r).
                py <= r && py >= -r && px.abs() <= (py + r) / 2.0
            };
            m.set(x, y, inside);
        }
    }
    m
}

/// A textured background with `mask` painted in its class colour (with noise).
fn scene(rng: &mut SplitMix64, class: usize, mask: &Mask) -> image::RgbImage {
    let grey = rng.uniform(60.0, 160.0);
    let (fx, fy, phase) = (
        rng.uniform(0.03, 0.09),
        rng.uniform(0.03, 0.09),
        rng.uniform(0.0, 6.0),
    );
    let colors = [[230.0, 120.0, 40.0], [50.0, 170.0, 80.0]];
    image::RgbImage::from_fn(W, H, |x, y| {
        let (xf, yf) = (f64::from(x), f64::from(y));
        let wave = 18.0 * ((xf * fx + phase).sin() + (yf * fy).cos());
        let base = if mask.get(x, y) {
            colors[class]
        } else {
            [grey + wave, grey + wave * 0.8, grey - wave * 0.5]
        };
        image::Rgb(base.map(|v| (v + rng.uniform(-12.0, 12.0)).clamp(0.0, 255.0) as u8))
    })
}

/// A random object (class, centre, radius) that fits the image.
fn random_object(rng: &mut SplitMix64, class: usize) -> Mask {
    let r = rng.uniform(12.0, 26.0);
    let cx = rng.uniform(r + 2.0, f64::from(W) - r - 2.0);
    let cy = rng.uniform(r + 2.0, f64::from(H) - r - 2.0);
    shape(class, cx, cy, r)
}

/// One image to import: file name, pixels, objects (class index, mask).
type SceneFile = (String, image::RgbImage, Vec<(usize, Mask)>);

/// Imports `images` into a new project at `dir/name`.
fn project(dir: &Path, name: &str, images: Vec<SceneFile>) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    let mut set = ImportSet {
        format: "test".into(),
        classes: CLASSES
            .iter()
            .map(|c| ClassDef {
                name: (*c).to_owned(),
                mid: None,
            })
            .collect(),
        images: Vec::new(),
    };
    for (file_name, pixels, objects) in images {
        pixels.save(src.join(&file_name)).unwrap();
        set.images.push(ImportImage {
            src_path: src.join(&file_name),
            file_name,
            width: W,
            height: H,
            split: Some("train".into()),
            source: "test".into(),
            attribution: Attribution::default(),
            instances: objects
                .into_iter()
                .map(|(class, mask)| ImportInstance {
                    class: CLASSES[class].into(),
                    segmentation: Segmentation::Bitmap(mask),
                    iscrowd: false,
                    origin: Origin::Import,
                    provenance: None,
                })
                .collect(),
        });
    }
    let root = dir.join(name);
    Project::create_or_open(&root)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    root
}

struct Quiet;

impl TrainObserver for Quiet {
    fn on_event(&mut self, e: &TrainEvent) {
        if let TrainEvent::EpochEnd { mean_loss, .. } = e {
            eprintln!("epoch mean loss {mean_loss:.3}");
        }
    }
}

/// Trains the sample's cpu-fast recipe (at 128 px, lr 0.01 with clipping, no validation) on
/// one-object scenes; returns the last checkpoint's bundle.
fn trained_bundle(dir: &Path) -> PathBuf {
    let mut rng = SplitMix64::new(18);
    let images = (0..TRAIN_IMAGES)
        .map(|i| {
            let class = i % CLASSES.len();
            let mask = random_object(&mut rng, class);
            let pixels = scene(&mut rng, class, &mask);
            (format!("train{i:02}.png"), pixels, vec![(class, mask)])
        })
        .collect();
    let root = project(dir, "train", images);
    let cfg = TrainConfig {
        image_size: Some(W),
        // 96 steps: IoU 0.94 (disc) and 0.90 (triangle) when measured; the sample's lr 0.02
        // diverged here.
        epochs: 8,
        lr: 0.01,
        batch_size: 2,
        warmup_iters: 30,
        clip_grad_norm: Some(10.0),
        val_fraction: 0.0,
        device: DeviceChoice::Cpu,
        seed: 3,
        ..maskstudio::sample_project::train_config()
    };
    let started = Instant::now();
    let summary = train::train(
        &root,
        &dir.join("runs"),
        &cfg,
        &CancelToken::default(),
        &mut Quiet,
    )
    .unwrap();
    eprintln!(
        "trained {} steps in {:.0} s",
        summary.iterations,
        started.elapsed().as_secs_f64()
    );
    summary.checkpoint.expect("a last checkpoint")
}

struct State {
    view: ImageView,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

fn harness(root: &Path, image_id: i64, settings: Settings) -> Harness<'static, State> {
    let mut view = ImageView::open(root, image_id).unwrap();
    view.wait_until_loaded(HANG_GUARD).unwrap();
    let state = State {
        view,
        settings,
        notices: Notices::default(),
        requests: Vec::new(),
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
                let _: ImageViewAction = s.view.ui(ui, &mut cx);
            },
            state,
        );
    settle(&mut h);
    h
}

/// Frames until every edit is saved and the view shows the store's state.
fn settle(h: &mut Harness<'_, State>) {
    let start = Instant::now();
    h.run_ok();
    while !h.state().view.is_idle() {
        assert!(start.elapsed() < HANG_GUARD, "the edit writer hangs");
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
        .filter(|n| n.level != NoticeLevel::Info)
        .map(|n| n.text.clone())
        .collect()
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

/// Press at `points[0]`, move through the rest (one frame each), release at the last.
fn drag(h: &mut Harness<'_, State>, points: &[[f64; 2]]) {
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
    h.run_ok();
    h.run_steps(30); // the next press is not a double click
}

/// Frames until the model thread answered every box.
fn wait_for_boxes(h: &mut Harness<'_, State>) {
    let start = Instant::now();
    while h.state().view.pending_box_prompts() > 0 {
        assert!(start.elapsed() < HANG_GUARD, "box to mask hangs");
        std::thread::sleep(Duration::from_millis(10));
        h.step();
    }
    h.run_ok();
}

/// The proposal's box is the dragged one (screen → image pixels in f32: within 0.01 px).
fn assert_box(got: [f32; 4], dragged: [f64; 4]) {
    let off = got
        .iter()
        .zip(dragged)
        .map(|(&g, d)| (f64::from(g) - d).abs())
        .fold(0.0, f64::max);
    assert!(off < 0.01, "proposal box {got:?}, dragged {dragged:?}");
}

/// The object's tight box widened by `margin` pixels (what a person drags).
fn box_around(mask: &Mask, margin: f64) -> [f64; 4] {
    let [x, y, w, h] = mask.bbox();
    [x - margin, y - margin, x + w + margin, y + h + margin]
}

#[test]
fn a_dragged_box_becomes_a_proposal_whose_accepted_mask_is_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = trained_bundle(dir.path());

    // A new image (not trained on): one disc, one triangle, apart; no instances stored.
    let mut rng = SplitMix64::new(1805);
    let disc = shape(0, 36.0, 46.0, 22.0);
    let triangle = shape(1, 94.0, 50.0, 21.0);
    let mut both = disc.clone();
    both.union_with(&triangle);
    let mut pixels = scene(&mut rng, 0, &disc);
    let colored = scene(&mut rng, 1, &triangle);
    for (x, y, p) in pixels.enumerate_pixels_mut() {
        if triangle.get(x, y) {
            *p = *colored.get_pixel(x, y);
        }
    }
    assert_eq!(both.area(), disc.area() + triangle.area(), "apart");
    let root = project(
        dir.path(),
        "edit",
        vec![("new.png".into(), pixels, Vec::new())],
    );

    let settings = Settings {
        device: DeviceChoice::Cpu,
        ..Settings::default()
    };
    let mut h = harness(&root, 1, settings);
    h.state_mut().view.set_model_path(&bundle);
    h.key_press(Key::X);
    h.run_ok();
    assert_eq!(h.state().view.tool(), Tool::Box);

    for (class, object) in [(0usize, &disc), (1, &triangle)] {
        let [x1, y1, x2, y2] = box_around(object, 2.0);
        drag(
            &mut h,
            &[[x1, y1], [(x1 + x2) / 2.0, (y1 + y2) / 2.0], [x2, y2]],
        );
        assert!(
            h.state().view.pending_box_prompts() <= 1,
            "one box sent per drag"
        );
        wait_for_boxes(&mut h);
        assert!(errors(&h).is_empty(), "{:?}", errors(&h));
        let view = &h.state().view;
        assert!(view.proposal_count() >= 1, "no proposal for the box");
        let proposal = view.proposal(0).unwrap().clone();
        let iou = proposal.mask.iou(object);
        eprintln!(
            "{}: proposal {} score {:.3}, mask IoU {iou:.3} with the object",
            CLASSES[class], proposal.class_name, proposal.score
        );
        assert_box(proposal.box_xyxy, [x1, y1, x2, y2]);
        assert_eq!(proposal.class_name, CLASSES[class], "the box head's class");

        // A click inside the proposal (its centre pixel) accepts it as a new model instance.
        let before = Project::open(&root).unwrap().instances(1).unwrap().len();
        let [bx, by, bw, bh] = object.bbox();
        let centre = [bx + bw / 2.0, by + bh * 0.6];
        assert!(proposal.mask.get(centre[0] as u32, centre[1] as u32));
        drag(&mut h, &[centre]);
        settle(&mut h);
        assert!(errors(&h).is_empty(), "{:?}", errors(&h));
        let rows = Project::open(&root).unwrap().instances(1).unwrap();
        assert_eq!(
            rows.len(),
            before + 1,
            "the accepted proposal is a new instance"
        );
        let new = rows.last().unwrap();
        assert_eq!(new.origin, Origin::Model);
        let stored = Mask::from_rle(&new.rle).unwrap();
        assert_eq!(stored, proposal.mask, "the stored mask is the proposal's");
        let iou = stored.iou(object);
        assert!(
            iou >= MIN_IOU,
            "{}: mask IoU {iou:.3} with the object < {MIN_IOU}",
            CLASSES[class]
        );
        let classes = Project::open(&root).unwrap().classes().unwrap();
        let name = &classes.iter().find(|c| c.id == new.class_id).unwrap().name;
        assert_eq!(name, CLASSES[class]);
    }
    assert_eq!(h.state().view.proposal_count(), 0, "both accepted");

    // The side panel's class instead of the box head's: with none chosen it is the first,
    // "disc"; a box over the triangle then asks the mask head for a disc, and the proposal
    // (and the instance it would become) says "disc" although the box head says triangle.
    h.state_mut().view.set_box_uses_panel_class(true);
    let [x1, y1, x2, y2] = box_around(&triangle, 2.0);
    drag(&mut h, &[[x1, y1], [x2, y2]]);
    wait_for_boxes(&mut h);
    assert!(errors(&h).is_empty(), "{:?}", errors(&h));
    let proposal = h.state().view.proposal(0).expect("a proposal").clone();
    assert_eq!(proposal.class_name, "disc");
    assert_box(proposal.box_xyxy, [x1, y1, x2, y2]);
}
