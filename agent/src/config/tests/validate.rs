//! `VfsDef::validate`: the rules of the configuration on a definition received as JSON.

use std::net::Ipv4Addr;

use crate::config::*;

fn good() -> VfsDef {
    test_vfs("fs1", "site-b", "/srv/vfsdr/mnt/fs1/data")
}

/// The problems of `vfs`.
fn invalid(vfs: &VfsDef) -> Vec<String> {
    match vfs.validate() {
        Ok(()) => panic!("expected problems, {vfs:?} is valid"),
        Err(problems) => problems,
    }
}

#[test]
fn a_good_definition_is_valid() {
    assert_eq!(good().validate(), Ok(()));
    // As received: through JSON.
    let json = serde_json::to_string(&good()).expect("json");
    let received: VfsDef = serde_json::from_str(&json).expect("definition");
    assert_eq!(received.validate(), Ok(()));
}

#[test]
fn every_rule_names_its_field() {
    let mut vfs = good();
    vfs.name = "file-server-1".into();
    vfs.volumes[0].size_bytes = 100 << 20;
    vfs.volumes[0].mount = "srv/../data".into();
    vfs.interfaces[0].address = Ipv4Addr::UNSPECIFIED;
    vfs.interfaces[0].prefix_len = 33;
    vfs.interfaces[0].network = "LAN".into();
    vfs.smb.netbios_name = "fs1".into();
    vfs.smb.shares[0].volume = "home".into();
    vfs.smb.shares[0].path = "../x".into();
    vfs.replication.peer = String::new();
    vfs.replication.interval_s = 0;
    vfs.replication.bandwidth_limit_bytes_per_s = Some(0);
    vfs.snapshots.rules[1].every_s = 2 * 86_400;
    vfs.snapshots.rules[0].for_s = 0;
    let fields: Vec<String> = invalid(&vfs)
        .iter()
        .map(|p| p.split(": ").next().unwrap_or_default().to_owned())
        .collect();
    let expected = [
        "name",
        "volumes[0].size_bytes",
        "volumes[0].mount",
        "interfaces[0].address",
        "interfaces[0].prefix_len",
        "interfaces[0].network",
        "smb.netbios_name",
        "smb.shares[0].volume",
        "smb.shares[0].path",
        "replication.peer",
        "replication.interval_s",
        "replication.bandwidth_limit_bytes_per_s",
        "snapshots.rules[0].for_s",
        "snapshots.rules[1].every_s",
    ];
    assert_eq!(fields, expected);
}

#[test]
fn messages_are_those_of_the_configuration() {
    let mut vfs = good();
    vfs.volumes[0].size_bytes = 200 << 20;
    vfs.smb.netbios_name = "FS_1".into();
    vfs.replication.interval_s = 2 * 86_400;
    assert_eq!(
        invalid(&vfs),
        [
            "volumes[0].size_bytes: xfs volumes need at least 300MiB, found 200MiB",
            "smb.netbios_name: invalid NetBIOS name `FS_1` (`_` is not allowed), expected 1 to \
             15 characters from `A-Z`, `0-9` and `-`",
            "replication.interval_s: must be between 1s and 1d, found 2d",
        ]
    );
}

#[test]
fn lists_are_checked_against_each_other() {
    let mut vfs = good();
    let mut volume = vfs.volumes[0].clone();
    volume.mount = "/srv/vfsdr/mnt/fs1/data/inner".into();
    vfs.volumes.push(volume);
    let mut interface = vfs.interfaces[0].clone();
    interface.prefix_len = 16;
    vfs.interfaces.push(interface);
    let mut share = vfs.smb.shares[0].clone();
    share.name = "DATA".into();
    vfs.smb.shares.push(share);
    assert_eq!(
        invalid(&vfs),
        [
            "volumes[1].name: duplicate volume name `data`, already used by volumes[0]",
            "volumes[1].mount: mount path `/srv/vfsdr/mnt/fs1/data/inner` is inside the mount of \
             volumes[0] `/srv/vfsdr/mnt/fs1/data`",
            "interfaces[1].name: duplicate interface name `smb0`, already used by interfaces[0]",
            "interfaces[1].address: duplicate address `198.18.0.100`, already used by \
             interfaces[0]",
            "smb.shares[1].name: duplicate share name `DATA` (names ignore case: `data` is the \
             same), already used by smb.shares[0]",
        ]
    );
}

#[test]
fn empty_lists_are_refused() {
    let mut vfs = good();
    vfs.volumes.clear();
    vfs.interfaces.clear();
    vfs.snapshots.rules.clear();
    assert_eq!(
        invalid(&vfs),
        [
            "volumes: expected at least one volume, found none",
            "interfaces: expected at least one interface, found none",
            "smb.shares[0].volume: unknown volume `data`: this VFS has no volumes",
            "snapshots.rules: expected at least one rule, found none",
        ]
    );
    // No share is fine.
    let mut vfs = good();
    vfs.smb.shares.clear();
    assert_eq!(vfs.validate(), Ok(()));
}

#[test]
fn unknown_json_fields_are_refused_before_validation() {
    let mut json: serde_json::Value = serde_json::to_value(good()).expect("json");
    json["volumes"][0]["size"] = serde_json::json!("2GiB");
    assert!(serde_json::from_value::<VfsDef>(json).is_err());
}
