//! `maskstudio train`: flags → [`TrainConfig`] → [`train`](crate::train::train) (or
//! [`resume`](crate::train::resume)) with a progress bar, per-class instance counts at the
//! start and a per-epoch table.

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::host::DeviceChoice;
use crate::train::config::{OptimizerKind, Preset, RefitMode, ScheduleKind, TrainConfig};
use crate::train::observer::{TrainEvent, TrainObserver, event_line};
use crate::train::runs::RunConfig;
use crate::train::torchrun::{Engine, TorchrunOptions};
use crate::train::trainer::TrainControl;

/// Arguments of `maskstudio train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Project folder (not needed with --resume).
    #[arg(long, required_unless_present = "resume")]
    pub project: Option<PathBuf>,
    /// Continue the run in this folder exactly where it stopped (cancel, crash).
    #[arg(long, conflicts_with = "project")]
    pub resume: Option<PathBuf>,
    /// With --resume: extend a finished run by this many epochs (new schedule over them).
    #[arg(long, requires = "resume")]
    pub continue_epochs: Option<usize>,
    /// cpu-fast (MobileNetV2-FPN, 320 px) | quality (ResNet-50-FPN, 800/1333 px).
    #[arg(long)]
    pub preset: Option<Preset>,
    /// A training config JSON (any `TrainConfig` key); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A partial model.json (any `MaskRcnnConfig` key: anchor_sizes, box_detections_per_img,
    /// rpn_post_nms_top_n_train, …) overriding the preset's model.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
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
    /// sgd | adamw
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// cosine | multistep | one-cycle
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Epochs with the backbone body frozen before it trains too.
    #[arg(long)]
    pub freeze_epochs: Option<usize>,
    /// Clip gradients to this global norm.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Evaluate on the validation images every N epochs (0 = never).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Stop when the validation mask AP has not improved for N evaluations.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Mixed precision on CUDA (ignored on the CPU).
    #[arg(long)]
    pub amp: bool,
    /// Seed of the split, order, flips and initial weights.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many iterations (optimizer steps; the Train form's "Max iterations").
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// auto | cpu | cuda
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Where run folders are created (default `<project>/runs`, where the Train tab lists them).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Configure the model from the training images' statistics (input size for small objects,
    /// anchors, per-image budgets) where no flag or --model-config key sets it (the default).
    #[arg(long, conflicts_with = "no_auto_config")]
    pub auto_config: bool,
    /// Keep the preset's model as it is: no dataset-derived input size, anchors or budgets.
    #[arg(long)]
    pub no_auto_config: bool,
    /// Refit on train + validation for the epochs validation chose: off (default) | auto (on for
    /// at most 500 training images) | on.
    #[arg(long)]
    pub refit: Option<RefitMode>,
    /// Print a step line every this many steps when no progress bar is shown (not a terminal).
    #[arg(long, default_value_t = 10)]
    pub print_every: usize,
    /// in-process (default) | torchrun: torchvision under `torchrun` (DDP) in the reference venv.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// torchrun: processes on this machine (default 2).
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// torchrun: machines taking part (default 1; more needs --node-rank and --master-addr).
    #[arg(long)]
    pub nnodes: Option<usize>,
    /// torchrun: this machine's rank, 0 .. nnodes - 1 (node 0's run folder gets the results).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// torchrun: address of node 0 (default 127.0.0.1).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// torchrun: a free port on node 0 (default 29500).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// torchrun: start from this model bundle's weights (all of them when it is the same model
    /// with the same classes, else all but the class predictors).
    #[arg(long)]
    pub init: Option<PathBuf>,
}

impl TrainArgs {
    /// The config file (or the defaults) with the flags applied.
    pub fn to_config(&self) -> anyhow::Result<TrainConfig> {
        let (mut cfg, file_keys) = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("parsing {path:?}"))?;
                let keys: Vec<String> = value
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let cfg: TrainConfig =
                    serde_json::from_value(value).with_context(|| format!("parsing {path:?}"))?;
                (cfg, keys)
            }
            None => (TrainConfig::default(), Vec::new()),
        };
        // The CLI's default where the file does not say: the model configured from the data. The
        // refit stays off unless asked for: measured with `cargo bench --bench recipe` (16
        // training images, 4 epochs) it scored held-out mask AP 0.187 vs 0.189 (crowded) and
        // 0.074 vs 0.174 (droplets) against the validation-selected checkpoint, at 1.7x the time.
        if !file_keys.iter().any(|k| k == "auto_config") {
            cfg.auto_config = true;
        }
        // Recipe fields given here or in the file: auto-configuration leaves them alone.
        let given = [
            ("epochs", self.epochs.is_some()),
            ("batch_size", self.batch_size.is_some()),
            ("lr", self.lr.is_some()),
            ("optimizer", self.optimizer.is_some()),
            ("schedule", self.schedule.is_some()),
            ("freeze_epochs", self.freeze_epochs.is_some()),
            ("clip_grad_norm", self.clip_grad_norm.is_some()),
        ];
        for key in file_keys
            .iter()
            .map(String::as_str)
            .chain(given.iter().filter(|(_, g)| *g).map(|(k, _)| *k))
        {
            if !cfg.is_user_set(key) {
                cfg.user_set.push(key.to_owned());
            }
        }
        set(&mut cfg.preset, self.preset);
        if let Some(path) = &self.model_config {
            cfg.model_overrides = crate::train::config::read_model_overrides(path)?;
        }
        set(&mut cfg.epochs, self.epochs);
        set(&mut cfg.batch_size, self.batch_size);
        set(&mut cfg.image_size, self.image_size.map(Some));
        set(&mut cfg.lr, self.lr);
        set(&mut cfg.optimizer, self.optimizer);
        set(&mut cfg.schedule, self.schedule);
        set(&mut cfg.freeze_epochs, self.freeze_epochs);
        set(&mut cfg.clip_grad_norm, self.clip_grad_norm.map(Some));
        set(&mut cfg.eval_every, self.eval_every);
        set(&mut cfg.patience, self.patience.map(Some));
        if self.amp {
            cfg.amp = true;
        }
        set(&mut cfg.seed, self.seed);
        set(&mut cfg.max_iters, self.max_iters.map(Some));
        set(&mut cfg.device, self.device);
        if self.auto_config {
            cfg.auto_config = true;
        }
        if self.no_auto_config {
            cfg.auto_config = false;
        }
        set(&mut cfg.refit, self.refit);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The engine and torchrun's options from the flags; torchrun's flags without
    /// `--engine torchrun` are an error.
    pub fn to_engine(&self) -> anyhow::Result<(Engine, TorchrunOptions)> {
        let engine = self.engine.unwrap_or_default();
        let mut opts = TorchrunOptions::default();
        let given = [
            (self.nproc_per_node.is_some(), "--nproc-per-node"),
            (self.nnodes.is_some(), "--nnodes"),
            (self.node_rank.is_some(), "--node-rank"),
            (self.master_addr.is_some(), "--master-addr"),
            (self.master_port.is_some(), "--master-port"),
            (self.init.is_some(), "--init"),
        ];
        if engine != Engine::Torchrun
            && let Some((_, flag)) = given.iter().find(|f| f.0)
        {
            anyhow::bail!("{flag} needs --engine torchrun");
        }
        set(&mut opts.nproc_per_node, self.nproc_per_node);
        set(&mut opts.nnodes, self.nnodes);
        set(&mut opts.node_rank, self.node_rank);
        set(&mut opts.master_addr, self.master_addr.clone());
        set(&mut opts.master_port, self.master_port);
        opts.init.clone_from(&self.init);
        Ok((engine, opts))
    }
}

/// Overwrites `slot` with a flag's value when the flag was given (`None`: the recipe keeps its
/// own). An optional setting passes `flag.map(Some)`, so a given flag sets it.
fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// The CLI observer: a progress bar with ETA on a terminal (step lines otherwise), the class
/// counts at the start, a table row per epoch, and the final line.
pub struct CliObserver {
    bar: Option<ProgressBar>,
    every: usize,
    header_printed: bool,
}

impl std::fmt::Debug for CliObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliObserver")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl CliObserver {
    /// Step lines every `every` steps when stderr is not a terminal.
    pub fn new(every: usize) -> Self {
        Self {
            bar: None,
            every: every.max(1),
            header_printed: false,
        }
    }

    fn print(&self, text: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(text),
            _ => println!("{text}"),
        }
    }
}

/// `0.1234` or `-` for a missing value.
fn ap_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

impl TrainObserver for CliObserver {
    fn on_event(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Started {
                run_id,
                run_dir,
                train_images,
                val_images,
                class_counts,
                total_iters,
                ..
            } => {
                println!(
                    "run {run_id} in {}: {train_images} training / {val_images} validation images, {total_iters} steps",
                    run_dir.display()
                );
                let width = class_counts
                    .iter()
                    .map(|(n, _)| n.chars().count())
                    .max()
                    .unwrap_or(5)
                    .max(5);
                println!("{:<width$}  training instances", "class");
                for (name, count) in class_counts {
                    println!("{name:<width$}  {count:>9}");
                }
                let bar = ProgressBar::new(*total_iters as u64);
                let style = ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps {per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                self.bar = Some(bar);
            }
            TrainEvent::Step {
                iter, total, lr, ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*iter as u64 + 1);
                    bar.set_message(format!("loss {total:.4} lr {lr:.2e}"));
                    if bar.is_hidden() && iter % self.every == 0 {
                        println!("{}", event_line(e));
                    }
                }
            }
            TrainEvent::EpochEnd {
                epoch,
                mean_loss,
                steps,
                val_segm_ap,
                val_bbox_ap,
            } => {
                if !self.header_printed {
                    self.print(&format!(
                        "{:>5} {:>6} {:>10} {:>10} {:>10}",
                        "epoch", "steps", "mean loss", "mask AP", "box AP"
                    ));
                    self.header_printed = true;
                }
                self.print(&format!(
                    "{epoch:>5} {steps:>6} {mean_loss:>10.4} {:>10} {:>10}",
                    ap_cell(*val_segm_ap),
                    ap_cell(*val_bbox_ap)
                ));
            }
            TrainEvent::Refit { total_iters, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*total_iters as u64);
                }
                self.print(&event_line(e));
                self.header_printed = false;
            }
            TrainEvent::CheckpointSaved { .. } => {}
            TrainEvent::Finished { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                println!("{}", event_line(e));
            }
            TrainEvent::Failed { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
                eprintln!("{}", event_line(e));
            }
        }
    }
}

/// Runs `maskstudio train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut observer = CliObserver::new(args.print_every);
    let control = TrainControl::default();
    let summary = match (&args.resume, &args.project) {
        (Some(run_dir), _) => {
            // The run's config.json is the recipe of a resumed run; flags would be ignored.
            let recipe_flags = [
                (args.preset.is_some(), "--preset"),
                (args.config.is_some(), "--config"),
                (args.model_config.is_some(), "--model-config"),
                (args.epochs.is_some(), "--epochs"),
                (args.batch_size.is_some(), "--batch-size"),
                (args.image_size.is_some(), "--image-size"),
                (args.lr.is_some(), "--lr"),
                (args.optimizer.is_some(), "--optimizer"),
                (args.schedule.is_some(), "--schedule"),
                (args.seed.is_some(), "--seed"),
                (args.max_iters.is_some(), "--max-iters"),
            ];
            if let Some((_, flag)) = recipe_flags.iter().find(|f| f.0) {
                anyhow::bail!(
                    "{flag} cannot be combined with --resume: the run keeps its recipe (config.json)"
                );
            }
            let engine = RunConfig::read(run_dir)?.engine.unwrap_or_default();
            if engine == Engine::Torchrun {
                crate::train::torchrun::launch::cancel_on_interrupt(&control)?;
                anyhow::ensure!(
                    args.continue_epochs.is_none(),
                    "--continue-epochs is not available for torchrun runs; start a new run with --init {}",
                    run_dir.join(crate::train::state::BEST_CHECKPOINT).display()
                );
                crate::train::torchrun::resume_torchrun(run_dir, &control, &mut observer)?
            } else {
                crate::train::resume(run_dir, args.continue_epochs, &control, &mut observer)?
            }
        }
        (None, Some(project)) => {
            let cfg = args.to_config()?;
            let (engine, opts) = args.to_engine()?;
            let runs_dir = args
                .runs_dir
                .clone()
                .unwrap_or_else(|| project.join("runs"));
            match engine {
                Engine::InProcess => {
                    crate::train::train_with(project, &runs_dir, &cfg, &control, &mut observer)?
                }
                Engine::Torchrun => {
                    crate::train::torchrun::launch::cancel_on_interrupt(&control)?;
                    crate::train::torchrun::train_torchrun(
                        project,
                        &runs_dir,
                        &cfg,
                        &opts,
                        &control,
                        &mut observer,
                    )?
                }
            }
        }
        (None, None) => anyhow::bail!("give --project (a new run) or --resume RUN_DIR"),
    };
    if summary.stopped_early {
        println!("early stopping: the validation mask AP stopped improving");
    }
    println!("run folder: {}", summary.run_dir.display());
    if let Some(bundle) = &summary.checkpoint {
        println!("last checkpoint: {}", bundle.display());
    }
    if let Some(best) = &summary.best_checkpoint {
        println!(
            "best checkpoint: {} (validation mask AP {})",
            best.display(),
            ap_cell(summary.best_segm_ap)
        );
    }
    if let Some(refit) = &summary.refit_checkpoint {
        println!(
            "refit on train + validation: {} (the run's result: export --run takes it)",
            refit.display()
        );
    }
    println!(
        "loss curves: {}",
        summary.run_dir.join("loss.png").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn config(args: &[&str]) -> TrainConfig {
        let mut all = vec!["train", "--project", "P"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().args.to_config().unwrap()
    }

    #[test]
    fn defaults_configure_from_the_data_without_a_refit() {
        let cfg = config(&[]);
        assert!(cfg.auto_config);
        assert_eq!(cfg.refit, RefitMode::Off);
        assert!(cfg.user_set.is_empty(), "{:?}", cfg.user_set);
        let cfg = config(&["--no-auto-config", "--refit", "off"]);
        assert!(!cfg.auto_config);
        assert_eq!(cfg.refit, RefitMode::Off);
        assert!(config(&["--auto-config"]).auto_config);
        assert!(
            Cli::try_parse_from(["t", "--project", "P", "--auto-config", "--no-auto-config"])
                .is_err()
        );
    }

    #[test]
    fn given_flags_and_file_keys_are_left_to_the_user() {
        let cfg = config(&["--lr", "0.02", "--batch-size", "2", "--image-size", "512"]);
        assert_eq!(cfg.lr, 0.02);
        assert_eq!(cfg.image_size, Some(512));
        let mut set = cfg.user_set.clone();
        set.sort();
        assert_eq!(set, vec!["batch_size", "lr"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.json");
        std::fs::write(&file, r#"{"warmup_iters": 7, "auto_config": false}"#).unwrap();
        let cfg = config(&["--config", file.to_str().unwrap()]);
        assert!(cfg.is_user_set("warmup_iters"));
        assert!(!cfg.auto_config, "the file's auto_config is kept");
        assert_eq!(
            cfg.refit,
            RefitMode::Off,
            "absent from the file: the default"
        );
        assert_eq!(config(&["--refit", "auto"]).refit, RefitMode::Auto);
    }

    #[test]
    fn torchrun_flags_need_the_torchrun_engine() {
        let parse = |args: &[&str]| {
            let mut all = vec!["train", "--project", "P"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().args.to_engine()
        };
        let (engine, opts) = parse(&[]).unwrap();
        assert_eq!(
            (engine, opts),
            (Engine::InProcess, TorchrunOptions::default())
        );
        let err = parse(&["--nproc-per-node", "4"]).unwrap_err();
        assert_eq!(err.to_string(), "--nproc-per-node needs --engine torchrun");
        let (engine, opts) = parse(&[
            "--engine",
            "torchrun",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.2",
            "--master-port",
            "29400",
            "--init",
            "B",
        ])
        .unwrap();
        assert_eq!(engine, Engine::Torchrun);
        assert_eq!(
            opts,
            TorchrunOptions {
                nproc_per_node: 2,
                nnodes: 2,
                node_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 29400,
                init: Some(PathBuf::from("B")),
            }
        );
    }
}
