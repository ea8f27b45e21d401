//! Full-model goldens against torchvision 0.28 for both backbones (fixtures from
//! `tools/gen_model_fixtures.py`, `golden()`):
//! * eval on a batch of two images of different sizes: boxes (1e-3), scores (1e-4), labels, mask IoU >= 0.99;
//! * the five training losses (rtol 1e-4) and a few parameter gradients with deterministic
//!   "first k by index" samplers (torchvision's sampler monkey-patched the same way), for a batch of two
//!   images of different sizes where the second has no instances, and for the first image alone.
//!
//! Weights are rebuilt from the JSON recipe with libtorch's CPU generator (the same as PyTorch's):
//! `torch.manual_seed(seed); torch.randn(shape) * scale + offset` per state_dict key.

use std::collections::HashMap;

use maskstudio::model::{Backbone, MaskRcnn, MaskRcnnConfig, Target};
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

struct Golden {
    meta: Value,
    t: HashMap<String, Tensor>,
}

/// Serialises use of libtorch's global random generator across test threads.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load(name: &str) -> Golden {
    tch::set_num_threads(1);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/golden_{name}.json")).unwrap(),
    )
    .unwrap();
    let t = Tensor::read_safetensors(format!("{dir}/golden_{name}.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    Golden { meta, t }
}

fn build(g: &Golden, backbone: Backbone) -> (nn::VarStore, MaskRcnn) {
    let cfg = &g.meta["config"];
    let config = MaskRcnnConfig {
        backbone,
        num_classes: g.meta["num_classes"].as_i64().unwrap(),
        min_size: vec![cfg["min_size"].as_i64().unwrap()],
        max_size: cfg["max_size"].as_i64().unwrap(),
        box_detections_per_img: cfg["box_detections_per_img"].as_i64().unwrap(),
        ..MaskRcnnConfig::default()
    };
    // The recipe reseeds libtorch's global generator and model construction draws from it too;
    // tests run on parallel threads.
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskRcnn::new(&vs.root(), &config).unwrap();
    let vars = vs.variables();
    let recipe = g.meta["recipe"].as_array().unwrap();
    assert_eq!(recipe.len(), vars.len());
    tch::no_grad(|| {
        for r in recipe {
            let key = r["key"].as_str().unwrap();
            let shape: Vec<i64> = serde_json::from_value(r["shape"].clone()).unwrap();
            tch::manual_seed(r["seed"].as_i64().unwrap());
            let opts = (Kind::Float, Device::Cpu);
            let base = match r["dist"].as_str().unwrap() {
                "randn" => Tensor::randn(&shape, opts),
                _ => Tensor::rand(&shape, opts),
            };
            let t = base * r["scale"].as_f64().unwrap() + r["offset"].as_f64().unwrap();
            let sum = t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            let want = r["sum"].as_f64().unwrap();
            let abs = r["abs_sum"].as_f64().unwrap();
            assert!(
                (sum - want).abs() <= 1e-9 * abs.max(1.0),
                "weight recipe of {key} differs: {sum} vs {want}"
            );
            let mut v = vars[key].shallow_clone();
            v.copy_(&t);
        }
    });
    (vs, model)
}

fn target(g: &Golden, i: usize) -> Target {
    Target {
        boxes: g.t[&format!("target{i}_boxes")].shallow_clone(),
        labels: g.t[&format!("target{i}_labels")].shallow_clone(),
        masks: g.t[&format!("target{i}_masks")].shallow_clone(),
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let n = t.size()[0];
    (0..n)
        .map(|i| Vec::<f32>::try_from(&t.get(i).reshape([-1])).unwrap())
        .collect()
}

fn eval_matches_torchvision(name: &str, backbone: Backbone) {
    let g = load(name);
    let (_vs, model) = build(&g, backbone);
    let images = [g.t["image0"].shallow_clone(), g.t["image1"].shallow_clone()];
    let dets = tch::no_grad(|| model.forward_eval(&images)).unwrap();
    for (i, d) in dets.iter().enumerate() {
        let want_boxes = rows(&g.t[&format!("det{i}_boxes")]);
        let want_scores = Vec::<f32>::try_from(&g.t[&format!("det{i}_scores")]).unwrap();
        let want_labels = Vec::<i64>::try_from(&g.t[&format!("det{i}_labels")]).unwrap();
        let want_masks = &g.t[&format!("det{i}_masks")];
        let boxes = rows(&d.boxes);
        let scores = Vec::<f32>::try_from(&d.scores).unwrap();
        let labels = Vec::<i64>::try_from(&d.labels).unwrap();
        assert_eq!(
            boxes.len(),
            want_boxes.len(),
            "{name} image {i}: number of detections"
        );
        let masks = d.masks.ge(0.5);
        let (mut max_box, mut max_score, mut min_iou) = (0f32, 0f32, 1f64);
        let mut used = vec![false; boxes.len()];
        for j in 0..want_boxes.len() {
            // same index unless near-tied scores swapped places
            let found = (0..boxes.len()).find(|&k| {
                !used[k]
                    && labels[k] == want_labels[j]
                    && (scores[k] - want_scores[j]).abs() <= 1e-4
                    && boxes[k]
                        .iter()
                        .zip(&want_boxes[j])
                        .all(|(a, b)| (a - b).abs() <= 1e-3)
            });
            let k = found.unwrap_or_else(|| {
                panic!(
                    "{name} image {i}: torchvision detection {j} (label {}, score {}, box {:?}) not found; ours at {j}: label {}, score {}, box {:?}",
                    want_labels[j], want_scores[j], want_boxes[j], labels[j], scores[j], boxes[j]
                )
            });
            used[k] = true;
            max_score = max_score.max((scores[k] - want_scores[j]).abs());
            for (a, b) in boxes[k].iter().zip(&want_boxes[j]) {
                max_box = max_box.max((a - b).abs());
            }
            let a = masks.get(k as i64);
            let b = want_masks.get(j as i64).to_kind(Kind::Bool);
            let inter = a.logical_and(&b).sum(Kind::Int64).int64_value(&[]) as f64;
            let union = a.logical_or(&b).sum(Kind::Int64).int64_value(&[]) as f64;
            let iou = if union == 0.0 { 1.0 } else { inter / union };
            min_iou = min_iou.min(iou);
        }
        println!(
            "{name} image {i}: {} detections, max|box diff| {max_box:.2e}, max|score diff| {max_score:.2e}, min mask IoU {min_iou:.4}",
            boxes.len()
        );
        assert!(min_iou >= 0.99, "{name} image {i}: mask IoU {min_iou}");
    }
}

fn losses_match_torchvision(name: &str, backbone: Backbone) {
    let g = load(name);
    for (tag, batch) in [("pair", vec![0usize, 1]), ("single", vec![0])] {
        let (vs, mut model) = build(&g, backbone);
        model.set_sampling(true, 0);
        let images: Vec<Tensor> = batch
            .iter()
            .map(|&i| g.t[&format!("image{i}")].shallow_clone())
            .collect();
        let targets: Vec<Target> = batch.iter().map(|&i| target(&g, i)).collect();
        let losses = model.forward_train(&images, &targets).unwrap();
        let ours = losses.to_map();
        for (k, v) in ours.iter() {
            let want = g.meta["losses"][tag][k].as_f64().unwrap();
            let rel = (v - want).abs() / want.abs().max(1e-12);
            println!("{name} {tag} {k}: ours {v:.7} torchvision {want:.7} rel diff {rel:.2e}");
            assert!(rel <= 1e-4, "{name} {tag} {k}: {v} vs {want}");
        }
        losses.total().backward();
        let vars = vs.variables();
        for key in [
            "rpn.head.cls_logits.weight",
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.mask_predictor.mask_fcn_logits.weight",
            "backbone.fpn.layer_blocks.0.0.bias",
            "backbone.fpn.inner_blocks.3.0.bias",
        ] {
            let want = &g.t[&format!("grad_{tag}_{key}")];
            let got = vars[key].grad();
            let d = (&got - want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            println!("{name} {tag} grad {key}: max|diff| {d:.2e} (max |grad| {scale:.2e})");
            assert!(d <= 1e-3 * scale.max(1e-6), "{name} {tag} grad of {key}");
        }
    }
}

#[test]
fn resnet50_eval_matches_torchvision() {
    eval_matches_torchvision("resnet50", Backbone::Resnet50);
}

#[test]
fn mobilenet_v2_eval_matches_torchvision() {
    eval_matches_torchvision("mobilenet_v2", Backbone::MobilenetV2);
}

#[test]
fn resnet50_training_losses_match_torchvision() {
    losses_match_torchvision("resnet50", Backbone::Resnet50);
}

#[test]
fn mobilenet_v2_training_losses_match_torchvision() {
    losses_match_torchvision("mobilenet_v2", Backbone::MobilenetV2);
}
