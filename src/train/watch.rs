//! A run's watch images: its first validation images (training images when it has none)
//! predicted with one of its checkpoints and drawn with their masks, as small thumbnails. The
//! Train tab shows them again at each checkpoint a run saves.

use std::path::Path;

use crate::dataset::store::Project;
use crate::host::DeviceChoice;
use crate::infer::{Predictor, overlay, read_image};
use crate::train::runs::RunConfig;

/// How many images a run's watch shows.
pub const WATCH_IMAGES: usize = 4;

/// The widest a watch thumbnail is, in pixels.
const THUMB_WIDTH: u32 = 192;

/// Predicts the first [`WATCH_IMAGES`] validation images of the run in `run_dir` (its training
/// images when it has none) of `project` with the bundle `bundle`, keeps detections scoring at
/// least `score`, and returns `(caption, thumbnail with the masks drawn)` per image; the
/// caption is the file name and the detection count.
pub fn predict_watch_images(
    project: &Path,
    run_dir: &Path,
    bundle: &Path,
    device: DeviceChoice,
    score: f32,
) -> anyhow::Result<Vec<(String, image::RgbImage)>> {
    let split = RunConfig::read(run_dir)?.split;
    let mut wanted = if split.val.is_empty() {
        split.train
    } else {
        split.val
    };
    wanted.truncate(WATCH_IMAGES);
    let set = Project::open(project)?.export_set(None)?;
    let predictor = Predictor::load_for_threshold(bundle, crate::host::device(device)?)?;
    let mut out = Vec::new();
    for id in wanted {
        let Some(image) = set.images.iter().find(|m| m.id == id) else {
            continue;
        };
        let pixels = read_image(&image.path)?;
        let dets = predictor.predict_above(&pixels, score)?;
        let drawn = overlay::draw(&pixels, &dets);
        let thumb = image::imageops::thumbnail(
            &drawn,
            drawn.width().min(THUMB_WIDTH),
            (drawn.height() * drawn.width().min(THUMB_WIDTH)) / drawn.width().max(1),
        );
        out.push((format!("{} ({})", image.file_name, dets.len()), thumb));
    }
    Ok(out)
}
