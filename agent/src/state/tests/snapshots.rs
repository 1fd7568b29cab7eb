//! The snapshot catalog, cycles in flight and the source's progress (migration 2).

use std::time::Instant;

use rusqlite::{Connection, ErrorCode, params};
use serde_json::json;
use tempfile::TempDir;

use super::super::schema::{self, MIGRATIONS};
use super::*;

/// The images of snapshot `id` of `vfs`: one 2 GiB volume `data`.
fn images(vfs: &str, id: u64) -> Vec<SnapshotImage> {
    vec![SnapshotImage {
        volume: "data".to_string(),
        path: PathBuf::from(format!("/srv/pool/snapshots/{vfs}/{id}/data.img")),
        size: 2 << 30,
        allocated: 1 << 20,
    }]
}

/// Begins and commits cycle `cycle` of `vfs` on its latest snapshot, at epoch 1.
pub(super) fn commit(store: &mut Store, vfs: &str, cycle: u64) -> Snapshot {
    let base = store.latest_snapshot(vfs).unwrap().map(|s| s.id);
    store.begin_cycle(vfs, cycle, base).unwrap();
    store
        .commit_snapshot(
            vfs,
            cycle,
            1,
            &images(vfs, cycle),
            4096 * cycle,
            1000 * cycle,
        )
        .unwrap()
}

pub(super) fn ids(snapshots: &[Snapshot]) -> Vec<u64> {
    snapshots.iter().map(|s| s.id).collect()
}

pub(super) fn states(store: &Store, vfs: &str) -> Vec<(u64, SnapshotState)> {
    let all = store.snapshots(vfs).unwrap();
    all.iter().map(|s| (s.id, s.state)).collect()
}

#[test]
fn migrating_a_version_1_database_keeps_its_data() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join(DB_FILE);
    let def = vfs_def("fs1");
    {
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate(&mut conn, &path, &MIGRATIONS[..1]).unwrap();
        assert_eq!(schema::version(&conn, &path).unwrap(), 1);
        conn.execute(
            "INSERT INTO vfs (name, definition, role, epoch, from_site, updated_unix)
             VALUES ('fs1', ?1, 'standby', 7, 'site-a', 1700000000)",
            [serde_json::to_string(&def).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO reservation (vfs, kind, resource, detail, created_unix)
             VALUES ('fs1', 'link', 'vfs-fs1-0', '{\"ifindex\":7}', 1700000001)",
            [],
        )
        .unwrap();
    }
    let mut store = open(tmp.path());
    assert_eq!(store.schema_version().unwrap(), schema::SCHEMA_VERSION);
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
    let stored = store.definition("fs1").unwrap().unwrap();
    assert_eq!(
        (stored.def, stored.role, stored.epoch, stored.updated_unix),
        (def, Role::Standby, 7, 1_700_000_000)
    );
    let reservations = store.reservations("fs1").unwrap();
    assert_eq!(
        keys(&reservations),
        [(
            "fs1".to_string(),
            ResourceKind::Link,
            "vfs-fs1-0".to_string(),
            json!({"ifindex": 7})
        )]
    );
    // The new tables work on the migrated data.
    assert!(store.snapshots("fs1").unwrap().is_empty());
    store.begin_cycle("fs1", 1, None).unwrap();
    let snapshot = store
        .commit_snapshot("fs1", 1, 7, &images("fs1", 1), 10, 5)
        .unwrap();
    drop(store);
    let store = open(tmp.path());
    assert_eq!(store.snapshots("fs1").unwrap(), [snapshot]);
}

#[test]
fn a_cycle_goes_from_receiving_to_applied_to_a_snapshot() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    assert_eq!(store.in_flight("fs1").unwrap(), None);
    assert_eq!(store.begin_cycle("fs1", 1, None).unwrap(), Change::Created);
    assert_eq!(
        store.begin_cycle("fs1", 1, None).unwrap(),
        Change::Unchanged
    );
    let flight = store.in_flight("fs1").unwrap().unwrap();
    assert_eq!(
        (flight.cycle, flight.base, flight.state, &flight.progress),
        (1, None, CycleState::Receiving, &json!({}))
    );
    assert!(flight.started_unix > 1_600_000_000);
    // Only one cycle at a time, and only with the base it began with.
    let err = store.begin_cycle("fs1", 2, None).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::CycleInProgress {
                cycle: 1,
                offered: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("commit or abandon cycle 1"),
        "{err}"
    );
    let err = store.begin_cycle("fs1", 1, Some(0)).unwrap_err();
    assert!(matches!(
        err,
        StateError::CycleBase {
            cycle: 1,
            base: Some(0),
            expected: None,
            ..
        }
    ));
    // Progress, to resume after a restart.
    let progress = json!({"data": {"done": 1 << 30}});
    assert_eq!(
        store.cycle_progress("fs1", 1, &progress).unwrap(),
        Change::Updated
    );
    assert_eq!(
        store.cycle_progress("fs1", 1, &progress).unwrap(),
        Change::Unchanged
    );
    let err = store.cycle_progress("fs1", 2, &progress).unwrap_err();
    assert!(matches!(err, StateError::CycleInProgress { .. }), "{err:?}");
    let err = store.cycle_progress("fs2", 1, &progress).unwrap_err();
    assert!(
        matches!(err, StateError::NoCycle { cycle: 1, .. }),
        "{err:?}"
    );
    drop(store);
    let mut store = open(tmp.path());
    let flight = store.in_flight("fs1").unwrap().unwrap();
    assert_eq!(flight.progress, progress);
    assert_eq!(store.in_flight("fs2").unwrap(), None);
    // Applied, then committed.
    assert_eq!(store.cycle_applied("fs1", 1).unwrap(), Change::Updated);
    assert_eq!(store.cycle_applied("fs1", 1).unwrap(), Change::Unchanged);
    assert_eq!(
        store.begin_cycle("fs1", 1, None).unwrap(),
        Change::Unchanged
    );
    let flight = store.in_flight("fs1").unwrap().unwrap();
    assert_eq!(flight.state, CycleState::Applied);
    let err = store.begin_cycle("fs1", 2, None).unwrap_err();
    assert!(matches!(err, StateError::CycleInProgress { .. }), "{err:?}");
    let snapshot = store
        .commit_snapshot("fs1", 1, 1, &images("fs1", 1), 1 << 30, 300 << 20)
        .unwrap();
    assert_eq!(
        (snapshot.id, snapshot.cycle, snapshot.epoch, snapshot.state),
        (1, 1, 1, SnapshotState::Committed)
    );
    assert_eq!(snapshot.images, images("fs1", 1));
    assert_eq!(
        (snapshot.changed_bytes, snapshot.shipped_bytes),
        (1 << 30, 300 << 20)
    );
    assert_eq!(store.in_flight("fs1").unwrap(), None);
    assert_eq!(
        store.latest_snapshot("fs1").unwrap().as_ref(),
        Some(&snapshot)
    );
    assert_eq!(store.snapshot("fs1", 1).unwrap().as_ref(), Some(&snapshot));
    assert_eq!(store.snapshot("fs1", 2).unwrap(), None);
    assert_eq!(store.snapshot("fs2", 1).unwrap(), None);
    // A repeated commit returns the stored snapshot.
    let again = store.commit_snapshot("fs1", 1, 1, &[], 0, 0).unwrap();
    assert_eq!(again, snapshot);
    // The next cycle is a delta on it; a commit must name the cycle in flight.
    assert_eq!(
        store.begin_cycle("fs1", 2, Some(1)).unwrap(),
        Change::Created
    );
    let err = store.commit_snapshot("fs1", 3, 1, &[], 0, 0).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::CycleInProgress {
                cycle: 2,
                offered: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store.commit_snapshot("fs2", 2, 1, &[], 0, 0).unwrap_err();
    assert!(
        matches!(err, StateError::NoCycle { cycle: 2, .. }),
        "{err:?}"
    );
    // Abandoned, it is gone; its number can be skipped.
    assert_eq!(store.abandon_cycle("fs1").unwrap(), Change::Updated);
    assert_eq!(store.abandon_cycle("fs1").unwrap(), Change::Unchanged);
    assert_eq!(store.in_flight("fs1").unwrap(), None);
    let err = store.begin_cycle("fs1", 3, Some(0)).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::CycleBase {
                base: Some(0),
                expected: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("it must be on snapshot 1"),
        "{err}"
    );
    // A full sync needs no base, whatever is stored.
    assert_eq!(store.begin_cycle("fs1", 3, None).unwrap(), Change::Created);
    store
        .commit_snapshot("fs1", 3, 1, &images("fs1", 3), 0, 0)
        .unwrap();
    assert_eq!(ids(&store.snapshots("fs1").unwrap()), [1, 3]);
    assert!(store.snapshots("fs2").unwrap().is_empty());
    let err = store.begin_cycle("ghost", 1, None).unwrap_err();
    assert!(matches!(err, StateError::UnknownVfs { .. }), "{err:?}");
}

#[test]
fn stale_cycles_and_epochs_are_refused() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    commit(&mut store, "fs1", 5);
    for stale in [0, 3, 5] {
        let err = store.begin_cycle("fs1", stale, Some(5)).unwrap_err();
        assert!(
            matches!(err, StateError::StaleCycle { cycle, latest: 5, .. } if cycle == stale),
            "{err:?}"
        );
    }
    // Other VFSs have their own numbers.
    commit(&mut store, "fs2", 1);
    // A commit at an epoch below the stored one is refused and leaves the cycle in flight.
    store.set_role("fs1", Role::Standby, 4).unwrap();
    store.begin_cycle("fs1", 6, Some(5)).unwrap();
    let err = store
        .commit_snapshot("fs1", 6, 3, &images("fs1", 6), 0, 0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::StaleEpoch {
                stored: 4,
                offered: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.in_flight("fs1").unwrap().unwrap().cycle, 6);
    assert_eq!(ids(&store.snapshots("fs1").unwrap()), [5]);
    let snapshot = store
        .commit_snapshot("fs1", 6, 4, &images("fs1", 6), 0, 0)
        .unwrap();
    assert_eq!(snapshot.epoch, 4);
    // Numbers the store cannot keep.
    let err = store.begin_cycle("fs1", u64::MAX, Some(6)).unwrap_err();
    assert!(
        matches!(err, StateError::OutOfRange { what: "cycle", .. }),
        "{err:?}"
    );
}

/// A commit that fails after inserting the snapshot leaves no snapshot and the cycle in flight.
#[test]
fn a_failed_commit_changes_nothing() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    let first = commit(&mut store, "fs1", 1);
    store.begin_cycle("fs1", 2, Some(1)).unwrap();
    store
        .cycle_progress("fs1", 2, &json!({"data": {"done": 512}}))
        .unwrap();
    store.cycle_applied("fs1", 2).unwrap();
    let flight = store.in_flight("fs1").unwrap().unwrap();
    // A fail point: ending the cycle, the commit's last statement, fails.
    store
        .conn
        .execute_batch(
            "CREATE TEMP TRIGGER fail_end_of_cycle BEFORE DELETE ON main.cycle
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let err = store
        .commit_snapshot("fs1", 2, 1, &images("fs1", 2), 7, 7)
        .unwrap_err();
    match &err {
        StateError::Database { op, .. } => assert_eq!(op, "commit snapshot 2 of VFS fs1"),
        other => panic!("expected Database, got {other:?}"),
    }
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(store.snapshots("fs1").unwrap(), [first]);
    assert_eq!(store.in_flight("fs1").unwrap(), Some(flight));
    store
        .conn
        .execute_batch("DROP TRIGGER fail_end_of_cycle")
        .unwrap();
    store
        .commit_snapshot("fs1", 2, 1, &images("fs1", 2), 7, 7)
        .unwrap();
    assert_eq!(ids(&store.snapshots("fs1").unwrap()), [1, 2]);
    assert_eq!(store.in_flight("fs1").unwrap(), None);
}

#[test]
fn pruning_is_marked_then_forgotten() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    for cycle in 1..=5 {
        commit(&mut store, "fs1", cycle);
    }
    commit(&mut store, "fs2", 1);
    store.mark_pruning("fs1", &[1, 2]).unwrap();
    store.mark_pruning("fs1", &[2]).unwrap();
    // Unknown ids refuse the whole call.
    let err = store.mark_pruning("fs1", &[3, 99]).unwrap_err();
    assert!(
        matches!(err, StateError::UnknownSnapshot { id: 99, .. }),
        "{err:?}"
    );
    use SnapshotState::{Committed, Pruning};
    assert_eq!(
        states(&store, "fs1"),
        [
            (1, Pruning),
            (2, Pruning),
            (3, Committed),
            (4, Committed),
            (5, Committed)
        ]
    );
    assert_eq!(states(&store, "fs2"), [(1, Committed)]);
    // Only marked snapshots are forgotten.
    let err = store.forget_snapshot("fs1", 3).unwrap_err();
    assert!(
        matches!(err, StateError::NotPruning { id: 3, .. }),
        "{err:?}"
    );
    assert_eq!(store.forget_snapshot("fs1", 1).unwrap(), Change::Updated);
    assert_eq!(store.forget_snapshot("fs1", 1).unwrap(), Change::Unchanged);
    // A crash before forgetting 2: after a restart it is still there, marked.
    drop(store);
    let mut store = open(tmp.path());
    assert_eq!(
        states(&store, "fs1"),
        [(2, Pruning), (3, Committed), (4, Committed), (5, Committed)]
    );
    assert_eq!(store.forget_snapshot("fs1", 2).unwrap(), Change::Updated);
    // The base of the cycle in flight is not pruned, by this code and by the schema.
    store.begin_cycle("fs1", 6, Some(5)).unwrap();
    let err = store.mark_pruning("fs1", &[4, 5]).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::SnapshotInUse {
                id: 5,
                cycle: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(states(&store, "fs1")[1], (4, Committed));
    let deleted = store
        .conn
        .execute("DELETE FROM snapshot WHERE vfs = 'fs1' AND id = 5", []);
    assert_eq!(
        deleted.unwrap_err().sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation)
    );
    // A pruning snapshot is not the latest, nor a base.
    store.abandon_cycle("fs1").unwrap();
    store.mark_pruning("fs1", &[5]).unwrap();
    assert_eq!(store.latest_snapshot("fs1").unwrap().unwrap().id, 4);
    let err = store.begin_cycle("fs1", 6, Some(5)).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::CycleBase {
                expected: Some(4),
                ..
            }
        ),
        "{err:?}"
    );
    // Nor can its number be reused.
    let err = store.begin_cycle("fs1", 5, Some(4)).unwrap_err();
    assert!(
        matches!(err, StateError::StaleCycle { latest: 5, .. }),
        "{err:?}"
    );
}

/// The schema keeps snapshots and cycles with a stored definition, ids equal to cycles, and
/// valid JSON.
#[test]
fn the_schema_enforces_the_catalog() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    commit(&mut store, "fs1", 1);
    store.begin_cycle("fs2", 1, None).unwrap();
    let insert = |vfs: &str, id: i64, cycle: i64, images: &str| {
        store.conn.execute(
            "INSERT INTO snapshot (vfs, id, cycle, created_unix, epoch, images, changed_bytes,
                                   shipped_bytes, state)
             VALUES (?1, ?2, ?3, 0, 1, ?4, 0, 0, 'committed')",
            params![vfs, id, cycle, images],
        )
    };
    let constraint = |result: rusqlite::Result<usize>| {
        result.unwrap_err().sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
    };
    assert!(constraint(insert("ghost", 1, 1, "[]")), "unknown VFS");
    assert!(constraint(insert("fs1", 1, 1, "[]")), "duplicate id");
    assert!(constraint(insert("fs1", 2, 3, "[]")), "id != cycle");
    assert!(constraint(insert("fs1", 2, 2, "{}")), "images not an array");
    assert!(constraint(insert("fs1", 2, 2, "[")), "images not JSON");
    assert!(constraint(store.conn.execute(
        "INSERT INTO cycle (vfs, cycle, base, state, started_unix, progress)
         VALUES ('fs1', 2, 1, 'sending', 0, '{}')",
        []
    )));
    assert!(
        constraint(store.conn.execute(
            "INSERT INTO cycle (vfs, cycle, base, state, started_unix, progress)
         VALUES ('fs1', 3, 2, 'receiving', 0, '{}')",
            []
        )),
        "base not stored"
    );
    // A definition with snapshots, or a cycle in flight, stays.
    for vfs in ["fs1", "fs2"] {
        assert!(constraint(
            store.conn.execute("DELETE FROM vfs WHERE name = ?1", [vfs])
        ));
    }
}

#[test]
fn the_source_records_acknowledged_cycles() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    assert_eq!(store.source_state("fs1").unwrap(), None);
    let clones = |cycle: u64| json!({"data": format!("/srv/pool/clones/fs1/{cycle}/data.img")});
    assert_eq!(
        store.source_acked("fs1", 1, &clones(1), None).unwrap(),
        Change::Created
    );
    assert_eq!(
        store.source_acked("fs1", 1, &clones(1), None).unwrap(),
        Change::Unchanged
    );
    for (cycle, with) in [(1, clones(9)), (0, clones(0))] {
        let err = store.source_acked("fs1", cycle, &with, None).unwrap_err();
        assert!(
            matches!(err, StateError::StaleCycle { latest: 1, .. }),
            "{err:?}"
        );
    }
    assert_eq!(
        store.source_acked("fs1", 2, &clones(2), None).unwrap(),
        Change::Updated
    );
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!(
        (state.last_acked, &state.clones, state.initial_done),
        (Some(2), &clones(2), true)
    );
    // A full sync is needed again: the last acknowledged cycle stays the base on record.
    assert_eq!(store.source_resync("fs1").unwrap(), Change::Updated);
    assert_eq!(store.source_resync("fs1").unwrap(), Change::Unchanged);
    drop(store);
    let mut store = open(tmp.path());
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!((state.last_acked, state.initial_done), (Some(2), false));
    assert_eq!(
        store.source_acked("fs1", 3, &clones(3), None).unwrap(),
        Change::Updated
    );
    assert!(store.source_state("fs1").unwrap().unwrap().initial_done);
    // Before any acknowledgement.
    assert_eq!(store.source_resync("fs2").unwrap(), Change::Created);
    let state = store.source_state("fs2").unwrap().unwrap();
    assert_eq!(
        (state.last_acked, &state.clones, state.initial_done),
        (None, &json!(null), false)
    );
    let err = store
        .source_acked("ghost", 1, &json!([]), None)
        .unwrap_err();
    assert!(matches!(err, StateError::UnknownVfs { .. }), "{err:?}");
    // The definition stays until the progress is forgotten.
    let err = store.remove_definition("fs1").unwrap_err();
    assert!(matches!(err, StateError::Database { .. }), "{err:?}");
    assert_eq!(store.forget_source("fs1").unwrap(), Change::Updated);
    assert_eq!(store.forget_source("fs1").unwrap(), Change::Unchanged);
    assert_eq!(store.remove_definition("fs1").unwrap(), Change::Updated);
}

#[test]
fn the_source_keeps_the_time_of_its_point_in_milliseconds() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    let clones = json!(["/srv/pool/clones/fs1/1/data.img"]);
    let at = 1_764_108_875_123;
    assert_eq!(
        store.source_acked("fs1", 1, &clones, Some(at)).unwrap(),
        Change::Created
    );
    assert_eq!(
        store.source_acked("fs1", 1, &clones, Some(at)).unwrap(),
        Change::Unchanged
    );
    drop(store);
    let mut store = open(tmp.path());
    let state = store.source_state("fs1").unwrap().unwrap();
    // The clones read back as they were given, the time beside them.
    assert_eq!(
        (state.last_acked, &state.clones, state.point_unix_ms),
        (Some(1), &clones, Some(at))
    );
    // A full sync needed again keeps the point the DR site has.
    store.source_resync("fs1").unwrap();
    assert_eq!(
        store.source_state("fs1").unwrap().unwrap().point_unix_ms,
        Some(at)
    );
    // A record without the time (an older agent wrote it) reads as unknown.
    store.source_acked("fs1", 2, &clones, None).unwrap();
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!((&state.clones, state.point_unix_ms), (&clones, None));
}

/// Thousands of snapshots per VFS: committing stays a few key lookups, listing one range scan.
#[test]
fn two_thousand_snapshots_are_committed_and_listed() {
    const COUNT: u64 = 2_000;
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    // Without waiting for the disk (two fsyncs per cycle, seconds in all): this measures the
    // store's own work; the last commit below is timed with the disk.
    store
        .conn
        .pragma_update(None, "synchronous", "OFF")
        .unwrap();
    let start = Instant::now();
    for cycle in 1..=COUNT {
        commit(&mut store, "fs1", cycle);
    }
    let committing = start.elapsed();
    store
        .conn
        .pragma_update(None, "synchronous", "FULL")
        .unwrap();
    let start = Instant::now();
    commit(&mut store, "fs1", COUNT + 1);
    let one_more = start.elapsed();
    let start = Instant::now();
    let all = store.snapshots("fs1").unwrap();
    let listing = start.elapsed();
    let start = Instant::now();
    let latest = store.latest_snapshot("fs1").unwrap().unwrap();
    let finding_latest = start.elapsed();
    eprintln!(
        "{COUNT} snapshots: committed (begin + commit, without fsync) in {committing:?}, one \
         more (with fsync) in {one_more:?}; {} listed in {listing:?}, the latest found in \
         {finding_latest:?}",
        COUNT + 1
    );
    assert_eq!(ids(&all), (1..=COUNT + 1).collect::<Vec<_>>());
    assert_eq!(latest.id, COUNT + 1);
    assert_eq!(all[999].images, images("fs1", 1000));
    assert_eq!(all[999].changed_bytes, 4096 * 1000);
    assert!(store.snapshots("fs2").unwrap().is_empty());
}

#[test]
fn the_point_of_a_full_sync_under_way_survives_a_restart_until_acknowledged() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    let pending = json!({"cycle": 1, "point": 77, "clones": ["/srv/pool/clones/fs1/1/data.img"]});
    assert_eq!(
        store.source_pending("fs1", &pending).unwrap(),
        Change::Created
    );
    assert_eq!(
        store.source_pending("fs1", &pending).unwrap(),
        Change::Unchanged
    );
    drop(store);
    let mut store = open(tmp.path());
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!(
        (state.last_acked, state.initial_done, &state.pending),
        (None, false, &pending)
    );
    store.source_acked("fs1", 1, &json!(["a"]), None).unwrap();
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!((state.initial_done, &state.pending), (true, &json!(null)));
    let err = store.source_pending("ghost", &pending).unwrap_err();
    assert!(matches!(err, StateError::UnknownVfs { .. }), "{err:?}");
}

#[test]
fn a_pause_survives_a_restart_until_lifted() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    assert_eq!(
        store.source_paused("fs1", &json!(null)).unwrap(),
        Change::Unchanged,
        "not paused, nothing recorded"
    );
    let paused = json!({"vfs": "fs1", "site": "site-b", "needs": 5});
    assert_eq!(
        store.source_paused("fs1", &paused).unwrap(),
        Change::Created
    );
    assert_eq!(
        store.source_paused("fs1", &paused).unwrap(),
        Change::Unchanged
    );
    store.source_acked("fs1", 1, &json!(["a"]), None).unwrap();
    drop(store);
    let mut store = open(tmp.path());
    let state = store.source_state("fs1").unwrap().unwrap();
    assert_eq!(
        (state.last_acked, &state.paused),
        (Some(1), &paused),
        "an ack keeps it"
    );
    assert_eq!(
        store.source_paused("fs1", &json!(null)).unwrap(),
        Change::Updated
    );
    assert_eq!(
        store.source_state("fs1").unwrap().unwrap().paused,
        json!(null)
    );
    let err = store.source_paused("ghost", &paused).unwrap_err();
    assert!(matches!(err, StateError::UnknownVfs { .. }), "{err:?}");
}
