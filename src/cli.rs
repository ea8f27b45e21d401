//! The headless command line: every job the GUI can run, without a window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::dataset::export::{self, ExportFormat};
use crate::dataset::formats::{self, Format};
use crate::dataset::store::{CancelToken, ImportProgress, Project};

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
    /// Export a project's images and masks.
    Export {
        /// Project folder.
        #[arg(long)]
        project: PathBuf,
        /// coco | coco-polygons | voc | yolo-seg | png-masks
        #[arg(long, value_parser = parse_export_format)]
        format: ExportFormat,
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Only this split (train, validation, test).
        #[arg(long)]
        split: Option<String>,
    },
    /// Show libtorch, CUDA, cache folder and pretrained-weights status.
    Doctor,
    /// Make sure the pretrained backbone weights are in the cache (sha256-verified).
    Weights {
        /// Names from the catalogue; all when omitted.
        names: Vec<String>,
    },
    /// Print a project's classes, counts per split, edited and unreviewed counts.
    Info {
        /// Project folder.
        project: PathBuf,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse::<Format>().map_err(|e| e.to_string())
}

fn parse_export_format(s: &str) -> Result<ExportFormat, String> {
    s.parse::<ExportFormat>().map_err(|e| e.to_string())
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
        } => export(&project, format, &out, split.as_deref()),
        Command::Info { project } => info(&project),
        Command::Doctor => {
            println!("{}", crate::runtime::doctor_report());
            Ok(())
        }
        Command::Weights { names } => weights(&names),
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
    format: ExportFormat,
    out: &Path,
    split: Option<&str>,
) -> anyhow::Result<()> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let set = project.export_set(split)?;
    let summary =
        export::write(&set, format, out).with_context(|| format!("exporting to {out:?}"))?;
    println!("{summary}");
    Ok(())
}

fn info(project_dir: &Path) -> anyhow::Result<()> {
    let project =
        Project::open(project_dir).with_context(|| format!("opening project {project_dir:?}"))?;
    let info = project.info()?;
    println!("project {}", project_dir.display());
    println!("\nsplit        images  instances");
    let (mut images, mut instances) = (0, 0);
    for (split, counts) in &info.splits {
        println!("{split:<12} {:>6}  {:>9}", counts.images, counts.instances);
        images += counts.images;
        instances += counts.instances;
    }
    println!("{:<12} {images:>6}  {instances:>9}", "total");
    println!("\nclass                          mid          instances");
    for (class, count) in &info.classes {
        println!(
            "{:<30} {:<12} {count:>9}",
            class.name,
            class.mid.as_deref().unwrap_or("-")
        );
    }
    println!("\nedited instances: {}", info.edited_instances);
    println!("unreviewed images: {}", info.unreviewed_images);
    let review: Vec<String> = info
        .review
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("review status: {}", review.join(", "));
    Ok(())
}

fn weights(names: &[String]) -> anyhow::Result<()> {
    let selected: Vec<&crate::runtime::PretrainedWeights> = if names.is_empty() {
        crate::runtime::PRETRAINED.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                crate::runtime::pretrained(n).ok_or_else(|| {
                    let known: Vec<&str> =
                        crate::runtime::PRETRAINED.iter().map(|w| w.name).collect();
                    anyhow::anyhow!("unknown weights {n:?}; known: {}", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    for w in selected {
        let (path, source) = crate::runtime::fetch_pretrained(w)?;
        println!("{}: {} ({source:?}, sha256 ok)", w.name, path.display());
    }
    Ok(())
}
