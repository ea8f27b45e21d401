//! Mask editing operations for the image view: brush strokes, polygons, flood fill, merge,
//! split, fill holes, 3×3 morphology and smoothing.
//!
//! Coordinates are continuous image coordinates: pixel `(x, y)` covers `[x, x+1] × [y, y+1]`
//! and its centre is `(x + 0.5, y + 0.5)` (the same convention as pycocotools polygons and
//! `dataset::contour`). Painting operations return the [`Rect`] of pixels they may have
//! changed, so a caller updates only that part of an overlay texture; they touch only the rows
//! and columns they cover, so a stroke on a 4000×3000 mask costs what the stroke covers.
//!
//! Connectivity: foreground components are **8-connected** (like OpenCV's
//! `connectedComponents` default); background regions (flood fill, holes) are **4-connected**,
//! the dual choice, so a one-pixel diagonal wall closes an outline.

use std::collections::VecDeque;

use crate::dataset::Mask;
use crate::dataset::polygon::polygon_to_rle;

/// A half-open pixel rectangle `[x0, x1) × [y0, y1)`; empty when `x0 >= x1` or `y0 >= y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// First column.
    pub x0: u32,
    /// First row.
    pub y0: u32,
    /// One past the last column.
    pub x1: u32,
    /// One past the last row.
    pub y1: u32,
}

impl Rect {
    /// The empty rectangle.
    pub const EMPTY: Rect = Rect {
        x0: 0,
        y0: 0,
        x1: 0,
        y1: 0,
    };

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.x0 >= self.x1 || self.y0 >= self.y1
    }

    /// Width in pixels (0 when empty).
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }

    /// Height in pixels (0 when empty).
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }

    /// The smallest rectangle covering both.
    pub fn union(self, other: Rect) -> Rect {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        Rect {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// The whole of a `width`×`height` mask.
    pub fn full(width: u32, height: u32) -> Rect {
        Rect {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
        }
    }

    /// Grown by `n` pixels on every side, clipped to a `width`×`height` mask.
    pub fn grow(self, n: u32, width: u32, height: u32) -> Rect {
        if self.is_empty() {
            return self;
        }
        Rect {
            x0: self.x0.saturating_sub(n),
            y0: self.y0.saturating_sub(n),
            x1: (self.x1 + n).min(width),
            y1: (self.y1 + n).min(height),
        }
    }
}

/// Bounding rectangle of the set pixels (empty for an empty mask).
pub fn bounds(mask: &Mask) -> Rect {
    let b = mask.bbox();
    if b[2] == 0.0 {
        return Rect::EMPTY;
    }
    Rect {
        x0: b[0] as u32,
        y0: b[1] as u32,
        x1: (b[0] + b[2]) as u32,
        y1: (b[1] + b[3]) as u32,
    }
}

/// Closed interval of x where `k * u` lies in `[lo, hi]`; `None` when empty.
fn linear_range(k: f64, lo: f64, hi: f64) -> Option<(f64, f64)> {
    if k > 0.0 {
        Some((lo / k, hi / k))
    } else if k < 0.0 {
        Some((hi / k, lo / k))
    } else if lo <= 0.0 && 0.0 <= hi {
        Some((f64::NEG_INFINITY, f64::INFINITY))
    } else {
        None
    }
}

/// The x-interval of the capsule (points within `r` of segment `a`–`b`) on the line `y = py`.
fn capsule_row(py: f64, a: [f64; 2], b: [f64; 2], r: f64) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for c in [a, b] {
        let s = r * r - (py - c[1]) * (py - c[1]);
        if s >= 0.0 {
            let h = s.sqrt();
            lo = lo.min(c[0] - h);
            hi = hi.max(c[0] + h);
        }
    }
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let l2 = dx * dx + dy * dy;
    if l2 > 0.0 {
        // With u = x - ax, e = py - ay: the projection t = (u dx + e dy) / l2 lies in [0, 1]
        // and the distance |u dy - e dx| / sqrt(l2) is at most r.
        let e = py - a[1];
        let rl = r * l2.sqrt();
        if let (Some(p), Some(q)) = (
            linear_range(dx, -e * dy, l2 - e * dy),
            linear_range(dy, e * dx - rl, e * dx + rl),
        ) {
            let (ulo, uhi) = (p.0.max(q.0), p.1.min(q.1));
            if ulo <= uhi {
                lo = lo.min(a[0] + ulo);
                hi = hi.max(a[0] + uhi);
            }
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// Paints (`value = true`) or erases the round-brush stroke from `a` to `b`: every pixel whose
/// centre lies within `radius` of the segment. A stroke is the union of the brush discs at
/// every point of the segment, so consecutive pointer positions leave no gap at any speed;
/// `a == b` stamps one disc. Returns the rectangle of pixels that may have changed.
pub fn paint_segment(mask: &mut Mask, a: [f64; 2], b: [f64; 2], radius: f64, value: bool) -> Rect {
    let (w, h) = (mask.width(), mask.height());
    if w == 0
        || h == 0
        || !radius.is_finite()
        || radius < 0.0
        || !(a.iter().chain(&b)).all(|v| v.is_finite())
    {
        return Rect::EMPTY;
    }
    let ymin = (a[1].min(b[1]) - radius - 0.5).floor().max(0.0);
    let ymax = (a[1].max(b[1]) + radius).ceil().min(f64::from(h) - 1.0);
    if ymin > ymax {
        return Rect::EMPTY;
    }
    let width = w as usize;
    let byte = u8::from(value);
    let data = mask.data_mut();
    let mut dirty = Rect::EMPTY;
    for y in ymin as u32..=ymax as u32 {
        let Some((lo, hi)) = capsule_row(f64::from(y) + 0.5, a, b, radius) else {
            continue;
        };
        let x0 = (lo - 0.5).ceil().max(0.0);
        let x1 = (hi - 0.5).floor().min(f64::from(w) - 1.0);
        if x0 > x1 {
            continue;
        }
        let (x0, x1) = (x0 as u32, x1 as u32);
        let row = y as usize * width;
        data[row + x0 as usize..=row + x1 as usize].fill(byte);
        dirty = dirty.union(Rect {
            x0,
            y0: y,
            x1: x1 + 1,
            y1: y + 1,
        });
    }
    dirty
}

/// Stamps one round brush of `radius` centred at `c` (see [`paint_segment`]).
pub fn stamp_disc(mask: &mut Mask, c: [f64; 2], radius: f64, value: bool) -> Rect {
    paint_segment(mask, c, c, radius, value)
}

/// Rasterises polygon rings with the **even-odd** rule (a ring inside another is a hole) and
/// sets (`value = true`) or clears those pixels. Each ring is `[[x, y], …]` (at least 3
/// points) and is rasterised with pycocotools' exact rule (`dataset::polygon`), on the ring's
/// bounding box only. Returns the changed rectangle.
pub fn fill_polygons(mask: &mut Mask, rings: &[Vec<[f64; 2]>], value: bool) -> Rect {
    let Some((region, inside)) = polygon_region(mask.width(), mask.height(), rings) else {
        return Rect::EMPTY;
    };
    let (w, rw) = (mask.width() as usize, region.width() as usize);
    let byte = u8::from(value);
    let data = mask.data_mut();
    for (ry, y) in (region.y0..region.y1).enumerate() {
        let src = &inside[ry * rw..(ry + 1) * rw];
        let dst = &mut data[y as usize * w + region.x0 as usize..][..rw];
        for (d, &s) in dst.iter_mut().zip(src) {
            if s != 0 {
                *d = byte;
            }
        }
    }
    region
}

/// The even-odd interior of `rings` on their common bounding box (clipped to the mask).
fn polygon_region(width: u32, height: u32, rings: &[Vec<[f64; 2]>]) -> Option<(Rect, Vec<u8>)> {
    let rings: Vec<&Vec<[f64; 2]>> = rings
        .iter()
        .filter(|r| r.len() >= 3 && r.iter().all(|p| p[0].is_finite() && p[1].is_finite()))
        .collect();
    if rings.is_empty() || width == 0 || height == 0 {
        return None;
    }
    let (mut minx, mut miny, mut maxx, mut maxy) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for p in rings.iter().flat_map(|r| r.iter()) {
        minx = minx.min(p[0]);
        miny = miny.min(p[1]);
        maxx = maxx.max(p[0]);
        maxy = maxy.max(p[1]);
    }
    let region = Rect {
        x0: minx.floor().clamp(0.0, f64::from(width)) as u32,
        y0: miny.floor().clamp(0.0, f64::from(height)) as u32,
        x1: (maxx.ceil() + 1.0).clamp(0.0, f64::from(width)) as u32,
        y1: (maxy.ceil() + 1.0).clamp(0.0, f64::from(height)) as u32,
    };
    if region.is_empty() {
        return None;
    }
    let (rw, rh) = (region.width(), region.height());
    let mut inside = vec![0u8; rw as usize * rh as usize];
    for ring in rings {
        // Integer offsets keep pycocotools' rounding (5x + 0.5 truncated) unchanged.
        let flat: Vec<f64> = ring
            .iter()
            .flat_map(|p| [p[0] - f64::from(region.x0), p[1] - f64::from(region.y0)])
            .collect();
        let rle = polygon_to_rle(&flat, rh, rw);
        // Column-major runs: XOR every odd run into the region.
        let mut pos = 0usize;
        for (i, &c) in rle.counts.iter().enumerate() {
            let c = c as usize;
            if i % 2 == 1 {
                for p in pos..pos + c {
                    let (x, y) = (p / rh as usize, p % rh as usize);
                    inside[y * rw as usize + x] ^= 1;
                }
            }
            pos += c;
        }
    }
    Some((region, inside))
}

/// Fills the 4-connected region of unset pixels containing `(x, y)` when the mask's pixels
/// enclose it. Returns the filled rectangle, or `None` (mask unchanged) when the seed is
/// outside the mask, already set, or the region leaks to the image border (outline not closed).
pub fn flood_fill(mask: &mut Mask, x: u32, y: u32) -> Option<Rect> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    if x as usize >= w || y as usize >= h || mask.get(x, y) {
        return None;
    }
    let mut visited = vec![false; w * h];
    let mut queue = VecDeque::new();
    let mut region = Vec::new();
    let data = mask.data();
    let start = y as usize * w + x as usize;
    visited[start] = true;
    queue.push_back(start);
    while let Some(p) = queue.pop_front() {
        let (px, py) = (p % w, p / w);
        if px == 0 || py == 0 || px == w - 1 || py == h - 1 {
            return None; // touches the border: not enclosed
        }
        region.push(p);
        for q in [p - 1, p + 1, p - w, p + w] {
            if !visited[q] && data[q] == 0 {
                visited[q] = true;
                queue.push_back(q);
            }
        }
    }
    let mut dirty = Rect::EMPTY;
    let data = mask.data_mut();
    for p in region {
        data[p] = 1;
        let (px, py) = ((p % w) as u32, (p / w) as u32);
        dirty = dirty.union(Rect {
            x0: px,
            y0: py,
            x1: px + 1,
            y1: py + 1,
        });
    }
    Some(dirty)
}

/// The union of two masks of the same size; `None` when the sizes differ.
pub fn merge(a: &Mask, b: &Mask) -> Option<Mask> {
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return None;
    }
    let mut out = a.clone();
    out.union_with(b);
    Some(out)
}

/// The 8-connected components of `mask`, each as a full-size mask, ordered by their first
/// pixel in raster order (row by row). An empty mask gives no component.
pub fn split_components(mask: &Mask) -> Vec<Mask> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let data = mask.data();
    let r = bounds(mask);
    let mut label = vec![0u32; w * h];
    let mut out: Vec<Mask> = Vec::new();
    let mut stack = Vec::new();
    for y in r.y0 as usize..r.y1 as usize {
        for x in r.x0 as usize..r.x1 as usize {
            let p = y * w + x;
            if data[p] == 0 || label[p] != 0 {
                continue;
            }
            let id = out.len() as u32 + 1;
            let mut comp = Mask::new(w as u32, h as u32);
            let cd = comp.data_mut();
            label[p] = id;
            stack.push(p);
            while let Some(q) = stack.pop() {
                cd[q] = 1;
                let (qx, qy) = (q % w, q / w);
                for ny in qy.saturating_sub(1)..=(qy + 1).min(h - 1) {
                    for nx in qx.saturating_sub(1)..=(qx + 1).min(w - 1) {
                        let n = ny * w + nx;
                        if data[n] != 0 && label[n] == 0 {
                            label[n] = id;
                            stack.push(n);
                        }
                    }
                }
            }
            out.push(comp);
        }
    }
    out
}

/// Sets every unset pixel that is not 4-connected to the image border (the mask's holes).
/// Returns the changed rectangle (empty when there was no hole).
pub fn fill_holes(mask: &mut Mask) -> Rect {
    let (w, h) = (mask.width(), mask.height());
    let r = bounds(mask).grow(1, w, h);
    if r.is_empty() {
        return Rect::EMPTY;
    }
    let (rw, rh) = (r.width() as usize, r.height() as usize);
    let wu = w as usize;
    let at = |x: usize, y: usize| (r.y0 as usize + y) * wu + r.x0 as usize + x;
    let data = mask.data();
    // Background reachable from the region's border (outside the bbox all is background).
    let mut outside = vec![false; rw * rh];
    let mut stack = Vec::new();
    for y in 0..rh {
        for x in 0..rw {
            if (x == 0 || y == 0 || x == rw - 1 || y == rh - 1) && data[at(x, y)] == 0 {
                outside[y * rw + x] = true;
                stack.push((x, y));
            }
        }
    }
    while let Some((x, y)) = stack.pop() {
        let mut visit = |nx: usize, ny: usize| {
            if !outside[ny * rw + nx] && data[at(nx, ny)] == 0 {
                outside[ny * rw + nx] = true;
                stack.push((nx, ny));
            }
        };
        if x > 0 {
            visit(x - 1, y);
        }
        if x + 1 < rw {
            visit(x + 1, y);
        }
        if y > 0 {
            visit(x, y - 1);
        }
        if y + 1 < rh {
            visit(x, y + 1);
        }
    }
    let mut dirty = Rect::EMPTY;
    let data = mask.data_mut();
    for y in 0..rh {
        for x in 0..rw {
            let p = at(x, y);
            if data[p] == 0 && !outside[y * rw + x] {
                data[p] = 1;
                let (px, py) = (r.x0 + x as u32, r.y0 + y as u32);
                dirty = dirty.union(Rect {
                    x0: px,
                    y0: py,
                    x1: px + 1,
                    y1: py + 1,
                });
            }
        }
    }
    dirty
}

/// Applies a 3×3 window function over the mask's bounding box grown by one pixel. `f` gets the
/// number of set pixels among the in-image neighbours (centre included), that number of
/// in-image neighbours, and the centre value, and returns the new value.
fn window3(mask: &Mask, f: impl Fn(u32, u32, bool) -> bool) -> Mask {
    let (w, h) = (mask.width(), mask.height());
    let r = bounds(mask).grow(1, w, h);
    let mut out = mask.clone();
    if r.is_empty() {
        return out;
    }
    let wu = w as usize;
    let src = mask.data();
    let dst = out.data_mut();
    for y in r.y0..r.y1 {
        for x in r.x0..r.x1 {
            let (mut set, mut n) = (0u32, 0u32);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    n += 1;
                    set += u32::from(src[ny as usize * wu + nx as usize]);
                }
            }
            let p = y as usize * wu + x as usize;
            dst[p] = u8::from(f(set, n, src[p] != 0));
        }
    }
    out
}

/// Dilation by one pixel with a 3×3 square (a pixel is set when any 8-neighbour is set).
pub fn dilate(mask: &Mask) -> Mask {
    window3(mask, |set, _, _| set > 0)
}

/// Erosion by one pixel with a 3×3 square. Pixels outside the image count as set (OpenCV's
/// default border for `erode`), so a mask touching the image edge does not shrink from it.
pub fn erode(mask: &Mask) -> Mask {
    window3(mask, |set, n, _| set == n)
}

/// 3×3 majority filter: a pixel is set when more than half of its in-image 3×3 window is set
/// (5 of 9 inside the image). Removes one-pixel spurs and fills one-pixel notches.
pub fn smooth(mask: &Mask) -> Mask {
    window3(mask, |set, n, _| set * 2 > n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(m: &Mask) -> Vec<String> {
        m.data()
            .chunks(m.width() as usize)
            .map(|r| r.iter().map(|&v| if v != 0 { '#' } else { '.' }).collect())
            .collect()
    }

    fn assert_mask(m: &Mask, rows: &[&str]) {
        assert_eq!(
            show(m),
            rows.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn disc_of_radius_1_5_at_a_pixel_centre_is_a_3x3_square() {
        let mut m = Mask::new(5, 5);
        let dirty = stamp_disc(&mut m, [2.5, 2.5], 1.5, true);
        assert_mask(&m, &[".....", ".###.", ".###.", ".###.", "....."]);
        assert_eq!(
            dirty,
            Rect {
                x0: 1,
                y0: 1,
                x1: 4,
                y1: 4
            }
        );
    }

    #[test]
    fn disc_of_radius_2_at_a_pixel_corner_is_a_4x4_without_corners() {
        let mut m = Mask::new(6, 6);
        stamp_disc(&mut m, [3.0, 3.0], 2.0, true);
        assert_mask(
            &m,
            &["......", "..##..", ".####.", ".####.", "..##..", "......"],
        );
        // Radius 1 at a centre: the plus sign (distance exactly 1 is inside).
        let mut m = Mask::new(3, 3);
        stamp_disc(&mut m, [1.5, 1.5], 1.0, true);
        assert_mask(&m, &[".#.", "###", ".#."]);
    }

    #[test]
    fn a_fast_diagonal_stroke_leaves_no_gap_and_erasing_removes_it() {
        let mut m = Mask::new(10, 10);
        // One segment from pixel (1,1) to pixel (8,8), radius 0.5: exactly the pixels whose
        // centre is within 0.5 of the diagonal — the diagonal itself.
        let dirty = paint_segment(&mut m, [1.5, 1.5], [8.5, 8.5], 0.5, true);
        for i in 0..10 {
            for j in 0..10 {
                assert_eq!(m.get(j, i), i == j && (1..=8).contains(&i), "({j}, {i})");
            }
        }
        assert_eq!(
            dirty,
            Rect {
                x0: 1,
                y0: 1,
                x1: 9,
                y1: 9
            }
        );
        // A horizontal stroke of radius 1 is a 3-row band with round (plus-shaped) ends.
        let mut m = Mask::new(9, 5);
        paint_segment(&mut m, [2.5, 2.5], [6.5, 2.5], 1.0, true);
        assert_mask(
            &m,
            &[
                ".........",
                "..#####..",
                ".#######.",
                "..#####..",
                ".........",
            ],
        );
        paint_segment(&mut m, [4.5, 0.0], [4.5, 5.0], 0.5, false);
        assert_mask(
            &m,
            &[
                ".........",
                "..##.##..",
                ".###.###.",
                "..##.##..",
                ".........",
            ],
        );
    }

    #[test]
    fn strokes_are_clipped_to_the_mask() {
        let mut m = Mask::new(4, 3);
        let dirty = paint_segment(&mut m, [-10.0, 1.5], [1.5, 1.5], 0.5, true);
        assert_mask(&m, &["....", "##..", "...."]);
        assert_eq!(
            dirty,
            Rect {
                x0: 0,
                y0: 1,
                x1: 2,
                y1: 2
            }
        );
        assert!(paint_segment(&mut m, [50.0, 50.0], [60.0, 60.0], 2.0, true).is_empty());
        assert!(paint_segment(&mut m, [f64::NAN, 0.0], [1.0, 1.0], 2.0, true).is_empty());
    }

    #[test]
    fn polygon_with_a_hole_ring_is_even_odd_and_subtract_clears() {
        let mut m = Mask::new(8, 8);
        let outer = vec![[1.0, 1.0], [7.0, 1.0], [7.0, 7.0], [1.0, 7.0]];
        let hole = vec![[3.0, 3.0], [5.0, 3.0], [5.0, 5.0], [3.0, 5.0]];
        let dirty = fill_polygons(&mut m, &[outer.clone(), hole.clone()], true);
        assert_mask(
            &m,
            &[
                "........", ".######.", ".######.", ".##..##.", ".##..##.", ".######.", ".######.",
                "........",
            ],
        );
        assert_eq!(m.area(), 32);
        assert!(dirty.x0 <= 1 && dirty.y0 <= 1 && dirty.x1 >= 7 && dirty.y1 >= 7);
        // The same pixels as pycocotools on the whole image.
        let full =
            Mask::from_polygons(&[vec![1.0, 1.0, 7.0, 1.0, 7.0, 7.0, 1.0, 7.0]], 8, 8).unwrap();
        assert_eq!(full.area(), 36);
        // Subtract: a triangle cut out of a full square.
        let mut m = Mask::from_art(&["#####", "#####", "#####", "#####", "#####"]);
        fill_polygons(&mut m, &[vec![[1.0, 1.0], [4.0, 1.0], [4.0, 4.0]]], false);
        let removed = 25 - m.area();
        assert!(removed > 0 && removed < 9, "removed {removed}");
        assert!(!m.get(3, 1) && m.get(0, 0) && m.get(1, 3));
    }

    #[test]
    fn polygon_on_a_sub_region_equals_pycocotools_on_the_whole_image() {
        let poly = [12.3, 7.9, 30.2, 10.4, 25.7, 28.8, 14.1, 22.2, 9.6, 15.0];
        let full = Mask::from_polygons(&[poly.to_vec()], 40, 32).unwrap();
        let mut m = Mask::new(40, 32);
        let ring: Vec<[f64; 2]> = poly.chunks(2).map(|p| [p[0], p[1]]).collect();
        fill_polygons(&mut m, &[ring], true);
        assert_eq!(m, full);
    }

    #[test]
    fn flood_fill_fills_a_closed_outline_and_refuses_an_open_one() {
        let mut m = Mask::from_art(&[
            ".......", ".#####.", ".#...#.", ".#...#.", ".#####.", ".......",
        ]);
        let dirty = flood_fill(&mut m, 3, 2).unwrap();
        assert_mask(
            &m,
            &[
                ".......", ".#####.", ".#####.", ".#####.", ".#####.", ".......",
            ],
        );
        assert_eq!(
            dirty,
            Rect {
                x0: 2,
                y0: 2,
                x1: 5,
                y1: 4
            }
        );
        // A diagonal wall closes a 4-connected fill.
        let mut m = Mask::from_art(&["......", "..#...", ".#.#..", "..#...", "......"]);
        flood_fill(&mut m, 2, 2).unwrap();
        assert!(m.get(2, 2) && m.area() == 5);
        let mut open = Mask::from_art(&[".......", ".##.##.", ".#...#.", ".#####.", "......."]);
        let before = open.clone();
        assert!(flood_fill(&mut open, 3, 2).is_none());
        assert_eq!(open, before);
        assert!(flood_fill(&mut open, 1, 1).is_none(), "seed on a set pixel");
    }

    #[test]
    fn split_is_8_connected_and_merge_is_the_union() {
        let m = Mask::from_art(&["##...", "##...", "..#..", ".....", "...##"]);
        let parts = split_components(&m);
        assert_eq!(parts.len(), 2, "the diagonal pixel joins the first part");
        assert_mask(&parts[0], &["##...", "##...", "..#..", ".....", "....."]);
        assert_mask(&parts[1], &[".....", ".....", ".....", ".....", "...##"]);
        let merged = merge(&parts[0], &parts[1]).unwrap();
        assert_eq!(merged, m);
        assert!(merge(&m, &Mask::new(4, 5)).is_none());
        assert!(split_components(&Mask::new(3, 3)).is_empty());
    }

    #[test]
    fn fill_holes_fills_enclosed_background_only() {
        let mut m = Mask::from_art(&["#####..", "#..##..", "#####..", "....#..", "....#.#"]);
        let dirty = fill_holes(&mut m);
        assert_mask(&m, &["#####..", "#####..", "#####..", "....#..", "....#.#"]);
        assert_eq!(
            dirty,
            Rect {
                x0: 1,
                y0: 1,
                x1: 3,
                y1: 2
            }
        );
        assert!(fill_holes(&mut m).is_empty());
    }

    #[test]
    fn dilate_erode_and_smooth_by_one_pixel() {
        let m = Mask::from_art(&[".....", ".....", "..#..", ".....", "....."]);
        let d = dilate(&m);
        assert_mask(&d, &[".....", ".###.", ".###.", ".###.", "....."]);
        assert_eq!(erode(&d), m);
        // Erosion keeps pixels on the image edge when their in-image window is full.
        let edge = Mask::from_art(&["###..", "###..", "###..", ".....", "....."]);
        assert_mask(
            &erode(&edge),
            &["##...", "##...", ".....", ".....", "....."],
        );
        // Smoothing removes a spur and fills a notch.
        let s = Mask::from_art(&[
            ".......", ".####..", ".####.#", ".#.##..", ".####..", ".......",
        ]);
        assert_mask(
            &smooth(&s),
            &[
                ".......", "..##...", ".####..", ".####..", "..##...", ".......",
            ],
        );
    }
}
