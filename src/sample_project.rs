//! The offline sample project behind the first-run "Try the sample" button and
//! `maskstudio sample`: procedurally generated scenes (three shape classes on textured
//! backgrounds) with exact instance masks, imported through
//! [`crate::dataset::generated::write_generated_project`] so the result is an ordinary project.
//! Nothing is downloaded or copied from a dataset; the same seed gives the same pixels and masks
//! on every machine.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use image::{Rgb, RgbImage};

use crate::dataset::Mask;
use crate::dataset::generated::{
    GeneratedImage, GeneratedSet, Scene, Waves, clamp_u8, write_generated_project,
};
use crate::dataset::mask::MaskError;
use crate::dataset::store::{DB_FILE, ProjectInfo};
use crate::rng::SplitMix64;
use crate::train::config::TrainConfig;

/// The `source` of every sample image in the store ([`is_sample`]).
pub const SOURCE: &str = "sample";

/// Number of images in the sample.
pub const SAMPLE_IMAGES: usize = 24;
/// Width of every sample image in pixels.
pub const SAMPLE_WIDTH: u32 = 320;
/// Height of every sample image in pixels.
pub const SAMPLE_HEIGHT: u32 = 240;
/// Class names, in class order.
pub const SAMPLE_CLASSES: [&str; 3] = ["circle", "rectangle", "triangle"];
/// Every fourth image (indices 3, 7, …) goes to `validation`, the others to `train`.
const VALIDATION_EVERY: usize = 4;
/// Fixed seed: the sample is identical everywhere.
const SEED: u64 = 0x004d_534b_5341_4d50;
/// Base colour of each class (orange, blue, green: the class channel dominates every pixel).
const CLASS_COLORS: [[f64; 3]; 3] = [
    [232.0, 132.0, 36.0],
    [44.0, 104.0, 226.0],
    [52.0, 184.0, 72.0],
];
/// Smallest visible area of an instance, in pixels.
const MIN_AREA: u64 = 400;
/// An earlier instance must keep this fraction of its area visible when a later one is added.
const MIN_VISIBLE: f64 = 0.6;

/// Whether every image of a project came from the generated sample.
pub fn is_sample(info: &ProjectInfo) -> bool {
    !info.sources.is_empty() && info.sources.keys().all(|s| s == SOURCE)
}

/// The sample's training recipe, for the Train form when the sample is open: small inputs,
/// few epochs and a higher learning rate, so a 2-core CPU shows a converging loss and a
/// non-zero validation AP within about 3 minutes (measured: see `tests/train_smoke.rs`'s
/// sample test and the README). Real data needs the standard recipe ([`TrainConfig::default`]).
pub fn train_config() -> TrainConfig {
    TrainConfig {
        // Scenes are 320×240 with objects ≥ 400 px²: at 224 px the smallest is still ~17 px.
        image_size: Some(224),
        epochs: 6,
        batch_size: 2,
        lr: 0.02,
        ..TrainConfig::default()
    }
}

/// The split of sample image `index`.
pub fn sample_split(index: usize) -> &'static str {
    if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 {
        "validation"
    } else {
        "train"
    }
}

/// A sensible place for the sample project: `$XDG_DATA_HOME/maskstudio/sample-project`
/// (`~/.local/share/maskstudio/sample-project`); user data, kept by the uninstaller.
pub fn default_sample_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("maskstudio").join("sample-project")
}

/// Creates the sample project in `dir` (created if missing; it must not hold a project yet),
/// entirely offline: [`SAMPLE_IMAGES`] generated 320×240 scenes with 1–4 instances each of
/// [`SAMPLE_CLASSES`], split train/validation 3:1. `progress` gets 0.0…1.0.
pub fn create_sample_project(dir: &Path, progress: &mut dyn FnMut(f32)) -> anyhow::Result<()> {
    anyhow::ensure!(
        !dir.join(DB_FILE).exists(),
        "{}: already holds a project; choose an empty folder for the sample",
        dir.display()
    );
    progress(0.0);
    let set = GeneratedSet {
        source: SOURCE,
        classes: &SAMPLE_CLASSES,
        author: "Mask Studio sample generator",
        what: "the sample",
    };
    write_generated_project(
        dir,
        set,
        SAMPLE_IMAGES,
        &mut |index| {
            Ok(GeneratedImage {
                scene: generate_scene(index).context("generating a sample scene")?,
                file_name: format!("sample-{index:02}.png"),
                split: Some(sample_split(index).to_owned()),
                title: format!("Synthetic scene {index}"),
                provenance: serde_json::json!({"generator": "maskstudio sample", "scene": index}),
            })
        },
        progress,
    )?;
    progress(1.0);
    Ok(())
}

/// A filled shape in pixel coordinates.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Rotated ellipse: centre, radii, angle (radians).
    Ellipse([f64; 5]),
    /// Rotated rectangle: centre, half sizes, angle (radians).
    Rectangle([f64; 5]),
    /// Triangle: three vertices.
    Triangle([(f64, f64); 3]),
}

impl Shape {
    /// A random shape of `class` centred inside the frame (it may be cut by the border).
    fn random(class: usize, rng: &mut SplitMix64) -> Shape {
        let (w, h) = (f64::from(SAMPLE_WIDTH), f64::from(SAMPLE_HEIGHT));
        let cx = rng.uniform(28.0, w - 28.0);
        let cy = rng.uniform(28.0, h - 28.0);
        let angle = rng.uniform(0.0, PI);
        // Centre, two half axes uniform in `lo..hi`, angle.
        let axes = |rng: &mut SplitMix64, lo, hi| {
            [cx, cy, rng.uniform(lo, hi), rng.uniform(lo, hi), angle]
        };
        match class {
            0 => Shape::Ellipse(axes(rng, 18.0, 50.0)),
            1 => Shape::Rectangle(axes(rng, 14.0, 48.0)),
            _ => {
                let mut vertex = |k: usize| {
                    let a = angle + k as f64 * 2.0 * PI / 3.0 + rng.uniform(-0.35, 0.35);
                    let r = rng.uniform(26.0, 58.0);
                    (cx + r * a.cos(), cy + r * a.sin())
                };
                Shape::Triangle([vertex(0), vertex(1), vertex(2)])
            }
        }
    }

    /// Whether the point `(x, y)` lies inside (pixel centres are tested).
    fn contains(&self, x: f64, y: f64) -> bool {
        match *self {
            Shape::Ellipse([cx, cy, rx, ry, a]) => {
                let (u, v) = rotate(x - cx, y - cy, a);
                (u / rx).powi(2) + (v / ry).powi(2) <= 1.0
            }
            Shape::Rectangle([cx, cy, hw, hh, a]) => {
                let (u, v) = rotate(x - cx, y - cy, a);
                u.abs() <= hw && v.abs() <= hh
            }
            Shape::Triangle([p0, p1, p2]) => {
                let side = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
                    (bx - ax) * (y - ay) - (by - ay) * (x - ax)
                };
                let (d0, d1, d2) = (side(p0, p1), side(p1, p2), side(p2, p0));
                (d0 >= 0.0 && d1 >= 0.0 && d2 >= 0.0) || (d0 <= 0.0 && d1 <= 0.0 && d2 <= 0.0)
            }
        }
    }

    /// The shape's pixels (row-major, 0/1) and their count.
    fn rasterise(&self) -> (Vec<u8>, u64) {
        let mut pixels = vec![0u8; (SAMPLE_WIDTH * SAMPLE_HEIGHT) as usize];
        let mut area = 0;
        for y in 0..SAMPLE_HEIGHT {
            for x in 0..SAMPLE_WIDTH {
                if self.contains(f64::from(x) + 0.5, f64::from(y) + 0.5) {
                    pixels[(y * SAMPLE_WIDTH + x) as usize] = 1;
                    area += 1;
                }
            }
        }
        (pixels, area)
    }
}

/// `(dx, dy)` rotated by `-angle` (into the shape's own axes).
fn rotate(dx: f64, dy: f64, angle: f64) -> (f64, f64) {
    let (s, c) = angle.sin_cos();
    (dx * c + dy * s, -dx * s + dy * c)
}

/// A noise value uniform in `[-amplitude, amplitude)`.
fn noise(rng: &mut SplitMix64, amplitude: f64) -> f64 {
    rng.uniform(-amplitude, amplitude)
}

/// Generates sample scene `index` (deterministic): a [`SAMPLE_WIDTH`]×[`SAMPLE_HEIGHT`] image
/// and 1–4 instances of [`SAMPLE_CLASSES`].
pub fn generate_scene(index: usize) -> Result<Scene, MaskError> {
    let mut rng = SplitMix64::new(SEED ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Background: a muted grey-ish tint, a luminance texture of three waves, per-pixel noise.
    let grey = rng.uniform(70.0, 170.0);
    let tint = [
        noise(&mut rng, 14.0),
        noise(&mut rng, 14.0),
        noise(&mut rng, 14.0),
    ];
    let waves = Waves::random(&mut rng, 3, (0.01, 0.08), (5.0, 16.0));
    let mut image = RgbImage::from_fn(SAMPLE_WIDTH, SAMPLE_HEIGHT, |x, y| {
        let texture = waves.at(f64::from(x), f64::from(y));
        Rgb(std::array::from_fn(|c| {
            clamp_u8(grey + tint[c] + texture + noise(&mut rng, 12.0))
        }))
    });

    // Shapes: 1–4 per scene; the first cycles through the classes so every class is in both
    // splits; a shape is rejected when it would hide too much of an earlier one.
    let wanted = 1 + rng.below(4);
    let mut shapes: Vec<(usize, Shape, Vec<u8>, u64)> = Vec::new(); // class, shape, full pixels, full area
    let mut visible: Vec<Vec<u8>> = Vec::new();
    let mut attempts = 0;
    while shapes.len() < wanted && attempts < 200 {
        attempts += 1;
        let class = if shapes.is_empty() {
            index % SAMPLE_CLASSES.len()
        } else {
            rng.below(3)
        };
        let shape = Shape::random(class, &mut rng);
        let (full, area) = shape.rasterise();
        if area < MIN_AREA {
            continue;
        }
        let keeps_enough = shapes
            .iter()
            .zip(&visible)
            .all(|((_, _, _, full_area), vis)| {
                let left: u64 = vis
                    .iter()
                    .zip(&full)
                    .map(|(&v, &f)| u64::from(v & !f & 1))
                    .sum();
                left as f64 >= MIN_VISIBLE * *full_area as f64 && left >= MIN_AREA
            });
        if !keeps_enough {
            continue;
        }
        for vis in &mut visible {
            for (v, &f) in vis.iter_mut().zip(&full) {
                *v &= 1 - f;
            }
        }
        visible.push(full.clone());
        shapes.push((class, shape, full, area));
    }

    // Paint in order (later shapes cover earlier ones, exactly as the visible masks say):
    // jittered class colour, a linear shading across the shape, per-pixel noise.
    for (class, _, full, _) in &shapes {
        let color: [f64; 3] =
            std::array::from_fn(|c| CLASS_COLORS[*class][c] + noise(&mut rng, 18.0));
        let dir = rng.uniform(0.0, 2.0 * PI);
        let (dx, dy) = (dir.cos(), dir.sin());
        for (i, _) in full.iter().enumerate().filter(|(_, f)| **f != 0) {
            let (x, y) = (i as u32 % SAMPLE_WIDTH, i as u32 / SAMPLE_WIDTH);
            let t = (f64::from(x) * dx + f64::from(y) * dy) / f64::from(SAMPLE_WIDTH);
            let shade = 0.82 + 0.18 * t.clamp(-1.0, 1.0);
            let px = Rgb(std::array::from_fn(|c| {
                clamp_u8(color[c] * shade + noise(&mut rng, 8.0))
            }));
            image.put_pixel(x, y, px);
        }
    }
    let instances = shapes
        .iter()
        .zip(visible)
        .map(|((class, ..), vis)| Ok((*class, Mask::from_vec(SAMPLE_WIDTH, SAMPLE_HEIGHT, vis)?)))
        .collect::<Result<_, MaskError>>()?;
    Ok(Scene { image, instances })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::store::Project;

    #[test]
    fn scenes_are_deterministic_and_masks_are_exact() {
        let mut per_class = [0usize; 3];
        for index in 0..SAMPLE_IMAGES {
            let scene = generate_scene(index).unwrap();
            let again = generate_scene(index).unwrap();
            assert_eq!(
                scene.image, again.image,
                "scene {index} is not deterministic"
            );
            assert!((1..=4).contains(&scene.instances.len()), "scene {index}");
            let mut union = Mask::new(SAMPLE_WIDTH, SAMPLE_HEIGHT);
            for (k, (class, mask)) in scene.instances.iter().enumerate() {
                assert_eq!(mask, &again.instances[k].1);
                per_class[*class] += 1;
                assert!(
                    mask.area() >= MIN_AREA,
                    "scene {index} instance {k}: {mask:?}"
                );
                // Masks of one scene never overlap.
                let mut overlap = union.clone();
                overlap.union_with(mask);
                assert_eq!(overlap.area(), union.area() + mask.area(), "scene {index}");
                union = overlap;
                // Every masked pixel shows its class colour (the class channel dominates),
                // so the masks match the painted pixels exactly, occlusion included.
                let channel = [0, 2, 1][*class];
                for y in 0..SAMPLE_HEIGHT {
                    for x in 0..SAMPLE_WIDTH {
                        if mask.get(x, y) {
                            let p = scene.image.get_pixel(x, y).0;
                            let best = (0..3).max_by_key(|&c| p[c]).unwrap_or(0);
                            assert_eq!(
                                best, channel,
                                "scene {index} instance {k} at ({x},{y}): {p:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(
            per_class.iter().all(|&n| n >= 8),
            "instances per class {per_class:?}"
        );
    }

    #[test]
    fn the_sample_is_a_real_project_with_both_splits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sample");
        let mut seen = Vec::new();
        create_sample_project(&root, &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen.first(), Some(&0.0));
        assert_eq!(seen.last(), Some(&1.0));
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "progress goes forward: {seen:?}"
        );

        let project = Project::open(&root).unwrap();
        assert_eq!(project.integrity_check().unwrap(), "ok");
        let info = project.info().unwrap();
        assert_eq!(info.splits["train"].images, 18);
        assert_eq!(info.splits["validation"].images, 6);
        let names: Vec<&str> = info.classes.iter().map(|(c, _)| c.name.as_str()).collect();
        assert_eq!(names, SAMPLE_CLASSES);
        let set = project.export_set(Some("validation")).unwrap();
        let mut val_classes: Vec<i64> = set
            .images
            .iter()
            .flat_map(|i| i.instances.iter().map(|x| x.class_id))
            .collect();
        val_classes.sort_unstable();
        val_classes.dedup();
        assert_eq!(
            val_classes.len(),
            3,
            "every class is in the validation split"
        );

        // The stored masks are the generated ones, and the stored images the generated pixels.
        let all = project.export_set(None).unwrap();
        assert_eq!(all.images.len(), SAMPLE_IMAGES);
        let total: usize = all.images.iter().map(|i| i.instances.len()).sum();
        assert_eq!(
            total as u64,
            info.classes.iter().map(|(_, n)| n).sum::<u64>()
        );
        for image in &all.images {
            let index: usize = image.file_name[7..9].parse().unwrap();
            let scene = generate_scene(index).unwrap();
            let stored = image::open(&image.path).unwrap().to_rgb8();
            assert_eq!(stored, scene.image, "{}", image.file_name);
            assert_eq!(image.split.as_deref(), Some(sample_split(index)));
            assert_eq!(image.instances.len(), scene.instances.len());
            for (stored, (_, mask)) in image.instances.iter().zip(&scene.instances) {
                assert_eq!(Mask::from_rle(&stored.rle).unwrap(), *mask);
            }
        }

        // A second sample into the same folder is refused, naming the folder.
        let err = create_sample_project(&root, &mut |_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("already holds a project"),
            "{err:#}"
        );
    }
}
