//! Deployment export, measured: file sizes of the ONNX and TorchScript exports of a bundle
//! beside the bundle itself, and CPU latency per image of the exported files in their runtimes
//! (onnxruntime's CPUExecutionProvider, `torch.jit.load`) against our in-process predictor
//! (`infer::Predictor::predict`, what `maskstudio predict` runs per image), on the same images and
//! thread count.
//!
//! Timed per image: the model call alone on an already decoded image, each side after one untimed
//! warm-up call on the first image. The exported graphs include torchvision's transform
//! (normalise, resize) and mask pasting; ours includes `infer::prepare` (the same normalise and
//! resize) and the mask placement, so the three do the same work. Decoding and RLE encoding are
//! outside the timing on every side. The Python sides run `tools/export_model.py --run-file`
//! (the embedded script, as the app writes it).
//!
//! Run: `cargo bench --bench deploy -- [--bundle DIR] [--size N] [--threads 2] [--rounds 3]`.
//! The sides run interleaved, `--rounds` times (`BENCH_ROUNDS`); each image keeps its fastest
//! round, the usual estimate when other processes share the CPU.
//! `--bundle` (`BENCH_BUNDLE`): the bundle to export; without it the sample project is created and
//! trained briefly here (MobileNetV2-FPN, 128 px, 45 steps, as tests/deploy.rs). `--size N`
//! (`BENCH_SIZE`): run a copy of the bundle whose `min_size` / `max_size` are N (same weights, a
//! larger input). Images: the sample project's six validation scenes, plus the first four
//! coco128 photos when `../shared/data` is there. Needs the reference venv (torch, torchvision,
//! onnx, onnxruntime: scripts/setup-venv.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use maskstudio::cancel::CancelToken;
use maskstudio::infer::Predictor;
use maskstudio::train::deploy::{self, DeployFormat};

/// Per-image seconds of one side, in image order.
type Latencies = Vec<f64>;

fn main() -> anyhow::Result<()> {
    let threads: i32 = common::num("threads", "2")?;
    let rounds: usize = common::num("rounds", "3")?;
    let size: Option<i64> = match common::opt("size", "").as_str() {
        "" => None,
        s => Some(s.parse().context("--size")?),
    };
    let tools = maskstudio::host::python_tools().map_err(|e| anyhow::anyhow!(e))?;
    println!("python tools: {}", tools.summary());
    let work = tempfile::tempdir()?;
    let project = work.path().join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {})?;
    let bundle = match common::opt("bundle", "").as_str() {
        "" => train_sample(&project, work.path())?,
        b => PathBuf::from(b),
    };
    let bundle = match size {
        Some(n) => resized_copy(&bundle, n, work.path())?,
        None => bundle,
    };
    let images = bench_images(&project)?;
    println!(
        "bundle {} ({}), {} images, {threads} threads",
        bundle.display(),
        input_size(&bundle)?,
        images.len()
    );

    let mut files = Vec::new();
    for format in DeployFormat::ALL {
        let out = work.path().join(format!("model.{}", format.extension()));
        let r = deploy::export_bundle(&bundle, format, &out, &CancelToken::default())?;
        println!(
            "exported {} in {:.1} s{}",
            format.label(),
            r.seconds,
            r.opset
                .map_or_else(String::new, |o| format!(" (opset {o})"))
        );
        files.push((format, out, r.bytes));
    }

    let bundle_size = bundle_bytes(&bundle)?;
    println!("\nfile sizes");
    println!("{:<22} {:>10} {:>8}", "", "MB", "× bundle");
    println!(
        "{:<22} {:>10.1} {:>8.3}",
        "bundle (3 files)",
        bundle_size as f64 / 1e6,
        1.0
    );
    for (format, _, bytes) in &files {
        println!(
            "{:<22} {:>10.1} {:>8.3}",
            format.label(),
            *bytes as f64 / 1e6,
            *bytes as f64 / bundle_size as f64
        );
    }

    let scripts = work.path().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    std::fs::write(scripts.join("export_model.py"), deploy::EXPORT_SCRIPT)?;
    std::fs::write(scripts.join("ref_train.py"), deploy::REF_TRAIN_SCRIPT)?;
    // Rounds interleave the three sides (ours, onnxruntime, TorchScript, then again), so load
    // from other processes falls on all of them; each image keeps its fastest round.
    let names = ["ours (infer)", "onnxruntime (CPU)", "torchscript"];
    let mut sides: Vec<(String, Latencies, Vec<usize>)> = names
        .iter()
        .map(|n| {
            (
                (*n).to_owned(),
                vec![f64::INFINITY; images.len()],
                Vec::new(),
            )
        })
        .collect();
    for round in 0..rounds {
        let mut runs = vec![ours_latency(&bundle, &images, threads)?];
        for (format, file, _) in &files {
            runs.push(exported_latency(
                &tools.python,
                &scripts,
                file,
                *format,
                &images,
                threads,
            )?);
        }
        for ((_, best, dets), (lat, d)) in sides.iter_mut().zip(runs) {
            for (b, l) in best.iter_mut().zip(&lat) {
                *b = b.min(*l);
            }
            *dets = d;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!(
        "\nlatency per image, ms, fastest of {rounds} rounds (detections with score >= 0.05 in \
         brackets)"
    );
    print!("{:<28}", "image");
    for (name, _, _) in &sides {
        print!(" {name:>22}");
    }
    println!();
    for (k, image) in images.iter().enumerate() {
        print!(
            "{:<28}",
            image.file_name().unwrap_or_default().to_string_lossy()
        );
        for (_, lat, dets) in &sides {
            print!(" {:>15.1} [{:>4}]", 1e3 * lat[k], dets[k]);
        }
        println!();
    }
    let ours_mean = mean(&sides[0].1);
    println!(
        "\n{:<22} {:>10} {:>10} {:>10}",
        "", "mean ms", "median ms", "× ours"
    );
    for (name, lat, _) in &sides {
        println!(
            "{name:<22} {:>10.1} {:>10.1} {:>10.2}",
            1e3 * mean(lat),
            1e3 * median(lat),
            mean(lat) / ours_mean
        );
    }
    Ok(())
}

/// The sample project trained briefly (the recipe of tests/deploy.rs); its last checkpoint.
fn train_sample(project: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let cfg = maskstudio::train::TrainConfig {
        image_size: Some(128),
        epochs: 5,
        batch_size: 2,
        lr: 0.01,
        warmup_iters: 10,
        clip_grad_norm: Some(10.0),
        eval_every: 0,
        device: maskstudio::host::DeviceChoice::Cpu,
        seed: 3,
        ..maskstudio::sample_project::train_config()
    };
    let started = Instant::now();
    let summary = maskstudio::train::train(
        project,
        &work.join("runs"),
        &cfg,
        &CancelToken::default(),
        &mut maskstudio::train::NullObserver,
    )?;
    println!(
        "trained the sample {} steps in {:.0} s",
        summary.iterations,
        started.elapsed().as_secs_f64()
    );
    summary.checkpoint.context("training wrote no checkpoint")
}

/// A copy of `bundle` whose model takes `n` px (`min_size` = `max_size` = n), same weights.
fn resized_copy(bundle: &Path, n: i64, work: &Path) -> anyhow::Result<PathBuf> {
    let out = work.join(format!("bundle-{n}"));
    std::fs::create_dir_all(&out)?;
    for f in ["model.safetensors", "labels.txt"] {
        std::fs::copy(bundle.join(f), out.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json"))?)?;
    spec["min_size"] = n.into();
    spec["max_size"] = n.into();
    std::fs::write(out.join("model.json"), serde_json::to_string_pretty(&spec)?)?;
    Ok(out)
}

fn input_size(bundle: &Path) -> anyhow::Result<String> {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json"))?)?;
    Ok(format!(
        "{} {}/{} px",
        spec["backbone"].as_str().unwrap_or("?"),
        spec["min_size"],
        spec["max_size"]
    ))
}

/// The sample's validation scenes (PNG) plus the first four coco128 photos when present.
fn bench_images(project: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut images: Vec<PathBuf> = (0..maskstudio::sample_project::SAMPLE_IMAGES)
        .filter(|&i| maskstudio::sample_project::sample_split(i) == "validation")
        .map(|i| project.join("images").join(format!("sample-{i:02}.png")))
        .collect();
    let coco = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/coco128-seg/images/train2017");
    if coco.is_dir() {
        let mut photos = maskstudio::infer::collect_images(&[coco])?;
        photos.sort();
        images.extend(photos.into_iter().take(4));
    } else {
        println!("(no ../shared/data: the sample scenes only)");
    }
    Ok(images)
}

/// Bytes of the bundle's own files (a run's checkpoint folder also holds the optimiser state).
fn bundle_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for f in maskstudio::train::export::BUNDLE_FILES {
        let path = dir.join(f);
        total += std::fs::metadata(&path)
            .with_context(|| format!("{path:?}"))?
            .len();
    }
    Ok(total)
}

/// Our predictor on decoded images: seconds per image and detections (score >= the bundle's
/// 0.05), after one untimed call.
fn ours_latency(
    bundle: &Path,
    images: &[PathBuf],
    threads: i32,
) -> anyhow::Result<(Latencies, Vec<usize>)> {
    tch::set_num_threads(threads);
    let predictor = Predictor::load(bundle, tch::Device::Cpu, None)?;
    let decoded: Vec<image::RgbImage> = images
        .iter()
        .map(|p| maskstudio::infer::read_image(p))
        .collect::<anyhow::Result<_>>()?;
    predictor.predict(&decoded[0])?;
    let mut lat = Vec::new();
    let mut dets = Vec::new();
    for img in &decoded {
        let t = Instant::now();
        let d = predictor.predict(img)?;
        lat.push(t.elapsed().as_secs_f64());
        dets.push(d.len());
    }
    Ok((lat, dets))
}

/// An exported file run by `export_model.py --run-file` (threshold 0.05, as the bundle's).
fn exported_latency(
    python: &Path,
    scripts: &Path,
    file: &Path,
    format: DeployFormat,
    images: &[PathBuf],
    threads: i32,
) -> anyhow::Result<(Latencies, Vec<usize>)> {
    let out = Command::new(python)
        .arg(scripts.join("export_model.py"))
        .arg("--run-file")
        .arg(file)
        .args([
            "--format",
            format.label(),
            "--warmup",
            "1",
            "--score-threshold",
            "0.05",
        ])
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--images")
        .args(images)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} run failed: {}",
        format.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let imgs = v["images"].as_array().context("no images in the answer")?;
    let lat = imgs
        .iter()
        .map(|i| i["seconds"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let dets = imgs
        .iter()
        .map(|i| i["detections"].as_array().map_or(0, Vec::len))
        .collect();
    Ok((lat, dets))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}
