//! Per-instance PNG masks: `masks/<image stem>/<instance id>_<class>.png` (0 background,
//! 255 foreground, image size), `images/<file_name>` copies and `index.csv` with one row per
//! mask (`mask,image,instance_id,class,iscrowd,area,bbox_x,bbox_y,bbox_w,bbox_h`).
//! Stems are the image's relative path without extension, with `/` → `_`; class names are
//! reduced to `[A-Za-z0-9._-]` in file names (the CSV keeps the real name).

use std::fmt::Write as _;
use std::path::Path;

use super::{
    ExportError, ExportSummary, class_of, class_positions, copy_atomic, csv_field, file_safe,
    instance_mask, png_bytes, unique_stems, write_atomic,
};
use crate::dataset::ExportSet;

/// Writes per-instance PNG masks into `out`.
pub fn write(set: &ExportSet, out: &Path) -> Result<ExportSummary, ExportError> {
    let classes = class_positions(set);
    let stems = unique_stems(set);
    let mut summary = ExportSummary::default();
    let mut index =
        String::from("mask,image,instance_id,class,iscrowd,area,bbox_x,bbox_y,bbox_w,bbox_h\n");
    for (img, stem) in set.images.iter().zip(&stems) {
        copy_atomic(out, &format!("images/{}", img.file_name), &img.path)?;
        summary.files += 1;
        summary.images += 1;
        for inst in &img.instances {
            let class = &set.classes[class_of(&classes, img, inst)?].name;
            let mask = instance_mask(img, inst)?;
            let rel = format!("masks/{stem}/{}_{}.png", inst.id, file_safe(class));
            write_atomic(out, &rel, &png_bytes(&mask.to_gray())?)?;
            let [x, y, w, h] = inst.rle.to_bbox();
            let _ = writeln!(
                index,
                "{},{},{},{},{},{},{x},{y},{w},{h}",
                csv_field(&rel),
                csv_field(&format!("images/{}", img.file_name)),
                inst.id,
                csv_field(class),
                u8::from(inst.iscrowd),
                mask.area()
            );
            summary.files += 1;
            summary.instances += 1;
        }
    }
    write_atomic(out, "index.csv", index.as_bytes())?;
    summary.files += 1;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::ExportFormat;
    use super::super::test_util::export_sample;
    use crate::dataset::Mask;

    #[test]
    fn writes_masks_and_index() {
        let (_src, set, out, s) = export_sample(ExportFormat::PngMasks);
        assert_eq!((s.images, s.instances, s.files), (2, 3, 6));
        let p = out.path().join("masks/a/11_big_dog_x.png");
        let m = Mask::from_gray(&image::open(&p).unwrap().to_luma8());
        assert_eq!(m, Mask::from_rle(&set.images[0].instances[1].rle).unwrap());
        let csv = std::fs::read_to_string(out.path().join("index.csv")).unwrap();
        assert!(
            csv.contains("masks/sub_b/12_big_dog_x.png,images/sub/b.png,12,big dog/x,0,12,1,1,3,4"),
            "{csv}"
        );
    }
}
