//! `Matcher` and `BalancedPositiveNegativeSampler` (`torchvision/models/detection/_utils.py:11-62, 313-416`).

use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Kind, Tensor};

use crate::model::error::{ModelError, Result};

/// Match value of predictions whose best IoU is below the low threshold (`Matcher.BELOW_LOW_THRESHOLD`).
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// Match value of predictions between the thresholds (`Matcher.BETWEEN_THRESHOLDS`).
pub const BETWEEN_THRESHOLDS: i64 = -2;

/// torchvision `Matcher`: assigns each prediction (column) the best ground truth (row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matcher {
    /// IoU `>=` this is a match.
    pub high_threshold: f64,
    /// IoU `<` this is [`BELOW_LOW_THRESHOLD`]; in between is [`BETWEEN_THRESHOLDS`].
    pub low_threshold: f64,
    /// Give every GT its highest-IoU predictions (ties included) even below the thresholds.
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    /// New matcher; `low_threshold <= high_threshold`.
    pub fn new(high_threshold: f64, low_threshold: f64, allow_low_quality_matches: bool) -> Self {
        Self {
            high_threshold,
            low_threshold,
            allow_low_quality_matches,
        }
    }

    /// `match_quality_matrix [G, N]` (G > 0, N > 0) -> matches `[N]` int64 (GT index or negative code).
    pub fn call(&self, match_quality_matrix: &Tensor) -> Result<Tensor> {
        let size = match_quality_matrix.size();
        if match_quality_matrix.numel() == 0 {
            return Err(ModelError::InvalidInput(format!(
                "matcher needs at least one ground-truth box and one prediction, got a {size:?} IoU matrix"
            )));
        }
        let (matched_vals, matches) = match_quality_matrix.f_max_dim(0, false)?; // [N], [N]
        let all_matches = matches.shallow_clone();
        let below = matched_vals.f_lt(self.low_threshold)?;
        let between = matched_vals
            .f_ge(self.low_threshold)?
            .f_logical_and(&matched_vals.f_lt(self.high_threshold)?)?;
        let mut matches = matches
            .f_masked_fill(&below, BELOW_LOW_THRESHOLD)?
            .f_masked_fill(&between, BETWEEN_THRESHOLDS)?;
        if self.allow_low_quality_matches {
            // `set_low_quality_matches_`: every prediction that ties a GT's best IoU gets its best GT back.
            let (highest_per_gt, _) = match_quality_matrix.f_max_dim(1, true)?; // [G, 1]
            let is_best = match_quality_matrix
                .f_eq_tensor(&highest_per_gt)?
                .f_any_dim(0, false)?; // [N]
            matches = all_matches.f_where_self(&is_best, &matches)?;
        }
        Ok(matches)
    }
}

/// How [`BalancedPositiveNegativeSampler`] picks among the candidates.
#[derive(Debug)]
pub enum SamplingMode {
    /// Uniformly random subset (torchvision uses `torch.randperm`); SplitMix64 stream from a seed.
    Random(AtomicU64),
    /// The first `k` candidates by index: deterministic, for golden tests against a patched torchvision.
    FirstK,
}

/// torchvision `BalancedPositiveNegativeSampler`.
#[derive(Debug)]
pub struct BalancedPositiveNegativeSampler {
    /// Samples per image.
    pub batch_size_per_image: i64,
    /// Maximum fraction of positives.
    pub positive_fraction: f64,
    /// Selection rule.
    pub mode: SamplingMode,
}

impl BalancedPositiveNegativeSampler {
    /// Random sampler seeded with `seed`.
    pub fn new(batch_size_per_image: i64, positive_fraction: f64, seed: u64) -> Self {
        Self {
            batch_size_per_image,
            positive_fraction,
            mode: SamplingMode::Random(AtomicU64::new(seed)),
        }
    }

    /// Switches between random and first-k sampling (seed kept at `seed` for random).
    pub fn set_deterministic(&mut self, deterministic: bool, seed: u64) {
        self.mode = if deterministic {
            SamplingMode::FirstK
        } else {
            SamplingMode::Random(AtomicU64::new(seed))
        };
    }

    fn next_u64(state: &AtomicU64) -> u64 {
        // SplitMix64 (Steele et al. 2014); the atomic add makes `&self` sampling thread-safe.
        let mut z = state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn choose(&self, mut candidates: Vec<i64>, k: usize) -> Vec<i64> {
        match &self.mode {
            SamplingMode::FirstK => candidates.truncate(k),
            SamplingMode::Random(state) => {
                // Partial Fisher-Yates shuffle.
                let n = candidates.len();
                for i in 0..k.min(n) {
                    let j = i + (Self::next_u64(state) % (n - i) as u64) as usize;
                    candidates.swap(i, j);
                }
                candidates.truncate(k);
            }
        }
        candidates.sort_unstable();
        candidates
    }

    /// `labels [N]` (>= 1 positive, 0 negative, -1 ignored; any numeric kind) of one image ->
    /// `(positive indices, negative indices)`, int64, ascending, on the labels' device.
    pub fn sample(&self, labels: &Tensor) -> Result<(Tensor, Tensor)> {
        let device = labels.device();
        let l = labels
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let l = Vec::<f32>::try_from(&l)?;
        let positive: Vec<i64> = (0..l.len())
            .filter(|&i| l[i] >= 1.0)
            .map(|i| i as i64)
            .collect();
        let negative: Vec<i64> = (0..l.len())
            .filter(|&i| l[i] == 0.0)
            .map(|i| i as i64)
            .collect();
        // `int(batch_size_per_image * positive_fraction)` (_utils.py:48).
        let num_pos = ((self.batch_size_per_image as f64 * self.positive_fraction) as usize)
            .min(positive.len());
        let num_neg = (self.batch_size_per_image as usize - num_pos).min(negative.len());
        let pos = self.choose(positive, num_pos);
        let neg = self.choose(negative, num_neg);
        Ok((
            Tensor::f_from_slice(&pos)?.f_to_device(device)?,
            Tensor::f_from_slice(&neg)?.f_to_device(device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_quality_matches_include_ties() {
        // GT 0 best IoU 0.4 at predictions 0 and 2 (tie); GT 1 is a clear match for prediction 1.
        let iou = Tensor::from_slice(&[0.4f32, 0.1, 0.4, 0.2, 0.0, 0.9, 0.0, 0.1]).view([2, 4]);
        let m = Matcher::new(0.7, 0.3, true).call(&iou).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(&m).unwrap(),
            vec![0, 1, 0, BELOW_LOW_THRESHOLD]
        );
        let m = Matcher::new(0.7, 0.3, false).call(&iou).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(&m).unwrap(),
            vec![
                BETWEEN_THRESHOLDS,
                1,
                BETWEEN_THRESHOLDS,
                BELOW_LOW_THRESHOLD
            ]
        );
    }

    #[test]
    fn first_k_sampler_takes_lowest_indices() {
        let mut s = BalancedPositiveNegativeSampler::new(4, 0.5, 0);
        s.set_deterministic(true, 0);
        let labels = Tensor::from_slice(&[0i64, 2, -1, 1, 0, 1, 0, 0]);
        let (p, n) = s.sample(&labels).unwrap();
        assert_eq!(Vec::<i64>::try_from(&p).unwrap(), vec![1, 3]);
        assert_eq!(Vec::<i64>::try_from(&n).unwrap(), vec![0, 4]);
    }

    #[test]
    fn random_sampler_respects_counts() {
        let s = BalancedPositiveNegativeSampler::new(6, 0.5, 7);
        let labels = Tensor::from_slice(&[1i64, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let (p, n) = s.sample(&labels).unwrap();
        assert_eq!(p.size(), vec![1]);
        assert_eq!(n.size(), vec![5]);
    }
}
