//! One download request, end to end: catalogue → index → selection → metadata → masks →
//! images, imported into the project in batches (so a long run commits progressively and an
//! interrupted run resumes where it stopped).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cancel::CancelToken;
use crate::dataset::store::{Project, StoreError, decode_limits};
use crate::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use crate::fsutil::write_atomic;

use super::catalogue::{self, Catalogue};
use super::error::FailureKind;
use super::http::Http;
use super::images::{self, ImageJob, ImageResult};
use super::index::{self, ImageMeta, MaskRow};
use super::masks::{self, MaskCounters};
use super::select::{self, Options};
use super::{Config, Error, Index, Split, image_id_str, parse_image_id};

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

/// Downloads a GCS file into the cache with byte-progress events (throttled to 1 MiB steps).
fn fetch_file(
    http: &Http,
    cfg: &Config,
    key: &str,
    phase: Phase,
    cancel: &CancelToken,
    counter: &AtomicU64,
    events: &dyn Fn(DownloadEvent),
) -> Result<PathBuf, Error> {
    let dest = cfg.file_path(key);
    if dest.is_file() {
        return Ok(dest);
    }
    let last = AtomicU64::new(u64::MAX);
    http.download_file(&cfg.gcs_url(key), &dest, cancel, counter, &|done, total| {
        let step = done >> 20;
        if last.swap(step, Ordering::Relaxed) != step || Some(done) == total {
            events(DownloadEvent::Progress {
                phase,
                done,
                total: total.unwrap_or(0),
                bytes: counter.load(Ordering::Relaxed),
            });
        }
    })?;
    Ok(dest)
}

/// Makes sure a split's segmentation CSV is downloaded (resumable) and indexed.
impl Catalogue {
    /// Like [`Catalogue::load`], first indexing `splits` (downloading their segmentation CSVs:
    /// train is 770 MiB, validation 2.8 MiB, test 8.3 MiB) so their counts are known. When the
    /// class files fell back to the built-in copy the network is down: no split is indexed and
    /// [`Catalogue::fallback_reason`] says why. (Here, not in `catalogue`, so the catalogue does
    /// not depend on the downloader.)
    pub fn load_with_counts(
        cfg: &Config,
        splits: &[Split],
        cancel: &CancelToken,
        events: &dyn Fn(DownloadEvent),
    ) -> Result<Self, Error> {
        let http = Http::new(cfg);
        let mut index = Index::open(&cfg.cache_dir)?;
        let counter = AtomicU64::new(0);
        let fallback_reason = catalogue::ensure_in_index(&http, cfg, &mut index, cancel, &counter)?;
        // The network just failed: indexing would fail the same way after its retries.
        let splits = if fallback_reason.is_some() {
            &[]
        } else {
            splits
        };
        for &split in splits {
            ensure_split_index(&http, cfg, &mut index, split, cancel, &counter, events)?;
        }
        Ok(Self::from_index(&index)?.with_fallback_reason(fallback_reason))
    }
}

pub(crate) fn ensure_split_index(
    http: &Http,
    cfg: &Config,
    index: &mut Index,
    split: Split,
    cancel: &CancelToken,
    counter: &AtomicU64,
    events: &dyn Fn(DownloadEvent),
) -> Result<(), Error> {
    if index.is_indexed(split)? {
        return Ok(());
    }
    let key = split.segmentation_csv();
    events(DownloadEvent::Phase {
        phase: Phase::Index,
        message: format!("{split}: {key}"),
    });
    let path = fetch_file(http, cfg, &key, Phase::Index, cancel, counter, events)?;
    let size = std::fs::metadata(&path).map_err(Error::io(&path))?.len();
    let stats = index.load_segmentations(
        split,
        &path,
        &cfg.gcs_url(&key),
        None,
        cancel,
        &mut |done, _| {
            events(DownloadEvent::Progress {
                phase: Phase::Index,
                done,
                total: size,
                bytes: counter.load(Ordering::Relaxed),
            });
        },
    )?;
    if stats.bad_rows > 0 {
        events(DownloadEvent::Warning(format!(
            "{key}: skipped {} malformed rows",
            stats.bad_rows
        )));
    }
    if stats.unsafe_mask_paths > 0 {
        events(DownloadEvent::Warning(format!(
            "{key}: refused {} rows whose MaskPath is not a plain mask file name ({})",
            stats.unsafe_mask_paths,
            super::UNSAFE_MASK_PATH
        )));
    }
    log::info!("{key}: indexed {} masks", stats.rows);
    Ok(())
}

/// ImageIDs of a split already in the project (`openimages/{split}/{ImageID}.jpg`).
fn present_images(project: &Project, split: Split) -> Result<HashSet<u64>, Error> {
    let prefix = format!("{PROJECT_FOLDER}/{}/", split.as_str());
    let mut stmt = project
        .connection()
        .prepare("SELECT path FROM images WHERE substr(path, 1, ?2) = ?1")
        .map_err(StoreError::from)?;
    let rows = stmt
        .query_map(rusqlite::params![prefix, prefix.len() as i64], |r| {
            r.get::<_, String>(0)
        })
        .map_err(StoreError::from)?;
    let mut out = HashSet::new();
    for path in rows {
        let path = path.map_err(StoreError::from)?;
        if let Some(id) = path
            .strip_prefix(&prefix)
            .and_then(|p| p.strip_suffix(".jpg"))
            && let Some(id) = parse_image_id(id.as_bytes())
        {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Everything needed to turn one downloaded image into an [`ImportImage`].
struct Pending {
    split: Split,
    id: u64,
    masks: Vec<MaskRow>,
}

struct Ready {
    image: ImportImage,
    staged: Vec<PathBuf>,
    id: String,
}

/// Rotates a gray or colour image counter-clockwise by `deg` (0/90/180/270).
fn rotate_ccw<I: image::GenericImageView>(
    img: &I,
    deg: u32,
) -> image::ImageBuffer<I::Pixel, Vec<<I::Pixel as image::Pixel>::Subpixel>>
where
    I::Pixel: 'static,
{
    match deg {
        90 => image::imageops::rotate270(img),
        180 => image::imageops::rotate180(img),
        270 => image::imageops::rotate90(img),
        _ => {
            let mut out = image::ImageBuffer::new(img.width(), img.height());
            image::imageops::replace(&mut out, img, 0, 0);
            out
        }
    }
}

/// `Rotation` as a multiple of 90 (empty or odd values → 0).
fn rotation_degrees(meta: Option<&ImageMeta>) -> Option<u32> {
    let r = meta.and_then(|m| m.rotation)?;
    let r = r.rem_euclid(360.0);
    [0u32, 90, 180, 270]
        .into_iter()
        .find(|d| (f64::from(*d) - r).abs() < 1e-6)
}

fn decode_png(bytes: &[u8]) -> Result<image::GrayImage, String> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    reader.limits(decode_limits());
    Ok(reader.decode().map_err(|e| e.to_string())?.into_luma8())
}

struct BuildCtx<'a> {
    cfg: &'a Config,
    index: &'a Index,
    names: &'a HashMap<i64, (String, String)>,
    apply_rotation: bool,
    events: &'a dyn Fn(DownloadEvent),
}

/// Turns a staged image and its staged masks into an import record: rotation applied to both,
/// masks binarised and resized (nearest neighbour) to the image, empty masks skipped.
fn build(
    ctx: &BuildCtx<'_>,
    p: &Pending,
    path: PathBuf,
    w: u32,
    h: u32,
    failures: &mut Vec<Failure>,
) -> Result<Ready, String> {
    let id = image_id_str(p.id);
    let meta = ctx
        .index
        .image_meta(p.split, p.id)
        .map_err(|e| e.to_string())?;
    let deg = if ctx.apply_rotation {
        rotation_degrees(meta.as_ref()).unwrap_or(0)
    } else {
        0
    };
    if ctx.apply_rotation
        && let Some(r) = meta.as_ref().and_then(|m| m.rotation)
        && rotation_degrees(meta.as_ref()).is_none()
    {
        (ctx.events)(DownloadEvent::Warning(format!(
            "{id}: Rotation {r} is not a multiple of 90; left as stored"
        )));
    }
    let mut staged = vec![path.clone()];
    let (src_path, width, height) = if deg == 0 {
        (path, w, h)
    } else {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut reader =
            image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        reader.limits(decode_limits());
        let img = reader.decode().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        let (rw, rh) = match img {
            image::DynamicImage::ImageLuma8(g) => {
                let r = rotate_ccw(&g, deg);
                let dims = r.dimensions();
                r.write_with_encoder(encoder).map_err(|e| e.to_string())?;
                dims
            }
            other => {
                let r = rotate_ccw(&other.to_rgb8(), deg);
                let dims = r.dimensions();
                r.write_with_encoder(encoder).map_err(|e| e.to_string())?;
                dims
            }
        };
        let upright = path.with_extension("upright.jpg");
        write_atomic(&upright, &out).map_err(|e| e.to_string())?;
        staged.push(upright.clone());
        (upright, rw, rh)
    };
    let clicks_csv = ctx.cfg.file_path(&p.split.segmentation_csv());
    let mut instances = Vec::new();
    for m in &p.masks {
        // An unsafe name or a missing file: the mask phase already recorded the failure.
        let Ok(mask_file) = masks::staged_mask(ctx.cfg, p.split, &m.mask_path) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(&mask_file) else {
            continue;
        };
        staged.push(mask_file);
        let gray = match decode_png(&bytes) {
            Ok(g) => rotate_ccw(&g, deg),
            Err(e) => {
                failures.push(Failure {
                    kind: FailureKind::MaskCorrupt,
                    id: m.mask_path.clone(),
                    message: e,
                });
                continue;
            }
        };
        let mask = Mask::from_gray(&gray).resize_nearest(width, height);
        if mask.area() == 0 {
            (ctx.events)(DownloadEvent::Warning(format!(
                "{}: empty mask skipped",
                m.mask_path
            )));
            failures.push(Failure {
                kind: FailureKind::EmptyMask,
                id: m.mask_path.clone(),
                message: "no foreground pixels at image size".into(),
            });
            continue;
        }
        let (mid, name) = ctx.names.get(&m.class).cloned().unwrap_or_default();
        let clicks = m
            .clicks
            .and_then(|(at, len)| index::read_clicks(&clicks_csv, at, len));
        instances.push(ImportInstance {
            class: name,
            segmentation: Segmentation::Bitmap(mask),
            iscrowd: false,
            origin: Origin::OpenImages,
            provenance: Some(serde_json::json!({
                "mid": mid,
                "box_id": m.box_id,
                "predicted_iou": m.predicted_iou,
                "clicks": clicks,
                "mask": m.mask_path,
                "split": p.split.as_str(),
            })),
        });
    }
    let meta = meta.unwrap_or_default();
    Ok(Ready {
        image: ImportImage {
            src_path,
            file_name: format!("{PROJECT_FOLDER}/{}/{id}.jpg", p.split.as_str()),
            width,
            height,
            split: Some(p.split.as_str().to_owned()),
            source: "openimages".into(),
            attribution: Attribution {
                author: meta.author,
                license: meta.license,
                original_url: meta.original_url,
                title: meta.title,
            },
            instances,
        },
        staged,
        id,
    })
}

/// Imports a batch in one transaction; if the store refuses it, imports image by image so one
/// bad image cannot sink the rest. Staged files of imported images are deleted.
fn import_batch(
    project: &mut Project,
    batch: Vec<Ready>,
    class_defs: &[ClassDef],
    cancel: &CancelToken,
    summary: &mut DownloadSummary,
) -> Result<(), Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let source = Path::new(PROJECT_FOLDER);
    let mut set = ImportSet {
        format: "openimages".into(),
        classes: class_defs.to_vec(),
        images: Vec::new(),
    };
    set.images = batch.iter().map(|r| r.image.clone()).collect();
    let tally = |summary: &mut DownloadSummary, s: &crate::dataset::store::ImportSummary| {
        summary.images_added += s.images_added;
        summary.instances_added += s.instances_added;
    };
    match project.import(&set, source, cancel, &mut |_| {}) {
        Ok(s) => tally(summary, &s),
        Err(StoreError::Cancelled) => return Err(Error::Cancelled),
        Err(e) => {
            log::warn!("batch import failed ({e}); importing one by one");
            for r in &batch {
                set.images = vec![r.image.clone()];
                match project.import(&set, source, cancel, &mut |_| {}) {
                    Ok(s) => tally(summary, &s),
                    Err(StoreError::Cancelled) => return Err(Error::Cancelled),
                    Err(e) => summary.failures.push(Failure {
                        kind: FailureKind::Import,
                        id: r.id.clone(),
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    for r in &batch {
        for f in &r.staged {
            std::fs::remove_file(f).ok();
        }
    }
    Ok(())
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

fn run(
    req: &DownloadRequest,
    project: &mut Project,
    cfg: &Config,
    cancel: &CancelToken,
    events: &dyn Fn(DownloadEvent),
    counters: &Counters,
    summary: &mut DownloadSummary,
) -> Result<(), Error> {
    if req.classes.iter().all(|c| c.trim().is_empty()) {
        return Err(Error::InvalidRequest("no classes given".into()));
    }
    if req.splits.is_empty() {
        return Err(Error::InvalidRequest("no splits given".into()));
    }
    if req.max_samples == Some(0) {
        return Err(Error::InvalidRequest(
            "max_samples must be at least 1".into(),
        ));
    }
    let http = Http::new(cfg);
    let mut index = Index::open(&cfg.cache_dir)?;

    events(DownloadEvent::Phase {
        phase: Phase::Catalogue,
        message: "class lists and hierarchy".into(),
    });
    if let Some(reason) =
        catalogue::ensure_in_index(&http, cfg, &mut index, cancel, &counters.index)?
    {
        events(DownloadEvent::Warning(format!(
            "class files not downloaded ({reason}); using the class list built into Mask Studio"
        )));
    }
    let cat = Catalogue::from_index(&index)?;
    let mut mids: Vec<(String, String)> = Vec::new();
    for name in req.classes.iter().filter(|c| !c.trim().is_empty()) {
        let resolved = cat.resolve(name)?;
        let is_self = resolved.len() == 1 && resolved[0].name.eq_ignore_ascii_case(name.trim());
        if !is_self && !resolved.iter().any(|c| c.mid == name.trim()) {
            let list: Vec<_> = resolved.iter().map(|c| c.name.as_str()).collect();
            events(DownloadEvent::Warning(format!(
                "{name:?} has no masks itself; using its subclasses {}",
                list.join(", ")
            )));
        }
        for c in resolved {
            if !mids.iter().any(|(m, _)| *m == c.mid) {
                mids.push((c.mid.clone(), c.name.clone()));
            }
        }
    }
    summary.classes = mids.clone();

    for &split in &req.splits {
        ensure_split_index(
            &http,
            cfg,
            &mut index,
            split,
            cancel,
            &counters.index,
            events,
        )?;
    }
    let class_ids: Vec<i64> = mids
        .iter()
        .map(|(m, _)| Index::class_id(index.conn(), m))
        .collect::<Result<_, _>>()?;
    let wanted_classes: HashSet<i64> = class_ids.iter().copied().collect();

    // Selection, minus what the project already has.
    let opts = Options {
        max_samples: req.max_samples,
        seed: req.seed,
        shuffle: req.shuffle,
        prefer_all: req.prefer_all_classes,
    };
    let mut pending: Vec<Pending> = Vec::new();
    for &split in &req.splits {
        let present = present_images(project, split)?;
        let picked = select::select(&index, split, &class_ids, &present, opts)?;
        summary.selected += picked.len();
        for id in picked {
            if present.contains(&id) {
                summary.already_present += 1;
                continue;
            }
            if let Some((kind, message)) = index.failure(split, id)? {
                if let (false, Some(kind)) = (req.retry_failed, FailureKind::parse(&kind)) {
                    summary.failures.push(Failure {
                        kind,
                        id: image_id_str(id),
                        message: format!("earlier run: {message}"),
                    });
                    continue;
                }
                index.clear_failure(split, id)?;
            }
            let mut masks = index.image_masks(split, id)?;
            if req.only_matching {
                masks.retain(|m| wanted_classes.contains(&m.class));
            }
            // Rows the index refused (MaskPath not a plain mask name): reported, never fetched.
            for (class, mask_path, reason) in index.rejected_masks(split, id)? {
                if !req.only_matching || wanted_classes.contains(&class) {
                    summary.failures.push(Failure {
                        kind: FailureKind::UnsafeMaskPath,
                        id: mask_path,
                        message: reason,
                    });
                }
            }
            pending.push(Pending { split, id, masks });
        }
    }
    if pending.is_empty() {
        return Ok(());
    }

    // Names of every class an instance may have.
    let mut names: HashMap<i64, (String, String)> = HashMap::new();
    for p in &pending {
        for m in &p.masks {
            if let std::collections::hash_map::Entry::Vacant(v) = names.entry(m.class) {
                let mid: String = index.conn().query_row(
                    "SELECT mid FROM classes WHERE id = ?1",
                    [m.class],
                    |r| r.get(0),
                )?;
                let name = cat
                    .get(&mid)
                    .map_or_else(|| mid.clone(), |c| c.name.clone());
                v.insert((mid, name));
            }
        }
    }
    let mut class_defs: Vec<ClassDef> = mids
        .iter()
        .map(|(m, n)| ClassDef {
            name: n.clone(),
            mid: Some(m.clone()),
        })
        .collect();
    let mut extra: Vec<&(String, String)> = names
        .values()
        .filter(|(m, _)| !mids.iter().any(|(x, _)| x == m))
        .collect();
    extra.sort();
    class_defs.extend(extra.into_iter().map(|(m, n)| ClassDef {
        name: n.clone(),
        mid: Some(m.clone()),
    }));

    // Image metadata (attribution, Rotation) for the new images only.
    for &split in &req.splits {
        let mut wanted = HashSet::new();
        for p in pending.iter().filter(|p| p.split == split) {
            if index.image_meta(split, p.id)?.is_none() {
                wanted.insert(p.id);
            }
        }
        if wanted.is_empty() {
            continue;
        }
        let key = split.images_csv();
        events(DownloadEvent::Phase {
            phase: Phase::Metadata,
            message: format!("{split}: {key}"),
        });
        let path = fetch_file(
            &http,
            cfg,
            key,
            Phase::Metadata,
            cancel,
            &counters.metadata,
            events,
        )?;
        let found = index.scan_image_metadata(split, &path, &wanted, cancel)?;
        if found < wanted.len() {
            events(DownloadEvent::Warning(format!(
                "{split}: {} images have no metadata row (no attribution, Rotation 0)",
                wanted.len() - found
            )));
        }
        if !cfg.keep_csv {
            std::fs::remove_file(&path).ok();
        }
    }

    // Masks, shard by shard.
    let mut by_shard: BTreeMap<(Split, char), Vec<String>> = BTreeMap::new();
    for p in &pending {
        let shard = image_id_str(p.id).chars().next().unwrap_or('0');
        by_shard
            .entry((p.split, shard))
            .or_default()
            .extend(p.masks.iter().map(|m| m.mask_path.clone()));
    }
    let total_masks: usize = by_shard.values().map(Vec::len).sum();
    events(DownloadEvent::Phase {
        phase: Phase::Masks,
        message: format!("{total_masks} masks from {} shards", by_shard.len()),
    });
    let mut masks_done = 0u64;
    for ((split, shard), wanted) in &by_shard {
        let failures = masks::fetch_shard(
            &http,
            cfg,
            *split,
            *shard,
            wanted,
            cancel,
            &counters.masks,
            &mut |n| {
                masks_done += n as u64;
                events(DownloadEvent::Progress {
                    phase: Phase::Masks,
                    done: masks_done,
                    total: total_masks as u64,
                    bytes: counters.masks.range.load(Ordering::Relaxed)
                        + counters.masks.whole.load(Ordering::Relaxed),
                });
            },
        )?;
        summary
            .failures
            .extend(failures.into_iter().map(|f| Failure {
                kind: f.kind,
                id: f.mask_path,
                message: f.message,
            }));
    }

    // Images, imported in batches as they arrive.
    events(DownloadEvent::Phase {
        phase: Phase::Images,
        message: format!("{} images", pending.len()),
    });
    let jobs: Vec<ImageJob> = pending
        .iter()
        .map(|p| ImageJob {
            split: p.split,
            id: p.id,
        })
        .collect();
    let by_key: HashMap<(Split, u64), &Pending> =
        pending.iter().map(|p| ((p.split, p.id), p)).collect();
    let ctx = BuildCtx {
        cfg,
        index: &index,
        names: &names,
        apply_rotation: req.apply_rotation,
        events,
    };
    let total = jobs.len() as u64;
    let mut done = 0u64;
    let mut batch: Vec<Ready> = Vec::new();
    let batch_size = cfg.batch_size.max(1);
    let mut failures = Vec::new();
    let mut project_result: Result<(), Error> = Ok(());
    let pool = images::run_pool(&http, cfg, &jobs, cancel, &counters.images, &mut |result| {
        done += 1;
        match result {
            ImageResult::Ready {
                job,
                path,
                width,
                height,
            } => {
                let p = by_key[&(job.split, job.id)];
                match build(&ctx, p, path, width, height, &mut failures) {
                    Ok(ready) => batch.push(ready),
                    Err(message) => failures.push(Failure {
                        kind: FailureKind::CorruptImage,
                        id: image_id_str(job.id),
                        message,
                    }),
                }
            }
            ImageResult::Failed { job, kind, message } => {
                let id = image_id_str(job.id);
                if matches!(kind, FailureKind::NotFound | FailureKind::CorruptImage) {
                    index.record_failure(job.split, job.id, kind.as_str(), &message)?;
                    for m in &by_key[&(job.split, job.id)].masks {
                        if let Ok(staged) = masks::staged_mask(cfg, job.split, &m.mask_path) {
                            std::fs::remove_file(staged).ok();
                        }
                    }
                }
                events(DownloadEvent::Warning(format!(
                    "{id}: {} ({message})",
                    kind.as_str()
                )));
                failures.push(Failure { kind, id, message });
            }
        }
        events(DownloadEvent::Progress {
            phase: Phase::Images,
            done,
            total,
            bytes: counters.images.load(Ordering::Relaxed),
        });
        if batch.len() >= batch_size
            && let Err(e) = import_batch(
                project,
                std::mem::take(&mut batch),
                &class_defs,
                cancel,
                summary,
            )
        {
            project_result = Err(e);
            return Err(Error::Cancelled);
        }
        Ok(())
    });
    summary.failures.extend(failures);
    project_result?;
    pool?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    import_batch(project, batch, &class_defs, cancel, summary)?;
    Ok(())
}

/// Decodes a stored RLE (column-major runs, zeros first) into a 0/255 gray image.
fn rle_to_gray(rle: &crate::dataset::Rle) -> image::GrayImage {
    let (w, h) = (rle.width, rle.height);
    let mut img = image::GrayImage::new(w, h);
    let mut pos: u64 = 0;
    for (i, &run) in rle.counts.iter().enumerate() {
        if i % 2 == 1 {
            for p in pos..pos + u64::from(run) {
                let (x, y) = ((p / u64::from(h)) as u32, (p % u64::from(h)) as u32);
                if x < w {
                    img.put_pixel(x, y, image::Luma([255]));
                }
            }
        }
        pos += u64::from(run);
    }
    img
}

/// A class name as a folder name (lower case, path separators and control characters removed).
fn class_folder(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || c == ':' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let s = s.trim().trim_matches('.').to_owned();
    if s.is_empty() { "_".into() } else { s }
}

/// Writes the project's Open Images data in the seed's layout:
/// `<class>/images/{ImageID}.jpg` and `<class>/segmentations/{ImageID}_{MID without /}_{BoxID}.png`
/// (masks at image size, 0/255). Only instances with Open Images provenance are written (the
/// current, possibly edited, mask). Returns (images, masks) written.
pub fn export_seed_layout(project: &Project, out: &Path) -> Result<(usize, usize), Error> {
    let set = project.export_set(None)?;
    let classes: HashMap<i64, &crate::dataset::ExportClass> =
        set.classes.iter().map(|c| (c.id, c)).collect();
    let (mut n_images, mut n_masks) = (0, 0);
    for image in &set.images {
        let Some(id) = Path::new(&image.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
        else {
            continue;
        };
        let mut copied: HashSet<i64> = HashSet::new();
        for inst in project.instances(image.id)? {
            // Open Images instances keep their MID and BoxID; others (imported, drawn) use the
            // class's MID or name and their instance id, so every project exports this way.
            let class_def = classes.get(&inst.class_id);
            let class_name = class_def.map_or("object", |c| c.name.as_str());
            let provenance = inst.provenance.as_ref();
            let mid = provenance
                .and_then(|p| p["mid"].as_str())
                .or_else(|| class_def.and_then(|c| c.mid.as_deref()))
                .map_or_else(
                    || class_folder(class_name).replace(['_', ' '], "-"),
                    str::to_owned,
                );
            let box_id = provenance
                .and_then(|p| p["box_id"].as_str())
                .map_or_else(|| format!("{:08x}", inst.id), str::to_owned);
            let class = class_folder(class_name);
            let dir = out.join(&class);
            if copied.insert(inst.class_id) {
                let dest = dir.join("images").join(format!("{id}.jpg"));
                let bytes = std::fs::read(&image.path).map_err(Error::io(&image.path))?;
                write_atomic(&dest, &bytes)?;
                n_images += 1;
            }
            let gray = rle_to_gray(&inst.rle);
            let mut png = Vec::new();
            gray.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::Format {
                    file: id.clone(),
                    message: e.to_string(),
                })?;
            let name = format!("{id}_{}_{box_id}.png", mid.replace('/', ""));
            write_atomic(&dir.join("segmentations").join(name), &png)?;
            n_masks += 1;
        }
    }
    Ok((n_images, n_masks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_values() {
        let m = |r: Option<f64>| ImageMeta {
            rotation: r,
            ..Default::default()
        };
        assert_eq!(rotation_degrees(Some(&m(Some(90.0)))), Some(90));
        assert_eq!(rotation_degrees(Some(&m(Some(0.0)))), Some(0));
        assert_eq!(rotation_degrees(Some(&m(None))), None);
        assert_eq!(rotation_degrees(Some(&m(Some(45.0)))), None);
        assert_eq!(rotation_degrees(None), None);
    }

    #[test]
    fn rotate_ccw_moves_top_left_to_bottom_left() {
        let mut img = image::GrayImage::new(4, 2);
        img.put_pixel(0, 0, image::Luma([255]));
        let r = rotate_ccw(&img, 90);
        assert_eq!(r.dimensions(), (2, 4));
        assert_eq!(r.get_pixel(0, 3)[0], 255); // CCW: top-left goes to bottom-left
    }

    #[test]
    fn folders() {
        assert_eq!(class_folder("Hot dog"), "hot dog");
        assert_eq!(class_folder("a/b"), "a_b");
    }
}
