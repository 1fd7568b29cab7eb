//! The catalog with many snapshots: retention reads only ids and times, and pruning forgets
//! a whole batch in one transaction.

use tempfile::TempDir;

use super::snapshots::{commit, ids, states};
use super::*;

#[test]
fn committed_times_are_the_committed_snapshots_by_id() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    assert!(store.committed_times("fs1").unwrap().is_empty());
    for cycle in 1..=1024 {
        commit(&mut store, "fs1", cycle);
    }
    commit(&mut store, "fs2", 1);
    store.mark_pruning("fs1", &[3, 500]).unwrap();
    let times = store.committed_times("fs1").unwrap();
    let all = store.snapshots("fs1").unwrap();
    let expected: Vec<(u64, u64)> = all
        .iter()
        .filter(|s| s.state == SnapshotState::Committed)
        .map(|s| (s.id, s.created_unix))
        .collect();
    assert_eq!(times.len(), 1022);
    assert_eq!(times, expected);
    assert!(times.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(ids(&store.pruning_snapshots("fs1").unwrap()), [3, 500]);
    assert!(store.pruning_snapshots("fs2").unwrap().is_empty());
    assert!(store.committed_times("nope").unwrap().is_empty());
}

#[test]
fn a_batch_of_marked_snapshots_is_forgotten_at_once_or_not_at_all() {
    let tmp = TempDir::new().unwrap();
    let mut store = store_with_two(tmp.path());
    for cycle in 1..=1024 {
        commit(&mut store, "fs1", cycle);
    }
    let drop: Vec<u64> = (1..1000).collect();
    store.mark_pruning("fs1", &drop).unwrap();
    // One unmarked id refuses the whole batch: nothing is forgotten.
    let mut with_unmarked = drop.clone();
    with_unmarked.push(1010);
    let err = store.forget_snapshots("fs1", &with_unmarked).unwrap_err();
    assert!(
        matches!(err, StateError::NotPruning { id: 1010, .. }),
        "{err:?}"
    );
    assert_eq!(store.snapshots("fs1").unwrap().len(), 1024);
    assert_eq!(
        store.forget_snapshots("fs1", &drop).unwrap(),
        Change::Updated
    );
    // Again, and unknown ids, change nothing.
    assert_eq!(
        store.forget_snapshots("fs1", &drop).unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        store.forget_snapshots("fs1", &[5000, u64::MAX]).unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        store.forget_snapshots("fs1", &[]).unwrap(),
        Change::Unchanged
    );
    let left = states(&store, "fs1");
    assert_eq!(left.len(), 25);
    assert_eq!(left[0], (1000, SnapshotState::Committed));
    assert!(store.pruning_snapshots("fs1").unwrap().is_empty());
}
