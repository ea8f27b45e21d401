//! The packaged app runs with nothing from the development environment. `packaging/build.sh`
//! packages the dev binary (cpu variant), the tarball is unpacked, and with `env -i` (only
//! PATH=/usr/bin:/bin and a fresh HOME: no venv, no LIBTORCH, no LD_LIBRARY_PATH) the packaged
//! binary prints its version, creates the sample project, predicts with a bundle and opens the
//! window under Xvfb; every library it loads comes from the package or the system. install.sh /
//! uninstall.sh then leave nothing but user data. Takes about a minute (a ~140 MB tarball).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use maskstudio::model::bundle::{Bundle, ModelSpec};
use maskstudio::model::{Backbone, MaskRcnn};
use maskstudio::sample_project::{SAMPLE_CLASSES, SAMPLE_IMAGES};

/// `(RPATH or RUNPATH, NEEDED entries)` of an ELF file, from `readelf -d`.
fn dynamic_section(file: &Path) -> (String, Vec<String>) {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf -d {file:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bracket = |line: &str| {
        let start = line.find('[').map_or(0, |i| i + 1);
        let end = line.rfind(']').unwrap_or(line.len());
        line[start..end].to_owned()
    };
    let rpath = text
        .lines()
        .find(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .map(bracket)
        .unwrap_or_default();
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(bracket)
        .collect();
    (rpath, needed)
}

/// Whether `path` is a system library location (not the package, not the dev venv).
fn is_system_path(path: &str) -> bool {
    ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// A command with an empty environment but PATH=/usr/bin:/bin and HOME.
fn clean(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home);
    command
}

fn check(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({:?}):\n{}\n{stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned() + &stderr
}

/// Every file and folder under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(root).unwrap().to_path_buf());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Sample images the packaged `predict` runs on (a few: the dev binary on 2 cores is slow).
const PREDICTED: usize = 3;

#[test]
fn the_cpu_package_runs_without_the_dev_environment_and_uninstalls_cleanly() {
    for tool in ["patchelf", "rsvg-convert", "xvfb-run", "readelf"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: run scripts/setup-system.sh (./test-all does)"
        );
    }
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev_binary = Path::new(env!("CARGO_BIN_EXE_maskstudio"));
    let version = env!("CARGO_PKG_VERSION");

    // The dev binary keeps its absolute rpath to the venv's libtorch (./studio, cargo test).
    let (dev_rpath, dev_needed) = dynamic_section(dev_binary);
    let dev_torch = Path::new(&dev_rpath);
    assert!(
        dev_torch.is_absolute() && dev_torch.join("libtorch_cpu.so").is_file(),
        "dev rpath {dev_rpath:?}"
    );
    if dev_torch.join("libtorch_cuda.so").is_file() {
        assert!(dev_needed.iter().any(|n| n == "libtorch_cuda.so"));
    }

    // Build and unpack.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    let built = Command::new("bash")
        .arg(repo.join("packaging/build.sh"))
        .args(["--variant", "cpu", "--profile", "dev", "--binary"])
        .arg(dev_binary)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = check(built, "packaging/build.sh");
    eprintln!("{} ({:.0?})", log.trim(), started.elapsed());
    let name = format!("maskstudio-{version}-linux-x86_64-cpu");
    let tarball = out.join(format!("{name}.tar.gz"));
    assert!(tarball.is_file(), "{log}");
    assert!(!out.join(&name).exists(), "the staging folder is removed");
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    check(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&unpacked)
            .output()
            .unwrap(),
        "tar -xzf",
    );
    let pkg = unpacked.join(&name);
    let bin = pkg.join("bin/maskstudio");
    for file in [
        "install.sh",
        "uninstall.sh",
        "README.txt",
        "BUILD-INFO",
        "bin/maskstudio-open",
        "share/applications/maskstudio.desktop",
        "share/mime/packages/maskstudio.xml",
        "share/icons/hicolor/scalable/apps/maskstudio.svg",
        "share/icons/hicolor/32x32/apps/maskstudio.png",
        "share/icons/hicolor/256x256/apps/maskstudio.png",
        "share/doc/maskstudio/licenses/torch",
    ] {
        assert!(
            pkg.join(file).exists(),
            "{file} is missing from the package"
        );
    }
    let icon = image::open(pkg.join("share/icons/hicolor/32x32/apps/maskstudio.png")).unwrap();
    assert_eq!((icon.width(), icon.height()), (32, 32));
    // The committed 256 px render (the window icon) is the SVG's render, not a stale copy.
    let rendered = image::open(pkg.join("share/icons/hicolor/256x256/apps/maskstudio.png"))
        .unwrap()
        .to_rgba8();
    let committed = image::open(repo.join("assets/maskstudio-256.png"))
        .unwrap()
        .to_rgba8();
    assert_eq!(rendered.dimensions(), committed.dimensions());
    let diff: u64 = rendered
        .as_raw()
        .iter()
        .zip(committed.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    assert!(
        diff < rendered.as_raw().len() as u64,
        "assets/maskstudio-256.png differs from assets/maskstudio.svg: re-render it"
    );

    // The packaged binary: rpath inside the package, no libtorch_cuda, stripped of debug info.
    let (rpath, needed) = dynamic_section(&bin);
    assert_eq!(rpath, "$ORIGIN/../lib");
    assert!(needed.iter().any(|n| n == "libtorch_cpu.so"), "{needed:?}");
    assert!(!needed.iter().any(|n| n.contains("cuda")), "{needed:?}");
    assert!(std::fs::metadata(&bin).unwrap().len() < std::fs::metadata(dev_binary).unwrap().len());
    let lib_dir = pkg.join("lib");
    let mut files = vec![bin.clone()];
    files.extend(
        std::fs::read_dir(&lib_dir)
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for file in &files {
        let ldd = check(clean("ldd", &home).arg(file).output().unwrap(), "ldd");
        for line in ldd.lines().filter(|l| l.contains("=>")) {
            assert!(!line.contains("not found"), "{file:?}: {line}");
            let resolved = line.split("=>").nth(1).unwrap().split_whitespace().next();
            let Some(resolved) = resolved.filter(|r| r.starts_with('/')) else {
                continue;
            };
            let inside = Path::new(resolved)
                .canonicalize()
                .unwrap()
                .starts_with(lib_dir.canonicalize().unwrap());
            assert!(
                inside || is_system_path(resolved),
                "{file:?}: {line} resolves outside the package and the system"
            );
        }
    }

    // Run it with nothing from the development environment.
    let run = |args: &[&std::ffi::OsStr], what: &str| {
        check(clean(&bin, &home).args(args).output().unwrap(), what)
    };
    eprintln!("unpacked and checked with ldd: {:.0?}", started.elapsed());
    let version_line = run(&["--version".as_ref()], "maskstudio --version");
    assert_eq!(version_line.trim(), format!("maskstudio {version}"));
    let doctor = run(&["doctor".as_ref()], "maskstudio doctor");
    assert!(doctor.contains("cuda available: false"), "{doctor}");
    assert!(
        doctor.contains(home.to_str().unwrap()),
        "the cache is under the new HOME: {doctor}"
    );

    let project = home.join("Projects/sample");
    run(
        &["sample".as_ref(), "--project".as_ref(), project.as_os_str()],
        "maskstudio sample",
    );
    let info = maskstudio::dataset::store::Project::open(&project)
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(
        info.splits.values().map(|s| s.images).sum::<u64>(),
        SAMPLE_IMAGES as u64
    );

    // A small random MobileNetV2 bundle for the sample's classes (written by the test process).
    let bundle_dir = home.join("model");
    {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let mut spec = ModelSpec::new(Backbone::MobilenetV2, SAMPLE_CLASSES.len() as i64 + 1);
        spec.min_size = Some(96);
        spec.max_size = Some(128);
        let _model = MaskRcnn::new(&vs.root(), &spec.resolved().to_config()).unwrap();
        let labels: Vec<String> = SAMPLE_CLASSES.iter().map(|s| (*s).to_owned()).collect();
        Bundle::write(&bundle_dir, &spec, &labels, &vs).unwrap();
    }
    let results = home.join("results.json");
    let overlays = home.join("overlays");
    // LD_DEBUG=libs names every object the loader initialises: none may come from the venv.
    let predicted = clean(&bin, &home)
        .env("LD_DEBUG", "libs")
        .args(["predict", "--device", "cpu", "--model"])
        .arg(&bundle_dir)
        .arg("--out-json")
        .arg(&results)
        .arg("--out-dir")
        .arg(&overlays)
        .args((0..PREDICTED).map(|i| project.join(format!("images/sample-{i:02}.png"))))
        .output()
        .unwrap();
    let predicted = check(predicted, "maskstudio predict");
    let loaded: Vec<&str> = predicted
        .lines()
        .filter_map(|l| l.split("calling init: ").nth(1))
        .map(str::trim)
        .collect();
    assert!(
        loaded.iter().any(|l| l.ends_with("libtorch_cpu.so")),
        "{predicted}"
    );
    let pkg_real = pkg.canonicalize().unwrap();
    for object in &loaded {
        let real = Path::new(object).canonicalize().unwrap();
        assert!(
            real.starts_with(&pkg_real) || is_system_path(object),
            "{object} was loaded from outside the package"
        );
    }
    let detections: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    assert!(
        detections
            .iter()
            .all(|d| d["segmentation"]["counts"].is_string())
    );
    assert_eq!(std::fs::read_dir(&overlays).unwrap().count(), PREDICTED);

    eprintln!("sample and predict: {:.0?}", started.elapsed());
    // The window, a few frames: first-run (no project), then through the file-type launcher
    // with the project's project.sqlite, as a file manager would open it.
    let gui_started = Instant::now();
    for (program, args) in [
        (bin.clone(), vec![]),
        (
            pkg.join("bin/maskstudio-open"),
            vec![project.join("project.sqlite")],
        ),
    ] {
        let output = clean("timeout", &home)
            .args(["120", "xvfb-run", "-a", "-s", "-screen 0 1280x800x24"])
            .arg(&program)
            .args(&args)
            .env(maskstudio::gui::EXIT_AFTER_FRAMES_ENV, "30")
            .output()
            .unwrap();
        check(output, &format!("the window ({program:?} {args:?})"));
    }
    eprintln!("two window runs: {:.1?}", gui_started.elapsed());

    // install.sh into another fresh HOME, use it, uninstall.sh: only user data is left.
    let home2 = tmp.path().join("home2");
    std::fs::create_dir(&home2).unwrap();
    let installed = check(
        clean("bash", &home2)
            .arg(pkg.join("install.sh"))
            .output()
            .unwrap(),
        "install.sh",
    );
    assert!(installed.contains("Installed"), "{installed}");
    let local = home2.join(".local");
    let link = local.join("bin/maskstudio");
    assert!(link.is_symlink());
    let desktop =
        std::fs::read_to_string(local.join("share/applications/maskstudio.desktop")).unwrap();
    let app = local.join("lib/maskstudio");
    assert!(
        desktop.contains(&format!(
            "Exec=\"{}\" %f",
            app.join("bin/maskstudio-open").display()
        )),
        "{desktop}"
    );
    assert!(desktop.contains("MimeType=application/x-maskstudio-project;"));
    assert!(
        local
            .join("share/icons/hicolor/32x32/apps/maskstudio.png")
            .is_file()
    );
    assert!(local.join("share/mime/packages/maskstudio.xml").is_file());
    if Path::new("/usr/bin/update-mime-database").exists() {
        let globs = std::fs::read_to_string(local.join("share/mime/globs2")).unwrap();
        assert!(
            globs.contains("application/x-maskstudio-project:project.sqlite"),
            "{globs}"
        );
    }
    eprintln!("installed: {:.0?}", started.elapsed());
    let via_link = check(
        clean(&link, &home2).arg("--version").output().unwrap(),
        "the installed maskstudio",
    );
    assert_eq!(via_link.trim(), format!("maskstudio {version}"));
    let user_project = home2.join("Projects/mine");
    check(
        clean(&link, &home2)
            .arg("sample")
            .arg("--project")
            .arg(&user_project)
            .output()
            .unwrap(),
        "the installed maskstudio sample",
    );
    let user_data = tree(&home2)
        .into_iter()
        .filter(|p| !p.starts_with(".local"))
        .collect::<Vec<_>>();
    check(
        clean("bash", &home2)
            .arg(app.join("uninstall.sh"))
            .output()
            .unwrap(),
        "uninstall.sh",
    );
    assert_eq!(
        tree(&home2),
        user_data,
        "uninstall leaves exactly the user data"
    );
    assert!(user_data.iter().any(|p| p.ends_with("project.sqlite")));
    eprintln!("packaging test: {:.0?} in all", started.elapsed());
}
