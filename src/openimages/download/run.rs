//! The request's steps in order: catalogue, split indexes, selection, metadata, masks, images.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::cancel::CancelToken;
use crate::dataset::ClassDef;
use crate::dataset::store::Project;

use crate::openimages::catalogue::{self, Catalogue};
use crate::openimages::error::FailureKind;
use crate::openimages::http::Http;
use crate::openimages::images::{self, ImageJob, ImageResult};
use crate::openimages::masks::{self};
use crate::openimages::select::{self, Options};
use crate::openimages::{Config, Error, Index, Split, image_id_str};

use super::fetch::{ensure_split_index, fetch_file, present_images};
use super::import::{BuildCtx, Pending, Ready, build, import_batch};
use super::{Counters, DownloadEvent, DownloadRequest, DownloadSummary, Failure, Phase};

pub(super) fn run(
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
