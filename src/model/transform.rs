//! `GeneralizedRCNNTransform`: normalise, resize, batch, and post-process
//! (`torchvision/models/detection/transform.py`, `paste_masks_in_image` from `roi_heads.py:378-500`).

use tch::{Kind, Tensor};

use crate::model::error::{ModelError, Result};

/// Ground truth of one training image, in original pixel coordinates.
#[derive(Debug)]
pub struct Target {
    /// `[G, 4]` f32 xyxy boxes with `x2 > x1`, `y2 > y1`.
    pub boxes: Tensor,
    /// `[G]` int64 class labels in `1..num_classes`.
    pub labels: Tensor,
    /// `[G, H, W]` u8 instance masks (0/1) of the image size.
    pub masks: Tensor,
}

/// A padded batch of images plus the un-padded size of each resized image.
#[derive(Debug)]
pub struct ImageList {
    /// `[N, 3, Hp, Wp]`, zero padded at the bottom/right, `Hp`/`Wp` multiples of `size_divisible`.
    pub tensors: Tensor,
    /// `(h, w)` of every resized image before padding.
    pub image_sizes: Vec<(i64, i64)>,
}

/// torchvision `GeneralizedRCNNTransform`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneralizedRcnnTransform {
    /// Candidate shorter sides (training picks one at random, eval uses the last).
    pub min_size: Vec<i64>,
    /// Upper bound of the longer side.
    pub max_size: i64,
    /// Per-channel mean.
    pub image_mean: Vec<f64>,
    /// Per-channel std.
    pub image_std: Vec<f64>,
    /// Batch padding multiple.
    pub size_divisible: i64,
}

/// Output size of `_resize_image_and_masks`: `scale = min(min_size / short, max_size / long)` in f64,
/// then `floor(side * scale)` (PyTorch `interpolate(recompute_scale_factor=True)`).
pub fn resized_size(size: (i64, i64), min_size: i64, max_size: i64) -> (i64, i64) {
    let (h, w) = size;
    let short = h.min(w) as f64;
    let long = h.max(w) as f64;
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    (
        (h as f64 * scale).floor() as i64,
        (w as f64 * scale).floor() as i64,
    )
}

/// torchvision `resize_boxes`: boxes `[N, 4]` scaled per axis by `new / original` (f32 ratios).
pub fn resize_boxes(
    boxes: &Tensor,
    original_size: (i64, i64),
    new_size: (i64, i64),
) -> Result<Tensor> {
    let ratio_h = new_size.0 as f32 / original_size.0 as f32;
    let ratio_w = new_size.1 as f32 / original_size.1 as f32;
    let xmin = boxes.f_select(1, 0)? * f64::from(ratio_w);
    let xmax = boxes.f_select(1, 2)? * f64::from(ratio_w);
    let ymin = boxes.f_select(1, 1)? * f64::from(ratio_h);
    let ymax = boxes.f_select(1, 3)? * f64::from(ratio_h);
    Ok(Tensor::f_stack(&[xmin, ymin, xmax, ymax], 1)?)
}

impl GeneralizedRcnnTransform {
    /// `(image - mean) / std` for a `[3, H, W]` float image.
    pub fn normalize(&self, image: &Tensor) -> Result<Tensor> {
        if !image.is_floating_point() {
            return Err(ModelError::InvalidInput(format!(
                "images must be float tensors with values in 0..1, got {:?}",
                image.kind()
            )));
        }
        let (kind, device) = (image.kind(), image.device());
        let mean: Vec<f32> = self.image_mean.iter().map(|&v| v as f32).collect();
        let std: Vec<f32> = self.image_std.iter().map(|&v| v as f32).collect();
        let mean = Tensor::f_from_slice(&mean)?
            .f_to(device)?
            .f_to_kind(kind)?
            .f_view([-1, 1, 1])?;
        let std = Tensor::f_from_slice(&std)?
            .f_to(device)?
            .f_to_kind(kind)?
            .f_view([-1, 1, 1])?;
        Ok(image.f_sub(&mean)?.f_div(&std)?)
    }

    /// Bilinear resize (align_corners=False, no antialias) of a `[C, H, W]` image; returns the new image.
    pub fn resize_image(&self, image: &Tensor, min_size: i64) -> Result<Tensor> {
        let size = image.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let (oh, ow) = resized_size((h, w), min_size, self.max_size);
        if (oh, ow) == (h, w) {
            // Scale in/out = 1: every output pixel reads its own source pixel with weight 1 and
            // its neighbour with weight 0, so the kernel would return the image unchanged.
            return Ok(image.shallow_clone());
        }
        Ok(image
            .f_unsqueeze(0)?
            .f_upsample_bilinear2d([oh, ow], false, None, None)?
            .f_squeeze_dim(0)?)
    }

    /// Resizes a training target to `new_size`: boxes by per-axis ratio, masks `[G, H, W]` u8 by nearest.
    pub fn resize_target(
        &self,
        target: &Target,
        original_size: (i64, i64),
        new_size: (i64, i64),
    ) -> Result<Target> {
        if new_size == original_size {
            // Ratios 1 and nearest sampling at scale 1 leave boxes and masks unchanged.
            return Ok(Target {
                boxes: target.boxes.shallow_clone(),
                labels: target.labels.shallow_clone(),
                masks: target.masks.shallow_clone(),
            });
        }
        let boxes = resize_boxes(&target.boxes, original_size, new_size)?;
        let g = target.masks.size()[0];
        let masks = if g == 0 {
            Tensor::f_zeros(
                [0, new_size.0, new_size.1],
                (Kind::Uint8, target.masks.device()),
            )?
        } else {
            // torchvision resizes `masks[:, None].float()` and casts back with `.byte()`;
            // nearest only copies values, so 0/1 u8 masks resized as u8 are the same pixels
            // without the 4-byte copy of every mask.
            let masks = if target.masks.kind() == Kind::Uint8 {
                target.masks.shallow_clone()
            } else {
                target.masks.f_to_kind(Kind::Float)?
            };
            masks
                .f_unsqueeze(1)?
                .f_upsample_nearest2d([new_size.0, new_size.1], None, None)?
                .f_squeeze_dim(1)?
                .f_to_kind(Kind::Uint8)?
        };
        Ok(Target {
            boxes,
            labels: target.labels.shallow_clone(),
            masks,
        })
    }

    /// Stacks images into a zero-padded `[N, C, Hp, Wp]` batch (transform.py:237-255).
    pub fn batch_images(&self, images: &[Tensor]) -> Result<Tensor> {
        let first = images
            .first()
            .ok_or_else(|| ModelError::InvalidInput("empty image batch".to_owned()))?;
        let mut max = first.size();
        for img in &images[1..] {
            for (m, s) in max.iter_mut().zip(img.size()) {
                *m = (*m).max(s);
            }
        }
        let stride = self.size_divisible as f64;
        max[1] = ((max[1] as f64 / stride).ceil() * stride) as i64;
        max[2] = ((max[2] as f64 / stride).ceil() * stride) as i64;
        let batched = Tensor::f_zeros(
            [images.len() as i64, max[0], max[1], max[2]],
            (first.kind(), first.device()),
        )?;
        for (i, img) in images.iter().enumerate() {
            let s = img.size();
            batched
                .f_get(i as i64)?
                .f_narrow(0, 0, s[0])?
                .f_narrow(1, 0, s[1])?
                .f_narrow(2, 0, s[2])?
                .f_copy_(img)?;
        }
        Ok(batched)
    }

    /// Batches images already normalised and resized by the caller (`[3, h_i, w_i]` each, e.g.
    /// `infer::prepare`): the eval [`Self::forward`] without its full-size float input.
    pub fn batch_prepared(&self, images: &[Tensor]) -> Result<ImageList> {
        for (i, image) in images.iter().enumerate() {
            if image.dim() != 3 || !image.is_floating_point() {
                return Err(ModelError::InvalidInput(format!(
                    "prepared images must be [C, H, W] float tensors, got {:?} {:?} for image {i}",
                    image.kind(),
                    image.size()
                )));
            }
        }
        let image_sizes = images.iter().map(|t| (t.size()[1], t.size()[2])).collect();
        let tensors = self.batch_images(images)?;
        Ok(ImageList {
            tensors,
            image_sizes,
        })
    }

    /// Normalises, resizes (to `min_size` chosen by `pick_min_size`) and batches `images`, resizing the
    /// targets along. `pick_min_size(n)` returns an index into `self.min_size` (eval: the last one).
    pub fn forward(
        &self,
        images: &[Tensor],
        targets: Option<&[Target]>,
        mut pick_min_size: impl FnMut(usize) -> usize,
    ) -> Result<(ImageList, Option<Vec<Target>>)> {
        let mut resized = Vec::with_capacity(images.len());
        let mut new_targets = targets.map(|t| Vec::with_capacity(t.len()));
        for (i, image) in images.iter().enumerate() {
            if image.dim() != 3 {
                return Err(ModelError::InvalidInput(format!(
                    "images must be [C, H, W] tensors, got {:?} for image {i}",
                    image.size()
                )));
            }
            let size = image.size();
            let (h, w) = (size[1], size[2]);
            let image = self.normalize(image)?;
            let min_size =
                self.min_size[pick_min_size(self.min_size.len()).min(self.min_size.len() - 1)];
            let image = self.resize_image(&image, min_size)?;
            let new_size = (image.size()[1], image.size()[2]);
            if let (Some(ts), Some(out)) = (targets, new_targets.as_mut()) {
                out.push(self.resize_target(&ts[i], (h, w), new_size)?);
            }
            resized.push(image);
        }
        let image_sizes = resized.iter().map(|t| (t.size()[1], t.size()[2])).collect();
        let tensors = self.batch_images(&resized)?;
        Ok((
            ImageList {
                tensors,
                image_sizes,
            },
            new_targets,
        ))
    }
}

/// One detection's pasted mask, kept only over the rectangle torchvision's paste writes
/// (everything outside it is 0 in the full `[H, W]` map).
#[derive(Debug)]
pub struct PastedMask {
    /// Left edge of the rectangle in image pixels.
    pub x0: i64,
    /// Top edge of the rectangle in image pixels.
    pub y0: i64,
    /// `[h, w]` probabilities of the rectangle.
    pub probs: Tensor,
}

/// torchvision `paste_masks_in_image` (padding 1) without the full-size canvas: `masks
/// [D, 1, M, M]` probabilities in `boxes [D, 4]` (original image coordinates) resized into their
/// expanded boxes and clipped to `image_size`; `None` for a box entirely outside the image.
/// A 12-megapixel photo with 100 detections needs box-sized crops here instead of 4.8 GB.
pub fn paste_masks_cropped(
    masks: &Tensor,
    boxes: &Tensor,
    image_size: (i64, i64),
    padding: i64,
) -> Result<Vec<Option<PastedMask>>> {
    let (im_h, im_w) = image_size;
    let size = masks.size();
    let (n, m) = (size[0], size[size.len() - 1]);
    if n == 0 {
        return Ok(Vec::new());
    }
    // expand_masks (roi_heads.py:411-418)
    let scale = (m + 2 * padding) as f64 / m as f64;
    let padded = masks.f_constant_pad_nd([padding, padding, padding, padding])?;
    // expand_boxes (roi_heads.py:389-407), f32 tensor ops, then int64 truncation
    let w_half = (boxes.f_select(1, 2)? - boxes.f_select(1, 0)?) * 0.5 * scale;
    let h_half = (boxes.f_select(1, 3)? - boxes.f_select(1, 1)?) * 0.5 * scale;
    let x_c = (boxes.f_select(1, 2)? + boxes.f_select(1, 0)?) * 0.5;
    let y_c = (boxes.f_select(1, 3)? + boxes.f_select(1, 1)?) * 0.5;
    let expanded = Tensor::f_stack(
        &[
            x_c.f_sub(&w_half)?,
            y_c.f_sub(&h_half)?,
            x_c.f_add(&w_half)?,
            y_c.f_add(&h_half)?,
        ],
        1,
    )?
    .f_to_kind(Kind::Int64)?
    .f_to_device(tch::Device::Cpu)?
    .f_contiguous()?
    .f_view([-1])?;
    let eb = Vec::<i64>::try_from(&expanded)?;
    // paste_mask_in_image (roi_heads.py:421-447), one detection at a time
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let (b0, b1, b2, b3) = (eb[4 * i], eb[4 * i + 1], eb[4 * i + 2], eb[4 * i + 3]);
        let w = (b2 - b0 + 1).max(1);
        let h = (b3 - b1 + 1).max(1);
        let (x0, x1) = (b0.max(0), (b2 + 1).min(im_w));
        let (y0, y1) = (b1.max(0), (b3 + 1).min(im_h));
        if x1 <= x0 || y1 <= y0 {
            out.push(None); // box entirely outside the image (torchvision would raise)
            continue;
        }
        let probs = padded
            .f_get(i as i64)?
            .f_unsqueeze(0)?
            .f_upsample_bilinear2d([h, w], false, None, None)? // [1, 1, h, w]
            .f_view([h, w])?
            .f_narrow(0, y0 - b1, y1 - y0)?
            .f_narrow(1, x0 - b0, x1 - x0)?
            .f_contiguous()?;
        out.push(Some(PastedMask { x0, y0, probs }));
    }
    Ok(out)
}

/// The full `[D, 1, H, W]` maps of pasted crops (zeros outside each crop), `kind` and
/// `device` those of the mask probabilities.
pub fn masks_on_canvas(
    crops: &[Option<PastedMask>],
    image_size: (i64, i64),
    options: (Kind, tch::Device),
) -> Result<Tensor> {
    let out = Tensor::f_zeros([crops.len() as i64, 1, image_size.0, image_size.1], options)?;
    for (i, crop) in crops.iter().enumerate() {
        if let Some(c) = crop {
            let (h, w) = (c.probs.size()[0], c.probs.size()[1]);
            out.f_get(i as i64)?
                .f_get(0)?
                .f_narrow(0, c.y0, h)?
                .f_narrow(1, c.x0, w)?
                .f_copy_(&c.probs)?;
        }
    }
    Ok(out)
}

/// torchvision `paste_masks_in_image` (padding 1): `masks [D, 1, M, M]` probabilities in `boxes [D, 4]`
/// (original image coordinates) pasted into `[D, 1, H, W]` zeros.
pub fn paste_masks_in_image(
    masks: &Tensor,
    boxes: &Tensor,
    image_size: (i64, i64),
    padding: i64,
) -> Result<Tensor> {
    let crops = paste_masks_cropped(masks, boxes, image_size, padding)?;
    masks_on_canvas(&crops, image_size, (masks.kind(), masks.device()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_sizes_match_torchvision_examples() {
        assert_eq!(resized_size((480, 640), 800, 1333), (800, 1066));
        assert_eq!(resized_size((333, 500), 800, 1333), (800, 1201));
    }
}
