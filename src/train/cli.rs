//! `maskstudio train`: flags → [`TrainConfig`] → [`train`](crate::train::train) with printed
//! progress.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::dataset::store::CancelToken;
use crate::runtime::DeviceChoice;
use crate::train::config::{Preset, TrainConfig};
use crate::train::observer::PrintObserver;

/// Arguments of `maskstudio train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Project folder.
    #[arg(long)]
    pub project: PathBuf,
    /// cpu-fast (MobileNetV2-FPN, 320 px) | quality (ResNet-50-FPN, 800/1333 px).
    #[arg(long)]
    pub preset: Option<Preset>,
    /// A training config JSON (any `TrainConfig` key); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Passes over the training images.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longer image side in pixels.
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the split, order, flips and initial weights.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many steps.
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// auto | cpu | cuda
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Print a step line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub print_every: usize,
}

impl TrainArgs {
    /// The config file (or the defaults) with the flags applied.
    pub fn to_config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {path:?}"))?
            }
            None => TrainConfig::default(),
        };
        if let Some(v) = self.preset {
            cfg.preset = v;
        }
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if self.image_size.is_some() {
            cfg.image_size = self.image_size;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if self.max_iters.is_some() {
            cfg.max_iters = self.max_iters;
        }
        if let Some(v) = self.device {
            cfg.device = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `maskstudio train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let mut observer = PrintObserver {
        every: args.print_every,
    };
    let summary = crate::train::train(
        &args.project,
        &args.runs_dir,
        &cfg,
        &CancelToken::default(),
        &mut observer,
    )?;
    println!("run folder: {}", summary.run_dir.display());
    if let Some(bundle) = &summary.checkpoint {
        println!("model bundle: {}", bundle.display());
    }
    Ok(())
}
