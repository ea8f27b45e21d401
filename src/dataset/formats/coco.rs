//! COCO instances JSON reader.
//!
//! Polygons, compressed RLE (string `counts`) and uncompressed RLE (integer `counts`) are
//! accepted, as is `iscrowd`. Category ids map to names (classes keep the file's category
//! order). Each image `file_name` must be a safe relative path; it is looked up next to the
//! JSON, then in the JSON folder's `images/` subfolder. Image sizes come from the image
//! headers; when the JSON also gives `width`/`height` they must agree. Annotations without a
//! segmentation (box-only) are skipped with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{
    FormatError, check_polygon, image_dimensions, read_json, resolve, safe_name, split_from_name,
};
use crate::dataset::paths::lossy;
use crate::dataset::{
    Attribution, ClassDef, ImportImage, ImportInstance, ImportSet, Origin, Rle, Segmentation,
};

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
    #[serde(default)]
    licenses: Vec<CocoLicense>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: Value,
    file_name: String,
    #[serde(default)]
    width: Option<f64>,
    #[serde(default)]
    height: Option<f64>,
    #[serde(default)]
    license: Option<Value>,
    #[serde(default)]
    flickr_url: Option<String>,
    #[serde(default)]
    coco_url: Option<String>,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    #[serde(default)]
    id: Option<Value>,
    image_id: Value,
    category_id: Value,
    #[serde(default)]
    segmentation: Option<Value>,
    #[serde(default)]
    iscrowd: Option<Value>,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: Value,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct CocoLicense {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// A JSON id as a map key (`42` and `"42"` are different ids on purpose).
fn key(v: &Value) -> String {
    v.to_string()
}

/// Reads a COCO instances JSON file.
pub fn read(json: &Path) -> Result<ImportSet, FormatError> {
    let file: CocoFile = read_json(json)?;
    let dir = json.parent().unwrap_or(Path::new(".")).to_path_buf();
    let json_name = lossy(json.file_name());
    let stem = lossy(json.file_stem());
    let split = stem.rsplit('_').next().and_then(split_from_name);

    // Categories → class names, in file order; duplicate names share one class.
    let mut classes: Vec<ClassDef> = Vec::new();
    let mut cat_names: HashMap<String, String> = HashMap::new();
    for (i, c) in file.categories.iter().enumerate() {
        let name = match c.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("category {}", c.id),
        };
        if cat_names.insert(key(&c.id), name.clone()).is_some() {
            return Err(FormatError::malformed(
                json,
                format!("category index {i}"),
                format!("duplicate category id {}", c.id),
            ));
        }
        if !classes.iter().any(|k| k.name == name) {
            classes.push(ClassDef { name, mid: None });
        }
    }
    let licenses: HashMap<String, String> = file
        .licenses
        .iter()
        .filter_map(|l| {
            let id = l.id.as_ref()?;
            let text = l
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| l.url.clone())?;
            Some((key(id), text))
        })
        .collect();

    let mut images = Vec::with_capacity(file.images.len());
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut names_seen: HashMap<String, String> = HashMap::new();
    for (i, img) in file.images.iter().enumerate() {
        let record = format!("image id {} (index {i})", img.id);
        let file_name = safe_name(json, &record, &img.file_name)?;
        if let Some(prev) = names_seen.insert(file_name.clone(), record.clone()) {
            return Err(FormatError::malformed(
                json,
                &record,
                format!("file_name {file_name:?} already used by {prev}"),
            ));
        }
        let src_path = find_image(json, &record, &dir, &img.file_name)?;
        let (width, height) = image_dimensions(&src_path)?;
        if let (Some(w), Some(h)) = (img.width, img.height)
            && (w != f64::from(width) || h != f64::from(height))
        {
            return Err(FormatError::malformed(
                json,
                &record,
                format!(
                    "JSON says {w}x{h} but {} is {width}x{height}",
                    src_path.display()
                ),
            ));
        }
        if by_id.insert(key(&img.id), i).is_some() {
            return Err(FormatError::malformed(json, &record, "duplicate image id"));
        }
        images.push(ImportImage {
            src_path,
            file_name,
            width,
            height,
            split: split.clone(),
            source: format!("coco:{json_name}"),
            attribution: Attribution {
                license: img
                    .license
                    .as_ref()
                    .and_then(|l| licenses.get(&key(l)).cloned()),
                original_url: img
                    .flickr_url
                    .clone()
                    .filter(|s| !s.is_empty())
                    .or_else(|| img.coco_url.clone().filter(|s| !s.is_empty())),
                ..Attribution::default()
            },
            instances: Vec::new(),
        });
    }

    for (i, ann) in file.annotations.iter().enumerate() {
        let record = match &ann.id {
            Some(id) => format!("annotation id {id}"),
            None => format!("annotation index {i}"),
        };
        let Some(&img_idx) = by_id.get(&key(&ann.image_id)) else {
            return Err(FormatError::malformed(
                json,
                &record,
                format!("unknown image_id {}", ann.image_id),
            ));
        };
        let Some(class) = cat_names.get(&key(&ann.category_id)) else {
            return Err(FormatError::UnknownCategory {
                path: json.to_path_buf(),
                record,
                category: ann.category_id.to_string(),
            });
        };
        let img = &mut images[img_idx];
        let segmentation = match &ann.segmentation {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(seg) => Some(parse_segmentation(
                json, &record, seg, img.width, img.height,
            )?),
        };
        let Some(segmentation) = segmentation else {
            log::warn!("{}: {record}: no segmentation, skipped", json.display());
            continue;
        };
        let iscrowd = match &ann.iscrowd {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|v| v != 0.0),
            Some(other) => {
                return Err(FormatError::malformed(
                    json,
                    &record,
                    format!("iscrowd must be 0 or 1, got {other}"),
                ));
            }
        };
        img.instances.push(ImportInstance {
            class: class.clone(),
            segmentation,
            iscrowd,
            origin: Origin::Import,
            provenance: Some(serde_json::json!({
                "source_file": json_name,
                "annotation_id": ann.id.clone().unwrap_or(Value::from(i)),
            })),
        });
    }
    Ok(ImportSet {
        format: "coco".into(),
        classes,
        images,
    })
}

/// Looks for `name` next to the JSON, then under its `images/` folder.
fn find_image(json: &Path, record: &str, dir: &Path, name: &str) -> Result<PathBuf, FormatError> {
    let direct = resolve(json, record, dir, name)?;
    if direct.is_file() {
        return Ok(direct);
    }
    let images_dir = dir.join("images");
    if images_dir.is_dir() {
        let nested = resolve(json, record, &images_dir, name)?;
        if nested.is_file() {
            return Ok(nested);
        }
    }
    Err(FormatError::MissingImage {
        path: json.to_path_buf(),
        record: record.to_string(),
        file: direct,
    })
}

fn parse_segmentation(
    json: &Path,
    record: &str,
    seg: &Value,
    width: u32,
    height: u32,
) -> Result<Segmentation, FormatError> {
    let bad = |msg: &str| FormatError::malformed(json, record, msg.to_string());
    let numbers = |arr: &[Value]| -> Result<Vec<f64>, FormatError> {
        arr.iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| bad("polygon coordinates must be numbers"))
            })
            .collect()
    };
    match seg {
        Value::Array(items) if items.iter().all(Value::is_array) => {
            let mut polys = Vec::with_capacity(items.len());
            for item in items {
                let coords = numbers(item.as_array().map(Vec::as_slice).unwrap_or_default())?;
                polys.push(check_polygon(json, record, &coords, width, height)?);
            }
            Ok(Segmentation::Polygons(polys))
        }
        // A single flat polygon (some tools drop the outer list).
        Value::Array(items) => Ok(Segmentation::Polygons(vec![check_polygon(
            json,
            record,
            &numbers(items)?,
            width,
            height,
        )?])),
        Value::Object(obj) => {
            let size = obj
                .get("size")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("RLE without \"size\""))?;
            let dims: Vec<u64> = size.iter().filter_map(Value::as_u64).collect();
            if dims.len() != 2 || size.len() != 2 {
                return Err(bad("RLE \"size\" must be [height, width]"));
            }
            if dims[0] != u64::from(height) || dims[1] != u64::from(width) {
                return Err(FormatError::malformed(
                    json,
                    record,
                    format!(
                        "RLE size {}x{} (h x w) does not match the {width}x{height} image",
                        dims[0], dims[1]
                    ),
                ));
            }
            let mask_err = |source| FormatError::Mask {
                path: json.to_path_buf(),
                record: record.to_string(),
                source,
            };
            let rle = match obj.get("counts") {
                Some(Value::String(s)) => {
                    Rle::from_compressed(height, width, s).map_err(mask_err)?
                }
                Some(Value::Array(counts)) => {
                    let counts: Vec<u32> = counts
                        .iter()
                        .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("RLE counts must be non-negative integers"))?;
                    Rle::from_uncompressed(height, width, counts).map_err(mask_err)?
                }
                _ => return Err(bad("RLE \"counts\" must be a string or a list of integers")),
            };
            Ok(Segmentation::Rle(rle))
        }
        _ => Err(bad(
            "segmentation must be a list of polygons or an RLE object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use serde_json::json;

    fn setup(doc: &Value) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write_image(&dir.path().join("images/a.png"), 20, 10);
        let p = dir.path().join("ann.json");
        std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        (dir, p)
    }

    fn doc(seg: Value, file_name: &str, cat: i64) -> Value {
        json!({
            "images": [{"id": 1, "file_name": file_name, "width": 20, "height": 10}],
            "categories": [{"id": 7, "name": "cat"}],
            "annotations": [{"id": 99, "image_id": 1, "category_id": cat, "iscrowd": 0, "segmentation": seg}]
        })
    }

    #[test]
    fn reads_polygon_and_rle() {
        let rle =
            crate::dataset::Mask::from_polygons(&[vec![1.0, 1.0, 5.0, 1.0, 5.0, 5.0]], 20, 10)
                .unwrap()
                .to_rle();
        let d = json!({
            "images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 5, 1, 5, 5]]},
                {"id": 2, "image_id": 1, "category_id": 8, "iscrowd": 1,
                 "segmentation": {"size": [10, 20], "counts": rle.to_compressed()}},
                {"id": 3, "image_id": 1, "category_id": 8, "iscrowd": 1,
                 "segmentation": {"size": [10, 20], "counts": rle.counts.clone()}}
            ]
        });
        let (_d, p) = setup(&d);
        let set = read(&p).unwrap();
        assert_eq!(set.classes.len(), 2);
        assert_eq!(set.images.len(), 1);
        let img = &set.images[0];
        assert_eq!(
            (img.width, img.height, img.file_name.as_str()),
            (20, 10, "a.png")
        );
        assert_eq!(img.instances.len(), 3);
        assert!(matches!(
            img.instances[0].segmentation,
            Segmentation::Polygons(_)
        ));
        assert_eq!(
            img.instances[1].segmentation,
            Segmentation::Rle(rle.clone())
        );
        assert_eq!(img.instances[2].segmentation, Segmentation::Rle(rle));
        assert!(img.instances[1].iscrowd);
    }

    #[test]
    fn bad_inputs_name_file_and_record() {
        let poly = json!([[1, 1, 5, 1, 5, 5]]);
        let cases: Vec<(Value, &str)> = vec![
            (doc(json!([[1, 1, 5, 1]]), "a.png", 7), "annotation id 99"),
            (doc(json!([[1, 1, 50, 1, 5, 5]]), "a.png", 7), "outside"),
            (doc(poly.clone(), "a.png", 3), "unknown category 3"),
            (doc(poly.clone(), "b.png", 7), "not found"),
            (doc(poly.clone(), "../../etc/passwd", 7), "unsafe file name"),
            (doc(poly.clone(), "/etc/passwd", 7), "unsafe file name"),
            (
                doc(json!({"size": [5, 5], "counts": "0"}), "a.png", 7),
                "does not match",
            ),
            (
                doc(json!({"size": [10, 20], "counts": [3, 4]}), "a.png", 7),
                "annotation id 99",
            ),
        ];
        for (d, needle) in cases {
            let (_dir, p) = setup(&d);
            let e = read(&p).unwrap_err().to_string();
            assert!(
                e.contains("ann.json") && e.contains(needle),
                "{needle}: {e}"
            );
        }
    }

    #[test]
    fn malformed_json_reports_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.json");
        std::fs::write(&p, "{\n  \"images\": [\n    {\"id\": 1,,}\n  ]\n}\n").unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, FormatError::Json { line: 3, .. }), "{e:?}");
        assert!(e.to_string().contains("broken.json") && e.to_string().contains("line 3"));
    }

    #[test]
    fn bomb_and_garbage_images_rejected() {
        let (dir, p) = setup(&doc(json!([[1, 1, 5, 1, 5, 5]]), "bomb.png", 7));
        std::fs::write(dir.path().join("bomb.png"), bomb_png(100_000, 100_000)).unwrap();
        assert!(matches!(read(&p), Err(FormatError::BadDimensions { .. })));
        let (dir, p) = setup(&doc(json!([[1, 1, 5, 1, 5, 5]]), "junk.jpg", 7));
        std::fs::write(
            dir.path().join("junk.jpg"),
            b"definitely not a jpeg, just some bytes",
        )
        .unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, FormatError::UndecodableImage { .. }), "{e:?}");
        assert!(e.to_string().contains("junk.jpg"));
    }

    #[cfg(unix)]
    #[test]
    fn symlink_escape_rejected() {
        let outside = tempfile::tempdir().unwrap();
        write_image(&outside.path().join("x.png"), 20, 10);
        let (dir, p) = setup(&doc(json!([[1, 1, 5, 1, 5, 5]]), "x.png", 7));
        std::os::unix::fs::symlink(outside.path().join("x.png"), dir.path().join("x.png")).unwrap();
        assert!(matches!(read(&p), Err(FormatError::UnsafeName { .. })));
    }
}
