//! The snapshot catalog and the progress of replication cycles.
//!
//! At the DR site, a cycle of a VFS goes through [`Store::begin_cycle`] (the cycle is in
//! flight, `receiving`), [`Store::cycle_progress`] while its data arrives,
//! [`Store::cycle_applied`] once the replica images hold all of it, and
//! [`Store::commit_snapshot`], which records the snapshot reflinked from the replica images
//! and ends the cycle in the same transaction; [`Store::abandon_cycle`] drops it instead. A
//! snapshot's id is the number of its cycle, so the directory of its images is known before it
//! is committed. Retention removes a snapshot in two steps, [`Store::mark_pruning`] before its
//! files are deleted and [`Store::forget_snapshot`] after, so that after a crash in between
//! the agent finds the snapshots it was deleting and finishes.
//!
//! The active site's side (the last cycle acknowledged) is in `source.rs`.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definitions::exists;
use super::{Change, Db, StateError, Store, epoch_to_db, now_unix, time_to_db};

/// One volume's image in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotImage {
    /// The VFS volume.
    pub volume: String,
    /// The reflinked image, `<pool>/snapshots/<vfs>/<id>/<volume>.img`.
    pub path: PathBuf,
    /// Its apparent size in bytes.
    pub size: u64,
    /// The bytes allocated to it (shared with other snapshots through reflinks).
    pub allocated: u64,
}

/// Whether a snapshot is kept or being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Committed,
    /// Retention chose to remove it: its files may be partly deleted.
    Pruning,
}

/// A snapshot in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub vfs: String,
    /// Increases with each snapshot of the VFS; equal to `cycle`.
    pub id: u64,
    /// The replication cycle whose data it holds.
    pub cycle: u64,
    /// When it was committed (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The VFS epoch the cycle was replicated under.
    pub epoch: u64,
    pub images: Vec<SnapshotImage>,
    /// The bytes the cycle changed (uncompressed).
    pub changed_bytes: u64,
    /// The bytes the cycle sent over the link.
    pub shipped_bytes: u64,
    pub state: SnapshotState,
}

/// Where the cycle in flight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CycleState {
    /// Its data is arriving: the replica images are being written.
    Receiving,
    /// All its data is in the replica images; only the snapshot remains to be taken.
    Applied,
}

/// The cycle in flight for a VFS at the DR site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub cycle: u64,
    /// The snapshot the delta applies to; `None` for a full (initial) sync.
    pub base: Option<u64>,
    pub state: CycleState,
    /// When it began (seconds since the Unix epoch).
    pub started_unix: u64,
    /// What the receiver recorded to resume it ([`Store::cycle_progress`]); `{}` at first.
    pub progress: Value,
}

const COLUMNS: &str =
    "vfs, id, cycle, created_unix, epoch, images, changed_bytes, shipped_bytes, state";
/// Tails for [`select`]: one snapshot, the latest committed one, the highest id of any state.
const BY_ID: &str = "AND id = ?2";
const LATEST_COMMITTED: &str = "AND state = 'committed' ORDER BY id DESC LIMIT 1";
const HIGHEST: &str = "ORDER BY id DESC LIMIT 1";

/// A row of `snapshot` as stored, before decoding.
struct SnapshotRow {
    vfs: String,
    /// id, cycle, created_unix, epoch, changed_bytes, shipped_bytes
    numbers: [i64; 6],
    images: String,
    state: String,
}

impl SnapshotRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
        let n = |i| row.get::<_, i64>(i);
        Ok(SnapshotRow {
            vfs: row.get(0)?,
            numbers: [n(1)?, n(2)?, n(3)?, n(4)?, n(6)?, n(7)?],
            images: row.get(5)?,
            state: row.get(8)?,
        })
    }

    fn decode(self, db: &Db<'_>) -> Result<Snapshot, StateError> {
        let vfs = self.vfs.as_str();
        let [id, cycle, created, epoch, changed, shipped] = self.numbers;
        let images =
            serde_json::from_str(&self.images).map_err(|e| db.decode(vfs, "snapshot images", e))?;
        let state = match self.state.as_str() {
            "committed" => SnapshotState::Committed,
            "pruning" => SnapshotState::Pruning,
            other => return Err(db.decode(vfs, "snapshot state", format_args!("{other:?}"))),
        };
        Ok(Snapshot {
            id: db.u64(vfs, "snapshot id", id)?,
            cycle: db.u64(vfs, "snapshot cycle", cycle)?,
            created_unix: db.u64(vfs, "snapshot time", created)?,
            epoch: db.u64(vfs, "snapshot epoch", epoch)?,
            images,
            changed_bytes: db.u64(vfs, "snapshot changed bytes", changed)?,
            shipped_bytes: db.u64(vfs, "snapshot shipped bytes", shipped)?,
            state,
            vfs: self.vfs,
        })
    }
}

/// The snapshots of `vfs` selected and ordered by `tail` (SQL after `WHERE vfs = ?1`, with
/// `?2` bound to `id`, if any).
fn select(
    db: &Db<'_>,
    vfs: &str,
    tail: &str,
    id: Option<i64>,
) -> Result<Vec<Snapshot>, StateError> {
    let sql = format!("SELECT {COLUMNS} FROM snapshot WHERE vfs = ?1 {tail}");
    let mut stmt = db.conn.prepare_cached(&sql).map_err(|e| db.fail(e))?;
    let rows = match id {
        Some(id) => stmt.query_map(params![vfs, id], SnapshotRow::read),
        None => stmt.query_map(params![vfs], SnapshotRow::read),
    }
    .map_err(|e| db.fail(e))?
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| db.fail(e))?;
    rows.into_iter().map(|row| row.decode(db)).collect()
}

/// The cycle in flight for `vfs`.
fn load_in_flight(db: &Db<'_>, vfs: &str) -> Result<Option<InFlight>, StateError> {
    let sql = "SELECT cycle, base, state, started_unix, progress FROM cycle WHERE vfs = ?1";
    let read = |row: &Row<'_>| -> rusqlite::Result<(i64, Option<i64>, String, i64, String)> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ))
    };
    let row = db.conn.query_row(sql, [vfs], read).optional();
    let Some((cycle, base, state, started, progress)) = row.map_err(|e| db.fail(e))? else {
        return Ok(None);
    };
    let state = match state.as_str() {
        "receiving" => CycleState::Receiving,
        "applied" => CycleState::Applied,
        other => return Err(db.decode(vfs, "cycle state", format_args!("{other:?}"))),
    };
    Ok(Some(InFlight {
        cycle: db.u64(vfs, "cycle", cycle)?,
        base: base.map(|b| db.u64(vfs, "cycle base", b)).transpose()?,
        state,
        started_unix: db.u64(vfs, "cycle start time", started)?,
        progress: serde_json::from_str(&progress)
            .map_err(|e| db.decode(vfs, "cycle progress", e))?,
    }))
}

/// `found`, the cycle in flight for `vfs`, which must be `cycle`.
fn expect_cycle(vfs: &str, cycle: u64, found: Option<InFlight>) -> Result<InFlight, StateError> {
    match found {
        Some(flight) if flight.cycle == cycle => Ok(flight),
        Some(flight) => Err(StateError::CycleInProgress {
            vfs: vfs.to_string(),
            cycle: flight.cycle,
            offered: cycle,
        }),
        None => Err(StateError::NoCycle {
            vfs: vfs.to_string(),
            cycle,
        }),
    }
}

pub(super) fn require_vfs(db: &Db<'_>, vfs: &str) -> Result<(), StateError> {
    match exists(db, vfs)? {
        true => Ok(()),
        false => Err(StateError::UnknownVfs {
            vfs: vfs.to_string(),
        }),
    }
}

pub(super) fn exec(
    db: &Db<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, StateError> {
    db.conn.execute(sql, params).map_err(|e| db.fail(e))
}

/// `Updated` if a statement changed rows, `Unchanged` if not.
pub(super) fn updated_if(rows: usize) -> Change {
    if rows > 0 {
        Change::Updated
    } else {
        Change::Unchanged
    }
}

/// SQLite integers are i64: larger numbers cannot be stored.
pub(super) fn to_db(vfs: &str, what: &'static str, value: u64) -> Result<i64, StateError> {
    i64::try_from(value).map_err(|_| StateError::OutOfRange {
        vfs: vfs.to_string(),
        what,
        value,
    })
}

pub(super) fn encode(
    vfs: &str,
    what: &'static str,
    value: &impl Serialize,
) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|source| StateError::EncodeRecord {
        vfs: vfs.to_string(),
        what,
        source,
    })
}

impl Store {
    /// Records cycle `cycle` of `vfs` as in flight (`receiving`), a delta on snapshot `base`
    /// or, with `None`, a full sync.
    ///
    /// The same cycle with the same base again is `Unchanged` (whatever its state: see
    /// [`Store::in_flight`] to resume it). Refused: another cycle while one is in flight,
    /// `receiving` or `applied` ([`StateError::CycleInProgress`]: commit or abandon it first);
    /// a cycle not above every stored snapshot ([`StateError::StaleCycle`]); a base that is not
    /// the latest committed snapshot, which the replica images hold
    /// ([`StateError::CycleBase`]); an unknown VFS.
    pub fn begin_cycle(
        &mut self,
        vfs: &str,
        cycle: u64,
        base: Option<u64>,
    ) -> Result<Change, StateError> {
        let cycle_db = to_db(vfs, "cycle", cycle)?;
        let base_db = base.map(|b| to_db(vfs, "cycle base", b)).transpose()?;
        let op = || format!("begin cycle {cycle} of VFS {vfs}");
        self.write(&op, |db| {
            require_vfs(db, vfs)?;
            let mismatch = |expected| StateError::CycleBase {
                vfs: vfs.to_string(),
                cycle,
                base,
                expected,
            };
            if let Some(flight) = load_in_flight(db, vfs)? {
                let flight = expect_cycle(vfs, cycle, Some(flight))?;
                return match flight.base == base {
                    true => Ok(Change::Unchanged),
                    false => Err(mismatch(flight.base)),
                };
            }
            if let Some(latest) = select(db, vfs, HIGHEST, None)?.pop()
                && cycle <= latest.id
            {
                return Err(StateError::StaleCycle {
                    vfs: vfs.to_string(),
                    cycle,
                    latest: latest.id,
                });
            }
            if base.is_some() {
                let expected = select(db, vfs, LATEST_COMMITTED, None)?.pop().map(|s| s.id);
                if base != expected {
                    return Err(mismatch(expected));
                }
            }
            exec(
                db,
                "INSERT INTO cycle (vfs, cycle, base, state, started_unix, progress)
                 VALUES (?1, ?2, ?3, 'receiving', ?4, '{}')",
                params![vfs, cycle_db, base_db, time_to_db(now_unix())],
            )?;
            Ok(Change::Created)
        })
    }

    /// Replaces the resume information of cycle `cycle` of `vfs`, which must be in flight
    /// ([`StateError::NoCycle`], [`StateError::CycleInProgress`]); the same value again is
    /// `Unchanged`.
    pub fn cycle_progress(
        &mut self,
        vfs: &str,
        cycle: u64,
        progress: &Value,
    ) -> Result<Change, StateError> {
        let json = encode(vfs, "cycle progress", progress)?;
        let op = || format!("record the progress of cycle {cycle} of VFS {vfs}");
        self.write(&op, |db| {
            expect_cycle(vfs, cycle, load_in_flight(db, vfs)?)?;
            let sql = "UPDATE cycle SET progress = ?2 WHERE vfs = ?1 AND progress IS NOT ?2";
            Ok(updated_if(exec(db, sql, params![vfs, json])?))
        })
    }

    /// Marks cycle `cycle` of `vfs` `applied`: all its data is in the replica images, so it
    /// can no longer be received again, only committed (or abandoned and the replica restored
    /// from the latest snapshot). Again is `Unchanged`.
    pub fn cycle_applied(&mut self, vfs: &str, cycle: u64) -> Result<Change, StateError> {
        let op = || format!("mark cycle {cycle} of VFS {vfs} applied");
        self.write(&op, |db| {
            expect_cycle(vfs, cycle, load_in_flight(db, vfs)?)?;
            let sql = "UPDATE cycle SET state = 'applied' WHERE vfs = ?1 AND state != 'applied'";
            Ok(updated_if(exec(db, sql, [vfs])?))
        })
    }

    /// The cycle in flight for `vfs`, if any.
    pub fn in_flight(&self, vfs: &str) -> Result<Option<InFlight>, StateError> {
        let op = || format!("read the cycle in flight of VFS {vfs}");
        load_in_flight(&self.read(&op), vfs)
    }

    /// Records snapshot `cycle` of `vfs` (committed now) and ends the cycle, in one
    /// transaction: a failure leaves the cycle in flight and no snapshot.
    ///
    /// The cycle must be in flight ([`StateError::NoCycle`], [`StateError::CycleInProgress`]),
    /// except that a cycle already committed returns the stored snapshot, so a repeated commit
    /// is harmless. An `epoch` below the stored epoch of the VFS is [`StateError::StaleEpoch`].
    pub fn commit_snapshot(
        &mut self,
        vfs: &str,
        cycle: u64,
        epoch: u64,
        images: &[SnapshotImage],
        changed_bytes: u64,
        shipped_bytes: u64,
    ) -> Result<Snapshot, StateError> {
        let id = to_db(vfs, "cycle", cycle)?;
        let epoch_db = epoch_to_db(vfs, epoch)?;
        let changed = to_db(vfs, "changed bytes", changed_bytes)?;
        let shipped = to_db(vfs, "shipped bytes", shipped_bytes)?;
        let json = encode(vfs, "snapshot images", &images)?;
        let op = || format!("commit snapshot {cycle} of VFS {vfs}");
        self.write(&op, |db| {
            if let Some(done) = select(db, vfs, BY_ID, Some(id))?.pop() {
                return Ok(done);
            }
            expect_cycle(vfs, cycle, load_in_flight(db, vfs)?)?;
            let sql = "SELECT epoch FROM vfs WHERE name = ?1";
            let stored: i64 = db
                .conn
                .query_row(sql, [vfs], |row| row.get(0))
                .map_err(|e| db.fail(e))?;
            let stored = db.u64(vfs, "epoch", stored)?;
            if epoch < stored {
                return Err(StateError::StaleEpoch {
                    vfs: vfs.to_string(),
                    stored,
                    offered: epoch,
                });
            }
            let created_unix = now_unix();
            let created = time_to_db(created_unix);
            exec(
                db,
                &format!(
                    "INSERT INTO snapshot ({COLUMNS})
                     VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, 'committed')"
                ),
                params![vfs, id, created, epoch_db, json, changed, shipped],
            )?;
            exec(
                db,
                "INSERT INTO snapshot_point (vfs, id, point)
                 SELECT vfs, ?2, json_extract(progress, '$.point') FROM cycle
                 WHERE vfs = ?1 AND json_type(progress, '$.point') = 'integer'",
                params![vfs, id],
            )?;
            exec(db, "DELETE FROM cycle WHERE vfs = ?1", [vfs])?;
            Ok(Snapshot {
                vfs: vfs.to_string(),
                id: cycle,
                cycle,
                created_unix,
                epoch,
                images: images.to_vec(),
                changed_bytes,
                shipped_bytes,
                state: SnapshotState::Committed,
            })
        })
    }

    /// Drops the cycle in flight for `vfs`: `Updated` if there was one, `Unchanged` if not.
    /// The caller cleans up what it wrote (an `applied` cycle changed the replica images).
    pub fn abandon_cycle(&mut self, vfs: &str) -> Result<Change, StateError> {
        let op = || format!("abandon the cycle in flight of VFS {vfs}");
        self.write(&op, |db| {
            Ok(updated_if(exec(
                db,
                "DELETE FROM cycle WHERE vfs = ?1",
                [vfs],
            )?))
        })
    }

    /// The identity of the point snapshot `id` of `vfs` was made from, if its cycle's progress
    /// named one (`$.point`, see [`Store::cycle_progress`]) when it was committed.
    pub fn snapshot_point(&self, vfs: &str, id: u64) -> Result<Option<u64>, StateError> {
        let id_db = to_db(vfs, "snapshot id", id)?;
        let op = || format!("read the point of snapshot {id} of VFS {vfs}");
        let db = self.read(&op);
        let sql = "SELECT point FROM snapshot_point WHERE vfs = ?1 AND id = ?2";
        let point: Option<i64> = db
            .conn
            .query_row(sql, params![vfs, id_db], |row| row.get(0))
            .optional()
            .map_err(|e| db.fail(e))?;
        point.map(|p| db.u64(vfs, "snapshot point", p)).transpose()
    }

    /// The snapshots of `vfs` by id, those being pruned included (none for an unknown VFS).
    pub fn snapshots(&self, vfs: &str) -> Result<Vec<Snapshot>, StateError> {
        let op = || format!("read the snapshots of VFS {vfs}");
        select(&self.read(&op), vfs, "ORDER BY id", None)
    }

    /// The latest committed snapshot of `vfs`: what its replica images hold.
    pub fn latest_snapshot(&self, vfs: &str) -> Result<Option<Snapshot>, StateError> {
        let op = || format!("read the latest snapshot of VFS {vfs}");
        Ok(select(&self.read(&op), vfs, LATEST_COMMITTED, None)?.pop())
    }

    /// Snapshot `id` of `vfs`, if stored.
    pub fn snapshot(&self, vfs: &str, id: u64) -> Result<Option<Snapshot>, StateError> {
        let Ok(id_db) = i64::try_from(id) else {
            return Ok(None);
        };
        let op = || format!("read snapshot {id} of VFS {vfs}");
        Ok(select(&self.read(&op), vfs, BY_ID, Some(id_db))?.pop())
    }

    /// Marks snapshots of `vfs` `pruning` before their files are deleted, all or none
    /// ([`StateError::UnknownSnapshot`]; [`StateError::SnapshotInUse`] for the base of the
    /// cycle in flight). Marking one again does nothing.
    pub fn mark_pruning(&mut self, vfs: &str, ids: &[u64]) -> Result<(), StateError> {
        let op = || format!("mark snapshots of VFS {vfs} for pruning");
        self.write(&op, |db| {
            let flight = load_in_flight(db, vfs)?;
            for &id in ids {
                if let Some(flight) = flight.as_ref().filter(|f| f.base == Some(id)) {
                    return Err(StateError::SnapshotInUse {
                        vfs: vfs.to_string(),
                        id,
                        cycle: flight.cycle,
                    });
                }
                let sql = "UPDATE snapshot SET state = 'pruning' WHERE vfs = ?1 AND id = ?2";
                let found = match i64::try_from(id) {
                    Ok(id_db) => exec(db, sql, params![vfs, id_db])?,
                    Err(_) => 0,
                };
                if found == 0 {
                    return Err(StateError::UnknownSnapshot {
                        vfs: vfs.to_string(),
                        id,
                    });
                }
            }
            Ok(())
        })
    }

    /// Removes snapshot `id` of `vfs` from the catalog once its files are deleted: `Updated`
    /// if it was stored, `Unchanged` if not. It must be marked first
    /// ([`StateError::NotPruning`]).
    pub fn forget_snapshot(&mut self, vfs: &str, id: u64) -> Result<Change, StateError> {
        self.forget_snapshots(vfs, &[id])
    }

    /// [`Store::forget_snapshot`] for several snapshots in one transaction (one sync of the
    /// database however many there are): all or none. `Updated` if any was stored.
    pub fn forget_snapshots(&mut self, vfs: &str, ids: &[u64]) -> Result<Change, StateError> {
        let op = || format!("forget {} snapshot(s) of VFS {vfs}", ids.len());
        self.write(&op, |db| {
            let mut change = Change::Unchanged;
            for &id in ids {
                let Ok(id_db) = i64::try_from(id) else {
                    continue;
                };
                match select(db, vfs, BY_ID, Some(id_db))?.pop() {
                    None => {}
                    Some(s) if s.state != SnapshotState::Pruning => {
                        return Err(StateError::NotPruning {
                            vfs: vfs.to_string(),
                            id,
                        });
                    }
                    Some(_) => {
                        let sql = "DELETE FROM snapshot WHERE vfs = ?1 AND id = ?2";
                        if exec(db, sql, params![vfs, id_db])? > 0 {
                            change = Change::Updated;
                        }
                    }
                }
            }
            Ok(change)
        })
    }

    /// `(id, created_unix)` of the committed snapshots of `vfs`, by id: what retention
    /// decides on, without decoding every snapshot's images.
    pub fn committed_times(&self, vfs: &str) -> Result<Vec<(u64, u64)>, StateError> {
        let op = || format!("read the snapshot times of VFS {vfs}");
        let db = self.read(&op);
        let sql = "SELECT id, created_unix FROM snapshot
                   WHERE vfs = ?1 AND state = 'committed' ORDER BY id";
        let mut stmt = db.conn.prepare_cached(sql).map_err(|e| db.fail(e))?;
        let rows = stmt
            .query_map([vfs], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(|e| db.fail(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| db.fail(e))?;
        rows.into_iter()
            .map(|(id, created)| {
                Ok((
                    db.u64(vfs, "snapshot id", id)?,
                    db.u64(vfs, "snapshot time", created)?,
                ))
            })
            .collect()
    }

    /// The snapshots of `vfs` marked `pruning` ([`Store::mark_pruning`]), by id.
    pub fn pruning_snapshots(&self, vfs: &str) -> Result<Vec<Snapshot>, StateError> {
        let op = || format!("read the snapshots of VFS {vfs} being pruned");
        select(
            &self.read(&op),
            vfs,
            "AND state = 'pruning' ORDER BY id",
            None,
        )
    }
}
