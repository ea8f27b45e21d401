//! Box to mask (issue 18): milliseconds per box once the image's features are computed
//! (what the editor's Box tool costs after its first box on an image) next to a full
//! `Predictor::predict` of the same 640×480 image, for two bundles:
//!
//! - `mobilenet_320`: the `cpu-fast` preset's model (MobileNetV2-FPN, the longer side at 320);
//! - `resnet50_800`: the `quality` preset's model (ResNet-50-FPN at torchvision's 800/1333).
//!
//! Weights are random (timing does not depend on them, except a full predict's detection
//! count, printed; the bundle keeps torchvision's `box_score_thresh` 0.05). The image is the
//! first 640×480 COCO image under `../shared/data/coco128-seg` when present, else a generated
//! texture. Each box (a grid of sizes and places) is prompted `--repeats` times; the table
//! prints the median over all of them, the features (backbone + FPN, once per image) and the
//! full predict (median of `--predicts`), and the mean CPU time (all threads) of a box and of a
//! predict: on a machine busy with other work the wall times grow, the CPU times much less.
//!
//! Run: `cargo bench --bench box_mask` (`--configs mobilenet_320`, `--threads 2`, `--profile`
//! for the boxes' time per stage).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use maskstudio::infer::Predictor;
use maskstudio::model::bundle::{Bundle, ModelSpec};
use maskstudio::model::{Backbone, MaskRcnn};
use tch::{Device, nn};

/// Bundles to time: (name, backbone, min_size, max_size).
const CONFIGS: [(&str, Backbone, i64, i64); 2] = [
    ("mobilenet_320", Backbone::MobilenetV2, 320, 320),
    ("resnet50_800", Backbone::Resnet50, 800, 1333),
];
/// The image size of the target (≤ 150 ms per box for a 640×480 image).
const IMAGE: (u32, u32) = (640, 480);

/// Seconds of CPU this process has used (all threads: `utime + stime` of `/proc/self/stat`, in
/// `ticks` per second). On a busy machine wall time measures the others too; the CPU time of
/// the work bounds what its wall time would be on an idle one (no part of it sleeps).
fn cpu_seconds(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / ticks
}

/// Clock ticks per second (`getconf CLK_TCK`; Linux's usual 100 when it cannot be asked).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The first 640×480 COCO128 image, else a generated texture with a few blobs.
fn test_image() -> (image::RgbImage, String) {
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128-seg/images/train2017");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if let Ok(img) = maskstudio::infer::read_image(&f)
            && img.dimensions() == IMAGE
        {
            return (img, f.display().to_string());
        }
    }
    let img = image::RgbImage::from_fn(IMAGE.0, IMAGE.1, |x, y| {
        let (xf, yf) = (f64::from(x), f64::from(y));
        let blob = ((xf - 220.0).powi(2) + (yf - 200.0).powi(2)).sqrt() < 90.0
            || ((xf - 470.0).powi(2) + (yf - 300.0).powi(2)).sqrt() < 120.0;
        let v = 120.0 + 40.0 * (xf * 0.05).sin() * (yf * 0.03).cos();
        if blob {
            image::Rgb([230, 140, 40])
        } else {
            image::Rgb([v as u8, (v * 0.9) as u8, 90])
        }
    });
    (img, "generated 640×480 texture".to_owned())
}

/// A random bundle of `backbone` at the given sizes, 91 classes, written to `dir`.
fn write_bundle(dir: &Path, backbone: Backbone, min: i64, max: i64) -> anyhow::Result<()> {
    let mut spec = ModelSpec::new(backbone, 91);
    spec.min_size = Some(min);
    spec.max_size = Some(max);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config())?;
    let labels: Vec<String> = (1..91).map(|k| format!("class_{k}")).collect();
    Bundle::write(dir, &spec, &labels, &vs)?;
    Ok(())
}

/// Boxes of three sizes at three places each (`[x1, y1, x2, y2]` in image pixels).
fn boxes() -> Vec<[f32; 4]> {
    let (w, h) = (IMAGE.0 as f32, IMAGE.1 as f32);
    let mut out = Vec::new();
    for side in [48.0, 140.0, 320.0] {
        for (cx, cy) in [(0.3, 0.4), (0.6, 0.5), (0.5, 0.7)] {
            let (x, y) = (cx * w, cy * h);
            out.push([
                (x - side / 2.0).max(0.0),
                (y - side * 0.4).max(0.0),
                (x + side / 2.0).min(w),
                (y + side * 0.4).min(h),
            ]);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let threads: i32 = common::num("threads", "2")?;
    let repeats: usize = common::num("repeats", "3")?;
    let predicts: usize = common::num("predicts", "3")?;
    let wanted = common::opt("configs", "mobilenet_320,resnet50_800");
    tch::set_num_threads(threads);
    let (image, source) = test_image();
    println!("box to mask, {threads} threads, image: {source}");
    let ticks = clock_ticks();
    println!(
        "{:<15} {:>12} {:>14} {:>14} {:>12} {:>10} {:>14} {:>16}",
        "config",
        "ms per box",
        "features (ms)",
        "predict (ms)",
        "detections",
        "box/pred",
        "CPU ms per box",
        "CPU ms predict"
    );
    let tmp = tempfile::tempdir()?;
    for (name, backbone, min, max) in CONFIGS {
        if !wanted.split(',').any(|w| w.trim() == name) {
            continue;
        }
        let dir = tmp.path().join(name);
        write_bundle(&dir, backbone, min, max)?;
        let p = Predictor::load(&dir, Device::Cpu, None)?;
        // Warm-up: one predict and one box (allocator, oneDNN primitives).
        let detections = p.predict(&image)?.len();
        let mut predict_ms = Vec::new();
        let cpu = cpu_seconds(ticks);
        for _ in 0..predicts {
            let t = Instant::now();
            p.predict(&image)?;
            predict_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let predict_cpu = (cpu_seconds(ticks) - cpu) * 1e3 / predicts as f64;
        let t = Instant::now();
        let features = p.image_features(&image)?;
        let features_ms = t.elapsed().as_secs_f64() * 1e3;
        p.masks_for_boxes(&features, &boxes()[..1], None, 0.5)?;
        let mut box_ms = Vec::new();
        let profiling = common::flag("profile");
        maskstudio::profile::reset();
        maskstudio::profile::enable(profiling, false);
        let cpu = cpu_seconds(ticks);
        for b in boxes() {
            for _ in 0..repeats {
                let t = Instant::now();
                let d = p.masks_for_boxes(&features, &[b], None, 0.5)?;
                box_ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(d);
            }
        }
        let box_cpu = (cpu_seconds(ticks) - cpu) * 1e3 / box_ms.len() as f64;
        maskstudio::profile::enable(false, false);
        let (per_box, predict) = (median(box_ms.clone()), median(predict_ms));
        println!(
            "{name:<15} {per_box:>12.1} {features_ms:>14.1} {predict:>14.1} {detections:>12} {:>10.3} {box_cpu:>14.1} {predict_cpu:>16.1}",
            per_box / predict
        );
        let (lo, hi) = box_ms
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "{:<15} {} boxes x {repeats}: {lo:.1}..{hi:.1} ms",
            "",
            boxes().len()
        );
        if profiling {
            let stages = maskstudio::profile::snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.total))
                .collect();
            let wall = std::time::Duration::from_secs_f64(box_ms.iter().sum::<f64>() / 1e3);
            let title = format!("{name}: box prompts by stage");
            print!(
                "{}",
                maskstudio::profile::format_table(&stages, wall, box_ms.len(), &title)
            );
        }
    }
    Ok(())
}
