//! Frame time of the studio shell (egui_kittest harness, 1280×800 points) with a 5,000-image
//! project:
//! 1. the Review gallery scrolled continuously (a mouse-wheel event every frame, so new rows
//!    and thumbnails keep arriving): `ui pass` = the shell's `logic` + `ui` (layout,
//!    tessellation input, thumbnail uploads queued), and `ui + render` = the same plus
//!    rendering with egui-wgpu on the software adapter (lavapipe/llvmpipe) and reading back;
//! 2. the Train tab showing a recorded 30,000-step run (`metrics.csv` read back on a worker
//!    thread, then its plots drawn every frame), while it loads and once loaded;
//! 3. a real CPU training run going on the `train-run` thread (the Train panel's own worker,
//!    started with its button; tiny images, batch 1) while the Train tab shows its live
//!    plots, then while the Review gallery scrolls.
//!
//! Each case prints p50 / p95 / max of the frames' wall time, and which share of it the GUI
//! thread spent on a CPU and waiting for one (`/proc/thread-self/schedstat`): on a machine
//! with fewer cores than busy threads, a long frame is often a wait for a core, not work.
//!
//! `cargo bench --bench gui_frames` (env `GUI_BENCH_IMAGES`, `GUI_BENCH_FRAMES`,
//! `GUI_BENCH_REPLAY_STEPS` to change sizes).

use std::path::Path;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{
    ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::shared::Tab;
use maskstudio::gui::train::TrainPanel;
use maskstudio::gui::{StudioApp, StudioOptions};
use maskstudio::host::DeviceChoice;
use maskstudio::train::TrainConfig;

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

/// A run folder with `steps` recorded steps (`metrics.csv`, `epochs.csv`, `config.json`), as a
/// long training run leaves it.
fn recorded_run(project: &Path, id: &str, steps: usize) {
    let run = project.join("runs").join(id);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.json"),
        r#"{"train": {"preset": "cpu-fast", "epochs": 10}}"#,
    )
    .unwrap();
    let mut csv = String::from(
        "epoch,iter,loss_box_reg,loss_classifier,loss_mask,loss_objectness,loss_rpn_box_reg,total,lr,images_per_sec,memory_bytes\n",
    );
    let per_epoch = steps.div_ceil(10);
    for i in 0..steps {
        let t = i as f64 / steps as f64;
        let wobble = ((i * 7919) % 101) as f64 / 101.0;
        let parts = [0.3, 0.5, 0.6, 0.2, 0.1].map(|b| b * (1.2 - t) + 0.05 * wobble);
        let total: f64 = parts.iter().sum();
        csv.push_str(&format!(
            "{},{i},{},{},{},{},{},{total},{},3.1,{}\n",
            i / per_epoch,
            parts[0],
            parts[1],
            parts[2],
            parts[3],
            parts[4],
            0.01 * (1.0 - t),
            900_000_000 + i
        ));
    }
    std::fs::write(run.join("metrics.csv"), csv).unwrap();
    let mut epochs = String::from(
        "epoch,steps,mean_loss,loss_box_reg,loss_classifier,loss_mask,loss_objectness,loss_rpn_box_reg,lr,val_segm_ap,val_bbox_ap,seconds\n",
    );
    for e in 0..10 {
        let ap = 0.05 * e as f64;
        epochs.push_str(&format!(
            "{e},{per_epoch},1.0,0.1,0.1,0.1,0.1,0.1,0.01,{ap},{ap},60\n"
        ));
    }
    std::fs::write(run.join("epochs.csv"), epochs).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// This thread's time on a CPU and waiting for one (run queue), from
/// `/proc/thread-self/schedstat` (nanoseconds; `None` where the kernel has no schedstats).
fn sched_ns() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Frame times of one case: wall clock, and the GUI thread's on-CPU and run-queue time.
#[derive(Default)]
struct Frames {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    waiting: Vec<Duration>,
}

impl Frames {
    fn measure(&mut self, frame: impl FnOnce()) {
        let before = sched_ns();
        let t = Instant::now();
        frame();
        self.wall.push(t.elapsed());
        if let (Some(a), Some(b)) = (before, sched_ns()) {
            self.cpu.push(Duration::from_nanos(b.0.saturating_sub(a.0)));
            self.waiting
                .push(Duration::from_nanos(b.1.saturating_sub(a.1)));
        }
    }

    /// p50/p95/max of the wall time, then the shares of it the GUI thread spent on a CPU and
    /// waiting for one (summed: the kernel may count them in scheduler ticks, too coarse for
    /// single frames).
    fn report(self, what: &str) {
        let wall: Duration = self.wall.iter().sum();
        report(what, self.wall);
        if !self.cpu.is_empty() && !wall.is_zero() {
            let share = |v: &[Duration]| {
                100.0 * v.iter().sum::<Duration>().as_secs_f64() / wall.as_secs_f64()
            };
            println!(
                "{:<34} on a CPU {:>5.1} % of it, waiting for a CPU {:>5.1} %",
                "",
                share(&self.cpu),
                share(&self.waiting)
            );
        }
    }
}

fn report(what: &str, mut times: Vec<Duration>) {
    if times.is_empty() {
        println!("{what:<34} no frames");
        return;
    }
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<34} frames {:>4}  p50 {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.95)),
        ms(*times.last().unwrap()),
    );
}

fn main() {
    let n = env_usize("GUI_BENCH_IMAGES", 5000);
    let frames = env_usize("GUI_BENCH_FRAMES", 300);
    let replay_steps = env_usize("GUI_BENCH_REPLAY_STEPS", 30_000);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let root = build_project(dir.path(), n);
    let replay_id = "00000000-recorded";
    recorded_run(&root, replay_id, replay_steps);
    println!(
        "built a {n}-image project and a {replay_steps}-step recorded run in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut app = StudioApp::with_options(StudioOptions {
        project: Some(root),
        settings_path: dir.path().join("settings.json"),
        oi_cache_dir: dir.path().join("oi-cache"),
        start_tab: Some(Tab::Review),
        log_toasts: None,
    });
    app.settings_mut().device = DeviceChoice::Cpu;
    // Case 3's recipe: the smallest real run (64 px images, batch 1, no validation in reach,
    // no ImageNet download); it is stopped once measured.
    app.train = TrainPanel::new(TrainConfig {
        epochs: 1,
        batch_size: 1,
        image_size: Some(64),
        warmup_iters: 10,
        pretrained_backbone: false,
        max_iters: Some(100_000),
        ..TrainConfig::default()
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

    let mut ui_times = Frames::default();
    for _ in 0..frames {
        wheel(&mut h);
        ui_times.measure(|| h.step());
    }
    let (held, pending) = h.state().review.thumb_stats();
    println!("after {frames} scrolled frames: {held} thumbnail textures held, {pending} queued");
    ui_times.report("gallery scroll: ui pass");

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
            report("gallery scroll: render only", render_only);
            report("gallery scroll: ui + render", render_times);
        }
    }

    // 2. The Train tab with a long recorded run: frames while it is read back, then drawn.
    h.state_mut().set_tab(Tab::Train);
    let start = Instant::now();
    while h.state().train.runs().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no run list");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let ctx = h.ctx.clone();
    h.state_mut().train.select_run(&ctx, replay_id);
    let mut loading = Frames::default();
    let start = Instant::now();
    while h.state().train.history().total.len() < replay_steps {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the replay never came"
        );
        loading.measure(|| h.step());
    }
    println!(
        "{replay_steps} recorded steps in the plots after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    loading.report("train tab, reading the run back");
    let mut replayed = Frames::default();
    for _ in 0..frames {
        h.hover_at(egui::pos2(640.0, 300.0));
        replayed.measure(|| h.step());
    }
    replayed.report(&format!("train tab, {replay_steps}-step plots"));

    // 3. A real CPU run on the train-run thread, started with the panel's button.
    h.get_by_label("Start training").click_accesskit();
    let start = Instant::now();
    // The plots still show the recorded run until the click's frame starts the new one.
    while !h.state().train.running()
        || h.state().train.history().run_id == replay_id
        || h.state().train.history().steps < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the training run made no steps; notices: {:?}",
            h.state()
                .notices()
                .items
                .iter()
                .map(|n| &n.text)
                .collect::<Vec<_>>()
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "training: first steps after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let steps_before = h.state().train.history().steps;
    let t_run = Instant::now();
    // Frames at 60 Hz (as a vsynced window draws) so training steps land between them.
    let paced = |h: &mut Harness<'_, StudioApp>, into: &mut Frames| {
        let t = Instant::now();
        into.measure(|| h.step());
        std::thread::sleep(Duration::from_micros(16_667).saturating_sub(t.elapsed()));
    };
    let mut train_tab = Frames::default();
    for _ in 0..frames {
        h.hover_at(egui::pos2(640.0, 300.0));
        paced(&mut h, &mut train_tab);
    }
    h.state_mut().set_tab(Tab::Review);
    h.run_steps(3);
    let mut train_gallery = Frames::default();
    for _ in 0..frames {
        wheel(&mut h);
        paced(&mut h, &mut train_gallery);
    }
    let hist = h.state().train.history();
    println!(
        "training went on: {} steps in {:.1} s during the measured frames ({} loss points)",
        hist.steps.saturating_sub(steps_before),
        t_run.elapsed().as_secs_f64(),
        hist.total.len()
    );
    train_tab.report("training: train tab, live plots");
    train_gallery.report("training: gallery scroll");
    h.state_mut().set_tab(Tab::Train);
    h.state_mut().train.stop();
    let start = Instant::now();
    while h.state().train.running() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the run never stopped"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    // No torch thread may outlive main (libtorch at process exit).
    while !h.state().train.idle() {
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
}
