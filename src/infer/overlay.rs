//! Detections drawn over an image (a plain `image::RgbImage`; the GUI makes textures of it).

use crate::dataset::store::class_color;
use crate::infer::Detection;

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

/// The image with each detection's mask filled in its class colour and its box outlined.
pub fn draw(image: &image::RgbImage, detections: &[Detection]) -> image::RgbImage {
    let mut out = image.clone();
    let (w, h) = out.dimensions();
    for d in detections {
        let color = label_color(d.label);
        if d.mask.width() == w && d.mask.height() == h {
            for (i, &on) in d.mask.data().iter().enumerate() {
                if on == 0 {
                    continue;
                }
                let (x, y) = (i as u32 % w, i as u32 / w);
                let px = out.get_pixel_mut(x, y);
                for c in 0..3 {
                    let blended =
                        f32::from(px[c]) * (1.0 - FILL_ALPHA) + f32::from(color[c]) * FILL_ALPHA;
                    px[c] = blended.round() as u8;
                }
            }
        }
        let clamp_x = |v: f32| (v.max(0.0) as u32).min(w.saturating_sub(1));
        let clamp_y = |v: f32| (v.max(0.0) as u32).min(h.saturating_sub(1));
        let [x1, y1, x2, y2] = d.box_xyxy;
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
    out
}
