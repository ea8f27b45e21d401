//! The studio shell driven through its real widgets by accessible label (egui_kittest, no
//! window, no GPU): pick a class and download it from a loopback Open Images mirror, filter the
//! gallery of an imported project, open a project from the path field, help and first run,
//! and warnings logged on another thread shown as toasts.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waiting for a worker: a hang guard, not a speed check (generous, so load never trips it).
const HANG_GUARD: Duration = Duration::from_secs(600);

use common::oi_server::{FxOptions, HOT_DOG, OiServer, build_fixture};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{
    ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::shared::{NoticeLevel, Settings, Tab};
use maskstudio::gui::{StudioApp, StudioOptions};
use maskstudio::openimages::Phase;

fn studio(dir: &Path, project: Option<PathBuf>, tab: Tab) -> StudioApp {
    StudioApp::with_options(StudioOptions {
        project,
        settings_path: dir.join("config/settings.json"),
        oi_cache_dir: dir.join("oi-cache"),
        start_tab: Some(tab),
        log_toasts: None,
    })
}

fn harness(app: StudioApp) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size([1280.0, 800.0])
        .build_ui_state(
            |ui, app: &mut StudioApp| {
                app.logic(ui.ctx());
                app.ui(ui);
            },
            app,
        )
}

/// Steps frames (workers report in real time) until `done` holds.
fn wait_until(h: &mut Harness<'_, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < HANG_GUARD, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.run_steps(3);
}

#[test]
fn pick_a_class_and_download_it_from_a_loopback_mirror() {
    let fx = build_fixture(&FxOptions::default());
    let expected = fx
        .images
        .iter()
        .filter(|m| m.split == "train" && !m.truncated)
        .filter(|m| m.instances.iter().any(|i| i.mid == HOT_DOG))
        .count();
    let server = OiServer::start(fx.files);
    let dir = tempfile::tempdir().unwrap();
    let project_dir = dir.path().join("project");
    Project::create_or_open(&project_dir).unwrap();

    let mut app = studio(dir.path(), Some(project_dir.clone()), Tab::Classes);
    app.settings_mut().annotations_base_url = server.gcs_base.clone();
    app.settings_mut().images_base_url = server.images_base.clone();
    let mut h = harness(app);
    // The built-in list shows at once; wait for the mirror's catalogue to replace it.
    wait_until(
        &mut h,
        "the project and the mirror's class catalogue",
        |a| {
            a.project().is_some()
                && !a.classes.is_loading()
                && a.classes.catalogue().is_some_and(|c| {
                    c.source() == maskstudio::openimages::CatalogueSource::Downloaded
                })
        },
    );
    assert_eq!(
        h.state()
            .classes
            .catalogue()
            .unwrap()
            .get(HOT_DOG)
            .unwrap()
            .name,
        "Hot dog"
    );

    h.get_by_label("Search classes").focus();
    h.step();
    h.get_by_label("Search classes").type_text("hot");
    h.run_steps(3);
    // The search narrowed the list: Tortoise is gone, Hot dog is there.
    assert!(h.query_by_label("Tortoise").is_none());
    h.get_by_label("Hot dog").click();
    h.run_steps(3);
    assert_eq!(
        h.state().download.picked.keys().collect::<Vec<_>>(),
        vec![HOT_DOG]
    );
    h.get_by_label("Picked for download: 1");

    h.get_by_label("Download").click();
    h.run_steps(3);
    assert_eq!(h.state().tab(), Tab::Download);
    h.get_by_label("Start download").click();
    h.run_steps(2);
    assert!(
        h.state().download.is_running(),
        "the download did not start"
    );
    wait_until(&mut h, "the download to finish", |a| {
        !a.download.is_running()
    });
    assert_eq!(h.state().download.error(), None);

    let summary = h.state().download.summary().unwrap().clone();
    assert_eq!(summary.images_added, expected);
    assert!(!summary.cancelled);
    // Progress arrived per phase: images counted up to their total, with bytes.
    let images = &h.state().download.phases[&Phase::Images];
    assert_eq!(images.done, images.total);
    assert!(images.total >= expected as u64 && images.bytes > 0);
    assert!(h.state().download.phases.contains_key(&Phase::Index));
    h.get_by_label_contains("Finished:");

    // The images landed in the project, and the shell reloaded it.
    let project = Project::open(&project_dir).unwrap();
    let info = project.info().unwrap();
    let total: u64 = info.splits.values().map(|s| s.images).sum();
    assert_eq!(total, expected as u64);
    assert_eq!(info.classes.len(), 1);
    assert_eq!(info.classes[0].0.name, "Hot dog");
    assert!(info.classes[0].1 >= expected as u64);
    wait_until(&mut h, "the reloaded project", |a| {
        a.project()
            .is_some_and(|(_, i)| i.splits.values().map(|s| s.images).sum::<u64>() == total)
    });

    h.get_by_label("Review").click();
    wait_until(&mut h, "the gallery listing", |a| {
        a.review.shown_count() == Some(expected)
    });
    h.get_by_label(&format!("Showing {expected} of {expected} images"));
}

fn square(w: u32, h: u32, x0: u32, s: u32) -> Mask {
    let mut m = Mask::new(w, h);
    for y in 2..2 + s {
        for x in x0..x0 + s {
            m.set(x, y, true);
        }
    }
    m
}

/// Five images: three with a cat (one also a dog), one dog only, one without masks.
fn small_project(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let inst = |class: &str, x: u32| ImportInstance {
        class: class.into(),
        segmentation: Segmentation::Bitmap(square(40, 30, x, 10)),
        iscrowd: false,
        origin: Origin::Import,
        provenance: None,
    };
    let specs: Vec<(&str, Vec<ImportInstance>)> = vec![
        ("train", vec![inst("cat", 2)]),
        ("train", vec![inst("cat", 5), inst("dog", 20)]),
        ("train", vec![inst("dog", 8)]),
        ("validation", vec![inst("cat", 12)]),
        ("validation", vec![]),
    ];
    let mut images = Vec::new();
    for (i, (split, instances)) in specs.into_iter().enumerate() {
        let name = format!("img{i}.png");
        common::write_png(&src.join(&name), 40, 30, i as u8 * 50);
        images.push(ImportImage {
            src_path: src.join(&name),
            file_name: name,
            width: 0,
            height: 0,
            split: Some(split.into()),
            source: "test".into(),
            attribution: Default::default(),
            instances,
        });
    }
    let set = ImportSet {
        format: "test".into(),
        classes: vec![
            ClassDef {
                name: "cat".into(),
                mid: None,
            },
            ClassDef {
                name: "dog".into(),
                mid: None,
            },
        ],
        images,
    };
    let root = dir.join("project");
    Project::create_or_open(&root)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    root
}

fn shown_cells(h: &Harness<'_, StudioApp>) -> usize {
    h.query_all_by_label_contains("Image img").count()
}

#[test]
fn open_a_project_and_filter_the_gallery() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_project(dir.path());
    let mut h = harness(studio(dir.path(), Some(root), Tab::Review));
    wait_until(&mut h, "the gallery listing", |a| {
        a.review.shown_count() == Some(5)
    });
    h.get_by_label("Showing 5 of 5 images");
    assert_eq!(shown_cells(&h), 5);
    wait_until(&mut h, "the thumbnails", |a| a.review.thumb_stats().0 == 5);

    h.get_by_label("Without masks only").click();
    h.run_steps(3);
    assert_eq!(h.state().review.shown_count(), Some(1));
    h.get_by_label("Showing 1 of 5 images");
    assert_eq!(shown_cells(&h), 1);
    h.get_by_label("Without masks only").click();
    h.run_steps(3);
    assert_eq!(shown_cells(&h), 5);

    h.get_by_label("Class").click();
    h.run_steps(3);
    h.get_by_label("cat (3)").click();
    h.run_steps(3);
    h.get_by_label("Showing 3 of 5 images");
    assert_eq!(shown_cells(&h), 3);

    h.get_by_label("Split").click();
    h.run_steps(3);
    h.get_by_label("validation").click();
    h.run_steps(3);
    h.get_by_label("Showing 1 of 5 images");
    assert_eq!(shown_cells(&h), 1);

    // Opening the image shows it in the image view with its instances; Esc goes back.
    h.get_by_label("Image img3.png").click();
    h.run_steps(2);
    assert!(h.state().review.selected_image.is_some());
    // The image view loads on a worker thread.
    let start = Instant::now();
    while h.query_by_label("1 instances, 0 edited").is_none() {
        assert!(start.elapsed() < HANG_GUARD, "the preview never loaded");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.key_press(eframe::egui::Key::Escape);
    h.run_steps(3);
    assert!(h.state().review.selected_image.is_none());
    assert_eq!(shown_cells(&h), 1);
}

#[test]
fn path_field_recent_list_help_and_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_project(dir.path());
    // The data folder (where "Try the sample" creates its project) inside the temp dir.
    let data_dir = dir.path().join("data");
    let settings = Settings {
        data_dir: data_dir.clone(),
        ..Settings::default()
    };
    settings
        .save(&dir.path().join("config/settings.json"))
        .unwrap();
    let mut h = harness(studio(dir.path(), None, Tab::Review));
    h.run_steps(2);
    // First run: no project, the welcome screen.
    h.get_by_label("Welcome to Mask Studio");
    h.get_by_label("Try the sample").click();
    let sample = data_dir.join("sample");
    wait_until(&mut h, "the sample project", |a| {
        a.project().is_some_and(|(r, _)| *r == sample)
    });
    let info = &h.state().project().unwrap().1;
    let images: u64 = info.splits.values().map(|s| s.images).sum();
    assert_eq!(images, 24, "the generated sample has 24 scenes");
    assert_eq!(info.classes.len(), 3);
    // The sample brings its quick recipe to the Train form, and says real data takes longer.
    assert!(maskstudio::sample_project::is_sample(info));
    assert!(h.state().train.has_sample_recipe());
    assert_eq!(
        h.state().train.config().epochs,
        maskstudio::sample_project::train_config().epochs
    );
    h.state_mut().set_tab(Tab::Train);
    h.run_steps(3);
    h.get_by_label("Use the standard recipe");
    h.state_mut().set_tab(Tab::Review);
    h.run_steps(2);

    // The field now holds the sample's path: select it all and type over it.
    h.get_by_label("Project folder").focus();
    h.step();
    h.key_combination_modifiers(eframe::egui::Modifiers::COMMAND, &[eframe::egui::Key::A]);
    h.step();
    h.get_by_label("Project folder")
        .type_text(&root.display().to_string());
    h.step();
    h.get_by_label("Open").click();
    wait_until(&mut h, "the project", |a| {
        a.project().is_some_and(|(r, _)| *r == root)
    });
    // Another project: the untouched sample recipe gives way to the standard one.
    assert!(!h.state().train.has_sample_recipe());
    assert_eq!(
        h.state().train.config().epochs,
        maskstudio::train::TrainConfig::default().epochs
    );
    let recent = vec![root.clone(), sample.clone()];
    assert_eq!(h.state().settings().recent_projects, recent);
    // Settings are saved (debounced) with the projects in the recent list, newest first.
    let path = dir.path().join("config/settings.json");
    wait_until(&mut h, "settings.json", |_| {
        Settings::load(&path).is_ok_and(|s| s.recent_projects == recent)
    });

    assert!(h.query_by_label("Keyboard shortcuts").is_none());
    h.key_press(eframe::egui::Key::F1);
    h.run_steps(3);
    h.get_by_label("Keyboard shortcuts");
    h.key_press(eframe::egui::Key::Escape);
    h.run_steps(3);
    assert!(h.query_by_label("Keyboard shortcuts").is_none());

    // Opening something that is not a project says so in a toast.
    h.get_by_label("Project folder").focus();
    h.step();
    h.key_combination_modifiers(eframe::egui::Modifiers::COMMAND, &[eframe::egui::Key::A]);
    h.get_by_label("Project folder")
        .type_text(&dir.path().join("nothing").display().to_string());
    h.step();
    h.get_by_label("Open").click();
    wait_until(&mut h, "the error toast", |a| {
        a.notices()
            .items
            .iter()
            .any(|n| n.text.contains("nothing") && n.text.contains("failed"))
    });
    assert_eq!(h.state().project().unwrap().0, root);
}

#[test]
fn logged_warnings_from_any_thread_become_toasts_once() {
    // The logger main installs; its terminal side writes through the test harness.
    let feed = maskstudio::gui::log_toasts::install(
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Info)
            .is_test(true),
    )
    .expect("no other logger in this test binary");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-project");
    let app = StudioApp::with_options(StudioOptions {
        project: Some(missing.clone()),
        settings_path: dir.path().join("config/settings.json"),
        oi_cache_dir: dir.path().join("oi-cache"),
        start_tab: Some(Tab::Review),
        log_toasts: Some(feed),
    });
    let mut h = harness(app);
    // A panel's own toast (logged too) must not come back through the log.
    wait_until(&mut h, "the failed open", |a| {
        !a.is_loading()
            && a.notices()
                .items
                .iter()
                .any(|n| n.text.contains("no-such-project"))
    });

    let tag = std::process::id();
    let warning = format!("disk almost full on volume {tag}");
    let info = format!("an info line {tag}");
    let error = format!("bundle {tag} is broken");
    let (w, i, e) = (warning.clone(), info.clone(), error.clone());
    std::thread::Builder::new()
        .name("log-from-worker".into())
        .spawn(move || {
            log::info!("{i}");
            log::warn!("{w}");
            log::warn!("{w}"); // a repeat within seconds folds into the first toast
            log::error!(target: "maskstudio::model::bundle", "{e}");
        })
        .unwrap()
        .join()
        .unwrap();
    wait_until(&mut h, "the logged toasts", |a| {
        a.notices().items.iter().any(|n| n.text == error)
    });
    h.get_by_label(&warning);
    h.get_by_label(&error); // the module target stays in the terminal, out of the text
    assert!(h.query_by_label_contains(&info).is_none());
    let count = |a: &StudioApp, f: &dyn Fn(&str) -> bool| {
        a.notices().items.iter().filter(|n| f(&n.text)).count()
    };
    let a = h.state();
    assert_eq!(count(a, &|t| t == warning), 1, "the repeat was folded");
    assert_eq!(count(a, &|t| t.contains(&info)), 0, "info is not a toast");
    assert_eq!(
        count(a, &|t| t.contains("no-such-project")),
        1,
        "the panel's toast came back through the log"
    );
    let levels: Vec<NoticeLevel> = a
        .notices()
        .items
        .iter()
        .filter(|n| n.text == warning || n.text == error)
        .map(|n| n.level)
        .collect();
    assert_eq!(levels, [NoticeLevel::Warning, NoticeLevel::Error]);
}

#[test]
fn closing_right_after_a_change_keeps_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(studio(dir.path(), None, Tab::Review));
    h.run_steps(2);
    // A change, then the window closes within the save debounce (one frame later).
    h.state_mut().settings_mut().score_threshold = 0.625;
    h.step();
    drop(h);
    let saved = Settings::load(&dir.path().join("config/settings.json")).unwrap();
    assert!(
        (saved.score_threshold - 0.625).abs() < 1e-6,
        "saved {}",
        saved.score_threshold
    );
}

/// A loopback address nothing listens on (bound, then closed): "the network unplugged".
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn first_run_offline_opens_on_the_welcome_and_browses_the_built_in_classes() {
    let dir = tempfile::tempdir().unwrap();
    let unplugged = closed_port_url();
    let settings = Settings {
        data_dir: dir.path().join("data"),
        annotations_base_url: format!("{unplugged}/gcs"),
        images_base_url: format!("{unplugged}/s3"),
        ..Settings::default()
    };
    settings
        .save(&dir.path().join("config/settings.json"))
        .unwrap();
    let app = StudioApp::with_options(StudioOptions {
        project: None,
        settings_path: dir.path().join("config/settings.json"),
        oi_cache_dir: dir.path().join("oi-cache"),
        start_tab: None,
        log_toasts: None,
    });
    let mut h = harness(app);
    h.run_steps(2);
    // No project: the studio opens on the Welcome, with the sample one click away.
    assert_eq!(h.state().tab(), Tab::Review);
    h.get_by_label("Welcome to Mask Studio");
    h.get_by_label("Try the sample");
    assert!(h.state().notices().items.is_empty(), "nothing failed yet");

    h.get_by_label("Browse Open Images classes").click();
    h.run_steps(2);
    assert_eq!(h.state().tab(), Tab::Classes);
    // The built-in list shows at once, before any network answer.
    let cat = h.state().classes.catalogue().expect("the built-in list");
    // 601 boxable classes and the hierarchy root, from the files built into the binary.
    assert_eq!(cat.classes().len(), 602);
    assert_eq!(
        cat.source(),
        maskstudio::openimages::CatalogueSource::BuiltIn
    );
    h.get_by_label("Search classes").focus();
    h.step();
    h.get_by_label("Search classes").type_text("hot d");
    h.run_steps(3);
    h.get_by_label("Hot dog");

    // The background load finds no server: a calm line with Retry and a way to a mirror,
    // no error toast, and the class list still there.
    wait_until(&mut h, "the catalogue load to give up", |a| {
        !a.classes.is_loading()
    });
    let reason = h.state().classes.offline_reason().map(str::to_owned);
    assert!(reason.is_some(), "the fallback reason is kept");
    h.get_by_label("Open Images is not reachable");
    h.get_by_label("Retry");
    assert!(
        h.state()
            .notices()
            .items
            .iter()
            .all(|n| n.level != NoticeLevel::Error),
        "network trouble is not an error toast: {:?}",
        h.state().notices().items
    );
    assert_eq!(
        h.state().classes.catalogue().unwrap().source(),
        maskstudio::openimages::CatalogueSource::BuiltIn
    );
    h.get_by_label("Hot dog");

    // "Use a mirror…" opens the settings; with a reachable mirror, Retry downloads the files.
    assert!(h.query_by_label("Annotations mirror URL").is_none());
    h.get_by_label("Use a mirror…").click();
    h.run_steps(3);
    h.get_by_label("Annotations mirror URL");
    let server = OiServer::start(build_fixture(&FxOptions::default()).files);
    h.state_mut().settings_mut().annotations_base_url = server.gcs_base.clone();
    h.state_mut().settings_mut().images_base_url = server.images_base.clone();
    h.get_by_label("Retry").click();
    h.run_steps(2);
    wait_until(&mut h, "the refreshed catalogue", |a| {
        !a.classes.is_loading()
            && a.classes
                .catalogue()
                .is_some_and(|c| c.source() == maskstudio::openimages::CatalogueSource::Downloaded)
    });
    assert_eq!(h.state().classes.offline_reason(), None);
    assert_eq!(h.state().classes.error(), None);
    assert!(h.query_by_label("Open Images is not reachable").is_none());
    assert_eq!(
        h.state()
            .classes
            .catalogue()
            .unwrap()
            .get(HOT_DOG)
            .unwrap()
            .name,
        "Hot dog"
    );
}
