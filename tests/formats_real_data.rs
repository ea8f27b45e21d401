//! Readers, exporters and the contour tracer on the real sample data in `../shared/data`
//! (skipped with a message when it is absent).

mod common;

use std::collections::HashMap;

use maskstudio::dataset::contour::outer_contours;
use maskstudio::dataset::export::{self, ExportFormat};
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::{
    ExportClass, ExportImage, ExportInstance, ExportSet, ImportSet, Mask, Segmentation,
};

fn mask_of(seg: &Segmentation, w: u32, h: u32) -> Mask {
    match seg {
        Segmentation::Polygons(p) => Mask::from_polygons(p, w, h).unwrap(),
        Segmentation::Rle(r) => Mask::from_rle(r).unwrap(),
        Segmentation::Bitmap(m) => m.clone(),
    }
}

fn instance_count(set: &ImportSet) -> usize {
    set.images.iter().map(|i| i.instances.len()).sum()
}

fn to_export(set: &ImportSet) -> ExportSet {
    let class_id: HashMap<&str, i64> = set
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as i64 + 1))
        .collect();
    let mut next = 1;
    ExportSet {
        classes: set
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ExportClass {
                id: i as i64 + 1,
                name: c.name.clone(),
                mid: c.mid.clone(),
            })
            .collect(),
        images: set
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| ExportImage {
                id: i as i64 + 1,
                path: img.src_path.clone(),
                file_name: img.file_name.clone(),
                width: img.width,
                height: img.height,
                split: img.split.clone(),
                attribution: img.attribution.clone(),
                instances: img
                    .instances
                    .iter()
                    .map(|inst| {
                        next += 1;
                        ExportInstance {
                            id: next,
                            class_id: class_id[inst.class.as_str()],
                            rle: mask_of(&inst.segmentation, img.width, img.height).to_rle(),
                            iscrowd: inst.iscrowd,
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[test]
fn coco128_yolo_seg() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let root = data.join("coco128-seg");
    assert_eq!(formats::detect(&root).unwrap(), Format::YoloSeg);
    let set = formats::read(&root, Format::YoloSeg).unwrap();
    assert_eq!(set.images.len(), 128);
    // The label files hold 941 lines, but 000000000656.txt (3) and 000000000659.txt (9) have no
    // image (and 000000000250 / 000000000508 have no labels), so 929 instances are importable.
    assert_eq!(instance_count(&set), 929);
    assert_eq!(
        set.images.iter().filter(|i| i.instances.is_empty()).count(),
        2
    );
    assert_eq!(set.classes.len(), 80);
    assert_eq!(set.classes[0].name, "person");
    assert!(
        set.images
            .iter()
            .all(|i| i.split.as_deref() == Some("train") && i.file_name.starts_with("train2017/"))
    );
}

#[test]
fn icevision_coco() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let root = data.join("icevision-samples");
    assert_eq!(formats::detect(&root).unwrap(), Format::Coco);
    assert_eq!(
        formats::detect(&root.join("annotations.json")).unwrap(),
        Format::Coco
    );
    let set = formats::read(&root, Format::Coco).unwrap();
    assert_eq!(set.images.len(), 6);
    assert_eq!(instance_count(&set), 36);
    let rles = set
        .images
        .iter()
        .flat_map(|i| &i.instances)
        .filter(|i| matches!(i.segmentation, Segmentation::Rle(_)))
        .count();
    assert_eq!(rles, 1);
    assert!(
        set.images
            .iter()
            .flat_map(|i| &i.instances)
            .any(|i| i.iscrowd)
    );
}

#[test]
fn droplets_via() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let root = data.join("droplets-via");
    assert_eq!(formats::detect(&root).unwrap(), Format::Via);
    let set = formats::read(&root, Format::Via).unwrap();
    assert_eq!(set.images.len(), 74);
    assert_eq!(instance_count(&set), 1304);
    assert_eq!(set.classes.len(), 1);
    assert_eq!(
        set.images
            .iter()
            .filter(|i| i.split.as_deref() == Some("validation"))
            .count(),
        2
    );
    // Same file name in train/ and val/ stays distinct.
    assert!(
        set.images
            .iter()
            .any(|i| i.file_name == "val/video1image0.jpg")
    );
    assert!(
        set.images
            .iter()
            .any(|i| i.file_name == "train/video1image0.jpg")
    );
}

#[test]
fn contour_tracer_round_trips_coco128_masks() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let set = formats::read(&data.join("coco128-seg"), Format::YoloSeg).unwrap();
    let (mut sum, mut n, mut worst) = (0.0, 0usize, 1.0f64);
    for img in &set.images {
        for inst in &img.instances {
            let m = mask_of(&inst.segmentation, img.width, img.height);
            if m.area() <= 100 {
                continue;
            }
            let back = Mask::from_polygons(&outer_contours(&m), img.width, img.height).unwrap();
            let iou = m.iou(&back);
            assert!(iou >= 0.95, "{}: IoU {iou}", img.file_name);
            worst = worst.min(iou);
            sum += iou;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    eprintln!("contour round trip: {n} masks, mean IoU {mean:.5}, worst {worst:.5}");
    assert!(mean >= 0.99, "mean IoU {mean}");
}

#[test]
fn coco_rle_export_is_lossless_on_real_data() {
    let Some(data) = common::shared_data() else {
        return;
    };
    for (root, fmt) in [
        (data.join("icevision-samples"), Format::Coco),
        (data.join("coco128-seg"), Format::YoloSeg),
    ] {
        let set = to_export(&formats::read(&root, fmt).unwrap());
        let out = tempfile::tempdir().unwrap();
        let summary =
            export::write(&set, ExportFormat::Coco { polygons: false }, out.path()).unwrap();
        let back = formats::read(out.path(), Format::Coco).unwrap();
        assert_eq!(back.images.len(), set.images.len());
        assert_eq!(instance_count(&back), summary.instances);
        assert_eq!(
            summary.instances + summary.skipped,
            set.images.iter().map(|i| i.instances.len()).sum::<usize>()
        );
        for (a, b) in set.images.iter().zip(&back.images) {
            let kept: Vec<_> = a.instances.iter().filter(|i| i.rle.area() > 0).collect();
            assert_eq!(kept.len(), b.instances.len());
            for (ia, ib) in kept.iter().zip(&b.instances) {
                assert_eq!(
                    Segmentation::Rle(ia.rle.clone()),
                    ib.segmentation,
                    "{}",
                    a.file_name
                );
            }
        }
    }
}

/// Per image and class, the union of the masks (exports may split an instance into components).
fn class_unions(set: &ImportSet) -> HashMap<(String, String), Mask> {
    let mut out: HashMap<(String, String), Mask> = HashMap::new();
    for img in &set.images {
        let name = img
            .file_name
            .rsplit('/')
            .next()
            .unwrap_or(&img.file_name)
            .to_string();
        for inst in &img.instances {
            let m = mask_of(&inst.segmentation, img.width, img.height);
            out.entry((name.clone(), inst.class.clone()))
                .and_modify(|u| u.union_with(&m))
                .or_insert(m);
        }
    }
    out
}

#[test]
fn yolo_and_polygon_exports_round_trip_coco128() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let orig = formats::read(&data.join("coco128-seg"), Format::YoloSeg).unwrap();
    let set = to_export(&orig);
    let expected = class_unions(&orig);
    for format in [ExportFormat::YoloSeg, ExportFormat::Coco { polygons: true }] {
        let out = tempfile::tempdir().unwrap();
        export::write(&set, format, out.path()).unwrap();
        let fmt = formats::detect(out.path()).unwrap();
        let back = formats::read(out.path(), fmt).unwrap();
        assert_eq!(back.images.len(), 128);
        let got = class_unions(&back);
        assert_eq!(got.len(), expected.len(), "{format}");
        let mut sum = 0.0;
        for (k, m) in &expected {
            sum += m.iou(&got[k]);
        }
        let mean = sum / expected.len() as f64;
        eprintln!("{format} round trip: mean per-image/class IoU {mean:.5}");
        assert!(mean >= 0.99, "{format}: mean IoU {mean}");
    }
}

#[test]
fn voc_and_png_mask_exports_write_everything() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let set = to_export(&formats::read(&data.join("icevision-samples"), Format::Coco).unwrap());
    let out = tempfile::tempdir().unwrap();
    let s = export::write(&set, ExportFormat::Voc, out.path()).unwrap();
    assert_eq!((s.images, s.instances), (6, 36));
    assert_eq!(
        std::fs::read_dir(out.path().join("SegmentationObject"))
            .unwrap()
            .count(),
        6
    );
    let out = tempfile::tempdir().unwrap();
    let s = export::write(&set, ExportFormat::PngMasks, out.path()).unwrap();
    assert_eq!(s.instances, 36);
    let index = std::fs::read_to_string(out.path().join("index.csv")).unwrap();
    assert_eq!(index.lines().count(), 37);
}
