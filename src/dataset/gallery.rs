//! Read-only listings for the Review gallery: one compact row per image (split, review status,
//! instance count, classes present, edited flag) and the project's classes with their colours.
//!
//! One query each, no mask decoding: listing 5,000 images takes a few milliseconds, so the GUI
//! can filter in memory and only decode what it shows.

use std::path::PathBuf;

use rusqlite::Connection;

use super::store::{Project, ReviewStatus, StoreError};

/// One image as the gallery lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryItem {
    /// `images.id`.
    pub id: i64,
    /// Path relative to the project's `images/` folder.
    pub rel_path: String,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// `train` / `validation` / `test`, or `None` when unassigned.
    pub split: Option<String>,
    /// Review status.
    pub status: ReviewStatus,
    /// Number of instances.
    pub instances: u32,
    /// Distinct class ids of its instances, ascending.
    pub class_ids: Vec<i64>,
    /// Whether any of its instances was edited.
    pub edited: bool,
}

/// A project class as the gallery shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryClass {
    /// `classes.id`.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Colour, `[r, g, b]` (parsed from the stored `#rrggbb`).
    pub color: [u8; 3],
    /// Instances of the class.
    pub instances: u64,
}

/// The whole listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GalleryListing {
    /// The project's `images/` folder.
    pub images_dir: PathBuf,
    /// Images ordered by id.
    pub items: Vec<GalleryItem>,
    /// Classes ordered by id.
    pub classes: Vec<GalleryClass>,
}

/// Parses `#rrggbb` (grey for anything else).
pub fn parse_color(hex: &str) -> [u8; 3] {
    let byte = |i: usize| {
        hex.get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(128)
    };
    if hex.len() == 7 && hex.starts_with('#') {
        [byte(1), byte(3), byte(5)]
    } else {
        [128, 128, 128]
    }
}

/// Lists every image and class of `project`.
pub fn listing(project: &Project) -> Result<GalleryListing, StoreError> {
    let conn = project.connection();
    Ok(GalleryListing {
        images_dir: project.images_dir(),
        items: items(conn)?,
        classes: classes(conn)?,
    })
}

fn items(conn: &Connection) -> Result<Vec<GalleryItem>, StoreError> {
    // One pass over instances ordered by image gives counts, class sets and edited flags.
    let mut stmt = conn
        .prepare("SELECT id, path, width, height, split, review_status FROM images ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let status: String = r.get(5)?;
        Ok(GalleryItem {
            id: r.get(0)?,
            rel_path: r.get(1)?,
            width: r.get(2)?,
            height: r.get(3)?,
            split: r.get(4)?,
            status: ReviewStatus::parse(&status).unwrap_or(ReviewStatus::Unreviewed),
            instances: 0,
            class_ids: Vec::new(),
            edited: false,
        })
    })?;
    let mut items: Vec<GalleryItem> = rows.collect::<Result<_, _>>()?;
    let index: std::collections::HashMap<i64, usize> =
        items.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let mut stmt = conn.prepare(
        "SELECT image_id, class_id, COUNT(*), MAX(edited) FROM instances
         GROUP BY image_id, class_id ORDER BY image_id, class_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let image_id: i64 = r.get(0)?;
        let Some(&at) = index.get(&image_id) else {
            continue;
        };
        let item = &mut items[at];
        item.class_ids.push(r.get(1)?);
        item.instances += r.get::<_, i64>(2)? as u32;
        item.edited |= r.get::<_, i64>(3)? != 0;
    }
    Ok(items)
}

fn classes(conn: &Connection) -> Result<Vec<GalleryClass>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT c.id, c.name, c.color, (SELECT COUNT(*) FROM instances i WHERE i.class_id = c.id)
         FROM classes c ORDER BY c.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let color: String = r.get(2)?;
        Ok(GalleryClass {
            id: r.get(0)?,
            name: r.get(1)?,
            color: parse_color(&color),
            instances: r.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Which images the gallery shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GalleryFilter {
    /// Only images with an instance of this class.
    pub class_id: Option<i64>,
    /// Only this split (`Some("")` never matches; `None` = any).
    pub split: Option<String>,
    /// Only this review status.
    pub status: Option<ReviewStatus>,
    /// Only images with an edited instance.
    pub edited_only: bool,
    /// Only images without any instance.
    pub no_masks_only: bool,
}

impl GalleryFilter {
    /// Whether `item` passes.
    pub fn matches(&self, item: &GalleryItem) -> bool {
        self.class_id
            .is_none_or(|c| item.class_ids.binary_search(&c).is_ok())
            && self
                .split
                .as_deref()
                .is_none_or(|s| item.split.as_deref() == Some(s))
            && self.status.is_none_or(|s| item.status == s)
            && (!self.edited_only || item.edited)
            && (!self.no_masks_only || item.instances == 0)
    }

    /// Indices into `items` of the images that pass, in order.
    pub fn apply(&self, items: &[GalleryItem]) -> Vec<usize> {
        items
            .iter()
            .enumerate()
            .filter(|(_, m)| self.matches(m))
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelToken;
    use crate::dataset::{
        ClassDef, ImportImage, ImportInstance, ImportSet, Mask, Origin, Segmentation,
    };

    fn write_png(path: &std::path::Path, w: u32, h: u32, seed: u8) {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 ^ seed, y as u8, seed]))
            .save(path)
            .unwrap();
    }

    fn square(w: u32, h: u32, x0: u32, y0: u32, s: u32) -> Mask {
        let mut m = Mask::new(w, h);
        for y in y0..y0 + s {
            for x in x0..x0 + s {
                m.set(x, y, true);
            }
        }
        m
    }

    #[test]
    fn listing_counts_classes_and_filters() {
        let src = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inst = |class: &str, x: u32| ImportInstance {
            class: class.into(),
            segmentation: Segmentation::Bitmap(square(16, 12, x, 2, 4)),
            iscrowd: false,
            origin: Origin::Import,
            provenance: None,
        };
        let mut images = Vec::new();
        for (i, (split, instances)) in [
            (
                "train",
                vec![inst("cat", 1), inst("dog", 6), inst("cat", 10)],
            ),
            ("train", vec![inst("dog", 3)]),
            ("validation", vec![]),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("{i}.png");
            write_png(&src.path().join(&name), 16, 12, i as u8 * 40);
            images.push(ImportImage {
                src_path: src.path().join(&name),
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
        let mut project = Project::create_or_open(dir.path()).unwrap();
        project
            .import(&set, src.path(), &CancelToken::default(), &mut |_| {})
            .unwrap();
        let list = listing(&project).unwrap();
        assert_eq!(list.items.len(), 3);
        assert_eq!(list.classes.len(), 2);
        let (cat, dog) = (list.classes[0].id, list.classes[1].id);
        assert_eq!(list.classes[0].instances, 2);
        assert_eq!(list.items[0].instances, 3);
        assert_eq!(list.items[0].class_ids, vec![cat, dog]);
        assert_eq!(list.items[1].class_ids, vec![dog]);
        assert_eq!(list.items[2].instances, 0);
        assert_eq!((list.items[0].width, list.items[0].height), (16, 12));

        let first_dog = project.instances(list.items[1].id).unwrap()[0].id;
        project
            .update_instance_mask(first_dog, &square(16, 12, 0, 0, 5))
            .unwrap();
        let list = listing(&project).unwrap();
        assert!(list.items[1].edited && !list.items[0].edited);

        let count = |f: GalleryFilter| f.apply(&list.items).len();
        assert_eq!(count(GalleryFilter::default()), 3);
        assert_eq!(
            count(GalleryFilter {
                class_id: Some(cat),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(GalleryFilter {
                class_id: Some(dog),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(GalleryFilter {
                split: Some("validation".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(GalleryFilter {
                no_masks_only: true,
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(GalleryFilter {
                edited_only: true,
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(GalleryFilter {
                status: Some(ReviewStatus::Accepted),
                ..Default::default()
            }),
            0
        );
        assert_eq!(parse_color("#ff8000"), [255, 128, 0]);
        assert_eq!(parse_color("red"), [128, 128, 128]);
    }
}
