//! Open Images segmentation download reader (the classic per-class layout).
//!
//! Layout: `<class>/images/<ImageID>.jpg` and
//! `<class>/segmentations/<ImageID>_<MID without slashes>_<BoxID>.png`. The class is the
//! folder name; masks are stored at their own resolution and are scaled to the image size with
//! nearest-neighbour sampling. An image found under several class folders becomes one image
//! with the instances of all of them. Instances get [`Origin::OpenImages`] and provenance
//! `{"mask": file name, "box_id": .., "mid": "/m/.."}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    FormatError, IMAGE_EXTS, decode_mask, files_in, has_ext, image_dimensions, safe_name,
    subfolders,
};
use crate::dataset::paths::lossy;
use crate::dataset::{ClassDef, ImportImage, ImportInstance, ImportSet, Origin, Segmentation};

/// Mask file name parts: `(ImageID, MID with slashes, BoxID)`. The middle token is a MID only
/// when it looks like one (`m…`/`g…`, as Open Images' `/m/…` and `/g/…` labels); otherwise
/// (files written by other tools) the MID is `None`.
pub(crate) fn parse_mask_name(stem: &str) -> Option<(String, Option<String>, String)> {
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let image_id = parts[0].to_string();
    let box_id = parts[parts.len() - 1].to_string();
    let mid = parts[1..parts.len() - 1].join("_");
    let mut chars = mid.chars();
    let kind = chars.next()?;
    let rest: String = chars.collect();
    let looks_like_mid = matches!(kind, 'm' | 'g')
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || c == '_');
    let mid = looks_like_mid.then(|| format!("/{kind}/{rest}"));
    Some((image_id, mid, box_id))
}

/// Reads an Open Images download folder.
pub fn read(root: &Path) -> Result<ImportSet, FormatError> {
    let class_dirs: Vec<PathBuf> = subfolders(root)?
        .into_iter()
        .filter(|d| d.join("segmentations").is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(FormatError::Unrecognised {
            path: root.to_path_buf(),
            message: "no <class>/segmentations/ folders".into(),
        });
    }
    // ImageID → image file, over all class folders.
    let mut image_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in &class_dirs {
        let images = d.join("images");
        if !images.is_dir() {
            continue;
        }
        for p in files_in(&images)?
            .into_iter()
            .filter(|p| has_ext(p, IMAGE_EXTS))
        {
            let stem = lossy(p.file_stem());
            let rel = lossy(p.file_name());
            let checked = super::resolve(&p, "image", &images, &rel)?;
            image_files.entry(stem).or_insert(checked);
        }
    }
    let mut images: BTreeMap<String, ImportImage> = BTreeMap::new();
    for (id, path) in &image_files {
        let name = lossy(path.file_name());
        let file_name = safe_name(path, "image", &name)?;
        let (width, height) = image_dimensions(path)?;
        images.insert(
            id.clone(),
            ImportImage {
                src_path: path.clone(),
                file_name,
                width,
                height,
                split: None,
                source: "openimages".into(),
                attribution: Default::default(),
                instances: Vec::new(),
            },
        );
    }
    let mut classes: Vec<ClassDef> = Vec::new();
    for d in &class_dirs {
        let class = lossy(d.file_name());
        let seg_dir = d.join("segmentations");
        let mut mid_seen: Option<String> = None;
        for mask_path in files_in(&seg_dir)?
            .into_iter()
            .filter(|p| has_ext(p, &["png"]))
        {
            let mask_name = lossy(mask_path.file_name());
            let record = format!("mask {mask_name}");
            let stem = lossy(mask_path.file_stem());
            let Some((image_id, mid, box_id)) = parse_mask_name(&stem) else {
                return Err(FormatError::malformed(
                    &mask_path,
                    &record,
                    "expected <ImageID>_<MID>_<BoxID>.png",
                ));
            };
            let Some(img) = images.get_mut(&image_id) else {
                return Err(FormatError::MissingImage {
                    path: mask_path.clone(),
                    record,
                    file: d.join("images").join(format!("{image_id}.jpg")),
                });
            };
            let checked = super::resolve(&mask_path, &record, &seg_dir, &mask_name)?;
            let mut mask = decode_mask(&checked, &record)?;
            if mask.width() != img.width || mask.height() != img.height {
                mask = mask.resize_nearest(img.width, img.height);
            }
            if mask.area() == 0 {
                log::warn!("{}: empty mask, skipped", mask_path.display());
                continue;
            }
            if mid_seen.is_none() {
                mid_seen.clone_from(&mid);
            }
            img.instances.push(ImportInstance {
                class: class.clone(),
                segmentation: Segmentation::Rle(mask.to_rle()),
                iscrowd: false,
                origin: Origin::OpenImages,
                provenance: Some(
                    serde_json::json!({"mask": mask_name, "box_id": box_id, "mid": mid}),
                ),
            });
        }
        classes.push(ClassDef {
            name: class,
            mid: mid_seen,
        });
    }
    Ok(ImportSet {
        format: "oid-masks".into(),
        classes,
        images: images.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn mask_names() {
        assert_eq!(
            parse_mask_name("0a1b2c3d4e5f6a7b_m01g317_1a2b3c4d"),
            Some((
                "0a1b2c3d4e5f6a7b".into(),
                Some("/m/01g317".into()),
                "1a2b3c4d".into()
            ))
        );
        assert_eq!(
            parse_mask_name("abc_g11bc6xy_77").map(|t| t.1),
            Some(Some("/g/11bc6xy".into()))
        );
        assert_eq!(
            parse_mask_name("abc_traffic-light_0000002a").map(|t| t.1),
            Some(None)
        );
        assert!(parse_mask_name("nounderscore").is_none());
    }

    #[test]
    fn reads_and_resizes_masks() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_image(&r.join("Cat/images/aaaa.jpg"), 40, 20);
        write_image(&r.join("Dog/images/aaaa.jpg"), 40, 20);
        let mut m = image::GrayImage::new(20, 10);
        for x in 0..10 {
            for y in 0..5 {
                m.put_pixel(x, y, image::Luma([255]));
            }
        }
        std::fs::create_dir_all(r.join("Cat/segmentations")).unwrap();
        std::fs::create_dir_all(r.join("Dog/segmentations")).unwrap();
        m.save(r.join("Cat/segmentations/aaaa_m01yrx_0001.png"))
            .unwrap();
        m.save(r.join("Dog/segmentations/aaaa_m0bt9lr_0002.png"))
            .unwrap();
        assert_eq!(
            super::super::detect(r).unwrap(),
            super::super::Format::OidMasks
        );
        let set = read(r).unwrap();
        assert_eq!(set.images.len(), 1);
        assert_eq!(
            set.classes[0],
            ClassDef {
                name: "Cat".into(),
                mid: Some("/m/01yrx".into())
            }
        );
        let img = &set.images[0];
        assert_eq!(img.instances.len(), 2);
        let Segmentation::Rle(rle) = &img.instances[0].segmentation else {
            panic!()
        };
        assert_eq!((rle.width, rle.height, rle.area()), (40, 20, 200));
        assert_eq!(img.instances[0].origin, Origin::OpenImages);
        assert_eq!(
            img.instances[1].provenance.as_ref().unwrap()["mid"],
            "/m/0bt9lr"
        );
        // A mask without its image, and a bomb mask.
        m.save(r.join("Cat/segmentations/bbbb_m01yrx_0003.png"))
            .unwrap();
        assert!(matches!(read(r), Err(FormatError::MissingImage { .. })));
        std::fs::remove_file(r.join("Cat/segmentations/bbbb_m01yrx_0003.png")).unwrap();
        std::fs::write(
            r.join("Cat/segmentations/aaaa_m01yrx_0004.png"),
            bomb_png(100_000, 100_000),
        )
        .unwrap();
        assert!(matches!(read(r), Err(FormatError::BadDimensions { .. })));
    }
}
