//! Files the request needs before any image: a split's segmentation CSV (downloaded,
//! resumable, then indexed), the catalogue with counts, and what the project already holds.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cancel::CancelToken;
use crate::dataset::store::{Project, StoreError};

use crate::openimages::catalogue::{self, Catalogue};
use crate::openimages::http::Http;
use crate::openimages::{Config, Error, Index, Split, parse_image_id};

use super::{DownloadEvent, PROJECT_FOLDER, Phase};

/// Downloads a GCS file into the cache with byte-progress events (throttled to 1 MiB steps).
pub(super) fn fetch_file(
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
    let progress = &|done, total: Option<u64>| {
        let step = done >> 20;
        if last.swap(step, Ordering::Relaxed) != step || Some(done) == total {
            events(DownloadEvent::Progress {
                phase,
                done,
                total: total.unwrap_or(0),
                bytes: counter.load(Ordering::Relaxed),
            });
        }
    };
    http.download_file(&cfg.gcs_url(key), &dest, cancel, counter, progress, None)?;
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

pub(super) fn ensure_split_index(
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
            crate::openimages::UNSAFE_MASK_PATH
        )));
    }
    log::info!("{key}: indexed {} masks", stats.rows);
    Ok(())
}

/// ImageIDs of a split already in the project (`openimages/{split}/{ImageID}.jpg`).
pub(super) fn present_images(project: &Project, split: Split) -> Result<HashSet<u64>, Error> {
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
