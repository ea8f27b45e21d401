//! COCOeval port against pycocotools: the fixtures of `tools/gen_eval_fixtures.py` carry
//! pycocotools' numbers; ours must equal them to 1e-4. Plus the matching edge cases.

use maskstudio::dataset::Rle;
use maskstudio::eval::coco_eval::{
    DtAnn, EvalParams, EvalResult, GtAnn, IouType, STAT_NAMES, evaluate, from_coco_json,
};
use serde_json::Value;

const TOL: f64 = 1e-4;
const FIXTURES: [&str; 3] = ["mixed_bbox_segm", "segm_only", "bbox_only"];

fn load(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/eval/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn check_fixture(name: &str, iou_type: IouType) -> f64 {
    let fx = load(name);
    let r = from_coco_json(&fx["gt"], &fx["results"], iou_type).unwrap();
    let exp = &fx["expected"][iou_type.name()];
    let mut worst = 0.0f64;
    for (i, want) in exp["stats"].as_array().unwrap().iter().enumerate() {
        let want = want.as_f64().unwrap();
        let diff = (r.stats[i] - want).abs();
        assert!(
            diff <= TOL,
            "{name} {}: {} ours {} pycocotools {want}",
            iou_type.name(),
            STAT_NAMES[i],
            r.stats[i]
        );
        worst = worst.max(diff);
    }
    let want_ap = exp["per_class_ap"].as_array().unwrap();
    assert_eq!(want_ap.len(), r.per_class_ap.len());
    for (w, &(cat, ap)) in want_ap.iter().zip(&r.per_class_ap) {
        assert_eq!(w[0].as_i64().unwrap(), cat);
        let diff = (w[1].as_f64().unwrap() - ap).abs();
        assert!(
            diff <= TOL,
            "{name} {}: class {cat} AP {ap} vs {w}",
            iou_type.name()
        );
        worst = worst.max(diff);
    }
    let want_rec = exp["recall"].as_array().unwrap();
    assert_eq!(want_rec.len(), r.recall.len());
    for (i, (w, &ours)) in want_rec.iter().zip(&r.recall).enumerate() {
        let diff = (w.as_f64().unwrap() - f64::from(ours)).abs();
        assert!(
            diff <= TOL,
            "{name} {}: recall[{i}] {ours} vs {w}",
            iou_type.name()
        );
    }
    eprintln!(
        "{name} {}: max |ours - pycocotools| = {worst:.3e}",
        iou_type.name()
    );
    worst
}

#[test]
fn fixtures_match_pycocotools_bbox() {
    for name in FIXTURES {
        check_fixture(name, IouType::Bbox);
    }
}

#[test]
fn fixtures_match_pycocotools_segm() {
    for name in FIXTURES {
        check_fixture(name, IouType::Segm);
    }
}

#[test]
fn fixtures_cover_the_edge_cases() {
    let fx = load("mixed_bbox_segm");
    let anns = fx["gt"]["annotations"].as_array().unwrap();
    assert!(anns.iter().any(|a| a["iscrowd"] == 1));
    assert!(anns.iter().any(|a| a["segmentation"].is_array()));
    assert!(anns.iter().any(|a| a["segmentation"]["counts"].is_string()));
    let r = from_coco_json(&fx["gt"], &fx["results"], IouType::Bbox).unwrap();
    assert!(r.category_ids.len() >= 20);
    assert!(r.per_class_ap.iter().any(|&(_, ap)| ap == -1.0));
    let mut per_image = std::collections::HashMap::new();
    for d in fx["results"].as_array().unwrap() {
        *per_image
            .entry(d["image_id"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    assert!(per_image.values().any(|&n| n > 100));
    assert!(per_image.len() < r.image_ids.len());
}

// ---- unit tests of the matching rules --------------------------------------------------

fn gt(image_id: i64, bbox: [f64; 4], iscrowd: bool) -> GtAnn {
    GtAnn {
        image_id,
        category_id: 1,
        iscrowd,
        area: bbox[2] * bbox[3],
        bbox,
        rle: None,
    }
}

fn dt(image_id: i64, bbox: [f64; 4], score: f64) -> DtAnn {
    DtAnn {
        image_id,
        category_id: 1,
        score,
        area: bbox[2] * bbox[3],
        bbox,
        rle: None,
    }
}

fn assert_close(ours: f64, want: f64, what: &str) {
    assert!((ours - want).abs() < 1e-9, "{what}: {ours} vs {want}");
}

fn run(gts: &[GtAnn], dts: &[DtAnn], images: &[i64]) -> EvalResult {
    evaluate(
        gts,
        dts,
        images,
        &[1],
        IouType::Bbox,
        &EvalParams::default(),
    )
    .unwrap()
}

#[test]
fn perfect_detections_give_ap_one() {
    let g = [
        gt(1, [10.0, 10.0, 50.0, 50.0], false),
        gt(2, [0.0, 0.0, 100.0, 120.0], false),
    ];
    let d = [
        dt(1, [10.0, 10.0, 50.0, 50.0], 0.9),
        dt(2, [0.0, 0.0, 100.0, 120.0], 0.8),
    ];
    let r = run(&g, &d, &[1, 2]);
    assert_close(r.stats[0], 1.0, "");
    assert_close(r.stats[8], 1.0, "");
    // No small objects: APs and ARs are -1 like pycocotools.
    assert_close(r.stats[3], -1.0, "");
    assert_close(r.stats[9], -1.0, "");
    assert_eq!(r.per_class_ap.len(), 1);
    assert_eq!(r.per_class_ap[0].0, 1);
    assert_close(r.per_class_ap[0].1, 1.0, "class 1 AP");
}

#[test]
fn no_ground_truth_gives_minus_one_everywhere() {
    let r = run(&[], &[dt(1, [0.0, 0.0, 5.0, 5.0], 0.5)], &[1]);
    assert!(r.stats.iter().all(|&s| s == -1.0));
    assert_eq!(r.per_class_ap, vec![(1, -1.0)]);
}

#[test]
fn detection_on_crowd_is_ignored_not_false_positive() {
    // The crowd IoU is intersection / area(dt) = 1 for a detection inside the crowd box.
    let g = [
        gt(1, [0.0, 0.0, 40.0, 40.0], false),
        gt(1, [50.0, 0.0, 100.0, 100.0], true),
    ];
    let d = [
        dt(1, [60.0, 10.0, 20.0, 20.0], 0.99),
        dt(1, [0.0, 0.0, 40.0, 40.0], 0.5),
    ];
    let r = run(&g, &d, &[1]);
    assert_close(r.stats[1], 1.0, "the crowd match must not cost precision");
    // Without the crowd flag, the same detection is a false positive first in line.
    let g2 = [g[0].clone(), gt(1, [50.0, 0.0, 100.0, 100.0], false)];
    let r2 = run(&g2, &d, &[1]);
    assert!(r2.stats[1] < 1.0);
}

#[test]
fn crowd_can_absorb_several_detections() {
    let g = [
        gt(1, [0.0, 0.0, 100.0, 100.0], true),
        gt(1, [200.0, 0.0, 30.0, 30.0], false),
    ];
    let d = [
        dt(1, [10.0, 10.0, 20.0, 20.0], 0.9),
        dt(1, [40.0, 40.0, 20.0, 20.0], 0.8),
        dt(1, [200.0, 0.0, 30.0, 30.0], 0.7),
    ];
    assert_close(run(&g, &d, &[1]).stats[0], 1.0, "");
}

#[test]
fn matched_gt_is_not_matched_twice() {
    let g = [gt(1, [0.0, 0.0, 50.0, 50.0], false)];
    let d = [
        dt(1, [0.0, 0.0, 50.0, 50.0], 0.9),
        dt(1, [0.0, 0.0, 50.0, 50.0], 0.8),
    ];
    let r = run(&g, &d, &[1]);
    // Precision 1 up to recall 1 (the duplicate comes after): AP 1, and AR 1.
    assert_close(r.stats[1], 1.0, "");
    // Duplicate first with a higher score would be matched instead: still AP 1.
    assert_close(r.stats[8], 1.0, "");
}

#[test]
fn iou_threshold_is_inclusive() {
    // IoU exactly 0.5: 50x100 box against 100x100 box sharing the left half.
    let g = [gt(1, [0.0, 0.0, 100.0, 100.0], false)];
    let d = [dt(1, [0.0, 0.0, 50.0, 100.0], 0.9)];
    let r = run(&g, &d, &[1]);
    assert_close(r.stats[1], 1.0, "");
    assert_close(r.stats[2], 0.0, "");
}

#[test]
fn max_dets_cut_is_per_image_by_score() {
    // 101 detections; the true one has the lowest score and falls out of the top 100.
    let g = [gt(1, [0.0, 0.0, 50.0, 50.0], false)];
    let mut d: Vec<DtAnn> = (0..100)
        .map(|i| dt(1, [300.0 + f64::from(i), 300.0, 10.0, 10.0], 0.9))
        .collect();
    d.push(dt(1, [0.0, 0.0, 50.0, 50.0], 0.1));
    let r = run(&g, &d, &[1]);
    assert_close(r.stats[8], 0.0, "");
    // With a higher score it is inside the cut, but after 1 detection it is not yet found.
    d[100].score = 0.95;
    let r = run(&g, &d, &[1]);
    assert_close(r.stats[8], 1.0, "");
    assert_close(r.stats[6], 1.0, "");
}

#[test]
fn tied_scores_keep_input_order() {
    // Two detections, same score: the false positive listed first ranks first, so
    // precision at full recall is 1/2 and AP50 is 0.5 (pycocotools' mergesort order).
    let g = [gt(1, [0.0, 0.0, 50.0, 50.0], false)];
    let fp_first = [
        dt(1, [200.0, 200.0, 50.0, 50.0], 0.5),
        dt(1, [0.0, 0.0, 50.0, 50.0], 0.5),
    ];
    assert_close(run(&g, &fp_first, &[1]).stats[1], 0.5, "");
    let tp_first = [fp_first[1].clone(), fp_first[0].clone()];
    assert_close(run(&g, &tp_first, &[1]).stats[1], 1.0, "");
}

#[test]
fn unmatched_detection_outside_area_range_is_ignored() {
    // Small range: the small GT is found; the large false positive is ignored there.
    let g = [gt(1, [0.0, 0.0, 10.0, 10.0], false)];
    let d = [
        dt(1, [100.0, 100.0, 120.0, 120.0], 0.9),
        dt(1, [0.0, 0.0, 10.0, 10.0], 0.8),
    ];
    let r = run(&g, &d, &[1]);
    assert_close(r.stats[3], 1.0, "APs");
    assert!(
        r.stats[0] < 1.0,
        "AP over all areas pays for the false positive"
    );
    assert_close(r.stats[5], -1.0, "no large GT");
}

#[test]
fn segm_crowd_iou_uses_detection_area() {
    // 4x4 image; crowd covers the left half; detection covers the top-left 2x2 block.
    let mk = |cols: &[u32]| {
        let mut mask = vec![0u8; 16];
        for &x in cols {
            for y in 0..2 {
                mask[(x * 4 + y) as usize] = 1; // column-major
            }
        }
        let mut counts = Vec::new();
        let (mut cur, mut run) = (0u8, 0u32);
        for &v in &mask {
            if v != cur {
                counts.push(run);
                cur = v;
                run = 0;
            }
            run += 1;
        }
        counts.push(run);
        Rle::from_uncompressed(4, 4, counts).unwrap()
    };
    let crowd = Rle::from_uncompressed(4, 4, vec![0, 8, 8]).unwrap();
    let det = mk(&[0, 1]);
    let g = GtAnn {
        image_id: 1,
        category_id: 1,
        iscrowd: true,
        area: 8.0,
        bbox: [0.0; 4],
        rle: Some(crowd),
    };
    let other = GtAnn {
        iscrowd: false,
        rle: Some(mk(&[3])),
        area: 2.0,
        ..g.clone()
    };
    let d = DtAnn {
        image_id: 1,
        category_id: 1,
        score: 0.9,
        area: 4.0,
        bbox: [0.0; 4],
        rle: Some(det),
    };
    let d2 = DtAnn {
        score: 0.5,
        area: 2.0,
        rle: Some(mk(&[3])),
        ..d.clone()
    };
    let r = evaluate(
        &[g, other],
        &[d, d2],
        &[1],
        &[1],
        IouType::Segm,
        &EvalParams::default(),
    )
    .unwrap();
    // IoU with crowd = 4/4 = 1 -> ignored; the other detection is a true positive.
    assert_close(r.stats[0], 1.0, "");
}

#[test]
fn segm_needs_masks() {
    let g = [gt(1, [0.0, 0.0, 5.0, 5.0], false)];
    assert!(evaluate(&g, &[], &[1], &[1], IouType::Segm, &EvalParams::default()).is_err());
}

#[test]
fn pr_curves_and_dims_are_consistent() {
    let g = [
        gt(1, [0.0, 0.0, 50.0, 50.0], false),
        gt(1, [100.0, 0.0, 50.0, 50.0], false),
    ];
    let d = [
        dt(1, [0.0, 0.0, 50.0, 50.0], 0.9),
        dt(1, [300.0, 0.0, 50.0, 50.0], 0.8),
    ];
    let r = run(&g, &d, &[1]);
    assert_eq!(r.dims, [10, 101, 1, 4, 3]);
    assert_eq!(r.precision.len(), 10 * 101 * 12);
    let c = &r.pr_curves[0];
    assert_close(f64::from(c.precision_50[0]), 1.0, "precision at recall 0");
    assert_close(
        f64::from(c.precision_50[50]),
        1.0,
        "precision at recall 0.5",
    );
    assert_close(
        f64::from(c.precision_50[51]),
        0.0,
        "precision past the reached recall",
    );
    assert_close(
        f64::from(r.precision[r.precision_index(0, 50, 0, 0, 2)]),
        1.0,
        "precision[t=0, r=50]",
    );
    assert_close(
        f64::from(r.recall[r.recall_index(0, 0, 0, 2)]),
        0.5,
        "recall",
    );
}
