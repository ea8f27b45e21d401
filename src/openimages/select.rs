//! Which images a request takes: reproducible (sorted IDs, then a seeded shuffle), per-class
//! limits, images already in the project first (so a re-run or an enlarged request fetches only
//! the difference), then images containing every requested class (like FiftyOne).

use std::collections::{HashMap, HashSet};

use super::{Error, Index, Split};

/// Fisher–Yates with the project's stable generator (the selection must not change between
/// releases).
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
    crate::rng::SplitMix64::new(seed).shuffle(items);
}

/// Selection options (a subset of the request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub max_samples: Option<usize>,
    pub seed: u64,
    pub shuffle: bool,
    pub prefer_all: bool,
}

/// Picks the images of one split: for each class in order, images are taken until the class
/// has `max_samples` images (an image counts for every requested class it contains).
pub(crate) fn select(
    index: &Index,
    split: Split,
    classes: &[i64],
    present: &HashSet<u64>,
    opts: Options,
) -> Result<Vec<u64>, Error> {
    // image -> requested classes (indices) it contains
    let mut contains: HashMap<u64, Vec<usize>> = HashMap::new();
    for (ci, &class) in classes.iter().enumerate() {
        for image in index.class_images(split, class)? {
            let v = contains.entry(image).or_default();
            if !v.contains(&ci) {
                v.push(ci);
            }
        }
    }
    let mut order: Vec<u64> = contains.keys().copied().collect();
    order.sort_unstable();
    if opts.shuffle {
        shuffle(
            &mut order,
            opts.seed ^ (split.code() as u64).wrapping_mul(0xA24B_AED4_963E_E407),
        );
    }
    let all = classes.len();
    // Stable sort keeps the (shuffled) order inside each priority group.
    order.sort_by_key(|id| {
        let has_all = opts.prefer_all && contains[id].len() == all;
        (!present.contains(id), !has_all)
    });
    let Some(max) = opts.max_samples else {
        return Ok(order);
    };
    let mut counts = vec![0usize; all];
    let mut taken: HashSet<u64> = HashSet::new();
    let mut out = Vec::new();
    for ci in 0..all {
        for id in &order {
            if counts[ci] >= max {
                break;
            }
            let cls = &contains[id];
            if !cls.contains(&ci) || taken.contains(id) {
                continue;
            }
            taken.insert(*id);
            out.push(*id);
            for &c in cls {
                counts[c] += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_reproducible() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..100).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
