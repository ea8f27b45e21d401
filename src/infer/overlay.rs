//! Detections drawn over an image (a plain `image::RgbImage`; the GUI makes textures of it).

use font8x8::UnicodeFonts as _;

use crate::dataset::store::class_color;
use crate::infer::{Detection, SoftMask, threshold};

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
    for d in threshold::above(detections, score) {
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

/// [`draw_thresholded`] onto `display`, a copy of the image resized by `scale` (≤ 1): masks and
/// boxes keep their full-resolution coordinates and are sampled at each display pixel's centre
/// (nearest source pixel). At `scale == 1` this is [`draw_thresholded`]. The Predict tab draws
/// big photos this way, so a slider change costs display pixels, not megapixels.
pub fn draw_thresholded_scaled(
    display: &image::RgbImage,
    scale: f32,
    detections: &[Detection],
    score: f32,
    mask_threshold: f32,
) -> image::RgbImage {
    if scale >= 1.0 {
        return draw_thresholded(display, detections, score, mask_threshold);
    }
    let mut out = display.clone();
    let (dw, dh) = out.dimensions();
    // Display pixel d covers source pixel floor((d + 0.5) / scale).
    let src = |d: u32| ((d as f32 + 0.5) / scale) as u32;
    let span = |a: u32, len: u32, max: u32| {
        let lo = (a as f32 * scale).floor() as u32;
        let hi = (((a + len) as f32 * scale).ceil() as u32).min(max);
        lo.min(hi)..hi
    };
    let level = SoftMask::level(mask_threshold);
    for d in threshold::above(detections, score) {
        let color = label_color(d.label);
        match &d.soft_mask {
            Some(s) if s.width > 0 => {
                for y in span(s.y0, s.height, dh) {
                    let Some(row) = src(y).checked_sub(s.y0).filter(|&r| r < s.height) else {
                        continue;
                    };
                    for x in span(s.x0, s.width, dw) {
                        let Some(col) = src(x).checked_sub(s.x0).filter(|&c| c < s.width) else {
                            continue;
                        };
                        let q = s.data[(row * s.width + col) as usize];
                        if f32::from(q) >= level {
                            blend(&mut out, x, y, color);
                        }
                    }
                }
            }
            Some(_) => {}
            None if d.mask.area() > 0 => {
                let m = &d.mask;
                for y in (0..dh).filter(|&y| src(y) < m.height()) {
                    for x in (0..dw).filter(|&x| src(x) < m.width()) {
                        if m.get(src(x), src(y)) {
                            blend(&mut out, x, y, color);
                        }
                    }
                }
            }
            None => {}
        }
        outline(&mut out, d.box_xyxy.map(|v| v * scale), color);
    }
    out
}

/// Text height in font pixels (`font8x8`'s glyphs are 8x8, bit 0 = leftmost column).
const GLYPH: u32 = 8;

/// Burns `"<class> <score>"` above each detection's box (inside the image) in white on its class
/// colour, for exported overlays; glyphs scale with the image (1 px per font pixel up to 640 px
/// on the short side, then larger). Characters outside the font print as `?`.
pub fn draw_labels(out: &mut image::RgbImage, detections: &[Detection]) {
    let (w, h) = out.dimensions();
    let scale = (w.min(h) / 640).max(1);
    let cell = GLYPH * scale;
    for d in detections {
        let text = format!("{} {:.2}", d.class_name, d.score);
        let glyphs: Vec<[u8; 8]> = text
            .chars()
            .map(|c| {
                font8x8::BASIC_FONTS
                    .get(c)
                    .or_else(|| font8x8::LATIN_FONTS.get(c))
                    .or_else(|| font8x8::BASIC_FONTS.get('?'))
                    .unwrap_or([0; 8])
            })
            .collect();
        let (tw, th) = (glyphs.len() as u32 * cell + 2 * scale, cell + 2 * scale);
        if tw > w || th > h {
            continue;
        }
        // Above the box when there is room, else just inside its top edge; kept in the image.
        let x0 = (d.box_xyxy[0].max(0.0) as u32).min(w - tw);
        let top = d.box_xyxy[1].max(0.0) as u32;
        let y0 = if top >= th { top - th } else { top }.min(h - th);
        let color = image::Rgb(label_color(d.label));
        for y in y0..y0 + th {
            for x in x0..x0 + tw {
                out.put_pixel(x, y, color);
            }
        }
        for (k, rows) in glyphs.iter().enumerate() {
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    let gx = x0 + scale + k as u32 * cell + col * scale;
                    let gy = y0 + scale + row as u32 * scale;
                    for dy in 0..scale {
                        for dx in 0..scale {
                            out.put_pixel(gx + dx, gy + dy, image::Rgb([255, 255, 255]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Mask;

    /// A 6x5 soft mask, quantised (0..=255), shared by the drawing tests.
    #[rustfmt::skip]
    const SOFT_6X5: [u8; 30] = [
        0,   0,   0,   0, 0, 0,
        0,  40, 200, 200, 0, 0,
        0, 140, 255,  90, 0, 0,
        0,   0, 130,   0, 0, 0,
        0,   0,   0,   0, 0, 0,
    ];

    /// A detection of `class` (label `label`) with these masks.
    fn det(
        label: i64,
        class: &str,
        score: f32,
        box_xyxy: [f32; 4],
        mask: Mask,
        soft_mask: Option<SoftMask>,
    ) -> Detection {
        Detection {
            label,
            class_name: class.into(),
            score,
            box_xyxy,
            mask,
            soft_mask,
        }
    }

    #[test]
    fn thresholded_drawing_matches_drawing_the_thresholded_masks() {
        let image = image::RgbImage::from_pixel(6, 5, image::Rgb([10, 20, 30]));
        let full = SOFT_6X5.to_vec();
        let soft = SoftMask::from_quantised(6, 5, &full);
        let box_xyxy = [1.0, 1.0, 4.0, 3.0];
        let d = det(2, "dog", 0.7, box_xyxy, Mask::new(6, 5), Some(soft.clone()));
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

    #[test]
    fn labels_are_drawn_above_the_box_in_the_class_colour() {
        let image = image::RgbImage::from_pixel(200, 100, image::Rgb([0, 0, 0]));
        let box_xyxy = [20.0, 40.0, 120.0, 90.0];
        let d = det(1, "cat", 0.5, box_xyxy, Mask::new(200, 100), None);
        let mut out = image.clone();
        draw_labels(&mut out, std::slice::from_ref(&d));
        // "cat 0.50": 8 glyphs of 8 px + 1 px margins = 66 x 10 px ending just above the box.
        let color = image::Rgb(label_color(1));
        let (mut bg, mut white) = (0, 0);
        for (x, y, p) in out.enumerate_pixels() {
            let inside = (20..86).contains(&x) && (30..40).contains(&y);
            match (*p == color, *p == image::Rgb([255, 255, 255])) {
                (true, _) => bg += 1,
                (_, true) => white += 1,
                _ => assert!(!inside, "unpainted pixel ({x}, {y}) in the label"),
            }
            if !inside {
                assert_eq!(*p, image::Rgb([0, 0, 0]), "({x}, {y}) outside the label");
            }
        }
        assert_eq!(bg + white, 66 * 10);
        // Ink of the glyphs as font8x8 has them.
        let ink: u32 = "cat 0.50"
            .chars()
            .map(|c| {
                font8x8::BASIC_FONTS
                    .get(c)
                    .unwrap()
                    .iter()
                    .map(|r| r.count_ones())
                    .sum::<u32>()
            })
            .sum();
        assert_eq!(white, ink);
        // A box at the top edge: the label goes inside it.
        let top = Detection {
            box_xyxy: [0.0, 0.0, 50.0, 50.0],
            ..d
        };
        let mut out = image.clone();
        draw_labels(&mut out, &[top]);
        assert_eq!(*out.get_pixel(0, 0), color);
        assert_eq!(*out.get_pixel(0, 10), image::Rgb([0, 0, 0]));
    }

    #[test]
    fn scaled_drawing_samples_the_full_resolution_masks() {
        // Full resolution = the display image with every pixel doubled, soft mask doubled too.
        let small =
            image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        let q = SOFT_6X5.to_vec();
        let big_q: Vec<u8> = (0..10)
            .flat_map(|y| (0..12).map(move |x| (x, y)))
            .map(|(x, y)| q[(y / 2) * 6 + x / 2])
            .collect();
        let soft = |w, h, q: &[u8], b| {
            let soft = SoftMask::from_quantised(w, h, q);
            det(3, "bird", 0.9, b, Mask::new(0, 0), Some(soft))
        };
        let on_small = soft(6, 5, &q, [1.0, 1.0, 4.0, 3.0]);
        let on_big = soft(12, 10, &big_q, [2.0, 2.0, 8.0, 6.0]);
        for t in [0.1, 0.5, 0.9] {
            assert_eq!(
                draw_thresholded_scaled(&small, 0.5, std::slice::from_ref(&on_big), 0.5, t),
                draw_thresholded(&small, std::slice::from_ref(&on_small), 0.5, t),
                "threshold {t}"
            );
        }
        // Scale 1 is the plain drawing.
        assert_eq!(
            draw_thresholded_scaled(&small, 1.0, std::slice::from_ref(&on_small), 0.5, 0.5),
            draw_thresholded(&small, &[on_small], 0.5, 0.5)
        );
    }
}
