//! The Predict panel driven through its real widgets (egui_kittest, by accessible label): load a
//! bundle, drop an image (simulated drop), see the instances listed, move the score slider and
//! see the count change, export, and drop a corrupt file and an unsupported one and see the
//! error named while the rest keeps working; drop a folder of nested folders with a file that is
//! no image; pick a model from the project's runs (listed with their AP), remembered per project.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::gui::predict::PredictPanel;
use maskstudio::gui::shared::{NoticeLevel, Notices, PanelCtx, Settings, ShellRequest};
use maskstudio::infer::Predictor;
use tch::Device;

/// Tests that seed torch hold this (the pattern of tests/model_golden.rs).
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Debug)]
struct FakeDrop(PathBuf);

impl eframe::egui::DroppedFile for FakeDrop {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

struct State {
    panel: PredictPanel,
    project: Option<PathBuf>,
    settings: Settings,
    notices: Notices,
    requests: Vec<ShellRequest>,
}

fn harness(settings: Settings) -> Harness<'static, State> {
    harness_in(settings, None)
}

/// The panel with `project` open.
fn harness_in(settings: Settings, project: Option<PathBuf>) -> Harness<'static, State> {
    let state = State {
        panel: PredictPanel::default(),
        project,
        settings,
        notices: Notices::default(),
        requests: Vec::new(),
    };
    Harness::builder()
        .with_size([1280.0, 800.0])
        .build_ui_state(
            |ui, s: &mut State| {
                let mut cx = PanelCtx {
                    project: s.project.as_deref(),
                    settings: &mut s.settings,
                    notices: &mut s.notices,
                    requests: &mut s.requests,
                };
                s.panel.ui(ui, &mut cx);
            },
            state,
        )
}

/// Steps frames until `done` holds (the worker threads run meanwhile).
fn wait_for(h: &mut Harness<'_, State>, what: &str, done: impl Fn(&State) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

/// Drops `inputs` on the tab and steps until it holds `n` results and nothing runs.
fn drop_and_wait(h: &mut Harness<'_, State>, inputs: &[&Path], n: usize, what: &str) {
    for path in inputs {
        h.input_mut()
            .dropped_files
            .push(Arc::new(FakeDrop(path.to_path_buf())));
    }
    wait_for(h, what, |s| s.panel.results().len() == n && !s.panel.busy());
}

/// Types the bundle path, clicks Load model and waits for it.
fn load_model(h: &mut Harness<'_, State>, bundle: &Path) {
    h.get_by_label("Model bundle").focus();
    h.step();
    h.get_by_label("Model bundle")
        .type_text(&bundle.display().to_string());
    h.step();
    h.get_by_label("Load model").click();
    wait_for(h, "the model", |s| s.panel.model_loaded());
}

/// Types the export folder, clicks Export results and waits for its toast.
fn export_to(h: &mut Harness<'_, State>, out: &Path) {
    h.get_by_label("Export folder").focus();
    h.step();
    h.get_by_label("Export folder")
        .type_text(&out.display().to_string());
    h.step();
    h.get_by_label("Export results").click();
    wait_for(h, "the export", |s| {
        s.notices
            .items
            .iter()
            .any(|n| n.text.starts_with("exported") || n.text.starts_with("export failed"))
    });
}

/// A textured test image: blocks of pseudo-random colours (proposals see different features).
fn write_blocks(path: &Path, width: u32, height: u32) {
    let mut state = 0x2545_f491_u32;
    let mut colours = Vec::new();
    for _ in 0..64 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        colours.push(state.to_le_bytes());
    }
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let c = colours[((y / 12) * 8 + x / 12) as usize % 64];
        image::Rgb([c[0], c[1], c[2]])
    });
    img.save(path).unwrap();
}

/// A random bundle whose scores on `image` spread over a useful range. The caller holds
/// [`RNG_LOCK`] for its whole test: loading a bundle in the panel's worker builds a randomly
/// initialised model first, which draws from the same global generator.
fn random_bundle(dir: &Path, image: &Path) -> PathBuf {
    common::scaled_random_bundle(dir, image, 11, &[0.5, 2.0, 8.0, 32.0, 128.0], 0.01, |d| {
        let (lo, hi) = d.iter().fold((1.0f32, 0.0f32), |(lo, hi), d| {
            (lo.min(d.score), hi.max(d.score))
        });
        d.len() >= 3 && hi - lo > 0.1
    })
}

#[test]
fn drop_an_image_see_instances_move_the_slider_and_survive_a_corrupt_file() {
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    write_blocks(&good, 120, 96);
    let bundle = random_bundle(dir.path(), &good);

    // The soft masks give the CLI's binary masks back at 0.5 (the CLI path is unchanged).
    let predictor = Predictor::load(&bundle, Device::Cpu, Some(0.01)).unwrap();
    let image = maskstudio::infer::read_image(&good).unwrap();
    let hard = predictor.predict(&image).unwrap();
    let soft = predictor.predict_soft(&image).unwrap();
    assert_eq!(hard.len(), soft.len());
    assert!(hard.len() >= 2, "the random bundle should detect something");
    for (a, b) in hard.iter().zip(&soft) {
        assert!(a.soft_mask.is_none());
        assert_eq!(
            (a.label, a.score, a.box_xyxy),
            (b.label, b.score, b.box_xyxy)
        );
        assert_eq!(
            b.mask.area(),
            0,
            "predict_soft keeps no full-size binary mask"
        );
        let again = b.mask_at(0.5);
        let differ = again
            .data()
            .iter()
            .zip(a.mask.data())
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(differ, 0, "re-thresholding at 0.5 changes the mask");
    }
    drop(predictor);

    let settings = Settings {
        score_threshold: 0.0,
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run();
    load_model(&mut h, &bundle);
    h.get_by_label("Classes: cat, dog");

    drop_and_wait(&mut h, &[&good], 1, "the prediction");
    h.run();
    let mut scores: Vec<f32> = h.state().panel.results()[0]
        .detections
        .iter()
        .map(|d| d.score)
        .collect();
    scores.sort_by(f32::total_cmp);
    let n = scores.len();
    h.get_by_label(&format!("Instances shown: {n}"));
    let (lo, hi) = (scores[0], scores[n - 1]);
    eprintln!("{n} detections, scores {lo:.3}..{hi:.3}");
    assert!(hi - lo > 0.1, "scores do not vary: {scores:?}");

    // What the window shows: pixels of the rendered overlay texture that differ from the image.
    let base = maskstudio::infer::read_image(&good).unwrap();
    let painted = |h: &Harness<'_, State>| -> usize {
        let shown = h
            .state()
            .panel
            .rendered_overlay()
            .expect("the overlay is shown");
        assert_eq!(shown.dimensions(), base.dimensions());
        shown
            .pixels()
            .zip(base.pixels())
            .filter(|(a, b)| a != b)
            .count()
    };
    let all = painted(&h);
    assert!(all > 0, "the detections are drawn");

    // Raise the score threshold to the middle of the range: fewer instances, no model run.
    let mid = (lo + hi) / 2.0;
    let expected = scores.iter().filter(|&&s| s >= mid).count();
    assert!(expected < n && expected > 0);
    h.get_by_role_and_label(eframe::egui::accesskit::Role::Slider, "Score threshold")
        .set_value_accesskit(f64::from(mid));
    h.run();
    let shown_at = h.state().settings.score_threshold;
    let expected = scores.iter().filter(|&&s| s >= shown_at).count();
    assert!(expected < n, "threshold {shown_at} did not hide anything");
    h.get_by_label(&format!("Instances shown: {expected}"));
    let fewer = painted(&h);
    eprintln!("overlay pixels: {all} at score 0, {fewer} at score {shown_at}");
    assert!(
        fewer < all,
        "hiding instances must paint fewer pixels: {fewer} vs {all}"
    );

    // A stricter mask threshold shrinks the drawn masks without re-running the model.
    h.get_by_role_and_label(eframe::egui::accesskit::Role::Slider, "Mask threshold")
        .set_value_accesskit(0.9);
    h.run();
    assert!((h.state().settings.mask_threshold - 0.9).abs() < 1e-3);
    let strict = painted(&h);
    eprintln!("overlay pixels at mask threshold 0.9: {strict}");
    assert!(
        strict < fewer,
        "mask threshold 0.9 must paint fewer pixels than 0.5: {strict} vs {fewer}"
    );

    // Export overlays, masks and COCO results.
    let out = dir.path().join("export");
    export_to(&mut h, &out);
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.len(), expected);
    assert!(results.iter().all(|r| r["file_name"] == "good.png"));
    assert!(out.join("good.overlay.png").is_file());
    assert!(out.join("good_mask0_cat.png").is_file() || out.join("good_mask0_dog.png").is_file());

    // A corrupt image and an unsupported file: named in an error, nothing else breaks.
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"this is not a jpeg").unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"hello").unwrap();
    h.input_mut().dropped_files.push(Arc::new(FakeDrop(bad)));
    h.input_mut().dropped_files.push(Arc::new(FakeDrop(text)));
    wait_for(&mut h, "the failures", |s| {
        s.panel.failures().len() == 2 && !s.panel.busy()
    });
    h.run();
    let errors: Vec<&str> = h
        .state()
        .notices
        .items
        .iter()
        .filter(|n| n.level == NoticeLevel::Error)
        .map(|n| n.text.as_str())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("broken.jpg")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("notes.txt")), "{errors:?}");
    h.get_by_label("Problems (2)");
    assert_eq!(h.state().panel.results().len(), 1);
    h.get_by_label(&format!("Instances shown: {expected}"));
}

#[test]
fn a_folder_larger_than_the_pixel_budget_keeps_only_the_shown_image_in_memory() {
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    let names = ["a.png", "b.png", "c.png"];
    for n in names {
        write_blocks(&folder.join(n), 120, 96);
    }
    let bundle = random_bundle(dir.path(), &folder.join("a.png"));
    let one = 120 * 96 * 3;

    let settings = Settings {
        score_threshold: 0.0,
        ..Settings::default()
    };
    let mut h = harness(settings);
    // Room for one image and a half: every image but the shown one gives its pixels back.
    h.state_mut().panel.set_pixel_budget(one * 3 / 2);
    h.run();
    load_model(&mut h, &bundle);
    drop_and_wait(&mut h, &[&folder], 3, "the folder");
    let kept = |h: &Harness<'_, State>| -> Vec<bool> {
        h.state()
            .panel
            .results()
            .iter()
            .map(|r| r.image.is_some())
            .collect()
    };
    let shown = h.state().panel.selected();
    let mut expected = vec![false; 3];
    expected[shown] = true;
    assert_eq!(kept(&h), expected, "only the selected image keeps pixels");
    assert_eq!(h.state().panel.pixel_bytes(), one);
    // No full-size binary mask is kept: the soft masks re-threshold.
    for r in h.state().panel.results() {
        assert!(
            r.detections
                .iter()
                .all(|d| d.mask.area() == 0 && d.soft_mask.is_some())
        );
        assert_eq!(r.size, [120, 96]);
    }

    // Showing another image reads it again and lets the previous one go.
    let other = (shown + 2) % 3;
    h.state_mut().panel.select(other);
    wait_for(&mut h, "the evicted image to be read again", |s| {
        s.panel.results()[other].image.is_some()
    });
    let mut expected = vec![false; 3];
    expected[other] = true;
    assert_eq!(kept(&h), expected);
    let n = h.state().panel.results()[other].detections.len();
    h.get_by_label(&format!("Instances shown: {n}"));

    // The export reads evicted images from disk: three overlays of the right size.
    let out = dir.path().join("export");
    export_to(&mut h, &out);
    for n in names {
        let stem = n.trim_end_matches(".png");
        let overlay = image::open(out.join(format!("{stem}.overlay.png"))).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (120, 96), "{n}");
    }
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let total: usize = h
        .state()
        .panel
        .results()
        .iter()
        .map(|r| r.detections.len())
        .sum();
    assert_eq!(results.len(), total);
}

#[test]
fn a_dropped_folder_with_nested_folders_predicts_every_image_and_names_the_file_that_is_not_one() {
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shoot");
    let deeper = folder.join("day 1").join("camera b");
    std::fs::create_dir_all(&deeper).unwrap();
    std::fs::create_dir_all(folder.join("empty")).unwrap();
    write_blocks(&folder.join("top.png"), 120, 96);
    write_blocks(&folder.join("day 1").join("a.PNG"), 96, 120);
    write_blocks(&deeper.join("b.jpg"), 120, 96);
    std::fs::write(folder.join("day 1").join("notes.txt"), b"exposure +1").unwrap();
    std::fs::write(deeper.join(".DS_Store"), b"\0\0").unwrap();
    let bundle = random_bundle(dir.path(), &folder.join("top.png"));

    let settings = Settings {
        score_threshold: 0.0,
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run();
    load_model(&mut h, &bundle);
    drop_and_wait(&mut h, &[&folder], 3, "the folder");
    h.run();
    let mut found: Vec<PathBuf> = h
        .state()
        .panel
        .results()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    found.sort();
    let mut expected = vec![
        folder.join("top.png"),
        folder.join("day 1").join("a.PNG"),
        deeper.join("b.jpg"),
    ];
    expected.sort();
    assert_eq!(found, expected, "every image of every nested folder");
    let sizes: Vec<[u32; 2]> = h.state().panel.results().iter().map(|r| r.size).collect();
    assert!(sizes.contains(&[96, 120]), "{sizes:?}");

    // The text file is skipped and named (the hidden file silently), nothing failed to predict.
    let failures = h.state().panel.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("notes.txt") && failures[0].contains("not an image"));
    let warnings: Vec<&str> = h
        .state()
        .notices
        .items
        .iter()
        .filter(|n| n.level == NoticeLevel::Warning)
        .map(|n| n.text.as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("skipped 1 file that is not an image") && w.contains("notes.txt")),
        "{warnings:?}"
    );
    assert!(
        h.state()
            .notices
            .items
            .iter()
            .all(|n| n.level != NoticeLevel::Error),
        "no errors"
    );
    h.get_by_label("Problems (1)");
    h.get_by_label_contains("notes.txt: not an image");
    // Every result can be shown.
    for i in 0..3 {
        h.state_mut().panel.select(i);
        h.run();
        let n = h.state().panel.results()[i].detections.len();
        h.get_by_label(&format!("Instances shown: {n}"));
    }
}

/// Copies a bundle's files into `dest` (a run's checkpoint folder).
fn copy_bundle(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for f in ["model.safetensors", "labels.txt", "model.json"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }
}

/// A run folder as the trainer leaves it: config, epochs.csv with validation AP per epoch
/// (best 0.41 at epoch 1, last 0.38), best and last checkpoints holding `bundle`.
fn fake_run(project: &Path, id: &str, bundle: &Path) -> PathBuf {
    let run = project.join("runs").join(id);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.json"),
        r#"{"train": {"preset": "cpu-fast", "epochs": 3}}"#,
    )
    .unwrap();
    std::fs::write(
        run.join("epochs.csv"),
        "epoch,steps,mean_loss,lr,val_segm_ap,val_bbox_ap,seconds\n\
         0,4,2.0,0.01,0.125,0.2,3.5\n1,4,1.5,0.01,0.41,0.5,3.5\n2,4,1.2,0.01,0.38,0.45,3.5\n",
    )
    .unwrap();
    copy_bundle(bundle, &run.join("checkpoints/best"));
    copy_bundle(bundle, &run.join("checkpoints/last"));
    run
}

fn wait_listed(h: &mut Harness<'_, State>) {
    wait_for(h, "the project's models", |s| {
        !s.panel.picker().listing() && !s.panel.picker().entries().is_empty()
    });
}

#[test]
fn the_picker_lists_the_projects_runs_loads_the_chosen_one_and_remembers_it_per_project() {
    use eframe::egui::accesskit::Role;
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    write_blocks(&good, 120, 96);
    let bundle = random_bundle(dir.path(), &good);
    let project = dir.path().join("cells");
    let old = fake_run(&project, "20261204-101500", &bundle);
    let run = fake_run(&project, "20261205-140200", &bundle);
    let other = dir.path().join("leaves");
    let other_run = fake_run(&other, "20261130-080000", &bundle);

    let settings = Settings {
        score_threshold: 0.0,
        ..Settings::default()
    };
    let mut h = harness_in(settings, Some(project.clone()));
    h.run();
    wait_listed(&mut h);
    let entries = h.state().panel.picker().entries().to_vec();
    assert_eq!(entries.len(), 4, "best and last of two runs");
    assert_eq!(entries[0].dir, run.join("checkpoints/best"), "newest first");
    assert_eq!(entries[2].dir, old.join("checkpoints/best"));
    // Nothing remembered yet: the newest run's best checkpoint is preselected (not loaded).
    let best = run.join("checkpoints/best").display().to_string();
    assert_eq!(h.state().panel.model_path(), best);
    assert!(!h.state().panel.model_loaded());

    // The list shows each bundle with its run, kind, AP and date; choosing one loads it.
    h.get_by_role_and_label(Role::ComboBox, "Project models")
        .click();
    h.run();
    let item = |prefix: &'static str| {
        move |n: &egui_kittest::kittest::AccessKitNode<'_>| {
            n.role() == Role::Button && n.label().is_some_and(|l| l.starts_with(prefix))
        }
    };
    h.get_by(item("run 20261205-140200 · best · AP 0.410 · "));
    h.get_by(item("run 20261205-140200 · last · AP 0.380 · "));
    h.get_by(item("run 20261204-101500 · best · AP 0.410 · "));
    h.get_by(item("run 20261204-101500 · last · AP 0.380 · "))
        .click();
    wait_for(&mut h, "the chosen model", |s| {
        s.panel.model_loaded() && !s.panel.busy()
    });
    let last_old = old.join("checkpoints/last");
    assert_eq!(h.state().panel.loaded_model(), Some(last_old.as_path()));
    h.get_by_label("Classes: cat, dog");
    let key = project.display().to_string();
    assert_eq!(
        h.state().settings.last_bundle[&key]["predict"],
        last_old.display().to_string()
    );
    let settings = h.state().settings.clone();
    drop(h);

    // A restarted studio on the same project preselects the remembered bundle; a drop loads it
    // and predicts.
    let mut h = harness_in(settings.clone(), Some(project.clone()));
    h.run();
    wait_listed(&mut h);
    assert_eq!(h.state().panel.model_path(), last_old.display().to_string());
    drop_and_wait(
        &mut h,
        &[&good],
        1,
        "the prediction with the remembered model",
    );
    assert_eq!(h.state().panel.loaded_model(), Some(last_old.as_path()));
    drop(h);

    // Another project has its own choice: its newest best, nothing of the first project's.
    let mut h = harness_in(settings.clone(), Some(other.clone()));
    h.run();
    wait_listed(&mut h);
    assert_eq!(
        h.state().panel.model_path(),
        other_run.join("checkpoints/best").display().to_string()
    );
    drop(h);

    // A remembered bundle that is gone is not preselected.
    std::fs::remove_dir_all(&last_old).unwrap();
    let mut h = harness_in(settings, Some(project.clone()));
    h.run();
    wait_listed(&mut h);
    assert_eq!(h.state().panel.model_path(), best);
    assert_eq!(h.state().panel.picker().entries().len(), 3);
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    out.sort();
    out
}

/// The Predict tab's export and `maskstudio predict` write through one writer
/// (`infer::export::RunWriter`): on the same images at the same threshold, the COCO files and
/// the overlays are byte for byte the same, and the tab only adds one mask PNG per detection.
#[test]
fn the_tabs_export_writes_what_maskstudio_predict_writes() {
    use maskstudio::cli::Command;
    use maskstudio::infer::threshold::SCORE_FLOOR;
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    // Same file name in two folders: both are named by their relative path.
    let (a, b) = (inputs.join("a/x.png"), inputs.join("b/x.png"));
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    write_blocks(&a, 120, 96);
    write_blocks(&b, 96, 120);
    let bundle = random_bundle(dir.path(), &a);

    // The tab at score 0 shows everything the model keeps at the floor.
    let settings = Settings {
        score_threshold: 0.0,
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run();
    load_model(&mut h, &bundle);
    drop_and_wait(&mut h, &[&a, &b], 2, "the prediction");
    let gui = dir.path().join("gui");
    export_to(&mut h, &gui);
    assert!(
        h.state()
            .notices
            .items
            .iter()
            .any(|n| n.text.starts_with("exported")),
        "the export failed"
    );

    let cli = dir.path().join("cli");
    maskstudio::cli::run(Command::Predict {
        model: bundle.clone(),
        score_thresh: Some(SCORE_FLOOR),
        device: maskstudio::host::DeviceChoice::Cpu,
        out_json: cli.join("results.json"),
        out_dir: Some(cli.clone()),
        inputs: vec![a.clone(), b.clone()],
    })
    .unwrap();

    let cli_files = files_under(&cli);
    assert_eq!(
        cli_files,
        [
            "a/x.overlay.png",
            "b/x.overlay.png",
            "results.images.json",
            "results.json"
        ]
        .map(PathBuf::from)
    );
    for f in &cli_files {
        assert_eq!(
            std::fs::read(gui.join(f)).unwrap(),
            std::fs::read(cli.join(f)).unwrap(),
            "{f:?} differs between the Predict tab's export and maskstudio predict"
        );
    }
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(cli.join("results.json")).unwrap()).unwrap();
    assert!(
        results.len() >= 2,
        "the random bundle should detect something"
    );
    let masks: Vec<PathBuf> = files_under(&gui)
        .into_iter()
        .filter(|f| !cli_files.contains(f))
        .collect();
    assert_eq!(
        masks.len(),
        results.len(),
        "one mask PNG per detection: {masks:?}"
    );
    assert!(masks.iter().all(|m| {
        let m = m.to_string_lossy();
        (m.starts_with("a/x_mask") || m.starts_with("b/x_mask")) && m.ends_with(".png")
    }));
}

/// A project holding `image` as its one validation image (one "cat" instance) and a run folder
/// that validates on it, as the Train tab's watch images read them: (project, run, stored path).
fn watch_project(dir: &Path, image: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use maskstudio::cancel::CancelToken;
    use maskstudio::dataset::store::Project;
    use maskstudio::dataset::{
        ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
    };
    let mut mask = Mask::new(120, 96);
    for y in 20..60 {
        for x in 30..90 {
            mask.set(x, y, true);
        }
    }
    let set = ImportSet {
        format: "test".into(),
        classes: vec![ClassDef {
            name: "cat".into(),
            mid: None,
        }],
        images: vec![ImportImage {
            src_path: image.to_path_buf(),
            file_name: "good.png".into(),
            width: 0,
            height: 0,
            split: Some("validation".into()),
            source: "test".into(),
            attribution: Default::default(),
            instances: vec![ImportInstance {
                class: "cat".into(),
                segmentation: Segmentation::Bitmap(mask),
                iscrowd: false,
                origin: Origin::Import,
                provenance: None,
            }],
        }],
    };
    let project = dir.join("project");
    let mut store = Project::create_or_open(&project).unwrap();
    store
        .import(
            &set,
            image.parent().unwrap(),
            &CancelToken::default(),
            &mut |_| {},
        )
        .unwrap();
    let stored = store.export_set(None).unwrap().images.remove(0);
    let run = project.join("runs/20261205-000000");
    std::fs::create_dir_all(&run).unwrap();
    let config = serde_json::json!({"split": {"train": [], "val": [stored.id]}});
    std::fs::write(run.join("config.json"), config.to_string()).unwrap();
    (project, run, stored.path)
}

/// A random bundle (cat, dog) whose background logit is raised until some of its detections on
/// `image` score between 0.01 and 0.045 and others at least 0.05 (torchvision's init scores
/// every box about the same). The caller holds [`RNG_LOCK`].
fn low_score_bundle(dir: &Path, image: &Path) -> PathBuf {
    use maskstudio::model::bundle::{Bundle, ModelSpec};
    use maskstudio::model::{Backbone, MaskRcnn};
    use tch::{Tensor, nn};
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut spec = ModelSpec::new(Backbone::MobilenetV2, 3);
    spec.min_size = Some(96);
    spec.max_size = Some(128);
    let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
    let var = |suffix: &str| {
        vs.variables()
            .into_iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, t)| t)
            .unwrap()
    };
    let (weight, bias) = (var("cls_score.weight"), var("cls_score.bias"));
    let base = Tensor::randn(weight.size(), (weight.kind(), Device::Cpu));
    let bundle = dir.join("bundle");
    let pixels = maskstudio::infer::read_image(image).unwrap();
    for background in [2.0, 3.0, 4.0] {
        for scale in [4.0, 8.0, 16.0] {
            tch::no_grad(|| {
                weight.shallow_clone().copy_(&(&base * scale));
                let mut b = bias.shallow_clone();
                b.copy_(&Tensor::from_slice(&[background as f32, 0.0, 0.0]));
            });
            Bundle::write(&bundle, &spec, &["cat".to_owned(), "dog".to_owned()], &vs).unwrap();
            let p = Predictor::load(&bundle, Device::Cpu, Some(0.01)).unwrap();
            let scores: Vec<f32> = p
                .predict(&pixels)
                .unwrap()
                .iter()
                .map(|d| d.score)
                .collect();
            let low = scores.iter().filter(|&&s| s < 0.045).count();
            let high = scores.iter().filter(|&&s| s >= 0.05).count();
            eprintln!("background {background}, scale {scale}: {low} low, {high} high scores");
            if low > 0 && high > 0 {
                return bundle;
            }
        }
    }
    panic!("no background logit gave scores on both sides of 0.05");
}

/// One score-threshold path (`infer::threshold`): a threshold below the bundle's own 0.05 shows
/// the same detections in the Predict tab, the Train tab's watch images and Evaluate's
/// per-image counts (the watch and Evaluate once loaded the bundle at its 0.05 and lost them).
#[test]
fn a_threshold_below_the_bundles_own_gives_the_same_detections_in_predict_watch_and_evaluate() {
    let _rng = RNG_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("src/good.png");
    std::fs::create_dir_all(good.parent().unwrap()).unwrap();
    write_blocks(&good, 120, 96);
    let bundle = low_score_bundle(dir.path(), &good);
    let (project, run, stored) = watch_project(dir.path(), &good);
    // Just under the best score below 0.05: at least one detection in [threshold, 0.05).
    let low = Predictor::load(&bundle, Device::Cpu, Some(0.01))
        .unwrap()
        .predict(&maskstudio::infer::read_image(&stored).unwrap())
        .unwrap()
        .iter()
        .map(|d| d.score)
        .filter(|&s| s < 0.045)
        .fold(0.0f32, f32::max);
    let threshold = low - 1e-4;
    assert!(threshold > 0.01 && threshold < 0.05, "{threshold}");

    // Predict tab.
    let settings = Settings {
        score_threshold: threshold,
        ..Settings::default()
    };
    let mut h = harness(settings);
    h.run();
    load_model(&mut h, &bundle);
    drop_and_wait(&mut h, &[&stored], 1, "the prediction");
    h.run();
    let scores: Vec<f32> = h.state().panel.results()[0]
        .detections
        .iter()
        .map(|d| d.score)
        .filter(|&s| s >= threshold)
        .collect();
    let n = scores.len();
    h.get_by_label(&format!("Instances shown: {n}"));
    assert!(
        scores.iter().any(|&s| s < 0.05),
        "no detection between the threshold and 0.05: {scores:?}"
    );

    // Train tab's watch images.
    let watch = maskstudio::train::watch::predict_watch_images(
        &project,
        &run,
        &bundle,
        maskstudio::host::DeviceChoice::Cpu,
        threshold,
    )
    .unwrap();
    assert_eq!(watch.len(), 1);
    assert_eq!(watch[0].0, format!("good.png ({n})"));

    // Evaluate's per-image counts: every detection shown is a true or a false positive.
    let report = maskstudio::eval::per_image::evaluate_with_errors(
        &project,
        &bundle,
        None,
        Device::Cpu,
        0.5,
        f64::from(threshold),
        &maskstudio::cancel::CancelToken::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let counts = report.errors[0].counts;
    assert_eq!(counts.true_positives + counts.false_positives, n);
}
