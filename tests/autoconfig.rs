//! Dataset statistics → proposed model configuration (`dataset::stats`, `train::autoconfig`) on
//! synthetic box distributions, a real project in a temporary folder, `maskstudio info --stats`,
//! and the shared droplets VIA dataset when it is beside the checkout.

mod common;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::stats::DatasetStats;
use maskstudio::dataset::store::Project;
use maskstudio::model::MaskRcnnConfig;
use maskstudio::train::TrainConfig;
use maskstudio::train::autoconfig::{AutoConfig, anchor_coverage, input_shapes, resolve};

const TOL: f64 = 1e-9;

/// The default training preset's model (cpu-fast: MobileNetV2-FPN at 320 px), one class.
fn cpu_fast() -> MaskRcnnConfig {
    TrainConfig::default().preset_model_config(2)
}

/// `images` images of `width` x `height`, each with `per_image` boxes whose sqrt(area) runs
/// evenly over `lo..=hi` and whose h/w runs over 0.75..=1.33 (deterministic).
fn synthetic(
    images: usize,
    width: u32,
    height: u32,
    per_image: usize,
    lo: f64,
    hi: f64,
) -> Vec<(u32, u32, Vec<[f64; 4]>)> {
    let total = (images * per_image).max(2) as f64 - 1.0;
    (0..images)
        .map(|i| {
            let boxes = (0..per_image)
                .map(|k| {
                    let t = (i * per_image + k) as f64 / total;
                    let size = lo + (hi - lo) * t;
                    let ratio = 0.75 + (1.33 - 0.75) * ((k * 7 % 11) as f64 / 10.0);
                    let (w, h) = (size / ratio.sqrt(), size * ratio.sqrt());
                    [1.0, 1.0, w, h]
                })
                .collect();
            (width, height, boxes)
        })
        .collect()
}

fn keys(auto: &AutoConfig) -> Vec<&'static str> {
    auto.overrides.iter().map(|o| o.key).collect()
}

#[test]
fn tiny_objects_get_small_anchors_and_a_larger_input() {
    let stats = DatasetStats::from_boxes(&synthetic(40, 320, 240, 20, 8.0, 16.0));
    assert_eq!((stats.images, stats.instances), (40, 800));
    let size = stats.object_size.unwrap();
    assert!((size.min - 8.0).abs() < 1e-6 && (size.max - 16.0).abs() < 1e-6);
    let base = cpu_fast();
    let auto = AutoConfig::from_stats(&stats, &base);
    let cfg = auto.apply(&base).unwrap();
    let (before, after) = (auto.coverage_before.unwrap(), auto.coverage_after.unwrap());
    println!(
        "tiny: {:?} before {before:.3} after {after:.3}",
        keys(&auto)
    );
    assert!(cfg.anchor_sizes[0][0] <= 16, "{:?}", cfg.anchor_sizes);
    assert!(after >= 0.9, "coverage after {after}");
    assert!(after > before, "before {before} after {after}");
    // 8..16 px objects cannot reach 32 px anchors at IoU 0.5 (at most (16/32)^2 = 0.25).
    assert!(before < 0.05, "before {before}");
    // Upscaled (p5 ~ 8.4 px < 16 px), bounded by twice the preset's 320.
    assert!(
        cfg.min_size[0] > 320 && cfg.min_size[0] <= 640,
        "{:?}",
        cfg.min_size
    );
    assert_eq!(cfg.max_size, cfg.min_size[0]);
    // The reported "after" is what the applied config gives.
    let shapes = input_shapes(&stats, cfg.min_size[0], cfg.max_size);
    let again = anchor_coverage(&shapes, &cfg.anchor_sizes, &cfg.aspect_ratios).unwrap();
    assert!((again - after).abs() < TOL);
    // Factor 2 per level, five FPN levels.
    assert_eq!(cfg.anchor_sizes.len(), 5);
    for pair in cfg.anchor_sizes.windows(2) {
        assert_eq!(pair[1][0], 2 * pair[0][0]);
    }
    // Every change has a reason.
    assert!(auto.overrides.iter().all(|o| !o.reason.is_empty()));
}

#[test]
fn huge_objects_keep_large_anchors_and_the_input_size() {
    let stats = DatasetStats::from_boxes(&synthetic(20, 800, 800, 3, 300.0, 600.0));
    for base in [MaskRcnnConfig::default(), cpu_fast()] {
        let auto = AutoConfig::from_stats(&stats, &base);
        let cfg = auto.apply(&base).unwrap();
        println!(
            "huge: {:?} before {:?} after {:?}",
            keys(&auto),
            auto.coverage_before,
            auto.coverage_after
        );
        assert!(cfg.anchor_sizes.last().unwrap()[0] >= 256);
        assert_eq!(cfg.min_size, base.min_size, "no upscaling");
        assert_eq!(cfg.max_size, base.max_size);
        assert!(auto.coverage_after.unwrap() >= auto.coverage_before.unwrap());
        // torchvision's 32..512 already cover 300..600 px boxes (600 px vs 512: IoU 0.73).
        assert!(auto.coverage_before.unwrap() > 0.99);
        assert!(!keys(&auto).contains(&"anchor_sizes"));
    }
}

#[test]
fn one_instance_per_image_keeps_torchvision_budgets() {
    let stats = DatasetStats::from_boxes(&synthetic(30, 640, 480, 1, 60.0, 200.0));
    let base = MaskRcnnConfig::default();
    let auto = AutoConfig::from_stats(&stats, &base);
    let cfg = auto.apply(&base).unwrap();
    assert_eq!(cfg.box_detections_per_img, 100);
    assert_eq!(cfg.rpn_post_nms_top_n_train, 2000);
    assert_eq!(cfg.rpn_post_nms_top_n_test, 1000);
    assert_eq!(cfg.rpn_pre_nms_top_n_test, 1000);
    assert_eq!(cfg.box_batch_size_per_image, 512);
    for key in keys(&auto) {
        assert!(
            !key.starts_with("rpn_") && !key.starts_with("box_"),
            "{key}"
        );
    }
}

#[test]
fn crowded_images_raise_detection_and_proposal_budgets() {
    let stats = DatasetStats::from_boxes(&synthetic(10, 640, 640, 200, 20.0, 40.0));
    let per = stats.per_image.unwrap();
    assert!((per.p99 - 200.0).abs() < TOL && (per.mean - 200.0).abs() < TOL);
    let base = cpu_fast();
    let auto = AutoConfig::from_stats(&stats, &base);
    let cfg = auto.apply(&base).unwrap();
    println!("crowded: {:?}", keys(&auto));
    // ceil(1.5 * 200) = 300 detections; 10 * 200 = 2000 test-time proposals.
    assert_eq!(cfg.box_detections_per_img, 300);
    assert_eq!(cfg.rpn_post_nms_top_n_test, 2000);
    assert!(cfg.rpn_pre_nms_top_n_test >= cfg.rpn_post_nms_top_n_test);
    // Training budgets keep the preset's (measured faster at equal AP), with the reason.
    assert_eq!(cfg.rpn_post_nms_top_n_train, base.rpn_post_nms_top_n_train);
    assert_eq!(cfg.rpn_pre_nms_top_n_train, base.rpn_pre_nms_top_n_train);
    assert_eq!(cfg.box_batch_size_per_image, base.box_batch_size_per_image);
    assert!(
        auto.kept
            .iter()
            .any(|k| k.starts_with("training budgets kept")),
        "{:?}",
        auto.kept
    );
    let tv = AutoConfig::from_stats(&stats, &MaskRcnnConfig::default());
    assert!(!keys(&tv).contains(&"rpn_post_nms_top_n_train"));
    assert_eq!(
        tv.apply(&MaskRcnnConfig::default())
            .unwrap()
            .rpn_post_nms_top_n_test,
        2000
    );
}

#[test]
fn empty_dataset_keeps_the_base_config_with_a_reason() {
    let base = cpu_fast();
    for images in [
        vec![],
        vec![(320, 240, vec![]), (0, 0, vec![[0.0, 0.0, 0.0, 0.0]])],
    ] {
        let stats = DatasetStats::from_boxes(&images);
        let auto = AutoConfig::from_stats(&stats, &base);
        assert!(auto.overrides.is_empty(), "{:?}", auto.overrides);
        assert_eq!(auto.apply(&base).unwrap(), base);
        assert!(auto.coverage_before.is_none() && auto.coverage_after.is_none());
        assert!(
            auto.kept.iter().any(|k| k.contains("base config kept")),
            "{:?}",
            auto.kept
        );
    }
}

#[test]
fn project_statistics_and_info_stats_cli() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::square_project(dir.path(), "box", 6);
    let project = Project::open(&root).unwrap();
    let stats = DatasetStats::from_project(&project, None).unwrap();
    assert_eq!((stats.images, stats.instances, stats.zero_area), (6, 6, 0));
    let size = stats.object_size.unwrap();
    // Squares of side 24, 26, ..., 34 from the stored RLE boxes.
    assert!((size.min - 24.0).abs() < TOL && (size.max - 34.0).abs() < TOL);
    assert!((size.p50 - 29.0).abs() < TOL);
    assert!((stats.aspect.unwrap().p50 - 1.0).abs() < TOL);
    assert_eq!(stats.short_side_p50, Some(72.0));
    assert_eq!(stats.long_side_p50, Some(96.0));
    assert!(
        DatasetStats::from_project(&project, Some("validation"))
            .unwrap()
            .images
            == 0
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_maskstudio"))
        .args(["info", "--stats"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        text.contains("split        images  instances"),
        "plain info first"
    );
    assert!(text.contains("anchor coverage"), "{text}");
    assert!(text.contains("before") && text.contains("after"));
    assert!(text.contains("object size (px)  min 24.0"), "{text}");
    // Without the flag the statistics are not printed.
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_maskstudio"))
        .arg("info")
        .arg(&root)
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("anchor coverage"));
}

#[test]
fn droplets_via_statistics() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let root = data.join("droplets-via");
    let set = formats::read(&root, Format::Via).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut project = Project::create_or_open(&dir.path().join("p")).unwrap();
    project
        .import(&set, &root, &CancelToken::default(), &mut |_| {})
        .unwrap();
    let stats = DatasetStats::from_project(&project, None).unwrap();
    assert_eq!((stats.images, stats.instances), (74, 1304));
    println!(
        "droplets stats: {stats:#?}",
        stats = DatasetStats {
            boxes: Vec::new(),
            ..stats.clone()
        }
    );
    let base = cpu_fast();
    let auto = AutoConfig::from_stats(&stats, &base);
    for o in &auto.overrides {
        println!("override {} {} -> {}: {}", o.key, o.base, o.value, o.reason);
    }
    for k in &auto.kept {
        println!("kept: {k}");
    }
    println!(
        "coverage before {:?} after {:?}",
        auto.coverage_before, auto.coverage_after
    );
    assert!(auto.coverage_after.unwrap() >= auto.coverage_before.unwrap());
    auto.apply(&base).unwrap();
}

#[test]
fn resolve_merges_proposals_and_raises_the_loader_size() {
    // 8-12 px objects in 640 x 480 images: at cpu-fast's 320 px they are 4-6 px, so the
    // input is upscaled and the loader must resize to the new longer side too.
    let stats = DatasetStats::from_boxes(&synthetic(20, 640, 480, 30, 8.0, 12.0));
    let cfg = TrainConfig {
        auto_config: true,
        ..TrainConfig::default()
    };
    let r = resolve(&cfg, &stats, 2).unwrap();
    let max = r
        .auto
        .overrides
        .iter()
        .find(|o| o.key == "max_size")
        .and_then(|o| o.value.as_i64())
        .expect("an upscaled input");
    assert!(max > 320, "{max}");
    assert_eq!(r.config.image_size, Some(u32::try_from(max).unwrap()));
    let model = r.config.model_config(2).unwrap();
    assert_eq!(model.max_size, max);
    assert!(model.anchor_sizes[0][0] < 32, "{:?}", model.anchor_sizes);
    assert!(r.pinned.is_empty(), "{:?}", r.pinned);
    // Every proposal is in the merged overrides with its value.
    for o in &r.auto.overrides {
        assert_eq!(
            r.config.model_overrides.get(o.key),
            Some(&o.value),
            "{}",
            o.key
        );
    }
}

#[test]
fn resolve_leaves_what_the_user_set() {
    let stats = DatasetStats::from_boxes(&synthetic(20, 640, 480, 30, 8.0, 12.0));
    let mut cfg = TrainConfig {
        auto_config: true,
        image_size: Some(512),
        ..TrainConfig::default()
    };
    cfg.model_overrides
        .insert("box_detections_per_img".to_owned(), serde_json::json!(50));
    let r = resolve(&cfg, &stats, 2).unwrap();
    let keys = keys(&r.auto);
    assert!(
        !keys.contains(&"min_size") && !keys.contains(&"max_size"),
        "{keys:?}"
    );
    assert!(!keys.contains(&"box_detections_per_img"), "{keys:?}");
    assert!(
        keys.contains(&"anchor_sizes"),
        "anchors still fitted at 512 px: {keys:?}"
    );
    assert_eq!(r.config.image_size, Some(512));
    let model = r.config.model_config(2).unwrap();
    assert_eq!(model.box_detections_per_img, 50);
    assert_eq!((model.min_size.clone(), model.max_size), (vec![512], 512));
    assert!(
        r.pinned.contains(&"image_size".to_owned()),
        "{:?}",
        r.pinned
    );
    assert!(
        r.auto.kept.iter().any(|k| k.contains("set by you")),
        "{:?}",
        r.auto.kept
    );
    // Anchors chosen for the objects at the pinned 512 px input (8-12 px at 640 -> 6-10 px).
    let shapes = input_shapes(&stats, 512, 512);
    let after = anchor_coverage(&shapes, &model.anchor_sizes, &model.aspect_ratios).unwrap();
    assert!((after - r.auto.coverage_after.unwrap()).abs() < TOL);

    // Pinned anchors: kept exactly.
    cfg.model_overrides.insert(
        "anchor_sizes".to_owned(),
        serde_json::json!([[32], [64], [128], [256], [512]]),
    );
    let r = resolve(&cfg, &stats, 2).unwrap();
    assert_eq!(r.config.model_config(2).unwrap().anchor_sizes[0], vec![32]);
    assert!(!keys_of(&r).contains(&"anchor_sizes"));
}

fn keys_of(r: &maskstudio::train::autoconfig::Resolved) -> Vec<&'static str> {
    keys(&r.auto)
}
