//! Detections drawn over an image (a plain `image::RgbImage`; the GUI makes textures of it).

use crate::dataset::store::class_color;
use crate::infer::{Detection, SoftMask};

/// Opacity of the mask fill.
const FILL_ALPHA: f32 = 0.45;

/// Parses `#rrggbb`.
fn rgb(hex: &str) -> [u8; 3] {
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("80"), 16).unwrap_or(128);
    [byte(1), byte(3), byte(5)]
}

/// The overlay colour of a class label (1..N), as RGB.
pub fn label_color(label: i64) -> [u8; 3] {
    rgb(&class_color(usize::try_from(label - 1).unwrap_or(0)))
}

fn blend(out: &mut image::RgbImage, x: u32, y: u32, color: [u8; 3]) {
    let px = out.get_pixel_mut(x, y);
    for c in 0..3 {
        let blended = f32::from(px[c]) * (1.0 - FILL_ALPHA) + f32::from(color[c]) * FILL_ALPHA;
        px[c] = blended.round() as u8;
    }
}

fn fill_binary(out: &mut image::RgbImage, d: &Detection, color: [u8; 3]) {
    let (w, h) = out.dimensions();
    if d.mask.width() != w || d.mask.height() != h {
        return;
    }
    for (i, &on) in d.mask.data().iter().enumerate() {
        if on != 0 {
            blend(out, i as u32 % w, i as u32 / w, color);
        }
    }
}

fn outline(out: &mut image::RgbImage, box_xyxy: [f32; 4], color: [u8; 3]) {
    let (w, h) = out.dimensions();
    let clamp_x = |v: f32| (v.max(0.0) as u32).min(w.saturating_sub(1));
    let clamp_y = |v: f32| (v.max(0.0) as u32).min(h.saturating_sub(1));
    let [x1, y1, x2, y2] = box_xyxy;
    let (x1, y1, x2, y2) = (clamp_x(x1), clamp_y(y1), clamp_x(x2), clamp_y(y2));
    for x in x1..=x2 {
        out.put_pixel(x, y1, image::Rgb(color));
        out.put_pixel(x, y2, image::Rgb(color));
    }
    for y in y1..=y2 {
        out.put_pixel(x1, y, image::Rgb(color));
        out.put_pixel(x2, y, image::Rgb(color));
    }
}

/// The image with each detection's mask filled in its class colour and its box outlined.
pub fn draw(image: &image::RgbImage, detections: &[Detection]) -> image::RgbImage {
    let mut out = image.clone();
    for d in detections {
        let color = label_color(d.label);
        fill_binary(&mut out, d, color);
        outline(&mut out, d.box_xyxy, color);
    }
    out
}

/// Like [`draw`] for the detections scoring at least `score`, with masks binarised at
/// `mask_threshold` straight from their soft masks (only the stored rectangles are visited;
/// detections without a soft mask use their binary mask). This is what the live sliders call.
pub fn draw_thresholded(
    image: &image::RgbImage,
    detections: &[Detection],
    score: f32,
    mask_threshold: f32,
) -> image::RgbImage {
    let mut out = image.clone();
    let (w, h) = out.dimensions();
    let level = SoftMask::level(mask_threshold);
    for d in detections.iter().filter(|d| d.score >= score) {
        let color = label_color(d.label);
        match &d.soft_mask {
            Some(s) if s.image_width == w && s.image_height == h && s.width > 0 => {
                for (row, src) in s.data.chunks_exact(s.width as usize).enumerate() {
                    for (col, &q) in src.iter().enumerate() {
                        if f32::from(q) >= level {
                            blend(&mut out, s.x0 + col as u32, s.y0 + row as u32, color);
                        }
                    }
                }
            }
            Some(_) => {}
            None => fill_binary(&mut out, d, color),
        }
        outline(&mut out, d.box_xyxy, color);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Mask;

    #[test]
    fn thresholded_drawing_matches_drawing_the_thresholded_masks() {
        let image = image::RgbImage::from_pixel(6, 5, image::Rgb([10, 20, 30]));
        #[rustfmt::skip]
        let full: Vec<u8> = vec![
            0,   0,   0,   0, 0, 0,
            0,  40, 200, 200, 0, 0,
            0, 140, 255,  90, 0, 0,
            0,   0, 130,   0, 0, 0,
            0,   0,   0,   0, 0, 0,
        ];
        let soft = SoftMask::from_quantised(6, 5, &full);
        let d = Detection {
            label: 2,
            class_name: "dog".into(),
            score: 0.7,
            box_xyxy: [1.0, 1.0, 4.0, 3.0],
            mask: Mask::new(6, 5),
            soft_mask: Some(soft.clone()),
        };
        for t in [0.1, 0.5, 0.9] {
            let mut hard = d.clone();
            hard.mask = soft.threshold(t);
            hard.soft_mask = None;
            assert_eq!(
                draw_thresholded(&image, std::slice::from_ref(&d), 0.5, t),
                draw(&image, &[hard]),
                "threshold {t}"
            );
        }
        // Below the score threshold nothing is drawn.
        assert_eq!(draw_thresholded(&image, &[d], 0.8, 0.5), image);
    }
}
