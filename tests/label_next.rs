//! "Label next" end to end with a real model: a few CPU training steps on the sample project,
//! then raw images (no masks) imported beside it are ranked by flip disagreement. Checked: the
//! ranking covers exactly the candidates of each `--only` choice, in order, with scores in
//! [0, 1]; what the flip guarantees whatever the model learnt (an image and its mirror score
//! the same; a left-right symmetric image scores the disagreement of its detections with their
//! own mirror); and the `label-next` CLI prints the ranked rows and writes the same ranking as
//! JSON; the Review tab's Label next mode ranks the same way and a click opens the image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::gallery::listing;
use maskstudio::dataset::store::{Project, ReviewStatus};
use maskstudio::dataset::{ImportImage, ImportSet};
use maskstudio::eval::label_next::{
    Candidates, MIN_SCORE, Ranking, candidate_images, flip_back, flip_disagreement, rank_images,
};
use maskstudio::host::DeviceChoice;
use maskstudio::infer::{Detection, Predictor};
use maskstudio::train::{self, TrainConfig, TrainEvent, TrainObserver};

/// Scores recomputed from the same model outputs: equal up to float summation order.
const TOL: f64 = 1e-9;

struct Fixture {
    _dir: tempfile::TempDir,
    project: PathBuf,
    bundle: PathBuf,
    /// Ids of the raw images by role.
    raw: Raw,
    /// Sample images marked accepted (labelled and reviewed: never candidates): all but the
    /// first two.
    accepted: Vec<i64>,
}

struct Raw {
    /// A sample scene, unlabelled.
    scene: i64,
    /// Its mirror image, unlabelled.
    mirror: i64,
    /// A left-right symmetric scene, unlabelled.
    symmetric: i64,
    /// An unlabelled image reviewed as accepted (a confirmed empty image).
    empty_accepted: i64,
    /// An unlabelled image reviewed as rejected (never a candidate).
    rejected: i64,
}

struct Quiet;

impl TrainObserver for Quiet {
    fn on_event(&mut self, _: &TrainEvent) {}
}

/// The sample project, a model trained on it for a few steps, and five raw images imported
/// after training (so the model never saw them).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("sample");
        maskstudio::sample_project::create_sample_project(&project, &mut |_| {}).unwrap();
        // Small inputs and one epoch (9 steps: the sample's 18 training images in pairs):
        // enough for detections with masks, not for a good model (nothing below depends on
        // its quality).
        let cfg = TrainConfig {
            image_size: Some(128),
            epochs: 1,
            batch_size: 2,
            lr: 0.02,
            warmup_iters: 2,
            val_fraction: 0.0,
            eval_every: 0,
            device: DeviceChoice::Cpu,
            seed: 3,
            ..TrainConfig::default()
        };
        let started = std::time::Instant::now();
        let summary = train::train(
            &project,
            &dir.path().join("runs"),
            &cfg,
            &CancelToken::default(),
            &mut Quiet,
        )
        .unwrap();
        let bundle = summary.checkpoint.expect("a checkpoint after training");
        eprintln!(
            "trained {} steps in {:.1} s",
            summary.iterations,
            started.elapsed().as_secs_f64()
        );
        let mut store = Project::open(&project).unwrap();
        let items = listing(&store).unwrap().items;
        let images_dir = store.images_dir();
        // All but two sample images reviewed: the ranking predicts few images.
        let accepted: Vec<i64> = items[2..].iter().map(|m| m.id).collect();
        for &id in &accepted {
            store.set_review_status(id, ReviewStatus::Accepted).unwrap();
        }
        let read = |k: usize| {
            image::open(images_dir.join(&items[k].rel_path))
                .unwrap()
                .to_rgb8()
        };
        let scene = read(3);
        let mirror = image::imageops::flip_horizontal(&scene);
        let half = read(5);
        let w = half.width();
        let symmetric = image::RgbImage::from_fn(w, half.height(), |x, y| {
            *half.get_pixel(x.min(w - 1 - x), y)
        });
        let mut empty = read(6);
        image::imageops::invert(&mut empty);
        let rejected = image::imageops::flip_vertical(&read(7));
        let src = dir.path().join("raw");
        std::fs::create_dir_all(&src).unwrap();
        let names = [
            "raw_scene.png",
            "raw_mirror.png",
            "raw_symmetric.png",
            "raw_empty.png",
            "raw_rejected.png",
        ];
        let mut set = ImportSet {
            format: "test".into(),
            ..ImportSet::default()
        };
        for (name, pixels) in names
            .iter()
            .zip([&scene, &mirror, &symmetric, &empty, &rejected])
        {
            pixels.save(src.join(name)).unwrap();
            set.images.push(ImportImage {
                src_path: src.join(name),
                file_name: (*name).to_owned(),
                width: 0,
                height: 0,
                split: None,
                source: "test".into(),
                attribution: Default::default(),
                instances: Vec::new(),
            });
        }
        let summary = store
            .import(&set, &src, &CancelToken::default(), &mut |_| {})
            .unwrap();
        assert_eq!(summary.images_added, 5);
        let items = listing(&store).unwrap().items;
        let id = |name: &str| items.iter().find(|m| m.rel_path == name).unwrap().id;
        let raw = Raw {
            scene: id(names[0]),
            mirror: id(names[1]),
            symmetric: id(names[2]),
            empty_accepted: id(names[3]),
            rejected: id(names[4]),
        };
        store
            .set_review_status(raw.empty_accepted, ReviewStatus::Accepted)
            .unwrap();
        store
            .set_review_status(raw.rejected, ReviewStatus::Rejected)
            .unwrap();
        Fixture {
            _dir: dir,
            project,
            bundle,
            raw,
            accepted,
        }
    })
}

fn predictor(f: &Fixture) -> Predictor {
    Predictor::load(&f.bundle, tch::Device::Cpu, Some(f64::from(MIN_SCORE))).unwrap()
}

/// The ranking of every candidate (`Both`), once per test binary.
fn ranked() -> &'static Ranking {
    static RANKED: OnceLock<Ranking> = OnceLock::new();
    RANKED.get_or_init(|| {
        let f = fixture();
        let p = predictor(f);
        let store = Project::open(&f.project).unwrap();
        let mut calls = Vec::new();
        let started = std::time::Instant::now();
        let ranking = rank_images(
            &store,
            &p,
            Candidates::Both,
            &CancelToken::default(),
            &mut |d, t| {
                calls.push((d, t));
            },
        )
        .unwrap();
        let total = ranking.images.len() + ranking.skipped.len();
        eprintln!(
            "ranked {total} images in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(calls.first(), Some(&(0, total)), "progress starts at 0");
        assert_eq!(
            calls.last(),
            Some(&(total, total)),
            "progress ends at the total"
        );
        assert_eq!(calls.len(), total + 1, "one call per image");
        ranking
    })
}

fn ids(r: &Ranking) -> BTreeSet<i64> {
    r.images.iter().map(|m| m.image_id).collect()
}

fn candidate_ids(f: &Fixture, c: Candidates) -> BTreeSet<i64> {
    let store = Project::open(&f.project).unwrap();
    candidate_images(&store, c)
        .unwrap()
        .1
        .iter()
        .map(|m| m.id)
        .collect()
}

#[test]
fn the_ranking_covers_exactly_the_candidates_in_order() {
    let f = fixture();
    let store = Project::open(&f.project).unwrap();
    let all: Vec<i64> = listing(&store)
        .unwrap()
        .items
        .iter()
        .map(|m| m.id)
        .collect();
    drop(store);
    let raw = &f.raw;
    let unlabelled: BTreeSet<i64> = [raw.scene, raw.mirror, raw.symmetric, raw.empty_accepted]
        .into_iter()
        .collect();
    // Unreviewed: the two sample images not accepted, and the three raw unreviewed.
    let unreviewed: BTreeSet<i64> = all
        .iter()
        .copied()
        .filter(|id| !f.accepted.contains(id) && *id != raw.empty_accepted && *id != raw.rejected)
        .collect();
    assert_eq!(unreviewed.len(), 2 + 3);
    assert_eq!(candidate_ids(f, Candidates::Unlabelled), unlabelled);
    assert_eq!(candidate_ids(f, Candidates::Unreviewed), unreviewed);
    let expected: BTreeSet<i64> = unlabelled.union(&unreviewed).copied().collect();
    assert_eq!(candidate_ids(f, Candidates::Both), expected);

    let both = ranked();
    assert!(both.skipped.is_empty(), "{:?}", both.skipped);
    assert_eq!(ids(both), expected);
    assert_eq!(both.images.len(), 6, "no image twice");

    let detections: usize = both.images.iter().map(|m| m.detections).sum();
    eprintln!(
        "{} images, {detections} detections; scores {:?}",
        both.images.len(),
        both.images.iter().map(|m| m.score).collect::<Vec<_>>()
    );
    assert!(
        detections > 0,
        "the trained model finds nothing: nothing is tested"
    );
    for m in &both.images {
        assert!((0.0..=1.0).contains(&m.score), "{m:?}");
        assert!((0.0..=1.0).contains(&m.entropy), "{m:?}");
        assert!(!m.reason.is_empty());
    }
    for pair in both.images.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let ordered = a.score > b.score
            || (a.score == b.score
                && (a.entropy > b.entropy || (a.entropy == b.entropy && a.image_id < b.image_id)));
        assert!(ordered, "out of order: {a:?} before {b:?}");
    }
}

/// Detections at or above [`MIN_SCORE`] (what the ranking scores).
fn kept(p: &Predictor, pixels: &image::RgbImage) -> Vec<Detection> {
    let mut v = p.predict_soft(pixels).unwrap();
    v.retain(|d| d.score >= MIN_SCORE);
    v
}

#[test]
fn what_the_flip_guarantees_holds_for_any_model() {
    let f = fixture();
    let p = predictor(f);
    let r = ranked();
    let score = |id: i64| r.images.iter().find(|m| m.image_id == id).unwrap().score;

    // An image and its mirror: each one's second pass is the other's first, so the two
    // disagreements are the same numbers summed the other way round.
    let (scene, mirror) = (score(f.raw.scene), score(f.raw.mirror));
    assert!((scene - mirror).abs() < TOL, "{scene} vs {mirror}");

    // A symmetric image is its own mirror: the mirror pass returns the first pass's
    // detections, so its score is their disagreement with their own mirror images.
    let store = Project::open(&f.project).unwrap();
    let path = store.image(f.raw.symmetric).unwrap().path;
    let pixels = maskstudio::infer::read_image(&path).unwrap();
    assert_eq!(pixels, image::imageops::flip_horizontal(&pixels));
    let a = kept(&p, &pixels);
    let mirrored: Vec<Detection> = a.iter().map(|d| flip_back(d, pixels.width())).collect();
    let expected = flip_disagreement(&a, &mirrored);
    let got = score(f.raw.symmetric);
    eprintln!(
        "symmetric image: {} detections, score {got}; scene {scene}, mirror {mirror}",
        a.len()
    );
    assert!((got - expected).abs() < TOL, "{got} vs {expected}");

    // The scene's score is the disagreement of the two passes computed here independently.
    let path = store.image(f.raw.scene).unwrap().path;
    let pixels = maskstudio::infer::read_image(&path).unwrap();
    let a = kept(&p, &pixels);
    let b: Vec<Detection> = kept(&p, &image::imageops::flip_horizontal(&pixels))
        .iter()
        .map(|d| flip_back(d, pixels.width()))
        .collect();
    assert!((scene - flip_disagreement(&a, &b)).abs() < TOL);
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_cli_prints_the_ranked_rows_and_writes_the_json() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let json_path = out.path().join("queue.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_maskstudio"))
        .arg("label-next")
        .arg("--project")
        .arg(&f.project)
        .arg("--model")
        .arg(&f.bundle)
        .args([
            "--only",
            "unlabelled",
            "--limit",
            "3",
            "--device",
            "cpu",
            "--json",
        ])
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Rows start with their rank; the header and the summary line do not.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first().is_some_and(|t| t.parse::<usize>().is_ok()))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    // The library's ranking of the same images: the unlabelled ones of the full ranking (a
    // subset of a sorted list keeps its order).
    let unlabelled = candidate_ids(f, Candidates::Unlabelled);
    let library: Vec<_> = ranked()
        .images
        .iter()
        .filter(|m| unlabelled.contains(&m.image_id))
        .collect();
    let v = json(&json_path);
    assert_eq!(v["candidates"], "unlabelled");
    assert_eq!(v["ranked"], 4);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (k, (row, (entry, lib))) in rows.iter().zip(images.iter().zip(&library)).enumerate() {
        assert_eq!(row[0], (k + 1).to_string());
        assert_eq!(entry["rank"], k + 1);
        assert_eq!(entry["image_id"], lib.image_id);
        let score = entry["score"].as_f64().unwrap();
        assert!((score - lib.score).abs() < TOL, "{score} vs {}", lib.score);
        // The printed score is the JSON's to three decimals; the path ends the row.
        assert_eq!(row[1], format!("{score:.3}"));
        assert!(row.last().unwrap().ends_with(&lib.rel_path), "{row:?}");
    }
}

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(600);

/// Steps the studio's frames (workers report in real time) until `done` holds.
fn studio_wait(
    h: &mut egui_kittest::Harness<'_, maskstudio::gui::StudioApp>,
    what: &str,
    done: impl Fn(&maskstudio::gui::StudioApp) -> bool,
) {
    let start = std::time::Instant::now();
    h.run_ok();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        h.step();
    }
    h.run_ok();
}

#[test]
fn the_review_tab_ranks_the_queue_and_a_click_opens_the_image() {
    use egui_kittest::kittest::Queryable as _;
    use maskstudio::gui::review_grid::ReviewMode;
    use maskstudio::gui::shared::Tab;
    use maskstudio::gui::{StudioApp, StudioOptions};
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut options = StudioOptions::from_env(Some(f.project.clone()));
    options.settings_path = dir.path().join("config/settings.json");
    options.oi_cache_dir = dir.path().join("oi-cache");
    options.start_tab = Some(Tab::Review);
    options.log_toasts = None;
    let mut app = StudioApp::with_options(options);
    app.settings_mut().device = DeviceChoice::Cpu;
    let mut h = egui_kittest::Harness::builder()
        .with_size([1280.0, 800.0])
        .build_ui_state(
            |ui, app: &mut StudioApp| {
                app.logic(ui.ctx());
                app.ui(ui);
            },
            app,
        );
    studio_wait(&mut h, "the project", |a| a.project().is_some());
    h.get_by_label("Label next").click();
    h.run_ok();
    assert_eq!(h.state().review.mode(), ReviewMode::LabelNext);
    let queue = h.state_mut().review.label_next_mut();
    queue.set_bundle_path(&f.bundle.display().to_string());
    queue.set_candidates(Candidates::Unlabelled);
    h.run_ok();
    h.get_by_label("Rank images").click();
    studio_wait(&mut h, "the ranking", |a| {
        a.review.label_next().ranking().is_some() && !a.review.label_next().running()
    });
    // The panel's ranking is the library's: same images, same order, same scores.
    let unlabelled = candidate_ids(f, Candidates::Unlabelled);
    let library: Vec<(i64, f64)> = ranked()
        .images
        .iter()
        .filter(|m| unlabelled.contains(&m.image_id))
        .map(|m| (m.image_id, m.score))
        .collect();
    let shown = h.state().review.label_next().ranking().unwrap();
    assert_eq!(shown.images.len(), library.len());
    for (m, (id, score)) in shown.images.iter().zip(&library) {
        assert_eq!(m.image_id, *id);
        assert!((m.score - score).abs() < TOL);
    }
    // A click on the first row's image opens it in the editor; closing returns to the queue.
    let first = shown.images[0].clone();
    h.get_by_label(&first.rel_path).click();
    studio_wait(&mut h, "the image view", |a| {
        a.review
            .image_view()
            .is_some_and(|v| v.image_id() == first.image_id && v.is_loaded())
    });
    assert_eq!(h.state().review.mode(), ReviewMode::LabelNext);
    h.get_by_label("Close").click();
    studio_wait(&mut h, "the queue again", |a| {
        a.review.image_view().is_none()
    });
    h.get_by_label(&format!("{} (opened)", first.rel_path));
    assert!(
        h.state().review.label_next().ranking().is_some(),
        "the ranking is kept"
    );
}
