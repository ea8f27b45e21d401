//! Open Images acquisition: the class catalogue, the segmentation index, mask range reads from
//! the ZIP shards, parallel image downloads, and the import into a project.
//!
//! Layout and formats follow `docs/openimages.md` (the real hosts: the GCS bucket for
//! annotations and mask shards, the CVDF S3 mirror for images). Everything downloaded is kept
//! under one cache folder ([`Config::cache_dir`]):
//!
//! ```text
//! <cache>/index.sqlite                      classes, hierarchy, per-class/per-image mask index
//! <cache>/files/<path below gcs_base>       CSV/TXT/JSON files (resumable `.part` downloads)
//! <cache>/shards/<split>/<split>-masks-h.*  cached central directories (and whole shards when
//!                                           the server refuses Range requests)
//! <cache>/staging/<split>/...               images and masks fetched but not imported yet
//! ```
//!
//! The entry points are [`download`] (one request, imported into a project in batches so an
//! interrupted run resumes), [`Catalogue`] (classes, hierarchy, search, counts, size estimates)
//! and [`export_seed_layout`].

pub mod builtin;
pub mod catalogue;
pub mod cli;
mod config;
mod download;
mod error;
mod http;
mod images;
pub mod index;
mod masks;
mod select;
pub mod zip;

pub use catalogue::{Catalogue, CatalogueSource, ClassCounts, ClassInfo, SizeEstimate};
pub use config::{Config, GCS_BASE_ENV, IMAGES_BASE_ENV};
pub use download::{
    DownloadEvent, DownloadRequest, DownloadSummary, Failure, Phase, Transfer, download,
    export_seed_layout,
};
pub use error::{Error, FailureKind};
pub use index::Index;

/// One of the three Open Images splits (directory names as the hosts spell them).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `train`.
    Train,
    /// `validation` (never `val`).
    Validation,
    /// `test`.
    Test,
}

impl Split {
    /// All splits in the hosts' order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The name used in URLs and in the project (`train`, `validation`, `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// Small integer stored in the index.
    pub(crate) fn code(self) -> i64 {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        }
    }

    /// Average bytes of one CVDF image of this split (561 GB over 1.91 M images, docs §5/§6).
    pub fn avg_image_bytes(self) -> u64 {
        match self {
            Split::Train => 294_300,      // 513 GB / 1,743,042
            Split::Validation => 288_300, // 12 GB / 41,620
            Split::Test => 287_000,       // 36 GB / 125,436
        }
    }

    /// Path of the segmentation CSV below the GCS base.
    pub fn segmentation_csv(self) -> String {
        format!("v5/{}-annotations-object-segmentation.csv", self.as_str())
    }

    /// Path of the image metadata CSV (with `Rotation`) below the GCS base.
    pub fn images_csv(self) -> &'static str {
        match self {
            Split::Train => "2018_04/train/train-images-boxable-with-rotation.csv",
            Split::Validation => "2018_04/validation/validation-images-with-rotation.csv",
            Split::Test => "2018_04/test/test-images-with-rotation.csv",
        }
    }

    /// Path of the mask shard holding the masks of images whose ID starts with `h`.
    pub fn mask_shard(self, h: char) -> String {
        let s = self.as_str();
        format!("v5/{s}-masks/{s}-masks-{}.zip", h.to_ascii_lowercase())
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "validation" | "val" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(Error::InvalidRequest(format!(
                "unknown split {other:?}; use train, validation or test"
            ))),
        }
    }
}

/// Parses a 16-hex-digit Open Images ImageID.
pub(crate) fn parse_image_id(s: &[u8]) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    parse_hex(s)
}

/// Parses lower- or upper-case hex (at most 16 digits).
pub(crate) fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// The canonical 16-digit lower-case form of an ImageID.
pub(crate) fn image_id_str(id: u64) -> String {
    format!("{id:016x}")
}

/// `MaskPath` as the hosts name it: `{ImageID}_{MID without '/'}_{BoxID}.png`.
pub(crate) fn mask_file_name(image: u64, mid: &str, box_id: &str) -> String {
    format!(
        "{}_{}_{}.png",
        image_id_str(image),
        mid.replace('/', ""),
        box_id
    )
}

/// Failure reason of a `MaskPath` that is not a plain Open Images mask name.
pub const UNSAFE_MASK_PATH: &str = "unsafe mask path";

/// Longest `MaskPath` shown in a failure (longer names are cut; all are escaped).
const SHOWN_MASK_PATH_CHARS: usize = 200;

/// Checks a `MaskPath` (from a segmentation CSV, the index, or about to be joined onto the
/// staging folder): it must be one plain file name ([`crate::dataset::paths::safe_file_name`]:
/// no `/`, `\`, NUL or control character, no leading `.`) of the Open Images form
/// `{ImageID}_{LabelName without '/'}_{BoxID}.png` (16 and 8 hex digits; the label part ASCII
/// letters, digits and `_`, e.g. `0a9e4fa5b0806fc2_m0663v_2aa2bf3a.png`). Anything else is
/// refused with the reason, so a mirror's CSV can never name a file outside the staging folder.
pub fn check_mask_name(name: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "MaskPath \"{}\" {why}",
            shown_mask_path(name.as_bytes())
        ))
    };
    // Short reasons: the name itself is shown once, escaped and cut.
    if let Err(e) = crate::dataset::paths::safe_file_name(name) {
        use crate::dataset::paths::PathError;
        return refuse(match e {
            PathError::Empty => "is empty",
            PathError::ControlChar(_) => "contains a control character",
            _ => "is not one plain file name (a separator, a leading '.', or over 255 bytes)",
        });
    }
    let form = "is not an Open Images mask name ({ImageID}_{label}_{BoxID}.png)";
    let Some(stem) = name.strip_suffix(".png") else {
        return refuse(form);
    };
    let b = stem.as_bytes();
    // 16 hex + '_' + at least one label byte + '_' + 8 hex.
    if b.len() < 16 + 1 + 1 + 1 + 8 {
        return refuse(form);
    }
    let (id, rest) = b.split_at(16);
    let (middle, box_id) = rest.split_at(rest.len() - 8);
    let label_ok =
        |l: &[u8]| !l.is_empty() && l.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    let ok = parse_image_id(id).is_some()
        && parse_hex(box_id).is_some()
        && middle.first() == Some(&b'_')
        && middle.last() == Some(&b'_')
        && middle.len() >= 3
        && label_ok(&middle[1..middle.len() - 1]);
    if ok { Ok(()) } else { refuse(form) }
}

/// A `MaskPath` for messages and failure lists: escaped (no control characters reach a terminal
/// or the GUI) and cut to [`SHOWN_MASK_PATH_CHARS`].
pub(crate) fn shown_mask_path(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out: String = text
        .chars()
        .take(SHOWN_MASK_PATH_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > SHOWN_MASK_PATH_CHARS {
        out.push('…');
    }
    out
}
