//! A project's Open Images data written in the seed's folder layout.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::dataset::store::Project;
use crate::fsutil::write_atomic;

use crate::openimages::Error;

/// Decodes a stored RLE (column-major runs, zeros first) into a 0/255 gray image.
fn rle_to_gray(rle: &crate::dataset::Rle) -> image::GrayImage {
    let (w, h) = (rle.width, rle.height);
    let mut img = image::GrayImage::new(w, h);
    let mut pos: u64 = 0;
    for (i, &run) in rle.counts.iter().enumerate() {
        if i % 2 == 1 {
            for p in pos..pos + u64::from(run) {
                let (x, y) = ((p / u64::from(h)) as u32, (p % u64::from(h)) as u32);
                if x < w {
                    img.put_pixel(x, y, image::Luma([255]));
                }
            }
        }
        pos += u64::from(run);
    }
    img
}

/// A class name as a folder name (lower case, path separators and control characters removed).
fn class_folder(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || c == ':' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let s = s.trim().trim_matches('.').to_owned();
    if s.is_empty() { "_".into() } else { s }
}

/// Writes the project's Open Images data in the seed's layout:
/// `<class>/images/{ImageID}.jpg` and `<class>/segmentations/{ImageID}_{MID without /}_{BoxID}.png`
/// (masks at image size, 0/255). Only instances with Open Images provenance are written (the
/// current, possibly edited, mask). Returns (images, masks) written.
pub fn export_seed_layout(project: &Project, out: &Path) -> Result<(usize, usize), Error> {
    let set = project.export_set(None)?;
    let classes: HashMap<i64, &crate::dataset::ExportClass> =
        set.classes.iter().map(|c| (c.id, c)).collect();
    let (mut n_images, mut n_masks) = (0, 0);
    for image in &set.images {
        let Some(id) = Path::new(&image.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
        else {
            continue;
        };
        let mut copied: HashSet<i64> = HashSet::new();
        for inst in project.instances(image.id)? {
            // Open Images instances keep their MID and BoxID; others (imported, drawn) use the
            // class's MID or name and their instance id, so every project exports this way.
            let class_def = classes.get(&inst.class_id);
            let class_name = class_def.map_or("object", |c| c.name.as_str());
            let provenance = inst.provenance.as_ref();
            let mid = provenance
                .and_then(|p| p["mid"].as_str())
                .or_else(|| class_def.and_then(|c| c.mid.as_deref()))
                .map_or_else(
                    || class_folder(class_name).replace(['_', ' '], "-"),
                    str::to_owned,
                );
            let box_id = provenance
                .and_then(|p| p["box_id"].as_str())
                .map_or_else(|| format!("{:08x}", inst.id), str::to_owned);
            let class = class_folder(class_name);
            let dir = out.join(&class);
            if copied.insert(inst.class_id) {
                let dest = dir.join("images").join(format!("{id}.jpg"));
                let bytes = std::fs::read(&image.path).map_err(Error::io(&image.path))?;
                write_atomic(&dest, &bytes)?;
                n_images += 1;
            }
            let gray = rle_to_gray(&inst.rle);
            let mut png = Vec::new();
            gray.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| Error::Format {
                    file: id.clone(),
                    message: e.to_string(),
                })?;
            let name = format!("{id}_{}_{box_id}.png", mid.replace('/', ""));
            write_atomic(&dir.join("segmentations").join(name), &png)?;
            n_masks += 1;
        }
    }
    Ok((n_images, n_masks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders() {
        assert_eq!(class_folder("Hot dog"), "hot dog");
        assert_eq!(class_folder("a/b"), "a_b");
    }
}
