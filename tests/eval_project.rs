//! `maskstudio eval` end to end: a project whose ground truth is the model's own thresholded
//! masks scores mask AP 1.0; dropping half of that ground truth makes the surplus detections
//! false positives and AP falls.

mod common;

use std::path::Path;
use std::process::Command;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::store::Project;
use maskstudio::infer::{Predictor, read_image};

/// A torchvision MobileNetV2 Mask R-CNN with random but confident weights, as a bundle.
const PY_BUNDLE: &str = r#"
import json, os, sys, torch
from safetensors.torch import save_file
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops import misc as misc_nn_ops
bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4],
                        weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
m = MaskRCNN(bb, num_classes=3)
confident_init(m, 11)
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
json.dump({"format": "maskstudio-model/1", "architecture": "maskrcnn", "backbone": "mobilenet_v2",
           "num_classes": 3, "min_size": 160, "max_size": 224, "box_detections_per_img": 15},
          open(os.path.join(d, "model.json"), "w"))
open(os.path.join(d, "labels.txt"), "w").write("cat\ndog\n")
"#;

/// COCO ground truth made of the model's own masks (`keep_every`: keep every n-th).
fn self_ground_truth(
    predictor: &Predictor,
    images: &[&Path],
    keep_every: usize,
) -> serde_json::Value {
    let (mut coco_images, mut anns) = (Vec::new(), Vec::new());
    for (i, path) in images.iter().enumerate() {
        let pixels = read_image(path).unwrap();
        coco_images.push(serde_json::json!({
            "id": i + 1, "file_name": path.file_name().unwrap().to_string_lossy(),
            "width": pixels.width(), "height": pixels.height()}));
        let detections = predictor.predict(&pixels).unwrap();
        for (k, d) in detections.iter().enumerate() {
            if d.mask.area() == 0 || k % keep_every != 0 {
                continue;
            }
            let rle = d.mask.to_rle();
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i + 1, "category_id": d.label, "iscrowd": 0,
                "area": rle.area(), "bbox": rle.to_bbox(),
                "segmentation": {"size": [rle.height, rle.width], "counts": rle.to_compressed()}}));
        }
    }
    serde_json::json!({
        "images": coco_images, "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]})
}

fn mask_ap(bundle: &Path, dir: &Path, name: &str, gt: &serde_json::Value) -> serde_json::Value {
    let coco = dir.join(format!("{name}.json"));
    std::fs::write(&coco, gt.to_string()).unwrap();
    let mut set = formats::read(&coco, Format::Coco).unwrap();
    for image in &mut set.images {
        image.split = Some("validation".into());
    }
    let project_dir = dir.join(name);
    Project::create_or_open(&project_dir)
        .unwrap()
        .import(&set, &coco, &CancelToken::default(), &mut |_| {})
        .unwrap();
    let json = dir.join(format!("{name}-eval.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_maskstudio"))
        .args([
            "eval",
            "--device",
            "cpu",
            "--split",
            "validation",
            "--model",
        ])
        .arg(bundle)
        .arg("--project")
        .arg(&project_dir)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Average Precision"));
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

#[test]
fn eval_scores_the_models_own_masks_perfectly_and_penalises_missing_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let output = Command::new(maskstudio::host::python())
        .arg("-c")
        .arg(format!("{}{PY_BUNDLE}", common::PY_TV_HELPERS))
        .arg(&bundle)
        .output()
        .expect("python from the torch venv (./test-all installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    common::write_png(&a, 200, 150, 3);
    common::write_png(&b, 130, 190, 90);
    let predictor = Predictor::load(&bundle, tch::Device::Cpu, None).unwrap();

    let full = self_ground_truth(&predictor, &[&a, &b], 1);
    assert!(
        full["annotations"].as_array().unwrap().len() >= 4,
        "too few detections to test"
    );
    let perfect = mask_ap(&bundle, dir.path(), "full", &full);
    assert!(
        (perfect["segm"]["AP"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{perfect}"
    );
    for key in [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    ] {
        assert!(
            perfect["segm"][key].is_number() && perfect["bbox"][key].is_number(),
            "{key}"
        );
    }
    assert!(perfect["segm"]["per_class"]["cat"].is_number());

    let half = self_ground_truth(&predictor, &[&a, &b], 2);
    let worse = mask_ap(&bundle, dir.path(), "half", &half);
    let ap = worse["segm"]["AP"].as_f64().unwrap();
    assert!(ap < 0.99 && ap > 0.0, "AP with half the ground truth: {ap}");
}
