//! The deployment export verified, not assumed (issue 19): a model trained here on the sample
//! project is exported through the CLI (`maskstudio export --model B --format onnx|torchscript`),
//! each file is run by its own runtime (onnxruntime's CPU provider / `torch.jit.load`, through
//! `tools/export_model.py --run-file`) on the same image files `maskstudio predict` reads with
//! the same bundle, and per image the detections above the threshold must agree: the same number,
//! boxes within [`BOX_TOL`] px, scores within [`SCORE_TOL`], mask IoU ≥ [`MIN_MASK_IOU`]
//! (matched by class, then box IoU). A detection whose score lies within [`SCORE_TOL`] of the
//! threshold may be found on one side only (the other side's score may fall just below it).
//!
//! The images: the sample project's six validation scenes (PNG) and, when `../shared/data` is
//! present, two coco128 photos. The photos are JPEGs: they are decoded once by our reader
//! (`infer::read_image`) and written as PNG, and both sides read that PNG, because PIL's JPEG
//! decoder and the image crate's give slightly different pixels; the comparison is of the
//! exported model, not of JPEG decoders.
//!
//! Also: a missing venv, a folder that is no bundle, a bundle with broken weights and a cancel
//! each end with an error that says what happened, and leave no file behind.
//!
//! Needs the reference Python venv (torch, torchvision, onnx, onnxruntime; scripts/setup-venv.sh);
//! without it the venv-dependent tests skip with a message (CI=true fails them instead).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::rle::Rle;
use maskstudio::host::DeviceChoice;
use maskstudio::train::deploy::{DeployFormat, export_bundle};
use maskstudio::train::{NullObserver, TrainConfig};

/// Detections compared: score at least this (our `predict --score-thresh`, the run mode's
/// `--score-threshold`). The briefly trained model scores its true objects 0.35–0.85.
const THRESHOLD: f64 = 0.3;
/// Largest coordinate difference of a matched box, pixels.
const BOX_TOL: f64 = 1.0;
/// Largest score difference of a matched detection.
const SCORE_TOL: f64 = 1e-3;
/// Smallest mask IoU (probability ≥ 0.5 on both sides) of a matched detection.
const MIN_MASK_IOU: f64 = 0.98;
/// Box IoU two detections of one class need to be taken as the same object.
const MATCH_IOU: f64 = 0.5;
/// Matched detections each format must show over all images, so no vacuous pass.
const MIN_MATCHED: usize = 8;
/// Waiting for a partial file during the cancel test: a hang guard, not a speed check.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// The reference venv's tools, or `None` (skip) outside CI.
fn venv_or_skip() -> Option<&'static maskstudio::host::PythonTools> {
    match maskstudio::host::python_tools() {
        Ok(tools) => Some(tools),
        Err(why) if common::running_in_ci() => panic!("CI=true but {why}"),
        Err(why) => {
            eprintln!("SKIP: {why}");
            None
        }
    }
}

fn maskstudio() -> Command {
    Command::new(env!("CARGO_BIN_EXE_maskstudio"))
}

/// Runs a command; panics with its output when it fails. Returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One detection as both sides report it.
#[derive(Debug, Clone)]
struct Det {
    label: i64,
    score: f64,
    /// x1, y1, x2, y2 in image pixels.
    box_xyxy: [f64; 4],
    mask: Rle,
}

fn rle_of(seg: &serde_json::Value) -> Rle {
    let size = &seg["size"];
    Rle::from_compressed(
        size[0].as_u64().unwrap() as u32,
        size[1].as_u64().unwrap() as u32,
        seg["counts"].as_str().unwrap(),
    )
    .unwrap()
}

/// `maskstudio predict`'s detections per image file name (its COCO results + images list).
fn predict(bundle: &Path, images: &[PathBuf], dir: &Path) -> Vec<(String, Vec<Det>)> {
    let json = dir.join("ours.json");
    let mut cmd = maskstudio();
    cmd.args(["predict", "--device", "cpu", "--score-thresh"])
        .arg(THRESHOLD.to_string())
        .arg("--model")
        .arg(bundle)
        .arg("--out-json")
        .arg(&json)
        .args(images);
    run_ok(&mut cmd);
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let listed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(maskstudio::infer::export::images_file_for(&json)).unwrap(),
    )
    .unwrap();
    let listed = listed["images"].as_array().unwrap();
    listed
        .iter()
        .map(|img| {
            let id = img["id"].as_i64().unwrap();
            let name = img["file_name"].as_str().unwrap();
            let dets = results
                .iter()
                .filter(|r| r["image_id"].as_i64() == Some(id))
                .map(|r| {
                    let b: Vec<f64> = serde_json::from_value(r["bbox"].clone()).unwrap();
                    Det {
                        label: r["category_id"].as_i64().unwrap(),
                        score: r["score"].as_f64().unwrap(),
                        box_xyxy: [b[0], b[1], b[0] + b[2], b[1] + b[3]],
                        mask: rle_of(&r["segmentation"]),
                    }
                })
                .collect();
            (file_name_of(Path::new(name)), dets)
        })
        .collect()
}

fn file_name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The exported file's detections per image file name (`export_model.py --run-file`).
fn run_exported(
    tools: &maskstudio::host::PythonTools,
    scripts: &Path,
    file: &Path,
    format: DeployFormat,
    images: &[PathBuf],
) -> Vec<(String, Vec<Det>)> {
    let mut cmd = Command::new(&tools.python);
    cmd.arg(scripts.join("export_model.py"))
        .arg("--run-file")
        .arg(file)
        .args([
            "--format",
            format.label(),
            "--threads",
            "2",
            "--warmup",
            "0",
        ])
        .arg("--score-threshold")
        .arg(THRESHOLD.to_string())
        .arg("--images")
        .args(images);
    let out: serde_json::Value = serde_json::from_str(run_ok(&mut cmd).trim()).unwrap();
    out["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let dets = img["detections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let b: Vec<f64> = serde_json::from_value(d["box"].clone()).unwrap();
                    Det {
                        label: d["label"].as_i64().unwrap(),
                        score: d["score"].as_f64().unwrap(),
                        box_xyxy: [b[0], b[1], b[2], b[3]],
                        mask: rle_of(&d["mask"]),
                    }
                })
                .collect();
            (
                file_name_of(Path::new(img["image"].as_str().unwrap())),
                dets,
            )
        })
        .collect()
}

fn box_iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter).max(1e-9)
}

/// Mask IoU; two empty masks agree (pycocotools would say 0).
fn mask_iou(a: &Rle, b: &Rle) -> f64 {
    if a.area() == 0 && b.area() == 0 {
        1.0
    } else {
        a.iou(b)
    }
}

/// Compares one image's detections; returns the number matched. Panics naming the image, the
/// format and the detection on any disagreement.
fn compare(what: &str, ours: &[Det], theirs: &[Det]) -> usize {
    let near_threshold = |d: &Det| (d.score - THRESHOLD).abs() <= SCORE_TOL;
    let mut taken = vec![false; ours.len()];
    let mut matched = 0;
    let mut order: Vec<&Det> = theirs.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    for t in order {
        let best = ours
            .iter()
            .enumerate()
            .filter(|(k, o)| !taken[*k] && o.label == t.label)
            .map(|(k, o)| (k, box_iou(&o.box_xyxy, &t.box_xyxy)))
            .filter(|&(_, iou)| iou >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((k, _)) = best else {
            assert!(
                near_threshold(t),
                "{what}: exported detection {t:?} has no counterpart in predict's {ours:?}"
            );
            continue;
        };
        taken[k] = true;
        let o = &ours[k];
        let box_diff = (0..4)
            .map(|i| (o.box_xyxy[i] - t.box_xyxy[i]).abs())
            .fold(0.0, f64::max);
        let iou = mask_iou(&o.mask, &t.mask);
        assert!(
            box_diff <= BOX_TOL,
            "{what}: boxes {:?} vs {:?} differ by {box_diff} px",
            o.box_xyxy,
            t.box_xyxy
        );
        assert!(
            (o.score - t.score).abs() <= SCORE_TOL,
            "{what}: scores {} vs {}",
            o.score,
            t.score
        );
        assert!(
            iou >= MIN_MASK_IOU,
            "{what}: mask IoU {iou} of the class {} detection at {:?}",
            o.label,
            o.box_xyxy
        );
        eprintln!(
            "{what}: class {} score {:.4} (Δ {:.1e}) box Δ {box_diff:.4} px mask IoU {iou:.4}",
            o.label,
            o.score,
            (o.score - t.score).abs()
        );
        matched += 1;
    }
    for (k, o) in ours.iter().enumerate() {
        assert!(
            taken[k] || near_threshold(o),
            "{what}: predict's detection {o:?} is missing from the exported model's {theirs:?}"
        );
    }
    matched
}

/// The sample project trained briefly (MobileNetV2-FPN at 128 px, 45 steps); its bundle.
fn trained_sample_bundle(dir: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
    let cfg = TrainConfig {
        image_size: Some(128),
        epochs: 5,
        batch_size: 2,
        lr: 0.01,
        warmup_iters: 10,
        clip_grad_norm: Some(10.0),
        eval_every: 0,
        device: DeviceChoice::Cpu,
        seed: 3,
        ..maskstudio::sample_project::train_config()
    };
    let started = Instant::now();
    let summary = maskstudio::train::train(
        &project,
        &dir.join("runs"),
        &cfg,
        &CancelToken::default(),
        &mut NullObserver,
    )
    .unwrap();
    eprintln!(
        "trained {} steps in {:.0} s, final loss {:?}",
        summary.iterations,
        started.elapsed().as_secs_f64(),
        summary.final_loss
    );
    (summary.checkpoint.expect("a last checkpoint"), project)
}

/// The images both sides read: the sample's validation scenes, and two coco128 photos
/// re-encoded as PNG by our decoder (see the module docs).
fn test_images(project: &Path, dir: &Path) -> Vec<PathBuf> {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let mut images = Vec::new();
    for index in 0..maskstudio::sample_project::SAMPLE_IMAGES {
        if maskstudio::sample_project::sample_split(index) == "validation" {
            let name = format!("sample-{index:02}.png");
            std::fs::copy(project.join("images").join(&name), folder.join(&name)).unwrap();
            images.push(folder.join(name));
        }
    }
    assert_eq!(images.len(), 6, "the sample's validation split changed");
    if let Some(data) = common::shared_data() {
        for stem in ["000000000009", "000000000025"] {
            let jpg = data
                .join("coco128-seg/images/train2017")
                .join(format!("{stem}.jpg"));
            let pixels = maskstudio::infer::read_image(&jpg).unwrap();
            let png = folder.join(format!("coco-{stem}.png"));
            pixels.save(&png).unwrap();
            images.push(png);
        }
    }
    images
}

#[test]
fn exported_onnx_and_torchscript_detect_what_predict_detects() {
    let Some(tools) = venv_or_skip() else { return };
    assert!(
        tools.onnx.is_some() && tools.onnxruntime.is_some(),
        "the venv lacks onnx or onnxruntime (scripts/setup-venv.sh installs them): {tools:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (bundle, project) = trained_sample_bundle(dir.path());
    let images = test_images(&project, dir.path());
    let ours = predict(&bundle, &images, dir.path());
    assert_eq!(ours.len(), images.len());

    // The run mode is the embedded script, exactly as the app writes it.
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("export_model.py"),
        maskstudio::train::deploy::EXPORT_SCRIPT,
    )
    .unwrap();
    std::fs::write(
        scripts.join("ref_train.py"),
        maskstudio::train::deploy::REF_TRAIN_SCRIPT,
    )
    .unwrap();

    for format in DeployFormat::ALL {
        let file = dir
            .path()
            .join("deploy")
            .join(format!("model.{}", format.extension()));
        let mut cmd = maskstudio();
        cmd.args(["export", "--format", format.label(), "--model"])
            .arg(&bundle)
            .arg("--out")
            .arg(&file);
        let printed = run_ok(&mut cmd);
        eprintln!("{}", printed.trim());
        let bytes = std::fs::metadata(&file).unwrap().len();
        assert!(bytes > 1_000_000, "{file:?} holds only {bytes} bytes");
        if format == DeployFormat::Onnx {
            assert!(printed.contains("opset 17"), "{printed}");
        }
        let theirs = run_exported(tools, &scripts, &file, format, &images);
        assert_eq!(theirs.len(), ours.len());
        let mut matched = 0;
        for ((name, o), (their_name, t)) in ours.iter().zip(&theirs) {
            assert_eq!(name, their_name, "images in another order");
            matched += compare(&format!("{} {name}", format.label()), o, t);
        }
        assert!(
            matched >= MIN_MATCHED,
            "{}: only {matched} detections above {THRESHOLD} over {} images",
            format.label(),
            images.len()
        );
        // Nothing temporary is left beside the file.
        let names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| file_name_of(&e.unwrap().path()))
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

/// A random-weights MobileNetV2 bundle (the export does not care what the weights learnt).
fn random_bundle(dir: &Path) -> PathBuf {
    use maskstudio::model::bundle::{Bundle, ModelSpec};
    use maskstudio::model::{Backbone, MaskRcnn};
    tch::manual_seed(7);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    spec.min_size = Some(96);
    spec.max_size = Some(128);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let bundle = dir.join("bundle");
    Bundle::write(&bundle, &spec, &["a".to_owned(), "b".to_owned()], &vs).unwrap();
    bundle
}

#[test]
fn a_missing_venv_is_named_with_the_way_to_make_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty_cache = dir.path().join("cache");
    let out = dir.path().join("model.onnx");
    // The child resolves the venv from MASKSTUDIO_CACHE (host::venv_dir), which is empty here.
    let output = maskstudio()
        .env("MASKSTUDIO_CACHE", &empty_cache)
        .env_remove(maskstudio::host::PYTHON_ENV)
        .args(["export", "--format", "onnx", "--model"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    let venv = empty_cache.join("torch-2.13.0/venv");
    assert!(
        err.contains(&format!("no venv at {}", venv.display())),
        "{err}"
    );
    assert!(err.contains("scripts/setup-venv.sh"), "{err}");
    assert!(err.contains("onnxruntime"), "{err}");
    assert!(!out.exists());

    let doctor = maskstudio()
        .env("MASKSTUDIO_CACHE", &empty_cache)
        .env_remove(maskstudio::host::PYTHON_ENV)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("python tools: unavailable (no venv at"),
        "{text}"
    );
}

#[test]
fn a_folder_that_is_no_bundle_and_broken_weights_are_named() {
    let Some(_) = venv_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").join("model.pt");
    // No model.json: refused before Python starts.
    let err = export_bundle(
        dir.path(),
        DeployFormat::TorchScript,
        &out,
        &CancelToken::default(),
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("model.json"), "{err}");

    // Truncated weights: the script's own line, naming the file, reaches the error.
    let bundle = random_bundle(dir.path());
    let weights = bundle.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = export_bundle(
        &bundle,
        DeployFormat::TorchScript,
        &out,
        &CancelToken::default(),
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("exporting") && err.contains("bundle"), "{err}");
    assert!(
        err.contains(&format!("export_model: {}", weights.display())),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_cancelled_export_stops_the_script_and_leaves_nothing() {
    let Some(_) = venv_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bundle = random_bundle(dir.path());
    let folder = dir.path().join("out");
    std::fs::create_dir_all(&folder).unwrap();
    let out = folder.join("model.onnx");
    let cancel = CancelToken::default();
    // Set when export_bundle returned, so the watcher stops even if no partial file came.
    let returned = CancelToken::default();
    // Cancel as soon as the script's partial file exists: the export is then under way.
    let watcher = {
        let (cancel, returned, folder) = (cancel.clone(), returned.clone(), folder.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < HANG_GUARD && !returned.is_cancelled() {
                let partial = std::fs::read_dir(&folder)
                    .unwrap()
                    .any(|e| file_name_of(&e.unwrap().path()).starts_with(".partial-"));
                if partial {
                    cancel.cancel();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let result = export_bundle(&bundle, DeployFormat::Onnx, &out, &cancel);
    returned.cancel();
    let saw_partial = watcher.join().unwrap();
    assert!(saw_partial, "the script never created its partial file");
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("cancelled"), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
