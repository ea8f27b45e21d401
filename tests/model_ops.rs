//! Op-level goldens against torchvision 0.28 (fixtures from `tools/gen_model_fixtures.py`, `ops()`):
//! RoIAlign forward/backward, mask-target projection, MultiScaleRoIAlign, NMS, paste_masks,
//! anchors, BoxCoder, box IoU, Matcher, and the transform.

use std::collections::HashMap;

use maskstudio::model::anchors::AnchorGenerator;
use maskstudio::model::box_ops::{BoxCoder, batched_nms, box_iou, nms};
use maskstudio::model::matcher::Matcher;
use maskstudio::model::roi_align::{MultiScaleRoiAlign, project_masks_on_boxes, roi_align};
use maskstudio::model::transform::{GeneralizedRcnnTransform, paste_masks_in_image};
use tch::{Device, Kind, Tensor};

mod common;
use common::{assert_close_ulps, max_abs_diff};

fn fixtures() -> HashMap<String, Tensor> {
    tch::set_num_threads(1);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model/ops.safetensors"
    );
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn sorted_i64(t: &Tensor) -> Vec<i64> {
    let mut v = Vec::<i64>::try_from(&t.to_kind(Kind::Int64)).unwrap();
    v.sort_unstable();
    v
}

#[test]
fn roi_align_matches_torchvision_forward_and_input_gradient() {
    let g = fixtures();
    for aligned in [false, true] {
        for sr in [2i64, -1] {
            for (oh, ow) in [(7i64, 7i64), (5, 3)] {
                let tag = format!("a{}_sr{sr}_{oh}x{ow}", aligned as i32);
                let x = g["ra_input"].copy().set_requires_grad(true);
                let y = roi_align(&x, &g["ra_rois"], (oh, ow), 0.5, sr, aligned).unwrap();
                (&y * &g[&format!("ra_gradout_{tag}")])
                    .sum(Kind::Float)
                    .backward();
                let fwd = max_abs_diff(&y, &g[&format!("ra_out_{tag}")]);
                let gref = &g[&format!("ra_gradin_{tag}")];
                let grad = max_abs_diff(&x.grad(), gref);
                let scale = gref.abs().max().double_value(&[]).max(1.0);
                println!(
                    "roi_align {tag}: fwd max|diff| {fwd:.2e}, grad max|diff| {grad:.2e} (grad max {scale:.2})"
                );
                assert!(fwd <= 1e-5, "{tag} forward {fwd}");
                assert!(grad <= 1e-5 * scale, "{tag} grad {grad}");
            }
        }
    }
}

#[test]
fn roi_align_with_no_rois_is_empty() {
    let input = Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let rois = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
    let y = roi_align(&input, &rois, (7, 7), 0.25, 2, false).unwrap();
    assert_eq!(y.size(), vec![0, 4, 7, 7]);
}

#[test]
fn mask_targets_match_project_masks_on_boxes() {
    let g = fixtures();
    let out = project_masks_on_boxes(&g["pm_gt_masks"], &g["pm_boxes"], &g["pm_idx"], 28).unwrap();
    let d = max_abs_diff(&out, &g["pm_out"]);
    println!("project_masks_on_boxes max|diff| {d:.2e}");
    assert!(d <= 1e-6, "{d}");
}

#[test]
fn multiscale_roi_align_matches_torchvision() {
    let g = fixtures();
    let feats: Vec<Tensor> = (0..4)
        .map(|i| g[&format!("ms_feat{i}")].shallow_clone())
        .collect();
    let pooler = MultiScaleRoiAlign {
        output_size: 7,
        sampling_ratio: 2,
    };
    let boxes = [
        g["ms_boxes0"].shallow_clone(),
        g["ms_boxes1"].shallow_clone(),
    ];
    let out = pooler
        .forward(&feats, &boxes, &[(250, 320), (256, 300)])
        .unwrap();
    let d = max_abs_diff(&out, &g["ms_out"]);
    println!("MultiScaleRoIAlign max|diff| {d:.2e}");
    assert!(d <= 1e-5, "{d}");
}

#[test]
fn nms_and_batched_nms_keep_the_same_boxes() {
    let g = fixtures();
    for n in [300, 1500] {
        let (b, s, c) = (
            &g[&format!("nms_boxes_{n}")],
            &g[&format!("nms_scores_{n}")],
            &g[&format!("nms_idxs_{n}")],
        );
        let keep = nms(b, s, 0.5).unwrap();
        let want = &g[&format!("nms_keep_{n}")];
        assert_eq!(sorted_i64(&keep), sorted_i64(want), "nms {n}");
        assert!(keep.equal(want), "nms {n}: same set, order differs");
        let keep = batched_nms(b, s, c, 0.5).unwrap();
        let want = &g[&format!("bnms_keep_{n}")];
        assert_eq!(sorted_i64(&keep), sorted_i64(want), "batched_nms {n}");
        // order: by score; exact ties may be ordered differently
        let ks = s.index_select(0, &keep);
        let ws = s.index_select(0, want);
        assert!(
            ks.equal(&ws),
            "batched_nms {n}: scores not in the same order"
        );
        println!(
            "nms {n} boxes: {} kept; batched_nms: {} kept; both identical to torchvision",
            g[&format!("nms_keep_{n}")].size()[0],
            keep.size()[0]
        );
    }
}

#[test]
fn paste_masks_is_identical() {
    let g = fixtures();
    let out = paste_masks_in_image(&g["paste_masks"], &g["paste_boxes"], (50, 60), 1).unwrap();
    // Bilinear interpolation of values in [0, 1]: a few multiply-adds per pixel.
    assert_close_ulps("paste_masks_in_image", &out, &g["paste_out"], 4.0);
}

#[test]
fn anchors_are_identical() {
    let g = fixtures();
    let sizes: Vec<Vec<i64>> = [32, 64, 128, 256, 512].iter().map(|&s| vec![s]).collect();
    let generator = AnchorGenerator::new(&sizes, &vec![vec![0.5, 1.0, 2.0]; 5]).unwrap();
    let fs = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)];
    let a = Tensor::cat(
        &generator.grid_anchors((96, 128), &fs, Device::Cpu).unwrap(),
        0,
    );
    // Rounded base anchors plus integer shifts: integers in float32 (a wrong anchor is off by >= 1).
    assert_close_ulps("anchors", &a, &g["anchors"], 4.0);
}

#[test]
fn box_coder_iou_and_matcher_match_torchvision() {
    let g = fixtures();
    let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
    let enc = coder.encode(&g["bc_gt"], &g["bc_props"]).unwrap();
    // encode: divisions, a log and the weights' products; decode: an exp and products; IoU: one
    // division of areas. 8 ulps of the largest value covers a rounding or FMA at each step.
    assert_close_ulps("BoxCoder encode", &enc, &g["bc_encoded"], 8.0);
    let dec = coder.decode(&g["bc_rel"], &g["bc_props"]).unwrap();
    assert_close_ulps("BoxCoder decode", &dec, &g["bc_decoded"], 8.0);
    let iou = box_iou(&g["iou_b1"], &g["iou_b2"]).unwrap();
    assert_close_ulps("box_iou", &iou, &g["iou"], 4.0);
    // The matchers run on the fixture's IoU matrix: discrete results, compared exactly.
    let m = Matcher::new(0.7, 0.3, true).call(&g["iou"]).unwrap();
    assert!(m.equal(&g["match_lq"]));
    let m = Matcher::new(0.5, 0.5, false).call(&g["iou"]).unwrap();
    assert!(m.equal(&g["match_noq"]));
}

#[test]
fn transform_resizes_and_pads_like_torchvision() {
    let g = fixtures();
    let t = GeneralizedRcnnTransform {
        min_size: vec![64],
        max_size: 100,
        image_mean: vec![0.485, 0.456, 0.406],
        image_std: vec![0.229, 0.224, 0.225],
        size_divisible: 32,
    };
    let images: Vec<Tensor> = (0..3)
        .map(|i| g[&format!("tf_image{i}")].shallow_clone())
        .collect();
    let (list, _) = t.forward(&images, None, |n| n - 1).unwrap();
    let sizes: Vec<i64> = list.image_sizes.iter().flat_map(|&(h, w)| [h, w]).collect();
    assert_eq!(
        sizes,
        Vec::<i64>::try_from(&g["tf_sizes"].reshape([-1])).unwrap()
    );
    println!("transform sizes {sizes:?}");
    // Normalisation ((x - mean) / std) then bilinear resize: a few roundings per pixel.
    assert_close_ulps("transform batch", &list.tensors, &g["tf_batch"], 8.0);
}
