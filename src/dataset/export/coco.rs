//! COCO instances JSON export: `annotations.json`, `images/<file_name>` and, when any image has
//! attribution, `ATTRIBUTION.csv`.
//!
//! Categories get ids `1..=N` in the set's class order. Segmentations are compressed RLE
//! (`{"size": [h, w], "counts": "..."}`, byte-identical to pycocotools) or, with `polygons`,
//! the outer outlines of each 4-connected component from
//! [`crate::dataset::contour::outer_contours`]. COCO polygons cannot express holes, so holes
//! are filled in polygon exports; crowd instances always stay RLE. `area` and `bbox` are
//! those of the stored mask.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{
    ExportError, ExportSummary, class_of, class_positions, copy_atomic, csv_field, instance_mask,
    write_atomic,
};
use crate::dataset::ExportSet;
use crate::dataset::contour::outer_contours;

#[derive(Serialize)]
struct CocoOut<'a> {
    info: Value,
    licenses: Vec<Value>,
    images: Vec<ImageOut<'a>>,
    categories: Vec<CategoryOut<'a>>,
    annotations: Vec<AnnotationOut>,
}

#[derive(Serialize)]
struct ImageOut<'a> {
    id: i64,
    file_name: &'a str,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct CategoryOut<'a> {
    id: usize,
    name: &'a str,
    supercategory: &'a str,
}

#[derive(Serialize)]
struct AnnotationOut {
    id: i64,
    image_id: i64,
    category_id: usize,
    segmentation: Value,
    area: u64,
    bbox: [f64; 4],
    iscrowd: u8,
}

/// Name of the JSON written.
pub const ANNOTATIONS_FILE: &str = "annotations.json";

/// Writes a COCO export into `out`.
pub fn write(set: &ExportSet, polygons: bool, out: &Path) -> Result<ExportSummary, ExportError> {
    let classes = class_positions(set);
    let mut summary = ExportSummary::default();
    let mut images = Vec::with_capacity(set.images.len());
    let mut annotations = Vec::new();
    for img in &set.images {
        copy_atomic(out, &format!("images/{}", img.file_name), &img.path)?;
        summary.files += 1;
        summary.images += 1;
        images.push(ImageOut {
            id: img.id,
            file_name: &img.file_name,
            width: img.width,
            height: img.height,
        });
        for inst in &img.instances {
            let category = class_of(&classes, img, inst)? + 1;
            let mask = instance_mask(img, inst)?;
            let area = mask.area();
            if area == 0 {
                summary.skip_empty(img, inst);
                continue;
            }
            let rle_json = || serde_json::json!({"size": [inst.rle.height, inst.rle.width], "counts": inst.rle.to_compressed()});
            let segmentation = if polygons && !inst.iscrowd {
                let polys = outer_contours(&mask);
                if polys.is_empty() {
                    rle_json()
                } else {
                    serde_json::json!(polys)
                }
            } else {
                rle_json()
            };
            annotations.push(AnnotationOut {
                id: inst.id,
                image_id: img.id,
                category_id: category,
                segmentation,
                area,
                bbox: inst.rle.to_bbox(),
                iscrowd: u8::from(inst.iscrowd),
            });
            summary.instances += 1;
        }
    }
    let doc = CocoOut {
        info: serde_json::json!({"description": "Exported by Mask Studio", "version": "1.0"}),
        licenses: Vec::new(),
        images,
        categories: set
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| CategoryOut {
                id: i + 1,
                name: &c.name,
                supercategory: "",
            })
            .collect(),
        annotations,
    };
    let bytes = serde_json::to_vec(&doc).map_err(|e| ExportError::Encode {
        what: ANNOTATIONS_FILE.into(),
        message: e.to_string(),
    })?;
    write_atomic(out, ANNOTATIONS_FILE, &bytes)?;
    summary.files += 1;
    if write_attribution(set, out)? {
        summary.files += 1;
    }
    Ok(summary)
}

/// Writes `ATTRIBUTION.csv` when any image has attribution; returns whether it did.
pub(crate) fn write_attribution(set: &ExportSet, out: &Path) -> Result<bool, ExportError> {
    if set
        .images
        .iter()
        .all(|i| i.attribution == Default::default())
    {
        return Ok(false);
    }
    let mut csv = String::from("file_name,author,license,original_url,title\n");
    for img in &set.images {
        let a = &img.attribution;
        let f = |o: &Option<String>| csv_field(o.as_deref().unwrap_or(""));
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            csv_field(&img.file_name),
            f(&a.author),
            f(&a.license),
            f(&a.original_url),
            f(&a.title)
        ));
    }
    write_atomic(out, "ATTRIBUTION.csv", csv.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::ExportFormat;
    use super::super::test_util::{class_names, export_sample, read_back};
    use super::*;
    use crate::dataset::formats::Format;
    use crate::dataset::{Mask, Segmentation};

    fn mask_of(seg: &Segmentation, w: u32, h: u32) -> Mask {
        match seg {
            Segmentation::Rle(r) => Mask::from_rle(r).unwrap(),
            Segmentation::Polygons(p) => Mask::from_polygons(p, w, h).unwrap(),
            Segmentation::Bitmap(m) => m.clone(),
        }
    }

    #[test]
    fn rle_round_trip_is_lossless() {
        let (_src, set, out, s) = export_sample(ExportFormat::Coco { polygons: false });
        assert_eq!((s.images, s.instances, s.skipped, s.files), (2, 3, 0, 4));
        let csv = std::fs::read_to_string(out.path().join("ATTRIBUTION.csv")).unwrap();
        assert!(csv.contains("a.png,\"Ann, \"\"A\"\"\""), "{csv}");
        let back = read_back(&out, Format::Coco);
        assert_eq!(class_names(&back), ["cat", "big dog/x"]);
        assert_eq!(back.images.len(), 2);
        for (a, b) in set.images.iter().zip(&back.images) {
            assert_eq!(a.file_name, b.file_name);
            assert_eq!(a.instances.len(), b.instances.len());
            for (ia, ib) in a.instances.iter().zip(&b.instances) {
                assert_eq!(Segmentation::Rle(ia.rle.clone()), ib.segmentation);
                assert_eq!(ia.iscrowd, ib.iscrowd);
            }
        }
    }

    #[test]
    fn polygon_export_fills_holes_only() {
        let (_src, set, out, _) = export_sample(ExportFormat::Coco { polygons: true });
        let back = crate::dataset::formats::coco::read(&out.path().join(ANNOTATIONS_FILE)).unwrap();
        let a = &back.images[0];
        assert!(matches!(
            a.instances[0].segmentation,
            Segmentation::Polygons(_)
        ));
        assert!(
            matches!(a.instances[1].segmentation, Segmentation::Rle(_)),
            "crowd stays RLE"
        );
        let orig = Mask::from_rle(&set.images[0].instances[0].rle).unwrap();
        let got = mask_of(&a.instances[0].segmentation, 30, 20);
        assert_eq!(got.area(), orig.area() + 12, "the 4x3 hole is filled");
        let mut filled = orig.clone();
        filled.union_with(&got);
        assert_eq!(filled, got);
        let small = mask_of(&back.images[1].instances[0].segmentation, 16, 12);
        assert_eq!(
            small,
            Mask::from_rle(&set.images[1].instances[0].rle).unwrap()
        );
    }
}
