//! The Train form's augmentation preview: the first training images of a project, augmented
//! exactly as the trainer would (same split, same per-sample seeds), with class names.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use image::RgbImage;

use crate::dataset::{ExportImage, Mask};
use crate::rng::SplitMix64;
use crate::train::augment::{Augmenter, load, sample_seed};
use crate::train::config::TrainConfig;

/// One augmented training image for a preview, with class names instead of labels.
#[derive(Debug, Clone)]
pub struct PreviewSample {
    /// Project image id.
    pub image_id: i64,
    /// The augmented image.
    pub image: RgbImage,
    /// `(mask, class name)` per surviving instance.
    pub instances: Vec<(Mask, String)>,
}

/// The first `n` training images of the project at `project_dir` (split as the trainer does),
/// augmented under `cfg` with the per-sample seeds of positions `0..n` of epoch `epoch`, for the
/// GUI's augmentation preview. Change `epoch` to see other draws.
pub fn preview(
    project_dir: &Path,
    cfg: &TrainConfig,
    epoch: usize,
    n: usize,
) -> anyhow::Result<Vec<PreviewSample>> {
    let set = crate::train::data::read_project(project_dir)?;
    let (_, names, label_of) = crate::train::data::label_map(&set);
    let split = crate::train::data::split_images(&set.images, cfg.val_fraction, cfg.seed);
    let by_id: HashMap<i64, &ExportImage> = set.images.iter().map(|i| (i.id, i)).collect();
    let aug = Augmenter::new(cfg);
    aug.cfg.validate()?;
    let mut out = Vec::with_capacity(n);
    for (position, id) in split.train.iter().take(n).enumerate() {
        let Some(image) = by_id.get(id) else {
            continue;
        };
        let s = load(image, &label_of, aug.decode_size())
            .with_context(|| format!("loading {}", image.path.display()))?;
        let mut rng = SplitMix64::new(sample_seed(cfg.seed, epoch, position));
        let s = aug.apply(s, &mut rng);
        out.push(PreviewSample {
            image_id: *id,
            image: s.image,
            instances: s
                .instances
                .into_iter()
                .map(|(m, l)| {
                    let name = names.get((l - 1) as usize).cloned().unwrap_or_default();
                    (m, name)
                })
                .collect(),
        });
    }
    Ok(out)
}
