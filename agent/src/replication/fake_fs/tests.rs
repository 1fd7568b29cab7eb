use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{BLOCK, Call, FakeImages, Op};
use crate::replication::fsops::{Extent, FsError, Images as _, flags};

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// A fake with volume `a` (mount /mnt/a, image /pool/a.img) of 64 blocks.
fn fake() -> FakeImages {
    let fs = FakeImages::new();
    fs.add_volume(&p("/mnt/a"), &p("/pool/a.img"), 64 * BLOCK);
    fs
}

fn img() -> PathBuf {
    p("/pool/a.img")
}

#[test]
fn writes_read_back_and_holes_read_zeros() {
    let mut fs = fake();
    fs.write_at(&img(), 5000, b"hello").unwrap();
    let mut buf = [1u8; 10];
    fs.read_at(&img(), 4998, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0hello\0\0\0");
    fs.read_at(&img(), 40 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf, [0; 10]);
    assert_eq!(fs.size(&img()).unwrap(), 64 * BLOCK);
    fs.write_at(&img(), 64 * BLOCK, b"x").unwrap();
    assert_eq!(fs.size(&img()).unwrap(), 64 * BLOCK + 1);
    let err = fs.read_at(&img(), 64 * BLOCK, &mut buf).unwrap_err();
    assert!(err.to_string().starts_with("pread /pool/a.img: "), "{err}");
}

#[test]
fn a_clone_shares_blocks_until_written() {
    let mut fs = fake();
    fs.write_at(&img(), 0, &vec![7; 4 * BLOCK as usize])
        .unwrap();
    let before = fs.extents(&img()).unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].flags, flags::LAST);
    fs.clone_file(&img(), &p("/pool/a.1")).unwrap();
    let shared = fs.extents(&p("/pool/a.1")).unwrap();
    assert_eq!(shared[0].physical, before[0].physical);
    assert_eq!(shared[0].flags, flags::SHARED | flags::LAST);
    // A write to a shared block moves it; a second write to it stays in place.
    fs.write_at(&img(), BLOCK + 10, b"new").unwrap();
    let after = fs.extents(&img()).unwrap();
    assert_eq!(after.len(), 3, "{after:?}");
    assert_ne!(after[1].physical, before[0].physical + BLOCK);
    assert_eq!(after[1].flags & flags::SHARED, 0);
    fs.write_at(&img(), BLOCK + 20, b"again").unwrap();
    assert_eq!(fs.extents(&img()).unwrap(), after);
    // The clone kept its content.
    assert_eq!(fs.content(&p("/pool/a.1")).unwrap()[BLOCK as usize + 10], 7);
    assert_eq!(
        &fs.content(&img()).unwrap()[BLOCK as usize + 10..][..3],
        b"new"
    );
}

#[test]
fn punch_frees_whole_blocks_and_zeroes_partial_ones() {
    let mut fs = fake();
    fs.write_at(&img(), 0, &vec![9; 4 * BLOCK as usize])
        .unwrap();
    assert_eq!(fs.physical_blocks(), 4);
    fs.punch(&img(), BLOCK / 2, 2 * BLOCK).unwrap();
    // Block 1 is gone; blocks 0 and 2 are partly zero.
    assert_eq!(fs.physical_blocks(), 3);
    let c = fs.content(&img()).unwrap();
    assert_eq!(c[BLOCK as usize / 2 - 1], 9);
    assert!(
        c[BLOCK as usize / 2..BLOCK as usize * 5 / 2]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(c[BLOCK as usize * 5 / 2], 9);
    assert_eq!(fs.size(&img()).unwrap(), 64 * BLOCK, "KEEP_SIZE");
    assert_eq!(
        fs.data_ranges(&img()).unwrap(),
        [(0, BLOCK), (2 * BLOCK, 2 * BLOCK)]
    );
    fs.punch(&img(), 0, 0).unwrap();
}

#[test]
fn freed_blocks_are_reused_and_clones_pin_theirs() {
    let mut fs = fake();
    fs.write_at(&img(), 0, &[1; 4096]).unwrap();
    let first = fs.extents(&img()).unwrap()[0].physical;
    fs.clone_file(&img(), &p("/pool/a.1")).unwrap();
    fs.punch(&img(), 0, BLOCK).unwrap();
    fs.write_at(&img(), 0, &[2; 4096]).unwrap();
    let second = fs.extents(&img()).unwrap()[0].physical;
    assert_ne!(first, second, "the clone holds the first block");
    fs.remove(&p("/pool/a.1")).unwrap();
    fs.punch(&img(), 0, BLOCK).unwrap();
    assert_eq!(fs.physical_blocks(), 0);
    fs.write_at(&img(), 8 * BLOCK, &[3; 4096]).unwrap();
    assert_eq!(fs.extents(&img()).unwrap()[0].physical, first.min(second));
}

#[test]
fn extents_merge_contiguous_blocks_and_can_be_cut() {
    let mut fs = fake();
    fs.write_at(&img(), 0, &vec![1; 6 * BLOCK as usize])
        .unwrap();
    fs.write_at(&img(), 10 * BLOCK, &[1; 10]).unwrap();
    let ext = fs.extents(&img()).unwrap();
    let phys = ext[0].physical;
    assert_eq!(
        ext,
        [
            Extent {
                logical: 0,
                physical: phys,
                length: 6 * BLOCK,
                flags: 0
            },
            Extent {
                logical: 10 * BLOCK,
                physical: phys + 6 * BLOCK,
                length: BLOCK,
                flags: flags::LAST
            },
        ]
    );
    fs.set_max_extent_blocks(Some(4));
    let lengths: Vec<u64> = fs
        .extents(&img())
        .unwrap()
        .iter()
        .map(|e| e.length / BLOCK)
        .collect();
    assert_eq!(lengths, [4, 2, 1]);
    assert_eq!(
        fs.extents(&p("/pool/none")).unwrap_err().to_string(),
        "open /pool/none: No such file or directory (os error 2)"
    );
}

#[test]
fn preallocated_blocks_are_unwritten_until_written() {
    let mut fs = fake();
    fs.preallocate(&img(), 0, 2 * BLOCK).unwrap();
    let ext = fs.extents(&img()).unwrap();
    assert_eq!(ext[0].flags, flags::UNWRITTEN | flags::LAST);
    assert_eq!(fs.data_ranges(&img()).unwrap(), []);
    fs.write_at(&img(), 0, b"x").unwrap();
    let after = fs.extents(&img()).unwrap();
    assert_eq!(after[0].physical, ext[0].physical, "converted in place");
    assert_eq!(after[0].flags, 0);
    assert_eq!(after[1].flags, flags::UNWRITTEN | flags::LAST);
    assert_eq!(fs.data_ranges(&img()).unwrap(), [(0, BLOCK)]);
    fs.preallocate(&img(), 64 * BLOCK, BLOCK).unwrap();
    assert_eq!(fs.size(&img()).unwrap(), 65 * BLOCK);
}

#[test]
fn freeze_blocks_user_writes_until_thaw() {
    let mut fs = fake();
    fs.add_volume(&p("/mnt/b"), &p("/pool/b.img"), 64 * BLOCK);
    fs.set_freeze_time(Duration::from_millis(3));
    let mounts = [p("/mnt/a"), p("/mnt/b")];
    assert_eq!(fs.freeze_all(&mounts).unwrap(), Duration::from_millis(3));
    assert_eq!(fs.frozen(), mounts);
    let err = fs.write_user(&img(), 0, b"x").unwrap_err();
    assert!(matches!(err, FsError::Frozen { .. }));
    assert_eq!(err.to_string(), "write /pool/a.img: /mnt/a is frozen");
    // Freezing a frozen one fails and leaves the state as it was.
    let err = fs.freeze_all(&[p("/mnt/b")]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    assert_eq!(fs.frozen(), mounts);
    fs.thaw_all(&mounts).unwrap();
    fs.thaw_all(&mounts).unwrap();
    assert!(fs.frozen().is_empty());
    fs.write_user(&img(), 0, b"x").unwrap();
}

#[test]
fn a_failed_group_freeze_thaws_the_others() {
    let mut fs = fake();
    fs.add_volume(&p("/mnt/b"), &p("/pool/b.img"), BLOCK);
    fs.add_volume(&p("/mnt/c"), &p("/pool/c.img"), BLOCK);
    fs.fail_next_with(Op::Freeze, Some(&p("/mnt/b")), libc::EBUSY);
    let err = fs
        .freeze_all(&[p("/mnt/a"), p("/mnt/b"), p("/mnt/c")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "FIFREEZE /mnt/b: Device or resource busy (os error 16)"
    );
    assert!(fs.frozen().is_empty());
    let err = fs.freeze_all(&[p("/mnt/a"), p("/mnt/nope")]).unwrap_err();
    assert!(err.to_string().starts_with("open /mnt/nope: "), "{err}");
    assert!(fs.frozen().is_empty());
}

#[test]
fn a_failed_thaw_still_thaws_the_others() {
    let mut fs = fake();
    fs.add_volume(&p("/mnt/b"), &p("/pool/b.img"), BLOCK);
    let mounts = [p("/mnt/a"), p("/mnt/b")];
    fs.freeze_all(&mounts).unwrap();
    fs.fail_next_with(Op::Thaw, Some(&p("/mnt/a")), libc::EIO);
    let err = fs.thaw_all(&mounts).unwrap_err();
    assert!(err.to_string().starts_with("FITHAW /mnt/a: "), "{err}");
    assert_eq!(fs.frozen(), [p("/mnt/a")]);
    fs.thaw_all(&mounts).unwrap();
    assert!(fs.frozen().is_empty());
}

#[test]
fn injected_failures_hit_once() {
    let mut fs = fake();
    fs.fail_next(Op::Clone);
    let err = fs.clone_file(&img(), &p("/pool/a.1")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "FICLONE /pool/a.img: Input/output error (os error 5)"
    );
    assert!(!fs.exists(&p("/pool/a.1")));
    fs.clone_file(&img(), &p("/pool/a.1")).unwrap();
    for op in [
        Op::Flush,
        Op::Extents,
        Op::DataRanges,
        Op::Size,
        Op::Write,
        Op::Punch,
        Op::Fsync,
        Op::Remove,
    ] {
        fs.fail_next(op);
        let r = match op {
            Op::Flush => fs.flush(&p("/mnt/a"), &img()),
            Op::Extents => fs.extents(&img()).map(drop),
            Op::DataRanges => fs.data_ranges(&img()).map(drop),
            Op::Size => fs.size(&img()).map(drop),
            Op::Write => fs.write_at(&img(), 0, b"x"),
            Op::Punch => fs.punch(&img(), 0, 1),
            Op::Fsync => fs.fsync(&img()),
            _ => fs.remove(&img()),
        };
        let err = r.unwrap_err();
        assert!(err.to_string().starts_with(op.syscall()), "{op:?}: {err}");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
    assert!(fs.exists(&img()));
}

#[test]
fn files_are_created_renamed_and_removed() {
    let mut fs = fake();
    fs.create_sparse(&p("/dr/r.img"), 10 * BLOCK).unwrap();
    let err = fs.create_sparse(&p("/dr/r.img"), BLOCK).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    fs.write_at(&p("/dr/r.img"), 0, b"replica").unwrap();
    fs.write_at(&img(), 0, b"other").unwrap();
    fs.clone_file(&img(), &p("/dr/s.img")).unwrap();
    let err = fs.clone_file(&img(), &p("/dr/s.img")).unwrap_err();
    assert!(err.to_string().starts_with("create /dr/s.img: "), "{err}");
    // rename replaces the target and frees its blocks.
    fs.rename(&p("/dr/r.img"), &p("/dr/s.img")).unwrap();
    assert!(!fs.exists(&p("/dr/r.img")));
    assert_eq!(&fs.content(&p("/dr/s.img")).unwrap()[..7], b"replica");
    assert_eq!(fs.physical_blocks(), 2);
    let err = fs.rename(&p("/dr/r.img"), &p("/dr/t.img")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rename /dr/r.img -> /dr/t.img: No such file or directory (os error 2)"
    );
    fs.fsync(&p("/dr")).unwrap();
    fs.remove(&p("/dr/s.img")).unwrap();
    fs.remove(&p("/dr/s.img")).unwrap();
    assert_eq!(fs.physical_blocks(), 1);
    assert_eq!(fs.files(), [img()]);
}

#[test]
fn calls_are_logged_and_handles_share_state() {
    let fs = fake();
    let mut other = fs.clone();
    other.flush(&p("/mnt/a"), &img()).unwrap();
    other.freeze_all(&[p("/mnt/a")]).unwrap();
    other.clone_file(&img(), &p("/pool/a.1")).unwrap();
    other.thaw_all(&[p("/mnt/a")]).unwrap();
    let call = |op, path: &str| Call { op, path: p(path) };
    assert_eq!(
        fs.calls(),
        [
            call(Op::Flush, "/mnt/a"),
            call(Op::Freeze, "/mnt/a"),
            call(Op::Clone, "/pool/a.img"),
            call(Op::Thaw, "/mnt/a"),
        ]
    );
    assert!(other.exists(Path::new("/pool/a.1")));
    assert!(fs.files().contains(&p("/pool/a.1")));
}
