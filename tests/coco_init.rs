//! The `quality` preset's COCO Mask R-CNN start (issue 14): torchvision's `state_dict` read by
//! our checkpoint reader (zip and legacy `torch.save`), loaded into the model with the
//! predictors re-initialised; the weights catalogue's torch.hub hash-prefix rule and
//! `maskstudio weights --add`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use maskstudio::host::{
    Checksum, PRETRAINED, PretrainedWeights, add_weights_to, hash_prefix_matches,
};
use maskstudio::model::checkpoint::read_state_dict;
use maskstudio::model::weights::is_predictor;
use maskstudio::model::{MaskRcnn, MaskRcnnConfig};
use maskstudio::train::init::{QualityInit, init_quality_from, load_coco_file};
use maskstudio::train::{Preset, TrainConfig};
use tch::{Device, Tensor, nn};

const COCO_FILE: &str = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth";

/// torchvision's `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` `state_dict` with
/// every float tensor (BatchNorm statistics included) set to seeded values in [0.5, 1.5), saved
/// with `torch.save` as zip (argv[1]) and legacy (argv[2]).
const PY_COCO_LIKE: &str = r#"
import sys, torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
torch.manual_seed(0)
sd = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for v in sd.values():
        if v.is_floating_point():
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
torch.save(sd, sys.argv[1])
torch.save(sd, sys.argv[2], _use_new_zipfile_serialization=False)
print(len(sd))
"#;

/// Whether the torch venv's Python is there; outside CI a missing venv skips (with a message).
fn have_venv_python() -> bool {
    let python = maskstudio::host::python();
    let found = python.is_absolute() && python.exists();
    if !found {
        assert!(
            !common::running_in_ci(),
            "the torch venv's python ({python:?}) is missing under CI=true"
        );
        eprintln!("SKIP: no torch venv python at {python:?} (scripts/setup-venv.sh installs it)");
    }
    found
}

fn write_coco_like(dir: &Path) -> (PathBuf, PathBuf) {
    let zip = dir.join("coco_zip.pth");
    let legacy = dir.join("coco_legacy.pth");
    let output = Command::new(maskstudio::host::python())
        .arg("-c")
        .arg(PY_COCO_LIKE)
        .arg(&zip)
        .arg(&legacy)
        .output()
        .expect("running the torch venv's python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (zip, legacy)
}

fn quality_config(num_classes: i64) -> MaskRcnnConfig {
    let cfg = TrainConfig {
        preset: Preset::Quality,
        ..TrainConfig::default()
    };
    cfg.model_config(num_classes).unwrap()
}

fn build(cfg: &MaskRcnnConfig) -> nn::VarStore {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    MaskRcnn::new(&vs.root(), cfg).unwrap();
    vs
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn file_tensors(path: &Path) -> HashMap<String, Tensor> {
    read_state_dict(path).unwrap().into_iter().collect()
}

/// Checks one load: predictors (and `fresh_too`) keep their fresh values, every other variable
/// equals the file's tensor exactly.
fn check_load(
    vs: &nn::VarStore,
    before: &HashMap<String, Tensor>,
    file: &HashMap<String, Tensor>,
    fresh_too: &[&str],
) -> usize {
    let mut copied = 0;
    for (name, var) in vs.variables() {
        let fresh = is_predictor(&name) || fresh_too.contains(&name.as_str());
        if fresh {
            assert!(var.equal(&before[&name]), "{name} changed");
            let f = &file[&name];
            assert!(
                var.size() != f.size() || !var.equal(f),
                "{name} holds the file's values"
            );
        } else {
            let f = &file[&name];
            assert_eq!(var.kind(), f.kind(), "{name}");
            assert!(var.equal(f), "{name} differs from the file");
            copied += 1;
        }
    }
    copied
}

#[test]
fn coco_state_dict_loads_except_predictors_zip_and_legacy() {
    if !have_venv_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (zip, legacy) = write_coco_like(dir.path());

    // Zip format, 3 classes + background, anchors with four aspect ratios: predictors take the
    // project's class count, the RPN head's different shape is reported and left fresh.
    let mut cfg = quality_config(4);
    cfg.aspect_ratios = vec![vec![0.25, 0.5, 1.0, 2.0]; cfg.aspect_ratios.len()];
    let mut vs = build(&cfg);
    let before = snapshot(&vs);
    let (report, predictors) = load_coco_file(&mut vs, &zip).unwrap();
    let file = file_tensors(&zip);
    let rpn = [
        "rpn.head.bbox_pred.bias",
        "rpn.head.bbox_pred.weight",
        "rpn.head.cls_logits.bias",
        "rpn.head.cls_logits.weight",
    ];
    let copied = check_load(&vs, &before, &file, &rpn);
    assert_eq!(report.loaded.len(), copied);
    assert!(report.missing.is_empty(), "{report}");
    let mut mismatched: Vec<&str> = report
        .shape_mismatch
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    mismatched.sort();
    assert_eq!(mismatched, rpn, "{report}");
    assert_eq!(predictors.len(), 6, "{predictors:?}");
    let vars = vs.variables();
    let shape = |n: &str| vars[n].size();
    assert_eq!(shape("roi_heads.box_predictor.cls_score.weight"), [4, 1024]);
    assert_eq!(shape("roi_heads.box_predictor.cls_score.bias"), [4]);
    assert_eq!(
        shape("roi_heads.box_predictor.bbox_pred.weight"),
        [16, 1024]
    );
    assert_eq!(shape("roi_heads.box_predictor.bbox_pred.bias"), [16]);
    assert_eq!(
        shape("roi_heads.mask_predictor.mask_fcn_logits.weight"),
        [4, 256, 1, 1]
    );
    assert_eq!(shape("roi_heads.mask_predictor.mask_fcn_logits.bias"), [4]);
    for key in [
        "backbone.body.conv1.weight",
        "backbone.body.layer4.2.bn3.running_var",
        "backbone.fpn.layer_blocks.3.0.weight",
        "rpn.head.conv.0.0.weight",
        "roi_heads.box_head.fc7.weight",
        "roi_heads.mask_head.3.0.weight",
        "roi_heads.mask_predictor.conv5_mask.weight",
    ] {
        assert!(report.loaded.iter().any(|n| n == key), "{key} not loaded");
    }
    drop((vs, before, file));

    // Legacy format, 91 classes (the file's own count): the predictors fit the file's shapes
    // and are still re-initialised, as the tutorial replaces them.
    let cfg = quality_config(91);
    let mut vs = build(&cfg);
    let before = snapshot(&vs);
    let (report, _) = load_coco_file(&mut vs, &legacy).unwrap();
    let file = file_tensors(&legacy);
    let copied = check_load(&vs, &before, &file, &[]);
    assert_eq!(report.loaded.len(), copied);
    assert!(report.shape_mismatch.is_empty() && report.missing.is_empty());
    drop((before, file));

    // Through the weights folder: absent → random initialisation with a note naming the file
    // and the folder; present but not the published file → an error naming the hash rule.
    let weights = dir.path().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    let init = init_quality_from(&mut vs, &cfg, &weights).unwrap();
    assert!(matches!(init, QualityInit::Random { .. }));
    let note = init.note();
    assert!(note.starts_with("random initialisation: "), "{note}");
    assert!(note.contains(COCO_FILE), "{note}");
    assert!(note.contains(&weights.display().to_string()), "{note}");
    assert!(note.contains("maskstudio weights --add"), "{note}");
    std::fs::rename(&legacy, weights.join(COCO_FILE)).unwrap();
    let err = init_quality_from(&mut vs, &cfg, &weights).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(COCO_FILE) && msg.contains("bf2d0c1e"), "{msg}");
}

#[test]
fn hash_prefix_rule_is_torch_hubs() {
    let digest = "bf2d0c1e5f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";
    assert!(hash_prefix_matches(digest, "bf2d0c1e"));
    assert!(hash_prefix_matches(digest, "BF2D0C1E"));
    assert!(!hash_prefix_matches(digest, "bf2d0c1f"));
    assert!(!hash_prefix_matches(digest, ""));
    assert!(Checksum::Sha256Prefix("bf2d").matches(digest));
    assert!(Checksum::Sha256(digest).matches(digest));
    assert!(!Checksum::Sha256("bf2d0c1e").matches(digest));
    // Every catalogue file name carries its hash prefix (torch.hub's HASH_REGEX
    // `-([a-f0-9]*)\.`), and the entry's checksum agrees with it.
    for w in PRETRAINED {
        let stem = w.file_name.rsplit_once('.').unwrap().0;
        let prefix = stem.rsplit_once('-').unwrap().1;
        assert!(prefix.chars().all(|c| c.is_ascii_hexdigit()), "{}", w.name);
        match w.checksum {
            Checksum::Sha256(full) => assert!(full.starts_with(prefix), "{}", w.name),
            Checksum::Sha256Prefix(p) => assert_eq!(p, prefix, "{}", w.name),
        }
    }
    let coco = maskstudio::host::pretrained("maskrcnn_resnet50_fpn_coco").unwrap();
    assert_eq!(coco.file_name, COCO_FILE);
    assert_eq!(coco.checksum, Checksum::Sha256Prefix("bf2d0c1e"));
    assert!(!coco.fetch_by_default);
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn entry(file_name: &'static str, prefix: &'static str) -> PretrainedWeights {
    PretrainedWeights {
        name: "test_weights",
        file_name,
        checksum: Checksum::Sha256Prefix(prefix),
        urls: &[],
        python_package: None,
        fetch_by_default: false,
        used_for: "tests",
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn add_weights_copies_a_file_whose_sha256_prefix_matches() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let staged = dir.path().join("staged");
    std::fs::write(&staged, &bytes).unwrap();
    let digest = maskstudio::dataset::store::sha256_of_file(&staged).unwrap();
    let prefix = leak(digest[..8].to_owned());
    let file_name = leak(format!("tiny-{prefix}.pth"));
    let file = dir.path().join(file_name);
    std::fs::rename(&staged, &file).unwrap();
    let dest_dir = dir.path().join("weights");

    // A wrong prefix: refused, naming the file; nothing lands in the folder.
    let wrong = if prefix.starts_with('0') { "1" } else { "0" };
    let bad = [entry(file_name, wrong)];
    let err = add_weights_to(&file, &bad, &dest_dir).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(
        msg.contains(&digest) && msg.contains("nothing was copied"),
        "{msg}"
    );
    assert!(listing(&dest_dir).is_empty(), "{:?}", listing(&dest_dir));

    // The right prefix: copied byte for byte, no temporary file left.
    let good = [entry(file_name, prefix)];
    let (w, dest) = add_weights_to(&file, &good, &dest_dir).unwrap();
    assert_eq!(w.file_name, file_name);
    assert_eq!(dest, dest_dir.join(file_name));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(listing(&dest_dir), [file_name.to_owned()]);

    // A name not in the catalogue is refused.
    let other = dir.path().join("renamed.pth");
    std::fs::copy(&file, &other).unwrap();
    let err = add_weights_to(&other, &good, &dest_dir).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a file of the weights catalogue"),
        "{err:#}"
    );
}

#[test]
fn weights_add_command_refuses_a_file_with_the_wrong_hash() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let fake = dir.path().join(COCO_FILE);
    std::fs::write(&fake, b"not the COCO weights").unwrap();
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_maskstudio"))
            .args(["weights", "--add"])
            .arg(file)
            .env("MASKSTUDIO_CACHE", &cache)
            .output()
            .unwrap()
    };
    let out = run(&fake);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&fake.display().to_string()), "{stderr}");
    assert!(stderr.contains("bf2d0c1e"), "{stderr}");
    assert!(
        listing(&cache.join("weights")).is_empty(),
        "{:?}",
        listing(&cache.join("weights"))
    );

    let unknown = dir.path().join("model_final.pth");
    std::fs::write(&unknown, b"x").unwrap();
    let out = run(&unknown);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("model_final.pth"), "{stderr}");
    assert!(stderr.contains(COCO_FILE), "{stderr}");
}
