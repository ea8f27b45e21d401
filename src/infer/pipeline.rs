//! Decode-ahead for prediction: a named thread reads and prepares ([`prepare::prepare`]) the next
//! images while the model runs on the caller's thread, over a bounded channel, in input order.
//! Used by `maskstudio predict` and the Predict tab's worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};

use super::prepare::{self, PrepareParams, Prepared};
use super::{panic_text, read_image};

/// Images decoded ahead of the model (the channel's capacity).
pub const DEPTH: usize = 2;

/// One image read and prepared by the decoder.
#[derive(Debug)]
pub struct Decoded {
    /// The decoded pixels, when the caller asked to keep them (overlays, display copies).
    pub image: Option<image::RgbImage>,
    /// Width and height of the image.
    pub size: (u32, u32),
    /// The model's input ([`super::Predictor::predict_prepared`]).
    pub prepared: Prepared,
}

/// One file's outcome: the file and its decoded image, or why it could not be read (a decoder
/// panic on one file is that file's error).
pub type Item = (PathBuf, anyhow::Result<Decoded>);

/// The decode-ahead thread and the receiving end of its channel; dropping it stops the thread
/// (after the image it is decoding) and waits for it.
#[derive(Debug)]
pub struct DecodeAhead {
    name: String,
    rx: Option<Receiver<Item>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    remaining: usize,
}

impl DecodeAhead {
    /// Starts the thread `name` decoding `paths` in order, keeping the pixels when `keep_image`.
    pub fn spawn(
        name: &str,
        paths: Vec<PathBuf>,
        params: PrepareParams,
        keep_image: bool,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = bounded::<Item>(DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let remaining = paths.len();
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for path in paths {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    // Outside the per-file guard: a test's stand-in for the thread dying.
                    crate::fault::hit("predict-decode");
                    let decoded = std::panic::catch_unwind(|| decode(&path, &params, keep_image))
                        .unwrap_or_else(|p| Err(anyhow::anyhow!("panicked: {}", panic_text(&*p))));
                    if tx.send((path, decoded)).is_err() {
                        return; // the receiver is gone: nobody wants the rest
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the {name} thread: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            rx: Some(rx),
            handle: Some(handle),
            stop,
            remaining,
        })
    }

    /// The next file in input order; `Ok(None)` after the last; `Err` when the decoder thread
    /// died (a panic outside a file, or its channel closed) before delivering every file.
    pub fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let received = self.rx.as_ref().map(Receiver::recv);
        match received {
            Some(Ok(item)) => {
                self.remaining -= 1;
                Ok(Some(item))
            }
            _ => {
                self.rx = None;
                let why = match self.handle.take().map(JoinHandle::join) {
                    Some(Err(p)) => format!("panicked: {}", panic_text(&*p)),
                    _ => "stopped".to_owned(),
                };
                self.remaining = 0;
                anyhow::bail!(
                    "the {} thread {why} before reading the remaining images",
                    self.name
                )
            }
        }
    }
}

impl Drop for DecodeAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a pending send.
        self.rx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Reads and prepares one file.
fn decode(
    path: &std::path::Path,
    params: &PrepareParams,
    keep_image: bool,
) -> anyhow::Result<Decoded> {
    let image = read_image(path)?;
    let prepared = prepare::prepare(&image, params)
        .map_err(|e| anyhow::anyhow!("{path:?}: cannot prepare: {e:#}"))?;
    Ok(Decoded {
        size: image.dimensions(),
        image: keep_image.then_some(image),
        prepared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PrepareParams {
        PrepareParams {
            min_size: 32,
            max_size: 64,
            mean: [0.5; 3],
            std: [0.25; 3],
        }
    }

    #[test]
    fn files_come_in_order_with_per_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for k in 0..5u32 {
            let p = dir.path().join(format!("i{k}.png"));
            if k == 2 {
                std::fs::write(&p, b"not a png").unwrap();
            } else {
                image::RgbImage::from_pixel(20 + k, 10, image::Rgb([k as u8, 0, 0]))
                    .save(&p)
                    .unwrap();
            }
            paths.push(p);
        }
        let mut d = DecodeAhead::spawn("test-decode", paths.clone(), params(), false).unwrap();
        let mut got = Vec::new();
        while let Some((path, result)) = d.next_item().unwrap() {
            got.push((path, result.map(|x| (x.size, x.image.is_some()))));
        }
        assert_eq!(got.len(), 5);
        for (k, (path, result)) in got.iter().enumerate() {
            assert_eq!(path, &paths[k]);
            match result {
                Ok((size, kept)) => {
                    assert_ne!(k, 2);
                    assert_eq!(*size, (20 + k as u32, 10));
                    assert!(!kept);
                }
                Err(e) => {
                    assert_eq!(k, 2);
                    assert!(format!("{e:#}").contains("i2.png"), "{e:#}");
                }
            }
        }
        assert!(d.next_item().unwrap().is_none());
    }

    #[test]
    fn dropping_early_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        image::RgbImage::new(8, 8).save(&p).unwrap();
        let mut d = DecodeAhead::spawn("test-decode", vec![p; 50], params(), true).unwrap();
        let (_, first) = d.next_item().unwrap().unwrap();
        assert!(first.unwrap().image.is_some());
        drop(d); // returns: the thread saw the closed channel or the stop flag
    }
}
