//! The error type of the Open Images module.

use std::path::PathBuf;

use crate::dataset::store::StoreError;

/// Errors of the Open Images module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status (after retries where retrying made sense).
    #[error("HTTP {status} for {url}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The transfer failed (connection refused or dropped, timeout, short body), after retries.
    #[error("{url}: {message}")]
    Transfer {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// File system error on a named path.
    #[error("{path:?}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cache index (SQLite) failed.
    #[error("Open Images index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The project store refused an import.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A downloaded file is not in the expected format.
    #[error("{file}: {message}")]
    Format {
        /// The file (name or URL).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A ZIP shard could not be read.
    #[error("zip {url}: {message}")]
    Zip {
        /// The shard URL (or local path).
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A class name or MID that is not in the catalogue.
    #[error("unknown class {name:?}{}", suggest(.suggestions))]
    UnknownClass {
        /// What the user typed.
        name: String,
        /// Close matches from the catalogue.
        suggestions: Vec<String>,
    },
    /// A class without segmentations (and without segmentable subclasses).
    #[error(
        "class {0:?} has no segmentation masks in Open Images (not among the 350 mask classes)"
    )]
    NotSegmentable(String),
    /// The request makes no sense (no classes, no splits, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The cancel token was set.
    #[error("cancelled")]
    Cancelled,
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

impl From<crate::fsutil::WriteError> for Error {
    fn from(crate::fsutil::WriteError { path, source }: crate::fsutil::WriteError) -> Self {
        Self::Io { path, source }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Why an image or mask was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum FailureKind {
    /// 403/404 from the image host.
    NotFound,
    /// Retries exhausted (5xx, dropped connections, timeouts).
    Network,
    /// Truncated or undecodable JPEG (never stored).
    CorruptImage,
    /// A mask named in the CSV is not in its shard.
    MaskMissing,
    /// A mask failed its CRC, did not inflate or did not decode.
    MaskCorrupt,
    /// A mask with no foreground pixels at image size (skipped).
    EmptyMask,
    /// A `MaskPath` that is not a plain Open Images mask name (`../x`, `/home/u/x`, ...):
    /// never joined onto a folder, so nothing outside the cache is read, written or deleted.
    UnsafeMaskPath,
    /// The project refused the image.
    Import,
}

impl FailureKind {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not found",
            FailureKind::Network => "network",
            FailureKind::CorruptImage => "corrupt image",
            FailureKind::MaskMissing => "mask missing",
            FailureKind::MaskCorrupt => "mask corrupt",
            FailureKind::EmptyMask => "empty mask",
            FailureKind::UnsafeMaskPath => super::UNSAFE_MASK_PATH,
            FailureKind::Import => "import",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [FailureKind::NotFound, FailureKind::CorruptImage]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}
