//! COCO evaluation (pycocotools `COCOeval` port) for boxes and instance masks.

pub mod audit;
pub mod coco_eval;
pub mod label_next;
pub mod per_image;
pub mod project;
