//! Parallel image downloads: named worker threads fed through bounded channels; each image is
//! fetched through a resumable `.part` file, checked (complete JPEG, decodes within the pixel
//! limits) and only then renamed into the staging folder.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use crate::cancel::CancelToken;
use crate::dataset::store::check_image_bytes;

use super::error::FailureKind;
use super::http::Http;
use super::{Config, Error, Split, image_id_str};

/// One image to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageJob {
    pub split: Split,
    pub id: u64,
}

/// What a worker did with a job.
#[derive(Debug)]
pub(crate) enum ImageResult {
    /// The file is staged and valid.
    Ready {
        job: ImageJob,
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// It could not be fetched or is not a valid JPEG.
    Failed {
        job: ImageJob,
        kind: FailureKind,
        message: String,
    },
}

/// Where a staged image lives.
pub(crate) fn staged_image(cfg: &Config, split: Split, id: u64) -> PathBuf {
    cfg.staging_dir(split)
        .join(format!("{}.jpg", image_id_str(id)))
}

/// A JPEG that ends: SOI at the start, EOI (`FF D9`) within its last 4 KiB (padding after EOI
/// is tolerated). Entropy-coded data never contains `FF D9`, so a cut file fails this.
pub(crate) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return false;
    }
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Validates a staged or freshly downloaded JPEG; returns its size.
pub(crate) fn validate(path: &std::path::Path) -> Result<(u32, u32), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if !jpeg_is_complete(&bytes) {
        return Err(format!(
            "truncated or not a JPEG ({} bytes, no end-of-image marker)",
            bytes.len()
        ));
    }
    check_image_bytes(path, &bytes).map_err(|e| e.to_string())
}

fn fetch_one(
    http: &Http,
    cfg: &Config,
    job: ImageJob,
    cancel: &CancelToken,
    counter: &AtomicU64,
) -> Option<ImageResult> {
    let path = staged_image(cfg, job.split, job.id);
    if path.is_file() {
        if let Ok((width, height)) = validate(&path) {
            return Some(ImageResult::Ready {
                job,
                path,
                width,
                height,
            });
        }
        std::fs::remove_file(&path).ok();
    }
    let url = cfg.image_url(job.split, &image_id_str(job.id));
    match http.download_file(&url, &path, cancel, counter, &|_, _| {}, None) {
        Ok(_) => Some(match validate(&path) {
            Ok((width, height)) => ImageResult::Ready {
                job,
                path,
                width,
                height,
            },
            Err(message) => {
                std::fs::remove_file(&path).ok();
                ImageResult::Failed {
                    job,
                    kind: FailureKind::CorruptImage,
                    message,
                }
            }
        }),
        Err(Error::Cancelled) => None,
        Err(Error::Status {
            status: 403 | 404 | 410,
            ..
        }) => Some(ImageResult::Failed {
            job,
            kind: FailureKind::NotFound,
            message: format!("{url}: not on the server"),
        }),
        Err(e) => Some(ImageResult::Failed {
            job,
            kind: FailureKind::Network,
            message: e.to_string(),
        }),
    }
}

/// Runs the jobs on `cfg.workers` named threads and hands each result to `on_result` on the
/// calling thread. Stops feeding new jobs when cancelled or when `on_result` fails.
pub(crate) fn run_pool(
    http: &Http,
    cfg: &Config,
    jobs: &[ImageJob],
    cancel: &CancelToken,
    counter: &AtomicU64,
    on_result: &mut dyn FnMut(ImageResult) -> Result<(), Error>,
) -> Result<(), Error> {
    let workers = cfg.workers.clamp(1, 64);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<ImageJob>(workers * 2);
    let (res_tx, res_rx) = crossbeam_channel::bounded::<ImageResult>(workers * 2);
    std::thread::scope(|scope| -> Result<(), Error> {
        let feeder_cancel = cancel.clone();
        std::thread::Builder::new()
            .name("oi-image-feed".into())
            .spawn_scoped(scope, move || {
                for job in jobs {
                    if feeder_cancel.is_cancelled() || job_tx.send(*job).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Io {
                path: "thread".into(),
                source: e,
            })?;
        for i in 0..workers {
            let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
            std::thread::Builder::new()
                .name(format!("oi-image-{i}"))
                .spawn_scoped(scope, move || {
                    for job in job_rx.iter() {
                        if cancel.is_cancelled() {
                            break;
                        }
                        let Some(result) = fetch_one(http, cfg, job, cancel, counter) else {
                            break;
                        };
                        if res_tx.send(result).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::Io {
                    path: "thread".into(),
                    source: e,
                })?;
        }
        drop((job_rx, res_tx));
        let mut outcome = Ok(());
        for result in res_rx.iter() {
            if let Err(e) = on_result(result) {
                outcome = Err(e);
                break;
            }
        }
        drop(res_rx); // workers' next send fails; they finish their current file and stop
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_completeness() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xFF, 0xD9]));
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xFF, 0xD9, 0, 0]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 3, 4]));
        assert!(!jpeg_is_complete(b"<html>"));
    }
}
