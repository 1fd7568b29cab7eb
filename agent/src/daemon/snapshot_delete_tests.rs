//! The rules of `vfsdr snapshot delete` at a DR site, through fake devices and images and a
//! real (temporary) state store: every refusal names the VFS, the snapshot and the reason, and
//! deletes nothing.
use std::path::PathBuf;

use super::super::{
    Agent, Handled, Kernel,
    busy::{Activity, Claim},
};
use crate::{
    api::{Request, Response},
    config::{Pool, test_vfs},
    replication::{fake_fs::FakeImages, fsops::Images as _},
    resources::{FakeLinks, FakeMounts},
    state::{Role, SnapshotImage, Store},
    tracking::FakeProbes,
    volumes::FakeDevices,
};

/// A DR site (site-b) holding snapshots 1, 2, 3 of `vfs` (standby, from site-a); its store's
/// directory, and the fake files of the snapshots' images.
struct Dr {
    agent: Agent,
    dir: tempfile::TempDir,
    images: FakeImages,
}

fn image(vfs: &str, id: u64) -> PathBuf {
    PathBuf::from(format!("/b/pool/snapshots/{vfs}/{id}/data.img"))
}

/// [`Dr`] whose devices are `devices(images)` (to attach some to loop devices).
fn dr(vfs: &str, devices: impl FnOnce(FakeDevices) -> FakeDevices) -> Dr {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store
        .put_definition(&test_vfs(vfs, "site-b", "/m"), Role::Standby, 1, "site-a")
        .unwrap();
    let mut images = FakeImages::new();
    for id in 1..=3 {
        let path = image(vfs, id);
        images.create_sparse(&path, 1 << 20).unwrap();
        store
            .begin_cycle(vfs, id, Some(id - 1).filter(|&b| b > 0))
            .unwrap();
        let img = SnapshotImage {
            volume: "data".into(),
            path,
            size: 1 << 20,
            allocated: 0,
        };
        store.commit_snapshot(vfs, id, 1, &[img], 0, 0).unwrap();
    }
    let mut config = super::super::tests::config(&[]);
    config.site.name = "site-b".into();
    config.resources.pool = Some(Pool {
        path: "/b/pool".into(),
        reserve_bytes: 0,
    });
    let kernel = Kernel {
        probes: Box::new(FakeProbes::default()),
        devices: Box::new(devices(FakeDevices::default())),
        links: Box::new(FakeLinks::default()),
        mounts: Box::new(FakeMounts::new()),
    };
    let agent = Agent::start("/etc/vfsdr/vfsdr.yaml".as_ref(), config, kernel, store).unwrap();
    Dr { agent, dir, images }
}

impl Dr {
    fn delete(&mut self, vfs: &str, ids: &[u64], force: bool) -> Handled {
        self.agent.handle(Request::DeleteSnapshots {
            vfs: vfs.into(),
            ids: ids.to_vec(),
            force,
        })
    }

    /// The refusal of a deletion, after checking that nothing was deleted.
    fn refused(&mut self, vfs: &str, ids: &[u64], force: bool) -> String {
        let (before, files) = (self.ids(vfs), self.images.files());
        let message = match self.delete(vfs, ids, force) {
            Handled::Now(Response::Error { message }) => message,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(self.ids(vfs), before, "{message}");
        assert_eq!(self.images.files(), files, "{message}");
        message
    }

    fn store(&self) -> Store {
        Store::open(self.dir.path()).unwrap()
    }

    fn ids(&self, vfs: &str) -> Vec<u64> {
        let snapshots = self.store().snapshots(vfs).unwrap();
        snapshots.iter().map(|s| s.id).collect()
    }

    fn deletion(&mut self, vfs: &str, ids: &[u64], force: bool) -> super::Deletion {
        match self.delete(vfs, ids, force) {
            Handled::Delete(d) => d,
            other => panic!("not a deletion: {other:?}"),
        }
    }
}

#[test]
fn unknown_vfs_ids_and_a_vfs_active_here_are_refused() {
    let mut dr = dr("sd-unknown", |d| d);
    let m = dr.refused("nope", &[1], false);
    assert_eq!(dr.ids("sd-unknown"), [1, 2, 3]);
    assert_eq!(m, "unknown VFS nope at site site-b");
    let m = dr.refused("sd-unknown", &[2, 7, 9], false);
    assert!(
        m.starts_with("VFS sd-unknown at site site-b: nothing deleted: snapshot 7 does not exist")
            && m.contains("snapshot 9 does not exist"),
        "{m}"
    );
    let m = dr.refused("sd-unknown", &[], false);
    assert!(m.contains("name the snapshots"), "{m}");
    // Recorded as active here (the DR site took over): its snapshots are not a standby's.
    let mut store = dr.store();
    store
        .put_definition(
            &test_vfs("sd-active", "site-c", "/m"),
            Role::Active,
            2,
            "site-b",
        )
        .unwrap();
    let m = dr.refused("sd-active", &[1], true);
    assert!(
        m.contains("VFS sd-active is active at site site-b, not a standby"),
        "{m}"
    );
}

#[test]
fn the_latest_snapshot_needs_force_and_says_a_full_resync_follows() {
    let mut dr = dr("sd-latest", |d| d);
    let m = dr.refused("sd-latest", &[1, 3], false);
    assert!(
        m.contains("snapshot 3 is the latest")
            && m.contains("copy every volume again (a full resync)")
            && m.contains("--force")
            && !m.contains("snapshot 1"),
        "{m}"
    );
    let d = dr.deletion("sd-latest", &[3, 1, 3], true);
    assert_eq!(
        (d.ids.as_slice(), d.latest, d.force),
        ([1, 3].as_slice(), true, true)
    );
    let store = dr.store();
    let done = d.run(store, Box::new(dr.images.clone())).unwrap();
    assert_eq!((done.ids, done.latest_deleted), (vec![1, 3], true));
    assert_eq!(dr.ids("sd-latest"), [2]);
    let files = dr.images.files();
    assert!(files.contains(&image("sd-latest", 2)), "{files:?}");
    assert!(!files.contains(&image("sd-latest", 1)) && !files.contains(&image("sd-latest", 3)));
    // What is left of the older ones is the latest now.
    let m = dr.refused("sd-latest", &[2], false);
    assert!(m.contains("snapshot 2 is the latest"), "{m}");
}

#[test]
fn an_image_attached_to_a_loop_device_is_refused_naming_it() {
    let held = image("sd-loop", 2);
    let mut dr = dr("sd-loop", |d| d.with_image(&held).with_attached(&held));
    let m = dr.refused("sd-loop", &[1, 2], false);
    assert!(
        m.contains("snapshot 2: the image of volume data is attached to /dev/loop0")
            && m.contains("unmount it first")
            && !m.contains("snapshot 1"),
        "{m}"
    );
    let d = dr.deletion("sd-loop", &[1], false);
    let done = d.run(dr.store(), Box::new(dr.images.clone())).unwrap();
    assert_eq!(done.ids, [1]);
    assert_eq!(dr.ids("sd-loop"), [2, 3]);
}

#[test]
fn no_deletion_while_a_cycle_is_received_and_none_comes_in_during_one() {
    let mut dr = dr("sd-busy", |d| d);
    let receiving = Claim::take("sd-busy", Activity::Receiving).unwrap();
    let m = dr.refused("sd-busy", &[1], false);
    assert_eq!(
        m,
        "VFS sd-busy at site site-b: nothing deleted: a cycle of it is being received now; \
         retry the deletion of snapshot(s) 1 when it is done"
    );
    drop(receiving);
    let d = dr.deletion("sd-busy", &[1], false);
    assert_eq!(
        Claim::take("sd-busy", Activity::Receiving).unwrap_err(),
        Activity::Deleting,
        "a cycle must wait for the deletion"
    );
    d.run(dr.store(), Box::new(dr.images.clone())).unwrap();
    assert!(Claim::take("sd-busy", Activity::Receiving).is_ok());
}

#[test]
fn a_snapshot_pruned_after_the_checks_makes_the_deletion_delete_nothing() {
    let mut dr = dr("sd-race", |d| d);
    let d = dr.deletion("sd-race", &[1, 2], false);
    let mut store = dr.store();
    store.mark_pruning("sd-race", &[1]).unwrap();
    store.forget_snapshots("sd-race", &[1]).unwrap();
    let e = d.run(dr.store(), Box::new(dr.images.clone())).unwrap_err();
    assert!(
        e.contains("VFS sd-race: snapshot 1 is no longer a committed snapshot"),
        "{e}"
    );
    assert_eq!(dr.ids("sd-race"), [2, 3]);
    assert!(dr.images.files().contains(&image("sd-race", 2)));
}

#[test]
fn the_request_and_its_answer_travel_as_json() {
    let line = crate::api::encode(Request::DeleteSnapshots {
        vfs: "fs1".into(),
        ids: vec![4, 5],
        force: true,
    });
    assert_eq!(
        line,
        "{\"api\":1,\"request\":\"delete_snapshots\",\"vfs\":\"fs1\",\"ids\":[4,5],\"force\":true}\n"
    );
    assert!(crate::api::parse_request(&line).is_ok());
}
