//! `kill -9` during a burst of edits: the project reopens with `integrity_check` = ok, every
//! acknowledged edit is present (each edit is one committed transaction), at most the edit in
//! flight is lost, and undo still works after the crash.
//!
//! The child is this test binary re-executed with [`CHILD_ENV`] set: it edits as fast as it
//! can and prints `edit N` after each commit.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maskstudio::dataset::maskops;
use maskstudio::dataset::store::{CancelToken, Project};
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};

const CHILD_ENV: &str = "MASKSTUDIO_EDIT_CRASH_CHILD";
const W: u32 = 320;
const H: u32 = 240;

/// The mask after edit `k`: one brush disc per edit, laid out on a grid so the area grows.
fn stroke(mask: &mut Mask, k: u32) {
    let (cols, step) = (W / 8, 8.0);
    let (cx, cy) = (
        f64::from(k % cols) * step + 4.0,
        f64::from(k / cols % (H / 8)) * step + 4.0,
    );
    maskops::paint_segment(mask, [cx, cy], [cx + 2.0, cy], 3.0, true);
}

fn expected_after(edits: u32) -> Mask {
    let mut m = Mask::new(W, H);
    for k in 0..edits {
        stroke(&mut m, k);
    }
    m
}

fn child(root: &Path) -> ! {
    let mut project = Project::open(root).unwrap();
    let mut mask = Mask::new(W, H);
    let stdout = std::io::stdout();
    for k in 0.. {
        stroke(&mut mask, k);
        project.update_instance_mask(1, &mask).unwrap();
        let mut out = stdout.lock();
        writeln!(out, "edit {}", k + 1).unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
fn kill_9_during_an_edit_burst_loses_at_most_the_edit_in_flight() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&root));
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::write_png(&src.join("a.png"), W, H, 7);
    let set = ImportSet {
        format: "test".into(),
        classes: vec![ClassDef {
            name: "thing".into(),
            mid: None,
        }],
        images: vec![ImportImage {
            src_path: src.join("a.png"),
            file_name: "a.png".into(),
            width: W,
            height: H,
            split: None,
            source: "test".into(),
            attribution: Attribution::default(),
            instances: vec![ImportInstance {
                class: "thing".into(),
                segmentation: Segmentation::Bitmap(Mask::new(W, H)),
                iscrowd: false,
                origin: Origin::Import,
                provenance: None,
            }],
        }],
    };
    let root = dir.path().join("p");
    Project::create_or_open(&root)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();

    for (round, kill_after) in [(0, 25u32), (1, 60)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_during_an_edit_burst_loses_at_most_the_edit_in_flight",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reader = BufReader::new(child.stdout.take().unwrap());
        let mut acked = 0u32;
        let start = Instant::now();
        for line in reader.lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("edit ") {
                acked = n.trim().parse().unwrap();
                if acked >= kill_after {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "child too slow");
        }
        child.kill().unwrap(); // SIGKILL, mid-burst
        child.wait().unwrap();
        assert!(
            acked >= kill_after,
            "round {round}: child stopped after {acked} edits"
        );

        let mut project = Project::open(&root).unwrap();
        assert_eq!(project.integrity_check().unwrap(), "ok");
        let logged: i64 = project
            .connection()
            .query_row("SELECT COUNT(*) FROM edit_log", [], |r| r.get(0))
            .unwrap();
        let logged = logged as u32;
        assert!(
            logged == acked || logged == acked + 1,
            "round {round}: {acked} edits acknowledged, {logged} in the log"
        );
        let row = &project.instances(1).unwrap()[0];
        let mask = Mask::from_rle(&row.rle).unwrap();
        assert_eq!(
            mask,
            expected_after(logged),
            "round {round}: mask = edit {logged}"
        );
        assert!(row.edited);
        // Undo after the crash goes back exactly one edit.
        project.undo().unwrap().unwrap();
        let row = &project.instances(1).unwrap()[0];
        assert_eq!(
            Mask::from_rle(&row.rle).unwrap(),
            expected_after(logged - 1)
        );
        // Reset for the next round: clear the log and the mask.
        let conn = project.connection();
        conn.execute("DELETE FROM edit_log", []).unwrap();
        drop(project);
        let mut project = Project::open(&root).unwrap();
        project.update_instance_mask(1, &Mask::new(W, H)).unwrap();
        project
            .connection()
            .execute("DELETE FROM edit_log", [])
            .unwrap();
    }
}
