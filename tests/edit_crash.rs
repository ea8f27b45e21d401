//! `kill -9` during a burst of edits: the project reopens with `integrity_check` = ok, every
//! acknowledged edit is present (each edit is one committed transaction), at most the edit in
//! flight is lost, and undo still works after the crash. Twice: edits through the store
//! directly, and through the image view's `edit-writer` thread with several edits queued
//! (only the queued, unanswered ones may be lost).
//!
//! The child is this test binary re-executed with [`CHILD_ENV`] (or [`WRITER_CHILD_ENV`]) set:
//! it edits as fast as it can and prints `edit N` after each commit (each answer).

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::maskops;
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};
use maskstudio::gui::editor::writer::{EditCommand, EditWriter};

const CHILD_ENV: &str = "MASKSTUDIO_EDIT_CRASH_CHILD";
const WRITER_CHILD_ENV: &str = "MASKSTUDIO_EDIT_CRASH_WRITER_CHILD";
/// Edits the writer child keeps queued on its writer.
const IN_FLIGHT: usize = 4;
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

/// Like [`child`], through the image view's writer with [`IN_FLIGHT`] edits queued.
fn writer_child(root: &Path) -> ! {
    let mut writer = EditWriter::spawn(root, 1).unwrap();
    let mut mask = Mask::new(W, H);
    let stdout = std::io::stdout();
    let mut k = 0;
    loop {
        while writer.pending() < IN_FLIGHT {
            stroke(&mut mask, k);
            k += 1;
            let command = EditCommand::UpdateMask {
                instance: 1,
                mask: Arc::new(mask.clone()),
            };
            writer.submit(command, false, None).unwrap();
        }
        match writer.try_recv() {
            Some(reply) => {
                reply.outcome.unwrap();
                let mut out = stdout.lock();
                writeln!(out, "edit {}", reply.seq + 1).unwrap();
                out.flush().unwrap();
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

#[test]
fn kill_9_during_an_edit_burst_loses_at_most_the_edit_in_flight() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&root));
    }
    let dir = tempfile::tempdir().unwrap();
    let root = make_project(dir.path());
    kill_rounds(
        &root,
        "kill_9_during_an_edit_burst_loses_at_most_the_edit_in_flight",
        CHILD_ENV,
        1,
    );
}

#[test]
fn kill_9_with_edits_queued_on_the_writer_loses_only_unanswered_ones() {
    if let Some(root) = std::env::var_os(WRITER_CHILD_ENV) {
        writer_child(Path::new(&root));
    }
    let dir = tempfile::tempdir().unwrap();
    let root = make_project(dir.path());
    kill_rounds(
        &root,
        "kill_9_with_edits_queued_on_the_writer_loses_only_unanswered_ones",
        WRITER_CHILD_ENV,
        IN_FLIGHT as u32,
    );
}

/// One 320×240 image with one empty instance; returns the project folder.
fn make_project(dir: &Path) -> PathBuf {
    let src = dir.join("src");
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
    let root = dir.join("p");
    Project::create_or_open(&root)
        .unwrap()
        .import(&set, &src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    root
}

/// Reads the child's "edit N" lines into `acked` (the largest N) until `stop_at` is reached or the
/// pipe ends.
fn read_acks(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    acked: &mut u32,
    stop_at: Option<u32>,
) {
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        // A line cut short by the kill is a prefix of a larger number or unparsable: taking the
        // maximum of whole numbers ignores it.
        if let Some(Ok(n)) = line.strip_prefix("edit ").map(|n| n.trim().parse::<u32>()) {
            *acked = (*acked).max(n);
        }
        if stop_at.is_some_and(|k| *acked >= k) {
            break;
        }
    }
}

/// Runs the child test `test` (with `env` = the project) twice, kills it mid-burst and checks
/// the project: every acknowledged edit is in the log, besides them at most `may_lose`
/// unacknowledged ones (those in flight), the mask is the last logged edit's, and undo works.
fn kill_rounds(root: &Path, test: &str, env: &str, may_lose: u32) {
    for (round, kill_after) in [(0, 25u32), (1, 60)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(env, root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The child prints "edit N" only after edit N is committed (answered). Read up to the
        // threshold, kill it, then drain what it printed before it died: it keeps editing while
        // we read, so more edits than the threshold are usually acknowledged already.
        let mut acked = 0u32;
        read_acks(&mut lines, &mut acked, Some(kill_after));
        let reached = acked;
        child.kill().unwrap(); // SIGKILL, mid-burst
        read_acks(&mut lines, &mut acked, None); // EOF once the child is gone
        child.wait().unwrap();
        assert!(
            reached >= kill_after,
            "round {round}: child stopped after {reached} edits"
        );
        eprintln!(
            "round {round}: killed at {reached} acknowledged, {acked} after draining the pipe"
        );

        let mut project = Project::open(root).unwrap();
        assert_eq!(project.integrity_check().unwrap(), "ok");
        let logged: i64 = project
            .connection()
            .query_row("SELECT COUNT(*) FROM edit_log", [], |r| r.get(0))
            .unwrap();
        let logged = logged as u32;
        assert!(
            logged >= acked && logged <= acked + may_lose,
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
        let mut project = Project::open(root).unwrap();
        project.update_instance_mask(1, &Mask::new(W, H)).unwrap();
        project
            .connection()
            .execute("DELETE FROM edit_log", [])
            .unwrap();
    }
}
