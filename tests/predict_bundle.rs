//! The model bundle both ways against torchvision (run here with the venv's torch 2.13 +
//! torchvision 0.28):
//! - torchvision `state_dict()` → bundle → `maskstudio predict` gives torchvision's detections;
//! - a bundle we write loads into torchvision with `load_state_dict(strict=True)`.

mod common;

use std::path::Path;
use std::process::Command;

use maskstudio::dataset::{Mask, Rle};
use maskstudio::model::bundle::{Bundle, ModelSpec};
use maskstudio::model::{Backbone, MaskRcnn};

/// Builds the same torchvision model our `mobilenet_v2` bundle describes.
const PY_MODEL: &str = r#"
import json, sys, torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops import misc as misc_nn_ops
torch.set_num_threads(1)
def build(num_classes, **kw):
    bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4],
                            weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
    return MaskRCNN(bb, num_classes=num_classes, **kw)
"#;

/// Random but confident weights, a bundle, and torchvision's own predictions on the images.
const PY_EXPORT: &str = r#"
import os, numpy as np
from PIL import Image
from safetensors.torch import save_file
from pycocotools import mask as mu
bundle, images = sys.argv[1], sys.argv[2:]
m = build(3, min_size=160, max_size=224, box_detections_per_img=25).eval()
confident_init(m, 7)
os.makedirs(bundle, exist_ok=True)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(bundle, "model.safetensors"))
json.dump({"format": "maskstudio-model/1", "architecture": "maskrcnn", "backbone": "mobilenet_v2",
           "num_classes": 3, "min_size": 160, "max_size": 224, "box_detections_per_img": 25},
          open(os.path.join(bundle, "model.json"), "w"))
open(os.path.join(bundle, "labels.txt"), "w").write("cat\ndog\n")
print(json.dumps(predict_dump(m, images)))
"#;

const PY_LOAD: &str = r#"
from safetensors.torch import load_file
m = build(3)
print(m.load_state_dict(load_file(sys.argv[1]), strict=True))
"#;

fn python(script: &str, args: &[&Path]) -> String {
    let output = Command::new(maskstudio::host::python())
        .arg("-c")
        .arg(format!("{PY_MODEL}{}{script}", common::PY_TV_HELPERS))
        .args(args)
        .output()
        .expect("python from the torch venv (./test-all installs it)");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `maskstudio predict` on the CPU.
fn predict_cli(
    bundle: &Path,
    out_json: &Path,
    out_dir: Option<&Path>,
    inputs: &[&Path],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maskstudio"));
    cmd.args(["predict", "--device", "cpu", "--model"])
        .arg(bundle)
        .arg("--out-json")
        .arg(out_json);
    if let Some(dir) = out_dir {
        cmd.arg("--out-dir").arg(dir);
    }
    cmd.args(inputs).output().unwrap()
}

#[test]
fn torchvision_weights_in_a_bundle_predict_what_torchvision_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    common::write_png(&a, 200, 150, 3);
    common::write_png(&b, 130, 190, 90);
    let bundle = dir.path().join("bundle");
    let expected: serde_json::Value =
        serde_json::from_str(&python(PY_EXPORT, &[&bundle, &a, &b])).unwrap();

    let out_json = dir.path().join("results.json");
    let output = predict_cli(
        &bundle,
        &out_json,
        Some(&dir.path().join("overlays")),
        &[&a, &b],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ours: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert!(dir.path().join("overlays/a.overlay.png").is_file());

    let mut compared = 0;
    for (name, theirs) in expected.as_object().unwrap() {
        let theirs = theirs.as_array().unwrap();
        let mine: Vec<&serde_json::Value> =
            ours.iter().filter(|r| r["file_name"] == *name).collect();
        assert!(
            !theirs.is_empty(),
            "{name}: torchvision found nothing; the test would prove nothing"
        );
        assert_eq!(mine.len(), theirs.len(), "{name}: detection count");
        for (m, t) in mine.iter().zip(theirs) {
            assert_eq!(m["category_id"], t["label"], "{name}");
            let score = m["score"].as_f64().unwrap();
            assert!(
                (score - t["score"].as_f64().unwrap()).abs() < 1e-4,
                "{name}: score"
            );
            let bbox: Vec<f64> = serde_json::from_value(m["bbox"].clone()).unwrap();
            let tb: Vec<f64> = serde_json::from_value(t["bbox"].clone()).unwrap();
            let xyxy = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]];
            for (x, y) in xyxy.iter().zip(&tb) {
                assert!((x - y).abs() < 1e-2, "{name}: box {xyxy:?} vs {tb:?}");
            }
            let size: Vec<u32> = serde_json::from_value(m["segmentation"]["size"].clone()).unwrap();
            let decode = |counts: &str| {
                Mask::from_rle(&Rle::from_compressed(size[0], size[1], counts).unwrap()).unwrap()
            };
            let iou = decode(m["segmentation"]["counts"].as_str().unwrap())
                .iou(&decode(t["counts"].as_str().unwrap()));
            assert!(
                iou >= 0.99 || t["counts"] == m["segmentation"]["counts"],
                "{name}: mask IoU {iou}"
            );
            assert_eq!(
                m["category_name"],
                if t["label"] == 1 { "cat" } else { "dog" }
            );
            compared += 1;
        }
    }
    assert!(compared >= 2);
}

#[test]
fn our_bundle_loads_into_torchvision_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let bundle_dir = dir.path().join("ours");
    let labels = vec!["cat".to_owned(), "dog".to_owned()];
    let bundle = Bundle::write(&bundle_dir, &spec, &labels, &vs).unwrap();
    let verdict = python(PY_LOAD, &[&bundle.weights_path()]);
    assert_eq!(verdict, "<All keys matched successfully>");
    // And it reads back as a bundle.
    let again = Bundle::read(&bundle_dir).unwrap();
    assert_eq!(again.labels, labels);
}

#[test]
fn a_broken_image_is_reported_and_the_others_still_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut spec = ModelSpec::new(Backbone::MobilenetV2, 2);
    spec.min_size = Some(96);
    spec.max_size = Some(128);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let bundle_dir = dir.path().join("m");
    Bundle::write(&bundle_dir, &spec, &["thing".to_owned()], &vs).unwrap();
    let good = dir.path().join("good.png");
    common::write_png(&good, 64, 48, 5);
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"definitely not a jpeg").unwrap();
    let out_json = dir.path().join("r.json");
    let output = predict_cli(&bundle_dir, &out_json, None, &[&good, &bad]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad.jpg"),
        "the broken file is named: {stderr}"
    );
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert!(results.iter().all(|r| r["file_name"] == "good.png"));
}

/// Loads `results.json` with pycocotools against its `results.images.json` and prints, per
/// result, `[image_id, file_name of that id]`.
const PY_LOADRES: &str = r#"
from pycocotools.coco import COCO
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1])
    dt = gt.loadRes(sys.argv[2])
print(json.dumps([[a["image_id"], gt.imgs[a["image_id"]]["file_name"]] for a in dt.anns.values()]))
"#;

#[test]
fn same_named_images_get_their_own_outputs_and_results_load_in_pycocotools() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let files = ["a/x.jpg", "b/x.jpg", "x.jpg", "x.png"];
    for (k, f) in files.iter().enumerate() {
        common::write_png(&inputs.join(f), 160 + 10 * k as u32, 120, 40 * k as u8 + 3);
    }
    let bundle = dir.path().join("bundle");
    python(PY_EXPORT, &[&bundle, &inputs.join("x.png")]);
    let out_json = dir.path().join("results.json");
    let overlays = dir.path().join("overlays");
    let output = predict_cli(&bundle, &out_json, Some(&overlays), &[&inputs]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // One overlay per input: none overwrote another.
    for name in ["a/x", "b/x", "x.jpg", "x.png"] {
        let png = overlays.join(format!("{name}.overlay.png"));
        assert!(png.is_file(), "{png:?} missing");
    }
    let sizes: std::collections::BTreeSet<u32> = files
        .iter()
        .map(|f| {
            let stem = f
                .strip_suffix(".jpg")
                .filter(|s| s.contains('/'))
                .unwrap_or(f);
            image::open(overlays.join(format!("{stem}.overlay.png")))
                .unwrap()
                .width()
        })
        .collect();
    assert_eq!(sizes.len(), 4, "each overlay is its own image: {sizes:?}");

    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert!(
        !results.is_empty(),
        "the confident bundle detects something"
    );
    let images_json = dir.path().join("results.images.json");
    let pairs: Vec<(i64, String)> =
        serde_json::from_str(&python(PY_LOADRES, &[&images_json, &out_json])).unwrap();
    assert_eq!(pairs.len(), results.len());
    for r in &results {
        let id = r["image_id"].as_i64().unwrap();
        let name = r["file_name"].as_str().unwrap();
        assert!(files.contains(&name), "{name}");
        assert!(
            pairs.contains(&(id, name.to_owned())),
            "image_id {id} must be {name} in the images file"
        );
    }
}

#[test]
fn a_symlink_loop_in_an_image_folder_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    common::write_png(&root.join("a.png"), 8, 8, 1);
    common::write_png(&root.join("sub/b.png"), 8, 8, 2);
    std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("a.png"), root.join("link.png")).unwrap();
    let found = maskstudio::infer::collect_images(std::slice::from_ref(&root)).unwrap();
    let names: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["a.png", "link.png", "sub/b.png"]);
}
