//! PASCAL VOC segmentation export.
//!
//! Writes `JPEGImages/<stem>.<ext>` (copied as-is, so PNG sources keep `.png`),
//! `Annotations/<stem>.xml` (filename, size, one `object` per instance with name, 1-based
//! inclusive `bndbox`, `truncated` 0, `difficult` 0), `SegmentationObject/<stem>.png`
//! (palette PNG: 0 background, the image's k-th instance → index k; later instances paint
//! over earlier ones; 255 is not used), `SegmentationClass/<stem>.png` (index = 1-based
//! position of the class in the set's class order), `ImageSets/Segmentation/{train,val}.txt`
//! (plus `test.txt` when any image is in the test split; unassigned images go to train) and
//! `labels.txt` (`background` then the class names, one per line, in index order).
//! Stems are the image's relative path without extension, with `/` → `_`.
//! At most 254 classes; instances beyond the 254th of an image are skipped with a warning.

use std::path::Path;

use super::{
    ExportError, ExportSummary, class_of, class_positions, copy_atomic, extension, instance_mask,
    split_dir, unique_stems, write_atomic,
};
use crate::dataset::ExportSet;

/// The standard PASCAL VOC colour map (index → RGB).
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut pal = [[0u8; 3]; 256];
    for (i, entry) in pal.iter_mut().enumerate() {
        let mut c = i;
        let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
        for j in 0..8 {
            r |= ((c & 1) as u8) << (7 - j);
            g |= (((c >> 1) & 1) as u8) << (7 - j);
            b |= (((c >> 2) & 1) as u8) << (7 - j);
            c >>= 3;
        }
        *entry = [r, g, b];
    }
    pal
}

/// An 8-bit palette PNG of `indices` (row-major) with the VOC colour map.
///
/// Encodes the indices as an 8-bit gray PNG and turns it into an indexed one (colour type 3
/// plus a `PLTE` chunk): the filtered, compressed scanlines are the same for both.
pub fn palette_png(width: u32, height: u32, indices: Vec<u8>) -> Result<Vec<u8>, ExportError> {
    let gray =
        image::GrayImage::from_raw(width, height, indices).ok_or_else(|| ExportError::Encode {
            what: "palette PNG".into(),
            message: "buffer size mismatch".into(),
        })?;
    let png = super::png_bytes(&gray)?;
    let bad = || ExportError::Encode {
        what: "palette PNG".into(),
        message: "unexpected PNG layout".into(),
    };
    if png.len() < 8 {
        return Err(bad());
    }
    let mut out = png[..8].to_vec();
    let mut pos = 8;
    while pos + 12 <= png.len() {
        let len = u32::from_be_bytes([png[pos], png[pos + 1], png[pos + 2], png[pos + 3]]) as usize;
        let end = pos + 12 + len;
        if end > png.len() {
            return Err(bad());
        }
        let kind = &png[pos + 4..pos + 8];
        let mut body = png[pos + 4..pos + 8 + len].to_vec();
        if kind == b"IHDR" {
            if len != 13 || body[4 + 8] != 8 || body[4 + 9] != 0 {
                return Err(bad());
            }
            body[4 + 9] = 3;
        }
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        if kind == b"IHDR" {
            let mut plte = b"PLTE".to_vec();
            plte.extend(voc_palette().iter().flatten());
            out.extend_from_slice(&768u32.to_be_bytes());
            out.extend_from_slice(&plte);
            out.extend_from_slice(&crc32fast::hash(&plte).to_be_bytes());
        }
        pos = end;
    }
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Writes a VOC export into `out`.
pub fn write(set: &ExportSet, out: &Path) -> Result<ExportSummary, ExportError> {
    if set.classes.len() > 254 {
        return Err(ExportError::Unsupported(format!(
            "VOC class masks hold at most 254 classes, the set has {}",
            set.classes.len()
        )));
    }
    let classes = class_positions(set);
    let stems = unique_stems(set);
    let mut summary = ExportSummary::default();
    let mut splits: [(&str, String); 3] = [
        ("train", String::new()),
        ("val", String::new()),
        ("test", String::new()),
    ];
    for (img, stem) in set.images.iter().zip(&stems) {
        let image_name = format!("{stem}.{}", extension(&img.file_name));
        copy_atomic(out, &format!("JPEGImages/{image_name}"), &img.path)?;
        let n = (img.width as usize) * (img.height as usize);
        let mut objects = vec![0u8; n];
        let mut class_map = vec![0u8; n];
        let mut xml = format!(
            "<annotation>\n  <folder>VOC</folder>\n  <filename>{}</filename>\n  <size>\n    <width>{}</width>\n    <height>{}</height>\n    <depth>3</depth>\n  </size>\n  <segmented>1</segmented>\n",
            xml_escape(&image_name),
            img.width,
            img.height
        );
        let mut k = 0u8;
        for inst in &img.instances {
            let class = class_of(&classes, img, inst)?;
            if k == 254 {
                summary.skip(format_args!(
                    "{}: more than 254 instances; instance {} skipped",
                    img.file_name, inst.id
                ));
                continue;
            }
            let mask = instance_mask(img, inst)?;
            if mask.area() == 0 {
                summary.skip_empty(img, inst);
                continue;
            }
            k += 1;
            for (i, &on) in mask.data().iter().enumerate() {
                if on != 0 {
                    objects[i] = k;
                    class_map[i] = class as u8 + 1;
                }
            }
            let [x, y, w, h] = inst.rle.to_bbox();
            xml.push_str(&format!(
                "  <object>\n    <name>{}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{}</xmin>\n      <ymin>{}</ymin>\n      <xmax>{}</xmax>\n      <ymax>{}</ymax>\n    </bndbox>\n  </object>\n",
                xml_escape(&set.classes[class].name),
                x + 1.0,
                y + 1.0,
                x + w,
                y + h
            ));
            summary.instances += 1;
        }
        xml.push_str("</annotation>\n");
        write_atomic(out, &format!("Annotations/{stem}.xml"), xml.as_bytes())?;
        write_atomic(
            out,
            &format!("SegmentationObject/{stem}.png"),
            &palette_png(img.width, img.height, objects)?,
        )?;
        write_atomic(
            out,
            &format!("SegmentationClass/{stem}.png"),
            &palette_png(img.width, img.height, class_map)?,
        )?;
        summary.files += 4;
        summary.images += 1;
        let dir = split_dir(img.split.as_deref());
        if let Some((_, list)) = splits.iter_mut().find(|(name, _)| *name == dir) {
            list.push_str(stem);
            list.push('\n');
        }
    }
    for (name, list) in &splits {
        if *name != "test" || !list.is_empty() {
            write_atomic(
                out,
                &format!("ImageSets/Segmentation/{name}.txt"),
                list.as_bytes(),
            )?;
            summary.files += 1;
        }
    }
    let mut labels = String::from("background\n");
    for c in &set.classes {
        labels.push_str(&c.name);
        labels.push('\n');
    }
    write_atomic(out, "labels.txt", labels.as_bytes())?;
    summary.files += 1;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::ExportFormat;
    use super::super::test_util::export_sample;
    use super::*;

    #[test]
    fn palette_matches_voc() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]);
        assert_eq!(p[255], [224, 224, 192]);
    }

    #[test]
    fn writes_voc_layout() {
        let (_src, _set, out, s) = export_sample(ExportFormat::Voc);
        assert_eq!((s.images, s.instances), (2, 3));
        let o = out.path();
        for f in [
            "JPEGImages/a.png",
            "JPEGImages/sub_b.png",
            "Annotations/a.xml",
            "SegmentationObject/sub_b.png",
            "SegmentationClass/a.png",
            "labels.txt",
        ] {
            assert!(o.join(f).is_file(), "{f}");
        }
        assert_eq!(
            std::fs::read_to_string(o.join("ImageSets/Segmentation/train.txt")).unwrap(),
            "a\n"
        );
        assert_eq!(
            std::fs::read_to_string(o.join("ImageSets/Segmentation/val.txt")).unwrap(),
            "sub_b\n"
        );
        assert_eq!(
            std::fs::read_to_string(o.join("labels.txt")).unwrap(),
            "background\ncat\nbig dog/x\n"
        );
        let xml = std::fs::read_to_string(o.join("Annotations/a.xml")).unwrap();
        assert!(
            xml.contains("<name>cat</name>")
                && xml.contains("<xmin>4</xmin>")
                && xml.contains("<xmax>15</xmax>"),
            "{xml}"
        );
        // The palette PNG decodes; instance 2 of a.png is index 2 → (0,128,0), class 2 → same colour.
        let obj = image::open(o.join("SegmentationObject/a.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(obj.get_pixel(3, 2).0, [128, 0, 0]);
        assert_eq!(obj.get_pixel(21, 15).0, [0, 128, 0]);
        assert_eq!(obj.get_pixel(0, 0).0, [0, 0, 0]);
        let cls = image::open(o.join("SegmentationClass/a.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(cls.get_pixel(3, 2).0, [128, 0, 0]);
        assert_eq!(cls.get_pixel(21, 15).0, [0, 128, 0]);
        let raw = std::fs::read(o.join("SegmentationObject/a.png")).unwrap();
        assert_eq!(raw[25], 3, "colour type is indexed");
    }
}
