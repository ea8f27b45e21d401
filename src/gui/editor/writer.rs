//! The mask editor's store writer: a named thread (`edit-writer`) that owns its own
//! [`Project`] handle and applies the image view's edits in the order they were issued, one
//! store transaction per edit, so the GUI thread never waits on RLE encoding or SQLite.
//!
//! The view sends [`EditCommand`]s over a bounded crossbeam channel and drains [`EditReply`]s
//! each frame with [`EditWriter::try_recv`]. When the queue runs dry after an edit the writer
//! also re-reads the image's undo/redo state, the review progress and the project's count of
//! edited instances ([`Summary`]) and, when asked, the image's instances with decoded masks
//! ([`Snapshot`]), so the view never decodes or queries on the GUI thread either. Dropping the [`EditWriter`] closes the queue and waits
//! (bounded by [`FLUSH_TIMEOUT`]) until every queued edit is written, so navigating away or
//! closing the project loses nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use eframe::egui;

use crate::gui::worker::{Polled, Worker, WorkerTx};

use crate::dataset::store::{
    ClassProgress, ImageMeta, InstanceRow, Project, Resolution, ReviewStatus,
};
use crate::dataset::{Mask, Origin};

/// Most edits waiting for their answer; the view refuses further edits (with a toast) while
/// this many are queued, so neither channel ever blocks either side.
pub const MAX_PENDING: usize = 64;

/// Longest [`EditWriter`]'s drop waits for the queued edits to be written.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One mutation of the project store, as the image view issues it (plus [`Self::Reload`]).
#[derive(Debug, Clone)]
pub enum EditCommand {
    /// Replace an instance's mask (stroke, polygon, flood fill, morphology).
    UpdateMask {
        /// Instance id.
        instance: i64,
        /// The whole new mask, at image size.
        mask: Arc<Mask>,
    },
    /// Add a new instance (a stroke or polygon on empty ground, an accepted proposal).
    AddInstance {
        /// Image id.
        image: i64,
        /// Class id.
        class: i64,
        /// Its mask, at image size.
        mask: Arc<Mask>,
        /// Manual or Model.
        origin: Origin,
    },
    /// Delete an instance.
    Delete {
        /// Instance id.
        instance: i64,
    },
    /// Change an instance's class.
    SetClass {
        /// Instance id.
        instance: i64,
        /// The new class id.
        class: i64,
    },
    /// Merge `other` into `keep`.
    Merge {
        /// The instance that stays.
        keep: i64,
        /// The instance merged into it (deleted).
        other: i64,
    },
    /// Split an instance into its connected components.
    Split {
        /// Instance id.
        instance: i64,
    },
    /// Revert an instance to its original mask and class.
    Revert {
        /// Instance id.
        instance: i64,
    },
    /// Set the image's review status.
    Status {
        /// Image id.
        image: i64,
        /// The new status.
        status: ReviewStatus,
    },
    /// Undo the image's latest edit step.
    Undo {
        /// Image id.
        image: i64,
    },
    /// Redo the image's oldest undone edit step.
    Redo {
        /// Image id.
        image: i64,
    },
    /// Resolve an audit finding of the image ([`Project::resolve_finding`]).
    ResolveFinding {
        /// Finding id.
        finding: i64,
        /// Accept its fix, keep the label, or delete the instance.
        how: Resolution,
    },
    /// Write nothing; answer with a [`Snapshot`] (the view's state went out of date).
    Reload,
}

impl EditCommand {
    /// What the command is about, in words, for messages (`instance 5`, `image 2`).
    pub fn subject(&self, image_id: i64) -> String {
        match self {
            Self::UpdateMask { instance, .. }
            | Self::Delete { instance }
            | Self::SetClass { instance, .. }
            | Self::Split { instance }
            | Self::Revert { instance } => format!("instance {instance} (image {image_id})"),
            Self::Merge { keep, other } => {
                format!("merging instance {other} into {keep} (image {image_id})")
            }
            Self::AddInstance { image, .. } => format!("new instance on image {image}"),
            Self::Status { image, .. } | Self::Undo { image } | Self::Redo { image } => {
                format!("image {image}")
            }
            Self::ResolveFinding { finding, .. } => {
                format!("audit finding {finding} (image {image_id})")
            }
            Self::Reload => format!("image {image_id}"),
        }
    }

    /// Whether the view must re-read the image from the store once this is written: its
    /// outcome (new ids, undo, split, ...) is not known to the view beforehand.
    pub fn needs_reload(&self) -> bool {
        !matches!(self, Self::UpdateMask { .. } | Self::Status { .. })
    }
}

/// What a written command did.
#[derive(Debug, Clone, PartialEq)]
pub enum EditOutcome {
    /// The mask was replaced; its new area.
    Updated {
        /// Instance id.
        instance: i64,
        /// Area of the new mask in pixels.
        area: u64,
    },
    /// A new instance was added.
    Created {
        /// Its id.
        instance: i64,
    },
    /// Split into these instances (the kept one first; one id = nothing changed).
    Split {
        /// The instance split.
        instance: i64,
        /// Resulting ids.
        ids: Vec<i64>,
    },
    /// Revert ran; `changed` is false when the instance was never edited.
    Reverted {
        /// Instance id.
        instance: i64,
        /// Whether anything was written.
        changed: bool,
    },
    /// Undo (`undo`) or redo ran; `touched` is `None` when there was nothing to do.
    History {
        /// Undo or redo.
        undo: bool,
        /// The instance the step touched.
        touched: Option<i64>,
    },
    /// Delete, class change, merge or review status written; or a reload answered.
    Done,
}

/// The image's undo/redo availability and the project's review progress after an edit.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// (can undo, can redo) for the image.
    pub history: (bool, bool),
    /// Review progress per class.
    pub progress: Vec<ClassProgress>,
    /// Edited instances in the whole project (as [`Project::info`] counts them), for the
    /// status bar.
    pub edited_instances: u64,
}

/// One instance as read back from the store, masks decoded.
#[derive(Debug, Clone)]
pub struct StoredInstance {
    /// The row.
    pub row: InstanceRow,
    /// The current mask.
    pub mask: Arc<Mask>,
    /// The mask before the first edit (edited instances only).
    pub original: Option<Arc<Mask>>,
}

/// The image's row and instances as the store holds them after an edit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The image row (review status included).
    pub meta: ImageMeta,
    /// Its instances, ordered by id.
    pub instances: Vec<StoredInstance>,
}

/// The writer's answer to one [`EditCommand`], in command order.
#[derive(Debug)]
pub struct EditReply {
    /// Sequence number [`EditWriter::submit`] returned for the command.
    pub seq: u64,
    /// What the command was about, in words (see [`EditCommand::subject`]).
    pub subject: String,
    /// What it did, or why it failed (nothing was written then).
    pub outcome: Result<EditOutcome, String>,
    /// Present when no further command was queued behind this one.
    pub summary: Option<Summary>,
    /// The image re-read from the store: present when asked for (or after a failure) and no
    /// further command was queued behind this one.
    pub snapshot: Option<Result<Snapshot, String>>,
}

struct Request {
    seq: u64,
    command: EditCommand,
    snapshot: bool,
    wake: Option<egui::Context>,
}

/// Why [`EditWriter::submit`] refused a command.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// [`MAX_PENDING`] edits are already waiting to be written.
    #[error("{0} edits are still waiting to be saved; this one was not applied")]
    Busy(usize),
    /// The writer thread ended (it panicked).
    #[error("the store writer stopped; this edit was not saved")]
    Stopped,
}

/// The GUI side of the `edit-writer` thread of one image.
#[derive(Debug)]
pub struct EditWriter {
    image_id: i64,
    tx: Option<Sender<Request>>,
    /// The thread and its answers (it never sends a terminal event: it ends when `tx` goes).
    worker: Worker<EditReply>,
    /// Whether [`Self::take_stop`] reported the end.
    stop_taken: bool,
    next_seq: u64,
    pending: usize,
}

impl EditWriter {
    /// Starts the `edit-writer` thread for image `image_id` of the project at `root`; it opens
    /// its own [`Project`] handle (WAL, busy timeout) and waits for commands.
    pub fn spawn(root: &Path, image_id: i64) -> std::io::Result<Self> {
        let (tx, requests) = bounded::<Request>(MAX_PENDING);
        let root = root.to_path_buf();
        // Each request carries the context to wake ([`Self::submit`]), so the worker's own is a
        // stand-in.
        let ctx = egui::Context::default();
        let worker = Worker::spawn(
            "edit-writer",
            &ctx,
            MAX_PENDING,
            |_| false,
            move |replies| {
                run(&root, image_id, &requests, &replies);
            },
        )?;
        Ok(Self {
            image_id,
            tx: Some(tx),
            worker,
            stop_taken: false,
            next_seq: 0,
            pending: 0,
        })
    }

    /// Queues `command` without blocking; with `snapshot` the answer carries the image re-read
    /// from the store. `wake` gets a repaint request when the answer is ready. Returns the
    /// command's sequence number.
    pub fn submit(
        &mut self,
        command: EditCommand,
        snapshot: bool,
        wake: Option<egui::Context>,
    ) -> Result<u64, SubmitError> {
        if self.pending >= MAX_PENDING {
            return Err(SubmitError::Busy(self.pending));
        }
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        let seq = self.next_seq;
        let request = Request {
            seq,
            command,
            snapshot,
            wake,
        };
        match tx.try_send(request) {
            Ok(()) => {
                self.next_seq += 1;
                self.pending += 1;
                Ok(seq)
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy(self.pending)),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// The next answer, if one is ready (never blocks).
    pub fn try_recv(&mut self) -> Option<EditReply> {
        let Polled::Event(reply) = self.worker.try_next()? else {
            return None; // the end: `take_stop` reports it
        };
        self.pending = self.pending.saturating_sub(1);
        Some(reply)
    }

    /// Commands submitted and not answered yet (answers not yet drained count as pending).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the writer thread ended (it only ends early by panicking).
    pub fn is_stopped(&self) -> bool {
        self.worker.threads_ended()
    }

    /// Once, after the writer thread ended: why (its panic message) and how many submitted
    /// edits were never answered (not saved). Those no longer count as pending, so the view
    /// stops waiting for them. Answers sent before the end stay readable with
    /// [`Self::try_recv`] and are not counted as lost.
    pub fn take_stop(&mut self) -> Option<(String, usize)> {
        if self.stop_taken {
            return None;
        }
        let why = self.worker.ended()?;
        self.stop_taken = true;
        let answered = self.worker.queued();
        let lost = self.pending.saturating_sub(answered);
        self.pending = answered;
        Some((why, lost))
    }

    /// Blocks until every submitted command is answered or `timeout` passes; returns the
    /// answers (tests, benchmarks and shutdown; the GUI drains with [`Self::try_recv`]).
    pub fn wait_idle(&mut self, timeout: Duration) -> Vec<EditReply> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.worker.recv_timeout(left) {
                Some(Polled::Event(reply)) => {
                    self.pending -= 1;
                    out.push(reply);
                }
                Some(Polled::Died(_)) | None => break,
            }
        }
        out
    }
}

impl Drop for EditWriter {
    /// Closes the queue and waits (at most [`FLUSH_TIMEOUT`]) until the thread has written
    /// everything queued, so edits survive navigating away or closing the project.
    fn drop(&mut self) {
        self.tx = None;
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.worker.recv_timeout(left) {
                Some(Polled::Event(EditReply {
                    subject,
                    outcome: Err(e),
                    ..
                })) => log::error!("{subject}: {e}"),
                Some(Polled::Event(_)) => {}
                // The thread ended (now, or earlier and already seen by `try_recv`).
                Some(Polled::Died(_)) => break,
                None if !self.worker.running() => break,
                None => {
                    log::warn!(
                        "image {}: edits still being saved after {FLUSH_TIMEOUT:?}; they finish in the background",
                        self.image_id
                    );
                    break;
                }
            }
        }
    }
}

/// The thread: apply each command in one transaction, answer in order.
fn run(root: &Path, image_id: i64, requests: &Receiver<Request>, replies: &WorkerTx<EditReply>) {
    let mut project = Project::open(root).map_err(|e| format!("{}: {e}", root.display()));
    let mut view_gone = false;
    while let Ok(request) = requests.recv() {
        crate::fault::hit("edit-writer");
        let subject = request.command.subject(image_id);
        let outcome = match &mut project {
            Ok(p) => apply(p, &request.command).map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = &outcome {
            log::error!("{subject}: {e}");
        }
        if view_gone {
            continue; // finish writing the queue; nobody reads answers any more
        }
        // Later commands make these reads out of date at once: only the last one answers.
        let last = requests.is_empty();
        let (summary, snapshot) = match &project {
            Ok(p) if last => (
                summary(p, image_id),
                (request.snapshot || outcome.is_err()).then(|| snapshot(p, image_id)),
            ),
            _ => (None, None),
        };
        let reply = EditReply {
            seq: request.seq,
            subject,
            outcome,
            summary,
            snapshot,
        };
        if !replies.send(reply) {
            view_gone = true;
        }
        if let Some(ctx) = request.wake {
            ctx.request_repaint();
        }
    }
}

fn apply(project: &mut Project, command: &EditCommand) -> anyhow::Result<EditOutcome> {
    Ok(match command {
        EditCommand::UpdateMask { instance, mask } => {
            project.update_instance_mask(*instance, mask)?;
            EditOutcome::Updated {
                instance: *instance,
                area: mask.area(),
            }
        }
        EditCommand::AddInstance {
            image,
            class,
            mask,
            origin,
        } => EditOutcome::Created {
            instance: project.add_instance(*image, *class, mask, *origin)?,
        },
        EditCommand::Delete { instance } => {
            project.delete_instance(*instance)?;
            EditOutcome::Done
        }
        EditCommand::SetClass { instance, class } => {
            project.set_instance_class(*instance, *class)?;
            EditOutcome::Done
        }
        EditCommand::Merge { keep, other } => {
            project.merge_instances(*keep, *other)?;
            EditOutcome::Done
        }
        EditCommand::Split { instance } => EditOutcome::Split {
            instance: *instance,
            ids: project.split_instance(*instance)?,
        },
        EditCommand::Revert { instance } => EditOutcome::Reverted {
            instance: *instance,
            changed: project.revert_instance(*instance)?,
        },
        EditCommand::Status { image, status } => {
            project.set_review_status(*image, *status)?;
            EditOutcome::Done
        }
        EditCommand::Undo { image } => EditOutcome::History {
            undo: true,
            touched: project.undo_image(*image)?,
        },
        EditCommand::Redo { image } => EditOutcome::History {
            undo: false,
            touched: project.redo_image(*image)?,
        },
        EditCommand::ResolveFinding { finding, how } => {
            project.resolve_finding(*finding, *how)?;
            EditOutcome::Done
        }
        EditCommand::Reload => EditOutcome::Done,
    })
}

fn summary(project: &Project, image_id: i64) -> Option<Summary> {
    let history = project.history_of(image_id).ok()?;
    let progress = project.class_progress().ok()?;
    let edited_instances = project.edited_per_image().ok()?.values().sum();
    Some(Summary {
        history,
        progress,
        edited_instances,
    })
}

fn snapshot(project: &Project, image_id: i64) -> Result<Snapshot, String> {
    let meta = project
        .image(image_id)
        .map_err(|e| format!("image {image_id}: {e}"))?;
    let instances =
        read_instances(project, image_id).map_err(|e| format!("image {image_id}: {e:#}"))?;
    Ok(Snapshot { meta, instances })
}

/// The instances of an image with their masks (and originals of edited ones) decoded.
pub fn read_instances(project: &Project, image_id: i64) -> anyhow::Result<Vec<StoredInstance>> {
    let originals = project.original_masks(image_id)?;
    let mut out = Vec::new();
    for row in project.instances(image_id)? {
        let mask = Mask::from_rle(&row.rle)
            .map_err(|e| anyhow::anyhow!("instance {}: stored mask is corrupt: {e}", row.id))?;
        let original = match originals.get(&row.id) {
            Some(rle) => Some(Arc::new(Mask::from_rle(rle).map_err(|e| {
                anyhow::anyhow!("instance {}: stored original is corrupt: {e}", row.id)
            })?)),
            None => None,
        };
        out.push(StoredInstance {
            row,
            mask: Arc::new(mask),
            original,
        });
    }
    Ok(out)
}
