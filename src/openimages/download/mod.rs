//! One download request, end to end: catalogue → index → selection → metadata → masks →
//! images, imported into the project in batches (so a long run commits progressively and an
//! interrupted run resumes where it stopped).
//!
//! Files: `fetch` (the split's segmentation CSV downloaded and indexed), `run` (the request's
//! steps in order), `import` (downloaded images and masks into project batches),
//! `seed_layout` (exporting a project in the seed's folder layout).

mod fetch;
mod import;
mod run;
mod seed_layout;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cancel::CancelToken;
use crate::dataset::store::Project;

use super::error::FailureKind;
use super::masks::MaskCounters;
use super::{Config, Error, Split};

use run::run;

pub use seed_layout::export_seed_layout;

/// Folder below the project's `images/` that downloaded images go to (`openimages/{split}/`).
pub const PROJECT_FOLDER: &str = "openimages";

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// Display names (case-insensitive) or MIDs; a class without masks is expanded to its
    /// segmentable subclasses ("Fast food" → Hot dog, French fries, ...).
    pub classes: Vec<String>,
    /// Splits to take images from.
    pub splits: Vec<Split>,
    /// Images per class and split (`None`: all).
    pub max_samples: Option<usize>,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Shuffle the sorted IDs with `seed` (otherwise take them in ID order).
    pub shuffle: bool,
    /// Keep only instances of the requested classes (otherwise every mask of each image).
    pub only_matching: bool,
    /// Prefer images that contain every requested class.
    pub prefer_all_classes: bool,
    /// Rotate images (and their masks with them) upright by the `Rotation` column.
    pub apply_rotation: bool,
    /// Try again images that an earlier run found missing (403/404) or corrupt; otherwise they
    /// are reported from the cache without a transfer.
    pub retry_failed: bool,
}

impl Default for DownloadRequest {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            splits: vec![Split::Train],
            max_samples: None,
            seed: 0,
            shuffle: true,
            only_matching: true,
            prefer_all_classes: true,
            apply_rotation: true,
            retry_failed: false,
        }
    }
}

/// A phase of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Class lists and hierarchy.
    Catalogue,
    /// Segmentation CSV download and indexing.
    Index,
    /// Image metadata CSV (attribution, Rotation).
    Metadata,
    /// Mask range reads.
    Masks,
    /// Image downloads and imports.
    Images,
}

impl Phase {
    /// Short name for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Catalogue => "catalogue",
            Phase::Index => "index",
            Phase::Metadata => "metadata",
            Phase::Masks => "masks",
            Phase::Images => "images",
        }
    }
}

/// Progress of a download.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// A phase starts.
    Phase {
        /// The phase.
        phase: Phase,
        /// What it does, in words.
        message: String,
    },
    /// Progress inside a phase (`total` 0 = unknown). For Index/Metadata `done`/`total` are
    /// bytes; for Masks and Images they are items.
    Progress {
        /// The phase.
        phase: Phase,
        /// Done so far.
        done: u64,
        /// Total.
        total: u64,
        /// Bytes transferred so far in this phase.
        bytes: u64,
    },
    /// Something the user should know (skipped empty mask, class expanded, ...).
    Warning(String),
}

/// One thing that was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub kind: FailureKind,
    /// ImageID (images) or MaskPath (masks).
    pub id: String,
    /// Details.
    pub message: String,
}

/// Bytes transferred, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Class lists, hierarchy and segmentation CSVs.
    pub index_bytes: u64,
    /// Image metadata CSVs.
    pub metadata_bytes: u64,
    /// Mask range reads (tails, central directories, entries).
    pub mask_range_bytes: u64,
    /// Whole mask shards (only when the server ignores Range).
    pub mask_shard_bytes: u64,
    /// Sizes of the shards touched: what downloading them whole would have cost.
    pub shard_sizes: u64,
    /// Images.
    pub image_bytes: u64,
}

impl Transfer {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.index_bytes
            + self.metadata_bytes
            + self.mask_range_bytes
            + self.mask_shard_bytes
            + self.image_bytes
    }
}

/// What a download did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownloadSummary {
    /// The segmentable classes the request resolved to: (MID, display name).
    pub classes: Vec<(String, String)>,
    /// Images the selection picked (over all splits).
    pub selected: usize,
    /// Of those, already in the project (not fetched again).
    pub already_present: usize,
    /// Images added to the project.
    pub images_added: usize,
    /// Instances added.
    pub instances_added: usize,
    /// Bytes transferred.
    pub bytes: Transfer,
    /// What was left out, with ImageIDs / MaskPaths.
    pub failures: Vec<Failure>,
    /// Whether the run was cancelled (what was committed before stays).
    pub cancelled: bool,
}

impl DownloadSummary {
    /// Failures grouped by kind.
    pub fn failures_by_kind(&self) -> BTreeMap<FailureKind, Vec<&str>> {
        let mut out: BTreeMap<FailureKind, Vec<&str>> = BTreeMap::new();
        for f in &self.failures {
            out.entry(f.kind).or_default().push(&f.id);
        }
        out
    }
}

struct Counters {
    index: AtomicU64,
    metadata: AtomicU64,
    masks: MaskCounters,
    images: AtomicU64,
}

impl Counters {
    fn transfer(&self) -> Transfer {
        Transfer {
            index_bytes: self.index.load(Ordering::Relaxed),
            metadata_bytes: self.metadata.load(Ordering::Relaxed),
            mask_range_bytes: self.masks.range.load(Ordering::Relaxed),
            mask_shard_bytes: self.masks.whole.load(Ordering::Relaxed),
            shard_sizes: self.masks.shard_sizes.load(Ordering::Relaxed),
            image_bytes: self.images.load(Ordering::Relaxed),
        }
    }
}

/// Downloads what `req` asks for into `project`. Only images not yet in the project are fetched
/// (re-running the same request transfers nothing; an enlarged one fetches the difference), and
/// images are imported in batches of [`Config::batch_size`]. When `cancel` is set the run stops
/// promptly, even mid-transfer; batches committed before stay, partial files stay in the cache
/// for the next run, and the summary says `cancelled`.
pub fn download(
    req: &DownloadRequest,
    project: &mut Project,
    cfg: &Config,
    cancel: &CancelToken,
    events: &dyn Fn(DownloadEvent),
) -> Result<DownloadSummary, Error> {
    let mut summary = DownloadSummary::default();
    let counters = Counters {
        index: AtomicU64::new(0),
        metadata: AtomicU64::new(0),
        masks: MaskCounters::default(),
        images: AtomicU64::new(0),
    };
    let result = run(req, project, cfg, cancel, events, &counters, &mut summary);
    summary.bytes = counters.transfer();
    match result {
        Ok(()) => Ok(summary),
        Err(Error::Cancelled) => {
            summary.cancelled = true;
            Ok(summary)
        }
        Err(e) => Err(e),
    }
}
