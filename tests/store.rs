//! The project store: import transaction, edits with undo/redo that survive a restart,
//! review status, path safety and bad images.

mod common;

use std::path::Path;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::store::{Project, ReviewStatus, StoreError};
use maskstudio::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
};

fn square(width: u32, height: u32, x0: u32, y0: u32, side: u32) -> Mask {
    let mut m = Mask::new(width, height);
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            m.set(x, y, true);
        }
    }
    m
}

fn synthetic_set(dir: &Path, images: usize) -> ImportSet {
    let mut set = ImportSet {
        format: "test".into(),
        classes: vec![
            ClassDef {
                name: "cat".into(),
                mid: Some("/m/01yrx".into()),
            },
            ClassDef {
                name: "dog".into(),
                mid: None,
            },
        ],
        images: Vec::new(),
    };
    for i in 0..images {
        let name = format!("img{i}.png");
        common::write_png(&dir.join(&name), 40, 30, i as u8);
        set.images.push(ImportImage {
            src_path: dir.join(&name),
            file_name: name,
            width: 40,
            height: 30,
            split: Some(if i % 2 == 0 { "train" } else { "validation" }.into()),
            source: "test".into(),
            attribution: Attribution {
                author: Some("A. Person".into()),
                ..Default::default()
            },
            instances: vec![
                ImportInstance {
                    class: "cat".into(),
                    segmentation: Segmentation::Bitmap(square(40, 30, 2, 3, 5)),
                    iscrowd: false,
                    origin: Origin::Import,
                    provenance: None,
                },
                ImportInstance {
                    class: "dog".into(),
                    segmentation: Segmentation::Polygons(vec![vec![
                        10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0,
                    ]]),
                    iscrowd: false,
                    origin: Origin::Import,
                    provenance: Some(serde_json::json!({"source": "synthetic"})),
                },
            ],
        });
    }
    set
}

#[test]
fn import_writes_all_rows_and_a_second_import_is_a_no_op() {
    let src = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let set = synthetic_set(src.path(), 4);
    let mut project = Project::create_or_open(dir.path()).unwrap();
    let summary = project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap();
    assert_eq!(
        (
            summary.images_added,
            summary.instances_added,
            summary.classes_added
        ),
        (4, 8, 2)
    );
    let again = project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap();
    assert_eq!(
        (
            again.images_added,
            again.images_skipped,
            again.instances_added
        ),
        (0, 4, 0)
    );

    let info = project.info().unwrap();
    assert_eq!(info.splits["train"].images, 2);
    assert_eq!(info.splits["validation"].instances, 4);
    assert_eq!(
        info.classes
            .iter()
            .map(|(c, n)| (c.name.as_str(), *n))
            .collect::<Vec<_>>(),
        [("cat", 4), ("dog", 4)]
    );
    assert_eq!(info.unreviewed_images, 4);
    assert_eq!(project.integrity_check().unwrap(), "ok");
    assert!(dir.path().join("images/img3.png").is_file());

    // The polygon 10..20 square rasterises (pycocotools semantics) to 10×10 pixels.
    let export = project.export_set(None).unwrap();
    let dog = &export.images[0].instances[1];
    assert_eq!(dog.rle.area(), 100);
    assert_eq!(export.images[0].instances[0].rle.area(), 25);
    assert_eq!(
        export.images[0].attribution.author.as_deref(),
        Some("A. Person")
    );
}

#[test]
fn edits_undo_and_redo_survive_reopening_the_project() {
    let src = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let set = synthetic_set(src.path(), 1);
    let mut project = Project::create_or_open(dir.path()).unwrap();
    project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap();
    let image_id = project.export_set(None).unwrap().images[0].id;
    let cat = project.instances(image_id).unwrap()[0].clone();
    assert_eq!(cat.area, 25);

    project
        .update_instance_mask(cat.id, &square(40, 30, 0, 0, 8))
        .unwrap();
    let new_id = project
        .add_instance(
            image_id,
            cat.class_id,
            &square(40, 30, 30, 20, 3),
            Origin::Manual,
        )
        .unwrap();
    project.delete_instance(new_id).unwrap();
    drop(project);

    let mut project = Project::open(dir.path()).unwrap();
    let rows = project.instances(image_id).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].area, 64);
    assert!(rows[0].edited);
    assert_eq!(project.info().unwrap().edited_instances, 1);

    assert_eq!(project.undo().unwrap(), Some(new_id)); // undo delete
    assert_eq!(project.instances(image_id).unwrap().len(), 3);
    assert_eq!(project.undo().unwrap(), Some(new_id)); // undo create
    assert_eq!(project.undo().unwrap(), Some(cat.id)); // undo mask edit
    let rows = project.instances(image_id).unwrap();
    assert_eq!((rows.len(), rows[0].area, rows[0].edited), (2, 25, false));
    assert_eq!(project.undo().unwrap(), None);
    drop(project);

    let mut project = Project::open(dir.path()).unwrap();
    assert_eq!(project.redo().unwrap(), Some(cat.id));
    assert_eq!(project.instances(image_id).unwrap()[0].area, 64);
    // A new edit clears the redo stack.
    project
        .set_instance_class(cat.id, cat.class_id + 1)
        .unwrap();
    assert_eq!(project.redo().unwrap(), None);
    assert_eq!(
        project.instances(image_id).unwrap()[0].class_id,
        cat.class_id + 1
    );
    assert_eq!(project.integrity_check().unwrap(), "ok");
}

#[test]
fn review_status_is_stored_per_image() {
    let src = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut project = Project::create_or_open(dir.path()).unwrap();
    project
        .import(
            &synthetic_set(src.path(), 3),
            src.path(),
            &CancelToken::default(),
            &mut |_| {},
        )
        .unwrap();
    let ids: Vec<i64> = project
        .export_set(None)
        .unwrap()
        .images
        .iter()
        .map(|m| m.id)
        .collect();
    project
        .set_review_status(ids[0], ReviewStatus::Accepted)
        .unwrap();
    project
        .set_review_status(ids[1], ReviewStatus::Rejected)
        .unwrap();
    let info = project.info().unwrap();
    assert_eq!(info.unreviewed_images, 1);
    assert_eq!(info.review["rejected"], 1);
    assert!(matches!(
        project.set_review_status(999, ReviewStatus::Fixed),
        Err(StoreError::Missing { .. })
    ));
}

#[test]
fn a_bad_image_or_instance_aborts_the_import_and_writes_no_rows() {
    let src = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut set = synthetic_set(src.path(), 3);
    // Truncate the last image: it must be refused by name and nothing may be committed.
    let bytes = std::fs::read(src.path().join("img2.png")).unwrap();
    std::fs::write(src.path().join("img2.png"), &bytes[..bytes.len() / 2]).unwrap();
    let mut project = Project::create_or_open(dir.path()).unwrap();
    let err = project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("img2.png"), "{err}");
    assert_eq!(project.info().unwrap().splits.len(), 0);

    common::write_png(&src.path().join("img2.png"), 40, 30, 2);
    set.images[1].instances[0].class = "unicorn".into();
    let err = project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("img1.png") && err.to_string().contains("unicorn"),
        "{err}"
    );

    set.images[1].instances[0].class = "cat".into();
    set.images[0].file_name = "../escape.png".into();
    let err = project
        .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsafePath { .. }), "{err}");
    assert!(!dir.path().join("escape.png").exists());
    assert_eq!(project.info().unwrap().splits.len(), 0);

    let cancel = CancelToken::default();
    cancel.cancel();
    set.images[0].file_name = "img0.png".into();
    assert!(matches!(
        project.import(&set, src.path(), &cancel, &mut |_| {}),
        Err(StoreError::Cancelled)
    ));
    assert_eq!(project.info().unwrap().splits.len(), 0);
}

// ---- label-error audits (issue 18): findings stored by instance, resolved as undoable steps ----

use maskstudio::dataset::store::{AuditMode, FindingStatus, NewAudit, NewFinding, Resolution};

/// A project of `images` synthetic images (cat 5×5 at (2,3), dog 10×10 at (10,10)) and its
/// image ids.
fn audit_project(src: &Path, dir: &Path, images: usize) -> (Project, Vec<i64>) {
    let set = synthetic_set(src, images);
    let mut project = Project::create_or_open(dir).unwrap();
    project
        .import(&set, src, &CancelToken::default(), &mut |_| {})
        .unwrap();
    let ids = project
        .export_set(None)
        .unwrap()
        .images
        .iter()
        .map(|m| m.id)
        .collect();
    (project, ids)
}

fn finding(image_id: i64, instance_id: Option<i64>, kind: &str, score: f64) -> NewFinding {
    NewFinding {
        image_id,
        instance_id,
        kind: kind.into(),
        score,
        image_score: score,
        reason: format!("{kind} test"),
        suggested_class_id: None,
        suggested_mask: None,
    }
}

fn audit_of(images: &[i64]) -> NewAudit {
    NewAudit {
        model: "runs/r1/checkpoints/best".into(),
        mode: AuditMode::Model,
        split: Some("validation".into()),
        params: serde_json::json!({"match_iou": 0.5}),
        images: images.to_vec(),
    }
}

#[test]
fn audit_findings_are_queued_by_image_score_and_go_stale_when_edited() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut project, ids) = audit_project(src.path(), dir.path(), 2);
    let (a, b) = (
        project.instances(ids[0]).unwrap(),
        project.instances(ids[1]).unwrap(),
    );
    let mut low = finding(ids[0], Some(a[0].id), "loose", 0.3);
    low.suggested_mask = Some(square(40, 30, 2, 3, 6).to_rle());
    let mut high = finding(ids[1], Some(b[1].id), "spurious", 0.9);
    high.image_score = 0.95;
    let audit = project.save_audit(&audit_of(&ids), &[low, high]).unwrap();

    let queue = project.audit_queue(None).unwrap();
    assert_eq!(
        queue
            .iter()
            .map(|f| (f.image_id, f.kind.as_str()))
            .collect::<Vec<_>>(),
        [(ids[1], "spurious"), (ids[0], "loose")]
    );
    assert!(queue.iter().all(|f| f.audit_id == audit && !f.stale));
    assert_eq!(queue[1].suggested_mask.as_ref().unwrap().area(), 36);
    assert_eq!(project.audit_queue(Some("loose")).unwrap().len(), 1);
    let counts = project.audit_counts().unwrap();
    assert_eq!(
        (counts["loose"], counts["spurious"], counts["swap"]),
        (1, 1, 0)
    );
    let audits = project.audits().unwrap();
    assert_eq!(
        (audits.len(), audits[0].findings, audits[0].images),
        (1, 2, 2)
    );

    // Editing the cat makes its finding stale; the other stays fresh. It survives a reopen.
    project
        .update_instance_mask(a[0].id, &square(40, 30, 1, 1, 4))
        .unwrap();
    drop(project);
    let project = Project::open(dir.path()).unwrap();
    let stale: Vec<bool> = project
        .audit_queue(None)
        .unwrap()
        .iter()
        .map(|f| f.stale)
        .collect();
    assert_eq!(stale, [false, true]);
}

#[test]
fn a_new_audit_replaces_open_findings_and_keeps_resolved_ones() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut project, ids) = audit_project(src.path(), dir.path(), 2);
    let a = project.instances(ids[0]).unwrap();
    project
        .save_audit(
            &audit_of(&ids),
            &[
                finding(ids[0], Some(a[0].id), "spurious", 0.5),
                finding(ids[0], Some(a[1].id), "spurious", 0.4),
            ],
        )
        .unwrap();
    let kept = project.audit_queue(None).unwrap()[1].id;
    project.resolve_finding(kept, Resolution::Keep).unwrap();
    // The second audit covers only image 0: its open finding is replaced.
    project
        .save_audit(
            &audit_of(&ids[..1]),
            &[finding(ids[0], Some(a[0].id), "swap", 0.7)],
        )
        .unwrap();
    let queue = project.audit_queue(None).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].kind, "swap");
    assert_eq!(project.finding(kept).unwrap().status, FindingStatus::Kept);
}

#[test]
fn resolving_findings_edits_the_labels_and_undo_restores_both() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut project, ids) = audit_project(src.path(), dir.path(), 1);
    let image = ids[0];
    let before = project.instances(image).unwrap();
    let (cat, dog) = (before[0].clone(), before[1].clone());
    let new_mask = square(40, 30, 25, 5, 4);
    let mut missing = finding(image, None, "missing", 0.8);
    missing.suggested_class_id = Some(dog.class_id);
    missing.suggested_mask = Some(new_mask.to_rle());
    let mut loose = finding(image, Some(cat.id), "loose", 0.6);
    loose.suggested_mask = Some(square(40, 30, 2, 3, 7).to_rle());
    let mut swap = finding(image, Some(dog.id), "swap", 0.5);
    swap.suggested_class_id = Some(cat.class_id);
    project
        .save_audit(&audit_of(&ids), &[missing, loose, swap])
        .unwrap();
    let id_of = |p: &Project, kind: &str| p.audit_queue(Some(kind)).unwrap()[0].id;

    // Missing → a new instance with the suggested mask and class, stamped with the model.
    let f_missing = id_of(&project, "missing");
    let created = project
        .resolve_finding(f_missing, Resolution::AcceptFix)
        .unwrap()
        .unwrap();
    let row = project
        .instances(image)
        .unwrap()
        .into_iter()
        .find(|i| i.id == created)
        .unwrap();
    assert_eq!(
        (row.class_id, row.rle.clone()),
        (dog.class_id, new_mask.to_rle())
    );
    assert_eq!(row.origin, Origin::Model);
    let stamp = row.provenance.unwrap();
    assert_eq!(stamp["source"], "audit");
    assert_eq!(stamp["model"], "runs/r1/checkpoints/best");
    assert_eq!(
        project.finding(f_missing).unwrap().status,
        FindingStatus::Accepted
    );
    assert!(
        project
            .resolve_finding(f_missing, Resolution::Keep)
            .is_err()
    );

    // Loose → the suggested mask; swap → the suggested class; provenance keeps its old keys.
    let f_loose = id_of(&project, "loose");
    project
        .resolve_finding(f_loose, Resolution::AcceptFix)
        .unwrap();
    let f_swap = id_of(&project, "swap");
    project
        .resolve_finding(f_swap, Resolution::AcceptFix)
        .unwrap();
    let now = project.instances(image).unwrap();
    assert_eq!(now[0].rle.area(), 49);
    assert_eq!(now[1].class_id, cat.class_id);
    let dog_prov = now[1].provenance.clone().unwrap();
    assert_eq!(
        (
            dog_prov["source"].as_str(),
            dog_prov["audit"]["source"].as_str()
        ),
        (Some("synthetic"), Some("audit"))
    );
    assert!(project.audit_queue(None).unwrap().is_empty());

    // Three undos restore the labels exactly and reopen the three findings, newest first.
    project.undo_image(image).unwrap();
    assert_eq!(project.finding(f_swap).unwrap().status, FindingStatus::Open);
    assert_eq!(project.instances(image).unwrap()[1].class_id, dog.class_id);
    project.undo_image(image).unwrap();
    project.undo_image(image).unwrap();
    assert_eq!(project.instances(image).unwrap(), before);
    assert_eq!(project.audit_queue(None).unwrap().len(), 3);
    assert!(project.audit_queue(None).unwrap().iter().all(|f| !f.stale));
    // Redo applies the first again (instance re-created under its id, finding accepted).
    assert_eq!(project.redo_image(image).unwrap(), Some(created));
    assert_eq!(
        project.finding(f_missing).unwrap().status,
        FindingStatus::Accepted
    );
    assert_eq!(project.instances(image).unwrap().len(), 3);
}

#[test]
fn keep_and_delete_resolve_and_undo() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut project, ids) = audit_project(src.path(), dir.path(), 1);
    let before = project.instances(ids[0]).unwrap();
    project
        .save_audit(
            &audit_of(&ids),
            &[
                finding(ids[0], Some(before[0].id), "spurious", 0.9),
                finding(ids[0], Some(before[1].id), "spurious", 0.2),
            ],
        )
        .unwrap();
    let queue = project.audit_queue(None).unwrap();
    assert_eq!(
        project
            .resolve_finding(queue[0].id, Resolution::Delete)
            .unwrap(),
        Some(before[0].id)
    );
    assert_eq!(
        project
            .resolve_finding(queue[1].id, Resolution::Keep)
            .unwrap(),
        Some(before[1].id)
    );
    assert_eq!(project.instances(ids[0]).unwrap(), before[1..].to_vec());
    assert_eq!(
        project.finding(queue[0].id).unwrap().status,
        FindingStatus::Deleted
    );
    assert!(
        project.finding(queue[0].id).unwrap().stale,
        "its instance is gone"
    );
    assert_eq!(project.audit_counts().unwrap()["spurious"], 0);
    project.undo_image(ids[0]).unwrap();
    project.undo_image(ids[0]).unwrap();
    assert_eq!(project.instances(ids[0]).unwrap(), before);
    assert_eq!(project.audit_counts().unwrap()["spurious"], 2);
}

#[test]
fn findings_the_queue_could_not_act_on_are_refused_by_name() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut project, ids) = audit_project(src.path(), dir.path(), 1);
    let cat = project.instances(ids[0]).unwrap()[0].id;
    let mut wrong_size = finding(ids[0], Some(cat), "loose", 0.5);
    wrong_size.suggested_mask = Some(square(20, 20, 0, 0, 3).to_rle());
    let cases = [
        (wrong_size, "suggested mask is 20×20, the image 40×30"),
        (finding(ids[0], Some(cat), "blurry", 0.5), "unknown kind"),
        (finding(ids[0], Some(cat), "loose", 1.5), "[0, 1]"),
        (
            finding(ids[0], None, "loose", 0.5),
            "missing finding has no instance",
        ),
        (
            finding(ids[0], Some(9999), "loose", 0.5),
            "instance 9999 does not exist",
        ),
    ];
    for (bad, expected) in cases {
        let err = project
            .save_audit(&audit_of(&ids), &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
    }
    assert!(
        project.audits().unwrap().is_empty(),
        "nothing is stored from a refused audit"
    );
}
