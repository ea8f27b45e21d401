//! Mask → polygon tracing for polygon exports (COCO polygons, YOLO-seg).
//!
//! The tracer follows pixel edges ("crack following"), so vertices lie on pixel corners: pixel
//! `(x, y)` covers `[x, x+1] × [y, y+1]`. Rasterising the result with pycocotools semantics
//! (pixel centres) gives back exactly the traced region, minus its holes.
//!
//! COCO polygons cannot express holes (pycocotools unions all polygons of an annotation), so
//! only the **outer** boundary of each 4-connected component is returned; holes are filled.
//! Pixels touching only diagonally belong to different components and get separate polygons.

use crate::dataset::Mask;

/// Direction of travel along a pixel edge (image coordinates, y down).
const RIGHT: u8 = 0;
const DOWN: u8 = 1;
const LEFT: u8 = 2;
const UP: u8 = 3;

/// Outer boundaries of the 4-connected components of `mask`, as COCO polygons
/// `[x1, y1, x2, y2, ...]` in pixel-corner coordinates, clockwise on screen, with collinear
/// vertices removed. Components are ordered by their top-left pixel (raster order).
pub fn outer_contours(mask: &Mask) -> Vec<Vec<f64>> {
    let w = mask.width() as i64;
    let h = mask.height() as i64;
    let data = mask.data();
    if w == 0 || h == 0 || data.len() as i64 != w * h {
        return Vec::new();
    }
    let on = |x: i64, y: i64| x >= 0 && y >= 0 && x < w && y < h && data[(y * w + x) as usize] != 0;
    // Whether the directed edge leaving vertex (x, y) in direction `d` is a boundary edge with
    // the foreground on its right (clockwise outer loops, counter-clockwise holes).
    let edge = |x: i64, y: i64, d: u8| match d {
        RIGHT => on(x, y) && !on(x, y - 1),
        DOWN => on(x - 1, y) && !on(x, y),
        LEFT => on(x - 1, y - 1) && !on(x - 1, y),
        UP => on(x, y - 1) && !on(x - 1, y - 1),
        _ => false,
    };
    // Rightward edges already traced, indexed by the pixel below them.
    let mut seen = vec![false; (w * h) as usize];
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            if seen[i] || !edge(x, y, RIGHT) {
                continue;
            }
            let mut pts: Vec<(i64, i64)> = Vec::new();
            let (sx, sy) = (x, y);
            let (mut cx, mut cy, mut d) = (x, y, RIGHT);
            // Each step walks one edge; the loop closes within 4·w·h steps.
            let max_steps = 4 * (w + 1) * (h + 1);
            let mut steps = 0;
            loop {
                if d == RIGHT {
                    seen[(cy * w + cx) as usize] = true;
                }
                match d {
                    RIGHT => cx += 1,
                    DOWN => cy += 1,
                    LEFT => cx -= 1,
                    _ => cy -= 1, // UP
                }
                // Prefer turning right (keeps diagonal neighbours apart), then straight, then left.
                let next = [(d + 1) % 4, d, (d + 3) % 4]
                    .into_iter()
                    .find(|&n| edge(cx, cy, n));
                let Some(n) = next else { break };
                if n != d {
                    pts.push((cx, cy));
                }
                d = n;
                steps += 1;
                if (cx, cy, d) == (sx, sy, RIGHT) || steps > max_steps {
                    break;
                }
            }
            if pts.len() < 3 || signed_area2(&pts) <= 0 {
                continue; // hole (counter-clockwise) or degenerate
            }
            out.push(
                pts.iter()
                    .flat_map(|&(px, py)| [px as f64, py as f64])
                    .collect(),
            );
        }
    }
    out
}

/// Twice the signed area (positive for clockwise loops on screen, y down).
fn signed_area2(pts: &[(i64, i64)]) -> i64 {
    let n = pts.len();
    (0..n)
        .map(|i| {
            let (x0, y0) = pts[i];
            let (x1, y1) = pts[(i + 1) % n];
            x0 * y1 - x1 * y0
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_pixel_and_square() {
        let m = Mask::from_art(&["...", ".#.", "..."]);
        assert_eq!(
            outer_contours(&m),
            vec![vec![2.0, 1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 1.0]]
        );
        let m = Mask::from_art(&["##", "##"]);
        assert_eq!(
            outer_contours(&m),
            vec![vec![2.0, 0.0, 2.0, 2.0, 0.0, 2.0, 0.0, 0.0]]
        );
        assert!(outer_contours(&Mask::new(4, 4)).is_empty());
    }

    #[test]
    fn holes_dropped_diagonals_split() {
        let m = Mask::from_art(&["#####", "#...#", "#...#", "#...#", "#####"]);
        let c = outer_contours(&m);
        assert_eq!(c.len(), 1);
        let m = Mask::from_art(&["#...", ".#..", "..#.", "...#"]);
        assert_eq!(outer_contours(&m).len(), 4);
    }

    #[test]
    fn round_trip_through_rasteriser() {
        let m = Mask::from_art(&[
            "..####..", ".######.", "##.##.##", "########", ".##..##.", "..#..#..",
        ]);
        let polys = outer_contours(&m);
        let back = Mask::from_polygons(&polys, 8, 6).unwrap();
        // Holes are filled, so compare against the mask with its single hole filled.
        let mut filled = m.clone();
        filled.union_with(&back);
        assert_eq!(back, filled);
        assert!(m.iou(&back) > 0.9);
    }
}

/// Joins several polygons of one instance into a single polygon with zero-width bridges, the way
/// Ultralytics' `merge_multi_segment` does for YOLO-seg (one line per instance): components are
/// chained nearest-first, each entered and left at the vertex closest to the previous anchor,
/// and the bridges are walked back at the end. A bridge is traversed once each way, so it
/// encloses no area.
pub fn bridge_polygons(polygons: &[Vec<f64>]) -> Vec<f64> {
    let mut remaining: Vec<&Vec<f64>> = polygons.iter().filter(|p| p.len() >= 6).collect();
    if remaining.is_empty() {
        return Vec::new();
    }
    let dist2 = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2);
    let closest_vertex = |poly: &[f64], to: (f64, f64)| -> (usize, f64) {
        poly.chunks_exact(2)
            .enumerate()
            .map(|(i, p)| (i, dist2((p[0], p[1]), to)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::INFINITY))
    };
    let first = remaining.remove(0);
    let mut out = Vec::new();
    let mut anchors = Vec::new();
    let push_loop = |poly: &[f64], start: usize, out: &mut Vec<f64>| {
        let n = poly.len() / 2;
        for k in 0..=n {
            let i = (start + k) % n;
            out.extend_from_slice(&poly[2 * i..2 * i + 2]);
        }
    };
    push_loop(first, 0, &mut out);
    let mut anchor = (first[0], first[1]);
    anchors.push(anchor);
    while !remaining.is_empty() {
        // The remaining component with the vertex nearest to the current anchor.
        let (pos, (start, _)) = remaining
            .iter()
            .map(|p| closest_vertex(p, anchor))
            .enumerate()
            .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
            .unwrap_or((0, (0, 0.0)));
        let poly = remaining.remove(pos);
        push_loop(poly, start, &mut out);
        anchor = (poly[2 * start], poly[2 * start + 1]);
        anchors.push(anchor);
    }
    // Walk the bridges back to the first anchor (skipping the last, where we stand).
    for &(x, y) in anchors.iter().rev().skip(1) {
        out.extend_from_slice(&[x, y]);
    }
    out
}

#[cfg(test)]
mod bridge_tests {
    use super::*;

    #[test]
    fn bridged_components_rasterise_to_the_union_of_the_parts() {
        let mut mask = Mask::new(40, 30);
        for (x0, y0, side) in [(2, 2, 6), (20, 5, 8), (10, 20, 5)] {
            for y in y0..y0 + side {
                for x in x0..x0 + side {
                    mask.set(x, y, true);
                }
            }
        }
        let polys = outer_contours(&mask);
        assert_eq!(polys.len(), 3);
        let bridged = bridge_polygons(&polys);
        let back = Mask::from_polygons(&[bridged], 40, 30).unwrap();
        assert!(back.iou(&mask) > 0.97, "IoU {}", back.iou(&mask));
        assert_eq!(back.area(), mask.area());
    }

    #[test]
    fn a_single_polygon_is_closed_and_unchanged_in_area() {
        let square = vec![1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0];
        let bridged = bridge_polygons(std::slice::from_ref(&square));
        assert_eq!(&bridged[..8], &square[..]);
        let a = Mask::from_polygons(&[square], 8, 8).unwrap();
        let b = Mask::from_polygons(&[bridged], 8, 8).unwrap();
        assert_eq!(a, b);
    }
}
