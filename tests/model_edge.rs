//! Edge cases torchvision handles and we must too (maskrcnn.md traps 12-15): images without
//! instances, no detections, random sampling, invalid inputs.

use maskstudio::model::{Backbone, MaskRcnn, MaskRcnnConfig, ModelError, Target};
use tch::{Device, Kind, Tensor, nn};

fn small_model(cfg: MaskRcnnConfig) -> (nn::VarStore, MaskRcnn) {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MaskRcnn::new(&vs.root(), &cfg).unwrap();
    (vs, model)
}

fn config() -> MaskRcnnConfig {
    MaskRcnnConfig {
        backbone: Backbone::MobilenetV2,
        num_classes: 3,
        min_size: vec![64],
        max_size: 96,
        ..MaskRcnnConfig::default()
    }
}

fn empty_target(h: i64, w: i64) -> Target {
    Target {
        boxes: Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
        labels: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        masks: Tensor::zeros([0, h, w], (Kind::Uint8, Device::Cpu)),
    }
}

fn one_instance(h: i64, w: i64) -> Target {
    let masks = Tensor::zeros([1, h, w], (Kind::Uint8, Device::Cpu));
    let _ = masks.get(0).narrow(0, 10, 20).narrow(1, 5, 30).fill_(1);
    Target {
        boxes: Tensor::from_slice(&[5.0f32, 10.0, 35.0, 30.0]).view([1, 4]),
        labels: Tensor::from_slice(&[2i64]),
        masks,
    }
}

#[test]
fn batch_without_any_instances_trains() {
    let (vs, model) = small_model(config());
    let images = [
        Tensor::rand([3, 50, 70], (Kind::Float, Device::Cpu)),
        Tensor::rand([3, 64, 40], (Kind::Float, Device::Cpu)),
    ];
    let targets = [empty_target(50, 70), empty_target(64, 40)];
    let losses = model.forward_train(&images, &targets).unwrap();
    let map = losses.to_map();
    assert!(map.values().all(|v| v.is_finite()), "{map:?}");
    assert_eq!(map["loss_mask"], 0.0);
    assert_eq!(map["loss_box_reg"], 0.0);
    assert_eq!(map["loss_rpn_box_reg"], 0.0);
    losses.total().backward();
    let g = vs.variables()["roi_heads.box_predictor.cls_score.weight"].grad();
    assert!(g.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn random_sampling_gives_finite_losses() {
    let (_vs, mut model) = small_model(config());
    model.seed(42);
    let images = [
        Tensor::rand([3, 48, 64], (Kind::Float, Device::Cpu)),
        Tensor::rand([3, 40, 40], (Kind::Float, Device::Cpu)),
    ];
    let targets = [one_instance(48, 64), empty_target(40, 40)];
    let map = model.forward_train(&images, &targets).unwrap().to_map();
    assert!(map.values().all(|v| v.is_finite()), "{map:?}");
}

#[test]
fn no_detections_give_empty_tensors_of_the_right_shape() {
    let cfg = MaskRcnnConfig {
        box_score_thresh: 1.0,
        ..config()
    };
    let (_vs, model) = small_model(cfg);
    let images = [Tensor::rand([3, 50, 70], (Kind::Float, Device::Cpu))];
    let dets = tch::no_grad(|| model.forward_eval(&images)).unwrap();
    assert_eq!(dets[0].boxes.size(), vec![0, 4]);
    assert_eq!(dets[0].labels.size(), vec![0]);
    assert_eq!(dets[0].scores.size(), vec![0]);
    assert_eq!(dets[0].masks.size(), vec![0, 1, 50, 70]);
}

#[test]
fn invalid_inputs_are_errors_not_panics() {
    let (_vs, model) = small_model(config());
    let gray = [Tensor::rand([1, 50, 70], (Kind::Float, Device::Cpu))];
    assert!(matches!(
        model.forward_eval(&gray),
        Err(ModelError::InvalidInput(_))
    ));
    let images = [Tensor::rand([3, 50, 70], (Kind::Float, Device::Cpu))];
    let wrong_mask = [empty_target(40, 70)];
    assert!(matches!(
        model.forward_train(&images, &wrong_mask),
        Err(ModelError::InvalidInput(_))
    ));
    let mut degenerate = one_instance(50, 70);
    degenerate.boxes = Tensor::from_slice(&[5.0f32, 10.0, 5.0, 30.0]).view([1, 4]);
    assert!(matches!(
        model.forward_train(&images, &[degenerate]),
        Err(ModelError::InvalidInput(_))
    ));
    let bad_cfg = MaskRcnnConfig {
        returned_layers: vec![3, 2],
        ..config()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(
        MaskRcnn::new(&vs.root(), &bad_cfg),
        Err(ModelError::InvalidConfig(_))
    ));
}

/// Zero proposals (every RPN score under `rpn_score_thresh`, as an untrained or tiny model can
/// give) reach the box head as an empty batch: empty detections, not a reshape error.
#[test]
fn zero_proposals_give_empty_detections() {
    let cfg = MaskRcnnConfig {
        rpn_score_thresh: 1.0,
        ..config()
    };
    let (_vs, model) = small_model(cfg);
    let images = [Tensor::rand([3, 50, 70], (Kind::Float, Device::Cpu))];
    let dets = tch::no_grad(|| model.forward_eval(&images)).unwrap();
    assert_eq!(dets[0].boxes.size(), vec![0, 4]);
    assert_eq!(dets[0].scores.size(), vec![0]);
    assert_eq!(dets[0].masks.size(), vec![0, 1, 50, 70]);
}
