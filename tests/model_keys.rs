//! Our var-store (name, shape, trainable) set equals torchvision 0.28's `state_dict` of the same model
//! (key lists written by `tools/gen_model_fixtures.py`, `dump_keys()`):
//! * `keys_resnet50.tsv`: `MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), 91)`,
//!   i.e. `maskrcnn_resnet50_fpn` as built for pretrained weights;
//! * `keys_mobilenet_v2.tsv`: `MaskRCNN(mobilenet_backbone("mobilenet_v2", fpn=True, returned_layers=[1,2,3,4],
//!   norm_layer=FrozenBatchNorm2d, trainable_layers=3), 91)`.

use std::collections::BTreeMap;

use maskstudio::model::{Backbone, MaskRcnn, MaskRcnnConfig};
use tch::{Device, nn};

fn expected(file: &str) -> BTreeMap<String, (Vec<i64>, bool)> {
    let path = format!("{}/tests/fixtures/model/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape: Vec<i64> = serde_json::from_str(cols[1]).unwrap();
            (cols[0].to_owned(), (shape, cols[3] == "train"))
        })
        .collect()
}

fn ours(backbone: Backbone) -> (BTreeMap<String, (Vec<i64>, bool)>, usize) {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = MaskRcnnConfig {
        backbone,
        trainable_backbone_layers: 3,
        ..MaskRcnnConfig::default()
    };
    let _model = MaskRcnn::new(&vs.root(), &cfg).unwrap();
    let vars = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, (v.size(), v.requires_grad())))
        .collect();
    (vars, vs.trainable_variables().len())
}

fn check(backbone: Backbone, file: &str) {
    let want = expected(file);
    let (got, trainable) = ours(backbone);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    for (k, (shape, train)) in &want {
        assert_eq!(&got[k].0, shape, "shape of {k}");
        assert_eq!(got[k].1, *train, "requires_grad of {k}");
    }
    assert_eq!(trainable, want.values().filter(|v| v.1).count());
    let numel: i64 = got
        .values()
        .filter(|v| v.1)
        .map(|v| v.0.iter().product::<i64>())
        .sum();
    println!(
        "{backbone:?}: {} keys, {trainable} trainable tensors, {numel} trainable elements",
        got.len()
    );
}

#[test]
fn resnet50_fpn_var_store_equals_torchvision_state_dict() {
    check(Backbone::Resnet50, "keys_resnet50.tsv");
}

#[test]
fn mobilenet_v2_fpn_var_store_equals_torchvision_state_dict() {
    check(Backbone::MobilenetV2, "keys_mobilenet_v2.tsv");
}

#[test]
fn config_round_trips_through_json() {
    let cfg = MaskRcnnConfig::for_backbone(Backbone::MobilenetV2);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"backbone\":\"mobilenet_v2\""));
    let back: MaskRcnnConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
}
