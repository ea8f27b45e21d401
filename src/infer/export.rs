//! Prediction outputs for a set of images, written one way by `maskstudio predict` and the
//! Predict tab's export ([`RunWriter`]): unique output names (one per input, whatever the
//! folders and extensions), `<name>.overlay.png` (masks, boxes and class/score labels over the
//! image), optionally `<name>_mask<k>_<class>.png` per detection, and the COCO results files.
//!
//! `results.json` is a COCO results list (what pycocotools' `COCO.loadRes` reads) whose entries
//! carry `image_id` and `file_name`; the images it refers to are listed in `<stem>.images.json`
//! beside it (a COCO file with `images` and `categories` and no annotations), so
//! `COCO("results.images.json").loadRes("results.json")` works as is.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::fsutil::write_atomic;
use crate::infer::{Detection, overlay, read_image, threshold};

/// How one input image is named in a run's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputName {
    /// Base of the output files (`a/x` → `a/x.overlay.png`), unique within the run.
    pub stem: String,
    /// The image's path relative to the inputs' common folder (`a/x.jpg`): `file_name` in the
    /// COCO files.
    pub file_name: String,
}

/// Output names for `paths`, one each, in order: the path relative to the inputs' deepest
/// common folder, without its extension (`a/x.jpg` → `a/x`); stems that would still collide
/// (`x.jpg` and `x.png`) keep their extension, and exact repeats get `-2`, `-3`, …
/// Every name is relative, with only normal components (never `..` or a root), so joining it
/// onto an output folder stays inside that folder.
pub fn output_names(paths: &[PathBuf]) -> Vec<OutputName> {
    let absolute: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let parents: Vec<Vec<Component<'_>>> = absolute
        .iter()
        .map(|p| {
            p.parent()
                .map_or_else(Vec::new, |d| d.components().collect())
        })
        .collect();
    let common = parents
        .iter()
        .skip(1)
        .fold(parents.first().map_or(0, Vec::len), |n, comps| {
            n.min(
                parents[0]
                    .iter()
                    .zip(comps)
                    .take_while(|(a, b)| a == b)
                    .count(),
            )
        });
    // Relative parts below the common folder, each a plain name ("_" for anything else).
    let relative: Vec<Vec<String>> = absolute
        .iter()
        .map(|p| {
            let mut parts: Vec<String> = p
                .components()
                .skip(common)
                .map(|c| match c {
                    Component::Normal(s) => safe_component(&s.to_string_lossy()),
                    _ => "_".to_owned(),
                })
                .collect();
            if parts.is_empty() {
                parts.push("image".to_owned());
            }
            parts
        })
        .collect();
    let without_ext: Vec<String> = relative
        .iter()
        .map(|parts| {
            let mut parts = parts.clone();
            if let Some(last) = parts.last_mut()
                && let Some(dot) = last.rfind('.')
                && dot > 0
            {
                last.truncate(dot);
            }
            parts.join("/")
        })
        .collect();
    // Distinct files per stem, in one pass (a folder of thousands of images stays linear).
    let mut files_per_stem =
        std::collections::HashMap::<&str, std::collections::HashSet<&[String]>>::new();
    for (stem, parts) in without_ext.iter().zip(&relative) {
        files_per_stem
            .entry(stem.as_str())
            .or_default()
            .insert(parts.as_slice());
    }
    let mut names: Vec<String> = without_ext
        .iter()
        .zip(&relative)
        .map(|(stem, parts)| {
            // Another input with this stem but another file (`x.jpg` vs `x.png`): keep the
            // extension. The same file twice keeps the stem (numbered below).
            if files_per_stem[stem.as_str()].len() > 1 {
                parts.join("/")
            } else {
                stem.clone()
            }
        })
        .collect();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for name in &mut names {
        let count = seen.entry(name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            name.push_str(&format!("-{count}"));
        }
    }
    names
        .into_iter()
        .zip(relative)
        .map(|(stem, parts)| OutputName {
            stem,
            file_name: parts.join("/"),
        })
        .collect()
}

/// One path component made safe as a file name: separators, NUL and control characters become
/// `_`; `.` and `..` become `_`.
fn safe_component(s: &str) -> String {
    if s == "." || s == ".." || s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The file of `name` (an [`OutputName::stem`]) with `suffix` inside `dir`, e.g.
/// `dir/a/x.overlay.png`.
pub fn output_path(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    for part in name.split('/') {
        path.push(part);
    }
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.set_file_name(format!("{file}{suffix}"));
    path
}

/// The images file written beside a results file: `results.json` → `results.images.json`.
pub fn images_file_for(results_json: &Path) -> PathBuf {
    let stem = results_json
        .file_stem()
        .map_or_else(|| "results".into(), |s| s.to_string_lossy().into_owned());
    results_json.with_file_name(format!("{stem}.images.json"))
}

/// Builds the COCO results of a prediction run: add each image with [`CocoResults::add`],
/// then write both files with [`CocoResults::write`].
#[derive(Debug, Default)]
pub struct CocoResults {
    images: Vec<serde_json::Value>,
    results: Vec<serde_json::Value>,
    categories: std::collections::BTreeMap<i64, String>,
}

impl CocoResults {
    /// Adds one image (ids are 1, 2, … in the order added) and its detections; `file_name` is
    /// the image's output name with its extension (unique within the run).
    pub fn add(&mut self, file_name: &str, width: u32, height: u32, detections: &[Detection]) {
        let id = self.images.len() as i64 + 1;
        self.images.push(serde_json::json!({
            "id": id, "file_name": file_name, "width": width, "height": height,
        }));
        for d in detections {
            let mut r = crate::infer::coco_result(file_name, d);
            r["image_id"] = id.into();
            self.results.push(r);
            self.categories
                .entry(d.label)
                .or_insert_with(|| d.class_name.clone());
        }
    }

    /// Adds the categories of a model's labels (`labels[i]` is class `i + 1`), so classes
    /// without detections are listed too.
    pub fn add_categories(&mut self, labels: &[String]) {
        for (i, name) in labels.iter().enumerate() {
            self.categories
                .entry(i as i64 + 1)
                .or_insert_with(|| name.clone());
        }
    }

    /// Number of detections added.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Whether no detection was added.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Writes the results list to `results_json` and the images file beside it
    /// ([`images_file_for`]), each atomically.
    pub fn write(&self, results_json: &Path) -> anyhow::Result<()> {
        let categories: Vec<serde_json::Value> = self
            .categories
            .iter()
            .map(|(id, name)| serde_json::json!({"id": id, "name": name}))
            .collect();
        let images = serde_json::json!({
            "info": {"description": "maskstudio predict: the images of the results file beside it"},
            "images": self.images,
            "categories": categories,
            "annotations": [],
        });
        crate::fsutil::write_atomic(results_json, &serde_json::to_vec_pretty(&self.results)?)?;
        crate::fsutil::write_atomic(
            &images_file_for(results_json),
            &serde_json::to_vec_pretty(&images)?,
        )?;
        Ok(())
    }
}

/// The per-image files a [`RunWriter`] writes besides the COCO results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFiles {
    /// `<name>.overlay.png`: the detections drawn over the image with their labels.
    pub overlays: bool,
    /// `<name>_mask<k>_<class>.png`: each detection's binary mask (0/255), best first.
    pub masks: bool,
}

/// The suffix of detection `k`'s mask PNG: `_mask<k>_<class>.png`, the class name with every
/// character that is not alphanumeric as `_`.
pub fn mask_suffix(k: usize, class_name: &str) -> String {
    let class: String = class_name
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    format!("_mask{k}_{class}.png")
}

/// `image` encoded as PNG.
fn png_bytes(image: image::DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// Writes one prediction run's outputs: [`RunWriter::add`] each image as it is predicted
/// (its files go into the folder at once), then [`RunWriter::finish`] writes the COCO results.
#[derive(Debug)]
pub struct RunWriter {
    dir: Option<PathBuf>,
    files: ImageFiles,
    results: CocoResults,
}

impl RunWriter {
    /// A writer putting per-image `files` into `dir` (created; `None` writes only the COCO
    /// files), listing every class of `labels` (`labels[i]` is class `i + 1`) in them.
    pub fn new(dir: Option<&Path>, files: ImageFiles, labels: &[String]) -> anyhow::Result<Self> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        }
        let mut results = CocoResults::default();
        results.add_categories(labels);
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            files,
            results,
        })
    }

    /// Adds the image `name` of `size` (width, height) with its `detections` (binary masks at
    /// image size) to the results, and writes its files when there is a folder and `image`
    /// (its pixels at full size) is given.
    pub fn add(
        &mut self,
        name: &OutputName,
        size: (u32, u32),
        image: Option<&image::RgbImage>,
        detections: &[Detection],
    ) -> anyhow::Result<()> {
        if let (Some(dir), Some(image)) = (&self.dir, image) {
            if self.files.overlays {
                let mut over = overlay::draw(image, detections);
                overlay::draw_labels(&mut over, detections);
                write_atomic(
                    &output_path(dir, &name.stem, ".overlay.png"),
                    &png_bytes(image::DynamicImage::ImageRgb8(over))?,
                )?;
            }
            if self.files.masks {
                for (k, d) in detections.iter().enumerate() {
                    write_atomic(
                        &output_path(dir, &name.stem, &mask_suffix(k, &d.class_name)),
                        &png_bytes(image::DynamicImage::ImageLuma8(d.mask.to_gray()))?,
                    )?;
                }
            }
        }
        self.results
            .add(&name.file_name, size.0, size.1, detections);
        Ok(())
    }

    /// Detections added so far.
    pub fn detections(&self) -> usize {
        self.results.len()
    }

    /// Writes the COCO results to `results_json` and the images file beside it; returns the
    /// number of detections written.
    pub fn finish(self, results_json: &Path) -> anyhow::Result<usize> {
        self.results.write(results_json)?;
        Ok(self.results.len())
    }
}

/// One predicted image to export (the Predict tab's results).
#[derive(Debug, Clone)]
pub struct SavedPrediction {
    /// The image file.
    pub path: PathBuf,
    /// Its pixels at full size when in memory (else the file is read again).
    pub image: Option<Arc<image::RgbImage>>,
    /// Every detection kept (soft masks), best first.
    pub detections: Arc<Vec<Detection>>,
}

/// The Predict tab's export: for each of `items`, the detections passing `score` with masks at
/// `mask_threshold` ([`threshold::visible`]) go to `<name>.overlay.png`,
/// `<name>_mask<k>_<class>.png` and `dir/results.json` (+ `results.images.json`, listing the
/// classes of `labels`), through the same [`RunWriter`] as `maskstudio predict`. Calls
/// `progress(done)` after each image; stops early (keeping what is written, with the results
/// files of those images) when `cancel` is set. Returns the detections written and whether it
/// was cancelled.
pub fn export_predictions(
    dir: &Path,
    items: &[SavedPrediction],
    labels: &[String],
    score: f32,
    mask_threshold: f32,
    cancel: &CancelToken,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<(usize, bool)> {
    let files = ImageFiles {
        overlays: true,
        masks: true,
    };
    let mut writer = RunWriter::new(Some(dir), files, labels)?;
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let mut cancelled = false;
    for (done, (item, name)) in items.iter().zip(output_names(&paths)).enumerate() {
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        let image = match &item.image {
            Some(p) => Arc::clone(p),
            None => Arc::new(read_image(&item.path)?),
        };
        let shown = threshold::visible(&item.detections, score, mask_threshold);
        writer.add(&name, image.dimensions(), Some(&image), &shown)?;
        progress(done + 1);
    }
    Ok((writer.finish(&dir.join("results.json"))?, cancelled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Vec<String> {
        output_names(&paths.iter().map(PathBuf::from).collect::<Vec<_>>())
            .into_iter()
            .map(|n| n.stem)
            .collect()
    }

    #[test]
    fn names_follow_relative_paths_and_never_collide() {
        assert_eq!(
            names(&[
                "/d/a/x.jpg",
                "/d/b/x.jpg",
                "/d/x.jpg",
                "/d/x.png",
                "/d/y.png"
            ]),
            ["a/x", "b/x", "x.jpg", "x.png", "y"]
        );
        assert_eq!(names(&["/d/one.png"]), ["one"]);
        let full = output_names(&[PathBuf::from("/d/a/x.jpg"), PathBuf::from("/d/b/x.jpg")]);
        assert_eq!(full[0].file_name, "a/x.jpg");
        assert_eq!(full[1].file_name, "b/x.jpg");
        assert_eq!(names(&["/d/a.png", "/d/a.png"]), ["a", "a-2"]);
        // Relative inputs with `..` are made absolute first; no name leaves the output folder.
        for name in names(&["../p/q.png", "r.png", "/x/y/z.png"]) {
            assert!(
                !name.split('/').any(|c| c == ".." || c.is_empty()),
                "{name}"
            );
        }
    }

    #[test]
    fn output_paths_stay_inside_the_folder() {
        let p = output_path(Path::new("/out"), "a/x", ".overlay.png");
        assert_eq!(p, Path::new("/out/a/x.overlay.png"));
        assert_eq!(
            images_file_for(Path::new("/o/results.json")),
            Path::new("/o/results.images.json")
        );
    }
}
