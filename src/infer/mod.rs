//! Inference: a model bundle + images → detections with binary masks, COCO results JSON and
//! overlay images. Plain data out (no tensors), so the GUI and the CLI share it.

pub mod overlay;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tch::{Device, Kind, Tensor, nn};

use crate::dataset::store::{check_dimensions, decode_limits};
use crate::dataset::{Mask, Rle};
use crate::model::MaskRcnn;
use crate::model::bundle::Bundle;

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
    /// The mask at image size, thresholded at [`MASK_THRESHOLD`].
    pub mask: Mask,
}

/// A loaded bundle ready to predict.
pub struct Predictor {
    model: MaskRcnn,
    // Keeps the variables alive; the model holds tensors that live in it.
    _vs: nn::VarStore,
    labels: Vec<String>,
    device: Device,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("labels", &self.labels)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Predictor {
    /// Loads a bundle directory onto `device` (weights loaded strictly); `score_thresh`
    /// overrides the bundle's `box_score_thresh`.
    pub fn load(
        bundle_dir: &Path,
        device: Device,
        score_thresh: Option<f64>,
    ) -> anyhow::Result<Self> {
        let bundle = Bundle::read(bundle_dir)
            .with_context(|| format!("reading model bundle {bundle_dir:?}"))?;
        let mut config = bundle.spec.resolved().to_config();
        if let Some(score_thresh) = score_thresh {
            config.box_score_thresh = score_thresh;
        }
        let mut vs = nn::VarStore::new(device);
        let model = MaskRcnn::new(&vs.root(), &config)
            .with_context(|| format!("building the model of {bundle_dir:?}"))?;
        bundle
            .load_weights(&mut vs)
            .with_context(|| format!("loading the weights of {bundle_dir:?}"))?;
        Ok(Self {
            model,
            _vs: vs,
            labels: bundle.labels,
            device,
        })
    }

    /// Class names, index 0 = label 1.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Detects instances in one RGB image.
    pub fn predict(&self, image: &image::RgbImage) -> anyhow::Result<Vec<Detection>> {
        let (w, h) = image.dimensions();
        // [H, W, 3] u8 -> [3, H, W] f32 in 0..1
        let input = Tensor::from_slice(image.as_raw())
            .view([i64::from(h), i64::from(w), 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float)
            .divide_scalar(255.0)
            .to_device(self.device);
        let mut out = self.model.forward_eval(&[input])?;
        let det = out.pop().context("the model returned no result")?;
        let boxes = Vec::<f32>::try_from(det.boxes.to_device(Device::Cpu).reshape([-1]))?;
        let scores = Vec::<f32>::try_from(det.scores.to_device(Device::Cpu))?;
        let labels = Vec::<i64>::try_from(det.labels.to_device(Device::Cpu))?;
        // [D, 1, H, W] probabilities -> [D, H, W] u8 0/1
        let masks = det
            .masks
            .ge(MASK_THRESHOLD)
            .to_kind(Kind::Uint8)
            .to_device(Device::Cpu);
        let mut detections = Vec::with_capacity(scores.len());
        for (i, (&score, &label)) in scores.iter().zip(&labels).enumerate() {
            let bits = Vec::<u8>::try_from(masks.get(i as i64).reshape([-1]))?;
            let mask = Mask::from_vec(w, h, bits)?;
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

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk_images(&path, out)?;
        } else if path.extension().is_some_and(|e| {
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
