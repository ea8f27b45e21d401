//! Training in `torchrun` processes (PyTorch DDP): the recipe, the project's splits (COCO) and
//! our initial weights are handed to the reference venv's `tools/ddp_train.py`; the run folder's
//! `metrics.csv` / `epochs.csv` are tailed into [`TrainEvent`](crate::train::TrainEvent)s and its
//! torchvision checkpoints converted back into our bundles.
//!
//! Split by concern: [`options`] (engine choice, launch flags), [`job`] (`job.json`, the COCO
//! exports, the embedded scripts), [`launch`] (the process group), [`tail`] (CSV rows → events),
//! [`convert`] (`.pth` → bundle). Pause is not offered: stopping DDP ranks with SIGSTOP would
//! let the other nodes' agents and NCCL's watchdog time out, so a torchrun run is cancelled
//! (and resumed from its last finished epoch) instead; a pause request is noted in `train.log`
//! and the run goes on.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::dataset::ExportSet;
use crate::model::MaskRcnnConfig;
use crate::train::config::{AugmentConfig, RefitMode, TrainConfig};
use crate::train::data;
use crate::train::observer::{TrainEvent, TrainObserver};
use crate::train::runs::{CONFIG_FILE, RunConfig};
use crate::train::state::{self, BEST_CHECKPOINT, LAST_CHECKPOINT};
use crate::train::trainer::{
    EngineChoice, Reporter, RunSummary, TrainControl, fail_early, finish, guarded, prepare_fresh,
};

pub mod convert;
pub mod job;
pub mod launch;
pub mod options;
pub mod tail;

pub use options::{Engine, TorchrunOptions};

/// How often the run folder's files are read while torchrun runs.
const POLL: Duration = Duration::from_millis(500);
/// Lines of `torchrun.log` quoted in a failure.
const LOG_LINES: usize = 12;

/// What the launcher needs of a prepared (or resumed) torchrun run.
struct Prepared {
    run_id: String,
    run_dir: PathBuf,
    cfg: TrainConfig,
    model_cfg: MaskRcnnConfig,
    classes: Vec<String>,
    opts: TorchrunOptions,
    train_images: usize,
    val_images: usize,
    class_counts: Vec<(String, u64)>,
    total_iters: usize,
}

/// Processes in the whole job (`nproc_per_node × nnodes`).
fn world_size(opts: &TorchrunOptions) -> usize {
    opts.nproc_per_node * opts.nnodes
}

/// Threads per process: the machine's cores shared by its processes (at least 1).
fn threads_per_process(opts: &TorchrunOptions) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / opts.nproc_per_node.max(1)).max(1)
}

/// Global steps of a run (`ddp_train.py`'s sampler: each rank gets ceil(N / W) images and
/// makes ceil(that / batch) batches of them per epoch), capped by `max_iters`.
fn planned_steps(cfg: &TrainConfig, train_images: usize, world: usize) -> usize {
    let per_rank = train_images.div_ceil(world.max(1));
    let per_epoch = per_rank.div_ceil(cfg.batch_size.max(1));
    let planned = per_epoch * cfg.epochs;
    cfg.max_iters.map_or(planned, |m| m.min(planned))
}

/// The recipe `ddp_train.py` receives: the augmentation the in-process trainer would use
/// spelled out (`ddp_train.py` reads a missing one as "flip only", ours as the preset's
/// pipeline), and the warm-up over the same number of images: a global step sees `world`
/// times the images of one of ours, so it lasts `ceil(warmup_iters / world)` global steps
/// (the "gradual warm-up" that goes with linear LR scaling, Goyal et al. 2017, §2.2).
fn job_recipe(cfg: &TrainConfig, world: usize, notes: &mut Vec<String>) -> TrainConfig {
    let mut recipe = cfg.clone();
    recipe.augment = Some(Box::new(AugmentConfig::resolve(cfg)));
    let warmup = cfg.warmup_iters.div_ceil(world.max(1));
    if warmup != cfg.warmup_iters {
        notes.push(format!(
            "warm-up over the same images as in-process: {} steps of {world} processes ({} in-process steps)",
            warmup, cfg.warmup_iters
        ));
    }
    recipe.warmup_iters = warmup;
    recipe
}

/// The reference venv's interpreter, once it proved to import torch and torchvision.
fn venv_python() -> anyhow::Result<PathBuf> {
    crate::host::python_tools()
        .map(|t| t.python.clone())
        .map_err(|e| {
            anyhow::anyhow!("the torchrun engine runs torchvision from the reference venv; {e}")
        })
}

/// Checks the launch options.
fn validate(opts: &TorchrunOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.nproc_per_node >= 1,
        "--nproc-per-node must be at least 1"
    );
    anyhow::ensure!(opts.nnodes >= 1, "--nnodes must be at least 1");
    anyhow::ensure!(
        opts.node_rank < opts.nnodes,
        "--node-rank {} is not below --nnodes {}",
        opts.node_rank,
        opts.nnodes
    );
    anyhow::ensure!(
        !opts.master_addr.trim().is_empty(),
        "--master-addr is empty"
    );
    Ok(())
}

/// Training instances per class in label order.
fn class_counts(set: &ExportSet, train_ids: &[i64]) -> Vec<(String, u64)> {
    let (_, names, label_of) = data::label_map(set);
    let ids: std::collections::HashSet<i64> = train_ids.iter().copied().collect();
    let mut counts = vec![0u64; names.len()];
    for image in set.images.iter().filter(|i| ids.contains(&i.id)) {
        for inst in image.instances.iter().filter(|i| !i.iscrowd) {
            if let Some(&l) = label_of.get(&inst.class_id) {
                counts[(l - 1) as usize] += 1;
            }
        }
    }
    names.into_iter().zip(counts).collect()
}

/// Like [`train_with`](crate::train::train_with), but the steps run in `torchrun` processes;
/// events come from tailing the run folder's `metrics.csv` / `epochs.csv`, so observers (CLI
/// bar, GUI plots) work unchanged. Cancel (`control.cancel()`) stops every rank; returns
/// `Ok` with `cancelled = true`, the last finished epoch's bundles in `checkpoints/`.
pub fn train_torchrun(
    project_dir: &Path,
    runs_dir: &Path,
    cfg: &TrainConfig,
    opts: &TorchrunOptions,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    if let Err(e) = cfg
        .validate()
        .and_then(|()| validate(opts))
        .and_then(|()| venv_python().map(drop))
    {
        return fail_early(observer, e);
    }
    let (run_id, run_dir) = match crate::train::runs::create_dated_dir(runs_dir, "") {
        Ok(v) => v,
        Err(e) => return fail_early(observer, e),
    };
    let log_path = run_dir.join("train.log");
    let log = match File::create(&log_path) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!("creating {log_path:?}"));
            return fail_early(observer, e);
        }
    };
    let mut reporter = Reporter { log, observer };
    let result = guarded("torchrun training", || {
        let mut notes = Vec::new();
        let prepared = prepare(project_dir, &run_id, &run_dir, cfg, opts, &mut notes);
        for n in &notes {
            reporter.note(n);
        }
        supervise(prepared?, (0, 0), control, &mut reporter)
    });
    finish(&run_dir, result, &mut reporter)
}

/// A fresh run's folder for torchrun: the in-process trainer's preparation (split,
/// auto-configuration, `config.json`, initial weights), then `torchrun/`: `init.safetensors`,
/// the COCO exports, the scripts and `job.json`.
fn prepare(
    project_dir: &Path,
    run_id: &str,
    run_dir: &Path,
    cfg: &TrainConfig,
    opts: &TorchrunOptions,
    notes: &mut Vec<String>,
) -> anyhow::Result<Prepared> {
    let fresh = prepare_fresh(
        project_dir,
        run_id,
        run_dir,
        cfg,
        None,
        EngineChoice {
            engine: Some(Engine::Torchrun),
            torchrun: Some(opts.clone()),
            init: opts.init.clone(),
        },
        notes,
    )?;
    if fresh.cfg.refit != RefitMode::Off {
        notes.push(
            "the torchrun engine does not refit on train + validation: the best checkpoint is the run's result"
                .to_owned(),
        );
    }
    let dir = run_dir.join(job::TORCHRUN_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let init = dir.join(job::INIT_FILE);
    crate::model::weights::save_safetensors(&fresh.vs, &init)
        .with_context(|| format!("writing the initial weights {init:?}"))?;
    let (train_dir, val_dir) = (dir.join("data/train"), dir.join("data/val"));
    job::export_split(&fresh.set, &fresh.split.train, &train_dir)?;
    let val = if fresh.split.val.is_empty() {
        None
    } else {
        job::export_split(&fresh.set, &fresh.split.val, &val_dir)?;
        Some(val_dir)
    };
    job::write_scripts(&dir)?;
    let run_abs = std::fs::canonicalize(run_dir).with_context(|| format!("{run_dir:?}"))?;
    let abs = |p: PathBuf| run_abs.join(p.strip_prefix(run_dir).unwrap_or(&p));
    job::Job {
        format: job::JOB_FORMAT.to_owned(),
        run_dir: run_abs.clone(),
        train: abs(train_dir),
        val: val.map(abs),
        classes: fresh.class_names.clone(),
        train_ids: fresh.split.train.clone(),
        model: fresh.model_cfg.clone(),
        init: abs(init),
        resume: None,
        recipe: job_recipe(&fresh.cfg, world_size(opts), notes),
        device: if fresh.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
        .to_owned(),
        threads: threads_per_process(opts),
    }
    .write(run_dir)?;
    Ok(Prepared {
        run_id: run_id.to_owned(),
        run_dir: run_dir.to_path_buf(),
        total_iters: planned_steps(&fresh.cfg, fresh.split.train.len(), world_size(opts)),
        class_counts: class_counts(&fresh.set, &fresh.split.train),
        train_images: fresh.split.train.len(),
        val_images: fresh.split.val.len(),
        cfg: fresh.cfg,
        model_cfg: fresh.model_cfg,
        classes: fresh.class_names,
        opts: opts.clone(),
    })
}

/// Continues a torchrun run from its last finished epoch (`maskstudio train --resume RUN` calls
/// this when the run's `config.json` says engine = torchrun): `job.json`'s `resume` names
/// `torchrun/last.pth`, `metrics.csv` keeps the steps of finished epochs, torchrun starts again
/// with the run's launch options.
pub fn resume_torchrun(
    run_dir: &Path,
    control: &TrainControl,
    observer: &mut dyn TrainObserver,
) -> anyhow::Result<RunSummary> {
    let log_path = run_dir.join("train.log");
    let log = match OpenOptions::new().append(true).create(true).open(&log_path) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!("opening {log_path:?}"));
            return fail_early(observer, e);
        }
    };
    let mut reporter = Reporter { log, observer };
    let result = guarded("torchrun training", || {
        let (prepared, start) = prepare_resume(run_dir)?;
        reporter.note(&format!(
            "resuming with torchrun at step {} (epoch {})",
            start.0, start.1
        ));
        supervise(prepared, start, control, &mut reporter)
    });
    finish(run_dir, result, &mut reporter)
}

/// The run's files for a resume, and where it stands: (next step, finished epochs).
fn prepare_resume(run_dir: &Path) -> anyhow::Result<(Prepared, (usize, usize))> {
    let config = RunConfig::read(run_dir)?;
    anyhow::ensure!(
        config.engine == Some(Engine::Torchrun),
        "{:?}: the run was not trained with torchrun",
        run_dir.join(CONFIG_FILE)
    );
    let cfg = RunConfig::required(run_dir, "train", config.train.as_ref())?.clone();
    let model_cfg = RunConfig::required(run_dir, "model", config.model.as_ref())?.clone();
    let run_id = RunConfig::required(run_dir, "run_id", config.run_id.as_ref())?.clone();
    let opts = config.torchrun.clone().unwrap_or_default();
    validate(&opts)?;
    let dir = run_dir.join(job::TORCHRUN_DIR);
    anyhow::ensure!(
        !dir.join(job::DONE_FILE).exists(),
        "the run in {run_dir:?} has finished ({:?} exists)",
        dir.join(job::DONE_FILE)
    );
    let last = dir.join(job::LAST_PTH);
    anyhow::ensure!(
        last.is_file(),
        "{run_dir:?} has no finished epoch to resume from ({last:?} is missing); start a new run"
    );
    let epochs = tail::read_epochs(run_dir);
    let next_iter: usize = epochs.iter().map(|e| e.steps).sum();
    tail::truncate_metrics(run_dir, next_iter)?;
    let mut job = job::Job::read(run_dir)?;
    job.resume = Some(std::fs::canonicalize(&last).unwrap_or(last));
    job.threads = threads_per_process(&opts);
    job::write_scripts(&dir)?;
    job.write(run_dir)?;
    // Instance counts for the start line; the run's data is its COCO export, so a project
    // that moved since only loses these.
    let class_counts = config
        .project
        .as_deref()
        .and_then(|p| data::read_project(p).ok())
        .map(|set| class_counts(&set, &config.split.train))
        .unwrap_or_else(|| config.classes.iter().map(|c| (c.clone(), 0)).collect());
    let prepared = Prepared {
        run_id,
        run_dir: run_dir.to_path_buf(),
        total_iters: planned_steps(&cfg, config.split.train.len(), world_size(&opts)),
        class_counts,
        train_images: config.split.train.len(),
        val_images: config.split.val.len(),
        cfg,
        model_cfg,
        classes: config.classes.clone(),
        opts,
    };
    Ok((prepared, (next_iter, epochs.len())))
}

/// Launches torchrun on the run's job and follows it to its end: events from the CSV files,
/// bundles from the checkpoints, cancel as a stop of every process.
fn supervise(
    p: Prepared,
    (next_iter, epochs_done): (usize, usize),
    control: &TrainControl,
    reporter: &mut Reporter<'_>,
) -> anyhow::Result<RunSummary> {
    let dir = p.run_dir.join(job::TORCHRUN_DIR);
    let mut converter = convert::Converter::new(&p.model_cfg, &p.classes)?;
    let mut tail = tail::Tail::new(&p.run_dir, next_iter, epochs_done);
    reporter.emit(&TrainEvent::Started {
        run_id: p.run_id.clone(),
        run_dir: p.run_dir.clone(),
        config: p.cfg.clone(),
        train_images: p.train_images,
        val_images: p.val_images,
        class_counts: p.class_counts.clone(),
        total_iters: p.total_iters,
    });
    let cmd = launch::command(
        &venv_python()?,
        &dir.join(job::DDP_SCRIPT),
        &dir.join(job::JOB_FILE),
        &p.opts,
        threads_per_process(&p.opts),
    );
    reporter.note(&format!(
        "torchrun: {} process(es) per node × {} node(s) (this is node {}), {} thread(s) each; output in {:?}",
        p.opts.nproc_per_node,
        p.opts.nnodes,
        p.opts.node_rank,
        threads_per_process(&p.opts),
        dir.join(job::LOG_FILE)
    ));
    if p.opts.node_rank > 0 {
        reporter.note(&format!(
            "node {} of {}: this machine's ranks train with node 0 ({}:{}); node 0's run folder gets metrics.csv, epochs.csv and the checkpoints",
            p.opts.node_rank, p.opts.nnodes, p.opts.master_addr, p.opts.master_port
        ));
    }
    let mut child = launch::Launch::spawn(cmd, &dir.join(job::LOG_FILE))?;
    let mut pause_noted = false;
    let mut cancelled = false;
    let status = loop {
        let until = Instant::now() + POLL;
        while Instant::now() < until && !control.is_cancelled() {
            std::thread::sleep(Duration::from_millis(25));
        }
        if control.is_cancelled() {
            reporter.note("cancel: stopping every torchrun process");
            cancelled = true;
            break child.stop(launch::STOP_GRACE)?;
        }
        if control.is_paused() && !pause_noted {
            reporter.note(
                "pause is not available with the torchrun engine; the run goes on (Stop cancels it, --resume continues from the last finished epoch)",
            );
            pause_noted = true;
        }
        let exited = child.try_wait()?;
        follow(&p, &mut tail, &mut converter, reporter, false)?;
        if let Some(status) = exited {
            break status;
        }
    };
    // The rows and checkpoints written before the end.
    follow(&p, &mut tail, &mut converter, reporter, true)?;
    let done = read_done(&dir);
    if !cancelled && !status.success() {
        let errors = launch::script_errors(&child.log);
        let why = if errors.is_empty() {
            format!(
                "last lines of {:?}:\n{}",
                child.log,
                launch::log_tail(&child.log, LOG_LINES)
            )
        } else {
            format!("{} (all output in {:?})", errors.join("; "), child.log)
        };
        anyhow::bail!(
            "torchrun failed ({status}) for the run in {:?}: {why}",
            p.run_dir
        );
    }
    if !cancelled && done.is_none() && p.opts.node_rank == 0 {
        anyhow::bail!(
            "torchrun ended without {:?} for the run in {:?}; last lines of {:?}:\n{}",
            dir.join(job::DONE_FILE),
            p.run_dir,
            child.log,
            launch::log_tail(&child.log, LOG_LINES)
        );
    }
    let aps: Vec<f64> = tail::read_epochs(&p.run_dir)
        .iter()
        .filter_map(|e| e.val_segm_ap)
        .collect();
    let num = |key: &str| done.as_ref().and_then(|d| d.get(key)?.as_f64());
    let summary = RunSummary {
        run_id: p.run_id.clone(),
        run_dir: p.run_dir.clone(),
        iterations: num("iterations").map_or(tail.next_iter, |v| v as usize),
        epochs_completed: tail.epochs,
        cancelled,
        stopped_early: done
            .as_ref()
            .and_then(|d| d.get("stopped_early")?.as_bool())
            .unwrap_or(false),
        final_loss: if cancelled {
            tail.final_loss(true)
        } else {
            num("final_loss").or(tail.final_loss(false))
        },
        checkpoint: state::checkpoint_dir(&p.run_dir, LAST_CHECKPOINT),
        best_checkpoint: state::checkpoint_dir(&p.run_dir, BEST_CHECKPOINT),
        best_segm_ap: num("best_segm_ap").or(aps.iter().copied().reduce(f64::max)),
        refit_checkpoint: None,
    };
    reporter.emit(&TrainEvent::Finished {
        iterations: summary.iterations,
        cancelled,
        final_loss: summary.final_loss,
    });
    Ok(summary)
}

/// New rows as events, then changed checkpoints as bundles. A conversion that fails mid-run is
/// noted and tried again when the file next changes; at the `end` it is an error.
fn follow(
    p: &Prepared,
    tail: &mut tail::Tail,
    converter: &mut convert::Converter,
    reporter: &mut Reporter<'_>,
    end: bool,
) -> anyhow::Result<()> {
    for e in tail.poll() {
        reporter.emit(&e);
    }
    let dir = p.run_dir.join(job::TORCHRUN_DIR);
    for (pth, dest) in [
        (job::BEST_PTH, BEST_CHECKPOINT),
        (job::LAST_PTH, LAST_CHECKPOINT),
    ] {
        match converter.update(&dir.join(pth), &p.run_dir.join(dest)) {
            Ok(Some(path)) => reporter.emit(&TrainEvent::CheckpointSaved { path }),
            Ok(None) => {}
            Err(e) if end => return Err(e),
            Err(e) => reporter.note(&format!("could not convert {pth} yet: {e:#}")),
        }
    }
    Ok(())
}

/// `torchrun/done.json`, when the script finished normally.
fn read_done(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(job::DONE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_recipe_spells_out_the_augmentation_and_scales_the_warm_up() {
        let cfg = TrainConfig {
            warmup_iters: 100,
            ..TrainConfig::default()
        };
        assert!(cfg.augment.is_none());
        let mut notes = Vec::new();
        let recipe = job_recipe(&cfg, 3, &mut notes);
        assert_eq!(
            recipe.augment.as_deref(),
            Some(&AugmentConfig::resolve(&cfg))
        );
        assert_eq!(recipe.warmup_iters, 34);
        assert_eq!(notes.len(), 1);
        let one = job_recipe(&cfg, 1, &mut Vec::new());
        assert_eq!(one.warmup_iters, 100);
    }
}
