//! Precheck and reservation against fake links and mounts and a real (temporary) state store.
use std::net::Ipv4Addr;

use super::{FakeLinks, FakeMounts, Kind, Purpose, Report, precheck, release, reserve};
use crate::{
    config::{Link, Pool, Resources, VfsDef, test_vfs},
    resources::{mounts::Mounts, net::Links, precheck::Site},
    state::{ResourceKind, Role, Store},
};

const GIB: u64 = 1 << 30;
const IMG: &str = "/pool/replicas/fs1/data.img";
const MNT: &str = "/srv/vfsdr/mnt/fs1/data";

fn def(name: &str, mount: &str) -> VfsDef {
    test_vfs(name, "site-a", mount)
}

fn resources() -> Resources {
    Resources {
        links: vec![Link {
            name: "eth0".into(),
            networks: vec!["lan".into()],
        }],
        pool: Some(Pool {
            path: "/pool".into(),
            reserve_bytes: GIB,
        }),
        mount_root: "/srv/vfsdr/mnt".into(),
    }
}

struct World {
    links: FakeLinks,
    mounts: FakeMounts,
    store: Store,
    resources: Resources,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        for d in [def("fs1", MNT), def("fs2", "/srv/vfsdr/mnt/fs2/data")] {
            store
                .put_definition(&d, Role::Standby, 1, "site-a")
                .unwrap();
        }
        World {
            links: FakeLinks::default().with_link("eth0", true, true),
            mounts: FakeMounts::new()
                .with_file(IMG, 2 * GIB, 300 << 20)
                .with_file("/pool/replicas/fs2/data.img", 2 * GIB, 0),
            store,
            resources: resources(),
            _dir: dir,
        }
    }

    fn check(&mut self, d: &VfsDef) -> Report {
        let store = &self.store;
        let holder = |k: ResourceKind, r: &str| store.holder(k, r).unwrap();
        let latest = |vfs: &str, volume: &str| {
            let snap = store.latest_snapshot(vfs).unwrap()?;
            snap.images
                .into_iter()
                .find(|i| i.volume == volume)
                .map(|i| i.path)
        };
        let site = Site {
            name: "site-b",
            resources: &self.resources,
            holder: &holder,
            latest_image: &latest,
        };
        precheck(
            &site,
            d,
            Purpose::Failover,
            &mut self.links,
            &mut self.mounts,
        )
        .unwrap()
    }

    fn reserve(&mut self, d: &VfsDef, proceed: bool) -> super::Outcome {
        let r = self.check(d);
        reserve(
            r,
            proceed,
            &mut self.store,
            &mut self.links,
            &mut self.mounts,
        )
        .unwrap()
    }
}

fn kinds(r: &Report) -> Vec<Kind> {
    r.discrepancies.iter().map(|d| d.kind).collect()
}

#[test]
fn a_relative_mount_is_under_this_sites_mount_root() {
    let mut w = World::new();
    w.resources.mount_root = "/dr/mnt".into();
    let r = w.check(&def("fs1", "fs1/data"));
    assert!(r.sufficient, "{:#?}", r.discrepancies);
    assert_eq!(r.mounts[0].target, std::path::Path::new("/dr/mnt/fs1/data"));
    // Something else mounted there is found at the resolved path.
    w.mounts = w
        .mounts
        .clone()
        .with_mount("/dev/sdz", "/dr/mnt/fs1/data", "ext4");
    let r = w.check(&def("fs1", "fs1/data"));
    assert_eq!(kinds(&r), [Kind::MountPointBusy]);
    // An absolute one is the same path everywhere.
    let r = w.check(&def("fs1", "/abs/fs1"));
    assert_eq!(r.mounts[0].target, std::path::Path::new("/abs/fs1"));
}

#[test]
fn a_sufficient_site_plans_a_macvlan_and_a_read_only_mount() {
    let mut w = World::new();
    let r = w.check(&def("fs1", MNT));
    assert!(r.sufficient, "{:#?}", r.discrepancies);
    assert_eq!(
        (r.links[0].parent.as_str(), r.links[0].name.as_str()),
        ("eth0", "fs1-0")
    );
    assert_eq!(r.mounts[0].options, "nouuid,norecovery");
}

#[test]
fn each_shortage_is_one_precise_discrepancy() {
    // No link carries the network.
    let mut w = World::new();
    w.resources.links[0].networks = vec!["backup".into()];
    assert_eq!(kinds(&w.check(&def("fs1", MNT))), [Kind::NoLinkForNetwork]);
    // The link is configured but not in the kernel.
    let mut w = World::new();
    w.links = FakeLinks::default();
    assert_eq!(kinds(&w.check(&def("fs1", MNT))), [Kind::LinkMissing]);
    // Down, then no carrier.
    let mut w = World::new();
    w.links = FakeLinks::default().with_link("eth0", false, false);
    let r = w.check(&def("fs1", MNT));
    assert_eq!(kinds(&r), [Kind::LinkDown]);
    assert_eq!(r.discrepancies[0].found, "eth0 is down");
    w.links = FakeLinks::default().with_link("eth0", true, false);
    assert_eq!(kinds(&w.check(&def("fs1", MNT))), [Kind::NoCarrier]);
    // The address is already here.
    let mut w = World::new();
    w.links = w
        .links
        .clone()
        .with_address("eth0", Ipv4Addr::new(198, 18, 0, 100), 24);
    let r = w.check(&def("fs1", MNT));
    assert_eq!(kinds(&r), [Kind::AddressInUse]);
    assert_eq!(
        r.discrepancies[0].found,
        "198.18.0.100/24 is configured on eth0"
    );
    // The pool is too small: 2 GiB - 300 MiB allocated + 1 GiB reserve needed.
    let mut w = World::new();
    w.mounts.space = Some(super::mounts::Space {
        free: 2 * GIB,
        total: 4 * GIB,
    });
    let r = w.check(&def("fs1", MNT));
    assert_eq!(kinds(&r), [Kind::PoolTooSmall]);
    assert!(!r.discrepancies[0].blocks_access);
    // A foreign mount sits on the mount point.
    let mut w = World::new();
    w.mounts = w.mounts.clone().with_mount("tmpfs", MNT, "tmpfs");
    let r = w.check(&def("fs1", MNT));
    assert_eq!(kinds(&r), [Kind::MountPointBusy]);
    assert_eq!(
        r.discrepancies[0].found,
        "tmpfs from tmpfs is mounted there"
    );
    // The replica is missing; an unsupported file system.
    let mut w = World::new();
    w.mounts.files.clear();
    w.mounts.filesystems.retain(|f| f != "xfs");
    assert_eq!(
        kinds(&w.check(&def("fs1", MNT))),
        [Kind::ReplicaMissing, Kind::FsUnsupported]
    );
}

#[test]
fn reserving_creates_records_and_is_idempotent() {
    let mut w = World::new();
    let o = w.reserve(&def("fs1", MNT), false);
    assert!(o.reserved);
    let actions: Vec<_> = o.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["created", "created"]);
    let l = &w.links.links["fs1-0"];
    assert_eq!((l.kind.as_deref(), l.up), (Some("macvlan"), false));
    let m = w.mounts.mounts().unwrap();
    assert_eq!(m.last().unwrap().target.to_str(), Some(MNT));
    assert!(m.last().unwrap().options.starts_with("ro,"));
    assert_eq!(w.store.reservations("fs1").unwrap().len(), 2);

    let again = w.reserve(&def("fs1", MNT), false);
    let actions: Vec<_> = again.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["present", "present"]);
    assert_eq!(w.links.links.len(), 2);
    assert_eq!(w.mounts.mounts().unwrap().len(), 1);
}

#[test]
fn another_vfs_is_refused_the_same_link_and_mount_point_naming_the_holder() {
    let mut w = World::new();
    w.reserve(&def("fs1", MNT), false);
    let mut other = def("fs2", MNT);
    other.interfaces[0].address = Ipv4Addr::new(198, 18, 0, 101);
    let r = w.check(&other);
    assert_eq!(kinds(&r), [Kind::LinkReserved, Kind::MountPointReserved]);
    assert!(
        r.discrepancies
            .iter()
            .all(|d| d.holder.as_deref() == Some("fs1"))
    );
    assert_eq!(r.discrepancies[0].found, "eth0 is reserved by fs1");
    let o = w.reserve(&other, false);
    assert!(!o.reserved);
    assert!(w.store.reservations("fs2").unwrap().is_empty());
}

#[test]
fn proceeding_reserves_what_is_there_and_records_the_shortages() {
    let mut w = World::new();
    w.mounts.files.clear();
    let o = w.reserve(&def("fs1", MNT), true);
    assert!(o.reserved);
    assert_eq!(o.steps.len(), 1, "only the link");
    let shortages = w.store.shortages("fs1").unwrap();
    assert_eq!(shortages.len(), 1);
    assert_eq!(shortages[0]["kind"], "replica_missing");
}

#[test]
fn release_removes_exactly_what_was_reserved() {
    let mut w = World::new();
    w.mounts = w.mounts.clone().with_mount("/dev/vda", "/", "ext4");
    w.reserve(&def("fs1", MNT), false);
    let steps = release("fs1", &mut w.store, &mut w.links, &mut w.mounts).unwrap();
    let actions: Vec<_> = steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["removed", "removed", "removed"]);
    assert_eq!(w.links.links.keys().collect::<Vec<_>>(), ["eth0"]);
    assert_eq!(
        w.mounts.mounts().unwrap().len(),
        1,
        "the foreign root mount stays"
    );
    assert!(w.mounts.dirs.is_empty());
    assert!(w.store.reservations("fs1").unwrap().is_empty());
}

#[test]
fn a_failing_reservation_leaves_nothing_behind() {
    let mut w = World::new();
    let r = w.check(&def("fs1", MNT));
    // The image vanishes between precheck and reservation: the mount fails.
    w.mounts.files.clear();
    let e = reserve(r, false, &mut w.store, &mut w.links, &mut w.mounts).unwrap_err();
    assert!(e.to_string().contains(IMG), "{e}");
    assert_eq!(w.links.links.len(), 1, "the macvlan was removed again");
    assert!(w.mounts.dirs.is_empty());
    assert!(w.store.reservations("fs1").unwrap().is_empty());
}

#[test]
fn reconcile_recreates_missing_objects() {
    let mut w = World::new();
    w.reserve(&def("fs1", MNT), false);
    w.links.delete_link("fs1-0").unwrap();
    w.mounts.unmount(MNT.as_ref()).unwrap();
    let steps = super::reconcile(&w.store, &mut w.links, &mut w.mounts).unwrap();
    let actions: Vec<_> = steps.iter().map(|(_, s)| s.action.as_str()).collect();
    assert_eq!(actions, ["recreated", "recreated"]);
    let steps = super::reconcile(&w.store, &mut w.links, &mut w.mounts).unwrap();
    assert!(steps.iter().all(|(_, s)| s.action == "present"));
}

#[test]
fn reserving_again_keeps_the_record_that_the_mount_point_was_created() {
    let mut w = World::new();
    w.reserve(&def("fs1", MNT), false);
    w.reserve(&def("fs1", MNT), false);
    release("fs1", &mut w.store, &mut w.links, &mut w.mounts).unwrap();
    assert!(
        w.mounts.dirs.is_empty(),
        "the directory the reservation made is removed"
    );
}

/// Commits a snapshot of fs1 (catalog only) whose image for `data` is `image`.
fn commit(w: &mut World, cycle: u64, image: &str) -> crate::state::Snapshot {
    w.mounts = w.mounts.clone().with_file(image, 2 * GIB, 0);
    w.store
        .begin_cycle(
            "fs1",
            cycle,
            w.store.latest_snapshot("fs1").unwrap().map(|s| s.id),
        )
        .unwrap();
    let images = [crate::state::SnapshotImage {
        volume: "data".into(),
        path: image.into(),
        size: 2 * GIB,
        allocated: 0,
    }];
    w.store
        .commit_snapshot("fs1", cycle, 1, &images, 0, 0)
        .unwrap()
}

#[test]
fn reserved_mount_points_follow_the_latest_snapshot() {
    let mut w = World::new();
    w.reserve(&def("fs1", MNT), false);
    let s1 = commit(&mut w, 1, "/pool/snapshots/fs1/1/data.img");
    let steps = super::refresh("fs1", &s1, &mut w.store, &mut w.mounts).unwrap();
    assert_eq!(steps[0].action, "refreshed");
    let m = w.mounts.mounts().unwrap();
    assert_eq!(m.len(), 1, "the older mount was replaced, not stacked");
    assert_eq!(
        w.mounts.loop_backing(&m[0].source).unwrap().to_str(),
        Some("/pool/snapshots/fs1/1/data.img")
    );
    assert_eq!(
        super::refresh("fs1", &s1, &mut w.store, &mut w.mounts).unwrap()[0].action,
        "present"
    );
    // The precheck counts it as fs1's own; reserving again changes nothing; a new reservation
    // would mount the latest snapshot.
    let r = w.check(&def("fs1", MNT));
    assert!(r.sufficient, "{:#?}", r.discrepancies);
    assert_eq!(
        r.mounts[0].image.to_str(),
        Some("/pool/snapshots/fs1/1/data.img")
    );
    let again = w.reserve(&def("fs1", MNT), false);
    assert!(
        again.steps.iter().all(|s| s.action == "present"),
        "{:?}",
        again.steps
    );
    assert_eq!(w.mounts.mounts().unwrap().len(), 1);
    // Release removes the snapshot mount and the directory the reservation made.
    release("fs1", &mut w.store, &mut w.links, &mut w.mounts).unwrap();
    assert!(w.mounts.mounts().unwrap().is_empty());
    assert!(w.mounts.dirs.is_empty());
}
