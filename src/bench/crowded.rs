//! Generated crowded scenes for `cargo bench --bench recipe`: many small objects per image, the
//! case where a Mask R-CNN recipe tuned for a few large objects (torchvision's tutorial) falls
//! short. Each [`CROWDED_SIZE`]² image holds 30–80 instances of three classes (discs, elongated
//! ellipses, rotated rectangles; 6–28 px across) on a textured background. Later objects cover
//! earlier ones and the masks are the visible pixels exactly; a new object is rejected when it
//! would hide too much of an earlier one. The same seed gives the same pixels on every machine
//! ([`SplitMix64`]).

use std::f64::consts::PI;
use std::path::Path;

use anyhow::Context as _;
use image::{Rgb, RgbImage};

use crate::dataset::Mask;
use crate::dataset::generated::{
    GeneratedImage, GeneratedSet, Scene, Waves, clamp_u8, write_generated_project,
};
use crate::dataset::mask::MaskError;
use crate::rng::SplitMix64;

/// Width and height of every crowded image in pixels.
pub const CROWDED_SIZE: u32 = 256;
/// Class names, in class order.
pub const CROWDED_CLASSES: [&str; 3] = ["disc", "ellipse", "rectangle"];
/// Fewest instances per image.
pub const MIN_INSTANCES: usize = 30;
/// Most instances per image.
pub const MAX_INSTANCES: usize = 80;
/// Smallest object extent (diameter or side) in pixels.
const MIN_EXTENT: f64 = 6.0;
/// Largest object extent in pixels.
const MAX_EXTENT: f64 = 28.0;
/// Smallest visible area of an instance, in pixels.
pub const MIN_VISIBLE_AREA: u64 = 12;
/// An earlier instance keeps at least this fraction of its own area visible.
const MIN_VISIBLE_FRACTION: f64 = 0.5;
/// Placement attempts per wanted instance before the scene is accepted as it is.
const ATTEMPTS_PER_INSTANCE: usize = 60;
/// Base colour of each class; every instance jitters it.
const CLASS_COLORS: [[f64; 3]; 3] = [
    [220.0, 120.0, 40.0],
    [60.0, 110.0, 220.0],
    [70.0, 190.0, 80.0],
];

/// A filled shape: centre, half extents along its own axes, rotation (radians).
#[derive(Debug, Clone, Copy)]
struct Shape {
    class: usize,
    cx: f64,
    cy: f64,
    hu: f64,
    hv: f64,
    angle: f64,
}

impl Shape {
    fn random(class: usize, rng: &mut SplitMix64) -> Shape {
        let side = f64::from(CROWDED_SIZE);
        let extent = rng.uniform(MIN_EXTENT, MAX_EXTENT);
        let (hu, hv) = match class {
            0 => (extent / 2.0, extent / 2.0),
            1 => (extent / 2.0, extent / 2.0 * rng.uniform(0.35, 0.65)),
            _ => (extent / 2.0, extent / 2.0 * rng.uniform(0.5, 1.0)),
        };
        Shape {
            class,
            cx: rng.uniform(2.0, side - 2.0),
            cy: rng.uniform(2.0, side - 2.0),
            hu,
            hv,
            angle: rng.uniform(0.0, PI),
        }
    }

    /// Whether the pixel centre `(x + 0.5, y + 0.5)` is inside.
    fn contains(&self, x: u32, y: u32) -> bool {
        let (dx, dy) = (f64::from(x) + 0.5 - self.cx, f64::from(y) + 0.5 - self.cy);
        let (s, c) = self.angle.sin_cos();
        let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
        if self.class == 2 {
            u.abs() <= self.hu && v.abs() <= self.hv
        } else {
            (u / self.hu).powi(2) + (v / self.hv).powi(2) <= 1.0
        }
    }

    /// Row-major pixel indices inside the shape (clipped to the image).
    fn pixels(&self) -> Vec<usize> {
        let r = self.hu.max(self.hv) * std::f64::consts::SQRT_2 + 1.0;
        let clip = |v: f64| v.clamp(0.0, f64::from(CROWDED_SIZE)) as u32;
        let (x0, x1) = (clip(self.cx - r), clip(self.cx + r + 1.0));
        let (y0, y1) = (clip(self.cy - r), clip(self.cy + r + 1.0));
        let mut out = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                if self.contains(x, y) {
                    out.push((y * CROWDED_SIZE + x) as usize);
                }
            }
        }
        out
    }
}

/// Generates crowded scene `index` of the set seeded with `seed` (deterministic): a
/// [`CROWDED_SIZE`]² image and [`MIN_INSTANCES`]…[`MAX_INSTANCES`] instances of
/// [`CROWDED_CLASSES`], each with at least [`MIN_VISIBLE_AREA`] visible pixels.
pub fn generate(seed: u64, index: usize) -> Result<Scene, MaskError> {
    let mut rng = SplitMix64::new(
        seed ^ 0x0063_726f_7764_6564 ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let n = (CROWDED_SIZE * CROWDED_SIZE) as usize;

    // Placement: `owner[p]` is 0 for background or k + 1 for instance k (the topmost).
    let wanted = MIN_INSTANCES + rng.below(MAX_INSTANCES - MIN_INSTANCES + 1);
    let mut owner = vec![0u16; n];
    let mut shapes: Vec<Shape> = Vec::new();
    let mut full_area: Vec<u64> = Vec::new();
    let mut visible: Vec<u64> = Vec::new();
    let mut attempts = 0;
    while shapes.len() < wanted && attempts < ATTEMPTS_PER_INSTANCE * wanted {
        attempts += 1;
        let class = if shapes.len() < CROWDED_CLASSES.len() {
            shapes.len()
        } else {
            rng.below(CROWDED_CLASSES.len())
        };
        let shape = Shape::random(class, &mut rng);
        let pixels = shape.pixels();
        if (pixels.len() as u64) < MIN_VISIBLE_AREA {
            continue;
        }
        let mut covered: std::collections::HashMap<u16, u64> = Default::default();
        for &p in &pixels {
            if owner[p] != 0 {
                *covered.entry(owner[p]).or_default() += 1;
            }
        }
        let keeps_enough = covered.iter().all(|(&k, &c)| {
            let k = usize::from(k) - 1;
            let left = visible[k] - c;
            left >= MIN_VISIBLE_AREA && left as f64 >= MIN_VISIBLE_FRACTION * full_area[k] as f64
        });
        if !keeps_enough {
            continue;
        }
        for (&k, &c) in &covered {
            visible[usize::from(k) - 1] -= c;
        }
        let id = shapes.len() as u16 + 1;
        for &p in &pixels {
            owner[p] = id;
        }
        full_area.push(pixels.len() as u64);
        visible.push(pixels.len() as u64);
        shapes.push(shape);
    }

    // Background: grey-ish tint, three luminance waves, per-pixel noise. Objects: jittered
    // class colour, a linear shading across the image, per-pixel noise.
    let grey = rng.uniform(80.0, 160.0);
    let tint: [f64; 3] = std::array::from_fn(|_| rng.uniform(-12.0, 12.0));
    let waves = Waves::random(&mut rng, 3, (0.02, 0.15), (4.0, 14.0));
    let colors: Vec<[f64; 3]> = shapes
        .iter()
        .map(|s| std::array::from_fn(|c| CLASS_COLORS[s.class][c] + rng.uniform(-30.0, 30.0)))
        .collect();
    let shade_dir = rng.uniform(0.0, 2.0 * PI);
    let (sx, sy) = (shade_dir.cos(), shade_dir.sin());
    let image = RgbImage::from_fn(CROWDED_SIZE, CROWDED_SIZE, |x, y| {
        let (fx, fy) = (f64::from(x), f64::from(y));
        let k = owner[(y * CROWDED_SIZE + x) as usize];
        let base: [f64; 3] = if k == 0 {
            let texture = waves.at(fx, fy);
            std::array::from_fn(|c| grey + tint[c] + texture)
        } else {
            let t = (fx * sx + fy * sy) / f64::from(CROWDED_SIZE);
            let shade = 0.85 + 0.15 * t.clamp(-1.0, 1.0);
            colors[usize::from(k) - 1].map(|v| v * shade)
        };
        Rgb(base.map(|v| clamp_u8(v + rng.uniform(-10.0, 10.0))))
    });

    let mut masks = vec![vec![0u8; n]; shapes.len()];
    for (p, &k) in owner.iter().enumerate() {
        if k != 0 {
            masks[usize::from(k) - 1][p] = 1;
        }
    }
    let instances = shapes
        .iter()
        .zip(masks)
        .map(|(s, m)| Ok((s.class, Mask::from_vec(CROWDED_SIZE, CROWDED_SIZE, m)?)))
        .collect::<Result<_, MaskError>>()?;
    Ok(Scene { image, instances })
}

/// Creates a project in `dir` (created if missing) with `train_n` crowded scenes in the training
/// pool (no split: `maskstudio train` splits them train/validation itself) followed by `test_n`
/// scenes in split `test` (held out: training never reads them). Scenes are [`generate`]`(seed,
/// i)` for `i` in `0..train_n + test_n`, named `crowded-{i:04}.png`.
pub fn write_project(dir: &Path, train_n: usize, test_n: usize, seed: u64) -> anyhow::Result<()> {
    let set = GeneratedSet {
        source: "crowded",
        classes: &CROWDED_CLASSES,
        author: "Mask Studio crowded-scene generator",
        what: "crowded scenes",
    };
    write_generated_project(
        dir,
        set,
        train_n + test_n,
        &mut |index| {
            Ok(GeneratedImage {
                scene: generate(seed, index).context("generating a crowded scene")?,
                file_name: format!("crowded-{index:04}.png"),
                split: (index >= train_n).then(|| "test".to_owned()),
                title: format!("Crowded scene {index} (seed {seed})"),
                provenance: serde_json::json!({
                    "generator": "maskstudio bench crowded",
                    "seed": seed,
                    "scene": index,
                }),
            })
        },
        &mut |_| {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::store::Project;

    #[test]
    fn scenes_are_crowded_exact_and_seeded() {
        let mut per_class = [0usize; 3];
        for index in 0..4 {
            let scene = generate(7, index).unwrap();
            let again = generate(7, index).unwrap();
            assert_eq!(
                scene.image, again.image,
                "scene {index} is not deterministic"
            );
            assert!(
                (MIN_INSTANCES..=MAX_INSTANCES).contains(&scene.instances.len()),
                "scene {index}: {} instances",
                scene.instances.len()
            );
            let mut union = Mask::new(CROWDED_SIZE, CROWDED_SIZE);
            for (k, (class, mask)) in scene.instances.iter().enumerate() {
                assert_eq!(*mask, again.instances[k].1, "scene {index} instance {k}");
                assert!(
                    mask.area() >= MIN_VISIBLE_AREA,
                    "scene {index} instance {k}"
                );
                per_class[*class] += 1;
                let mut overlap = union.clone();
                overlap.union_with(mask);
                assert_eq!(overlap.area(), union.area() + mask.area(), "masks overlap");
                union = overlap;
            }
        }
        assert!(
            per_class.iter().all(|&n| n >= 20),
            "per class {per_class:?}"
        );
        let other_seed = generate(8, 0).unwrap();
        assert_ne!(other_seed.image, generate(7, 0).unwrap().image);
    }

    #[test]
    fn write_project_puts_the_held_out_scenes_in_test() {
        let dir = tempfile::tempdir().unwrap();
        write_project(dir.path(), 3, 2, 5).unwrap();
        let project = Project::open(dir.path()).unwrap();
        let all = project.export_set(None).unwrap();
        assert_eq!(all.images.len(), 5);
        let splits: Vec<Option<&str>> = all.images.iter().map(|i| i.split.as_deref()).collect();
        assert_eq!(splits, [None, None, None, Some("test"), Some("test")]);
        for (index, image) in all.images.iter().enumerate() {
            let scene = generate(5, index).unwrap();
            assert_eq!(image.instances.len(), scene.instances.len());
            for (stored, (_, mask)) in image.instances.iter().zip(&scene.instances) {
                assert_eq!(Mask::from_rle(&stored.rle).unwrap(), *mask);
            }
        }
        let names: Vec<String> = project
            .classes()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, CROWDED_CLASSES);
    }
}
