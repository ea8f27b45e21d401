//! Which images make up each batch of an epoch: a seeded shuffle, optional repeat-factor
//! sampling (Detectron2's `RepeatFactorTrainingSampler`) and aspect-ratio grouping (torchvision's
//! `GroupedBatchSampler` with `create_aspect_ratio_groups(k=3)`).

use crate::rng::SplitMix64;

/// Aspect-ratio bin of a `width × height` image: `bisect_right(2^linspace(-1, 1, 7), w / h)`,
/// as torchvision's `create_aspect_ratio_groups(k=3)` (8 bins, 0 = taller than 1:2, 7 = wider
/// than 2:1).
pub fn aspect_bin(width: u32, height: u32) -> usize {
    let ratio = f64::from(width) / f64::from(height.max(1));
    (0..7)
        .map(|i| 2f64.powf(-1.0 + f64::from(i) / 3.0))
        .filter(|&edge| edge <= ratio)
        .count()
}

/// Detectron2 repeat factors: with `f(c)` the fraction of images that contain class `c`,
/// `r(c) = max(1, sqrt(t / f(c)))`, and an image's factor is the largest `r(c)` over its
/// classes (1 for an image without instances). `classes[i]` lists the labels of image `i`
/// (repeats allowed).
pub fn repeat_factors(classes: &[Vec<i64>], threshold: f64) -> Vec<f64> {
    let n = classes.len().max(1) as f64;
    let mut images_with: std::collections::HashMap<i64, usize> = Default::default();
    for labels in classes {
        let mut uniq = labels.clone();
        uniq.sort_unstable();
        uniq.dedup();
        for l in uniq {
            *images_with.entry(l).or_default() += 1;
        }
    }
    let class_factor = |l: i64| {
        let f = images_with.get(&l).copied().unwrap_or(1) as f64 / n;
        (threshold / f).sqrt().max(1.0)
    };
    classes
        .iter()
        .map(|labels| labels.iter().map(|&l| class_factor(l)).fold(1.0, f64::max))
        .collect()
}

/// Stochastic rounding of the factors (Detectron2 `_get_epoch_indices`): image `i` appears
/// `floor(r_i)` times plus once more with probability `frac(r_i)`. Indices ascending.
pub fn repeat_indices(factors: &[f64], rng: &mut SplitMix64) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, &r) in factors.iter().enumerate() {
        let whole = r.floor();
        let extra = usize::from(rng.next_f64() < r - whole);
        out.extend(std::iter::repeat_n(i, whole as usize + extra));
    }
    out
}

/// Batches from a sampling `order`: each bin fills its own buffer and a batch is emitted when one
/// holds `batch_size` images (torchvision's `GroupedBatchSampler`); the leftovers of all bins, in
/// order of arrival, form the last batches (the only ones that can mix bins). Every index of
/// `order` appears exactly once. `bins[i]` is the bin of image `i`.
pub fn grouped_batches(order: &[usize], bins: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut buffers: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    let mut batches = Vec::with_capacity(order.len() / batch_size + 1);
    for &i in order {
        let buf = buffers
            .entry(bins.get(i).copied().unwrap_or(0))
            .or_default();
        buf.push(i);
        if buf.len() == batch_size {
            batches.push(std::mem::take(buf));
        }
    }
    // Leftovers in their order of arrival.
    let position: std::collections::HashMap<usize, usize> = order
        .iter()
        .enumerate()
        .rev()
        .map(|(p, &i)| (i, p))
        .collect();
    let mut rest: Vec<usize> = buffers.into_values().flatten().collect();
    rest.sort_by_key(|i| position.get(i).copied().unwrap_or(usize::MAX));
    batches.extend(rest.chunks(batch_size).map(<[usize]>::to_vec));
    batches
}

/// The batch plan of every epoch of a run.
#[derive(Debug, Clone)]
pub struct BatchPlanner {
    /// Aspect-ratio bin per image (`None`: no grouping).
    pub bins: Option<Vec<usize>>,
    /// Repeat factor per image (`None`: each image once per epoch).
    pub factors: Option<Vec<f64>>,
    /// Images per batch.
    pub batch_size: usize,
    /// Run seed.
    pub seed: u64,
}

impl BatchPlanner {
    /// Image indices of each batch of `epoch` (a function of the seed and the epoch only).
    pub fn epoch(&self, n_images: usize, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng = SplitMix64::new(
            SplitMix64::new(self.seed ^ 0x5341_4d50_4c45).next_u64()
                ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order = match &self.factors {
            Some(f) => repeat_indices(&f[..n_images.min(f.len())], &mut rng),
            None => (0..n_images).collect(),
        };
        rng.shuffle(&mut order);
        match &self.bins {
            Some(bins) => grouped_batches(&order, bins, self.batch_size),
            None => order
                .chunks(self.batch_size.max(1))
                .map(<[usize]>::to_vec)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_bins_match_torchvision() {
        // bins = 2 ** linspace(-1, 1, 7) = [0.5, 0.63, 0.79, 1, 1.26, 1.59, 2]; bisect_right.
        assert_eq!(aspect_bin(100, 300), 0);
        assert_eq!(aspect_bin(50, 100), 1);
        assert_eq!(aspect_bin(480, 640), 2);
        assert_eq!(aspect_bin(100, 100), 4);
        assert_eq!(aspect_bin(640, 480), 5);
        assert_eq!(aspect_bin(640, 360), 6);
        assert_eq!(aspect_bin(300, 100), 7);
    }

    #[test]
    fn repeat_factors_on_a_known_distribution() {
        // 10 images: class 1 in all, class 2 in one, class 3 in four; image 9 empty.
        let mut classes: Vec<Vec<i64>> = (0..9).map(|_| vec![1]).collect();
        classes.push(vec![]);
        classes[0].push(2);
        for c in &mut classes[1..5] {
            c.push(3);
        }
        let r = repeat_factors(&classes, 0.3);
        // f(1) = 0.9 → 1; f(2) = 0.1 → sqrt(3); f(3) = 0.4 → 1 (sqrt(0.75) < 1).
        assert!((r[0] - 3f64.sqrt()).abs() < 1e-12);
        for &v in &r[1..] {
            assert_eq!(v, 1.0);
        }
        let r = repeat_factors(&classes, 0.8);
        assert!((r[1] - 2f64.sqrt()).abs() < 1e-12, "sqrt(0.8 / 0.4)");
        assert_eq!(r[9], 1.0, "an image without instances is not repeated");
        assert_eq!(r[5], 1.0);
    }

    #[test]
    fn stochastic_rounding_has_the_right_mean() {
        let factors = [1.0, 2.5, 1.25];
        let mut rng = SplitMix64::new(5);
        let mut counts = [0usize; 3];
        let trials = 4000;
        for _ in 0..trials {
            for i in repeat_indices(&factors, &mut rng) {
                counts[i] += 1;
            }
        }
        assert_eq!(counts[0], trials);
        let m1 = counts[1] as f64 / trials as f64;
        let m2 = counts[2] as f64 / trials as f64;
        assert!((m1 - 2.5).abs() < 0.03, "{m1}");
        assert!((m2 - 1.25).abs() < 0.03, "{m2}");
    }

    #[test]
    fn grouping_never_mixes_bins_except_in_the_tail() {
        let bins: Vec<usize> = (0..37).map(|i| [0, 4, 4, 7, 2][i % 5]).collect();
        let mut order: Vec<usize> = (0..37).collect();
        SplitMix64::new(9).shuffle(&mut order);
        let batches = grouped_batches(&order, &bins, 4);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..37).collect::<Vec<_>>());
        // Full single-bin batches first, then the tail of leftovers (< one batch per bin).
        let first_mixed = batches
            .iter()
            .position(|b| b.len() < 4 || b.iter().any(|&i| bins[i] != bins[b[0]]))
            .unwrap_or(batches.len());
        let tail: usize = batches[first_mixed..].iter().map(Vec::len).sum();
        assert!(
            tail < 4 * 4,
            "tail of {tail} images is more than the leftovers of 4 bins"
        );
        for b in &batches[..first_mixed] {
            assert!(b.iter().all(|&i| bins[i] == bins[b[0]]), "{b:?} mixes bins");
        }
        assert!(first_mixed >= 5);
    }

    #[test]
    fn plans_are_seeded_per_epoch() {
        let planner = BatchPlanner {
            bins: Some(vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]),
            factors: Some(vec![1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5]),
            batch_size: 2,
            seed: 4,
        };
        let a = planner.epoch(10, 0);
        assert_eq!(a, planner.epoch(10, 0));
        assert_ne!(a, planner.epoch(10, 1));
        let n: usize = a.iter().map(Vec::len).sum();
        assert!(
            n == 12 || n == 13,
            "{n} samples: 2 repeats of image 2, maybe one of 9"
        );
        assert_eq!(a.iter().flatten().filter(|&&i| i == 2).count(), 3);
    }
}
