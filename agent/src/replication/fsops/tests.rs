use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::{FICLONE, FIFREEZE, FITHAW, FS_IOC_FIEMAP, FsError, Images as _, SystemImages, flags};

#[test]
fn ioctl_numbers_match_the_kernel_headers() {
    assert_eq!(FIFREEZE, 0xC004_5877);
    assert_eq!(FITHAW, 0xC004_5878);
    assert_eq!(FICLONE, 0x4004_9409);
    assert_eq!(FS_IOC_FIEMAP, 0xC020_660B);
}

#[test]
fn errors_name_the_call_and_the_path() {
    let e = FsError::Io {
        op: "FIFREEZE",
        path: PathBuf::from("/srv/x"),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    };
    assert!(
        e.to_string()
            .starts_with("FIFREEZE /srv/x: Device or resource busy"),
        "{e}"
    );
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn positioned_io_punch_and_data_ranges() {
    let dir = tmp();
    let f = dir.path().join("img");
    let mut fs = SystemImages::new();
    fs.create_sparse(&f, 4 << 20).unwrap();
    assert!(fs.exists(&f));
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = fs.create_sparse(&f, 1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    assert!(
        err.to_string()
            .starts_with(&format!("create {}: ", f.display()))
    );
    assert_eq!(fs.size(&f).unwrap(), 4 << 20);
    assert_eq!(fs.data_ranges(&f).unwrap(), []);

    fs.write_at(&f, 0, &vec![1; 8192]).unwrap();
    fs.write_at(&f, 1 << 20, &vec![2; 4096]).unwrap();
    fs.fsync(&f).unwrap();
    let mut buf = vec![0; 4];
    fs.read_at(&f, 8190, &mut buf).unwrap();
    assert_eq!(buf, [1, 1, 0, 0]);
    assert_eq!(fs.data_ranges(&f).unwrap(), [(0, 8192), (1 << 20, 4096)]);
    let ext = fs.extents(&f).unwrap();
    let logical: Vec<(u64, u64)> = ext.iter().map(|e| (e.logical, e.length)).collect();
    assert_eq!(logical, [(0, 8192), (1 << 20, 4096)], "{ext:?}");
    assert!(ext[1].flags & flags::LAST != 0);
    assert!(
        ext.iter()
            .all(|e| e.physical != 0 && e.flags & flags::OPAQUE == 0),
        "{ext:?}"
    );

    fs.punch(&f, 4096, 4096).unwrap();
    fs.punch(&f, 0, 0).unwrap();
    assert_eq!(fs.data_ranges(&f).unwrap(), [(0, 4096), (1 << 20, 4096)]);
    fs.read_at(&f, 4094, &mut buf).unwrap();
    assert_eq!(buf, [1, 1, 0, 0]);
    assert_eq!(fs.size(&f).unwrap(), 4 << 20);

    let err = fs.read_at(&f, (4 << 20) - 2, &mut buf).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("pread {}: ", f.display())),
        "{err}"
    );
}

#[test]
fn fiemap_reads_many_extents_in_batches() {
    let dir = tmp();
    let f = dir.path().join("sparse");
    let mut fs = SystemImages::new();
    fs.create_sparse(&f, 0).unwrap();
    for i in 0..1300u64 {
        fs.write_at(&f, i * 8192, &[i as u8 | 1; 4096]).unwrap();
    }
    fs.fsync(&f).unwrap();
    let ext = fs.extents(&f).unwrap();
    assert_eq!(ext.len(), 1300);
    for (i, e) in ext.iter().enumerate() {
        assert_eq!((e.logical, e.length), (i as u64 * 8192, 4096));
    }
    assert_eq!(fs.data_ranges(&f).unwrap().len(), 1300);
}

#[test]
fn rename_and_remove_forget_cached_handles() {
    let dir = tmp();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut fs = SystemImages::new();
    fs.create_sparse(&a, 0).unwrap();
    fs.write_at(&a, 0, b"first").unwrap();
    fs.create_sparse(&b, 0).unwrap();
    fs.write_at(&b, 0, b"other").unwrap();
    fs.rename(&a, &b).unwrap();
    assert!(!fs.exists(&a));
    let mut buf = [0; 5];
    fs.read_at(&b, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"first");
    fs.remove(&b).unwrap();
    fs.remove(&b).unwrap();
    fs.create_sparse(&b, 0).unwrap();
    fs.write_at(&b, 0, b"third").unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"third");
    let err = fs.rename(&a, &b).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("rename {} -> {}: ", a.display(), b.display()))
    );
    fs.fsync(dir.path()).unwrap();
    // More files than the cache holds.
    for i in 0..40 {
        let f = dir.path().join(format!("f{i}"));
        fs.create_sparse(&f, 0).unwrap();
        fs.write_at(&f, 0, &[i as u8]).unwrap();
    }
    for i in 0..40 {
        let mut one = [0];
        fs.read_at(&dir.path().join(format!("f{i}")), 0, &mut one)
            .unwrap();
        assert_eq!(one, [i as u8]);
    }
}

#[test]
fn a_clone_never_overwrites_and_leaves_nothing_when_it_fails() {
    let dir = tmp();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::write(&src, b"data").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&dst, b"keep").unwrap();
    let mut images = SystemImages::new();
    let err = images.clone_file(&src, &dst).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("create {}: ", dst.display())),
        "{err}"
    );
    assert_eq!(fs::read(&dst).unwrap(), b"keep");
    fs::remove_file(&dst).unwrap();
    match images.clone_file(&src, &dst) {
        // A reflink-capable file system (XFS, btrfs): same bytes, same mode.
        Ok(()) => {
            assert_eq!(fs::read(&dst).unwrap(), b"data");
            assert_eq!(
                fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
                0o640
            );
        }
        // ext4, tmpfs: FICLONE fails, and the new file is gone again.
        Err(e) => {
            assert!(
                e.to_string()
                    .starts_with(&format!("FICLONE {}: ", dst.display())),
                "{e}"
            );
            assert!(!dst.exists());
        }
    }
    let err = images
        .clone_file(&dir.path().join("none"), &dst)
        .unwrap_err();
    assert!(err.to_string().starts_with("open "), "{err}");
}

#[test]
fn a_file_replaced_behind_the_cache_is_reopened() {
    let dir = tmp();
    let (f, other) = (dir.path().join("f"), dir.path().join("other"));
    let mut fs = SystemImages::new();
    fs.create_sparse(&f, 0).unwrap();
    fs.write_at(&f, 0, b"old").unwrap();
    // Replaced without going through the seam.
    fs::write(&other, b"new").unwrap();
    fs::rename(&other, &f).unwrap();
    let mut buf = [0; 3];
    fs.read_at(&f, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"new");
    fs.write_at(&f, 0, b"NEW").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"NEW");
    fs::remove_file(&f).unwrap();
    assert!(fs.read_at(&f, 0, &mut buf).is_err());
}

#[test]
fn new_files_get_their_directory() {
    let dir = tmp();
    let f = dir.path().join("vfs1/7/data.img");
    let mut fs = SystemImages::new();
    fs.create_sparse(&f, 4096).unwrap();
    assert_eq!(fs.size(&f).unwrap(), 4096);
    let clone = dir.path().join("vfs1/8/data.img");
    // FICLONE needs XFS or btrfs; the directory is there either way.
    let _ = fs.clone_file(&f, &clone);
    assert!(clone.parent().unwrap().is_dir());
}
