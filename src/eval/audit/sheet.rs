//! Contact sheet of a stored audit: its top findings drawn as one grid PNG, for a person to
//! judge the audit at a glance (`maskstudio audit ... --sheet top20.png`).
//!
//! Each tile is a crop of the image around the finding (the union of the instance's and the
//! suggested mask's boxes, padded by [`CROP_PAD`], at least [`MIN_CROP`] pixels wide) scaled to
//! the tile: the labelled instance outlined solid in [`INSTANCE_COLOR`], the suggested mask
//! (missing, loose) tinted and outlined dashed in [`SUGGESTED_COLOR`]. Under it a `font8x8`
//! caption (the font of `infer::overlay`'s exported labels): rank, kind, score, class, then the
//! finding's reason wrapped to the tile, then the image's file name.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use font8x8::UnicodeFonts as _;
use image::{Rgb, RgbImage};

use crate::dataset::store::{FindingRow, Project};
use crate::dataset::{Mask, Rle};

/// Colour of the labelled instance's solid outline.
pub const INSTANCE_COLOR: [u8; 3] = [255, 48, 48];
/// Colour of the suggested mask's tint and dashed outline.
pub const SUGGESTED_COLOR: [u8; 3] = [0, 220, 255];
/// The crop around a finding grows by this fraction of its box on every side.
pub const CROP_PAD: f64 = 0.35;
/// Smallest crop side in image pixels (tiny instances keep some context).
pub const MIN_CROP: f64 = 48.0;
/// Opacity of the suggested mask's tint.
const TINT_ALPHA: f32 = 0.35;
/// Dash period of the suggested outline, in tile pixels (half on, half off).
const DASH: u32 = 6;
/// Glyph size of `font8x8`.
const GLYPH: u32 = 8;
/// Caption lines under each tile (title, up to three of reason, file name).
const CAPTION_LINES: u32 = 5;
/// Line height of the caption in pixels.
const LINE: u32 = GLYPH + 2;
/// Gap between tiles in pixels.
const GAP: u32 = 6;
/// Background of the sheet.
const BACKGROUND: [u8; 3] = [24, 24, 28];

/// How the sheet is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SheetOptions {
    /// How many findings (highest score first).
    pub top: usize,
    /// Tiles per row.
    pub columns: usize,
    /// Side of a tile's picture in pixels.
    pub tile: u32,
}

impl Default for SheetOptions {
    fn default() -> Self {
        Self {
            top: 20,
            columns: 5,
            tile: 240,
        }
    }
}

/// The open findings of audit `audit_id` (the newest audit when `None`), highest finding score
/// first, at most `top`.
pub fn top_findings(
    project: &Project,
    audit_id: Option<i64>,
    top: usize,
) -> anyhow::Result<Vec<FindingRow>> {
    let audit_id = match audit_id {
        Some(id) => id,
        None => {
            project
                .audits()
                .with_context(|| format!("{}: reading the audits", project.root().display()))?
                .first()
                .with_context(|| format!("{}: no audit stored yet", project.root().display()))?
                .id
        }
    };
    let mut rows: Vec<FindingRow> = project
        .audit_queue(None)
        .with_context(|| format!("{}: reading the findings", project.root().display()))?
        .into_iter()
        .filter(|f| f.audit_id == audit_id)
        .collect();
    rows.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    rows.truncate(top);
    Ok(rows)
}

/// Draws `findings` as a grid (see the module docs); an empty list gives a one-tile sheet
/// saying so.
pub fn render_sheet(
    project: &Project,
    findings: &[FindingRow],
    opts: &SheetOptions,
) -> anyhow::Result<RgbImage> {
    let columns = opts.columns.max(1);
    let rows = findings.len().div_ceil(columns).max(1);
    let cell_w = opts.tile.max(GLYPH * 8);
    let cell_h = cell_w + CAPTION_LINES * LINE + 4;
    let (w, h) = (
        GAP + columns.min(findings.len().max(1)) as u32 * (cell_w + GAP),
        GAP + rows as u32 * (cell_h + GAP),
    );
    let mut sheet = RgbImage::from_pixel(w, h, Rgb(BACKGROUND));
    if findings.is_empty() {
        draw_text(&mut sheet, GAP, GAP, "no open findings", [230, 230, 230]);
        return Ok(sheet);
    }
    let classes: HashMap<i64, String> = project
        .classes()
        .with_context(|| format!("{}: reading the classes", project.root().display()))?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    let class_name =
        |id: Option<i64>| id.map(|id| classes.get(&id).cloned().unwrap_or_else(|| id.to_string()));
    let mut images: HashMap<i64, RgbImage> = HashMap::new();
    for (rank, f) in findings.iter().enumerate() {
        let (col, row) = ((rank % columns) as u32, (rank / columns) as u32);
        let (x0, y0) = (GAP + col * (cell_w + GAP), GAP + row * (cell_h + GAP));
        if let std::collections::hash_map::Entry::Vacant(slot) = images.entry(f.image_id) {
            let meta = project.image(f.image_id).with_context(|| {
                format!(
                    "{}: image {} of finding {}",
                    project.root().display(),
                    f.image_id,
                    f.id
                )
            })?;
            let img = image::open(&meta.path)
                .with_context(|| format!("reading {}", meta.path.display()))?
                .to_rgb8();
            slot.insert(img);
        }
        let img = &images[&f.image_id];
        let instance = match f.instance_id {
            Some(id) => project
                .instances(f.image_id)
                .with_context(|| {
                    format!(
                        "{}: instances of image {}",
                        project.root().display(),
                        f.image_id
                    )
                })?
                .into_iter()
                .find(|i| i.id == id)
                .map(|i| i.rle),
            None => None,
        };
        let tile = render_tile(img, instance.as_ref(), f.suggested_mask.as_ref(), cell_w)?;
        image::imageops::replace(&mut sheet, &tile, i64::from(x0), i64::from(y0));
        let labelled = class_name(f.instance_class_id);
        let class = match (f.kind.as_str(), labelled, class_name(f.suggested_class_id)) {
            ("swap", Some(a), Some(b)) => format!("{a}>{b}"),
            (_, Some(a), _) => a,
            (_, None, Some(b)) => b,
            _ => String::new(),
        };
        let mut lines = vec![format!("#{} {} {:.2} {class}", rank + 1, f.kind, f.score)];
        let per_line = (cell_w / GLYPH) as usize;
        lines.extend(
            wrap(&f.reason, per_line)
                .into_iter()
                .take(CAPTION_LINES as usize - 2),
        );
        lines.push(f.image_path.clone());
        for (k, line) in lines.iter().enumerate() {
            let color = if k == 0 {
                [255, 255, 255]
            } else {
                [190, 190, 190]
            };
            let clipped: String = line.chars().take(per_line).collect();
            draw_text(
                &mut sheet,
                x0,
                y0 + cell_w + 3 + k as u32 * LINE,
                &clipped,
                color,
            );
        }
    }
    Ok(sheet)
}

/// Writes the top findings of `audit_id` (newest audit when `None`) as a PNG at `out`;
/// returns the findings drawn, in order.
pub fn write_sheet(
    project: &Project,
    audit_id: Option<i64>,
    opts: &SheetOptions,
    out: &Path,
) -> anyhow::Result<Vec<FindingRow>> {
    let findings = top_findings(project, audit_id, opts.top)?;
    let sheet = render_sheet(project, &findings, opts)?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut bytes, image::ImageFormat::Png)
        .with_context(|| format!("encoding the contact sheet {}", out.display()))?;
    crate::fsutil::write_atomic(out, bytes.get_ref())
        .with_context(|| format!("writing the contact sheet {}", out.display()))?;
    Ok(findings)
}

/// The crop `[x0, y0, x1, y1)` (image pixels) around the boxes of `masks`: their union padded
/// by [`CROP_PAD`], squared and at least [`MIN_CROP`] wide, kept inside the `w`×`h` image
/// where it fits.
pub fn crop_around(masks: &[&Rle], w: u32, h: u32) -> [f64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for m in masks {
        let [bx, by, bw, bh] = m.to_bbox();
        if bw <= 0.0 || bh <= 0.0 {
            continue;
        }
        (x0, y0) = (x0.min(bx), y0.min(by));
        (x1, y1) = (x1.max(bx + bw), y1.max(by + bh));
    }
    let (fw, fh) = (f64::from(w), f64::from(h));
    if x0 > x1 {
        (x0, y0, x1, y1) = (0.0, 0.0, fw, fh);
    }
    let side = ((x1 - x0).max(y1 - y0) * (1.0 + 2.0 * CROP_PAD))
        .max(MIN_CROP)
        .min(fw.max(fh));
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    // Shifted back inside the image on each axis where the side fits.
    let place = |c: f64, full: f64| {
        let lo = c - side / 2.0;
        if side >= full {
            lo
        } else {
            lo.clamp(0.0, full - side)
        }
    };
    let (lx, ly) = (place(cx, fw), place(cy, fh));
    [lx, ly, lx + side, ly + side]
}

/// One `side`×`side` tile: the crop of `img` around the masks, nearest-sampled (outside the
/// image: the sheet's background), the suggested mask tinted with a dashed outline, the
/// instance's outline solid on top.
fn render_tile(
    img: &RgbImage,
    instance: Option<&Rle>,
    suggested: Option<&Rle>,
    side: u32,
) -> anyhow::Result<RgbImage> {
    let (w, h) = img.dimensions();
    let to_mask = |r: Option<&Rle>| -> anyhow::Result<Option<Mask>> {
        r.filter(|r| r.width == w && r.height == h)
            .map(|r| Mask::from_rle(r).context("decoding a finding's mask"))
            .transpose()
    };
    let (inst, sugg) = (to_mask(instance)?, to_mask(suggested)?);
    let present: Vec<&Rle> = [instance, suggested].into_iter().flatten().collect();
    let [cx0, cy0, cx1, _] = crop_around(&present, w, h);
    let scale = (cx1 - cx0) / f64::from(side);
    // Tile pixel → source pixel (its centre), None outside the image.
    let src = |tx: u32, ty: u32| -> Option<(u32, u32)> {
        let sx = (cx0 + (f64::from(tx) + 0.5) * scale).floor();
        let sy = (cy0 + (f64::from(ty) + 0.5) * scale).floor();
        (sx >= 0.0 && sy >= 0.0 && sx < f64::from(w) && sy < f64::from(h))
            .then_some((sx as u32, sy as u32))
    };
    let on = |m: &Option<Mask>, tx: i64, ty: i64| -> bool {
        if tx < 0 || ty < 0 || tx >= i64::from(side) || ty >= i64::from(side) {
            return false;
        }
        m.as_ref()
            .zip(src(tx as u32, ty as u32))
            .is_some_and(|(m, (x, y))| m.get(x, y))
    };
    // A tile pixel is on an outline when it is inside and a pixel within `r` is not.
    let edge = |m: &Option<Mask>, tx: u32, ty: u32, r: i64| -> bool {
        let (x, y) = (i64::from(tx), i64::from(ty));
        on(m, x, y)
            && (-r..=r).any(|dy| (-r..=r).any(|dx| (dx != 0 || dy != 0) && !on(m, x + dx, y + dy)))
    };
    let mut tile = RgbImage::from_pixel(side, side, Rgb(BACKGROUND));
    for ty in 0..side {
        for tx in 0..side {
            let Some((x, y)) = src(tx, ty) else {
                continue;
            };
            let mut px = img.get_pixel(x, y).0;
            if on(&sugg, i64::from(tx), i64::from(ty)) {
                px = blend(px, SUGGESTED_COLOR, TINT_ALPHA);
                if edge(&sugg, tx, ty, 1) && ((tx + ty) / (DASH / 2)).is_multiple_of(2) {
                    px = SUGGESTED_COLOR;
                }
            }
            if edge(&inst, tx, ty, 1) {
                px = INSTANCE_COLOR;
            }
            tile.put_pixel(tx, ty, Rgb(px));
        }
    }
    Ok(tile)
}

fn blend(px: [u8; 3], color: [u8; 3], alpha: f32) -> [u8; 3] {
    std::array::from_fn(|c| {
        (f32::from(px[c]) * (1.0 - alpha) + f32::from(color[c]) * alpha).round() as u8
    })
}

/// `text` broken at spaces into lines of at most `width` characters (a longer word is cut).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: String = word.to_owned();
        while word.chars().count() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if needed > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Draws `text` with its top-left at `(x, y)` in `font8x8` glyphs (characters outside the font
/// print as `?`), clipped to the image.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: [u8; 3]) {
    let (w, h) = img.dimensions();
    for (k, c) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::LATIN_FONTS.get(c))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                if bits >> col & 1 == 0 {
                    continue;
                }
                let (px, py) = (x + k as u32 * GLYPH + col, y + row as u32);
                if px < w && py < h {
                    img.put_pixel(px, py, Rgb(color));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> Rle {
        let mut m = Mask::new(w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, true);
            }
        }
        m.to_rle()
    }

    #[test]
    fn the_crop_pads_the_union_of_the_boxes_squares_it_and_stays_inside() {
        let a = rect(200, 100, (40, 40, 60, 60));
        let b = rect(200, 100, (60, 50, 100, 70));
        // Union [40, 100) × [40, 70): 60 wide → side 60 × (1 + 2 × 0.35) = 102 (at most the
        // longer image side, 200); centre (70, 55), so x from 70 − 51 = 19.
        let [x0, y0, x1, y1] = crop_around(&[&a, &b], 200, 100);
        assert!((x1 - x0 - 102.0).abs() < 1e-9 && (y1 - y0 - 102.0).abs() < 1e-9);
        assert!((x0 - 19.0).abs() < 1e-9, "{x0}");
        // Taller than the image: centred on the boxes, not clamped.
        assert!((y0 - (55.0 - 51.0)).abs() < 1e-9, "{y0}");
        // A tiny mask at the corner: MIN_CROP wide, moved inside.
        let c = rect(200, 100, (0, 0, 4, 4));
        assert_eq!(crop_around(&[&c], 200, 100), [0.0, 0.0, MIN_CROP, MIN_CROP]);
    }

    #[test]
    fn reasons_wrap_at_spaces_and_cut_long_words() {
        assert_eq!(
            wrap("the box matches but", 10),
            ["the box", "matches", "but"]
        );
        assert_eq!(wrap("abcdefghijkl x", 5), ["abcde", "fghij", "kl x"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn a_tile_outlines_the_instance_solid_and_the_suggestion_dashed() {
        let img = RgbImage::from_pixel(100, 100, Rgb([100, 100, 100]));
        let inst = rect(100, 100, (30, 30, 70, 70));
        let sugg = rect(100, 100, (40, 40, 80, 80));
        let tile = render_tile(&img, Some(&inst), Some(&sugg), 120).unwrap();
        let count = |c: [u8; 3]| tile.pixels().filter(|p| p.0 == c).count();
        assert!(count(INSTANCE_COLOR) > 100, "{}", count(INSTANCE_COLOR));
        assert!(count(SUGGESTED_COLOR) > 40, "{}", count(SUGGESTED_COLOR));
        // Tinted inside the suggestion, away from every outline: the tile's centre region of
        // the suggestion only (image [72, 78) on both axes).
        let tinted = blend([100, 100, 100], SUGGESTED_COLOR, TINT_ALPHA);
        assert!(count(tinted) > 100, "{}", count(tinted));
        // The whole instance outline is in the tile: it is solid, the dashed one is not.
        assert!(count(INSTANCE_COLOR) > count(SUGGESTED_COLOR));
    }
}
