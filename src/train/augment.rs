//! Augmentations that move masks with the image: horizontal flip, scale jitter / resize-and-pad,
//! shift-scale-rotate (bilinear image, nearest masks), a bbox-safe random crop and
//! brightness/contrast/RGB shift. Boxes are never transformed: they are recomputed from the
//! final masks, and instances whose mask became empty (or smaller than `min_area`) are dropped.
//!
//! The training pipeline follows IceVision's `aug_tfms(size, presize)` (the seed notebook):
//! presize → flip → shift-scale-rotate → colour → either the bbox-safe crop or the
//! scale-jittered resize-and-pad. Validation is [`resize_and_pad`] (IceVision's `resize_and_pad`).
//! Every random choice comes from a [`SplitMix64`] seeded per sample ([`sample_seed`]), so a run
//! is reproducible whatever thread does the work.
//!
//! Over 800 lines only with its unit tests (654 lines of code before them).

use std::collections::HashMap;

use anyhow::Context as _;
use image::{Rgb, RgbImage};
use tch::Tensor;

use crate::dataset::{ExportImage, Mask};
use crate::model::Target;
use crate::rng::SplitMix64;
use crate::train::config::TrainConfig;
pub use crate::train::config::{AugmentConfig, PAD_FILL};

/// One training sample on the CPU.
#[derive(Debug)]
pub struct Sample {
    /// Project image id.
    pub image_id: i64,
    /// `[3, H, W]` f32 in 0..1.
    pub image: Tensor,
    /// Boxes, labels and masks at the image's (resized) size.
    pub target: Target,
}

/// An image with its instances (full-image masks and 1-based labels), before tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct AugSample {
    /// RGB pixels.
    pub image: RgbImage,
    /// `(mask at image size, label)` per instance.
    pub instances: Vec<(Mask, i64)>,
}

impl AugSample {
    /// Tight `[x1, y1, x2, y2]` box of every instance (pixel edges; zeros for an empty mask).
    pub fn boxes(&self) -> Vec<[f32; 4]> {
        self.instances
            .iter()
            .map(|(m, _)| {
                let [x, y, w, h] = m.bbox();
                [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
            })
            .collect()
    }

    /// Drops instances with fewer than `min_area` pixels (at least one) or a box thinner than a pixel.
    pub fn drop_small(&mut self, min_area: u64) {
        self.instances.retain(|(m, _)| m.area() >= min_area.max(1));
    }

    /// The model's input: `[3, H, W]` f32 in 0..1, and `[G, 4]` boxes from the masks, `[G]`
    /// labels, `[G, H, W]` u8 masks. Converted in Rust (no ATen ops), so loader threads do not
    /// touch torch's thread pool.
    pub fn into_sample(mut self, image_id: i64) -> Sample {
        self.drop_small(1);
        let (w, h) = self.image.dimensions();
        let (wi, hi) = (i64::from(w), i64::from(h));
        let plane = w as usize * h as usize;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in self.image.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = f32::from(px[c]) / 255.0;
            }
        }
        let boxes: Vec<f32> = self.boxes().into_iter().flatten().collect();
        let labels: Vec<i64> = self.instances.iter().map(|(_, l)| *l).collect();
        let mut bits = Vec::with_capacity(labels.len() * plane);
        for (m, _) in &self.instances {
            bits.extend_from_slice(m.data());
        }
        let g = labels.len() as i64;
        Sample {
            image_id,
            image: Tensor::from_slice(&chw).view([3, hi, wi]),
            target: Target {
                boxes: Tensor::from_slice(&boxes).view([g, 4]),
                labels: Tensor::from_slice(&labels),
                masks: Tensor::from_slice(&bits).view([g, hi, wi]),
            },
        }
    }
}

/// Seed of one sample's augmentation: a function of the run seed, the epoch and the sample's
/// position in the epoch only (never of thread timing).
pub fn sample_seed(seed: u64, epoch: usize, position: usize) -> u64 {
    let mut r = SplitMix64::new(seed ^ 0x0041_5547_4d45_4e54);
    let a = r.next_u64();
    SplitMix64::new(
        a ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (position as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
    .next_u64()
}

/// Decodes `image` and its non-crowd instances of known classes (`labels`: class id → label),
/// resized so the longer side is `longer_side` (bilinear image, nearest masks).
pub fn load(
    image: &ExportImage,
    labels: &HashMap<i64, i64>,
    longer_side: u32,
) -> anyhow::Result<AugSample> {
    let rgb = crate::infer::read_image(&image.path)?;
    let (w0, h0) = rgb.dimensions();
    let mut instances = Vec::with_capacity(image.instances.len());
    for inst in &image.instances {
        if inst.iscrowd {
            continue;
        }
        let Some(&label) = labels.get(&inst.class_id) else {
            continue;
        };
        let mask = Mask::from_rle(&inst.rle)
            .with_context(|| format!("instance {} of image {}", inst.id, image.id))?;
        anyhow::ensure!(
            (mask.width(), mask.height()) == (w0, h0),
            "{}: instance {} has a {}x{} mask on a {w0}x{h0} image",
            image.path.display(),
            inst.id,
            mask.width(),
            mask.height()
        );
        instances.push((mask, label));
    }
    let (w, h) = fitted_dims(w0, h0, longer_side);
    Ok(resize(
        AugSample {
            image: rgb,
            instances,
        },
        w,
        h,
    ))
}

/// Output size keeping the aspect ratio with the longer side at `size` (each side at least 1).
pub fn fitted_dims(width: u32, height: u32, size: u32) -> (u32, u32) {
    model_dims(width, height, size, size)
}

/// Output size of the model transform's rule (torchvision `GeneralizedRCNNTransform`): the
/// shorter side to `min_side` unless the longer side would pass `max_side` (then that bounds it),
/// rounded, each side at least 1. With `min_side == max_side` the longer side is `max_side`
/// ([`fitted_dims`]).
pub fn model_dims(width: u32, height: u32, min_side: u32, max_side: u32) -> (u32, u32) {
    let short = f64::from(width.min(height).max(1));
    let long = f64::from(width.max(height).max(1));
    let scale = (f64::from(min_side) / short).min(f64::from(max_side) / long);
    let w = ((f64::from(width) * scale).round() as u32).max(1);
    let h = ((f64::from(height) * scale).round() as u32).max(1);
    (w, h)
}

/// Mirrors a mask left-right.
pub fn flip_mask(mask: &Mask) -> Mask {
    let w = mask.width() as usize;
    let mut data = mask.data().to_vec();
    if w > 0 {
        for row in data.chunks_exact_mut(w) {
            row.reverse();
        }
    }
    mask_from(mask.width(), mask.height(), data)
}

/// A mask from a buffer whose length is `width * height` by construction.
fn mask_from(width: u32, height: u32, data: Vec<u8>) -> Mask {
    Mask::from_vec(width, height, data).unwrap_or_else(|_| Mask::new(width, height))
}

/// Mirrors image and masks left-right.
pub fn hflip(mut s: AugSample) -> AugSample {
    image::imageops::flip_horizontal_in_place(&mut s.image);
    for (m, _) in &mut s.instances {
        *m = flip_mask(m);
    }
    s
}

/// Resizes to `width × height`: image with a triangle (bilinear, antialiased when shrinking)
/// filter, masks with PIL-identical nearest neighbour.
pub fn resize(s: AugSample, width: u32, height: u32) -> AugSample {
    if s.image.dimensions() == (width, height) {
        return s;
    }
    let image = image::imageops::resize(
        &s.image,
        width,
        height,
        image::imageops::FilterType::Triangle,
    );
    let instances = s
        .instances
        .into_iter()
        .map(|(m, l)| (m.resize_nearest(width, height), l))
        .collect();
    AugSample { image, instances }
}

/// Resizes the content to `content` (w, h) and pastes it at `offset` (x, y; negative values crop)
/// into a `canvas` (w, h) filled with `fill`; masks are 0 outside the content.
pub fn place(
    s: AugSample,
    content: (u32, u32),
    canvas: (u32, u32),
    offset: (i64, i64),
    fill: [u8; 3],
) -> AugSample {
    let s = resize(s, content.0, content.1);
    if content == canvas && offset == (0, 0) {
        return s;
    }
    let (cw, ch) = (i64::from(canvas.0), i64::from(canvas.1));
    let (sw, sh) = (i64::from(content.0), i64::from(content.1));
    // Overlap in canvas coordinates.
    let x0 = offset.0.max(0);
    let y0 = offset.1.max(0);
    let x1 = (offset.0 + sw).min(cw);
    let y1 = (offset.1 + sh).min(ch);
    let mut image = RgbImage::from_pixel(canvas.0, canvas.1, Rgb(fill));
    let mut instances = Vec::with_capacity(s.instances.len());
    let overlap = x1 > x0 && y1 > y0;
    if overlap {
        for y in y0..y1 {
            for x in x0..x1 {
                let p = *s
                    .image
                    .get_pixel((x - offset.0) as u32, (y - offset.1) as u32);
                image.put_pixel(x as u32, y as u32, p);
            }
        }
    }
    for (m, l) in s.instances {
        let mut data = vec![0u8; canvas.0 as usize * canvas.1 as usize];
        if overlap {
            let src = m.data();
            let n = (x1 - x0) as usize;
            for y in y0..y1 {
                let s0 = ((y - offset.1) * sw + (x0 - offset.0)) as usize;
                let d0 = (y * cw + x0) as usize;
                data[d0..d0 + n].copy_from_slice(&src[s0..s0 + n]);
            }
        }
        instances.push((mask_from(canvas.0, canvas.1, data), l));
    }
    AugSample { image, instances }
}

/// Cuts the rectangle `(x, y, w, h)` (clamped to the image, at least 1×1).
pub fn crop(s: AugSample, x: u32, y: u32, w: u32, h: u32) -> AugSample {
    let (iw, ih) = s.image.dimensions();
    let x = x.min(iw.saturating_sub(1));
    let y = y.min(ih.saturating_sub(1));
    let w = w.clamp(1, iw - x);
    let h = h.clamp(1, ih - y);
    place(
        s,
        (iw, ih),
        (w, h),
        (-i64::from(x), -i64::from(y)),
        [0, 0, 0],
    )
}

/// Validation transform (IceVision's `resize_and_pad`): longer side to `size`, then padded at
/// the bottom/right to a `size` square when `square` (so coordinates only scale).
pub fn resize_and_pad(s: AugSample, size: u32, square: bool, fill: [u8; 3]) -> AugSample {
    let (w0, h0) = s.image.dimensions();
    let content = fitted_dims(w0, h0, size);
    let canvas = if square { (size, size) } else { content };
    place(s, content, canvas, (0, 0), fill)
}

/// Forward 2×3 affine `[a, b, c, d, e, f]`: `x' = a x + b y + c`, `y' = d x + e y + f`, in
/// continuous pixel coordinates (pixel `i` spans `[i, i + 1)`, its centre is `i + 0.5`).
pub type Affine = [f64; 6];

/// Shift-scale-rotate about the image centre (OpenCV's `getRotationMatrix2D` convention:
/// positive `angle_deg` turns counter-clockwise on screen), then a shift of `(tx, ty)` pixels.
pub fn ssr_matrix(width: u32, height: u32, angle_deg: f64, scale: f64, tx: f64, ty: f64) -> Affine {
    let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    let t = angle_deg.to_radians();
    let (a, b) = (scale * t.cos(), scale * t.sin());
    [
        a,
        b,
        cx - a * cx - b * cy + tx,
        -b,
        a,
        cy + b * cx - a * cy + ty,
    ]
}

fn invert(m: &Affine) -> Option<Affine> {
    let det = m[0] * m[4] - m[1] * m[3];
    if det.abs() < 1e-12 || !det.is_finite() {
        return None;
    }
    let (a, b, d, e) = (m[4] / det, -m[1] / det, -m[3] / det, m[0] / det);
    Some([a, b, -(a * m[2] + b * m[5]), d, e, -(d * m[2] + e * m[5])])
}

/// Warps image (bilinear, `fill` outside) and masks (nearest, 0 outside) by the forward affine
/// `m`, keeping the size. Each output pixel centre is mapped back through `m⁻¹`.
pub fn warp_affine(s: AugSample, m: &Affine, fill: [u8; 3]) -> AugSample {
    let Some(inv) = invert(m) else {
        return s;
    };
    let (w, h) = s.image.dimensions();
    let (wi, hi) = (i64::from(w), i64::from(h));
    let mut image = RgbImage::new(w, h);
    // Source position of every output pixel centre (row-major).
    let mut src = Vec::with_capacity(w as usize * h as usize);
    for y in 0..h {
        let py = f64::from(y) + 0.5;
        for x in 0..w {
            let px = f64::from(x) + 0.5;
            src.push((
                inv[0] * px + inv[1] * py + inv[2],
                inv[3] * px + inv[4] * py + inv[5],
            ));
        }
    }
    let raw = s.image.as_raw();
    let tap = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= wi || y >= hi {
            f64::from(fill[c])
        } else {
            f64::from(raw[((y * wi + x) * 3) as usize + c])
        }
    };
    for (i, &(sx, sy)) in src.iter().enumerate() {
        let (fx, fy) = (sx - 0.5, sy - 0.5);
        let (x0, y0) = (fx.floor(), fy.floor());
        let (ax, ay) = (fx - x0, fy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let mut out = [0u8; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let v = (1.0 - ay) * ((1.0 - ax) * tap(x0, y0, c) + ax * tap(x0 + 1, y0, c))
                + ay * ((1.0 - ax) * tap(x0, y0 + 1, c) + ax * tap(x0 + 1, y0 + 1, c));
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
        image.put_pixel(i as u32 % w, i as u32 / w, Rgb(out));
    }
    let instances = s
        .instances
        .into_iter()
        .map(|(mask, l)| {
            let d = mask.data();
            let data: Vec<u8> = src
                .iter()
                .map(|&(sx, sy)| {
                    let (x, y) = (sx.floor(), sy.floor());
                    if x < 0.0 || y < 0.0 || x >= f64::from(w) || y >= f64::from(h) {
                        0
                    } else {
                        d[y as usize * w as usize + x as usize]
                    }
                })
                .collect();
            (mask_from(w, h, data), l)
        })
        .collect();
    AugSample { image, instances }
}

/// `v * alpha + beta * 255`, clamped (albumentations `brightness_by_max`).
pub fn brightness_contrast(image: &mut RgbImage, alpha: f64, beta: f64) {
    let lut: Vec<u8> = (0..=255u32)
        .map(|v| {
            (f64::from(v) * alpha + beta * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    for v in image.iter_mut() {
        *v = lut[usize::from(*v)];
    }
}

/// Adds `shift[c]` to channel `c`, clamped.
pub fn rgb_shift(image: &mut RgbImage, shift: [f64; 3]) {
    for px in image.pixels_mut() {
        for c in 0..3 {
            px[c] = (f64::from(px[c]) + shift[c]).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Pixel box `[x0, y0, x1, y1)` (exclusive ends) of a mask, `None` when empty.
fn pixel_box(m: &Mask) -> Option<[u32; 4]> {
    let [x, y, w, h] = m.bbox();
    (w > 0.0).then_some([x as u32, y as u32, (x + w) as u32, (y + h) as u32])
}

/// Picks `[start, end)` inside `0..len` containing `[keep0, keep1)`, with `end - start` at least
/// `min_len` where possible (uniform ends, like albumentations `RandomSizedBBoxSafeCrop`).
fn safe_span(len: u32, keep0: u32, keep1: u32, min_len: u32, rng: &mut SplitMix64) -> (u32, u32) {
    let mut a = (f64::from(keep0) * rng.next_f64()).floor() as u32;
    let mut b = keep1 + (f64::from(len - keep1) * rng.next_f64()).ceil() as u32;
    b = b.min(len);
    if b - a < min_len {
        // Grow both sides evenly, then whichever still has room.
        let need = min_len - (b - a);
        let left = (need / 2).min(a);
        a -= left;
        b = (b + need - left).min(len);
        if b - a < min_len {
            a = a.saturating_sub(min_len - (b - a));
        }
    }
    (a, b.max(a + 1))
}

/// Random crop that keeps the box of every instance (`keep_all`) or of one random instance
/// whole, so at least one instance survives; without instances, a random crop of at least
/// `min_fraction` of each side. Returns `(x, y, w, h)`.
pub fn bbox_safe_crop_rect(
    s: &AugSample,
    keep_all: bool,
    min_fraction: f64,
    rng: &mut SplitMix64,
) -> (u32, u32, u32, u32) {
    let (w, h) = s.image.dimensions();
    let boxes: Vec<[u32; 4]> = s
        .instances
        .iter()
        .filter_map(|(m, _)| pixel_box(m))
        .collect();
    let keep = if boxes.is_empty() {
        // A random sub-rectangle: the kept "box" is a random point.
        let x = rng.below(w as usize) as u32;
        let y = rng.below(h as usize) as u32;
        [x, y, x + 1, y + 1]
    } else if keep_all {
        boxes.iter().fold([u32::MAX, u32::MAX, 0, 0], |u, b| {
            [
                u[0].min(b[0]),
                u[1].min(b[1]),
                u[2].max(b[2]),
                u[3].max(b[3]),
            ]
        })
    } else {
        boxes[rng.below(boxes.len())]
    };
    let min_w = ((f64::from(w) * min_fraction).ceil() as u32).clamp(1, w);
    let min_h = ((f64::from(h) * min_fraction).ceil() as u32).clamp(1, h);
    let (x0, x1) = safe_span(w, keep[0], keep[2], min_w, rng);
    let (y0, y1) = safe_span(h, keep[1], keep[3], min_h, rng);
    (x0, y0, x1 - x0, y1 - y0)
}

/// Offset along one axis for content of length `content` in a canvas of length `canvas`:
/// uniform when it fits (padding), else a crop offset keeping `[keep0, keep1)` inside if it can.
fn jitter_offset(content: u32, canvas: u32, keep: Option<(u32, u32)>, rng: &mut SplitMix64) -> i64 {
    if content <= canvas {
        return rng.below((canvas - content) as usize + 1) as i64;
    }
    let slack = content - canvas;
    // Crop start c in 0..=slack; keeping [k0, k1) needs k1 - canvas <= c <= k0.
    let (lo, hi) = match keep {
        Some((k0, k1)) if k1 - k0 <= canvas => (k1.saturating_sub(canvas), k0.min(slack)),
        Some((k0, k1)) => {
            // Larger than the canvas: centre on it.
            let c = (k0 + k1) / 2;
            let start = c.saturating_sub(canvas / 2).min(slack);
            (start, start)
        }
        None => (0, slack),
    };
    let (lo, hi) = (lo.min(hi), hi);
    -((lo + rng.below((hi - lo) as usize + 1) as u32) as i64)
}

/// The training transform of one sample. Every random number comes from `rng`.
#[derive(Debug, Clone)]
pub struct Augmenter {
    /// The pipeline options.
    pub cfg: AugmentConfig,
    /// Bound of the output's longer side: the model's `max_size` (`TrainConfig::image_size`
    /// through the preset).
    pub image_size: u32,
    /// The output's shorter side unless `image_size` bounds it: the model's (last) `min_size`.
    /// Images leave the augmenter at the size the model's transform gives them, so the model
    /// does not resize them again (one resize). Equal to `image_size` for `cpu-fast`.
    pub min_side: u32,
    /// Probability of the horizontal flip.
    pub hflip_prob: f64,
}

impl Augmenter {
    /// The augmenter of a training config: its output follows the model's resize rule
    /// ([`TrainConfig::model_config`]'s `min_size`/`max_size`).
    pub fn new(cfg: &TrainConfig) -> Self {
        let size = cfg.resolved_image_size();
        // The config is validated before training; a bad override keeps the longer-side rule.
        let (min_side, max_side) = cfg
            .model_config(2)
            .ok()
            .and_then(|m| Some((m.min_size.last().copied()?, m.max_size)))
            .and_then(|(lo, hi)| Some((u32::try_from(lo).ok()?, u32::try_from(hi).ok()?)))
            .unwrap_or((size, size));
        Self {
            cfg: AugmentConfig::resolve(cfg),
            image_size: max_side,
            min_side,
            hflip_prob: cfg.hflip_prob,
        }
    }

    /// The model's size of a `width` x `height` image, its sides scaled by `scale` (jitter).
    fn fit(&self, width: u32, height: u32, scale: f64) -> (u32, u32) {
        let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
        model_dims(
            width,
            height,
            scaled(self.min_side),
            scaled(self.image_size),
        )
    }

    /// Longer side the loader decodes to before [`Augmenter::apply`].
    pub fn decode_size(&self) -> u32 {
        if self.cfg.enabled {
            (f64::from(self.image_size) * self.cfg.presize).round() as u32
        } else {
            self.image_size
        }
    }

    /// Flip → shift-scale-rotate → colour → bbox-safe crop or scale-jittered resize-and-pad;
    /// then instances below `min_area` are dropped. The output's longer side is `image_size`.
    pub fn apply(&self, mut s: AugSample, rng: &mut SplitMix64) -> AugSample {
        let c = &self.cfg;
        // Draw every decision in a fixed order so one toggle does not shift the others' draws.
        let flip = rng.next_f64() < self.hflip_prob;
        let ssr = rng.next_f64() < c.ssr_prob;
        let ssr_params = [
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
        ];
        let color = rng.next_f64() < c.color_prob;
        let color_params = [rng.next_f64(), rng.next_f64()];
        let shift = rng.next_f64() < c.rgb_shift_prob;
        let shift_params = [rng.next_f64(), rng.next_f64(), rng.next_f64()];
        let do_crop = rng.next_f64() < c.crop_prob;
        let scale_u = rng.next_f64();
        let mut place_rng = SplitMix64::new(rng.next_u64());

        if flip {
            s = hflip(s);
        }
        if !c.enabled {
            let (w, h) = s.image.dimensions();
            let (fw, fh) = self.fit(w, h, 1.0);
            let mut s = resize(s, fw, fh);
            s.drop_small(1);
            return s;
        }
        let sym = |u: f64, limit: f64| (2.0 * u - 1.0) * limit;
        if ssr {
            let (w, h) = s.image.dimensions();
            let m = ssr_matrix(
                w,
                h,
                sym(ssr_params[0], c.rotate_limit),
                1.0 + sym(ssr_params[1], c.scale_limit),
                sym(ssr_params[2], c.shift_limit) * f64::from(w),
                sym(ssr_params[3], c.shift_limit) * f64::from(h),
            );
            s = warp_affine(s, &m, c.fill);
            s.drop_small(1);
        }
        if color {
            let alpha = 1.0 + sym(color_params[0], c.contrast_limit);
            let beta = sym(color_params[1], c.brightness_limit);
            brightness_contrast(&mut s.image, alpha, beta);
        }
        if shift {
            let d = shift_params.map(|u| sym(u, c.rgb_shift_limit));
            rgb_shift(&mut s.image, d);
        }
        let size = self.image_size;
        let mut s = if do_crop {
            let (x, y, w, h) =
                bbox_safe_crop_rect(&s, c.crop_keep_all, c.crop_min_fraction, &mut place_rng);
            let s = crop(s, x, y, w, h);
            let fitted = self.fit(w, h, 1.0);
            let canvas = if c.pad_to_square {
                (size, size)
            } else {
                fitted
            };
            place(s, fitted, canvas, (0, 0), c.fill)
        } else {
            let (w, h) = s.image.dimensions();
            let fitted = self.fit(w, h, 1.0);
            let scale = c.scale_min + (c.scale_max - c.scale_min) * scale_u;
            let content = self.fit(w, h, scale);
            let canvas = if c.pad_to_square {
                (size, size)
            } else {
                fitted
            };
            // When the content overflows, keep one random instance inside the canvas.
            let keep = if s.instances.is_empty() {
                None
            } else {
                let k = place_rng.below(s.instances.len());
                pixel_box(&s.instances[k].0).map(|b| {
                    let sx = f64::from(content.0) / f64::from(w);
                    let sy = f64::from(content.1) / f64::from(h);
                    [
                        (f64::from(b[0]) * sx).floor() as u32,
                        (f64::from(b[1]) * sy).floor() as u32,
                        ((f64::from(b[2]) * sx).ceil() as u32).min(content.0),
                        ((f64::from(b[3]) * sy).ceil() as u32).min(content.1),
                    ]
                })
            };
            let ox = jitter_offset(
                content.0,
                canvas.0,
                keep.map(|b| (b[0], b[2])),
                &mut place_rng,
            );
            let oy = jitter_offset(
                content.1,
                canvas.1,
                keep.map(|b| (b[1], b[3])),
                &mut place_rng,
            );
            place(s, content, canvas, (ox, oy), c.fill)
        };
        s.drop_small(c.min_area);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::Preset;

    /// A `w × h` sample: gradient image, one instance per rectangle `(x, y, w, h)`.
    fn sample(w: u32, h: u32, rects: &[(u32, u32, u32, u32)]) -> AugSample {
        let image = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 77]));
        let instances = rects
            .iter()
            .enumerate()
            .map(|(i, &(x, y, rw, rh))| {
                let mut m = Mask::new(w, h);
                for yy in y..y + rh {
                    for xx in x..x + rw {
                        m.set(xx, yy, true);
                    }
                }
                (m, i as i64 + 1)
            })
            .collect();
        AugSample { image, instances }
    }

    fn set_pixels(m: &Mask) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        for y in 0..m.height() {
            for x in 0..m.width() {
                if m.get(x, y) {
                    v.push((x, y));
                }
            }
        }
        v
    }

    /// Every box equals the tight box of its mask, and no mask is empty.
    fn assert_consistent(s: &AugSample) {
        for ((m, _), b) in s.instances.iter().zip(s.boxes()) {
            assert!(m.area() > 0);
            let px = set_pixels(m);
            let x0 = px.iter().map(|p| p.0).min().unwrap() as f32;
            let x1 = px.iter().map(|p| p.0).max().unwrap() as f32 + 1.0;
            let y0 = px.iter().map(|p| p.1).min().unwrap() as f32;
            let y1 = px.iter().map(|p| p.1).max().unwrap() as f32 + 1.0;
            assert_eq!(b, [x0, y0, x1, y1]);
            assert_eq!((m.width(), m.height()), s.image.dimensions());
        }
    }

    #[test]
    fn rotating_90_degrees_moves_every_pixel_exactly() {
        // An L-shaped mask on a 6x6 image: pixel (x, y) must land on (y, 5 - x).
        let mut s = sample(6, 6, &[(1, 0, 1, 3)]);
        s.instances[0].0.set(2, 2, true);
        let before = set_pixels(&s.instances[0].0);
        let m = ssr_matrix(6, 6, 90.0, 1.0, 0.0, 0.0);
        let out = warp_affine(s.clone(), &m, PAD_FILL);
        let mut expected: Vec<(u32, u32)> = before.iter().map(|&(x, y)| (y, 5 - x)).collect();
        expected.sort_by_key(|p| (p.1, p.0));
        assert_eq!(set_pixels(&out.instances[0].0), expected);
        // The image moves the same way (exact at 90 degrees: taps land on pixel centres).
        for y in 0..6 {
            for x in 0..6 {
                assert_eq!(out.image.get_pixel(y, 5 - x), s.image.get_pixel(x, y));
            }
        }
        assert_eq!(out.boxes(), vec![[0.0, 3.0, 3.0, 5.0]]);
    }

    #[test]
    fn flip_moves_masks_and_image_together() {
        let s = sample(5, 3, &[(0, 1, 2, 1)]);
        let out = hflip(s.clone());
        assert_eq!(set_pixels(&out.instances[0].0), vec![(3, 1), (4, 1)]);
        assert_eq!(out.image.get_pixel(4, 0), s.image.get_pixel(0, 0));
        assert_eq!(out.boxes(), vec![[3.0, 1.0, 5.0, 2.0]]);
    }

    #[test]
    fn shift_leaves_uncovered_pixels_filled_and_masks_clear() {
        let s = sample(8, 8, &[(0, 0, 2, 2)]);
        let out = warp_affine(s, &ssr_matrix(8, 8, 0.0, 1.0, 3.0, 1.0), PAD_FILL);
        assert_eq!(
            set_pixels(&out.instances[0].0),
            vec![(3, 1), (4, 1), (3, 2), (4, 2)]
        );
        assert_eq!(out.image.get_pixel(0, 0).0, PAD_FILL);
        assert_eq!(out.image.get_pixel(3, 1).0, [0, 0, 77]);
    }

    #[test]
    fn crop_drops_instances_that_fall_outside() {
        let s = sample(10, 10, &[(0, 0, 3, 3), (6, 6, 3, 3)]);
        let mut out = crop(s, 5, 5, 5, 5);
        out.drop_small(1);
        assert_eq!(out.instances.len(), 1);
        assert_eq!(out.instances[0].1, 2);
        assert_eq!(out.boxes(), vec![[1.0, 1.0, 4.0, 4.0]]);
        assert_eq!(out.image.dimensions(), (5, 5));
        assert_eq!(out.image.get_pixel(0, 0).0, [50, 50, 77]);
    }

    #[test]
    fn bbox_safe_crop_always_keeps_an_instance_whole() {
        for seed in 0..200 {
            let s = sample(40, 30, &[(2, 3, 4, 4), (30, 20, 6, 5), (15, 10, 3, 3)]);
            let mut rng = SplitMix64::new(seed);
            let keep_all = seed % 2 == 0;
            let (x, y, w, h) = bbox_safe_crop_rect(&s, keep_all, 0.3, &mut rng);
            assert!(w >= 12 && h >= 9, "crop {w}x{h} below the minimum fraction");
            let areas: Vec<u64> = s.instances.iter().map(|(m, _)| m.area()).collect();
            let mut out = crop(s, x, y, w, h);
            out.drop_small(1);
            let whole = out
                .instances
                .iter()
                .filter(|(m, l)| m.area() == areas[(*l - 1) as usize])
                .count();
            if keep_all {
                assert_eq!(
                    whole, 3,
                    "seed {seed}: crop ({x},{y},{w},{h}) cut an instance"
                );
            } else {
                assert!(
                    whole >= 1,
                    "seed {seed}: crop ({x},{y},{w},{h}) cut every instance"
                );
            }
            assert_consistent(&out);
        }
    }

    #[test]
    fn resize_and_pad_pads_bottom_right() {
        let s = sample(20, 10, &[(10, 0, 10, 10)]);
        let out = resize_and_pad(s, 10, true, PAD_FILL);
        assert_eq!(out.image.dimensions(), (10, 10));
        assert_eq!(out.boxes(), vec![[5.0, 0.0, 10.0, 5.0]]);
        assert_eq!(out.image.get_pixel(0, 9).0, PAD_FILL);
        assert_eq!(out.instances[0].0.area(), 25);
    }

    #[test]
    fn place_with_negative_offset_crops_and_positive_pads() {
        let s = sample(4, 4, &[(0, 0, 1, 1), (3, 3, 1, 1)]);
        let out = place(s.clone(), (4, 4), (3, 3), (-1, -1), [1, 2, 3]);
        assert_eq!(set_pixels(&out.instances[0].0), vec![]);
        assert_eq!(set_pixels(&out.instances[1].0), vec![(2, 2)]);
        let out = place(s, (4, 4), (6, 5), (2, 1), [1, 2, 3]);
        assert_eq!(set_pixels(&out.instances[0].0), vec![(2, 1)]);
        assert_eq!(out.image.get_pixel(0, 0).0, [1, 2, 3]);
    }

    #[test]
    fn brightness_contrast_follows_albumentations() {
        let mut img = RgbImage::from_pixel(1, 1, Rgb([100, 0, 250]));
        brightness_contrast(&mut img, 1.2, 0.1);
        assert_eq!(img.get_pixel(0, 0).0, [146, 26, 255]);
    }

    #[test]
    fn the_pipeline_keeps_boxes_tight_and_is_seeded() {
        let cfg = TrainConfig {
            image_size: Some(48),
            hflip_prob: 0.5,
            augment: Some(Box::new(AugmentConfig {
                ssr_prob: 0.7,
                crop_prob: 0.5,
                rgb_shift_prob: 0.5,
                scale_min: 0.5,
                scale_max: 1.5,
                ..AugmentConfig::default()
            })),
            ..TrainConfig::default()
        };
        let aug = Augmenter::new(&cfg);
        let (mut kept, mut total) = (0, 0);
        for seed in 0..60 {
            let s = sample(64, 40, &[(5, 5, 10, 8), (40, 20, 12, 12), (30, 2, 3, 3)]);
            let a = aug.apply(s.clone(), &mut SplitMix64::new(seed));
            let b = aug.apply(s, &mut SplitMix64::new(seed));
            assert_eq!(a, b, "seed {seed} not reproducible");
            let (w, h) = a.image.dimensions();
            assert_eq!(w.max(h), 48);
            assert_consistent(&a);
            kept += a.instances.len();
            total += 3;
        }
        // Most instances survive; some are cut by rotation, shifts and crops.
        assert!(kept * 2 > total, "only {kept} of {total} instances kept");
        let square = Augmenter {
            cfg: AugmentConfig {
                pad_to_square: true,
                ..aug.cfg.clone()
            },
            ..aug
        };
        let out = square.apply(sample(64, 40, &[(5, 5, 10, 8)]), &mut SplitMix64::new(3));
        assert_eq!(out.image.dimensions(), (48, 48));
    }

    #[test]
    fn images_leave_at_the_size_the_model_receives() {
        use crate::model::transform::resized_size;
        for (preset, image_size) in [
            (Preset::CpuFast, None),
            (Preset::Quality, None),
            (Preset::Quality, Some(640)),
        ] {
            let cfg = TrainConfig {
                preset,
                image_size,
                augment: Some(Box::new(AugmentConfig {
                    crop_prob: 0.5,
                    ..AugmentConfig::for_preset(preset)
                })),
                ..TrainConfig::default()
            };
            let model = cfg.model_config(2).unwrap();
            let (min, max) = (model.min_size[0], model.max_size);
            let aug = Augmenter::new(&cfg);
            assert_eq!(
                (i64::from(aug.min_side), i64::from(aug.image_size)),
                (min, max)
            );
            for (seed, (w, h)) in [(64, 48), (48, 64), (200, 50), (30, 30)]
                .into_iter()
                .enumerate()
            {
                let s = sample(w, h, &[(2, 2, 10, 10)]);
                let out = aug.apply(s, &mut SplitMix64::new(seed as u64));
                let (ow, oh) = out.image.dimensions();
                let got = (i64::from(oh), i64::from(ow));
                // The model's transform leaves the image as it is: one resize.
                assert_eq!(resized_size(got, min, max), got, "{preset:?} {w}x{h}");
            }
        }
        // torchvision's sizes for `quality`: a 4:3 image reaches the model at 1067x800.
        let quality = Augmenter::new(&TrainConfig {
            preset: Preset::Quality,
            ..TrainConfig::default()
        });
        assert_eq!((quality.min_side, quality.image_size), (800, 1333));
        assert_eq!(quality.fit(640, 480, 1.0), (1067, 800));
        assert_eq!(model_dims(640, 480, 320, 320), fitted_dims(640, 480, 320));
    }

    #[test]
    fn an_image_without_instances_still_gives_a_sample() {
        let aug = Augmenter::new(&TrainConfig {
            image_size: Some(32),
            ..TrainConfig::default()
        });
        for seed in 0..20 {
            let out = aug.apply(sample(50, 30, &[]), &mut SplitMix64::new(seed));
            assert!(out.instances.is_empty());
            let t = out.into_sample(7);
            assert_eq!(t.target.boxes.size(), [0, 4]);
            assert_eq!(t.target.masks.size()[0], 0);
        }
    }

    #[test]
    fn into_sample_converts_to_chw_and_boxes_from_masks() {
        let s = sample(3, 2, &[(1, 0, 2, 1)]);
        let t = s.into_sample(9);
        assert_eq!(t.image.size(), [3, 2, 3]);
        assert!((t.image.double_value(&[0, 0, 2]) - 20.0 / 255.0).abs() < 1e-6);
        assert!((t.image.double_value(&[1, 1, 0]) - 10.0 / 255.0).abs() < 1e-6);
        assert_eq!(
            Vec::<f32>::try_from(t.target.boxes.view([-1])).unwrap(),
            [1.0, 0.0, 3.0, 1.0]
        );
        assert_eq!(Vec::<i64>::try_from(t.target.labels).unwrap(), [1]);
    }

    #[test]
    fn sample_seeds_depend_on_seed_epoch_and_position() {
        let a = sample_seed(1, 0, 0);
        assert_eq!(a, sample_seed(1, 0, 0));
        assert_ne!(a, sample_seed(2, 0, 0));
        assert_ne!(a, sample_seed(1, 1, 0));
        assert_ne!(a, sample_seed(1, 0, 1));
    }

    #[test]
    fn config_json_is_partial_and_validated() {
        let c: AugmentConfig = serde_json::from_str(r#"{"rotate_limit": 5}"#).unwrap();
        assert_eq!(c.rotate_limit, 5.0);
        assert_eq!(c.crop_prob, AugmentConfig::default().crop_prob);
        c.validate().unwrap();
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"rotate": 5}"#).is_err());
        let bad = AugmentConfig {
            crop_prob: 1.5,
            ..AugmentConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("crop_prob")
        );
        assert_ne!(
            AugmentConfig::for_preset(Preset::Quality),
            AugmentConfig::for_preset(Preset::CpuFast)
        );
    }
}
