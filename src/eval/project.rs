//! Evaluating a model bundle on a project split: predictions from [`crate::infer::Predictor`],
//! ground truth from the store, COCOeval for bbox and segm.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::cancel::CancelToken;
use crate::dataset::store::Project;
use crate::dataset::{ExportClass, ExportImage, ExportSet};
use crate::eval::coco_eval::{DtAnn, EvalParams, EvalResult, GtAnn, IouType, STAT_NAMES, evaluate};
use crate::infer::{Detection, Predictor, read_image};

/// Both evaluations and the class names (category id = label index 1..N of the bundle).
#[derive(Debug, Clone)]
pub struct ProjectEval {
    /// Mask AP etc.
    pub segm: EvalResult,
    /// Box AP etc.
    pub bbox: EvalResult,
    /// Category id → class name.
    pub class_names: BTreeMap<i64, String>,
}

impl ProjectEval {
    /// The JSON of `maskstudio eval --json`: `{"segm": {"AP": …, …, "per_class": {name: AP}}, "bbox": {…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let one = |r: &EvalResult| {
            let mut m = serde_json::Map::new();
            for (name, v) in STAT_NAMES.iter().zip(r.stats) {
                m.insert((*name).to_owned(), serde_json::json!(v));
            }
            let per_class: serde_json::Map<String, serde_json::Value> = r
                .per_class_ap
                .iter()
                .map(|(id, ap)| {
                    let name = self
                        .class_names
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| id.to_string());
                    (name, serde_json::json!(ap))
                })
                .collect();
            m.insert("per_class".into(), serde_json::Value::Object(per_class));
            serde_json::Value::Object(m)
        };
        serde_json::json!({"segm": one(&self.segm), "bbox": one(&self.bbox)})
    }
}

/// Runs the bundle over the images of `split` (`None` = all) and evaluates against the stored
/// instances. Project classes are matched to the bundle's labels by name; instances of classes
/// the bundle does not know are left out (reported in the log).
pub fn evaluate_project(
    project: &Project,
    predictor: &Predictor,
    split: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<ProjectEval> {
    let set = project.export_set(split)?;
    anyhow::ensure!(!set.images.is_empty(), "no images in split {split:?}");
    evaluate_set(&set, predictor, progress)
}

/// Ground truth and detections of a set in COCOeval's form (classes matched by name).
pub(crate) struct Annotations {
    /// Ground-truth instances of the classes the model knows (crowd regions included).
    pub gts: Vec<GtAnn>,
    /// The model's detections, with boxes and RLE masks.
    pub dts: Vec<DtAnn>,
    /// Instances left out because the model does not know their class.
    pub unknown: usize,
}

/// Project classes matched to a bundle's labels by name (label = index in `labels.txt` + 1);
/// shared by evaluation and the label-error audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassMatch {
    label_of: BTreeMap<i64, i64>,
    class_of: BTreeMap<i64, i64>,
}

impl ClassMatch {
    /// Matches `classes` (the project's) to `labels` (the bundle's, in label order) by name.
    pub fn new(classes: &[ExportClass], labels: &[String]) -> Self {
        let label_by_name: BTreeMap<&str, i64> = labels
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i as i64 + 1))
            .collect();
        let label_of: BTreeMap<i64, i64> = classes
            .iter()
            .filter_map(|c| label_by_name.get(c.name.as_str()).map(|&l| (c.id, l)))
            .collect();
        let class_of = label_of.iter().map(|(&c, &l)| (l, c)).collect();
        Self { label_of, class_of }
    }

    /// The bundle label of project class `class_id`, if the model knows the class.
    pub fn label_of(&self, class_id: i64) -> Option<i64> {
        self.label_of.get(&class_id).copied()
    }

    /// The project class of bundle label `label`, if the project has a class of its name.
    pub fn class_of(&self, label: i64) -> Option<i64> {
        self.class_of.get(&label).copied()
    }
}

/// Predicts every image of `images` in order and hands each with its detections to `each`;
/// `cancel` is checked before each image, `progress(done, total)` runs after each. Returns
/// `false` when `cancel` stopped it.
pub(crate) fn for_each_prediction(
    images: &[ExportImage],
    predictor: &Predictor,
    cancel: Option<&CancelToken>,
    progress: &mut dyn FnMut(usize, usize),
    each: &mut dyn FnMut(&ExportImage, Vec<Detection>) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    for (done, image) in images.iter().enumerate() {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Ok(false);
        }
        let pixels = read_image(&image.path)?;
        let detections = predictor
            .predict(&pixels)
            .with_context(|| format!("predicting {:?}", image.path))?;
        each(image, detections)?;
        progress(done + 1, images.len());
    }
    Ok(true)
}

/// Predicts every image of `set` and collects ground truth and detections; `cancel` is checked
/// before each image, `progress(done, total)` runs after each.
pub(crate) fn predict_annotations(
    set: &ExportSet,
    predictor: &Predictor,
    cancel: Option<&CancelToken>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Annotations> {
    let classes = ClassMatch::new(&set.classes, predictor.labels());
    let (mut gts, mut dts) = (Vec::new(), Vec::new());
    let mut unknown = 0usize;
    let completed = for_each_prediction(
        &set.images,
        predictor,
        cancel,
        progress,
        &mut |image, detections| {
            for inst in &image.instances {
                let Some(category_id) = classes.label_of(inst.class_id) else {
                    unknown += 1;
                    continue;
                };
                gts.push(GtAnn {
                    image_id: image.id,
                    category_id,
                    iscrowd: inst.iscrowd,
                    area: inst.rle.area() as f64,
                    bbox: inst.rle.to_bbox(),
                    rle: Some(inst.rle.clone()),
                });
            }
            for d in detections {
                let rle = d.mask.to_rle();
                let [x1, y1, x2, y2] = d.box_xyxy.map(f64::from);
                let bbox = [x1, y1, x2 - x1, y2 - y1];
                // Results carry boxes, so pycocotools' loadRes gives them area w*h.
                let score = f64::from(d.score);
                dts.push(DtAnn::with_box(image.id, d.label, score, bbox, Some(rle)));
            }
            Ok(())
        },
    )?;
    anyhow::ensure!(completed, "evaluation cancelled");
    Ok(Annotations { gts, dts, unknown })
}

/// Runs the bundle over the images of `set` and evaluates against their instances (classes
/// matched by name, as in [`evaluate_project`]); the trainer's validation uses this directly.
pub fn evaluate_set(
    set: &ExportSet,
    predictor: &Predictor,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<ProjectEval> {
    anyhow::ensure!(!set.images.is_empty(), "no images to evaluate");
    let Annotations { gts, dts, unknown } = predict_annotations(set, predictor, None, progress)?;
    if unknown > 0 {
        log::warn!("{unknown} instances belong to classes the model does not know; left out");
    }
    let image_ids: Vec<i64> = set.images.iter().map(|m| m.id).collect();
    let category_ids: Vec<i64> = (1..=predictor.labels().len() as i64).collect();
    let params = EvalParams::default();
    let segm = evaluate(
        &gts,
        &dts,
        &image_ids,
        &category_ids,
        IouType::Segm,
        &params,
    )?;
    let bbox = evaluate(
        &gts,
        &dts,
        &image_ids,
        &category_ids,
        IouType::Bbox,
        &params,
    )?;
    let class_names = predictor
        .labels()
        .iter()
        .enumerate()
        .map(|(i, n)| (i as i64 + 1, n.clone()))
        .collect();
    Ok(ProjectEval {
        segm,
        bbox,
        class_names,
    })
}

/// Reads a bundle and evaluates it (the `maskstudio eval` job).
pub fn run(
    bundle: &Path,
    project_dir: &Path,
    split: Option<&str>,
    device: tch::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<ProjectEval> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    // pycocotools evaluates every detection the model keeps (torchvision's 0.05 threshold).
    let predictor = Predictor::load(bundle, device, None)?;
    evaluate_project(&project, &predictor, split, progress)
}
