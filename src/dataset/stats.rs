//! Dataset statistics for choosing a model configuration: instances per image, object sizes
//! (square root of the box area), box aspect ratios and image sizes, all from the stored boxes.
//!
//! Pure and deterministic: quantiles interpolate linearly between sorted values (numpy's default
//! `np.percentile(..., method="linear")`), so the same boxes always give the same numbers.

use crate::dataset::store::{Project, StoreError};

/// One ground-truth box with the size of its image (pixels), as the model config rules need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectBox {
    /// Image width.
    pub image_width: u32,
    /// Image height.
    pub image_height: u32,
    /// Box width (> 0).
    pub w: f64,
    /// Box height (> 0).
    pub h: f64,
}

/// Mean, median, 99th percentile and maximum of a count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CountSummary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Quantiles of a length in pixels (object size = sqrt of the box area).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SizeQuantiles {
    /// Smallest value.
    pub min: f64,
    /// 1st percentile.
    pub p1: f64,
    /// 5th percentile.
    pub p5: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

/// Quantiles of the box aspect ratio h / w (torchvision's `aspect_ratios` convention).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RatioQuantiles {
    /// 5th percentile.
    pub p5: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// Statistics of a dataset's ground-truth boxes; quantiles are `None` when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetStats {
    /// Number of images (including images without instances).
    pub images: usize,
    /// Number of instances (including zero-area ones).
    pub instances: usize,
    /// Instances whose box has no area (left out of the size and ratio quantiles).
    pub zero_area: usize,
    /// Instances per image; `None` without images.
    pub per_image: Option<CountSummary>,
    /// Object size sqrt(w·h) in image pixels; `None` without boxes of positive area.
    pub object_size: Option<SizeQuantiles>,
    /// Box aspect ratio h / w; `None` without boxes of positive area.
    pub aspect: Option<RatioQuantiles>,
    /// Median shorter image side in pixels; `None` without images.
    pub short_side_p50: Option<f64>,
    /// Median longer image side in pixels; `None` without images.
    pub long_side_p50: Option<f64>,
    /// Fraction of images without instances (0 without images).
    pub empty_fraction: f64,
    /// Every box of positive area with its image size, in image order.
    pub boxes: Vec<ObjectBox>,
}

impl DatasetStats {
    /// Statistics of a project's images in `split` (all splits with `None`), as training sees
    /// them: images reviewed as rejected are left out, crowd regions are not objects.
    pub fn from_project(project: &Project, split: Option<&str>) -> Result<Self, StoreError> {
        let set = project.export_set(split)?;
        Ok(Self::from_images(&set.images))
    }

    /// Statistics of exported images (what the trainer reads): crowd regions are not objects.
    pub fn from_images(images: &[crate::dataset::types::ExportImage]) -> Self {
        let images: Vec<(u32, u32, Vec<[f64; 4]>)> = images
            .iter()
            .map(|image| {
                let boxes = image
                    .instances
                    .iter()
                    .filter(|i| !i.iscrowd)
                    .map(|i| i.rle.to_bbox())
                    .collect();
                (image.width, image.height, boxes)
            })
            .collect();
        Self::from_boxes(&images)
    }

    /// Statistics of `(width, height, boxes as [x, y, w, h])` per image. Boxes with a zero,
    /// negative or non-finite side are counted as instances but not measured.
    pub fn from_boxes(images: &[(u32, u32, Vec<[f64; 4]>)]) -> Self {
        let mut stats = Self {
            images: images.len(),
            ..Self::default()
        };
        let mut counts = Vec::with_capacity(images.len());
        let mut short = Vec::with_capacity(images.len());
        let mut long = Vec::with_capacity(images.len());
        let mut empty = 0usize;
        for (width, height, boxes) in images {
            stats.instances = stats.instances.saturating_add(boxes.len());
            counts.push(boxes.len() as f64);
            if boxes.is_empty() {
                empty += 1;
            }
            short.push(f64::from(*width.min(height)));
            long.push(f64::from(*width.max(height)));
            for &[_, _, w, h] in boxes {
                if w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0 {
                    stats.boxes.push(ObjectBox {
                        image_width: *width,
                        image_height: *height,
                        w,
                        h,
                    });
                } else {
                    stats.zero_area += 1;
                }
            }
        }
        if !images.is_empty() {
            stats.empty_fraction = empty as f64 / images.len() as f64;
            let mean = counts.iter().sum::<f64>() / counts.len() as f64;
            sort(&mut counts);
            stats.per_image = Some(CountSummary {
                mean,
                p50: quantile(&counts, 0.50),
                p99: quantile(&counts, 0.99),
                max: quantile(&counts, 1.0),
            });
            sort(&mut short);
            sort(&mut long);
            stats.short_side_p50 = Some(quantile(&short, 0.5));
            stats.long_side_p50 = Some(quantile(&long, 0.5));
        }
        if !stats.boxes.is_empty() {
            let mut sizes: Vec<f64> = stats.boxes.iter().map(|b| (b.w * b.h).sqrt()).collect();
            sort(&mut sizes);
            stats.object_size = Some(SizeQuantiles::of_sorted(&sizes));
            let mut ratios: Vec<f64> = stats.boxes.iter().map(|b| b.h / b.w).collect();
            sort(&mut ratios);
            stats.aspect = Some(RatioQuantiles {
                p5: quantile(&ratios, 0.05),
                p50: quantile(&ratios, 0.50),
                p95: quantile(&ratios, 0.95),
            });
        }
        stats
    }
}

impl SizeQuantiles {
    /// Quantiles of ascending, non-empty `sorted` values.
    pub fn of_sorted(sorted: &[f64]) -> Self {
        Self {
            min: quantile(sorted, 0.0),
            p1: quantile(sorted, 0.01),
            p5: quantile(sorted, 0.05),
            p50: quantile(sorted, 0.50),
            p95: quantile(sorted, 0.95),
            p99: quantile(sorted, 0.99),
            max: quantile(sorted, 1.0),
        }
    }
}

/// Sorts finite values ascending (total order, so NaN cannot panic the sort).
pub fn sort(values: &mut [f64]) {
    values.sort_by(f64::total_cmp);
}

/// The `q` quantile (0..=1) of ascending `sorted` values, linear between neighbours (numpy's
/// default); 0 for an empty slice.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-9;

    #[test]
    fn quantile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        // np.percentile([1,2,3,4,10], [0, 50, 90, 99, 100]) = 1, 3, 7.6, 9.76, 10
        for (q, want) in [
            (0.0, 1.0),
            (0.5, 3.0),
            (0.9, 7.6),
            (0.99, 9.76),
            (1.0, 10.0),
        ] {
            assert!((quantile(&v, q) - want).abs() < TOL, "q={q}");
        }
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[4.0], 0.99), 4.0);
    }

    #[test]
    fn stats_of_boxes() {
        let stats = DatasetStats::from_boxes(&[
            (100, 50, vec![[0.0, 0.0, 4.0, 16.0], [1.0, 1.0, 9.0, 9.0]]),
            (30, 60, vec![[0.0, 0.0, 0.0, 5.0]]),
            (40, 40, vec![]),
        ]);
        assert_eq!((stats.images, stats.instances, stats.zero_area), (3, 3, 1));
        assert!((stats.empty_fraction - 1.0 / 3.0).abs() < TOL);
        let per = stats.per_image.unwrap();
        assert!((per.mean - 1.0).abs() < TOL);
        assert!((per.p50 - 1.0).abs() < TOL && (per.max - 2.0).abs() < TOL);
        let size = stats.object_size.unwrap();
        // sqrt(4*16) = 8, sqrt(81) = 9.
        assert!((size.min - 8.0).abs() < TOL && (size.max - 9.0).abs() < TOL);
        assert!((size.p50 - 8.5).abs() < TOL);
        let aspect = stats.aspect.unwrap();
        // h/w = 4 and 1; p5 = 1 + 0.05 * 3.
        assert!((aspect.p5 - 1.15).abs() < TOL && (aspect.p95 - 3.85).abs() < TOL);
        // Short sides 50, 30, 40; long sides 100, 60, 40.
        assert!((stats.short_side_p50.unwrap() - 40.0).abs() < TOL);
        assert!((stats.long_side_p50.unwrap() - 60.0).abs() < TOL);
        assert_eq!(stats.boxes.len(), 2);
        assert_eq!(stats.boxes[0].image_width, 100);
    }

    #[test]
    fn empty_and_degenerate_data_do_not_panic() {
        let none = DatasetStats::from_boxes(&[]);
        assert_eq!((none.images, none.instances), (0, 0));
        assert!(none.per_image.is_none() && none.object_size.is_none());
        let odd = DatasetStats::from_boxes(&[(0, 0, vec![[0.0, 0.0, f64::NAN, 3.0]])]);
        assert_eq!((odd.instances, odd.zero_area), (1, 1));
        assert!(odd.object_size.is_none() && odd.aspect.is_none());
        assert_eq!(odd.short_side_p50, Some(0.0));
    }
}
