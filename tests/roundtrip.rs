//! Real data through the whole store (coco128-seg has 941 label lines, but 12 of them sit in two
//! label files whose images are not in the dataset, so 929 instances are importable): import → export (each format) → import again keeps every
//! instance (identical RLE for COCO RLE exports, IoU ≥ 0.99 for polygon formats), and the COCO
//! export loads in pycocotools with the same pixels.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use maskstudio::cancel::CancelToken;
use maskstudio::dataset::export::{self, ExportFormat};
use maskstudio::dataset::formats::{self, Format};
use maskstudio::dataset::store::Project;
use maskstudio::dataset::{ExportSet, Mask};

fn import(project: &Path, path: &Path, format: Option<Format>) -> Project {
    let format = format.unwrap_or_else(|| formats::detect(path).unwrap());
    let set = formats::read(path, format).unwrap();
    let mut p = Project::create_or_open(project).unwrap();
    p.import(&set, path, &CancelToken::default(), &mut |_| {})
        .unwrap();
    p
}

/// Instances keyed by (image file stem, instance order within the image).
fn by_image(set: &ExportSet) -> BTreeMap<String, Vec<(String, Mask)>> {
    let names: BTreeMap<i64, String> = set.classes.iter().map(|c| (c.id, c.name.clone())).collect();
    set.images
        .iter()
        .map(|m| {
            let stem = Path::new(&m.file_name)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let instances = m
                .instances
                .iter()
                .map(|i| (names[&i.class_id].clone(), Mask::from_rle(&i.rle).unwrap()))
                .collect();
            (stem, instances)
        })
        .collect()
}

/// For each original instance, the best IoU among re-imported instances of the same class.
fn matched_ious(before: &ExportSet, after: &ExportSet) -> Vec<f64> {
    let a = by_image(before);
    let b = by_image(after);
    assert_eq!(a.len(), b.len(), "image count changed");
    let mut ious = Vec::new();
    for (stem, instances) in &a {
        let others = b.get(stem).unwrap_or_else(|| panic!("image {stem} lost"));
        for (class, mask) in instances {
            let best = others
                .iter()
                .filter(|(c, _)| c == class)
                .map(|(_, m)| mask.iou(m))
                .fold(0.0, f64::max);
            ious.push(best);
        }
    }
    ious
}

fn count(set: &ExportSet) -> usize {
    set.images.iter().map(|m| m.instances.len()).sum()
}

#[test]
fn coco128_round_trips_through_every_export_format() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let original = import(&dir.path().join("p"), &data.join("coco128-seg"), None);
    let before = original.export_set(None).unwrap();
    assert_eq!((before.images.len(), count(&before)), (128, 929));

    // COCO with RLE: identical masks.
    let out = dir.path().join("coco");
    export::write(&before, ExportFormat::Coco { polygons: false }, &out).unwrap();
    let again = import(
        &dir.path().join("p_coco"),
        &out.join("annotations.json"),
        Some(Format::Coco),
    );
    let after = again.export_set(None).unwrap();
    assert_eq!(count(&after), 929);
    let ious = matched_ious(&before, &after);
    assert!(
        ious.iter().all(|&iou| iou == 1.0),
        "COCO RLE export changed a mask"
    );

    // Polygon formats: IoU ≥ 0.99 on average and no instance lost.
    for (name, format, reimport) in [
        (
            "coco-polygons",
            ExportFormat::Coco { polygons: true },
            Some(Format::Coco),
        ),
        ("yolo-seg", ExportFormat::YoloSeg, Some(Format::YoloSeg)),
    ] {
        let out = dir.path().join(name);
        export::write(&before, format, &out).unwrap();
        let path = if name == "coco-polygons" {
            out.join("annotations.json")
        } else {
            out.clone()
        };
        let again = import(&dir.path().join(format!("p_{name}")), &path, reimport);
        let after = again.export_set(None).unwrap();
        let ious = matched_ious(&before, &after);
        let mean = ious.iter().sum::<f64>() / ious.len() as f64;
        assert!(mean >= 0.99, "{name}: mean IoU {mean}");
        let lost = ious.iter().filter(|&&iou| iou < 0.5).count();
        assert_eq!(lost, 0, "{name}: {lost} instances lost");
    }
}

#[test]
fn icevision_and_droplets_keep_every_instance() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ice = import(
        &dir.path().join("ice"),
        &data.join("icevision-samples/annotations.json"),
        None,
    );
    let ice_set = ice.export_set(None).unwrap();
    assert_eq!((ice_set.images.len(), count(&ice_set)), (6, 36));
    let out = dir.path().join("ice_out");
    export::write(&ice_set, ExportFormat::Coco { polygons: false }, &out).unwrap();
    let again = import(
        &dir.path().join("ice2"),
        &out.join("annotations.json"),
        Some(Format::Coco),
    );
    assert!(
        matched_ious(&ice_set, &again.export_set(None).unwrap())
            .iter()
            .all(|&v| v == 1.0)
    );

    let drops = dir.path().join("drops");
    import(&drops, &data.join("droplets-via/train"), None);
    let p = import(&drops, &data.join("droplets-via/val"), None);
    let set = p.export_set(None).unwrap();
    assert_eq!((set.images.len(), count(&set)), (74, 1304));
}

#[test]
fn coco_export_loads_in_pycocotools_with_the_same_pixels() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = import(
        &dir.path().join("p"),
        &data.join("icevision-samples/annotations.json"),
        None,
    );
    let p = {
        drop(p);
        import(&dir.path().join("p"), &data.join("coco128-seg"), None)
    };
    let set = p.export_set(None).unwrap();
    let out = dir.path().join("coco");
    export::write(&set, ExportFormat::Coco { polygons: false }, &out).unwrap();
    let script = r#"
import json, sys
from pycocotools.coco import COCO
from pycocotools import mask as mu
coco = COCO(sys.argv[1])
out = {}
for ann in coco.loadAnns(coco.getAnnIds()):
    m = coco.annToMask(ann)
    rle = mu.encode(m.copy(order="F"))
    out[str(ann["id"])] = [rle["counts"].decode(), int(m.sum())]
print(json.dumps(out))
"#;
    let output = Command::new(maskstudio::host::python())
        .arg("-c")
        .arg(script)
        .arg(out.join("annotations.json"))
        .output()
        .expect("python from the torch venv (./test-all installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap();
    let decoded: BTreeMap<String, (String, u64)> = serde_json::from_str(line).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("annotations.json")).unwrap()).unwrap();
    let anns = json["annotations"].as_array().unwrap();
    assert_eq!(decoded.len(), anns.len());
    assert_eq!(anns.len(), 36 + 929);
    // The exported annotations are in store order; compare each with what pycocotools decoded.
    let ours: Vec<&maskstudio::dataset::ExportInstance> =
        set.images.iter().flat_map(|m| &m.instances).collect();
    for (ann, inst) in anns.iter().zip(ours) {
        let id = ann["id"].to_string();
        let (counts, area) = &decoded[&id];
        assert_eq!(counts, &inst.rle.to_compressed(), "annotation {id}");
        assert_eq!(*area, inst.rle.area(), "annotation {id}");
    }
}

/// The child half of [`a_missing_shared_folder_skips_locally_and_fails_under_ci`].
#[test]
fn shared_data_probe() {
    if std::env::var_os(common::SHARED_DATA_ENV).is_some() {
        assert!(common::shared_data().is_none());
    }
}

#[test]
fn a_missing_shared_folder_skips_locally_and_fails_under_ci() {
    let missing = tempfile::tempdir().unwrap().path().join("no-shared-data");
    let probe = |ci: Option<&str>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "shared_data_probe", "--nocapture"])
            .env(common::SHARED_DATA_ENV, &missing)
            .env_remove("CI");
        if let Some(v) = ci {
            cmd.env("CI", v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = probe(None);
    assert!(
        ok && stderr.contains("SKIP"),
        "a bare clone skips: {stderr}"
    );
    let (ok, stderr) = probe(Some("true"));
    assert!(!ok, "CI=true with no shared data must fail: {stderr}");
    assert!(stderr.contains("CI=true"), "{stderr}");
}
