//! Opening: migrations, restarts, and the files that are refused and left untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use super::super::schema::{self, APPLICATION_ID, MIGRATIONS};
use super::*;

#[test]
fn a_new_state_dir_gets_every_migration() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("var/lib/vfsdr");
    let store = open(&dir);
    assert_eq!(store.path(), dir.join(DB_FILE));
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "state dir mode {mode:o}");
    assert_eq!(
        tables(&store.conn),
        [
            "cycle",
            "reservation",
            "shortage",
            "snapshot",
            "snapshot_point",
            "source_cycle",
            "vfs"
        ]
    );
    let journal: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let fk: bool = store
        .conn
        .pragma_query_value(None, "foreign_keys", |row| row.get(0))
        .unwrap();
    assert!(fk);
    let app: i32 = store
        .conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
}

#[test]
fn an_empty_file_gets_every_migration() {
    let tmp = TempDir::new().unwrap();
    std::fs::write(tmp.path().join(DB_FILE), b"").unwrap();
    let store = open(tmp.path());
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        tables(&store.conn),
        [
            "cycle",
            "reservation",
            "shortage",
            "snapshot",
            "snapshot_point",
            "source_cycle",
            "vfs"
        ]
    );
}

#[test]
fn each_migration_step_is_one_transaction() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join(DB_FILE);
    let mut conn = Connection::open(&path).unwrap();
    let broken = [
        MIGRATIONS[0],
        "CREATE TABLE half (x INTEGER); CREATE TABLE oops (;",
    ];
    let err = schema::migrate(&mut conn, &path, &broken).unwrap_err();
    assert!(
        matches!(err, StateError::Migration { version: 2, .. }),
        "{err:?}"
    );
    // Step 1 stayed, step 2 left nothing behind.
    assert_eq!(schema::version(&conn, &path).unwrap(), 1);
    assert_eq!(tables(&conn), ["reservation", "shortage", "vfs"]);
    // Applying again only runs the missing step.
    schema::migrate(&mut conn, &path, &MIGRATIONS[..1]).unwrap();
    assert_eq!(schema::version(&conn, &path).unwrap(), 1);
}

#[test]
fn reopening_keeps_the_data() {
    let tmp = TempDir::new().unwrap();
    let (definitions, reservations) = {
        let mut store = store_with_two(tmp.path());
        store.set_role("fs2", Role::Standby, 2).unwrap();
        store
            .reserve(
                "fs1",
                &[link("vfs-fs1-0"), mount("/m/fs1")],
                &[json!({"missing": "link"})],
            )
            .unwrap();
        (
            store.definitions().unwrap(),
            store.all_reservations().unwrap(),
        )
    };
    let store = open(tmp.path());
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.definitions().unwrap(), definitions);
    assert_eq!(store.all_reservations().unwrap(), reservations);
    assert_eq!(
        store.shortages("fs1").unwrap(),
        [json!({"missing": "link"})]
    );
    assert_eq!(
        store.definition("fs2").unwrap().unwrap().role,
        Role::Standby
    );
}

#[test]
fn reopening_after_an_unclean_stop_keeps_committed_data() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store.reserve("fs2", &[link("vfs-fs2-0")], &[]).unwrap();
    // Never closed: the WAL is not checkpointed and stays next to the database.
    std::mem::forget(store);
    assert!(tmp.path().join("vfsdr.db-wal").exists());
    let store = open(tmp.path());
    assert_eq!(store.definitions().unwrap().len(), 2);
    assert_eq!(
        store
            .holder(ResourceKind::Link, "vfs-fs2-0")
            .unwrap()
            .as_deref(),
        Some("fs2")
    );
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join(DB_FILE);
    drop(store_with_two(tmp.path()));
    let newer = SCHEMA_VERSION + 1;
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    match &err {
        StateError::NewerSchema {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!((*found, *supported), (newer, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("schema version {newer}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("the {SCHEMA_VERSION} this vfsdr")),
        "{message}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

fn assert_corrupt_and_untouched(dir: &Path, before: &[u8]) -> String {
    let path = dir.join(DB_FILE);
    match Store::open(dir) {
        Err(StateError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert_eq!(std::fs::read(&path).unwrap(), before, "file changed");
            reason
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a corrupt database was opened"),
    }
}

#[test]
fn a_garbage_file_is_refused_as_corrupt_and_left_untouched() {
    let tmp = TempDir::new().unwrap();
    let garbage = b"this is not a database, it is a text file\n".repeat(200);
    std::fs::write(tmp.path().join(DB_FILE), &garbage).unwrap();
    let reason = assert_corrupt_and_untouched(tmp.path(), &garbage);
    assert!(reason.contains("not a database"), "{reason}");
    // Also when short, shorter than the SQLite header.
    std::fs::write(tmp.path().join(DB_FILE), b"junk").unwrap();
    assert_corrupt_and_untouched(tmp.path(), b"junk");
}

#[test]
fn a_damaged_database_is_refused_as_corrupt_and_left_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join(DB_FILE);
    {
        let mut store = store_with_two(tmp.path());
        let items: Vec<_> = (0..50).map(|i| link(&format!("vfs-fs1-{i}"))).collect();
        store.reserve("fs1", &items, &[]).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let page_size = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() >= 3 * page_size, "{} bytes", bytes.len());
    // Overwrite the second page (a b-tree root) with a pattern.
    for byte in &mut bytes[page_size..2 * page_size] {
        *byte = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let reason = assert_corrupt_and_untouched(tmp.path(), &bytes);
    assert!(reason.contains("malformed"), "{reason}");
}

#[test]
fn another_applications_database_is_refused_and_left_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join(DB_FILE);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, file TEXT)")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let reason = assert_corrupt_and_untouched(tmp.path(), &before);
    assert!(reason.contains("not a vfsdr state database"), "{reason}");
}
