//! `maskstudio predict` as a pipeline (decode + prepare on `predict-decode`, the model on the
//! main thread), and the prepared-input model path against the model's own transform.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use maskstudio::infer::prepare::{PrepareParams, prepare};
use maskstudio::model::bundle::{Bundle, ModelSpec};
use maskstudio::model::{Backbone, MaskRcnn};
use tch::{Device, Kind, Tensor, nn};

/// A small random MobileNetV2 bundle (2 classes, 64..96 px, every detection kept).
fn random_bundle(dir: &Path) -> (PathBuf, nn::VarStore, MaskRcnn) {
    tch::manual_seed(3);
    let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    spec.min_size = Some(64);
    spec.max_size = Some(96);
    spec.box_score_thresh = Some(0.0);
    spec.box_detections_per_img = Some(20);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let bundle = dir.join("bundle");
    Bundle::write(&bundle, &spec, &["cat".into(), "dog".into()], &vs).unwrap();
    (bundle, vs, model)
}

fn predict(
    bundle: &Path,
    out_json: &Path,
    inputs: &Path,
    fault: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maskstudio"));
    cmd.args(["predict", "--device", "cpu", "--model"])
        .arg(bundle)
        .arg("--out-json")
        .arg(out_json)
        .arg(inputs)
        .env_remove(maskstudio::fault::FAULT_ENV);
    if let Some(f) = fault {
        cmd.env(maskstudio::fault::FAULT_ENV, f);
    }
    cmd.output().unwrap()
}

fn folder(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    common::write_png(&images.join("a.png"), 90, 70, 10);
    common::write_png(&images.join("b.png"), 61, 117, 80);
    std::fs::write(images.join("c.png"), b"not a png").unwrap();
    common::write_png(&images.join("d.png"), 200, 150, 160);
    images
}

#[test]
fn a_folder_is_predicted_with_bad_files_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _vs, _model) = random_bundle(dir.path());
    let images = folder(dir.path());
    let out_json = dir.path().join("results.json");
    let out = predict(&bundle, &out_json, &images, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped") && stderr.contains("c.png"),
        "{stderr}"
    );
    let listed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(maskstudio::infer::export::images_file_for(&out_json)).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a.png", "b.png", "d.png"],
        "input order, bad file left out"
    );
    let sizes: Vec<(u64, u64)> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["width"].as_u64().unwrap(), i["height"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes, [(90, 70), (61, 117), (200, 150)]);
}

#[test]
fn a_dead_decoder_fails_the_job_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _vs, _model) = random_bundle(dir.path());
    let images = folder(dir.path());
    let out_json = dir.path().join("results.json");
    // The first file passes, then the decoder thread panics.
    let out = predict(&bundle, &out_json, &images, Some("predict-decode:1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the predict-decode thread panicked: injected fault at predict-decode"),
        "{stderr}"
    );
    assert!(!out_json.exists(), "no results file from a failed job");
}

#[test]
fn prepared_inputs_give_the_detections_of_the_full_float_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_bundle, _vs, model) = random_bundle(dir.path());
    let params = PrepareParams::from_config(model.config()).unwrap();
    for (w, h, seed) in [(90u32, 70u32, 10u8), (61, 117, 80), (200, 150, 160)] {
        let path = dir.path().join(format!("i{seed}.png"));
        common::write_png(&path, w, h, seed);
        let image = maskstudio::infer::read_image(&path).unwrap();
        // The model's own path: [3, H, W] f32 in 0..1, normalised and resized inside.
        let full = Tensor::from_slice(image.as_raw())
            .view([i64::from(h), i64::from(w), 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float)
            / 255.0;
        let want = model.forward_eval_cropped(&[full]).unwrap().remove(0);
        let prepared = prepare(&image, &params).unwrap();
        let input = prepared.to_tensor(Device::Cpu).unwrap();
        let got = model
            .forward_eval_cropped_prepared(&[input], &[prepared.original])
            .unwrap()
            .remove(0);
        assert_eq!(got.image_size, (i64::from(h), i64::from(w)));
        assert_eq!(got.boxes.size(), want.boxes.size(), "{w}x{h}: detections");
        // Inputs differ by at most a few f32 ulps (prepare's unit test): boxes in pixels and
        // scores agree to 1e-3, masks to 1e-3 per probability.
        let db = (&got.boxes - &want.boxes).abs().max().double_value(&[]);
        let ds = (&got.scores - &want.scores).abs().max().double_value(&[]);
        assert!(db < 1e-3 && ds < 1e-3, "{w}x{h}: boxes {db}, scores {ds}");
        assert_eq!(
            Vec::<i64>::try_from(&got.labels).unwrap(),
            Vec::<i64>::try_from(&want.labels).unwrap()
        );
        for (a, b) in got.masks.iter().zip(&want.masks) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert_eq!((a.x0, a.y0, a.probs.size()), (b.x0, b.y0, b.probs.size()));
                    let d = (&a.probs - &b.probs).abs().max().double_value(&[]);
                    assert!(d < 1e-3, "{w}x{h}: mask {d}");
                }
                (None, None) => {}
                _ => panic!("{w}x{h}: a mask on one side only"),
            }
        }
    }
}
