//! COCO run-length encoding, byte-for-byte like pycocotools (`common/maskApi.c`).
//!
//! An [`Rle`] holds the runs of a binary mask read in column-major (Fortran) order,
//! starting with a run of zeros (which may be empty). The compressed string form is the
//! one stored in COCO JSON `segmentation.counts`.

/// What went wrong building or decoding a mask.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// The pixel buffer length does not match `width * height`.
    #[error("pixel buffer has {got} bytes, a {width}x{height} mask needs {expected}")]
    BufferLength {
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        expected: usize,
        /// Mask width.
        width: u32,
        /// Mask height.
        height: u32,
    },
    /// Width or height is zero.
    #[error("mask size {width}x{height} is empty: width and height must be at least 1")]
    EmptySize {
        /// Mask width.
        width: u32,
        /// Mask height.
        height: u32,
    },
    /// RLE runs do not add up to the mask's pixel count.
    #[error("RLE runs cover {total} pixels, but a {width}x{height} mask has {expected}")]
    RunTotal {
        /// Sum of all runs.
        total: u64,
        /// `width * height`.
        expected: u64,
        /// Mask width.
        width: u32,
        /// Mask height.
        height: u32,
    },
    /// A character of a compressed RLE string is outside `'0'..='o'`.
    #[error("RLE string has invalid character {ch:?} at byte {position} (allowed: '0'..='o')")]
    BadRleChar {
        /// The offending character (first byte of it for non-ASCII).
        ch: char,
        /// Byte offset in the string.
        position: usize,
    },
    /// A compressed RLE string ends in the middle of a value.
    #[error("RLE string ends inside the value that starts at byte {position}")]
    TruncatedRle {
        /// Byte offset where the unfinished value starts.
        position: usize,
    },
    /// A decoded run is negative or does not fit in 32 bits.
    #[error("RLE value starting at byte {position} gives a run outside 0..=4294967295")]
    RunOutOfRange {
        /// Byte offset where the value starts.
        position: usize,
    },
    /// A polygon has fewer than three points.
    #[error("polygon {index} has {points} points, needs at least 3")]
    PolygonTooShort {
        /// Index of the polygon in the list.
        index: usize,
        /// Number of points it has.
        points: usize,
    },
    /// A polygon has an odd number of coordinates.
    #[error("polygon {index} has an odd number of coordinates ({len}); expected x,y pairs")]
    PolygonOddLength {
        /// Index of the polygon in the list.
        index: usize,
        /// Number of coordinates it has.
        len: usize,
    },
    /// A polygon coordinate is NaN or infinite.
    #[error("polygon {index} has a non-finite coordinate at position {position}")]
    PolygonNotFinite {
        /// Index of the polygon in the list.
        index: usize,
        /// Index of the coordinate.
        position: usize,
    },
}

/// First character of the compressed alphabet (`'0'`); maskApi.c rleToString uses chars 48..=111.
const CHAR_BASE: u8 = 48;
/// Largest valid character of the compressed alphabet (`'o'`), 48 + 63; maskApi.c rleToString.
const CHAR_MAX: u8 = 111;
/// Payload bits per character; maskApi.c rleToString (`x & 0x1f`, `x >>= 5`).
const PAYLOAD_MASK: i64 = 0x1f;
/// Sign bit of the last character of a value; maskApi.c rleToString (`c & 0x10`).
const SIGN_BIT: i64 = 0x10;
/// Continuation bit of a character; maskApi.c rleToString (`c |= 0x20`).
const MORE_BIT: i64 = 0x20;
/// Characters one value may use: 7 × 5 bits covers any `u32` delta (maskApi.c itself breaks past 6).
const MAX_CHARS_PER_VALUE: u32 = 7;

/// Column-major run-length encoding of a binary mask, exactly pycocotools' internal `RLE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rle {
    /// Mask height in pixels.
    pub height: u32,
    /// Mask width in pixels.
    pub width: u32,
    /// Alternating run lengths in column-major order, zeros first.
    pub counts: Vec<u32>,
}

/// Rejects zero-sized masks with a clear error.
pub(crate) fn check_size(height: u32, width: u32) -> Result<(), MaskError> {
    if height == 0 || width == 0 {
        return Err(MaskError::EmptySize { width, height });
    }
    Ok(())
}

/// Checks that `counts` covers exactly `height * width` pixels.
fn check_total(height: u32, width: u32, counts: &[u32]) -> Result<(), MaskError> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let expected = u64::from(height) * u64::from(width);
    if total != expected {
        return Err(MaskError::RunTotal {
            total,
            expected,
            width,
            height,
        });
    }
    Ok(())
}

impl Rle {
    /// Builds an RLE from uncompressed COCO counts (`{"size": [h, w], "counts": [...]}`).
    pub fn from_uncompressed(height: u32, width: u32, counts: Vec<u32>) -> Result<Rle, MaskError> {
        check_size(height, width)?;
        check_total(height, width, &counts)?;
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Encodes the counts as a COCO compressed string (maskApi.c `rleToString`).
    ///
    /// Each value is written in 5-bit groups, low first, as chars `'0'..='o'`; from the
    /// fourth value on, the difference to the value two places back is written instead.
    pub fn to_compressed(&self) -> String {
        let mut out = Vec::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = i64::from(c);
            // maskApi.c rleToString: `if(i>2) x-=(long) R->cnts[i-2];`
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut ch = x & PAYLOAD_MASK;
                x >>= 5;
                let more = if ch & SIGN_BIT != 0 { x != -1 } else { x != 0 };
                if more {
                    ch |= MORE_BIT;
                }
                // ch < 64 here, so the cast is lossless.
                out.push(ch as u8 + CHAR_BASE);
                if !more {
                    break;
                }
            }
        }
        // Every byte is in 48..=111, i.e. ASCII.
        out.into_iter().map(char::from).collect()
    }

    /// Decodes a COCO compressed string (maskApi.c `rleFrString`), validating it.
    ///
    /// Errors on zero sizes, characters outside `'0'..='o'`, a string that ends inside a
    /// value, runs that come out negative or too long, and runs not summing to `h * w`.
    pub fn from_compressed(height: u32, width: u32, s: &str) -> Result<Rle, MaskError> {
        check_size(height, width)?;
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
        let mut p = 0usize;
        while p < bytes.len() {
            let start = p;
            let mut x: i64 = 0;
            let mut k: u32 = 0;
            loop {
                let Some(&b) = bytes.get(p) else {
                    return Err(MaskError::TruncatedRle { position: start });
                };
                if !(CHAR_BASE..=CHAR_MAX).contains(&b) {
                    return Err(MaskError::BadRleChar {
                        ch: char::from(b),
                        position: p,
                    });
                }
                if k == MAX_CHARS_PER_VALUE {
                    return Err(MaskError::RunOutOfRange { position: start });
                }
                let c = i64::from(b - CHAR_BASE);
                x |= (c & PAYLOAD_MASK) << (5 * k);
                let more = c & MORE_BIT != 0;
                p += 1;
                k += 1;
                if !more {
                    // maskApi.c rleFrString: `if(!more && (c & 0x10)) x |= -1 << 5*k;`
                    if c & SIGN_BIT != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            let m = counts.len();
            if m > 2 {
                x += i64::from(counts[m - 2]);
            }
            let run = u32::try_from(x).map_err(|_| MaskError::RunOutOfRange { position: start })?;
            counts.push(run);
        }
        check_total(height, width, &counts)?;
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Number of foreground pixels (maskApi.c `rleArea`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| u64::from(c))
            .sum()
    }

    /// COCO bounding box `[x, y, w, h]` (maskApi.c `rleToBbox`, pycocotools ≥ 2.0.7); zeros when empty.
    pub fn to_bbox(&self) -> [f64; 4] {
        let h = u64::from(self.height);
        let w = u64::from(self.width);
        // maskApi.c rleToBbox: only whole (background, foreground) pairs count.
        let m = (self.counts.len() / 2) * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u64, 0u64);
        let mut cc: u64 = 0;
        for (j, &run) in self.counts[..m].iter().enumerate() {
            let start = cc;
            cc += u64::from(run);
            if j % 2 == 0 || run == 0 {
                continue;
            }
            let (x_start, y_start) = (start / h, start % h);
            let (x_end, y_end) = ((cc - 1) / h, (cc - 1) % h);
            xs = xs.min(x_start);
            xe = xe.max(x_end);
            if x_start < x_end {
                ys = 0;
                ye = h - 1;
            } else {
                ys = ys.min(y_start);
                ye = ye.max(y_end);
            }
        }
        // maskApi.c stores `xe-xs+1` in uint arithmetic; with no foreground run (all
        // foreground runs empty) that wraps, which we mirror via wrapping u32 math.
        let width = (xe as u32).wrapping_sub(xs as u32).wrapping_add(1);
        let height = (ye as u32).wrapping_sub(ys as u32).wrapping_add(1);
        [xs as f64, ys as f64, f64::from(width), f64::from(height)]
    }

    /// Union of RLEs of one size (maskApi.c `rleMerge` with `intersect=0`).
    ///
    /// Like pycocotools, an empty slice or mismatched sizes give a 0×0 RLE with no counts.
    pub fn merge_union(rles: &[Rle]) -> Rle {
        merge(rles, false)
    }

    /// Intersection of RLEs of one size (maskApi.c `rleMerge` with `intersect=1`).
    ///
    /// Like pycocotools, an empty slice or mismatched sizes give a 0×0 RLE with no counts.
    pub fn merge_intersection(rles: &[Rle]) -> Rle {
        merge(rles, true)
    }

    /// Intersection over union (maskApi.c `rleIou`, not crowd).
    ///
    /// Like pycocotools: 0 when the boxes do not overlap, -1 when sizes differ but boxes
    /// overlap, 0 when the masks share no pixel.
    pub fn iou(&self, other: &Rle) -> f64 {
        if bbox_iou(&self.to_bbox(), &other.to_bbox(), false) <= 0.0 {
            return 0.0;
        }
        if self.height != other.height || self.width != other.width {
            return -1.0;
        }
        let (mut a, mut b) = (Runs::new(&self.counts), Runs::new(&other.counts));
        let (mut inter, mut uni) = (0u64, 0u64);
        loop {
            let c = a.left.min(b.left);
            if a.on || b.on {
                uni += u64::from(c);
                if a.on && b.on {
                    inter += u64::from(c);
                }
            }
            a.advance(c);
            b.advance(c);
            if a.left == 0 && b.left == 0 {
                break;
            }
        }
        if inter == 0 {
            return 0.0;
        }
        inter as f64 / uni as f64
    }
}

/// A walk over the runs of one RLE in steps shared with another walk (maskApi.c `rleIou`,
/// `rleMerge`: `ca`, `ka`, `va`).
struct Runs<'a> {
    counts: &'a [u32],
    /// Pixels left in the current run.
    left: u32,
    /// Index of the next run.
    next: usize,
    /// Whether the current run is foreground.
    on: bool,
}

impl<'a> Runs<'a> {
    fn new(counts: &'a [u32]) -> Self {
        Self {
            counts,
            left: counts.first().copied().unwrap_or(0),
            next: 1,
            on: false,
        }
    }

    /// Consumes `c` pixels (at most [`Self::left`]), moving on to the next run when this one
    /// is used up.
    fn advance(&mut self, c: u32) {
        self.left -= c;
        if self.left == 0 && self.next < self.counts.len() {
            self.left = self.counts[self.next];
            self.next += 1;
            self.on = !self.on;
        }
    }
}

/// IoU of two COCO `[x, y, w, h]` boxes, maskApi.c `bbIou`; with `crowd` the union is the
/// detection `d`'s area.
pub fn bbox_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// Port of maskApi.c `rleMerge`.
fn merge(rles: &[Rle], intersect: bool) -> Rle {
    let Some(first) = rles.first() else {
        return Rle {
            height: 0,
            width: 0,
            counts: Vec::new(),
        };
    };
    let (h, w) = (first.height, first.width);
    if rles.iter().any(|r| r.height != h || r.width != w) {
        return Rle {
            height: 0,
            width: 0,
            counts: Vec::new(),
        };
    }
    let mut acc = first.counts.clone();
    let mut out: Vec<u32> = Vec::with_capacity(acc.len());
    for b in &rles[1..] {
        out.clear();
        let (mut a, mut b) = (Runs::new(&acc), Runs::new(&b.counts));
        let mut v = false;
        let mut cc: u32 = 0;
        loop {
            let c = a.left.min(b.left);
            cc += c;
            a.advance(c);
            b.advance(c);
            let done = a.left == 0 && b.left == 0;
            let vp = v;
            v = if intersect {
                a.on && b.on
            } else {
                a.on || b.on
            };
            if v != vp || done {
                out.push(cc);
                cc = 0;
            }
            if done {
                break;
            }
        }
        std::mem::swap(&mut acc, &mut out);
    }
    Rle {
        height: h,
        width: w,
        counts: acc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rle(h: u32, w: u32, counts: &[u32]) -> Rle {
        Rle::from_uncompressed(h, w, counts.to_vec()).unwrap()
    }

    #[test]
    fn small_counts_encode_to_one_char_each() {
        assert_eq!(rle(2, 2, &[1, 2, 1]).to_compressed(), "121");
    }

    #[test]
    fn fourth_value_is_written_as_delta_to_second() {
        // counts 3,1,2,2 -> 3,1,2 then 2-1=1.
        assert_eq!(rle(4, 2, &[3, 1, 2, 2]).to_compressed(), "3121");
    }

    #[test]
    fn negative_delta_uses_sign_bit() {
        // 4th value 1, two back is 5: delta -4 -> (-4 & 0x1f) = 28 = 'L'.
        let r = rle(3, 4, &[0, 5, 6, 1]);
        assert_eq!(r.to_compressed(), "056L");
        assert_eq!(Rle::from_compressed(3, 4, "056L").unwrap(), r);
    }

    #[test]
    fn large_counts_use_continuation_chars() {
        // 640*480 = 307200 zeros: the empty mask pycocotools writes as `PP\9`.
        let r = rle(480, 640, &[307_200]);
        assert_eq!(r.to_compressed(), "PP\\9");
        assert_eq!(Rle::from_compressed(480, 640, "PP\\9").unwrap(), r);
    }

    #[test]
    fn decoding_rejects_bad_chars_truncation_and_wrong_totals() {
        assert!(matches!(
            Rle::from_compressed(2, 2, "1 21"),
            Err(MaskError::BadRleChar { position: 1, .. })
        ));
        assert!(matches!(
            Rle::from_compressed(10, 10, "P"),
            Err(MaskError::TruncatedRle { position: 0 })
        ));
        assert!(matches!(
            Rle::from_compressed(2, 2, "12"),
            Err(MaskError::RunTotal { total: 3, .. })
        ));
        assert!(matches!(
            Rle::from_compressed(0, 2, ""),
            Err(MaskError::EmptySize { .. })
        ));
        assert!(matches!(
            Rle::from_compressed(3, 4, "05L"),
            Err(MaskError::RunOutOfRange { .. })
        ));
    }

    #[test]
    fn area_sums_odd_runs() {
        assert_eq!(rle(3, 3, &[1, 2, 3, 3]).area(), 5);
        assert_eq!(rle(3, 3, &[9]).area(), 0);
    }

    #[test]
    fn bbox_of_run_inside_one_column_is_tight() {
        // 4x3 (h=4): column 1 rows 1..=2.
        assert_eq!(rle(4, 3, &[5, 2, 5]).to_bbox(), [1.0, 1.0, 1.0, 2.0]);
    }

    #[test]
    fn bbox_of_run_crossing_columns_spans_full_height() {
        // h=4: pixels 3..=4 are (x0,y3) and (x1,y0).
        assert_eq!(rle(4, 3, &[3, 2, 7]).to_bbox(), [0.0, 0.0, 2.0, 4.0]);
    }

    #[test]
    fn bbox_of_empty_mask_is_zero() {
        assert_eq!(rle(4, 3, &[12]).to_bbox(), [0.0; 4]);
    }

    #[test]
    fn union_merges_overlapping_runs() {
        let a = rle(1, 6, &[1, 2, 3]);
        let b = rle(1, 6, &[2, 2, 2]);
        assert_eq!(
            Rle::merge_union(&[a.clone(), b.clone()]).counts,
            vec![1, 3, 2]
        );
        assert_eq!(Rle::merge_intersection(&[a, b]).counts, vec![2, 1, 3]);
    }

    #[test]
    fn union_of_mask_starting_with_foreground_keeps_leading_zero_run() {
        let a = rle(1, 4, &[0, 1, 3]);
        let b = rle(1, 4, &[0, 2, 2]);
        assert_eq!(Rle::merge_union(&[a, b]).counts, vec![0, 2, 2]);
    }

    #[test]
    fn union_of_mismatched_sizes_is_empty_like_pycocotools() {
        let merged = Rle::merge_union(&[rle(1, 4, &[4]), rle(2, 2, &[4])]);
        assert_eq!(
            (merged.height, merged.width, merged.counts.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn iou_counts_shared_pixels() {
        let a = rle(1, 6, &[1, 2, 3]);
        let b = rle(1, 6, &[2, 2, 2]);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.iou(&rle(1, 6, &[4, 2])), 0.0);
    }
}
