//! The active site's replication state per VFS: [`Store::source_acked`] records the last cycle
//! the DR site committed and the clones it was taken from (the base of the next delta) with the
//! time of that point; [`Store::source_pending`] keeps the point of a full copy under way, so
//! it resumes from the same clones after a restart; [`Store::source_resync`] asks for a full
//! copy again.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::snapshots::{encode, exec, require_vfs, to_db, updated_if};
use super::{Change, Db, StateError, Store, now_unix, time_to_db};

/// A VFS's replication progress at its active site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// The last cycle the DR site committed, `None` before the first.
    pub last_acked: Option<u64>,
    /// The clones of the volumes taken at `last_acked` (`null` before the first).
    pub clones: Value,
    /// A full sync was acknowledged and none is needed since ([`Store::source_resync`]).
    pub initial_done: bool,
    /// When the point of `last_acked` was taken (milliseconds since the Unix epoch): the time
    /// of the DR site's latest consistent point. `None` if not recorded (an older agent).
    pub point_unix_ms: Option<u64>,
    /// When this last changed (seconds since the Unix epoch).
    pub updated_unix: u64,
    /// The point of a full sync under way ([`Store::source_pending`]), `null` when none.
    pub pending: Value,
    /// The pause of replication for a full DR pool ([`Store::source_paused`]), `null` when
    /// none.
    pub paused: Value,
}

/// The JSON columns of `source_cycle` set on their own.
#[derive(Clone, Copy)]
enum SourceJson {
    Pending,
    Paused,
}

impl SourceJson {
    /// The column, and what it holds (for messages).
    fn names(self) -> (&'static str, &'static str) {
        match self {
            SourceJson::Pending => ("pending", "pending point"),
            SourceJson::Paused => ("paused", "replication pause"),
        }
    }

    fn of(self, s: &SourceState) -> &Value {
        match self {
            SourceJson::Pending => &s.pending,
            SourceJson::Paused => &s.paused,
        }
    }
}

fn load_source(db: &Db<'_>, vfs: &str) -> Result<Option<SourceState>, StateError> {
    let sql = "SELECT last_acked, clone, initial_done, updated_unix, pending, paused
               FROM source_cycle WHERE vfs = ?1";
    type SourceRow = (Option<i64>, String, i64, i64, String, String);
    let read = |row: &Row<'_>| -> rusqlite::Result<SourceRow> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ))
    };
    let row = db.conn.query_row(sql, [vfs], read).optional();
    let Some((acked, clones, initial_done, updated, pending, paused)) =
        row.map_err(|e| db.fail(e))?
    else {
        return Ok(None);
    };
    let stored: Value = serde_json::from_str(&clones).map_err(|e| db.decode(vfs, "clones", e))?;
    let (clones, point_unix_ms) = split_point(stored);
    Ok(Some(SourceState {
        last_acked: acked.map(|c| db.u64(vfs, "acked cycle", c)).transpose()?,
        clones,
        initial_done: initial_done != 0,
        point_unix_ms,
        updated_unix: db.u64(vfs, "progress time", updated)?,
        pending: serde_json::from_str(&pending).map_err(|e| db.decode(vfs, "pending point", e))?,
        paused: serde_json::from_str(&paused).map_err(|e| db.decode(vfs, "pause", e))?,
    }))
}

/// The `clone` column of `source_cycle` holds the clones' JSON as given to
/// [`Store::source_acked`] or, when the point's time is known,
/// `{"clones": <that JSON>, "point_unix_ms": <time>}`. Which one was stored is told by the
/// `point_unix_ms` key (the clones are never an object with that key).
fn join_point(clones: &Value, point_unix_ms: Option<u64>) -> Value {
    match point_unix_ms {
        Some(ms) => serde_json::json!({ "clones": clones, "point_unix_ms": ms }),
        None => clones.clone(),
    }
}

/// The clones and the point's time of a stored `clone` column (see [`join_point`]).
fn split_point(stored: Value) -> (Value, Option<u64>) {
    match stored {
        Value::Object(mut o) if o.contains_key("point_unix_ms") && o.contains_key("clones") => {
            let ms = o.get("point_unix_ms").and_then(Value::as_u64);
            (o.remove("clones").unwrap_or(Value::Null), ms)
        }
        other => (other, None),
    }
}

impl Store {
    /// Active site: the DR site committed cycle `cycle` of `vfs`, taken from the volume clones
    /// `clones`, the base of the next delta; this also ends a needed full sync (the first
    /// cycle, and the first after [`Store::source_resync`], is one). The same cycle and clones
    /// again are `Unchanged`; an older cycle, or the same with other clones, is
    /// [`StateError::StaleCycle`]. `point_unix_ms` is when the point of `cycle` was taken
    /// (milliseconds since the Unix epoch), if known.
    pub fn source_acked(
        &mut self,
        vfs: &str,
        cycle: u64,
        clones: &Value,
        point_unix_ms: Option<u64>,
    ) -> Result<Change, StateError> {
        let cycle_db = to_db(vfs, "cycle", cycle)?;
        let json = encode(vfs, "clones", &join_point(clones, point_unix_ms))?;
        let op = || format!("record cycle {cycle} of VFS {vfs} as acknowledged");
        self.write(&op, |db| {
            require_vfs(db, vfs)?;
            let stored = load_source(db, vfs)?;
            match stored
                .as_ref()
                .and_then(|s| s.last_acked.map(|l| (l, &s.clones, s.point_unix_ms)))
            {
                Some((last, stored, at))
                    if last == cycle && stored == clones && at == point_unix_ms =>
                {
                    return Ok(Change::Unchanged);
                }
                Some((last, _, _)) if last >= cycle => {
                    return Err(StateError::StaleCycle {
                        vfs: vfs.to_string(),
                        cycle,
                        latest: last,
                    });
                }
                _ => {}
            }
            exec(
                db,
                "INSERT INTO source_cycle (vfs, last_acked, clone, initial_done, updated_unix)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (vfs) DO UPDATE SET last_acked = excluded.last_acked,
                     clone = excluded.clone, initial_done = 1, pending = 'null',
                     updated_unix = excluded.updated_unix",
                params![vfs, cycle_db, json, time_to_db(now_unix())],
            )?;
            Ok(stored.map_or(Change::Created, |_| Change::Updated))
        })
    }

    /// Active site: `vfs` needs a full sync (its changes since the last acknowledged cycle are
    /// lost); the last acknowledged cycle stays on record. Already needed is `Unchanged`.
    pub fn source_resync(&mut self, vfs: &str) -> Result<Change, StateError> {
        let op = || format!("record that VFS {vfs} needs a full sync");
        self.write(&op, |db| {
            require_vfs(db, vfs)?;
            let change = match load_source(db, vfs)? {
                None => Change::Created,
                Some(s) if !s.initial_done => return Ok(Change::Unchanged),
                Some(_) => Change::Updated,
            };
            exec(
                db,
                "INSERT INTO source_cycle (vfs, last_acked, clone, initial_done, updated_unix)
                 VALUES (?1, NULL, 'null', 0, ?2)
                 ON CONFLICT (vfs) DO UPDATE SET initial_done = 0,
                     updated_unix = excluded.updated_unix",
                params![vfs, time_to_db(now_unix())],
            )?;
            Ok(change)
        })
    }

    /// Active site: records `pending` as the point of the full sync under way for `vfs` (`null`:
    /// none), so a restarted agent resumes it from the same clones; an acknowledged cycle
    /// clears it ([`Store::source_acked`]). The same value again is `Unchanged`.
    pub fn source_pending(&mut self, vfs: &str, pending: &Value) -> Result<Change, StateError> {
        self.set_source_json(vfs, SourceJson::Pending, pending)
    }

    /// Active site: records the pause of `vfs`'s replication (`null`: not paused), so a
    /// restarted agent keeps it. The same value again is `Unchanged`.
    pub fn source_paused(&mut self, vfs: &str, paused: &Value) -> Result<Change, StateError> {
        self.set_source_json(vfs, SourceJson::Paused, paused)
    }

    /// Sets one JSON column of `vfs`'s row (made if missing; `null` with no row is `Unchanged`).
    fn set_source_json(
        &mut self,
        vfs: &str,
        column: SourceJson,
        value: &Value,
    ) -> Result<Change, StateError> {
        let (name, what) = column.names();
        let json = encode(vfs, what, value)?;
        let op = || format!("record the {what} of VFS {vfs}");
        self.write(&op, |db| {
            require_vfs(db, vfs)?;
            let stored = load_source(db, vfs)?;
            if stored
                .as_ref()
                .map_or(value.is_null(), |s| column.of(s) == value)
            {
                return Ok(Change::Unchanged);
            }
            let sql = format!(
                "INSERT INTO source_cycle (vfs, last_acked, clone, initial_done, updated_unix, {name})
                 VALUES (?1, NULL, 'null', 0, ?2, ?3)
                 ON CONFLICT (vfs) DO UPDATE SET {name} = excluded.{name},
                     updated_unix = excluded.updated_unix"
            );
            exec(db, &sql, params![vfs, time_to_db(now_unix()), json])?;
            Ok(stored.map_or(Change::Created, |_| Change::Updated))
        })
    }

    /// Active site: the replication progress of `vfs`; `None` before anything was recorded
    /// (a full sync is needed).
    pub fn source_state(&self, vfs: &str) -> Result<Option<SourceState>, StateError> {
        let op = || format!("read the replication progress of VFS {vfs}");
        load_source(&self.read(&op), vfs)
    }

    /// Active site: forgets the replication progress of `vfs` (after deleting its clones), so
    /// its definition can be removed: `Updated` if there was any, `Unchanged` if not.
    pub fn forget_source(&mut self, vfs: &str) -> Result<Change, StateError> {
        let op = || format!("forget the replication progress of VFS {vfs}");
        self.write(&op, |db| {
            let sql = "DELETE FROM source_cycle WHERE vfs = ?1";
            Ok(updated_if(exec(db, sql, [vfs])?))
        })
    }
}
