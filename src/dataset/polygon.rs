//! Polygon rasterisation, an exact port of pycocotools `rleFrPoly` (`common/maskApi.c`).

use crate::dataset::Rle;
use crate::dataset::rle::{MaskError, check_size};

/// Upsampling factor of the boundary walk; maskApi.c rleFrPoly `double scale=5`.
const SCALE: f64 = 5.0;

/// C's `(int)v` for a double as compiled for x86-64 (`cvttsd2si`): truncation toward
/// zero, and `INT_MIN` for NaN or out-of-range values (where C is undefined).
#[inline]
fn c_int(v: f64) -> i32 {
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// Rasterises one polygon `[x1, y1, x2, y2, …]` like pycocotools `frPyObjects([poly], h, w)`.
///
/// A faithful port of maskApi.c `rleFrPoly`, including its double/int arithmetic: the
/// vertices are scaled by 5 and rounded with `(int)(5*x+.5)`, the boundary is walked
/// densely, the crossings of pixel-centre columns are downsampled back, and the sorted
/// boundary positions become runs. A trailing odd coordinate is ignored (as pycocotools'
/// `len(p)/2`); fewer than one point gives an empty mask.
pub fn polygon_to_rle(poly: &[f64], height: u32, width: u32) -> Rle {
    let k = poly.len() / 2;
    let (h, w) = (height, width);
    if k == 0 {
        return Rle {
            height,
            width,
            counts: vec![h.wrapping_mul(w)],
        };
    }
    // Upsample and get discrete points densely along the entire boundary.
    let mut x: Vec<i32> = Vec::with_capacity(k + 1);
    let mut y: Vec<i32> = Vec::with_capacity(k + 1);
    for j in 0..k {
        x.push(c_int(SCALE * poly[j * 2] + 0.5));
        y.push(c_int(SCALE * poly[j * 2 + 1] + 0.5));
    }
    x.push(x[0]);
    y.push(y[0]);
    let mut m: usize = 0;
    for j in 0..k {
        let dx = x[j].wrapping_sub(x[j + 1]).unsigned_abs();
        let dy = y[j].wrapping_sub(y[j + 1]).unsigned_abs();
        m += dx.max(dy) as usize + 1;
    }
    let mut u: Vec<i32> = Vec::with_capacity(m);
    let mut v: Vec<i32> = Vec::with_capacity(m);
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = xe.wrapping_sub(xs).wrapping_abs();
        let dy = ys.wrapping_sub(ye).wrapping_abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            f64::from(ye.wrapping_sub(ys)) / f64::from(dx)
        } else {
            f64::from(xe.wrapping_sub(xs)) / f64::from(dy)
        };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t.wrapping_add(xs));
                v.push(c_int(f64::from(ys) + s * f64::from(t) + 0.5));
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t.wrapping_add(ys));
                u.push(c_int(f64::from(xs) + s * f64::from(t) + 0.5));
            }
        }
    }
    // Get points along the y-boundary and downsample. maskApi.c computes
    // `xd=(xd+.5)/scale-.5` and `yd` alike in doubles, then tests `floor(xd)!=xd` and
    // takes `ceil(yd)`. With integer input `i`, `(i+.5)/5-.5` is exactly `(i-2)/5` when
    // that is an integer and at least 0.2 away from one otherwise, so the same results
    // come from integer arithmetic (no libm floor/ceil calls in this hot loop).
    let (hi, wi) = (i64::from(h), i64::from(w));
    let mut a: Vec<u32> = Vec::with_capacity(u.len() + 1);
    for j in 1..u.len() {
        let (uj, up) = (u[j], u[j - 1]);
        if uj == up {
            continue;
        }
        let xn = if uj < up {
            i64::from(uj)
        } else {
            i64::from(uj) - 1
        } - 2;
        // `floor(xd)!=xd || xd<0 || xd>w-1`
        if xn.rem_euclid(5) != 0 || xn < 0 || xn / 5 > wi - 1 {
            continue;
        }
        let xi = xn / 5;
        let yn = i64::from(if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) - 2;
        // `if(yd<0) yd=0; else if(yd>h) yd=h; yd=ceil(yd);`
        let yi = if yn <= 0 { 0 } else { ((yn + 4) / 5).min(hi) };
        // maskApi.c: `a[j]=(uint)(x[j]*(int)(h)+y[j]);` in int arithmetic.
        a.push((xi as i32).wrapping_mul(h as i32).wrapping_add(yi as i32) as u32);
    }
    // Compute the RLE given the y-boundary points.
    a.push(h.wrapping_mul(w));
    a.sort_unstable();
    let mut p: u32 = 0;
    for e in &mut a {
        let t = *e;
        *e = e.wrapping_sub(p);
        p = t;
    }
    let mut counts: Vec<u32> = Vec::with_capacity(a.len());
    counts.push(a[0]);
    let mut j = 1;
    while j < a.len() {
        if a[j] > 0 {
            counts.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                if let Some(last) = counts.last_mut() {
                    *last = last.wrapping_add(a[j]);
                }
                j += 1;
            }
        }
    }
    Rle {
        height,
        width,
        counts,
    }
}

/// Validates polygons and rasterises their union, like pycocotools `merge(frPyObjects(polys, h, w))`.
///
/// Errors on zero sizes, odd coordinate counts, fewer than 3 points or non-finite
/// coordinates. An empty list gives an empty mask.
pub fn polygons_to_rle(polygons: &[Vec<f64>], width: u32, height: u32) -> Result<Rle, MaskError> {
    check_size(height, width)?;
    for (index, poly) in polygons.iter().enumerate() {
        if poly.len() % 2 == 1 {
            return Err(MaskError::PolygonOddLength {
                index,
                len: poly.len(),
            });
        }
        if poly.len() < 6 {
            return Err(MaskError::PolygonTooShort {
                index,
                points: poly.len() / 2,
            });
        }
        if let Some(position) = poly.iter().position(|v| !v.is_finite()) {
            return Err(MaskError::PolygonNotFinite { index, position });
        }
    }
    match polygons {
        [] => Ok(Rle {
            height,
            width,
            counts: vec![height * width],
        }),
        [one] => Ok(polygon_to_rle(one, height, width)),
        many => {
            let rles: Vec<Rle> = many
                .iter()
                .map(|p| polygon_to_rle(p, height, width))
                .collect();
            Ok(Rle::merge_union(&rles))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_square_covers_the_pixels_left_of_and_above_its_far_edges() {
        // pycocotools: frPyObjects([[1,1,3,1,3,3,1,3]], 5, 5) sets x,y in 1..=2.
        let rle = polygon_to_rle(&[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0], 5, 5);
        assert_eq!(rle.counts, vec![6, 2, 3, 2, 12]);
    }

    #[test]
    fn small_triangle_sets_only_the_corner_pixel() {
        // pycocotools: frPyObjects([[0.2,0.2,1.4,0.3,0.8,1.6]], 3, 3) -> "018".
        let rle = polygon_to_rle(&[0.2, 0.2, 1.4, 0.3, 0.8, 1.6], 3, 3);
        assert_eq!(rle.counts, vec![0, 1, 8]);
        assert_eq!(rle.to_compressed(), "018");
    }

    #[test]
    fn band_along_the_top_border_fills_the_first_row() {
        // pycocotools: frPyObjects([[0,0,4,0,4,1,0,1]], 3, 4) -> "012000000".
        let rle = polygon_to_rle(&[0.0, 0.0, 4.0, 0.0, 4.0, 1.0, 0.0, 1.0], 3, 4);
        assert_eq!(rle.to_compressed(), "012000000");
    }

    #[test]
    fn concave_l_shape_matches_pycocotools() {
        // pycocotools: frPyObjects([[1,0,3,0,3,3,2,3,2,1,1,1]], 4, 4) -> "41322".
        let rle = polygon_to_rle(
            &[1.0, 0.0, 3.0, 0.0, 3.0, 3.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0],
            4,
            4,
        );
        assert_eq!(rle.to_compressed(), "41322");
        assert_eq!(rle.counts, vec![4, 1, 3, 3, 5]);
    }

    #[test]
    fn empty_polygon_list_gives_empty_mask() {
        assert_eq!(polygons_to_rle(&[], 3, 2).unwrap().counts, vec![6]);
    }
}
