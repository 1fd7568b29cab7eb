//! VFS definitions, their role at this site and their epoch.

use rusqlite::{OptionalExtension, Row, params};

use super::{Change, Db, Role, StateError, Store, StoredVfs, epoch_to_db, now_unix, time_to_db};
use crate::config::VfsDef;

const COLUMNS: &str = "name, definition, role, epoch, from_site, updated_unix";

/// A row of `vfs` as stored, before decoding.
struct VfsRow {
    name: String,
    definition: String,
    role: String,
    epoch: i64,
    from_site: String,
    updated_unix: i64,
}

impl VfsRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<VfsRow> {
        Ok(VfsRow {
            name: row.get(0)?,
            definition: row.get(1)?,
            role: row.get(2)?,
            epoch: row.get(3)?,
            from_site: row.get(4)?,
            updated_unix: row.get(5)?,
        })
    }

    fn decode(self, db: &Db<'_>) -> Result<StoredVfs, StateError> {
        let name = self.name.as_str();
        let def: VfsDef =
            serde_json::from_str(&self.definition).map_err(|e| db.decode(name, "definition", e))?;
        if def.name != name {
            return Err(db.decode(
                name,
                "definition",
                format_args!("it names VFS {}", def.name),
            ));
        }
        let role = Role::from_db(&self.role)
            .ok_or_else(|| db.decode(name, "role", format_args!("unknown role {:?}", self.role)))?;
        Ok(StoredVfs {
            def,
            role,
            epoch: db.u64(name, "epoch", self.epoch)?,
            from_site: self.from_site,
            updated_unix: db.u64(name, "update time", self.updated_unix)?,
        })
    }
}

/// The stored definition of `vfs`.
fn load(db: &Db<'_>, vfs: &str) -> Result<Option<StoredVfs>, StateError> {
    db.conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM vfs WHERE name = ?1"),
            [vfs],
            VfsRow::read,
        )
        .optional()
        .map_err(|e| db.fail(e))?
        .map(|row| row.decode(db))
        .transpose()
}

/// Whether a definition of `vfs` is stored.
pub(super) fn exists(db: &Db<'_>, vfs: &str) -> Result<bool, StateError> {
    db.conn
        .query_row("SELECT 1 FROM vfs WHERE name = ?1", [vfs], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
        .map_err(|e| db.fail(e))
}

impl Store {
    /// Stores a definition received or loaded at `epoch`.
    ///
    /// Refuses an epoch lower than the stored one ([`StateError::StaleEpoch`]), and the stored
    /// epoch offered by another site than the one it came from ([`StateError::EpochClash`]:
    /// two sites must not issue the same epoch). The stored epoch from the same site with a
    /// different definition or role updates it; everything identical is `Unchanged`; a higher
    /// epoch replaces it, whichever site it comes from.
    pub fn put_definition(
        &mut self,
        def: &VfsDef,
        role: Role,
        epoch: u64,
        from_site: &str,
    ) -> Result<Change, StateError> {
        let vfs = def.name.as_str();
        let epoch_db = epoch_to_db(vfs, epoch)?;
        let json = serde_json::to_string(def).map_err(|source| StateError::Encode {
            vfs: vfs.to_string(),
            source,
        })?;
        let op = || format!("store the definition of VFS {vfs}");
        self.write(&op, |db| {
            let change = match load(db, vfs)? {
                None => Change::Created,
                Some(stored) if stored.epoch > epoch => {
                    return Err(StateError::StaleEpoch {
                        vfs: vfs.to_string(),
                        stored: stored.epoch,
                        offered: epoch,
                    });
                }
                Some(stored) if stored.epoch == epoch && stored.from_site != from_site => {
                    return Err(StateError::EpochClash {
                        vfs: vfs.to_string(),
                        epoch,
                        stored_site: stored.from_site,
                        offered_site: from_site.to_string(),
                    });
                }
                Some(stored)
                    if stored.epoch == epoch && stored.role == role && stored.def == *def =>
                {
                    return Ok(Change::Unchanged);
                }
                Some(_) => Change::Updated,
            };
            db.conn
                .execute(
                    "INSERT INTO vfs (name, definition, role, epoch, from_site, updated_unix)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (name) DO UPDATE SET
                         definition = excluded.definition,
                         role = excluded.role,
                         epoch = excluded.epoch,
                         from_site = excluded.from_site,
                         updated_unix = excluded.updated_unix",
                    params![
                        vfs,
                        json,
                        role.as_str(),
                        epoch_db,
                        from_site,
                        time_to_db(now_unix())
                    ],
                )
                .map_err(|e| db.fail(e))?;
            Ok(change)
        })
    }

    /// The stored definition of `vfs`, if any.
    pub fn definition(&self, vfs: &str) -> Result<Option<StoredVfs>, StateError> {
        let op = || format!("read the definition of VFS {vfs}");
        load(&self.read(&op), vfs)
    }

    /// Every stored definition, sorted by name.
    pub fn definitions(&self) -> Result<Vec<StoredVfs>, StateError> {
        let op = || "read the definitions".to_string();
        let db = self.read(&op);
        let mut stmt = db
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM vfs ORDER BY name"))
            .map_err(|e| db.fail(e))?;
        let rows = stmt
            .query_map([], VfsRow::read)
            .map_err(|e| db.fail(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| db.fail(e))?;
        rows.into_iter().map(|row| row.decode(&db)).collect()
    }

    /// Sets the role of `vfs` at `epoch` ([`StateError::UnknownVfs`] if it is not stored,
    /// [`StateError::StaleEpoch`] below the stored epoch). The same role at the same epoch is
    /// `Unchanged`.
    pub fn set_role(&mut self, vfs: &str, role: Role, epoch: u64) -> Result<Change, StateError> {
        let epoch_db = epoch_to_db(vfs, epoch)?;
        let op = || format!("set the role of VFS {vfs}");
        self.write(&op, |db| {
            let Some(stored) = load(db, vfs)? else {
                return Err(StateError::UnknownVfs {
                    vfs: vfs.to_string(),
                });
            };
            if stored.epoch > epoch {
                return Err(StateError::StaleEpoch {
                    vfs: vfs.to_string(),
                    stored: stored.epoch,
                    offered: epoch,
                });
            }
            if stored.epoch == epoch && stored.role == role {
                return Ok(Change::Unchanged);
            }
            db.conn
                .execute(
                    "UPDATE vfs SET role = ?2, epoch = ?3, updated_unix = ?4 WHERE name = ?1",
                    params![vfs, role.as_str(), epoch_db, time_to_db(now_unix())],
                )
                .map_err(|e| db.fail(e))?;
            Ok(Change::Updated)
        })
    }

    /// Removes the definition of `vfs` and its shortages: `Updated` if it was stored,
    /// `Unchanged` if not. Refused while it holds reservations ([`StateError::Reserved`]).
    pub fn remove_definition(&mut self, vfs: &str) -> Result<Change, StateError> {
        let op = || format!("remove the definition of VFS {vfs}");
        self.write(&op, |db| {
            if !exists(db, vfs)? {
                return Ok(Change::Unchanged);
            }
            let count: i64 = db
                .conn
                .query_row(
                    "SELECT count(*) FROM reservation WHERE vfs = ?1",
                    [vfs],
                    |row| row.get(0),
                )
                .map_err(|e| db.fail(e))?;
            if count > 0 {
                return Err(StateError::Reserved {
                    vfs: vfs.to_string(),
                    count: count.unsigned_abs(),
                });
            }
            // The shortages go by ON DELETE CASCADE.
            db.conn
                .execute("DELETE FROM vfs WHERE name = ?1", [vfs])
                .map_err(|e| db.fail(e))?;
            Ok(Change::Updated)
        })
    }
}
