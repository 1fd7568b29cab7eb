//! Definitions, epochs, reservations, shortages, and the constraints of the schema.

use rusqlite::ErrorCode;
use serde_json::json;
use tempfile::TempDir;

use super::*;

#[test]
fn epochs_only_go_forward() {
    let tmp = TempDir::new().unwrap();
    let mut store = open(tmp.path());
    let def = vfs_def("fs1");
    assert_eq!(
        store
            .put_definition(&def, Role::Standby, 5, "site-a")
            .unwrap(),
        Change::Created
    );
    assert_eq!(
        store
            .put_definition(&def, Role::Standby, 5, "site-a")
            .unwrap(),
        Change::Unchanged
    );
    let err = store
        .put_definition(&def, Role::Standby, 4, "site-a")
        .unwrap_err();
    assert!(
        matches!(&err, StateError::StaleEpoch { vfs, stored: 5, offered: 4 } if vfs == "fs1"),
        "{err:?}"
    );

    // The same epoch from the same site with another definition updates it.
    let mut changed = def.clone();
    changed.replication.interval_s = 120;
    assert_eq!(
        store
            .put_definition(&changed, Role::Standby, 5, "site-a")
            .unwrap(),
        Change::Updated
    );
    let stored = store.definition("fs1").unwrap().unwrap();
    assert_eq!((stored.def, stored.epoch), (changed.clone(), 5));
    // The same epoch from another site is a split brain.
    let err = store
        .put_definition(&changed, Role::Standby, 5, "site-c")
        .unwrap_err();
    assert!(
        matches!(&err, StateError::EpochClash { epoch: 5, stored_site, offered_site, .. }
            if stored_site == "site-a" && offered_site == "site-c"),
        "{err:?}"
    );
    // A higher epoch wins, from any site.
    assert_eq!(
        store
            .put_definition(&changed, Role::Active, 6, "site-c")
            .unwrap(),
        Change::Updated
    );
    let stored = store.definition("fs1").unwrap().unwrap();
    assert_eq!(
        (stored.role, stored.epoch, stored.from_site.as_str()),
        (Role::Active, 6, "site-c")
    );

    // Roles follow the same rule.
    let err = store.set_role("fs1", Role::Standby, 5).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::StaleEpoch {
                stored: 6,
                offered: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.set_role("fs1", Role::Active, 6).unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        store.set_role("fs1", Role::Standby, 7).unwrap(),
        Change::Updated
    );
    let stored = store.definition("fs1").unwrap().unwrap();
    assert_eq!(
        (stored.role, stored.epoch, stored.from_site.as_str()),
        (Role::Standby, 7, "site-c")
    );
    assert!(stored.updated_unix > 0);
    let err = store.set_role("nope", Role::Active, 1).unwrap_err();
    assert!(
        matches!(&err, StateError::UnknownVfs { vfs } if vfs == "nope"),
        "{err:?}"
    );

    // SQLite keeps i64.
    let err = store
        .put_definition(&def, Role::Active, u64::MAX, "site-a")
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::EpochRange {
                epoch: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.definition("fs1").unwrap().unwrap().epoch, 7);
}

#[test]
fn definitions_are_sorted_by_name() {
    let tmp = TempDir::new().unwrap();
    let mut store = open(tmp.path());
    for name in ["web", "fs2", "archive", "fs1"] {
        store
            .put_definition(&vfs_def(name), Role::Active, 1, "site-a")
            .unwrap();
    }
    let names: Vec<_> = store
        .definitions()
        .unwrap()
        .into_iter()
        .map(|s| s.def.name)
        .collect();
    assert_eq!(names, ["archive", "fs1", "fs2", "web"]);
    assert!(store.definition("other").unwrap().is_none());
}

#[test]
fn a_conflict_names_the_holder() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store.reserve("fs1", &[link("vfs-shared")], &[]).unwrap();
    let err = store
        .reserve("fs2", &[link("vfs-shared")], &[])
        .unwrap_err();
    match &err {
        StateError::Conflict {
            kind,
            resource,
            holder,
        } => assert_eq!(
            (*kind, resource.as_str(), holder.as_str()),
            (ResourceKind::Link, "vfs-shared", "fs1")
        ),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(err.to_string(), "link vfs-shared is reserved by VFS fs1");
    assert_eq!(
        store
            .holder(ResourceKind::Link, "vfs-shared")
            .unwrap()
            .as_deref(),
        Some("fs1")
    );
    // The same name of another kind is another resource.
    assert_eq!(
        store.holder(ResourceKind::Mount, "vfs-shared").unwrap(),
        None
    );
    // Another VFS cannot remove it either.
    let err = store
        .unreserve("fs2", ResourceKind::Link, "vfs-shared")
        .unwrap_err();
    assert!(
        matches!(&err, StateError::Conflict { holder, .. } if holder == "fs1"),
        "{err:?}"
    );
    assert_eq!(store.reservations("fs1").unwrap().len(), 1);
}

#[test]
fn reserve_is_all_or_none() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store.reserve("fs1", &[mount("/m/taken")], &[]).unwrap();
    let items = [link("vfs-fs2-0"), mount("/m/fs2"), mount("/m/taken")];
    let err = store
        .reserve("fs2", &items, &[json!({"missing": "x"})])
        .unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. }), "{err:?}");
    assert!(store.reservations("fs2").unwrap().is_empty());
    assert!(store.shortages("fs2").unwrap().is_empty());
    assert_eq!(store.holder(ResourceKind::Link, "vfs-fs2-0").unwrap(), None);
    assert_eq!(store.holder(ResourceKind::Mount, "/m/fs2").unwrap(), None);

    let err = store
        .reserve("ghost", &[link("vfs-ghost-0")], &[])
        .unwrap_err();
    assert!(
        matches!(&err, StateError::UnknownVfs { vfs } if vfs == "ghost"),
        "{err:?}"
    );
    assert!(store.all_reservations().unwrap().len() == 1);
}

#[test]
fn reserve_reports_what_changed() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    let short = [json!({"kind": "link", "network": "backup"})];
    let items = [link("vfs-fs1-0"), mount("/m/fs1")];
    let changes = store.reserve("fs1", &items, &short).unwrap();
    assert_eq!(changes, [Change::Created, Change::Created]);
    let changes = store.reserve("fs1", &items, &short).unwrap();
    assert_eq!(changes, [Change::Unchanged, Change::Unchanged]);
    assert_eq!(
        store.shortages("fs1").unwrap(),
        short,
        "a shortage is recorded once"
    );

    let moved = (
        ResourceKind::Mount,
        "/m/fs1".to_string(),
        json!({"device": "/dev/loop9"}),
    );
    let changes = store
        .reserve("fs1", &[moved.clone(), link("vfs-fs1-1")], &[])
        .unwrap();
    assert_eq!(changes, [Change::Updated, Change::Created]);
    let mine = store.reservations("fs1").unwrap();
    assert_eq!(
        keys(&mine),
        [
            (
                "fs1".to_string(),
                ResourceKind::Link,
                "vfs-fs1-0".to_string(),
                link("x").2
            ),
            ("fs1".to_string(), moved.0, moved.1, moved.2),
            (
                "fs1".to_string(),
                ResourceKind::Link,
                "vfs-fs1-1".to_string(),
                link("x").2
            ),
        ]
    );
    assert!(mine.iter().all(|r| r.created_unix > 0));
}

#[test]
fn release_returns_exactly_what_was_reserved() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    let items = [
        link("vfs-fs1-0"),
        mount("/m/fs1/data"),
        mount("/m/fs1/logs"),
    ];
    store
        .reserve("fs1", &items, &[json!("no second link")])
        .unwrap();
    store
        .reserve("fs2", &[link("vfs-fs2-0")], &[json!("other")])
        .unwrap();
    let reserved = store.reservations("fs1").unwrap();
    let expected: Vec<_> = items
        .iter()
        .map(|(kind, resource, detail)| {
            ("fs1".to_string(), *kind, resource.clone(), detail.clone())
        })
        .collect();
    assert_eq!(keys(&reserved), expected);

    let released = store.release("fs1").unwrap();
    assert_eq!(released, reserved);
    assert!(store.reservations("fs1").unwrap().is_empty());
    assert!(store.shortages("fs1").unwrap().is_empty());
    for (kind, resource, _) in &items {
        assert_eq!(store.holder(*kind, resource).unwrap(), None);
    }
    // fs2 keeps its own.
    let left = store.all_reservations().unwrap();
    assert_eq!(
        keys(&left),
        [(
            "fs2".to_string(),
            ResourceKind::Link,
            "vfs-fs2-0".to_string(),
            link("x").2
        )]
    );
    assert_eq!(store.shortages("fs2").unwrap(), [json!("other")]);
    assert!(store.release("fs1").unwrap().is_empty());
}

#[test]
fn unreserve_removes_one_reservation() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store
        .reserve("fs1", &[link("vfs-fs1-0"), mount("/m/fs1")], &[])
        .unwrap();
    assert_eq!(
        store
            .unreserve("fs1", ResourceKind::Link, "vfs-fs1-0")
            .unwrap(),
        Change::Updated
    );
    assert_eq!(
        store
            .unreserve("fs1", ResourceKind::Link, "vfs-fs1-0")
            .unwrap(),
        Change::Unchanged
    );
    let (kind, resource, detail) = mount("/m/fs1");
    assert_eq!(
        keys(&store.reservations("fs1").unwrap()),
        [("fs1".to_string(), kind, resource, detail)]
    );
}

#[test]
fn a_reserved_definition_cannot_be_removed() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store
        .reserve("fs1", &[link("vfs-fs1-0"), mount("/m/fs1")], &[json!("s")])
        .unwrap();
    let err = store.remove_definition("fs1").unwrap_err();
    assert!(
        matches!(&err, StateError::Reserved { vfs, count: 2 } if vfs == "fs1"),
        "{err:?}"
    );
    assert!(store.definition("fs1").unwrap().is_some());

    store.release("fs1").unwrap();
    assert_eq!(store.remove_definition("fs1").unwrap(), Change::Updated);
    assert!(store.definition("fs1").unwrap().is_none());
    assert_eq!(store.remove_definition("fs1").unwrap(), Change::Unchanged);
    // Its shortages went with it; fs2 is untouched.
    assert!(store.shortages("fs1").unwrap().is_empty());
    assert!(store.definition("fs2").unwrap().is_some());
}

/// The schema itself, not only the code, keeps a resource with one VFS and reservations with a
/// stored definition.
#[test]
fn the_schema_enforces_uniqueness_and_references() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    store
        .reserve("fs1", &[link("vfs-x")], &[json!("s")])
        .unwrap();
    let insert = |vfs: &str, resource: &str| {
        store.conn.execute(
            "INSERT INTO reservation (vfs, kind, resource, detail, created_unix)
             VALUES (?1, 'link', ?2, '{}', 0)",
            [vfs, resource],
        )
    };
    let constraint = |result: rusqlite::Result<usize>| {
        result.unwrap_err().sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
    };
    assert!(
        constraint(insert("fs2", "vfs-x")),
        "duplicate (kind, resource)"
    );
    assert!(
        constraint(insert("ghost", "vfs-y")),
        "reservation of an unknown VFS"
    );
    assert!(constraint(
        store.conn.execute("DELETE FROM vfs WHERE name = 'fs1'", [])
    ));
    assert!(constraint(store.conn.execute(
        "UPDATE vfs SET role = 'primary' WHERE name = 'fs2'",
        []
    )));
}
