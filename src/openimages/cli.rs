//! `maskstudio download` and `maskstudio classes`: argument structs (clap) and their runners,
//! with one indicatif progress bar per phase.

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cancel::CancelToken;
use crate::dataset::store::Project;

use super::{
    Catalogue, Config, DownloadEvent, DownloadRequest, DownloadSummary, Phase, Split, download,
};

/// Where the data comes from (shared by both commands).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SourceArgs {
    /// Root of the annotation bucket (default: $MASKSTUDIO_OI_GCS_BASE, else
    /// https://storage.googleapis.com/openimages).
    #[arg(long, value_name = "URL")]
    pub gcs_base: Option<String>,
    /// Root of the image mirror (default: $MASKSTUDIO_OI_IMAGES_BASE, else
    /// https://open-images-dataset.s3.amazonaws.com).
    #[arg(long, value_name = "URL")]
    pub images_base: Option<String>,
}

impl SourceArgs {
    fn config(&self, cache_dir: PathBuf) -> Config {
        let mut cfg = Config::new(cache_dir);
        if let Some(u) = &self.gcs_base {
            cfg.gcs_base = u.clone();
        }
        if let Some(u) = &self.images_base {
            cfg.images_base = u.clone();
        }
        cfg
    }
}

/// `maskstudio download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// Project folder (created if missing).
    #[arg(long)]
    pub project: PathBuf,
    /// Comma-separated display names or MIDs ("Hot dog,Pizza"); a class without masks brings
    /// its segmentable subclasses.
    #[arg(long)]
    pub classes: String,
    /// Comma-separated splits: train, validation, test.
    #[arg(long, default_value = "train")]
    pub splits: String,
    /// Images per class and split (default: all).
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Seed of the reproducible shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Take images in ImageID order instead of a seeded shuffle.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Import every mask of each image, not only the requested classes.
    #[arg(long)]
    pub all_instances: bool,
    /// Keep images as stored instead of rotating them (and their masks) upright.
    #[arg(long)]
    pub no_rotate: bool,
    /// Try again images an earlier run found missing or corrupt.
    #[arg(long)]
    pub retry_failed: bool,
    /// Parallel image downloads.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Hosts.
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `maskstudio classes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassesArgs {
    /// Case-insensitive part of a class name (prefix matches first).
    #[arg(long)]
    pub search: Option<String>,
    /// Also index these splits for counts (validation and test are small; train downloads a
    /// 770 MiB CSV). Splits indexed earlier are always shown.
    #[arg(long, default_value = "validation,test")]
    pub splits: String,
    /// Show classes without masks too.
    #[arg(long)]
    pub all: bool,
    /// Download the class files again, replacing the cached (or built-in) catalogue.
    #[arg(long)]
    pub refresh: bool,
    /// Hosts.
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Parses `train,validation`.
pub fn parse_splits(s: &str) -> Result<Vec<Split>, super::Error> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let split: Split = part.parse()?;
        if !out.contains(&split) {
            out.push(split);
        }
    }
    Ok(out)
}

/// Human-readable bytes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Renders download events as one progress bar per phase.
struct Bars {
    bar: RefCell<Option<(Phase, ProgressBar)>>,
}

impl Bars {
    fn new() -> Self {
        Self {
            bar: RefCell::new(None),
        }
    }

    fn style(phase: Phase) -> ProgressStyle {
        let template = match phase {
            Phase::Index | Phase::Metadata | Phase::Catalogue => {
                "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
            }
            Phase::Masks | Phase::Images => "{prefix:>9} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn event(&self, e: DownloadEvent) {
        let mut slot = self.bar.borrow_mut();
        match e {
            DownloadEvent::Phase { phase, message } => {
                if let Some((_, b)) = slot.take() {
                    b.finish();
                }
                let b = ProgressBar::new(0)
                    .with_style(Self::style(phase))
                    .with_prefix(phase.as_str());
                b.println(format!("{}: {message}", phase.as_str()));
                *slot = Some((phase, b));
            }
            DownloadEvent::Progress {
                phase,
                done,
                total,
                bytes,
            } => {
                if slot.as_ref().is_none_or(|(p, _)| *p != phase) {
                    if let Some((_, b)) = slot.take() {
                        b.finish();
                    }
                    let b = ProgressBar::new(0)
                        .with_style(Self::style(phase))
                        .with_prefix(phase.as_str());
                    *slot = Some((phase, b));
                }
                if let Some((_, b)) = slot.as_ref() {
                    b.set_length(total.max(done));
                    b.set_position(done);
                    if matches!(phase, Phase::Masks | Phase::Images) {
                        b.set_message(human_bytes(bytes));
                    }
                }
            }
            DownloadEvent::Warning(w) => match slot.as_ref() {
                Some((_, b)) => b.println(format!("warning: {w}")),
                None => eprintln!("warning: {w}"),
            },
        }
    }

    fn finish(&self) {
        if let Some((_, b)) = self.bar.borrow_mut().take() {
            b.finish();
        }
    }
}

/// Prints a summary ([`summary_text`]).
pub fn print_summary(s: &DownloadSummary) {
    print!("{}", summary_text(s));
}

/// The summary of a download as lines of text: classes, counts, bytes, and what was left out
/// by reason (at most 20 ids each, escaped as the failures hold them).
pub fn summary_text(s: &DownloadSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let names: Vec<&str> = s.classes.iter().map(|(_, n)| n.as_str()).collect();
    writeln!(out, "classes: {}", names.join(", ")).ok();
    writeln!(
        out,
        "images: {} selected, {} already in the project, {} added; instances added: {}",
        s.selected, s.already_present, s.images_added, s.instances_added
    )
    .ok();
    let b = &s.bytes;
    writeln!(
        out,
        "transferred {}: index {}, metadata {}, masks {} by range reads{}, images {}",
        human_bytes(b.total()),
        human_bytes(b.index_bytes),
        human_bytes(b.metadata_bytes),
        human_bytes(b.mask_range_bytes),
        if b.mask_shard_bytes > 0 {
            format!(" + {} whole shards", human_bytes(b.mask_shard_bytes))
        } else {
            String::new()
        },
        human_bytes(b.image_bytes),
    )
    .ok();
    if b.shard_sizes > 0 {
        writeln!(
            out,
            "mask shards touched: {} (range reads fetched {:.2} % of that)",
            human_bytes(b.shard_sizes),
            100.0 * (b.mask_range_bytes + b.mask_shard_bytes) as f64 / b.shard_sizes as f64
        )
        .ok();
    }
    for (kind, ids) in s.failures_by_kind() {
        let shown: Vec<&str> = ids.iter().take(20).copied().collect();
        let more = if ids.len() > 20 {
            format!(" (+{} more)", ids.len() - 20)
        } else {
            String::new()
        };
        writeln!(
            out,
            "left out, {} ({}): {}{more}",
            kind.as_str(),
            ids.len(),
            shown.join(", ")
        )
        .ok();
    }
    if s.cancelled {
        writeln!(
            out,
            "cancelled: what was committed stays; run the same command again to resume"
        )
        .ok();
    }
    out
}

/// Runs `maskstudio download`; `cache_dir` is the Open Images cache (e.g.
/// `host::cache_dir().join("openimages")`).
pub fn run_download(
    args: &DownloadArgs,
    cache_dir: PathBuf,
    cancel: &CancelToken,
) -> anyhow::Result<DownloadSummary> {
    let mut cfg = args.source.config(cache_dir);
    cfg.workers = args.workers.max(1);
    let req = DownloadRequest {
        classes: args
            .classes
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect(),
        splits: parse_splits(&args.splits)?,
        max_samples: args.max_samples,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        only_matching: !args.all_instances,
        prefer_all_classes: true,
        apply_rotation: !args.no_rotate,
        retry_failed: args.retry_failed,
    };
    let mut project = Project::create_or_open(&args.project)
        .with_context(|| format!("opening project {:?}", args.project))?;
    let bars = Bars::new();
    let summary = download(&req, &mut project, &cfg, cancel, &|e| bars.event(e));
    bars.finish();
    let summary = summary?;
    print_summary(&summary);
    Ok(summary)
}

/// Runs `maskstudio classes`: the segmentable classes (or all with `--all`) matching
/// `--search`, with image/mask counts per indexed split and a size estimate.
pub fn run_classes(
    args: &ClassesArgs,
    cache_dir: PathBuf,
    cancel: &CancelToken,
) -> anyhow::Result<()> {
    let cfg = args.source.config(cache_dir);
    if args.refresh {
        Catalogue::refresh(&cfg, cancel)?;
    }
    let bars = Bars::new();
    let loaded = Catalogue::load_with_counts(&cfg, &parse_splits(&args.splits)?, cancel, &|e| {
        bars.event(e)
    });
    bars.finish();
    let cat = match loaded {
        Ok(cat) => cat,
        Err(super::Error::Cancelled) => return Err(super::Error::Cancelled.into()),
        // Offline: the class list still works (cached or built in); counts need the network.
        Err(e) => {
            eprintln!("counts not updated: {e}");
            Catalogue::cached(&cfg)?
        }
    };
    if let Some(reason) = cat.fallback_reason() {
        eprintln!("Open Images not reachable ({reason}): no counts updated");
    }
    if cat.source() == super::CatalogueSource::BuiltIn {
        eprintln!(
            "class list: built into Mask Studio ({}); `--refresh` downloads it",
            super::builtin::VERSION
        );
    }
    let list: Vec<_> = match &args.search {
        Some(q) => cat.search(q),
        None => cat.classes().iter().collect(),
    };
    let splits = cat.indexed_splits().to_vec();
    let mut header = format!("{:<12} {:<32} {:>4}", "MID", "name", "mask");
    for s in &splits {
        header.push_str(&format!(" {:>18}", format!("{s} img/masks")));
    }
    header.push_str(&format!(" {:>10}", "est. size"));
    println!("{header}");
    let mut shown = 0;
    // Without the mask list (built-in copy, offline) every class is listed, its mask column `?`.
    let masks_known = cat.masks_known();
    for c in list {
        if !c.segmentable && !args.all && masks_known {
            let below = cat.segmentable_descendants(&c.mid);
            if below.is_empty() {
                continue;
            }
            let names: Vec<&str> = below.iter().map(|d| d.name.as_str()).take(6).collect();
            println!(
                "{:<12} {:<32} {:>4} → {}",
                c.mid,
                c.name,
                "-",
                names.join(", ")
            );
            shown += 1;
            continue;
        }
        let mut line = format!(
            "{:<12} {:<32} {:>4}",
            c.mid,
            c.name,
            match (masks_known, c.segmentable) {
                (false, _) => "?",
                (true, true) => "yes",
                (true, false) => "-",
            }
        );
        for s in &splits {
            let n = c.counts.get(s).copied().unwrap_or_default();
            line.push_str(&format!(" {:>18}", format!("{}/{}", n.images, n.masks)));
        }
        let est = cat.estimate(&[c.mid.as_str()], &splits, None);
        line.push_str(&format!(" {:>10}", human_bytes(est.total_bytes())));
        println!("{line}");
        shown += 1;
    }
    if shown == 0 {
        println!("no class matches");
    }
    if !splits.contains(&Split::Train) {
        println!(
            "(train counts appear once train is indexed: `--splits train` downloads its 770 MiB CSV)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_bytes() {
        assert_eq!(
            parse_splits("train, validation,train").unwrap(),
            vec![Split::Train, Split::Validation]
        );
        assert!(parse_splits("training").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
