//! `verify` through the fakes: cycles from fake active volumes into a fake DR pool, then the
//! clones compared with the snapshots, before and after a replica is corrupted.
use std::path::{Path, PathBuf};

use ring::digest;

use crate::{replication::fsops::Images as _, state::Store};

use super::*;
use crate::replication::{
    cycle::{Point, take_point},
    fake_fs::FakeImages,
    session_tests::{MIB, World, world},
};

/// The DR site of the tests: [`serve_digests`] over the fake DR pool and the test's store.
struct FakeRemote {
    store: Store,
    dst: FakeImages,
    cycle: u64,
    from: &'static str,
    calls: usize,
}

impl Remote for FakeRemote {
    fn digests(
        &mut self,
        volume: &str,
        offset: u64,
        len: u64,
        chunk: u64,
    ) -> Result<Digests, String> {
        self.calls += 1;
        let req = DigestRequest {
            vfs: "fs1".into(),
            cycle: self.cycle,
            volume: volume.into(),
            offset,
            len,
            chunk,
        };
        let images = self.dst.clone();
        serve_digests(&self.store, "site-b", self.from, &req, &mut |p: &Path| {
            Ok(Box::new(ViaImages {
                images: images.clone(),
                path: p.to_owned(),
            }))
        })
        .map_err(|e| e.to_string())
    }
}

async fn two_cycles() -> (World, Point) {
    let mut w = world();
    let img = w.vols[0].image.clone();
    w.src
        .write_user(&img, 0, &vec![7u8; 3 * MIB as usize])
        .unwrap();
    let p1 = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", None, &p1, None).await.0.unwrap();
    w.src.write_user(&img, 9 * MIB + 5, b"later").unwrap();
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    w.cycle("site-a", Some(&p1), &p2, Some(1)).await.0.unwrap();
    (w, p2)
}

fn remote(w: &World, cycle: u64) -> FakeRemote {
    FakeRemote {
        store: Store::open(w.dir.path()).unwrap(),
        dst: w.dst.clone(),
        cycle,
        from: "site-a",
        calls: 0,
    }
}

fn verify(w: &World, point: &Point, remote: &mut FakeRemote) -> VolumeVerify {
    let mut local = ViaImages {
        images: w.src.clone(),
        path: point.clones[0].clone(),
    };
    verify_volume("data", &mut local, remote).0
}

#[tokio::test]
async fn the_snapshot_matches_the_clone_it_was_made_from() {
    let (w, p2) = two_cycles().await;
    let mut r = remote(&w, 2);
    let v = verify(&w, &p2, &mut r);
    assert_eq!(v.verdict, VerifyResult::Match, "{v:?}");
    assert_eq!(v.size, 16 * MIB);
    assert_eq!(v.chunk, CHUNK);
    // Chunks without data are not read: 3 MiB of data in chunk 0, "later" in chunk 2.
    assert_eq!(v.hashed_bytes_active, 2 * CHUNK);
    assert_eq!(v.hashed_bytes_dr, 2 * CHUNK);
    assert_eq!(r.calls, 1);
}

#[tokio::test]
async fn a_corrupted_replica_block_is_found_and_located_at_4_kib() {
    let (w, p2) = two_cycles().await;
    let snap = PathBuf::from("/b/pool/snapshots/fs1/2/data.img");
    let mut dst = w.dst.clone();
    // One byte of block 1234 (in chunk 1, a hole at the active site), and one of block 5.
    dst.write_at(&snap, 1234 * 4096 + 17, b"X").unwrap();
    dst.write_at(&snap, 5 * 4096, b"Y").unwrap();
    let mut r = remote(&w, 2);
    let v = verify(&w, &p2, &mut r);
    assert_eq!(
        v.verdict,
        VerifyResult::Mismatch {
            differing_chunks: 2,
            first_ranges: vec![
                ByteRange {
                    offset: 5 * 4096,
                    len: 4096
                },
                ByteRange {
                    offset: 1234 * 4096,
                    len: 4096
                },
            ],
        }
    );
    // One whole-volume request, then one per differing chunk.
    assert_eq!(r.calls, 3);
}

#[tokio::test]
async fn a_missing_snapshot_or_a_foreign_site_is_unverified_and_says_why() {
    let (w, p2) = two_cycles().await;
    let mut r = remote(&w, 7);
    let v = verify(&w, &p2, &mut r);
    match &v.verdict {
        VerifyResult::Unverified { reason } => assert!(
            reason.contains("no snapshot of cycle 7") && reason.contains("latest is of cycle 2"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let mut r = remote(&w, 2);
    r.from = "site-x";
    match verify(&w, &p2, &mut r).verdict {
        VerifyResult::Unverified { reason } => {
            assert!(reason.contains("site-x does not own VFS fs1"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The clone is gone at the active site (a newer cycle replaced it).
    let mut src = w.src.clone();
    src.remove(&p2.clones[0]).unwrap();
    match verify(&w, &p2, &mut remote(&w, 2)).verdict {
        VerifyResult::Unverified { reason } => {
            assert!(reason.contains("/a/clones/2/data.img"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn chunks_grow_for_large_volumes_and_requests_are_bounded() {
    assert_eq!(chunk_for(0), CHUNK);
    assert_eq!(chunk_for(MAX_CHUNKS * CHUNK), CHUNK);
    assert_eq!(chunk_for(MAX_CHUNKS * CHUNK + 1), 2 * CHUNK);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let req = DigestRequest {
        vfs: "fs1".into(),
        cycle: 1,
        volume: "data".into(),
        offset: 0,
        len: 1 << 40,
        chunk: 4096,
    };
    let e = serve_digests(&store, "site-b", "site-a", &req, &mut |_| unreachable!()).unwrap_err();
    assert!(matches!(e, DigestError::UnknownVfs { .. }), "{e}");
    assert_eq!(e.to_string(), "site site-b has no definition of VFS fs1");
}

#[test]
fn a_real_file_is_hashed_read_only_with_holes_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(3 * FINE).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data", FINE).unwrap();
    drop(f);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut ro = ReadOnlyFile::open(&path).unwrap();
    let d = digest_range(&mut ro, 0, 3 * FINE, FINE).unwrap();
    let zeros = hex(digest::digest(&digest::SHA256, &[0u8; FINE as usize]).as_ref());
    assert_eq!(d.digests.len(), 3);
    assert_eq!(d.digests[0], zeros);
    assert_ne!(d.digests[1], zeros);
    assert_eq!(d.digests[2], zeros);
}

#[test]
fn read_only_files_refuse_writes_and_stay_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.img");
    std::fs::write(&path, b"snapshot").unwrap();
    let mut ro = ReadOnlyFile::open(&path).unwrap();
    assert!(ro.images.write_at(&path, 0, b"x").is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"snapshot");
    assert!(ReadOnlyFile::open(&dir.path().join("missing.img")).is_err());
}
