//! The agent brings the volumes of its VFSs up at start and reload, and takes those that leave
//! the configuration down, against fake devices and mounts.
use std::path::Path;

use super::{VfsVolumeStatus, active_volumes};
use crate::{
    api::{Request, Response},
    config::{Config, Pool, Resources, test_vfs},
    daemon::{Agent, Handled, Kernel},
    resources::{FakeLinks, FakeMounts},
    state::Store,
    tracking::FakeProbes,
    volumes::FakeDevices,
};

fn config(vfs: &[(&str, &str)]) -> Config {
    Config {
        resources: Resources {
            pool: Some(Pool {
                path: "/pool".into(),
                reserve_bytes: 0,
            }),
            mount_root: "/srv/mnt".into(),
            ..Default::default()
        },
        vfs: vfs
            .iter()
            .map(|(name, mount)| test_vfs(name, "site-b", mount))
            .collect(),
        ..crate::daemon::tests::config(&[])
    }
}

fn start(cfg: Config, devices: FakeDevices, mounts: FakeMounts) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let kernel = Kernel {
        probes: Box::new(FakeProbes::default()),
        devices: Box::new(devices),
        links: Box::new(FakeLinks::default()),
        mounts: Box::new(mounts),
    };
    Agent::start("/etc/vfsdr/vfsdr.yaml".as_ref(), cfg, kernel, store).unwrap()
}

fn states(agent: &mut Agent) -> Vec<VfsVolumeStatus> {
    let Handled::Now(Response::Status(s)) = agent.handle(Request::Status) else {
        panic!("no status")
    };
    s.vfs_volumes
}

#[test]
fn mounts_resolve_under_the_mount_root_unless_absolute() {
    let cfg = config(&[("fs1", "fs1/data"), ("fs2", "/abs/fs2")]);
    let mounts: Vec<_> = active_volumes(&cfg).into_iter().map(|v| v.mount).collect();
    assert_eq!(
        mounts,
        [Path::new("/srv/mnt/fs1/data"), Path::new("/abs/fs2")]
    );
    let images: Vec<_> = active_volumes(&cfg).into_iter().map(|v| v.image).collect();
    assert_eq!(images[0], Path::new("/pool/volumes/fs1/data.img"));
    let mut none = cfg.clone();
    none.resources.pool = None;
    assert!(active_volumes(&none).is_empty());
}

#[test]
fn the_agent_brings_its_vfs_volumes_up_as_it_starts() {
    let mut agent = start(
        config(&[("fs1", "fs1/data")]),
        FakeDevices::default(),
        FakeMounts::new(),
    );
    let s = states(&mut agent);
    assert_eq!(s.len(), 1);
    assert!(s[0].ready, "{s:?}");
    assert_eq!(s[0].state, "mounted at /srv/mnt/fs1/data via /dev/loop0");
    assert_eq!(s[0].error, None);
    // And tracks it from its first write.
    let Handled::Now(Response::Status(st)) = agent.handle(Request::Status) else {
        panic!()
    };
    assert_eq!(st.volumes[0].name, "fs1/data");
}

#[test]
fn a_volume_that_cannot_come_up_is_reported_and_the_others_go_on() {
    let mounts = FakeMounts::new().with_mount("/dev/sdz1", "/srv/mnt/fs1/data", "ext4");
    let mut agent = start(
        config(&[("fs1", "fs1/data"), ("fs2", "fs2/data")]),
        FakeDevices::default(),
        mounts,
    );
    let s = states(&mut agent);
    assert!(!s[0].ready && s[1].ready, "{s:?}");
    let error = s[0].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("VFS fs1 volume data: mount: /srv/mnt/fs1/data is held by /dev/sdz1"),
        "{error}"
    );
    assert!(
        s[0].state.contains("is held by /dev/sdz1 (ext4)"),
        "{}",
        s[0].state
    );
}

#[test]
fn a_reload_takes_down_the_volumes_of_a_vfs_no_longer_defined() {
    let mut agent = start(
        config(&[("fs1", "fs1/data"), ("fs2", "fs2/data")]),
        FakeDevices::default(),
        FakeMounts::new(),
    );
    assert!(states(&mut agent).iter().all(|s| s.ready));
    let summary = agent.apply(config(&[("fs2", "fs2/data")])).unwrap();
    assert_eq!(summary.removed, ["fs1/data"]);
    let s = states(&mut agent);
    assert_eq!(s.len(), 1);
    assert!(s[0].ready);
    let image = Path::new("/pool/volumes/fs1/data.img");
    let mounted = agent.mounts.mounts().unwrap();
    assert!(
        !mounted
            .iter()
            .any(|m| m.target == Path::new("/srv/mnt/fs1/data"))
    );
    assert!(agent.devices.loops_of(image).is_empty(), "detached");
    assert!(agent.devices.image_exists(image), "the image is kept");
    // fs1 comes back: its image is found, not made again, and mounted.
    agent
        .apply(config(&[("fs1", "fs1/data"), ("fs2", "fs2/data")]))
        .unwrap();
    let s = states(&mut agent);
    assert!(s.iter().all(|s| s.ready), "{s:?}");
}

#[test]
fn a_moved_mount_path_is_unmounted_at_the_old_one_and_mounted_at_the_new() {
    let mut agent = start(
        config(&[("fs1", "fs1/data")]),
        FakeDevices::default(),
        FakeMounts::new(),
    );
    agent.apply(config(&[("fs1", "elsewhere")])).unwrap();
    let s = states(&mut agent);
    assert_eq!(s[0].mount, Path::new("/srv/mnt/elsewhere"));
    assert!(s[0].ready, "{s:?}");
    let targets: Vec<_> = agent
        .mounts
        .mounts()
        .unwrap()
        .into_iter()
        .map(|m| m.target)
        .collect();
    assert_eq!(targets, [Path::new("/srv/mnt/elsewhere")]);
}

#[test]
fn the_vfs_list_shows_the_volumes_of_a_vfs_active_here() {
    let mut agent = start(
        config(&[("fs1", "fs1/data")]),
        FakeDevices::default(),
        FakeMounts::new(),
    );
    let Handled::Now(Response::Vfs { vfs }) = agent.handle(Request::ListVfs) else {
        panic!("no list")
    };
    assert_eq!(vfs[0].volumes.len(), 1);
    assert_eq!(
        vfs[0].volumes[0].state,
        "mounted at /srv/mnt/fs1/data via /dev/loop0"
    );
}

#[test]
fn a_vfs_removed_while_the_agent_was_down_is_taken_down_at_start() {
    use crate::{config::FsType, state::Role, volumes::ImageInfo};
    let image = "/pool/volumes/fs1/data.img";
    let xfs = ImageInfo {
        size: 2 << 30,
        allocated: 1 << 20,
        filesystem: Some(FsType::Xfs),
    };
    // As the last run left it: fs1 active here, its volume attached and mounted.
    let devices = FakeDevices::default()
        .with_image_holding(image, xfs)
        .with_attached(image);
    let mounts = FakeMounts::new().with_mount("/dev/loop0", "/srv/mnt/fs1/data", "xfs");
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let fs1 = test_vfs("fs1", "site-b", "fs1/data");
    store
        .put_definition(&fs1, Role::Active, 1, "site-a")
        .unwrap();
    let kernel = Kernel {
        probes: Box::new(FakeProbes::default()),
        devices: Box::new(devices),
        links: Box::new(FakeLinks::default()),
        mounts: Box::new(mounts),
    };
    // fs1 is no longer in the configuration.
    let mut agent = Agent::start(
        "/etc/vfsdr/vfsdr.yaml".as_ref(),
        config(&[("fs2", "fs2/data")]),
        kernel,
        store,
    )
    .unwrap();
    let targets: Vec<_> = agent
        .mounts
        .mounts()
        .unwrap()
        .into_iter()
        .map(|m| m.target)
        .collect();
    assert_eq!(targets, [Path::new("/srv/mnt/fs2/data")]);
    assert!(agent.devices.loops_of(Path::new(image)).is_empty());
    assert!(agent.devices.image_exists(Path::new(image)));
}
