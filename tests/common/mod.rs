//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Overrides where [`shared_data`] looks (tests of the skip rule only).
pub const SHARED_DATA_ENV: &str = "MASKSTUDIO_TEST_SHARED_DATA";

/// `../shared/data` beside the checkout, or `None` (the caller returns: a bare clone has no
/// shared folder). Under `CI=true` a missing folder fails the test instead: CI always has it,
/// and a silent skip there would pass tests that never ran.
pub fn shared_data() -> Option<PathBuf> {
    // SHARED_DATA_ENV only serves the test of this rule (it points at a missing folder).
    let dir = std::env::var_os(SHARED_DATA_ENV).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
        PathBuf::from,
    );
    if dir.is_dir() {
        Some(dir)
    } else if running_in_ci() {
        panic!(
            "{dir:?} is missing, and CI=true: the shared data must be beside the checkout in CI"
        );
    } else {
        eprintln!("SKIP: {dir:?} is missing (CI always has it; a bare clone does not)");
        None
    }
}

/// Whether `CI` is set to `true` (or `1`), as CI sets it for `.ci/run`.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
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

/// Largest `|ours - reference|` allowed between two float32 computations of the same formula on
/// different CPUs: `ulps` units in the last place of the largest magnitude involved.
/// libtorch picks its vector kernels per CPU (SSE / AVX2 / AVX-512, with or without fused
/// multiply-add), which reorders sums and fuses roundings, so results made on another machine
/// agree to a few ulps of the magnitude, not bitwise (a BoxCoder encode differed by 2.38e-7 =
/// 2 ulps of 1.0 between the fixture's CPU and an AMD EPYC).
pub fn f32_ulps(ulps: f64, magnitude: f64) -> f64 {
    ulps * f64::from(f32::EPSILON) * magnitude.abs()
}

/// `max |a - b|` over two tensors of the same shape (0 for empty ones), in f64.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// `max |x|` over a tensor (0 for an empty one), in f64.
pub fn max_abs(t: &tch::Tensor) -> f64 {
    if t.numel() == 0 {
        return 0.0;
    }
    t.to_kind(tch::Kind::Double).abs().max().double_value(&[])
}

/// Asserts `ours` equals the float32 `reference` to `ulps` ulps of the reference's largest
/// magnitude ([`f32_ulps`]); prints the difference and the tolerance.
pub fn assert_close_ulps(what: &str, ours: &tch::Tensor, reference: &tch::Tensor, ulps: f64) {
    let d = max_abs_diff(ours, reference);
    let tol = f32_ulps(ulps, max_abs(reference));
    println!(
        "{what}: max|diff| {d:.3e} (tolerance {tol:.3e} = {ulps} ulps of {:.3e})",
        max_abs(reference)
    );
    assert!(
        d <= tol,
        "{what}: max|diff| {d:e} > {tol:e} ({ulps} ulps of the magnitude)"
    );
}

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
    use maskstudio::cancel::CancelToken;
    use maskstudio::dataset::formats::{self, Format};
    use maskstudio::dataset::store::Project;
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

/// `n` (at most 6) images of 96 x 72 with one bright square of `class` each on a gradient, as a
/// project at `dir/project` (no splits: the trainer splits it); `dir/src` holds the PNGs.
pub fn square_project(dir: &std::path::Path, class: &str, n: u32) -> PathBuf {
    use maskstudio::cancel::CancelToken;
    use maskstudio::dataset::store::Project;
    use maskstudio::dataset::{
        ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
    };
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut images = Vec::new();
    for k in 0..n {
        let (x0, y0, side) = (8 + 9 * k, 6 + 5 * k, 24 + 2 * k);
        let inside = |x: u32, y: u32| (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
        let img = image::RgbImage::from_fn(96, 72, |x, y| {
            if inside(x, y) {
                image::Rgb([240, 200, 30])
            } else {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
            }
        });
        let name = format!("img{k}.png");
        img.save(src.join(&name)).unwrap();
        let mut mask = Mask::new(96, 72);
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                mask.set(x, y, true);
            }
        }
        images.push(ImportImage {
            src_path: src.join(&name),
            file_name: name,
            width: 0,
            height: 0,
            split: None,
            source: "test".into(),
            attribution: Default::default(),
            instances: vec![ImportInstance {
                class: class.into(),
                segmentation: Segmentation::Bitmap(mask),
                iscrowd: false,
                origin: Origin::Import,
                provenance: None,
            }],
        });
    }
    let set = ImportSet {
        format: "test".into(),
        classes: vec![ClassDef {
            name: class.into(),
            mid: None,
        }],
        images,
    };
    let project = dir.join("project");
    Project::create_or_open(&project)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    project
}
