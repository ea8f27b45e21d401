//! `loss.png`: the loss curves of a run (total and the five components per step, left axis)
//! and the validation mask/box AP per epoch (right axis, 0..1), drawn with the `image` crate
//! and `font8x8`'s 8x8 pixel font (the one the exported overlays use).

use std::path::Path;

use anyhow::Context as _;
use image::{Rgb, RgbImage};

use crate::train::csv;

const W: u32 = 960;
const H: u32 = 540;
const LEFT: i64 = 70;
const RIGHT: i64 = 60;
const TOP: i64 = 30;
const BOTTOM: i64 = 50;

const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const COLOURS: [Rgb<u8>; 5] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
];
const AP_SEGM: Rgb<u8> = Rgb([214, 39, 40]);
const AP_BBOX: Rgb<u8> = Rgb([227, 119, 194]);

/// Glyph cell of `font8x8` (8x8 pixels, bit 0 of a row = leftmost column); also the advance.
const GLYPH: i64 = 8;

/// The `font8x8` rows of `c`; characters outside the font print as `?`.
fn glyph(c: char) -> [u8; 8] {
    use font8x8::UnicodeFonts as _;
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Draws `text` with its top-left corner at `(x, y)`; returns the width in pixels.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) -> i64 {
    for (i, ch) in s.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH {
                if bits >> col & 1 == 1 {
                    put(img, x + i as i64 * GLYPH + col, y + row as i64, c);
                }
            }
        }
    }
    s.chars().count() as i64 * GLYPH
}

/// Bresenham line, `thick` pixels wide (vertically).
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, thick: i64) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for t in 0..thick {
            put(img, x, y + t, c);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Tick label text: short, no trailing zeros.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// Series of the chart: per-step losses and per-epoch AP.
#[derive(Debug, Default, Clone)]
pub struct Curves {
    /// Step numbers.
    pub steps: Vec<f64>,
    /// `(name, values per step)`: total first, then the components.
    pub losses: Vec<(String, Vec<f64>)>,
    /// `(step at the epoch's end, mask AP, box AP)`.
    pub ap: Vec<(f64, Option<f64>, Option<f64>)>,
}

/// Reads `metrics.csv` and `epochs.csv` of a run.
pub fn read_curves(run_dir: &Path) -> anyhow::Result<Curves> {
    let path = run_dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    let (header, lines) = csv::header(&text);
    let col = |name: &str| csv::col(&header, name);
    let iter_col = col("iter").with_context(|| format!("{path:?}: no iter column"))?;
    let names: Vec<&str> = std::iter::once("total")
        .chain(crate::model::LOSS_NAMES)
        .collect();
    let cols: Vec<Option<usize>> = names.iter().map(|n| col(n)).collect();
    let mut curves = Curves {
        losses: names
            .iter()
            .map(|n| ((*n).to_owned(), Vec::new()))
            .collect(),
        ..Curves::default()
    };
    for l in lines {
        let v = csv::cells(l);
        let Some(step) = csv::num(&v, Some(iter_col)) else {
            continue;
        };
        curves.steps.push(step);
        for (series, c) in curves.losses.iter_mut().zip(&cols) {
            series.1.push(csv::num(&v, *c).unwrap_or(f64::NAN));
        }
    }
    let epochs = run_dir.join("epochs.csv");
    if let Ok(text) = std::fs::read_to_string(&epochs) {
        let (header, lines) = csv::header(&text);
        let col = |name: &str| csv::col(&header, name);
        let (steps_c, segm_c, bbox_c) = (col("steps"), col("val_segm_ap"), col("val_bbox_ap"));
        let mut at = 0.0;
        for l in lines {
            let v = csv::cells(l);
            let get = |c: Option<usize>| csv::num(&v, c);
            at += get(steps_c).unwrap_or(0.0);
            curves.ap.push((at - 1.0, get(segm_c), get(bbox_c)));
        }
    }
    Ok(curves)
}

/// Draws the chart.
pub fn draw(curves: &Curves) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT, i64::from(W) - RIGHT);
    let (y0, y1) = (TOP, i64::from(H) - BOTTOM);
    let max_step = curves.steps.iter().copied().fold(1.0f64, f64::max);
    let max_loss = curves
        .losses
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let px = |s: f64| x0 + ((s / max_step) * (x1 - x0) as f64).round() as i64;
    let py = |v: f64| y1 - ((v / max_loss).clamp(0.0, 1.0) * (y1 - y0) as f64).round() as i64;
    let pap = |v: f64| y1 - (v.clamp(0.0, 1.0) * (y1 - y0) as f64).round() as i64;

    // Grid and ticks.
    let ystep = nice_step(max_loss, 5.0);
    let mut v = 0.0;
    while v <= max_loss * 1.0001 {
        let y = py(v);
        line(&mut img, (x0, y), (x1, y), GRID, 1);
        let label = tick_label(v);
        text(
            &mut img,
            x0 - 8 - label.len() as i64 * GLYPH,
            y - GLYPH / 2,
            &label,
            BLACK,
        );
        v += ystep;
    }
    let xstep = nice_step(max_step, 8.0).max(1.0);
    let mut s = 0.0;
    while s <= max_step * 1.0001 {
        let x = px(s);
        line(&mut img, (x, y1), (x, y1 + 4), BLACK, 1);
        let label = tick_label(s);
        text(
            &mut img,
            x - label.len() as i64 * GLYPH / 2,
            y1 + 8,
            &label,
            BLACK,
        );
        s += xstep;
    }
    for k in 0..=5 {
        let a = k as f64 / 5.0;
        let y = pap(a);
        line(&mut img, (x1, y), (x1 + 4, y), BLACK, 1);
        text(&mut img, x1 + 8, y - GLYPH / 2, &tick_label(a), BLACK);
    }
    line(&mut img, (x0, y0), (x0, y1), BLACK, 1);
    line(&mut img, (x0, y1), (x1, y1), BLACK, 1);
    line(&mut img, (x1, y0), (x1, y1), BLACK, 1);
    text(&mut img, (x0 + x1) / 2 - 2 * GLYPH, y1 + 24, "step", BLACK);
    text(&mut img, 4, 8, "loss", BLACK);
    text(&mut img, x1 - 3 * GLYPH, 8, "val ap", BLACK);

    // Curves: components thin, total thick black.
    for (k, (_, values)) in curves.losses.iter().enumerate().rev() {
        let (colour, thick) = if k == 0 {
            (BLACK, 2)
        } else {
            (COLOURS[(k - 1) % COLOURS.len()], 1)
        };
        let mut prev: Option<(i64, i64)> = None;
        for (s, v) in curves.steps.iter().zip(values) {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (px(*s), py(*v));
            match prev {
                Some(q) => line(&mut img, q, p, colour, thick),
                None => put(&mut img, p.0, p.1, colour),
            }
            prev = Some(p);
        }
    }
    for (pick, colour) in [(0usize, AP_SEGM), (1, AP_BBOX)] {
        let mut prev: Option<(i64, i64)> = None;
        for &(s, segm, bbox) in &curves.ap {
            let Some(a) = (if pick == 0 { segm } else { bbox }) else {
                continue;
            };
            let p = (px(s.max(0.0)), pap(a));
            for dx in -2..=2 {
                for dy in -2..=2 {
                    put(&mut img, p.0 + dx, p.1 + dy, colour);
                }
            }
            if let Some(q) = prev {
                line(&mut img, q, p, colour, 2);
            }
            prev = Some(p);
        }
    }

    // Legend.
    let mut entries: Vec<(String, Rgb<u8>)> = curves
        .losses
        .iter()
        .enumerate()
        .map(|(k, (n, _))| {
            let c = if k == 0 {
                BLACK
            } else {
                COLOURS[(k - 1) % COLOURS.len()]
            };
            (n.clone(), c)
        })
        .collect();
    if curves.ap.iter().any(|a| a.1.is_some()) {
        entries.push(("val mask ap".to_owned(), AP_SEGM));
        entries.push(("val box ap".to_owned(), AP_BBOX));
    }
    let lx = x1 - 150;
    for (i, (name, c)) in entries.iter().enumerate() {
        let y = y0 + 8 + i as i64 * (GLYPH + 4);
        line(
            &mut img,
            (lx, y + GLYPH / 2),
            (lx + 16, y + GLYPH / 2),
            *c,
            2,
        );
        text(&mut img, lx + 22, y, name, BLACK);
    }
    img
}

/// Draws `loss.png` into the run folder ([`crate::fsutil::write_atomic`]).
pub fn write_loss_png(run_dir: &Path) -> anyhow::Result<()> {
    let img = draw(&read_curves(run_dir)?);
    let path = run_dir.join("loss.png");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("encoding {path:?}"))?;
    crate::fsutil::write_atomic(&path, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_the_curves() {
        let curves = Curves {
            steps: (0..20).map(f64::from).collect(),
            losses: vec![
                (
                    "total".into(),
                    (0..20).map(|i| 3.0 - 0.1 * f64::from(i)).collect(),
                ),
                ("loss_mask".into(), (0..20).map(|_| 0.7).collect()),
            ],
            ap: vec![(9.0, Some(0.1), Some(0.2)), (19.0, Some(0.3), Some(0.35))],
        };
        let img = draw(&curves);
        assert_eq!(img.dimensions(), (W, H));
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(COLOURS[0]) > 100, "loss_mask curve drawn");
        assert!(count(AP_SEGM) > 25, "AP markers drawn");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(nice_step(3.0, 5.0), 0.5);
    }

    #[test]
    fn text_is_drawn_in_font8x8() {
        let mut img = RgbImage::from_pixel(40, 12, Rgb([255, 255, 255]));
        assert_eq!(text(&mut img, 2, 1, "A_", BLACK), 2 * GLYPH);
        // Every ink pixel of 'A' is where font8x8 has a set bit, and nowhere else.
        let a = glyph('A');
        for row in 0..8u32 {
            for col in 0..8u32 {
                let ink = *img.get_pixel(2 + col, 1 + row) == BLACK;
                assert_eq!(ink, a[row as usize] >> col & 1 == 1, "A at ({col}, {row})");
            }
        }
        assert!(a.iter().any(|&r| r != 0));
        // '_' is the bottom row of the second cell; an unknown character prints as '?'.
        assert_eq!(glyph('_'), [0, 0, 0, 0, 0, 0, 0, 0xFF]);
        assert_eq!(glyph('\u{2603}'), glyph('?'));
        assert_ne!(glyph('?'), [0; 8]);
    }
}
