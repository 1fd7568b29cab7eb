//! The schema and its migrations.
//!
//! [`MIGRATIONS`] is the ordered list of steps; `PRAGMA user_version` is the number of steps a
//! database has had, so a new (empty) database gets them all and an older one the missing
//! ones, each in its own transaction together with its `user_version`. Steps are only ever
//! appended: a released step is never edited. A step that rebuilds a table must keep in mind
//! that foreign keys are on (`PRAGMA foreign_keys` cannot change inside a transaction).
//!
//! `PRAGMA application_id` marks the file as vfsdr's, so that another application's SQLite
//! database put in its place is refused rather than extended.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{BUSY_TIMEOUT, StateError, db_error};

/// `PRAGMA application_id` of a vfsdr state database: "vfsd" in ASCII.
pub(super) const APPLICATION_ID: i32 = 0x7666_7364;

/// The schema version this binary writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migration steps: step `i` brings a database from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// Version 1: definitions, reservations, shortages.
///
/// `vfs` keeps each VFS's definition (`crate::config::VfsDef` as JSON), role and epoch.
/// `reservation` keeps the resources held by VFSs: `UNIQUE (kind, resource)` makes a resource
/// held by at most one VFS, and the foreign key keeps a definition from being removed while
/// it holds any. `shortage` keeps the missing resources an operator accepted for a VFS; they
/// go with its definition.
const V1: &str = "
CREATE TABLE vfs (
    name         TEXT PRIMARY KEY NOT NULL,
    definition   TEXT NOT NULL CHECK (json_valid(definition)),
    role         TEXT NOT NULL CHECK (role IN ('active', 'standby')),
    epoch        INTEGER NOT NULL CHECK (epoch >= 0),
    from_site    TEXT NOT NULL,
    updated_unix INTEGER NOT NULL CHECK (updated_unix >= 0)
) STRICT;

CREATE TABLE reservation (
    id           INTEGER PRIMARY KEY,
    vfs          TEXT NOT NULL REFERENCES vfs (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    kind         TEXT NOT NULL CHECK (kind IN ('link', 'mount')),
    resource     TEXT NOT NULL,
    detail       TEXT NOT NULL CHECK (json_valid(detail)),
    created_unix INTEGER NOT NULL CHECK (created_unix >= 0),
    UNIQUE (kind, resource)
) STRICT;
CREATE INDEX reservation_by_vfs ON reservation (vfs);

CREATE TABLE shortage (
    id            INTEGER PRIMARY KEY,
    vfs           TEXT NOT NULL REFERENCES vfs (name) ON UPDATE RESTRICT ON DELETE CASCADE,
    detail        TEXT NOT NULL CHECK (json_valid(detail)),
    recorded_unix INTEGER NOT NULL CHECK (recorded_unix >= 0)
) STRICT;
CREATE INDEX shortage_by_vfs ON shortage (vfs);
";

/// Version 2: the snapshot catalog and replication cycle progress.
///
/// `snapshot` (DR site) is the catalog of a VFS's group-consistent snapshots, whose images are
/// reflinked to `<pool>/snapshots/<vfs>/<id>/<volume>.img`:
/// - `vfs`: the VFS; its definition cannot be removed while it has snapshots;
/// - `id`: the snapshot's id, equal to the number of the cycle it was taken after (`cycle`),
///   so the id, and the directory of the images, are known before the snapshot is committed,
///   and ids increase with the cycles;
/// - `cycle`: the replication cycle whose data the snapshot holds (= `id`);
/// - `created_unix`: when it was committed (seconds since the Unix epoch);
/// - `epoch`: the VFS epoch the cycle was replicated under;
/// - `images`: JSON `[{volume, path, size, allocated}]`, one per volume: the reflinked image,
///   its apparent size and its allocated bytes (both in bytes);
/// - `changed_bytes`: the bytes the cycle changed (the delta, uncompressed);
/// - `shipped_bytes`: the bytes the cycle sent over the link (compressed, with framing);
/// - `state`: `committed`, or `pruning` once retention chose to delete it: its files may be
///   partly deleted and the row goes once they all are.
///
/// The table is clustered by (vfs, id) (`WITHOUT ROWID`): listing a VFS's snapshots, or
/// finding its latest, reads one range of the primary key, also with thousands of snapshots;
/// `snapshot_by_time` serves lookups by age.
///
/// `cycle` (DR site) is the cycle being received for a VFS, at most one per VFS:
/// - `cycle`: its number, greater than that of every stored snapshot;
/// - `base`: the snapshot the delta applies to, NULL for a full (initial) sync; the foreign key
///   keeps that snapshot from being removed while the cycle is in flight;
/// - `state`: `receiving` while the data arrives (the replica images are being written),
///   `applied` once all of it is written and only the snapshot remains to be taken;
/// - `started_unix`: when the cycle began (seconds since the Unix epoch);
/// - `progress`: JSON, what the receiver needs to resume the cycle, e.g. the bytes done per
///   volume of an initial sync.
///
/// `source_cycle` (active site) is a VFS's replication progress as its source sees it:
/// - `last_acked`: the last cycle the DR site acknowledged as a committed snapshot, NULL
///   before the first;
/// - `clone`: JSON, the paths of the clones of the volumes taken at `last_acked`, the base of
///   the next delta; agents that know the time of that point store
///   `{"clones": <the paths>, "point_unix_ms": <time>}` instead (no new column needed; see
///   `snapshots.rs`);
/// - `initial_done`: 1 once a full sync was acknowledged, 0 while one is needed or under way;
/// - `updated_unix`: when the row last changed (seconds since the Unix epoch).
const V2: &str = "
CREATE TABLE snapshot (
    vfs           TEXT NOT NULL REFERENCES vfs (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    id            INTEGER NOT NULL CHECK (id >= 0),
    cycle         INTEGER NOT NULL CHECK (cycle = id),
    created_unix  INTEGER NOT NULL CHECK (created_unix >= 0),
    epoch         INTEGER NOT NULL CHECK (epoch >= 0),
    images        TEXT NOT NULL CHECK (json_valid(images) AND json_type(images) = 'array'),
    changed_bytes INTEGER NOT NULL CHECK (changed_bytes >= 0),
    shipped_bytes INTEGER NOT NULL CHECK (shipped_bytes >= 0),
    state         TEXT NOT NULL CHECK (state IN ('committed', 'pruning')),
    PRIMARY KEY (vfs, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX snapshot_by_time ON snapshot (vfs, created_unix);

CREATE TABLE cycle (
    vfs          TEXT PRIMARY KEY NOT NULL
                 REFERENCES vfs (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    cycle        INTEGER NOT NULL CHECK (cycle >= 0),
    base         INTEGER CHECK (base >= 0 AND base < cycle),
    state        TEXT NOT NULL CHECK (state IN ('receiving', 'applied')),
    started_unix INTEGER NOT NULL CHECK (started_unix >= 0),
    progress     TEXT NOT NULL CHECK (json_valid(progress)),
    FOREIGN KEY (vfs, base) REFERENCES snapshot (vfs, id) ON UPDATE RESTRICT ON DELETE RESTRICT
) STRICT;

CREATE TABLE source_cycle (
    vfs          TEXT PRIMARY KEY NOT NULL
                 REFERENCES vfs (name) ON UPDATE RESTRICT ON DELETE RESTRICT,
    last_acked   INTEGER CHECK (last_acked >= 0),
    clone        TEXT NOT NULL CHECK (json_valid(clone)),
    initial_done INTEGER NOT NULL CHECK (initial_done IN (0, 1)),
    updated_unix INTEGER NOT NULL CHECK (updated_unix >= 0)
) STRICT;
";

/// Version 3: points in time, so that interrupted cycles resume or are recognised.
///
/// `source_cycle.pending` (JSON, `null` when there is none) is the point in time (cycle, point
/// identity, clones) of a full sync under way: an interrupted full sync resumes from the same
/// clones, so the DR site's partly written replicas stay valid.
///
/// `snapshot_point` (DR site) is the identity of the point a snapshot was made from, when the
/// sender named one (taken from the cycle's progress, `$.point`, as it is committed): a sender
/// that did not get the answer to its commit and offers the same point again is answered with
/// the snapshot instead of shipping it again.
const V3: &str = "
ALTER TABLE source_cycle ADD COLUMN pending TEXT NOT NULL DEFAULT 'null' CHECK (json_valid(pending));

CREATE TABLE snapshot_point (
    vfs   TEXT NOT NULL,
    id    INTEGER NOT NULL,
    point INTEGER NOT NULL,
    PRIMARY KEY (vfs, id),
    FOREIGN KEY (vfs, id) REFERENCES snapshot (vfs, id) ON UPDATE RESTRICT ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
";

/// Version 4: `source_cycle.paused` (JSON, `null` when not paused) is the pause of a VFS's
/// replication because its DR site's pool is full, so a restarted agent keeps it (and does
/// not raise the alert again).
const V4: &str = "
ALTER TABLE source_cycle ADD COLUMN paused TEXT NOT NULL DEFAULT 'null' CHECK (json_valid(paused));
";

/// The schema version of the database.
pub(super) fn version(conn: &Connection, path: &Path) -> Result<u32, StateError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| db_error(path, "read the schema version".into(), e))?;
    u32::try_from(found).map_err(|_| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("negative schema version {found}"),
    })
}

/// Checks an existing file on a read-only connection, so a refused file is not written to
/// (a read-write connection could checkpoint a WAL into it when closing).
pub(super) fn inspect(path: &Path) -> Result<(), StateError> {
    let fail = |op: &'static str| move |e| db_error(path, op.to_string(), e);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(fail("open read-only"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(fail("set the busy timeout"))?;
    // The first read of the header: a file that is not a SQLite database fails here.
    let found = version(&conn, path)?;
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(fail("read the application id"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(fail("read the schema"))?;
    // Version 0 without any table is a database created by an open that stopped before its
    // first migration committed.
    let fresh = found == 0 && application_id == 0 && objects == 0;
    if application_id != APPLICATION_ID && !fresh {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "not a vfsdr state database: application_id {application_id:#x} \
                 (vfsdr: {APPLICATION_ID:#x}), schema version {found}, {objects} schema objects"
            ),
        });
    }
    if found > SCHEMA_VERSION {
        return Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    quick_check(&conn, path)
}

/// `PRAGMA quick_check`: one row `ok`, or rows describing the damage.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let mut rows = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        rows.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| db_error(path, "check the database (quick_check)".into(), e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    const SHOWN: usize = 5;
    let mut reason = format!("quick_check: {}", rows[..rows.len().min(SHOWN)].join("; "));
    if rows.len() > SHOWN {
        reason.push_str(&format!("; and {} more", rows.len() - SHOWN));
    }
    Err(StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Applies the steps of `migrations` the database has not had, one transaction each.
///
/// The version is read again inside each step's transaction, so two processes opening the same
/// new database do not apply a step twice.
pub(super) fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<(), StateError> {
    let supported = migrations.len() as u32;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(path, "begin a migration".into(), e))?;
        let found = version(&tx, path)?;
        if found > supported {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        if found == supported {
            return Ok(()); // rolls back the empty transaction
        }
        let next = found + 1;
        let step = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                db_error(path, format!("migrate to schema version {next}"), e)
            }
            _ => StateError::Migration {
                path: path.to_path_buf(),
                version: next,
                source: e,
            },
        };
        tx.execute_batch(migrations[found as usize]).map_err(step)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(step)?;
        tx.pragma_update(None, "user_version", next).map_err(step)?;
        tx.commit().map_err(step)?;
        tracing::info!(path = %path.display(), version = next, "state database migrated");
    }
}
