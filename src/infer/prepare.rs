//! The model's input for one image, made straight from the decoded RGB bytes: normalised
//! (`(x / 255 - mean) / std`) and bilinearly resized to torchvision's size without ever holding
//! the image as floats. The model's own transform converts the whole image to a `[3, H, W]` f32
//! tensor first (144 MB for a 12-megapixel photo, plus temporaries); here only the resized
//! output is float.
//!
//! The arithmetic follows libtorch's CPU `upsample_bilinear2d` (align_corners=False, sizes given,
//! so `scale = in / out` in f32), applied to the normalised values exactly as torchvision does
//! (normalise, then `F.interpolate(scale_factor=s, recompute_scale_factor=True)`): source index
//! `max(fma(scale, dst + 0.5, -0.5), 0)`, `i0 = min(floor(src), in - 1)`, `i1 = i0 + (i0 < in - 1)`,
//! `l1 = clamp(src - i0, 0, 1)`, `l0 = 1 - l1`, all in f32; a pixel is
//! `(v00 * lx0 + v01 * lx1) * ly0 + (v10 * lx0 + v11 * lx1) * ly1`.

use anyhow::Context as _;
use tch::{Device, Tensor};

use crate::model::config::MaskRcnnConfig;
use crate::model::transform::resized_size;

/// What preparation needs from the model's config (plain data, sent to decoder threads).
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareParams {
    /// Shorter side target (eval uses the config's last `min_size`).
    pub min_size: i64,
    /// Longer side bound.
    pub max_size: i64,
    /// Per-channel mean (RGB).
    pub mean: [f32; 3],
    /// Per-channel std (RGB).
    pub std: [f32; 3],
}

impl PrepareParams {
    /// The eval-time parameters of a model config (last `min_size`, as torchvision's eval).
    pub fn from_config(cfg: &MaskRcnnConfig) -> anyhow::Result<Self> {
        let min_size = *cfg
            .min_size
            .last()
            .context("the model config has no min_size")?;
        let channel = |v: &[f64], what: &str| -> anyhow::Result<[f32; 3]> {
            anyhow::ensure!(
                v.len() == 3,
                "the model's {what} has {} values, not 3",
                v.len()
            );
            Ok([v[0] as f32, v[1] as f32, v[2] as f32])
        };
        Ok(Self {
            min_size,
            max_size: cfg.max_size,
            mean: channel(&cfg.image_mean, "image_mean")?,
            std: channel(&cfg.image_std, "image_std")?,
        })
    }
}

/// One image ready for the model: `[3, height, width]` planar f32, plus its original size.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Row-major planar `[3, height, width]` normalised, resized values.
    pub data: Vec<f32>,
    /// Resized height.
    pub height: i64,
    /// Resized width.
    pub width: i64,
    /// Size of the decoded image `(H, W)`, which boxes and masks are mapped back to.
    pub original: (i64, i64),
}

impl Prepared {
    /// The `[3, height, width]` f32 tensor on `device`.
    pub fn to_tensor(&self, device: Device) -> anyhow::Result<Tensor> {
        Ok(Tensor::f_from_slice(&self.data)?
            .f_view([3, self.height, self.width])?
            .f_to_device(device)?)
    }
}

/// Source indices and weights of one axis (libtorch `compute_source_index_and_lambda`).
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

fn taps(input: usize, output: usize) -> Vec<Tap> {
    if input == output {
        return (0..output)
            .map(|i| Tap {
                i0: i,
                i1: i,
                l0: 1.0,
                l1: 0.0,
            })
            .collect();
    }
    // area_pixel_compute_scale: static_cast<float>(input) / output
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            // area_pixel_compute_source_index (align_corners=False, not cubic); libtorch's
            // build contracts `scale * (dst + 0.5) - 0.5` into one fused multiply-add, which
            // moves a weight by up to half an ulp of the index (measured: 640 -> 266 column 106).
            let src = scale.mul_add(dst as f32 + 0.5, -0.5).max(0.0);
            // guard_index_and_lambda
            let i0 = (src.floor() as usize).min(input - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = i0 + usize::from(i0 < input - 1);
            Tap {
                i0,
                i1,
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

/// Normalises and resizes `image` for the model (see the module docs); only the output is float.
pub fn prepare(image: &image::RgbImage, params: &PrepareParams) -> anyhow::Result<Prepared> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    anyhow::ensure!(w > 0 && h > 0, "the image is empty ({w}x{h})");
    let (oh, ow) = resized_size((h as i64, w as i64), params.min_size, params.max_size);
    anyhow::ensure!(
        oh > 0 && ow > 0,
        "a {w}x{h} image resizes to nothing ({ow}x{oh})"
    );
    let (oh, ow) = (oh as usize, ow as usize);
    // The normalised value of every byte per channel, computed as the model's transform does:
    // (v as f32 / 255 - mean) / std, all f32.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - params.mean[c]) / params.std[c])
    });
    let xs = taps(w, ow);
    let ys = taps(h, oh);
    let plane = oh * ow;
    let mut data = vec![0f32; 3 * plane];
    let src = image.as_raw();
    let row_bytes = 3 * w;
    for (oy, ty) in ys.iter().enumerate() {
        // The two source rows of this output row, as u8 (never converted whole).
        let r0 = &src[ty.i0 * row_bytes..(ty.i0 + 1) * row_bytes];
        let r1 = &src[ty.i1 * row_bytes..(ty.i1 + 1) * row_bytes];
        for (c, lut) in lut.iter().enumerate() {
            let out = &mut data[c * plane + oy * ow..c * plane + (oy + 1) * ow];
            for (o, tx) in out.iter_mut().zip(&xs) {
                let (a, b) = (3 * tx.i0 + c, 3 * tx.i1 + c);
                let top = lut[r0[a] as usize] * tx.l0 + lut[r0[b] as usize] * tx.l1;
                let bottom = lut[r1[a] as usize] * tx.l0 + lut[r1[b] as usize] * tx.l1;
                *o = top * ty.l0 + bottom * ty.l1;
            }
        }
    }
    Ok(Prepared {
        data,
        height: oh as i64,
        width: ow as i64,
        original: (h as i64, w as i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transform::GeneralizedRcnnTransform;
    use tch::Kind;

    /// Normalised values are within about ±2.7, where an f32 ulp is 2.4e-7: 2e-6 allows ~8 ulps
    /// of summation-order difference (measured worst: 4.8e-7), while a wrong index or weight
    /// moves values by ~1e-5 (one half-ulp index rounding) to ~1 (a wrong row).
    const TOL: f32 = 2e-6;

    fn random_image(w: u32, h: u32, seed: u64) -> image::RgbImage {
        let mut s = seed;
        image::RgbImage::from_fn(w, h, |_, _| {
            let mut next = || {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 56) as u8
            };
            image::Rgb([next(), next(), next()])
        })
    }

    /// The model's path: the whole image as `[3, H, W]` f32 / 255, `normalize`, `resize_image`.
    fn reference(image: &image::RgbImage, p: &PrepareParams) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let t = GeneralizedRcnnTransform {
            min_size: vec![p.min_size],
            max_size: p.max_size,
            image_mean: p.mean.iter().map(|&v| f64::from(v)).collect(),
            image_std: p.std.iter().map(|&v| f64::from(v)).collect(),
            size_divisible: 32,
        };
        let x = Tensor::from_slice(image.as_raw())
            .view([i64::from(h), i64::from(w), 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float)
            .divide_scalar(255.0);
        let x = t.normalize(&x).unwrap();
        let x = t.resize_image(&x, p.min_size).unwrap().contiguous();
        Vec::<f32>::try_from(x.view([-1])).unwrap()
    }

    fn params(min_size: i64, max_size: i64) -> PrepareParams {
        PrepareParams {
            min_size,
            max_size,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    #[test]
    fn prepare_matches_normalize_then_resize() {
        // (w, h, min_size, max_size): upscaling, downscaling, odd sizes, max_size-limited,
        // unchanged size, one axis up and the other down is impossible (one scale), tiny.
        let cases = [
            (53, 37, 64, 100, "upscale, odd"),
            (640, 480, 200, 333, "downscale"),
            (999, 101, 200, 400, "max_size-limited"),
            (321, 241, 800, 1333, "upscale x3.3"),
            (200, 300, 200, 1000, "unchanged"),
            (5, 3, 512, 853, "tiny, scale capped by max_size"),
            (1001, 751, 512, 853, "downscale, odd"),
        ];
        for (i, &(w, h, min_size, max_size, what)) in cases.iter().enumerate() {
            let image = random_image(w, h, i as u64 + 1);
            let p = params(min_size, max_size);
            let got = prepare(&image, &p).unwrap();
            let (oh, ow) = resized_size((i64::from(h), i64::from(w)), min_size, max_size);
            assert_eq!((got.height, got.width), (oh, ow), "{what}: size");
            assert_eq!(got.original, (i64::from(h), i64::from(w)));
            let want = reference(&image, &p);
            assert_eq!(got.data.len(), want.len(), "{what}: length");
            let worst = got
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= TOL, "{what} ({w}x{h}): max |diff| {worst} > {TOL}");
        }
    }

    #[test]
    fn an_off_by_one_row_would_be_caught() {
        // The tolerance is meaningful: shifting the output by one row moves values far more.
        let image = random_image(97, 61, 9);
        let p = params(100, 200);
        let got = prepare(&image, &p).unwrap();
        let want = reference(&image, &p);
        let ow = got.width as usize;
        let shifted = got.data[ow..]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(shifted > 100.0 * TOL, "shifted by a row: {shifted}");
    }

    #[test]
    fn params_come_from_the_config_eval_size() {
        let cfg = MaskRcnnConfig {
            min_size: vec![480, 512, 800],
            max_size: 1000,
            ..MaskRcnnConfig::default()
        };
        let p = PrepareParams::from_config(&cfg).unwrap();
        assert_eq!((p.min_size, p.max_size), (800, 1000));
        assert!((p.mean[0] - 0.485).abs() < 1e-7 && (p.std[2] - 0.225).abs() < 1e-7);
    }
}
