//! The DDP script's torchvision reference checkpoints (`best.pth`, `last.pth`) as our bundles:
//! read with our restricted `.pth` reader (the `argparse.Namespace` beside the weights loads as
//! nothing), the `model.` entry's tensors loaded strictly into the run's model, written as
//! `checkpoints/best` / `checkpoints/last` (staged folder swapped into place).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use tch::{Device, nn};

use crate::model::bundle::ModelSpec;
use crate::model::{MaskRcnn, MaskRcnnConfig, weights};
use crate::train::state;

/// Converts checkpoints whenever their file changes, into one model's variables kept between
/// conversions.
pub struct Converter {
    vs: nn::VarStore,
    spec: ModelSpec,
    classes: Vec<String>,
    /// Modification time and length of each source at its last conversion.
    seen: HashMap<PathBuf, (SystemTime, u64)>,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converter")
            .field("classes", &self.classes)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Converter {
    /// A converter for the run's model (`model_cfg`) and class names (labels 1..).
    pub fn new(model_cfg: &MaskRcnnConfig, classes: &[String]) -> anyhow::Result<Self> {
        let vs = nn::VarStore::new(Device::Cpu);
        MaskRcnn::new(&vs.root(), model_cfg)?;
        Ok(Self {
            vs,
            spec: ModelSpec::from_config(model_cfg),
            classes: classes.to_vec(),
            seen: HashMap::new(),
        })
    }

    /// Converts `pth` into the bundle folder `dest` when `pth` exists and changed since the last
    /// conversion; returns `dest` when it wrote it.
    pub fn update(&mut self, pth: &Path, dest: &Path) -> anyhow::Result<Option<PathBuf>> {
        let Ok(meta) = std::fs::metadata(pth) else {
            return Ok(None);
        };
        let stamp = (meta.modified()?, meta.len());
        if self.seen.get(pth) == Some(&stamp) {
            return Ok(None);
        }
        self.convert(pth, dest)?;
        self.seen.insert(pth.to_path_buf(), stamp);
        Ok(Some(dest.to_path_buf()))
    }

    /// Converts `pth` into the bundle folder `dest`.
    pub fn convert(&mut self, pth: &Path, dest: &Path) -> anyhow::Result<()> {
        let tensors = model_tensors(pth)?;
        weights::load_strict(&mut self.vs, &tensors)
            .with_context(|| format!("{pth:?} does not hold this run's model"))?;
        state::write_checkpoint(dest, &self.spec, &self.classes, &self.vs, None)
            .with_context(|| format!("writing {dest:?} from {pth:?}"))
    }
}

/// The tensors under the checkpoint's `model` entry, without the `model.` prefix.
pub fn model_tensors(pth: &Path) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
    let tensors: Vec<(String, tch::Tensor)> = crate::model::checkpoint::read_checkpoint(pth)?
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("model.")?.to_owned(), t)))
        .collect();
    anyhow::ensure!(
        !tensors.is_empty(),
        "{pth:?}: no \"model\" state dict in the checkpoint"
    );
    Ok(tensors)
}
