//! Frame time of the studio shell with a 5,000-image project in the Review gallery, scrolled
//! continuously (a mouse-wheel event every frame, so new rows and thumbnails keep arriving).
//!
//! Two measurements of the same frames (egui_kittest harness, 1280×800 points):
//! - `ui pass`: the shell's `logic` + `ui` (layout, tessellation input, thumbnail uploads queued);
//! - `ui + render`: the same plus rendering with egui-wgpu on the software adapter
//!   (lavapipe/llvmpipe on this machine) and reading the image back.
//!
//! `cargo bench --bench gui_frames` (env `GUI_BENCH_IMAGES`, `GUI_BENCH_FRAMES` to change sizes).

use std::path::Path;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use maskstudio::dataset::store::{CancelToken, Project};
use maskstudio::dataset::{
    ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::shared::Tab;
use maskstudio::gui::{StudioApp, StudioOptions};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A project of `n` tiny generated PNGs (64×48), each with one or two masks of three classes.
fn build_project(dir: &Path, n: usize) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let classes = ["cat", "dog", "bird"];
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("img{i:05}.png");
        let seed = (i % 251) as u8;
        image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([
                (x as u8).wrapping_mul(3).wrapping_add(seed),
                (y as u8).wrapping_mul(5),
                seed.wrapping_mul(7),
            ])
        })
        .save(src.join(&name))
        .unwrap();
        let mut instances = Vec::new();
        for k in 0..(1 + i % 2) {
            let mut m = Mask::new(64, 48);
            let (x0, y0) = ((i * 7 + k * 23) % 40, (i * 3 + k * 11) % 28);
            for y in y0..y0 + 18 {
                for x in x0..x0 + 22 {
                    m.set(x as u32, y as u32, true);
                }
            }
            instances.push(ImportInstance {
                class: classes[(i + k) % 3].into(),
                segmentation: Segmentation::Bitmap(m),
                iscrowd: false,
                origin: Origin::Import,
                provenance: None,
            });
        }
        images.push(ImportImage {
            src_path: src.join(&name),
            file_name: name,
            width: 0,
            height: 0,
            split: Some(if i % 5 == 0 { "validation" } else { "train" }.into()),
            source: "bench".into(),
            attribution: Default::default(),
            instances,
        });
    }
    let set = ImportSet {
        format: "bench".into(),
        classes: classes
            .iter()
            .map(|c| ClassDef {
                name: (*c).into(),
                mid: None,
            })
            .collect(),
        images,
    };
    let root = dir.join("project");
    Project::create_or_open(&root)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    root
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<12} frames {:>4}  p50 {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.95)),
        ms(*times.last().unwrap()),
    );
}

fn main() {
    let n = env_usize("GUI_BENCH_IMAGES", 5000);
    let frames = env_usize("GUI_BENCH_FRAMES", 300);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let root = build_project(dir.path(), n);
    println!(
        "built a {n}-image project in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let app = StudioApp::with_options(StudioOptions {
        project: Some(root),
        settings_path: dir.path().join("settings.json"),
        oi_cache_dir: dir.path().join("oi-cache"),
        start_tab: Some(Tab::Review),
    });
    let mut h = Harness::builder()
        .with_size([1280.0, 800.0])
        .build_ui_state(
            |ui, app: &mut StudioApp| {
                app.logic(ui.ctx());
                app.ui(ui);
            },
            app,
        );
    let start = Instant::now();
    while h.state().review.shown_count() != Some(n) || h.state().review.thumb_stats().0 < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gallery never loaded"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "gallery listed and first thumbnails shown after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let over_gallery = egui::pos2(640.0, 450.0);
    let wheel = |h: &mut Harness<'_, StudioApp>| {
        h.hover_at(over_gallery);
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, -90.0),
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Unknown,
            modifiers: egui::Modifiers::NONE,
        });
    };

    let mut ui_times = Vec::with_capacity(frames);
    for _ in 0..frames {
        wheel(&mut h);
        let t = Instant::now();
        h.step();
        ui_times.push(t.elapsed());
    }
    let (held, pending) = h.state().review.thumb_stats();
    println!("after {frames} scrolled frames: {held} thumbnail textures held, {pending} queued");
    report("ui pass", ui_times);

    let mut render_times = Vec::with_capacity(frames);
    let mut render_only = Vec::with_capacity(frames);
    let mut render_failed = None;
    for _ in 0..frames {
        wheel(&mut h);
        let t = Instant::now();
        h.step();
        let r = Instant::now();
        if let Err(e) = h.render() {
            render_failed = Some(e);
            break;
        }
        render_only.push(r.elapsed());
        render_times.push(t.elapsed());
    }
    match render_failed {
        Some(e) => println!("wgpu render unavailable: {e}"),
        None => {
            report("render only", render_only);
            report("ui + render", render_times);
        }
    }
}
