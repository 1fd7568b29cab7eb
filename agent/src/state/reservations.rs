//! Resources reserved for VFSs, and the shortages accepted for them.

use rusqlite::{OptionalExtension, Row, params};
use serde_json::Value;

use super::definitions::exists;
use super::{Change, Db, Reservation, ResourceKind, StateError, Store, now_unix, time_to_db};

const COLUMNS: &str = "vfs, kind, resource, detail, created_unix";
/// A VFS's reservations, in the order they were made.
const BY_VFS: &str = "WHERE vfs = ?1 ORDER BY id";

/// A row of `reservation` as stored, before decoding.
struct ReservationRow {
    vfs: String,
    kind: String,
    resource: String,
    detail: String,
    created_unix: i64,
}

impl ReservationRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<ReservationRow> {
        Ok(ReservationRow {
            vfs: row.get(0)?,
            kind: row.get(1)?,
            resource: row.get(2)?,
            detail: row.get(3)?,
            created_unix: row.get(4)?,
        })
    }

    fn decode(self, db: &Db<'_>) -> Result<Reservation, StateError> {
        let vfs = self.vfs.as_str();
        let kind = ResourceKind::from_db(&self.kind).ok_or_else(|| {
            db.decode(
                vfs,
                "reservation kind",
                format_args!("unknown kind {:?}", self.kind),
            )
        })?;
        let detail = serde_json::from_str(&self.detail)
            .map_err(|e| db.decode(vfs, "reservation detail", e))?;
        let created_unix = db.u64(vfs, "reservation time", self.created_unix)?;
        Ok(Reservation {
            vfs: self.vfs,
            kind,
            resource: self.resource,
            detail,
            created_unix,
        })
    }
}

/// Reservations selected and ordered by `tail` (SQL with `?1` bound to `arg`, if any).
fn select(db: &Db<'_>, tail: &str, arg: Option<&str>) -> Result<Vec<Reservation>, StateError> {
    let mut stmt = db
        .conn
        .prepare(&format!("SELECT {COLUMNS} FROM reservation {tail}"))
        .map_err(|e| db.fail(e))?;
    let rows = match arg {
        Some(arg) => stmt.query_map([arg], ReservationRow::read),
        None => stmt.query_map([], ReservationRow::read),
    }
    .map_err(|e| db.fail(e))?
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| db.fail(e))?;
    rows.into_iter().map(|row| row.decode(db)).collect()
}

/// The VFS holding (kind, resource) and the detail it holds it with.
fn held(
    db: &Db<'_>,
    kind: ResourceKind,
    resource: &str,
) -> Result<Option<(String, String)>, StateError> {
    db.conn
        .query_row(
            "SELECT vfs, detail FROM reservation WHERE kind = ?1 AND resource = ?2",
            [kind.as_str(), resource],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(|e| db.fail(e))
}

fn load_shortages(db: &Db<'_>, vfs: &str) -> Result<Vec<Value>, StateError> {
    let mut stmt = db
        .conn
        .prepare("SELECT detail FROM shortage WHERE vfs = ?1 ORDER BY id")
        .map_err(|e| db.fail(e))?;
    let rows = stmt
        .query_map([vfs], |row| row.get::<_, String>(0))
        .map_err(|e| db.fail(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| db.fail(e))?;
    rows.iter()
        .map(|text| serde_json::from_str(text).map_err(|e| db.decode(vfs, "shortage", e)))
        .collect()
}

fn encode(vfs: &str, value: &Value) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|source| StateError::Encode {
        vfs: vfs.to_string(),
        source,
    })
}

impl Store {
    /// Records reservations and accepted shortages for `vfs`, all or none.
    ///
    /// A resource held by another VFS is [`StateError::Conflict`] (and nothing is recorded);
    /// one already held by `vfs` with the same detail is `Unchanged`, with another detail
    /// `Updated` (the new detail replaces it). Returns one [`Change`] per item, in order.
    /// Shortages equal to one already recorded for `vfs` are not recorded twice.
    /// [`StateError::UnknownVfs`] if no definition of `vfs` is stored.
    pub fn reserve(
        &mut self,
        vfs: &str,
        items: &[(ResourceKind, String, Value)],
        shortages: &[Value],
    ) -> Result<Vec<Change>, StateError> {
        let op = || format!("reserve resources for VFS {vfs}");
        self.write(&op, |db| {
            if !exists(db, vfs)? {
                return Err(StateError::UnknownVfs {
                    vfs: vfs.to_string(),
                });
            }
            let now = time_to_db(now_unix());
            let mut changes = Vec::with_capacity(items.len());
            for (kind, resource, detail) in items {
                let json = encode(vfs, detail)?;
                let change = match held(db, *kind, resource)? {
                    Some((holder, _)) if holder != vfs => {
                        return Err(StateError::Conflict {
                            kind: *kind,
                            resource: resource.clone(),
                            holder,
                        });
                    }
                    Some((_, stored)) => {
                        let stored: Value = serde_json::from_str(&stored)
                            .map_err(|e| db.decode(vfs, "reservation detail", e))?;
                        if stored == *detail {
                            Change::Unchanged
                        } else {
                            db.conn
                                .execute(
                                    "UPDATE reservation SET detail = ?3
                                     WHERE kind = ?1 AND resource = ?2",
                                    params![kind.as_str(), resource, json],
                                )
                                .map_err(|e| db.fail(e))?;
                            Change::Updated
                        }
                    }
                    None => {
                        db.conn
                            .execute(
                                "INSERT INTO reservation (vfs, kind, resource, detail, created_unix)
                                 VALUES (?1, ?2, ?3, ?4, ?5)",
                                params![vfs, kind.as_str(), resource, json, now],
                            )
                            .map_err(|e| db.fail(e))?;
                        Change::Created
                    }
                };
                changes.push(change);
            }
            let mut recorded = load_shortages(db, vfs)?;
            for shortage in shortages {
                if recorded.contains(shortage) {
                    continue;
                }
                db.conn
                    .execute(
                        "INSERT INTO shortage (vfs, detail, recorded_unix) VALUES (?1, ?2, ?3)",
                        params![vfs, encode(vfs, shortage)?, now],
                    )
                    .map_err(|e| db.fail(e))?;
                recorded.push(shortage.clone());
            }
            Ok(changes)
        })
    }

    /// The VFS holding (kind, resource), if any.
    pub fn holder(&self, kind: ResourceKind, resource: &str) -> Result<Option<String>, StateError> {
        let op = || format!("look up the holder of {kind} {resource}");
        Ok(held(&self.read(&op), kind, resource)?.map(|(holder, _)| holder))
    }

    /// The reservations of `vfs`, in the order they were made (none for an unknown VFS).
    pub fn reservations(&self, vfs: &str) -> Result<Vec<Reservation>, StateError> {
        let op = || format!("read the reservations of VFS {vfs}");
        select(&self.read(&op), BY_VFS, Some(vfs))
    }

    /// Every reservation, by VFS in the order they were made.
    pub fn all_reservations(&self) -> Result<Vec<Reservation>, StateError> {
        let op = || "read the reservations".to_string();
        select(&self.read(&op), "ORDER BY vfs, id", None)
    }

    /// The shortages recorded for `vfs`, in the order they were recorded.
    pub fn shortages(&self, vfs: &str) -> Result<Vec<Value>, StateError> {
        let op = || format!("read the shortages of VFS {vfs}");
        load_shortages(&self.read(&op), vfs)
    }

    /// Removes one reservation of `vfs` (after its kernel object was removed): `Updated` if it
    /// was held, `Unchanged` if not. One held by another VFS is [`StateError::Conflict`].
    pub fn unreserve(
        &mut self,
        vfs: &str,
        kind: ResourceKind,
        resource: &str,
    ) -> Result<Change, StateError> {
        let op = || format!("release {kind} {resource} of VFS {vfs}");
        self.write(&op, |db| match held(db, kind, resource)? {
            None => Ok(Change::Unchanged),
            Some((holder, _)) if holder != vfs => Err(StateError::Conflict {
                kind,
                resource: resource.to_string(),
                holder,
            }),
            Some(_) => {
                db.conn
                    .execute(
                        "DELETE FROM reservation WHERE kind = ?1 AND resource = ?2",
                        [kind.as_str(), resource],
                    )
                    .map_err(|e| db.fail(e))?;
                Ok(Change::Updated)
            }
        })
    }

    /// Removes every reservation and shortage of `vfs`, returning the reservations removed,
    /// in the order they were made.
    pub fn release(&mut self, vfs: &str) -> Result<Vec<Reservation>, StateError> {
        let op = || format!("release the resources of VFS {vfs}");
        self.write(&op, |db| {
            let removed = select(db, BY_VFS, Some(vfs))?;
            db.conn
                .execute("DELETE FROM reservation WHERE vfs = ?1", [vfs])
                .map_err(|e| db.fail(e))?;
            db.conn
                .execute("DELETE FROM shortage WHERE vfs = ?1", [vfs])
                .map_err(|e| db.fail(e))?;
            Ok(removed)
        })
    }
}
