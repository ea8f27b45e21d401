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
