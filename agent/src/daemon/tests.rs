//! The agent's start, reload and API handling against fake probes and devices.
use std::path::PathBuf;

use vfsdr_common::EXTENT_WRITE;

use super::{Agent, AgentError, Handled, Kernel};
use crate::{
    api::{Request, Response},
    config::{Config, Site, Tracking, Volume, VolumeSource},
    resources::{FakeLinks, FakeMounts},
    state::Store,
    tracking::FakeProbes,
    volumes::{DevId, FakeDevices, VolumeError},
};

/// A site configuration with the given tracked volumes (also used by `volumes_tests.rs`).
pub(super) fn config(volumes: &[(&str, VolumeSource)]) -> Config {
    Config {
        version: 2,
        site: Site {
            name: "site-a".into(),
            listen: None,
            tls: None,
        },
        state_dir: "/var/lib/vfsdr".into(),
        runtime_dir: "/run/vfsdr".into(),
        tracking: Tracking {
            poll_interval_ms: 200,
            top_writers: 5,
            writers: true,
        },
        peers: Vec::new(),
        resources: Default::default(),
        vfs: Vec::new(),
        volumes: volumes
            .iter()
            .map(|(n, s)| Volume {
                name: (*n).into(),
                source: s.clone(),
            })
            .collect(),
    }
}

/// A site configuration without tracked volumes and with a pool at `/pool` (also used by
/// `gap_tests.rs` and `status_tests.rs`).
pub(super) fn pooled_config() -> Config {
    let mut cfg = config(&[]);
    cfg.resources = crate::config::Resources {
        pool: Some(crate::config::Pool {
            path: "/pool".into(),
            reserve_bytes: 0,
        }),
        ..Default::default()
    };
    cfg
}

fn dev(p: &str) -> VolumeSource {
    VolumeSource::Device(PathBuf::from(p))
}
fn img(p: &str) -> VolumeSource {
    VolumeSource::Image(PathBuf::from(p))
}

fn devices() -> FakeDevices {
    FakeDevices::default()
        .with_device("/dev/vdb", DevId::new(254, 16))
        .with_device("/dev/vdc", DevId::new(254, 32))
        .with_image("/pool/a.img")
}

fn start(volumes: &[(&str, VolumeSource)]) -> Result<(Agent, FakeProbes), AgentError> {
    start_with(config(volumes), devices())
}

/// An agent on fake probes, devices, links and mounts, with a store in a temporary directory.
fn start_with(cfg: Config, devices: FakeDevices) -> Result<(Agent, FakeProbes), AgentError> {
    let probes = FakeProbes::default();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let kernel = Kernel {
        probes: Box::new(probes.clone()),
        devices: Box::new(devices),
        links: Box::new(FakeLinks::default()),
        mounts: Box::new(FakeMounts::new()),
    };
    let agent = Agent::start("/etc/vfsdr/vfsdr.yaml".as_ref(), cfg, kernel, store)?;
    // The store's directory may go: the connection keeps the (unlinked) database open.
    drop(dir);
    Ok((agent, probes))
}

fn now(h: Handled) -> Response {
    match h {
        Handled::Now(r) => r,
        Handled::Forward { peer, .. } => panic!("forwarded to {peer}"),
        Handled::Cycle(def) => panic!("cycle of {}", def.name),
        Handled::Delete(d) => panic!("deletion of {:?} of {}", d.ids, d.vfs),
    }
}

#[test]
fn a_missing_device_stops_the_start_and_names_it() {
    let e = start(&[("data", dev("/dev/vdb")), ("logs", dev("/dev/nope"))])
        .err()
        .expect("must refuse to start");
    assert!(
        matches!(&e, AgentError::Volume(VolumeError::NotFound { volume, .. }) if volume == "logs")
    );
    assert_eq!(e.to_string(), "volume logs: /dev/nope does not exist");
}

#[test]
fn the_same_device_twice_is_refused() {
    let e = start(&[("a", dev("/dev/vdb")), ("b", dev("/dev/vdb"))])
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "volumes a and b are the same device 254:16; a device is watched once"
    );
}

#[test]
fn status_and_changes_through_the_api() {
    let (mut agent, probes) =
        start(&[("data", dev("/dev/vdb")), ("pool", img("/pool/a.img"))]).unwrap();
    probes.write(DevId::new(254, 16), EXTENT_WRITE, 8, 8);
    let Response::Status(s) = now(agent.handle(Request::Status)) else {
        panic!("status")
    };
    assert_eq!(s.site, "site-a");
    assert_eq!(s.volumes.len(), 2);
    assert!(s.volumes[1].attached_by_agent);
    assert_eq!(s.tracking.volumes[0].changed_blocks, 1);
    let Response::Changed(c) = now(agent.handle(Request::Changed {
        volume: "data".into(),
        take: true,
    })) else {
        panic!("changed")
    };
    assert_eq!((c.blocks, c.ranges[0].start), (1, 1));
    let Response::Error { message } = now(agent.handle(Request::Changed {
        volume: "nope".into(),
        take: false,
    })) else {
        panic!("error")
    };
    assert_eq!(message, "no volume named \"nope\" is watched");
}

#[test]
fn apply_adds_and_removes_volumes_and_keeps_marks_of_the_others() {
    let (mut agent, probes) = start(&[("data", dev("/dev/vdb"))]).unwrap();
    probes.write(DevId::new(254, 16), EXTENT_WRITE, 0, 8);
    agent.poll().unwrap();
    let s = agent
        .apply(config(&[
            ("data", dev("/dev/vdb")),
            ("logs", dev("/dev/vdc")),
        ]))
        .unwrap();
    assert_eq!(
        (s.added, s.removed, s.kept),
        (vec!["logs".to_string()], vec![], vec!["data".to_string()])
    );
    let Response::Status(st) = now(agent.handle(Request::Status)) else {
        panic!()
    };
    assert_eq!(
        st.tracking.volumes[0].changed_blocks, 1,
        "the kept volume keeps its changes"
    );
    let s = agent.apply(config(&[("logs", dev("/dev/vdc"))])).unwrap();
    assert_eq!(s.removed, ["data"]);
    assert_eq!(probes.state.lock().unwrap().watched.len(), 1);
}

#[test]
fn a_failing_apply_changes_nothing() {
    let (mut agent, probes) = start(&[("data", dev("/dev/vdb"))]).unwrap();
    let before = agent.config().clone();
    let e = agent
        .apply(config(&[
            ("logs", dev("/dev/vdc")),
            ("bad", dev("/dev/missing")),
        ]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("volume bad: /dev/missing does not exist"),
        "{e}"
    );
    assert_eq!(agent.config(), &before);
    let s = probes.state.lock().unwrap();
    assert_eq!(
        s.watched.keys().copied().collect::<Vec<_>>(),
        [DevId::new(254, 16)]
    );
}

#[test]
fn a_device_may_move_to_another_name_on_reload() {
    let (mut agent, probes) = start(&[("old", dev("/dev/vdb"))]).unwrap();
    let s = agent.apply(config(&[("new", dev("/dev/vdb"))])).unwrap();
    assert_eq!(
        (s.added, s.removed),
        (vec!["new".to_string()], vec!["old".to_string()])
    );
    assert_eq!(probes.state.lock().unwrap().watched.len(), 1);
}

mod vfs {
    use super::*;
    use crate::{config::test_vfs, peer::Message, resources::Purpose};

    const MNT: &str = "/srv/vfsdr/mnt/fs1/data";

    #[test]
    fn a_definition_from_the_active_site_is_kept_as_standby() {
        let (mut agent, _) = start(&[]).unwrap();
        let def = test_vfs("fs1", "site-a", MNT);
        let answer = agent.handle_peer(
            "site-x",
            Message::PushDefinition {
                vfs: def.clone(),
                epoch: 3,
            },
        );
        assert_eq!(answer, Message::Ack);
        let Response::Vfs { vfs } = now(agent.handle(Request::ListVfs)) else {
            panic!()
        };
        assert_eq!(
            (
                vfs[0].name.as_str(),
                vfs[0].epoch,
                vfs[0].from_site.as_str()
            ),
            ("fs1", 3, "site-x")
        );
        assert_eq!(vfs[0].role, crate::state::Role::Standby);
        // Another site may not run resource requests for it.
        let Message::Error { message } = agent.handle_peer(
            "site-y",
            Message::Precheck {
                vfs: "fs1".into(),
                purpose: Purpose::Failover,
                change: None,
            },
        ) else {
            panic!()
        };
        assert_eq!(
            message,
            "site site-y does not own VFS fs1 (its definition came from site-x)"
        );
        // The owner may.
        let answer = agent.handle_peer(
            "site-x",
            Message::Precheck {
                vfs: "fs1".into(),
                purpose: Purpose::Failover,
                change: None,
            },
        );
        assert!(
            matches!(answer, Message::PrecheckReport { .. }),
            "{answer:?}"
        );
    }

    #[test]
    fn bad_definitions_are_refused_and_change_nothing() {
        let (mut agent, _) = start(&[]).unwrap();
        let mut bad = test_vfs("fs1", "site-a", MNT);
        bad.volumes[0].mount = "../escape".into();
        let Message::Error { message } =
            agent.handle_peer("site-x", Message::PushDefinition { vfs: bad, epoch: 1 })
        else {
            panic!()
        };
        assert!(
            message.starts_with("definition of VFS fs1 from site site-x refused: "),
            "{message}"
        );
        let other_dr = test_vfs("fs1", "site-z", MNT);
        let Message::Error { message } = agent.handle_peer(
            "site-x",
            Message::PushDefinition {
                vfs: other_dr,
                epoch: 1,
            },
        ) else {
            panic!()
        };
        assert_eq!(
            message,
            "VFS fs1 from site site-x names site-z as its DR site, not site-a"
        );
        let Response::Vfs { vfs } = now(agent.handle(Request::ListVfs)) else {
            panic!()
        };
        assert!(vfs.is_empty());
        let Response::Error { message } = now(agent.handle(Request::Precheck {
            vfs: "nope".into(),
            purpose: Purpose::Failover,
            change: None,
        })) else {
            panic!()
        };
        assert!(
            message.starts_with("unknown VFS nope: site site-a has no definition of it"),
            "{message}"
        );
    }

    #[test]
    fn requests_for_a_vfs_active_here_go_to_its_dr_site() {
        let mut cfg = config(&[]);
        cfg.vfs = vec![test_vfs("fs1", "site-b", MNT)];
        let (mut agent, _probes) = start_with(cfg, devices()).unwrap();
        match agent.handle(Request::Reserve {
            vfs: "fs1".into(),
            change: None,
            proceed: false,
        }) {
            Handled::Forward {
                peer,
                message:
                    Message::Reserve {
                        vfs,
                        proceed: false,
                        ..
                    },
            } => {
                assert_eq!((peer.as_str(), vfs.as_str()), ("site-b", "fs1"));
            }
            other => panic!("{other:?}"),
        }
        let pushes = agent.pushes().unwrap();
        assert_eq!(pushes.len(), 1);
        assert!(
            matches!(&pushes[0], (p, Message::PushDefinition { epoch: 1, .. }) if p == "site-b")
        );
        // A peer cannot make this site a standby of its own active VFS.
        let Message::Error { message } = agent.handle_peer(
            "site-b",
            Message::PushDefinition {
                vfs: test_vfs("fs1", "site-a", MNT),
                epoch: 9,
            },
        ) else {
            panic!()
        };
        assert_eq!(
            message,
            "VFS fs1 is active at site site-a; it cannot be a standby here"
        );
    }
}

mod at_risk {
    use super::*;
    use crate::config::test_vfs;

    #[test]
    fn vfs_volumes_are_tracked_and_a_cycle_takes_their_mark() {
        let mut cfg = pooled_config();
        cfg.vfs = vec![
            test_vfs("fs1", "site-b", "/m1"),
            test_vfs("fs2", "site-b", "/m2"),
        ];
        // fs1's image exists; fs2's is created by the agent as it starts.
        let devices = devices().with_image("/pool/volumes/fs1/data.img");
        let (mut agent, probes) = start_with(cfg, devices).unwrap();
        let Response::Status(s) = now(agent.handle(Request::Status)) else {
            panic!()
        };
        let names: Vec<&str> = s.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["fs1/data", "fs2/data"]);
        // fs1's image was attached first: the fake's first loop device.
        assert_eq!(s.volumes[0].device, PathBuf::from("/dev/loop0"));
        let dev = DevId::new(7, 0);
        probes.write(dev, EXTENT_WRITE, 0, 16);
        assert_eq!(agent.take_vfs_marks("fs1"), 2 * 4096);
        assert_eq!(agent.take_vfs_marks("fs1"), 0, "a new mark starts");
        assert_eq!(agent.take_vfs_marks("fs2"), 0);
    }

    #[test]
    fn a_cycle_starts_early_when_the_data_at_risk_passes_the_trigger() {
        let mut cfg = pooled_config();
        let mut fs1 = test_vfs("fs1", "site-b", "/m1");
        fs1.replication.interval_s = 3600;
        fs1.replication.trigger_at_risk_bytes = Some(8192);
        cfg.vfs = vec![fs1];
        let (mut agent, probes) =
            start_with(cfg, devices().with_image("/pool/volumes/fs1/data.img")).unwrap();
        let mut cycles = crate::daemon::Cycles::default();
        assert!(
            cycles.due(&agent).is_empty(),
            "not due: the interval has not passed, nothing at risk"
        );
        let dev = *probes.state.lock().unwrap().watched.keys().next().unwrap();
        probes.write(dev, EXTENT_WRITE, 0, 8);
        agent.poll().unwrap();
        assert!(
            cycles.due(&agent).is_empty(),
            "4 KiB at risk is below the 8 KiB trigger"
        );
        probes.write(dev, EXTENT_WRITE, 64, 8);
        agent.poll().unwrap();
        let due: Vec<String> = cycles.due(&agent).into_iter().map(|d| d.name).collect();
        assert_eq!(due, ["fs1"]);
    }
}

#[path = "gap_tests.rs"]
mod gap_checks;

#[test]
fn the_writers_probe_follows_the_config_and_its_counts_hide_when_off() {
    let (mut agent, probes) = start(&[("data", dev("/dev/vdb"))]).unwrap();
    assert!(probes.state.lock().unwrap().writers_on);
    probes.syscall(42, "smbd", 4096);
    agent.poll().unwrap();
    let writers = |agent: &mut Agent| {
        let Response::Status(s) = now(agent.handle(Request::Status)) else {
            panic!("not a status")
        };
        s.tracking.writers.len()
    };
    assert_eq!(writers(&mut agent), 1);

    let mut off = config(&[("data", dev("/dev/vdb"))]);
    off.tracking.writers = false;
    agent.apply(off).unwrap();
    assert!(!probes.state.lock().unwrap().writers_on);
    assert_eq!(writers(&mut agent), 0);

    agent.apply(config(&[("data", dev("/dev/vdb"))])).unwrap();
    assert!(probes.state.lock().unwrap().writers_on);
    assert_eq!(writers(&mut agent), 1);
}
#[path = "status_tests.rs"]
mod status_checks;

#[test]
fn snapshots_being_removed_are_not_listed() {
    let (mut agent, _) = start(&[]).unwrap();
    let def = crate::config::test_vfs("fs9", "site-b", "/m");
    agent
        .store
        .put_definition(&def, crate::state::Role::Standby, 1, "site-a")
        .unwrap();
    for cycle in 1..=2 {
        let image = crate::state::SnapshotImage {
            volume: "data".into(),
            path: format!("/pool/snapshots/fs9/{cycle}/data.img").into(),
            size: 1 << 20,
            allocated: 0,
        };
        let base = (cycle > 1).then(|| cycle - 1);
        agent.store.begin_cycle("fs9", cycle, base).unwrap();
        agent
            .store
            .commit_snapshot("fs9", cycle, 1, &[image], 0, 0)
            .unwrap();
    }
    agent.store.mark_pruning("fs9", &[1]).unwrap();
    let listed = now(agent.handle_vfs(Request::Snapshots { vfs: "fs9".into() }));
    let Response::Snapshots { snapshots, .. } = listed else {
        panic!("{listed:?}");
    };
    let ids: Vec<u64> = snapshots.iter().map(|s| s.id).collect();
    assert_eq!(ids, [2]);
}
