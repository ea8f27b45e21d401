//! Planted-error benchmark of the label-error audit (issue 18): a model trained on clean
//! generated scenes audits other scenes with seeded errors planted in their labels (10 %
//! dropped, 10 % eroded / dilated / shifted, 5 % swapped class, 5 % spurious blobs), and each
//! error type's ranking is scored against the planted truth — precision at the top N (N =
//! number planted) and AUROC — next to a seeded random order and "smallest area first". See
//! [`maskstudio::bench::audit`] for the definitions.
//!
//! `cargo bench --bench audit [-- --train-images 64 --audit-images 96 --epochs 8 --size 224
//! --seed 0 --device cpu --keep --out report.json]` (each flag also as `BENCH_<NAME>`); the
//! default takes about 10 minutes on a 2-core CPU.

mod common;

use std::time::Instant;

use anyhow::Context as _;
use maskstudio::bench::audit::{BenchSettings, format_table, run};

fn main() -> anyhow::Result<()> {
    let d = BenchSettings::default();
    let s = BenchSettings {
        train_images: common::num("train-images", &d.train_images.to_string())?,
        audit_images: common::num("audit-images", &d.audit_images.to_string())?,
        epochs: common::num("epochs", &d.epochs.to_string())?,
        image_size: common::num("size", &d.image_size.to_string())?,
        seed: common::num("seed", &d.seed.to_string())?,
        device: common::opt("device", "cpu")
            .parse()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?,
    };
    println!(
        "audit bench: {} training scenes, {} audited, {} epochs at {} px, seed {}, device {:?}",
        s.train_images, s.audit_images, s.epochs, s.image_size, s.seed, s.device
    );
    let mut work = tempfile::Builder::new()
        .prefix("maskstudio-audit-bench-")
        .tempdir()?;
    work.disable_cleanup(common::flag("keep"));
    let started = Instant::now();
    let report = run(&s, work.path(), &mut |line| eprintln!("  {line}"))?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "\n{} clean instances → {} labels after planting; model: best validation mask AP {}; \
         training {:.0} s, audit {:.0} s, whole bench {total:.0} s",
        report.clean_instances,
        report.labels,
        report
            .val_mask_ap
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.3}")),
        report.train_seconds,
        report.audit_seconds
    );
    println!(
        "findings stored: {}",
        report
            .findings
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("out of sample: {}", report.out_of_sample);
    println!(
        "\nper error type: precision at N = planted, AUROC (ties 0.5); 'found' = planted errors \
         with a finding of their type"
    );
    print!("{}", format_table(&report.rows));
    if common::flag("keep") {
        println!("kept {}", work.path().display());
    }
    let out = common::opt("out", "");
    if !out.is_empty() {
        let rows: Vec<serde_json::Value> = report
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "type": r.kind.as_str(),
                    "planted": r.planted,
                    "candidates": r.candidates,
                    "found": r.found,
                    "audit": {"precision_at_n": r.audit.precision_at_n, "auroc": r.audit.auroc},
                    "random": {"precision_at_n": r.random.precision_at_n, "auroc": r.random.auroc},
                    "smallest_area": {"precision_at_n": r.smallest.precision_at_n, "auroc": r.smallest.auroc},
                })
            })
            .collect();
        let v = serde_json::json!({
            "train_images": s.train_images,
            "audit_images": s.audit_images,
            "epochs": s.epochs,
            "size": s.image_size,
            "seed": s.seed,
            "val_mask_ap": report.val_mask_ap,
            "train_seconds": report.train_seconds,
            "audit_seconds": report.audit_seconds,
            "seconds": total,
            "rows": rows,
        });
        std::fs::write(&out, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
