//! Eval and training-step throughput of our Mask R-CNN vs torchvision 0.28 on the same weights, images
//! and thread count, at 384 px (min_size 384, max_size 640), for both backbones.
//!
//! Run: `cargo bench --bench model`. Needs torch 2.13 + torchvision 0.28 + safetensors in the
//! Python of `maskstudio::host::python()` (`MASKSTUDIO_PYTHON`, else the per-user venv);
//! `BENCH_THREADS` (default 2) and `BENCH_ITERS` (default 3) tune it. Our weights are exported with `VarStore::save(*.safetensors)` and loaded
//! by torchvision with `load_state_dict(strict=True)`, which also checks the export direction.

use std::process::Command;
use std::time::Instant;

use maskstudio::model::{Backbone, MaskRcnn, MaskRcnnConfig, Target};
use tch::{Device, Kind, Tensor, nn};

const PY: &str = r#"
import json, sys, time
import torch
from safetensors.torch import load_file
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone
from torchvision.ops import misc as misc_nn_ops

backbone, weights, data, threads, iters = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
if backbone == "resnet50":
    bb = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
else:
    bb = mobilenet_backbone(backbone_name="mobilenet_v2", fpn=True, returned_layers=[1, 2, 3, 4], weights=None,
                            norm_layer=misc_nn_ops.FrozenBatchNorm2d, trainable_layers=3)
model = MaskRCNN(bb, num_classes=91, min_size=384, max_size=640)
model.load_state_dict(load_file(weights), strict=True)
d = load_file(data)
images = [d["image0"], d["image1"]]
targets = [{"boxes": d[f"boxes{i}"], "labels": d[f"labels{i}"], "masks": d[f"masks{i}"]} for i in range(2)]
model.eval()
with torch.no_grad():
    model(images)
    t = time.perf_counter()
    for _ in range(iters):
        dets = model(images)
    eval_s = (time.perf_counter() - t) / iters
model.train()
loss = sum(model(images, targets).values()); loss.backward(); model.zero_grad()
t = time.perf_counter()
for _ in range(iters):
    loss = sum(model(images, targets).values())
    loss.backward()
    model.zero_grad()
train_s = (time.perf_counter() - t) / iters
print(json.dumps({"eval_s": eval_s, "train_s": train_s, "detections": [len(x["boxes"]) for x in dets]}))
"#;

fn target(h: i64, w: i64, boxes: &[[f32; 4]], labels: &[i64]) -> Target {
    let masks = Tensor::zeros([boxes.len() as i64, h, w], (Kind::Uint8, Device::Cpu));
    for (i, b) in boxes.iter().enumerate() {
        let (x0, y0, x1, y1) = (b[0] as i64, b[1] as i64, b[2] as i64, b[3] as i64);
        let _ = masks
            .get(i as i64)
            .narrow(0, y0, y1 - y0)
            .narrow(1, x0, x1 - x0)
            .fill_(1);
    }
    let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
    Target {
        boxes: Tensor::from_slice(&flat).view([-1, 4]),
        labels: Tensor::from_slice(labels),
        masks,
    }
}

fn bench(backbone: Backbone, name: &str, threads: i32, iters: usize) -> anyhow::Result<()> {
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let cfg = MaskRcnnConfig {
        backbone,
        min_size: vec![384],
        max_size: 640,
        ..MaskRcnnConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskRcnn::new(&vs.root(), &cfg)?;
    let images = vec![
        Tensor::rand([3, 384, 512], (Kind::Float, Device::Cpu)),
        Tensor::rand([3, 400, 360], (Kind::Float, Device::Cpu)),
    ];
    let targets = vec![
        target(
            384,
            512,
            &[[40.0, 50.0, 200.0, 300.0], [250.0, 100.0, 480.0, 200.0]],
            &[1, 7],
        ),
        target(400, 360, &[[10.0, 20.0, 300.0, 380.0]], &[3]),
    ];
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let weights = dir.join(format!("bench_{name}_weights.safetensors"));
    let data = dir.join(format!("bench_{name}_data.safetensors"));
    vs.save(&weights)?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, (img, t)) in images.iter().zip(&targets).enumerate() {
        named.push((format!("image{i}"), img.shallow_clone()));
        named.push((format!("boxes{i}"), t.boxes.shallow_clone()));
        named.push((format!("labels{i}"), t.labels.shallow_clone()));
        named.push((format!("masks{i}"), t.masks.shallow_clone()));
    }
    Tensor::write_safetensors(&named, &data)?;

    let _ = tch::no_grad(|| model.forward_eval(&images))?;
    let t = Instant::now();
    let mut dets = Vec::new();
    for _ in 0..iters {
        dets = tch::no_grad(|| model.forward_eval(&images))?;
    }
    let eval_s = t.elapsed().as_secs_f64() / iters as f64;
    let step = || -> anyhow::Result<()> {
        let losses = model.forward_train(&images, &targets)?;
        losses.total().backward();
        for v in vs.trainable_variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        Ok(())
    };
    step()?;
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    let train_s = t.elapsed().as_secs_f64() / iters as f64;

    let python = maskstudio::host::python();
    let out = Command::new(python)
        .args(["-c", PY, name])
        .arg(&weights)
        .arg(&data)
        .args([threads.to_string(), iters.to_string()])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "torchvision run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tv: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let (tv_eval, tv_train) = (
        tv["eval_s"].as_f64().unwrap_or(f64::NAN),
        tv["train_s"].as_f64().unwrap_or(f64::NAN),
    );
    let n = images.len() as f64;
    println!(
        "{name:>12} eval : ours {:6.2} img/s, torchvision {:6.2} img/s, ratio {:.2} (detections ours {:?}, tv {})",
        n / eval_s,
        n / tv_eval,
        tv_eval / eval_s,
        dets.iter().map(|d| d.boxes.size()[0]).collect::<Vec<_>>(),
        tv["detections"]
    );
    println!(
        "{name:>12} train: ours {:6.2} img/s, torchvision {:6.2} img/s, ratio {:.2}",
        n / train_s,
        n / tv_train,
        tv_train / train_s
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs harness-less benches without `--bench`: skip the slow comparison.
    if !std::env::args().any(|a| a == "--bench") {
        println!("model bench: run with `cargo bench --bench model`");
        return Ok(());
    }
    let threads: i32 = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "Mask R-CNN, 2 images ~384 px, {threads} threads, {iters} timed iterations (ratio > 1: ours faster)"
    );
    bench(Backbone::MobilenetV2, "mobilenet_v2", threads, iters)?;
    bench(Backbone::Resnet50, "resnet50", threads, iters)?;
    Ok(())
}
