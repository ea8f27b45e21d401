//! Training throughput of the torchrun engine (torchvision under DDP, gloo on the CPU) with 1 and
//! 2 processes against the in-process trainer, on the same recipe.
//!
//! The sample project (18 training images, 320×240 scenes), 224 px, 2 epochs, batch 2 per
//! process, no validation, CPU. Images/s is training images × epochs over the epochs' step time
//! (`epochs.csv`'s `seconds`: the steps only, as each engine measures them); "wall" is the whole
//! call: preparation, torchrun's start-up and the conversion of checkpoints included. With 2
//! processes the global batch is 4 (the contract's per-process batch); a last row with batch 1
//! per process keeps the in-process trainer's global batch of 2. Threads: the in-process trainer
//! uses libtorch's default (all cores), each torchrun process cores / processes.
//!
//! Run: `cargo bench --bench torchrun [-- --size 224 --epochs 2 --batch 2]`; every flag also
//! reads `BENCH_<NAME>`. Needs torch 2.13 and torchvision 0.28 in `maskstudio::host::python()`.

mod common;

use std::path::Path;
use std::time::Instant;

use common::num;
use maskstudio::host::DeviceChoice;
use maskstudio::train::torchrun::{self, TorchrunOptions};
use maskstudio::train::{self, NullObserver, TrainConfig, TrainControl};

/// One measured configuration.
struct Row {
    engine: String,
    processes: usize,
    global_batch: usize,
    images_per_sec: f64,
    wall: f64,
    final_loss: Option<f64>,
}

/// Training images × epochs over the summed step seconds of the run's `epochs.csv`.
fn images_per_sec(run_dir: &Path, train_images: usize) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(run_dir.join("epochs.csv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "seconds")
        .ok_or_else(|| anyhow::anyhow!("{run_dir:?}/epochs.csv has no seconds column"))?;
    let (mut epochs, mut seconds) = (0usize, 0.0f64);
    for l in lines.filter(|l| !l.trim().is_empty()) {
        seconds += l.split(',').nth(col).unwrap_or("nan").parse::<f64>()?;
        epochs += 1;
    }
    Ok((train_images * epochs) as f64 / seconds)
}

fn main() -> anyhow::Result<()> {
    let size: u32 = num("size", "224")?;
    let epochs: usize = num("epochs", "2")?;
    let batch: usize = num("batch", "2")?;
    let python = maskstudio::host::python();
    if !python.is_absolute() || !python.exists() {
        eprintln!("SKIP: no torch venv python at {python:?} (scripts/setup-venv.sh installs it)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("sample");
    maskstudio::sample_project::create_sample_project(&project, &mut |_| {})?;
    let cfg = TrainConfig {
        epochs,
        batch_size: batch,
        image_size: Some(size),
        device: DeviceChoice::Cpu,
        eval_every: 0,
        seed: 0,
        ..TrainConfig::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "torchrun bench: sample project (18 training images), {size} px, {epochs} epochs, batch {batch} per process, {cores} cores"
    );
    let runs = dir.path().join("runs");
    let control = TrainControl::default();
    let mut rows = Vec::new();

    let t = Instant::now();
    let s = train::train_with(&project, &runs, &cfg, &control, &mut NullObserver)?;
    rows.push(Row {
        engine: "in-process".into(),
        processes: 1,
        global_batch: batch,
        images_per_sec: images_per_sec(&s.run_dir, 18)?,
        wall: t.elapsed().as_secs_f64(),
        final_loss: s.final_loss,
    });
    for (processes, per_process) in [(1, batch), (2, batch), (2, (batch / 2).max(1))] {
        let opts = TorchrunOptions {
            nproc_per_node: processes,
            ..TorchrunOptions::default()
        };
        let cfg = TrainConfig {
            batch_size: per_process,
            ..cfg.clone()
        };
        let t = Instant::now();
        let s =
            torchrun::train_torchrun(&project, &runs, &cfg, &opts, &control, &mut NullObserver)?;
        rows.push(Row {
            engine: "torchrun".into(),
            processes,
            global_batch: per_process * processes,
            images_per_sec: images_per_sec(&s.run_dir, 18)?,
            wall: t.elapsed().as_secs_f64(),
            final_loss: s.final_loss,
        });
    }

    let base = rows[0].images_per_sec;
    println!(
        "{:<11} {:>9} {:>12} {:>9} {:>10} {:>8} {:>10}",
        "engine", "processes", "global batch", "images/s", "vs ours", "wall s", "final loss"
    );
    for r in &rows {
        println!(
            "{:<11} {:>9} {:>12} {:>9.2} {:>9.2}x {:>8.1} {:>10}",
            r.engine,
            r.processes,
            r.global_batch,
            r.images_per_sec,
            r.images_per_sec / base,
            r.wall,
            r.final_loss
                .map_or_else(|| "-".into(), |l| format!("{l:.4}"))
        );
    }
    Ok(())
}
