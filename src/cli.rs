//! The headless command line: every job the GUI can run, without a window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cancel::CancelToken;
use crate::dataset::export::{self, ExportFormat};
use crate::dataset::formats::{self, Format};
use crate::dataset::store::{ImportProgress, Project};

/// Mask Studio: Open Images classes → reviewed masks → Mask R-CNN → predictions.
///
/// With no subcommand the studio window opens.
#[derive(Debug, Parser)]
#[command(name = "maskstudio", version, about, long_about = None)]
pub struct Cli {
    /// What to do; none opens the studio window.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Headless jobs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the studio window (the default).
    Gui {
        /// A project folder to open at start.
        #[arg(long)]
        project: Option<PathBuf>,
        /// The tab to start on: classes, download, review, train or predict.
        #[arg(long, value_parser = ["classes", "download", "review", "train", "predict"])]
        tab: Option<String>,
    },
    /// Import a dataset into a project (created if needed).
    Import {
        /// Project folder.
        #[arg(long)]
        project: PathBuf,
        /// Dataset file or folder (COCO JSON, VIA JSON, YOLO-seg folder, mask-PNG folders).
        path: PathBuf,
        /// Format; detected from the path when omitted.
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Export a project's images and masks, a trained model bundle (--run), or a model as one
    /// ONNX / TorchScript file (--run or --model with --format onnx|torchscript).
    Export {
        /// Project folder.
        #[arg(long, required_unless_present_any = ["run", "model"], conflicts_with_all = ["run", "model"])]
        project: Option<PathBuf>,
        /// coco | coco-polygons | voc | yolo-seg | png-masks | oid-layout (`<class>/images` +
        /// `<class>/segmentations/{ImageID}_{MID}_{BoxID}.png`, the classic downloader layout);
        /// with --run or --model: onnx | torchscript (one file, made by torchvision in the
        /// reference Python venv) or bundle (--run only: the bundle folder, the default)
        #[arg(long, value_parser = parse_export_format, required_unless_present = "run")]
        format: Option<CliExportFormat>,
        /// A training run folder: writes the bundle of its refit (else best, else last)
        /// checkpoint (model.safetensors, labels.txt, model.json) plus metrics.json to --out,
        /// or with --format onnx|torchscript that bundle as one file.
        #[arg(long, conflicts_with = "split")]
        run: Option<PathBuf>,
        /// A model bundle folder to export as --format onnx|torchscript.
        #[arg(long, conflicts_with_all = ["run", "split"])]
        model: Option<PathBuf>,
        /// Output folder (created); the file to write for onnx / torchscript.
        #[arg(long)]
        out: PathBuf,
        /// Only this split (train, validation, test).
        #[arg(long)]
        split: Option<String>,
    },
    /// Show libtorch, CUDA, cache folder and pretrained-weights status.
    Doctor,
    /// Pretrained weights: without arguments, fetch the default ones (ImageNet backbones) into
    /// the cache and list every catalogue file as present/absent with where to get it; with
    /// names, fetch those; with --add FILE, verify a file you downloaded and copy it into the
    /// weights folder (sha256-verified throughout).
    Weights {
        /// Names from the catalogue to fetch (also optional ones such as
        /// maskrcnn_resnet50_fpn_coco, from their download URL).
        #[arg(conflicts_with = "add")]
        names: Vec<String>,
        /// A weights file you downloaded (its published name kept, e.g.
        /// maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth): verified, then copied into the weights folder.
        #[arg(long, value_name = "FILE")]
        add: Option<PathBuf>,
    },
    /// Benchmarks against the reference implementation, run side by side (prints ratios).
    Bench {
        /// Which benchmark: masks (RLE/polygons vs pycocotools), coco-eval (COCOeval vs pycocotools).
        #[arg(value_parser = ["masks", "coco-eval"])]
        name: String,
    },
    /// Predict instance masks with a model bundle; writes COCO results JSON (and overlays).
    Predict {
        /// Model bundle folder (model.safetensors, labels.txt, model.json).
        #[arg(long)]
        model: PathBuf,
        /// Minimum detection score (default: the bundle's box_score_thresh).
        #[arg(long)]
        score_thresh: Option<f64>,
        /// auto | cpu | cuda
        #[arg(long, default_value = "auto")]
        device: crate::host::DeviceChoice,
        /// COCO results JSON to write.
        #[arg(long)]
        out_json: PathBuf,
        /// Folder for overlay PNGs.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Image files or folders (searched recursively for .jpg/.jpeg/.png).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Download Open Images classes (images + only the needed instance masks) into a project.
    Download(crate::openimages::cli::DownloadArgs),
    /// List / search the segmentable Open Images classes with counts per split.
    Classes(crate::openimages::cli::ClassesArgs),
    /// Evaluate a model bundle on a project split (COCO AP for masks and boxes, per class).
    Eval {
        /// Model bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Project folder.
        #[arg(long)]
        project: PathBuf,
        /// train | validation | test | all
        #[arg(long, default_value = "validation")]
        split: String,
        /// auto | cpu | cuda
        #[arg(long, default_value = "auto")]
        device: crate::host::DeviceChoice,
        /// Also write the numbers as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Train a Mask R-CNN on a project into a new run folder (`runs/<id>/`).
    Train(crate::train::cli::TrainArgs),
    /// Find likely label errors (missing, spurious, loose, swapped) from out-of-sample
    /// predictions: one model's held-out images (--model) or K fold models (--folds K).
    Audit(crate::eval::audit::cli::AuditArgs),
    /// Rank the images still to label (no masks, or unreviewed) by the model's uncertainty
    /// (horizontal-flip disagreement, entropy breaking ties) and print the queue.
    LabelNext {
        /// Project folder.
        #[arg(long)]
        project: PathBuf,
        /// Model bundle folder.
        #[arg(long)]
        model: PathBuf,
        /// Which images: unlabelled (no instance), unreviewed, or both.
        #[arg(long, default_value = "both")]
        only: crate::eval::label_next::Candidates,
        /// Print (and write) only the first N of the ranking.
        #[arg(long)]
        limit: Option<usize>,
        /// Also write the ranking as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// auto | cpu | cuda
        #[arg(long, default_value = "auto")]
        device: crate::host::DeviceChoice,
    },
    /// Print a project's classes, counts per split, edited and unreviewed counts.
    Info {
        /// Project folder.
        project: PathBuf,
        /// Also print box statistics and the model configuration they suggest (anchor coverage
        /// before/after) for the default training preset.
        #[arg(long)]
        stats: bool,
    },
    /// Create the offline sample project (24 generated scenes, 3 shape classes, exact masks).
    Sample {
        /// Project folder to create (must not hold a project yet).
        #[arg(long)]
        project: PathBuf,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse::<Format>().map_err(|e| e.to_string())
}

/// An export format of `maskstudio export`.
#[derive(Debug, Clone, Copy)]
pub enum CliExportFormat {
    /// A dataset format of [`crate::dataset::export`].
    Dataset(ExportFormat),
    /// The classic Open Images downloader layout ([`crate::openimages::export_seed_layout`]).
    OidLayout,
    /// A model as one deployment file ([`crate::train::deploy`]).
    Deploy(crate::train::deploy::DeployFormat),
    /// A run's model bundle folder ([`crate::train::export::export_run`]).
    Bundle,
}

fn parse_export_format(s: &str) -> Result<CliExportFormat, String> {
    match s {
        "oid-layout" => return Ok(CliExportFormat::OidLayout),
        "bundle" => return Ok(CliExportFormat::Bundle),
        _ => {}
    }
    if let Ok(f) = s.parse::<crate::train::deploy::DeployFormat>() {
        return Ok(CliExportFormat::Deploy(f));
    }
    s.parse::<ExportFormat>()
        .map(CliExportFormat::Dataset)
        .map_err(|e| format!("{e}, oid-layout, or (a model) onnx, torchscript, bundle"))
}

/// Runs a headless command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gui { .. } => anyhow::bail!("the GUI is started by main, not by cli::run"),
        Command::Import {
            project,
            path,
            format,
        } => import(&project, &path, format),
        Command::Export {
            project,
            format,
            out,
            split,
            run,
            model,
        } => match (run, model, project, format) {
            (Some(run), None, _, Some(CliExportFormat::Deploy(format))) => {
                deploy_export(&crate::train::deploy::run_bundle(&run)?, format, &out)
            }
            (None, Some(model), _, Some(CliExportFormat::Deploy(format))) => {
                deploy_export(&model, format, &out)
            }
            (Some(_), _, _, Some(CliExportFormat::Dataset(_) | CliExportFormat::OidLayout))
            | (None, Some(_), _, Some(_)) => anyhow::bail!(
                "--run and --model export a model: use --format onnx or torchscript (or, with \
                 --run, bundle / no --format for the bundle folder)"
            ),
            (None, None, Some(_), Some(CliExportFormat::Deploy(_) | CliExportFormat::Bundle)) => {
                anyhow::bail!("onnx, torchscript and bundle export a model: use --run or --model")
            }
            (Some(run), _, _, _) => {
                let done = crate::train::export::export_run(&run, &out)
                    .with_context(|| format!("exporting run {run:?}"))?;
                println!(
                    "exported the {} checkpoint of {} to {} (best validation mask AP {})",
                    done.checkpoint,
                    run.display(),
                    done.out.display(),
                    done.best_segm_ap
                        .map_or_else(|| "-".to_owned(), |a| format!("{a:.4}"))
                );
                Ok(())
            }
            (None, None, Some(project), Some(format)) => {
                export(&project, format, &out, split.as_deref())
            }
            _ => {
                anyhow::bail!("export needs --project and --format, --run, or --model and --format")
            }
        },
        Command::Info { project, stats } => {
            info(&project)?;
            if stats { info_stats(&project) } else { Ok(()) }
        }
        Command::Sample { project } => sample(&project),
        Command::Train(args) => crate::train::cli::run(&args),
        Command::Audit(args) => crate::eval::audit::cli::run(&args),
        Command::LabelNext {
            project,
            model,
            only,
            limit,
            json,
            device,
        } => label_next(&project, &model, only, limit, json.as_deref(), device),
        Command::Doctor => {
            println!("{}", crate::host::doctor_report());
            Ok(())
        }
        Command::Weights { names, add } => match add {
            Some(file) => weights_add(&file),
            None => weights(&names),
        },
        Command::Eval {
            model,
            project,
            split,
            device,
            json,
        } => eval(&model, &project, &split, device, json.as_deref()),
        Command::Download(args) => {
            let cache = crate::host::cache_dir().join("openimages");
            crate::openimages::cli::run_download(&args, cache, &CancelToken::default()).map(|_| ())
        }
        Command::Classes(args) => {
            let cache = crate::host::cache_dir().join("openimages");
            crate::openimages::cli::run_classes(&args, cache, &CancelToken::default())
        }
        Command::Predict {
            model,
            score_thresh,
            device,
            out_json,
            out_dir,
            inputs,
        } => predict(
            &model,
            score_thresh,
            device,
            &out_json,
            out_dir.as_deref(),
            &inputs,
        ),
        Command::Bench { name } => match name.as_str() {
            "masks" => crate::bench::masks::run(),
            "coco-eval" => crate::bench::coco_eval::run(),
            other => anyhow::bail!("unknown benchmark {other:?}"),
        },
    }
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn import(project_dir: &Path, path: &Path, format: Option<Format>) -> anyhow::Result<()> {
    let format = match format {
        Some(format) => format,
        None => {
            formats::detect(path).with_context(|| format!("detecting the format of {path:?}"))?
        }
    };
    eprintln!("reading {path:?} as {format}");
    let set = formats::read(path, format).with_context(|| format!("reading {path:?}"))?;
    let mut project = Project::create_or_open(project_dir)
        .with_context(|| format!("opening project {project_dir:?}"))?;
    let bar = progress_bar(set.images.len() as u64, "images");
    let cancel = CancelToken::default();
    let summary = project
        .import(&set, path, &cancel, &mut |p: ImportProgress| {
            bar.set_position(p.done as u64)
        })
        .with_context(|| format!("importing {path:?} into {project_dir:?}"))?;
    bar.finish_and_clear();
    println!(
        "imported {} images ({} already present), {} instances, {} new classes into {}",
        summary.images_added,
        summary.images_skipped,
        summary.instances_added,
        summary.classes_added,
        project_dir.display()
    );
    Ok(())
}

fn export(
    project_dir: &Path,
    format: CliExportFormat,
    out: &Path,
    split: Option<&str>,
) -> anyhow::Result<()> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let format = match format {
        CliExportFormat::Dataset(format) => format,
        CliExportFormat::Deploy(_) | CliExportFormat::Bundle => {
            anyhow::bail!("onnx, torchscript and bundle export a model: use --run or --model")
        }
        CliExportFormat::OidLayout => {
            anyhow::ensure!(split.is_none(), "--split is not supported with oid-layout");
            let (images, masks) = crate::openimages::export_seed_layout(&project, out)
                .with_context(|| format!("exporting to {out:?}"))?;
            println!(
                "wrote {images} images and {masks} masks to {}",
                out.display()
            );
            return Ok(());
        }
    };
    let set = project.export_set(split)?;
    let summary =
        export::write(&set, format, out).with_context(|| format!("exporting to {out:?}"))?;
    println!("{summary}");
    Ok(())
}

/// `export --format onnx|torchscript`: one opaque step in the reference venv, shown as a
/// spinner with the elapsed time.
fn deploy_export(
    bundle: &Path,
    format: crate::train::deploy::DeployFormat,
    out: &Path,
) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!(
        "exporting {} as {} with torchvision",
        bundle.display(),
        format.label()
    ));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let done = crate::train::deploy::export_bundle(bundle, format, out, &CancelToken::default());
    spinner.finish_and_clear();
    let done = done?;
    println!(
        "wrote {} ({:.1} MB, {}{}) from {} in {:.1} s",
        done.out.display(),
        done.bytes as f64 / 1e6,
        format.label(),
        done.opset
            .map_or_else(String::new, |o| format!(" opset {o}")),
        bundle.display(),
        done.seconds
    );
    Ok(())
}

fn info(project_dir: &Path) -> anyhow::Result<()> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let info = project.info()?;
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "project {}", project_dir.display())?;
    writeln!(out, "\nsplit        images  instances")?;
    let (mut images, mut instances) = (0, 0);
    for (split, counts) in &info.splits {
        writeln!(
            out,
            "{split:<12} {:>6}  {:>9}",
            counts.images, counts.instances
        )?;
        images += counts.images;
        instances += counts.instances;
    }
    writeln!(out, "{:<12} {images:>6}  {instances:>9}", "total")?;
    writeln!(
        out,
        "\nclass                          mid          instances"
    )?;
    for (class, count) in &info.classes {
        writeln!(
            out,
            "{:<30} {:<12} {count:>9}",
            class.name,
            class.mid.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out, "\nedited instances: {}", info.edited_instances)?;
    writeln!(out, "unreviewed images: {}", info.unreviewed_images)?;
    writeln!(out, "image sources: {}", joined_counts(&info.sources))?;
    writeln!(out, "review status: {}", joined_counts(&info.review))?;
    print_stdout(&out)
}

/// `"k1 v1, k2 v2"`: a listing of names and their counts on one line.
fn joined_counts<K: std::fmt::Display, V: std::fmt::Display>(
    counts: impl IntoIterator<Item = (K, V)>,
) -> String {
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    parts.join(", ")
}

/// `info --stats`: dataset statistics and the proposed overrides of the default preset's model.
fn info_stats(project_dir: &Path) -> anyhow::Result<()> {
    use crate::train::autoconfig::{ANCHOR_IOU, AutoConfig};
    use std::fmt::Write as _;
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let stats = crate::dataset::stats::DatasetStats::from_project(&project, None)?;
    let classes = i64::try_from(project.classes()?.len()).unwrap_or(i64::MAX);
    let train = crate::train::TrainConfig::default();
    let base = train.preset_model_config(classes.saturating_add(1).max(2));
    let auto = AutoConfig::from_stats(&stats, &base);
    let mut out = String::new();
    writeln!(
        out,
        "\ndataset statistics (rejected images and crowd regions left out)"
    )?;
    writeln!(
        out,
        "images {}  instances {}  zero-area {}  images without instances {:.1}%",
        stats.images,
        stats.instances,
        stats.zero_area,
        100.0 * stats.empty_fraction
    )?;
    if let Some(p) = stats.per_image {
        writeln!(
            out,
            "instances/image   mean {:.2}  p50 {:.1}  p99 {:.1}  max {:.0}",
            p.mean, p.p50, p.p99, p.max
        )?;
    }
    if let (Some(s), Some(l)) = (stats.short_side_p50, stats.long_side_p50) {
        writeln!(out, "image size p50    short {s:.0}  long {l:.0}")?;
    }
    if let Some(q) = stats.object_size {
        writeln!(
            out,
            "object size (px)  min {:.1}  p1 {:.1}  p5 {:.1}  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
            q.min, q.p1, q.p5, q.p50, q.p95, q.p99, q.max
        )?;
    }
    if let Some(a) = stats.aspect {
        writeln!(
            out,
            "aspect h/w        p5 {:.2}  p50 {:.2}  p95 {:.2}",
            a.p5, a.p50, a.p95
        )?;
    }
    let preset = serde_json::to_value(train.preset)?;
    writeln!(
        out,
        "\nproposed model config (base: {} preset)",
        preset.as_str().unwrap_or("default")
    )?;
    writeln!(
        out,
        "{:<26} {:<28} {:<28} reason",
        "key", "base", "proposed"
    )?;
    for o in &auto.overrides {
        writeln!(
            out,
            "{:<26} {:<28} {:<28} {}",
            o.key,
            o.base.to_string(),
            o.value.to_string(),
            o.reason
        )?;
    }
    if auto.overrides.is_empty() {
        writeln!(out, "(no changes)")?;
    }
    for kept in &auto.kept {
        writeln!(out, "kept: {kept}")?;
    }
    let pct = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", 100.0 * c));
    writeln!(
        out,
        "\nanchor coverage (boxes with a centred anchor IoU >= {ANCHOR_IOU}): before {} after {}",
        pct(auto.coverage_before),
        pct(auto.coverage_after)
    )?;
    print_stdout(&out)
}

fn weights(names: &[String]) -> anyhow::Result<()> {
    use crate::host::{PRETRAINED, PretrainedWeights};
    if names.is_empty() {
        return weights_list();
    }
    let selected: Vec<&PretrainedWeights> = names
        .iter()
        .map(|n| {
            crate::host::pretrained(n).ok_or_else(|| {
                let known: Vec<&str> = PRETRAINED.iter().map(|w| w.name).collect();
                anyhow::anyhow!("unknown weights {n:?}; known: {}", known.join(", "))
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for w in selected {
        let (path, source) = crate::host::fetch_pretrained(w)?;
        println!("{}: {} ({source:?}, sha256 ok)", w.name, path.display());
    }
    Ok(())
}

/// `maskstudio weights`: fetches the default entries (as setup and CI expect), then lists every
/// entry as present or absent with where to get it. Fails when a default entry could not be
/// fetched; an absent optional file is not an error.
fn weights_list() -> anyhow::Result<()> {
    use crate::host::PRETRAINED;
    let mut failed = Vec::new();
    println!("weights folder: {}", crate::host::weights_dir().display());
    for w in PRETRAINED {
        let path = crate::host::weights_path(w);
        let state = if w.fetch_by_default {
            match crate::host::fetch_pretrained(w) {
                Ok((_, source)) => format!("present (sha256 ok, {source:?})"),
                Err(e) => {
                    failed.push(format!("{}: {e:#}", w.name));
                    "absent (could not fetch it)".to_owned()
                }
            }
        } else if path.is_file() {
            match crate::host::verify_file(w, &path) {
                Ok(()) => "present (sha256 ok)".to_owned(),
                Err(e) => format!("present but not usable: {e:#}"),
            }
        } else {
            "absent".to_owned()
        };
        println!("{} ({}): {state}", w.name, w.file_name);
        println!("    for: {}", w.used_for);
        if !state.starts_with("present (") {
            println!("    get it: {}", crate::host::where_to_get(w));
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

/// `maskstudio weights --add FILE`.
fn weights_add(file: &Path) -> anyhow::Result<()> {
    let (w, dest) = crate::host::add_weights(file)?;
    println!(
        "{}: {} verified ({}) and copied to {}",
        w.name,
        file.display(),
        w.checksum.describe(),
        dest.display()
    );
    Ok(())
}

fn predict(
    bundle: &Path,
    score_thresh: Option<f64>,
    device: crate::host::DeviceChoice,
    out_json: &Path,
    out_dir: Option<&Path>,
    inputs: &[PathBuf],
) -> anyhow::Result<()> {
    use crate::infer::export::{ImageFiles, RunWriter, output_names};
    use crate::infer::pipeline::DecodeAhead;
    use crate::infer::{Predictor, collect_images};
    let device = crate::host::device(device)?;
    let predictor = Predictor::load(bundle, device, score_thresh)?;
    let images = collect_images(inputs)?;
    anyhow::ensure!(!images.is_empty(), "no images found in {inputs:?}");
    // Outputs are named by path relative to the inputs' common folder: `a/x.jpg` and
    // `b/x.jpg` (or `x.jpg` and `x.png`) never overwrite each other. The Predict tab's export
    // writes through the same `RunWriter` (it adds mask PNGs).
    let names = output_names(&images);
    let bar = progress_bar(images.len() as u64, "images");
    let files = ImageFiles {
        overlays: true,
        masks: false,
    };
    let mut results = RunWriter::new(out_dir, files, predictor.labels())?;
    let mut failures = Vec::new();
    // The next images are decoded and prepared on `predict-decode` while the model runs here;
    // pixels are kept only for overlays.
    let mut decoder = DecodeAhead::spawn(
        "predict-decode",
        images.clone(),
        predictor.prepare_params().clone(),
        out_dir.is_some(),
    )?;
    for name in &names {
        let Some((path, decoded)) = decoder.next_item()? else {
            anyhow::bail!("the predict-decode thread ended early");
        };
        bar.inc(1);
        let outcome = decoded.and_then(|d| {
            let detections = predictor
                .predict_prepared(&d.prepared)
                .with_context(|| format!("{path:?}"))?;
            Ok((d.image, d.size, detections))
        });
        let (image, size, detections) = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                bar.suspend(|| eprintln!("skipped: {e:#}"));
                failures.push(path);
                continue;
            }
        };
        results.add(name, size, image.as_ref(), &detections)?;
    }
    bar.finish_and_clear();
    let detections = results.finish(out_json)?;
    println!(
        "{} detections in {} images written to {} (images: {}){}",
        detections,
        images.len() - failures.len(),
        out_json.display(),
        crate::infer::export::images_file_for(out_json).display(),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; {} images skipped", failures.len())
        }
    );
    anyhow::ensure!(failures.len() < images.len(), "no image could be read");
    Ok(())
}

/// `maskstudio label-next`: the ranked queue as a table (rank, score, entropy, detections of
/// the image / its mirror, labels, image), optionally as JSON.
fn label_next(
    project: &Path,
    bundle: &Path,
    only: crate::eval::label_next::Candidates,
    limit: Option<usize>,
    json: Option<&Path>,
    device: crate::host::DeviceChoice,
) -> anyhow::Result<()> {
    use crate::eval::label_next::{ranking_json, run};
    let device = crate::host::device(device)?;
    let bar = progress_bar(0, "images");
    let ranking = run(
        bundle,
        project,
        only,
        device,
        &CancelToken::default(),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let shown = limit.unwrap_or(usize::MAX).min(ranking.images.len());
    let mut out = format!(
        "ranked {} images ({}) by flip disagreement{}\n{:>5}  {:>6}  {:>7}  {:>9}  {:>6}  image\n",
        ranking.images.len(),
        only.as_str(),
        if shown < ranking.images.len() {
            format!(", the first {shown} shown")
        } else {
            String::new()
        },
        "rank",
        "score",
        "entropy",
        "dets/mir",
        "labels"
    );
    for (k, r) in ranking.images[..shown].iter().enumerate() {
        out.push_str(&format!(
            "{:>5}  {:>6.3}  {:>7.3}  {:>9}  {:>6}  {}\n",
            k + 1,
            r.score,
            r.entropy,
            format!("{}/{}", r.detections, r.mirrored_detections),
            r.instances,
            r.path.display()
        ));
    }
    for (_, file, why) in &ranking.skipped {
        out.push_str(&format!("skipped {file}: {why}\n"));
    }
    print_stdout(&out)?;
    if let Some(path) = json {
        let value = ranking_json(&ranking, bundle, only, limit);
        crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {path:?}"))?;
    }
    Ok(())
}

fn sample(project_dir: &Path) -> anyhow::Result<()> {
    let bar = progress_bar(100, "sample");
    crate::sample_project::create_sample_project(project_dir, &mut |p| {
        bar.set_position((p * 100.0).round() as u64)
    })?;
    bar.finish_and_clear();
    println!(
        "created the sample project in {} ({} images, classes {})",
        project_dir.display(),
        crate::sample_project::SAMPLE_IMAGES,
        crate::sample_project::SAMPLE_CLASSES.join(", ")
    );
    let quick = crate::sample_project::train_config();
    println!(
        "train it in about 3 minutes on a 2-core CPU (the Train tab's sample recipe):\n  \
         maskstudio train --project {} --image-size {} --epochs {} --batch-size {} --lr {}",
        project_dir.display(),
        quick.resolved_image_size(),
        quick.epochs,
        quick.batch_size,
        quick.lr
    );
    Ok(())
}

/// Writes to stdout; a closed pipe (`maskstudio info P | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn eval(
    bundle: &Path,
    project: &Path,
    split: &str,
    device: crate::host::DeviceChoice,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    let split = match split {
        "all" => None,
        "train" | "validation" | "test" => Some(split),
        other => anyhow::bail!("unknown split {other:?}; use train, validation, test or all"),
    };
    let device = crate::host::device(device)?;
    let bar = progress_bar(0, "images");
    let result = crate::eval::project::run(bundle, project, split, device, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let mut out = String::new();
    for (name, r) in [("segm", &result.segm), ("bbox", &result.bbox)] {
        out.push_str(&format!("\n{name}\n"));
        for line in r.summary_lines() {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("\nclass                          mask AP   box AP\n");
    for ((id, segm_ap), (_, bbox_ap)) in result
        .segm
        .per_class_ap
        .iter()
        .zip(&result.bbox.per_class_ap)
    {
        let name = result.class_names.get(id).map_or("?", String::as_str);
        out.push_str(&format!("{name:<30} {segm_ap:>7.3}  {bbox_ap:>7.3}\n"));
    }
    print_stdout(&out)?;
    if let Some(path) = json {
        let bytes = serde_json::to_vec_pretty(&result.to_json())?;
        crate::fsutil::write_atomic(path, &bytes)?;
    }
    Ok(())
}
