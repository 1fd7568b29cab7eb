//! The agent's state store: one SQLite database per site, `<state_dir>/vfsdr.db`.
//!
//! It keeps what the agent must remember across restarts:
//! - the VFS definitions this site knows (its own and those its peers replicate to it), each
//!   with its role here (`active` or `standby`), its epoch, the site it came from and when it
//!   was last changed. The epoch prevents split brain: a definition or role is never replaced
//!   by one with a lower epoch, and only the site with the highest epoch serves a VFS;
//! - the resources (links, mounts) reserved for each VFS, each held by at most one VFS (a
//!   UNIQUE constraint of the schema, not only a check of this code);
//! - the shortages an operator accepted when they chose to proceed with missing resources.
//!
//! [`Store::open`] applies the schema migrations this binary knows ([`schema`]) and refuses,
//! without writing to it, a database that is corrupt, belongs to another application, or has a
//! newer schema than this binary supports: an appliance must not lose its state by recreating
//! it. Every change runs in one `BEGIN IMMEDIATE` transaction, so it is all or nothing, and
//! reports with [`Change`] whether it changed anything, so callers can be idempotent.
//!
//! The API is synchronous: a call is a few small statements on a local file.

mod definitions;
mod reservations;
mod schema;
mod snapshots;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::config::VfsDef;

pub use schema::SCHEMA_VERSION;
pub use snapshots::{CycleState, InFlight, Snapshot, SnapshotImage, SnapshotState};
pub use source::SourceState;

/// The database's file name inside the state directory.
pub const DB_FILE: &str = "vfsdr.db";

/// How long a statement waits for a lock held by another connection (another vfsdr process,
/// or an operator's `sqlite3`) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A VFS's role at this site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This site serves the VFS.
    Active,
    /// This site receives the VFS's replication and can take it over.
    Standby,
}

impl Role {
    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }

    fn from_db(text: &str) -> Option<Role> {
        match text {
            "active" => Some(Role::Active),
            "standby" => Some(Role::Standby),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VFS definition as this site stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVfs {
    pub def: VfsDef,
    pub role: Role,
    /// Only the highest epoch of a VFS serves it.
    pub epoch: u64,
    /// The site the definition came from (this site's name for a local one).
    pub from_site: String,
    /// When the definition, role or epoch last changed (seconds since the Unix epoch).
    pub updated_unix: u64,
}

/// The kind of a resource reserved for a VFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A network link (by its kernel name).
    Link,
    /// A mount point (by its path).
    Mount,
}

impl ResourceKind {
    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Link => "link",
            ResourceKind::Mount => "mount",
        }
    }

    fn from_db(text: &str) -> Option<ResourceKind> {
        match text {
            "link" => Some(ResourceKind::Link),
            "mount" => Some(ResourceKind::Mount),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource held by a VFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub vfs: String,
    pub kind: ResourceKind,
    /// The resource's name: a link name, a mount path.
    pub resource: String,
    /// Whatever the reserving module needs to find and remove the kernel object again.
    pub detail: serde_json::Value,
    /// When it was first reserved (seconds since the Unix epoch).
    pub created_unix: u64,
}

/// Whether an action changed anything (like stratisd's `CreateAction`).
///
/// Removals ([`Store::remove_definition`], [`Store::unreserve`]) report `Updated` when they
/// removed something and `Unchanged` when there was nothing to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Created,
    Updated,
}

/// Why the state store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a SQLite database, not vfsdr's, or damaged. The file is left as it is.
    #[error(
        "state database {} is corrupt ({reason}); it was left untouched: restore it from a backup \
         or move it aside to start with an empty state",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    /// Written by a newer vfsdr. The file is left as it is.
    #[error(
        "state database {} has schema version {found}, newer than the {supported} this vfsdr \
         supports; it was left untouched: run the newer vfsdr",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("state database {}: journal mode is {mode}, WAL could not be enabled", path.display())]
    JournalMode { path: PathBuf, mode: String },
    #[error("state database {}: migration to schema version {version} failed: {source}", path.display())]
    Migration {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
    /// A database error other than corruption (I/O, lock timeout, full disk).
    #[error("state database {}: cannot {op}: {source}", path.display())]
    Database {
        path: PathBuf,
        /// What the store was doing, e.g. `store the definition of VFS fs1`.
        op: String,
        source: rusqlite::Error,
    },
    #[error("VFS {vfs}: cannot encode its definition: {source}")]
    Encode {
        vfs: String,
        source: serde_json::Error,
    },
    /// A stored value does not decode (a JSON document, a role, a kind, a negative number).
    #[error("state database {}: the stored {what} of VFS {vfs} is invalid: {reason}", path.display())]
    Decode {
        path: PathBuf,
        vfs: String,
        what: &'static str,
        reason: String,
    },
    #[error("VFS {vfs} is not in the state store")]
    UnknownVfs { vfs: String },
    #[error("VFS {vfs}: epoch {offered} refused, the stored epoch is {stored}")]
    StaleEpoch {
        vfs: String,
        stored: u64,
        offered: u64,
    },
    /// Two sites offer the same epoch: one of them should have raised it (split brain).
    #[error(
        "VFS {vfs}: epoch {epoch} is stored from site {stored_site} and refused from site \
         {offered_site}"
    )]
    EpochClash {
        vfs: String,
        epoch: u64,
        stored_site: String,
        offered_site: String,
    },
    #[error(
        "VFS {vfs}: epoch {epoch} is above the largest the store keeps ({})",
        i64::MAX
    )]
    EpochRange { vfs: String, epoch: u64 },
    #[error("VFS {vfs} still holds {count} reservation(s); release them first")]
    Reserved { vfs: String, count: u64 },
    #[error("{kind} {resource} is reserved by VFS {holder}")]
    Conflict {
        kind: ResourceKind,
        resource: String,
        holder: String,
    },
    #[error("VFS {vfs}: cannot encode the {what}: {source}")]
    EncodeRecord {
        vfs: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "VFS {vfs}: {what} {value} is above the largest the store keeps ({})",
        i64::MAX
    )]
    OutOfRange {
        vfs: String,
        what: &'static str,
        value: u64,
    },
    #[error("VFS {vfs} has no snapshot {id}")]
    UnknownSnapshot { vfs: String, id: u64 },
    /// At most one cycle of a VFS is in flight at a time.
    #[error(
        "VFS {vfs}: cycle {cycle} is in flight, cycle {offered} refused: commit or abandon \
         cycle {cycle} first"
    )]
    CycleInProgress {
        vfs: String,
        cycle: u64,
        offered: u64,
    },
    #[error("VFS {vfs}: cycle {cycle} is not in flight")]
    NoCycle { vfs: String, cycle: u64 },
    /// Cycle numbers only go forward.
    #[error("VFS {vfs}: cycle {cycle} refused, cycle {latest} is already stored")]
    StaleCycle {
        vfs: String,
        cycle: u64,
        latest: u64,
    },
    /// A delta must apply to the snapshot the replica images hold.
    #[error(
        "VFS {vfs}: cycle {cycle} on {} refused, it must be on {}",
        base_name(*base),
        base_name(*expected)
    )]
    CycleBase {
        vfs: String,
        cycle: u64,
        /// `None`: a full sync.
        base: Option<u64>,
        expected: Option<u64>,
    },
    #[error("VFS {vfs}: snapshot {id} is the base of cycle {cycle} in flight")]
    SnapshotInUse { vfs: String, id: u64, cycle: u64 },
    #[error("VFS {vfs}: snapshot {id} is not marked for pruning")]
    NotPruning { vfs: String, id: u64 },
}

/// How [`StateError::CycleBase`] names a cycle's base.
fn base_name(base: Option<u64>) -> String {
    base.map_or_else(
        || "no snapshot (a full sync)".into(),
        |id| format!("snapshot {id}"),
    )
}

/// The site's state database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens `<state_dir>/vfsdr.db`, creating the directory (mode 0700) and the database if
    /// missing, and brings its schema up to [`SCHEMA_VERSION`], one transaction per step.
    ///
    /// An existing file is first inspected read-only: a file that is not a SQLite database,
    /// fails `PRAGMA quick_check`, or belongs to another application is
    /// [`StateError::Corrupt`]; one with a newer schema is [`StateError::NewerSchema`]. Either
    /// way it is not written to.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StateError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let path = state_dir.join(DB_FILE);
        if path.exists() {
            schema::inspect(&path)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|source| db_error(&path, "open".into(), source))?;
        let mut store = Store { conn, path };
        store.configure()?;
        schema::migrate(&mut store.conn, &store.path, schema::MIGRATIONS)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        schema::version(&self.conn, &self.path)
    }

    /// WAL journal, foreign keys, a busy timeout, full syncs (a committed epoch must survive a
    /// power loss), and no way for SQL to corrupt the file (`SQLITE_DBCONFIG_DEFENSIVE`).
    fn configure(&mut self) -> Result<(), StateError> {
        let conn = &self.conn;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err("set the busy timeout", e))?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(|e| self.err("enable defensive mode", e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(|e| self.err("enable the WAL journal", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::JournalMode {
                path: self.path.clone(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err("set synchronous=FULL", e))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| self.err("enable foreign keys", e))?;
        Ok(())
    }

    /// Runs `body` in one write transaction, committed if it returns `Ok`, rolled back
    /// otherwise. `BEGIN IMMEDIATE` takes the write lock at once, so what `body` checks still
    /// holds when it writes, even with another process on the same file.
    fn write<T>(
        &mut self,
        op: &dyn Fn() -> String,
        body: impl FnOnce(&Db<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(path, op(), e))?;
        let out = body(&Db {
            conn: &tx,
            path,
            op,
        })?;
        tx.commit().map_err(|e| db_error(path, op(), e))?;
        Ok(out)
    }

    /// A read: one statement per call, which SQLite runs in its own read transaction.
    fn read<'a>(&'a self, op: &'a dyn Fn() -> String) -> Db<'a> {
        Db {
            conn: &self.conn,
            path: &self.path,
            op,
        }
    }

    fn err(&self, op: &str, source: rusqlite::Error) -> StateError {
        db_error(&self.path, op.to_string(), source)
    }
}

/// A connection (or transaction) with what is needed to name a failure: the database and the
/// operation (built only when something fails).
struct Db<'a> {
    conn: &'a Connection,
    path: &'a Path,
    op: &'a dyn Fn() -> String,
}

impl Db<'_> {
    fn fail(&self, source: rusqlite::Error) -> StateError {
        db_error(self.path, (self.op)(), source)
    }

    fn decode(&self, vfs: &str, what: &'static str, reason: impl fmt::Display) -> StateError {
        StateError::Decode {
            path: self.path.to_path_buf(),
            vfs: vfs.to_string(),
            what,
            reason: reason.to_string(),
        }
    }

    /// A stored non-negative integer (an epoch, a time).
    fn u64(&self, vfs: &str, what: &'static str, value: i64) -> Result<u64, StateError> {
        u64::try_from(value)
            .map_err(|_| self.decode(vfs, what, format_args!("{value} is negative")))
    }
}

/// A database error: [`StateError::Corrupt`] when SQLite says the file is damaged or not a
/// database, [`StateError::Database`] otherwise.
fn db_error(path: &Path, op: String, source: rusqlite::Error) -> StateError {
    match source.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot {op}: {source}"),
        },
        _ => StateError::Database {
            path: path.to_path_buf(),
            op,
            source,
        },
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SQLite integers are i64: epochs above `i64::MAX` cannot be stored.
fn epoch_to_db(vfs: &str, epoch: u64) -> Result<i64, StateError> {
    i64::try_from(epoch).map_err(|_| StateError::EpochRange {
        vfs: vfs.to_string(),
        epoch,
    })
}

/// Times are stored as i64; one after the year 292 billion is clamped.
fn time_to_db(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}
