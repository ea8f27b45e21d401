//! The prefetching training loader: named worker threads decode and augment whole batches ahead
//! of the training step and hand them over through a bounded crossbeam channel.
//!
//! Batch composition comes from [`BatchPlanner`] (seeded shuffle, repeat factors, aspect-ratio
//! grouping) and each sample's augmentation from its own seed ([`sample_seed`] of the run seed,
//! epoch and position), so the batches are the same whatever the thread count or timing. Batches
//! are yielded in plan order; a reorder buffer holds the ones that finish early. Dropping an
//! [`EpochBatches`] (the trainer breaking out on cancel) closes the channels and joins the
//! workers, each of which finishes at most the batch it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Sender};
use tch::{Device, Tensor};

use crate::dataset::ExportImage;
use crate::model::Target;
use crate::rng::SplitMix64;
use crate::train::augment::{self, AugmentConfig, Augmenter, sample_seed};
use crate::train::config::TrainConfig;
use crate::train::sampler::{self, BatchPlanner};

/// One batch on the CPU.
#[derive(Debug)]
pub struct Batch {
    /// Epoch-wide batch number (0-based).
    pub index: usize,
    /// Project image id of each sample.
    pub image_ids: Vec<i64>,
    /// `[3, H, W]` f32 images in 0..1.
    pub images: Vec<Tensor>,
    /// Targets at each image's size.
    pub targets: Vec<Target>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Images and targets on `device` (moved without a copy on the CPU).
    pub fn to_device(self, device: Device) -> (Vec<Tensor>, Vec<Target>) {
        if device == Device::Cpu {
            return (self.images, self.targets);
        }
        let images = self.images.iter().map(|t| t.to_device(device)).collect();
        let targets = self
            .targets
            .into_iter()
            .map(|t| Target {
                boxes: t.boxes.to_device(device),
                labels: t.labels.to_device(device),
                masks: t.masks.to_device(device),
            })
            .collect();
        (images, targets)
    }
}

/// What the workers share.
struct Shared {
    images: Vec<ExportImage>,
    labels: HashMap<i64, i64>,
    augmenter: Augmenter,
    seed: u64,
}

impl Shared {
    /// Decodes and augments the samples of batch `index` of `epoch`.
    fn load_batch(
        &self,
        epoch: usize,
        index: usize,
        members: &[(usize, usize)],
    ) -> anyhow::Result<Batch> {
        let mut batch = Batch {
            index,
            image_ids: Vec::with_capacity(members.len()),
            images: Vec::with_capacity(members.len()),
            targets: Vec::with_capacity(members.len()),
        };
        for &(position, k) in members {
            let image = &self.images[k];
            let s = augment::load(image, &self.labels, self.augmenter.decode_size())
                .with_context(|| format!("loading image {}", image.path.display()))?;
            let mut rng = SplitMix64::new(sample_seed(self.seed, epoch, position));
            let sample = self.augmenter.apply(s, &mut rng).into_sample(image.id);
            batch.image_ids.push(image.id);
            batch.images.push(sample.image);
            batch.targets.push(sample.target);
        }
        Ok(batch)
    }
}

/// The training images with their batch plans and augmentation; [`TrainLoader::epoch`] starts the
/// worker threads of one epoch.
pub struct TrainLoader {
    shared: Arc<Shared>,
    planner: BatchPlanner,
    workers: usize,
    prefetch: usize,
}

impl std::fmt::Debug for TrainLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainLoader")
            .field("images", &self.shared.images.len())
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl TrainLoader {
    /// A loader over `images` (`labels`: class id → 1-based label) with `cfg`'s batch size, seed,
    /// flip probability and [`AugmentConfig`] (grouping, repeat factors, workers).
    pub fn new(
        images: &[&ExportImage],
        labels: &HashMap<i64, i64>,
        cfg: &TrainConfig,
    ) -> anyhow::Result<Self> {
        let augmenter = Augmenter::new(cfg);
        augmenter.cfg.validate()?;
        let a: &AugmentConfig = &augmenter.cfg;
        let bins = a.aspect_grouping.then(|| {
            images
                .iter()
                .map(|i| {
                    if a.pad_to_square && a.enabled {
                        0
                    } else {
                        sampler::aspect_bin(i.width, i.height)
                    }
                })
                .collect()
        });
        let factors = a.repeat_threshold.map(|t| {
            let classes: Vec<Vec<i64>> = images
                .iter()
                .map(|i| {
                    i.instances
                        .iter()
                        .filter(|inst| !inst.iscrowd)
                        .filter_map(|inst| labels.get(&inst.class_id).copied())
                        .collect()
                })
                .collect();
            sampler::repeat_factors(&classes, t)
        });
        let planner = BatchPlanner {
            bins,
            factors,
            batch_size: cfg.batch_size.max(1),
            seed: cfg.seed,
        };
        let (workers, prefetch) = (a.workers, a.prefetch_batches);
        Ok(Self {
            shared: Arc::new(Shared {
                images: images.iter().map(|&i| i.clone()).collect(),
                labels: labels.clone(),
                augmenter,
                seed: cfg.seed,
            }),
            planner,
            workers,
            prefetch,
        })
    }

    /// Image indices (into the `images` given to [`TrainLoader::new`]) of each batch of `epoch`.
    pub fn plan(&self, epoch: usize) -> Vec<Vec<usize>> {
        self.planner.epoch(self.shared.images.len(), epoch)
    }

    /// Number of batches in `epoch`.
    pub fn steps_in_epoch(&self, epoch: usize) -> usize {
        self.plan(epoch).len()
    }

    /// Number of batches in epochs `0..epochs`.
    pub fn total_steps(&self, epochs: usize) -> usize {
        (0..epochs).map(|e| self.steps_in_epoch(e)).sum()
    }

    /// The batches of `epoch`, prepared ahead on worker threads.
    pub fn epoch(&self, epoch: usize) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (resuming mid-epoch gives the same batches
    /// as an uninterrupted run).
    pub fn epoch_from(&self, epoch: usize, first: usize) -> EpochBatches {
        let mut jobs: Vec<Job> = Vec::new();
        let mut position = 0usize;
        for (index, members) in self.plan(epoch).into_iter().enumerate() {
            let n = members.len();
            let members: Vec<(usize, usize)> = (position..position + n).zip(members).collect();
            position += n;
            if index >= first {
                jobs.push(Job {
                    epoch,
                    index,
                    members,
                });
            }
        }
        EpochBatches::start(Arc::clone(&self.shared), jobs, self.workers, self.prefetch)
    }
}

/// One batch to prepare: `(position in the epoch, image index)` per sample.
struct Job {
    epoch: usize,
    index: usize,
    members: Vec<(usize, usize)>,
}

/// Iterator over one epoch's batches in plan order (see the module docs).
pub struct EpochBatches {
    pending: std::vec::IntoIter<Job>,
    job_tx: Option<Sender<Job>>,
    result_rx: Option<Receiver<(usize, anyhow::Result<Batch>)>>,
    handles: Vec<JoinHandle<()>>,
    /// Plan indices in the order they are yielded.
    order: Vec<usize>,
    next: usize,
    stash: BTreeMap<usize, anyhow::Result<Batch>>,
}

impl std::fmt::Debug for EpochBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochBatches")
            .field("batches", &self.order.len())
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl EpochBatches {
    fn start(shared: Arc<Shared>, jobs: Vec<Job>, workers: usize, prefetch: usize) -> Self {
        let prefetch = prefetch.max(1);
        let order: Vec<usize> = jobs.iter().map(|j| j.index).collect();
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(prefetch);
        let (result_tx, result_rx) = crossbeam_channel::bounded(prefetch);
        let mut handles = Vec::new();
        for w in 0..workers.clamp(1, order.len().max(1)) {
            let (job_rx, result_tx, shared) =
                (job_rx.clone(), result_tx.clone(), Arc::clone(&shared));
            let spawned = std::thread::Builder::new()
                .name(format!("maskstudio-loader-{w}"))
                .spawn(move || {
                    for job in job_rx {
                        let batch = crate::profile::timed("loader_threads", || {
                            shared.load_batch(job.epoch, job.index, &job.members)
                        });
                        if result_tx.send((job.index, batch)).is_err() {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => log::warn!("could not start a loader thread: {e}"),
            }
        }
        let mut it = Self {
            pending: jobs.into_iter(),
            job_tx: Some(job_tx),
            result_rx: Some(result_rx),
            handles,
            order,
            next: 0,
            stash: BTreeMap::new(),
        };
        if it.handles.is_empty() {
            // No thread could start: load on the caller's thread instead.
            it.job_tx = None;
            it.result_rx = None;
            let jobs: Vec<Job> = it.pending.by_ref().collect();
            for job in jobs {
                let b = shared.load_batch(job.epoch, job.index, &job.members);
                it.stash.insert(job.index, b);
            }
            return it;
        }
        // Fill the pipeline: at most `prefetch` batches outstanding.
        for _ in 0..prefetch {
            it.dispatch();
        }
        it
    }

    /// Hands the next planned job to the workers (no-op when none is left).
    fn dispatch(&mut self) {
        if let (Some(tx), Some(job)) = (&self.job_tx, self.pending.next()) {
            // The channel holds `prefetch` jobs and at most that many are outstanding.
            let _ = tx.send(job);
        }
    }

    /// Number of batches this iterator yields in total.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it yields no batch.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Iterator for EpochBatches {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let want = *self.order.get(self.next)?;
        self.next += 1;
        loop {
            if let Some(b) = self.stash.remove(&want) {
                self.dispatch();
                return Some(b);
            }
            let rx = self.result_rx.as_ref()?;
            match rx.recv() {
                Ok((index, b)) => {
                    self.stash.insert(index, b);
                }
                Err(_) => {
                    return Some(Err(anyhow::anyhow!(
                        "the loader threads stopped before batch {want}"
                    )));
                }
            }
        }
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the job channel ends the workers' loops; dropping the receiver makes a send
        // of a finished batch fail, so no worker waits on a full queue.
        self.job_tx = None;
        self.result_rx = None;
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                log::warn!("a loader thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Attribution, ExportInstance, Mask};

    /// `n` PNGs in `dir`, alternating landscape/portrait, one square instance of class 10 or 20.
    fn images(dir: &std::path::Path, n: usize) -> Vec<ExportImage> {
        (0..n)
            .map(|i| {
                let (w, h) = if i % 2 == 0 { (40, 24) } else { (24, 40) };
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x * 6) as u8, (y * 6) as u8, (i * 20) as u8])
                });
                let path = dir.join(format!("{i}.png"));
                img.save(&path).unwrap();
                let mut m = Mask::new(w, h);
                for y in 4..12 {
                    for x in 4..12 {
                        m.set(x, y, true);
                    }
                }
                ExportImage {
                    id: 100 + i as i64,
                    path,
                    file_name: format!("{i}.png"),
                    width: w,
                    height: h,
                    split: None,
                    attribution: Attribution::default(),
                    instances: vec![ExportInstance {
                        id: i as i64,
                        class_id: if i % 3 == 0 { 20 } else { 10 },
                        rle: m.to_rle(),
                        iscrowd: false,
                    }],
                }
            })
            .collect()
    }

    fn config(workers: usize) -> TrainConfig {
        TrainConfig {
            batch_size: 2,
            image_size: Some(32),
            seed: 11,
            augment: Some(Box::new(AugmentConfig {
                workers,
                prefetch_batches: 2,
                ssr_prob: 0.5,
                crop_prob: 0.5,
                repeat_threshold: Some(0.5),
                ..AugmentConfig::default()
            })),
            ..TrainConfig::default()
        }
    }

    /// Image ids, flattened image tensors and flattened boxes of one batch.
    type BatchValues = (Vec<i64>, Vec<Vec<f32>>, Vec<Vec<f32>>);

    /// The values of every batch of `epoch`.
    fn run(loader: &TrainLoader, epoch: usize) -> Vec<BatchValues> {
        loader
            .epoch(epoch)
            .map(|b| {
                let b = b.unwrap();
                let imgs = b
                    .images
                    .iter()
                    .map(|t| Vec::<f32>::try_from(t.view([-1])).unwrap())
                    .collect();
                let boxes = b
                    .targets
                    .iter()
                    .map(|t| Vec::<f32>::try_from(t.boxes.view([-1])).unwrap())
                    .collect();
                (b.image_ids, imgs, boxes)
            })
            .collect()
    }

    #[test]
    fn batches_are_the_same_whatever_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = images(dir.path(), 9);
        let refs: Vec<&ExportImage> = imgs.iter().collect();
        let labels = HashMap::from([(10, 1), (20, 2)]);
        let one = TrainLoader::new(&refs, &labels, &config(1)).unwrap();
        let three = TrainLoader::new(&refs, &labels, &config(3)).unwrap();
        let a = run(&one, 0);
        assert_eq!(a, run(&three, 0));
        assert_eq!(a, run(&one, 0));
        assert_ne!(a, run(&one, 1), "epochs differ");
        assert_eq!(a.len(), one.steps_in_epoch(0));
        // Repeat factors: class 2 is in 3 of 9 images → r = sqrt(0.5 / (1/3)) ≈ 1.22, so the
        // epoch holds 9 + (0..=3) samples; grouping keeps orientations apart outside the tail.
        let n: usize = a.iter().map(|b| b.0.len()).sum();
        assert!((9..=12).contains(&n), "{n}");
        // Two orientations → two bins holding at most one leftover each: only the last batch
        // may mix them.
        for (ids, _, _) in &a[..a.len() - 1] {
            let landscape: Vec<bool> = ids.iter().map(|id| (id - 100) % 2 == 0).collect();
            assert!(
                landscape.iter().all(|&l| l == landscape[0]),
                "{ids:?} mixes bins"
            );
        }
        // Resuming mid-epoch yields the rest of the same batches.
        let rest: Vec<Vec<i64>> = one.epoch_from(0, 2).map(|b| b.unwrap().image_ids).collect();
        let expected: Vec<Vec<i64>> = a[2..].iter().map(|b| b.0.clone()).collect();
        assert_eq!(rest, expected);
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = images(dir.path(), 12);
        let refs: Vec<&ExportImage> = imgs.iter().collect();
        let labels = HashMap::from([(10, 1), (20, 2)]);
        let loader = TrainLoader::new(&refs, &labels, &config(2)).unwrap();
        let started = std::time::Instant::now();
        let mut epoch = loader.epoch(0);
        assert!(epoch.next().unwrap().is_ok());
        drop(epoch);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut imgs = images(dir.path(), 2);
        imgs[1].path = dir.path().join("gone.png");
        let refs: Vec<&ExportImage> = imgs.iter().collect();
        let labels = HashMap::from([(10, 1), (20, 2)]);
        let cfg = TrainConfig {
            batch_size: 1,
            ..config(1)
        };
        let loader = TrainLoader::new(&refs, &labels, &cfg).unwrap();
        let errors: Vec<String> = loader
            .epoch(0)
            .filter_map(|b| b.err().map(|e| format!("{e:#}")))
            .collect();
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| e.contains("gone.png")), "{errors:?}");
    }
}
