//! Training throughput and validation AP of our trainer vs torchvision on the same data.
//!
//! Builds a project from a class subset of `../shared/data/coco128-seg` with a seeded
//! train/validation split stored in it, exports both splits as COCO, then trains
//! `maskstudio::train::train` (preset `cpu-fast`) and `tools/ref_train.py` (torchvision's Mask
//! R-CNN with the same model kwargs, ImageNet backbone file, images, split, epochs, batch size,
//! learning-rate schedule and thread count). Both final models are evaluated on the same
//! validation images (ours with the Rust COCOeval, the reference with pycocotools; they agree to
//! 1e-4). Prints images/s of each, the ratio, and val mask/box AP of each.
//!
//! Run: `cargo bench --bench train [-- --images 64 --size 320 --epochs 3 --batch 4 --threads 2
//! --warmup 20 --augment preset|off --classes person,car,... --data DIR --seed 0 --no-ref]`; every flag also
//! reads `BENCH_<NAME>` (e.g. `BENCH_IMAGES=128`). Needs torch 2.13, torchvision 0.28 and
//! pycocotools in `maskstudio::host::python()`.

mod common;

use common::{flag, num, opt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::export::{self, ExportFormat};
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::store::Project;
use maskstudio::host::DeviceChoice;
use maskstudio::rng::SplitMix64;
use maskstudio::train::config::{OptimizerKind, ScheduleKind};
use maskstudio::train::{AugmentConfig, TrainConfig, TrainEvent, TrainObserver};

const DEFAULT_CLASSES: &str = "person,car,dog,cat,cup,bowl";

struct Settings {
    images: usize,
    size: u32,
    epochs: usize,
    batch: usize,
    warmup: usize,
    threads: i32,
    seed: u64,
    val_fraction: f64,
    classes: Vec<String>,
    augment: String,
    data: PathBuf,
    reference: bool,
}

impl Settings {
    fn read() -> anyhow::Result<Self> {
        let default_data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        Ok(Self {
            images: num("images", "64")?,
            size: num("size", "320")?,
            epochs: num("epochs", "3")?,
            batch: num("batch", "4")?,
            warmup: num("warmup", "20")?,
            threads: num("threads", "2")?,
            seed: num("seed", "0")?,
            val_fraction: num("val-fraction", "0.2")?,
            classes: opt("classes", DEFAULT_CLASSES)
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            augment: opt("augment", "preset"),
            data: PathBuf::from(opt("data", &default_data.to_string_lossy())),
            reference: !flag("no-ref"),
        })
    }
}

/// Imports the first `n` coco128 images (by file name) holding one of `classes`, keeping only
/// those instances, with a seeded `validation` split stored in the project.
fn build_project(s: &Settings, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = s.data.join("coco128-seg");
    let mut set = formats::read(&root, Format::YoloSeg)
        .with_context(|| format!("reading {}", root.display()))?;
    set.classes.retain(|c| s.classes.contains(&c.name));
    anyhow::ensure!(
        set.classes.len() == s.classes.len(),
        "some of {:?} are not coco128 classes",
        s.classes
    );
    set.images.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    for image in &mut set.images {
        image.instances.retain(|i| s.classes.contains(&i.class));
    }
    set.images.retain(|i| !i.instances.is_empty());
    anyhow::ensure!(
        set.images.len() >= s.images,
        "only {} coco128 images hold {:?}",
        set.images.len(),
        s.classes
    );
    set.images.truncate(s.images);
    let mut order: Vec<usize> = (0..set.images.len()).collect();
    SplitMix64::new(s.seed ^ 0x0062_656e_6368).shuffle(&mut order);
    let n_val = ((s.images as f64) * s.val_fraction).round() as usize;
    for (rank, &k) in order.iter().enumerate() {
        set.images[k].split = Some(if rank < n_val { "validation" } else { "train" }.to_owned());
    }
    let project = dir.join("project");
    Project::create_or_open(&project)?.import(&set, &root, &CancelToken::default(), &mut |_| {})?;
    Ok(project)
}

/// Step timings from the event stream: a step's time is the gap since the previous event, so
/// checkpoint writes and validation between epochs are not counted.
#[derive(Default)]
struct Timer {
    last: Option<Instant>,
    step_seconds: f64,
    steps: usize,
    epoch_losses: Vec<f64>,
    val_ap: Vec<(Option<f64>, Option<f64>)>,
}

impl TrainObserver for Timer {
    fn on_event(&mut self, e: &TrainEvent) {
        let now = Instant::now();
        match e {
            TrainEvent::Step { iter, total, .. } => {
                if let Some(t) = self.last {
                    self.step_seconds += (now - t).as_secs_f64();
                }
                self.steps += 1;
                if iter % 10 == 0 {
                    eprintln!("  ours: step {iter}, loss {total:.3}");
                }
            }
            TrainEvent::EpochEnd {
                epoch,
                mean_loss,
                val_segm_ap,
                val_bbox_ap,
                ..
            } => {
                eprintln!("  ours: epoch {epoch}: mean loss {mean_loss:.4}");
                self.epoch_losses.push(*mean_loss);
                self.val_ap.push((*val_segm_ap, *val_bbox_ap));
            }
            _ => {}
        }
        self.last = Some(Instant::now());
    }
}

struct Outcome {
    images_per_sec: f64,
    segm_ap: f64,
    bbox_ap: f64,
    final_loss: Option<f64>,
    seconds: f64,
}

fn run_ours(
    s: &Settings,
    project: &Path,
    cfg: &TrainConfig,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    tch::set_num_threads(s.threads);
    let mut timer = Timer::default();
    let started = Instant::now();
    let summary = maskstudio::train::train(
        project,
        &dir.join("runs"),
        cfg,
        &CancelToken::default(),
        &mut timer,
    )?;
    let wall = started.elapsed().as_secs_f64();
    let bundle = summary.checkpoint.context("our run wrote no checkpoint")?;
    let predictor = maskstudio::infer::Predictor::load(&bundle, tch::Device::Cpu, None)?;
    let project = Project::open(project)?;
    let eval = maskstudio::eval::project::evaluate_project(
        &project,
        &predictor,
        Some("validation"),
        &mut |_, _| {},
    )?;
    let train_images = project.export_set(Some("train"))?.images.len();
    let seen = (train_images * cfg.epochs) as f64;
    Ok(Outcome {
        images_per_sec: seen / timer.step_seconds.max(1e-9),
        segm_ap: eval.segm.stats[0],
        bbox_ap: eval.bbox.stats[0],
        final_loss: summary.final_loss,
        seconds: wall,
    })
}

fn run_reference(
    s: &Settings,
    project: &Path,
    cfg: &TrainConfig,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    let store = Project::open(project)?;
    let (train_dir, val_dir) = (dir.join("coco-train"), dir.join("coco-val"));
    for (split, out) in [("train", &train_dir), ("validation", &val_dir)] {
        let set = store.export_set(Some(split))?;
        export::write(&set, ExportFormat::Coco { polygons: false }, out)
            .with_context(|| format!("exporting {split}"))?;
    }
    let num_classes = store.classes()?.len() as i64 + 1;
    let model_json = dir.join("model.json");
    std::fs::write(
        &model_json,
        serde_json::to_string_pretty(&cfg.model_config(num_classes)?)?,
    )?;
    let entry = maskstudio::host::pretrained("mobilenet_v2_imagenet")
        .context("mobilenet_v2_imagenet is not in the weights catalogue")?;
    let (weights, _) = maskstudio::host::fetch_pretrained(entry)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/ref_train.py");
    let py = maskstudio::host::python();
    let started = Instant::now();
    let out = Command::new(&py)
        .arg(&script)
        .arg("--train")
        .arg(&train_dir)
        .arg("--val")
        .arg(&val_dir)
        .arg("--model-json")
        .arg(&model_json)
        .arg("--backbone-weights")
        .arg(&weights)
        .args(["--epochs", &cfg.epochs.to_string()])
        .args(["--batch-size", &cfg.batch_size.to_string()])
        .args(["--image-size", &cfg.resolved_image_size().to_string()])
        .args(["--lr", &cfg.lr.to_string()])
        .args(["--momentum", &cfg.momentum.to_string()])
        .args(["--weight-decay", &cfg.weight_decay.to_string()])
        .args(["--warmup-iters", &cfg.warmup_iters.to_string()])
        .args(["--warmup-factor", &cfg.warmup_factor.to_string()])
        .args(["--hflip-prob", &cfg.hflip_prob.to_string()])
        .args(["--threads", &s.threads.to_string()])
        .args(["--seed", &cfg.seed.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    let v = common::reference_json(&script, &out)?;
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    Ok(Outcome {
        images_per_sec: f("images_per_sec").context("no images_per_sec")?,
        segm_ap: f("val_segm_ap").context("no val_segm_ap")?,
        bbox_ap: f("val_bbox_ap").context("no val_bbox_ap")?,
        final_loss: f("final_loss"),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn main() -> anyhow::Result<()> {
    let s = Settings::read()?;
    if !s.data.join("coco128-seg").is_dir() {
        eprintln!(
            "SKIP: {} is missing (pass --data DIR or BENCH_DATA)",
            s.data.join("coco128-seg").display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let project = build_project(&s, dir.path())?;
    let augment = match s.augment.as_str() {
        "preset" => None,
        "off" => Some(Box::new(AugmentConfig::off())),
        other => anyhow::bail!("--augment {other:?}: use preset or off"),
    };
    let cfg = TrainConfig {
        epochs: s.epochs,
        batch_size: s.batch,
        warmup_iters: s.warmup,
        image_size: Some(s.size),
        seed: s.seed,
        device: DeviceChoice::Cpu,
        augment,
        // tools/ref_train.py implements exactly this recipe: SGD with momentum and weight decay,
        // linear warm-up then cosine to 0, no freezing, clipping or mixed precision. Validation
        // runs once, after training, for both.
        optimizer: OptimizerKind::Sgd,
        schedule: ScheduleKind::Cosine,
        freeze_epochs: 0,
        clip_grad_norm: None,
        amp: false,
        eval_every: 0,
        ..TrainConfig::default()
    };
    println!(
        "train bench: {} coco128 images ({}), {} px, {} epochs, batch {}, warm-up {} steps, {} threads, augment {}",
        s.images,
        s.classes.join(","),
        s.size,
        s.epochs,
        s.batch,
        s.warmup,
        s.threads,
        s.augment
    );
    let ours = run_ours(&s, &project, &cfg, dir.path())?;
    println!(
        "ours:        {:7.3} images/s  val mask AP {:.4}  box AP {:.4}  last-epoch loss {:.4}  ({:.0} s total)",
        ours.images_per_sec,
        ours.segm_ap,
        ours.bbox_ap,
        ours.final_loss.unwrap_or(f64::NAN),
        ours.seconds
    );
    if !s.reference {
        return Ok(());
    }
    match run_reference(&s, &project, &cfg, dir.path()) {
        Ok(r) => {
            println!(
                "torchvision: {:7.3} images/s  val mask AP {:.4}  box AP {:.4}  last-epoch loss {:.4}  ({:.0} s total)",
                r.images_per_sec,
                r.segm_ap,
                r.bbox_ap,
                r.final_loss.unwrap_or(f64::NAN),
                r.seconds
            );
            println!(
                "ratio (ours / torchvision): {:.2}x images/s; mask AP {:+.4}, box AP {:+.4}",
                ours.images_per_sec / r.images_per_sec,
                ours.segm_ap - r.segm_ap,
                ours.bbox_ap - r.bbox_ap
            );
        }
        Err(e) => println!("torchvision: no numbers ({e:#})"),
    }
    Ok(())
}
