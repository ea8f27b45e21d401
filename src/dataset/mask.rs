//! Binary masks: one byte per pixel, row-major, convertible to and from COCO RLE and polygons.

use std::fmt;

use crate::dataset::{Rle, polygon};

pub use crate::dataset::rle::MaskError;

/// A binary mask: `height` rows of `width` bytes, each 0 or 1.
#[derive(Clone, PartialEq, Eq)]
pub struct Mask {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Mask {{ {}x{}, area: {} }}",
            self.width,
            self.height,
            self.area()
        )
    }
}

impl Mask {
    /// A mask from rows of `#` (set) and `.` (unset), for tests.
    #[cfg(test)]
    pub(crate) fn from_art(rows: &[&str]) -> Mask {
        let h = rows.len() as u32;
        let w = rows.first().map_or(0, |r| r.len()) as u32;
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        Mask::from_vec(w, h, data).expect("rows of equal length")
    }

    /// An all-zero mask.
    pub fn new(width: u32, height: u32) -> Self {
        Mask {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Wraps a row-major pixel buffer; any nonzero byte becomes 1.
    pub fn from_vec(width: u32, height: u32, mut data: Vec<u8>) -> Result<Self, MaskError> {
        crate::dataset::rle::check_size(height, width)?;
        let expected = width as usize * height as usize;
        if data.len() != expected {
            return Err(MaskError::BufferLength {
                got: data.len(),
                expected,
                width,
                height,
            });
        }
        for v in &mut data {
            *v = u8::from(*v != 0);
        }
        Ok(Mask {
            width,
            height,
            data,
        })
    }

    /// Binarises a grayscale image: `v > 0` when its maximum is at most 1, else `v >= 128`.
    ///
    /// 1-bit PNGs decode to 0/255 or 0/1 depending on the path, so both are accepted.
    pub fn from_gray(img: &image::GrayImage) -> Self {
        let raw: &[u8] = img.as_raw();
        let max = raw.iter().copied().max().unwrap_or(0);
        let threshold = if max <= 1 { 1 } else { 128 };
        Mask {
            width: img.width(),
            height: img.height(),
            data: raw.iter().map(|&v| u8::from(v >= threshold)).collect(),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row-major pixels, each 0 or 1.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Row-major pixels for in-place editing (`dataset::maskops`); write only 0 or 1.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Whether pixel `(x, y)` is set.
    ///
    /// # Panics
    /// If `(x, y)` is outside the mask.
    pub fn get(&self, x: u32, y: u32) -> bool {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {self:?}"
        );
        self.data[y as usize * self.width as usize + x as usize] != 0
    }

    /// Sets or clears pixel `(x, y)`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the mask.
    pub fn set(&mut self, x: u32, y: u32, on: bool) {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {self:?}"
        );
        self.data[y as usize * self.width as usize + x as usize] = u8::from(on);
    }

    /// Number of set pixels.
    pub fn area(&self) -> u64 {
        // Chunked u32 sums vectorise well and cannot overflow (chunk < 2^24 bytes).
        self.data
            .chunks(1 << 16)
            .map(|c| u64::from(c.iter().map(|&v| u32::from(v)).sum::<u32>()))
            .sum()
    }

    /// COCO box `[x, y, w, h]`, identical to pycocotools `toBbox` of [`Mask::to_rle`]; zeros when empty.
    pub fn bbox(&self) -> [f64; 4] {
        let w = self.width as usize;
        if w == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut xe, mut ys, mut ye) = (usize::MAX, 0usize, usize::MAX, 0usize);
        for (y, row) in self.data.chunks_exact(w).enumerate() {
            let Some(first) = row.iter().position(|&v| v != 0) else {
                continue;
            };
            let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
            xs = xs.min(first);
            xe = xe.max(last);
            ys = ys.min(y);
            ye = y;
        }
        if xs == usize::MAX {
            return [0.0; 4];
        }
        [
            xs as f64,
            ys as f64,
            (xe - xs + 1) as f64,
            (ye - ys + 1) as f64,
        ]
    }

    /// Nearest-neighbour resize with exactly PIL's `Image.resize(size, NEAREST)` pixels.
    ///
    /// Rule (Pillow `ImagingScaleAffine`): with `scale = src / dst` as `f64`, the source
    /// index of destination `i` is `floor(scale/2 + scale + … + scale)` (i.e. about
    /// `floor((i + 0.5) * scale)`, accumulated by repeated addition like Pillow does).
    /// This samples pixel centres; OpenCV's `INTER_NEAREST` uses `floor(i * scale)`
    /// instead and can differ by one pixel. A zero target size gives an empty mask.
    pub fn resize_nearest(&self, width: u32, height: u32) -> Mask {
        let mut out = Mask::new(width, height);
        if width == 0 || height == 0 || self.width == 0 || self.height == 0 {
            return out;
        }
        if width == self.width && height == self.height {
            return self.clone();
        }
        let xtab = pil_nearest_table(self.width, width);
        let ytab = pil_nearest_table(self.height, height);
        let (sw, dw) = (self.width as usize, width as usize);
        for (row, &sy) in out.data.chunks_exact_mut(dw).zip(&ytab) {
            let src = &self.data[sy * sw..(sy + 1) * sw];
            for (o, &sx) in row.iter_mut().zip(&xtab) {
                *o = src[sx];
            }
        }
        out
    }

    /// Column-major RLE of this mask (pycocotools `encode`).
    pub fn to_rle(&self) -> Rle {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            // maskApi.c rleEncode on an empty buffer emits a single zero run.
            return Rle {
                height: self.height,
                width: self.width,
                counts: vec![0],
            };
        }
        let mut enc = RunEncoder {
            counts: Vec::with_capacity(2 * w + 2),
            prev: 0,
            run: 0,
        };
        // Columns in blocks of 8: one u64 load per row serves 8 columns, and rows where
        // none of them change are skipped with one compare. The row index of every
        // change is noted per column, then the columns are emitted in order.
        let mut changes: [Vec<u32>; 8] = Default::default();
        let full_blocks = w / 8;
        for block in 0..full_blocks {
            let x = block * 8;
            for list in &mut changes {
                list.clear();
            }
            let first = load8(&self.data[x..x + 8]);
            let mut prev_word = first;
            for (y, row) in self.data.chunks_exact(w).enumerate().skip(1) {
                let word = load8(&row[x..x + 8]);
                let mut diff = word ^ prev_word;
                while diff != 0 {
                    let c = (diff.trailing_zeros() / 8) as usize;
                    changes[c].push(y as u32);
                    diff &= !(0xff_u64 << (c * 8));
                }
                prev_word = word;
            }
            for (c, list) in changes.iter().enumerate() {
                enc.column(first.to_le_bytes()[c], list, self.height);
            }
        }
        for x in full_blocks * 8..w {
            for &v in self.data[x..].iter().step_by(w) {
                enc.pixel(v);
            }
        }
        let mut counts = enc.counts;
        counts.push(enc.run);
        Rle {
            height: self.height,
            width: self.width,
            counts,
        }
    }

    /// Decodes an RLE (pycocotools `decode`); errors on zero sizes or runs not covering the mask.
    pub fn from_rle(rle: &Rle) -> Result<Mask, MaskError> {
        crate::dataset::rle::check_size(rle.height, rle.width)?;
        let (w, h) = (rle.width as usize, rle.height as usize);
        let total: u64 = rle.counts.iter().map(|&c| u64::from(c)).sum();
        let expected = w as u64 * h as u64;
        if total != expected {
            return Err(MaskError::RunTotal {
                total,
                expected,
                width: rle.width,
                height: rle.height,
            });
        }
        let mut data = vec![0u8; w * h];
        let mut pos = 0usize;
        for (i, &c) in rle.counts.iter().enumerate() {
            let c = c as usize;
            if i % 2 == 1 && c > 0 {
                fill_column_major_run(&mut data, w, h, pos, c);
            }
            pos += c;
        }
        Ok(Mask {
            width: rle.width,
            height: rle.height,
            data,
        })
    }

    /// Rasterises COCO polygons like pycocotools `merge(frPyObjects(polygons, h, w))`.
    ///
    /// Each polygon is `[x1, y1, x2, y2, …]` in pixels; an empty list gives an empty mask.
    pub fn from_polygons(
        polygons: &[Vec<f64>],
        width: u32,
        height: u32,
    ) -> Result<Mask, MaskError> {
        let rle = polygon::polygons_to_rle(polygons, width, height)?;
        Mask::from_rle(&rle)
    }

    /// Intersection over union; 0 when disjoint, -1 when sizes differ (pycocotools `iou`).
    pub fn iou(&self, other: &Mask) -> f64 {
        if self.width != other.width || self.height != other.height {
            return self.to_rle().iou(&other.to_rle());
        }
        let (mut inter, mut union) = (0u64, 0u64);
        for (a, b) in self.data.chunks(1 << 16).zip(other.data.chunks(1 << 16)) {
            let (mut i, mut u) = (0u32, 0u32);
            for (&p, &q) in a.iter().zip(b) {
                i += u32::from(p & q);
                u += u32::from(p | q);
            }
            inter += u64::from(i);
            union += u64::from(u);
        }
        if inter == 0 {
            return 0.0;
        }
        inter as f64 / union as f64
    }

    /// Sets every pixel that is set in `other`.
    ///
    /// # Panics
    /// If the sizes differ.
    pub fn union_with(&mut self, other: &Mask) {
        assert!(
            self.width == other.width && self.height == other.height,
            "union_with: {self:?} and {other:?} differ in size"
        );
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a |= b;
        }
    }

    /// A grayscale image with 0 for background and 255 for foreground.
    pub fn to_gray(&self) -> image::GrayImage {
        let mut img = image::GrayImage::new(self.width, self.height);
        for (o, &v) in img.iter_mut().zip(&self.data) {
            *o = v * 255;
        }
        img
    }
}

/// Pillow `ImagingScaleAffine` source indices for one axis (`xo = a0*0.5; xo += a0`).
fn pil_nearest_table(src: u32, dst: u32) -> Vec<usize> {
    // Pillow _resize: `a[0] = (double)(box[2] - box[0]) / xsize;`
    let scale = f64::from(src) / f64::from(dst);
    let mut pos = scale * 0.5;
    let last = src as usize - 1;
    let mut tab = Vec::with_capacity(dst as usize);
    for _ in 0..dst {
        // Pillow COORD(v): `v < 0 ? -1 : (int)v`; pos is never negative here and never
        // reaches `src`, the clamp only guards rounding.
        tab.push((pos as usize).min(last));
        pos += scale;
    }
    tab
}

/// Little-endian u64 of 8 bytes (byte `i` in bits `8i..8i+8`).
#[inline]
fn load8(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_le_bytes(b)
}

/// Builds maskApi.c `rleEncode` runs from pixels visited in column-major order.
struct RunEncoder {
    counts: Vec<u32>,
    prev: u8,
    run: u32,
}

impl RunEncoder {
    /// Adds one pixel.
    #[inline]
    fn pixel(&mut self, v: u8) {
        if v != self.prev {
            self.counts.push(self.run);
            self.run = 0;
            self.prev = v;
        }
        self.run += 1;
    }

    /// Adds a whole column of `height` pixels given its first value and the rows where it flips.
    #[inline]
    fn column(&mut self, first: u8, flips: &[u32], height: u32) {
        if first != self.prev {
            self.counts.push(self.run);
            self.run = 0;
            self.prev = first;
        }
        let mut last = 0u32;
        for &y in flips {
            self.counts.push(self.run + (y - last));
            self.run = 0;
            self.prev ^= 1;
            last = y;
        }
        self.run += height - last;
    }
}

/// Sets the column-major pixel range `start..start+len` in a row-major buffer.
fn fill_column_major_run(data: &mut [u8], w: usize, h: usize, start: usize, len: usize) {
    let (mut x, mut y) = (start / h, start % h);
    let mut left = len;
    while left > 0 {
        let n = left.min(h - y);
        data[y * w + x..]
            .iter_mut()
            .step_by(w)
            .take(n)
            .for_each(|p| *p = 1);
        left -= n;
        x += 1;
        y = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_rejects_wrong_length_and_normalises_values() {
        let err = Mask::from_vec(2, 2, vec![0; 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pixel buffer has 3 bytes, a 2x2 mask needs 4"
        );
        let m = Mask::from_vec(2, 1, vec![0, 7]).unwrap();
        assert_eq!(m.data(), &[0, 1]);
        assert!(matches!(
            Mask::from_vec(0, 3, vec![]),
            Err(MaskError::EmptySize { .. })
        ));
    }

    #[test]
    fn rle_runs_go_down_columns_first() {
        let m = Mask::from_art(&["#..", "##."]);
        // Column-major: 1,1 | 0,1 | 0,0 -> runs 0,2,1,1,2.
        assert_eq!(m.to_rle().counts, vec![0, 2, 1, 1, 2]);
        assert_eq!(Mask::from_rle(&m.to_rle()).unwrap(), m);
    }

    #[test]
    fn blocked_encoder_agrees_with_a_plain_column_scan() {
        // Widths below, at and past the 8-column blocks, with a fixed pseudo-random pattern.
        for (w, h) in [(1, 5), (7, 3), (8, 4), (9, 6), (17, 11), (24, 1), (33, 9)] {
            let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(w * 31 + h);
            let data: Vec<u8> = (0..w * h)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    u8::from(state.is_multiple_of(3))
                })
                .collect();
            let m = Mask::from_vec(w, h, data).unwrap();
            let mut counts = vec![];
            let (mut prev, mut run) = (false, 0u32);
            for x in 0..w {
                for y in 0..h {
                    if m.get(x, y) != prev {
                        counts.push(run);
                        run = 0;
                        prev = !prev;
                    }
                    run += 1;
                }
            }
            counts.push(run);
            assert_eq!(m.to_rle().counts, counts, "{w}x{h}");
            assert_eq!(Mask::from_rle(&m.to_rle()).unwrap(), m, "{w}x{h}");
        }
    }

    #[test]
    fn full_and_empty_masks_round_trip() {
        let full = Mask::from_vec(3, 2, vec![1; 6]).unwrap();
        assert_eq!(full.to_rle().counts, vec![0, 6]);
        assert_eq!(Mask::from_rle(&full.to_rle()).unwrap(), full);
        let empty = Mask::new(3, 2);
        assert_eq!(empty.to_rle().counts, vec![6]);
        assert_eq!(Mask::from_rle(&empty.to_rle()).unwrap(), empty);
    }

    #[test]
    fn from_rle_rejects_runs_that_do_not_cover_the_mask() {
        let rle = Rle {
            height: 2,
            width: 2,
            counts: vec![1, 2],
        };
        assert_eq!(
            Mask::from_rle(&rle).unwrap_err().to_string(),
            "RLE runs cover 3 pixels, but a 2x2 mask has 4"
        );
    }

    #[test]
    fn bbox_is_tight_around_set_pixels() {
        let m = Mask::from_art(&["....", ".#..", "..#."]);
        assert_eq!(m.bbox(), [1.0, 1.0, 2.0, 2.0]);
        assert_eq!(m.bbox(), m.to_rle().to_bbox());
        assert_eq!(Mask::new(4, 3).bbox(), [0.0; 4]);
    }

    #[test]
    fn area_counts_set_pixels() {
        assert_eq!(Mask::from_art(&["#.#", ".#."]).area(), 3);
    }

    #[test]
    fn get_and_set_address_column_then_row() {
        let mut m = Mask::new(3, 2);
        m.set(2, 1, true);
        assert!(m.get(2, 1));
        assert_eq!(m.data(), &[0, 0, 0, 0, 0, 1]);
        m.set(2, 1, false);
        assert_eq!(m.area(), 0);
    }

    #[test]
    fn gray_images_with_0_1_or_0_255_binarise_the_same() {
        let a = image::GrayImage::from_raw(2, 1, vec![0, 1]).unwrap();
        let b = image::GrayImage::from_raw(2, 1, vec![0, 255]).unwrap();
        let c = image::GrayImage::from_raw(3, 1, vec![1, 127, 128]).unwrap();
        assert_eq!(Mask::from_gray(&a).data(), &[0, 1]);
        assert_eq!(Mask::from_gray(&b).data(), &[0, 1]);
        assert_eq!(Mask::from_gray(&c).data(), &[0, 0, 1]);
        assert_eq!(Mask::from_gray(&b).to_gray().as_raw(), &vec![0, 255]);
    }

    #[test]
    fn upscaling_by_two_repeats_each_pixel() {
        let m = Mask::from_art(&["#."]);
        assert_eq!(m.resize_nearest(4, 2).data(), &[1, 1, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn downscaling_by_two_samples_pixel_centres() {
        // PIL picks source 1 and 3 (centres 1.0 and 3.0), not 0 and 2 like OpenCV.
        let m = Mask::from_art(&["#.#."]);
        assert_eq!(m.resize_nearest(2, 1).data(), &[0, 0]);
        let m = Mask::from_art(&[".#.#"]);
        assert_eq!(m.resize_nearest(2, 1).data(), &[1, 1]);
    }

    #[test]
    fn union_and_iou_work_pixelwise() {
        let mut a = Mask::from_art(&["##."]);
        let b = Mask::from_art(&[".##"]);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.iou(&Mask::from_art(&["..#"])), 0.0);
        a.union_with(&b);
        assert_eq!(a.data(), &[1, 1, 1]);
        assert_eq!(a.iou(&Mask::new(2, 2)), 0.0);
    }

    #[test]
    fn square_polygon_covers_the_pixels_it_encloses() {
        // pycocotools frPyObjects([[1,1, 3,1, 3,3, 1,3]], 5, 5) gives this 2x2 block: a
        // pixel is inside when its top-left corner is.
        let m = Mask::from_polygons(&[vec![1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]], 5, 5).unwrap();
        let expected = Mask::from_art(&[".....", ".##..", ".##..", ".....", "....."]);
        assert_eq!(m, expected);
    }

    #[test]
    fn bad_polygons_are_rejected_with_clear_messages() {
        let err = Mask::from_polygons(&[vec![0.0, 0.0, 1.0, 1.0]], 4, 4).unwrap_err();
        assert_eq!(err.to_string(), "polygon 0 has 2 points, needs at least 3");
        let err = Mask::from_polygons(&[vec![0.0; 7]], 4, 4).unwrap_err();
        assert!(matches!(
            err,
            MaskError::PolygonOddLength { index: 0, len: 7 }
        ));
        let err =
            Mask::from_polygons(&[vec![0.0, 0.0, 1.0, f64::NAN, 2.0, 0.0]], 4, 4).unwrap_err();
        assert!(matches!(
            err,
            MaskError::PolygonNotFinite { position: 3, .. }
        ));
    }

    #[test]
    fn debug_output_is_short() {
        assert_eq!(
            format!("{:?}", Mask::from_art(&["#."])),
            "Mask { 2x1, area: 1 }"
        );
    }
}
