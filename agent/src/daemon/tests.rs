//! The agent's start, reload and API handling against fake probes and devices.
use std::path::PathBuf;

use vfsdr_common::EXTENT_WRITE;

use super::{Agent, AgentError};
use crate::{
    api::{Request, Response},
    config::{Config, Site, Tracking, Volume, VolumeSource},
    tracking::FakeProbes,
    volumes::{DevId, FakeDevices, VolumeError},
};

fn config(volumes: &[(&str, VolumeSource)]) -> Config {
    Config {
        version: 1,
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
    let probes = FakeProbes::default();
    let agent = Agent::start(
        "/etc/vfsdr/vfsdr.yaml".as_ref(),
        config(volumes),
        Box::new(probes.clone()),
        Box::new(devices()),
    )?;
    Ok((agent, probes))
}

#[test]
fn a_missing_device_stops_the_start_and_names_it() {
    let e = start(&[("data", dev("/dev/vdb")), ("logs", dev("/dev/nope"))])
        .err()
        .expect("must refuse to start");
    assert!(matches!(&e, AgentError::Volume(VolumeError::NotFound { volume, .. }) if volume == "logs"));
    assert_eq!(e.to_string(), "volume logs: /dev/nope does not exist");
}

#[test]
fn the_same_device_twice_is_refused() {
    let e = start(&[("a", dev("/dev/vdb")), ("b", dev("/dev/vdb"))]).err().unwrap();
    assert_eq!(
        e.to_string(),
        "volumes a and b are the same device 254:16; a device is watched once"
    );
}

#[test]
fn status_and_changes_through_the_api() {
    let (mut agent, probes) = start(&[("data", dev("/dev/vdb")), ("pool", img("/pool/a.img"))]).unwrap();
    probes.write(DevId::new(254, 16), EXTENT_WRITE, 8, 8);
    let Response::Status(s) = agent.handle(Request::Status) else {
        panic!("status")
    };
    assert_eq!(s.site, "site-a");
    assert_eq!(s.volumes.len(), 2);
    assert!(s.volumes[1].attached_by_agent);
    assert_eq!(s.tracking.volumes[0].changed_blocks, 1);
    let Response::Changed(c) = agent.handle(Request::Changed {
        volume: "data".into(),
        take: true,
    }) else {
        panic!("changed")
    };
    assert_eq!((c.blocks, c.ranges[0].start), (1, 1));
    let Response::Error { message } = agent.handle(Request::Changed {
        volume: "nope".into(),
        take: false,
    }) else {
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
        .apply(config(&[("data", dev("/dev/vdb")), ("logs", dev("/dev/vdc"))]))
        .unwrap();
    assert_eq!((s.added, s.removed, s.kept), (vec!["logs".to_string()], vec![], vec!["data".to_string()]));
    let Response::Status(st) = agent.handle(Request::Status) else { panic!() };
    assert_eq!(st.tracking.volumes[0].changed_blocks, 1, "the kept volume keeps its changes");
    let s = agent.apply(config(&[("logs", dev("/dev/vdc"))])).unwrap();
    assert_eq!(s.removed, ["data"]);
    assert_eq!(probes.state.lock().unwrap().watched.len(), 1);
}

#[test]
fn a_failing_apply_changes_nothing() {
    let (mut agent, probes) = start(&[("data", dev("/dev/vdb"))]).unwrap();
    let before = agent.config().clone();
    let e = agent
        .apply(config(&[("logs", dev("/dev/vdc")), ("bad", dev("/dev/missing"))]))
        .unwrap_err();
    assert!(e.to_string().contains("volume bad: /dev/missing does not exist"), "{e}");
    assert_eq!(agent.config(), &before);
    let s = probes.state.lock().unwrap();
    assert_eq!(s.watched.keys().copied().collect::<Vec<_>>(), [DevId::new(254, 16)]);
}

#[test]
fn a_device_may_move_to_another_name_on_reload() {
    let (mut agent, probes) = start(&[("old", dev("/dev/vdb"))]).unwrap();
    let s = agent.apply(config(&[("new", dev("/dev/vdb"))])).unwrap();
    assert_eq!((s.added, s.removed), (vec!["new".to_string()], vec!["old".to_string()]));
    assert_eq!(probes.state.lock().unwrap().watched.len(), 1);
}
