//! Label-error audits in the project: each audit (which model, when, which images) and its
//! findings keyed by instance, so they survive restarts; a finding goes *stale* when its
//! instance changed after the audit. Resolving a finding (accept the fix, keep, delete) is one
//! undoable step of its image, chained in `edit_log` with the instance edit it makes.
//!
//! The scores themselves come from `eval::audit`; the store only keeps them (it knows the
//! kinds as strings: `dataset` imports nothing from `eval`).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::dataset::{Mask, Origin, Rle};

use super::edits::{
    CHAIN_SUFFIX, FINDING_EDIT, FindingState, InstanceState, create_instance, edited, edited_state,
    load_state, log_edit, put_state, write_finding_state,
};
use super::{Project, StoreError};

/// The four kinds of finding, as stored.
pub const FINDING_KINDS: [&str; 4] = ["missing", "spurious", "loose", "swap"];

/// How an audit got its out-of-sample predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// One model that did not train on the audited images.
    Model,
    /// K models, each predicting the fold it did not train on.
    KFold,
}

impl AuditMode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditMode::Model => "model",
            AuditMode::KFold => "kfold",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "kfold" {
            AuditMode::KFold
        } else {
            AuditMode::Model
        }
    }
}

/// An audit to store.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// What produced the predictions: a bundle path, or `k-fold K× preset`.
    pub model: String,
    /// How the predictions were kept out of sample.
    pub mode: AuditMode,
    /// The split audited (`None`: all images).
    pub split: Option<String>,
    /// Thresholds, folds, seed: whatever reproduces the audit.
    pub params: serde_json::Value,
    /// Ids of every audited image (also those without findings): their earlier open findings
    /// are replaced.
    pub images: Vec<i64>,
}

/// One finding to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFinding {
    /// The image.
    pub image_id: i64,
    /// The instance concerned (`None` for `missing`).
    pub instance_id: Option<i64>,
    /// `missing`, `spurious`, `loose` or `swap`.
    pub kind: String,
    /// How likely, in `[0, 1]`.
    pub score: f64,
    /// The image's pooled score.
    pub image_score: f64,
    /// A short reason for the reviewer.
    pub reason: String,
    /// The project class the model suggests (missing: its class; swap: the other class).
    pub suggested_class_id: Option<i64>,
    /// The predicted mask at image size (missing, loose).
    pub suggested_mask: Option<Rle>,
}

/// Where a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingStatus {
    /// In the queue.
    Open,
    /// The suggested fix was applied.
    Accepted,
    /// Reviewed and kept as labelled.
    Kept,
    /// The instance was deleted.
    Deleted,
}

impl FindingStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingStatus::Open => "open",
            FindingStatus::Accepted => "accepted",
            FindingStatus::Kept => "kept",
            FindingStatus::Deleted => "deleted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => FindingStatus::Open,
            "accepted" => FindingStatus::Accepted,
            "kept" => FindingStatus::Kept,
            "deleted" => FindingStatus::Deleted,
            _ => return None,
        })
    }
}

/// What the reviewer decided about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Apply the suggested fix: missing → new instance, loose → suggested mask, swap →
    /// suggested class, spurious → instance deleted.
    AcceptFix,
    /// The label is right: mark the finding reviewed.
    Keep,
    /// Delete the instance.
    Delete,
}

/// A stored finding as the queue shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRow {
    /// Row id.
    pub id: i64,
    /// The audit it belongs to.
    pub audit_id: i64,
    /// The audit's model.
    pub model: String,
    /// When the audit was stored (UTC, ISO 8601).
    pub audited_at: String,
    /// The image.
    pub image_id: i64,
    /// The image file, relative to `images/`.
    pub image_path: String,
    /// The instance (`None` for `missing`).
    pub instance_id: Option<i64>,
    /// The instance's class now (`None` when missing or deleted).
    pub instance_class_id: Option<i64>,
    /// `missing`, `spurious`, `loose` or `swap`.
    pub kind: String,
    /// How likely, in `[0, 1]`.
    pub score: f64,
    /// The image's pooled score.
    pub image_score: f64,
    /// Why.
    pub reason: String,
    /// The class the model suggests.
    pub suggested_class_id: Option<i64>,
    /// The mask the model suggests.
    pub suggested_mask: Option<Rle>,
    /// Open, accepted, kept or deleted.
    pub status: FindingStatus,
    /// The labels changed since the audit: the instance was edited or deleted (for `missing`,
    /// any instance of the image changed after the audit).
    pub stale: bool,
}

/// A stored audit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Row id.
    pub id: i64,
    /// What produced the predictions.
    pub model: String,
    /// How they were kept out of sample.
    pub mode: AuditMode,
    /// The split audited.
    pub split: Option<String>,
    /// Images audited.
    pub images: i64,
    /// Findings stored (any status).
    pub findings: i64,
    /// When (UTC, ISO 8601).
    pub created_at: String,
}

/// The stored finding a resolution works on.
struct OpenFinding {
    image_id: i64,
    instance_id: Option<i64>,
    kind: String,
    status: String,
    audit_id: i64,
    model: String,
    suggested_class_id: Option<i64>,
    suggested_rle: Option<String>,
    width: u32,
    height: u32,
}

const ROW_SELECT: &str = "
    SELECT f.id, f.audit_id, a.model, a.created_at, f.image_id, m.path, f.instance_id, i.class_id,
           f.kind, f.score, f.image_score, f.reason, f.suggested_class_id, f.suggested_rle,
           f.status, m.height, m.width,
           f.instance_id IS NOT NULL
             AND (i.id IS NULL OR i.class_id IS NOT f.audited_class_id OR i.rle IS NOT f.audited_rle),
           f.audited_rle
    FROM audit_findings f
    JOIN audits a ON a.id = f.audit_id
    JOIN images m ON m.id = f.image_id
    LEFT JOIN instances i ON i.id = f.instance_id";

impl Project {
    /// Stores an audit and its findings in one transaction; open findings of earlier audits on
    /// the audited images are replaced (resolved ones stay as history). Returns the audit id.
    pub fn save_audit(
        &mut self,
        audit: &NewAudit,
        findings: &[NewFinding],
    ) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO audits (model, mode, split, params, images) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                audit.model,
                audit.mode.as_str(),
                audit.split,
                audit.params.to_string(),
                audit.images.len() as i64
            ],
        )?;
        let audit_id = tx.last_insert_rowid();
        {
            let mut clear = tx.prepare(
                "DELETE FROM audit_findings WHERE status = 'open' AND image_id = ?1 AND audit_id <> ?2",
            )?;
            for image in &audit.images {
                clear.execute(params![image, audit_id])?;
            }
            let mut insert = tx.prepare(
                "INSERT INTO audit_findings (audit_id, image_id, instance_id, kind, score,
                     image_score, reason, suggested_class_id, suggested_rle, audited_class_id,
                     audited_rle)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for f in findings {
                check_finding(&tx, f)?;
                let audited = match f.instance_id {
                    Some(id) => Some(
                        tx.query_row(
                            "SELECT class_id, rle FROM instances WHERE id = ?1 AND image_id = ?2",
                            params![id, f.image_id],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                        )
                        .optional()?
                        .ok_or(StoreError::Missing {
                            what: "instance",
                            id,
                        })?,
                    ),
                    None => Some((0, labels_fingerprint(&tx, f.image_id)?)),
                };
                insert.execute(params![
                    audit_id,
                    f.image_id,
                    f.instance_id,
                    f.kind,
                    f.score,
                    f.image_score,
                    f.reason,
                    f.suggested_class_id,
                    f.suggested_mask.as_ref().map(Rle::to_compressed),
                    audited
                        .as_ref()
                        .filter(|_| f.instance_id.is_some())
                        .map(|a| a.0),
                    audited.as_ref().map(|a| a.1.clone()),
                ])?;
            }
        }
        tx.commit()?;
        Ok(audit_id)
    }

    /// Open findings, highest image score first, then finding score; `kind` filters.
    pub fn audit_queue(&self, kind: Option<&str>) -> Result<Vec<FindingRow>, StoreError> {
        let sql = format!(
            "{ROW_SELECT} WHERE f.status = 'open' AND (?1 IS NULL OR f.kind = ?1)
             ORDER BY f.image_score DESC, f.image_id, f.score DESC, f.id"
        );
        self.finding_rows(&sql, params![kind])
    }

    /// Findings of one image (any status), highest score first: the editor's highlights.
    pub fn image_findings(&self, image_id: i64) -> Result<Vec<FindingRow>, StoreError> {
        let sql = format!("{ROW_SELECT} WHERE f.image_id = ?1 ORDER BY f.score DESC, f.id");
        self.finding_rows(&sql, params![image_id])
    }

    /// One finding by id.
    pub fn finding(&self, finding_id: i64) -> Result<FindingRow, StoreError> {
        let sql = format!("{ROW_SELECT} WHERE f.id = ?1");
        self.finding_rows(&sql, params![finding_id])?
            .pop()
            .ok_or(StoreError::Missing {
                what: "audit finding",
                id: finding_id,
            })
    }

    /// Open findings per kind; every kind is present (zero when none).
    pub fn audit_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts: BTreeMap<String, u64> =
            FINDING_KINDS.iter().map(|k| ((*k).to_owned(), 0)).collect();
        let mut stmt = self.conn.prepare(
            "SELECT kind, COUNT(*) FROM audit_findings WHERE status = 'open' GROUP BY kind",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (kind, n) = row?;
            counts.insert(kind, n.max(0) as u64);
        }
        Ok(counts)
    }

    /// Audits, newest first.
    pub fn audits(&self) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.id, a.model, a.mode, a.split, a.images, a.created_at,
                    (SELECT COUNT(*) FROM audit_findings f WHERE f.audit_id = a.id)
             FROM audits a ORDER BY a.id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                model: r.get(1)?,
                mode: AuditMode::parse(&r.get::<_, String>(2)?),
                split: r.get(3)?,
                images: r.get(4)?,
                created_at: r.get(5)?,
                findings: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Resolves an open finding as one undoable step of its image (`undo_image` restores the
    /// instance and reopens the finding). Accepting a fix marks the instance's provenance with
    /// `audit` and the model. Returns the instance created or changed (`None` for Keep).
    pub fn resolve_finding(
        &mut self,
        finding_id: i64,
        how: Resolution,
    ) -> Result<Option<i64>, StoreError> {
        let tx = self.conn.transaction()?;
        let f = load_finding(&tx, finding_id)?;
        if f.status != FindingStatus::Open.as_str() {
            return Err(StoreError::Invalid(format!(
                "audit finding {finding_id} is already {}",
                f.status
            )));
        }
        let stamp = serde_json::json!({
            "source": "audit",
            "model": f.model,
            "audit": f.audit_id,
            "finding": finding_id,
        });
        let (touched, status) = match (how, f.kind.as_str()) {
            (Resolution::Keep, _) => (f.instance_id, FindingStatus::Kept),
            (Resolution::AcceptFix, "missing") => {
                let class_id = f
                    .suggested_class_id
                    .ok_or_else(|| no_fix(finding_id, "class"))?;
                let mask = suggested_mask(&f, finding_id)?;
                let state = InstanceState::new(
                    class_id,
                    &mask,
                    false,
                    Origin::Model,
                    Some(stamp.to_string()),
                );
                let id = create_instance(&tx, f.image_id, &state, &chained("create"))?;
                (Some(id), FindingStatus::Accepted)
            }
            (Resolution::AcceptFix, "loose") => {
                let id = instance_of(&f, finding_id)?;
                let mask = suggested_mask(&f, finding_id)?;
                change_instance(&tx, id, &stamp, |before| edited_state(before, &mask))?;
                (Some(id), FindingStatus::Accepted)
            }
            (Resolution::AcceptFix, "swap") => {
                let id = instance_of(&f, finding_id)?;
                let class_id = f
                    .suggested_class_id
                    .ok_or_else(|| no_fix(finding_id, "class"))?;
                change_instance(&tx, id, &stamp, |before| {
                    edited(before, |after| after.class_id = class_id)
                })?;
                (Some(id), FindingStatus::Accepted)
            }
            (Resolution::AcceptFix, _) | (Resolution::Delete, _) => {
                let id = instance_of(&f, finding_id)?;
                let (image_id, before) = load_state(&tx, id)?;
                tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
                log_edit(&tx, image_id, id, &chained("delete"), Some(&before), None)?;
                let status = if how == Resolution::Delete {
                    FindingStatus::Deleted
                } else {
                    FindingStatus::Accepted
                };
                (Some(id), status)
            }
        };
        let resolved_at: String =
            tx.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?;
        let before = FindingState {
            finding: finding_id,
            status: FindingStatus::Open.as_str().to_owned(),
            resolved_at: None,
        };
        let after = FindingState {
            finding: finding_id,
            status: status.as_str().to_owned(),
            resolved_at: Some(resolved_at),
        };
        write_finding_state(&tx, &after)?;
        log_finding(&tx, f.image_id, touched.unwrap_or(0), &before, &after)?;
        tx.commit()?;
        Ok(touched)
    }

    fn finding_rows(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<FindingRow>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(args, |r| {
            let (height, width): (u32, u32) = (r.get(15)?, r.get(16)?);
            let suggested: Option<String> = r.get(13)?;
            Ok((
                FindingRow {
                    id: r.get(0)?,
                    audit_id: r.get(1)?,
                    model: r.get(2)?,
                    audited_at: r.get(3)?,
                    image_id: r.get(4)?,
                    image_path: r.get(5)?,
                    instance_id: r.get(6)?,
                    instance_class_id: r.get(7)?,
                    kind: r.get(8)?,
                    score: r.get(9)?,
                    image_score: r.get(10)?,
                    reason: r.get(11)?,
                    suggested_class_id: r.get(12)?,
                    suggested_mask: None,
                    status: FindingStatus::parse(&r.get::<_, String>(14)?)
                        .unwrap_or(FindingStatus::Open),
                    stale: r.get(17)?,
                },
                suggested.map(|s| (height, width, s)),
                r.get::<_, Option<String>>(18)?,
            ))
        })?;
        let mut out = Vec::new();
        let mut fingerprints: BTreeMap<i64, String> = BTreeMap::new();
        for row in rows {
            let (mut row, suggested, audited) = row?;
            if row.instance_id.is_none() {
                let now = match fingerprints.get(&row.image_id) {
                    Some(f) => f.clone(),
                    None => {
                        let f = labels_fingerprint(&self.conn, row.image_id)?;
                        fingerprints.insert(row.image_id, f.clone());
                        f
                    }
                };
                row.stale = audited.as_deref() != Some(now.as_str());
            }
            if let Some((h, w, s)) = suggested {
                row.suggested_mask = Some(
                    Rle::from_compressed(h, w, &s)
                        .map_err(|source| StoreError::CorruptMask { id: row.id, source })?,
                );
            }
            out.push(row);
        }
        Ok(out)
    }
}

/// A digest of an image's labels (every instance's id, class and mask): a `missing` finding
/// is stale once it changes, and fresh again when an undo restores it.
fn labels_fingerprint(conn: &rusqlite::Connection, image_id: i64) -> Result<String, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, class_id, rle FROM instances WHERE image_id = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([image_id])?;
    let mut digest = Sha256::new();
    while let Some(r) = rows.next()? {
        let (id, class_id, rle): (i64, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        digest.update(format!("{id}:{class_id}:{rle}\n").as_bytes());
    }
    Ok(format!("labels:{}", super::hex(&digest.finalize())))
}

/// Rejects a finding the queue could not act on, naming it.
fn check_finding(tx: &rusqlite::Transaction<'_>, f: &NewFinding) -> Result<(), StoreError> {
    let what = |problem: String| {
        StoreError::Invalid(format!(
            "audit finding on image {} ({}): {problem}",
            f.image_id, f.kind
        ))
    };
    if !FINDING_KINDS.contains(&f.kind.as_str()) {
        return Err(what("unknown kind".into()));
    }
    if !(0.0..=1.0).contains(&f.score) || !(0.0..=1.0).contains(&f.image_score) {
        return Err(what(format!(
            "scores must lie in [0, 1] (score {}, image score {})",
            f.score, f.image_score
        )));
    }
    if (f.kind == "missing") != f.instance_id.is_none() {
        return Err(what(
            "a missing finding has no instance; every other kind has one".into(),
        ));
    }
    if let Some(mask) = &f.suggested_mask {
        let (h, w): (u32, u32) = tx
            .query_row(
                "SELECT height, width FROM images WHERE id = ?1",
                [f.image_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(StoreError::Missing {
                what: "image",
                id: f.image_id,
            })?;
        if (mask.height, mask.width) != (h, w) {
            return Err(what(format!(
                "suggested mask is {}×{}, the image {w}×{h}",
                mask.width, mask.height
            )));
        }
    }
    Ok(())
}

fn load_finding(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<OpenFinding, StoreError> {
    tx.query_row(
        "SELECT f.image_id, f.instance_id, f.kind, f.status, f.audit_id, a.model,
                f.suggested_class_id, f.suggested_rle, m.width, m.height
         FROM audit_findings f JOIN audits a ON a.id = f.audit_id JOIN images m ON m.id = f.image_id
         WHERE f.id = ?1",
        [id],
        |r| {
            Ok(OpenFinding {
                image_id: r.get(0)?,
                instance_id: r.get(1)?,
                kind: r.get(2)?,
                status: r.get(3)?,
                audit_id: r.get(4)?,
                model: r.get(5)?,
                suggested_class_id: r.get(6)?,
                suggested_rle: r.get(7)?,
                width: r.get(8)?,
                height: r.get(9)?,
            })
        },
    )
    .optional()?
    .ok_or(StoreError::Missing {
        what: "audit finding",
        id,
    })
}

fn no_fix(finding: i64, what: &str) -> StoreError {
    StoreError::Invalid(format!("audit finding {finding} suggests no {what}"))
}

fn instance_of(f: &OpenFinding, finding: i64) -> Result<i64, StoreError> {
    f.instance_id
        .ok_or_else(|| StoreError::Invalid(format!("audit finding {finding} has no instance")))
}

fn suggested_mask(f: &OpenFinding, finding: i64) -> Result<Mask, StoreError> {
    let s = f
        .suggested_rle
        .as_deref()
        .ok_or_else(|| no_fix(finding, "mask"))?;
    let rle =
        Rle::from_compressed(f.height, f.width, s).map_err(|source| StoreError::CorruptMask {
            id: finding,
            source,
        })?;
    Mask::from_rle(&rle).map_err(|source| StoreError::CorruptMask {
        id: finding,
        source,
    })
}

/// `kind` joined to the finding entry logged after it (one undo step).
fn chained(kind: &str) -> String {
    format!("{kind}{CHAIN_SUFFIX}")
}

/// Rewrites an instance with `change`, stamping its provenance with the audit, logged as the
/// first half of the resolution's undo step.
fn change_instance(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    stamp: &serde_json::Value,
    change: impl FnOnce(&InstanceState) -> InstanceState,
) -> Result<(), StoreError> {
    let (image_id, before) = load_state(tx, id)?;
    let mut after = change(&before);
    after.provenance = Some(stamped(before.provenance.as_deref(), stamp));
    put_state(tx, Some(id), image_id, &after)?;
    log_edit(
        tx,
        image_id,
        id,
        &chained("update"),
        Some(&before),
        Some(&after),
    )
}

/// Provenance JSON with `"audit": stamp` added (a non-object provenance is kept under `"was"`).
fn stamped(provenance: Option<&str>, stamp: &serde_json::Value) -> String {
    let mut object = match provenance.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Object(map))) => map,
        Some(Ok(other)) => serde_json::Map::from_iter([("was".to_owned(), other)]),
        Some(Err(_)) => serde_json::Map::from_iter([(
            "was".to_owned(),
            serde_json::Value::String(provenance.unwrap_or_default().to_owned()),
        )]),
        None => serde_json::Map::new(),
    };
    object.insert("audit".to_owned(), stamp.clone());
    serde_json::Value::Object(object).to_string()
}

fn log_finding(
    tx: &rusqlite::Transaction<'_>,
    image_id: i64,
    instance_id: i64,
    before: &FindingState,
    after: &FindingState,
) -> Result<(), StoreError> {
    // A new step ends the redo stack, as every edit does.
    tx.execute("DELETE FROM edit_log WHERE undone = 1", [])?;
    let json = |s: &FindingState| serde_json::to_string(s).unwrap_or_default();
    tx.execute(
        "INSERT INTO edit_log (image_id, instance_id, kind, before, after) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![image_id, instance_id, FINDING_EDIT, json(before), json(after)],
    )?;
    Ok(())
}
