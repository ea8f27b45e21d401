//! VGG Image Annotator (VIA 1.x / "balloon" layout) reader.
//!
//! Layout: `{key: {filename, size, regions: {..} or [..], file_attributes}}` (a VIA 2 project
//! file's `_via_img_metadata` has the same shape). Accepts a JSON file, a folder holding
//! `via_region_data.json` (or a single VIA JSON), or a folder whose split subfolders
//! (`train/`, `val/`) each hold a `via_region_data.json`; the split comes from the folder name.
//! Image names are the image's path relative to the folder given, so equal names in two
//! splits stay distinct.
//!
//! Shapes: `polygon` / `polyline` (`all_points_x`, `all_points_y`), `rect`, `circle` and
//! `ellipse` (rasterised as polygons, clipped to the image); `point` regions are skipped with a
//! warning. The class is the region attribute `name` / `class` / `label` when present, else the
//! value of the region's single attribute, else `object`.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{
    FormatError, check_polygon, files_in, has_ext, image_dimensions, read_json, relative_name,
    resolve, split_from_name, subfolders,
};
use crate::dataset::paths::lossy;
use crate::dataset::{ClassDef, ImportImage, ImportInstance, ImportSet, Origin, Segmentation};

/// Class given to regions without a usable attribute.
pub const DEFAULT_CLASS: &str = "object";
/// The file name VIA exports by default.
pub const REGION_FILE: &str = "via_region_data.json";

/// `via_region_data.json` in `dir`, or else in each of its subfolders (sorted).
pub(crate) fn region_files(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let own = dir.join(REGION_FILE);
    if own.is_file() {
        return Ok(vec![own]);
    }
    Ok(subfolders(dir)?
        .into_iter()
        .map(|d| d.join(REGION_FILE))
        .filter(|f| f.is_file())
        .collect())
}

/// Whether a parsed JSON value has the VIA 1.x (or VIA 2 project) shape.
pub(crate) fn looks_like_via(v: &Value) -> bool {
    let Some(obj) = v.as_object() else {
        return false;
    };
    if let Some(meta) = obj.get("_via_img_metadata") {
        return meta.is_object();
    }
    !obj.is_empty()
        && obj.values().all(|e| {
            e.as_object()
                .is_some_and(|e| e.contains_key("filename") && e.contains_key("regions"))
        })
}

/// Reads a VIA JSON file or a folder (see the module docs).
pub fn read(path: &Path) -> Result<ImportSet, FormatError> {
    let (root, files) = if path.is_dir() {
        let mut files = region_files(path)?;
        if files.is_empty() {
            for f in files_in(path)?
                .into_iter()
                .filter(|f| has_ext(f, &["json"]))
            {
                let v: Value = read_json(&f)?;
                if looks_like_via(&v) {
                    files.push(f);
                }
            }
        }
        if files.is_empty() {
            return Err(FormatError::Unrecognised {
                path: path.to_path_buf(),
                message: "no VIA JSON found".into(),
            });
        }
        (path.to_path_buf(), files)
    } else {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            vec![path.to_path_buf()],
        )
    };
    let mut set = ImportSet {
        format: "via".into(),
        ..ImportSet::default()
    };
    for f in &files {
        read_file(&root, f, &mut set)?;
    }
    Ok(set)
}

fn read_file(root: &Path, json: &Path, set: &mut ImportSet) -> Result<(), FormatError> {
    let value: Value = read_json(json)?;
    let entries = match value.get("_via_img_metadata") {
        Some(meta) => meta,
        None => &value,
    };
    let Some(entries) = entries.as_object() else {
        return Err(FormatError::malformed(
            json,
            "top level",
            "expected an object of images",
        ));
    };
    let dir = json.parent().unwrap_or(Path::new("."));
    let split = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(split_from_name);
    let json_name = lossy(json.file_name());
    for (key, entry) in entries {
        let record = format!("image {key:?}");
        let filename = entry
            .get("filename")
            .and_then(Value::as_str)
            .ok_or_else(|| FormatError::malformed(json, &record, "missing \"filename\""))?;
        let src_path = resolve(json, &record, dir, filename)?;
        if !src_path.is_file() {
            return Err(FormatError::MissingImage {
                path: json.to_path_buf(),
                record,
                file: src_path,
            });
        }
        let file_name = relative_name(root, &src_path, &record)?;
        if set.images.iter().any(|i| i.file_name == file_name) {
            return Err(FormatError::malformed(
                json,
                &record,
                format!("image {file_name:?} listed twice"),
            ));
        }
        let (width, height) = image_dimensions(&src_path)?;
        let regions: Vec<(String, &Value)> = match entry.get("regions") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                return Err(FormatError::malformed(
                    json,
                    &record,
                    "\"regions\" must be an object or a list",
                ));
            }
        };
        let mut instances = Vec::with_capacity(regions.len());
        for (idx, region) in regions {
            let rrec = format!("region {idx} of image {key:?}");
            let Some(poly) = region_polygon(json, &rrec, region, width, height)? else {
                continue;
            };
            let class = region_class(region.get("region_attributes"));
            if !set.classes.iter().any(|c| c.name == class) {
                set.classes.push(ClassDef {
                    name: class.clone(),
                    mid: None,
                });
            }
            instances.push(ImportInstance {
                class,
                segmentation: Segmentation::Polygons(vec![poly]),
                iscrowd: false,
                origin: Origin::Import,
                provenance: Some(serde_json::json!({"source_file": json_name, "region": idx})),
            });
        }
        set.images.push(ImportImage {
            src_path,
            file_name,
            width,
            height,
            split: split.clone(),
            source: format!("via:{json_name}"),
            attribution: Default::default(),
            instances,
        });
    }
    Ok(())
}

fn num(shape: &Map<String, Value>, k: &str, json: &Path, rec: &str) -> Result<f64, FormatError> {
    shape
        .get(k)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
        .ok_or_else(|| FormatError::malformed(json, rec, format!("shape needs a numeric {k:?}")))
}

/// The region's outline as a polygon in pixels, or `None` for shapes that have no area.
fn region_polygon(
    json: &Path,
    rec: &str,
    region: &Value,
    w: u32,
    h: u32,
) -> Result<Option<Vec<f64>>, FormatError> {
    let shape = region
        .get("shape_attributes")
        .and_then(Value::as_object)
        .ok_or_else(|| FormatError::malformed(json, rec, "missing \"shape_attributes\""))?;
    let name = shape.get("name").and_then(Value::as_str).unwrap_or("");
    let (fw, fh) = (f64::from(w), f64::from(h));
    // Generated outlines are clipped to the image; their anchor must lie inside it.
    let inside = |x: f64, y: f64| -> Result<(), FormatError> {
        let t = super::COORD_TOLERANCE;
        if x < -t || y < -t || x > fw + t || y > fh + t {
            return Err(FormatError::OutOfBounds {
                path: json.to_path_buf(),
                record: rec.to_string(),
                x,
                y,
                width: w,
                height: h,
            });
        }
        Ok(())
    };
    let clip = |pts: Vec<f64>| -> Vec<f64> {
        pts.chunks_exact(2)
            .flat_map(|p| [p[0].clamp(0.0, fw), p[1].clamp(0.0, fh)])
            .collect()
    };
    let ellipse = |cx: f64, cy: f64, rx: f64, ry: f64, theta: f64| -> Vec<f64> {
        let n = ((2.0 * PI * rx.max(ry) / 2.0).ceil() as usize).clamp(12, 720);
        let (s, c) = theta.sin_cos();
        (0..n)
            .flat_map(|i| {
                let a = 2.0 * PI * i as f64 / n as f64;
                let (px, py) = (rx * a.cos(), ry * a.sin());
                [cx + px * c - py * s, cy + px * s + py * c]
            })
            .collect()
    };
    let poly = match name {
        "polygon" | "polyline" => {
            let xs = shape.get("all_points_x").and_then(Value::as_array);
            let ys = shape.get("all_points_y").and_then(Value::as_array);
            let (Some(xs), Some(ys)) = (xs, ys) else {
                return Err(FormatError::malformed(
                    json,
                    rec,
                    "polygon needs all_points_x and all_points_y",
                ));
            };
            if xs.len() != ys.len() {
                return Err(FormatError::malformed(
                    json,
                    rec,
                    format!(
                        "all_points_x has {} values, all_points_y {}",
                        xs.len(),
                        ys.len()
                    ),
                ));
            }
            let mut coords = Vec::with_capacity(xs.len() * 2);
            for (x, y) in xs.iter().zip(ys) {
                let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                    return Err(FormatError::malformed(
                        json,
                        rec,
                        "polygon coordinates must be numbers",
                    ));
                };
                coords.extend([x, y]);
            }
            return check_polygon(json, rec, &coords, w, h).map(Some);
        }
        "rect" => {
            let (x, y) = (num(shape, "x", json, rec)?, num(shape, "y", json, rec)?);
            let (rw, rh) = (
                num(shape, "width", json, rec)?,
                num(shape, "height", json, rec)?,
            );
            inside(x, y)?;
            clip(vec![x, y, x + rw, y, x + rw, y + rh, x, y + rh])
        }
        "circle" => {
            let (cx, cy, r) = (
                num(shape, "cx", json, rec)?,
                num(shape, "cy", json, rec)?,
                num(shape, "r", json, rec)?,
            );
            inside(cx, cy)?;
            clip(ellipse(cx, cy, r, r, 0.0))
        }
        "ellipse" => {
            let (cx, cy) = (num(shape, "cx", json, rec)?, num(shape, "cy", json, rec)?);
            let (rx, ry) = (num(shape, "rx", json, rec)?, num(shape, "ry", json, rec)?);
            let theta = shape.get("theta").and_then(Value::as_f64).unwrap_or(0.0);
            inside(cx, cy)?;
            clip(ellipse(cx, cy, rx, ry, theta))
        }
        "point" => {
            log::warn!(
                "{}: {rec}: point region has no area, skipped",
                json.display()
            );
            return Ok(None);
        }
        other => {
            return Err(FormatError::malformed(
                json,
                rec,
                format!("unsupported shape {other:?}"),
            ));
        }
    };
    check_polygon(json, rec, &poly, w, h).map(Some)
}

/// Class from `region_attributes` (see the module docs).
fn region_class(attrs: Option<&Value>) -> String {
    let Some(attrs) = attrs.and_then(Value::as_object) else {
        return DEFAULT_CLASS.into();
    };
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            // Checkbox / dropdown attributes: {"option": true}.
            Value::Object(o) => {
                let on: Vec<&String> = o
                    .iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k)
                    .collect();
                (on.len() == 1).then(|| on[0].clone())
            }
            _ => None,
        }
    };
    for k in ["name", "class", "label"] {
        if let Some(c) = attrs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| text(v))
        {
            return c;
        }
    }
    if attrs.len() == 1
        && let Some(c) = attrs.values().next().and_then(text)
    {
        return c;
    }
    DEFAULT_CLASS.into()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use serde_json::json;

    fn setup(doc: &Value) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write_image(&dir.path().join("a.png"), 40, 30);
        let p = dir.path().join(REGION_FILE);
        std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_all_shapes_and_classes() {
        let d = json!({"a.png1234": {"filename": "a.png", "size": 1234, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [1, 10, 10], "all_points_y": [1, 1, 10]}, "region_attributes": {}},
            {"shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 5, "height": 4}, "region_attributes": {"class": "box"}},
            {"shape_attributes": {"name": "circle", "cx": 20, "cy": 15, "r": 30}, "region_attributes": {"kind": "round"}},
            {"shape_attributes": {"name": "ellipse", "cx": 20, "cy": 15, "rx": 8, "ry": 3, "theta": 0.5}, "region_attributes": {"type": {"egg": true}}},
            {"shape_attributes": {"name": "point", "cx": 2, "cy": 2}, "region_attributes": {}}
        ]}});
        let (dir, _p) = setup(&d);
        assert_eq!(
            super::super::detect(dir.path()).unwrap(),
            super::super::Format::Via
        );
        let set = read(dir.path()).unwrap();
        let classes: Vec<_> = set.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(classes, ["object", "box", "round", "egg"]);
        let img = &set.images[0];
        assert_eq!((img.width, img.height), (40, 30));
        assert_eq!(img.instances.len(), 4);
        // The circle is clipped to the image.
        let Segmentation::Polygons(p) = &img.instances[2].segmentation else {
            panic!()
        };
        assert!(p[0].iter().all(|&v| (0.0..=40.0).contains(&v)));
    }

    #[test]
    fn bad_regions_name_region() {
        let cases = [
            (
                json!({"k": {"filename": "a.png", "regions": {"3": {"shape_attributes": {"name": "polygon", "all_points_x": [1, 2], "all_points_y": [1, 2]}}}}}),
                "region 3",
            ),
            (
                json!({"k": {"filename": "a.png", "regions": {"5": {"shape_attributes": {"name": "polygon", "all_points_x": [1, 200, 3], "all_points_y": [1, 2, 9]}}}}}),
                "outside",
            ),
            (
                json!({"k": {"filename": "zzz.png", "regions": {}}}),
                "not found",
            ),
            (
                json!({"k": {"filename": "../a.png", "regions": {}}}),
                "unsafe",
            ),
            (
                json!({"k": {"filename": "/etc/passwd", "regions": {}}}),
                "unsafe",
            ),
        ];
        for (d, needle) in cases {
            let (_dir, p) = setup(&d);
            let e = read(&p).unwrap_err().to_string();
            assert!(
                e.contains(REGION_FILE) && e.contains(needle),
                "{needle}: {e}"
            );
        }
    }
}
