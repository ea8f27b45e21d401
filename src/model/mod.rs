//! Mask R-CNN on tch with torchvision's parameter names, and its weights I/O.
//!
//! Files mirror torchvision (`transform`, `backbone`, `fpn`, `anchors`, `rpn`, `roi_align`
//! (poolers), `roi_heads`, `box_ops`, `matcher`, `mask_rcnn`). Var-store paths are torchvision
//! `state_dict` keys, so torchvision weights load with no renaming and ours load into
//! torchvision with `strict=True`.

pub mod anchors;
pub mod backbone;
pub mod box_ops;
pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fpn;
pub mod layers;
pub mod mask_rcnn;
pub mod matcher;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;
pub mod transform;
pub mod weights;

pub use config::{Backbone, MaskRcnnConfig};
pub use error::{ModelError, Result};
pub use mask_rcnn::{CroppedDetections, Detections, LOSS_NAMES, Losses, MaskRcnn, Target};
