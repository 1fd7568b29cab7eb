//! Cycles over an in-memory connection, from fake active volumes into a DR sink with a real
//! (temporary) state store.
use std::path::{Path, PathBuf};

use super::{
    codec::Codec,
    cycle::{Pieces, Point, SourceVolume, delta, take_point},
    fake_fs::FakeImages,
    session::{SessionError, receive, send},
    sink::{Sink, replica_volumes},
    wire::{Begin, VolumeInfo},
};
use crate::{
    config::test_vfs,
    state::{Role, Store},
};

pub(super) const MIB: u64 = 1 << 20;

pub(super) struct World {
    pub(super) src: FakeImages,
    pub(super) dst: FakeImages,
    pub(super) vols: Vec<SourceVolume>,
    pub(super) dir: tempfile::TempDir,
}

pub(super) fn world() -> World {
    world_with(|_| {})
}

fn world_with(edit: impl FnOnce(&mut crate::config::VfsDef)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut def = test_vfs("fs1", "site-b", "/srv/vfsdr/mnt/fs1/data");
    def.volumes[0].size_bytes = 16 * MIB;
    edit(&mut def);
    store
        .put_definition(&def, Role::Standby, 1, "site-a")
        .unwrap();
    let src = FakeImages::new();
    let vols = vec![SourceVolume {
        name: "data".into(),
        image: "/a/pool/volumes/fs1/data.img".into(),
        mount: "/srv/vfsdr/mnt/fs1/data".into(),
    }];
    src.add_volume(&vols[0].mount, &vols[0].image, 16 * MIB);
    World {
        src,
        dst: FakeImages::new(),
        vols,
        dir,
    }
}

impl World {
    /// The ids of the snapshots of fs1 the DR site's catalog holds.
    pub(super) fn snapshot_ids(&self) -> Vec<u64> {
        let store = Store::open(self.dir.path()).unwrap();
        store
            .snapshots("fs1")
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect()
    }

    pub(super) fn sink(&self) -> Sink {
        Sink {
            store: Store::open(self.dir.path()).unwrap(),
            images: Box::new(self.dst.clone()),
            pool: "/b/pool".into(),
            reserve: 0,
            checkpoint_bytes: super::sink::CHECKPOINT_BYTES,
        }
    }

    pub(super) fn begin(&self, cycle: u64, base: Option<u64>) -> Begin {
        Begin {
            vfs: "fs1".into(),
            cycle,
            epoch: 1,
            base,
            volumes: vec![VolumeInfo {
                name: "data".into(),
                size: 16 * MIB,
                write_bytes: None,
            }],
            point: None,
        }
    }

    pub(super) async fn cycle(
        &mut self,
        from: &str,
        prev: Option<&Point>,
        point: &Point,
        base: Option<u64>,
    ) -> (Result<u64, SessionError>, Result<u64, SessionError>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let d = delta(&mut self.src, prev, point).unwrap();
        let begin = self.begin(point.cycle, base);
        let mut src = self.src.clone();
        let pieces: Vec<_> = Pieces::new(&mut src, point, &d).collect();
        let sink = self.sink();
        let from = from.to_owned();
        let (sent, got) = tokio::join!(
            send(a, &begin, |_: &[u64]| pieces.into_iter(), Codec::Zstd, None),
            async move { receive(b, &from, sink).await.map(|r| r.snapshot) }
        );
        (sent.map(|s| s.snapshot), got.map(|s| s.id))
    }
}

#[tokio::test]
async fn cycles_arrive_as_snapshots_equal_to_the_clones() {
    let mut w = world();
    let img = w.vols[0].image.clone();
    w.src
        .write_user(&img, 0, &vec![3u8; 2 * MIB as usize])
        .unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    let (sent, got) = w.cycle("site-a", None, &p1, None).await;
    assert_eq!((sent.unwrap(), got.unwrap()), (1, 1));
    let snap = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p1.clones[0]));

    w.src.write_user(&img, 5 * MIB, b"later").unwrap();
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    let (sent, _) = w.cycle("site-a", Some(&p1), &p2, Some(1)).await;
    assert_eq!(sent.unwrap(), 2);
    let snap2 = PathBuf::from("/b/pool/snapshots/fs1/2/data.img");
    assert_eq!(w.dst.content(&snap2), w.src.content(&p2.clones[0]));
    let store = Store::open(w.dir.path()).unwrap();
    assert_eq!(store.snapshots("fs1").unwrap().len(), 2);
}

#[tokio::test]
async fn a_cycle_from_a_site_that_does_not_own_the_vfs_is_refused_and_changes_nothing() {
    let mut w = world();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    let (sent, got) = w.cycle("site-x", None, &p1, None).await;
    let e = sent.unwrap_err().to_string();
    assert!(e.contains("site site-x does not own it"), "{e}");
    assert!(got.is_err());
    assert!(
        w.dst.files().is_empty(),
        "nothing written: {:?}",
        w.dst.files()
    );
}

#[tokio::test]
async fn a_delta_on_a_snapshot_this_site_does_not_have_is_refused() {
    let mut w = world();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    let (sent, _) = w.cycle("site-a", None, &p1, Some(7)).await;
    let e = sent.unwrap_err();
    assert!(
        matches!(&e, SessionError::BaseMissing { cycle: 1, missing }
            if missing.base == 7 && missing.latest.is_none()),
        "{e}"
    );
    assert!(e.to_string().contains("delta on snapshot 7"), "{e}");
    let replica = replica_volumes(Path::new("/b/pool"), &test_vfs("fs1", "site-b", "/m"));
    assert!(!w.dst.files().contains(&replica[0].image));
}

#[tokio::test]
async fn a_lost_base_is_answered_as_such_and_a_full_copy_takes_its_place() {
    let mut w = world();
    let img = w.vols[0].image.clone();
    w.src.write_user(&img, 0, &[1u8; 8192]).unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", None, &p1, None).await.0.unwrap();
    w.src.write_user(&img, 4096, &[2u8; 4096]).unwrap();
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", Some(&p1), &p2, Some(1)).await.0.unwrap();
    // Snapshot 2 is removed at the DR site (by hand): cycle 3, a delta on it, cannot apply.
    let mut sink = w.sink();
    sink.store.mark_pruning("fs1", &[2]).unwrap();
    sink.prune("fs1").unwrap();
    let replica = replica_volumes(Path::new("/b/pool"), &test_vfs("fs1", "site-b", "/m"));
    let before = w.dst.content(&replica[0].image);
    w.src.write_user(&img, 0, &[3u8; 4096]).unwrap();
    let p3 = take_point(&mut w.src, &w.vols, 3, Path::new("/a/clones")).unwrap();
    let e = w
        .cycle("site-a", Some(&p2), &p3, Some(2))
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(&e, SessionError::BaseMissing { cycle: 3, missing }
            if missing.base == 2 && missing.latest == Some(1)),
        "{e}"
    );
    assert_eq!(w.dst.content(&replica[0].image), before, "nothing touched");
    // The resync: a full copy of the same point, as cycle 3.
    assert_eq!(w.cycle("site-a", None, &p3, None).await.0.unwrap(), 3);
    assert_eq!(w.snapshot_ids(), [1, 3], "the older snapshot stays");
    let snap3 = PathBuf::from("/b/pool/snapshots/fs1/3/data.img");
    assert_eq!(w.dst.content(&snap3), w.src.content(&p3.clones[0]));
}

#[tokio::test]
async fn snapshots_outside_the_retention_grid_are_pruned_after_the_answer() {
    // No rule: only the newest snapshot is kept.
    let mut w = world_with(|d| d.snapshots.rules.clear());
    let img = w.vols[0].image.clone();
    w.src.write_user(&img, 0, &[1u8; 4096]).unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", None, &p1, None).await.0.unwrap();
    w.src.write_user(&img, 4096, &[2u8; 4096]).unwrap();
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", Some(&p1), &p2, Some(1)).await.0.unwrap();
    assert_eq!(
        w.snapshot_ids(),
        [1, 2],
        "the commit answers before anything is pruned"
    );
    assert_eq!(w.sink().prune("fs1").unwrap(), [1]);
    assert_eq!(w.snapshot_ids(), [2]);
    assert!(
        !w.dst
            .files()
            .contains(&PathBuf::from("/b/pool/snapshots/fs1/1/data.img"))
    );
    assert!(
        w.dst
            .files()
            .contains(&PathBuf::from("/b/pool/snapshots/fs1/2/data.img"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_sender_is_given_up_after_the_frame_timeout() {
    let w = world();
    let (_a, b) = tokio::io::duplex(1024);
    let e = receive(b, "site-a", w.sink()).await.unwrap_err();
    assert!(matches!(e, SessionError::Timeout { .. }), "{e}");
}

mod resume;
