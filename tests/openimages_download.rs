//! The Open Images downloader against a loopback imitation of the real hosts.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::oi_server::{FxImage, FxOptions, HOT_DOG};
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::Rle;
use maskstudio::dataset::store::Project;
use maskstudio::openimages::{
    Catalogue, DownloadEvent, DownloadRequest, DownloadSummary, FailureKind, Phase, Split,
    download, export_seed_layout,
};

type Env = common::oi_server::OiEnv;

fn env(opts: FxOptions) -> Env {
    Env::start(&opts, 4)
}

fn hot_dog(splits: &[Split]) -> DownloadRequest {
    DownloadRequest {
        classes: vec!["hot DOG".into()],
        splits: splits.to_vec(),
        ..Default::default()
    }
}

fn run(env: &Env, req: &DownloadRequest) -> DownloadSummary {
    let mut project = env.project();
    download(
        req,
        &mut project,
        &env.cfg,
        &CancelToken::default(),
        &|_| {},
    )
    .unwrap()
}

fn rle_pixels(rle: &Rle) -> Vec<bool> {
    let (w, h) = (rle.width as usize, rle.height as usize);
    let mut px = vec![false; w * h];
    let mut pos = 0usize;
    for (i, &run) in rle.counts.iter().enumerate() {
        if i % 2 == 1 {
            for p in pos..pos + run as usize {
                let (x, y) = (p / h, p % h);
                px[y * w + x] = true;
            }
        }
        pos += run as usize;
    }
    px
}

fn walk_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Every image decodes, every mask sits on the white rectangles of its image (the rotation
/// marker), nothing half-written is left in the project.
fn check_project(project: &Project) -> (usize, usize) {
    assert_eq!(project.integrity_check().unwrap(), "ok");
    let set = project.export_set(None).unwrap();
    let mut instances = 0;
    for image in &set.images {
        let img = image::open(&image.path).unwrap().to_luma8();
        assert_eq!(
            img.dimensions(),
            (image.width, image.height),
            "{}",
            image.file_name
        );
        let mut union = vec![false; (image.width * image.height) as usize];
        for inst in &image.instances {
            let px = rle_pixels(&inst.rle);
            let (mut sum, mut n) = (0u64, 0u64);
            for (i, &on) in px.iter().enumerate() {
                if on {
                    sum += u64::from(img.as_raw()[i]);
                    n += 1;
                    union[i] = true;
                }
            }
            assert!(n > 0);
            let mean = sum / n;
            assert!(
                mean > 200,
                "{}: mask not on its object (mean {mean})",
                image.file_name
            );
            instances += 1;
        }
        let (mut sum, mut n) = (0u64, 0u64);
        for (i, &on) in union.iter().enumerate() {
            if !on {
                sum += u64::from(img.as_raw()[i]);
                n += 1;
            }
        }
        if let Some(mean) = sum.checked_div(n) {
            assert!(
                mean < 120,
                "{}: object outside its masks (mean {})",
                image.file_name,
                mean
            );
        }
    }
    let mut files = Vec::new();
    walk_files(&project.images_dir(), &mut files);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            !name.starts_with(".partial-") && !name.ends_with(".part"),
            "left over: {f:?}"
        );
    }
    assert_eq!(files.len(), set.images.len());
    (set.images.len(), instances)
}

#[test]
fn hot_dog_end_to_end_with_faults_rerun_and_export() {
    let env = env(FxOptions::default());
    {
        let mut f = env.server.faults();
        f.fail_503
            .insert("/s3/train/a4b5c6d7e8f90a1b.jpg".into(), 2);
        f.cut.insert("/s3/train/b5c6d7e8f90a1b2c.jpg".into(), 1);
        f.fail_503
            .insert("/gcs/v5/train-masks/train-masks-3.zip".into(), 1);
        f.cut.insert(
            "/gcs/v5/train-annotations-object-segmentation.csv".into(),
            1,
        );
    }
    let events = std::cell::RefCell::new(Vec::new());
    let mut project = env.project();
    let summary = download(
        &hot_dog(&[Split::Train, Split::Validation]),
        &mut project,
        &env.cfg,
        &CancelToken::default(),
        &|e| events.borrow_mut().push(e),
    )
    .unwrap();
    eprintln!("{summary:#?}");
    let expected: Vec<&FxImage> = env
        .images
        .iter()
        .filter(|i| i.split != "test" && i.instances.iter().any(|x| x.mid == HOT_DOG))
        .collect();
    assert_eq!(summary.selected, expected.len());
    assert_eq!(
        summary.images_added,
        expected.len() - 1,
        "all but the truncated JPEG"
    );
    let by_kind = summary.failures_by_kind();
    assert_eq!(
        by_kind[&FailureKind::CorruptImage],
        vec!["718293a4b5c6d7e8"]
    );
    assert_eq!(by_kind[&FailureKind::EmptyMask].len(), 1);
    assert!(!by_kind.contains_key(&FailureKind::Network));
    assert!(!summary.cancelled);
    let hot_dog_masks: usize = expected
        .iter()
        .filter(|i| !i.truncated)
        .map(|i| {
            i.instances
                .iter()
                .filter(|x| x.mid == HOT_DOG && !x.empty)
                .count()
        })
        .sum();
    assert_eq!(
        summary.instances_added, hot_dog_masks,
        "only matching instances, empty mask skipped"
    );
    assert_eq!(summary.bytes.mask_shard_bytes, 0);
    let phases: HashSet<Phase> = events
        .borrow()
        .iter()
        .filter_map(|e| match e {
            DownloadEvent::Phase { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(phases.len(), 5);

    let (images, instances) = check_project(&project);
    assert_eq!(
        (images, instances),
        (summary.images_added, summary.instances_added)
    );

    // Rotation 90 (stored 300×200): upright 200×300, marker (top-left in the stored frame) now
    // bottom-left, and its mask with it (checked above for every image).
    let set = project.export_set(None).unwrap();
    let rotated = set
        .images
        .iter()
        .find(|i| i.file_name == "openimages/train/1b2c3d4e5f607182.jpg")
        .unwrap();
    assert_eq!((rotated.width, rotated.height), (200, 300));
    let b = rotated.instances[0].rle.to_bbox();
    assert!(
        b[0] < 20.0 && b[1] > 150.0,
        "marker should be bottom-left, bbox {b:?}"
    );
    let r270 = set
        .images
        .iter()
        .find(|i| i.file_name.ends_with("3d4e5f60718293a4.jpg"))
        .unwrap();
    assert_eq!((r270.width, r270.height), (320, 240));

    // Attribution with quotes and commas; provenance.
    let a = &set
        .images
        .iter()
        .find(|i| i.file_name.ends_with("0a1b2c3d4e5f6071.jpg"))
        .unwrap()
        .attribution;
    assert_eq!(a.author.as_deref(), Some("Smith, \"Bob\" 0a1b"));
    assert_eq!(a.title.as_deref(), Some("Lunch, at \"0a1b2c\""));
    assert_eq!(
        a.license.as_deref(),
        Some("https://creativecommons.org/licenses/by/2.0/")
    );
    let rows = project.instances(set.images[0].id).unwrap();
    let p = rows[0].provenance.as_ref().unwrap();
    assert_eq!(p["mid"], HOT_DOG);
    assert!(p["mask"].as_str().unwrap().ends_with(".png"));
    let val = set
        .images
        .iter()
        .find(|i| i.split.as_deref() == Some("validation"))
        .unwrap();
    let vp = project.instances(val.id).unwrap()[0]
        .provenance
        .clone()
        .unwrap();
    assert!(vp["clicks"].is_null() && vp["predicted_iou"].is_null());
    let train = set
        .images
        .iter()
        .find(|i| i.split.as_deref() == Some("train"))
        .unwrap();
    let tp = project.instances(train.id).unwrap()[0]
        .provenance
        .clone()
        .unwrap();
    assert!(tp["clicks"].as_str().unwrap().contains(';'));
    assert!(tp["predicted_iou"].as_f64().unwrap() > 0.0);
    let classes = project.classes().unwrap();
    assert_eq!(classes.len(), 1);
    assert_eq!(classes[0].mid.as_deref(), Some(HOT_DOG));

    // Staging is empty again (only the failed image's nothing).
    let mut staged = Vec::new();
    walk_files(&env.cfg.cache_dir.join("staging"), &mut staged);
    assert!(
        staged
            .iter()
            .all(|p| p.extension().is_none_or(|e| e != "jpg")),
        "{staged:?}"
    );

    // Re-run: a no-op, nothing transferred.
    drop(project);
    env.server.clear_log();
    let again = run(&env, &hot_dog(&[Split::Train, Split::Validation]));
    assert_eq!(again.images_added, 0);
    assert_eq!(again.already_present, expected.len() - 1);
    assert_eq!(again.bytes.total(), 0);
    assert!(env.server.log().is_empty(), "{:?}", env.server.log());
    assert_eq!(
        again.failures_by_kind()[&FailureKind::CorruptImage],
        vec!["718293a4b5c6d7e8"]
    );

    // Export in the seed's layout.
    let out = env.dir.path().join("export");
    let (n_img, n_masks) = export_seed_layout(&env.project(), &out).unwrap();
    assert_eq!(
        (n_img, n_masks),
        (summary.images_added, summary.instances_added)
    );
    let seg = out.join("hot dog/segmentations");
    let some = std::fs::read_dir(&seg)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = some.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.contains("_m01b9xk_") && name.ends_with(".png"),
        "{name}"
    );
    let id = &name[..16];
    let jpg = image::open(out.join(format!("hot dog/images/{id}.jpg"))).unwrap();
    let png = image::open(&some).unwrap();
    assert_eq!((jpg.width(), jpg.height()), (png.width(), png.height()));
}

#[test]
fn single_class_range_reads_are_a_small_fraction_of_the_shards() {
    let env = env(FxOptions::default());
    let summary = run(&env, &hot_dog(&[Split::Train]));
    let b = summary.bytes;
    let ratio = b.mask_range_bytes as f64 / b.shard_sizes as f64;
    eprintln!(
        "range bytes {} of {} shard bytes ({:.2} %), whole-shard bytes {}",
        b.mask_range_bytes,
        b.shard_sizes,
        ratio * 100.0,
        b.mask_shard_bytes
    );
    assert!(b.shard_sizes > 0);
    assert_eq!(b.mask_shard_bytes, 0);
    assert!(
        ratio <= 0.05,
        "range reads took {:.2} % of the shards",
        ratio * 100.0
    );
    check_project(&env.project());
}

#[test]
fn server_ignoring_range_falls_back_to_whole_shards() {
    let env = env(FxOptions {
        train_fillers: 20,
        val_fillers: 5,
        ..Default::default()
    });
    env.server.faults().ignore_range = true;
    let summary = run(&env, &hot_dog(&[Split::Validation]));
    eprintln!("{:?}", summary.bytes);
    let expected = env
        .images
        .iter()
        .filter(|i| i.split == "validation" && i.instances.iter().any(|x| x.mid == HOT_DOG))
        .count();
    assert_eq!(summary.images_added, expected);
    assert!(summary.bytes.mask_shard_bytes > 0);
    assert_eq!(summary.bytes.mask_shard_bytes, summary.bytes.shard_sizes);
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    check_project(&env.project());
}

#[test]
fn enlarged_request_fetches_only_the_difference() {
    let env = env(FxOptions {
        train_fillers: 20,
        val_fillers: 5,
        ..Default::default()
    });
    let mut req = hot_dog(&[Split::Train]);
    req.max_samples = Some(3);
    req.seed = 42;
    let first = run(&env, &req);
    assert_eq!(first.selected, 3);
    let first_ids: HashSet<String> = env
        .server
        .log()
        .iter()
        .filter(|e| e.path.starts_with("/s3/") && e.status == 200)
        .map(|e| e.path.clone())
        .collect();
    // Same request with another engineer's run order: identical selection.
    env.server.clear_log();
    req.max_samples = Some(6);
    let second = run(&env, &req);
    assert_eq!(second.already_present, first.images_added);
    let fetched: Vec<String> = env
        .server
        .log()
        .iter()
        .filter(|e| e.path.starts_with("/s3/") && e.method == "GET")
        .map(|e| e.path.clone())
        .collect();
    assert!(
        fetched.iter().all(|p| !first_ids.contains(p)),
        "re-fetched {fetched:?}"
    );
    assert_eq!(
        second.images_added
            + second
                .failures
                .iter()
                .filter(|f| f.kind == FailureKind::CorruptImage)
                .count(),
        6 - first.images_added
    );
    // Adding a class keeps the Hot dog images and brings Pizza's.
    req.classes.push("Pizza".into());
    env.server.clear_log();
    let third = run(&env, &req);
    assert!(third.already_present >= 6 - 1);
    let project = env.project();
    check_project(&project);
    assert_eq!(project.classes().unwrap().len(), 2);

    // Reproducible: a fresh project with the same seed picks the same images.
    let env2 = self::env(FxOptions {
        train_fillers: 20,
        val_fillers: 5,
        ..Default::default()
    });
    let mut req2 = hot_dog(&[Split::Train]);
    req2.max_samples = Some(3);
    req2.seed = 42;
    run(&env2, &req2);
    let ids2: HashSet<String> = env2
        .server
        .log()
        .iter()
        .filter(|e| e.path.starts_with("/s3/") && e.status == 200)
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(ids2, first_ids);
}

#[test]
fn cancel_stops_quickly_and_the_next_run_resumes() {
    let mut env = env(FxOptions {
        train_fillers: 20,
        val_fillers: 5,
        ..Default::default()
    });
    env.cfg.workers = 2;
    env.cfg.batch_size = 2;
    env.server.faults().slow = Some(("/s3/".into(), Duration::from_millis(15)));
    let cancel = CancelToken::default();
    let s3_requests = || {
        env.server
            .log()
            .iter()
            .filter(|e| e.path.starts_with("/s3/"))
            .count()
    };
    // Image requests the server had seen when the cancel was raised.
    let requested_at_cancel = std::cell::Cell::new(None::<usize>);
    let mut project = env.project();
    let summary = download(
        &hot_dog(&[Split::Train]),
        &mut project,
        &env.cfg,
        &cancel,
        &|e| {
            if let DownloadEvent::Progress {
                phase: Phase::Images,
                done,
                ..
            } = e
                && done >= 6
                && requested_at_cancel.get().is_none()
            {
                cancel.cancel();
                requested_at_cancel.set(Some(s3_requests()));
            }
        },
    )
    .unwrap();
    // "Quickly" in work, not wall time (a loaded machine stretches any time bound): after the
    // cancel no new image is asked for beyond those already in the pipeline — one in flight per
    // worker plus the job queue (2 per worker, `openimages::images`).
    let at_cancel = requested_at_cancel.get().unwrap();
    let after = s3_requests() - at_cancel;
    eprintln!(
        "cancelled: {after} image requests after the cancel ({at_cancel} before); {summary:?}"
    );
    assert!(summary.cancelled);
    let pipeline = 3 * env.cfg.workers;
    assert!(
        after <= pipeline,
        "{after} image requests after the cancel (pipeline {pipeline})"
    );
    let (images, _) = check_project(&project);
    assert_eq!(images, summary.images_added);
    drop(project);

    // Resume without the slow mode: the rest arrives, nothing is fetched twice in full.
    env.server.faults().slow = None;
    let rest = run(&env, &hot_dog(&[Split::Train]));
    assert!(!rest.cancelled);
    assert_eq!(rest.already_present, summary.images_added);
    let project = env.project();
    let (total, _) = check_project(&project);
    let expected = env
        .images
        .iter()
        .filter(|i| {
            i.split == "train" && !i.truncated && i.instances.iter().any(|x| x.mid == HOT_DOG)
        })
        .count();
    assert_eq!(total, expected);
}

#[test]
fn zip64_shard_with_more_than_65535_entries() {
    let env = env(FxOptions {
        train_fillers: 0,
        val_fillers: 2,
        big_shard: true,
        ..Default::default()
    });
    let t = Instant::now();
    let summary = run(&env, &hot_dog(&[Split::Validation]));
    eprintln!("big shard: {:?} in {:?}", summary.bytes, t.elapsed());
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let project = env.project();
    let set = project.export_set(None).unwrap();
    assert!(
        set.images
            .iter()
            .any(|i| i.file_name.ends_with("fa0b1c2d3e4f5a6b.jpg"))
    );
    check_project(&project);
}

#[test]
fn catalogue_v7_names_counts_search_and_estimate() {
    let env = env(FxOptions {
        train_fillers: 3,
        val_fillers: 3,
        v7_classes: true,
        ..Default::default()
    });
    let cat = Catalogue::load_with_counts(
        &env.cfg,
        &[Split::Validation],
        &CancelToken::default(),
        &|_| {},
    )
    .unwrap();
    let hits: Vec<&str> = cat.search("hot").iter().map(|c| c.name.as_str()).collect();
    assert_eq!(hits, vec!["Hot dog", "Hat, \"hot\" style"]);
    let ff: Vec<&str> = cat
        .resolve("Fast food")
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(ff, vec!["French fries", "Hot dog"]);
    assert!(cat.resolve("Hat, \"hot\" style").is_err());
    let hd = cat.get(HOT_DOG).unwrap();
    assert!(hd.segmentable);
    let expected = env
        .images
        .iter()
        .filter(|i| i.split == "validation" && i.instances.iter().any(|x| x.mid == HOT_DOG))
        .count() as u64;
    assert_eq!(hd.counts[&Split::Validation].images, expected);
    assert!(!hd.counts.contains_key(&Split::Train));
    let est = cat.estimate(&[HOT_DOG], &[Split::Validation], Some(2));
    assert_eq!(est.images, 2);
    assert!(est.total_bytes() > 2 * 200_000);
    assert_eq!(cat.parents("/m/02y6n").len(), 2);
    // Cached: a second load needs no server.
    drop(env.server);
    let again = Catalogue::load(&env.cfg, &CancelToken::default()).unwrap();
    assert_eq!(again.get(HOT_DOG).unwrap().counts, hd.counts);
    let _unused: HashMap<(), ()> = HashMap::new();
}

#[test]
fn cli_download_and_classes_run() {
    use maskstudio::openimages::cli::{
        ClassesArgs, DownloadArgs, SourceArgs, run_classes, run_download,
    };
    let env = env(FxOptions {
        train_fillers: 5,
        val_fillers: 5,
        ..Default::default()
    });
    let source = SourceArgs {
        gcs_base: Some(env.server.gcs_base.clone()),
        images_base: Some(env.server.images_base.clone()),
    };
    let args = DownloadArgs {
        project: env.dir.path().join("project"),
        classes: "Fast food, Pizza".into(),
        splits: "validation".into(),
        max_samples: Some(2),
        seed: 0,
        no_shuffle: false,
        all_instances: false,
        no_rotate: false,
        retry_failed: false,
        workers: 2,
        source: source.clone(),
    };
    let summary = run_download(&args, env.cfg.cache_dir.clone(), &CancelToken::default()).unwrap();
    assert_eq!(summary.classes.len(), 3); // French fries, Hot dog (from Fast food), Pizza
    assert!(summary.images_added > 0);
    let classes = ClassesArgs {
        search: Some("hot".into()),
        splits: "validation".into(),
        all: false,
        refresh: true,
        source,
    };
    run_classes(&classes, env.cfg.cache_dir.clone(), &CancelToken::default()).unwrap();
    // `--refresh` downloaded the class files again: the index holds the mirror's catalogue.
    let cat = Catalogue::cached(&env.cfg).unwrap();
    assert_eq!(
        cat.source(),
        maskstudio::openimages::CatalogueSource::Downloaded
    );
    assert!(cat.masks_known());
}
