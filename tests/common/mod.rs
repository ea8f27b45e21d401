//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data` beside the checkout, or `None` (the caller prints a skip message).
pub fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: {dir:?} is missing (CI always has it; a bare clone does not)");
        None
    }
}

/// Writes a small RGB PNG with a gradient so every file has distinct content.
pub fn write_png(path: &std::path::Path, width: u32, height: u32, seed: u8) {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x as u8).wrapping_add(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}
pub mod oi_server;

/// Python helpers prepended to the test scripts that build torchvision references:
/// `confident_init(m, seed)` gives a Mask R-CNN random but confident weights (the classifier
/// scaled 8×, BN statistics near identity) so detections are stable, and
/// `predict_dump(m, images)` returns torchvision's detections per file name with masks as
/// pycocotools RLE strings.
pub const PY_TV_HELPERS: &str = r#"
import os, numpy as np, torch
from PIL import Image
from pycocotools import mask as mu
def confident_init(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) * 0.5 + 0.75)
            elif k.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif v.dim() == 1 and k.startswith("backbone.body.") and k.endswith("weight"):
                v.copy_(torch.rand(v.shape, generator=g) * 0.5 + 0.25)
            elif v.dim() == 1:
                v.copy_(torch.randn(v.shape, generator=g) * (1.0 if "cls_score" in k else 0.01))
            else:
                fan_in = float(np.prod(v.shape[1:]))
                std = (2.0 / fan_in) ** 0.5 * (8.0 if "cls_score" in k else 1.0)
                v.copy_(torch.randn(v.shape, generator=g) * std)
def predict_dump(m, images):
    out = {}
    with torch.no_grad():
        for path in images:
            x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
            d = m([x])[0]
            masks = (d["masks"][:, 0] >= 0.5).numpy().astype(np.uint8)
            out[os.path.basename(path)] = [
                {"bbox": d["boxes"][i].tolist(), "score": float(d["scores"][i]), "label": int(d["labels"][i]),
                 "counts": mu.encode(np.asfortranarray(masks[i]))["counts"].decode()}
                for i in range(len(d["scores"]))]
    return out
"#;

/// The two coco128 classes the training tests keep.
pub const TRAIN_CLASSES: [&str; 2] = ["person", "dog"];

/// Imports the first `n` coco128 images (by file name) that hold one of [`TRAIN_CLASSES`],
/// keeping only those instances, into `dir/project`; returns the project folder.
pub fn coco128_subset_project(data: &std::path::Path, dir: &std::path::Path, n: usize) -> PathBuf {
    use maskstudio::dataset::formats::{self, Format};
    use maskstudio::dataset::store::{CancelToken, Project};
    let root = data.join("coco128-seg");
    let mut set = formats::read(&root, Format::YoloSeg).unwrap();
    set.classes
        .retain(|c| TRAIN_CLASSES.contains(&c.name.as_str()));
    assert_eq!(set.classes.len(), 2, "coco128 names changed");
    set.images.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    for image in &mut set.images {
        image
            .instances
            .retain(|i| TRAIN_CLASSES.contains(&i.class.as_str()));
    }
    set.images.retain(|i| !i.instances.is_empty());
    set.images.truncate(n);
    assert_eq!(set.images.len(), n);
    let project = dir.join("project");
    Project::create_or_open(&project)
        .unwrap()
        .import(&set, &root, &CancelToken::default(), &mut |_| {})
        .unwrap();
    project
}

/// A random MobileNetV2 bundle (cat, dog; 96–128 px) at `dir/bundle` whose class-score weights
/// are scaled, step by step through `scales`, until its detections on `image` (kept down to
/// `score`) satisfy `good` (torchvision's init gives every box about the same score). The
/// caller holds its torch RNG mutex for the whole test when anything else may draw from torch's
/// global generator meanwhile (a panel's worker building a model does).
pub fn scaled_random_bundle(
    dir: &std::path::Path,
    image: &std::path::Path,
    seed: i64,
    scales: &[f64],
    score: f64,
    good: impl Fn(&[maskstudio::infer::Detection]) -> bool,
) -> PathBuf {
    use maskstudio::model::bundle::{Bundle, ModelSpec};
    use maskstudio::model::{Backbone, MaskRcnn};
    use tch::{Device, Tensor, nn};
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    spec.min_size = Some(96);
    spec.max_size = Some(128);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let weights = vs
        .variables()
        .into_iter()
        .find(|(n, _)| n.ends_with("cls_score.weight"))
        .map(|(_, t)| t)
        .unwrap();
    let base = Tensor::randn(weights.size(), (weights.kind(), Device::Cpu));
    let bundle = dir.join("bundle");
    let pixels = maskstudio::infer::read_image(image).unwrap();
    for &scale in scales {
        let mut w = weights.shallow_clone();
        tch::no_grad(|| w.copy_(&(&base * scale)));
        Bundle::write(&bundle, &spec, &["cat".to_owned(), "dog".to_owned()], &vs).unwrap();
        let p = maskstudio::infer::Predictor::load(&bundle, Device::Cpu, Some(score)).unwrap();
        let detections = p.predict(&pixels).unwrap();
        let (lo, hi) = detections.iter().fold((1.0f32, 0.0f32), |(lo, hi), d| {
            (lo.min(d.score), hi.max(d.score))
        });
        let with_pixels = detections.iter().filter(|d| d.mask.area() > 0).count();
        eprintln!(
            "cls_score scale {scale}: {} detections ({with_pixels} with pixels), scores {lo:.3}..{hi:.3}",
            detections.len()
        );
        if good(&detections) {
            return bundle;
        }
    }
    panic!("no scale of the class weights gave the detections the test needs");
}
