//! Instance edits, each one transaction and one undoable step, logged in `edit_log` with the
//! instance's state before and after; undo/redo replay that log (per image or globally),
//! revert restores the original; review status. An audit finding's status change is an entry
//! of its own kind ([`FINDING_EDIT`]) chained after the instance edit that resolved it.

use rusqlite::{OptionalExtension as _, params};

use crate::dataset::{Mask, Origin, Rle};

use super::{Project, ReviewStatus, StoreError};

/// Snapshot of an instance stored in the edit log (enough to recreate the row).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct InstanceState {
    pub(super) class_id: i64,
    pub(super) rle: String,
    pub(super) height: u32,
    pub(super) width: u32,
    pub(super) iscrowd: bool,
    pub(super) origin: String,
    pub(super) provenance: Option<String>,
    pub(super) original_rle: Option<String>,
    pub(super) original_class_id: Option<i64>,
    pub(super) edited: bool,
}

impl Project {
    /// Replaces an instance's mask (keeping the original on the first edit); one undoable step.
    pub fn update_instance_mask(
        &mut self,
        instance_id: i64,
        mask: &Mask,
    ) -> Result<(), StoreError> {
        self.update_step(instance_id, "update", |before| {
            Some(edited_state(before, mask))
        })?;
        Ok(())
    }

    /// Changes an instance's class; one undoable step.
    pub fn set_instance_class(
        &mut self,
        instance_id: i64,
        class_id: i64,
    ) -> Result<(), StoreError> {
        self.update_step(instance_id, "update", |before| {
            Some(edited(before, |after| after.class_id = class_id))
        })?;
        Ok(())
    }

    /// Adds a hand-drawn (or model-proposed) instance; one undoable step. Returns its id.
    pub fn add_instance(
        &mut self,
        image_id: i64,
        class_id: i64,
        mask: &Mask,
        origin: Origin,
    ) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let state = InstanceState::new(class_id, mask, false, origin, None);
        let id = create_instance(&tx, image_id, &state, "create")?;
        tx.commit()?;
        Ok(id)
    }

    /// Deletes an instance; one undoable step.
    pub fn delete_instance(&mut self, instance_id: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        tx.execute("DELETE FROM instances WHERE id = ?1", [instance_id])?;
        log_edit(&tx, image_id, instance_id, "delete", Some(&before), None)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets an image's review status.
    pub fn set_review_status(
        &mut self,
        image_id: i64,
        status: ReviewStatus,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE images SET review_status = ?1 WHERE id = ?2",
            params![status.as_str(), image_id],
        )?;
        if changed == 0 {
            return Err(StoreError::Missing {
                what: "image",
                id: image_id,
            });
        }
        Ok(())
    }

    /// Undoes the latest edit step (of any image); returns the instance it touched, or
    /// `None` when nothing is left.
    pub fn undo(&mut self) -> Result<Option<i64>, StoreError> {
        self.replay(History::Undo, None)
    }

    /// Redoes the oldest undone edit step (of any image); returns the instance it touched, or `None`.
    pub fn redo(&mut self) -> Result<Option<i64>, StoreError> {
        self.replay(History::Redo, None)
    }

    /// Undoes the latest edit step of one image (the image view's Ctrl+Z).
    pub fn undo_image(&mut self, image_id: i64) -> Result<Option<i64>, StoreError> {
        self.replay(History::Undo, Some(image_id))
    }

    /// Redoes the oldest undone edit step of one image.
    pub fn redo_image(&mut self, image_id: i64) -> Result<Option<i64>, StoreError> {
        self.replay(History::Redo, Some(image_id))
    }

    /// Moves one step through the edit log, in one transaction: undo restores an entry's
    /// `before` state and marks it undone; redo restores the oldest undone entry's `after`
    /// state. A step may span several entries: an entry whose kind ends in
    /// [`CHAIN_SUFFIX`] is undone and redone together with the entry after it (merge, split).
    fn replay(
        &mut self,
        direction: History,
        image: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let (state_column, undone, order, undone_after) = match direction {
            History::Undo => ("before", 0, "DESC", 1),
            History::Redo => ("after", 1, "ASC", 0),
        };
        let tx = self.conn.transaction()?;
        let mut first_instance = None;
        loop {
            let entry = tx
                .query_row(
                    &format!(
                        "SELECT id, image_id, instance_id, {state_column}, kind FROM edit_log
                         WHERE undone = ?1 AND (?2 IS NULL OR image_id = ?2)
                         ORDER BY id {order} LIMIT 1"
                    ),
                    params![undone, image],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((log_id, image_id, instance_id, state, kind)) = entry else {
                break;
            };
            let chained = kind.ends_with(CHAIN_SUFFIX);
            // Undo walks backwards: after the first entry, continue only into chained ones.
            if first_instance.is_some() && matches!(direction, History::Undo) && !chained {
                break;
            }
            if kind.trim_end_matches(CHAIN_SUFFIX) == FINDING_EDIT {
                apply_finding_state(&tx, state.as_deref())?;
            } else {
                apply_state(&tx, instance_id, image_id, state.as_deref())?;
            }
            tx.execute(
                "UPDATE edit_log SET undone = ?1 WHERE id = ?2",
                params![undone_after, log_id],
            )?;
            first_instance.get_or_insert(instance_id);
            // Redo walks forwards: a chained entry pulls in the next one.
            if matches!(direction, History::Redo) && !chained {
                break;
            }
        }
        tx.commit()?;
        Ok(first_instance)
    }

    /// Whether [`Self::undo_image`] / [`Self::redo_image`] have something to do.
    pub fn history_of(&self, image_id: i64) -> Result<(bool, bool), StoreError> {
        let count = |undone: i64| -> Result<bool, StoreError> {
            Ok(self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM edit_log WHERE image_id = ?1 AND undone = ?2)",
                params![image_id, undone],
                |r| r.get(0),
            )?)
        };
        Ok((count(0)?, count(1)?))
    }

    /// Restores an instance's original mask and class (from before its first edit); one
    /// undoable step. Returns `false` (nothing written) when it was never edited.
    pub fn revert_instance(&mut self, instance_id: i64) -> Result<bool, StoreError> {
        self.update_step(instance_id, "revert", |before| {
            if !before.edited {
                return None;
            }
            let mut after = before.clone();
            if let Some(rle) = before.original_rle.clone() {
                after.rle = rle;
            }
            if let Some(class_id) = before.original_class_id {
                after.class_id = class_id;
            }
            after.original_rle = None;
            after.original_class_id = None;
            after.edited = false;
            Some(after)
        })
    }

    /// Rewrites one instance in one transaction and one undoable step logged as `kind`:
    /// `change` gets its current state and returns the new one, or `None` to write nothing.
    /// Returns whether it wrote.
    fn update_step(
        &mut self,
        instance_id: i64,
        kind: &str,
        change: impl FnOnce(&InstanceState) -> Option<InstanceState>,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        let Some(after) = change(&before) else {
            return Ok(false);
        };
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            kind,
            Some(&before),
            Some(&after),
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Merges `other` into `keep` (mask union; `other` is deleted) in one transaction and one
    /// undoable step. Both must belong to the same image.
    pub fn merge_instances(&mut self, keep: i64, other: i64) -> Result<(), StoreError> {
        if keep == other {
            return Err(StoreError::Invalid(format!(
                "cannot merge instance {keep} with itself"
            )));
        }
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, keep)?;
        let (other_image, other_state) = load_state(&tx, other)?;
        if other_image != image_id {
            return Err(StoreError::Invalid(format!(
                "instances {keep} (image {image_id}) and {other} (image {other_image}) are on different images"
            )));
        }
        let mut mask = before.mask(keep)?;
        mask.union_with(&other_state.mask(other)?);
        let after = edited_state(&before, &mask);
        put_state(&tx, Some(keep), image_id, &after)?;
        log_edit(&tx, image_id, keep, "merge+", Some(&before), Some(&after))?;
        tx.execute("DELETE FROM instances WHERE id = ?1", [other])?;
        log_edit(&tx, image_id, other, "delete", Some(&other_state), None)?;
        tx.commit()?;
        Ok(())
    }

    /// Splits an instance into its 8-connected components: the first (in raster order) stays
    /// in the instance, each other becomes a new instance of the same class (origin `manual`,
    /// provenance `{"split_from": id}`). One transaction, one undoable step. Returns the ids,
    /// the kept one first; a single component changes nothing.
    pub fn split_instance(&mut self, instance_id: i64) -> Result<Vec<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let (image_id, before) = load_state(&tx, instance_id)?;
        let parts = crate::dataset::maskops::split_components(&before.mask(instance_id)?);
        if parts.len() <= 1 {
            return Ok(vec![instance_id]);
        }
        let after = edited_state(&before, &parts[0]);
        put_state(&tx, Some(instance_id), image_id, &after)?;
        log_edit(
            &tx,
            image_id,
            instance_id,
            "split+",
            Some(&before),
            Some(&after),
        )?;
        let mut ids = vec![instance_id];
        for (k, part) in parts.iter().enumerate().skip(1) {
            let state = InstanceState::new(
                before.class_id,
                part,
                before.iscrowd,
                Origin::Manual,
                Some(serde_json::json!({ "split_from": instance_id }).to_string()),
            );
            let kind = if k + 1 < parts.len() {
                "create+"
            } else {
                "create"
            };
            ids.push(create_instance(&tx, image_id, &state, kind)?);
        }
        tx.commit()?;
        Ok(ids)
    }
}

/// Suffix of an edit-log kind that joins the entry to the next one in one undo step.
pub const CHAIN_SUFFIX: &str = "+";

impl InstanceState {
    /// A new, never edited instance.
    pub(super) fn new(
        class_id: i64,
        mask: &Mask,
        iscrowd: bool,
        origin: Origin,
        provenance: Option<String>,
    ) -> Self {
        Self {
            class_id,
            rle: mask.to_rle().to_compressed(),
            height: mask.height(),
            width: mask.width(),
            iscrowd,
            origin: origin.as_str().to_owned(),
            provenance,
            original_rle: None,
            original_class_id: None,
            edited: false,
        }
    }

    /// The decoded mask; a bad RLE is [`StoreError::CorruptMask`] naming instance `id`.
    fn mask(&self, id: i64) -> Result<Mask, StoreError> {
        Mask::from_rle(&state_rle(self)?).map_err(|source| StoreError::CorruptMask { id, source })
    }
}

/// Inserts a new instance from `state` and logs its creation as `kind`; returns its id.
pub(super) fn create_instance(
    tx: &rusqlite::Transaction<'_>,
    image_id: i64,
    state: &InstanceState,
    kind: &str,
) -> Result<i64, StoreError> {
    let id = put_state(tx, None, image_id, state)?;
    log_edit(tx, image_id, id, kind, None, Some(state))?;
    Ok(id)
}

/// `before` with a new mask, marked edited (keeping the original on the first edit).
pub(super) fn edited_state(before: &InstanceState, mask: &Mask) -> InstanceState {
    edited(before, |after| {
        after.rle = mask.to_rle().to_compressed();
        after.height = mask.height();
        after.width = mask.width();
    })
}

/// `before` changed by `change`, marked edited (keeping the original on the first edit).
pub(super) fn edited(
    before: &InstanceState,
    change: impl FnOnce(&mut InstanceState),
) -> InstanceState {
    let mut after = before.clone();
    change(&mut after);
    if !after.edited {
        after.original_rle = Some(before.rle.clone());
        after.original_class_id = Some(before.class_id);
        after.edited = true;
    }
    after
}

/// Direction of [`Project::replay`].
enum History {
    Undo,
    Redo,
}

pub(super) fn load_state(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
) -> Result<(i64, InstanceState), StoreError> {
    tx.query_row(
        "SELECT i.image_id, i.class_id, i.rle, m.height, m.width, i.iscrowd, i.origin, i.provenance,
                i.original_rle, i.original_class_id, i.edited
         FROM instances i JOIN images m ON m.id = i.image_id WHERE i.id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                InstanceState {
                    class_id: r.get(1)?,
                    rle: r.get(2)?,
                    height: r.get(3)?,
                    width: r.get(4)?,
                    iscrowd: r.get(5)?,
                    origin: r.get(6)?,
                    provenance: r.get(7)?,
                    original_rle: r.get(8)?,
                    original_class_id: r.get(9)?,
                    edited: r.get(10)?,
                },
            ))
        },
    )
    .optional()?
    .ok_or(StoreError::Missing { what: "instance", id })
}

fn state_rle(state: &InstanceState) -> Result<Rle, StoreError> {
    Rle::from_compressed(state.height, state.width, &state.rle)
        .map_err(|source| StoreError::CorruptMask { id: -1, source })
}

/// Writes an instance row from `state`: inserts it (with `id`, or a new id when `None`) or,
/// when the id exists, updates it in place. Returns the row id.
pub(super) fn put_state(
    tx: &rusqlite::Transaction<'_>,
    id: Option<i64>,
    image_id: i64,
    state: &InstanceState,
) -> Result<i64, StoreError> {
    let rle = state_rle(state)?;
    let b = rle.to_bbox();
    tx.execute(
        "INSERT INTO instances (id, image_id, class_id, bbox_x, bbox_y, bbox_w, bbox_h, area, rle,
                                iscrowd, origin, provenance, original_rle, original_class_id, edited)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT(id) DO UPDATE SET
             image_id = excluded.image_id, class_id = excluded.class_id,
             bbox_x = excluded.bbox_x, bbox_y = excluded.bbox_y, bbox_w = excluded.bbox_w,
             bbox_h = excluded.bbox_h, area = excluded.area, rle = excluded.rle,
             iscrowd = excluded.iscrowd, origin = excluded.origin, provenance = excluded.provenance,
             original_rle = excluded.original_rle, original_class_id = excluded.original_class_id,
             edited = excluded.edited, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![
            id,
            image_id,
            state.class_id,
            b[0],
            b[1],
            b[2],
            b[3],
            rle.area() as i64,
            state.rle,
            state.iscrowd,
            state.origin,
            state.provenance,
            state.original_rle,
            state.original_class_id,
            state.edited
        ],
    )?;
    Ok(id.unwrap_or_else(|| tx.last_insert_rowid()))
}

/// Makes the instance row match `state` (JSON of [`InstanceState`]); `None` deletes it.
fn apply_state(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    image_id: i64,
    state: Option<&str>,
) -> Result<(), StoreError> {
    match state {
        None => {
            tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
        }
        Some(json) => {
            let state: InstanceState = serde_json::from_str(json).map_err(|e| {
                StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                ))
            })?;
            put_state(tx, Some(id), image_id, &state)?;
        }
    }
    Ok(())
}

pub(super) fn log_edit(
    tx: &rusqlite::Transaction<'_>,
    image_id: i64,
    instance_id: i64,
    kind: &str,
    before: Option<&InstanceState>,
    after: Option<&InstanceState>,
) -> Result<(), StoreError> {
    // A new edit ends the redo stack.
    tx.execute("DELETE FROM edit_log WHERE undone = 1", [])?;
    let json = |s: Option<&InstanceState>| s.map(|s| serde_json::to_string(s).unwrap_or_default());
    tx.execute(
        "INSERT INTO edit_log (image_id, instance_id, kind, before, after) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![image_id, instance_id, kind, json(before), json(after)],
    )?;
    Ok(())
}

/// The `edit_log` kind of a finding's status change (its `before` / `after` are [`FindingState`]).
pub(super) const FINDING_EDIT: &str = "finding";

/// A finding's status as logged in `edit_log` for undo / redo.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct FindingState {
    pub(super) finding: i64,
    pub(super) status: String,
    pub(super) resolved_at: Option<String>,
}

/// Sets an audit finding's status (resolving it, or undo / redo putting a logged one back).
pub(super) fn write_finding_state(
    tx: &rusqlite::Transaction<'_>,
    state: &FindingState,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE audit_findings SET status = ?1, resolved_at = ?2 WHERE id = ?3",
        params![state.status, state.resolved_at, state.finding],
    )?;
    Ok(())
}

/// Undo / redo of a finding entry: puts the logged status back.
fn apply_finding_state(
    tx: &rusqlite::Transaction<'_>,
    state: Option<&str>,
) -> Result<(), StoreError> {
    let Some(json) = state else {
        return Ok(());
    };
    let state: FindingState = serde_json::from_str(json).map_err(|e| {
        StoreError::Invalid(format!("edit log holds a corrupt audit finding state: {e}"))
    })?;
    write_finding_state(tx, &state)
}
