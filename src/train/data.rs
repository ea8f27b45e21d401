//! Training data from a project: a seeded train/val split, the class → label map, and samples
//! (image tensor + Mask R-CNN target). The augmentations live in [`augment`], batching and
//! prefetching in [`crate::train::loader`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;

use crate::dataset::{ExportImage, ExportSet};
use crate::rng::SplitMix64;
use crate::train::augment;

/// Image ids of the training and validation sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Training image ids, ascending.
    pub train: Vec<i64>,
    /// Validation image ids, ascending.
    pub val: Vec<i64>,
}

/// Splits images into train and validation.
///
/// Images whose stored split is `train` or `validation` (`val`) keep it; `test` images are left
/// out; the rest are sorted by id, shuffled with `seed`, and the first
/// `round(val_fraction * n)` of them go to validation. When no image is marked validation (a
/// dataset shipped as one `train` split, like coco128), `train` images count as unassigned, so
/// the run still gets a validation set.
pub fn split_images(images: &[ExportImage], val_fraction: f64, seed: u64) -> Split {
    let mut split = Split::default();
    let mut free = Vec::new();
    let has_validation = images
        .iter()
        .any(|m| matches!(m.split.as_deref(), Some("validation" | "val")));
    for image in images {
        match image.split.as_deref() {
            Some("train") if has_validation => split.train.push(image.id),
            Some("validation" | "val") => split.val.push(image.id),
            Some("test") => {}
            _ => free.push(image.id),
        }
    }
    free.sort_unstable();
    SplitMix64::new(seed ^ 0x0053_504c_4954).shuffle(&mut free);
    let n_val = ((free.len() as f64) * val_fraction).round() as usize;
    split.val.extend_from_slice(&free[..n_val.min(free.len())]);
    split
        .train
        .extend_from_slice(&free[n_val.min(free.len())..]);
    split.train.sort_unstable();
    split.val.sort_unstable();
    split
}

/// Class ids of the project in label order: label `k` (1-based) is `class_ids[k - 1]`.
pub fn label_map(set: &ExportSet) -> (Vec<i64>, Vec<String>, HashMap<i64, i64>) {
    let mut classes: Vec<(i64, String)> =
        set.classes.iter().map(|c| (c.id, c.name.clone())).collect();
    classes.sort_by_key(|c| c.0);
    let ids: Vec<i64> = classes.iter().map(|c| c.0).collect();
    let names: Vec<String> = classes.into_iter().map(|c| c.1).collect();
    let map = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i as i64 + 1))
        .collect();
    (ids, names, map)
}

pub use crate::train::augment::Sample;

/// Output size keeping the aspect ratio with the longer side at `size` (each side at least 1).
pub fn resized_dims(width: u32, height: u32, size: u32) -> (u32, u32) {
    augment::fitted_dims(width, height, size)
}

/// Reads the project's images and instances once (`Project::export_set(None)`).
pub fn read_project(project_dir: &Path) -> anyhow::Result<ExportSet> {
    let project = crate::dataset::store::Project::open(project_dir)
        .with_context(|| format!("opening project {project_dir:?}"))?;
    Ok(project.export_set(None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Attribution, ExportImage};

    fn img(id: i64, split: Option<&str>) -> ExportImage {
        ExportImage {
            id,
            path: std::path::PathBuf::new(),
            file_name: String::new(),
            width: 1,
            height: 1,
            split: split.map(str::to_owned),
            attribution: Attribution::default(),
            instances: Vec::new(),
        }
    }

    #[test]
    fn split_is_seeded_and_keeps_assigned() {
        let mut images: Vec<ExportImage> = (0..20).map(|i| img(i, None)).collect();
        images.push(img(100, Some("train")));
        images.push(img(101, Some("validation")));
        images.push(img(102, Some("test")));
        let a = split_images(&images, 0.25, 7);
        images.reverse();
        let b = split_images(&images, 0.25, 7);
        assert_eq!(a, b);
        assert_eq!(a.val.len(), 6);
        assert_eq!(a.train.len(), 16);
        assert!(a.train.contains(&100) && a.val.contains(&101));
        assert!(!a.train.contains(&102) && !a.val.contains(&102));
        assert_ne!(split_images(&images, 0.25, 8), a);
    }

    #[test]
    fn a_project_without_validation_images_gets_a_seeded_validation_set() {
        let images: Vec<ExportImage> = (0..20).map(|i| img(i, Some("train"))).collect();
        let split = split_images(&images, 0.25, 7);
        assert_eq!((split.train.len(), split.val.len()), (15, 5));
        assert_eq!(split, split_images(&images, 0.25, 7));
    }

    #[test]
    fn dims_keep_aspect() {
        assert_eq!(resized_dims(640, 480, 320), (320, 240));
        assert_eq!(resized_dims(100, 400, 200), (50, 200));
    }
}
