//! Per-image mask folders (Kaggle Data Science Bowl 2018 layout).
//!
//! Layout: `<id>/images/<id>.png` and `<id>/masks/*.png`, one instance per mask PNG (any
//! non-zero pixel is foreground). Masks directly in `masks/` get the default class: the first
//! name in an optional `classes.txt` next to the `<id>` folders, else `object`; masks in
//! `masks/<class>/` take that folder's name. A mask whose size differs from its image is scaled
//! to it (nearest neighbour) with a warning; empty masks are skipped with a warning.

use std::path::Path;

use super::{
    FormatError, IMAGE_EXTS, decode_mask, files_in, has_ext, image_dimensions, safe_name,
    subfolders,
};
use crate::dataset::paths::lossy;
use crate::dataset::{ClassDef, ImportImage, ImportInstance, ImportSet, Origin, Segmentation};

/// Class of masks that name none.
pub const DEFAULT_CLASS: &str = "object";

/// Reads a folder of `<id>/images` + `<id>/masks` folders.
pub fn read(root: &Path) -> Result<ImportSet, FormatError> {
    let mut classes: Vec<ClassDef> = Vec::new();
    let classes_txt = root.join("classes.txt");
    if classes_txt.is_file() {
        let text =
            std::fs::read_to_string(&classes_txt).map_err(|e| FormatError::io(&classes_txt, e))?;
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !classes.iter().any(|c| c.name == name) {
                classes.push(ClassDef {
                    name: name.to_string(),
                    mid: None,
                });
            }
        }
    }
    let default_class = classes
        .first()
        .map_or_else(|| DEFAULT_CLASS.to_string(), |c| c.name.clone());
    let mut images: Vec<ImportImage> = Vec::new();
    for dir in subfolders(root)?
        .into_iter()
        .filter(|d| d.join("images").is_dir())
    {
        let id = lossy(dir.file_name());
        let images_dir = dir.join("images");
        let candidates: Vec<_> = files_in(&images_dir)?
            .into_iter()
            .filter(|p| has_ext(p, IMAGE_EXTS))
            .collect();
        let chosen = candidates
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == id))
            .or_else(|| candidates.first());
        let Some(image_path) = chosen else {
            return Err(FormatError::MissingImage {
                path: dir.clone(),
                record: format!("folder {id}"),
                file: images_dir.join(format!("{id}.png")),
            });
        };
        let record = format!("folder {id}");
        let name = lossy(image_path.file_name());
        let src_path = super::resolve(image_path, &record, &images_dir, &name)?;
        let mut file_name = safe_name(image_path, &record, &name)?;
        if images.iter().any(|i| i.file_name == file_name) {
            file_name = safe_name(image_path, &record, &format!("{id}/{name}"))?;
        }
        let (width, height) = image_dimensions(&src_path)?;
        let mut instances = Vec::new();
        let masks_dir = dir.join("masks");
        if masks_dir.is_dir() {
            let mut masks: Vec<(String, std::path::PathBuf, String)> = files_in(&masks_dir)?
                .into_iter()
                .filter(|p| has_ext(p, &["png"]))
                .map(|p| (default_class.clone(), p, String::new()))
                .collect();
            for sub in subfolders(&masks_dir)? {
                let class = lossy(sub.file_name());
                for p in files_in(&sub)?.into_iter().filter(|p| has_ext(p, &["png"])) {
                    masks.push((class.clone(), p, format!("{class}/")));
                }
            }
            for (class, mask_path, prefix) in masks {
                let mask_name = lossy(mask_path.file_name());
                let mrec = format!("mask {prefix}{mask_name}");
                let checked = super::resolve(
                    &mask_path,
                    &mrec,
                    &masks_dir,
                    &format!("{prefix}{mask_name}"),
                )?;
                let mut mask = decode_mask(&checked, &mrec)?;
                if mask.width() != width || mask.height() != height {
                    log::warn!(
                        "{}: mask is {}x{}, image is {width}x{height}; scaled",
                        mask_path.display(),
                        mask.width(),
                        mask.height()
                    );
                    mask = mask.resize_nearest(width, height);
                }
                if mask.area() == 0 {
                    log::warn!("{}: empty mask, skipped", mask_path.display());
                    continue;
                }
                if !classes.iter().any(|c| c.name == class) {
                    classes.push(ClassDef {
                        name: class.clone(),
                        mid: None,
                    });
                }
                instances.push(ImportInstance {
                    class,
                    segmentation: Segmentation::Rle(mask.to_rle()),
                    iscrowd: false,
                    origin: Origin::Import,
                    provenance: Some(
                        serde_json::json!({"mask": format!("{id}/masks/{prefix}{mask_name}")}),
                    ),
                });
            }
        }
        images.push(ImportImage {
            src_path,
            file_name,
            width,
            height,
            split: None,
            source: "mask-folders".into(),
            attribution: Default::default(),
            instances,
        });
    }
    if images.is_empty() {
        return Err(FormatError::Unrecognised {
            path: root.to_path_buf(),
            message: "no <id>/images/ folders".into(),
        });
    }
    Ok(ImportSet {
        format: "mask-folders".into(),
        classes,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn reads_mask_folders() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_image(&r.join("abc/images/abc.png"), 16, 8);
        std::fs::create_dir_all(r.join("abc/masks/nucleus")).unwrap();
        let mut m = image::GrayImage::new(16, 8);
        m.put_pixel(3, 3, image::Luma([255]));
        m.save(r.join("abc/masks/m1.png")).unwrap();
        m.save(r.join("abc/masks/nucleus/m2.png")).unwrap();
        image::GrayImage::new(16, 8)
            .save(r.join("abc/masks/empty.png"))
            .unwrap();
        // Half-size mask gets scaled.
        let mut half = image::GrayImage::new(8, 4);
        half.put_pixel(0, 0, image::Luma([1]));
        half.save(r.join("abc/masks/small.png")).unwrap();
        assert_eq!(
            super::super::detect(r).unwrap(),
            super::super::Format::MaskFolders
        );
        let set = read(r).unwrap();
        assert_eq!(set.images.len(), 1);
        assert_eq!(set.images[0].file_name, "abc.png");
        let names: Vec<_> = set.images[0]
            .instances
            .iter()
            .map(|i| i.class.as_str())
            .collect();
        assert_eq!(names, ["object", "object", "nucleus"]);
        let Segmentation::Rle(rle) = &set.images[0].instances[1].segmentation else {
            panic!()
        };
        assert_eq!(rle.area(), 4);
        std::fs::write(r.join("abc/masks/bad.png"), b"garbage").unwrap();
        assert!(matches!(read(r), Err(FormatError::UndecodableImage { .. })));
    }
}
