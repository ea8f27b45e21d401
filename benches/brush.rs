//! Brush stroke latency on a 4000×3000 image (goal: under one 16 ms frame).
//!
//! 1. `maskops::paint_segment` alone (radius 10 px, 12 px pointer steps);
//! 2. whole editor frames: an `ImageView` driven by egui_kittest (no renderer) during a drag —
//!    stroke apply + overlay re-composition and partial texture upload of the dirty rectangle,
//!    plus egui's own layout of the view;
//! 3. the release (mouse-up) frame of each of [`STROKES`] strokes, p50/p95: the view hands the
//!    stroke to its `edit-writer` thread, so this frame no longer encodes or commits; then the
//!    frames until the writer has saved it and the view applied the answer (undo/redo state,
//!    progress, area), and the time from release to saved;
//! 4. the store commit alone (`update_instance_mask`: RLE encode + one SQLite transaction),
//!    which is what the release frame used to pay for.
//!
//! Run: `cargo bench --bench brush`.

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::maskops;
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::editor::{ImageView, ImageViewAction};
use maskstudio::gui::shared::{Notices, PanelCtx, Settings, ShellRequest};

const W: u32 = 4000;
const H: u32 = 3000;
/// Strokes drawn in part 3 (the first edits the imported instance: its original's outline
/// appears, a larger overlay refresh).
const STROKES: usize = 12;

fn stats(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<48} n={:<4} p50={:>7.3} ms  p95={:>7.3} ms  max={:>7.3} ms",
        ms.len(),
        p(0.5),
        p(0.95),
        ms[ms.len() - 1]
    );
}

/// Steps frames (1 ms apart, as a vsync'd GUI would be woken) until the view's writer has
/// saved everything and its answer is applied; returns each frame's duration in ms.
fn wait_saved(h: &mut Harness<'_, State>) -> Vec<f64> {
    let start = Instant::now();
    let mut frames = Vec::new();
    while !h.state().view.is_idle() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the edit writer did not finish"
        );
        std::thread::sleep(Duration::from_millis(1));
        let t = Instant::now();
        h.step();
        frames.push(t.elapsed().as_secs_f64() * 1e3);
    }
    frames
}

fn big_instance() -> Mask {
    let mut m = Mask::new(W, H);
    maskops::fill_polygons(
        &mut m,
        &[vec![
            [800.0, 600.0],
            [2600.0, 700.0],
            [2900.0, 2200.0],
            [900.0, 2400.0],
        ]],
        true,
    );
    m
}

/// A zig-zag pointer path across the instance, 12 px apart.
fn path() -> Vec<[f64; 2]> {
    (0..240)
        .map(|i| {
            let t = f64::from(i);
            [
                1000.0 + t * 6.0,
                1200.0 + (t * 0.15).sin() * 300.0 + t * 2.0,
            ]
        })
        .collect()
}

struct State {
    view: ImageView,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

fn main() {
    println!("brush benchmark: {W}×{H} mask, brush diameter 20 px");
    // 1. The raster operation alone.
    let mut mask = big_instance();
    let pts = path();
    let mut times = Vec::new();
    for pair in pts.windows(2) {
        let t = Instant::now();
        let dirty = maskops::paint_segment(&mut mask, pair[0], pair[1], 10.0, true);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(dirty);
    }
    stats("paint_segment (one pointer step)", times);

    // A project with one 4000×3000 image.
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("src dir");
    let img = image::RgbImage::from_fn(W, H, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 90])
    });
    img.save(src.join("big.png")).expect("write png");
    let set = ImportSet {
        format: "bench".into(),
        classes: vec![ClassDef {
            name: "thing".into(),
            mid: None,
        }],
        images: vec![ImportImage {
            src_path: src.join("big.png"),
            file_name: "big.png".into(),
            width: W,
            height: H,
            split: None,
            source: "bench".into(),
            attribution: Attribution::default(),
            instances: vec![ImportInstance {
                class: "thing".into(),
                segmentation: Segmentation::Bitmap(big_instance()),
                iscrowd: false,
                origin: Origin::Import,
                provenance: None,
            }],
        }],
    };
    let root = dir.path().join("p");
    Project::create_or_open(&root)
        .and_then(|mut p| p.import(&set, &src, &CancelToken::default(), &mut |_| {}))
        .expect("import");

    // 2. Editor frames during a drag.
    let t = Instant::now();
    let mut view = ImageView::open(&root, 1).expect("open");
    view.wait_until_loaded(Duration::from_secs(60))
        .expect("load");
    println!(
        "open + load (thread: read, decode PNG and masks): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    view.select(Some(1));
    view.set_tool(maskstudio::gui::editor::Tool::Brush);
    view.set_brush_size(20.0);
    let mut h = Harness::builder()
        .with_size([1400.0, 900.0])
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
            State {
                view,
                settings: Settings::default(),
                notices: Notices::default(),
                requests: Vec::new(),
            },
        );
    h.input_mut().max_texture_side = Some(16_384);
    let t = Instant::now();
    h.step();
    h.step();
    println!(
        "first frames (image + full overlay textures): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        h.step();
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("idle frame (view drawn, nothing changes)", idle);
    let mut drag_frames = Vec::new();
    let mut release_frames = Vec::new();
    let mut saving_frames = Vec::new();
    let mut saved = Vec::new();
    for stroke in 0..STROKES {
        let screen: Vec<egui::Pos2> = path()
            .iter()
            .map(|&p| {
                h.state()
                    .view
                    .image_to_screen([p[0] + stroke as f64 * 40.0, p[1]])
            })
            .collect();
        h.event(egui::Event::PointerMoved(screen[0]));
        h.event(egui::Event::PointerButton {
            pos: screen[0],
            button: egui::PointerButton::Primary,
            pressed: true,
            modifiers: egui::Modifiers::NONE,
        });
        h.step();
        for &p in &screen[1..] {
            h.event(egui::Event::PointerMoved(p));
            let t = Instant::now();
            h.step();
            drag_frames.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let last = *screen.last().expect("points");
        h.event(egui::Event::PointerButton {
            pos: last,
            button: egui::PointerButton::Primary,
            pressed: false,
            modifiers: egui::Modifiers::NONE,
        });
        let released = Instant::now();
        h.step();
        let ms = released.elapsed().as_secs_f64() * 1e3;
        if stroke == 0 {
            println!("stroke 0 (first edit: original outline appears): release frame {ms:.1} ms");
        }
        release_frames.push(ms);
        saving_frames.extend(wait_saved(&mut h));
        saved.push(released.elapsed().as_secs_f64() * 1e3);
    }
    stats("frame during drag (all strokes)", drag_frames);
    stats("release frame (mouse-up)", release_frames);
    if !saving_frames.is_empty() {
        stats(
            "frames while the writer saves (incl. answer)",
            saving_frames,
        );
    }
    stats("release -> saved and answered", saved);
    if let Some(n) = h
        .state()
        .notices
        .items
        .iter()
        .find(|n| n.level == maskstudio::gui::shared::NoticeLevel::Error)
    {
        println!("ERROR during the bench: {}", n.text);
    }

    // 4. The store commit alone.
    let mut project = Project::open(&root).expect("open project");
    let mut mask = big_instance();
    let mut commits = Vec::new();
    for (k, pair) in pts.windows(2).take(30).enumerate() {
        maskops::paint_segment(
            &mut mask,
            [pair[0][0], pair[0][1] + k as f64],
            pair[1],
            10.0,
            true,
        );
        let t = Instant::now();
        project.update_instance_mask(1, &mask).expect("commit");
        commits.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("store commit (RLE encode + 1 transaction)", commits);
    let mut encodes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        std::hint::black_box(mask.to_rle().to_compressed());
        encodes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("  of which Mask::to_rle + compress", encodes);
}
