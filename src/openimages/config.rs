//! Where the data comes from and how hard the downloader tries.

use std::path::PathBuf;
use std::time::Duration;

/// Environment variable overriding [`Config::gcs_base`].
pub const GCS_BASE_ENV: &str = "MASKSTUDIO_OI_GCS_BASE";
/// Environment variable overriding [`Config::images_base`].
pub const IMAGES_BASE_ENV: &str = "MASKSTUDIO_OI_IMAGES_BASE";

/// Downloader settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the annotation bucket; `v5/...`, `2018_04/...` and `v7/...` lie below it.
    pub gcs_base: String,
    /// Root of the image mirror; `{split}/{ImageID}.jpg` lies below it.
    pub images_base: String,
    /// Cache folder for the index, CSVs, central directories and staged files.
    pub cache_dir: PathBuf,
    /// Parallel image downloads.
    pub workers: usize,
    /// Attempts per request before giving up (5xx, dropped connections, timeouts).
    pub attempts: u32,
    /// First retry delay; doubled after each failed attempt.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for any read of a body.
    pub read_timeout: Duration,
    /// Images per import transaction (a long download commits progressively).
    pub batch_size: usize,
    /// Mask entries closer than this many bytes are fetched in one range request.
    pub coalesce_gap: u64,
    /// Largest coalesced range request, in bytes.
    pub max_range_bytes: u64,
    /// Keep downloaded CSVs after indexing (needed to re-scan image metadata and to read
    /// the Clicks column lazily; the train CSVs are 770 MiB and 609 MiB).
    pub keep_csv: bool,
}

impl Config {
    /// Defaults (real hosts, 8 workers), with [`GCS_BASE_ENV`] / [`IMAGES_BASE_ENV`] applied.
    pub fn new(cache_dir: PathBuf) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            gcs_base: env(GCS_BASE_ENV)
                .unwrap_or_else(|| "https://storage.googleapis.com/openimages".into()),
            images_base: env(IMAGES_BASE_ENV)
                .unwrap_or_else(|| "https://open-images-dataset.s3.amazonaws.com".into()),
            cache_dir,
            workers: 8,
            attempts: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            batch_size: 64,
            coalesce_gap: 16 * 1024,
            max_range_bytes: 4 * 1024 * 1024,
            keep_csv: true,
        }
    }

    /// URL of a file below [`Self::gcs_base`].
    pub fn gcs_url(&self, path: &str) -> String {
        format!("{}/{}", self.gcs_base.trim_end_matches('/'), path)
    }

    /// URL of an image on the mirror.
    pub fn image_url(&self, split: super::Split, image_id: &str) -> String {
        format!(
            "{}/{}/{image_id}.jpg",
            self.images_base.trim_end_matches('/'),
            split.as_str()
        )
    }

    /// Where a GCS file is cached.
    pub(crate) fn file_path(&self, path: &str) -> PathBuf {
        self.cache_dir.join("files").join(path)
    }

    /// Staging folder of one split.
    pub(crate) fn staging_dir(&self, split: super::Split) -> PathBuf {
        self.cache_dir.join("staging").join(split.as_str())
    }

    /// Cache folder of a split's mask shards.
    pub(crate) fn shard_dir(&self, split: super::Split) -> PathBuf {
        self.cache_dir.join("shards").join(split.as_str())
    }
}
