//! `maskstudio audit`: a label-error audit from the command line, with one model (`--model`)
//! or K fold models (`--folds K`, the `train` recipe flags), progress bars, the findings
//! stored in the project, `audit.json` written and the top findings printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::AuditParams;
use super::kfold::{KFoldRequest, audit_kfold, estimate_kfold};
use super::run::{AuditOutcome, AuditProgress, FoldState, audit_with_model};
use crate::cancel::CancelToken;
use crate::host::DeviceChoice;
use crate::train::TrainEvent;
use crate::train::cli::TrainArgs;
use crate::train::config::{Preset, TrainConfig};

/// Arguments of `maskstudio audit`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("predictions")
        .required(true)
        .args(["model", "folds", "resume"])
))]
pub struct AuditArgs {
    /// Project folder.
    #[arg(long)]
    pub project: PathBuf,
    /// A model bundle: a run's best/last checkpoint audits only that run's validation images; a
    /// bundle from elsewhere audits --split (default all images).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Train K models on K−1 folds each and let each predict the fold it did not see.
    #[arg(long)]
    pub folds: Option<usize>,
    /// Continue the k-fold audit in this folder (`<project>/audits/kfold-…`); without it an
    /// unfinished one of the same request continues by itself.
    #[arg(long, conflicts_with_all = ["model", "folds"])]
    pub resume: Option<PathBuf>,
    /// With --folds: cpu-fast | quality.
    #[arg(long)]
    pub preset: Option<Preset>,
    /// With --folds: a training config JSON, as for `train`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --folds: epochs per fold.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// With --folds: images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// With --folds: longer image side in pixels.
    #[arg(long)]
    pub image_size: Option<u32>,
    /// With --folds: peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// With --folds: seed of the folds, the training order and the initial weights.
    #[arg(long)]
    pub seed: Option<u64>,
    /// With --folds: stop each fold after this many steps.
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// With --folds: keep the preset's model (no dataset-derived input size or anchors).
    #[arg(long)]
    pub no_auto_config: bool,
    /// train | validation | test | all (default: all with --model, train + validation with
    /// --folds).
    #[arg(long)]
    pub split: Option<String>,
    /// Predictions scoring below this are ignored.
    #[arg(long, default_value_t = AuditParams::default().min_score)]
    pub min_score: f32,
    /// auto | cpu | cuda (training and prediction).
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// The findings as JSON (audit id, model, mode, out-of-sample statement, counts per kind,
    /// findings sorted by image score then score).
    #[arg(long)]
    pub out: PathBuf,
    /// How many findings to print.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Also draw the `--top` highest-scoring findings as a contact sheet PNG at this path.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
}

/// `maskstudio train`'s arguments, to build the folds' recipe exactly as `train` would.
#[derive(clap::Parser)]
struct TrainCli {
    #[command(flatten)]
    args: TrainArgs,
}

impl AuditArgs {
    /// The recipe flags given, as `train` spells them.
    fn recipe_flags(&self) -> Vec<(&'static str, String)> {
        let mut flags = Vec::new();
        let preset = self.preset.map(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        let given: [(&'static str, Option<String>); 8] = [
            ("--preset", preset),
            (
                "--config",
                self.config.as_ref().map(|p| p.display().to_string()),
            ),
            ("--epochs", self.epochs.map(|v| v.to_string())),
            ("--batch-size", self.batch_size.map(|v| v.to_string())),
            ("--image-size", self.image_size.map(|v| v.to_string())),
            ("--lr", self.lr.map(|v| v.to_string())),
            ("--seed", self.seed.map(|v| v.to_string())),
            ("--max-iters", self.max_iters.map(|v| v.to_string())),
        ];
        for (flag, value) in given {
            if let Some(v) = value {
                flags.push((flag, v));
            }
        }
        flags
    }

    /// The folds' recipe: `train`'s from the same flags (its defaults: auto-configuration on,
    /// refit off), on `--device`.
    pub fn recipe(&self) -> anyhow::Result<TrainConfig> {
        let mut argv = vec![
            "train".to_owned(),
            "--project".to_owned(),
            self.project.display().to_string(),
        ];
        for (flag, value) in self.recipe_flags() {
            argv.push(flag.to_owned());
            argv.push(value);
        }
        if self.no_auto_config {
            argv.push("--no-auto-config".to_owned());
        }
        let parsed = TrainCli::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cfg = parsed.args.to_config()?;
        cfg.device = self.device;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the flags before any work: the split's name, the score's range, recipe flags only
    /// with --folds, and that --out can be written (its folder exists).
    fn check(&self) -> anyhow::Result<Option<String>> {
        let split = match self.split.as_deref() {
            None => None,
            Some(s @ ("train" | "validation" | "test" | "all")) => Some(s.to_owned()),
            Some(other) => {
                anyhow::bail!("--split {other:?}: use train, validation, test or all")
            }
        };
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_score),
            "--min-score {} is outside [0, 1]",
            self.min_score
        );
        if self.folds.is_none() {
            let mut given: Vec<&str> = self.recipe_flags().iter().map(|f| f.0).collect();
            if self.no_auto_config {
                given.push("--no-auto-config");
            }
            anyhow::ensure!(
                given.is_empty(),
                "{} only go with --folds (a --model audit trains nothing; --resume keeps the \
                 plan's recipe in kfold.json)",
                given.join(", ")
            );
        }
        if let Some(k) = self.folds {
            anyhow::ensure!(k >= 2, "--folds {k}: at least 2 folds");
        }
        if let Some(model) = &self.model {
            anyhow::ensure!(
                crate::train::runs::is_bundle(model),
                "--model {model:?} is not a model bundle (model.json, labels.txt, model.safetensors)"
            );
        }
        anyhow::ensure!(
            self.project.join("project.sqlite").is_file(),
            "--project {:?} is not a Mask Studio project (no project.sqlite)",
            self.project
        );
        let parent = match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        anyhow::ensure!(
            parent.is_dir(),
            "--out {:?}: the folder {parent:?} does not exist",
            self.out
        );
        Ok(split)
    }
}

/// The terminal view of an audit's progress: one bar, reused per phase, and its notes.
struct Bars {
    bar: ProgressBar,
}

impl Bars {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        let style =
            ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    fn on(&mut self, p: &AuditProgress) {
        match p {
            AuditProgress::Note(text) => self.line(text),
            AuditProgress::Fold {
                fold,
                folds,
                state,
                train_images,
                held_out,
            } => {
                let how = match state {
                    FoldState::Fresh => "training".to_owned(),
                    FoldState::Resumed { step, total } => {
                        format!("resuming at step {step} of {total}")
                    }
                    FoldState::Trained => "already trained".to_owned(),
                };
                self.line(&format!(
                    "fold {fold}/{folds}: {how} on {train_images} images, holding out {held_out}"
                ));
            }
            AuditProgress::Training { fold, folds, event } => match event {
                TrainEvent::Started {
                    total_iters,
                    run_dir,
                    ..
                } => {
                    self.bar.reset();
                    self.bar.set_length(*total_iters as u64);
                    self.bar.set_message(format!("fold {fold}/{folds} train"));
                    self.line(&format!("  run folder {}", run_dir.display()));
                }
                TrainEvent::Step { iter, total, .. } => {
                    self.bar.set_position(*iter as u64 + 1);
                    self.bar
                        .set_message(format!("fold {fold}/{folds} loss {total:.3}"));
                }
                TrainEvent::Failed { error } => self.line(&format!("fold {fold}: {error}")),
                _ => {}
            },
            AuditProgress::Predicting { fold, done, total } => {
                if *done == 0 {
                    self.bar.reset();
                }
                self.bar.set_length(*total as u64);
                self.bar.set_position(*done as u64);
                self.bar.set_message(match fold {
                    Some((i, k)) => format!("fold {i}/{k} predict"),
                    None => "predict".to_owned(),
                });
            }
        }
    }
}

/// `audit.json`: the outcome with its findings (mask suggestions left out; they are stored in
/// the project).
pub fn outcome_json(outcome: &AuditOutcome) -> serde_json::Value {
    let findings: Vec<serde_json::Value> = outcome
        .findings
        .iter()
        .map(|a| {
            let f = &a.finding;
            serde_json::json!({
                "image": a.image_path,
                "image_id": f.image_id,
                "instance_id": f.instance_id,
                "kind": f.kind,
                "score": f.score,
                "image_score": f.image_score,
                "reason": f.reason,
                "suggested_class": a.suggested_class,
                "suggested_mask": f.suggested_mask.is_some(),
            })
        })
        .collect();
    serde_json::json!({
        "audit_id": outcome.audit_id,
        "model": outcome.model,
        "mode": outcome.mode.as_str(),
        "split": outcome.split,
        "out_of_sample": outcome.out_of_sample,
        "images": outcome.images.len(),
        "unknown_instances": outcome.unknown_instances,
        "ignored_predictions": outcome.ignored_predictions,
        "params": outcome.params,
        "counts": outcome.counts,
        "findings": findings,
    })
}

/// The first `n` findings as a table.
pub fn top_table(outcome: &AuditOutcome, n: usize) -> String {
    let mut out = format!(
        "{:>4} {:>6} {:>6}  {:<8} {:<28} {:>8}  reason\n",
        "rank", "image", "score", "kind", "image file", "instance"
    );
    for (rank, a) in outcome.findings.iter().take(n).enumerate() {
        let f = &a.finding;
        let file: String = if a.image_path.chars().count() > 28 {
            let tail: String = a
                .image_path
                .chars()
                .rev()
                .take(27)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        } else {
            a.image_path.clone()
        };
        out.push_str(&format!(
            "{:>4} {:>6.3} {:>6.3}  {:<8} {:<28} {:>8}  {}\n",
            rank + 1,
            f.image_score,
            f.score,
            f.kind,
            file,
            f.instance_id
                .map_or_else(|| "-".to_owned(), |i| i.to_string()),
            f.reason
        ));
    }
    out
}

/// Runs `maskstudio audit`.
pub fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let split = args.check()?;
    let params = AuditParams {
        min_score: args.min_score,
        ..AuditParams::default()
    };
    let cancel = CancelToken::default();
    let mut bars = Bars::new();
    let outcome = match (&args.model, args.folds, &args.resume) {
        (Some(model), None, None) => audit_with_model(
            &args.project,
            model,
            split.as_deref().filter(|s| *s != "all"),
            args.device,
            &params,
            &cancel,
            &mut |p| bars.on(&p),
        ),
        (None, folds, resume) => {
            let recipe = args.recipe()?;
            let folds = folds.unwrap_or(0);
            if resume.is_none() {
                let eta = estimate_kfold(&args.project, &recipe, folds, split.as_deref())?;
                bars.line(&format!("estimated time: {}", eta.describe()));
            }
            let request = KFoldRequest {
                folds,
                recipe,
                split,
                resume: resume.clone(),
                params,
            };
            audit_kfold(&args.project, &request, &cancel, &mut |p| bars.on(&p))
        }
        _ => Err(anyhow::anyhow!(
            "give one of --model BUNDLE, --folds K or --resume DIR"
        )),
    };
    bars.bar.finish_and_clear();
    let outcome = outcome?;
    let json = serde_json::to_string_pretty(&outcome_json(&outcome))? + "\n";
    write_out(&args.out, json.as_bytes(), outcome.audit_id)?;
    let counts: Vec<String> = outcome
        .counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut text = format!(
        "{}\naudit {} of {} images stored in {}: {}{}\n",
        outcome.out_of_sample,
        outcome.audit_id,
        outcome.images.len(),
        args.project.display(),
        counts.join(", "),
        if outcome.unknown_instances > 0 {
            format!(
                "; {} instances of classes the model does not know left out",
                outcome.unknown_instances
            )
        } else {
            String::new()
        }
    );
    if !outcome.findings.is_empty() {
        text.push('\n');
        text.push_str(&top_table(&outcome, args.top));
    }
    text.push_str(&format!("\nfindings written to {}\n", args.out.display()));
    print!("{text}");
    if let Some(path) = &args.sheet {
        let project = crate::dataset::store::Project::open(&args.project)
            .with_context(|| format!("opening project {:?}", args.project))?;
        let opts = super::sheet::SheetOptions {
            top: args.top,
            ..super::sheet::SheetOptions::default()
        };
        let drawn = super::sheet::write_sheet(&project, Some(outcome.audit_id), &opts, path)?;
        println!(
            "contact sheet of the top {} findings: {}",
            drawn.len(),
            path.display()
        );
    }
    Ok(())
}

/// Writes `audit.json`; an error names the file and says the audit itself is stored.
fn write_out(path: &Path, bytes: &[u8], audit_id: i64) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, bytes).with_context(|| {
        format!("writing {path:?} (audit {audit_id} is stored in the project all the same)")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AuditArgs,
    }

    fn parse(extra: &[&str]) -> Result<AuditArgs, clap::Error> {
        let mut argv = vec!["audit", "--project", "P", "--out", "a.json"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn the_folds_recipe_is_trains_from_the_same_flags() {
        let args = parse(&[
            "--folds",
            "3",
            "--epochs",
            "2",
            "--image-size",
            "128",
            "--seed",
            "9",
            "--preset",
            "cpu-fast",
            "--device",
            "cpu",
        ])
        .unwrap();
        let cfg = args.recipe().unwrap();
        assert_eq!(
            (cfg.epochs, cfg.image_size, cfg.seed, cfg.preset, cfg.device),
            (2, Some(128), 9, Preset::CpuFast, DeviceChoice::Cpu)
        );
        // `train`'s CLI defaults: auto-configuration on, epochs marked as the user's.
        assert!(cfg.auto_config);
        assert!(cfg.is_user_set("epochs"));
        let args = parse(&["--folds", "3", "--no-auto-config"]).unwrap();
        assert!(!args.recipe().unwrap().auto_config);
    }

    #[test]
    fn exactly_one_source_of_predictions() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--model", "m", "--resume", "d"]).is_err());
        assert!(parse(&["--model", "m"]).is_ok());
        // Recipe flags without --folds are refused by the check, naming them.
        let args = parse(&["--model", "m", "--epochs", "3"]).unwrap();
        let err = args.check().unwrap_err().to_string();
        assert!(err.contains("--epochs") && err.contains("--folds"), "{err}");
        let args = parse(&["--folds", "3", "--split", "everything"]).unwrap();
        let err = args.check().unwrap_err().to_string();
        assert!(err.contains("everything"), "{err}");
    }
}
