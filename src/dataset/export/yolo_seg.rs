//! Ultralytics YOLO segmentation export.
//!
//! Writes `images/{train,val,test}/<file_name>`, `labels/{train,val,test}/<file_name stem>.txt`
//! and `data.yaml` (`path`, `train`, `val`, optional `test`, `nc`, `names` as an index map).
//! Each label line is `class x1 y1 x2 y2 ...` normalised to the image size (6 decimals): one
//! line per instance; a mask of several 4-connected parts is joined into one polygon by
//! zero-width bridges (Ultralytics `merge_multi_segment`); holes are filled, as YOLO polygons
//! cannot express them. Unassigned images go to `train`; when there is no
//! validation image `val` points at the training images. Images without instances get an
//! empty label file.

use std::fmt::Write as _;
use std::path::Path;

use super::{
    ExportError, ExportSummary, class_of, class_positions, copy_atomic, instance_mask, split_dir,
    without_extension, write_atomic,
};
use crate::dataset::ExportSet;
use crate::dataset::contour::{bridge_polygons, outer_contours};

/// Writes a YOLO-seg export into `out`.
pub fn write(set: &ExportSet, out: &Path) -> Result<ExportSummary, ExportError> {
    let classes = class_positions(set);
    let mut summary = ExportSummary::default();
    let mut used = [false; 3];
    for img in &set.images {
        let split = split_dir(img.split.as_deref());
        used[match split {
            "train" => 0,
            "val" => 1,
            _ => 2,
        }] = true;
        copy_atomic(out, &format!("images/{split}/{}", img.file_name), &img.path)?;
        let (w, h) = (f64::from(img.width), f64::from(img.height));
        let mut text = String::new();
        for inst in &img.instances {
            let class = class_of(&classes, img, inst)?;
            let mask = instance_mask(img, inst)?;
            let polys = outer_contours(&mask);
            if polys.is_empty() {
                summary.skip_empty(img, inst);
                continue;
            }
            // One line per instance: several parts are joined by zero-width bridges.
            let poly = bridge_polygons(&polys);
            text.push_str(&class.to_string());
            for pt in poly.chunks_exact(2) {
                let _ = write!(text, " {:.6} {:.6}", pt[0] / w, pt[1] / h);
            }
            text.push('\n');
            summary.instances += 1;
        }
        let stem = without_extension(&img.file_name);
        write_atomic(out, &format!("labels/{split}/{stem}.txt"), text.as_bytes())?;
        summary.files += 2;
        summary.images += 1;
    }
    let mut yaml = String::from("# Exported by Mask Studio\npath: .\ntrain: images/train\n");
    yaml.push_str(if used[1] {
        "val: images/val\n"
    } else {
        "val: images/train\n"
    });
    if used[2] {
        yaml.push_str("test: images/test\n");
    }
    let _ = writeln!(yaml, "nc: {}\nnames:", set.classes.len());
    for (i, c) in set.classes.iter().enumerate() {
        // JSON string syntax is valid double-quoted YAML.
        let quoted = serde_json::to_string(&c.name).unwrap_or_else(|_| format!("\"class_{i}\""));
        let _ = writeln!(yaml, "  {i}: {quoted}");
    }
    write_atomic(out, "data.yaml", yaml.as_bytes())?;
    summary.files += 1;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::ExportFormat;
    use super::super::test_util::{class_names, export_sample, read_back};
    use crate::dataset::formats::Format;
    use crate::dataset::{Mask, Segmentation};

    #[test]
    fn round_trip_through_reader() {
        let (_src, set, out, s) = export_sample(ExportFormat::YoloSeg);
        assert_eq!((s.images, s.instances), (2, 3));
        let yaml = std::fs::read_to_string(out.path().join("data.yaml")).unwrap();
        assert!(
            yaml.contains("val: images/val") && yaml.contains("1: \"big dog/x\""),
            "{yaml}"
        );
        let back = read_back(&out, Format::YoloSeg);
        assert_eq!(class_names(&back), ["cat", "big dog/x"]);
        let b = back
            .images
            .iter()
            .find(|i| i.file_name == "val/sub/b.png")
            .unwrap();
        assert_eq!(b.split.as_deref(), Some("validation"));
        let Segmentation::Polygons(p) = &b.instances[0].segmentation else {
            panic!()
        };
        let m = Mask::from_polygons(p, 16, 12).unwrap();
        assert_eq!(m, Mask::from_rle(&set.images[1].instances[0].rle).unwrap());
    }
}
