//! Thumbnails for the Review gallery: decoded, downscaled and overlaid with their masks on two
//! named worker threads, uploaded as textures on the GUI thread (a few per frame) and kept in a
//! bounded LRU cache so thousands of images scroll without holding thousands of textures.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use eframe::egui;

use crate::dataset::Mask;
use crate::dataset::store::{Project, decode_limits};
use crate::gui::worker::{Polled, Worker, WorkerTx};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 128;
/// Opacity of mask fills.
const FILL_ALPHA: f32 = 0.45;

/// Decodes `path` (with the store's decode limits), fits it into `max_side` (never upscaling)
/// and fills each instance mask of `image_id` in its class colour when `overlay` is set.
pub fn render_image(
    project: Option<&Project>,
    image_id: i64,
    path: &Path,
    max_side: u32,
    colors: &HashMap<i64, [u8; 3]>,
) -> anyhow::Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    reader.limits(decode_limits());
    let img = reader
        .decode()
        .map_err(|e| anyhow::anyhow!("{}: cannot decode: {e}", path.display()))?;
    let img = if img.width() > max_side || img.height() > max_side {
        img.thumbnail(max_side, max_side)
    } else {
        img
    };
    let mut rgb = img.to_rgb8();
    if let Some(project) = project {
        let (w, h) = rgb.dimensions();
        for inst in project.instances(image_id)? {
            let color = colors.get(&inst.class_id).copied().unwrap_or([255, 0, 255]);
            let mask = Mask::from_rle(&inst.rle)?;
            let mask = if (mask.width(), mask.height()) == (w, h) {
                mask
            } else {
                mask.resize_nearest(w, h)
            };
            for (i, &on) in mask.data().iter().enumerate() {
                if on == 0 {
                    continue;
                }
                let px = rgb.get_pixel_mut(i as u32 % w, i as u32 / w);
                for (v, &c) in px.0.iter_mut().zip(&color) {
                    let blended = f32::from(*v) * (1.0 - FILL_ALPHA) + f32::from(c) * FILL_ALPHA;
                    *v = blended.round() as u8;
                }
            }
        }
    }
    Ok(rgb)
}

/// An RGB image as an egui texture image.
pub fn color_image(rgb: &image::RgbImage) -> egui::ColorImage {
    let (w, h) = rgb.dimensions();
    egui::ColorImage::from_rgb([w as usize, h as usize], rgb.as_raw())
}

struct Request {
    generation: u64,
    image_id: i64,
    path: PathBuf,
    overlay: bool,
}

struct Done {
    generation: u64,
    image_id: i64,
    result: Result<egui::ColorImage, String>,
}

/// What the gallery gets for one image.
pub enum Thumb {
    /// Ready: draw this texture at this size.
    Ready(egui::TextureId, egui::Vec2),
    /// Queued or being decoded.
    Loading,
    /// Could not be decoded (the message names the file).
    Failed(String),
}

/// The LRU texture cache with its workers (which stop when the cache is dropped).
pub struct ThumbCache {
    textures: HashMap<i64, (egui::TextureHandle, u64)>,
    failed: HashMap<i64, String>,
    pending: HashSet<i64>,
    capacity: usize,
    frame: u64,
    overlay: bool,
    /// Bumped by [`ThumbCache::clear`]; results of older requests are dropped.
    generation: u64,
    req_tx: Sender<Request>,
    /// The `thumbs-0`, `thumbs-1` pool (`None` when none of its threads could start).
    workers: Option<Worker<Done>>,
    ctx: egui::Context,
}

/// Textures uploaded per frame at most (keeps a frame short while scrolling fast).
const UPLOADS_PER_FRAME: usize = 24;

impl ThumbCache {
    /// A cache of at most `capacity` textures for the project at `root`; `colors` maps class ids
    /// to overlay colours. Starts the worker threads.
    pub fn new(
        ctx: &egui::Context,
        root: &Path,
        colors: HashMap<i64, [u8; 3]>,
        capacity: usize,
    ) -> Self {
        let (req_tx, req_rx) = bounded::<Request>(48);
        let (colors, root) = (Arc::new(colors), root.to_path_buf());
        // Results are never terminal: the pool runs until the cache (its request sender) goes.
        let workers = Worker::pool(
            "thumbs",
            ctx,
            2,
            64,
            |_| false,
            move |_, tx| thumb_worker(&root, &req_rx, &tx, &colors),
        )
        .map_err(|e| log::error!("cannot start a thumbnail worker: {e}"))
        .ok();
        Self {
            textures: HashMap::new(),
            failed: HashMap::new(),
            pending: HashSet::new(),
            capacity: capacity.max(16),
            frame: 0,
            overlay: true,
            generation: 0,
            req_tx,
            workers,
            ctx: ctx.clone(),
        }
    }

    /// Drains finished thumbnails (a few per frame) and evicts the least recently used.
    pub fn begin_frame(&mut self) {
        self.frame += 1;
        let Some(workers) = &mut self.workers else {
            return;
        };
        for _ in 0..UPLOADS_PER_FRAME {
            let done = match workers.try_next() {
                Some(Polled::Event(done)) => done,
                None => break,
                Some(Polled::Died(why)) => {
                    // Every worker is gone: what they had queued will never come.
                    log::warn!("thumbnails: {why}");
                    for id in self.pending.drain() {
                        self.failed
                            .insert(id, "the thumbnail workers stopped".to_owned());
                    }
                    break;
                }
            };
            self.pending.remove(&done.image_id);
            if done.generation != self.generation {
                continue;
            }
            match done.result {
                Ok(img) => {
                    let tex = self.ctx.load_texture(
                        format!("thumb-{}", done.image_id),
                        img,
                        egui::TextureOptions::LINEAR,
                    );
                    self.textures.insert(done.image_id, (tex, self.frame));
                }
                Err(e) => {
                    self.failed.insert(done.image_id, e);
                }
            }
        }
        if workers.queued() > 0 {
            self.ctx.request_repaint();
        }
        if self.textures.len() > self.capacity {
            let mut by_age: Vec<(u64, i64)> = self
                .textures
                .iter()
                .map(|(&id, (_, at))| (*at, id))
                .collect();
            by_age.sort_unstable();
            let excess = self.textures.len() - self.capacity;
            for (_, id) in by_age.into_iter().take(excess) {
                self.textures.remove(&id);
            }
        }
    }

    /// The thumbnail of `image_id`, queuing it when missing (`path` is its file).
    pub fn get(&mut self, image_id: i64, path: &Path) -> Thumb {
        if let Some((tex, used)) = self.textures.get_mut(&image_id) {
            *used = self.frame;
            return Thumb::Ready(tex.id(), tex.size_vec2());
        }
        if let Some(e) = self.failed.get(&image_id) {
            return Thumb::Failed(e.clone());
        }
        if !self.pending.contains(&image_id) {
            let req = Request {
                generation: self.generation,
                image_id,
                path: path.to_path_buf(),
                overlay: self.overlay,
            };
            match self.req_tx.try_send(req) {
                Ok(()) => {
                    self.pending.insert(image_id);
                }
                // Full: ask again next frame (what is visible then gets the free slots).
                Err(TrySendError::Full(_)) => self.ctx.request_repaint(),
                Err(TrySendError::Disconnected(_)) => {
                    self.failed
                        .insert(image_id, "the thumbnail workers stopped".into());
                }
            }
        }
        Thumb::Loading
    }

    /// Shows or hides mask overlays (drops every cached thumbnail).
    pub fn set_overlay(&mut self, overlay: bool) {
        if overlay != self.overlay {
            self.overlay = overlay;
            self.clear();
        }
    }

    /// Forgets every texture (after edits or a reload).
    pub fn clear(&mut self) {
        self.textures.clear();
        self.failed.clear();
        self.generation += 1;
    }

    /// Textures held now.
    pub fn len(&self) -> usize {
        self.textures.len()
    }

    /// Whether no texture is held.
    pub fn is_empty(&self) -> bool {
        self.textures.is_empty()
    }

    /// Thumbnails queued or being decoded.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// One pool thread: renders requests until the cache drops its sender; each result wakes the
/// GUI.
fn thumb_worker(
    root: &Path,
    requests: &Receiver<Request>,
    done: &WorkerTx<Done>,
    colors: &HashMap<i64, [u8; 3]>,
) {
    // Each worker reads masks through its own connection (SQLite WAL: readers never block).
    let project = match Project::open(root) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("thumbnails without masks: {e}");
            None
        }
    };
    while let Ok(req) = requests.recv() {
        let project = project.as_ref().filter(|_| req.overlay);
        // A panic on one image (a decoder bug) fails that thumbnail, not the worker.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::fault::hit("thumbs");
            render_image(project, req.image_id, &req.path, THUMB_SIDE, colors)
                .map(|rgb| color_image(&rgb))
                .map_err(|e| format!("{e:#}"))
        }))
        .unwrap_or_else(|p| {
            Err(format!(
                "{}: the thumbnail worker panicked: {}",
                req.path.display(),
                crate::gui::worker::panic_text(&*p)
            ))
        });
        let sent = done.send(Done {
            generation: req.generation,
            image_id: req.image_id,
            result,
        });
        if !sent {
            return; // the cache is gone
        }
    }
}
