//! `kill -9` during a bulk import leaves a consistent project, and running the import again
//! completes it (coco128-seg: 128 images, 929 instances).

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use maskstudio::dataset::store::Project;

fn counts(project: &Project) -> (i64, i64) {
    let conn = project.connection();
    let images = conn
        .query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))
        .unwrap();
    let instances = conn
        .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
        .unwrap();
    (images, instances)
}

fn assert_consistent(dir: &std::path::Path) -> (i64, i64) {
    if !dir.join(maskstudio::dataset::store::DB_FILE).exists() {
        return (0, 0); // killed before the project was created
    }
    let project = Project::open(dir).unwrap();
    assert_eq!(project.integrity_check().unwrap(), "ok");
    let fk_problems: i64 = project
        .connection()
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk_problems, 0);
    // Every image row has its file, whole (same sha256).
    let mut stmt = project
        .connection()
        .prepare("SELECT path, sha256 FROM images")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (path, sha) in rows {
        let file = project.images_dir().join(&path);
        assert_eq!(
            maskstudio::dataset::store::sha256_of_file(&file).unwrap(),
            sha,
            "{path}"
        );
    }
    let (images, instances) = counts(&project);
    // All or nothing: the import is one transaction.
    assert!(
        (images, instances) == (0, 0) || (images, instances) == (128, 929),
        "half-visible import: {images} images, {instances} instances"
    );
    (images, instances)
}

#[test]
fn kill_during_import_leaves_a_consistent_project_and_a_rerun_completes_it() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dataset = data.join("coco128-seg");
    let bin = env!("CARGO_BIN_EXE_maskstudio");
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");

    // Time one full import to spread the kill points over it.
    let scratch = dir.path().join("timing");
    let start = Instant::now();
    let status = Command::new(bin)
        .args(["import", "--project"])
        .arg(&scratch)
        .arg(&dataset)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let full = start.elapsed();

    // A kill that surely lands before the commit: as soon as the first image file appears in
    // the project (phase 1 copies all 128 files before the one transaction), whatever the
    // machine's speed or load.
    let mut child = spawn_import(bin, &project, &dataset);
    let images_dir = project.join("images");
    let finished = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if std::fs::read_dir(&images_dir).is_ok_and(|mut d| d.next().is_some()) {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    assert!(!finished, "the import ended before copying a file");
    assert_eq!(
        assert_consistent(&project).0,
        0,
        "killed while copying files: nothing may be committed"
    );

    // More kill points spread over a full import's duration (timed once): they land in file
    // copying, in the transaction or after it; each must leave a consistent project.
    for step in 1..=8u32 {
        let mut child = spawn_import(bin, &project, &dataset);
        std::thread::sleep(full.mul_f64(f64::from(step) / 10.0));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let (images, _) = assert_consistent(&project);
        eprintln!("kill {step}: process had finished: {finished}, images committed: {images}");
        if images == 128 {
            break;
        }
    }

    // Running the import again completes it; a third run changes nothing.
    for _ in 0..2 {
        let status = Command::new(bin)
            .args(["import", "--project"])
            .arg(&project)
            .arg(&dataset)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(assert_consistent(&project), (128, 929));
    }
    // No temp files are left beside the images.
    let leftovers: Vec<_> = walk(&project.join("images"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".partial-"))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

/// `maskstudio import --project project dataset`, output discarded.
fn spawn_import(
    bin: &str,
    project: &std::path::Path,
    dataset: &std::path::Path,
) -> std::process::Child {
    Command::new(bin)
        .args(["import", "--project"])
        .arg(project)
        .arg(dataset)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
