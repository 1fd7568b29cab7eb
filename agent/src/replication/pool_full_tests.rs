//! A full DR pool: a cycle that does not fit is refused with its own reason before anything is
//! written; ENOSPC while applying restores the replicas from the last snapshot; either way the
//! latest snapshot stays intact and the same cycle commits once there is room.
use std::path::{Path, PathBuf};

use super::fsops::Images as _;
use super::{
    cycle::take_point,
    fake_fs::Op,
    session::SessionError,
    session_tests::{MIB, World, world},
    sink::{METADATA_MARGIN, SinkError, needed_bytes, replica_volumes},
};
use crate::{config::test_vfs, state::Store};

fn replica() -> PathBuf {
    replica_volumes(Path::new("/b/pool"), &test_vfs("fs1", "site-b", "/m"))[0]
        .image
        .clone()
}

/// Cycle 1 committed (3 MiB of 7s), then 1 MiB of 9s written at the active site.
async fn committed_once() -> (World, super::cycle::Point) {
    let mut w = world();
    let img = w.vols[0].image.clone();
    w.src
        .write_user(&img, 0, &vec![7u8; 3 * MIB as usize])
        .unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", None, &p1, None).await.0.unwrap();
    w.src
        .write_user(&img, MIB, &vec![9u8; MIB as usize])
        .unwrap();
    (w, p1)
}

fn assert_intact(w: &World) {
    let snap1 = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    let store = Store::open(w.dir.path()).unwrap();
    assert_eq!(store.latest_snapshot("fs1").unwrap().unwrap().id, 1);
    assert!(
        store.in_flight("fs1").unwrap().is_none(),
        "no cycle left in flight"
    );
    let first = w.dst.content(&snap1).unwrap();
    assert_eq!(&first[..3 * MIB as usize], &vec![7u8; 3 * MIB as usize][..]);
    assert_eq!(
        w.dst.content(&replica()),
        Some(first),
        "replica back at snapshot 1"
    );
}

#[tokio::test]
async fn a_first_full_copy_counts_the_space_of_the_replicas_it_replaces() {
    // An abandoned first copy left the whole replica written; no snapshot shares its blocks.
    let mut w = world();
    let img = w.vols[0].image.clone();
    w.src
        .write_user(&img, 0, &vec![7u8; 3 * MIB as usize])
        .unwrap();
    let mut dst = w.dst.clone();
    dst.create_sparse(&replica(), 16 * MIB).unwrap();
    dst.write_at(&replica(), 0, &vec![1u8; 16 * MIB as usize])
        .unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    // The sender does not say what it writes: the whole volume counts (16 MiB + margin), 2 MiB
    // are free: only with the replica's 16 MiB does it fit.
    w.dst.set_free_space(Some(2 * MIB));
    assert_eq!(w.cycle("site-a", None, &p1, None).await.0.unwrap(), 1);
    // With a snapshot sharing the replica's blocks, removing the replica frees nothing.
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    match w.cycle("site-a", None, &p2, None).await.0.unwrap_err() {
        SessionError::PoolFull { full, .. } => {
            assert_eq!(
                (full.needs, full.free),
                (16 * MIB + METADATA_MARGIN, 2 * MIB)
            )
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_cycle_that_does_not_fit_is_refused_as_pool_full_and_changes_nothing() {
    let (mut w, p1) = committed_once().await;
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    // The sender did not say what it writes: the whole volume counts (16 MiB + margin).
    w.dst.set_free_space(Some(10 * MIB));
    let calls = w.dst.calls().len();
    let (sent, got) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    match sent.unwrap_err() {
        SessionError::PoolFull { cycle, full } => {
            assert_eq!(cycle, 2);
            assert_eq!(
                (full.needs, full.free),
                (16 * MIB + METADATA_MARGIN, 10 * MIB)
            );
            assert_eq!(full.pool, "/b/pool");
        }
        other => panic!("{other}"),
    }
    assert!(matches!(
        got.unwrap_err(),
        SessionError::Sink(SinkError::PoolFull { .. })
    ));
    let writes = w.dst.calls()[calls..]
        .iter()
        .filter(|c| matches!(c.op, Op::Write | Op::Punch | Op::Remove | Op::Clone))
        .count();
    assert_eq!(writes, 0, "nothing written at the DR site");
    assert_intact(&w);
    // Room again: the same cycle (the active site kept its clones) commits.
    w.dst.set_free_space(None);
    let (sent, _) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    assert_eq!(sent.unwrap(), 2);
    let snap2 = PathBuf::from("/b/pool/snapshots/fs1/2/data.img");
    assert_eq!(w.dst.content(&snap2), w.src.content(&p2.clones[0]));
}

#[tokio::test]
async fn enospc_while_applying_restores_the_replicas_and_is_pool_full() {
    let (mut w, p1) = committed_once().await;
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    w.dst.fail_next_with(Op::Write, None, libc::ENOSPC);
    let (sent, _) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    assert!(
        matches!(sent, Err(SessionError::PoolFull { cycle: 2, .. })),
        "{sent:?}"
    );
    assert_intact(&w);
    let (sent, _) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    assert_eq!(sent.unwrap(), 2);
}

#[tokio::test]
async fn the_pool_reserve_is_not_room() {
    let (w, _) = committed_once().await;
    let mut sink = w.sink();
    sink.reserve = 10 * MIB;
    w.dst.set_free_space(Some(20 * MIB));
    let mut begin = w.begin(2, Some(1));
    // 16 MiB + 1 MiB needed, 20 - 10 free beyond the reserve.
    let e = sink.begin("site-a", &begin).err().expect("refused");
    assert!(
        matches!(&e, SinkError::PoolFull { full, .. } if full.free == 10 * MIB),
        "{e}"
    );
    assert!(e.to_string().contains("DR pool /b/pool is full"), "{e}");
    // What the sender says it writes is what counts, rounded up to blocks.
    begin.volumes[0].write_bytes = Some(MIB + 1);
    assert_eq!(needed_bytes(&begin), MIB + 4096 + METADATA_MARGIN);
    assert!(sink.begin("site-a", &begin).is_ok());
}

#[test]
fn the_real_free_space_comes_from_statvfs_and_errors_name_the_path() {
    use crate::replication::fsops::{Images as _, SystemImages};
    let dir = tempfile::tempdir().unwrap();
    let mut images = SystemImages::new();
    assert!(images.free_space(dir.path()).unwrap() > 0);
    let missing = dir.path().join("missing");
    let e = images.free_space(&missing).unwrap_err().to_string();
    assert!(e.starts_with("statvfs ") && e.contains("missing"), "{e}");
}

#[tokio::test]
async fn without_room_for_the_restore_the_half_written_replica_is_dropped_first() {
    let (mut w, p1) = committed_once().await;
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    w.dst.fail_next_with(Op::Write, None, libc::ENOSPC);
    // The restore's reflink of the snapshot fails too, the first time.
    w.dst.fail_next_with(Op::Clone, None, libc::ENOSPC);
    let (sent, _) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    assert!(
        matches!(sent, Err(SessionError::PoolFull { cycle: 2, .. })),
        "{sent:?}"
    );
    assert_intact(&w);
}
