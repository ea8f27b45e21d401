//! Fetching mask PNGs out of the ZIP shards: HEAD, EOCD/ZIP64 tail read, central directory
//! (cached on disk per shard, keyed by URL + length + ETag), then only the needed entries,
//! coalesced into few range requests. Falls back to the whole shard (resumable) when the
//! server ignores Range.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::cancel::CancelToken;
use crate::fsutil::write_atomic;

use super::error::FailureKind;
use super::http::{Http, RangeReply};
use super::zip::{self, CentralDirectory, DirLocation, FileSource, RangeSource};
use super::{Config, Error, Split};

/// Byte counters of the mask phase.
#[derive(Debug, Default)]
pub(crate) struct MaskCounters {
    /// Range reads (tail, directory, entries).
    pub range: AtomicU64,
    /// Whole-shard downloads (fallback).
    pub whole: AtomicU64,
    /// Sum of the sizes of the shards touched (what whole-shard downloads would cost).
    pub shard_sizes: AtomicU64,
}

/// A mask that could not be fetched.
#[derive(Debug, Clone)]
pub(crate) struct MaskFailure {
    pub mask_path: String,
    pub kind: FailureKind,
    pub message: String,
}

/// Where a staged mask lives. The name is checked again here, where it becomes a path (the
/// index refuses such rows too, but an index built by an older version may hold them): it must
/// be a plain Open Images mask name ([`super::check_mask_name`]) and, if the file exists, really
/// inside the staging folder (no symlink out). `Err` is the reason, for an
/// [`FailureKind::UnsafeMaskPath`] failure.
pub(crate) fn staged_mask(cfg: &Config, split: Split, mask_path: &str) -> Result<PathBuf, String> {
    super::check_mask_name(mask_path)?;
    crate::dataset::paths::join_file_name(&cfg.staging_dir(split).join("masks"), mask_path)
        .map_err(|e| e.to_string())
}

fn unsafe_failure(mask_path: &str, message: String) -> MaskFailure {
    MaskFailure {
        mask_path: super::shown_mask_path(mask_path.as_bytes()),
        kind: FailureKind::UnsafeMaskPath,
        message,
    }
}

struct HttpSource<'a> {
    http: &'a Http,
    url: String,
    len: u64,
    cancel: &'a CancelToken,
    counter: &'a AtomicU64,
    ignored: AtomicBool,
}

impl RangeSource for HttpSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, start: u64, len: u64) -> Result<Vec<u8>, Error> {
        let len = len.min(self.len.saturating_sub(start));
        match self
            .http
            .get_range(&self.url, start, len, self.cancel, self.counter)?
        {
            RangeReply::Partial(bytes) if bytes.len() as u64 == len => Ok(bytes),
            RangeReply::Partial(bytes) => Err(Error::Transfer {
                url: self.url.clone(),
                message: format!("range {start}+{len} returned {} bytes", bytes.len()),
            }),
            RangeReply::Ignored => {
                self.ignored.store(true, Ordering::Relaxed);
                Err(Error::Transfer {
                    url: self.url.clone(),
                    message: "server ignores Range".into(),
                })
            }
        }
    }
    fn name(&self) -> String {
        self.url.clone()
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct DirKey {
    url: String,
    len: u64,
    etag: Option<String>,
    location: DirLocation,
}

fn load_cached_dir(
    base: &Path,
    url: &str,
    len: u64,
    etag: &Option<String>,
) -> Option<CentralDirectory> {
    let key: DirKey =
        serde_json::from_slice(&std::fs::read(base.with_extension("cd.json")).ok()?).ok()?;
    if key.url != url || key.len != len || &key.etag != etag {
        return None;
    }
    let raw = std::fs::read(base.with_extension("cd")).ok()?;
    CentralDirectory::parse(&raw, key.location, url).ok()
}

fn save_cached_dir(base: &Path, key: &DirKey, raw: &[u8]) -> Result<(), Error> {
    write_atomic(&base.with_extension("cd"), raw)?;
    let json = serde_json::to_vec(key).map_err(|e| Error::Format {
        file: key.url.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&base.with_extension("cd.json"), &json)?;
    Ok(())
}

/// Extracts `wanted` entries from a source, coalescing near entries into one read, and writes
/// each to the staging folder. Entry-level problems become failures; transport errors abort.
#[allow(clippy::too_many_arguments)]
fn extract_all(
    src: &dyn RangeSource,
    dir: &CentralDirectory,
    wanted: &[String],
    cfg: &Config,
    split: Split,
    cancel: &CancelToken,
    failures: &mut Vec<MaskFailure>,
    on_done: &mut dyn FnMut(usize),
) -> Result<(), Error> {
    let mut found = Vec::new();
    for name in wanted {
        match dir.get(name) {
            Some(e) => found.push(e),
            None => failures.push(MaskFailure {
                mask_path: name.clone(),
                kind: FailureKind::MaskMissing,
                message: format!("not in {}", src.name()),
            }),
        }
    }
    // Entries whose record cannot be where the directory says (too big, past the end,
    // overflowing) are failures of their own, never reads.
    let mut placed = Vec::new();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for e in found {
        match dir.span(e) {
            Ok(span) => {
                placed.push(e);
                spans.push(span);
            }
            Err(err) => {
                failures.push(MaskFailure {
                    mask_path: e.name.clone(),
                    kind: FailureKind::MaskCorrupt,
                    message: err.to_string(),
                });
                on_done(1);
            }
        }
    }
    for (start, end, members) in zip::coalesce(&spans, cfg.coalesce_gap, cfg.max_range_bytes) {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let bytes = src.read_at(start, end - start)?;
        for &i in &members {
            let entry = placed[i];
            let (s, e) = spans[i];
            // Spans lie inside [start, end); a short read leaves a short (or empty) record,
            // which `extract` refuses.
            let from = usize::try_from(s - start)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let to = usize::try_from(e - start)
                .unwrap_or(usize::MAX)
                .clamp(from, bytes.len());
            let record = &bytes[from..to];
            let dest = match staged_mask(cfg, split, &entry.name) {
                Ok(dest) => dest,
                Err(message) => {
                    failures.push(unsafe_failure(&entry.name, message));
                    continue;
                }
            };
            match zip::extract(record, entry, &src.name()) {
                Ok(png) => write_atomic(&dest, &png)?,
                Err(err) => failures.push(MaskFailure {
                    mask_path: entry.name.clone(),
                    kind: FailureKind::MaskCorrupt,
                    message: err.to_string(),
                }),
            }
        }
        on_done(members.len());
    }
    Ok(())
}

/// Fetches the wanted masks of one shard into the staging folder (skipping those already
/// staged). Returns the per-mask failures.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch_shard(
    http: &Http,
    cfg: &Config,
    split: Split,
    shard: char,
    wanted: &[String],
    cancel: &CancelToken,
    counters: &MaskCounters,
    on_done: &mut dyn FnMut(usize),
) -> Result<Vec<MaskFailure>, Error> {
    let mut failures = Vec::new();
    let mut todo: Vec<String> = Vec::new();
    for m in wanted {
        match staged_mask(cfg, split, m) {
            Ok(path) if path.is_file() => on_done(1),
            Ok(_) => todo.push(m.clone()),
            Err(message) => {
                failures.push(unsafe_failure(m, message));
                on_done(1);
            }
        }
    }
    if todo.is_empty() {
        return Ok(failures);
    }
    // Range reads and the whole-shard fallback extract the same way.
    let mut extract = |src: &dyn RangeSource,
                       dir: &CentralDirectory,
                       todo: &[String],
                       failures: &mut Vec<MaskFailure>| {
        extract_all(src, dir, todo, cfg, split, cancel, failures, on_done)
    };
    let path = split.mask_shard(shard);
    let url = cfg.gcs_url(&path);
    let dir_base = cfg
        .shard_dir(split)
        .join(format!("{}-masks-{shard}", split.as_str()));
    let whole = dir_base.with_extension("zip");
    std::fs::create_dir_all(cfg.shard_dir(split)).map_err(Error::io(cfg.shard_dir(split)))?;

    if !whole.is_file() {
        let head = http.head(&url, cancel)?;
        if let Some(len) = head.len {
            counters.shard_sizes.fetch_add(len, Ordering::Relaxed);
            let src = HttpSource {
                http,
                url: url.clone(),
                len,
                cancel,
                counter: &counters.range,
                ignored: AtomicBool::new(false),
            };
            let dir = match load_cached_dir(&dir_base, &url, len, &head.etag) {
                Some(dir) => Ok(dir),
                None => CentralDirectory::read(&src).and_then(|(dir, raw)| {
                    let key = DirKey {
                        url: url.clone(),
                        len,
                        etag: head.etag.clone(),
                        location: dir.location,
                    };
                    save_cached_dir(&dir_base, &key, &raw)?;
                    Ok(dir)
                }),
            };
            let result = dir.and_then(|dir| extract(&src, &dir, &todo, &mut failures));
            match result {
                Ok(()) => return Ok(failures),
                Err(e) if !src.ignored.load(Ordering::Relaxed) => return Err(e),
                Err(_) => {
                    log::warn!("{url}: the server ignores Range; downloading the whole shard");
                    failures.retain(|f| f.kind == FailureKind::UnsafeMaskPath);
                }
            }
        }
        http.download_file(&url, &whole, cancel, &counters.whole, &|_, _| {}, None)?;
    } else {
        counters.shard_sizes.fetch_add(
            std::fs::metadata(&whole).map(|m| m.len()).unwrap_or(0),
            Ordering::Relaxed,
        );
    }
    let todo: Vec<String> = todo
        .into_iter()
        .filter(|m| staged_mask(cfg, split, m).is_ok_and(|p| !p.is_file()))
        .collect();
    let src = FileSource::open(&whole)?;
    let (dir, _) = CentralDirectory::read(&src)?;
    extract(&src, &dir, &todo, &mut failures)?;
    Ok(failures)
}
