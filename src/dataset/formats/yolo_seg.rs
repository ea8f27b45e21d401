//! Ultralytics YOLO segmentation reader.
//!
//! Layout: `images/**` and `labels/**/*.txt` mirroring each other (`labels/train2017/x.txt`
//! belongs to `images/train2017/x.jpg`). Each label line is `class x1 y1 x2 y2 ...` with
//! coordinates normalised to the image size (read from the image header); a line of exactly
//! four numbers is a detection box `class xc yc w h` and becomes a rectangle. Class names come
//! from `data.yaml` / `dataset.yaml` (`names:` as a list or an `index: name` map),
//! `classes.txt`, `*.names` or `*names*.txt` in the dataset folder; without one, classes are
//! called `class_<index>`. The split comes from the first folder under `images/`
//! (`train2017` → `train`, `val*` → `validation`, `test*` → `test`). Images without a label
//! file are imported without instances; a label file without an image is skipped with a warning (as Ultralytics does).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{
    FormatError, IMAGE_EXTS, check_polygon, files_in, files_recursive, has_ext, image_dimensions,
    relative_name, split_from_name,
};
use crate::dataset::{ClassDef, ImportImage, ImportInstance, ImportSet, Origin, Segmentation};

/// Reads a YOLO-seg dataset folder.
pub fn read(root: &Path) -> Result<ImportSet, FormatError> {
    let images_dir = root.join("images");
    let labels_dir = root.join("labels");
    for d in [&images_dir, &labels_dir] {
        if !d.is_dir() {
            return Err(FormatError::Unrecognised {
                path: d.clone(),
                message: "YOLO-seg needs images/ and labels/ folders".into(),
            });
        }
    }
    let names = read_names(root)?;

    // Images keyed by their path under images/ without extension.
    let mut images = Vec::new();
    let mut by_stem: HashMap<String, usize> = HashMap::new();
    for p in files_recursive(&images_dir)?
        .into_iter()
        .filter(|p| has_ext(p, IMAGE_EXTS))
    {
        let record = format!("image {}", p.display());
        let file_name = relative_name(&images_dir, &p, &record)?;
        let src_path = super::resolve(&p, &record, &images_dir, &file_name)?;
        let stem_key = strip_ext(&file_name);
        if by_stem.insert(stem_key.clone(), images.len()).is_some() {
            log::warn!(
                "{}: several images named {stem_key}.*; labels go to the last one",
                images_dir.display()
            );
        }
        let (width, height) = image_dimensions(&src_path)?;
        let split = if file_name.contains('/') {
            file_name.split('/').next().and_then(split_from_name)
        } else {
            None
        };
        images.push(ImportImage {
            src_path,
            file_name,
            width,
            height,
            split,
            source: "yolo-seg".into(),
            attribution: Default::default(),
            instances: Vec::new(),
        });
    }

    let mut used: BTreeMap<usize, String> = BTreeMap::new();
    for label in files_recursive(&labels_dir)?
        .into_iter()
        .filter(|p| has_ext(p, &["txt"]))
    {
        let rel = relative_name(&labels_dir, &label, "label file")?;
        if label.parent() == Some(labels_dir.as_path()) && rel.eq_ignore_ascii_case("classes.txt") {
            continue;
        }
        let stem_key = strip_ext(&rel);
        let Some(&idx) = by_stem.get(&stem_key) else {
            // Ultralytics ignores such files too; real datasets (coco128-seg) have them.
            log::warn!(
                "{}: no image images/{stem_key}.*; label file skipped",
                label.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(&label).map_err(|e| FormatError::io(&label, e))?;
        let img = &mut images[idx];
        for (n, line) in text.lines().enumerate() {
            let record = format!("line {}", n + 1);
            let mut tokens = line.split_whitespace();
            let Some(cls) = tokens.next() else { continue };
            let cls: usize = cls.parse().map_err(|_| {
                FormatError::malformed(
                    &label,
                    &record,
                    format!("class index {cls:?} is not a non-negative integer"),
                )
            })?;
            let class = match &names {
                Some(names) => {
                    names
                        .get(cls)
                        .cloned()
                        .ok_or_else(|| FormatError::UnknownCategory {
                            path: label.clone(),
                            record: record.clone(),
                            category: format!("{cls} (the names file lists {})", names.len()),
                        })?
                }
                None => format!("class_{cls}"),
            };
            let coords: Vec<f64> = tokens
                .map(|t| {
                    t.parse::<f64>().map_err(|_| {
                        FormatError::malformed(&label, &record, format!("{t:?} is not a number"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let (w, h) = (f64::from(img.width), f64::from(img.height));
            let pixels: Vec<f64> = if coords.len() == 4 {
                let (xc, yc, bw, bh) = (coords[0] * w, coords[1] * h, coords[2] * w, coords[3] * h);
                let (x0, y0, x1, y1) = (xc - bw / 2.0, yc - bh / 2.0, xc + bw / 2.0, yc + bh / 2.0);
                vec![x0, y0, x1, y0, x1, y1, x0, y1]
            } else {
                coords
                    .chunks(2)
                    .flat_map(|p| {
                        if p.len() == 2 {
                            vec![p[0] * w, p[1] * h]
                        } else {
                            vec![p[0] * w]
                        }
                    })
                    .collect()
            };
            let poly = check_polygon(&label, &record, &pixels, img.width, img.height)?;
            used.entry(cls).or_insert_with(|| class.clone());
            img.instances.push(ImportInstance {
                class,
                segmentation: Segmentation::Polygons(vec![poly]),
                iscrowd: false,
                origin: Origin::Import,
                provenance: Some(
                    serde_json::json!({"source_file": format!("labels/{rel}"), "line": n + 1}),
                ),
            });
        }
    }
    let classes = match names {
        Some(names) => {
            let mut classes: Vec<ClassDef> = Vec::new();
            for n in names {
                if !classes.iter().any(|c| c.name == n) {
                    classes.push(ClassDef { name: n, mid: None });
                }
            }
            classes
        }
        None => used
            .into_values()
            .map(|name| ClassDef { name, mid: None })
            .collect(),
    };
    Ok(ImportSet {
        format: "yolo-seg".into(),
        classes,
        images,
    })
}

fn strip_ext(name: &str) -> String {
    match name.rfind('.') {
        Some(i) if !name[i..].contains('/') => name[..i].to_string(),
        _ => name.to_string(),
    }
}

/// Class names from the first names file found in `root` (see the module docs).
fn read_names(root: &Path) -> Result<Option<Vec<String>>, FormatError> {
    let files = files_in(root)?;
    let file_name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    for yaml in files.iter().filter(|p| {
        matches!(
            file_name(p).as_str(),
            "data.yaml" | "data.yml" | "dataset.yaml" | "dataset.yml"
        )
    }) {
        let text = std::fs::read_to_string(yaml).map_err(|e| FormatError::io(yaml, e))?;
        if let Some(names) = yaml_names(yaml, &text)? {
            return Ok(Some(names));
        }
    }
    let mut txt: Vec<&PathBuf> = files
        .iter()
        .filter(|p| file_name(p) == "classes.txt")
        .collect();
    txt.extend(files.iter().filter(|p| has_ext(p, &["names"])));
    txt.extend(files.iter().filter(|p| {
        let n = file_name(p);
        n.ends_with(".txt") && n.contains("names")
    }));
    if txt.is_empty() && root.join("labels/classes.txt").is_file() {
        let p = root.join("labels/classes.txt");
        return Ok(Some(lines(&p)?));
    }
    match txt.first() {
        Some(p) => Ok(Some(lines(p)?)),
        None => Ok(None),
    }
}

fn lines(p: &Path) -> Result<Vec<String>, FormatError> {
    let text = std::fs::read_to_string(p).map_err(|e| FormatError::io(p, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s.split(" #").next().unwrap_or(s).trim();
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        let inner = &s[1..s.len() - 1];
        if s.starts_with('"') {
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        } else {
            inner.replace("''", "'")
        }
    } else {
        s.to_string()
    }
}

/// The `names:` entry of a YOLO data.yaml: inline `[a, b]`, a block list `- a`, or a block map
/// `0: a`. Only this key is understood; it is not a general YAML parser.
fn yaml_names(path: &Path, text: &str) -> Result<Option<Vec<String>>, FormatError> {
    let all: Vec<&str> = text.lines().collect();
    let Some(start) = all.iter().position(|l| l.starts_with("names:")) else {
        return Ok(None);
    };
    let record = format!("line {}", start + 1);
    let rest = all[start]["names:".len()..].trim();
    if rest.starts_with('[') {
        let mut buf = rest.to_string();
        let mut i = start + 1;
        while !buf.contains(']') && i < all.len() {
            buf.push(' ');
            buf.push_str(all[i].trim());
            i += 1;
        }
        let end = buf
            .rfind(']')
            .ok_or_else(|| FormatError::malformed(path, &record, "names: list is not closed"))?;
        let inner = &buf[1..end];
        let names: Vec<String> = split_inline(inner)
            .into_iter()
            .map(|s| unquote(&s))
            .filter(|s| !s.is_empty())
            .collect();
        return Ok(Some(names));
    }
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(FormatError::malformed(
            path,
            &record,
            "names: must be a list or an index: name map",
        ));
    }
    let mut list = Vec::new();
    let mut map: BTreeMap<usize, String> = BTreeMap::new();
    for (i, line) in all.iter().enumerate().skip(start + 1) {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('\t') && !line.starts_with('-') {
            break;
        }
        let t = line.trim();
        if let Some(item) = t.strip_prefix('-') {
            list.push(unquote(item));
        } else if let Some((k, v)) = t.split_once(':') {
            let k: usize = k.trim().parse().map_err(|_| {
                FormatError::malformed(
                    path,
                    format!("line {}", i + 1),
                    "names: map keys must be class indices",
                )
            })?;
            map.insert(k, unquote(v));
        }
    }
    if !map.is_empty() {
        // Keys are distinct, so they are exactly 0..N when the largest is N - 1 (no `+ 1`:
        // the largest may be usize::MAX).
        if map.keys().next_back() != Some(&(map.len() - 1)) {
            return Err(FormatError::malformed(
                path,
                &record,
                "names: map indices must be 0..N without gaps",
            ));
        }
        return Ok(Some(map.into_values().collect()));
    }
    Ok(Some(list))
}

/// Splits an inline YAML list body on commas outside quotes.
fn split_inline(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, ',') => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn yaml_forms() {
        let p = Path::new("data.yaml");
        assert_eq!(
            yaml_names(p, "path: .\nnames: ['a b', \"c, d\", e]\n")
                .unwrap()
                .unwrap(),
            ["a b", "c, d", "e"]
        );
        assert_eq!(
            yaml_names(p, "names:\n  0: cat\n  1: \"dog\"\nnc: 2\n")
                .unwrap()
                .unwrap(),
            ["cat", "dog"]
        );
        assert_eq!(
            yaml_names(p, "names:\n- cat\n- dog\ntrain: x\n")
                .unwrap()
                .unwrap(),
            ["cat", "dog"]
        );
        assert!(yaml_names(p, "nc: 2\n").unwrap().is_none());
    }

    /// Found by `tests/fuzz_readers.rs`: a `names:` map whose largest key is `usize::MAX`
    /// overflowed `key + 1` (a panic in debug builds).
    #[test]
    fn yaml_map_key_at_usize_max_is_an_error() {
        let p = Path::new("data.yaml");
        let text = format!("names:\n  0: cat\n  {}: z\n", usize::MAX);
        let e = yaml_names(p, &text).unwrap_err().to_string();
        assert!(e.contains("without gaps") && e.contains("data.yaml"), "{e}");
        let e = yaml_names(p, "names:\n  0: cat\n  2: dog\n").unwrap_err();
        assert!(e.to_string().contains("without gaps"), "{e}");
        assert_eq!(
            yaml_names(p, "names:\n  1: dog\n  0: cat\n")
                .unwrap()
                .unwrap(),
            ["cat", "dog"]
        );
    }

    fn setup(label: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write_image(&dir.path().join("images/train/a.png"), 100, 50);
        write_image(&dir.path().join("images/train/b.png"), 10, 10);
        std::fs::create_dir_all(dir.path().join("labels/train")).unwrap();
        std::fs::write(dir.path().join("classes.txt"), "cat\ndog\n").unwrap();
        let p = dir.path().join("labels/train/a.txt");
        std::fs::write(&p, label).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_polygons_and_boxes() {
        let (dir, _) = setup("0 0.1 0.1 0.5 0.1 0.5 0.9\n\n1 0.5 0.5 0.2 0.2\n");
        assert_eq!(
            super::super::detect(dir.path()).unwrap(),
            super::super::Format::YoloSeg
        );
        let set = read(dir.path()).unwrap();
        assert_eq!(set.images.len(), 2);
        let a = &set.images[0];
        assert_eq!(
            (a.file_name.as_str(), a.split.as_deref()),
            ("train/a.png", Some("train"))
        );
        assert_eq!(a.instances.len(), 2);
        let Segmentation::Polygons(p) = &a.instances[0].segmentation else {
            panic!()
        };
        assert_eq!(p[0], vec![10.0, 5.0, 50.0, 5.0, 50.0, 45.0]);
        assert_eq!(a.instances[1].class, "dog");
        assert!(set.images[1].instances.is_empty());
    }

    #[test]
    fn bad_lines_name_line() {
        for (text, needle) in [
            (
                "0 0.1 0.1 0.5 0.1 0.5 0.9\n7 0.1 0.1 0.5 0.1 0.5 0.9\n",
                "line 2: unknown category 7",
            ),
            ("0 0.1 0.1 0.5\n", "line 1"),
            ("0 0.1 0.1 0.5 0.1 0.5 3.0\n", "outside"),
            ("x 0.1 0.1 0.5 0.1 0.5 0.9\n", "line 1"),
            ("0 0.1 0.1 0.5 0.1 0.5 zz\n", "line 1"),
        ] {
            let (dir, _) = setup(text);
            let e = read(dir.path()).unwrap_err().to_string();
            assert!(e.contains("a.txt") && e.contains(needle), "{needle}: {e}");
        }
        let (dir, _) = setup("");
        std::fs::write(
            dir.path().join("labels/train/orphan.txt"),
            "0 0.1 0.1 0.5 0.1 0.5 0.9\n",
        )
        .unwrap();
        let set = read(dir.path()).unwrap();
        assert_eq!(set.images.len(), 2);
        assert!(set.images.iter().all(|i| i.instances.is_empty()));
    }
}
