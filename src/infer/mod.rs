//! Inference: a model bundle + images → detections with binary masks, COCO results JSON and
//! overlay images. Plain data out (no tensors), so the GUI and the CLI share it.

pub mod box_prompt;
pub mod export;
pub mod overlay;
pub mod pipeline;
pub mod prepare;
pub mod threshold;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tch::{Device, Kind, nn};

use crate::dataset::store::{check_dimensions, decode_limits};
use crate::dataset::{Mask, Rle};
use crate::model::MaskRcnn;
use crate::model::bundle::Bundle;
use prepare::{PrepareParams, Prepared};

/// Binary masks are the probabilities thresholded here (torchvision's documented use).
pub const MASK_THRESHOLD: f64 = 0.5;

/// One detected instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Class index 1..N (0 is background).
    pub label: i64,
    /// Class name from `labels.txt`.
    pub class_name: String,
    /// Score in 0..1.
    pub score: f32,
    /// Box `[x1, y1, x2, y2]` in image pixels.
    pub box_xyxy: [f32; 4],
    /// The mask at image size, thresholded at [`MASK_THRESHOLD`] (empty from
    /// [`Predictor::predict_soft`]: see [`Detection::mask_at`]).
    pub mask: Mask,
    /// The mask probabilities, kept by [`Predictor::predict_soft`] so the mask can be
    /// re-thresholded without running the model again; `None` from [`Predictor::predict`].
    pub soft_mask: Option<SoftMask>,
}

impl Detection {
    /// The mask binarised at `threshold` (the soft mask when kept, else the stored binary mask).
    pub fn mask_at(&self, threshold: f32) -> Mask {
        match &self.soft_mask {
            Some(soft) => soft.threshold(threshold),
            None => self.mask.clone(),
        }
    }

    /// The area of [`Detection::mask_at`] without building the mask.
    pub fn area_at(&self, threshold: f32) -> u64 {
        match &self.soft_mask {
            Some(soft) => soft.area_at(threshold),
            None => self.mask.area(),
        }
    }
}

/// A detection's mask probabilities at image size, quantised to `round(p * 255)` and stored only
/// over the rectangle where they are non-zero (outside it every probability is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SoftMask {
    /// Image width in pixels.
    pub image_width: u32,
    /// Image height in pixels.
    pub image_height: u32,
    /// Left edge of the stored rectangle.
    pub x0: u32,
    /// Top edge of the stored rectangle.
    pub y0: u32,
    /// Width of the stored rectangle.
    pub width: u32,
    /// Height of the stored rectangle.
    pub height: u32,
    /// Row-major `[height, width]` quantised probabilities.
    pub data: Vec<u8>,
}

impl SoftMask {
    /// Quantises a row-major `[height, width]` probability map already scaled to 0..=255,
    /// keeping the bounding rectangle of its non-zero values.
    pub fn from_quantised(image_width: u32, image_height: u32, full: &[u8]) -> Self {
        let (w, h) = (image_width as usize, image_height as usize);
        let (mut x_min, mut y_min, mut x_max, mut y_max) = (w, h, 0usize, 0usize);
        for (y, row) in full.chunks_exact(w.max(1)).take(h).enumerate() {
            let Some(first) = row.iter().position(|&v| v > 0) else {
                continue;
            };
            let last = row.iter().rposition(|&v| v > 0).unwrap_or(first);
            x_min = x_min.min(first);
            x_max = x_max.max(last + 1);
            y_min = y_min.min(y);
            y_max = y + 1;
        }
        if x_min >= x_max || y_min >= y_max {
            return Self {
                image_width,
                image_height,
                x0: 0,
                y0: 0,
                width: 0,
                height: 0,
                data: Vec::new(),
            };
        }
        let mut data = Vec::with_capacity((x_max - x_min) * (y_max - y_min));
        for y in y_min..y_max {
            data.extend_from_slice(&full[y * w + x_min..y * w + x_max]);
        }
        Self {
            image_width,
            image_height,
            x0: x_min as u32,
            y0: y_min as u32,
            width: (x_max - x_min) as u32,
            height: (y_max - y_min) as u32,
            data,
        }
    }

    /// Like [`Self::from_quantised`] for a map that is zero outside the rectangle `[x0, y0,
    /// width, height]`, given as that rectangle's row-major values.
    pub fn from_quantised_region(
        image_width: u32,
        image_height: u32,
        rect: [u32; 4],
        region: &[u8],
    ) -> Self {
        let [x0, y0, rw, _] = rect;
        let inner = Self::from_quantised(rw, (region.len() / rw.max(1) as usize) as u32, region);
        Self {
            image_width,
            image_height,
            x0: if inner.width > 0 { x0 + inner.x0 } else { 0 },
            y0: if inner.width > 0 { y0 + inner.y0 } else { 0 },
            ..inner
        }
    }

    /// The quantised level a probability threshold compares against: `q >= 255 * t`, with
    /// `q = round(255 p)`; a threshold of 0 still needs `p > 0`.
    pub fn level(threshold: f32) -> f32 {
        (threshold.clamp(0.0, 1.0) * 255.0).max(0.5)
    }

    /// Pixels with probability at least `threshold` (the area of [`SoftMask::threshold`]).
    pub fn area_at(&self, threshold: f32) -> u64 {
        let level = Self::level(threshold);
        self.data.iter().filter(|&&q| f32::from(q) >= level).count() as u64
    }

    /// The binary mask at image size of the pixels whose probability is at least `threshold`
    /// (compared on the quantised value, so within 1/510 of the float comparison).
    pub fn threshold(&self, threshold: f32) -> Mask {
        let (w, h) = (self.image_width as usize, self.image_height as usize);
        let mut bits = vec![0u8; w * h];
        let level = Self::level(threshold);
        let sw = self.width as usize;
        for (row, src) in self.data.chunks_exact(sw.max(1)).enumerate() {
            let y = self.y0 as usize + row;
            let start = y * w + self.x0 as usize;
            for (dst, &q) in bits[start..start + sw].iter_mut().zip(src) {
                *dst = u8::from(f32::from(q) >= level);
            }
        }
        Mask::from_vec(self.image_width, self.image_height, bits)
            .unwrap_or_else(|_| Mask::new(self.image_width, self.image_height))
    }
}

/// An image-size mask that is `bits` (row-major 0/1) inside the rectangle `[x0, y0, width,
/// height]` and unset elsewhere.
fn place_region(width: u32, height: u32, rect: [u32; 4], bits: &[u8]) -> anyhow::Result<Mask> {
    let [x0, y0, rw, rh] = rect.map(|v| v as usize);
    let w = width as usize;
    anyhow::ensure!(
        x0 + rw <= w && y0 + rh <= height as usize && bits.len() == rw * rh,
        "mask rectangle {rect:?} does not fit a {width}x{height} image"
    );
    let mut full = vec![0u8; w * height as usize];
    for (row, src) in bits.chunks_exact(rw.max(1)).enumerate() {
        let start = (y0 + row) * w + x0;
        full[start..start + rw].copy_from_slice(src);
    }
    Ok(Mask::from_vec(width, height, full)?)
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A loaded bundle ready to predict.
#[derive(Debug)]
pub struct Predictor {
    model: MaskRcnn,
    // Keeps the variables alive; the model holds tensors that live in it.
    _vs: nn::VarStore,
    labels: Vec<String>,
    device: Device,
    prepare: PrepareParams,
    /// The bundle's own `box_score_thresh` (before any override at load).
    bundle_score_thresh: f64,
}

impl Predictor {
    /// Loads a bundle directory onto `device` (weights loaded strictly); `score_thresh`
    /// overrides the bundle's `box_score_thresh`.
    pub fn load(
        bundle_dir: &Path,
        device: Device,
        score_thresh: Option<f64>,
    ) -> anyhow::Result<Self> {
        crate::alloc::keep_large_blocks();
        let bundle = Bundle::read(bundle_dir)
            .with_context(|| format!("reading model bundle {bundle_dir:?}"))?;
        let mut config = bundle.spec.resolved().to_config();
        let bundle_score_thresh = config.box_score_thresh;
        if let Some(score_thresh) = score_thresh {
            config.box_score_thresh = score_thresh;
        }
        let mut vs = nn::VarStore::new(device);
        let model = MaskRcnn::new(&vs.root(), &config)
            .with_context(|| format!("building the model of {bundle_dir:?}"))?;
        bundle
            .load_weights(&mut vs)
            .with_context(|| format!("loading the weights of {bundle_dir:?}"))?;
        let prepare = PrepareParams::from_config(&config)?;
        Ok(Self {
            model,
            _vs: vs,
            labels: bundle.labels,
            device,
            prepare,
            bundle_score_thresh,
        })
    }

    /// The bundle's own `box_score_thresh` (what [`Predictor::load`] without an override keeps:
    /// see [`threshold::kept_by_bundle`]).
    pub fn bundle_score_thresh(&self) -> f64 {
        self.bundle_score_thresh
    }

    /// Class names, index 0 = label 1.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Detects instances in one RGB image.
    pub fn predict(&self, image: &image::RgbImage) -> anyhow::Result<Vec<Detection>> {
        self.predict_impl(image, false)
    }

    /// Like [`Predictor::predict`], but each detection keeps its mask probabilities
    /// ([`Detection::soft_mask`], box-sized) for live re-thresholding instead of a full-size
    /// binary mask (`mask` is empty; use [`Detection::mask_at`]).
    pub fn predict_soft(&self, image: &image::RgbImage) -> anyhow::Result<Vec<Detection>> {
        self.predict_impl(image, true)
    }

    /// What [`prepare::prepare`] needs to make this model's input (plain data: decoder
    /// threads prepare images while the model runs).
    pub fn prepare_params(&self) -> &PrepareParams {
        &self.prepare
    }

    /// [`Predictor::predict`] of an image already made by [`prepare::prepare`] with
    /// [`Predictor::prepare_params`].
    pub fn predict_prepared(&self, prepared: &Prepared) -> anyhow::Result<Vec<Detection>> {
        self.run_prepared(prepared, false)
    }

    /// [`Predictor::predict_soft`] of an image already made by [`prepare::prepare`].
    pub fn predict_soft_prepared(&self, prepared: &Prepared) -> anyhow::Result<Vec<Detection>> {
        self.run_prepared(prepared, true)
    }

    fn predict_impl(&self, image: &image::RgbImage, soft: bool) -> anyhow::Result<Vec<Detection>> {
        let prepared = prepare::prepare(image, &self.prepare)?;
        self.run_prepared(&prepared, soft)
    }

    fn run_prepared(&self, prepared: &Prepared, soft: bool) -> anyhow::Result<Vec<Detection>> {
        let (h, w) = prepared.original;
        let (w, h) = (u32::try_from(w)?, u32::try_from(h)?);
        // [3, h', w'] normalised, resized f32 (the fallible variants turn libtorch errors, CUDA
        // out of memory or a bad shape, into errors instead of panics).
        let input = prepared
            .to_tensor(self.device)
            .context("moving the image to the model's device")?;
        // Masks stay box-sized crops: full [D, H, W] maps of a 12-megapixel photo with 100
        // detections would take gigabytes.
        // Libtorch errors inside the model (CUDA out of memory) surface as panics.
        let original = [prepared.original];
        let run = || {
            self.model
                .forward_eval_cropped_prepared(&[input], &original)
        };
        let mut out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .map_err(|p| anyhow::anyhow!("libtorch: {}", panic_text(&*p)))??;
        let det = out.pop().context("the model returned no result")?;
        let boxes = Vec::<f32>::try_from(det.boxes.f_to_device(Device::Cpu)?.f_reshape([-1])?)?;
        let scores = Vec::<f32>::try_from(det.scores.f_to_device(Device::Cpu)?)?;
        let labels = Vec::<i64>::try_from(det.labels.f_to_device(Device::Cpu)?)?;
        anyhow::ensure!(
            boxes.len() == 4 * scores.len() && labels.len() == scores.len(),
            "the model returned {} boxes, {} scores and {} labels",
            boxes.len() / 4,
            scores.len(),
            labels.len()
        );
        let mut detections = Vec::with_capacity(scores.len());
        for (i, (&score, &label)) in scores.iter().zip(&labels).enumerate() {
            let crop = det.masks.get(i).and_then(Option::as_ref);
            let (mask, soft_mask) = match crop {
                Some(c) => {
                    let (x0, y0) = (u32::try_from(c.x0)?, u32::try_from(c.y0)?);
                    let (ch, cw) = c.probs.size2()?;
                    let (ch, cw) = (u32::try_from(ch)?, u32::try_from(cw)?);
                    anyhow::ensure!(
                        u64::from(x0) + u64::from(cw) <= u64::from(w)
                            && u64::from(y0) + u64::from(ch) <= u64::from(h),
                        "mask crop at {x0},{y0} of {cw}x{ch} does not fit a {w}x{h} image"
                    );
                    let probs = c.probs.f_to_device(Device::Cpu)?;
                    if soft {
                        // [h, w] probabilities -> [h, w] u8 round(p * 255); the binary mask
                        // comes from it on demand (`mask_at`).
                        let q = probs
                            .f_multiply_scalar(255.0)?
                            .f_round()?
                            .f_clamp(0.0, 255.0)?
                            .f_to_kind(Kind::Uint8)?;
                        let q = Vec::<u8>::try_from(q.f_reshape([-1])?)?;
                        let s = SoftMask::from_quantised_region(w, h, [x0, y0, cw, ch], &q);
                        (Mask::new(0, 0), Some(s))
                    } else {
                        // [h, w] probabilities -> u8 0/1 placed into the image-size mask.
                        let bits = probs.f_ge(MASK_THRESHOLD)?.f_to_kind(Kind::Uint8)?;
                        let bits = Vec::<u8>::try_from(bits.f_reshape([-1])?)?;
                        (place_region(w, h, [x0, y0, cw, ch], &bits)?, None)
                    }
                }
                None if soft => (Mask::new(0, 0), Some(SoftMask::from_quantised(w, h, &[]))),
                None => (Mask::new(w, h), None),
            };
            let class_name = usize::try_from(label - 1)
                .ok()
                .and_then(|k| self.labels.get(k))
                .cloned()
                .unwrap_or_else(|| format!("class_{label}"));
            let b = &boxes[4 * i..4 * i + 4];
            detections.push(Detection {
                label,
                class_name,
                score,
                box_xyxy: [b[0], b[1], b[2], b[3]],
                mask,
                soft_mask,
            });
        }
        Ok(detections)
    }
}

/// Decodes an image file for prediction, refusing absurd sizes before decoding.
pub fn read_image(path: &Path) -> anyhow::Result<image::RgbImage> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("{path:?}: cannot open"))?
        .with_guessed_format()
        .with_context(|| format!("{path:?}: cannot read"))?;
    if reader.format().is_none() {
        anyhow::bail!("{path:?}: not a supported image (JPEG or PNG)");
    }
    let (w, h) = reader
        .into_dimensions()
        .with_context(|| format!("{path:?}: unreadable image header"))?;
    check_dimensions(w, h).map_err(|e| anyhow::anyhow!("{path:?}: {e}"))?;
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    reader.limits(decode_limits());
    let image = reader
        .decode()
        .with_context(|| format!("{path:?}: cannot decode"))?;
    Ok(image.to_rgb8())
}

/// Image files named on the command line: files as given, folders searched recursively for
/// `.jpg`/`.jpeg`/`.png` (sorted).
pub fn collect_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk_images(input, &mut found)
                .with_context(|| format!("listing images under {input:?}"))?;
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

/// Image files under `dir`, recursively. Symbolic links to folders are not followed (a link
/// loop would recurse forever), as the dataset import does; links to files are read.
fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_dir() || !entry.path().is_file() {
            continue;
        }
        let path = entry.into_path();
        if path.extension().is_some_and(|e| {
            matches!(
                e.to_ascii_lowercase().to_str(),
                Some("jpg" | "jpeg" | "png")
            )
        }) {
            out.push(path);
        }
    }
    Ok(())
}

/// One detection as a COCO results entry (`segmentation` is compressed RLE with string counts).
pub fn coco_result(file_name: &str, d: &Detection) -> serde_json::Value {
    let rle: Rle = d.mask.to_rle();
    let [x1, y1, x2, y2] = d.box_xyxy;
    serde_json::json!({
        "file_name": file_name,
        "category_id": d.label,
        "category_name": d.class_name,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": d.score,
        "segmentation": {"size": [rle.height, rle.width], "counts": rle.to_compressed()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_mask_keeps_the_non_zero_rectangle_and_rethresholds() {
        // 5 x 4 image; probabilities only in rows 1..3, columns 1..4.
        #[rustfmt::skip]
        let full: Vec<u8> = vec![
            0,   0,   0,   0, 0,
            0,  10, 128, 200, 0,
            0, 127, 255,  64, 0,
            0,   0,   0,   0, 0,
        ];
        let soft = SoftMask::from_quantised(5, 4, &full);
        assert_eq!((soft.x0, soft.y0, soft.width, soft.height), (1, 1, 3, 2));
        assert_eq!(soft.data, [10, 128, 200, 127, 255, 64]);
        let at = |t: f32| soft.threshold(t).data().to_vec();
        // 0.5 * 255 = 127.5: 128 and up are on (p >= 0.5), 127 is off.
        #[rustfmt::skip]
        let half = vec![
            0, 0, 0, 0, 0,
            0, 0, 1, 1, 0,
            0, 0, 1, 0, 0,
            0, 0, 0, 0, 0,
        ];
        assert_eq!(at(0.5), half);
        assert_eq!(
            soft.threshold(0.0).area(),
            6,
            "threshold 0 keeps every p > 0"
        );
        assert_eq!(soft.threshold(0.9).area(), 1);
        assert_eq!(soft.area_at(0.5), 3);
        assert_eq!(soft.area_at(0.0), 6);
        assert_eq!(soft.threshold(1.0).area(), 1);
    }

    #[test]
    fn an_all_zero_soft_mask_is_empty() {
        let soft = SoftMask::from_quantised(3, 2, &[0; 6]);
        assert_eq!((soft.width, soft.height), (0, 0));
        assert_eq!(soft.threshold(0.1).area(), 0);
        assert_eq!(soft.threshold(0.1).width(), 3);
    }
}
