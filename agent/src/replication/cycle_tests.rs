//! A whole cycle, active site to DR site, through the fake file systems.
use std::path::{Path, PathBuf};

use super::{
    cycle::{
        Applier, Piece, Pieces, Point, ReplicaVolume, SourceVolume, delta, drop_point, restore,
        take_point,
    },
    fake_fs::FakeImages,
    fsops::Images,
    wire::VolumeDigest,
};

const MIB: u64 = 1 << 20;

fn volumes() -> Vec<SourceVolume> {
    ["a", "b", "c"]
        .iter()
        .map(|n| SourceVolume {
            name: (*n).into(),
            image: PathBuf::from(format!("/pool/volumes/fs1/{n}.img")),
            mount: PathBuf::from(format!("/mnt/fs1/{n}")),
        })
        .collect()
}

fn replicas() -> Vec<ReplicaVolume> {
    ["a", "b", "c"]
        .iter()
        .map(|n| ReplicaVolume {
            name: (*n).into(),
            image: PathBuf::from(format!("/dr/replicas/fs1/{n}.img")),
            size: 16 * MIB,
        })
        .collect()
}

fn setup() -> (FakeImages, FakeImages) {
    let src = FakeImages::new();
    for v in volumes() {
        src.add_volume(&v.mount, &v.image, 16 * MIB);
    }
    (src, FakeImages::new())
}

/// Ships `point` (against `prev`) from `src` into `dst`, commits snapshot `snap_dir`.
fn ship(
    src: &mut FakeImages,
    dst: &mut FakeImages,
    prev: Option<&Point>,
    point: &Point,
    snap_dir: &Path,
) -> (u64, Vec<PathBuf>) {
    let d = delta(src, prev, point).unwrap();
    let pieces: Vec<Piece> = Pieces::new(src, point, &d)
        .collect::<Result<_, _>>()
        .unwrap();
    let mut digests = vec![VolumeDigest::new(); 3];
    for p in &pieces {
        match p {
            Piece::Data {
                volume,
                offset,
                data,
            } => digests[*volume].data(*offset, data),
            Piece::Zero {
                volume,
                offset,
                len,
            } => digests[*volume].zero(*offset, *len),
        }
    }
    let mut applier = Applier::begin(dst, replicas(), point.cycle).unwrap();
    for p in &pieces {
        applier.apply(dst, p).unwrap();
    }
    for (i, dg) in digests.into_iter().enumerate() {
        let (blocks, digest) = dg.finish();
        applier.check_digest(i, blocks, &digest).unwrap();
    }
    let shipped = applier.applied_bytes;
    (shipped, applier.commit(dst, snap_dir).unwrap())
}

#[test]
fn snapshots_at_the_dr_site_equal_the_clones_cycle_after_cycle() {
    let (mut src, mut dst) = setup();
    let vols = volumes();
    src.write_user(&vols[0].image, 0, &vec![1u8; 3 * MIB as usize])
        .unwrap();
    src.write_user(&vols[2].image, 5 * MIB, b"hello").unwrap();
    let p1 = take_point(&mut src, &vols, 1, Path::new("/pool/clones/fs1")).unwrap();
    assert!(src.frozen().is_empty(), "thawed after the point");
    let (shipped, snap1) = ship(
        &mut src,
        &mut dst,
        None,
        &p1,
        Path::new("/dr/snapshots/fs1/1"),
    );
    assert_eq!(
        shipped,
        3 * MIB + 4096,
        "the initial sync ships what is allocated"
    );
    for (clone, snap) in p1.clones.iter().zip(&snap1) {
        assert_eq!(src.content(clone), dst.content(snap));
    }

    // Overwrite, new data and a punched range; only those are shipped.
    src.write_user(&vols[0].image, 4096, &[7u8; 100]).unwrap();
    src.write_user(&vols[1].image, 8 * MIB, &vec![9u8; 2 * 4096])
        .unwrap();
    src.punch(&vols[0].image, 2 * MIB, MIB).unwrap();
    let p2 = take_point(&mut src, &vols, 2, Path::new("/pool/clones/fs1")).unwrap();
    let (shipped, snap2) = ship(
        &mut src,
        &mut dst,
        Some(&p1),
        &p2,
        Path::new("/dr/snapshots/fs1/2"),
    );
    assert_eq!(shipped, 4096 + 2 * 4096 + MIB);
    for (clone, snap) in p2.clones.iter().zip(&snap2) {
        assert_eq!(src.content(clone), dst.content(snap));
    }
    // The first snapshot is unchanged by the second cycle.
    for (clone, snap) in p1.clones.iter().zip(&snap1) {
        assert_eq!(src.content(clone), dst.content(snap));
    }
    drop_point(&mut src, &p1).unwrap();
    assert!(!src.exists(&p1.clones[0]));
}

#[test]
fn a_failing_clone_thaws_and_leaves_no_clone() {
    let (mut src, _) = setup();
    src.fail_next(super::fake_fs::Op::Clone);
    assert!(take_point(&mut src, &volumes(), 1, Path::new("/pool/clones/fs1")).is_err());
    assert!(src.frozen().is_empty());
    assert!(src.files().iter().all(|f| !f.starts_with("/pool/clones")));
}

#[test]
fn pieces_outside_a_volume_or_bad_digests_are_refused() {
    let mut dst = FakeImages::new();
    let mut applier = Applier::begin(&mut dst, replicas(), 1).unwrap();
    let e = applier
        .apply(
            &mut dst,
            &Piece::Data {
                volume: 0,
                offset: 16 * MIB - 10,
                data: vec![0; 20],
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside the volume"), "{e}");
    let e = applier
        .apply(
            &mut dst,
            &Piece::Zero {
                volume: 0,
                offset: u64::MAX,
                len: 2,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = applier
        .apply(
            &mut dst,
            &Piece::Zero {
                volume: 7,
                offset: 0,
                len: 2,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("volume #7"), "{e}");
    applier
        .apply(
            &mut dst,
            &Piece::Data {
                volume: 1,
                offset: 0,
                data: vec![1; 10],
            },
        )
        .unwrap();
    assert!(applier.check_digest(1, 1, &[0; 32]).is_err());
}

#[test]
fn an_interrupted_cycle_is_undone_from_the_last_snapshot() {
    let (mut src, mut dst) = setup();
    let vols = volumes();
    src.write_user(&vols[0].image, 0, &[1u8; 8192]).unwrap();
    let p1 = take_point(&mut src, &vols, 1, Path::new("/c")).unwrap();
    let (_, snap1) = ship(&mut src, &mut dst, None, &p1, Path::new("/dr/s/1"));
    // Cycle 2 writes half its pieces, then the sender dies.
    let mut applier = Applier::begin(&mut dst, replicas(), 2).unwrap();
    applier
        .apply(
            &mut dst,
            &Piece::Data {
                volume: 0,
                offset: 0,
                data: vec![5u8; 4096],
            },
        )
        .unwrap();
    drop(applier);
    assert_ne!(dst.content(&replicas()[0].image), dst.content(&snap1[0]));
    restore(&mut dst, &replicas(), &snap1).unwrap();
    for (r, s) in replicas().iter().zip(&snap1) {
        assert_eq!(dst.content(&r.image), dst.content(s));
    }
}

#[test]
fn the_freeze_window_holds_the_clones_only_and_their_fsync_follows_the_thaw() {
    use super::fake_fs::Op;
    let (mut src, _) = setup();
    let vols = volumes();
    src.set_freeze_time(std::time::Duration::from_millis(7));
    let point = take_point(&mut src, &vols, 1, Path::new("/pool/clones/fs1")).unwrap();
    assert_eq!(
        point.window_parts.freeze.as_millis(),
        7,
        "the FIFREEZE calls' own time"
    );
    let calls = src.calls();
    let at = |op: Op| calls.iter().position(|c| c.op == op).unwrap();
    let (freeze, thaw) = (
        at(Op::Freeze),
        calls.iter().rposition(|c| c.op == Op::Thaw).unwrap(),
    );
    let flushes = calls[..freeze].iter().filter(|c| c.op == Op::Flush).count();
    assert_eq!(flushes, 2 * vols.len(), "two pre-flush passes: {calls:?}");
    let inside: Vec<Op> = calls[freeze..=thaw].iter().map(|c| c.op).collect();
    assert!(
        inside.iter().all(|op| matches!(
            op,
            Op::Freeze | Op::Size | Op::Extents | Op::CloneRange | Op::Punch | Op::Thaw
        )),
        "only freeze, the catching up of the clones and thaw inside the window: {inside:?}"
    );
    let before: Vec<Op> = calls[..freeze].iter().map(|c| c.op).collect();
    assert_eq!(
        before.iter().filter(|op| **op == Op::Clone).count(),
        3,
        "the images are cloned before the freeze: {before:?}"
    );
    for clone in &point.clones {
        assert!(
            calls[thaw..]
                .iter()
                .any(|c| c.op == Op::Fsync && &c.path == clone),
            "{} fsynced after the thaw",
            clone.display()
        );
    }
}

#[test]
fn writes_between_the_early_clones_and_the_freeze_are_caught_up_exactly() {
    use super::fake_fs::Op;
    let (mut src, _) = setup();
    let vols = volumes();
    let image = vols[0].image.clone();
    src.write_user(&image, 0, &vec![1u8; 4 * MIB as usize])
        .unwrap();
    src.write_user(&vols[1].image, 0, &vec![2u8; MIB as usize])
        .unwrap();
    // Late writes: an overwrite of shared blocks, a write into a hole, a partial block.
    src.write_before_freeze(&image, MIB, &vec![7u8; 8192]);
    src.write_before_freeze(&image, 9 * MIB, b"into a hole");
    src.write_before_freeze(&vols[1].image, 100, b"partial");
    let point = take_point(&mut src, &vols, 1, Path::new("/pool/clones/fs1")).unwrap();
    for (v, clone) in vols.iter().zip(&point.clones) {
        assert_eq!(src.content(clone), src.content(&v.image), "{}", v.name);
    }
    let redone: Vec<_> = src
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::CloneRange)
        .collect();
    assert_eq!(
        redone.len(),
        3,
        "only what changed is cloned again: {redone:?}"
    );
}

#[test]
fn pieces_are_prefetched_before_they_are_read_and_a_failed_hint_changes_nothing() {
    use super::fake_fs::Op;
    let (mut src, _) = setup();
    let vols = volumes();
    src.write_user(&vols[0].image, 0, &vec![3u8; 3 * MIB as usize])
        .unwrap();
    src.write_user(&vols[2].image, 9 * MIB, &vec![4u8; 3 * 4096])
        .unwrap();
    let point = take_point(&mut src, &vols, 1, Path::new("/pool/clones/fs1")).unwrap();
    let d = delta(&mut src, None, &point).unwrap();
    let from = src.calls().len();
    let hinted: Vec<Piece> = Pieces::new(&mut src, &point, &d)
        .collect::<Result<_, _>>()
        .unwrap();
    let calls = src.calls()[from..].to_vec();
    for clone in [&point.clones[0], &point.clones[2]] {
        let first = |op: Op| calls.iter().position(|c| c.op == op && &c.path == clone);
        assert!(
            first(Op::Prefetch).unwrap() < first(Op::Read).unwrap(),
            "{} prefetched before it is read: {calls:?}",
            clone.display()
        );
    }
    src.fail_next(Op::Prefetch);
    let unhinted: Vec<Piece> = Pieces::new(&mut src, &point, &d)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(hinted, unhinted);
}

#[test]
fn replicas_are_written_back_while_pieces_arrive() {
    use super::fake_fs::Op;
    let (_, mut dst) = setup();
    let mut applier = Applier::begin(&mut dst, replicas(), 1).unwrap();
    for i in 0..9 {
        let piece = Piece::Data {
            volume: 1,
            offset: i * MIB,
            data: vec![5u8; MIB as usize],
        };
        applier.apply(&mut dst, &piece).unwrap();
    }
    let writebacks: Vec<PathBuf> = dst
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Writeback)
        .map(|c| c.path)
        .collect();
    assert_eq!(
        writebacks,
        vec![replicas()[1].image.clone()],
        "one start per 8 MiB"
    );
}
