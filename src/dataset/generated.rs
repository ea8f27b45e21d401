//! Generated (synthetic) scenes written as an ordinary project: each scene's image is saved to
//! a temporary folder and everything goes through [`Project::import`]. Shared by the offline
//! sample project (`crate::sample_project`) and the crowded-scene benchmark (`crate::bench::crowded`).

use anyhow::Context as _;
use image::RgbImage;
use std::f64::consts::PI;
use std::path::Path;

use crate::cancel::CancelToken;
use crate::dataset::store::Project;
use crate::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use crate::rng::SplitMix64;

/// A background luminance texture: a sum of plane waves `[kx, ky, phase, amplitude]`.
#[derive(Debug, Clone)]
pub struct Waves(Vec<[f64; 4]>);

impl Waves {
    /// `count` waves with frequencies (cycles per pixel, in radians) uniform in `freq`, random
    /// directions and phases, and amplitudes uniform in `amp`; draws 4 numbers per wave.
    pub fn random(rng: &mut SplitMix64, count: usize, freq: (f64, f64), amp: (f64, f64)) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    let f = rng.uniform(freq.0, freq.1);
                    let dir = rng.uniform(0.0, PI);
                    [
                        f * dir.cos(),
                        f * dir.sin(),
                        rng.uniform(0.0, 2.0 * PI),
                        rng.uniform(amp.0, amp.1),
                    ]
                })
                .collect(),
        )
    }

    /// The texture's value at pixel `(x, y)`.
    pub fn at(&self, x: f64, y: f64) -> f64 {
        self.0
            .iter()
            .map(|[kx, ky, phase, amp]| amp * (kx * x + ky * y + phase).sin())
            .sum()
    }
}

/// A colour channel rounded and clamped to `0..=255`.
pub fn clamp_u8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// One generated image with its instances (class index, visible mask), in paint order.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The RGB image; its size is the stored width and height.
    pub image: RgbImage,
    /// `(class index into the set's classes, visible mask at image size)`; masks of one scene
    /// never overlap (later shapes cover earlier ones).
    pub instances: Vec<(usize, Mask)>,
}

/// One generated scene with what the project keeps about it.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// Pixels and instances.
    pub scene: Scene,
    /// File name in the project's `images/`.
    pub file_name: String,
    /// Split, or `None` for the training pool.
    pub split: Option<String>,
    /// Attribution title.
    pub title: String,
    /// Provenance JSON stored on each of its instances.
    pub provenance: serde_json::Value,
}

/// What every image of one generated set shares.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedSet<'a> {
    /// The import format and each image's `source` (also names the temporary folder).
    pub source: &'a str,
    /// Class names, in class order.
    pub classes: &'a [&'a str],
    /// Attribution author of every image.
    pub author: &'a str,
    /// What is imported, for error messages ("the sample", "crowded scenes").
    pub what: &'a str,
}

/// Writes images `0..count` from `generate` into a project in `dir` (created if missing), all
/// licensed CC0-1.0. `progress` gets 0.0…0.8 while images are generated and 0.8…1.0 while they
/// are imported.
pub fn write_generated_project(
    dir: &Path,
    set: GeneratedSet<'_>,
    count: usize,
    generate: &mut dyn FnMut(usize) -> anyhow::Result<GeneratedImage>,
    progress: &mut dyn FnMut(f32),
) -> anyhow::Result<()> {
    let src = tempfile::Builder::new()
        .prefix(&format!("maskstudio-{}-", set.source))
        .tempdir()
        .with_context(|| format!("creating a temporary folder for the {} images", set.source))?;
    let mut images = Vec::with_capacity(count);
    for index in 0..count {
        let GeneratedImage {
            scene,
            file_name,
            split,
            title,
            provenance,
        } = generate(index)?;
        let path = src.path().join(&file_name);
        scene
            .image
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        let instances = scene
            .instances
            .into_iter()
            .map(|(class, mask)| ImportInstance {
                class: set.classes[class].to_owned(),
                segmentation: Segmentation::Bitmap(mask),
                iscrowd: false,
                origin: Origin::Import,
                provenance: Some(provenance.clone()),
            })
            .collect();
        images.push(ImportImage {
            src_path: path,
            file_name,
            width: scene.image.width(),
            height: scene.image.height(),
            split,
            source: set.source.to_owned(),
            attribution: Attribution {
                author: Some(set.author.to_owned()),
                license: Some("CC0-1.0".to_owned()),
                original_url: None,
                title: Some(title),
            },
            instances,
        });
        progress(0.8 * (index + 1) as f32 / count as f32);
    }
    let import = ImportSet {
        format: set.source.to_owned(),
        classes: set
            .classes
            .iter()
            .map(|name| ClassDef {
                name: (*name).to_owned(),
                mid: None,
            })
            .collect(),
        images,
    };
    Project::create_or_open(dir)
        .with_context(|| format!("creating a project for {} in {}", set.what, dir.display()))?
        .import(&import, src.path(), &CancelToken::default(), &mut |p| {
            progress(0.8 + 0.2 * p.done as f32 / p.total.max(1) as f32)
        })
        .with_context(|| format!("importing {} into {}", set.what, dir.display()))?;
    Ok(())
}
