//! The sections of version 2 (`site` with its peer link, `peers`, `resources`, `vfs`), their
//! defaults and the checks across them; and VFS files (`parse_vfs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{HEAD, ok, problem, problems};
use crate::config::*;

const TLS: &str = "  tls: {ca: /t/ca.pem, cert: /t/a.pem, key: /t/a.key}\n";

/// A site `a` with a peer link to `b`, a pool, and `rest` after.
fn linked(rest: &str) -> String {
    format!(
        "version: 2\nsite:\n  name: a\n  listen: 198.18.0.1:7800\n{TLS}\
         peers: [{{name: b, address: 198.18.0.2:7800}}]\nresources: {{pool: {{path: /pool}}}}\n{rest}"
    )
}

/// One VFS named `name` as an item of `vfs:`, with `extra` lines (indented by 4) at its end.
fn vfs_item(name: &str, address: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    volumes: [{{name: data, size: 1GiB}}]\n\
         \x20   interfaces: [{{name: smb0, address: {address}, network: lan}}]\n\
         \x20   smb: {{netbios_name: {}}}\n    replication: {{peer: b, interval: 1m}}\n{extra}",
        name.to_uppercase()
    )
}

#[test]
fn every_v2_field_is_read() {
    let config = ok(&format!(
        "version: 2\nsite:\n  name: a\n  listen: '[::]:7800'\n{TLS}\
         peers:\n  - {{name: b, address: 198.18.0.2:7801}}\n\
         resources:\n  links: [{{name: eth0, networks: [lan, backup]}}]\n\
         \x20 pool: {{path: /pool, reserve: 2GiB}}\n  mount_root: /mnt/\n\
         vfs:\n  - name: fs1\n    volumes:\n\
         \x20     - {{name: data, size: 2GiB, filesystem: ext4, mount: /srv/fs1/data/}}\n\
         \x20     - {{name: logs, size: 314572800}}\n\
         \x20   interfaces: [{{name: smb0, address: 198.18.0.100/24, network: lan}}]\n\
         \x20   smb:\n      netbios_name: FS1\n      shares:\n\
         \x20       - {{name: Data, volume: data, path: a/b}}\n        - {{name: logs, volume: logs}}\n\
         \x20   replication: {{peer: b, interval: 2h, compression: lz4, bandwidth_limit: 1GiB/s}}\n\
         \x20   snapshots: {{retention: [{{every: all, for: 2h}}, {{every: 1d, for: 7d}}]}}\n"
    ));
    let site = Site {
        name: "a".into(),
        listen: Some("[::]:7800".parse().expect("address")),
        tls: Some(Tls {
            ca: "/t/ca.pem".into(),
            cert: "/t/a.pem".into(),
            key: "/t/a.key".into(),
        }),
    };
    assert_eq!(config.site, site);
    let peer = Peer {
        name: "b".into(),
        address: SocketAddr::from(([198, 18, 0, 2], 7801)),
    };
    assert_eq!(config.peers, [peer]);
    let resources = Resources {
        links: vec![Link {
            name: "eth0".into(),
            networks: vec!["lan".into(), "backup".into()],
        }],
        pool: Some(Pool {
            path: "/pool".into(),
            reserve_bytes: 2 << 30,
        }),
        mount_root: "/mnt".into(),
    };
    assert_eq!(config.resources, resources);
    let vfs = VfsDef {
        name: "fs1".into(),
        volumes: vec![
            VfsVolume {
                name: "data".into(),
                size_bytes: 2 << 30,
                filesystem: FsType::Ext4,
                mount: "/srv/fs1/data".into(),
            },
            VfsVolume {
                name: "logs".into(),
                size_bytes: 300 << 20,
                filesystem: FsType::Xfs,
                mount: "fs1/logs".into(),
            },
        ],
        interfaces: vec![VfsInterface {
            name: "smb0".into(),
            address: Ipv4Addr::new(198, 18, 0, 100),
            prefix_len: 24,
            network: "lan".into(),
        }],
        smb: Smb {
            netbios_name: "FS1".into(),
            shares: vec![
                Share {
                    name: "Data".into(),
                    volume: "data".into(),
                    path: "a/b".into(),
                },
                Share {
                    name: "logs".into(),
                    volume: "logs".into(),
                    path: String::new(),
                },
            ],
        },
        replication: Replication {
            peer: "b".into(),
            interval_s: 7200,
            compression: Compression::Lz4,
            bandwidth_limit_bytes_per_s: Some(1 << 30),
            trigger_at_risk_bytes: None,
        },
        snapshots: Retention {
            rules: vec![
                RetentionRule {
                    every_s: 0,
                    for_s: 7200,
                },
                RetentionRule {
                    every_s: 86_400,
                    for_s: 7 * 86_400,
                },
            ],
        },
    };
    assert_eq!(config.vfs, [vfs]);
    assert!(config.vfs[0].validate().is_ok());
    // The default is relative: each site resolves it under its own mount root.
    let at = |v: usize| config.vfs[0].volumes[v].mount_at(&config.resources.mount_root);
    assert_eq!(
        (at(0), at(1)),
        ("/srv/fs1/data".into(), "/mnt/fs1/logs".into())
    );
}

#[test]
fn vfs_fields_left_out_take_their_defaults() {
    let config = ok(&linked(&format!(
        "vfs:\n{}",
        vfs_item("fs1", "10.0.0.1/8", "")
    )));
    let vfs = &config.vfs[0];
    assert_eq!(vfs.volumes[0].filesystem, FsType::Xfs);
    assert_eq!(vfs.volumes[0].mount, Path::new("fs1/data"));
    assert_eq!(
        vfs.volumes[0].mount_at(&config.resources.mount_root),
        Path::new("/srv/vfsdr/mnt/fs1/data")
    );
    assert!(vfs.smb.shares.is_empty());
    assert_eq!(vfs.replication.compression, Compression::Zstd);
    assert_eq!(vfs.replication.bandwidth_limit_bytes_per_s, None);
    assert_eq!(vfs.snapshots, Retention::default());
    assert!(config.resources.links.is_empty());
    assert_eq!(
        config.resources.pool.as_ref().map(|p| p.reserve_bytes),
        Some(0)
    );
    // Left empty, they take their defaults too.
    let extra = "    snapshots: {retention: }\n";
    let empty = ok(&linked(&format!(
        "vfs:\n{}",
        vfs_item("fs1", "10.0.0.1/8", extra)
    )));
    assert_eq!(empty, config);
    let extra = "    snapshots:\n";
    let empty = ok(&linked(&format!(
        "vfs:\n{}",
        vfs_item("fs1", "10.0.0.1/8", extra)
    )));
    assert_eq!(empty, config);
}

#[test]
fn the_peer_link_needs_listen_and_tls() {
    assert_eq!(
        problem(&format!("{HEAD}  listen: 198.18.0.1:7800\n")),
        "3:3: site.tls: missing field `tls`, required when `listen` or `peers` is set (the \
         certificates of the peer link)"
    );
    let found = problems(&format!(
        "{HEAD}{TLS}peers: [{{name: b, address: 198.18.0.2:1}}]\n"
    ));
    assert_eq!(
        found,
        [
            "3:3: site.listen: missing field `listen`, required when `peers` is set (the address \
          where this site's peer link listens)"
        ]
    );
    // A listen with a problem is still set: only its own problem is reported.
    let found = problems(&format!("{HEAD}  listen: nowhere\n{TLS}"));
    assert_eq!(found.len(), 1, "{found:?}");
    // Certificates alone (no link yet) are allowed; an empty peer list is no peer.
    assert!(ok(&format!("{HEAD}{TLS}peers: []\n")).peers.is_empty());
}

#[test]
fn replication_goes_to_a_known_other_site() {
    let vfs =
        |peer: &str| vfs_item("fs1", "10.0.0.1/8", "").replace("peer: b", &format!("peer: {peer}"));
    assert_eq!(
        problem(&linked(&format!("vfs:\n{}", vfs("c")))),
        "13:25: vfs[0].replication.peer: unknown peer `c`, expected the DR site: one of `peers` (`b`)"
    );
    assert_eq!(
        problem(&linked(&format!("vfs:\n{}", vfs("a")))),
        "13:25: vfs[0].replication.peer: `a` is this site, expected the DR site: one of `peers` (`b`)"
    );
    // When a peer has a problem, the peer names are not all known: no lookup.
    let text = linked(&format!("vfs:\n{}", vfs("c"))).replace("{name: b,", "{name: B,");
    assert_eq!(problems(&text).len(), 1, "{:?}", problems(&text));
}

#[test]
fn a_site_with_vfs_needs_a_pool() {
    let text = linked(&format!("vfs:\n{}", vfs_item("fs1", "10.0.0.1/8", "")))
        .replace("resources: {pool: {path: /pool}}\n", "");
    assert_eq!(
        problem(&text),
        "8:3: vfs: VFSs are defined but `resources.pool` is not, expected the pool that holds \
         their volumes"
    );
    // A pool with a problem is still set.
    let text = linked(&format!("vfs:\n{}", vfs_item("fs1", "10.0.0.1/8", "")))
        .replace("{path: /pool}", "{path: pool}");
    assert_eq!(problems(&text).len(), 1);
}

#[test]
fn vfs_share_nothing_at_a_site() {
    let text = linked(&format!(
        "vfs:\n{}{}",
        vfs_item("fs1", "10.0.0.1/8", ""),
        vfs_item("fs1", "10.0.0.1/16", "")
    ));
    let found = problems(&text);
    let expected = [
        "14:11: vfs[1].name: duplicate VFS name `fs1`, already used by vfs[0] on line 9",
        "15:15: vfs[1].volumes[0].mount: default mount path `/srv/vfsdr/mnt/fs1/data` is the same \
         path as the mount of vfs[0].volumes[0] `/srv/vfsdr/mnt/fs1/data` on line 10",
        "16:40: vfs[1].interfaces[0].address: duplicate address `10.0.0.1`, already used by \
         vfs[0].interfaces[0] on line 11",
        "17:25: vfs[1].smb.netbios_name: duplicate NetBIOS name `FS1`, already used by \
         vfs[0].smb on line 12",
    ];
    assert_eq!(found, expected);
}

#[test]
fn mounts_stay_out_of_the_agent_directories() {
    let text = linked(&format!(
        "state_dir: /srv/vfsdr/mnt/fs1\nvfs:\n{}",
        vfs_item("fs1", "10.0.0.1/8", "")
    ));
    assert_eq!(
        problem(&text),
        "11:15: vfs[0].volumes[0].mount: default mount path `/srv/vfsdr/mnt/fs1/data` is inside \
         state_dir `/srv/vfsdr/mnt/fs1`"
    );
    // No mount root, no default mount to check.
    let text = linked(&format!("vfs:\n{}", vfs_item("fs1", "10.0.0.1/8", ""))).replace(
        "{pool: {path: /pool}}",
        "{pool: {path: /pool}, mount_root: /}",
    );
    assert_eq!(
        problems(&text),
        ["7:46: resources.mount_root: cannot mount a volume on `/`, expected a directory below it"]
    );
}

#[test]
fn relative_mounts_are_under_the_mount_root_and_checked_there() {
    let volumes = |list: &str| {
        linked(&format!("vfs:\n{}", vfs_item("fs1", "10.0.0.1/8", "")))
            .replace("[{name: data, size: 1GiB}]", list)
            .replace(
                "{pool: {path: /pool}}",
                "{pool: {path: /pool}, mount_root: /m}",
            )
    };
    let config = ok(&volumes(
        "[{name: data, size: 1GiB, mount: shares/data/}, {name: logs, size: 1GiB, mount: /abs/logs}]",
    ));
    let v = &config.vfs[0].volumes;
    assert_eq!(v[0].mount, Path::new("shares/data"));
    assert_eq!(v[0].mount_at(Path::new("/m")), Path::new("/m/shares/data"));
    assert_eq!(v[1].mount_at(Path::new("/m")), Path::new("/abs/logs"));
    // Checked resolved: a relative mount meets an absolute one under the root.
    assert_eq!(
        problems(&volumes(
            "[{name: data, size: 1GiB, mount: d}, {name: logs, size: 1GiB, mount: /m/d/x}]"
        )),
        [
            "10:83: vfs[0].volumes[1].mount: mount path `/m/d/x` is inside the mount of \
          vfs[0].volumes[0] `/m/d` on line 10"
        ]
    );
    assert_eq!(
        problems(&volumes(
            "[{name: data, size: 1GiB, mount: a/../b}, {name: logs, size: 1GiB, mount: 'a//b'}, \
             {name: tmp, size: 1GiB, mount: ''}]"
        )),
        [
            "10:47: vfs[0].volumes[0].mount: mount path `a/../b` has a `.` or `..` component, \
             expected a plain relative path",
            "10:88: vfs[0].volumes[1].mount: mount path `a//b` has an empty component (`//`), \
             expected a plain relative path",
            "10:128: vfs[0].volumes[2].mount: expected a mount path (relative to \
             `resources.mount_root`, or absolute), found an empty string",
        ]
    );
    // A received definition keeps relative mounts as they are.
    let mut def = config.vfs[0].clone();
    assert_eq!(def.validate(), Ok(()));
    def.volumes[1].mount = "shares/data/inner".into();
    assert_eq!(
        def.validate(),
        Err(vec![
            "volumes[1].mount: mount path `shares/data/inner` is inside the mount of volumes[0] \
             `shares/data`"
                .to_owned()
        ])
    );
}

#[test]
fn an_interface_network_no_link_carries_is_allowed() {
    let text = linked(&format!("vfs:\n{}", vfs_item("fs1", "10.0.0.1/8", ""))).replace(
        "resources: {pool: {path: /pool}}\n",
        "resources: {pool: {path: /pool}, links: [{name: eth0, networks: [backup]}]}\n",
    );
    let config = ok(&text);
    assert_eq!(config.resources.links[0].networks, ["backup"]);
    assert_eq!(config.vfs[0].interfaces[0].network, "lan");
}

#[test]
fn scalars_of_the_wrong_type() {
    let text = linked(&format!(
        "vfs:\n{}",
        vfs_item(
            "fs1",
            "10.0.0.1/8",
            "    snapshots: {retention: [{every: 1h, for: 3600}]}\n"
        )
    ))
    .replace("size: 1GiB", "size: [1GiB]")
    .replace("interval: 1m", "interval: 1.5");
    let found = problems(&text);
    let expected = [
        "10:34: vfs[0].volumes[0].size: expected a size such as 2GiB, found a sequence",
        "13:38: vfs[0].replication.interval: expected a duration such as 60s, found a \
         floating-point number `1.5`",
        "14:46: vfs[0].snapshots.retention[0].for: `3600` has no unit, expected a duration: a \
         whole number followed by s, m, h or d, such as 90s or 30d (write `3600s` for seconds)",
    ];
    assert_eq!(found, expected);
}

/// A VFS file.
const DEFINITION: &str = "name: fs1\nvolumes: [{name: data, size: 1GiB}]\n\
                          interfaces: [{name: smb0, address: 10.0.0.1/8, network: lan}]\n\
                          smb: {netbios_name: FS1}\nreplication: {peer: b, interval: 1m}\n";

#[test]
fn a_vfs_file_is_checked_on_its_own() {
    let vfs = parse_vfs(DEFINITION, Path::new("fs1.yaml")).expect("valid");
    assert_eq!(vfs.volumes[0].mount, Path::new("fs1/data"));
    // Its peer is looked up nowhere; the fields are relative to the definition.
    let text = DEFINITION
        .replace("peer: b", "peer: Z")
        .replace("size: 1GiB", "size: 1GB");
    let Err(ConfigError::Invalid { path, problems }) = parse_vfs(&text, Path::new("fs1.yaml"))
    else {
        panic!("expected problems");
    };
    assert_eq!(path, PathBuf::from("fs1.yaml"));
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["volumes[0].size", "replication.peer"]);
    // A whole configuration is not a VFS definition.
    let found = parse_vfs(HEAD, Path::new("f"))
        .expect_err("invalid")
        .to_string();
    assert!(
        found
            == "f:1:1: (document): this is a site configuration (it has a `version`), expected one \
             VFS definition: the fields of an item of `vfs:` (`name`, `volumes`, ...)",
        "{found}"
    );
    let found = parse_vfs("# nothing\n", Path::new("f"))
        .expect_err("invalid")
        .to_string();
    assert!(
        found.starts_with("f:1:1: (document): the file holds no VFS definition"),
        "{found}"
    );
}

#[test]
fn parse_vfs_file_reads_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fs1.yaml");
    assert!(matches!(
        parse_vfs_file(&path),
        Err(ConfigError::Read { .. })
    ));
    std::fs::write(&path, DEFINITION).expect("write");
    assert_eq!(parse_vfs_file(&path).expect("valid").name, "fs1");
}
