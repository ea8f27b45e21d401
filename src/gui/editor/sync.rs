//! Talking to the edit writer: queueing store mutations ([`ImageView::send`]), applying its
//! answers each frame (store ids of new instances, undo/redo state, review progress, the
//! status bar's edited count) and the image re-read that replaces the view's instances when
//! it went out of date.

use std::time::Duration;

use eframe::egui;

use super::writer::{EditCommand, EditOutcome, EditReply, Snapshot};
use super::{ImageView, Inst};
use crate::dataset::store::Resolution;
use crate::gui::shared::{PanelCtx, ShellRequest};

impl ImageView {
    /// Queues the resolution of audit finding `finding` (of this image) on the writer: one
    /// store transaction and one undoable step of the image, in order with its other edits;
    /// the view re-reads the image afterwards. `false` (with a toast) when it was refused.
    pub fn resolve_finding(
        &mut self,
        finding: i64,
        how: Resolution,
        cx: &mut PanelCtx<'_>,
    ) -> bool {
        self.send(EditCommand::ResolveFinding { finding, how }, cx)
            .is_some()
    }

    /// Undoes the image's latest edit step, as Ctrl+Z does.
    pub fn undo(&mut self, cx: &mut PanelCtx<'_>) {
        self.history(true, cx);
    }

    /// Whether an edit may start from the view's own masks and ids: not while a re-read from
    /// the store is awaited (they are about to be replaced). Says so when not.
    pub(super) fn ready(&self, cx: &mut PanelCtx<'_>) -> bool {
        if self.stale {
            cx.notices
                .info("saving the previous edit; try again in a moment");
        }
        !self.stale
    }

    /// Queues a store mutation on the writer (never blocks); returns its sequence number. A
    /// refused one is reported and the view re-reads the store so it shows what was really
    /// saved.
    pub(super) fn send(&mut self, command: EditCommand, cx: &mut PanelCtx<'_>) -> Option<u64> {
        let subject = command.subject(self.image_id);
        let reload = command.needs_reload();
        let history_unknown = matches!(
            command,
            EditCommand::Status { .. }
                | EditCommand::Undo { .. }
                | EditCommand::Redo { .. }
                | EditCommand::Reload
        );
        match self.writer.submit(command, reload, self.ctx.clone()) {
            Ok(seq) => {
                self.stale |= reload;
                if !history_unknown && let Some(data) = self.data.as_mut() {
                    data.history = (true, false); // the writer's answer confirms it
                }
                Some(seq)
            }
            Err(e) => {
                cx.notices.error(format!("{subject}: {e}"));
                self.stale = true;
                None
            }
        }
    }

    /// Applies the writer's answers (never blocks); asks for a re-read once the queue is
    /// empty when the view went out of date.
    pub(super) fn poll_writer(&mut self, ctx: &egui::Context, cx: &mut PanelCtx<'_>) {
        while let Some(reply) = self.writer.try_recv() {
            self.apply_reply(reply, cx);
        }
        if !self.writer_stop_reported
            && let Some((why, lost)) = self.writer.take_stop()
        {
            // Only a panic ends it early; say so once (with why) rather than retrying.
            while let Some(reply) = self.writer.try_recv() {
                self.apply_reply(reply, cx);
            }
            cx.notices.error(format!(
                "image {}: the store writer stopped ({why}); {lost} edits were not saved (close and reopen the image)",
                self.image_id
            ));
            self.writer_stop_reported = true;
        }
        if self.writer.is_stopped() {
            return;
        }
        if self.writer.pending() == 0 && self.stale && self.data.is_some() {
            self.send(EditCommand::Reload, cx);
        }
        if self.writer.pending() > 0 {
            // The writer wakes the GUI when it answers; this is only a fallback.
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    fn apply_reply(&mut self, reply: EditReply, cx: &mut PanelCtx<'_>) {
        let new_instance = match self.new_ids.front() {
            Some(&(seq, temp)) if seq == reply.seq => {
                self.new_ids.pop_front();
                Some(temp)
            }
            _ => None,
        };
        if let Some(summary) = reply.summary {
            // The status bar's "N edited" (the shell loaded it with the project).
            cx.requests
                .push(ShellRequest::EditedInstances(summary.edited_instances));
            if let Some(data) = self.data.as_mut() {
                data.history = summary.history;
                data.progress = summary.progress;
            }
        }
        match reply.outcome {
            Err(e) => {
                cx.notices.error(format!("{}: {e}", reply.subject));
                self.stale = true;
            }
            Ok(EditOutcome::Updated { instance, area }) => {
                if let Some(inst) = self
                    .data
                    .as_mut()
                    .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == instance))
                {
                    inst.row.area = area;
                }
            }
            Ok(EditOutcome::Created { instance }) => {
                // The temporary id of this new instance becomes the store's, selection
                // included (the user may have selected another, or none, meanwhile).
                if let Some(temp) = new_instance
                    && let Some(inst) = self
                        .data
                        .as_mut()
                        .and_then(|d| d.instances.iter_mut().find(|i| i.row.id == temp))
                {
                    inst.row.id = instance;
                }
                if new_instance.is_some() && self.selected == new_instance {
                    self.selected = Some(instance);
                }
            }
            Ok(EditOutcome::Split { instance, ids }) => {
                cx.notices.info(if ids.len() <= 1 {
                    format!("instance {instance} has one component")
                } else {
                    format!("instance {instance} split into {} instances", ids.len())
                });
            }
            Ok(EditOutcome::Reverted {
                instance,
                changed: false,
            }) => cx
                .notices
                .info(format!("instance {instance} was never edited")),
            Ok(EditOutcome::History {
                undo,
                touched: None,
            }) => cx.notices.info(if undo {
                "nothing to undo"
            } else {
                "nothing to redo"
            }),
            Ok(_) => {}
        }
        // A re-read is current only when nothing was queued after it.
        if let Some(snapshot) = reply.snapshot
            && self.writer.pending() == 0
        {
            match snapshot {
                Ok(s) => self.apply_snapshot(s),
                Err(e) => {
                    cx.notices.error(e);
                    self.stale = false; // no retry loop; the next edit tries again
                }
            }
        }
    }

    /// Replaces the view's instances with the store's (visibility kept). The overlay is
    /// recomposed only when something differs from what is on screen.
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.stale = false;
        self.new_ids.clear(); // every edit is answered (or lost with a stopped writer)
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let same = data.instances.len() == snapshot.instances.len()
            && data
                .instances
                .iter()
                .zip(&snapshot.instances)
                .all(|(a, b)| {
                    (a.row.id == b.row.id || a.row.id < 0)
                        && a.row.class_id == b.row.class_id
                        && a.original.is_some() == b.original.is_some()
                        && a.mask == b.mask
                });
        let fresh = snapshot
            .instances
            .into_iter()
            .map(|s| {
                let visible = data
                    .instances
                    .iter()
                    .find(|i| i.row.id == s.row.id)
                    .is_none_or(|i| i.visible);
                Inst {
                    row: s.row,
                    mask: s.mask,
                    original: s.original,
                    visible,
                }
            })
            .collect();
        data.instances = fresh;
        data.meta = snapshot.meta;
        if let Some(id) = self.selected
            && !data.instances.iter().any(|i| i.row.id == id)
        {
            self.selected = None;
        }
        if !same {
            self.overlay_stale = true;
        }
    }
}
