//! Whole-folder prediction, ours vs torchvision 0.28, decode included on both sides, same
//! weights and thread count:
//!
//! - (a) MobileNetV2-FPN (ImageNet backbone from the weights catalogue, random heads), min_size
//!   512 / max_size 853 (torchvision's 800/1333 ratio), 12 COCO images;
//! - (b) ResNet-50-FPN at 800/1333 on 6 COCO images: torchvision's COCO Mask R-CNN file when it
//!   is in the weights folder, else random initialisation;
//! - (c) one 12-megapixel JPEG (a COCO image upscaled to 4000x3000 into a temp dir), ours only,
//!   for peak memory.
//!
//! Both sides use `box_score_thresh = 0` and `box_detections_per_img = 100` (so every image
//! yields 100 detections with random heads) and threshold the masks at 0.5. Ours runs the code
//! of `maskstudio predict` without writing files: `Predictor::load` of a bundle, the
//! `predict-decode` decode-ahead thread (`infer::pipeline`) feeding `predict_prepared`, and
//! `CocoResults::add` (mask RLEs); `sequential` is the same without the decoder thread (decode,
//! then `Predictor::predict`). torchvision: PIL open + `convert("RGB")` + `to_tensor`, the
//! model, `masks > 0.5`. Each side runs in its own child process (peak memory: our `VmHWM`,
//! Python's `VmHWM`) after one warm-up image that is not timed.
//!
//! Run: `cargo bench --bench predict`. Needs torch 2.13 + torchvision 0.28 + safetensors + PIL
//! in the Python of `maskstudio::host::python()`, and the images under
//! `../shared/data/coco128-seg/images/train2017` (`PREDICT_BENCH_IMAGES` overrides).
//! `BENCH_THREADS` (default 2) sets `tch::set_num_threads` / `torch.set_num_threads`;
//! `PREDICT_BENCH_MODES` picks our modes (`pipeline,sequential`; a mode may repeat, runs
//! interleave in the order given); `PREDICT_BENCH_CONFIGS` picks configurations
//! (`mobilenet_512,resnet50_800,12mp`); `PREDICT_BENCH_BASELINE=<a
//! predict bench binary built from an earlier tree>` adds its `sequential` child as `baseline`
//! rows in the same run (how the before/after numbers of the decode-ahead change were taken).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use maskstudio::infer::export::CocoResults;
use maskstudio::infer::pipeline::DecodeAhead;
use maskstudio::infer::{Predictor, collect_images, read_image};
use maskstudio::model::bundle::{Bundle, ModelSpec};
use maskstudio::model::weights::{self, PartialLoad};
use maskstudio::model::{Backbone, MaskRcnn};
use tch::{Device, nn};

/// The environment variable that makes this binary a child running one side.
const CHILD_ENV: &str = "PREDICT_BENCH_CHILD";
/// A predict bench binary built from an earlier tree: its `sequential` child runs as the
/// `baseline` rows (same bundles, images and run), e.g. the tree before decode-ahead.
const BASELINE_ENV: &str = "PREDICT_BENCH_BASELINE";
/// Our modes to run, comma-separated (default `pipeline,sequential`, plus `baseline` when
/// [`BASELINE_ENV`] is set).
const MODES_ENV: &str = "PREDICT_BENCH_MODES";
/// Configurations to run, comma-separated names (default: all, `12mp` included).
const CONFIGS_ENV: &str = "PREDICT_BENCH_CONFIGS";
/// Set to print our time per stage (`maskstudio::profile`) per image on stderr.
const PROFILE_ENV: &str = "PREDICT_BENCH_PROFILE";

const PY: &str = r#"
import json, resource, sys, time
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
from torchvision.ops import misc as misc_nn_ops
from torchvision.transforms.functional import to_tensor

backbone, weights, min_size, max_size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
paths = sys.argv[6:]
torch.set_num_threads(threads)
if backbone == "resnet50":
    bb = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
else:
    bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4], weights=None,
                            norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
model = MaskRCNN(bb, num_classes=91, min_size=min_size, max_size=max_size,
                 box_score_thresh=0.0, box_detections_per_img=100)
model.load_state_dict(load_file(weights), strict=True)
model.eval()

def one(path):
    image = to_tensor(Image.open(path).convert("RGB"))
    out = model([image])[0]
    masks = out["masks"] > 0.5
    return len(out["boxes"]), int(masks.shape[0])

with torch.no_grad():
    one(paths[0])
    t = time.perf_counter()
    dets = [one(p)[0] for p in paths]
    secs = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries the parent's peak at fork into a child's ru_maxrss.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"img_s": len(paths) / secs, "detections": dets,
                  "peak_kb": hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

/// One configuration: backbone, sizes, images.
struct Config {
    name: &'static str,
    backbone: Backbone,
    min_size: i64,
    max_size: i64,
    images: usize,
}

/// `VmHWM` (peak resident set) of this process in kB.
fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes the bundle of `cfg` (91 classes, score threshold 0, 100 detections) into `dir`.
fn write_bundle(cfg: &Config, dir: &Path) -> anyhow::Result<()> {
    let mut spec = ModelSpec::new(cfg.backbone, 91);
    spec.min_size = Some(cfg.min_size);
    spec.max_size = Some(cfg.max_size);
    spec.box_score_thresh = Some(0.0);
    spec.box_detections_per_img = Some(100);
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config())?;
    match cfg.backbone {
        Backbone::MobilenetV2 => {
            let entry = maskstudio::host::pretrained("mobilenet_v2_imagenet")
                .ok_or_else(|| anyhow::anyhow!("mobilenet_v2_imagenet is not catalogued"))?;
            let (path, _) = maskstudio::host::fetch_pretrained(entry)?;
            let tensors = maskstudio::model::checkpoint::read_checkpoint(&path)?;
            let tensors = weights::remap_imagenet(tensors, "backbone.body.");
            weights::load_partial(&mut vs, &tensors, PartialLoad::BackboneOnly)?;
            println!("  {}: ImageNet backbone {path:?}, random heads", cfg.name);
        }
        Backbone::Resnet50 => {
            let coco = maskstudio::host::pretrained(maskstudio::host::COCO_MASKRCNN)
                .map(maskstudio::host::weights_path)
                .filter(|p| p.is_file());
            if let Some(path) = coco {
                let tensors = maskstudio::model::checkpoint::read_checkpoint(&path)?;
                weights::load_strict(&mut vs, &tensors)?;
                println!("  {}: COCO weights {path:?}", cfg.name);
            } else {
                println!(
                    "  {}: no COCO Mask R-CNN file in the weights folder: random weights",
                    cfg.name
                );
            }
        }
    }
    let labels: Vec<String> = (1..91).map(|k| format!("c{k}")).collect();
    Bundle::write(dir, &spec, &labels, &vs)?;
    Ok(())
}

/// Ours, as `maskstudio predict` runs a folder (without writing files): the decode-ahead
/// thread feeds the model. Returns detections per image.
fn run_pipeline(p: &Predictor, paths: &[PathBuf]) -> anyhow::Result<Vec<usize>> {
    let mut results = CocoResults::default();
    let mut dets = Vec::new();
    let mut decoder = DecodeAhead::spawn(
        "predict-decode",
        paths.to_vec(),
        p.prepare_params().clone(),
        false,
    )?;
    while let Some((path, decoded)) = decoder.next_item()? {
        let d = decoded?;
        let detections = maskstudio::profile::timed("predict", || p.predict_prepared(&d.prepared))?;
        maskstudio::profile::timed("results", || {
            results.add(&path.display().to_string(), d.size.0, d.size.1, &detections)
        });
        dets.push(detections.len());
    }
    Ok(dets)
}

/// Ours without the decoder thread: decode, then `Predictor::predict`, one image at a time.
fn run_sequential(p: &Predictor, paths: &[PathBuf]) -> anyhow::Result<Vec<usize>> {
    let mut results = CocoResults::default();
    let mut dets = Vec::new();
    for path in paths {
        let image = read_image(path)?;
        let detections = p.predict(&image)?;
        results.add(
            &path.display().to_string(),
            image.width(),
            image.height(),
            &detections,
        );
        dets.push(detections.len());
    }
    Ok(dets)
}

/// The child: `mode bundle threads image...` -> one JSON line.
fn child(spec: &str) -> anyhow::Result<()> {
    let args: Vec<&str> = spec.split('\n').collect();
    let (mode, bundle, threads) = (args[0], Path::new(args[1]), args[2].parse::<i32>()?);
    let paths: Vec<PathBuf> = args[3..].iter().map(PathBuf::from).collect();
    tch::set_num_threads(threads);
    let before_kb = vm_hwm_kb();
    let p = Predictor::load(bundle, Device::Cpu, None)?;
    run_sequential(&p, &paths[..1])?; // warm-up
    let profiling = std::env::var_os(PROFILE_ENV).is_some();
    maskstudio::profile::enable(profiling, false);
    let t = Instant::now();
    let dets = match mode {
        "pipeline" => run_pipeline(&p, &paths)?,
        _ => run_sequential(&p, &paths)?,
    };
    let secs = t.elapsed().as_secs_f64();
    if profiling {
        maskstudio::profile::enable(false, false);
        let stages = maskstudio::profile::snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.total))
            .collect();
        eprintln!(
            "{}",
            maskstudio::profile::format_table(
                &stages,
                t.elapsed(),
                paths.len(),
                &format!("ours ({mode}), per image:")
            )
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "img_s": paths.len() as f64 / secs,
            "detections": dets,
            "peak_kb": vm_hwm_kb(),
            "start_kb": before_kb,
        })
    );
    Ok(())
}

fn run_json(cmd: &mut Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if std::env::var_os(PROFILE_ENV).is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    Ok(serde_json::from_str(line)?)
}

/// Runs our side in a child: `mode` is `pipeline`, `sequential`, or `baseline` (the
/// `sequential` child of the bench binary named by [`BASELINE_ENV`]).
fn ours(
    mode: &str,
    bundle: &Path,
    threads: i32,
    paths: &[PathBuf],
) -> anyhow::Result<serde_json::Value> {
    let (exe, child_mode) = match mode {
        "baseline" => (
            PathBuf::from(std::env::var_os(BASELINE_ENV).unwrap_or_default()),
            "sequential",
        ),
        _ => (std::env::current_exe()?, mode),
    };
    let mut spec = vec![
        child_mode.to_owned(),
        bundle.display().to_string(),
        threads.to_string(),
    ];
    spec.extend(paths.iter().map(|p| p.display().to_string()));
    run_json(
        Command::new(exe)
            .arg("--bench")
            .env(CHILD_ENV, spec.join("\n")),
        &format!("ours ({mode})"),
    )
}

fn mib(v: &serde_json::Value) -> f64 {
    v["peak_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0
}

fn row(name: &str, side: &str, v: &serde_json::Value, tv_img_s: f64) {
    let img_s = v["img_s"].as_f64().unwrap_or(f64::NAN);
    let dets: Vec<u64> = v["detections"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    let per = dets.iter().sum::<u64>() as f64 / dets.len().max(1) as f64;
    println!(
        "{name:<14} {side:<18} {img_s:>7.3} img/s  ratio {:>5.2}  {per:>5.1} det/img  peak {:>7.0} MiB",
        img_s / tv_img_s,
        mib(v)
    );
}

fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    // `cargo test --all-targets` runs harness-less benches without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("predict bench: run with `cargo bench --bench predict`");
        return Ok(());
    }
    let threads: i32 = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let image_dir = std::env::var_os("PREDICT_BENCH_IMAGES").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/data/coco128-seg/images/train2017")
        },
        PathBuf::from,
    );
    let all = collect_images(std::slice::from_ref(&image_dir))?;
    anyhow::ensure!(all.len() >= 12, "fewer than 12 images under {image_dir:?}");
    let mut modes: Vec<String> = std::env::var(MODES_ENV)
        .unwrap_or_else(|_| "pipeline,sequential".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    if std::env::var_os(BASELINE_ENV).is_some() && !modes.iter().any(|m| m == "baseline") {
        modes.push("baseline".to_owned());
    }
    let tmp = tempfile::tempdir()?;
    let python = maskstudio::host::python();
    println!(
        "whole-folder predict, {threads} threads, decode included, 1 warm-up image (ratio = ours / torchvision img/s; > 1: ours faster)"
    );
    let configs = [
        Config {
            name: "mobilenet_512",
            backbone: Backbone::MobilenetV2,
            min_size: 512,
            max_size: 853,
            images: 12,
        },
        Config {
            name: "resnet50_800",
            backbone: Backbone::Resnet50,
            min_size: 800,
            max_size: 1333,
            images: 6,
        },
    ];
    let mut mobilenet_bundle = None;
    let wanted =
        |name: &str| std::env::var(CONFIGS_ENV).map_or(true, |v| v.split(',').any(|c| c == name));
    for cfg in configs
        .iter()
        .filter(|c| wanted(c.name) || (wanted("12mp") && c.name == "mobilenet_512"))
    {
        let bundle = tmp.path().join(cfg.name);
        if !wanted(cfg.name) {
            write_bundle(cfg, &bundle)?;
            mobilenet_bundle = Some(bundle);
            continue;
        }
        write_bundle(cfg, &bundle)?;
        let paths = &all[..cfg.images];
        let tv = run_json(
            Command::new(&python)
                .args(["-c", PY])
                .arg(match cfg.backbone {
                    Backbone::MobilenetV2 => "mobilenet_v2",
                    Backbone::Resnet50 => "resnet50",
                })
                .arg(bundle.join("model.safetensors"))
                .args([
                    cfg.min_size.to_string(),
                    cfg.max_size.to_string(),
                    threads.to_string(),
                ])
                .args(paths),
            "torchvision",
        )?;
        let tv_img_s = tv["img_s"].as_f64().unwrap_or(f64::NAN);
        for mode in &modes {
            let v = ours(mode, &bundle, threads, paths)?;
            row(cfg.name, &format!("ours ({mode})"), &v, tv_img_s);
        }
        row(cfg.name, "torchvision", &tv, tv_img_s);
        if cfg.backbone == Backbone::MobilenetV2 {
            mobilenet_bundle = Some(bundle);
        }
    }

    // (c) 12 megapixels: a COCO image upscaled to 4000x3000, JPEG.
    let big = tmp.path().join("12mp.jpg");
    let source = read_image(&all[0])?;
    image::imageops::resize(&source, 4000, 3000, image::imageops::FilterType::Triangle)
        .save(&big)?;
    if let Some(bundle) = mobilenet_bundle.filter(|_| wanted("12mp")) {
        for mode in &modes {
            let v = ours(mode, &bundle, threads, &[big.clone(), big.clone()])?;
            println!(
                "12mp_4000x3000 ours ({mode:<10}) {:>7.3} img/s  peak RSS {:>7.0} MiB ({:.0} det)",
                v["img_s"].as_f64().unwrap_or(f64::NAN),
                mib(&v),
                v["detections"][0].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}
