//! Downloaded images and their masks turned into [`ImportImage`]s and imported in batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cancel::CancelToken;
use crate::dataset::store::{Project, StoreError, decode_limits};
use crate::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use crate::fsutil::write_atomic;

use crate::openimages::error::FailureKind;
use crate::openimages::index::{self, ImageMeta, MaskRow};
use crate::openimages::masks::{self};
use crate::openimages::{Config, Error, Index, Split, image_id_str};

use super::{DownloadEvent, DownloadSummary, Failure, PROJECT_FOLDER};

/// Everything needed to turn one downloaded image into an [`ImportImage`].
pub(super) struct Pending {
    pub(super) split: Split,
    pub(super) id: u64,
    pub(super) masks: Vec<MaskRow>,
}

pub(super) struct Ready {
    pub(super) image: ImportImage,
    pub(super) staged: Vec<PathBuf>,
    pub(super) id: String,
}

/// Rotates a gray or colour image counter-clockwise by `deg` (0/90/180/270).
fn rotate_ccw<I: image::GenericImageView>(
    img: &I,
    deg: u32,
) -> image::ImageBuffer<I::Pixel, Vec<<I::Pixel as image::Pixel>::Subpixel>>
where
    I::Pixel: 'static,
{
    match deg {
        90 => image::imageops::rotate270(img),
        180 => image::imageops::rotate180(img),
        270 => image::imageops::rotate90(img),
        _ => {
            let mut out = image::ImageBuffer::new(img.width(), img.height());
            image::imageops::replace(&mut out, img, 0, 0);
            out
        }
    }
}

/// `Rotation` as a multiple of 90 (empty or odd values → 0).
fn rotation_degrees(meta: Option<&ImageMeta>) -> Option<u32> {
    let r = meta.and_then(|m| m.rotation)?;
    let r = r.rem_euclid(360.0);
    [0u32, 90, 180, 270]
        .into_iter()
        .find(|d| (f64::from(*d) - r).abs() < 1e-6)
}

fn decode_png(bytes: &[u8]) -> Result<image::GrayImage, String> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    reader.limits(decode_limits());
    Ok(reader.decode().map_err(|e| e.to_string())?.into_luma8())
}

pub(super) struct BuildCtx<'a> {
    pub(super) cfg: &'a Config,
    pub(super) index: &'a Index,
    pub(super) names: &'a HashMap<i64, (String, String)>,
    pub(super) apply_rotation: bool,
    pub(super) events: &'a dyn Fn(DownloadEvent),
}

/// Turns a staged image and its staged masks into an import record: rotation applied to both,
/// masks binarised and resized (nearest neighbour) to the image, empty masks skipped.
pub(super) fn build(
    ctx: &BuildCtx<'_>,
    p: &Pending,
    path: PathBuf,
    w: u32,
    h: u32,
    failures: &mut Vec<Failure>,
) -> Result<Ready, String> {
    let id = image_id_str(p.id);
    let meta = ctx
        .index
        .image_meta(p.split, p.id)
        .map_err(|e| e.to_string())?;
    let deg = if ctx.apply_rotation {
        rotation_degrees(meta.as_ref()).unwrap_or(0)
    } else {
        0
    };
    if ctx.apply_rotation
        && let Some(r) = meta.as_ref().and_then(|m| m.rotation)
        && rotation_degrees(meta.as_ref()).is_none()
    {
        (ctx.events)(DownloadEvent::Warning(format!(
            "{id}: Rotation {r} is not a multiple of 90; left as stored"
        )));
    }
    let mut staged = vec![path.clone()];
    let (src_path, width, height) = if deg == 0 {
        (path, w, h)
    } else {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut reader =
            image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        reader.limits(decode_limits());
        let img = reader.decode().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        let (rw, rh) = match img {
            image::DynamicImage::ImageLuma8(g) => {
                let r = rotate_ccw(&g, deg);
                let dims = r.dimensions();
                r.write_with_encoder(encoder).map_err(|e| e.to_string())?;
                dims
            }
            other => {
                let r = rotate_ccw(&other.to_rgb8(), deg);
                let dims = r.dimensions();
                r.write_with_encoder(encoder).map_err(|e| e.to_string())?;
                dims
            }
        };
        let upright = path.with_extension("upright.jpg");
        write_atomic(&upright, &out).map_err(|e| e.to_string())?;
        staged.push(upright.clone());
        (upright, rw, rh)
    };
    let clicks_csv = ctx.cfg.file_path(&p.split.segmentation_csv());
    let mut instances = Vec::new();
    for m in &p.masks {
        // An unsafe name or a missing file: the mask phase already recorded the failure.
        let Ok(mask_file) = masks::staged_mask(ctx.cfg, p.split, &m.mask_path) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(&mask_file) else {
            continue;
        };
        staged.push(mask_file);
        let gray = match decode_png(&bytes) {
            Ok(g) => rotate_ccw(&g, deg),
            Err(e) => {
                failures.push(Failure {
                    kind: FailureKind::MaskCorrupt,
                    id: m.mask_path.clone(),
                    message: e,
                });
                continue;
            }
        };
        let mask = Mask::from_gray(&gray).resize_nearest(width, height);
        if mask.area() == 0 {
            (ctx.events)(DownloadEvent::Warning(format!(
                "{}: empty mask skipped",
                m.mask_path
            )));
            failures.push(Failure {
                kind: FailureKind::EmptyMask,
                id: m.mask_path.clone(),
                message: "no foreground pixels at image size".into(),
            });
            continue;
        }
        let (mid, name) = ctx.names.get(&m.class).cloned().unwrap_or_default();
        let clicks = m
            .clicks
            .and_then(|(at, len)| index::read_clicks(&clicks_csv, at, len));
        instances.push(ImportInstance {
            class: name,
            segmentation: Segmentation::Bitmap(mask),
            iscrowd: false,
            origin: Origin::OpenImages,
            provenance: Some(serde_json::json!({
                "mid": mid,
                "box_id": m.box_id,
                "predicted_iou": m.predicted_iou,
                "clicks": clicks,
                "mask": m.mask_path,
                "split": p.split.as_str(),
            })),
        });
    }
    let meta = meta.unwrap_or_default();
    Ok(Ready {
        image: ImportImage {
            src_path,
            file_name: format!("{PROJECT_FOLDER}/{}/{id}.jpg", p.split.as_str()),
            width,
            height,
            split: Some(p.split.as_str().to_owned()),
            source: "openimages".into(),
            attribution: Attribution {
                author: meta.author,
                license: meta.license,
                original_url: meta.original_url,
                title: meta.title,
            },
            instances,
        },
        staged,
        id,
    })
}

/// Imports a batch in one transaction; if the store refuses it, imports image by image so one
/// bad image cannot sink the rest. Staged files of imported images are deleted.
pub(super) fn import_batch(
    project: &mut Project,
    batch: Vec<Ready>,
    class_defs: &[ClassDef],
    cancel: &CancelToken,
    summary: &mut DownloadSummary,
) -> Result<(), Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let source = Path::new(PROJECT_FOLDER);
    let mut set = ImportSet {
        format: "openimages".into(),
        classes: class_defs.to_vec(),
        images: Vec::new(),
    };
    set.images = batch.iter().map(|r| r.image.clone()).collect();
    let tally = |summary: &mut DownloadSummary, s: &crate::dataset::store::ImportSummary| {
        summary.images_added += s.images_added;
        summary.instances_added += s.instances_added;
    };
    match project.import(&set, source, cancel, &mut |_| {}) {
        Ok(s) => tally(summary, &s),
        Err(StoreError::Cancelled) => return Err(Error::Cancelled),
        Err(e) => {
            log::warn!("batch import failed ({e}); importing one by one");
            for r in &batch {
                set.images = vec![r.image.clone()];
                match project.import(&set, source, cancel, &mut |_| {}) {
                    Ok(s) => tally(summary, &s),
                    Err(StoreError::Cancelled) => return Err(Error::Cancelled),
                    Err(e) => summary.failures.push(Failure {
                        kind: FailureKind::Import,
                        id: r.id.clone(),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    for r in &batch {
        for f in &r.staged {
            std::fs::remove_file(f).ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_values() {
        let m = |r: Option<f64>| ImageMeta {
            rotation: r,
            ..Default::default()
        };
        assert_eq!(rotation_degrees(Some(&m(Some(90.0)))), Some(90));
        assert_eq!(rotation_degrees(Some(&m(Some(0.0)))), Some(0));
        assert_eq!(rotation_degrees(Some(&m(None))), None);
        assert_eq!(rotation_degrees(Some(&m(Some(45.0)))), None);
        assert_eq!(rotation_degrees(None), None);
    }

    #[test]
    fn rotate_ccw_moves_top_left_to_bottom_left() {
        let mut img = image::GrayImage::new(4, 2);
        img.put_pixel(0, 0, image::Luma([255]));
        let r = rotate_ccw(&img, 90);
        assert_eq!(r.dimensions(), (2, 4));
        assert_eq!(r.get_pixel(0, 3)[0], 255); // CCW: top-left goes to bottom-left
    }
}
