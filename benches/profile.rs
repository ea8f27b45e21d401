//! Where a training step's time goes, ours vs torchvision, stage by stage, in one run.
//!
//! Builds a project (`--set crowded`: seeded crowded scenes, 30–80 small occluding instances per
//! 256² image, trained at `--size 512`; `--set coco128`: the 128 COCO images of
//! `../shared/data/coco128-seg` with all their classes, at `--size 320`), then runs `--warmup`
//! plus `--steps` training steps of our trainer (`maskstudio::train::train`, MobileNetV2-FPN,
//! flip only, no validation) with `maskstudio::profile` recording, and the same steps of
//! torchvision's Mask R-CNN with `tools/ref_profile.py` (same model kwargs, images, batch size,
//! recipe and threads; wall-clock timers around the same stages). Warm-up steps are not
//! counted. Prints, per stage, milliseconds per step of each side and their ratio, images/s of
//! each, peak RSS of each, and torchvision's top operators from `torch.profiler`.
//!
//! Run: `cargo bench --bench profile [-- --set crowded|coco128 --size 512 --batch 2 --steps 20
//! --warmup 3 --images 24 --threads 2 --rpn-pre 1000 --rpn-post 500 --rois 256 --seed 0 --no-ref]`;
//! flags also read `BENCH_<NAME>`. Needs torch 2.13 + torchvision 0.28 + pycocotools in
//! `maskstudio::host::python()` for the reference side.

mod common;

use common::{flag, num, opt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::export::{self, ExportFormat};
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::store::Project;
use maskstudio::host::DeviceChoice;
use maskstudio::profile;
use maskstudio::train::config::{OptimizerKind, ScheduleKind};
use maskstudio::train::{AugmentConfig, TrainConfig, TrainEvent, TrainObserver};

struct Settings {
    set: String,
    size: u32,
    batch: usize,
    steps: usize,
    warmup: usize,
    images: usize,
    threads: i32,
    rpn_pre: i64,
    rpn_post: i64,
    rois: i64,
    seed: u64,
    data: PathBuf,
    reference: bool,
}

impl Settings {
    fn read() -> anyhow::Result<Self> {
        let set = opt("set", "crowded");
        let default_size = if set == "coco128" { "320" } else { "512" };
        let default_data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
        Ok(Self {
            size: num("size", default_size)?,
            batch: num("batch", "2")?,
            steps: num("steps", "20")?,
            warmup: num("warmup", "3")?,
            images: num("images", "24")?,
            threads: num("threads", "2")?,
            rpn_pre: num("rpn-pre", "1000")?,
            rpn_post: num("rpn-post", "500")?,
            rois: num("rois", "256")?,
            seed: num("seed", "0")?,
            data: PathBuf::from(opt("data", &default_data.to_string_lossy())),
            reference: !flag("no-ref"),
            set,
        })
    }
}

fn build_project(s: &Settings, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let project = dir.join("project");
    match s.set.as_str() {
        "crowded" => {
            maskstudio::bench::crowded::write_project(&project, s.images, 0, s.seed)?;
        }
        "coco128" => {
            let root = s.data.join("coco128-seg");
            if !root.is_dir() {
                println!("SKIP coco128: {} is missing", root.display());
                return Ok(None);
            }
            let set = formats::read(&root, Format::YoloSeg)
                .with_context(|| format!("reading {}", root.display()))?;
            Project::create_or_open(&project)?.import(
                &set,
                &root,
                &CancelToken::default(),
                &mut |_| {},
            )?;
        }
        other => anyhow::bail!("--set {other:?}: use crowded or coco128"),
    }
    Ok(Some(project))
}

/// Resets the profile after the warm-up steps and snapshots it after the counted ones.
struct Window {
    warmup: usize,
    end: usize,
    started: Option<Instant>,
    images: usize,
    result: Option<(Duration, BTreeMap<&'static str, profile::Stage>)>,
    batch: usize,
}

impl TrainObserver for Window {
    fn on_event(&mut self, e: &TrainEvent) {
        if let TrainEvent::Step { iter, total, .. } = e {
            let done = iter + 1;
            if done == self.warmup {
                profile::reset();
                self.started = Some(Instant::now());
            } else if done > self.warmup && done <= self.end {
                self.images += self.batch;
            }
            if done == self.end
                && let Some(t) = self.started
            {
                self.result = Some((t.elapsed(), profile::snapshot()));
            }
            if iter % 5 == 0 {
                eprintln!("  ours: step {iter}, loss {total:.3}");
            }
        }
    }
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Side {
    wall: Duration,
    images: usize,
    stages: BTreeMap<String, Duration>,
    peak_rss_mb: Option<f64>,
}

fn run_ours(s: &Settings, project: &Path, cfg: &TrainConfig, dir: &Path) -> anyhow::Result<Side> {
    tch::set_num_threads(s.threads);
    let mut window = Window {
        warmup: s.warmup,
        end: s.warmup + s.steps,
        started: None,
        images: 0,
        result: None,
        batch: s.batch,
    };
    profile::reset();
    profile::enable(true, false);
    let run = maskstudio::train::train(
        project,
        &dir.join("runs"),
        cfg,
        &CancelToken::default(),
        &mut window,
    );
    profile::enable(false, false);
    run?;
    let (wall, stages) = window
        .result
        .context("the run ended before the counted steps")?;
    Ok(Side {
        wall,
        images: window.images,
        stages: stages
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.total))
            .collect(),
        peak_rss_mb: peak_rss_mb(),
    })
}

struct Reference {
    side: Side,
    top_ops: Vec<(String, f64, f64)>,
}

fn run_reference(
    s: &Settings,
    project: &Path,
    cfg: &TrainConfig,
    dir: &Path,
) -> anyhow::Result<Reference> {
    let store = Project::open(project)?;
    let coco = dir.join("coco-train");
    export::write(
        &store.export_set(None)?,
        ExportFormat::Coco { polygons: false },
        &coco,
    )
    .context("exporting the training images as COCO")?;
    let num_classes = store.classes()?.len() as i64 + 1;
    let model_json = dir.join("model.json");
    std::fs::write(
        &model_json,
        serde_json::to_string_pretty(&cfg.model_config(num_classes)?)?,
    )?;
    let entry = maskstudio::host::pretrained("mobilenet_v2_imagenet")
        .context("mobilenet_v2_imagenet is not in the weights catalogue")?;
    let (weights, _) = maskstudio::host::fetch_pretrained(entry)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/ref_profile.py");
    let py = maskstudio::host::python();
    let out = Command::new(&py)
        .arg(&script)
        .arg("--train")
        .arg(&coco)
        .arg("--model-json")
        .arg(&model_json)
        .arg("--backbone-weights")
        .arg(&weights)
        .args(["--image-size", &s.size.to_string()])
        .args(["--batch-size", &s.batch.to_string()])
        .args(["--steps", &s.steps.to_string()])
        .args(["--warmup", &s.warmup.to_string()])
        .args(["--lr", &cfg.lr.to_string()])
        .args(["--warmup-iters", &cfg.warmup_iters.to_string()])
        .args(["--threads", &s.threads.to_string()])
        .args(["--seed", &s.seed.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    let v = common::reference_json(&script, &out)?;
    let stages = v["stages"]
        .as_object()
        .context("no stages")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), Duration::from_secs_f64(v.as_f64()?.max(0.0)))))
        .collect();
    let top_ops = v["top_ops"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r.get(0)?.as_str()?.to_owned(),
                        r.get(1)?.as_f64()?,
                        r.get(2)?.as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Reference {
        side: Side {
            wall: Duration::from_secs_f64(v["wall_seconds"].as_f64().context("no wall")?),
            images: v["images"].as_u64().context("no images")? as usize,
            stages,
            peak_rss_mb: v["peak_rss_mb"].as_f64(),
        },
        top_ops,
    })
}

/// Stage names in tree order: parents before their dotted children.
fn stage_order(a: &Side, b: Option<&Side>) -> Vec<String> {
    let mut names: Vec<String> = a.stages.keys().cloned().collect();
    if let Some(b) = b {
        names.extend(b.stages.keys().cloned());
    }
    names.sort();
    names.dedup();
    names
}

fn main() -> anyhow::Result<()> {
    let s = Settings::read()?;
    let dir = tempfile::Builder::new()
        .prefix("maskstudio-profile-")
        .tempdir()?;
    let Some(project) = build_project(&s, dir.path())? else {
        return Ok(());
    };
    let mut overrides = serde_json::Map::new();
    overrides.insert("rpn_pre_nms_top_n_train".into(), s.rpn_pre.into());
    overrides.insert("rpn_post_nms_top_n_train".into(), s.rpn_post.into());
    overrides.insert("box_batch_size_per_image".into(), s.rois.into());
    let cfg = TrainConfig {
        epochs: 1000,
        max_iters: Some(s.warmup + s.steps),
        batch_size: s.batch,
        image_size: Some(s.size),
        seed: s.seed,
        device: DeviceChoice::Cpu,
        augment: Some(Box::new(AugmentConfig::off())),
        hflip_prob: 0.5,
        optimizer: OptimizerKind::Sgd,
        schedule: ScheduleKind::Cosine,
        freeze_epochs: 0,
        clip_grad_norm: None,
        amp: false,
        eval_every: 0,
        val_fraction: 0.0,
        model_overrides: overrides,
        ..TrainConfig::default()
    };
    println!(
        "profile bench: set {}, {} px, batch {}, {} counted steps after {} warm-up, {} threads, RPN {}/{} (train pre/post NMS), {} RoIs/image",
        s.set, s.size, s.batch, s.steps, s.warmup, s.threads, s.rpn_pre, s.rpn_post, s.rois
    );
    let ours = run_ours(&s, &project, &cfg, dir.path())?;
    let reference = if s.reference {
        match run_reference(&s, &project, &cfg, dir.path()) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("torchvision: no numbers ({e:#})");
                None
            }
        }
    } else {
        None
    };
    let theirs = reference.as_ref().map(|r| &r.side);
    let per_step = |side: &Side, name: &str| {
        side.stages
            .get(name)
            .map(|d| 1e3 * d.as_secs_f64() / s.steps as f64)
    };
    println!(
        "\n{:<30} {:>12} {:>14} {:>9}",
        "stage (ms/step)", "ours", "torchvision", "tv/ours"
    );
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for name in stage_order(&ours, theirs) {
        let depth = name.matches('.').count();
        let leaf = name.rsplit('.').next().unwrap_or(&name);
        let label = format!("{}{}", "  ".repeat(depth), leaf);
        let a = per_step(&ours, &name);
        let b = theirs.and_then(|t| per_step(t, &name));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
            _ => "-".to_owned(),
        };
        println!("{label:<30} {:>12} {:>14} {:>9}", show(a), show(b), ratio);
    }
    let wall_ms = |side: &Side| 1e3 * side.wall.as_secs_f64() / s.steps as f64;
    let ips = |side: &Side| side.images as f64 / side.wall.as_secs_f64().max(1e-9);
    println!(
        "{:<30} {:>12.1} {:>14} {:>9}",
        "step (wall)",
        wall_ms(&ours),
        theirs.map_or_else(|| "-".to_owned(), |t| format!("{:.1}", wall_ms(t))),
        theirs.map_or_else(
            || "-".to_owned(),
            |t| format!("{:.2}x", wall_ms(t) / wall_ms(&ours))
        ),
    );
    println!(
        "\nimages/s: ours {:.3}{}",
        ips(&ours),
        theirs.map_or_else(String::new, |t| format!(
            ", torchvision {:.3}, ratio {:.2}x",
            ips(t),
            ips(&ours) / ips(t)
        ))
    );
    println!(
        "peak RSS: ours {} MB (whole bench process), torchvision {} MB",
        ours.peak_rss_mb
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0}")),
        theirs
            .and_then(|t| t.peak_rss_mb)
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0}"))
    );
    if let Some(r) = &reference
        && !r.top_ops.is_empty()
    {
        println!("\ntorchvision top operators (torch.profiler, self CPU ms/step, calls/step):");
        for (name, ms, calls) in &r.top_ops {
            println!("  {name:<44} {ms:>9.1} {calls:>8.0}");
        }
    }
    Ok(())
}
